//! The replicated state machine: KV records, client sessions (request ids already applied)
//! and the applied log position, all in redb tables next to the log; plus snapshots.
//!
//! Applying is deterministic: it depends only on the entries, never on local clocks, so
//! every replica holds the same tables after the same entries. Reads for the client API go
//! through [`KvReader`], which opens read transactions and never writes.
//!
//! KV writes (the small-write hot path) are applied to an in-memory [`Overlay`] first and
//! written to redb in one transaction per [`FLUSH_AFTER`] (or sooner when it grows), as
//! etcd batches its backend commits: one redb commit per log entry cost more CPU than the
//! writes themselves. Readers look in the overlay before redb, and a flush commits to redb
//! before it empties the overlay, so every applied write is always visible. Entries with any
//! other command (objects, namespaces) flush the overlay and are applied straight to redb in
//! the same transaction, so the object tables need no overlay. The overlay is lost in a
//! crash like any non-durable commit: openraft applies those entries again from the log,
//! which keeps them until the state machine is durably past them (see `store.rs`).

use std::collections::{BTreeMap, HashMap};
use std::io::Cursor;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use redb::{Database, Durability, ReadTransaction, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::codec::{decode, decode_with_limit, encode};
use super::objects::{self, ObjSnapshot, ObjTables};
use super::{revision, ArkNode, Command, NodeId, Op, OpResult, Response, TypeConfig};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_kv");
const SESSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sm_sessions");
/// Request ids applied by one log entry, keyed by (the entry's timestamp, its index): one
/// insert per entry rather than one per write, and the sweep finds expired ids in order.
const SESSIONS_BY_TIME: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("sm_session_buckets");
const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_snapshot");

const KEY_APPLIED: &str = "last_applied";
const KEY_MEMBERSHIP: &str = "membership";
const KEY_SNAP_META: &str = "meta";
const KEY_SNAP_DATA: &str = "data";

/// How long a request id is remembered after it was applied. A client retrying the same
/// write later than this may apply it twice; the SDK gives up long before.
pub const SESSION_RETENTION_MS: u64 = 5 * 60 * 1000;
/// Expired sessions are swept once every this many applied requests.
const SESSION_SWEEP_EVERY: u64 = 1024;

/// A stored KV value with the revision (log index) that wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredValue {
    /// Log index of the write.
    pub revision: u64,
    /// The bytes.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SessionRecord {
    applied_at_ms: u64,
    response: OpResult,
}

#[derive(Debug, Serialize, Deserialize)]
struct SnapshotBody {
    kv: Vec<(String, StoredValue)>,
    sessions: Vec<(Vec<u8>, SessionRecord)>,
    objects: ObjSnapshot,
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, ArkNode>,
}

pub(crate) fn create_tables(tx: &WriteTransaction) -> Result<(), redb::TableError> {
    tx.open_table(KV)?;
    tx.open_table(SESSIONS)?;
    tx.open_table(SESSIONS_BY_TIME)?;
    tx.open_table(SM_META)?;
    tx.open_table(SNAPSHOT)?;
    tx.open_table(objects::NAMESPACES)?;
    tx.open_table(objects::OBJECTS)?;
    tx.open_table(objects::CHUNKS)?;
    Ok(())
}

fn sm_read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(&e).into()
}

fn sm_write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&e).into()
}

/// KV writes and client sessions applied but not yet in redb, with the applied position
/// they bring the state machine to.
#[derive(Default)]
pub(crate) struct Gen {
    /// `None` marks a delete.
    kv: BTreeMap<String, Option<StoredValue>>,
    sessions: HashMap<Vec<u8>, SessionRecord>,
    by_time: Vec<((u64, u64), Vec<u8>)>,
    last_applied: Option<LogId<NodeId>>,
    membership: Option<StoredMembership<NodeId, ArkNode>>,
    /// Timestamp of the newest entry in it, for the session sweep at flush.
    newest_ms: u64,
    ops: usize,
    bytes: usize,
    since: Option<Instant>,
}

impl Gen {
    fn is_empty(&self) -> bool {
        self.last_applied.is_none()
    }

    fn due(&self) -> bool {
        self.ops >= FLUSH_OPS || self.bytes >= FLUSH_BYTES || self.since.is_some_and(|t| t.elapsed() >= FLUSH_AFTER)
    }

    fn too_big(&self) -> bool {
        self.ops >= 4 * FLUSH_OPS || self.bytes >= 4 * FLUSH_BYTES
    }
}

/// What readers consult before redb: the generation being applied to, then the one being
/// written to redb in the background (removed only once redb has committed it).
#[derive(Default)]
pub(crate) struct Overlay {
    active: Gen,
    frozen: Option<Arc<Gen>>,
    /// A background flush failed: redb no longer follows the log, so applies fail from now
    /// on (openraft then stops the node) rather than acknowledge writes redb may never hold.
    failed: Option<String>,
}

impl Overlay {
    /// Refuses to go on once a background flush has failed (see `failed`).
    fn check(&self) -> Result<(), StorageError<NodeId>> {
        match &self.failed {
            Some(e) => Err(sm_write_err(std::io::Error::other(format!(
                "an earlier state machine flush failed: {e}"
            )))),
            None => Ok(()),
        }
    }

    fn kv(&self, key: &str) -> Option<&Option<StoredValue>> {
        self.active
            .kv
            .get(key)
            .or_else(|| self.frozen.as_ref().and_then(|f| f.kv.get(key)))
    }
}

type SharedOverlay = Arc<RwLock<Overlay>>;

