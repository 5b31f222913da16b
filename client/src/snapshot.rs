//! Metadata snapshots: saved from the cluster into a file ([`ArkClient::save_snapshot`]),
//! and checked offline ([`inspect`], [`read`]; `arkd snapshot restore` reads files with
//! [`read`]).
//!
//! A snapshot file is, in order:
//!
//! | bytes | what |
//! |---|---|
//! | 8 | [`MAGIC`], `ARKSNAP1` (the 1 is the layout's version) |
//! | 4 | header length `H`, little-endian, at most [`HEADER_BYTES_MAX`] |
//! | `H` | the header: protobuf `ark.v1.SnapshotHeader` ([`SnapshotInfo`]) |
//! | 32 | SHA-256 of the header bytes |
//! | `body_bytes` | the body (the state machine's snapshot encoding), its SHA-256 in the header |
//!
//! and nothing after the body. A file is good only if both checksums match and its length is
//! exactly that; anything else is refused with what is wrong.
//!
//! Owns the file layout and its checks. Must not touch: what the body means (the node's).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ark_proto::v1::cluster_client::ClusterClient;
use ark_proto::v1::{SaveSnapshotRequest, SnapshotHeader};
use futures::StreamExt;
use prost::Message;
use ring::digest::{Context, SHA256};
use tokio::io::AsyncWriteExt;

use crate::client::{ArkClient, LEADER_ADDR_HEADER};
use crate::error::{classify, ClientError, Failure};
use crate::retry::Attempts;
use crate::types::SnapshotInfo;

/// The first bytes of every snapshot file.
pub const MAGIC: &[u8; 8] = b"ARKSNAP1";
/// Largest header accepted (a header names the members; it is a few KiB).
pub const HEADER_BYTES_MAX: u32 = 1 << 20;
/// How long the leader may take to fence, export and start sending, and then to send each
/// next piece.
pub const SNAPSHOT_STALL_MAX: Duration = Duration::from_secs(120);
/// Largest message accepted from the node (it sends 1 MiB pieces).
const MESSAGE_BYTES_MAX: usize = 16 << 20;

/// Why a snapshot file is refused.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    /// It could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// It does not start with [`MAGIC`].
    #[error("{0} is not an Ark metadata snapshot (it does not start with ARKSNAP1)")]
    NotASnapshot(String),
    /// It is damaged: a checksum does not match, it ends early, or bytes follow the body.
    #[error("{path} is damaged: {why}; it cannot be used, take or fetch another copy")]
    Damaged {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
}

/// What a file holds, before its body is read.
struct Opened {
    info: SnapshotInfo,
    file: std::fs::File,
}

fn damaged(path: &Path, why: impl Into<String>) -> SnapshotFileError {
    SnapshotFileError::Damaged {
        path: path.display().to_string(),
        why: why.into(),
    }
}

fn read_exact(path: &Path, f: &mut std::fs::File, buf: &mut [u8], what: &str) -> Result<(), SnapshotFileError> {
    f.read_exact(buf).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => damaged(path, format!("it ends inside the {what} (truncated)")),
        _ => SnapshotFileError::Io {
            path: path.display().to_string(),
            source: e,
        },
    })
}

/// Opens `path` and checks its magic and header (not the body yet).
fn open(path: &Path) -> Result<Opened, SnapshotFileError> {
    let io = |source| SnapshotFileError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut magic = [0u8; 8];
    match file.read_exact(&mut magic) {
        Ok(()) if &magic == MAGIC => {}
        Ok(()) => return Err(SnapshotFileError::NotASnapshot(path.display().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(SnapshotFileError::NotASnapshot(path.display().to_string()))
        }
        Err(e) => return Err(io(e)),
    }
    let mut len = [0u8; 4];
    read_exact(path, &mut file, &mut len, "header length")?;
    let len = u32::from_le_bytes(len);
    if len > HEADER_BYTES_MAX {
        return Err(damaged(
            path,
            format!("its header length {len} is over {HEADER_BYTES_MAX}"),
        ));
    }
    let mut header = vec![0u8; len as usize];
    read_exact(path, &mut file, &mut header, "header")?;
    let mut sum = [0u8; 32];
    read_exact(path, &mut file, &mut sum, "header checksum")?;
    if ring::digest::digest(&SHA256, &header).as_ref() != sum {
        return Err(damaged(path, "the header's SHA-256 does not match"));
    }
    let h = SnapshotHeader::decode(header.as_slice())
        .map_err(|e| damaged(path, format!("the header does not decode: {e}")))?;
    if h.body_sha256.len() != 32 {
        return Err(damaged(path, "the header's body checksum is not 32 bytes"));
    }
    Ok(Opened { info: h.into(), file })
}

/// Reads the rest of `o` (the body) through SHA-256, keeping it when `keep`.
fn check_body(path: &Path, mut o: Opened, keep: bool) -> Result<(SnapshotInfo, Vec<u8>), SnapshotFileError> {
    let mut ctx = Context::new(&SHA256);
    let mut kept = Vec::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = o.file.read(&mut buf).map_err(|source| SnapshotFileError::Io {
            path: path.display().to_string(),
            source,
        })?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > o.info.body_bytes {
            return Err(damaged(
                path,
                format!("bytes follow the body's {} bytes", o.info.body_bytes),
            ));
        }
        ctx.update(&buf[..n]);
        if keep {
            kept.extend_from_slice(&buf[..n]);
        }
    }
    if total < o.info.body_bytes {
        return Err(damaged(
            path,
            format!("its body holds {total} of {} bytes (truncated)", o.info.body_bytes),
        ));
    }
    if ctx.finish().as_ref() != o.info.body_sha256.as_slice() {
        return Err(damaged(path, "the body's SHA-256 does not match its header"));
    }
    Ok((o.info, kept))
}

