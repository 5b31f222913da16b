//! Recovery from the loss of a majority: a stopped node made the only voter of a new
//! cluster that keeps its log, state machine and chunks (`arkd recover`), and the read-only
//! inspection an operator runs first on every readable node's data dir to pick the most
//! advanced one.
//!
//! How: one entry is appended after the node's last log entry, holding a membership of just
//! this node, under a term above any this node has seen (so no other node can hold a
//! different entry with the same log id), and a vote for that term is saved (not a leader's
//! vote). At its next start openraft 0.9 takes the last membership entry in the log as the
//! effective membership (`StorageHelper::get_membership`), starts as a follower that is the
//! only voter, campaigns once its election timeout passes, wins with its own vote, and
//! commits a blank entry of the next term, which commits everything before it: the entries
//! it held but did not know to be committed, and the new membership. The vote is saved first,
//! then the entry is appended and synced, then the recovery is recorded: a crash in between
//! leaves either the old state with a higher vote (run `arkd recover` again) or a recovered
//! log without its record.
//!
//! The record (`forced_recoveries` in the raft meta table) keeps when, the membership before,
//! the last log id before and the new entry's id, so that `arkd recover --inspect` and the
//! node's start-up log show that the cluster was re-formed by hand. From it, [`fenced_ids`]
//! names the old members the recovery left out: the recovered node answers their Raft
//! requests with a failure starting with [`FENCED_MARKER`], on which they stop (`network.rs`,
//! `server`), so that two of them started on their old data do not go on as a majority of
//! the old membership for long.
//!
//! The inspection changes nothing in the Raft state; opening the log files cuts a torn last
//! write and records damage exactly as the node's own start would.
//!
//! Owns the inspection, the decision rule ([`check`]) and the rewrite. Must not touch: the
//! network, chunk files, a running node (redb refuses a second opener, so everything here
//! fails while the node runs).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership, StoredMembership, Vote};
use redb::Database;
use serde::{Deserialize, Serialize};

use super::db::{read_value, write_value_durably, KEY_VOTE, META};
use super::objects::{Mode, ObjectReader};
use super::recovery::{read_damage, LogDamage};
use super::store::{decode, encode, open_database, open_wal};
use super::wal::Wal;
use super::{ArkNode, NodeId, TypeConfig};

const KEY_FORCED: &str = "forced_recoveries";

/// Why an inspection or a recovery could not be done (not a refusal: see [`check`]).
#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    /// The database or the log could not be opened or read.
    #[error("{0}")]
    Storage(String),
    /// The node holds nothing to recover.
    #[error("{0}")]
    Empty(String),
}

fn st(e: impl std::fmt::Display) -> RecoverError {
    RecoverError::Storage(e.to_string())
}

/// One recovery by `arkd recover --force-new-cluster`, as recorded in the node's database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForcedRecovery {
    /// Wall clock of the recovery, ms since the epoch.
    pub at_ms: u64,
    /// Voters before.
    pub previous_voters: Vec<NodeId>,
    /// Learners before.
    pub previous_learners: Vec<NodeId>,
    /// The node's last log id before (term, leader, index).
    pub last_log_before: Option<LogId<NodeId>>,
    /// The applied index on disk before.
    pub applied_before: Option<u64>,
    /// The appended membership entry.
    pub new_entry: LogId<NodeId>,
    /// Whether `--force` overrode a refusal.
    pub forced: bool,
    /// What the operator compared it with (`ID=DIR` or config files), and their last log ids.
    pub compared_with: Vec<String>,
}

/// Per namespace, what this node's state machine says about copies it lacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceCopies {
    /// Namespace.
    pub name: String,
    /// `sync` or `async`.
    pub mode: String,
    /// The namespace's `max_lag` (async only matters).
    pub max_lag_ms: u64,
    /// Latest object versions (not tombstones).
    pub objects: u64,
    /// Of them, those with a chunk this node holds no copy of (by the chunk holders table):
    /// lost if every node that holds one is lost.
    pub without_local_copy: u64,
    /// The oldest of those, by its write time (ms since the epoch): how far back an async
    /// namespace's replication lag reached, as far as this node knows.
    pub oldest_without_local_copy_ms: Option<u64>,
}