/// The overlay is written to redb at least this often while writes keep coming.
const FLUSH_AFTER: Duration = Duration::from_millis(100);
/// ... or once it holds this many writes ...
const FLUSH_OPS: usize = 4096;
/// ... or this many key and value bytes, which bounds its memory.
const FLUSH_BYTES: usize = 16 << 20;
/// Flushes commit without waiting for the disk, except one at least this often: after a
/// crash, openraft applies again what the log holds past the durable state, so this bounds
/// that replay (a purge of the log also commits durably first, see `store.rs`).
const DURABLE_EVERY: Duration = Duration::from_millis(200);

/// The state machine over the shared database.
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Database>,
    overlay: SharedOverlay,
    /// Held by whoever writes a generation to redb; flushes run one at a time, in order.
    flush_lock: Arc<tokio::sync::Mutex<()>>,
    applied_since_sweep: u64,
    /// When a flush last committed durably (see [`DURABLE_EVERY`]).
    last_durable: Instant,
    /// Set while a snapshot is being received, until it is installed (the log store's purge
    /// waits for it).
    receiving_snapshot: Arc<AtomicBool>,
    /// The newest `proposed_at_ms` applied: where a new leader's [`super::log_clock`]
    /// continues from.
    log_time: Arc<AtomicU64>,
}

impl StateMachine {
    /// Wraps the database (opened by [`super::store::open_database`]).
    pub fn new(db: Arc<Database>) -> Self {
        let log_time = match newest_session_stamp(&db) {
            Ok(t) => t,
            Err(e) => {
                // Only a new leader's first stamps depend on it (they then start from its
                // wall clock): worth a warning, not a refusal to start.
                tracing::warn!(error = %e, "cannot read the newest applied stamp");
                0
            }
        };
        Self {
            db,
            overlay: SharedOverlay::default(),
            flush_lock: Arc::default(),
            applied_since_sweep: 0,
            last_durable: Instant::now(),
            receiving_snapshot: Arc::default(),
            log_time: Arc::new(AtomicU64::new(log_time)),
        }
    }

    /// The newest stamp applied, for [`super::log_clock::LogClock::new`].
    pub fn log_time(&self) -> Arc<AtomicU64> {
        self.log_time.clone()
    }

    /// The flag that is set while a snapshot is received and not yet installed, for
    /// [`super::store::LogStore::with_snapshot_gate`].
    pub fn snapshot_gate(&self) -> Arc<AtomicBool> {
        self.receiving_snapshot.clone()
    }

    /// A reader of this state machine's KV records, overlay included.
    pub fn reader(&self) -> KvReader {
        KvReader {
            db: self.db.clone(),
            overlay: self.overlay.clone(),
        }
    }
}

/// Read-only access to the KV tables for the client API.
#[derive(Clone)]
pub struct KvReader {
    db: Arc<Database>,
    overlay: SharedOverlay,
}

/// A read failed inside the database.
#[derive(Debug, thiserror::Error)]
#[error("state machine read failed: {0}")]
pub struct ReadError(String);

fn rerr(e: impl std::fmt::Display) -> ReadError {
    ReadError(e.to_string())
}

impl KvReader {
    /// One key.
    pub fn get(&self, key: &str) -> Result<Option<StoredValue>, ReadError> {
        // The overlay first: a flush commits to redb before it empties the overlay.
        if let Some(v) = self.overlay.read().map_err(|_| rerr("overlay lock poisoned"))?.kv(key) {
            return Ok(v.clone());
        }
        let tx = self.db.begin_read().map_err(rerr)?;
        let t = tx.open_table(KV).map_err(rerr)?;
        match t.get(key).map_err(rerr)? {
            Some(v) => Ok(Some(decode(v.value()).map_err(rerr)?)),
            None => Ok(None),
        }
    }

    /// Keys starting with `prefix`, in order, at most `limit`; the flag says whether more
    /// matched.
    pub fn list(&self, prefix: &str, limit: usize) -> Result<(Vec<(String, StoredValue)>, bool), ReadError> {
        let newer: BTreeMap<String, Option<StoredValue>> = {
            let ov = self.overlay.read().map_err(|_| rerr("overlay lock poisoned"))?;
            let range = |m: &BTreeMap<String, Option<StoredValue>>| {
                m.range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<Vec<_>>()
            };
            // The frozen generation is older: the active one overrides it.
            let mut newer: BTreeMap<_, _> = ov
                .frozen
                .as_ref()
                .map(|f| range(&f.kv))
                .unwrap_or_default()
                .into_iter()
                .collect();
            newer.extend(range(&ov.active.kv));
            newer
        };
        let tx = self.db.begin_read().map_err(rerr)?;
        let t = tx.open_table(KV).map_err(rerr)?;
        let mut stored = t.range::<&str>(prefix..).map_err(rerr)?;
        let mut next_stored = || -> Result<Option<(String, StoredValue)>, ReadError> {
            match stored.next() {
                Some(item) => {
                    let (k, v) = item.map_err(rerr)?;
                    let k = k.value();
                    if !k.starts_with(prefix) {
                        return Ok(None);
                    }
                    Ok(Some((k.to_string(), decode(v.value()).map_err(rerr)?)))
                }
                None => Ok(None),
            }
        };
        // Merge the two sorted sequences; the overlay wins on equal keys and its deletes hide
        // the stored record.
        let mut out = Vec::new();
        let mut newer = newer.into_iter().peekable();
        let mut s = next_stored()?;
        loop {
            let take_newer = match (newer.peek(), &s) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((nk, _)), Some((sk, _))) => nk <= sk,
            };
            let item = if take_newer {
                let Some((k, v)) = newer.next() else { break };
                if s.as_ref().is_some_and(|(sk, _)| *sk == k) {
                    s = next_stored()?;
                }
                v.map(|v| (k, v))
            } else {
                let item = s.take();
                s = next_stored()?;
                item
            };
            if let Some(item) = item {
                if out.len() == limit {
                    return Ok((out, true));
                }
                out.push(item);
            }
        }
        Ok((out, false))
    }
}

