//! The history model of a chaos run: every client operation as an invocation and a completion
//! (ok / fail / unknown) with timestamps, and the bounded, shareable [`Recorder`] that collects
//! them while the workload runs.
//!
//! Owns: [`Value`], [`OpKind`], [`Outcome`], [`Op`], [`History`], [`Recorder`], [`OpHandle`].
//! Must not touch: clocks, sockets, files. Timestamps are handed in by the caller (nanoseconds
//! since the start of the run, monotonic), so histories can be built by hand and by a virtual
//! clock in tests; writing a history to disk is the caller's business (it is `serde`-ready).
//!
//! Object puts and gets can go into the same history under their own keys, with the SHA-256 hex
//! of the bytes as the value: the register check then covers them too.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Index of an operation in its [`History`] (its position in [`History::ops`]).
pub type OpId = usize;

/// Identifier of the client (process) that issued an operation. A client issues one operation at
/// a time; a client whose write timed out is retired and never reused.
pub type ProcessId = u64;

/// An opaque value written to or read from a key. The workload makes every written value unique.
///
/// Serialized as a JSON string when the bytes are UTF-8 (the common case: values such as
/// `"c3-w17"`), otherwise as `{"hex": "..."}`, so post-mortem files stay readable.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Value(pub Vec<u8>);

impl Value {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(s) => write!(f, "{s:?}"),
            Err(_) => write!(f, "0x{}", hex(&self.0)),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value(s.as_bytes().to_vec())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value(s.into_bytes())
    }
}

impl From<Vec<u8>> for Value {
    fn from(bytes: Vec<u8>) -> Self {
        Value(bytes)
    }
}

impl From<&[u8]> for Value {
    fn from(bytes: &[u8]) -> Self {
        Value(bytes.to_vec())
    }
}

/// Wire shape of [`Value`]: a plain string, or hex for bytes that are not UTF-8.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum ValueRepr {
    Text(String),
    Hex { hex: String },
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let repr = match std::str::from_utf8(&self.0) {
            Ok(s) => ValueRepr::Text(s.to_owned()),
            Err(_) => ValueRepr::Hex { hex: hex(&self.0) },
        };
        repr.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        match ValueRepr::deserialize(deserializer)? {
            ValueRepr::Text(s) => Ok(Value(s.into_bytes())),
            ValueRepr::Hex { hex } => unhex(&hex)
                .map(Value)
                .ok_or_else(|| serde::de::Error::custom("value: invalid hex string")),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let pairs = s.as_bytes().chunks_exact(2);
    if !pairs.remainder().is_empty() {
        return None;
    }
    let nibble = |c: u8| char::from(c).to_digit(16).and_then(|d| u8::try_from(d).ok());
    pairs
        .map(|pair| Some((nibble(pair[0])? << 4) | nibble(pair[1])?))
        .collect()
}

/// What an operation asked the store to do on its key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum OpKind {
    /// Read the key's current value.
    Read,
    /// Set the key to `value` (unique across the whole run).
    Write {
        /// The value written.
        value: Value,
    },
    /// Remove the key.
    Delete,
}

impl OpKind {
    /// True for writes and deletes, the operations that change state.
    pub fn is_mutation(&self) -> bool {
        !matches!(self, OpKind::Read)
    }
}

/// How an operation ended, as far as the client could tell.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Outcome {
    /// Acknowledged. For a read, `read` is the value returned (`None`: the key was not found);
    /// for writes and deletes it is `None` and ignored.
    Ok {
        /// The value a read returned.
        read: Option<Value>,
    },
    /// Definitely not applied (the store said so before doing anything).
    Fail,
    /// May or may not have been applied, now or later (timeout, connection lost, or the op never
    /// completed before the history was taken). For linearizability its completion is infinity.
    Unknown,
}

impl Outcome {
    /// Outcome of a successful write or delete.
    pub fn ok() -> Self {
        Outcome::Ok { read: None }
    }

