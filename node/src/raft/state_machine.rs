//! The replicated state machine: KV records, client sessions (request ids already applied)
//! and the applied log position, all in redb tables next to the log; plus snapshots.
//!
//! Applying is deterministic: it depends only on the entries, never on local clocks, so
//! every replica holds the same tables after the same entries. Reads for the client API go
//! through [`KvReader`], which opens read transactions and never writes.

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use redb::{Database, Durability, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::objects::{self, ObjSnapshot, ObjTables};
use super::store::{decode, encode};
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

/// The state machine over the shared database.
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<Database>,
    applied_since_sweep: u64,
}

impl StateMachine {
    /// Wraps the database (opened by [`super::store::open_database`]).
    pub fn new(db: Arc<Database>) -> Self {
        Self {
            db,
            applied_since_sweep: 0,
        }
    }
}

/// Read-only access to the KV tables for the client API.
#[derive(Clone)]
pub struct KvReader {
    db: Arc<Database>,
}

/// A read failed inside the database.
#[derive(Debug, thiserror::Error)]
#[error("state machine read failed: {0}")]
pub struct ReadError(String);

fn rerr(e: impl std::fmt::Display) -> ReadError {
    ReadError(e.to_string())
}

impl KvReader {
    /// A reader over the database.
    pub fn new(db: Arc<Database>) -> Self {
        Self { db }
    }

    /// One key.
    pub fn get(&self, key: &str) -> Result<Option<StoredValue>, ReadError> {
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
        let tx = self.db.begin_read().map_err(rerr)?;
        let t = tx.open_table(KV).map_err(rerr)?;
        let mut out = Vec::new();
        for item in t.range::<&str>(prefix..).map_err(rerr)? {
            let (k, v) = item.map_err(rerr)?;
            let k = k.value();
            if !k.starts_with(prefix) {
                break;
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push((k.to_string(), decode(v.value()).map_err(rerr)?));
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
        let tx = self.db.begin_read().map_err(sm_read_err)?;
        let t = tx.open_table(SM_META).map_err(sm_read_err)?;
        match t.get(key).map_err(sm_read_err)? {
            Some(v) => Ok(Some(decode(v.value()).map_err(sm_read_err)?)),
            None => Ok(None),
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, ArkNode>), StorageError<NodeId>> {
        let applied = self.read_meta::<Option<LogId<NodeId>>>(KEY_APPLIED)?.flatten();
        let membership = self.read_meta(KEY_MEMBERSHIP)?.unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut tx = self.db.begin_write().map_err(sm_write_err)?;
        // Durable with the next log flush; after a crash openraft re-applies from the log.
        tx.set_durability(Durability::None);
        let mut out = Vec::new();
        let mut last = None;
        let mut membership = None;
        let mut t = ApplyTables {
            kv: tx.open_table(KV).map_err(sm_write_err)?,
            sessions: tx.open_table(SESSIONS).map_err(sm_write_err)?,
            by_time: tx.open_table(SESSIONS_BY_TIME).map_err(sm_write_err)?,
            obj: obj_tables(&tx)?,
        };
        for e in entries {
            last = Some(e.log_id);
            match &e.payload {
                EntryPayload::Blank => out.push(Response::default()),
                EntryPayload::Normal(req) => {
                    let mut results = Vec::with_capacity(req.ops.len());
                    for (i, op) in req.ops.iter().enumerate() {
                        results.push(apply_op(&mut t, revision(e.log_id.index, i), req.proposed_at_ms, op)?);
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
                    self.applied_since_sweep += req.ops.len() as u64;
                    if self.applied_since_sweep >= SESSION_SWEEP_EVERY {
                        self.applied_since_sweep = 0;
                        sweep_sessions(&mut t, req.proposed_at_ms)?;
                    }
                    out.push(Response { results });
                }
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(e.log_id), m.clone()));
                    out.push(Response::default());
                }
            }
        }
        drop(t);
        {
            let mut meta = tx.open_table(SM_META).map_err(sm_write_err)?;
            let a = encode(&last).map_err(sm_write_err)?;
            meta.insert(KEY_APPLIED, a.as_slice()).map_err(sm_write_err)?;
            if let Some(m) = membership {
                let b = encode(&m).map_err(sm_write_err)?;
                meta.insert(KEY_MEMBERSHIP, b.as_slice()).map_err(sm_write_err)?;
            }
        }
        tx.commit().map_err(sm_write_err)?;
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, ArkNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let body: SnapshotBody =
            decode(&data).map_err(|e| StorageError::from(StorageIOError::read_snapshot(Some(meta.signature()), &e)))?;
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
        metrics::counter!("ark_raft_snapshots_installed_total").increment(1);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
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
        // One read transaction: the tables and the applied position are one consistent view
        // even while apply() keeps committing.
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
