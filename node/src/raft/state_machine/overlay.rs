//! The write-behind overlay: KV writes and sessions applied in memory, written to redb in one
//! transaction per generation (every [`FLUSH_AFTER`], or sooner when it grows), in the
//! background or before a snapshot.
//!
//! Owns [`Gen`], [`Overlay`], when to flush, and the commit of a generation (with an entry
//! the overlay does not take applied after it). Must not decide what a command does (that
//! is `apply.rs`) nor read for clients (`reader.rs`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openraft::{Entry, LogId, StorageError, StoredMembership};
use redb::{Database, Durability};

use super::apply::apply_direct;
use super::sessions::{sweep_sessions, SessionRecord};
use super::tables::{
    obj_tables, sm_write_err, ApplyTables, StoredValue, StoredValueRef, KEY_APPLIED, KEY_MEMBERSHIP, KV, SESSIONS,
    SESSIONS_BY_TIME, SM_META,
};
use crate::raft::codec::encode;
use crate::raft::{ArkNode, NodeId, Response, TypeConfig};

/// KV writes and client sessions applied but not yet in redb, with the applied position
/// they bring the state machine to.
#[derive(Default)]
pub(crate) struct Gen {
    /// `None` marks a delete.
    pub(super) kv: BTreeMap<String, Option<StoredValue>>,
    pub(super) sessions: HashMap<Vec<u8>, SessionRecord>,
    pub(super) by_time: Vec<((u64, u64), Vec<u8>)>,
    pub(super) last_applied: Option<LogId<NodeId>>,
    pub(super) membership: Option<StoredMembership<NodeId, ArkNode>>,
    /// Timestamp of the newest entry in it, for the session sweep at flush.
    pub(super) newest_ms: u64,
    pub(super) ops: usize,
    pub(super) bytes: usize,
    pub(super) since: Option<Instant>,
}

impl Gen {
    pub(super) fn is_empty(&self) -> bool {
        self.last_applied.is_none()
    }

    pub(super) fn due(&self) -> bool {
        self.ops >= FLUSH_OPS || self.bytes >= FLUSH_BYTES || self.since.is_some_and(|t| t.elapsed() >= FLUSH_AFTER)
    }

    pub(super) fn too_big(&self) -> bool {
        self.ops >= 4 * FLUSH_OPS || self.bytes >= 4 * FLUSH_BYTES
    }
}

/// What readers consult before redb: the generation being applied to, then the one being
/// written to redb in the background (removed only once redb has committed it).
#[derive(Default)]
pub(crate) struct Overlay {
    pub(super) active: Gen,
    pub(super) frozen: Option<Arc<Gen>>,
    /// A background flush failed: redb no longer follows the log, so applies fail from now
    /// on (openraft then stops the node) rather than acknowledge writes redb may never hold.
    pub(super) failed: Option<String>,
}

impl Overlay {
    /// Refuses to go on once a background flush has failed (see `failed`).
    pub(super) fn check(&self) -> Result<(), StorageError<NodeId>> {
        match &self.failed {
            Some(e) => Err(sm_write_err(std::io::Error::other(format!(
                "an earlier state machine flush failed: {e}"
            )))),
            None => Ok(()),
        }
    }

    /// Takes the active generation out to be written to redb; readers find it as the frozen
    /// one until [`commit_frozen`] has committed it. Only one may be frozen at a time: the
    /// caller holds the state machine's flush lock.
    pub(super) fn freeze(&mut self) -> Arc<Gen> {
        let gen = Arc::new(std::mem::take(&mut self.active));
        self.frozen = Some(gen.clone());
        gen
    }

    pub(super) fn kv(&self, key: &str) -> Option<&Option<StoredValue>> {
        self.active
            .kv
            .get(key)
            .or_else(|| self.frozen.as_ref().and_then(|f| f.kv.get(key)))
    }
}

pub(super) type SharedOverlay = Arc<RwLock<Overlay>>;

