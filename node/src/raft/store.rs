//! The Raft log store: entries in the append-only segment files of [`super::wal`], the vote
//! and the purge point in the node's redb database (whose other tables hold the state
//! machine, `state_machine/`).
//!
//! Group commit happens at two levels. openraft 0.9's core waits for each append to be
//! flushed before it appends the next, so concurrent client writes are first folded into one
//! log entry by `api::proposer`; here, `append` queues entries (readable at once from an
//! in-memory map of unflushed entries) for one writer thread that writes everything queued
//! with one `fdatasync` and only then reports the entries persisted. Nothing is acknowledged
//! before it is on disk. Votes are written durably before `save_vote` returns.
//!
//! The state machine commits to redb without waiting for the disk (it is made durable at
//! least every `DURABLE_EVERY`, 200 ms, and before every purge). After a crash it may be
//! behind the log, and openraft applies the missing entries again. It never needs entries
//! the log no longer holds: a purge
//! follows a snapshot, which either the state machine built after writing itself to redb, or
//! it received (then the purge waits until it is installed), and the purge commits redb
//! durably before it deletes anything.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::db::{read_value, write_value_durably, KEY_VOTE, META};
use super::wal::{SharedIndex, Wal};
use super::{NodeId, TypeConfig};
use crate::latency::LatencyStats;

/// Where versions before the log files kept the log; read once to move it (see
/// [`migrate_from_database`]).
pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const KEY_PURGED: &str = "last_purged";

/// Most queued log writes the writer folds into one transaction (and one fsync).
const WRITER_BATCH_MAX: usize = 4096;
/// How often a purge waiting for a snapshot install says so.
const PURGE_WAIT_LOG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
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

// The codec moved to `super::codec`; its functions keep their old path here for the modules
// that import them from the store.
pub use super::codec::{decode, decode_with_limit, encode, CodecError, DECODE_BYTES_MAX};

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
        super::state_machine::create_tables(&tx).map_err(StoreError::Io)?;
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

/// Entries appended but not yet synced, readable meanwhile.
type Unflushed = Arc<RwLock<BTreeMap<u64, Entry<TypeConfig>>>>;
type LastPurged = Arc<RwLock<Option<LogId<NodeId>>>>;

/// The Raft log store.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
    writer: std_mpsc::SyncSender<LogOp>,
    unflushed: Unflushed,
    wal: SharedIndex,
    last_purged: LastPurged,
    /// Duration of each group commit (one write, one fdatasync), for telemetry.
    fsync: LatencyStats,
    /// Set by the state machine while it receives a snapshot (see `purge`).
    snapshot_gate: Arc<AtomicBool>,
}

/// Everything the writer thread owns.
struct Writer {
    wal: Wal,
    db: Arc<Database>,
    unflushed: Unflushed,
    last_purged: LastPurged,
    fsync: LatencyStats,
    /// Set by the first failed write: from then on every write fails, since what reached
    /// the disk is unknown (a failed fsync may have dropped pages that were never written).
    failed: Option<String>,
}

/// The log id of an encoded entry: its first field, decoded alone (the codec allows trailing
/// bytes), so that checking a record does not decode the whole entry.
pub(super) fn entry_log_id(payload: &[u8]) -> Result<LogId<NodeId>, String> {
    decode::<LogId<NodeId>>(payload).map_err(|e| e.to_string())
}

