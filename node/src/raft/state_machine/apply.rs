//! Applying entries: what each KV command and client session does, to the overlay (entries
//! with KV writes only) or straight to redb (entries with object commands, whose rules are
//! `raft::objects`').
//!
//! Owns the deterministic apply rules of the KV records: revisions, delete answers, duplicate
//! answers for request ids already applied. Must not read clocks (only entry timestamps) nor
//! decide when anything is flushed (`overlay.rs`).

use std::time::Instant;

use openraft::{Entry, EntryPayload, StorageError, StoredMembership};
use redb::{Database, ReadTransaction, ReadableTable};
use serde::Serialize;

use super::overlay::Overlay;
use super::sessions::{pack_ids, session_expired, SessionRecord};
use super::{sm_read_err, sm_write_err, StateMachine, StoredValue, KV, SESSIONS};
use crate::raft::objects::{self, ObjTables};
use crate::raft::store::{decode, encode};
use crate::raft::{revision, ArkNode, Command, NodeId, Op, OpResult, Response, TypeConfig};

/// The tables one apply batch writes, opened once per batch.
pub(super) struct ApplyTables<'t> {
    pub(super) kv: redb::Table<'t, &'static str, &'static [u8]>,
    pub(super) sessions: redb::Table<'t, &'static [u8], &'static [u8]>,
    pub(super) by_time: redb::Table<'t, (u64, u64), &'static [u8]>,
    pub(super) obj: ObjTables<'t>,
}

/// Encodes like [`StoredValue`] without copying the value first.
#[derive(Serialize)]
pub(super) struct StoredValueRef<'a> {
    pub(super) revision: u64,
    #[serde(with = "serde_bytes")]
    pub(super) value: &'a [u8],
}

pub(super) fn apply_op(
    t: &mut ApplyTables<'_>,
    rev: u64,
    proposed_at_ms: u64,
    op: &Op,
) -> Result<OpResult, StorageError<NodeId>> {
    if !op.request_id.is_empty() {
        if let Some(rec) = t.sessions.get(op.request_id.as_slice()).map_err(sm_write_err)? {
            let rec: SessionRecord = decode(rec.value()).map_err(sm_read_err)?;
            // Expiry is decided here, from the entry's own timestamp, not by when a replica
            // happened to sweep: every replica answers a late retry the same way.
            if !session_expired(&rec, proposed_at_ms) {
                return Ok(OpResult {
                    duplicate: true,
                    ..rec.response
                });
            }
        }
    }
    let result = match &op.command {
        Command::Put { key, value } => {
            let v = encode(&StoredValueRef { revision: rev, value }).map_err(sm_write_err)?;
            t.kv.insert(key.as_str(), v.as_slice()).map_err(sm_write_err)?;
            OpResult {
                revision: rev,
                ..OpResult::default()
            }
        }
        Command::Delete { key } => {
            let existed = t.kv.remove(key.as_str()).map_err(sm_write_err)?.is_some();
            OpResult {
                revision: rev,
                existed,
                ..OpResult::default()
            }
        }
        cmd => objects::apply(&mut t.obj, rev, proposed_at_ms, cmd)
            .map_err(|e| sm_write_err(std::io::Error::other(e)))?
            .unwrap_or_default(),
    };
    if !op.request_id.is_empty() {
        let rec = encode(&SessionRecord {
            applied_at_ms: proposed_at_ms,
            response: result.clone(),
        })
        .map_err(sm_write_err)?;
        t.sessions
            .insert(op.request_id.as_slice(), rec.as_slice())
            .map_err(sm_write_err)?;
    }
    Ok(result)
}

/// Whether an entry only writes KV records (or nothing), so that it can go to the overlay.
pub(super) fn overlay_ok(e: &Entry<TypeConfig>) -> bool {
    match &e.payload {
        EntryPayload::Normal(req) => req
            .ops
            .iter()
            .all(|o| matches!(o.command, Command::Put { .. } | Command::Delete { .. })),
        EntryPayload::Blank | EntryPayload::Membership(_) => true,
    }
}

/// The redb tables the overlay falls back to while applying, opened on first need.
pub(super) struct Stored {
    pub(super) kv: redb::ReadOnlyTable<&'static str, &'static [u8]>,
    pub(super) sessions: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
}

pub(super) fn stored<'a>(db: &Database, s: &'a mut Option<Stored>) -> Result<&'a Stored, StorageError<NodeId>> {
    if s.is_none() {
        let tx: ReadTransaction = db.begin_read().map_err(sm_read_err)?;
        *s = Some(Stored {
            kv: tx.open_table(KV).map_err(sm_read_err)?,
            sessions: tx.open_table(SESSIONS).map_err(sm_read_err)?,
        });
    }
    s.as_ref()
        .ok_or_else(|| sm_read_err(std::io::Error::other("state machine tables not open")))
}

