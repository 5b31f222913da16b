//! The upload pipeline, the one way an object's bytes enter the cluster: the gRPC put and
//! every internal small-object put (the forecasters' weights) go through it.
//!
//! Placement first ([`DataPlane::place_upload`]): a sync namespace (and an internal put,
//! which pushes in any mode) picks targets in other sites among the members that answer now,
//! and an upload that cannot reach `min_sites` sites is refused before any byte is read.
//! Then ([`Upload`]) the bytes are cut into content-defined chunks as they arrive while the
//! whole-object SHA-256 is computed (on a thread of the upload's own, fed in object order);
//! each chunk is claimed (so garbage collection leaves it
//! alone), stored locally (fsync; an existing copy counts only if it equals these bytes)
//! and pushed to every target, `objects.streams` chunks in flight, so memory stays bounded
//! whatever the object size; a target that fails once is dropped for the rest of the
//! object. [`Upload::finish`] checks the size and hash the caller announced and that the
//! holders that got every chunk span `min_sites` sites, and only then hands back the
//! manifest, which [`DataPlane::commit_object`] commits through consensus (forwarded to the
//! leader from a follower). Anything short of a commit leaves no visible object; the
//! orphaned chunk files are collected by the scrubber after the grace period.
//!
//! A client re-putting a changed copy of a large object names the chunks the key's base
//! version already has instead of sending them ([`Upload::write_known`]): the chunker ends
//! the chunk before it there (the client cut its bytes with the same chunker, so the cuts
//! agree), and the worker reads the named chunk, verified, from this node's store or another
//! holder, keeps a copy here and pushes it like any other chunk, except that a target the
//! chunk's record names as a holder is asked whether the file is there, not to re-hash it
//! (it is a copy of a live version's chunk, which the scrubber re-hashes on its schedule;
//! the target claims it either way). The worker hands each named chunk's bytes to the
//! whole-object hash in its place, so a version made this way is hashed and checked
//! exactly like one sent in full.
//!
//! For an encrypted namespace each chunk is sealed (`chunks::seal`, under the namespace's
//! current data key generation, compressed first when the namespace asks) before it is
//! named, stored or pushed, so every copy, every transfer and the chunk id itself are of the
//! sealed bytes; the whole-object SHA-256 stays that of the plaintext.
//!
//! Owns chunking, local storage and pushes of one upload, and the checks before a commit.
//! Must not touch: gRPC (errors are [`UploadError`]s).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

use super::{placement, DataPlane, Peer};
use crate::chunks::seal::ChunkSealer;
use crate::chunks::{chunk_id, to_hex, ChunkError, ChunkId, Chunker, ChunkerParams, ObjectHasher};
use crate::raft::error::ConsensusError;
use crate::raft::objects::{ChunkRef, Manifest, Mode, NsPolicy};
use crate::raft::{Command, NodeId, Op, OpResult};

/// Chunks cut but not yet taken by the storing worker (backpressure on the sender).
const CHUNKS_QUEUED_MAX: usize = 2;
/// Stored chunks waiting for the whole-object hash.
const HASH_QUEUED_MAX: usize = 4;

/// Why an upload was refused; in every case nothing was committed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The bytes do not match what the caller announced (longer, shorter, another hash).
    #[error("{0}; nothing was committed")]
    Mismatch(String),
    /// Copies cannot reach (or did not reach) the sites the namespace needs.
    #[error("{0}; nothing was committed")]
    TooFewSites(String),
    /// This node's disk is full.
    #[error("node {0}: disk full while storing the upload; nothing was committed")]
    DiskFull(NodeId),
    /// This node failed to store a chunk (other than a full disk).
    #[error("storing a chunk: {0}")]
    Store(String),
    /// The namespace is encrypted and this node cannot have its data key.
    #[error("{0}; nothing was committed")]
    Key(String),
    /// A chunk the upload named as its base version's could not be read from any holder
    /// (the client still has the bytes: it should send them).
    #[error("{0}; nothing was committed")]
    BaseUnreadable(String),
    /// Committing the manifest through consensus failed.
    #[error(transparent)]
    Consensus(#[from] ConsensusError),
}

