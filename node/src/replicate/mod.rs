//! The data plane: moving chunks between nodes, placing copies across sites, the leader's
//! repair queue, scrub and chunk garbage collection.
//!
//! Owns every chunk transfer. Chunks travel over the peer QUIC transport as their own RPCs
//! (have / put / get / verify / pull), never through the Raft log; a receiver re-hashes every
//! chunk before storing it and a reader re-hashes every chunk before using it. Metadata
//! changes (a committed manifest, new holders) go through Raft via [`DataPlane::propose`],
//! which forwards to the leader when this node is a follower. Submodules: [`placement`]
//! (which nodes get copies), [`queue`] (the leader's re-replication loop and lag metrics),
//! [`scrub`] (re-hashing local copies, repair, garbage collection).

pub mod claims;
pub mod placement;
pub mod queue;
pub mod scrub;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ark_proto::v1::{
    peer_request, peer_response, ChunkGet, ChunkIds, ChunkPull, ChunkPut, ChunkState, ChunkStates, ObjectRef, PeerAddr,
    PeerRequest, PeerResponse, Prestage, PrestageAck, RaftCodec, ReadIndex,
};
use bytes::Bytes;
use tonic::Status;

use crate::api::fence::ReadFence;
use crate::api::proposer::Proposer;
use crate::cache::ChunkCache;
use crate::chunks::{chunk_id, to_hex, ChunkError, ChunkId, ChunkStore};
use crate::config::ObjectsConfig;
use crate::net::{NetError, PeerHandler, PeerPool};
use crate::raft::network::RaftPeerService;
use crate::raft::objects::ObjectReader;
use crate::raft::store::{decode, encode};
use crate::raft::{ArkRaft, NodeId, Op, OpResult};
use crate::telemetry::Telemetry;

/// A cluster member as the data plane sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Node id.
    pub id: NodeId,
    /// Site.
    pub site: String,
    /// QUIC peer address.
    pub addr: String,
}

/// Why a chunk transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The peer could not be reached or the RPC broke.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The peer's disk is full.
    #[error("node {node}: disk full: {msg}")]
    DiskFull {
        /// Node.
        node: NodeId,
        /// Its message.
        msg: String,
    },
    /// The peer refused or failed the request.
    #[error("node {node}: {msg}")]
    Remote {
        /// Node.
        node: NodeId,
        /// Its message.
        msg: String,
    },
    /// No holder could supply a good copy.
    #[error("no good copy of chunk {0} on any holder")]
    NoGoodCopy(String),
}

/// A holder that let a hedged fetch go elsewhere is asked last for this long.
const SLOW_HOLDER_FOR: Duration = Duration::from_secs(30);

/// Objects one prestage request may name.
pub const PRESTAGE_OBJECTS_MAX: usize = 64;
/// Deadline of a prestage request (it may fetch several MiB).
const PRESTAGE_TIMEOUT: Duration = Duration::from_secs(60);

/// Deadline of one chunk RPC carrying `len` bytes: a fixed part plus 1 MiB/s.
fn chunk_timeout(base: Duration, len: usize) -> Duration {
    base * 5 + Duration::from_millis((len / 1024) as u64)
}

/// Everything the data plane needs, shared by the object API, the peer handler and the
/// background loops.
pub struct DataPlane {
    /// This node.
    pub id: NodeId,
    /// This node's site.
    pub site: String,
    /// Local chunk files.
    pub store: ChunkStore,
    pool: PeerPool,
    raft: ArkRaft,
    /// Object metadata in the local state machine.
    pub reader: ObjectReader,
    proposer: Proposer,
    fence: Arc<ReadFence>,
    /// Tunables.
    pub cfg: ObjectsConfig,
    rpc_timeout: Duration,
    scrub_lock: tokio::sync::Mutex<()>,
    /// Hot chunks held by other nodes.
    cache: Arc<ChunkCache>,
    /// The leader's latest view of each namespace: (objects behind policy, lag ms).
    pub(crate) lag: std::sync::Mutex<std::collections::HashMap<String, (u64, u64)>>,
    /// Node failure forecasts (read by the queue) and the queue's head (written by it).
    pub risk: Arc<crate::risk::Risk>,
    /// Reads served per object, for the hot set.
    pub hot: Arc<crate::risk::HotReads>,
    /// Holders that stayed silent while another answered a chunk fetch, and when: asked
    /// last for [`SLOW_HOLDER_FOR`].
    slow_holders: std::sync::Mutex<std::collections::HashMap<NodeId, std::time::Instant>>,
    /// Chunks about to be referred to, which garbage collection leaves alone.
    pub claims: claims::ChunkClaims,
}

