//! The replicated state machine: KV records, client sessions (request ids already applied)
//! and the applied log position, all in redb tables next to the log; plus snapshots.
//!
//! Applying is deterministic: it depends only on the entries, never on local clocks, so
//! every replica holds the same tables after the same entries. Reads for the client API go
//! through [`KvReader`], which opens read transactions and never writes.
//!
//! KV writes (the small-write hot path) are applied to an in-memory overlay first and
//! written to redb in one transaction per 100 ms (or sooner when it grows), as
//! etcd batches its backend commits: one redb commit per log entry cost more CPU than the
//! writes themselves. Readers look in the overlay before redb, and a flush commits to redb
//! before it empties the overlay, so every applied write is always visible. Entries with any
//! other command (objects, namespaces) flush the overlay and are applied straight to redb in
//! the same transaction, so the object tables need no overlay. The overlay is lost in a
//! crash like any non-durable commit: openraft applies those entries again from the log,
//! which keeps them until the state machine is durably past them (see `store.rs`).
//!
//! One concern per file: `reader.rs` (client reads, overlay then redb), `apply.rs` (what a
//! KV command or a retried request id does), `sessions.rs` (exactly-once records, their
//! expiry and sweep), `overlay.rs` (the write-behind generations and their commit to redb),
//! `snapshot.rs` (build, keep, install), `openraft_impl.rs` (openraft's trait). This file
//! owns the tables, [`StateMachine`] and its handles. Nothing here touches the log (that is
//! `store.rs`) or decides object rules (`raft::objects`).

mod apply;
mod openraft_impl;
mod overlay;
mod reader;
mod sessions;
mod snapshot;

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Instant;

use openraft::{LogId, StorageError, StorageIOError};
use redb::{Database, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::objects::{self, ObjTables};
use super::NodeId;
use overlay::SharedOverlay;
use sessions::newest_session_stamp;

pub use reader::{KvReader, ReadError};
pub use sessions::SESSION_RETENTION_MS;

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

/// A stored KV value with the revision (log index) that wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredValue {
    /// Log index of the write.
    pub revision: u64,
    /// The bytes.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
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

fn obj_tables(tx: &WriteTransaction) -> Result<ObjTables<'_>, StorageError<NodeId>> {
    Ok(ObjTables {
        ns: tx.open_table(objects::NAMESPACES).map_err(sm_write_err)?,
        objects: tx.open_table(objects::OBJECTS).map_err(sm_write_err)?,
        chunks: tx.open_table(objects::CHUNKS).map_err(sm_write_err)?,
    })
}

impl StateMachine {
    fn read_meta<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError<NodeId>> {
        super::store::read_value(&self.db, SM_META, key).map_err(|e| sm_read_err(std::io::Error::other(e)))
    }
}

fn poisoned() -> StorageError<NodeId> {
    sm_write_err(std::io::Error::other("state machine overlay lock poisoned"))
}

/// The applied position committed to redb (what a read transaction sees now).
pub(crate) fn applied_in_db(db: &Database) -> Result<Option<LogId<NodeId>>, String> {
    Ok(super::store::read_value::<Option<LogId<NodeId>>>(db, SM_META, KEY_APPLIED)?.flatten())
}
