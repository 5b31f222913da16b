//! The workload of a drill and the verdict on it, whatever injects the faults.
//!
//! Owns: the recording KV clients (a bounded key set, unique write values, a client whose
//! write timed out retired and replaced), the object clients ([`crate::objects`]), stopping
//! them, the final reads, and feeding the history to the checkers to build the report. The
//! playground drills ([`crate::drill`]) and the drills against a deployed cluster both run
//! their faults around one [`Workload`].

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ark_client::{ArkClient, ClientError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::checks::{self, FaultWindow};
use crate::history::{History, OpKind, Recorder, Value};
use crate::linearizability::{self, SearchBudget};
use crate::objects::ObjectWorkload;
use crate::report::{CheckResults, Report, RunInfo};

/// Keys the workload touches (a bounded set, so reads see other clients' writes).
pub const KEYS: usize = 8;
/// Prefix of the workload's keys.
pub const KEY_PREFIX: &str = "chaos/";
/// Deadline of one workload operation, retries included; past it a write is unknown.
pub const OP_TIMEOUT: Duration = Duration::from_secs(5);
/// Most operations recorded in one run (about 20 minutes of this workload on the standard
/// machine, a few hundred MiB of history). A full recorder ends the workload; faults after
/// that then count as unrecovered, so longer soaks need a larger bound.
const OPS_MAX: usize = 2_000_000;

/// How many clients of each kind.
#[derive(Debug, Clone, Copy)]
pub struct WorkloadShape {
    /// Concurrent KV clients.
    pub kv_workers: usize,
    /// Concurrent object clients.
    pub object_workers: usize,
    /// Seeds the clients' choices.
    pub seed: u64,
}

/// When the faults of a run happened (ns since the workload began).
#[derive(Debug, Default)]
pub struct Timeline {
    /// Start of every fault.
    pub starts: Vec<u64>,
    /// End of the last fault.
    pub last_heal: Option<u64>,
    /// One line per fault, for the report.
    pub events: Vec<String>,
    /// Windows (ns since the start) in which no majority of the nodes could make a write
    /// durable (`fsync-eio`): no write invoked in one may be acknowledged before it ends.
    pub no_durable_majority: Vec<(u64, u64)>,
    /// The power-loss filesystem's counts, in the scenarios that use it.
    pub power: Option<crate::report::PowerFaults>,
}

/// A running workload.
#[derive(Debug)]
pub struct Workload {
    client: ArkClient,
    recorder: Recorder,
    t0: Instant,
    stop: Arc<AtomicBool>,
    next_process: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    objects: ObjectWorkload,
}

/// Nanoseconds since `t0`.
pub fn ns_since(t0: Instant) -> u64 {
    u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

impl Workload {
    /// Starts the clients against `client`'s cluster. Object clients go to each of
    /// `endpoints` in turn; the object namespace must exist
    /// ([`crate::objects::create_namespace`]).
    pub fn start(client: &ArkClient, endpoints: &[String], shape: WorkloadShape) -> Self {
        let recorder = Recorder::new(OPS_MAX);
        let t0 = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let next_process = Arc::new(AtomicU64::new(1));
        let objects = ObjectWorkload::default();
        let mut tasks = objects.spawn(client, endpoints, shape.object_workers, shape.seed, stop.clone());
        for w in 0..shape.kv_workers {
            tasks.push(tokio::spawn(kv_client(
                client.clone(),
                recorder.clone(),
                t0,
                stop.clone(),
                next_process.clone(),
                shape.seed.wrapping_mul(1000).wrapping_add(w as u64),
            )));
        }
        Self {
            client: client.clone(),
            recorder,
            t0,
            stop,
            next_process,
            tasks,
            objects,
        }
    }

    /// When the workload began: fault times are measured from here.
    pub fn t0(&self) -> Instant {
        self.t0
    }

    /// Stops every client and waits for it, without judging (a drill that failed).
    pub async fn abort(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
    }

    /// Stops every client, reads every key and every acknowledged object back, writes the
    /// history (with the final reads) to `history_out`, and judges the run.
    pub async fn finish(self, run: RunInfo, timeline: &Timeline, history_out: &Path) -> anyhow::Result<Report> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.context("workload task")?;
        }
        // Final reads, once every client is done: the cluster must have every acknowledged write.
        let mut finals: BTreeMap<String, Option<Value>> = BTreeMap::new();
        let reader = self.client.with_op_timeout(Duration::from_secs(30));
        for k in 0..KEYS {
            let key = format!("{KEY_PREFIX}{k}");
            let v = reader
                .get(&key, &ark_client::ReadOptions::LINEARIZABLE)
                .await
                .with_context(|| format!("final read of {key}"))?;
            finals.insert(key, v.map(|v| Value::from(v.value)));
        }
        let history: History = self.recorder.snapshot();
        let lost = checks::lost_acked_writes(&history, &finals);
        let mut with_finals = history.clone();
        with_finals.push_final_reads(
            &finals,
            self.next_process.fetch_add(1, Ordering::Relaxed),
            ns_since(self.t0),
        );
        std::fs::write(history_out, serde_json::to_vec(&with_finals)?)
            .with_context(|| format!("writing {}", history_out.display()))?;
        let lin = linearizability::check(&with_finals, &SearchBudget::default()).context("history is malformed")?;
        let kills = &timeline.starts;
        let availability = checks::availability(
            &history,
            FaultWindow {
                start_ns: kills.first().copied().unwrap_or(u64::MAX),
                end_ns: timeline.last_heal,
            },
        );
        // The worst recovery over all faults.
        let rto_ns = kills
            .iter()
            .map(|k| checks::rto_ns(&history, *k))
            .try_fold(0u64, |acc, r| r.map(|r| acc.max(r)));
        // Every acknowledged object, read back and hashed, with the workload's own reads.
        let (object_reads, object_ops) = self.objects.read_back(&self.client).await;
        let objects = checks::object_integrity(&object_reads);
        let mut report = Report::new(
            run,
            CheckResults {
                history: &history,
                linearizability: &lin,
                lost: &lost,
                objects: &objects,
                availability: &availability,
                rto_ns: if kills.is_empty() { None } else { rto_ns },
            },
        );
        report.objects = Some(object_ops);
        report.power = timeline.power.clone();
        if !timeline.no_durable_majority.is_empty() {
            let windows = &timeline.no_durable_majority;
            let acked = checks::mutations_acked_within(&history, windows);
            // Without writes sent meanwhile, "none acknowledged" would prove nothing.
            let tried = history
                .ops
                .iter()
                .filter(|op| {
                    op.kind.is_mutation() && windows.iter().any(|(s, e)| op.invoke_ns >= *s && op.invoke_ns <= *e)
                })
                .count();
            report.writes_sent_without_durable_majority = Some(tried as u64);
            if let Some(first) = acked.first() {
                let op = &history.ops[*first];
                report.notes.push(format!(
                    "{} writes acknowledged while no majority could sync, the first op #{first} on key {:?} at {} ms",
                    acked.len(),
                    op.key,
                    op.complete_ns.unwrap_or(0) / 1_000_000
                ));
            }
            report.acked_without_durable_majority = Some(acked.len() as u64);
        }
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
        Ok(report)
    }
}

/// One KV client: reads and writes of random keys, each recorded; after a write whose
/// outcome it cannot know, it retires and a new client (new process id) takes its place.
async fn kv_client(
    client: ArkClient,
    recorder: Recorder,
    t0: Instant,
    stop: Arc<AtomicBool>,
    next_process: Arc<AtomicU64>,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut process = next_process.fetch_add(1, Ordering::Relaxed);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("{KEY_PREFIX}{}", rng.gen_range(0..KEYS));
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
                    // May or may not have been applied: this client is retired and a new one
                    // (new process id) takes its place; nothing is retried.
                    h.unknown(ns_since(t0));
                    process = next_process.fetch_add(1, Ordering::Relaxed);
                }
            }
        } else {
            let Ok(h) = recorder.invoke(process, key.clone(), OpKind::Read, ns_since(t0)) else {
                break;
            };
            match client.get(&key, &ark_client::ReadOptions::LINEARIZABLE).await {
                Ok(v) => h.read_ok(v.map(|v| Value::from(v.value)), ns_since(t0)),
                Err(_) => h.fail(ns_since(t0)),
            }
        }
    }
}