/// Checks a snapshot file completely (layout, both checksums, length) without keeping the
/// body in memory; returns its header.
pub fn inspect(path: &Path) -> Result<SnapshotInfo, SnapshotFileError> {
    let o = open(path)?;
    Ok(check_body(path, o, false)?.0)
}

/// Like [`inspect`], and returns the body too.
pub fn read(path: &Path) -> Result<(SnapshotInfo, Vec<u8>), SnapshotFileError> {
    let o = open(path)?;
    check_body(path, o, true)
}

/// `<path>.tmp`, where a save writes before it renames.
fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

impl ArkClient {
    /// Saves a metadata snapshot of the cluster into `path`: the leader, after a read
    /// fence, exports the state machine (KV, namespaces, manifests, chunk locations,
    /// grants) as of at least every write acknowledged before this call, and streams it.
    /// Needs the `admin` grant. Written to `<path>.tmp`, fsynced, checked again from the
    /// disk, renamed over `path`, and the folder fsynced; on any failure the temporary file
    /// is removed and `path` is untouched. Object bytes are not in it (see
    /// docs/operations.md, "Metadata snapshots").
    pub async fn save_snapshot(&self, path: &Path) -> Result<SnapshotInfo, ClientError> {
        let tmp = tmp_path(path);
        let res = self.save_snapshot_as(path, &tmp).await;
        if res.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        res
    }

    async fn save_snapshot_as(&self, path: &Path, tmp: &Path) -> Result<SnapshotInfo, ClientError> {
        let io = |what: &str, p: &Path| {
            let what = format!("{what} {}", p.display());
            move |e| ClientError::io(what, e)
        };
        let (addr, mut stream) = self.open_snapshot_stream().await?;
        let protocol = |m: &str| ClientError::Server(format!("{addr}: {m}"));
        let first = match tokio::time::timeout(SNAPSHOT_STALL_MAX, stream.next()).await {
            Ok(Some(Ok(c))) => c,
            Ok(Some(Err(st))) => return Err(crate::client::one_attempt_error(&addr, &st)),
            Ok(None) => return Err(protocol("the snapshot stream ended before its header")),
            Err(_) => return Err(protocol("no snapshot header within the stall limit")),
        };
        let header = first
            .header
            .ok_or_else(|| protocol("the snapshot stream did not start with its header"))?;
        if header.body_sha256.len() != 32 {
            return Err(protocol("the snapshot header's checksum is not 32 bytes"));
        }
        let header_bytes = header.encode_to_vec();
        let mut file = tokio::fs::File::create(tmp).await.map_err(io("cannot create", tmp))?;
        let mut lead = Vec::with_capacity(header_bytes.len() + 44);
        lead.extend_from_slice(MAGIC);
        lead.extend_from_slice(&(header_bytes.len() as u32).to_le_bytes());
        lead.extend_from_slice(&header_bytes);
        lead.extend_from_slice(ring::digest::digest(&SHA256, &header_bytes).as_ref());
        file.write_all(&lead).await.map_err(io("cannot write", tmp))?;
        let mut ctx = Context::new(&SHA256);
        let mut got = 0u64;
        let mut data = first.data;
        loop {
            got += data.len() as u64;
            if got > header.body_bytes {
                return Err(ClientError::Integrity(format!(
                    "{addr} sent more than the {} body bytes its header announced",
                    header.body_bytes
                )));
            }
            ctx.update(&data);
            file.write_all(&data).await.map_err(io("cannot write", tmp))?;
            data = match tokio::time::timeout(SNAPSHOT_STALL_MAX, stream.next()).await {
                Ok(Some(Ok(c))) => c.data,
                Ok(Some(Err(st))) => return Err(crate::client::one_attempt_error(&addr, &st)),
                Ok(None) => break,
                Err(_) => return Err(protocol("the snapshot stream stalled")),
            };
        }
        if got != header.body_bytes || ctx.finish().as_ref() != header.body_sha256.as_slice() {
            return Err(ClientError::Integrity(format!(
                "the snapshot from {addr} does not match its header ({got} of {} bytes, or a wrong SHA-256)",
                header.body_bytes
            )));
        }
        file.sync_all().await.map_err(io("cannot fsync", tmp))?;
        drop(file);
        // What counts is what the disk holds: read it back through both checksums.
        let check = tmp.to_path_buf();
        let info = tokio::task::spawn_blocking(move || inspect(&check))
            .await
            .map_err(|e| ClientError::Server(format!("checking the saved file: {e}")))?
            .map_err(|e| ClientError::Integrity(e.to_string()))?;
        tokio::fs::rename(tmp, path)
            .await
            .map_err(io("cannot rename into", path))?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        tokio::fs::File::open(dir)
            .await
            .map_err(io("cannot open folder", dir))?
            .sync_all()
            .await
            .map_err(io("cannot fsync folder", dir))?;
        Ok(info)
    }