/// Applies one entry straight to the redb tables (entries the overlay does not take).
pub(super) fn apply_direct(
    t: &mut ApplyTables<'_>,
    e: &Entry<TypeConfig>,
    membership: &mut Option<StoredMembership<NodeId, ArkNode>>,
) -> Result<Response, StorageError<NodeId>> {
    Ok(match &e.payload {
        EntryPayload::Blank => Response::default(),
        EntryPayload::Normal(req) => {
            let mut results = Vec::with_capacity(req.ops.len());
            for (i, op) in req.ops.iter().enumerate() {
                results.push(apply_op(t, revision(e.log_id.index, i), req.proposed_at_ms, op)?);
            }
            let fresh = req
                .ops
                .iter()
                .zip(&results)
                .filter(|(o, r)| !r.duplicate && !o.request_id.is_empty());
            let ids = pack_ids(fresh.map(|(o, _)| o.request_id.as_slice()));
            if !ids.is_empty() {
                t.by_time
                    .insert((req.proposed_at_ms, e.log_id.index), ids.as_slice())
                    .map_err(sm_write_err)?;
            }
            Response { results }
        }
        EntryPayload::Membership(m) => {
            *membership = Some(StoredMembership::new(Some(e.log_id), m.clone()));
            Response::default()
        }
    })
}

impl StateMachine {
    /// Applies a KV-only entry to the overlay, with the same answers [`apply_op`] gives.
    pub(super) fn apply_to_overlay(
        &mut self,
        overlay: &mut Overlay,
        st: &mut Option<Stored>,
        e: Entry<TypeConfig>,
    ) -> Result<Response, StorageError<NodeId>> {
        let log_id = e.log_id;
        let ov = &mut overlay.active;
        let frozen = &overlay.frozen;
        let older_kv = |k: &str| frozen.as_ref().and_then(|f| f.kv.get(k)).cloned();
        let older_session = |id: &[u8]| frozen.as_ref().and_then(|f| f.sessions.get(id)).cloned();
        let resp = match e.payload {
            EntryPayload::Blank => Response::default(),
            EntryPayload::Membership(m) => {
                ov.membership = Some(StoredMembership::new(Some(log_id), m));
                Response::default()
            }
            EntryPayload::Normal(req) => {
                let at = req.proposed_at_ms;
                let n = req.ops.len();
                let mut results = Vec::with_capacity(n);
                let mut fresh: Vec<Vec<u8>> = Vec::new();
                for (i, op) in req.ops.into_iter().enumerate() {
                    let rev = revision(log_id.index, i);
                    if !op.request_id.is_empty() {
                        let rec = match ov
                            .sessions
                            .get(&op.request_id)
                            .cloned()
                            .or_else(|| older_session(&op.request_id))
                        {
                            Some(r) => Some(r),
                            None => match stored(&self.db, st)?
                                .sessions
                                .get(op.request_id.as_slice())
                                .map_err(sm_read_err)?
                            {
                                Some(v) => Some(decode::<SessionRecord>(v.value()).map_err(sm_read_err)?),
                                None => None,
                            },
                        };
                        if let Some(rec) = rec.filter(|r| !session_expired(r, at)) {
                            results.push(OpResult {
                                duplicate: true,
                                ..rec.response
                            });
                            continue;
                        }
                    }
                    let result = match op.command {
                        Command::Put { key, value } => {
                            ov.bytes += key.len() + value.len();
                            ov.kv.insert(key, Some(StoredValue { revision: rev, value }));
                            OpResult {
                                revision: rev,
                                ..OpResult::default()
                            }
                        }
                        Command::Delete { key } => {
                            let existed = match ov.kv.get(&key).cloned().or_else(|| older_kv(&key)) {
                                Some(v) => v.is_some(),
                                None => stored(&self.db, st)?
                                    .kv
                                    .get(key.as_str())
                                    .map_err(sm_read_err)?
                                    .is_some(),
                            };
                            ov.bytes += key.len();
                            ov.kv.insert(key, None);
                            OpResult {
                                revision: rev,
                                existed,
                                ..OpResult::default()
                            }
                        }
                        _ => {
                            return Err(sm_write_err(std::io::Error::other(
                                "an object command reached the KV overlay",
                            )))
                        }
                    };
                    if !op.request_id.is_empty() {
                        ov.bytes += op.request_id.len();
                        ov.sessions.insert(
                            op.request_id.clone(),
                            SessionRecord {
                                applied_at_ms: at,
                                response: result.clone(),
                            },
                        );
                        fresh.push(op.request_id);
                    }
                    results.push(result);
                }
                if !fresh.is_empty() {
                    let ids = pack_ids(fresh.iter().map(|v| v.as_slice()));
                    ov.by_time.push(((at, log_id.index), ids));
                }
                ov.ops += n;
                ov.newest_ms = ov.newest_ms.max(at);
                self.applied_since_sweep += n as u64;
                Response { results }
            }
        };
        ov.last_applied = Some(log_id);
        ov.since.get_or_insert_with(Instant::now);
        Ok(resp)
    }
}
