//! Applying entries: what each KV command and client session does, to the overlay (entries
//! with KV writes only) or straight to redb (entries with object commands, whose rules are
//! `raft::objects`').
//!
//! Owns the deterministic apply rules of the KV records: revisions, delete answers, duplicate
//! answers for request ids already applied. Must not read clocks (only entry timestamps) nor
//! decide when anything is flushed (`overlay.rs`).

use openraft::{Entry, EntryPayload, StorageError, StoredMembership};
use redb::{Database, ReadTransaction, ReadableTable};

use super::sessions::{pack_ids, session_expired, SessionRecord};
use super::tables::{sm_read_err, sm_write_err, ApplyTables, StoredValueRef, KV, SESSIONS};
use crate::raft::auth;
use crate::raft::codec::{decode, encode};
use crate::raft::objects::{self};
use crate::raft::{revision, ArkNode, Command, NodeId, Op, OpResult, Response, TypeConfig};

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
        Command::Auth(cmd) => {
            match auth::apply(&mut t.auth, cmd).map_err(|e| sm_write_err(std::io::Error::other(e)))? {
                Ok(()) => OpResult {
                    revision: rev,
                    ..OpResult::default()
                },
                Err(why) => OpResult {
                    revision: rev,
                    error: Some(why),
                    ..OpResult::default()
                },
            }
        }
        Command::SetRole { node, role } => {
            crate::raft::roles::apply(&mut t.roles, *node, *role).map_err(sm_write_err)?;
            OpResult {
                revision: rev,
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