    /// The leader's answer stream: follows leader hints, retries transient failures under
    /// the transfer retry policy.
    async fn open_snapshot_stream(
        &self,
    ) -> Result<(String, tonic::Streaming<ark_proto::v1::SnapshotChunk>), ClientError> {
        let mut budget = Attempts::start(self.transfer_retry());
        let endpoints = self.endpoints();
        let mut next = 0usize;
        let mut target = endpoints[0].clone();
        loop {
            budget.attempt();
            let mut hinted = false;
            let last = match self.stream_channel(&target).await {
                Err(e) => e.to_string(),
                Ok(ch) => {
                    let mut c = ClusterClient::new(ch).max_decoding_message_size(MESSAGE_BYTES_MAX);
                    match tokio::time::timeout(SNAPSHOT_STALL_MAX, c.save_snapshot(SaveSnapshotRequest {})).await {
                        Ok(Ok(r)) => return Ok((target, r.into_inner())),
                        Ok(Err(st)) => match classify(&target, &st) {
                            Failure::Fatal(e) => return Err(e),
                            Failure::Transient(m) => {
                                let hint = st
                                    .metadata()
                                    .get(LEADER_ADDR_HEADER)
                                    .and_then(|v| v.to_str().ok())
                                    .filter(|h| *h != target)
                                    .map(str::to_string);
                                if let Some(h) = hint {
                                    target = h;
                                    hinted = true;
                                }
                                m
                            }
                        },
                        Err(_) => format!("{target}: no answer within {} s", SNAPSHOT_STALL_MAX.as_secs()),
                    }
                }
            };
            if !hinted {
                self.forget_stream_channel(&target);
                next += 1;
                target = endpoints[next % endpoints.len()].clone();
            }
            if budget.exhausted() {
                return Err(budget.give_up(last));
            }
            if !hinted {
                budget.wait().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(body: &[u8]) -> (tempfile::TempDir, PathBuf, Vec<u8>) {
        let header = SnapshotHeader {
            index: 42,
            term: 3,
            body_bytes: body.len() as u64,
            body_sha256: ring::digest::digest(&SHA256, body).as_ref().to_vec(),
            ..Default::default()
        }
        .encode_to_vec();
        let mut f = MAGIC.to_vec();
        f.extend_from_slice(&(header.len() as u32).to_le_bytes());
        f.extend_from_slice(&header);
        f.extend_from_slice(ring::digest::digest(&SHA256, &header).as_ref());
        f.extend_from_slice(body);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.arksnap");
        std::fs::write(&p, &f).unwrap();
        (dir, p, f)
    }

    #[test]
    fn a_good_file_reads_and_every_damage_is_refused() {
        let body = b"the body bytes".repeat(100);
        let (_d, p, f) = file_with(&body);
        let (info, back) = read(&p).unwrap();
        assert_eq!((info.index, info.term), (42, 3));
        assert_eq!(back, body);
        assert_eq!(inspect(&p).unwrap(), info);

        // One flipped byte anywhere: magic, length, header, header sum, body.
        for at in [0, 9, 14, 12 + (f.len() - body.len() - 44) + 3, f.len() - 1, f.len() / 2] {
            let mut bad = f.clone();
            bad[at] ^= 0x01;
            std::fs::write(&p, &bad).unwrap();
            assert!(read(&p).is_err(), "a flip at byte {at} was not noticed");
            assert!(inspect(&p).is_err(), "a flip at byte {at} was not noticed");
        }
        // Cut short anywhere, or grown.
        for len in [0, 5, 11, 30, f.len() - body.len(), f.len() - 1] {
            std::fs::write(&p, &f[..len]).unwrap();
            assert!(read(&p).is_err(), "a file cut to {len} bytes was accepted");
        }
        let mut longer = f.clone();
        longer.push(0);
        std::fs::write(&p, &longer).unwrap();
        let e = read(&p).unwrap_err();
        assert!(e.to_string().contains("follow the body"), "{e}");
    }
}