/// What the caller announced about the bytes, checked before the commit.
#[derive(Debug, Clone, Copy, Default)]
pub struct Expected {
    /// Exact size in bytes.
    pub size: Option<u64>,
    /// SHA-256 of the whole object.
    pub sha256: Option<[u8; 32]>,
}

/// A finished upload, not committed yet.
#[derive(Debug)]
pub struct Stored {
    /// The manifest to commit: size, hash, chunks and the holders that got every chunk.
    pub manifest: Manifest,
    /// Chunks this node did not hold before.
    pub new_local: u64,
    /// Bytes pushed to targets.
    pub replicated: u64,
}

/// Progress of one upload's chunk pipeline.
#[derive(Default)]
struct Uploaded {
    chunks: Vec<ChunkRef>,
    new_local: u64,
    replicated: u64,
}

/// One piece of an upload, in object order, for the storing worker.
enum Piece {
    /// A chunk cut from bytes the client sent.
    New(Bytes),
    /// Chunk `id` of the upload's base version, `len` bytes, read by the worker, which
    /// hands the bytes to the whole-object hash through `bytes`.
    Known {
        id: ChunkId,
        len: u32,
        bytes: oneshot::Sender<Bytes>,
    },
}

/// The whole-object hash's input, in object order.
enum ToHash {
    /// Bytes the client sent.
    Sent(Bytes),
    /// A known chunk's bytes, once the worker has read them (dropped if it failed).
    Read(oneshot::Receiver<Bytes>),
}

/// Hashes the whole object on a thread of its own, so that neither the receiving handler
/// nor the worker's pushes wait for it. `None` when a known chunk's bytes never came.
fn start_hashing(mut rx: mpsc::Receiver<ToHash>) -> JoinHandle<Option<[u8; 32]>> {
    tokio::task::spawn_blocking(move || {
        let mut hasher = ObjectHasher::new();
        while let Some(item) = rx.blocking_recv() {
            match item {
                ToHash::Sent(b) => hasher.update(&b),
                ToHash::Read(r) => hasher.update(&r.blocking_recv().ok()?),
            }
        }
        Some(hasher.finish())
    })
}

type Worker = JoinHandle<Result<(Uploaded, Vec<NodeId>), UploadError>>;

/// One upload in progress: feed it bytes with [`Upload::write`], then [`Upload::finish`].
pub struct Upload {
    dp: Arc<DataPlane>,
    policy: NsPolicy,
    expected: Expected,
    chunker: Chunker,
    size: u64,
    tx: mpsc::Sender<Piece>,
    hash_tx: mpsc::Sender<ToHash>,
    hashing: JoinHandle<Option<[u8; 32]>>,
    /// `None` once awaited (after it failed during [`Upload::write`]).
    worker: Option<Worker>,
}

impl DataPlane {
    /// The targets an upload of `ns/key` pushes to while it is received: none for an async
    /// namespace unless `push_async` (then the repair queue adds the copies), otherwise up
    /// to `copies - 1` members in other sites first that answer a probe within `probe`.
    /// Refused when the namespace is sync and the reachable sites are fewer than `min_sites`.
    pub async fn place_upload(
        &self,
        ns: &str,
        key: &str,
        policy: &NsPolicy,
        push_async: bool,
        probe: Duration,
    ) -> Result<Vec<Peer>, UploadError> {
        if policy.mode == Mode::Async && !push_async {
            return Ok(Vec::new());
        }
        let live = self.live_peers(probe).await;
        let here: BTreeSet<String> = [self.site.clone()].into();
        let targets = placement::choose(
            &here,
            &[self.id],
            &live,
            policy.copies.saturating_sub(1) as usize,
            placement::object_salt(ns, key),
        );
        let mut sites = here;
        sites.extend(targets.iter().map(|p| p.site.clone()));
        if policy.mode == Mode::Sync && sites.len() < policy.min_sites as usize {
            return Err(UploadError::TooFewSites(format!(
                "namespace {ns} is sync and needs copies in {} sites; only {} reachable from node {} ({sites:?})",
                policy.min_sites,
                sites.len(),
                self.id,
            )));
        }
        Ok(targets)
    }

