//! Property tests of snapshot installation, the decoder a leader (or a damaged snapshot
//! table) feeds a whole state machine through: random bytes and mutations of a valid
//! snapshot are installed or refused, never a panic; a snapshot built from applied writes
//! and installed on another node reads the same.
//!
//! Only openraft's public state-machine API is used (`apply`, `build_snapshot`,
//! `begin_receiving_snapshot`, `install_snapshot`) and the public reader. One database per
//! property: an install replaces everything, so the cases can share it.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::Cursor;

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, SnapshotMeta};
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};

use super::state_machine::StateMachine;
use super::store::open_database;
use super::{Command, NodeId, Op, Request, TypeConfig};

fn put(index: u64, key: &str, value: &[u8]) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Request {
            proposed_at_ms: 1_000 + index,
            ops: vec![Op {
                request_id: format!("r{index}").into_bytes(),
                command: Command::Put {
                    key: key.into(),
                    value: value.to_vec(),
                },
            }],
        }),
    }
}

/// Runs `test` over `strategy` with the default config (PROPTEST_CASES applies); a failure
/// panics with proptest's minimised case.
fn run<S: Strategy>(strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>) {
    let mut runner = TestRunner::new(ProptestConfig {
        // Each case is a redb write transaction with an fsync: a quarter of the default.
        cases: ProptestConfig::default().cases.div_ceil(4),
        ..ProptestConfig::default()
    });
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{e}");
    }
}

struct Node {
    _dir: tempfile::TempDir,
    sm: StateMachine,
}

