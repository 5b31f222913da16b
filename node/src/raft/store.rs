//! The node's one redb database: the Raft log and vote (this file) and the state machine
//! tables (`state_machine.rs`). Keeping both in one database means their commits are
//! ordered: a state machine that survived a crash never refers to log entries that did not.
//!
//! Group commit happens at two levels. openraft 0.9's core waits for each append to be
//! flushed before it appends the next, so concurrent client writes are first folded into one
//! log entry by `api::proposer`; here, `append` queues entries (readable at once from an
//! in-memory map of unflushed entries) for one writer thread that commits everything queued
//! in one redb transaction with one fsync and only then reports the entries persisted.
//! Nothing is acknowledged before it is on disk. Votes are written durably before
//! `save_vote` returns.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{Database, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{NodeId, TypeConfig};
use crate::telemetry::LatencyStats;

pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

const KEY_VOTE: &str = "vote";
const KEY_PURGED: &str = "last_purged";

/// Most queued log writes the writer folds into one transaction (and one fsync).
const WRITER_BATCH_MAX: usize = 4096;
/// Bound of the writer's queue; a full queue makes openraft wait (backpressure).
const WRITER_QUEUE_MAX: usize = 65_536;

/// Errors opening or using the database outside of openraft's calls.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// redb refused to open or create the database.
    #[error("cannot open database {path}: {source}")]
    Open {
        /// The file.
        path: String,
        /// Why.
        source: redb::DatabaseError,
    },
    /// A read or write failed.
    #[error("storage error: {0}")]
    Io(String),
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, bincode::Error> {
    bincode::serialize(v)
}

pub(crate) fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, bincode::Error> {
    bincode::deserialize(b)
}

/// Opens (or creates) the node's database under `data_dir`.
pub fn open_database(data_dir: &Path) -> Result<Arc<Database>, StoreError> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| StoreError::Io(format!("cannot create data dir {}: {e}", data_dir.display())))?;
    let path = data_dir.join("ark.redb");
    let db = Database::create(&path).map_err(|source| StoreError::Open {
        path: path.display().to_string(),
        source,
    })?;
    // Create the tables once so that readers never see them missing.
    let tx = db.begin_write().map_err(|e| StoreError::Io(e.to_string()))?;
    {
        tx.open_table(LOG).map_err(|e| StoreError::Io(e.to_string()))?;
        tx.open_table(META).map_err(|e| StoreError::Io(e.to_string()))?;
        super::state_machine::create_tables(&tx).map_err(|e| StoreError::Io(e.to_string()))?;
    }
    tx.commit().map_err(|e| StoreError::Io(e.to_string()))?;
    Ok(Arc::new(db))
}

/// A write to the log, executed in order by the writer thread.
enum LogOp {
    Append {
        entries: Vec<(LogId<NodeId>, Vec<u8>)>,
        callback: LogFlushed<TypeConfig>,
    },
    Truncate {
        from: u64,
        done: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
    Purge {
        upto: LogId<NodeId>,
        done: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
}

/// Entries appended but not yet committed to redb, readable meanwhile.
type Unflushed = Arc<RwLock<BTreeMap<u64, Entry<TypeConfig>>>>;

/// The Raft log store over redb.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    writer: std_mpsc::SyncSender<LogOp>,
    unflushed: Unflushed,
    /// Duration of each group commit (one redb transaction, one fsync), for telemetry.
    fsync: LatencyStats,
}

impl LogStore {
    /// Wraps the database and starts the group-commit writer thread. The thread ends when
    /// the last clone of the store is dropped.
    pub fn new(db: Arc<Database>) -> Result<Self, StoreError> {
        let (tx, rx) = std_mpsc::sync_channel::<LogOp>(WRITER_QUEUE_MAX);
        let unflushed: Unflushed = Arc::default();
        let fsync = LatencyStats::default();
        let (wdb, wcache, wfsync) = (db.clone(), unflushed.clone(), fsync.clone());
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer_loop(wdb, wcache, rx, wfsync))
            .map_err(|e| StoreError::Io(format!("cannot start log writer thread: {e}")))?;
        Ok(Self {
            db,
            writer: tx,
            unflushed,
            fsync,
        })
    }

