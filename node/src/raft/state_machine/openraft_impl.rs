//! The openraft `RaftStateMachine` implementation: the applied state, the apply loop that
//! sends runs of KV entries to the overlay and commits an object entry, with everything before
//! it and the entries after it in the same call, in one transaction; and the snapshot
//! hand-offs.
//!
//! Owns only the glue to openraft's trait; the rules live in `apply.rs`, flushing in
//! `overlay.rs`, snapshots in `snapshot.rs`.

use std::io::Cursor;
use std::sync::atomic::Ordering;

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{Entry, EntryPayload, LogId, OptionalSend, Snapshot, SnapshotMeta, StorageError, StoredMembership};

use super::apply::overlay_ok;
use super::kept::{kept_snapshot, Kept};
use super::machine::StateMachine;
use super::overlay::{commit_frozen, fail_or_thaw};
use super::snapshot::off_runtime;
use super::tables::{poisoned, sm_write_err, KEY_APPLIED, KEY_MEMBERSHIP};
use crate::raft::{ArkNode, Command, NodeId, Response, TypeConfig};

/// Most entries applied to redb in one transaction once an object entry starts a group: a
/// follower catching up gets long runs, and a transaction holds its writes in memory.
pub(super) const DIRECT_GROUP_MAX: usize = 256;

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
            let Some(first) = entries.next() else { break };
            // An object entry: it and the entries after it in this call (up to
            // DIRECT_GROUP_MAX) go to redb in one transaction, after everything before it.
            // One copy-on-write commit per entry rewrote every touched table's path to its
            // root each time: tens of pages per small object (docs/benchmarks.md).
            let mut group = vec![first];
            group.extend(entries.by_ref().take(DIRECT_GROUP_MAX - 1));
            let (auth, roles) = (group.iter().any(changes_auth), group.iter().any(changes_roles));
            let _flushing = self.flush_lock.clone().lock_owned().await;
            // The overlay's entries go to redb with the group, as a background flush sends
            // them: frozen, so that readers still find them while the commit runs.
            // Off the runtime: a commit that waits on a busy disk (a durable one fsyncs) would
            // hold a runtime worker, starving the node's other tasks (heartbeats, QUIC).
            let (gen, durable, sweep_at) = {
                let mut ov = overlay.write().map_err(|_| poisoned())?;
                ov.check()?;
                let gen = ov.freeze();
                let (durable, sweep_at) = self.flush_plan(&gen, &group);
                (gen, durable, sweep_at)
            };
            let (db, ov) = (self.db.clone(), overlay.clone());
            let responses =
                tokio::task::spawn_blocking(move || commit_frozen(&db, &ov, &gen, &group, durable, sweep_at))
                    .await
                    .unwrap_or_else(|e| {
                        let why = format!("the state machine commit stopped: {e}");
                        fail_or_thaw(&overlay, Some(why.clone()));
                        Err(sm_write_err(std::io::Error::other(why)))
                    })?;
            self.direct_commits += 1;
            if auth {
                self.reload_auth()?;
            }
            if roles {
                self.reload_roles()?;
            }
            out.extend(responses);
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
        // Reading and hashing the body takes long at a million objects: on the snapshot
        // thread, so that the leader's heartbeats go on meanwhile.
        let (db, files) = (self.db.clone(), self.files.clone());
        match off_runtime(move || kept_snapshot(&db, &files)).await? {
            Kept::None => Ok(None),
            Kept::Snapshot(s) => Ok(Some(s)),
            Kept::Damaged(why) => {
                // Never sent: a new one is built from the applied state, which it replaces.
                tracing::error!(%why, "the kept snapshot is damaged; building a new one");
                metrics::counter!("ark_raft_snapshots_damaged_total").increment(1);
                self.build_snapshot().await.map(Some)
            }
        }
    }
}

/// Whether an entry holds a role change (the in-memory [`crate::raft::roles::RoleView`] is
/// then reloaded).
fn changes_roles(e: &Entry<TypeConfig>) -> bool {
    match &e.payload {
        EntryPayload::Normal(req) => req.ops.iter().any(|o| matches!(o.command, Command::SetRole { .. })),
        _ => false,
    }
}

