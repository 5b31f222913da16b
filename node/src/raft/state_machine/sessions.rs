//! Client sessions: the exactly-once records of applied request ids, their expiry and the
//! sweep that reclaims their space.
//!
//! Owns the session tables' layout (records by request id, request ids bucketed by entry
//! time) and the expiry rule, which depends only on entry timestamps so that every replica
//! answers a retry alike. Must not touch the KV records or the overlay.

use openraft::StorageError;
use redb::{Database, ReadableTable};
use serde::{Deserialize, Serialize};

use super::tables::{sm_read_err, sm_write_err, ApplyTables, SESSIONS_BY_TIME};
use crate::raft::codec::decode;
use crate::raft::{NodeId, OpResult};

/// How long a request id is remembered after it was applied. A client retrying the same
/// write later than this may apply it twice; the SDK gives up long before.
pub const SESSION_RETENTION_MS: u64 = 5 * 60 * 1000;
/// Expired sessions are swept once every this many applied requests.
pub(super) const SESSION_SWEEP_EVERY: u64 = 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct SessionRecord {
    pub(super) applied_at_ms: u64,
    pub(super) response: OpResult,
}

/// The stamp of the newest entry whose request ids are recorded (0 if none).
pub(super) fn newest_session_stamp(db: &Database) -> Result<u64, String> {
    let tx = db.begin_read().map_err(|e| e.to_string())?;
    let t = tx.open_table(SESSIONS_BY_TIME).map_err(|e| e.to_string())?;
    let last = t.last().map_err(|e| e.to_string())?;
    Ok(last.map_or(0, |(k, _)| k.value().0))
}

pub(super) fn session_expired(rec: &SessionRecord, now_ms: u64) -> bool {
    rec.applied_at_ms.saturating_add(SESSION_RETENTION_MS) < now_ms
}

/// Request ids packed into one bucket value: each as a u16 length and its bytes.
pub(super) fn pack_ids<'a>(ids: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for id in ids {
        let len = id.len().min(u16::MAX as usize);
        out.extend_from_slice(&(len as u16).to_le_bytes());
        out.extend_from_slice(&id[..len]);
    }
    out
}

pub(super) fn unpack_ids(mut b: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while b.len() >= 2 {
        let len = u16::from_le_bytes([b[0], b[1]]) as usize;
        if b.len() < 2 + len {
            break;
        }
        out.push(&b[2..2 + len]);
        b = &b[2 + len..];
    }
    out
}

/// Forgets request ids applied more than [`SESSION_RETENTION_MS`] before `now_ms` (an
/// entry's own timestamp). This only reclaims space: [`apply_op`] already ignores expired
/// records, so when each replica sweeps does not change any answer.
pub(super) fn sweep_sessions(t: &mut ApplyTables<'_>, now_ms: u64) -> Result<(), StorageError<NodeId>> {
    let (sessions, by_time) = (&mut t.sessions, &mut t.by_time);
    let cutoff = now_ms.saturating_sub(SESSION_RETENTION_MS);
    let mut buckets = Vec::new();
    for item in by_time
        .range::<(u64, u64)>(..(cutoff, 0))
        .map_err(sm_read_err)?
        .take(10_000)
    {
        let (k, v) = item.map_err(sm_read_err)?;
        buckets.push((k.value(), v.value().to_vec()));
    }
    for (key, ids) in &buckets {
        for id in unpack_ids(ids) {
            // A retried id re-applied later has a newer record: keep that one.
            let expired = match sessions.get(id).map_err(sm_read_err)? {
                Some(rec) => session_expired(&decode::<SessionRecord>(rec.value()).map_err(sm_read_err)?, now_ms),
                None => false,
            };
            if expired {
                sessions.remove(id).map_err(sm_write_err)?;
            }
        }
        by_time.remove(key).map_err(sm_write_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
    use redb::{Durability, ReadableTableMetadata};

    use super::*;
    use crate::raft::state_machine::tables::{obj_tables, KV, SESSIONS};
    use crate::raft::state_machine::StateMachine;
    use crate::raft::{revision, Command, Op, TypeConfig};

    fn put_entry(index: u64, at_ms: u64, id: &[u8]) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(crate::raft::Request {
                proposed_at_ms: at_ms,
                ops: vec![Op {
                    request_id: id.to_vec(),
                    command: Command::Put {
                        key: "k".into(),
                        value: index.to_le_bytes().to_vec(),
                    },
                }],
            }),
        }
    }

    #[test]
    fn packed_ids_round_trip() {
        let ids: Vec<&[u8]> = vec![b"a", b"", b"0123456789abcdef"];
        assert_eq!(unpack_ids(&pack_ids(ids.clone().into_iter())), ids);
    }

    #[tokio::test]
    async fn retry_is_a_duplicate_until_the_id_expires_on_every_replica_alike() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::new(crate::raft::store::open_database(dir.path()).unwrap(), dir.path());
        let r1 = sm.apply(vec![put_entry(1, 1_000, b"req-1")]).await.unwrap();
        assert!(!r1[0].results[0].duplicate);
        let r2 = sm.apply(vec![put_entry(2, 2_000, b"req-1")]).await.unwrap();
        assert!(r2[0].results[0].duplicate);
        assert_eq!(r2[0].results[0].revision, r1[0].results[0].revision);
        // Past the retention the same id is a new write, whether or not a sweep ran.
        let late = 1_000 + SESSION_RETENTION_MS + 1;
        let r3 = sm.apply(vec![put_entry(3, late, b"req-1")]).await.unwrap();
        assert!(!r3[0].results[0].duplicate);
        assert_eq!(r3[0].results[0].revision, revision(3, 0));
        sm.flush_overlay().await.unwrap();
        // The sweep drops the expired bucket but keeps the re-applied record.
        let mut tx = sm.db.begin_write().unwrap();
        tx.set_durability(Durability::None);
        {
            let mut t = ApplyTables {
                kv: tx.open_table(KV).unwrap(),
                sessions: tx.open_table(SESSIONS).unwrap(),
                by_time: tx.open_table(SESSIONS_BY_TIME).unwrap(),
                obj: obj_tables(&tx).unwrap(),
                auth: tx.open_table(crate::raft::auth::AUTH).unwrap(),
                roles: tx.open_table(crate::raft::roles::ROLES).unwrap(),
            };
            sweep_sessions(&mut t, late + 10).unwrap();
            assert!(t.sessions.get(&b"req-1"[..]).unwrap().is_some());
            assert_eq!(t.by_time.len().unwrap(), 1);
        }
        tx.commit().unwrap();
    }
}