/// The tables one apply batch writes, opened once per batch.
struct ApplyTables<'t> {
    kv: redb::Table<'t, &'static str, &'static [u8]>,
    sessions: redb::Table<'t, &'static [u8], &'static [u8]>,
    by_time: redb::Table<'t, (u64, u64), &'static [u8]>,
    obj: ObjTables<'t>,
}

/// Encodes like [`StoredValue`] without copying the value first.
#[derive(Serialize)]
struct StoredValueRef<'a> {
    revision: u64,
    #[serde(with = "serde_bytes")]
    value: &'a [u8],
}

fn apply_op(t: &mut ApplyTables<'_>, rev: u64, proposed_at_ms: u64, op: &Op) -> Result<OpResult, StorageError<NodeId>> {
    if !op.request_id.is_empty() {
        if let Some(rec) = t.sessions.get(op.request_id.as_slice()).map_err(sm_write_err)? {
            let rec: SessionRecord = decode(rec.value()).map_err(sm_read_err)?;
            // Expiry is decided here, from the entry's own timestamp, not by when a replica
            // happened to sweep: every replica answers a late retry the same way.
            if !session_expired(&rec, proposed_at_ms) {
                return Ok(OpResult {
                    duplicate: true,
                    ..rec.response
                });
            }
        }
    }
    let result = match &op.command {
        Command::Put { key, value } => {
            let v = encode(&StoredValueRef { revision: rev, value }).map_err(sm_write_err)?;
            t.kv.insert(key.as_str(), v.as_slice()).map_err(sm_write_err)?;
            OpResult {
                revision: rev,
                ..OpResult::default()
            }
        }
        Command::Delete { key } => {
            let existed = t.kv.remove(key.as_str()).map_err(sm_write_err)?.is_some();
            OpResult {
                revision: rev,
                existed,
                ..OpResult::default()
            }
        }
        cmd => objects::apply(&mut t.obj, rev, proposed_at_ms, cmd)
            .map_err(|e| sm_write_err(std::io::Error::other(e)))?
            .unwrap_or_default(),
    };
    if !op.request_id.is_empty() {
        let rec = encode(&SessionRecord {
            applied_at_ms: proposed_at_ms,
            response: result.clone(),
        })
        .map_err(sm_write_err)?;
        t.sessions
            .insert(op.request_id.as_slice(), rec.as_slice())
            .map_err(sm_write_err)?;
    }
    Ok(result)
}

/// The stamp of the newest entry whose request ids are recorded (0 if none).
fn newest_session_stamp(db: &Database) -> Result<u64, String> {
    let tx = db.begin_read().map_err(|e| e.to_string())?;
    let t = tx.open_table(SESSIONS_BY_TIME).map_err(|e| e.to_string())?;
    let last = t.last().map_err(|e| e.to_string())?;
    Ok(last.map_or(0, |(k, _)| k.value().0))
}

fn session_expired(rec: &SessionRecord, now_ms: u64) -> bool {
    rec.applied_at_ms.saturating_add(SESSION_RETENTION_MS) < now_ms
}

/// Request ids packed into one bucket value: each as a u16 length and its bytes.
fn pack_ids<'a>(ids: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for id in ids {
        let len = id.len().min(u16::MAX as usize);
        out.extend_from_slice(&(len as u16).to_le_bytes());
        out.extend_from_slice(&id[..len]);
    }
    out
}

fn unpack_ids(mut b: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while b.len() >= 2 {
        let len = u16::from_le_bytes([b[0], b[1]]) as usize;
        if b.len() < 2 + len {
            break;
        }
        out.push(&b[2..2 + len]);
        b = &b[2 + len..];
    }
    out
}

/// Forgets request ids applied more than [`SESSION_RETENTION_MS`] before `now_ms` (an
/// entry's own timestamp). This only reclaims space: [`apply_op`] already ignores expired
/// records, so when each replica sweeps does not change any answer.
fn sweep_sessions(t: &mut ApplyTables<'_>, now_ms: u64) -> Result<(), StorageError<NodeId>> {
    let (sessions, by_time) = (&mut t.sessions, &mut t.by_time);
    let cutoff = now_ms.saturating_sub(SESSION_RETENTION_MS);
    let mut buckets = Vec::new();
    for item in by_time
        .range::<(u64, u64)>(..(cutoff, 0))
        .map_err(sm_read_err)?
        .take(10_000)
    {
        let (k, v) = item.map_err(sm_read_err)?;
        buckets.push((k.value(), v.value().to_vec()));
    }
    for (key, ids) in &buckets {
        for id in unpack_ids(ids) {
            // A retried id re-applied later has a newer record: keep that one.
            let expired = match sessions.get(id).map_err(sm_read_err)? {
                Some(rec) => session_expired(&decode::<SessionRecord>(rec.value()).map_err(sm_read_err)?, now_ms),
                None => false,
            };
            if expired {
                sessions.remove(id).map_err(sm_write_err)?;
            }
        }
        by_time.remove(key).map_err(sm_write_err)?;
    }
    Ok(())
}

fn obj_tables(tx: &WriteTransaction) -> Result<ObjTables<'_>, StorageError<NodeId>> {
    Ok(ObjTables {
        ns: tx.open_table(objects::NAMESPACES).map_err(sm_write_err)?,
        objects: tx.open_table(objects::OBJECTS).map_err(sm_write_err)?,
        chunks: tx.open_table(objects::CHUNKS).map_err(sm_write_err)?,
    })
}