    /// Commits an upload's manifest as a new version of `ns/key` (with the caller's request
    /// id, so a retried upload returns the committed version).
    pub async fn commit_object(
        &self,
        request_id: Vec<u8>,
        ns: &str,
        key: &str,
        manifest: Manifest,
        deadline: Duration,
    ) -> Result<OpResult, ConsensusError> {
        let op = Op {
            request_id,
            command: Command::ObjPut {
                ns: ns.to_string(),
                key: key.to_string(),
                manifest,
            },
        };
        self.front.propose(op, deadline).await
    }

    /// Stores `data` as a new version of `ns/key` from inside the node (the cluster's own
    /// small objects, e.g. forecaster weights), through the same pipeline as a client's
    /// upload, pushing copies whatever the namespace's mode. Returns the version.
    pub async fn put_small_object(self: &Arc<Self>, ns: &str, key: &str, data: Bytes) -> Result<u64, String> {
        let policy = self
            .reader
            .namespace(ns)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("namespace {ns} does not exist"))?
            .policy;
        let targets = self
            .place_upload(ns, key, &policy, true, self.rpc_timeout)
            .await
            .map_err(|e| e.to_string())?;
        let expected = Expected {
            size: Some(data.len() as u64),
            sha256: None,
        };
        let mut upload = Upload::start(self.clone(), ns, policy, targets, expected).map_err(|e| e.to_string())?;
        upload.write(data).await.map_err(|e| e.to_string())?;
        let stored = upload.finish().await.map_err(|e| e.to_string())?;
        let r = self
            .commit_object(Vec::new(), ns, key, stored.manifest, self.rpc_timeout * 10)
            .await
            .map_err(|e| e.to_string())?;
        match r.error {
            Some(why) => Err(why),
            None => Ok(r.version),
        }
    }
}

impl Upload {
    /// Starts the storing worker of an upload to namespace `ns` under `policy`, pushing to
    /// `targets`. Refused when `ns` is encrypted and this node cannot have its data key.
    pub fn start(
        dp: Arc<DataPlane>,
        ns: &str,
        policy: NsPolicy,
        targets: Vec<Peer>,
        expected: Expected,
    ) -> Result<Self, UploadError> {
        let chunker = new_chunker()?;
        let sealer = match dp.reader.ns_keys(ns).map_err(|e| UploadError::Store(e.to_string()))? {
            Some(keys) => Some(
                dp.keys
                    .sealer(ns, &keys, None)
                    .map_err(|e| UploadError::Key(e.to_string()))?,
            ),
            None => None,
        };
        let (tx, rx) = mpsc::channel::<Piece>(CHUNKS_QUEUED_MAX);
        let worker = tokio::spawn(store_chunks(dp.clone(), rx, targets, policy.compress, sealer));
        let (hash_tx, hash_rx) = mpsc::channel(HASH_QUEUED_MAX);
        Ok(Self {
            dp,
            policy,
            expected,
            chunker,
            size: 0,
            tx,
            hash_tx,
            hashing: start_hashing(hash_rx),
            worker: Some(worker),
        })
    }

    /// Bytes received so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Takes the next bytes of the object. Refused when they go past the announced size,
    /// and with the storing worker's error as soon as it failed (a full disk), so that the
    /// caller stops reading the rest of the upload.
    pub async fn write(&mut self, data: Bytes) -> Result<(), UploadError> {
        self.grow(data.len() as u64)?;
        let chunks = self.chunker.push(&data);
        self.hash(ToHash::Sent(data)).await?;
        for c in chunks {
            self.send(Piece::New(c)).await?;
        }
        Ok(())
    }