/// What a stopped node's data dir holds, read without changing the Raft state (opening the
/// log cuts a torn tail, as the node's own start would).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Inspection {
    /// The node's id, when known (from its config or `ID=DIR`).
    pub node_id: Option<NodeId>,
    /// The data dir.
    pub data_dir: PathBuf,
    /// The last entry in the log.
    pub last_log_id: Option<LogId<NodeId>>,
    /// Entries up to here were purged after a snapshot.
    pub last_purged: Option<LogId<NodeId>>,
    /// The state machine's applied position on disk: committed for sure. Entries after it
    /// may or may not have been committed (openraft does not store the commit index).
    pub applied: Option<LogId<NodeId>>,
    /// The saved vote.
    pub vote: Option<Vote<NodeId>>,
    /// The effective membership: the last membership entry after `applied` in the log, else
    /// the state machine's.
    pub voters: Vec<NodeId>,
    /// Learners of that membership.
    pub learners: Vec<NodeId>,
    /// Where that membership comes from.
    pub membership_log_id: Option<LogId<NodeId>>,
    /// Each member's site and addresses.
    pub nodes: BTreeMap<NodeId, ArkNode>,
    /// The log-damage record, if any.
    pub damage: Option<LogDamage>,
    /// Earlier forced recoveries of this data dir.
    pub recoveries: Vec<ForcedRecovery>,
    /// Copies this node lacks, per namespace (empty when the node id is unknown).
    pub namespaces: Vec<NamespaceCopies>,
}

impl Inspection {
    /// Entries held after the applied position.
    pub fn unapplied(&self) -> u64 {
        let last = self.last_log_id.map_or(0, |l| l.index);
        last.saturating_sub(self.applied.map_or(0, |a| a.index))
    }

    /// Human-readable lines.
    pub fn describe(&self) -> String {
        let id = |l: &Option<LogId<NodeId>>| match l {
            Some(l) => format!(
                "index {} (term {}, leader {})",
                l.index, l.leader_id.term, l.leader_id.node_id
            ),
            None => "none".to_string(),
        };
        let mut out = vec![
            format!(
                "node {} in {}",
                self.node_id.map_or("?".to_string(), |n| n.to_string()),
                self.data_dir.display()
            ),
            format!("last log entry: {}", id(&self.last_log_id)),
            format!(
                "applied (committed for sure): {}; {} entries after it are held but may not have been committed",
                id(&self.applied),
                self.unapplied()
            ),
            format!("purged up to: {}", id(&self.last_purged)),
            format!("vote: {}", self.vote.map_or("none".to_string(), |v| v.to_string())),
            format!(
                "membership ({}): voters {:?}, learners {:?}",
                match self.membership_log_id {
                    Some(l) => format!("entry {}", l.index),
                    None => "none".to_string(),
                },
                self.voters,
                self.learners
            ),
            match &self.damage {
                Some(d) => format!("log damage: first entry lost {}: {}", d.first_lost, d.detail),
                None => "log damage: none".to_string(),
            },
        ];
        if self.recoveries.is_empty() {
            out.push("forced recoveries: none".to_string());
        }
        for r in &self.recoveries {
            out.push(format!(
                "forced recovery at {} ms since the epoch: voters were {:?} (learners {:?}), last log entry {}, new membership entry {}{}",
                r.at_ms,
                r.previous_voters,
                r.previous_learners,
                id(&r.last_log_before),
                r.new_entry.index,
                if r.forced { ", forced" } else { "" }
            ));
        }
        for n in &self.namespaces {
            let oldest = match n.oldest_without_local_copy_ms {
                Some(t) => format!(", the oldest written at {t} ms since the epoch"),
                None => String::new(),
            };
            out.push(format!(
                "namespace {} ({}): {} of {} objects have a chunk with no copy on this node{oldest}",
                n.name, n.mode, n.without_local_copy, n.objects
            ));
        }
        out.join("\n")
    }
}

/// A stopped node's opened database and data dir.
pub struct Disk {
    db: Arc<Database>,
    data_dir: PathBuf,
    node_id: Option<NodeId>,
    /// The log files, once inspected.
    wal: Option<Wal>,
    /// The purge point read with them.
    purged: Option<LogId<NodeId>>,
}