impl StateMachine {
    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError<NodeId>> {
        super::db::read_value(&self.db, SM_META, key).map_err(|e| sm_read_err(std::io::Error::other(e)))
    }
}

/// Whether an entry only writes KV records (or nothing), so that it can go to the overlay.
fn overlay_ok(e: &Entry<TypeConfig>) -> bool {
    match &e.payload {
        EntryPayload::Normal(req) => req
            .ops
            .iter()
            .all(|o| matches!(o.command, Command::Put { .. } | Command::Delete { .. })),
        EntryPayload::Blank | EntryPayload::Membership(_) => true,
    }
}

/// The redb tables the overlay falls back to while applying, opened on first need.
struct Stored {
    kv: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    sessions: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
}

fn stored<'a>(db: &Database, s: &'a mut Option<Stored>) -> Result<&'a Stored, StorageError<NodeId>> {
    if s.is_none() {
        let tx: ReadTransaction = db.begin_read().map_err(sm_read_err)?;
        *s = Some(Stored {
            kv: tx.open_table(KV).map_err(sm_read_err)?,
            sessions: tx.open_table(SESSIONS).map_err(sm_read_err)?,
        });
    }
    s.as_ref()
        .ok_or_else(|| sm_read_err(std::io::Error::other("state machine tables not open")))
}

/// Applies one entry straight to the redb tables (entries the overlay does not take).
fn apply_direct(
    t: &mut ApplyTables<'_>,
    e: &Entry<TypeConfig>,
    membership: &mut Option<StoredMembership<NodeId, ArkNode>>,
) -> Result<Response, StorageError<NodeId>> {
    Ok(match &e.payload {
        EntryPayload::Blank => Response::default(),
        EntryPayload::Normal(req) => {
            let mut results = Vec::with_capacity(req.ops.len());
            for (i, op) in req.ops.iter().enumerate() {
                results.push(apply_op(t, revision(e.log_id.index, i), req.proposed_at_ms, op)?);
            }
            let fresh = req
                .ops
                .iter()
                .zip(&results)
                .filter(|(o, r)| !r.duplicate && !o.request_id.is_empty());
            let ids = pack_ids(fresh.map(|(o, _)| o.request_id.as_slice()));
            if !ids.is_empty() {
                t.by_time
                    .insert((req.proposed_at_ms, e.log_id.index), ids.as_slice())
                    .map_err(sm_write_err)?;
            }
            Response { results }
        }
        EntryPayload::Membership(m) => {
            *membership = Some(StoredMembership::new(Some(e.log_id), m.clone()));
            Response::default()
        }
    })
}

impl StateMachine {
    /// Applies a KV-only entry to the overlay, with the same answers [`apply_op`] gives.
    fn apply_to_overlay(
        &mut self,
        overlay: &mut Overlay,
        st: &mut Option<Stored>,
        e: Entry<TypeConfig>,
    ) -> Result<Response, StorageError<NodeId>> {
        let log_id = e.log_id;
        let ov = &mut overlay.active;
        let frozen = &overlay.frozen;
        let older_kv = |k: &str| frozen.as_ref().and_then(|f| f.kv.get(k)).cloned();
        let older_session = |id: &[u8]| frozen.as_ref().and_then(|f| f.sessions.get(id)).cloned();
        let resp = match e.payload {
            EntryPayload::Blank => Response::default(),
            EntryPayload::Membership(m) => {
                ov.membership = Some(StoredMembership::new(Some(log_id), m));
                Response::default()
            }
            EntryPayload::Normal(req) => {
                let at = req.proposed_at_ms;
                let n = req.ops.len();
                let mut results = Vec::with_capacity(n);
                let mut fresh: Vec<Vec<u8>> = Vec::new();
                for (i, op) in req.ops.into_iter().enumerate() {
                    let rev = revision(log_id.index, i);
                    if !op.request_id.is_empty() {
                        let rec = match ov
                            .sessions
                            .get(&op.request_id)
                            .cloned()
                            .or_else(|| older_session(&op.request_id))
                        {
                            Some(r) => Some(r),
                            None => match stored(&self.db, st)?
                                .sessions
                                .get(op.request_id.as_slice())
                                .map_err(sm_read_err)?
                            {
                                Some(v) => Some(decode::<SessionRecord>(v.value()).map_err(sm_read_err)?),
                                None => None,
                            },
                        };
                        if let Some(rec) = rec.filter(|r| !session_expired(r, at)) {
                            results.push(OpResult {
                                duplicate: true,
                                ..rec.response
                            });
                            continue;
                        }
                    }
                    let result = match op.command {
                        Command::Put { key, value } => {
                            ov.bytes += key.len() + value.len();
                            ov.kv.insert(key, Some(StoredValue { revision: rev, value }));
                            OpResult {
                                revision: rev,
                                ..OpResult::default()
                            }
                        }
                        Command::Delete { key } => {
                            let existed = match ov.kv.get(&key).cloned().or_else(|| older_kv(&key)) {
                                Some(v) => v.is_some(),
                                None => stored(&self.db, st)?
                                    .kv
                                    .get(key.as_str())
                                    .map_err(sm_read_err)?
                                    .is_some(),
                            };
                            ov.bytes += key.len();
                            ov.kv.insert(key, None);
                            OpResult {
                                revision: rev,
                                existed,
                                ..OpResult::default()
                            }
                        }
                        _ => {
                            return Err(sm_write_err(std::io::Error::other(
                                "an object command reached the KV overlay",
                            )))
                        }
                    };
                    if !op.request_id.is_empty() {
                        ov.bytes += op.request_id.len();
                        ov.sessions.insert(
                            op.request_id.clone(),
                            SessionRecord {
                                applied_at_ms: at,
                                response: result.clone(),
                            },
                        );
                        fresh.push(op.request_id);
                    }
                    results.push(result);
                }
                if !fresh.is_empty() {
                    let ids = pack_ids(fresh.iter().map(|v| v.as_slice()));
                    ov.by_time.push(((at, log_id.index), ids));
                }
                ov.ops += n;
                ov.newest_ms = ov.newest_ms.max(at);
                self.applied_since_sweep += n as u64;
                Response { results }
            }
        };
        ov.last_applied = Some(log_id);
        ov.since.get_or_insert_with(Instant::now);
        Ok(resp)
    }

