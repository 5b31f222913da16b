//! Recovery of a damaged Raft log, in the spirit of protocol-aware recovery (Alagappan et
//! al., FAST '18).
//!
//! When `wal.rs` finds a bad record that is not a torn tail, entries this node may have
//! acknowledged are gone, and a majority that counts this node could elect a leader without
//! them. So, from before the log is cut until the lost entries are back:
//! - the damage is recorded durably in the database (`log_damage` in `raft_meta`), so a
//!   restart in between does not forget it;
//! - the node keeps its vote, but if that vote made it the leader it is stored as a plain
//!   vote for itself, so openraft does not resume leadership with the shortened log;
//! - it grants no vote or pre-vote and never campaigns (`raft::elector` stays out);
//! - it still accepts entries from a leader, and acknowledges only what it really stored.
//!
//! It is healed once an AppendEntries from a leader of term T, whose committed entry is of
//! term T, leaves this node's log matching the leader's up to that committed entry: such a
//! commit index covers every entry committed in any earlier term (a leader commits an entry
//! of its own term only with all before it), and the leader was elected without this node
//! (or before the damage), so it holds every committed entry. Then the record is cleared,
//! elections come back on, and votes are granted again.
//!
//! Owns the damage record, the vote demotion and the vote gate. Must not touch the log
//! files (`wal.rs` cuts them) or the network (the peer service asks [`Recovery`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse};
use openraft::{LogId, Vote};
use redb::Database;
use serde::{Deserialize, Serialize};

use super::db::{read_value, write_value_durably, KEY_VOTE, META};
use super::{NodeId, TypeConfig};

const KEY_DAMAGE: &str = "log_damage";

/// The durable record of a damaged log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogDamage {
    /// The first entry the log lost; the node holds nothing from here on until re-fetched.
    pub first_lost: u64,
    /// What was found, and where (file, byte offset).
    pub detail: String,
}

fn write_damage(db: &Database, d: Option<&LogDamage>) -> Result<(), String> {
    write_value_durably(db, META, KEY_DAMAGE, d)
}

/// The damage recorded in `db`, if any.
pub fn read_damage(db: &Database) -> Result<Option<LogDamage>, String> {
    read_value(db, META, KEY_DAMAGE)
}

/// Forgets the damage record (`arkd log-damage clear`, on a stopped node): the operator
/// accepts that entries it names may be lost.
pub fn clear_damage(db: &Database) -> Result<(), String> {
    write_damage(db, None)
}

/// Records damage durably before the log is cut; an earlier record that is not healed yet
/// keeps the lower first lost entry.
pub(crate) fn record_damage(db: &Database, found: LogDamage) -> Result<LogDamage, String> {
    let merged = match read_damage(db)? {
        Some(old) if old.first_lost <= found.first_lost => LogDamage {
            first_lost: old.first_lost,
            detail: format!("{}; then {}", old.detail, found.detail),
        },
        _ => found,
    };
    write_damage(db, Some(&merged))?;
    Ok(merged)
}

/// If `vote` made node `me` the leader, the same vote without leadership: openraft 0.9
/// resumes a committed vote for itself as leadership at once, which a node missing
/// entries must not do. A plain vote for itself in the same term still forbids voting for
/// anyone else in that term.
fn demoted(vote: Vote<NodeId>, me: NodeId) -> Option<Vote<NodeId>> {
    (vote.committed && vote.leader_id.voted_for() == Some(me)).then(|| Vote::new(vote.leader_id.term, me))
}

/// A damaged node's gate on votes and elections, and its way back.
pub struct Recovery {
    db: Arc<Database>,
    damaged: AtomicBool,
    /// Serialises healing (several AppendEntries may finish at once).
    heal: Mutex<()>,
}

impl Recovery {
    /// Reads the damage record of `db` and, if there is one, demotes a leader's vote of
    /// node `me`; call before openraft starts.
    pub fn open(db: Arc<Database>, me: NodeId) -> Result<Arc<Self>, String> {
        let damage = read_damage(&db)?;
        if let Some(d) = &damage {
            let vote: Option<Vote<NodeId>> = read_value(&db, META, KEY_VOTE)?;
            if let Some(v) = vote.and_then(|v| demoted(v, me)) {
                write_value_durably(&db, META, KEY_VOTE, Some(&v))?;
            }
            tracing::warn!(first_lost = d.first_lost, detail = %d.detail,
                "raft log damaged: this node keeps its vote but neither votes nor campaigns until a leader \
                 has given it back every committed entry");
        }
        metrics::gauge!("ark_raft_log_damaged").set(if damage.is_some() { 1.0 } else { 0.0 });
        Ok(Arc::new(Self {
            db,
            damaged: AtomicBool::new(damage.is_some()),
            heal: Mutex::new(()),
        }))
    }

    /// Whether the node is missing entries it may have acknowledged.
    pub fn damaged(&self) -> bool {
        self.damaged.load(Ordering::Acquire)
    }