    /// Outcome of a successful read that returned `value` (`None`: not found).
    pub fn read(value: Option<Value>) -> Self {
        Outcome::Ok { read: value }
    }

    /// True when the operation was acknowledged.
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok { .. })
    }
}

/// One recorded operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Client that issued it.
    pub process: ProcessId,
    /// Key it addressed.
    pub key: String,
    /// What it asked for.
    pub kind: OpKind,
    /// When the client sent it, in nanoseconds since the start of the run.
    pub invoke_ns: u64,
    /// When the client learned the outcome, in nanoseconds since the start of the run; `None`
    /// when it never did (the outcome is then [`Outcome::Unknown`]).
    pub complete_ns: Option<u64>,
    /// How it ended.
    pub outcome: Outcome,
}

/// Why a [`History`] is not well formed; a harness bug, not a store bug.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// The operation completed before it was invoked.
    #[error("op {op}: completes at {complete_ns} ns, before its invocation at {invoke_ns} ns")]
    CompletesBeforeInvoke {
        /// The offending op.
        op: OpId,
        /// Its invocation time.
        invoke_ns: u64,
        /// Its completion time.
        complete_ns: u64,
    },
    /// An acknowledged (or failed) operation has no completion time.
    #[error("op {op}: outcome is {outcome} but it has no completion time")]
    MissingCompletion {
        /// The offending op.
        op: OpId,
        /// Its outcome, spelled out.
        outcome: &'static str,
    },
    /// An acknowledged write or delete carries a read value.
    #[error("op {op}: a write or delete cannot return a read value")]
    MutationReturnsValue {
        /// The offending op.
        op: OpId,
    },
    /// Two writes carry the same value; the checkers rely on unique values.
    #[error("ops {first} and {second}: both write {value} to key {key:?}; write values must be unique")]
    DuplicateWriteValue {
        /// The key.
        key: String,
        /// The duplicated value.
        value: Value,
        /// First writer.
        first: OpId,
        /// Second writer.
        second: OpId,
    },
    /// A client had two operations in flight at once (clients are sequential).
    #[error("ops {first} and {second} of process {process} overlap; a client issues one op at a time")]
    OverlappingOpsOfProcess {
        /// The client.
        process: ProcessId,
        /// Earlier op.
        first: OpId,
        /// Op invoked before `first` completed.
        second: OpId,
    },
}