    /// Whether the next flush commits durably, and the timestamp to sweep sessions at.
    fn flush_plan(&mut self, gen: &Gen, direct: Option<&Entry<TypeConfig>>) -> (bool, Option<u64>) {
        let durable = self.last_durable.elapsed() >= DURABLE_EVERY;
        if durable {
            self.last_durable = Instant::now();
        }
        let mut newest = gen.newest_ms;
        if let Some(EntryPayload::Normal(req)) = direct.map(|e| &e.payload) {
            self.applied_since_sweep += req.ops.len() as u64;
            newest = newest.max(req.proposed_at_ms);
        }
        let sweep_at = (self.applied_since_sweep >= SESSION_SWEEP_EVERY && newest > 0).then(|| {
            self.applied_since_sweep = 0;
            newest
        });
        (durable, sweep_at)
    }

    /// Starts writing the active generation to redb on a blocking thread once it is due,
    /// unless a flush is still running (then it waits only if the generation grew too big).
    async fn flush_in_background(&mut self) {
        let overlay = self.overlay.clone();
        let (due, too_big) = match overlay.read() {
            Ok(ov) if ov.failed.is_none() => (ov.active.due(), ov.active.too_big()),
            _ => return,
        };
        if !due {
            return;
        }
        let guard = match self.flush_lock.clone().try_lock_owned() {
            Ok(g) => g,
            Err(_) if too_big => self.flush_lock.clone().lock_owned().await,
            Err(_) => return,
        };
        let (gen, durable, sweep_at) = {
            let Ok(mut ov) = overlay.write() else { return };
            let gen = Arc::new(std::mem::take(&mut ov.active));
            ov.frozen = Some(gen.clone());
            let (durable, sweep_at) = self.flush_plan(&gen, None);
            (gen, durable, sweep_at)
        };
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let res = commit_gen(&db, &gen, None, durable, sweep_at);
            if let Ok(mut ov) = overlay.write() {
                match res {
                    // Only now, with redb holding it, may readers stop finding it here.
                    Ok(_) => ov.frozen = None,
                    Err(e) => {
                        tracing::error!(error = %e, "state machine flush failed");
                        ov.failed = Some(e.to_string());
                    }
                }
            }
            drop(guard);
        });
    }

    /// Writes everything applied so far to redb and returns when it is committed (before a
    /// snapshot reads redb).
    async fn flush_overlay(&mut self) -> Result<(), StorageError<NodeId>> {
        let _flushing = self.flush_lock.clone().lock_owned().await;
        let overlay = self.overlay.clone();
        let mut ov = overlay.write().map_err(|_| poisoned())?;
        ov.check()?;
        if !ov.active.is_empty() {
            let (durable, sweep_at) = self.flush_plan(&ov.active, None);
            commit_gen(&self.db, &ov.active, None, durable, sweep_at)?;
            ov.active = Gen::default();
        }
        Ok(())
    }
}

fn poisoned() -> StorageError<NodeId> {
    sm_write_err(std::io::Error::other("state machine overlay lock poisoned"))
}

/// Writes one generation to redb in one transaction, with `direct` (an entry the overlay
/// does not take) applied after it.
fn commit_gen(
    db: &Database,
    gen: &Gen,
    direct: Option<&Entry<TypeConfig>>,
    durable: bool,
    sweep_at: Option<u64>,
) -> Result<Response, StorageError<NodeId>> {
    let started = Instant::now();
    let mut tx = db.begin_write().map_err(sm_write_err)?;
    tx.set_durability(if durable {
        Durability::Immediate
    } else {
        Durability::None
    });
    let mut last = gen.last_applied;
    let mut membership = gen.membership.clone();
    let mut resp = Response::default();
    {
        let mut t = ApplyTables {
            kv: tx.open_table(KV).map_err(sm_write_err)?,
            sessions: tx.open_table(SESSIONS).map_err(sm_write_err)?,
            by_time: tx.open_table(SESSIONS_BY_TIME).map_err(sm_write_err)?,
            obj: obj_tables(&tx)?,
        };
        for (k, v) in &gen.kv {
            match v {
                Some(v) => {
                    let b = encode(&StoredValueRef {
                        revision: v.revision,
                        value: &v.value,
                    })
                    .map_err(sm_write_err)?;
                    t.kv.insert(k.as_str(), b.as_slice()).map_err(sm_write_err)?;
                }
                None => {
                    t.kv.remove(k.as_str()).map_err(sm_write_err)?;
                }
            }
        }
        for (id, rec) in &gen.sessions {
            let b = encode(rec).map_err(sm_write_err)?;
            t.sessions.insert(id.as_slice(), b.as_slice()).map_err(sm_write_err)?;
        }
        for (key, ids) in &gen.by_time {
            t.by_time.insert(*key, ids.as_slice()).map_err(sm_write_err)?;
        }
        if let Some(e) = direct {
            resp = apply_direct(&mut t, e, &mut membership)?;
            last = Some(e.log_id);
        }
        if let Some(at) = sweep_at {
            sweep_sessions(&mut t, at)?;
        }
    }
    {
        let mut meta = tx.open_table(SM_META).map_err(sm_write_err)?;
        if let Some(last) = last {
            let a = encode(&Some(last)).map_err(sm_write_err)?;
            meta.insert(KEY_APPLIED, a.as_slice()).map_err(sm_write_err)?;
        }
        if let Some(m) = membership {
            let b = encode(&m).map_err(sm_write_err)?;
            meta.insert(KEY_MEMBERSHIP, b.as_slice()).map_err(sm_write_err)?;
        }
    }
    tx.commit().map_err(sm_write_err)?;
    metrics::histogram!("ark_sm_flush_seconds").record(started.elapsed().as_secs_f64());
    Ok(resp)
}