    /// What a heal check needs from an AppendEntries before it is handed to openraft:
    /// `None` when the node is healthy or the request cannot heal it.
    pub fn heal_target(&self, req: &AppendEntriesRequest<TypeConfig>) -> Option<HealTarget> {
        if !self.damaged() {
            return None;
        }
        let commit = req.leader_commit?;
        // A commit of an earlier term may be behind what was committed (a new leader learns
        // the commit index only by committing in its own term).
        (commit.leader_id.term == req.vote.leader_id.term).then_some(HealTarget {
            commit,
            last_sent: req.entries.last().map(|e| e.log_id).or(req.prev_log_id),
        })
    }

    /// After openraft answered an AppendEntries: heals the node if its log now matches the
    /// leader's up to the leader's commit.
    pub fn after_append(&self, target: HealTarget, resp: &AppendEntriesResponse<NodeId>) {
        let matched = match resp {
            AppendEntriesResponse::Success => target.last_sent,
            AppendEntriesResponse::PartialSuccess(m) => *m,
            _ => return,
        };
        if matched.is_none_or(|m| m.index < target.commit.index) {
            return;
        }
        let Ok(_g) = self.heal.lock() else { return };
        if !self.damaged() {
            return;
        }
        if let Err(e) = write_damage(&self.db, None) {
            tracing::error!(error = %e, "cannot clear the raft log damage record; staying out of elections");
            return;
        }
        self.damaged.store(false, Ordering::Release);
        metrics::gauge!("ark_raft_log_damaged").set(0.0);
        tracing::warn!(upto = %target.commit, "raft log recovered: the leader gave back every committed entry; \
            this node votes and may campaign again");
    }
}

/// The leader's commit and the last entry an AppendEntries carries.
#[derive(Debug, Clone, Copy)]
pub struct HealTarget {
    commit: LogId<NodeId>,
    last_sent: Option<LogId<NodeId>>,
}

/// Describes this module's metrics (HELP text and unit) to the recorder; called once at start-up by
/// `server` (through `metrics::install`).
pub(crate) fn describe_metrics() {
    use metrics::describe_gauge;
    describe_gauge!(
        "ark_raft_log_damaged",
        "1 while this node's Raft log is damaged and it neither votes nor campaigns, else 0."
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use openraft::{CommittedLeaderId, Entry, EntryPayload};

    use super::*;

    fn req(term: u64, commit: Option<(u64, u64)>, last: Option<u64>) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(term, 1),
            prev_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), 3)),
            entries: last
                .map(|i| Entry {
                    log_id: LogId::new(CommittedLeaderId::new(term, 1), i),
                    payload: EntryPayload::Blank,
                })
                .into_iter()
                .collect(),
            leader_commit: commit.map(|(t, i)| LogId::new(CommittedLeaderId::new(t, 1), i)),
        }
    }

    #[test]
    fn a_leaders_vote_is_demoted_and_others_are_kept() {
        assert_eq!(demoted(Vote::new_committed(7, 2), 2), Some(Vote::new(7, 2)));
        assert_eq!(demoted(Vote::new_committed(7, 3), 2), None);
        assert_eq!(demoted(Vote::new(7, 2), 2), None);
    }

    #[test]
    fn damage_survives_reopen_and_keeps_the_lowest_loss() {
        let d = tempfile::tempdir().unwrap();
        let db = super::super::store::open_database(d.path()).unwrap();
        write_value_durably(&db, META, KEY_VOTE, Some(&Vote::<NodeId>::new_committed(4, 9))).unwrap();
        assert!(!Recovery::open(db.clone(), 9).unwrap().damaged());
        record_damage(
            &db,
            LogDamage {
                first_lost: 50,
                detail: "a".into(),
            },
        )
        .unwrap();
        let merged = record_damage(
            &db,
            LogDamage {
                first_lost: 80,
                detail: "b".into(),
            },
        )
        .unwrap();
        assert_eq!(merged.first_lost, 50);
        let r = Recovery::open(db.clone(), 9).unwrap();
        assert!(r.damaged());
        let vote: Vote<NodeId> = read_value(&db, META, KEY_VOTE).unwrap().unwrap();
        assert_eq!(vote, Vote::new(4, 9), "no longer a leader's vote");
        clear_damage(&db).unwrap();
        assert!(!Recovery::open(db, 9).unwrap().damaged());
    }

    #[test]
    fn only_a_commit_of_the_leaders_own_term_can_heal() {
        let d = tempfile::tempdir().unwrap();
        let db = super::super::store::open_database(d.path()).unwrap();
        record_damage(
            &db,
            LogDamage {
                first_lost: 5,
                detail: "x".into(),
            },
        )
        .unwrap();
        let r = Recovery::open(db, 1).unwrap();
        assert!(r.heal_target(&req(5, None, Some(9))).is_none());
        assert!(
            r.heal_target(&req(5, Some((4, 8)), Some(9))).is_none(),
            "commit of an older term"
        );
        let t = r.heal_target(&req(5, Some((5, 8)), Some(9))).unwrap();
        assert_eq!(t.last_sent.map(|l| l.index), Some(9));
        let t = r.heal_target(&req(5, Some((5, 8)), None)).unwrap();
        assert_eq!(
            t.last_sent.map(|l| l.index),
            Some(3),
            "a heartbeat matches up to prev_log_id"
        );
    }
}