/// Whether an entry holds an authorization change (the in-memory view is then reloaded).
fn changes_auth(e: &Entry<TypeConfig>) -> bool {
    match &e.payload {
        EntryPayload::Normal(req) => req.ops.iter().any(|o| matches!(o.command, Command::Auth(_))),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
    use proptest::prelude::*;

    use super::DIRECT_GROUP_MAX;
    use crate::raft::objects::ObjectReader;
    use crate::raft::state_machine::StateMachine;
    use crate::raft::types::{ChunkRef, Manifest, NsPolicy};
    use crate::raft::{Command, Op, Request, Response, TypeConfig};

    /// One step of a random history: what the entry at its position does.
    #[derive(Debug, Clone)]
    enum Step {
        NsCreate(usize),
        ObjPut(usize, usize, u8),
        ObjDelete(usize, usize),
        KvPut(usize, u8),
        KvDelete(usize),
        /// The request id of the entry this many steps back, again (a client's retry).
        Retry(usize),
    }

    const NSS: [&str; 2] = ["ns", "nt"];
    const KEYS: [&str; 3] = ["a", "b", "c"];

    fn command(step: &Step) -> Command {
        match *step {
            Step::NsCreate(n) => Command::NsCreate {
                name: NSS[n].into(),
                policy: NsPolicy {
                    copies: 1,
                    min_sites: 1,
                    versions_kept: 2,
                    ..NsPolicy::default()
                },
            },
            Step::ObjPut(n, k, c) => Command::ObjPut {
                ns: NSS[n].into(),
                key: KEYS[k].into(),
                manifest: Manifest {
                    size: 1,
                    sha256: [0; 32],
                    chunks: vec![ChunkRef { id: [c; 32], len: 1 }],
                    holders: vec![1],
                    created_ms: 5,
                },
            },
            Step::ObjDelete(n, k) => Command::ObjDelete {
                ns: NSS[n].into(),
                key: KEYS[k].into(),
            },
            Step::KvPut(k, v) => Command::Put {
                key: KEYS[k].into(),
                value: vec![v],
            },
            Step::KvDelete(k) => Command::Delete { key: KEYS[k].into() },
            Step::Retry(_) => unreachable!("a retry repeats an earlier entry's op"),
        }
    }

    /// The entries of a history: entry `i` has index `i + 1` and request id `r{i}`, except a
    /// retry, which repeats an earlier entry's op with its request id.
    fn entries(steps: &[Step]) -> Vec<Entry<TypeConfig>> {
        let mut ops: Vec<Op> = Vec::new();
        for (i, s) in steps.iter().enumerate() {
            let op = match s {
                Step::Retry(back) if *back <= i => ops[i - back].clone(),
                Step::Retry(_) => Op {
                    request_id: format!("r{i}").into_bytes(),
                    command: command(&Step::KvDelete(0)),
                },
                s => Op {
                    request_id: format!("r{i}").into_bytes(),
                    command: command(s),
                },
            };
            ops.push(op);
        }
        ops.into_iter()
            .enumerate()
            .map(|(i, op)| Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), i as u64 + 1),
                payload: EntryPayload::Normal(Request {
                    proposed_at_ms: 1_000 + i as u64,
                    ops: vec![op],
                }),
            })
            .collect()
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0..2usize).prop_map(Step::NsCreate),
            (0..2usize, 0..3usize, 0..4u8).prop_map(|(n, k, c)| Step::ObjPut(n, k, c)),
            (0..2usize, 0..3usize).prop_map(|(n, k)| Step::ObjDelete(n, k)),
            (0..3usize, any::<u8>()).prop_map(|(k, v)| Step::KvPut(k, v)),
            (0..3usize).prop_map(Step::KvDelete),
            (1..6usize).prop_map(Step::Retry),
        ]
    }

    /// Everything a state machine holds that readers see: its snapshot body (KV records,
    /// sessions, objects, chunks) and each namespace's kept counts.
    async fn state(sm: &mut StateMachine) -> (Vec<u8>, Vec<String>) {
        let snap = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        let objects = ObjectReader::new(sm.db.clone());
        let usage = NSS
            .iter()
            .map(|ns| format!("{ns}: {:?}", objects.namespace_usage(ns).unwrap()))
            .collect();
        (snap.snapshot.into_inner(), usage)
    }

    /// Applies `entries` in calls of the given sizes (the last call takes the rest).
    async fn apply_in(sm: &mut StateMachine, entries: Vec<Entry<TypeConfig>>, sizes: &[usize]) -> Vec<Response> {
        let mut out = Vec::new();
        let mut rest = entries.into_iter().peekable();
        let mut sizes = sizes.iter();
        while rest.peek().is_some() {
            let n = sizes.next().copied().unwrap_or(usize::MAX).max(1);
            out.extend(sm.apply(rest.by_ref().take(n).collect::<Vec<_>>()).await.unwrap());
        }
        out
    }

    fn fresh() -> (tempfile::TempDir, StateMachine) {
        let dir = tempfile::tempdir().unwrap();
        let sm = StateMachine::new(crate::raft::store::open_database(dir.path()).unwrap(), dir.path());
        (dir, sm)
    }

    #[test]
    fn entries_applied_in_groups_answer_and_leave_the_state_of_one_entry_per_call() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            // Each case is two databases and a redb commit per entry.
            cases: 48,
            ..ProptestConfig::default()
        });
        let strategy = (
            proptest::collection::vec(step(), 1..40),
            proptest::collection::vec(1..12usize, 0..8),
        );
        let res = runner.run(&strategy, |(steps, sizes)| {
            rt.block_on(async {
                let entries = entries(&steps);
                let (_d1, mut one) = fresh();
                let singles = vec![1; entries.len()];
                let want = apply_in(&mut one, entries.clone(), &singles).await;
                let (_d2, mut grouped) = fresh();
                let got = apply_in(&mut grouped, entries, &sizes).await;
                prop_assert_eq!(&got, &want);
                prop_assert_eq!(state(&mut grouped).await, state(&mut one).await);
                let (applied, _) = grouped.applied_state().await.unwrap();
                prop_assert_eq!(applied.map(|l| l.index), Some(steps.len() as u64));
                Ok(())
            })
        });
        if let Err(e) = res {
            panic!("{e}");
        }
    }

    #[test]
    fn a_run_of_object_entries_is_one_transaction_and_sees_its_own_writes() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let steps = [
                Step::NsCreate(0),
                Step::ObjPut(0, 0, 1),
                Step::KvPut(0, 7),
                Step::ObjPut(0, 0, 2),
                // The put of entry 2 again: a duplicate, answered from the session the
                // same transaction wrote.
                Step::Retry(3),
                Step::ObjDelete(0, 1),
            ];
            let (_d, mut sm) = fresh();
            let res = sm.apply(entries(&steps)).await.unwrap();
            assert_eq!(sm.direct_commits, 1, "one transaction for the whole call");
            assert!(
                res[1].results[0].error.is_none(),
                "the namespace created earlier in the group exists"
            );
            assert!(res[4].results[0].duplicate, "the retry is answered as a duplicate");
            assert_eq!(res[4].results[0].revision, res[1].results[0].revision);
            let objects = ObjectReader::new(sm.db.clone());
            let a = objects.get("ns", "a", 0).unwrap().unwrap();
            assert_eq!(a.version, res[3].results[0].version, "the second put is the latest");
            assert_eq!(objects.namespace_usage("ns").unwrap().objects, 1);
            assert_eq!(sm.reader().get("a").unwrap().unwrap().value, vec![7]);

            // A call longer than the cap takes one transaction per DIRECT_GROUP_MAX entries.
            let (_d, mut sm) = fresh();
            let mut long = vec![Step::NsCreate(0)];
            long.extend((0..DIRECT_GROUP_MAX + 10).map(|i| Step::ObjPut(0, i % 3, i as u8)));
            sm.apply(entries(&long)).await.unwrap();
            assert_eq!(sm.direct_commits, 2);
        });
    }
}