/// The applied position committed to redb (what a read transaction sees now).
pub(crate) fn applied_in_db(db: &Database) -> Result<Option<LogId<NodeId>>, String> {
    Ok(super::db::read_value::<Option<LogId<NodeId>>>(db, SM_META, KEY_APPLIED)?.flatten())
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, ArkNode>), StorageError<NodeId>> {
        {
            let ov = self.overlay.read().map_err(|_| poisoned())?;
            let frozen = ov.frozen.as_deref();
            let applied = ov.active.last_applied.or(frozen.and_then(|f| f.last_applied));
            if let Some(applied) = applied {
                let membership = match ov
                    .active
                    .membership
                    .as_ref()
                    .or(frozen.and_then(|f| f.membership.as_ref()))
                {
                    Some(m) => m.clone(),
                    None => self.read_meta(KEY_MEMBERSHIP)?.unwrap_or_default(),
                };
                return Ok((Some(applied), membership));
            }
        }
        let applied = self.read_meta::<Option<LogId<NodeId>>>(KEY_APPLIED)?.flatten();
        let membership = self.read_meta(KEY_MEMBERSHIP)?.unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let overlay = self.overlay.clone();
        let log_time = self.log_time.clone();
        let mut entries = entries
            .into_iter()
            .inspect(|e| {
                if let EntryPayload::Normal(req) = &e.payload {
                    log_time.fetch_max(req.proposed_at_ms, Ordering::AcqRel);
                }
            })
            .peekable();
        let mut out = Vec::new();
        loop {
            {
                // One lock for a run of KV entries: a background flush cannot retire the
                // frozen generation meanwhile, so the redb view opened below stays complete.
                let mut ov = overlay.write().map_err(|_| poisoned())?;
                ov.check()?;
                let mut stored = None;
                while let Some(e) = entries.next_if(overlay_ok) {
                    out.push(self.apply_to_overlay(&mut ov, &mut stored, e)?);
                }
            }
            let Some(e) = entries.next() else { break };
            // An object entry: everything before it goes to redb with it, in one transaction.
            let _flushing = self.flush_lock.clone().lock_owned().await;
            let mut ov = overlay.write().map_err(|_| poisoned())?;
            ov.check()?;
            let (durable, sweep_at) = self.flush_plan(&ov.active, Some(&e));
            let r = commit_gen(&self.db, &ov.active, Some(&e), durable, sweep_at)?;
            ov.active = Gen::default();
            out.push(r);
        }
        self.flush_in_background().await;
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        self.receiving_snapshot.store(true, Ordering::Release);
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, ArkNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let res = self.install(meta, snapshot.into_inner()).await;
        self.receiving_snapshot.store(false, Ordering::Release);
        res
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        self.current_snapshot()
    }
}

impl StateMachine {
    async fn install(
        &mut self,
        meta: &SnapshotMeta<NodeId, ArkNode>,
        data: Vec<u8>,
    ) -> Result<(), StorageError<NodeId>> {
        // A snapshot holds the whole state and may be larger than a frame: it is bounded by
        // the bytes received, which the decoder never reads past.
        let body: SnapshotBody = decode_with_limit(&data, data.len() as u64)
            .map_err(|e| StorageError::from(StorageIOError::read_snapshot(Some(meta.signature()), &e)))?;
        // The snapshot replaces everything, the overlay included; readers wait meanwhile.
        let _flushing = self.flush_lock.clone().lock_owned().await;
        let overlay = self.overlay.clone();
        let mut ov = overlay.write().map_err(|_| poisoned())?;
        *ov = Overlay::default();
        let mut tx = self.db.begin_write().map_err(sm_write_err)?;
        tx.set_durability(Durability::Immediate);
        {
            let mut kv = tx.open_table(KV).map_err(sm_write_err)?;
            kv.retain(|_, _| false).map_err(sm_write_err)?;
            for (k, v) in &body.kv {
                let b = encode(v).map_err(sm_write_err)?;
                kv.insert(k.as_str(), b.as_slice()).map_err(sm_write_err)?;
            }
            let mut s = tx.open_table(SESSIONS).map_err(sm_write_err)?;
            s.retain(|_, _| false).map_err(sm_write_err)?;
            let mut bt = tx.open_table(SESSIONS_BY_TIME).map_err(sm_write_err)?;
            bt.retain(|_, _| false).map_err(sm_write_err)?;
            let mut buckets: std::collections::BTreeMap<u64, Vec<&[u8]>> = Default::default();
            for (id, rec) in &body.sessions {
                let b = encode(rec).map_err(sm_write_err)?;
                s.insert(id.as_slice(), b.as_slice()).map_err(sm_write_err)?;
                buckets.entry(rec.applied_at_ms).or_default().push(id.as_slice());
            }
            for (at, ids) in buckets {
                let packed = pack_ids(ids.into_iter());
                bt.insert((at, 0), packed.as_slice()).map_err(sm_write_err)?;
            }
            objects::import(&mut obj_tables(&tx)?, &body.objects)
                .map_err(|e| sm_write_err(std::io::Error::other(e)))?;
            let mut m = tx.open_table(SM_META).map_err(sm_write_err)?;
            let a = encode(&meta.last_log_id).map_err(sm_write_err)?;
            m.insert(KEY_APPLIED, a.as_slice()).map_err(sm_write_err)?;
            let b = encode(&meta.last_membership).map_err(sm_write_err)?;
            m.insert(KEY_MEMBERSHIP, b.as_slice()).map_err(sm_write_err)?;
            let mut snap = tx.open_table(SNAPSHOT).map_err(sm_write_err)?;
            let sm = encode(&StoredSnapshot { meta: meta.clone() }).map_err(sm_write_err)?;
            snap.insert(KEY_SNAP_META, sm.as_slice()).map_err(sm_write_err)?;
            snap.insert(KEY_SNAP_DATA, data.as_slice()).map_err(sm_write_err)?;
        }
        tx.commit().map_err(sm_write_err)?;
        drop(ov);
        self.last_durable = Instant::now();
        metrics::counter!("ark_raft_snapshots_installed_total").increment(1);
        Ok(())
    }