    /// Takes the next `len` bytes of the object as chunk `id`, which this node reads from
    /// its store or another holder instead of the caller sending them. The caller checks
    /// that `id` belongs to the upload's base version; a chunk nobody can serve intact fails
    /// the upload ([`UploadError::BaseUnreadable`]). Not for encrypted namespaces.
    pub async fn write_known(&mut self, id: ChunkId, len: u32) -> Result<(), UploadError> {
        self.grow(u64::from(len))?;
        // The bytes sent before it end a chunk here, as they did where the client cut them.
        let before = std::mem::replace(&mut self.chunker, new_chunker()?);
        for c in before.finish() {
            self.send(Piece::New(c)).await?;
        }
        let (bytes, read) = oneshot::channel();
        self.hash(ToHash::Read(read)).await?;
        self.send(Piece::Known { id, len, bytes }).await
    }

    /// Hands the next bytes (or the promise of them) to the whole-object hash.
    async fn hash(&mut self, item: ToHash) -> Result<(), UploadError> {
        if self.hash_tx.send(item).await.is_err() {
            return Err(UploadError::Store("the hashing thread stopped".into()));
        }
        Ok(())
    }

    /// Counts `n` more bytes; refused past the announced size.
    fn grow(&mut self, n: u64) -> Result<(), UploadError> {
        self.size += n;
        match self.expected.size.filter(|want| self.size > *want) {
            Some(want) => Err(UploadError::Mismatch(format!(
                "upload is longer than the announced {want} bytes"
            ))),
            None => Ok(()),
        }
    }

    /// Hands a piece to the worker, or its error if it has stopped.
    async fn send(&mut self, piece: Piece) -> Result<(), UploadError> {
        if self.tx.send(piece).await.is_err() {
            return Err(self.worker_failure().await);
        }
        Ok(())
    }

    /// Why the worker stopped taking chunks.
    async fn worker_failure(&mut self) -> UploadError {
        match self.worker.take() {
            Some(w) => match w.await {
                Ok(Err(e)) => e,
                Ok(Ok(_)) => UploadError::Store("the storing worker ended early".into()),
                Err(e) => UploadError::Store(e.to_string()),
            },
            None => UploadError::Store("the storing worker failed".into()),
        }
    }

    /// Ends the upload: the last chunk, the worker's result, then the checks against what
    /// was announced and the namespace's `min_sites`.
    pub async fn finish(self) -> Result<Stored, UploadError> {
        let Upload {
            dp,
            policy,
            expected,
            chunker,
            size,
            tx,
            hash_tx,
            hashing,
            worker,
        } = self;
        for c in chunker.finish() {
            if tx.send(Piece::New(c)).await.is_err() {
                break;
            }
        }
        drop(tx);
        let worker = worker.ok_or_else(|| UploadError::Store("the storing worker failed".into()))?;
        let (uploaded, ok_targets) = worker.await.map_err(|e| UploadError::Store(e.to_string()))??;
        if let Some(want) = expected.size.filter(|want| *want != size) {
            return Err(UploadError::Mismatch(format!(
                "upload ended after {size} of the announced {want} bytes (truncated)"
            )));
        }
        drop(hash_tx);
        let sha = hashing
            .await
            .map_err(|e| UploadError::Store(e.to_string()))?
            .ok_or_else(|| UploadError::Store("a known chunk's bytes never reached the hash".into()))?;
        if let Some(want) = expected.sha256.filter(|want| *want != sha) {
            return Err(UploadError::Mismatch(format!(
                "upload hashes to {} but the client announced {}",
                to_hex(&sha),
                to_hex(&want)
            )));
        }
        let mut holders = vec![dp.id];
        holders.extend(ok_targets);
        if policy.mode == Mode::Sync {
            let sites = dp.members.sites_of(&holders);
            if sites.len() < policy.min_sites as usize {
                return Err(UploadError::TooFewSites(format!(
                    "copies reached only {} of the {} sites the sync namespace needs ({sites:?})",
                    sites.len(),
                    policy.min_sites,
                )));
            }
        }
        Ok(Stored {
            manifest: Manifest {
                size,
                sha256: sha,
                chunks: uploaded.chunks,
                holders,
                created_ms: crate::clock::wall_ms(),
            },
            new_local: uploaded.new_local,
            replicated: uploaded.replicated,
        })
    }

