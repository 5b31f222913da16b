//! Re-putting a changed copy of a large object as its new chunks only.
//!
//! Before uploading a file of at least [`DELTA_MIN_BYTES`] to a key that already has a
//! version, the SDK asks the node that will take the upload for that version's chunk list
//! (`ObjectChunks`: ids and lengths). It then cuts the file itself with the same
//! content-defined chunker the nodes use ([`ark_cdc`], default parameters) and hashes every
//! chunk: a chunk the base version already has is sent as a `known` message (its id and
//! length), any other as data. The node reads the known chunks from its own store or another
//! holder, verified, so the new version is made of checked bytes exactly as if they had been
//! sent, and its SHA-256 is computed by the node over all of them and checked by the client
//! against its own as for any put.
//!
//! The have-query is deliberately scoped to one version of the same key, which the caller
//! must be allowed to read: a namespace-wide or store-wide "do you have this chunk" would let
//! a writer learn whether given content exists in places it cannot read.
//!
//! Owns the base lookup and the producer of a delta upload, above the shared transfer
//! primitives (`transfer.rs`). Must not touch retries or endpoints (`objects.rs`, which
//! calls this).

use std::collections::HashMap;

use ark_cdc::{Chunker, ChunkerParams};
use ark_proto::v1::{put_object_request, KnownChunk, ObjectChunksRequest, PutObjectRequest};
use bytes::Bytes;
use futures::StreamExt;
use ring::digest;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::Code;

use crate::error::{classify, ClientError, Failure};
use crate::transfer::{
    changed_while_sent, objects, queue, read_up_to, Produce, Progress, Sent, PUT_MESSAGE_BYTES, TRANSFER_STALL_MAX,
};

/// Smallest file for which a put first asks for the key's current chunks: below it the extra
/// round trip costs more than the few chunks could save.
pub const DELTA_MIN_BYTES: u64 = 8 * 1024 * 1024;

/// Bytes read and hashed per step (one step hashes while the previous one's chunks are sent).
const READ_BLOCK_BYTES: usize = 4 * 1024 * 1024;

/// A version of the key whose chunks the upload may name instead of sending.
#[derive(Debug)]
pub(crate) struct Base {
    pub version: u64,
    /// Chunk id to its length.
    pub chunks: HashMap<[u8; 32], u32>,
}

/// The chunk list of the latest version of `ns/key` on the node behind `ch`, or `None` when
/// there is nothing to reuse (no such key, a deleted one, an encrypted namespace, a caller
/// without read access, or a node that predates the call). Transient failures are the caller's to retry.
pub(crate) async fn fetch_base(ch: Channel, addr: &str, ns: &str, key: &str) -> Result<Option<Base>, Failure> {
    let req = ObjectChunksRequest {
        namespace: ns.to_string(),
        key: key.to_string(),
        version: 0,
    };
    let mut client = objects(ch);
    let mut pages = match client.object_chunks(req).await {
        Ok(r) => r.into_inner(),
        Err(st) if no_base(st.code()) => return Ok(None),
        Err(st) => return Err(classify(addr, &st)),
    };
    let mut base = Base {
        version: 0,
        chunks: HashMap::new(),
    };
    loop {
        let page = match tokio::time::timeout(TRANSFER_STALL_MAX, pages.next()).await {
            Ok(Some(Ok(p))) => p,
            Ok(None) => break,
            Ok(Some(Err(st))) if no_base(st.code()) => return Ok(None),
            Ok(Some(Err(st))) => return Err(classify(addr, &st)),
            Err(_) => return Err(Failure::Transient(format!("{addr}: the chunk list stalled"))),
        };
        base.version = page.version;
        for c in page.chunks {
            let id: [u8; 32] =
                c.id.as_slice()
                    .try_into()
                    .map_err(|_| Failure::Fatal(ClientError::Server(format!("{addr}: a chunk id is not 32 bytes"))))?;
            base.chunks.insert(id, c.len);
        }
    }
    Ok((base.version != 0 && !base.chunks.is_empty()).then_some(base))
}

