//! The end-of-run checkers besides linearizability: acknowledged writes lost (RPO), object
//! integrity, availability around the fault, and RTO.
//!
//! Owns: the rules deciding what counts as lost, corrupt, available and recovered. Must not touch:
//! I/O or clocks; callers hand in the [`History`], the final reads and the object read-backs.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::history::{History, OpId, OpKind, Outcome, Value};

/// Why an acknowledged write or delete counts as lost.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LostReason {
    /// The key has no final read, so the write cannot be shown to survive.
    NoFinalRead,
    /// The final value is not the effect of any write or delete that did not fail (a value never
    /// written, a failed write's value, or "absent" on a key nobody deleted).
    FinalValueFromNowhere,
    /// The final value comes from ops that all completed before this one was invoked, so this one
    /// must have come after them and should have been what the final read saw.
    FinalValueOlder {
        /// The op whose effect the final read saw (for a final "absent", the latest-completing
        /// delete).
        final_writer: OpId,
    },
}

/// An acknowledged write or delete whose effect did not survive to the end of the run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostWrite {
    /// The acknowledged op.
    pub op: OpId,
    /// Its key.
    pub key: String,
    /// What the final read of the key returned; `None` when there was no final read.
    pub final_value: Option<Option<Value>>,
    /// Why it counts as lost.
    pub reason: LostReason,
}

/// Result of [`lost_acked_writes`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostWrites {
    /// Acknowledged writes and deletes checked.
    pub acked_checked: usize,
    /// The ones lost, in op order.
    pub lost: Vec<LostWrite>,
}

impl LostWrites {
    /// RPO in writes: acknowledged writes and deletes missing at the end of the run.
    pub fn rpo_writes(&self) -> usize {
        self.lost.len()
    }
}

/// Finds acknowledged writes and deletes whose effect is not visible in the final state.
///
/// `final_reads` maps each key to what a read returned after the workload stopped and the fault
/// healed (`None`: absent); those reads must start after every op of `history` completed or was
/// abandoned.
///
/// The rule, for an acknowledged op `A` on key `k` whose final read returned `f`. Write values are
/// unique, so `f` names the op that produced it: the write of `f`, or some delete when `f` is
/// absent. The final read comes after everything, so the last op to take effect on `k` must be
/// such a producer `P`. `A` survives (is either visible or legitimately overwritten) iff `A` itself
/// produces `f`, or some producer `P` (not failed; unknown ones may act at any time) could take
/// effect after `A`: `P` completes at or after `A`'s invocation (equal instants count as
/// concurrent, never as ordered). Otherwise every producer completed before `A` began, `A`
/// followed them in real time, and `f` is an older state: `A` is lost.
///
/// Sound: everything reported is a real loss (the history plus the final reads cannot be
/// linearized with `A` applied). Not complete: it ignores what intermediate reads proved about
/// order (e.g. concurrent writes `a`, `b`, a read of `a` after both, final value `b`). The complete
/// check is the linearizability checker run on the history with the final reads appended
/// ([`History::push_final_reads`]); this one gives the RPO count and names the lost writes.
pub fn lost_acked_writes(history: &History, final_reads: &BTreeMap<String, Option<Value>>) -> LostWrites {
    // Per key: the writer of each value (if it did not fail) and the latest completion of a delete
    // that did not fail (`None` inside: unknown, completes at infinity).
    #[derive(Default)]
    struct Producers<'a> {
        writer: HashMap<&'a Value, OpId>,
        latest_delete: Option<(OpId, Option<u64>)>,
    }
    let end_of = |id: OpId| match history.ops[id].outcome {
        Outcome::Unknown => None,
        _ => history.ops[id].complete_ns,
    };
    // Orders completions with `None` as infinity.
    let later = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(a), Some(b)) => a > b,
    };
    let mut producers: HashMap<&str, Producers<'_>> = HashMap::new();
    for (id, op) in history.ops.iter().enumerate() {
        if op.outcome == Outcome::Fail {
            continue;
        }
        let entry = producers.entry(op.key.as_str()).or_default();
        match &op.kind {
            OpKind::Read => {}
            OpKind::Write { value } => {
                entry.writer.insert(value, id);
            }
            OpKind::Delete => {
                let end = end_of(id);
                if entry.latest_delete.is_none_or(|(_, latest)| later(end, latest)) {
                    entry.latest_delete = Some((id, end));
                }
            }
        }
    }

    let mut result = LostWrites::default();
    for (id, op) in history.ops.iter().enumerate() {
        if !op.kind.is_mutation() || !op.outcome.is_ok() {
            continue;
        }
        result.acked_checked += 1;
        let lost = |final_value: Option<Option<Value>>, reason| LostWrite {
            op: id,
            key: op.key.clone(),
            final_value,
            reason,
        };
        let Some(final_value) = final_reads.get(&op.key) else {
            result.lost.push(lost(None, LostReason::NoFinalRead));
            continue;
        };
        let produces_final = match (&op.kind, final_value) {
            (OpKind::Write { value }, Some(f)) => value == f,
            (OpKind::Delete, None) => true,
            _ => false,
        };
        if produces_final {
            continue;
        }
        let key_producers = producers.get(op.key.as_str());
        let producer = match final_value {
            Some(f) => key_producers.and_then(|p| p.writer.get(f).map(|&w| (w, end_of(w)))),
            None => key_producers.and_then(|p| p.latest_delete),
        };
        let Some((producer, producer_end)) = producer else {
            result
                .lost
                .push(lost(Some(final_value.clone()), LostReason::FinalValueFromNowhere));
            continue;
        };
        let could_follow = producer_end.is_none_or(|end| end >= op.invoke_ns);
        if !could_follow {
            result.lost.push(lost(
                Some(final_value.clone()),
                LostReason::FinalValueOlder { final_writer: producer },
            ));
        }
    }
    result
}