    fn current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let tx = self.db.begin_read().map_err(sm_read_err)?;
        let t = tx.open_table(SNAPSHOT).map_err(sm_read_err)?;
        let meta = match t.get(KEY_SNAP_META).map_err(sm_read_err)? {
            Some(m) => decode::<StoredSnapshot>(m.value()).map_err(sm_read_err)?.meta,
            None => return Ok(None),
        };
        let data = match t.get(KEY_SNAP_DATA).map_err(sm_read_err)? {
            Some(d) => d.value().to_vec(),
            None => return Ok(None),
        };
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        // Everything applied so far goes to redb first; then one read transaction gives the
        // tables and the applied position as one consistent view even while apply() goes on.
        self.flush_overlay().await?;
        let (meta, data) = {
            let tx = self.db.begin_read().map_err(sm_read_err)?;
            let m = tx.open_table(SM_META).map_err(sm_read_err)?;
            let last_applied: Option<LogId<NodeId>> = match m.get(KEY_APPLIED).map_err(sm_read_err)? {
                Some(v) => decode(v.value()).map_err(sm_read_err)?,
                None => None,
            };
            let membership: StoredMembership<NodeId, ArkNode> = match m.get(KEY_MEMBERSHIP).map_err(sm_read_err)? {
                Some(v) => decode(v.value()).map_err(sm_read_err)?,
                None => StoredMembership::default(),
            };
            let kvt = tx.open_table(KV).map_err(sm_read_err)?;
            let mut kv = Vec::new();
            for item in kvt.iter().map_err(sm_read_err)? {
                let (k, v) = item.map_err(sm_read_err)?;
                kv.push((k.value().to_string(), decode(v.value()).map_err(sm_read_err)?));
            }
            let st = tx.open_table(SESSIONS).map_err(sm_read_err)?;
            let mut sessions = Vec::new();
            for item in st.iter().map_err(sm_read_err)? {
                let (k, v) = item.map_err(sm_read_err)?;
                sessions.push((k.value().to_vec(), decode(v.value()).map_err(sm_read_err)?));
            }
            let objects = objects::export(&tx).map_err(|e| sm_read_err(std::io::Error::other(e)))?;
            let data = encode(&SnapshotBody { kv, sessions, objects }).map_err(sm_read_err)?;
            let snapshot_id = match last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, rand::random::<u32>()),
                None => format!("empty-{}", rand::random::<u32>()),
            };
            (
                SnapshotMeta {
                    last_log_id: last_applied,
                    last_membership: membership,
                    snapshot_id,
                },
                data,
            )
        };
        let mut tx = self.db.begin_write().map_err(sm_write_err)?;
        tx.set_durability(Durability::None);
        {
            let mut snap = tx.open_table(SNAPSHOT).map_err(sm_write_err)?;
            let sm = encode(&StoredSnapshot { meta: meta.clone() }).map_err(sm_write_err)?;
            snap.insert(KEY_SNAP_META, sm.as_slice()).map_err(sm_write_err)?;
            snap.insert(KEY_SNAP_DATA, data.as_slice()).map_err(sm_write_err)?;
        }
        tx.commit().map_err(sm_write_err)?;
        metrics::counter!("ark_raft_snapshots_built_total").increment(1);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// Describes this module's metrics (HELP text and unit) to the recorder; called once at start-up by
