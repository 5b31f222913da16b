//! The data plane: moving chunk bytes between nodes and keeping every chunk at its
//! namespace's policy.
//!
//! Owns every chunk transfer. Chunks travel over the peer QUIC transport as their own RPCs
//! (have / put / get / verify / pull), never through the Raft log; a receiver re-hashes every
//! chunk before storing it and a reader re-hashes every chunk before using it. Metadata
//! changes (a committed manifest, new holders) go through consensus's front door
//! ([`crate::raft::front::Front`]), which forwards to the leader from a follower.
//!
//! Files: [`rpc`] (the chunk RPC client: have/put/get/verify/pull/scrub/prestage on a peer),
//! [`serve`] (the peer-request server: the other side of those RPCs, and the
//! [`serve::PeerRouter`] that splits Raft, telemetry and data-plane requests), [`upload`]
//! (the one upload pipeline: chunk, store, push, commit; used by the gRPC put and by every
//! internal small-object put), [`read`] (a verified chunk from wherever a good copy is),
//! [`placement`] (which nodes get copies), [`plan`] (the repair queue's pure planner),
//! [`queue`] (the leader's repair loop that executes the plan, and lag metrics), [`lag`]
//! (the lag it measured, as namespace queries read it on any node), [`scrub`]
//! (re-hashing local copies, repair, garbage collection), [`claims`] (chunks about to be
//! referred to), [`keys`] (the KEKs and the unwrapped data keys of encrypted namespaces;
//! every path above moves sealed chunks unchanged, only upload and read seal and open).
//!
//! Must not touch: gRPC (errors are [`DataError`] and [`upload::UploadError`]), the
//! forecasts themselves (it reads them through [`plan::RiskSource`]).

pub mod claims;
pub mod keys;
pub mod lag;
pub mod placement;
pub mod plan;
pub mod queue;
pub mod read;
pub mod rpc;
pub mod scrub;
pub mod serve;
pub mod upload;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::cache::ChunkCache;
use ark_proto::v1::ChunkState;

use crate::chunks::{ChunkError, ChunkId, ChunkStore};
use crate::config::ObjectsConfig;
use crate::net::{NetError, PeerPool};
use crate::raft::front::Front;
use crate::raft::members::Members;
use crate::raft::objects::ObjectReader;
use crate::raft::NodeId;

pub use crate::raft::members::Peer;
use plan::{QueueEntry, RiskSource};

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
    /// No source could supply a good copy of the chunk.
    #[error("no good copy of chunk {chunk}: {why}")]
    NoGoodCopy {
        /// The chunk, in hex.
        chunk: String,
        /// What the sources said.
        why: String,
    },
    /// An encrypted namespace's data key is not available on this node (no KEK, another
    /// KEK); nothing was read.
    #[error("{0}")]
    Key(String),
    /// A verified chunk of an encrypted namespace did not open (a wrong key or tampered
    /// ciphertext); no byte of it was returned.
    #[error("{0}")]
    Unseal(String),
    /// This node failed (a blocking task died, its own store failed).
    #[error("{0}")]
    Local(String),
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
    /// Who is in the cluster and who leads.
    pub members: Members,
    /// Writes and linearizable reads through consensus.
    pub front: Arc<Front>,
    /// Object metadata in the local state machine.
    pub reader: ObjectReader,
    /// Tunables.
    pub cfg: ObjectsConfig,
    rpc_timeout: Duration,
    scrub_lock: tokio::sync::Mutex<()>,
    /// Hot chunks held by other nodes.
    cache: Arc<ChunkCache>,
    /// The leader's latest repair pass's lag per namespace ([`lag`]); `None` on a follower
    /// and on a leader before its first pass.
    lag: tokio::sync::watch::Sender<Option<Arc<plan::LagReport>>>,
    /// Node failure and load forecasts, as the leader's risk loop publishes them.
    risk: Arc<dyn RiskSource>,
    /// The repair queue's head and length, as its last pass left them.
    queue_head: Mutex<(Vec<QueueEntry>, u64)>,
    /// Holders that stayed silent while another answered a chunk fetch, and when: asked
    /// last for [`SLOW_HOLDER_FOR`].
    slow_holders: Mutex<std::collections::HashMap<NodeId, std::time::Instant>>,
    /// Chunks about to be referred to, which garbage collection leaves alone.
    pub claims: claims::ChunkClaims,
    /// The KEKs and unwrapped data keys of encrypted namespaces.
    pub keys: keys::Keyring,
    /// This node is a witness: it refuses every chunk write a peer asks of it (put, pull,
    /// prestage), so that no chunk is stored here even before the cluster knows its role.
    pub witness: bool,
}

impl DataPlane {
    /// Assembles the data plane.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        site: String,
        store: ChunkStore,
        pool: PeerPool,
        front: Arc<Front>,
        reader: ObjectReader,
        cfg: ObjectsConfig,
        rpc_timeout: Duration,
        cache: Arc<ChunkCache>,
        risk: Arc<dyn RiskSource>,
        keys: keys::Keyring,
    ) -> Self {
        let claims = claims::ChunkClaims::new(Duration::from_secs(cfg.gc_grace_s));
        Self {
            id: front.members().id(),
            site,
            store,
            pool,
            members: front.members().clone(),
            front,
            reader,
            cfg,
            rpc_timeout,
            scrub_lock: tokio::sync::Mutex::new(()),
            cache,
            lag: tokio::sync::watch::channel(None).0,
            risk,
            queue_head: Default::default(),
            slow_holders: Default::default(),
            claims,
            keys,
            witness: false,
        }
    }

    /// The data plane of a witness (see [`DataPlane::witness`]).
    pub fn into_witness(mut self) -> Self {
        self.witness = true;
        self
    }

    /// Re-hashes this node's copies of `ids`: intact, missing or corrupt, in order.
    pub async fn verify_local(&self, ids: Vec<ChunkId>) -> Result<Vec<ChunkState>, DataError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            ids.iter()
                .map(|id| match store.verify(id) {
                    Ok(()) => ChunkState::Ok,
                    Err(ChunkError::NotFound { .. }) => ChunkState::Missing,
                    Err(_) => ChunkState::Corrupt,
                })
                .collect()
        })
        .await
        .map_err(|e| DataError::Local(e.to_string()))
    }

    /// Head of the repair queue and its length, as the last pass on this leader left them
    /// (empty on a follower).
    pub fn queue_head(&self) -> (Vec<QueueEntry>, u64) {
        self.queue_head.lock().map(|h| h.clone()).unwrap_or_default()
    }
}

fn parse_id(b: &[u8]) -> Result<ChunkId, String> {
    ChunkId::try_from(b).map_err(|_| format!("a chunk id is 32 bytes, not {}", b.len()))
}

fn parse_ids(ids: &[Vec<u8>]) -> Result<Vec<ChunkId>, String> {
    ids.iter().map(|b| parse_id(b)).collect()
}