fn node() -> Node {
    let dir = tempfile::tempdir().unwrap();
    let db = open_database(dir.path()).unwrap();
    Node {
        sm: StateMachine::new(db, dir.path()),
        _dir: dir,
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A valid snapshot of a state machine that applied `writes`.
async fn snapshot_of(writes: &BTreeMap<String, Vec<u8>>) -> (SnapshotMeta<NodeId, super::ArkNode>, Vec<u8>) {
    let mut n = node();
    let entries: Vec<_> = writes
        .iter()
        .enumerate()
        .map(|(i, (k, v))| put(i as u64 + 1, k, v))
        .collect();
    n.sm.apply(entries).await.unwrap();
    let s = n.sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
    (s.meta, s.snapshot.into_inner())
}

fn arb_writes() -> impl Strategy<Value = BTreeMap<String, Vec<u8>>> {
    proptest::collection::btree_map("[a-z]{1,6}", proptest::collection::vec(any::<u8>(), 0..64), 0..8)
}

#[test]
fn random_bytes_are_refused_as_a_snapshot() {
    let rt = rt();
    let target = tokio::sync::Mutex::new(node());
    let meta = rt.block_on(snapshot_of(&BTreeMap::new())).0;
    run(proptest::collection::vec(any::<u8>(), 0..1024), |bytes| {
        rt.block_on(async {
            let target = &mut target.lock().await;
            let _ = target.sm.begin_receiving_snapshot().await.unwrap();
            // Installed or refused; either way the state machine still answers.
            let _ = target.sm.install_snapshot(&meta, Box::new(Cursor::new(bytes))).await;
            target.sm.reader().list("", 10).unwrap();
        });
        Ok(())
    });
}

#[test]
fn a_snapshot_round_trips_to_another_node() {
    let rt = rt();
    let target = tokio::sync::Mutex::new(node());
    run(arb_writes(), |writes| {
        rt.block_on(async {
            let target = &mut target.lock().await;
            let (meta, data) = snapshot_of(&writes).await;
            let _ = target.sm.begin_receiving_snapshot().await.unwrap();
            target
                .sm
                .install_snapshot(&meta, Box::new(Cursor::new(data)))
                .await
                .unwrap();
            let (got, more) = target.sm.reader().list("", 100).unwrap();
            prop_assert!(!more);
            let got: BTreeMap<String, Vec<u8>> = got.into_iter().map(|(k, v)| (k, v.value)).collect();
            prop_assert_eq!(got, writes);
            Ok(())
        })
    });
}

#[test]
fn a_mutated_snapshot_is_installed_or_refused() {
    let rt = rt();
    let target = tokio::sync::Mutex::new(node());
    let strategy = (
        arb_writes(),
        any::<usize>(),
        0u8..8,
        any::<usize>(),
        proptest::collection::vec(any::<u8>(), 0..16),
        any::<usize>(),
        prop_oneof![Just(u64::MAX), Just(1u64 << 40), Just(1u64 << 32)],
    );
    run(strategy, |(writes, flip_at, bit, cut, more, huge_at, huge)| {
        rt.block_on(async {
            let target = &mut target.lock().await;
            let (meta, data) = snapshot_of(&writes).await;
            let mut variants = Vec::new();
            if !data.is_empty() {
                let mut flipped = data.clone();
                flipped[flip_at % data.len()] ^= 1 << bit;
                variants.push(flipped);
                variants.push(data[..cut % data.len()].to_vec());
            }
            let mut longer = data.clone();
            longer.extend_from_slice(&more);
            variants.push(longer);
            if data.len() >= 8 {
                let at = huge_at % (data.len() - 7);
                let mut m = data.clone();
                m[at..at + 8].copy_from_slice(&huge.to_le_bytes());
                variants.push(m);
            }
            for v in variants {
                let _ = target.sm.begin_receiving_snapshot().await.unwrap();
                let _ = target.sm.install_snapshot(&meta, Box::new(Cursor::new(v))).await;
                target.sm.reader().list("", 10).unwrap();
            }
        });
        Ok(())
    });
}

/// Witness voter: a role applied through the log is in the in-memory view at once, travels
/// in a snapshot to another node, and a later snapshot without it clears it there.
#[test]
fn roles_apply_and_travel_in_snapshots() {
    use crate::config::NodeRole;
    let rt = rt();
    rt.block_on(async {
        let mut src = node();
        let set = |index: u64, node: NodeId, role: NodeRole| Entry::<TypeConfig> {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request {
                proposed_at_ms: 1_000 + index,
                ops: vec![Op {
                    request_id: Vec::new(),
                    command: Command::SetRole { node, role },
                }],
            }),
        };
        src.sm
            .apply(vec![put(1, "k", b"v"), set(2, 3, NodeRole::Witness)])
            .await
            .unwrap();
        assert!(src.sm.role_view().is_witness(3));
        assert!(!src.sm.role_view().is_witness(1));
        let s = src.sm.get_snapshot_builder().await.build_snapshot().await.unwrap();

        let mut dst = node();
        let view = dst.sm.role_view();
        assert!(!view.is_witness(3));
        let _ = dst.sm.begin_receiving_snapshot().await.unwrap();
        dst.sm.install_snapshot(&s.meta, s.snapshot).await.unwrap();
        assert!(view.is_witness(3), "the role did not travel in the snapshot");

        src.sm.apply(vec![set(3, 3, NodeRole::Data)]).await.unwrap();
        assert!(!src.sm.role_view().is_witness(3));
        let s = src.sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        let _ = dst.sm.begin_receiving_snapshot().await.unwrap();
        dst.sm.install_snapshot(&s.meta, s.snapshot).await.unwrap();
        assert!(!view.is_witness(3));
    });
}

/// Runs `work` beside a task that ticks every millisecond on the same (one-thread) runtime;
/// asserts that the ticker ran throughout, i.e. that `work` did not hold the thread.
async fn runtime_stays_free<T>(what: &str, work: impl std::future::Future<Output = T>) -> T {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let ticks = std::sync::Arc::new(AtomicU64::new(0));
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let ticker = tokio::spawn({
        let (ticks, stop) = (ticks.clone(), stop.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                ticks.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        }
    });
    tokio::task::yield_now().await;
    let before = ticks.load(Ordering::Relaxed);
    let started = std::time::Instant::now();
    let out = work.await;
    let took_ms = started.elapsed().as_millis() as u64;
    let during = ticks.load(Ordering::Relaxed) - before;
    stop.store(true, Ordering::Relaxed);
    ticker.await.unwrap();
    // Ticking every millisecond, the other task ran throughout.
    assert!(
        during >= (took_ms / 10).max(2),
        "another task ran {during} times during a {took_ms} ms {what}"
    );
    out
}

/// A group of entries applied straight to redb (an object command and the entries after it in
/// the same apply call) commits on a blocking thread, not on the runtime; the KV writes it
/// carries stay readable while it commits, and are in redb after it.
#[test]
fn a_group_of_object_entries_commits_off_the_runtime() {
    let rt = rt();
    rt.block_on(async {
        let mut n = node();
        let entry = |index: u64, ops: Vec<Op>| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Request {
                proposed_at_ms: 1_000,
                ops,
            }),
        };
        let put = |e: u64, i: u64| Op {
            request_id: format!("r{e}-{i}").into_bytes(),
            command: Command::Put {
                key: format!("k{e}-{i}"),
                value: vec![7; 512],
            },
        };
        // A KV entry first (into the overlay), then a namespace create and 200 KV entries
        // after it: one direct transaction of about 50 MB.
        let mut entries = vec![entry(1, vec![put(0, 0)])];
        entries.push(entry(
            2,
            vec![Op {
                request_id: b"ns".to_vec(),
                command: Command::NsCreate {
                    name: "ns".into(),
                    policy: crate::raft::types::NsPolicy::default(),
                },
            }],
        ));
        entries.extend((3..203u64).map(|e| entry(e, (0..500).map(|i| put(e, i)).collect())));
        let answers = runtime_stays_free("commit of a direct group", n.sm.apply(entries))
            .await
            .unwrap();
        assert_eq!(answers.len(), 202);
        let reader = n.sm.reader();
        assert_eq!(reader.get("k0-0").unwrap().unwrap().value, vec![7; 512]);
        assert_eq!(reader.get("k202-499").unwrap().unwrap().value, vec![7; 512]);
        let (applied, _) = n.sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(202));
    });
}

