//! Running a drill against real `arkd` processes: a playground on loopback, a recorded KV
//! workload, a seeded fault schedule, the final reads, and the verdict of the checkers.
//!
//! Owns the I/O half of the harness (processes, clocks, the SDK). It judges nothing itself:
//! histories go to [`crate::linearizability`] and [`crate::checks`], verdicts to
//! [`crate::report`]. Network-namespace mode and the other faults of issue 4 are not built
//! yet; this runs in loopback mode and says so in the report.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ark_client::playground::{self, Layout, Playground};
use ark_client::{ArkClient, ClientError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::checks::{self, FaultWindow};
use crate::history::{History, OpKind, Recorder, Value};
use crate::linearizability::{self, SearchBudget};
use crate::report::{CheckResults, Mode, Report, RunInfo};

/// Scenarios this build can run.
pub const SCENARIOS: &[(&str, &str)] = &[
    (
        "leader-kill",
        "kill -9 of the current leader every 3-5 s, restarted 1.5 s later, under concurrent KV reads and writes",
    ),
    (
        "random-kill",
        "kill -9 of a random node (seeded) every 3-5 s, restarted 1.5 s later",
    ),
    (
        "pause",
        "SIGSTOP of the current leader for 3 s, then SIGCONT (a process pause: GC, VM stall), every 3-5 s",
    ),
    (
        "rolling-restart",
        "SIGTERM and restart of every node in turn, leader last, as in an upgrade",
    ),
    (
        "membership",
        "membership changes under load: a new node is added as a learner and promoted, then a voter it replaced is removed and stopped, in turn",
    ),
];

/// What one fault does to its victim.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// kill -9, then start again after a while.
    Kill,
    /// SIGSTOP, then SIGCONT after a while.
    Pause,
    /// SIGTERM (ordered shutdown), then start again.
    Restart,
    /// Add a node (learner, then voter), or remove one and stop it.
    Membership,
}

/// Keys the workload touches (a bounded set, so reads see other clients' writes).
const KEYS: usize = 8;
/// Concurrent workload clients.
const WORKERS: usize = 6;
/// Deadline of one workload operation, retries included; past it a write is unknown.
const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// Most operations recorded in one run (about 20 minutes of this workload on the standard
/// machine, a few hundred MiB of history). A full recorder ends the workload; faults after
/// that then count as unrecovered, so longer soaks need a larger bound.
const OPS_MAX: usize = 2_000_000;

/// Parameters of one run.
#[derive(Debug, Clone)]
pub struct DrillSpec {
    /// Scenario name (see [`SCENARIOS`]).
    pub scenario: String,
    /// How long the workload runs.
    pub duration: Duration,
    /// Seeds the fault schedule and the workload's choices.
    pub seed: u64,
}