impl LogStore {
    /// Opens the log under `data_dir/raft-log` (checking every record, see [`super::wal`])
    /// next to the database and starts the group-commit writer thread. The thread ends when
    /// the last clone of the store is dropped. A log kept in the database by an earlier
    /// version is moved into the log files first.
    pub fn open(data_dir: &Path, db: Arc<Database>) -> Result<Self, StoreError> {
        let (wal, rec, last_purged) = open_wal(data_dir, &db)?;
        let dir = data_dir.join("raft-log");
        tracing::info!(dir = %dir.display(), segments = rec.segments, entries = rec.entries,
            torn_bytes = rec.torn_bytes, damaged = rec.damage.is_some(), "raft log opened");
        let (tx, rx) = std_mpsc::sync_channel::<LogOp>(WRITER_QUEUE_MAX);
        let unflushed: Unflushed = Arc::default();
        let last_purged: LastPurged = Arc::new(RwLock::new(last_purged));
        let fsync = LatencyStats::default();
        let shared = wal.shared();
        let writer = Writer {
            wal,
            db: db.clone(),
            unflushed: unflushed.clone(),
            last_purged: last_purged.clone(),
            fsync: fsync.clone(),
            failed: None,
        };
        std::thread::Builder::new()
            .name("raft-log-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Io(format!("cannot start log writer thread: {e}")))?;
        Ok(Self {
            db,
            writer: tx,
            unflushed,
            wal: shared,
            last_purged,
            fsync,
            snapshot_gate: Arc::default(),
        })
    }

    /// Makes purges wait while the state machine owning `gate` receives a snapshot
    /// ([`super::state_machine::StateMachine::snapshot_gate`]).
    pub fn with_snapshot_gate(mut self, gate: Arc<AtomicBool>) -> Self {
        self.snapshot_gate = gate;
        self
    }

    /// The writer's commit (fsync) latencies since the telemetry sampler last took them.
    pub fn fsync_stats(&self) -> LatencyStats {
        self.fsync.clone()
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

/// Opens the log files under `data_dir/raft-log` (checking every record, see [`super::wal`]),
/// recording damage in `db` before anything is cut, and moves a log an earlier version kept in
/// the database into them; also answers the purge point. The log
/// store's writer thread owns the result; `arkd recover` (`force_new.rs`) uses it directly on a
/// stopped node.
pub(super) fn open_wal(
    data_dir: &Path,
    db: &Database,
) -> Result<(Wal, super::wal::Recovered, Option<LogId<NodeId>>), StoreError> {
    let last_purged = read_purged(db)?;
    let dir = data_dir.join("raft-log");
    let record = |d: &super::wal::Damage| {
        let found = super::recovery::LogDamage {
            first_lost: d.first_lost,
            detail: format!(
                "{} at byte {} of {} (originals kept in {})",
                d.why,
                d.offset,
                d.segment.display(),
                d.kept_in.display()
            ),
        };
        tracing::error!(first_lost = found.first_lost, detail = %found.detail,
            "raft log corrupt: cutting it before the bad record and recovering the entries from a leader");
        super::recovery::record_damage(db, found)
            .map(drop)
            .map_err(std::io::Error::other)
    };
    let (mut wal, rec) = Wal::open(&dir, last_purged.map(|l| l.index), entry_log_id, record)
        .map_err(|e| StoreError::Io(format!("cannot open raft log in {}: {e}", dir.display())))?;
    migrate_from_database(db, &mut wal, last_purged).map_err(StoreError::Io)?;
    Ok((wal, rec, last_purged))
}

/// Records that the log was purged up to `upto` in a durable commit, for a data dir that
/// starts from a snapshot and holds no log files (`raft::backup::restore`): the log then
/// starts after `upto`, as after a purge.
pub(crate) fn seed_purged(db: &Database, upto: LogId<NodeId>) -> Result<(), String> {
    write_value_durably(db, META, KEY_PURGED, Some(&Some(upto)))
}

pub(super) fn read_purged(db: &Database) -> Result<Option<LogId<NodeId>>, StoreError> {
    Ok(read_value::<Option<LogId<NodeId>>>(db, META, KEY_PURGED)
        .map_err(StoreError::Io)?
        .flatten())
}

/// Versions before the log files kept the log in the `raft_log` table. Its entries are
/// appended to the log files (unless those already hold entries, meaning an earlier move
/// finished) and synced before the table is emptied.
fn migrate_from_database(db: &Database, wal: &mut Wal, last_purged: Option<LogId<NodeId>>) -> Result<(), String> {
    let s = |e: &dyn std::fmt::Display| e.to_string();
    let mut moved = 0usize;
    {
        let tx = db.begin_read().map_err(|e| s(&e))?;
        let t = tx.open_table(LOG).map_err(|e| s(&e))?;
        if t.is_empty().map_err(|e| s(&e))? {
            return Ok(());
        }
        let already = wal
            .shared()
            .read()
            .map_err(|_| "raft log index lock poisoned")?
            .last()
            .is_some();
        if !already {
            for item in t.iter().map_err(|e| s(&e))? {
                let (_, v) = item.map_err(|e| s(&e))?;
                let id = entry_log_id(v.value())?;
                if last_purged.is_none_or(|p| id.index > p.index) {
                    wal.append(id, v.value()).map_err(|e| s(&e))?;
                    moved += 1;
                }
            }
            wal.commit().map_err(|e| s(&e))?;
        }
    }
    let tx = db.begin_write().map_err(|e| s(&e))?;
    tx.open_table(LOG)
        .map_err(|e| s(&e))?
        .retain(|_, _| false)
        .map_err(|e| s(&e))?;
    tx.commit().map_err(|e| s(&e))?;
    tracing::info!(
        entries = moved,
        "moved the raft log from the database into the log files"
    );
    Ok(())
}

impl Writer {
    /// Executes queued log writes: everything queued meanwhile is written with one
    /// fdatasync, and only then are the appends acknowledged to openraft.
    fn run(mut self, rx: std_mpsc::Receiver<LogOp>) {
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
            let res = match &self.failed {
                Some(e) => Err(format!("an earlier raft log write failed: {e}")),
                None => self.write_batch(&batch),
            };
            let took = started.elapsed();
            self.fsync.record(took);
            metrics::histogram!("ark_raft_log_fsync_seconds").record(took.as_secs_f64());
            metrics::histogram!("ark_raft_log_flush_batch_size").record(batch.len() as f64);
            if let Err(e) = &res {
                // Durability can no longer be promised: every waiter gets the error, which
                // openraft turns into a fatal storage error that stops the node.
                tracing::error!(error = %e, "raft log write failed");
                self.failed.get_or_insert_with(|| e.clone());
            }
            for op in batch.drain(..) {
                match op {
                    LogOp::Append { entries, callback } => {
                        if res.is_ok() {
                            if let Ok(mut c) = self.unflushed.write() {
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
            // After the answers, so that no acknowledged write waits for it.
            if self.failed.is_none() {
                if let Err(e) = self.wal.extend_runway() {
                    tracing::error!(error = %e, "raft log write failed (zeroing space ahead of the log)");
                    self.failed = Some(format!("zeroing space ahead of the raft log failed: {e}"));
                }
            }
        }
    }

    fn write_batch(&mut self, batch: &[LogOp]) -> Result<(), String> {
        let s = |e: &dyn std::fmt::Display| e.to_string();
        for op in batch {
            match op {
                LogOp::Append { entries, .. } => {
                    for (id, bytes) in entries {
                        self.wal.append(*id, bytes).map_err(|e| s(&e))?;
                    }
                }
                LogOp::Truncate { from, .. } => self.wal.truncate(*from).map_err(|e| s(&e))?,
                LogOp::Purge { upto, .. } => {
                    // The purge point goes to the database in a durable commit, which also makes
                    // every earlier state machine commit durable: the state machine on disk is
                    // then at or past `upto` before the entries up to it are deleted.
                    self.wal.commit().map_err(|e| s(&e))?;
                    write_value_durably(&self.db, META, KEY_PURGED, Some(&Some(*upto)))?;
                    *self.last_purged.write().map_err(|_| "purge lock poisoned")? = Some(*upto);
                    self.wal.purge(upto.index).map_err(|e| s(&e))?;
                }
            }
        }
        self.wal.commit().map_err(|e| s(&e))
    }
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
        use std::ops::Bound;
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        // Unflushed entries first: one that is synced and dropped from the map after this
        // read is in the log files' index before the read below starts.
        let mut merged: BTreeMap<u64, Entry<TypeConfig>> = match self.unflushed.read() {
            Ok(c) => c.range(bounds).map(|(k, v)| (*k, v.clone())).collect(),
            Err(_) => return Err(read_err(std::io::Error::other("log cache lock poisoned"))),
        };
        let start = match bounds.0 {
            Bound::Included(s) => s,
            Bound::Excluded(s) => s.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match bounds.1 {
            Bound::Included(e) => e.saturating_add(1),
            Bound::Excluded(e) => e,
            Bound::Unbounded => u64::MAX,
        };
        let wal = self
            .wal
            .read()
            .map_err(|_| read_err(std::io::Error::other("raft log index lock poisoned")))?;
        wal.read_range(start, end, |index, payload| {
            if let std::collections::btree_map::Entry::Vacant(slot) = merged.entry(index) {
                slot.insert(decode(payload).map_err(std::io::Error::other)?);
            }
            Ok(())
        })
        .map_err(read_err)?;
        drop(wal);
        Ok(merged.into_values().collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged = *self
            .last_purged
            .read()
            .map_err(|_| read_err(std::io::Error::other("purge lock poisoned")))?;
        let cached_last = match self.unflushed.read() {
            Ok(c) => c.last_key_value().map(|(_, e)| e.log_id),
            Err(_) => return Err(read_err(std::io::Error::other("log cache lock poisoned"))),
        };
        let stored_last = self
            .wal
            .read()
            .map_err(|_| read_err(std::io::Error::other("raft log index lock poisoned")))?
            .last();
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
        write_value_durably(&self.db, META, KEY_VOTE, Some(vote))
            .map_err(|e| StorageIOError::write_vote(&std::io::Error::other(e)).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        read_value(&self.db, META, KEY_VOTE).map_err(|e| read_err(std::io::Error::other(e)))
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
        // openraft 0.9 orders the purge up to a snapshot just received from the leader right
        // after handing the snapshot to the state machine, not after it is installed. While a
        // snapshot is being received, the entries go only once the state machine in the
        // database is past them, so that no crash leaves it needing purged entries. (After a
        // local snapshot build nothing waits: the build writes the state machine out first.)
        if self.snapshot_gate.load(Ordering::Acquire) {
            // No deadline: purging entries the state machine on disk still needs would leave a
            // node that cannot restart. The install either finishes or fails (then openraft
            // stops the node, and the log is intact).
            let started = Instant::now();
            let mut warned = Instant::now();
            loop {
                let applied =
                    super::state_machine::applied_in_db(&self.db).map_err(|e| write_err(std::io::Error::other(e)))?;
                if applied.is_some_and(|a| a.index >= log_id.index) {
                    break;
                }
                if !self.snapshot_gate.load(Ordering::Acquire) {
                    return Err(write_err(std::io::Error::other(format!(
                        "refusing to purge the raft log up to {log_id}: the received snapshot was not installed \
                         (the state machine is at {applied:?})"
                    ))));
                }
                if warned.elapsed() >= PURGE_WAIT_LOG_EVERY {
                    warned = Instant::now();
                    tracing::warn!(upto = %log_id, ?applied, waited = ?started.elapsed(),
                        "raft log purge still waiting for the received snapshot to be installed");
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
        }
        self.submit_and_wait(|done| LogOp::Purge { upto: log_id, done }).await
    }
}

/// Describes this module's metrics (HELP text and unit) to the recorder; called once at start-up by
/// `server` (through `metrics::install`).
pub(crate) fn describe_metrics() {
    use metrics::{describe_histogram, Unit};
    describe_histogram!(
        "ark_raft_log_fsync_seconds",
        Unit::Seconds,
        "Time of one Raft log group commit (write and fdatasync)."
    );
    describe_histogram!(
        "ark_raft_log_flush_batch_size",
        Unit::Count,
        "Log operations in one group commit (1 up to 4096)."
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn blank(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(2, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    #[tokio::test]
    async fn a_log_kept_in_the_database_by_an_earlier_version_moves_to_the_log_files() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_database(dir.path()).unwrap();
        {
            let tx = db.begin_write().unwrap();
            {
                let mut t = tx.open_table(LOG).unwrap();
                for i in 3..=7 {
                    t.insert(i, encode(&blank(i)).unwrap().as_slice()).unwrap();
                }
                let purged = encode(&Some(blank(2).log_id)).unwrap();
                tx.open_table(META)
                    .unwrap()
                    .insert(KEY_PURGED, purged.as_slice())
                    .unwrap();
            }
            tx.commit().unwrap();
        }
        let mut log = LogStore::open(dir.path(), db.clone()).unwrap();
        let got: Vec<u64> = log
            .try_get_log_entries(0..100)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.index)
            .collect();
        assert_eq!(got, vec![3, 4, 5, 6, 7]);
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(blank(2).log_id));
        assert_eq!(st.last_log_id, Some(blank(7).log_id));
        let tx = db.begin_read().unwrap();
        assert!(
            tx.open_table(LOG).unwrap().is_empty().unwrap(),
            "the old table is emptied"
        );
        drop(tx);
        drop(log);
        // A second start finds the entries in the files and nothing to move.
        let mut log = LogStore::open(dir.path(), db).unwrap();
        assert_eq!(log.try_get_log_entries(3..=7).await.unwrap().len(), 5);
    }
}