impl DataPlane {
    /// Assembles the data plane.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: NodeId,
        site: String,
        store: ChunkStore,
        pool: PeerPool,
        raft: ArkRaft,
        reader: ObjectReader,
        proposer: Proposer,
        fence: Arc<ReadFence>,
        cfg: ObjectsConfig,
        rpc_timeout: Duration,
        cache: Arc<ChunkCache>,
        risk: Arc<crate::risk::Risk>,
        hot: Arc<crate::risk::HotReads>,
    ) -> Self {
        let claims = claims::ChunkClaims::new(Duration::from_secs(cfg.gc_grace_s));
        Self {
            id,
            site,
            store,
            pool,
            raft,
            reader,
            proposer,
            fence,
            cfg,
            rpc_timeout,
            scrub_lock: tokio::sync::Mutex::new(()),
            cache,
            lag: Default::default(),
            risk,
            hot,
            slow_holders: Default::default(),
            claims,
        }
    }

    /// Current members (voters and learners) with their sites and peer addresses.
    pub fn members(&self) -> Vec<Peer> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.nodes()
            .map(|(id, n)| Peer {
                id: *id,
                site: n.site.clone(),
                addr: n.peer_addr.clone(),
            })
            .collect()
    }

    fn member(&self, id: NodeId) -> Option<Peer> {
        self.members().into_iter().find(|p| p.id == id)
    }

    /// Current voters.
    pub fn voter_ids(&self) -> Vec<NodeId> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// Stores `data` (one chunk at most) as a new version of `ns/key` from inside the node,
    /// for the cluster's own small objects (e.g. model weights): the local copy (fsync), a
    /// push to live members chosen by placement until the namespace's copies are met, then the
    /// manifest through Raft. A sync namespace whose `min_sites` are not reached is refused
    /// and nothing is committed. Returns the version.
    pub async fn put_small_object(&self, ns: &str, key: &str, data: Bytes) -> Result<u64, String> {
        let policy = self
            .reader
            .namespace(ns)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("namespace {ns} does not exist"))?
            .policy;
        if data.len() > crate::chunks::MAX_CHUNK {
            return Err(format!("{} bytes is more than one chunk", data.len()));
        }
        let id = chunk_id(&data);
        let (store, bytes, compress) = (self.store.clone(), data.clone(), policy.compress);
        tokio::task::spawn_blocking(move || store.put_hashed(&id, &bytes, compress))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let mut holders = vec![self.id];
        let live = self.live_peers(self.rpc_timeout).await;
        let want = (policy.copies as usize).saturating_sub(1);
        for p in placement::choose(
            &self.sites_of(&holders),
            &holders,
            &live,
            want,
            placement::object_salt(ns, key),
        ) {
            match self.push_chunk(&p, id, data.clone(), compress).await {
                Ok(_) => holders.push(p.id),
                Err(e) => tracing::debug!(node = p.id, error = %e, "small object copy failed"),
            }
        }
        if policy.mode == crate::raft::objects::Mode::Sync && self.sites_of(&holders).len() < policy.min_sites as usize
        {
            return Err(format!(
                "copies reached fewer than the {} sites {ns} needs",
                policy.min_sites
            ));
        }
        let op = Op {
            request_id: Vec::new(),
            command: crate::raft::Command::ObjPut {
                ns: ns.to_string(),
                key: key.to_string(),
                manifest: crate::raft::objects::Manifest {
                    size: data.len() as u64,
                    // A chunk's id is the SHA-256 of its bytes: for one chunk, the object's.
                    sha256: id,
                    chunks: vec![crate::raft::objects::ChunkRef {
                        id,
                        len: data.len() as u32,
                    }],
                    holders,
                    created_ms: crate::api::now_ms(),
                },
            },
        };
        let r = self
            .propose(op, self.rpc_timeout * 10)
            .await
            .map_err(|s| s.message().to_string())?;
        match r.error {
            Some(why) => Err(why),
            None => Ok(r.version),
        }
    }

    /// The bytes of a small object's version `entry`, every chunk verified and the whole
    /// checked against the manifest; refused above `max` bytes.
    pub async fn read_small_object(
        &self,
        entry: &crate::raft::objects::ObjectEntry,
        max: u64,
    ) -> Result<Vec<u8>, String> {
        if entry.record.size > max {
            return Err(format!("{} bytes is over the {max}-byte limit", entry.record.size));
        }
        let mut bytes = Vec::with_capacity(entry.record.size as usize);
        for c in &entry.record.chunks {
            let holders = self
                .reader
                .chunk(&c.id)
                .map_err(|e| e.to_string())?
                .map(|r| r.holders)
                .unwrap_or_default();
            let b = self
                .read_chunk(&c.id, &holders, false)
                .await
                .map_err(|s| s.message().to_string())?;
            bytes.extend_from_slice(&b);
        }
        let sha: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, &bytes)
            .as_ref()
            .try_into()
            .map_err(|_| "bad digest length".to_string())?;
        if sha != entry.record.sha256 {
            return Err("object bytes do not match the manifest's SHA-256".into());
        }
        Ok(bytes)
    }

    /// Asks `p` to warm its chunk cache with `objects` (see [`Self::prestage`]).
    pub async fn prestage_on(&self, p: &Peer, objects: Vec<(String, String)>) -> Result<PrestageAck, DataError> {
        let body = peer_request::Body::Prestage(Prestage {
            objects: objects
                .into_iter()
                .map(|(namespace, key)| ObjectRef { namespace, key })
                .collect(),
        });
        match self.call(p, body, PRESTAGE_TIMEOUT).await? {
            peer_response::Body::PrestageAck(a) => Ok(a),
            _ => Err(DataError::Remote {
                node: p.id,
                msg: "unexpected answer to prestage".into(),
            }),
        }
    }

    /// Reads the chunks of the latest versions of `objects` that this node does not hold
    /// into its chunk cache (each verified on arrival, like any read), so that this node
    /// serves them locally if it takes over. Bounded by [`PRESTAGE_OBJECTS_MAX`].
    pub async fn prestage(&self, objects: &[ObjectRef]) -> PrestageAck {
        let mut ack = PrestageAck::default();
        for o in objects.iter().take(PRESTAGE_OBJECTS_MAX) {
            let Ok(Some(entry)) = self.reader.get(&o.namespace, &o.key, 0) else {
                continue;
            };
            if entry.record.deleted {
                continue;
            }
            let compress = self
                .reader
                .namespace(&o.namespace)
                .ok()
                .flatten()
                .is_some_and(|n| n.policy.compress);
            for c in &entry.record.chunks {
                let holders = self
                    .reader
                    .chunk(&c.id)
                    .ok()
                    .flatten()
                    .map(|r| r.holders)
                    .unwrap_or_default();
                let result = if holders.contains(&self.id) {
                    ack.local += 1;
                    "local"
                } else if self.cache.get(&c.id).await.is_some() {
                    ack.cached += 1;
                    "cached"
                } else if self.read_chunk(&c.id, &holders, compress).await.is_ok() {
                    ack.fetched += 1;
                    ack.bytes_fetched += u64::from(c.len);
                    "fetched"
                } else {
                    ack.failed += 1;
                    "failed"
                };
                metrics::counter!("ark_prestage_chunks_total", "result" => result).increment(1);
            }
        }
        ack
    }

    /// Whether this node is the leader now.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// Whether `id` answered this node recently (always true for this node). Meaningful on
    /// the leader, which talks to every member all the time.
    pub fn recently_alive(&self, id: NodeId) -> bool {
        id == self.id
            || self
                .pool
                .since_last_ok(id)
                .is_some_and(|d| d < Duration::from_millis(self.cfg.holder_lost_after_ms))
    }

    async fn call(
        &self,
        p: &Peer,
        body: peer_request::Body,
        timeout: Duration,
    ) -> Result<peer_response::Body, DataError> {
        let req = PeerRequest {
            from: self.id,
            raft_codec: RaftCodec::Unspecified as i32,
            body: Some(body),
        };
        let resp = self.pool.call(p.id, &p.addr, &req, timeout).await?;
        match resp.body {
            Some(peer_response::Body::Failure(msg)) => Err(DataError::Remote { node: p.id, msg }),
            Some(peer_response::Body::DiskFull(msg)) => Err(DataError::DiskFull { node: p.id, msg }),
            Some(b) => Ok(b),
            None => Err(DataError::Remote {
                node: p.id,
                msg: "empty response".into(),
            }),
        }
    }

    /// Members other than this node that answer a no-op chunk query within `timeout`.
    pub async fn live_peers(&self, timeout: Duration) -> Vec<Peer> {
        let others: Vec<Peer> = self.members().into_iter().filter(|p| p.id != self.id).collect();
        let probes = others.into_iter().map(|p| async move {
            let ok = self
                .call(&p, peer_request::Body::ChunkHave(ChunkIds { ids: Vec::new() }), timeout)
                .await
                .is_ok();
            ok.then_some(p)
        });
        futures::future::join_all(probes).await.into_iter().flatten().collect()
    }

    /// Sends chunk `id` to `p` unless it already holds it; returns the bytes sent.
    pub async fn push_chunk(&self, p: &Peer, id: ChunkId, data: Bytes, compress: bool) -> Result<u64, DataError> {
        let have = self
            .call(
                p,
                peer_request::Body::ChunkHave(ChunkIds { ids: vec![id.to_vec()] }),
                self.rpc_timeout * 2,
            )
            .await?;
        let missing = matches!(&have, peer_response::Body::ChunkIds(m) if !m.ids.is_empty());
        if !missing {
            return Ok(0);
        }
        let len = data.len();
        let body = peer_request::Body::ChunkPut(ChunkPut {
            id: id.to_vec(),
            data,
            compress,
        });
        self.call(p, body, chunk_timeout(self.rpc_timeout, len)).await?;
        metrics::counter!("ark_replication_bytes_sent_total").increment(len as u64);
        metrics::counter!("ark_replication_chunks_sent_total").increment(1);
        Ok(len as u64)
    }

    /// Holders of a chunk other than this node, same site first.
    fn remote_holders(&self, holders: &[NodeId]) -> Vec<Peer> {
        let mut peers: Vec<Peer> = self
            .members()
            .into_iter()
            .filter(|p| p.id != self.id && holders.contains(&p.id))
            .collect();
        let slow: std::collections::HashSet<NodeId> = self
            .slow_holders
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|(_, t)| t.elapsed() < SLOW_HOLDER_FOR)
                    .map(|(n, _)| *n)
                    .collect()
            })
            .unwrap_or_default();
        peers.sort_by_key(|p| (slow.contains(&p.id), p.site != self.site, p.id));
        peers
    }

    /// Fetches chunk `id` from the first of `sources` that has a good copy, verifying it.
    /// Sources are asked in order; when one has not answered within the RPC timeout (a
    /// holder in a lost site answers nothing until the chunk deadline), the next one is
    /// asked as well and the first good copy wins.
    pub async fn fetch_from(&self, id: &ChunkId, sources: &[Peer]) -> Result<Bytes, DataError> {
        use futures::stream::{FuturesUnordered, StreamExt};
        let mut last = None;
        let mut asked = sources.iter();
        let mut running = FuturesUnordered::new();
        // Asked and not answered yet.
        let mut waiting: Vec<NodeId> = Vec::new();
        loop {
            if running.is_empty() {
                match asked.next() {
                    Some(p) => {
                        waiting.push(p.id);
                        running.push(self.fetch_one(id, p));
                    }
                    None => break,
                }
            }
            let hedge = tokio::time::sleep(self.rpc_timeout);
            tokio::select! {
                done = running.next() => match done {
                    Some((from, Ok(b))) => {
                        // Whoever was asked first and is still silent is slow or gone: ask
                        // the others first for a while.
                        waiting.retain(|n| *n != from);
                        if !waiting.is_empty() {
                            if let Ok(mut slow) = self.slow_holders.lock() {
                                for n in &waiting {
                                    slow.insert(*n, std::time::Instant::now());
                                }
                            }
                        }
                        return Ok(b);
                    }
                    Some((from, Err(why))) => {
                        waiting.retain(|n| *n != from);
                        last = Some(why);
                    }
                    None => {}
                },
                () = hedge => {
                    if let Some(p) = asked.next() {
                        metrics::counter!("ark_chunk_fetch_hedged_total").increment(1);
                        waiting.push(p.id);
                        running.push(self.fetch_one(id, p));
                    }
                }
            }
        }
        Err(DataError::NoGoodCopy(format!(
            "{}: {}",
            to_hex(id),
            last.unwrap_or_else(|| "no holder".into())
        )))
    }

    /// One holder's verified copy of chunk `id`, or why not, with the holder's id.
    async fn fetch_one(&self, id: &ChunkId, p: &Peer) -> (NodeId, Result<Bytes, String>) {
        (p.id, self.fetch_one_inner(id, p).await)
    }

    async fn fetch_one_inner(&self, id: &ChunkId, p: &Peer) -> Result<Bytes, String> {
        let r = self
            .call(
                p,
                peer_request::Body::ChunkGet(ChunkGet { id: id.to_vec() }),
                chunk_timeout(self.rpc_timeout, 4 << 20),
            )
            .await;
        match r {
            Ok(peer_response::Body::ChunkData(d)) => {
                let check = d.clone();
                let ok = tokio::task::spawn_blocking(move || chunk_id(&check))
                    .await
                    .is_ok_and(|h| &h == id);
                if ok {
                    metrics::counter!("ark_replication_bytes_fetched_total").increment(d.len() as u64);
                    return Ok(d);
                }
                // The peer verified it before sending; a mismatch here means the bytes
                // changed on the way or the peer is faulty: try the next one.
                metrics::counter!("ark_chunks_bad_from_peer_total").increment(1);
                Err(format!("node {} sent bytes that do not match the id", p.id))
            }
            Ok(peer_response::Body::ChunkUnavailable(why)) => Err(format!("node {}: {why}", p.id)),
            Ok(_) => Err(format!("node {}: unexpected answer", p.id)),
            Err(e) => Err(e.to_string()),
        }
    }

    /// A verified copy of chunk `id`: the local one, or one fetched from another holder
    /// (which also repairs the local copy when this node is a holder). Fails rather than
    /// return bytes that do not match the id.
    pub async fn read_chunk(&self, id: &ChunkId, holders: &[NodeId], compress: bool) -> Result<Bytes, Status> {
        let store = self.store.clone();
        let cid = *id;
        let local = tokio::task::spawn_blocking(move || store.get(&cid))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let local_err = match local {
            Ok(b) => return Ok(b),
            Err(e) => e,
        };
        if matches!(local_err, ChunkError::Corrupt { .. }) {
            tracing::warn!(chunk = %to_hex(id), "local copy corrupt; reading from a replica");
        }
        let holder_here = holders.contains(&self.id);
        if !holder_here {
            if let Some(b) = self.cache.get(id).await {
                return Ok(b);
            }
        }
        let sources = self.remote_holders(holders);
        match self.fetch_from(id, &sources).await {
            Ok(b) => {
                if !holder_here {
                    self.cache.insert(*id, &b);
                }
                if holders.contains(&self.id) || matches!(local_err, ChunkError::Corrupt { .. }) {
                    let store = self.store.clone();
                    let data = b.clone();
                    let repaired = tokio::task::spawn_blocking(move || store.put_hashed(&cid, &data, compress)).await;
                    if let Ok(Ok(true)) = repaired {
                        metrics::counter!("ark_chunks_repaired_total", "by" => "read").increment(1);
                    }
                }
                Ok(b)
            }
            Err(e) => {
                metrics::counter!("ark_object_reads_failed_total").increment(1);
                Err(Status::data_loss(format!(
                    "chunk {} has no good copy: local: {local_err}; replicas: {e}",
                    to_hex(id)
                )))
            }
        }
    }

    /// Proposes one state machine write: on the leader directly, otherwise forwarded to it.
    /// Retries (with the same request id, so at most once) until `deadline`.
    pub async fn propose(&self, op: Op, deadline: Duration) -> Result<OpResult, Status> {
        let until = tokio::time::Instant::now() + deadline;
        let mut last = Status::unavailable("no leader known");
        loop {
            let leader = self.raft.metrics().borrow().current_leader;
            match leader {
                Some(l) if l == self.id => match self.proposer.propose(op.clone()).await {
                    Ok(r) => return Ok(r),
                    Err(st) if st.code() == tonic::Code::Unavailable => last = st,
                    Err(st) => return Err(st),
                },
                Some(l) => match self.member(l) {
                    Some(p) => {
                        let body = match encode(&op) {
                            Ok(b) => peer_request::Body::ForwardWrite(b),
                            Err(e) => return Err(Status::internal(e.to_string())),
                        };
                        match self.call(&p, body, self.rpc_timeout * 5).await {
                            Ok(peer_response::Body::Ok(b)) => {
                                return decode::<OpResult>(&b).map_err(|e| Status::internal(e.to_string()))
                            }
                            Ok(_) => last = Status::internal("leader sent an unexpected answer"),
                            Err(e) => last = Status::unavailable(format!("forwarding to leader {l}: {e}")),
                        }
                    }
                    None => last = Status::unavailable(format!("leader {l} not in membership")),
                },
                None => {}
            }
            if tokio::time::Instant::now() >= until {
                return Err(last);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Makes the next local metadata read linearizable, on any node: the leader fences and
    /// confirms its leadership; a follower asks the leader for a read index and waits until
    /// it has applied that far.
    pub async fn linearize(&self) -> Result<(), Status> {
        let leader = self.raft.metrics().borrow().current_leader;
        match leader {
            Some(l) if l == self.id => self.fence.linearize().await.map(|_| ()),
            Some(l) => {
                let p = self
                    .member(l)
                    .ok_or_else(|| Status::unavailable(format!("leader {l} not in membership")))?;
                let idx = match self
                    .call(&p, peer_request::Body::ReadIndex(ReadIndex {}), self.rpc_timeout * 2)
                    .await
                {
                    Ok(peer_response::Body::Ok(b)) => decode::<u64>(&b).map_err(|e| Status::internal(e.to_string()))?,
                    Ok(_) => return Err(Status::internal("leader sent an unexpected answer")),
                    Err(e) => return Err(Status::unavailable(format!("asking leader {l} for a read index: {e}"))),
                };
                self.raft
                    .wait(Some(self.rpc_timeout * 5))
                    .applied_index_at_least(Some(idx), "read index")
                    .await
                    .map_err(|e| Status::unavailable(format!("this node has not caught up with the leader: {e}")))?;
                Ok(())
            }
            None => Err(Status::unavailable(
                "no leader is known right now (election in progress)",
            )),
        }
    }

    /// Answers a data-plane request from a peer.
    pub async fn handle(&self, body: peer_request::Body) -> PeerResponse {
        let body = match body {
            peer_request::Body::ChunkHave(ids) => match parse_ids(&ids.ids) {
                Err(e) => peer_response::Body::Failure(e),
                Ok(ids) => {
                    // Claimed first: a put is about to refer to them, so garbage collection
                    // must not take them meanwhile. A copy counts as present only if it is
                    // intact, read and hashed now: a rotten one answered as present would
                    // make the uploader throw away the good bytes it holds. (The upload
                    // then pushes the chunk, and the put replaces the bad copy.)
                    for id in &ids {
                        self.claims.claim(id);
                    }
                    let store = self.store.clone();
                    let missing = tokio::task::spawn_blocking(move || {
                        ids.into_iter()
                            .filter(|id| store.verify(id).is_err())
                            .map(|id| id.to_vec())
                            .collect()
                    })
                    .await;
                    match missing {
                        Ok(ids) => peer_response::Body::ChunkIds(ChunkIds { ids }),
                        Err(e) => peer_response::Body::Failure(e.to_string()),
                    }
                }
            },
            peer_request::Body::ChunkPut(p) => self.handle_put(p).await,
            peer_request::Body::ChunkGet(g) => match parse_id(&g.id) {
                Err(e) => peer_response::Body::Failure(e),
                Ok(id) => {
                    let store = self.store.clone();
                    match tokio::task::spawn_blocking(move || store.get(&id)).await {
                        Ok(Ok(b)) => peer_response::Body::ChunkData(b),
                        Ok(Err(e)) => peer_response::Body::ChunkUnavailable(e.to_string()),
                        Err(e) => peer_response::Body::Failure(e.to_string()),
                    }
                }
            },
            peer_request::Body::ChunkVerify(ids) => match parse_ids(&ids.ids) {
                Err(e) => peer_response::Body::Failure(e),
                Ok(ids) => {
                    let store = self.store.clone();
                    let states = tokio::task::spawn_blocking(move || {
                        ids.iter()
                            .map(|id| match store.verify(id) {
                                Ok(()) => ChunkState::Ok as i32,
                                Err(ChunkError::NotFound { .. }) => ChunkState::Missing as i32,
                                Err(_) => ChunkState::Corrupt as i32,
                            })
                            .collect()
                    })
                    .await;
                    match states {
                        Ok(states) => peer_response::Body::ChunkStates(ChunkStates { states }),
                        Err(e) => peer_response::Body::Failure(e.to_string()),
                    }
                }
            },
            peer_request::Body::ChunkPull(p) => self.handle_pull(p).await,
            peer_request::Body::ForwardWrite(b) => match decode::<Op>(&b) {
                Err(e) => peer_response::Body::Failure(format!("malformed forwarded write: {e}")),
                Ok(op) => match self.proposer.propose(op).await {
                    Ok(r) => match encode(&r) {
                        Ok(b) => peer_response::Body::Ok(b),
                        Err(e) => peer_response::Body::Failure(e.to_string()),
                    },
                    Err(st) => peer_response::Body::Failure(st.message().to_string()),
                },
            },
            peer_request::Body::ReadIndex(_) => match self.fence.linearize().await {
                Ok(idx) => match encode(&idx) {
                    Ok(b) => peer_response::Body::Ok(b),
                    Err(e) => peer_response::Body::Failure(e.to_string()),
                },
                Err(st) => peer_response::Body::Failure(st.message().to_string()),
            },
            peer_request::Body::Prestage(p) => peer_response::Body::PrestageAck(self.prestage(&p.objects).await),
            peer_request::Body::ScrubRun(_) => match self.scrub_now().await {
                Ok(r) => peer_response::Body::Scrub(r),
                Err(e) => peer_response::Body::Failure(e),
            },
            peer_request::Body::AppendEntries(_)
            | peer_request::Body::Vote(_)
            | peer_request::Body::InstallSnapshot(_) => {
                peer_response::Body::Failure("raft request sent to the data plane".into())
            }
            peer_request::Body::Telemetry(_) => {
                peer_response::Body::Failure("telemetry report sent to the data plane".into())
            }
        };
        PeerResponse { body: Some(body) }
    }

    async fn handle_put(&self, p: ChunkPut) -> peer_response::Body {
        let id = match parse_id(&p.id) {
            Ok(id) => id,
            Err(e) => return peer_response::Body::Failure(e),
        };
        let len = p.data.len() as u64;
        let store = self.store.clone();
        self.claims.claim(&id);
        match tokio::task::spawn_blocking(move || store.put(&id, &p.data, p.compress)).await {
            Ok(Ok(_)) => {
                metrics::counter!("ark_replication_bytes_received_total").increment(len);
                peer_response::Body::Ok(Vec::new())
            }
            Ok(Err(ChunkError::DiskFull)) => peer_response::Body::DiskFull(ChunkError::DiskFull.to_string()),
            Ok(Err(e)) => {
                metrics::counter!("ark_replication_chunks_refused_total").increment(1);
                peer_response::Body::Failure(format!("chunk {} refused: {e}", to_hex(&id)))
            }
            Err(e) => peer_response::Body::Failure(e.to_string()),
        }
    }

    async fn handle_pull(&self, p: ChunkPull) -> peer_response::Body {
        let ids = match parse_ids(&p.ids) {
            Ok(ids) => ids,
            Err(e) => return peer_response::Body::Failure(e),
        };
        let sources: Vec<Peer> = {
            let members = self.members();
            p.sources
                .iter()
                .filter(|s| s.id != self.id)
                .map(|s: &PeerAddr| Peer {
                    id: s.id,
                    site: members
                        .iter()
                        .find(|m| m.id == s.id)
                        .map(|m| m.site.clone())
                        .unwrap_or_default(),
                    addr: s.addr.clone(),
                })
                .collect()
        };
        let mut held = Vec::new();
        for id in ids {
            self.claims.claim(&id);
            let store = self.store.clone();
            let ok = tokio::task::spawn_blocking(move || store.verify(&id).is_ok())
                .await
                .unwrap_or(false);
            if ok {
                held.push(id.to_vec());
                continue;
            }
            let Ok(data) = self.fetch_from(&id, &sources).await else {
                continue;
            };
            let store = self.store.clone();
            let len = data.len() as u64;
            match tokio::task::spawn_blocking(move || store.put_hashed(&id, &data, p.compress)).await {
                Ok(Ok(_)) => {
                    metrics::counter!("ark_replication_bytes_received_total").increment(len);
                    held.push(id.to_vec());
                }
                Ok(Err(ChunkError::DiskFull)) => {
                    return peer_response::Body::DiskFull(ChunkError::DiskFull.to_string());
                }
                _ => {}
            }
        }
        peer_response::Body::ChunkIds(ChunkIds { ids: held })
    }

    /// Asks node `p` to fetch `ids` from `sources` and store them; returns the ids it holds.
    pub async fn pull_to(
        &self,
        p: &Peer,
        ids: &[ChunkId],
        sources: &[Peer],
        compress: bool,
        bytes: u64,
    ) -> Result<Vec<ChunkId>, DataError> {
        let body = peer_request::Body::ChunkPull(ChunkPull {
            ids: ids.iter().map(|i| i.to_vec()).collect(),
            sources: sources
                .iter()
                .map(|s| PeerAddr {
                    id: s.id,
                    addr: s.addr.clone(),
                })
                .collect(),
            compress,
        });
        match self
            .call(p, body, chunk_timeout(self.rpc_timeout, bytes as usize))
            .await?
        {
            peer_response::Body::ChunkIds(c) => parse_ids(&c.ids).map_err(|msg| DataError::Remote { node: p.id, msg }),
            _ => Err(DataError::Remote {
                node: p.id,
                msg: "unexpected answer to a pull".into(),
            }),
        }
    }

    /// Asks node `p` to re-hash `ids`.
    pub async fn verify_on(&self, p: &Peer, ids: &[ChunkId], bytes: u64) -> Result<Vec<ChunkState>, DataError> {
        if p.id == self.id {
            let store = self.store.clone();
            let ids = ids.to_vec();
            return tokio::task::spawn_blocking(move || {
                ids.iter()
                    .map(|id| match store.verify(id) {
                        Ok(()) => ChunkState::Ok,
                        Err(ChunkError::NotFound { .. }) => ChunkState::Missing,
                        Err(_) => ChunkState::Corrupt,
                    })
                    .collect()
            })
            .await
            .map_err(|e| DataError::Remote {
                node: self.id,
                msg: e.to_string(),
            });
        }
        let body = peer_request::Body::ChunkVerify(ChunkIds {
            ids: ids.iter().map(|i| i.to_vec()).collect(),
        });
        match self
            .call(p, body, chunk_timeout(self.rpc_timeout, bytes as usize))
            .await?
        {
            peer_response::Body::ChunkStates(s) if s.states.len() == ids.len() => Ok(s
                .states
                .into_iter()
                .map(|v| ChunkState::try_from(v).unwrap_or(ChunkState::Unspecified))
                .collect()),
            _ => Err(DataError::Remote {
                node: p.id,
                msg: "unexpected answer to verify".into(),
            }),
        }
    }

    /// Runs a scrub pass on node `p` (this node locally).
    pub async fn scrub_on(&self, p: &Peer) -> Result<ark_proto::v1::ScrubResult, String> {
        if p.id == self.id {
            return self.scrub_now().await;
        }
        match self
            .call(
                p,
                peer_request::Body::ScrubRun(ark_proto::v1::ScrubRun {}),
                Duration::from_secs(3600),
            )
            .await
        {
            Ok(peer_response::Body::Scrub(r)) => Ok(r),
            Ok(_) => Err("unexpected answer to scrub".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Sites of the given nodes (unknown nodes count as their own site).
    pub fn sites_of(&self, nodes: &[NodeId]) -> BTreeSet<String> {
        let members = self.members();
        nodes
            .iter()
            .map(|n| {
                members
                    .iter()
                    .find(|m| m.id == *n)
                    .map(|m| m.site.clone())
                    .unwrap_or_else(|| format!("?node-{n}"))
            })
            .collect()
    }
}

fn parse_id(b: &[u8]) -> Result<ChunkId, String> {
    ChunkId::try_from(b).map_err(|_| format!("a chunk id is 32 bytes, not {}", b.len()))
}

fn parse_ids(ids: &[Vec<u8>]) -> Result<Vec<ChunkId>, String> {
    ids.iter().map(|b| parse_id(b)).collect()
}

/// Routes peer requests: Raft messages to Raft, telemetry reports to the telemetry
/// service, the rest to the data plane.
pub struct PeerRouter {
    raft: RaftPeerService,
    data: Arc<DataPlane>,
    telemetry: Arc<Telemetry>,
}

impl PeerRouter {
    /// A router over all three.
    pub fn new(raft: RaftPeerService, data: Arc<DataPlane>, telemetry: Arc<Telemetry>) -> Self {
        Self { raft, data, telemetry }
    }
}

impl PeerHandler for PeerRouter {
    async fn handle(&self, req: PeerRequest) -> PeerResponse {
        match req.body {
            Some(peer_request::Body::AppendEntries(_))
            | Some(peer_request::Body::Vote(_))
            | Some(peer_request::Body::InstallSnapshot(_)) => self.raft.handle(req).await,
            Some(peer_request::Body::Telemetry(r)) => PeerResponse {
                body: Some(self.telemetry.handle_report(req.from, r)),
            },
            Some(b) => self.data.handle(b).await,
            None => PeerResponse {
                body: Some(peer_response::Body::Failure("empty peer request".into())),
            },
        }
    }
}

/// Describes this module's metrics (HELP text and unit) to the recorder; called once by
/// [`crate::metrics::install`].
pub(crate) fn describe_metrics() {
    use metrics::{describe_counter, Unit};
    describe_counter!(
        "ark_prestage_chunks_total",
        "Chunks of hot objects pre-staged on this node, by result (fetched, cached, local, failed)."
    );
    describe_counter!(
        "ark_replication_bytes_sent_total",
        Unit::Bytes,
        "Chunk bytes pushed to peers."
    );
    describe_counter!("ark_replication_chunks_sent_total", "Chunks pushed to peers.");
    describe_counter!(
        "ark_chunk_fetch_hedged_total",
        "Chunk fetches that asked a second holder because the first was slow."
    );
    describe_counter!(
        "ark_replication_bytes_fetched_total",
        Unit::Bytes,
        "Verified chunk bytes fetched from peers."
    );
    describe_counter!(
        "ark_chunks_bad_from_peer_total",
        "Chunks fetched from a peer whose bytes did not match their id."
    );
    describe_counter!(
        "ark_chunks_repaired_total",
        "Missing or corrupt local chunks rewritten from a good copy, by (read, scrub)."
    );
    describe_counter!(
        "ark_object_reads_failed_total",
        "Chunk reads for an object that no holder could serve."
    );
    describe_counter!(
        "ark_replication_bytes_received_total",
        Unit::Bytes,
        "Chunk bytes received from peers and stored."
    );
    describe_counter!(
        "ark_replication_chunks_refused_total",
        "Chunks pushed by a peer that this node refused to store."
    );
}
