//! The verdict of one drill: the `report.json` of issue 4, a one-screen human summary, and the
//! list of violations the CLI turns into its exit code.
//!
//! Owns: the JSON shape of [`Report`] and what counts as a failed run. Must not touch: I/O (the
//! CLI writes the file and prints the summary) or the checking itself ([`crate::checks`],
//! [`crate::linearizability`]).

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::checks::{Availability, LostWrites, ObjectIntegrity};
use crate::history::{History, OutcomeCounts};
use crate::linearizability::{BudgetExhausted, LinearizabilityResult};

/// How the faults were injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every node in its own network namespace; partitions are nftables drops.
    Netns,
    /// Processes on loopback; network faults through arkd's user-space fault layer.
    Loopback,
    /// A deployed cluster; faults through the operator's commands (`ark drill`).
    #[serde(rename = "deployed")]
    Deployed,
}

/// Success rates by phase; `null` for a phase in which no op was invoked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AvailabilityRates {
    /// Before the fault.
    pub before: Option<f64>,
    /// While it was active.
    pub during: Option<f64>,
    /// After it healed.
    pub after: Option<f64>,
}

impl From<&Availability> for AvailabilityRates {
    fn from(a: &Availability) -> Self {
        AvailabilityRates {
            before: a.before.success_rate(),
            during: a.during.success_rate(),
            after: a.after.success_rate(),
        }
    }
}

/// Counts of the object workload, for the report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectOps {
    /// Puts acknowledged (each checked against the bytes sent by the SDK).
    pub puts_ok: u64,
    /// Puts refused.
    pub puts_fail: u64,
    /// Puts whose outcome the client could not know (never counted as acknowledged).
    pub puts_unknown: u64,
    /// Gets that returned an object, whatever its bytes.
    pub reads_ok: u64,
    /// Gets that returned an error (unavailable, no good copy reachable).
    pub reads_fail: u64,
    /// Acknowledged objects read back at the end.
    pub final_checked: u64,
    /// Why each acknowledged object counted as missing: which read, through which node, and
    /// the error (at most 20), for the post-mortem.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing_why: Vec<String>,
    /// Objects that `verify` found below their policy (a copy missing or corrupt) after the
    /// drill's final scrub, when the drill damaged copies (`chunk-corruption`): a corrupt
    /// copy that scrub and reads did not replace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unrepaired: Option<u64>,
}

/// `report.json`: `{scenario, seed, mode, ops: {ok, fail, unknown}, linearizable, lost_acked,
/// corrupt_reads, rto_ms, availability: {before, during, after}, notes?}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Scenario name, e.g. `kill-leader`.
    pub scenario: String,
    /// Seed of the run's randomness, to replay it.
    pub seed: u64,
    /// Fault injection mode.
    pub mode: Mode,
    /// Operation outcomes.
    pub ops: OutcomeCounts,
    /// Every key's history was proven linearizable (false when not, or when undecided).
    pub linearizable: bool,
    /// Acknowledged writes (KV writes and deletes, object puts) missing at the end: the RPO.
    pub lost_acked: u64,
    /// Object reads whose bytes did not match the acknowledged SHA-256.
    pub corrupt_reads: u64,
    /// Fault start to the first acknowledged write invoked after it; `null`: writes never came
    /// back.
    pub rto_ms: Option<f64>,
    /// Success rates around the fault.
    pub availability: AvailabilityRates,
    /// With several faults in one run: the recovery time after each, in order (`rto_ms` is
    /// the worst of them). `null` entries: no write came back before the next fault.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rto_ms_each: Vec<Option<f64>>,
    /// The object workload's counts (puts, gets, final read-backs); `corrupt_reads` and the
    /// objects' share of `lost_acked` come from its reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub objects: Option<ObjectOps>,
    /// Writes acknowledged in a window in which no majority of the nodes could make anything
    /// durable (`fsync-eio`); must be 0. `null` in scenarios without such windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_without_durable_majority: Option<u64>,
    /// Writes sent in those windows (what makes "none acknowledged" meaningful).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writes_sent_without_durable_majority: Option<u64>,
    /// The power-loss filesystem's own counts (power-loss and fsync-eio scenarios).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<PowerFaults>,
    /// Chunk files found in the witness voter's data dir at the end (layouts with a
    /// witness); must be 0: a witness holds no data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness_chunk_files: Option<u64>,
    /// Explanations for a human: violations, undecided keys, recorder overflow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// What the power-loss filesystem did during a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PowerFaults {
    /// Power cuts, one per node per round.
    pub cuts: u64,
    /// Cuts that found nothing unsynced to drop (the fault did not really bite).
    pub cuts_without_drop: u64,
    /// Unsynced bytes (4 KiB pages) dropped by all cuts.
    pub bytes_dropped: u64,
    /// Directory entries reverted by all cuts.
    pub entries_reverted: u64,
    /// fsync/fdatasync calls answered with EIO.
    pub syncs_failed: u64,
    /// Nodes that were still running at the end of an EIO window (each round, each node).
    pub eio_nodes_kept_running: u64,
    /// Nodes that stopped by themselves during an EIO window.
    pub eio_nodes_stopped: u64,
    /// Writes the drill itself sent while no majority could sync (`fsync-eio`).
    pub eio_probes_sent: u64,
    /// Of those, acknowledged: must be 0.
    pub eio_probes_acked: u64,
}