    /// Gives up: stops the worker; nothing is committed.
    pub fn abort(self) {
        if let Some(w) = self.worker {
            w.abort();
        }
        // Dropping the sender ends the hashing thread.
    }
}

/// The chunker every upload uses: the SDK cuts with the same default parameters.
fn new_chunker() -> Result<Chunker, UploadError> {
    Chunker::new(ChunkerParams::default()).map_err(|e| UploadError::Store(e.to_string()))
}

/// Processes the pieces of one upload: seal (encrypted namespaces), claim, store locally
/// (a known chunk: read, verified, and kept here), push to `targets` (a target that fails
/// once is dropped for the rest of the object), and hash the whole object in order.
/// Returns what was stored and the targets that got every chunk.
async fn store_chunks(
    dp: Arc<DataPlane>,
    rx: mpsc::Receiver<Piece>,
    targets: Vec<Peer>,
    compress: bool,
    sealer: Option<Arc<ChunkSealer>>,
) -> Result<(Uploaded, Vec<NodeId>), UploadError> {
    // Sealed bytes do not compress: the store keeps them as they are.
    let store_compress = compress && sealer.is_none();
    let failed: Arc<Mutex<BTreeMap<NodeId, String>>> = Arc::default();
    let streams = dp.cfg.streams.max(1);
    let mut out = Uploaded::default();
    let mut results = ReceiverStream::new(rx)
        .map(|piece: Piece| {
            let dp = dp.clone();
            let targets = targets.clone();
            let failed = failed.clone();
            let sealer = sealer.clone();
            async move {
                let (id, new, data, recorded) = match piece {
                    Piece::New(data) => {
                        let (id, new, data) = store_new(&dp, data, sealer, compress, store_compress).await?;
                        (id, new, data, Vec::new())
                    }
                    Piece::Known { id, len, bytes } => {
                        let (new, data, holders) = store_known(&dp, id, len, sealer.is_some(), store_compress).await?;
                        let _ = bytes.send(data.clone());
                        (id, new, data, holders)
                    }
                };
                let len = data.len();
                let pushes = targets.iter().map(|t| {
                    let dp = dp.clone();
                    let failed = failed.clone();
                    let data = data.clone();
                    let recorded = recorded.contains(&t.id);
                    async move {
                        if failed.lock().map(|f| f.contains_key(&t.id)).unwrap_or(true) {
                            return 0;
                        }
                        match dp.push_chunk(t, id, data, store_compress, recorded).await {
                            Ok(n) => n,
                            Err(e) => {
                                tracing::warn!(target = t.id, error = %e, "push failed; target dropped for this object");
                                if let Ok(mut f) = failed.lock() {
                                    f.insert(t.id, e.to_string());
                                }
                                0
                            }
                        }
                    }
                });
                let sent: u64 = futures::future::join_all(pushes).await.into_iter().sum();
                Ok::<_, UploadError>((ChunkRef { id, len: len as u32 }, new, sent))
            }
        })
        .buffered(streams);
    while let Some(r) = results.next().await {
        let (c, new, sent) = r?;
        out.chunks.push(c);
        out.new_local += new as u64;
        out.replicated += sent;
    }
    let failed = failed.lock().map(|f| f.clone()).unwrap_or_default();
    for (node, why) in &failed {
        tracing::warn!(node, why, "copy on this node is missing; the repair queue will add it");
    }
    let ok: Vec<NodeId> = targets
        .iter()
        .map(|t| t.id)
        .filter(|t| !failed.contains_key(t))
        .collect();
    Ok((out, ok))
}