/// One acknowledged object read back and hashed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRead {
    /// The object's key.
    pub key: String,
    /// SHA-256 (hex) of the bytes the put was acknowledged for.
    pub expected_sha256_hex: String,
    /// SHA-256 (hex) of the bytes read back; `None` when the object was not found.
    pub read_sha256_hex: Option<String>,
}

/// Result of [`object_integrity`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectIntegrity {
    /// Reads checked.
    pub checked: usize,
    /// Indices (into the input) of reads whose bytes did not hash to the expected digest.
    pub corrupt: Vec<usize>,
    /// Indices of acknowledged objects that were not found: lost writes, not corrupt reads.
    pub missing: Vec<usize>,
}

/// Compares each read-back digest with the acknowledged one (hex, case and surrounding
/// whitespace ignored).
pub fn object_integrity(reads: &[ObjectRead]) -> ObjectIntegrity {
    let normalize = |s: &str| s.trim().to_ascii_lowercase();
    let mut result = ObjectIntegrity {
        checked: reads.len(),
        ..ObjectIntegrity::default()
    };
    for (i, read) in reads.iter().enumerate() {
        match &read.read_sha256_hex {
            None => result.missing.push(i),
            Some(got) if normalize(got) != normalize(&read.expected_sha256_hex) => result.corrupt.push(i),
            Some(_) => {}
        }
    }
    result
}

/// When the fault was active: `[start_ns, end_ns)`, `end_ns` `None` when it was never healed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultWindow {
    /// Injection time, nanoseconds since the start of the run.
    pub start_ns: u64,
    /// Heal time; `None`: never healed.
    pub end_ns: Option<u64>,
}

/// Operation counts of one phase of the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseCounts {
    /// Acknowledged ops.
    pub ok: u64,
    /// All ops invoked in the phase (ok, failed, unknown).
    pub total: u64,
}

impl PhaseCounts {
    /// Fraction of ops acknowledged; `None` when no op was invoked in the phase.
    pub fn success_rate(&self) -> Option<f64> {
        // Counts stay far below 2^53, where u64 to f64 is exact.
        (self.total > 0).then(|| self.ok as f64 / self.total as f64)
    }
}

/// Success rates before, during and after the fault, by invocation time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Availability {
    /// Invoked before the fault.
    pub before: PhaseCounts,
    /// Invoked while the fault was active.
    pub during: PhaseCounts,
    /// Invoked after it healed.
    pub after: PhaseCounts,
}

/// Counts acknowledged ops among all ops, by the phase their invocation falls in. Failed and
/// unknown ops both count as unavailable. Call it before appending the final reads.
pub fn availability(history: &History, fault: FaultWindow) -> Availability {
    let mut result = Availability::default();
    for op in &history.ops {
        let phase = if op.invoke_ns < fault.start_ns {
            &mut result.before
        } else if fault.end_ns.is_none_or(|end| op.invoke_ns < end) {
            &mut result.during
        } else {
            &mut result.after
        };
        phase.total += 1;
        if op.outcome.is_ok() {
            phase.ok += 1;
        }
    }
    result
}