/// Who ran: the scenario, seed and mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunInfo {
    /// Scenario name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// Mode.
    pub mode: Mode,
}

/// The checkers' results a report is made from.
#[derive(Clone, Copy, Debug)]
pub struct CheckResults<'a> {
    /// The workload's history (without the final reads, so op counts are the workload's).
    pub history: &'a History,
    /// Linearizability of the history with the final reads appended.
    pub linearizability: &'a LinearizabilityResult,
    /// Lost KV writes and deletes.
    pub lost: &'a LostWrites,
    /// Object read-backs.
    pub objects: &'a ObjectIntegrity,
    /// Availability by phase.
    pub availability: &'a Availability,
    /// RTO, from [`crate::checks::rto_ns`].
    pub rto_ns: Option<u64>,
}

/// At most this many notes, so a disastrous run still yields a readable file.
const NOTES_MAX: usize = 32;

impl Report {
    /// Builds the report from the checkers' results.
    pub fn new(run: RunInfo, results: CheckResults<'_>) -> Self {
        let lin = results.linearizability;
        let mut notes = Vec::new();
        for v in &lin.violations {
            notes.push(format!("not linearizable, key {:?}: {}", v.key, v.explanation));
        }
        for (key, exhausted) in &lin.inconclusive {
            let bound = match exhausted {
                BudgetExhausted::Steps => "step",
                BudgetExhausted::Memory => "memory",
            };
            notes.push(format!(
                "linearizability of key {key:?} undecided: search {bound} budget exhausted"
            ));
        }
        for lost in &results.lost.lost {
            let seen = match &lost.final_value {
                None => "no final read".to_owned(),
                Some(None) => "final read: absent".to_owned(),
                Some(Some(v)) => format!("final read: {v}"),
            };
            notes.push(format!(
                "lost acknowledged op #{} on key {:?} ({seen}): {:?}",
                lost.op, lost.key, lost.reason
            ));
        }
        if !results.objects.corrupt.is_empty() {
            notes.push(format!(
                "{} object reads returned bytes other than the acknowledged ones",
                results.objects.corrupt.len()
            ));
        }
        if !results.objects.missing.is_empty() {
            notes.push(format!(
                "{} acknowledged objects not found",
                results.objects.missing.len()
            ));
        }
        if results.history.overflowed() {
            notes.push(format!(
                "history recorder full: {} ops were not issued; the run is shorter than planned",
                results.history.dropped_ops
            ));
        }
        if notes.len() > NOTES_MAX {
            let more = notes.len() - (NOTES_MAX - 1);
            notes.truncate(NOTES_MAX - 1);
            notes.push(format!("... and {more} more"));
        }
        let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
        Report {
            scenario: run.scenario,
            seed: run.seed,
            mode: run.mode,
            ops: results.history.outcome_counts(),
            linearizable: lin.is_linearizable(),
            lost_acked: count(results.lost.rpo_writes()).saturating_add(count(results.objects.missing.len())),
            corrupt_reads: count(results.objects.corrupt.len()),
            // Nanoseconds of a drill stay far below 2^53, where the conversion is exact.
            rto_ms: results.rto_ns.map(|ns| ns as f64 / 1e6),
            availability: results.availability.into(),
            rto_ms_each: Vec::new(),
            acked_without_durable_majority: None,
            writes_sent_without_durable_majority: None,
            power: None,
            objects: None,
            witness_chunk_files: None,
            notes,
        }
    }