/// A chunk the client sent: sealed when the namespace is encrypted, named, claimed and
/// stored here. Returns its id, whether this node lacked it and the stored bytes.
async fn store_new(
    dp: &Arc<DataPlane>,
    data: Bytes,
    sealer: Option<Arc<ChunkSealer>>,
    compress: bool,
    store_compress: bool,
) -> Result<(ChunkId, bool, Bytes), UploadError> {
    let dp = dp.clone();
    tokio::task::spawn_blocking(move || {
        let d = match &sealer {
            Some(s) => Bytes::from(
                s.seal(&data, compress)
                    .map_err(|e| UploadError::Store(format!("sealing a chunk: {e}")))?,
            ),
            None => data,
        };
        let id = chunk_id(&d);
        // Claimed before it is looked at, so garbage collection cannot take an existing copy
        // between this check and the manifest's commit. An existing copy counts only if it
        // equals these bytes (compared, not re-hashed); a corrupt one is replaced by them.
        dp.claims.claim(&id);
        store_here(&dp, &id, &d, store_compress).map(|new| (id, new, d))
    })
    .await
    .map_err(|e| UploadError::Store(e.to_string()))?
}

/// A chunk of the base version named by the client: claimed, read verified from this node
/// or another holder, and stored here if this node lacked it. Returns whether this node
/// lacked it, the bytes and the chunk's recorded holders (asked for presence only when
/// pushed to).
async fn store_known(
    dp: &Arc<DataPlane>,
    id: ChunkId,
    len: u32,
    sealed: bool,
    store_compress: bool,
) -> Result<(bool, Bytes, Vec<NodeId>), UploadError> {
    if sealed {
        return Err(UploadError::Mismatch(
            "an encrypted namespace's upload cannot name chunks of a base version".into(),
        ));
    }
    // Claimed first: garbage collection must not take this node's copy before the commit.
    dp.claims.claim(&id);
    let holders = dp
        .reader
        .chunk(&id)
        .map_err(|e| UploadError::Store(e.to_string()))?
        .map(|r| r.holders)
        .unwrap_or_default();
    let data = dp.read_chunk(&id, &holders, store_compress).await.map_err(|e| {
        UploadError::BaseUnreadable(format!(
            "chunk {} of the base version cannot be read: {e}; upload the whole object",
            to_hex(&id)
        ))
    })?;
    if data.len() != len as usize {
        return Err(UploadError::Mismatch(format!(
            "chunk {} of the base version is {} bytes, not the {len} the upload said",
            to_hex(&id),
            data.len()
        )));
    }
    // `read_chunk` keeps a copy here when this node is a recorded holder (unless that
    // repair failed); any node without the file stores it now.
    let (keep, d) = (dp.clone(), data.clone());
    let new = tokio::task::spawn_blocking(move || match keep.store.has(&id) {
        true => Ok(false),
        false => store_here(&keep, &id, &d, store_compress),
    })
    .await
    .map_err(|e| UploadError::Store(e.to_string()))??;
    Ok((new, data, holders))
}

/// Stores chunk `id` on this node (an existing copy is compared, a bad one replaced);
/// whether this node lacked it. Blocking.
fn store_here(dp: &DataPlane, id: &ChunkId, data: &[u8], compress: bool) -> Result<bool, UploadError> {
    match dp.store.put_hashed(id, data, compress) {
        Ok(new) => Ok(new),
        Err(ChunkError::DiskFull) => Err(UploadError::DiskFull(dp.id)),
        Err(e) => Err(UploadError::Store(e.to_string())),
    }
}