impl Disk {
    /// Opens the database of a stopped node (fails while the node runs).
    pub fn open(data_dir: &Path, node_id: Option<NodeId>) -> Result<Self, RecoverError> {
        if !data_dir.join("ark.redb").exists() {
            return Err(RecoverError::Empty(format!(
                "{} holds no Ark database (ark.redb): not a node's data dir",
                data_dir.display()
            )));
        }
        let db = open_database(data_dir)
            .map_err(|e| RecoverError::Storage(format!("{e} (is the node still running? stop it first)")))?;
        Ok(Self {
            db,
            data_dir: data_dir.to_path_buf(),
            node_id,
            wal: None,
            purged: None,
        })
    }

    /// Reads what the node holds. The log files are opened once, as the node's start would
    /// (a torn tail is cut), and kept for [`Self::force_new_cluster`].
    pub fn inspect(&mut self) -> Result<Inspection, RecoverError> {
        let wal = match &mut self.wal {
            Some(w) => w,
            None => {
                let (w, _, purged) = open_wal(&self.data_dir, &self.db).map_err(st)?;
                self.purged = purged;
                self.wal.insert(w)
            }
        };
        let index = wal.shared();
        let index = index.read().map_err(|_| st("raft log index lock poisoned"))?;
        let last_log_id = index.last().or(self.purged);
        let vote: Option<Vote<NodeId>> = read_value(&self.db, META, KEY_VOTE).map_err(st)?;
        let applied = super::state_machine::applied_in_db(&self.db).map_err(st)?;
        // The effective membership as openraft derives it at start: the last membership
        // entry after the applied position, else the state machine's.
        let from = applied.map_or(0, |a| a.index + 1);
        let to = last_log_id.map_or(0, |l| l.index + 1);
        let mut membership: StoredMembership<NodeId, ArkNode> =
            super::state_machine::membership_in_db(&self.db).map_err(st)?;
        let mut in_log = None;
        index
            .read_range(from, to, |_, payload| {
                let e: Entry<TypeConfig> = decode(payload).map_err(std::io::Error::other)?;
                if let EntryPayload::Membership(m) = e.payload {
                    in_log = Some(StoredMembership::new(Some(e.log_id), m));
                }
                Ok(())
            })
            .map_err(st)?;
        drop(index);
        if let Some(m) = in_log {
            membership = m;
        }
        let voters: Vec<NodeId> = membership.membership().voter_ids().collect();
        let learners: Vec<NodeId> = membership.membership().learner_ids().collect();
        let nodes = membership.nodes().map(|(k, v)| (*k, v.clone())).collect();
        let namespaces = match self.node_id {
            Some(me) => namespace_copies(&self.db, me)?,
            None => Vec::new(),
        };
        Ok(Inspection {
            node_id: self.node_id,
            data_dir: self.data_dir.clone(),
            last_log_id,
            last_purged: self.purged,
            applied,
            vote,
            voters,
            learners,
            membership_log_id: *membership.log_id(),
            nodes,
            damage: read_damage(&self.db).map_err(st)?,
            recoveries: read_recoveries(&self.db)?,
            namespaces,
        })
    }

    /// Makes this node the only voter of a new cluster (see the module doc). `me` must be the
    /// inspection of this disk just taken, `fallback` this node's site and addresses from its
    /// config (used when the old membership does not name it). Returns the record written.
    pub fn force_new_cluster(
        self,
        me: &Inspection,
        fallback: ArkNode,
        forced: bool,
        compared_with: Vec<String>,
    ) -> Result<ForcedRecovery, RecoverError> {
        let id = self
            .node_id
            .ok_or_else(|| RecoverError::Empty("the node id of the disk to recover is unknown".into()))?;
        let last = me.last_log_id.ok_or_else(|| {
            RecoverError::Empty(format!(
                "{} holds no log entry: this node never joined a cluster, there is nothing to recover",
                self.data_dir.display()
            ))
        })?;
        let term = last
            .leader_id
            .term
            .max(me.vote.map_or(0, |v| v.leader_id.term))
            .checked_add(1)
            .ok_or_else(|| RecoverError::Storage("the term cannot grow any further".into()))?;
        let node = me.nodes.get(&id).cloned().unwrap_or(fallback);
        let entry: Entry<TypeConfig> = Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, id), last.index + 1),
            payload: EntryPayload::Membership(Membership::new(
                vec![BTreeSet::from([id])],
                BTreeMap::from([(id, node)]),
            )),
        };
        let mut wal = self
            .wal
            .ok_or_else(|| RecoverError::Storage("inspect the disk before recovering it".into()))?;
        let found = wal
            .shared()
            .read()
            .map_err(|_| st("raft log index lock poisoned"))?
            .last()
            .or(self.purged);
        if found != Some(last) {
            return Err(RecoverError::Storage(format!(
                "the log ends at {found:?}, not at {last} as inspected; inspect it again"
            )));
        }
        // 1. The vote: the next election is of a term above the new entry's.
        write_value_durably(&self.db, META, KEY_VOTE, Some(&Vote::<NodeId>::new(term, id))).map_err(st)?;
        // 2. The entry, appended after the last one and synced.
        wal.append(entry.log_id, &encode(&entry).map_err(st)?).map_err(st)?;
        wal.commit().map_err(st)?;
        // 3. The record.
        let rec = ForcedRecovery {
            at_ms: crate::clock::wall_ms(),
            previous_voters: me.voters.clone(),
            previous_learners: me.learners.clone(),
            last_log_before: me.last_log_id,
            applied_before: me.applied.map(|a| a.index),
            new_entry: entry.log_id,
            forced,
            compared_with,
        };
        let mut all = me.recoveries.clone();
        all.push(rec.clone());
        write_value_durably(&self.db, META, KEY_FORCED, Some(&all)).map_err(st)?;
        Ok(rec)
    }
}