/// A complete record of a run: the operations in invocation order, and whether the recorder
/// dropped any because it was full (a history with drops cannot prove anything).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// The operations; an [`OpId`] is an index into this vector.
    pub ops: Vec<Op>,
    /// Number of invocations refused because the recorder was full.
    pub dropped_ops: u64,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when the recorder refused operations. Sound as long as the workload did not send the
    /// refused ones (see [`Recorder`]); a write sent but not recorded could make a correct read
    /// look wrong.
    pub fn overflowed(&self) -> bool {
        self.dropped_ops > 0
    }

    /// Appends an operation and returns its id (for hand-made histories and final reads).
    pub fn push(&mut self, op: Op) -> OpId {
        self.ops.push(op);
        self.ops.len() - 1
    }

    /// Appends one acknowledged read per entry of `final_reads`, one after the other from `at_ns`
    /// (each takes 1 ns), all by client `process`, so the linearizability check also covers the end
    /// state. `at_ns` must be after every other op's completion.
    pub fn push_final_reads(&mut self, final_reads: &BTreeMap<String, Option<Value>>, process: ProcessId, at_ns: u64) {
        let mut t = at_ns;
        for (key, value) in final_reads {
            self.push(Op {
                process,
                key: key.clone(),
                kind: OpKind::Read,
                invoke_ns: t,
                complete_ns: Some(t.saturating_add(1)),
                outcome: Outcome::read(value.clone()),
            });
            t = t.saturating_add(2);
        }
    }

    /// Counts of acknowledged, failed and unknown operations.
    pub fn outcome_counts(&self) -> OutcomeCounts {
        let mut counts = OutcomeCounts::default();
        for op in &self.ops {
            match op.outcome {
                Outcome::Ok { .. } => counts.ok += 1,
                Outcome::Fail => counts.fail += 1,
                Outcome::Unknown => counts.unknown += 1,
            }
        }
        counts
    }

    /// Checks the invariants the checkers rely on: completions after invocations, acknowledged and
    /// failed ops completed, mutations return no value, write values unique per key, and each
    /// client sequential.
    pub fn validate(&self) -> Result<(), HistoryError> {
        let mut writers: BTreeMap<(&str, &Value), OpId> = BTreeMap::new();
        let mut last_of_process: BTreeMap<ProcessId, OpId> = BTreeMap::new();
        let mut order: Vec<OpId> = (0..self.ops.len()).collect();
        order.sort_by_key(|&id| (self.ops[id].invoke_ns, id));
        for &id in &order {
            let op = &self.ops[id];
            match (op.complete_ns, &op.outcome) {
                (Some(complete_ns), _) if complete_ns < op.invoke_ns => {
                    return Err(HistoryError::CompletesBeforeInvoke {
                        op: id,
                        invoke_ns: op.invoke_ns,
                        complete_ns,
                    });
                }
                (None, Outcome::Ok { .. }) => return Err(HistoryError::MissingCompletion { op: id, outcome: "ok" }),
                (None, Outcome::Fail) => {
                    return Err(HistoryError::MissingCompletion {
                        op: id,
                        outcome: "fail",
                    })
                }
                _ => {}
            }
            if op.kind.is_mutation() && matches!(op.outcome, Outcome::Ok { read: Some(_) }) {
                return Err(HistoryError::MutationReturnsValue { op: id });
            }
            if let OpKind::Write { value } = &op.kind {
                if let Some(&first) = writers.get(&(op.key.as_str(), value)) {
                    return Err(HistoryError::DuplicateWriteValue {
                        key: op.key.clone(),
                        value: value.clone(),
                        first,
                        second: id,
                    });
                }
                writers.insert((op.key.as_str(), value), id);
            }
            if let Some(&previous) = last_of_process.get(&op.process) {
                // An op that never completed, or a write or delete with an unknown outcome, retires
                // its client, so anything the same client invokes later is a harness bug too.
                let prev = &self.ops[previous];
                let overlaps = match prev.complete_ns {
                    None => true,
                    Some(_) if prev.kind.is_mutation() && prev.outcome == Outcome::Unknown => true,
                    Some(end) => end > op.invoke_ns,
                };
                if overlaps {
                    return Err(HistoryError::OverlappingOpsOfProcess {
                        process: op.process,
                        first: previous,
                        second: id,
                    });
                }
            }
            last_of_process.insert(op.process, id);
        }
        Ok(())
    }
}

/// Operation counts by outcome (the `ops` object of `report.json`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeCounts {
    /// Acknowledged.
    pub ok: u64,
    /// Definitely not applied.
    pub fail: u64,
    /// Unknown.
    pub unknown: u64,
}

/// The recorder is full; the workload should stop issuing operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("history recorder is full ({max_ops} ops); stop the workload, the history is marked overflowed")]
pub struct RecorderFull {
    /// The recorder's bound.
    pub max_ops: usize,
}

#[derive(Debug)]
struct RecorderInner {
    history: History,
    max_ops: usize,
}

/// Collects operations from many concurrent client tasks. Cloning is cheap (an `Arc`); the lock is
/// held only to push or update one op, never across an await.
///
/// Bounded: at most `max_ops` operations are kept; further invocations are refused with
/// [`RecorderFull`] and counted in [`History::dropped_ops`]. A refused operation must not be sent
/// to the store: the history then still holds everything the store was asked to do, and the
/// checkers stay sound; the report only notes the overflow.
#[derive(Clone, Debug)]
pub struct Recorder {
    inner: Arc<Mutex<RecorderInner>>,
}