    /// The writer's commit (fsync) latencies since the telemetry sampler last took them.
    pub fn fsync_stats(&self) -> LatencyStats {
        self.fsync.clone()
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StorageError<NodeId>> {
        let tx = self.db.begin_read().map_err(read_err)?;
        let t = tx.open_table(META).map_err(read_err)?;
        match t.get(key).map_err(read_err)? {
            Some(v) => Ok(Some(decode(v.value()).map_err(read_err)?)),
            None => Ok(None),
        }
    }

    async fn submit_and_wait(
        &self,
        make: impl FnOnce(tokio::sync::oneshot::Sender<Result<(), String>>) -> LogOp,
    ) -> Result<(), StorageError<NodeId>> {
        let (done, rx) = tokio::sync::oneshot::channel();
        self.writer
            .send(make(done))
            .map_err(|_| write_err(std::io::Error::other("log writer thread has stopped")))?;
        rx.await
            .map_err(|_| write_err(std::io::Error::other("log writer thread has stopped")))?
            .map_err(|e| write_err(std::io::Error::other(e)))
    }
}

/// Executes queued log writes: everything queued meanwhile goes into one redb transaction
/// with one fsync, and only then are the appends acknowledged to openraft.
fn writer_loop(db: Arc<Database>, unflushed: Unflushed, rx: std_mpsc::Receiver<LogOp>, fsync: LatencyStats) {
    let mut batch: Vec<LogOp> = Vec::with_capacity(256);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < WRITER_BATCH_MAX {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let res = write_batch(&db, &batch);
        let took = started.elapsed();
        fsync.record(took);
        metrics::histogram!("ark_raft_log_fsync_seconds").record(took.as_secs_f64());
        metrics::histogram!("ark_raft_log_flush_batch_size").record(batch.len() as f64);
        if let Err(e) = &res {
            // A failed fsync means durability can no longer be promised: every waiter gets the
            // error, which openraft turns into a fatal storage error that stops the node.
            tracing::error!(error = %e, "raft log write failed");
        }
        for op in batch.drain(..) {
            match op {
                LogOp::Append { entries, callback } => {
                    if res.is_ok() {
                        if let Ok(mut c) = unflushed.write() {
                            for (id, _) in &entries {
                                // A later truncate + re-append may have replaced this index.
                                if c.get(&id.index).is_some_and(|e| e.log_id == *id) {
                                    c.remove(&id.index);
                                }
                            }
                        }
                    }
                    callback.log_io_completed(res.clone().map_err(std::io::Error::other));
                }
                LogOp::Truncate { done, .. } | LogOp::Purge { done, .. } => {
                    let _ = done.send(res.clone());
                }
            }
        }
    }
}

fn write_batch(db: &Database, batch: &[LogOp]) -> Result<(), String> {
    let tx = db.begin_write().map_err(|e| e.to_string())?;
    {
        let mut log = tx.open_table(LOG).map_err(|e| e.to_string())?;
        let mut meta = tx.open_table(META).map_err(|e| e.to_string())?;
        for op in batch {
            match op {
                LogOp::Append { entries, .. } => {
                    for (id, bytes) in entries {
                        log.insert(id.index, bytes.as_slice()).map_err(|e| e.to_string())?;
                    }
                }
                LogOp::Truncate { from, .. } => {
                    log.retain_in(*from.., |_, _| false).map_err(|e| e.to_string())?;
                }
                LogOp::Purge { upto, .. } => {
                    let b = encode(&Some(*upto)).map_err(|e| e.to_string())?;
                    meta.insert(KEY_PURGED, b.as_slice()).map_err(|e| e.to_string())?;
                    log.retain_in(..=upto.index, |_, _| false).map_err(|e| e.to_string())?;
                }
            }
        }
    }
    // Default durability is Immediate: the commit returns after fsync.
    tx.commit().map_err(|e| e.to_string())
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::write_logs(&e).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        // Unflushed entries first: one that is flushed and dropped from the map after this
        // read is in redb before the read below starts.
        let mut merged: BTreeMap<u64, Entry<TypeConfig>> = match self.unflushed.read() {
            Ok(c) => c.range(bounds).map(|(k, v)| (*k, v.clone())).collect(),
            Err(_) => return Err(read_err(std::io::Error::other("log cache lock poisoned"))),
        };
        let tx = self.db.begin_read().map_err(read_err)?;
        let t = tx.open_table(LOG).map_err(read_err)?;
        for item in t.range::<u64>(bounds).map_err(read_err)? {
            let (k, v) = item.map_err(read_err)?;
            if let std::collections::btree_map::Entry::Vacant(slot) = merged.entry(k.value()) {
                slot.insert(decode(v.value()).map_err(read_err)?);
            }
        }
        Ok(merged.into_values().collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged: Option<LogId<NodeId>> = self.get_meta::<Option<LogId<NodeId>>>(KEY_PURGED)?.flatten();
        let cached_last = match self.unflushed.read() {
            Ok(c) => c.last_key_value().map(|(_, e)| e.log_id),
            Err(_) => return Err(read_err(std::io::Error::other("log cache lock poisoned"))),
        };
        let tx = self.db.begin_read().map_err(read_err)?;
        let t = tx.open_table(LOG).map_err(read_err)?;
        let stored_last = match t.last().map_err(read_err)? {
            Some((_, v)) => {
                let e: Entry<TypeConfig> = decode(v.value()).map_err(read_err)?;
                Some(e.log_id)
            }
            None => None,
        };
        let last = cached_last.max(stored_last).max(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        // Durable before returning: a vote forgotten in a crash could elect two leaders.
        let bytes = encode(vote).map_err(|e| StorageIOError::write_vote(&e))?;
        let tx = self.db.begin_write().map_err(|e| StorageIOError::write_vote(&e))?;
        {
            let mut t = tx.open_table(META).map_err(|e| StorageIOError::write_vote(&e))?;
            t.insert(KEY_VOTE, bytes.as_slice())
                .map_err(|e| StorageIOError::write_vote(&e))?;
        }
        tx.commit().map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.get_meta(KEY_VOTE)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        {
            let mut c = self
                .unflushed
                .write()
                .map_err(|_| write_err(std::io::Error::other("log cache lock poisoned")))?;
            for e in entries {
                encoded.push((e.log_id, encode(&e).map_err(write_err)?));
                c.insert(e.log_id.index, e);
            }
        }
        // Readable now (from the cache); durable when the writer's commit returns.
        self.writer
            .send(LogOp::Append {
                entries: encoded,
                callback,
            })
            .map_err(|_| write_err(std::io::Error::other("log writer thread has stopped")))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.unflushed
            .write()
            .map_err(|_| write_err(std::io::Error::other("log cache lock poisoned")))?
            .retain(|i, _| *i < log_id.index);
        self.submit_and_wait(|done| LogOp::Truncate {
            from: log_id.index,
            done,
        })
        .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.submit_and_wait(|done| LogOp::Purge { upto: log_id, done }).await
    }
}