/// Answers that mean "upload the whole object" (PERMISSION_DENIED: the caller may write
/// the key but not read it, and naming chunks needs both).
fn no_base(code: Code) -> bool {
    matches!(
        code,
        Code::NotFound | Code::FailedPrecondition | Code::Unimplemented | Code::PermissionDenied
    )
}

/// Whether a refused delta upload should be made again in full: the node no longer has the
/// base version (deleted or replaced and collected between the lookup and the upload).
pub(crate) fn base_gone(e: &ClientError) -> bool {
    matches!(e, ClientError::FailedPrecondition(m) if m.contains("base version"))
}

/// The chunker's and the whole-object hash's state between read steps.
struct Hashing {
    /// `None` once the last step flushed it.
    chunker: Option<Chunker>,
    whole: digest::Context,
}

/// Chunks cut in one step, each with its id.
type Cut = Vec<(Bytes, [u8; 32])>;

/// Feeds `block` to the whole-object hash (one thread) and to the chunker, hashing every
/// chunk it cuts (another); with `last`, also the chunker's remainder.
fn hash_step(mut h: Hashing, block: Vec<u8>, last: bool) -> (Hashing, Cut) {
    let Hashing { chunker, whole } = &mut h;
    let cut = std::thread::scope(|s| {
        s.spawn(|| whole.update(&block));
        let mut chunks = chunker.as_mut().map(|c| c.push(&block)).unwrap_or_default();
        if last {
            chunks.extend(chunker.take().map(Chunker::finish).unwrap_or_default());
        }
        chunks
            .into_iter()
            .map(|c| {
                let mut id = [0u8; 32];
                id.copy_from_slice(digest::digest(&digest::SHA256, &c).as_ref());
                (c, id)
            })
            .collect()
    });
    (h, cut)
}

/// Reads `source` (exactly `total` bytes), cuts and hashes it, and queues each chunk as a
/// `known` message when `base` has it and as data otherwise, then the end marker. Each read
/// step is hashed while the previous step's chunks are sent.
pub(crate) async fn send_delta(
    tx: &mpsc::Sender<Option<PutObjectRequest>>,
    source: &mut (dyn AsyncRead + Send + Unpin),
    total: u64,
    base: &Base,
    touched: &mut bool,
    progress: Option<&Progress>,
) -> Result<Sent, Produce> {
    let chunker = Chunker::new(ChunkerParams::default())
        .map_err(|e| Produce::Fatal(ClientError::Config(format!("chunker: {e}"))))?;
    let mut hashing = Hashing {
        chunker: Some(chunker),
        whole: digest::Context::new(&digest::SHA256),
    };
    let mut sent = Sent {
        bytes: 0,
        sha256: Vec::new(),
        reused: 0,
    };
    let mut read: u64 = 0;
    let mut cut = Cut::new();
    // Until the step that flushed the chunker.
    while hashing.chunker.is_some() {
        let block = read_up_to(source, READ_BLOCK_BYTES)
            .await
            .map_err(|e| Produce::Fatal(ClientError::io("cannot read the upload source", e)))?;
        read += block.len() as u64;
        if read > total {
            return Err(Produce::Fatal(changed_while_sent(read, Some(total))));
        }
        let last = block.len() < READ_BLOCK_BYTES;
        let step = tokio::task::spawn_blocking(move || hash_step(hashing, block, last));
        send_cut(tx, base, std::mem::take(&mut cut), &mut sent, total, touched, progress).await?;
        (hashing, cut) = step
            .await
            .map_err(|e| Produce::Fatal(ClientError::Config(format!("hashing the upload: {e}"))))?;
    }
    send_cut(tx, base, cut, &mut sent, total, touched, progress).await?;
    if read != total || sent.bytes != total {
        return Err(Produce::Fatal(changed_while_sent(read, Some(total))));
    }
    queue(tx, None).await?;
    sent.sha256 = hashing.whole.finish().as_ref().to_vec();
    Ok(sent)
}