/// Building a snapshot, reading the kept one back (to send it) and installing a received one
/// each read, hash or write the whole state: none of it on the runtime, where it would stop
/// every other task (heartbeats, replication) until it finished.
#[test]
fn snapshot_builds_reads_and_installs_run_off_the_runtime() {
    // One runtime thread, so that work on it would stop the ticker.
    let rt = rt();
    rt.block_on(async {
        let mut n = node();
        let entries: Vec<_> = (0..50u64)
            .map(|e| Entry {
                log_id: LogId::new(CommittedLeaderId::new(1, 1), e + 1),
                payload: EntryPayload::Normal(Request {
                    proposed_at_ms: 1_000,
                    ops: (0..1000)
                        .map(|i| Op {
                            request_id: format!("r{e}-{i}").into_bytes(),
                            command: Command::Put {
                                key: format!("k{e}-{i}"),
                                value: vec![7; 512],
                            },
                        })
                        .collect(),
                }),
            })
            .collect();
        n.sm.apply(entries).await.unwrap();
        // The first build also writes the applied state out; the second only reads it.
        n.sm.get_snapshot_builder().await.build_snapshot().await.unwrap();

        let mut builder = n.sm.get_snapshot_builder().await;
        let s = runtime_stays_free("build", builder.build_snapshot()).await.unwrap();
        assert!(s.snapshot.into_inner().len() > 50_000 * 512);

        let kept = runtime_stays_free("read of the kept snapshot", n.sm.get_current_snapshot())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(kept.meta, s.meta);

        let mut other = node();
        let _ = other.sm.begin_receiving_snapshot().await.unwrap();
        runtime_stays_free("install", other.sm.install_snapshot(&kept.meta, kept.snapshot))
            .await
            .unwrap();
        assert_eq!(other.sm.reader().get("k49-999").unwrap().unwrap().value, vec![7; 512]);
    });
}