fn ns_since(t0: Instant) -> u64 {
    u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Runs one drill in `dir` (a fresh folder for the playground) and returns its report.
/// The recorded history (with the final reads) is written to `history_out` for post-mortems.
pub async fn run(spec: &DrillSpec, dir: &Path, history_out: &Path) -> anyhow::Result<Report> {
    if !SCENARIOS.iter().any(|(n, _)| *n == spec.scenario) {
        bail!("unknown scenario {:?}; `ark-chaos list` names them", spec.scenario);
    }
    let (_pg, mut children) = playground::up(dir, &Layout::default()).await?;
    let result = drive(spec, dir, history_out).await;
    let _ = playground::down(dir, Duration::from_secs(5));
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    result
}

/// One membership step: with three voters, start a node and add it (learner, caught up,
/// then voter); with more, remove the newest added voter that does not lead and stop it.
/// The original three stay, so the clients' endpoint list stays valid.
async fn change_membership(
    client: &ArkClient,
    dir: &Path,
    st: &ark_proto::v1::StatusResponse,
    leader: u64,
) -> anyhow::Result<()> {
    let voters: Vec<u64> = st.nodes.iter().filter(|n| n.role == "voter").map(|n| n.id).collect();
    if voters.len() <= 3 {
        let (node, child) = playground::add_node(dir, "site-d", 20_000)?;
        drop(child);
        let spec = ark_proto::v1::NodeSpec {
            id: node.id,
            site: node.site.clone(),
            peer_addr: node.peer_addr.clone(),
            client_addr: node.client_addr.clone(),
        };
        client.add_learner(spec, true).await.context("adding a learner")?;
        client.promote(node.id).await.context("promoting the learner")?;
    } else if let Some(victim) = voters.iter().copied().filter(|id| *id > 3 && *id != leader).max() {
        client.remove(victim).await.context("removing a voter")?;
        let pg = Playground::load(dir)?;
        if let Some(n) = pg.node(victim) {
            playground::signal_node(n, nix::sys::signal::Signal::SIGTERM)?;
        }
    }
    Ok(())
}

async fn drive(spec: &DrillSpec, dir: &Path, history_out: &Path) -> anyhow::Result<Report> {
    let client = ArkClient::new(&Playground::client_config(dir)?)?.with_op_timeout(OP_TIMEOUT);
    let recorder = Recorder::new(OPS_MAX);
    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let next_process = Arc::new(AtomicU64::new(1));
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (client, recorder, stop, next_process) =
            (client.clone(), recorder.clone(), stop.clone(), next_process.clone());
        let mut rng = StdRng::seed_from_u64(spec.seed.wrapping_mul(1000).wrapping_add(w as u64));
        workers.push(tokio::spawn(async move {
            let mut process = next_process.fetch_add(1, Ordering::Relaxed);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("chaos/{}", rng.gen_range(0..KEYS));
                if rng.gen_bool(0.5) {
                    n += 1;
                    let value = format!("p{process}-{n}");
                    // A refused op is never sent, so the history stays complete.
                    let Ok(h) = recorder.invoke(
                        process,
                        key.clone(),
                        OpKind::Write {
                            value: Value::from(value.as_str()),
                        },
                        ns_since(t0),
                    ) else {
                        break;
                    };
                    match client.put(&key, value.as_bytes()).await {
                        Ok(_) => h.ok(ns_since(t0)),
                        Err(ClientError::InvalidArgument(_) | ClientError::NotFound(_) | ClientError::Config(_)) => {
                            h.fail(ns_since(t0))
                        }
                        Err(_) => {
                            // May or may not have been applied: this client is retired and a
                            // new one (new process id) takes its place; nothing is retried.
                            h.unknown(ns_since(t0));
                            process = next_process.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                } else {
                    let Ok(h) = recorder.invoke(process, key.clone(), OpKind::Read, ns_since(t0)) else {
                        break;
                    };
                    match client.get(&key, false).await {
                        Ok(v) => h.read_ok(v.map(|v| Value::from(v.value)), ns_since(t0)),
                        Err(_) => h.fail(ns_since(t0)),
                    }
                }
            }
        }));
    }

    // Fault schedule (seeded): pick a victim, inject, heal, wait 3-5 s, repeat.
    let (fault, heal_after) = match spec.scenario.as_str() {
        "pause" => (Fault::Pause, Duration::from_secs(3)),
        "rolling-restart" => (Fault::Restart, Duration::from_millis(500)),
        "membership" => (Fault::Membership, Duration::ZERO),
        _ => (Fault::Kill, Duration::from_millis(1500)),
    };
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let mut kills = Vec::new();
    let mut last_heal = None;
    let mut rolled = 0usize;
    tokio::time::sleep(Duration::from_secs(2)).await;
    while t0.elapsed() + heal_after + Duration::from_secs(2) < spec.duration {
        let st = client.status().await.context("status before a fault")?;
        let Some(leader) = st.leader_id.filter(|l| *l == st.node_id) else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if let Fault::Membership = fault {
            kills.push(ns_since(t0));
            change_membership(&client, dir, &st, leader).await?;
            last_heal = Some(ns_since(t0));
            tokio::time::sleep(Duration::from_millis(rng.gen_range(3000..5000))).await;
            continue;
        }
        let pg = Playground::load(dir)?;
        let victim = match spec.scenario.as_str() {
            "random-kill" => pg.nodes[rng.gen_range(0..pg.nodes.len())].id,
            "rolling-restart" => {
                // Followers first, the leader last, then round again.
                let mut order: Vec<u64> = pg.nodes.iter().map(|n| n.id).filter(|id| *id != leader).collect();
                order.push(leader);
                let v = order[rolled % order.len()];
                rolled += 1;
                v
            }
            _ => leader,
        };
        let node = pg.node(victim).cloned().context("victim not in playground.json")?;
        kills.push(ns_since(t0));
        use nix::sys::signal::Signal;
        match fault {
            Fault::Kill => {
                playground::signal_node(&node, Signal::SIGKILL)?;
            }
            Fault::Pause => {
                playground::signal_node(&node, Signal::SIGSTOP)?;
            }
            Fault::Membership => unreachable!("handled above"),
            Fault::Restart => {
                playground::signal_node(&node, Signal::SIGTERM)?;
                let deadline = Instant::now() + Duration::from_secs(10);
                while playground::process_alive(node.pid) && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if playground::process_alive(node.pid) {
                    bail!("node {victim} did not stop within 10 s of SIGTERM");
                }
            }
        }
        tokio::time::sleep(heal_after).await;
        match fault {
            Fault::Pause => {
                playground::signal_node(&node, Signal::SIGCONT)?;
            }
            Fault::Membership => unreachable!("handled above"),
            Fault::Kill | Fault::Restart => {
                let deadline = Instant::now() + Duration::from_secs(10);
                while playground::process_alive(node.pid) && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let (_, child) = playground::start_node(dir, victim)?;
                drop(child);
            }
        }
        last_heal = Some(ns_since(t0));
        tokio::time::sleep(Duration::from_millis(rng.gen_range(3000..5000))).await;
    }
    let remaining = spec.duration.saturating_sub(t0.elapsed());
    tokio::time::sleep(remaining).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.context("workload task")?;
    }

    // Final reads, once every client is done: the cluster must have every acknowledged write.
    let mut finals: BTreeMap<String, Option<Value>> = BTreeMap::new();
    let reader = client.with_op_timeout(Duration::from_secs(30));
    for k in 0..KEYS {
        let key = format!("chaos/{k}");
        let v = reader
            .get(&key, false)
            .await
            .with_context(|| format!("final read of {key}"))?;
        finals.insert(key, v.map(|v| Value::from(v.value)));
    }
    let history: History = recorder.snapshot();
    let lost = checks::lost_acked_writes(&history, &finals);
    let mut with_finals = history.clone();
    with_finals.push_final_reads(&finals, next_process.fetch_add(1, Ordering::Relaxed), ns_since(t0));
    std::fs::write(history_out, serde_json::to_vec(&with_finals)?)
        .with_context(|| format!("writing {}", history_out.display()))?;
    let lin = linearizability::check(&with_finals, &SearchBudget::default()).context("history is malformed")?;
    let fault_start = kills.first().copied().unwrap_or(u64::MAX);
    let availability = checks::availability(
        &history,
        FaultWindow {
            start_ns: fault_start,
            end_ns: last_heal,
        },
    );
    // The worst recovery over all faults.
    let rto_ns = kills
        .iter()
        .map(|k| checks::rto_ns(&history, *k))
        .try_fold(0u64, |acc, r| r.map(|r| acc.max(r)));
    let objects = checks::object_integrity(&[]);
    let mut report = Report::new(
        RunInfo {
            scenario: spec.scenario.clone(),
            seed: spec.seed,
            mode: Mode::Loopback,
        },
        CheckResults {
            history: &history,
            linearizability: &lin,
            lost: &lost,
            objects: &objects,
            availability: &availability,
            rto_ns: if kills.is_empty() { None } else { rto_ns },
        },
    );
    // Per fault: recovery measured up to the next fault only, so one slow recovery is not
    // hidden by a later fault's quick one.
    report.rto_ms_each = kills
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let next = kills.get(i + 1).copied().unwrap_or(u64::MAX);
            checks::rto_ns(&history, *k)
                .filter(|r| k.saturating_add(*r) < next)
                .map(|r| r as f64 / 1e6)
        })
        .collect();
    report.notes.push(format!(
        "loopback mode: network namespaces are not built yet; {} faults ({:?}) at {:?} ms",
        kills.len(),
        fault,
        kills.iter().map(|k| k / 1_000_000).collect::<Vec<_>>()
    ));
    Ok(report)
}