/// Writes and deletes that were invoked inside one of `windows` (start, end in ns since the
/// run began) and acknowledged before it ended. In a window in which no majority of the nodes
/// can make anything durable (their fsyncs fail), a write invoked in it cannot have been on a
/// majority's disks before it began, so any such acknowledgement means some node answered as
/// if data it could not sync were durable.
pub fn mutations_acked_within(history: &History, windows: &[(u64, u64)]) -> Vec<OpId> {
    history
        .ops
        .iter()
        .enumerate()
        .filter(|(_, op)| op.kind.is_mutation() && op.outcome.is_ok())
        .filter(|(_, op)| {
            windows
                .iter()
                .any(|(start, end)| op.invoke_ns >= *start && op.complete_ns.is_some_and(|c| c <= *end))
        })
        .map(|(id, _)| id)
        .collect()
}

/// RTO: nanoseconds from the fault's start to the completion of the first acknowledged write or
/// delete invoked at or after it; `None` when no write succeeded after the fault began. Writes
/// invoked before the fault do not count: they may have been committed before it hit.
pub fn rto_ns(history: &History, fault_start_ns: u64) -> Option<u64> {
    history
        .ops
        .iter()
        .filter(|op| op.kind.is_mutation() && op.outcome.is_ok() && op.invoke_ns >= fault_start_ns)
        .filter_map(|op| op.complete_ns)
        .min()
        .map(|end| end.saturating_sub(fault_start_ns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Op, ProcessId};
    use crate::linearizability::{check, SearchBudget, Verdict};

    fn op(process: ProcessId, key: &str, kind: OpKind, t0: u64, t1: Option<u64>, outcome: Outcome) -> Op {
        Op {
            process,
            key: key.into(),
            kind,
            invoke_ns: t0,
            complete_ns: t1,
            outcome,
        }
    }
    fn w(key: &str, v: &str, t0: u64, t1: u64, outcome: Outcome) -> Op {
        let t1 = (outcome != Outcome::Unknown).then_some(t1);
        op(1, key, OpKind::Write { value: v.into() }, t0, t1, outcome)
    }
    #[test]
    fn only_writes_invoked_and_acknowledged_inside_a_window_count() {
        let mut h = History::new();
        h.push(w("k", "before", 50, 150, Outcome::ok())); // invoked before the window
        h.push(w("k", "inside", 120, 180, Outcome::ok())); // the violation
        h.push(w("k", "failed", 120, 180, Outcome::Fail));
        h.push(w("k", "unknown", 120, 0, Outcome::Unknown));
        h.push(w("k", "after", 150, 250, Outcome::ok())); // acknowledged after it ended
        h.push(op(1, "k", OpKind::Read, 120, Some(130), Outcome::read(None)));
        h.push(op(1, "k", OpKind::Delete, 300, Some(310), Outcome::ok())); // second window
        assert_eq!(mutations_acked_within(&h, &[(100, 200), (300, 400)]), vec![1, 6]);
        assert!(mutations_acked_within(&h, &[]).is_empty());
    }
    fn finals(entries: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<Value>> {
        entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.map(Value::from)))
            .collect()
    }
    fn lost_ops(h: &History, f: &BTreeMap<String, Option<Value>>) -> Vec<OpId> {
        lost_acked_writes(h, f).lost.iter().map(|l| l.op).collect()
    }

    #[test]
    fn surviving_and_overwritten_writes_are_not_lost() {
        let h = History {
            ops: vec![
                w("a", "a1", 0, 10, Outcome::ok()),
                w("a", "a2", 20, 30, Outcome::ok()),
                w("b", "b1", 0, 10, Outcome::ok()),
                w("b", "b2", 5, 15, Outcome::ok()), // concurrent with b1: either may win
                w("c", "c1", 0, 10, Outcome::ok()),
                op(2, "c", OpKind::Delete, 20, Some(30), Outcome::ok()),
                w("d", "d1", 0, 10, Outcome::ok()),
                w("d", "d2", 20, 0, Outcome::Unknown), // may have landed
            ],
            dropped_ops: 0,
        };
        let f = finals(&[("a", Some("a2")), ("b", Some("b1")), ("c", None), ("d", Some("d2"))]);
        let res = lost_acked_writes(&h, &f);
        assert_eq!(res.lost, vec![], "{res:?}");
        assert_eq!(res.acked_checked, 7);
        assert_eq!(res.rpo_writes(), 0);
    }

    #[test]
    fn detects_lost_acknowledged_write() {
        // a2 was acknowledged after a1 completed, but the end state is a1: a2 is lost.
        let h = History {
            ops: vec![w("a", "a1", 0, 10, Outcome::ok()), w("a", "a2", 20, 30, Outcome::ok())],
            dropped_ops: 0,
        };
        let f = finals(&[("a", Some("a1"))]);
        let res = lost_acked_writes(&h, &f);
        assert_eq!(res.rpo_writes(), 1);
        assert_eq!(res.lost[0].op, 1);
        assert_eq!(res.lost[0].reason, LostReason::FinalValueOlder { final_writer: 0 });

        // The whole key vanished: every acknowledged write is lost.
        assert_eq!(lost_ops(&h, &finals(&[("a", None)])), vec![0, 1]);
        // The key holds a value nobody wrote.
        assert_eq!(lost_ops(&h, &finals(&[("a", Some("garbage"))])), vec![0, 1]);
        // The key was not read at the end: cannot be shown to survive.
        let res = lost_acked_writes(&h, &finals(&[]));
        assert_eq!(res.lost[0].reason, LostReason::NoFinalRead);
        assert_eq!(res.rpo_writes(), 2);

        // The linearizability check over the history plus final reads agrees.
        let mut with_final = h.clone();
        with_final.push_final_reads(&finals(&[("a", Some("a1"))]), 99, 1000);
        let verdict = check(&with_final, &SearchBudget::default()).unwrap();
        assert_eq!(verdict.verdict, Verdict::NotLinearizable);
    }

    #[test]
    fn overwrite_at_the_same_instant_may_follow() {
        // a2 completes at the nanosecond a1 is invoked: they count as concurrent, a2 may be last.
        let h = History {
            ops: vec![w("a", "a1", 30, 40, Outcome::ok()), w("a", "a2", 20, 30, Outcome::ok())],
            dropped_ops: 0,
        };
        assert_eq!(lost_ops(&h, &finals(&[("a", Some("a2"))])), Vec::<OpId>::new());
        let mut h = h;
        h.ops[1].complete_ns = Some(29);
        assert_eq!(lost_ops(&h, &finals(&[("a", Some("a2"))])), vec![0]);
    }

    #[test]
    fn failed_write_cannot_explain_final_value() {
        let h = History {
            ops: vec![w("a", "a1", 0, 10, Outcome::ok()), w("a", "a2", 20, 30, Outcome::Fail)],
            dropped_ops: 0,
        };
        let res = lost_acked_writes(&h, &finals(&[("a", Some("a2"))]));
        assert_eq!(res.lost.len(), 1);
        assert_eq!(res.lost[0].reason, LostReason::FinalValueFromNowhere);
    }

    #[test]
    fn deletes_lost_and_kept() {
        let del = |t0, t1, outcome| op(2, "a", OpKind::Delete, t0, t1, outcome);
        // Acknowledged delete, then the old value is back: the delete was lost.
        let h = History {
            ops: vec![w("a", "a1", 0, 10, Outcome::ok()), del(20, Some(30), Outcome::ok())],
            dropped_ops: 0,
        };
        assert_eq!(lost_ops(&h, &finals(&[("a", Some("a1"))])), vec![1]);
        assert_eq!(lost_ops(&h, &finals(&[("a", None)])), Vec::<OpId>::new());
        // An acknowledged write after an old delete, and the key is absent: the write was lost.
        let h = History {
            ops: vec![del(0, Some(10), Outcome::ok()), w("a", "a1", 20, 30, Outcome::ok())],
            dropped_ops: 0,
        };
        assert_eq!(lost_ops(&h, &finals(&[("a", None)])), vec![1]);
        // ...unless an unknown delete may have come after it.
        let mut h2 = h.clone();
        h2.push(op(3, "a", OpKind::Delete, 25, None, Outcome::Unknown));
        assert_eq!(lost_ops(&h2, &finals(&[("a", None)])), Vec::<OpId>::new());
        // ...but a failed one cannot.
        let mut h3 = h.clone();
        h3.push(op(3, "a", OpKind::Delete, 25, Some(40), Outcome::Fail));
        assert_eq!(lost_ops(&h3, &finals(&[("a", None)])), vec![1]);
    }

    #[test]
    fn detects_corrupt_and_missing_objects() {
        let sha_a = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let reads = vec![
            ObjectRead {
                key: "o1".into(),
                expected_sha256_hex: sha_a.into(),
                read_sha256_hex: Some(sha_a.into()),
            },
            ObjectRead {
                key: "o2".into(),
                expected_sha256_hex: sha_a.into(),
                read_sha256_hex: Some(sha_a.to_ascii_uppercase()),
            },
            ObjectRead {
                key: "o3".into(),
                expected_sha256_hex: sha_a.into(),
                read_sha256_hex: Some(sha_a.replace('9', "8")),
            },
            ObjectRead {
                key: "o4".into(),
                expected_sha256_hex: sha_a.into(),
                read_sha256_hex: None,
            },
        ];
        let res = object_integrity(&reads);
        assert_eq!(res.checked, 4);
        assert_eq!(res.corrupt, vec![2]);
        assert_eq!(res.missing, vec![3]);
        assert_eq!(
            object_integrity(&reads[..2]),
            ObjectIntegrity {
                checked: 2,
                ..Default::default()
            }
        );
    }

    /// Fault window [100, 200): 4 ops before (all ok), 4 during (1 ok, 2 fail, 1 unknown), 2 after
    /// (both ok). The first write invoked in the fault that succeeds completes at 180.
    fn synthetic() -> History {
        let read = |p, t0, t1, outcome| op(p, "k", OpKind::Read, t0, t1, outcome);
        History {
            ops: vec![
                w("k", "v1", 10, 20, Outcome::ok()),
                read(2, 20, Some(30), Outcome::read(Some("v1".into()))),
                w("k", "v2", 30, 40, Outcome::ok()),
                // invoked before the fault, acknowledged during it: not a recovery
                w("k", "v3", 90, 120, Outcome::ok()),
                read(2, 100, Some(150), Outcome::Fail),
                w("k", "v4", 130, 0, Outcome::Unknown),
                op(
                    3,
                    "k",
                    OpKind::Write { value: "v5".into() },
                    150,
                    Some(190),
                    Outcome::Fail,
                ),
                op(
                    4,
                    "k",
                    OpKind::Write { value: "v6".into() },
                    160,
                    Some(180),
                    Outcome::ok(),
                ),
                op(
                    5,
                    "k",
                    OpKind::Write { value: "v7".into() },
                    200,
                    Some(210),
                    Outcome::ok(),
                ),
                read(2, 300, Some(310), Outcome::read(Some("v7".into()))),
            ],
            dropped_ops: 0,
        }
    }

    #[test]
    fn availability_by_phase() {
        let h = synthetic();
        h.validate().unwrap();
        let a = availability(
            &h,
            FaultWindow {
                start_ns: 100,
                end_ns: Some(200),
            },
        );
        assert_eq!(a.before, PhaseCounts { ok: 4, total: 4 });
        assert_eq!(a.during, PhaseCounts { ok: 1, total: 4 });
        assert_eq!(a.after, PhaseCounts { ok: 2, total: 2 });
        assert_eq!(a.before.success_rate(), Some(1.0));
        assert_eq!(a.during.success_rate(), Some(0.25));

        let never_healed = availability(
            &h,
            FaultWindow {
                start_ns: 100,
                end_ns: None,
            },
        );
        assert_eq!(never_healed.during, PhaseCounts { ok: 3, total: 6 });
        assert_eq!(never_healed.after.success_rate(), None);
    }

    #[test]
    fn rto_is_fault_start_to_first_write_acknowledged_after_it() {
        let h = synthetic();
        assert_eq!(rto_ns(&h, 100), Some(80));
        // Fault starting after every write: no recovery observed.
        assert_eq!(rto_ns(&h, 250), None);
        // A read succeeding is not a recovery of writes.
        let reads_only = History {
            ops: h.ops[9..].to_vec(),
            dropped_ops: 0,
        };
        assert_eq!(rto_ns(&reads_only, 0), None);
    }
}