fn read_recoveries(db: &Database) -> Result<Vec<ForcedRecovery>, RecoverError> {
    Ok(read_value::<Vec<ForcedRecovery>>(db, META, KEY_FORCED)
        .map_err(st)?
        .unwrap_or_default())
}

/// Logs the forced recoveries of this data dir at start-up, so that the node's log says
/// the cluster was re-formed by hand.
pub fn log_at_start(db: &Database) {
    match read_recoveries(db) {
        Ok(all) => {
            if let Some(r) = all.last() {
                tracing::warn!(at_ms = r.at_ms, previous_voters = ?r.previous_voters, last_log_before = ?r.last_log_before,
                    new_entry = %r.new_entry, forced = r.forced, recoveries = all.len(),
                    "this node was made the only voter of a new cluster by `arkd recover --force-new-cluster`");
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the record of forced recoveries"),
    }
}

/// Starts the failure a recovered node answers to a Raft request from a node its forced
/// recovery left out; the sender stops on it ([`super::network`]).
pub const FENCED_MARKER: &str = "ark-fenced:";

/// Nodes that a forced recovery of this data dir left out (the members before it, other
/// than `me`). Their data is from the old cluster: two of them could still form a majority
/// of the old membership, so the recovered node tells any of them that contacts it to stop.
/// Node ids are never reused, so none of them can be a member again.
pub fn fenced_ids(db: &Database, me: NodeId) -> Result<BTreeSet<NodeId>, String> {
    Ok(read_recoveries(db)
        .map_err(|e| e.to_string())?
        .iter()
        .flat_map(|r| r.previous_voters.iter().chain(&r.previous_learners).copied())
        .filter(|n| *n != me)
        .collect())
}

/// What a recovered node `me` answers a Raft request from `from`, a node left out.
pub fn fenced_message(me: NodeId, from: NodeId) -> String {
    format!(
        "{FENCED_MARKER} node {from} was left out when node {me} was made the only voter of a new cluster \
         (arkd recover --force-new-cluster): its data is from the old cluster and must not serve; \
         wipe its data dir and add it back as a new node with a new id (docs/operations.md, 'Losing a majority')"
    )
}

fn namespace_copies(db: &Arc<Database>, me: NodeId) -> Result<Vec<NamespaceCopies>, RecoverError> {
    let reader = ObjectReader::new(db.clone());
    let holders: HashMap<_, _> = reader
        .chunks()
        .map_err(st)?
        .into_iter()
        .map(|(id, r)| (id, r.holders))
        .collect();
    let mut out = Vec::new();
    for (name, ns) in reader.namespaces().map_err(st)? {
        let objects = reader.list(&name, "", false).map_err(st)?;
        let lacking: Vec<u64> = objects
            .iter()
            .filter(|o| {
                o.record
                    .chunks
                    .iter()
                    .any(|c| !holders.get(&c.id).is_some_and(|h| h.contains(&me)))
            })
            .map(|o| o.record.created_ms)
            .collect();
        out.push(NamespaceCopies {
            name,
            mode: match ns.policy.mode {
                Mode::Sync => "sync",
                Mode::Async => "async",
            }
            .to_string(),
            max_lag_ms: ns.policy.max_lag_ms,
            objects: objects.len() as u64,
            without_local_copy: lacking.len() as u64,
            oldest_without_local_copy_ms: lacking.iter().min().copied(),
        });
    }
    Ok(out)
}

/// What [`check`] decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Reasons to refuse; the recovery goes ahead only when empty, or with `--force`.
    pub refusals: Vec<String>,
    /// What may be lost, said in any case.
    pub may_lose: Vec<String>,
}

/// Whether `me` may be made the only voter, compared with the other nodes' inspections the
/// operator could read. Refuses: without any comparison (this node cannot know whether
/// another holds more), when a compared node's log ends after this one's, when a voter of
/// the membership was not compared, when this node's log is damaged, when it is not a voter,
/// or when it holds no log. A pure function, so that the rule is tested without disks.
pub fn check(me: &Inspection, others: &[Inspection]) -> Verdict {
    let mut v = Verdict::default();
    let Some(id) = me.node_id else {
        v.refusals.push("the node id of the disk to recover is unknown".into());
        return v;
    };
    if me.last_log_id.is_none() {
        v.refusals.push("this node holds no log entry".into());
    }
    if let Some(d) = &me.damage {
        v.refusals.push(format!(
            "this node's log is damaged (entries from {} lost: {}); another node may hold them",
            d.first_lost, d.detail
        ));
    }
    if !me.voters.contains(&id) {
        v.refusals.push(format!(
            "node {id} is not a voter of its membership (voters {:?}): its log may lack committed entries",
            me.voters
        ));
    }
    if others.is_empty() {
        v.refusals.push(
            "no other node's data was compared (--compare-with): this node cannot know whether another holds entries it lacks"
                .into(),
        );
    }
    for o in others {
        if o.last_log_id > me.last_log_id {
            v.refusals.push(format!(
                "node {} ({}) holds a later log: its last entry is {:?}, this node's {:?}; recover that one",
                o.node_id.map_or("?".to_string(), |n| n.to_string()),
                o.data_dir.display(),
                o.last_log_id.map(|l| l.index),
                me.last_log_id.map(|l| l.index)
            ));
        }
    }
    let compared: BTreeSet<NodeId> = others.iter().filter_map(|o| o.node_id).collect();
    let missing: Vec<NodeId> = me
        .voters
        .iter()
        .copied()
        .filter(|n| *n != id && !compared.contains(n))
        .collect();
    if !others.is_empty() && !missing.is_empty() {
        v.refusals.push(format!(
            "voters {missing:?} were not compared: one of them may hold entries this node lacks"
        ));
    }
    // What may be lost, whatever the decision.
    let last = me.last_log_id.map_or(0, |l| l.index);
    v.may_lose.push(format!(
        "{} entries after the applied index {} are held but not known to be committed: they will be committed, \
         so writes whose clients saw an error may still take effect",
        me.unapplied(),
        me.applied.map_or(0, |a| a.index)
    ));
    if missing.is_empty() && !others.is_empty() {
        v.may_lose.push(format!(
            "no compared node holds an entry after index {last}; any entry only a lost node held past it is lost"
        ));
    } else {
        v.may_lose.push(format!(
            "entries after index {last} that only nodes not compared ({missing:?}) held are lost"
        ));
    }
    for n in &me.namespaces {
        if n.mode == "async" {
            v.may_lose.push(match n.oldest_without_local_copy_ms {
                Some(t) => format!(
                    "async namespace {}: {} objects have chunks with no copy here (lost with the lost nodes), \
                     the oldest written at {t} ms since the epoch; objects acknowledged by a lost node whose \
                     entries never reached this node: unknown",
                    n.name, n.without_local_copy
                ),
                None => format!(
                    "async namespace {}: every object this node knows of has a copy here; objects acknowledged \
                     by a lost node whose entries never reached this node: unknown",
                    n.name
                ),
            });
        } else if n.without_local_copy > 0 {
            v.may_lose.push(format!(
                "sync namespace {}: {} objects have chunks with no copy here; they are lost unless a lost node's \
                 chunks can be copied back",
                n.name, n.without_local_copy
            ));
        }
    }
    v
}

#[cfg(test)]
mod tests;