    /// What makes this run a failure; empty when it passed. An undecided linearizability check
    /// and writes that never came back after the fault are failures too.
    pub fn violations(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.linearizable {
            out.push("history not proven linearizable (see notes)".to_owned());
        }
        if self.lost_acked > 0 {
            out.push(format!("{} acknowledged writes lost", self.lost_acked));
        }
        if self.corrupt_reads > 0 {
            out.push(format!("{} corrupt object reads", self.corrupt_reads));
        }
        if let Some(n) = self.objects.as_ref().and_then(|o| o.unrepaired).filter(|n| *n > 0) {
            out.push(format!("{n} objects still below their policy after the final scrub"));
        }
        if let Some(n) = self.acked_without_durable_majority.filter(|n| *n > 0) {
            out.push(format!(
                "{n} writes acknowledged while no majority of the nodes could sync (a node carried on as if unsynced data were durable)"
            ));
        }
        if let Some(n) = self.power.as_ref().map(|p| p.eio_probes_acked).filter(|n| *n > 0) {
            out.push(format!(
                "{n} probe writes acknowledged while no majority of the nodes could sync"
            ));
        }
        if self.rto_ms.is_none() {
            out.push("no write was acknowledged after the fault began (no recovery)".to_owned());
        }
        if let Some(n) = self.witness_chunk_files.filter(|n| *n > 0) {
            out.push(format!(
                "{n} chunk files in the witness's data dir (a witness must hold no data)"
            ));
        }
        out
    }