/// The overlay is written to redb at least this often while writes keep coming.
pub(super) const FLUSH_AFTER: Duration = Duration::from_millis(100);
/// ... or once it holds this many writes ...
pub(super) const FLUSH_OPS: usize = 4096;
/// ... or this many key and value bytes, which bounds its memory.
pub(super) const FLUSH_BYTES: usize = 16 << 20;
/// Flushes commit without waiting for the disk, except one at least this often: after a
/// crash, openraft applies again what the log holds past the durable state, so this bounds
/// that replay (a purge of the log also commits durably first, see `store.rs`).
pub(super) const DURABLE_EVERY: Duration = Duration::from_millis(200);

/// Commits the frozen generation `gen` with `direct` ([`commit_gen`]), then settles the
/// overlay: on success readers stop finding `gen` there (redb holds it), on failure the
/// overlay is failed ([`Overlay::check`]). Blocking: run it off the runtime, as both the
/// background flush and a direct group do, since a commit may wait on a busy disk.
pub(super) fn commit_frozen(
    db: &Database,
    overlay: &SharedOverlay,
    gen: &Gen,
    direct: &[Entry<TypeConfig>],
    durable: bool,
    sweep_at: Option<u64>,
) -> Result<Vec<Response>, StorageError<NodeId>> {
    let res = commit_gen(db, gen, direct, durable, sweep_at);
    fail_or_thaw(overlay, res.as_ref().err().map(ToString::to_string));
    res
}

/// Ends a freeze: `None` (committed) drops the frozen generation, `Some(why)` fails the
/// overlay.
pub(super) fn fail_or_thaw(overlay: &SharedOverlay, failure: Option<String>) {
    let mut ov = overlay.write().unwrap_or_else(|p| p.into_inner());
    match failure {
        None => ov.frozen = None,
        Some(why) => ov.failed = Some(why),
    }
}

/// Writes one generation to redb in one transaction, with `direct` (entries applied straight
/// to redb, in log order) applied after it; their answers, in order.
pub(super) fn commit_gen(
    db: &Database,
    gen: &Gen,
    direct: &[Entry<TypeConfig>],
    durable: bool,
    sweep_at: Option<u64>,
) -> Result<Vec<Response>, StorageError<NodeId>> {
    let started = Instant::now();
    let mut tx = db.begin_write().map_err(sm_write_err)?;
    tx.set_durability(if durable {
        Durability::Immediate
    } else {
        Durability::None
    });
    let mut last = gen.last_applied;
    let mut membership = gen.membership.clone();
    let mut responses = Vec::with_capacity(direct.len());
    {
        let mut t = ApplyTables {
            kv: tx.open_table(KV).map_err(sm_write_err)?,
            sessions: tx.open_table(SESSIONS).map_err(sm_write_err)?,
            by_time: tx.open_table(SESSIONS_BY_TIME).map_err(sm_write_err)?,
            obj: obj_tables(&tx)?,
            auth: tx.open_table(crate::raft::auth::AUTH).map_err(sm_write_err)?,
            roles: tx.open_table(crate::raft::roles::ROLES).map_err(sm_write_err)?,
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
        for e in direct {
            responses.push(apply_direct(&mut t, e, &mut membership)?);
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
    if !direct.is_empty() {
        metrics::counter!("ark_sm_direct_commits_total").increment(1);
        metrics::counter!("ark_sm_direct_entries_total").increment(direct.len() as u64);
    }
    Ok(responses)
}

/// Describes this file's metrics (HELP text and unit) to the recorder; called once at
/// start-up by `server` (through `metrics::install`).
pub(crate) fn describe_metrics() {
    use metrics::{describe_counter, describe_histogram, Unit};
    describe_histogram!(
        "ark_sm_flush_seconds",
        Unit::Seconds,
        "Time to flush the state machine's in-memory overlay to the database."
    );
    describe_counter!(
        "ark_sm_direct_commits_total",
        "State machine transactions that applied entries straight to the database (entries with object commands, and the entries after them in the same apply)."
    );
    describe_counter!(
        "ark_sm_direct_entries_total",
        "Entries applied straight to the database; divided by ark_sm_direct_commits_total, the mean group per transaction."
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    use super::*;
    use crate::raft::state_machine::{KvReader, StateMachine};
    use crate::raft::{revision, Command, Op, TypeConfig};

    fn kv_entry(index: u64, id: &[u8], command: Command) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(crate::raft::Request {
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
        let db = crate::raft::store::open_database(dir.path()).unwrap();
        let mut sm = StateMachine::new(db.clone(), dir.path());
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
}