/// Queues the chunks of one step: a `known` message for each chunk `base` has (same id
/// and length), data messages for the others; counts them in `sent`.
async fn send_cut(
    tx: &mpsc::Sender<Option<PutObjectRequest>>,
    base: &Base,
    cut: Cut,
    sent: &mut Sent,
    total: u64,
    touched: &mut bool,
    progress: Option<&Progress>,
) -> Result<(), Produce> {
    for (chunk, id) in cut {
        *touched = true;
        let len = chunk.len() as u64;
        if base.chunks.get(&id).is_some_and(|l| u64::from(*l) == len) {
            sent.reused += len;
            let known = KnownChunk {
                id: id.to_vec(),
                len: len as u32,
            };
            let part = put_object_request::Part::Known(known);
            queue(tx, Some(PutObjectRequest { part: Some(part) })).await?;
        } else {
            let mut off = 0;
            while off < chunk.len() {
                let end = (off + PUT_MESSAGE_BYTES).min(chunk.len());
                let part = put_object_request::Part::Data(chunk.slice(off..end));
                queue(tx, Some(PutObjectRequest { part: Some(part) })).await?;
                off = end;
            }
        }
        sent.bytes += len;
        if let Some(p) = progress {
            p(sent.bytes, Some(total));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly on purpose

    use std::time::Duration;

    use ark_proto::v1::PutObjectHeader;
    use rand::{RngCore, SeedableRng};
    use tonic::Request;

    use super::*;
    use crate::client::{new_request_id, ArkClient};
    use crate::config::ClientConfig;
    use crate::objects::{PutOptions, PutSource};
    use crate::types::{DurabilityMode, NamespacePolicy};

    fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut b = vec![0u8; len];
        rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut b);
        b
    }

    /// The node's cut of `data`: every chunk with its id.
    fn chunks_of(data: &[u8]) -> Vec<(Vec<u8>, [u8; 32])> {
        let mut c = Chunker::new(ChunkerParams::default()).unwrap();
        let mut out = c.push(data);
        out.extend(c.finish());
        out.into_iter()
            .map(|b| {
                let mut id = [0u8; 32];
                id.copy_from_slice(digest::digest(&digest::SHA256, &b).as_ref());
                (b.to_vec(), id)
            })
            .collect()
    }

    /// Runs the producer over `data` against the chunks of `old`; returns the messages, what
    /// it reports as sent.
    async fn produce(old: &[u8], data: &[u8]) -> (Vec<PutObjectRequest>, Sent) {
        let base = Base {
            version: 1,
            chunks: chunks_of(old).into_iter().map(|(b, id)| (id, b.len() as u32)).collect(),
        };
        let (tx, mut rx) = mpsc::channel(4);
        let collect = tokio::spawn(async move {
            let mut msgs = Vec::new();
            while let Some(Some(m)) = rx.recv().await {
                msgs.push(m);
            }
            msgs
        });
        let mut src: &[u8] = data;
        let mut touched = false;
        let r = send_delta(&tx, &mut src, data.len() as u64, &base, &mut touched, None).await;
        let Ok(sent) = r else { panic!("the producer failed") };
        drop(tx);
        (collect.await.unwrap(), sent)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_producer_names_only_the_bases_chunks_and_every_byte_is_accounted_for() {
        let old = random(20 << 20, 1);
        let mut new = old.clone();
        // One contiguous 1% change in the middle, and a different tail length (not a
        // multiple of the read step).
        let at = 10 << 20;
        new[at..at + (200 << 10)].copy_from_slice(&random(200 << 10, 2));
        new.truncate(new.len() - 12345);
        let (msgs, sent) = produce(&old, &new).await;

        let old_chunks: HashMap<[u8; 32], Vec<u8>> = chunks_of(&old).into_iter().map(|(b, id)| (id, b)).collect();
        let mut rebuilt = Vec::new();
        let mut known = 0u64;
        for m in msgs {
            match m.part {
                Some(put_object_request::Part::Data(d)) => {
                    assert!(d.len() <= PUT_MESSAGE_BYTES);
                    rebuilt.extend_from_slice(&d);
                }
                Some(put_object_request::Part::Known(k)) => {
                    let id: [u8; 32] = k.id.as_slice().try_into().unwrap();
                    let b = old_chunks.get(&id).expect("a known chunk that is not the base's");
                    assert_eq!(b.len(), k.len as usize);
                    rebuilt.extend_from_slice(b);
                    known += u64::from(k.len);
                }
                other => panic!("unexpected message {other:?}"),
            }
        }
        assert!(rebuilt == new, "data and known chunks do not rebuild the file");
        assert_eq!(sent.bytes, new.len() as u64);
        assert_eq!(sent.sha256, digest::digest(&digest::SHA256, &new).as_ref());
        assert_eq!(sent.reused, known);
        // Only the chunks around the change (and the cut tail) are sent.
        assert!(
            known >= new.len() as u64 * 85 / 100 && known < new.len() as u64,
            "reused {known} of {}",
            new.len()
        );

        // Nothing in common: everything is sent as data.
        let (msgs, sent) = produce(&random(9 << 20, 3), &new).await;
        assert_eq!(sent.reused, 0);
        assert!(msgs
            .iter()
            .all(|m| matches!(m.part, Some(put_object_request::Part::Data(_)))));
    }

    async fn pg_client(pg: &ark_playground::testkit::Pg) -> ArkClient {
        ArkClient::new(&ClientConfig::load(&pg.client_toml()).unwrap()).unwrap()
    }

    /// Sends `msgs` after `header` as one upload to `addr`; the node's answer.
    async fn raw_put(
        c: &ArkClient,
        addr: &str,
        header: PutObjectHeader,
        msgs: Vec<put_object_request::Part>,
    ) -> Result<ark_proto::v1::PutObjectResponse, tonic::Status> {
        let ch = c.stream_channel(addr).await.unwrap();
        let mut all = vec![PutObjectRequest {
            part: Some(put_object_request::Part::Header(header)),
        }];
        all.extend(msgs.into_iter().map(|p| PutObjectRequest { part: Some(p) }));
        objects(ch)
            .put_object(Request::new(futures::stream::iter(all)))
            .await
            .map(|r| r.into_inner())
    }

    fn header(key: &str, size: u64, base_version: u64) -> PutObjectHeader {
        header_in("d", key, size, base_version)
    }

    fn header_in(ns: &str, key: &str, size: u64, base_version: u64) -> PutObjectHeader {
        PutObjectHeader {
            namespace: ns.into(),
            key: key.into(),
            request_id: new_request_id(),
            size: Some(size),
            sha256: Vec::new(),
            base_version,
        }
    }

    /// End to end on real nodes: a changed copy is sent as its new chunks and reads back
    /// whole; `whole` sends every byte; and a node refuses known chunks that are not its
    /// base version's, a base that is not there, and known chunks without a base.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_changed_copy_travels_as_its_new_chunks_and_bad_references_are_refused() {
        let pg = ark_playground::testkit::Pg::up(3, 20_000).await;
        pg.wait_leader(None, Duration::from_secs(20)).await;
        let c = pg_client(&pg).await;
        c.create_namespace("d", NamespacePolicy::replicated(3, 2, DurabilityMode::Sync))
            .await
            .unwrap();
        let len = 24 << 20;
        let mut data = random(len, 11);
        let file = pg.path().join("obj.bin");
        std::fs::write(&file, &data).unwrap();
        let first = c
            .put_object("d", "obj", PutSource::File(file.clone()), &PutOptions::default())
            .await
            .unwrap();
        assert_eq!(first.bytes_reused, 0, "nothing to reuse for a new key");

        data[len / 2..len / 2 + len / 100].copy_from_slice(&random(len / 100, 12));
        std::fs::write(&file, &data).unwrap();
        let second = c
            .put_object("d", "obj", PutSource::File(file.clone()), &PutOptions::default())
            .await
            .unwrap();
        assert!(
            second.bytes_reused >= len as u64 * 9 / 10 && second.bytes_reused < len as u64,
            "reused {} of {len}",
            second.bytes_reused
        );
        assert_eq!(second.object.size, len as u64);
        let out = pg.path().join("back.bin");
        for n in 1..=3 {
            let one = ArkClient::new(&ClientConfig::load(&pg.client_toml()).unwrap())
                .unwrap()
                .with_endpoints(vec![pg.node(n).client_addr]);
            one.get_object_to_file("d", "obj", &out, &Default::default())
                .await
                .unwrap();
            assert!(std::fs::read(&out).unwrap() == data, "node {n} read back other bytes");
        }
        let whole = c
            .put_object(
                "d",
                "obj",
                PutSource::File(file.clone()),
                &PutOptions {
                    whole: true,
                    ..PutOptions::default()
                },
            )
            .await
            .unwrap();
        assert_eq!(whole.bytes_reused, 0);

        // Raw uploads that name chunks wrongly: each refused, nothing committed.
        let addr = pg.node(1).client_addr;
        let base = fetch_base(c.stream_channel(&addr).await.unwrap(), &addr, "d", "obj")
            .await
            .unwrap()
            .unwrap();
        let (id, clen) = base.chunks.iter().next().map(|(i, l)| (*i, *l)).unwrap();
        let known = |id: [u8; 32], len: u32| put_object_request::Part::Known(KnownChunk { id: id.to_vec(), len });
        let bad = [
            // a chunk that is not the base's
            (
                header("obj", 4096, base.version),
                vec![known([7u8; 32], 4096)],
                Code::InvalidArgument,
            ),
            // the base's chunk with another length
            (
                header("obj", u64::from(clen) + 1, base.version),
                vec![known(id, clen + 1)],
                Code::InvalidArgument,
            ),
            // known chunks without a base
            (
                header("obj", u64::from(clen), 0),
                vec![known(id, clen)],
                Code::InvalidArgument,
            ),
            // a base version that does not exist
            (
                header("obj", u64::from(clen), base.version + 100),
                vec![known(id, clen)],
                Code::FailedPrecondition,
            ),
            // past the announced size
            (
                header("obj", 10, base.version),
                vec![known(id, clen)],
                Code::InvalidArgument,
            ),
        ];
        for (h, msgs, code) in bad {
            let st = raw_put(&c, &addr, h, msgs).await.unwrap_err();
            assert_eq!(st.code(), code, "{st:?}");
        }
        // Only versions of the same key may be named: `obj`'s base is no version of `new`.
        // The SDK reads this refusal as "upload the whole object".
        let st = raw_put(
            &c,
            &addr,
            header("new", u64::from(clen), base.version),
            vec![known(id, clen)],
        )
        .await
        .unwrap_err();
        assert_eq!(st.code(), Code::FailedPrecondition, "{st:?}");
        assert!(base_gone(&crate::error::ClientError::FailedPrecondition(
            st.message().to_string()
        )));
        // The same chunk named under its own key is accepted.
        let r = raw_put(
            &c,
            &addr,
            header("obj", u64::from(clen), base.version),
            vec![known(id, clen)],
        )
        .await
        .unwrap();
        assert_eq!(r.chunks, 1);
        // No refused upload committed a version in between.
        assert_eq!(r.object.unwrap().version, base.version + 1);
        let (listed, _) = c.list_objects("d", &Default::default()).await.unwrap();
        assert_eq!(
            listed.iter().map(|o| o.key.as_str()).collect::<Vec<_>>(),
            ["obj"],
            "a refused upload became visible"
        );
    }

    /// An encrypted namespace's chunk ids are of sealed bytes: the node neither lists them
    /// (`ObjectChunks`) nor accepts an upload that names them, whatever the caller claims, and
    /// a changed copy through the SDK travels whole. The same object in a plain namespace is
    /// listed and named, so each refusal is the encryption's and not a missing object's.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_encrypted_namespace_neither_lists_nor_accepts_named_chunks() {
        let pg = ark_playground::testkit::Pg::up(3, 20_000).await;
        pg.wait_leader(None, Duration::from_secs(20)).await;
        let c = pg_client(&pg).await;
        let policy = NamespacePolicy::replicated(3, 2, DurabilityMode::Sync);
        c.create_namespace("d", policy).await.unwrap();
        c.create_encrypted_namespace("e", policy).await.unwrap();
        let len = 12 << 20;
        let mut data = random(len, 21);
        let file = pg.path().join("obj.bin");
        std::fs::write(&file, &data).unwrap();
        let mut versions = HashMap::new();
        for ns in ["d", "e"] {
            let put = c
                .put_object(ns, "obj", PutSource::File(file.clone()), &PutOptions::default())
                .await
                .unwrap();
            versions.insert(ns, put.object.version);
        }
        let listed_version = |ns: &'static str| {
            let c = c.clone();
            async move {
                let (listed, _) = c.list_objects(ns, &Default::default()).await.unwrap();
                assert_eq!(listed.len(), 1, "{listed:?}");
                listed[0].version
            }
        };
        let addr = pg.node(1).client_addr;
        let chunk_list = |ns: &'static str| {
            let c = c.clone();
            let addr = addr.clone();
            async move {
                let req = ObjectChunksRequest {
                    namespace: ns.into(),
                    key: "obj".into(),
                    version: 0,
                };
                let mut pages = objects(c.stream_channel(&addr).await.unwrap())
                    .object_chunks(req)
                    .await?
                    .into_inner();
                let mut all = Vec::new();
                while let Some(p) = pages.next().await {
                    all.push(p?);
                }
                Ok::<_, tonic::Status>(all)
            }
        };
        let plain = chunk_list("d").await.unwrap();
        assert!(plain.iter().map(|p| p.chunks.len()).sum::<usize>() > 1, "{plain:?}");
        let st = chunk_list("e").await.unwrap_err();
        assert_eq!(st.code(), Code::FailedPrecondition, "{st:?}");
        assert!(st.message().contains("encrypted"), "{st:?}");

        // An upload naming a chunk against the encrypted object's real version: refused,
        // nothing committed. The plain namespace's first chunk (same bytes) is the name.
        let e_version = versions["e"];
        let first = &plain[0].chunks[0];
        let named = put_object_request::Part::Known(KnownChunk {
            id: first.id.clone(),
            len: first.len,
        });
        let st = raw_put(
            &c,
            &addr,
            header_in("e", "obj", u64::from(first.len), e_version),
            vec![named.clone()],
        )
        .await
        .unwrap_err();
        assert_eq!(st.code(), Code::FailedPrecondition, "{st:?}");
        assert_eq!(listed_version("e").await, e_version, "a refused upload committed");
        // The same upload in the plain namespace is accepted: the refusal above is the
        // encryption's.
        let d_version = versions["d"];
        let r = raw_put(
            &c,
            &addr,
            header_in("d", "obj", u64::from(first.len), d_version),
            vec![named],
        )
        .await
        .unwrap();
        assert_eq!(r.object.unwrap().version, d_version + 1);

        // Through the SDK, a changed copy in the encrypted namespace is sent whole and
        // reads back.
        data[len / 2] ^= 0xff;
        std::fs::write(&file, &data).unwrap();
        let again = c
            .put_object("e", "obj", PutSource::File(file.clone()), &PutOptions::default())
            .await
            .unwrap();
        assert_eq!(again.bytes_reused, 0);
        let out = pg.path().join("back.bin");
        c.get_object_to_file("e", "obj", &out, &Default::default())
            .await
            .unwrap();
        assert!(std::fs::read(&out).unwrap() == data, "e/obj read back other bytes");
    }
}