    /// A few lines for a terminal: verdict, counts, RTO, availability, then the violations.
    pub fn summary(&self) -> String {
        let violations = self.violations();
        let verdict = if violations.is_empty() { "PASS" } else { "FAIL" };
        let mode = match self.mode {
            Mode::Netns => "netns",
            Mode::Loopback => "loopback",
            Mode::Deployed => "deployed",
        };
        let rate = |r: Option<f64>| r.map_or_else(|| "n/a".to_owned(), |r| format!("{:.1}%", r * 100.0));
        let rto = self
            .rto_ms
            .map_or_else(|| "none".to_owned(), |ms| format!("{ms:.0} ms"));
        let mut s = String::new();
        let _ = writeln!(s, "{verdict}: scenario {} (seed {}, {mode})", self.scenario, self.seed);
        let _ = writeln!(
            s,
            "ops: {} ok, {} fail, {} unknown",
            self.ops.ok, self.ops.fail, self.ops.unknown
        );
        if let Some(o) = &self.objects {
            let _ = writeln!(
                s,
                "objects: {} puts ok, {} fail, {} unknown; {} gets ok, {} fail; {} read back at the end",
                o.puts_ok, o.puts_fail, o.puts_unknown, o.reads_ok, o.reads_fail, o.final_checked
            );
        }
        let _ = writeln!(
            s,
            "linearizable: {}, lost acked: {}, corrupt reads: {}, RTO: {rto}",
            if self.linearizable { "yes" } else { "no" },
            self.lost_acked,
            self.corrupt_reads
        );
        let _ = writeln!(
            s,
            "availability: before {}, during {}, after {}",
            rate(self.availability.before),
            rate(self.availability.during),
            rate(self.availability.after)
        );
        for v in violations {
            let _ = writeln!(s, "violation: {v}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::{LostReason, LostWrite, PhaseCounts};
    use crate::linearizability::{Verdict, Violation};

    fn passing_parts() -> (
        History,
        LinearizabilityResult,
        LostWrites,
        ObjectIntegrity,
        Availability,
    ) {
        let lin = LinearizabilityResult {
            verdict: Verdict::Linearizable,
            keys_checked: 3,
            violations: vec![],
            inconclusive: vec![],
            steps: 10,
        };
        let availability = Availability {
            before: PhaseCounts { ok: 10, total: 10 },
            during: PhaseCounts { ok: 1, total: 4 },
            after: PhaseCounts { ok: 0, total: 0 },
        };
        (
            History::new(),
            lin,
            LostWrites::default(),
            ObjectIntegrity::default(),
            availability,
        )
    }

    fn run() -> RunInfo {
        RunInfo {
            scenario: "kill-leader".into(),
            seed: 42,
            mode: Mode::Netns,
        }
    }

    /// The report of a run whose every check passed, with this RTO.
    fn passing_report(rto_ns: u64) -> Report {
        let (history, lin, lost, objects, availability) = passing_parts();
        let results = CheckResults {
            history: &history,
            linearizability: &lin,
            lost: &lost,
            objects: &objects,
            availability: &availability,
            rto_ns: Some(rto_ns),
        };
        Report::new(run(), results)
    }

    #[test]
    fn json_shape_matches_the_issue() {
        let report = passing_report(1_500_000_000);
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        let expected = serde_json::json!({
            "scenario": "kill-leader",
            "seed": 42,
            "mode": "netns",
            "ops": {"ok": 0, "fail": 0, "unknown": 0},
            "linearizable": true,
            "lost_acked": 0,
            "corrupt_reads": 0,
            "rto_ms": 1500.0,
            "availability": {"before": 1.0, "during": 0.25, "after": null}
        });
        assert_eq!(json, expected);
        assert_eq!(report.violations(), Vec::<String>::new());
        assert!(
            report
                .summary()
                .starts_with("PASS: scenario kill-leader (seed 42, netns)"),
            "{}",
            report.summary()
        );
        let back: Report = serde_json::from_value(json).unwrap();
        assert_eq!(back, report);
    }

    #[test]
    fn failures_become_violations_and_notes() {
        let (history, mut lin, mut lost, mut objects, availability) = passing_parts();
        lin.verdict = Verdict::NotLinearizable;
        lin.violations.push(Violation {
            key: "k".into(),
            ops: vec![1],
            explanation: "stale read".into(),
        });
        lost.acked_checked = 5;
        lost.lost.push(LostWrite {
            op: 3,
            key: "k".into(),
            final_value: Some(None),
            reason: LostReason::FinalValueFromNowhere,
        });
        objects.checked = 4;
        objects.corrupt = vec![0, 2];
        objects.missing = vec![1];
        let results = CheckResults {
            history: &history,
            linearizability: &lin,
            lost: &lost,
            objects: &objects,
            availability: &availability,
            rto_ns: None,
        };
        let report = Report::new(
            RunInfo {
                mode: Mode::Loopback,
                ..run()
            },
            results,
        );
        assert!(!report.linearizable);
        assert_eq!(report.lost_acked, 2);
        assert_eq!(report.corrupt_reads, 2);
        assert_eq!(report.violations().len(), 4, "{:?}", report.violations());
        assert!(
            report.notes.iter().any(|n| n.contains("stale read")),
            "{:?}",
            report.notes
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["mode"], "loopback");
        assert_eq!(json["rto_ms"], serde_json::Value::Null);
        assert!(json["notes"].as_array().unwrap().len() >= 3);
        assert!(report.summary().starts_with("FAIL"));
    }

    #[test]
    fn unrepaired_copies_are_a_violation() {
        let mut report = passing_report(1_000_000);
        report.objects = Some(ObjectOps {
            unrepaired: Some(0),
            ..ObjectOps::default()
        });
        assert!(report.violations().is_empty(), "{:?}", report.violations());
        report.objects = Some(ObjectOps {
            unrepaired: Some(2),
            ..ObjectOps::default()
        });
        assert_eq!(
            report.violations(),
            vec!["2 objects still below their policy after the final scrub".to_owned()]
        );
        assert!(report.summary().starts_with("FAIL"));
    }

    #[test]
    fn inconclusive_is_not_a_pass() {
        let (history, mut lin, lost, objects, availability) = passing_parts();
        lin.verdict = Verdict::Inconclusive;
        lin.inconclusive.push(("k".into(), BudgetExhausted::Steps));
        let results = CheckResults {
            history: &history,
            linearizability: &lin,
            lost: &lost,
            objects: &objects,
            availability: &availability,
            rto_ns: Some(1),
        };
        let report = Report::new(run(), results);
        assert_eq!(report.violations().len(), 1);
        assert!(report.notes[0].contains("undecided"));
    }
}