/// `server` (through `metrics::install`).
pub(crate) fn describe_metrics() {
    use metrics::{describe_counter, describe_histogram, Unit};
    describe_histogram!(
        "ark_sm_flush_seconds",
        Unit::Seconds,
        "Time to flush the state machine's in-memory overlay to the database."
    );
    describe_counter!(
        "ark_raft_snapshots_installed_total",
        "Raft snapshots received from a leader and installed."
    );
    describe_counter!("ark_raft_snapshots_built_total", "Raft snapshots built by this node.");
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId};
    use redb::ReadableTableMetadata;

    use super::*;

    fn put_entry(index: u64, at_ms: u64, id: &[u8]) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(super::super::Request {
                proposed_at_ms: at_ms,
                ops: vec![Op {
                    request_id: id.to_vec(),
                    command: Command::Put {
                        key: "k".into(),
                        value: index.to_le_bytes().to_vec(),
                    },
                }],
            }),
        }
    }

    fn kv_entry(index: u64, id: &[u8], command: Command) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(super::super::Request {
                proposed_at_ms: 1_000 + index,
                ops: vec![Op {
                    request_id: id.to_vec(),
                    command,
                }],
            }),
        }
    }

    fn put(index: u64, key: &str, value: &str) -> Entry<TypeConfig> {
        let id = format!("put-{index}");
        kv_entry(
            index,
            id.as_bytes(),
            Command::Put {
                key: key.into(),
                value: value.as_bytes().to_vec(),
            },
        )
    }

    fn del(index: u64, key: &str) -> Entry<TypeConfig> {
        let id = format!("del-{index}");
        kv_entry(index, id.as_bytes(), Command::Delete { key: key.into() })
    }

    fn listing(r: &KvReader) -> Vec<(String, Vec<u8>)> {
        let (items, more) = r.list("", 100).unwrap();
        assert!(!more);
        items.into_iter().map(|(k, v)| (k, v.value)).collect()
    }

    #[tokio::test]
    async fn reads_see_every_applied_write_whether_in_the_overlay_or_in_redb() {
        let dir = tempfile::tempdir().unwrap();
        let db = super::super::store::open_database(dir.path()).unwrap();
        let mut sm = StateMachine::new(db.clone());
        let r = sm.reader();
        sm.apply(vec![put(1, "a", "1"), put(2, "b", "2"), put(3, "c", "3")])
            .await
            .unwrap();
        sm.flush_overlay().await.unwrap();
        // In redb now; the next writes stay in the overlay (well under the flush thresholds).
        let res = sm
            .apply(vec![del(4, "b"), put(5, "d", "5"), put(6, "a", "6"), del(7, "zz")])
            .await
            .unwrap();
        assert!(res[0].results[0].existed, "b is in redb");
        assert!(!res[3].results[0].existed, "zz was never written");
        let want = vec![
            ("a".to_string(), b"6".to_vec()),
            ("c".to_string(), b"3".to_vec()),
            ("d".to_string(), b"5".to_vec()),
        ];
        assert_eq!(r.get("b").unwrap(), None);
        assert_eq!(r.get("a").unwrap().unwrap().value, b"6");
        assert_eq!(r.get("a").unwrap().unwrap().revision, revision(6, 0));
        assert_eq!(listing(&r), want);
        assert!(r.list("", 2).unwrap().1, "a limit below the matches says more exist");
        // redb alone still holds the old state until the flush...
        let redb_only = KvReader {
            db: db.clone(),
            overlay: SharedOverlay::default(),
        };
        assert_eq!(redb_only.get("b").unwrap().unwrap().value, b"2");
        // ...and the same state as the reader saw once flushed.
        sm.flush_overlay().await.unwrap();
        assert_eq!(listing(&redb_only), want);
        assert_eq!(listing(&r), want);
        // A retry of a write still in the overlay is a duplicate, as it is once in redb.
        let retry = |index| {
            kv_entry(
                index,
                b"put-5",
                Command::Put {
                    key: "d".into(),
                    value: b"other".to_vec(),
                },
            )
        };
        let again = sm.apply(vec![retry(8)]).await.unwrap();
        assert!(again[0].results[0].duplicate);
        assert_eq!(again[0].results[0].revision, revision(5, 0));
        sm.flush_overlay().await.unwrap();
        let again = sm.apply(vec![retry(9)]).await.unwrap();
        assert!(again[0].results[0].duplicate);
        assert_eq!(r.get("d").unwrap().unwrap().value, b"5");
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(9));
    }

    #[test]
    fn packed_ids_round_trip() {
        let ids: Vec<&[u8]> = vec![b"a", b"", b"0123456789abcdef"];
        assert_eq!(unpack_ids(&pack_ids(ids.clone().into_iter())), ids);
    }

    #[tokio::test]
    async fn retry_is_a_duplicate_until_the_id_expires_on_every_replica_alike() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::new(super::super::store::open_database(dir.path()).unwrap());
        let r1 = sm.apply(vec![put_entry(1, 1_000, b"req-1")]).await.unwrap();
        assert!(!r1[0].results[0].duplicate);
        let r2 = sm.apply(vec![put_entry(2, 2_000, b"req-1")]).await.unwrap();
        assert!(r2[0].results[0].duplicate);
        assert_eq!(r2[0].results[0].revision, r1[0].results[0].revision);
        // Past the retention the same id is a new write, whether or not a sweep ran.
        let late = 1_000 + SESSION_RETENTION_MS + 1;
        let r3 = sm.apply(vec![put_entry(3, late, b"req-1")]).await.unwrap();
        assert!(!r3[0].results[0].duplicate);
        assert_eq!(r3[0].results[0].revision, revision(3, 0));
        sm.flush_overlay().await.unwrap();
        // The sweep drops the expired bucket but keeps the re-applied record.
        let mut tx = sm.db.begin_write().unwrap();
        tx.set_durability(Durability::None);
        {
            let mut t = ApplyTables {
                kv: tx.open_table(KV).unwrap(),
                sessions: tx.open_table(SESSIONS).unwrap(),
                by_time: tx.open_table(SESSIONS_BY_TIME).unwrap(),
                obj: obj_tables(&tx).unwrap(),
            };
            sweep_sessions(&mut t, late + 10).unwrap();
            assert!(t.sessions.get(&b"req-1"[..]).unwrap().is_some());
            assert_eq!(t.by_time.len().unwrap(), 1);
        }
        tx.commit().unwrap();
    }
}