impl Recorder {
    /// A recorder that keeps at most `max_ops` operations.
    pub fn new(max_ops: usize) -> Self {
        Recorder {
            inner: Arc::new(Mutex::new(RecorderInner {
                history: History::new(),
                max_ops,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, RecorderInner> {
        // Nothing panics while the lock is held (pushes and field stores), so a poisoned lock
        // still guards a consistent history.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records the invocation of an operation at `at_ns` and returns the handle that completes it.
    /// Until completed, the op is recorded as [`Outcome::Unknown`] with no completion time, which
    /// is also what a dropped handle leaves behind.
    pub fn invoke(
        &self,
        process: ProcessId,
        key: impl Into<String>,
        kind: OpKind,
        at_ns: u64,
    ) -> Result<OpHandle, RecorderFull> {
        let mut inner = self.lock();
        if inner.history.ops.len() >= inner.max_ops {
            inner.history.dropped_ops = inner.history.dropped_ops.saturating_add(1);
            return Err(RecorderFull { max_ops: inner.max_ops });
        }
        let id = inner.history.push(Op {
            process,
            key: key.into(),
            kind,
            invoke_ns: at_ns,
            complete_ns: None,
            outcome: Outcome::Unknown,
        });
        Ok(OpHandle {
            recorder: self.clone(),
            id,
        })
    }

    /// A copy of the history so far (pending ops appear as unknown, never completed).
    pub fn snapshot(&self) -> History {
        self.lock().history.clone()
    }

    /// Number of operations recorded so far.
    pub fn len(&self) -> usize {
        self.lock().history.ops.len()
    }

    /// True when nothing was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An invoked, not yet completed operation. Completing consumes the handle, so an operation is
/// completed at most once; dropping it leaves the operation unknown.
#[derive(Debug)]
pub struct OpHandle {
    recorder: Recorder,
    id: OpId,
}

impl OpHandle {
    /// The op's id in the history.
    pub fn id(&self) -> OpId {
        self.id
    }

    /// Records the outcome, learned at `at_ns`.
    pub fn complete(self, outcome: Outcome, at_ns: u64) {
        let mut inner = self.recorder.lock();
        if let Some(op) = inner.history.ops.get_mut(self.id) {
            op.outcome = outcome;
            op.complete_ns = Some(at_ns);
        }
    }

    /// Acknowledged write or delete.
    pub fn ok(self, at_ns: u64) {
        self.complete(Outcome::ok(), at_ns);
    }

    /// Acknowledged read returning `value` (`None`: not found).
    pub fn read_ok(self, value: Option<Value>, at_ns: u64) {
        self.complete(Outcome::read(value), at_ns);
    }

    /// Definitely not applied.
    pub fn fail(self, at_ns: u64) {
        self.complete(Outcome::Fail, at_ns);
    }

    /// Outcome unknown (e.g. timed out at `at_ns`); the client must be retired.
    pub fn unknown(self, at_ns: u64) {
        self.complete(Outcome::Unknown, at_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_records_invoke_and_completion() {
        let rec = Recorder::new(10);
        let w = rec.invoke(1, "k", OpKind::Write { value: "a".into() }, 5).unwrap();
        let r = rec.invoke(2, "k", OpKind::Read, 6).unwrap();
        let pending = rec.invoke(3, "k", OpKind::Delete, 7).unwrap();
        w.ok(9);
        r.read_ok(Some("a".into()), 10);
        drop(pending);
        let h = rec.snapshot();
        assert_eq!(h.ops.len(), 3);
        assert_eq!(h.ops[0].complete_ns, Some(9));
        assert_eq!(h.ops[1].outcome, Outcome::read(Some("a".into())));
        assert_eq!(h.ops[2].outcome, Outcome::Unknown);
        assert_eq!(h.ops[2].complete_ns, None);
        assert_eq!(
            h.outcome_counts(),
            OutcomeCounts {
                ok: 2,
                fail: 0,
                unknown: 1
            }
        );
        assert!(!h.overflowed());
        h.validate().unwrap();
    }

    #[test]
    fn recorder_is_bounded_and_flags_overflow() {
        let rec = Recorder::new(2);
        for i in 0..2 {
            rec.invoke(i, "k", OpKind::Read, i).unwrap().read_ok(None, i + 1);
        }
        let err = rec.invoke(9, "k", OpKind::Read, 3).unwrap_err();
        assert_eq!(err.max_ops, 2);
        assert!(rec.invoke(9, "k", OpKind::Read, 4).is_err());
        let h = rec.snapshot();
        assert_eq!(h.ops.len(), 2);
        assert_eq!(h.dropped_ops, 2);
        assert!(h.overflowed());
    }

    #[test]
    fn recorder_is_shared_across_threads() {
        let rec = Recorder::new(1000);
        let threads: Vec<_> = (0..4u64)
            .map(|p| {
                let rec = rec.clone();
                std::thread::spawn(move || {
                    for i in 0..50u64 {
                        let t = i * 10;
                        let value = Value::from(format!("p{p}-{i}"));
                        rec.invoke(p, "k", OpKind::Write { value }, t).unwrap().ok(t + 5);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let h = rec.snapshot();
        assert_eq!(h.ops.len(), 200);
        h.validate().unwrap();
    }

    #[test]
    fn history_round_trips_through_json() {
        let mut h = History::new();
        h.push(Op {
            process: 1,
            key: "k".into(),
            kind: OpKind::Write {
                value: Value(vec![0xff, 0x00]),
            },
            invoke_ns: 1,
            complete_ns: Some(2),
            outcome: Outcome::ok(),
        });
        h.push(Op {
            process: 2,
            key: "k".into(),
            kind: OpKind::Read,
            invoke_ns: 3,
            complete_ns: Some(4),
            outcome: Outcome::read(Some("text".into())),
        });
        let json = serde_json::to_string(&h).unwrap();
        assert!(json.contains(r#"{"hex":"ff00"}"#), "{json}");
        assert!(json.contains(r#""text""#), "{json}");
        let back: History = serde_json::from_str(&json).unwrap();
        assert_eq!(back, h);
    }

    #[test]
    fn value_rejects_invalid_hex() {
        for bad in [r#"{"hex":"abc"}"#, r#"{"hex":"zz"}"#, "12"] {
            assert!(serde_json::from_str::<Value>(bad).is_err(), "accepted {bad}");
        }
        assert_eq!(
            serde_json::from_str::<Value>(r#"{"hex":"00FF"}"#).unwrap(),
            Value(vec![0, 0xff])
        );
    }

    fn op(process: ProcessId, kind: OpKind, invoke_ns: u64, complete_ns: Option<u64>, outcome: Outcome) -> Op {
        Op {
            process,
            key: "k".into(),
            kind,
            invoke_ns,
            complete_ns,
            outcome,
        }
    }

    #[test]
    fn validate_rejects_malformed_histories() {
        let w = |v: &str| OpKind::Write { value: v.into() };
        let cases = vec![
            vec![op(1, OpKind::Read, 10, Some(5), Outcome::read(None))],
            vec![op(1, w("a"), 10, None, Outcome::ok())],
            vec![op(1, w("a"), 10, Some(11), Outcome::read(Some("a".into())))],
            vec![
                op(1, w("a"), 1, Some(2), Outcome::ok()),
                op(2, w("a"), 3, Some(4), Outcome::ok()),
            ],
            vec![
                op(1, w("a"), 1, Some(5), Outcome::ok()),
                op(1, w("b"), 3, Some(6), Outcome::ok()),
            ],
            vec![
                op(1, w("a"), 1, Some(2), Outcome::Unknown),
                op(1, w("b"), 3, Some(6), Outcome::ok()),
            ],
        ];
        for ops in cases {
            let h = History {
                ops: ops.clone(),
                dropped_ops: 0,
            };
            assert!(h.validate().is_err(), "accepted {ops:?}");
        }
    }
}
