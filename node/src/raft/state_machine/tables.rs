//! The state machine's redb tables and what every file of it shares: the table
//! definitions and keys, the stored KV value, the tables one apply batch writes, opening
//! them, and the storage errors. A leaf of `state_machine`: every other file imports it, it
//! imports none of them.
//!
//! Owns the table layout. Must not touch: what is written into the tables (`apply.rs`,
//! `sessions.rs`, `overlay.rs`, `snapshot.rs`).

use openraft::{LogId, StorageError, StorageIOError};
use redb::{Database, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::raft::objects::{self, ObjTables};
use crate::raft::NodeId;

pub(super) const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_kv");
pub(super) const SESSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("sm_sessions");
/// Request ids applied by one log entry, keyed by (the entry's timestamp, its index): one
/// insert per entry rather than one per write, and the sweep finds expired ids in order.
pub(super) const SESSIONS_BY_TIME: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("sm_session_buckets");
pub(super) const SM_META: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_meta");
pub(super) const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_snapshot");

pub(super) const KEY_APPLIED: &str = "last_applied";
pub(super) const KEY_MEMBERSHIP: &str = "membership";
pub(super) const KEY_SNAP_META: &str = "meta";
/// The kept snapshot's body, in redb: how releases before `KEY_SNAP_FILE` kept it (still
/// read, and removed when a snapshot is next kept).
pub(super) const KEY_SNAP_DATA: &str = "data";
/// The record of the kept snapshot's body file (`snapshot_file::BodyFile`).
pub(super) const KEY_SNAP_FILE: &str = "file";

/// A stored KV value with the revision (log index) that wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredValue {
    /// Log index of the write.
    pub revision: u64,
    /// The bytes.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

pub(crate) fn create_tables(tx: &WriteTransaction) -> Result<(), String> {
    let e = |err: redb::TableError| err.to_string();
    tx.open_table(KV).map_err(e)?;
    tx.open_table(SESSIONS).map_err(e)?;
    tx.open_table(SESSIONS_BY_TIME).map_err(e)?;
    tx.open_table(SM_META).map_err(e)?;
    tx.open_table(SNAPSHOT).map_err(e)?;
    tx.open_table(objects::NAMESPACES).map_err(e)?;
    tx.open_table(objects::OBJECTS).map_err(e)?;
    tx.open_table(objects::CHUNKS).map_err(e)?;
    tx.open_table(crate::raft::auth::AUTH).map_err(e)?;
    tx.open_table(objects::NS_KEYS).map_err(e)?;
    tx.open_table(crate::raft::roles::ROLES).map_err(e)?;
    objects::open_usage(tx)?;
    Ok(())
}

pub(super) fn sm_read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_state_machine(&e).into()
}

pub(super) fn sm_write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&e).into()
}

pub(super) fn obj_tables(tx: &WriteTransaction) -> Result<ObjTables<'_>, StorageError<NodeId>> {
    Ok(ObjTables {
        ns: tx.open_table(objects::NAMESPACES).map_err(sm_write_err)?,
        objects: tx.open_table(objects::OBJECTS).map_err(sm_write_err)?,
        chunks: tx.open_table(objects::CHUNKS).map_err(sm_write_err)?,
        keys: tx.open_table(objects::NS_KEYS).map_err(sm_write_err)?,
        usage: tx.open_table(objects::NS_USAGE).map_err(sm_write_err)?,
    })
}

pub(super) fn poisoned() -> StorageError<NodeId> {
    sm_write_err(std::io::Error::other("state machine overlay lock poisoned"))
}

/// The applied position committed to redb (what a read transaction sees now).
pub(crate) fn applied_in_db(db: &Database) -> Result<Option<LogId<NodeId>>, String> {
    Ok(crate::raft::db::read_value::<Option<LogId<NodeId>>>(db, SM_META, KEY_APPLIED)?.flatten())
}

/// The membership committed to redb with the applied position (openraft's default, an empty
/// membership, when none was applied yet).
pub(crate) fn membership_in_db(
    db: &Database,
) -> Result<openraft::StoredMembership<NodeId, crate::raft::ArkNode>, String> {
    Ok(crate::raft::db::read_value(db, SM_META, KEY_MEMBERSHIP)?.unwrap_or_default())
}

/// The tables one apply batch writes, opened once per batch.
pub(super) struct ApplyTables<'t> {
    pub(super) kv: redb::Table<'t, &'static str, &'static [u8]>,
    pub(super) sessions: redb::Table<'t, &'static [u8], &'static [u8]>,
    pub(super) by_time: redb::Table<'t, (u64, u64), &'static [u8]>,
    pub(super) obj: ObjTables<'t>,
    pub(super) auth: redb::Table<'t, &'static str, &'static [u8]>,
    pub(super) roles: redb::Table<'t, u64, u8>,
}

/// Encodes like [`StoredValue`] without copying the value first.
#[derive(Serialize)]
pub(super) struct StoredValueRef<'a> {
    pub(super) revision: u64,
    #[serde(with = "serde_bytes")]
    pub(super) value: &'a [u8],
}
