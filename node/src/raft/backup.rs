//! Metadata backups: a consistent copy of the state machine taken on the leader after a read
//! fence (for `Cluster.SaveSnapshot`), and a new one-node cluster's data dir seeded from
//! such a copy (`arkd snapshot restore`).
//!
//! A backup is the body openraft's snapshots carry (`state_machine/snapshot.rs`, the one
//! serializer of the tables) with the log id and membership it was taken at. A restored data
//! dir holds that state machine, a log purged up to the backup's index (so the next entry
//! follows it and revisions keep growing), a plain vote of the restoring node for itself in
//! the backup's term (so its first election is in a later term than every entry it holds),
//! and a membership of that node alone.
//!
//! Owns what a backup covers and how a restored data dir looks. Must not touch: the backup
//! file's layout (the SDK's `ark_client::snapshot`, shared with the CLI), gRPC.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use openraft::{LogId, Membership, SnapshotMeta, StoredMembership, Vote};

use super::db::{write_value_durably, KEY_VOTE, META};
use super::error::ConsensusError;
use super::fence::ReadFence;
use super::state_machine::snapshot::check_body;
pub use super::state_machine::snapshot::BodySummary;
use super::state_machine::StateMachine;
use super::store::{open_database, seed_purged};
use super::{ArkNode, NodeId};

/// A consistent copy of the replicated state.
#[derive(Debug)]
pub struct Backup {
    /// The last entry the body includes.
    pub last_log_id: LogId<NodeId>,
    /// The membership as of that entry.
    pub membership: StoredMembership<NodeId, ArkNode>,
    /// The state machine's snapshot body.
    pub body: Vec<u8>,
}

/// Takes backups on this node: a handle on the state machine and the read fence.
#[derive(Clone)]
pub struct BackupSource {
    sm: StateMachine,
    fence: Arc<ReadFence>,
}

impl BackupSource {
    /// A source over `sm` (a clone of the state machine handed to Raft) and `fence`.
    pub fn new(sm: StateMachine, fence: Arc<ReadFence>) -> Self {
        Self { sm, fence }
    }

    /// A backup covering every write acknowledged before this call: the fence makes this
    /// node prove it leads and apply up to the commit index first (a follower gets
    /// NotLeader with the hint), then the state machine is exported at or after that point.
    pub async fn take(&self) -> Result<Backup, ConsensusError> {
        let read_index = self.fence.linearize().await?;
        let mut sm = self.sm.clone();
        let (meta, body) = sm
            .export()
            .await
            .map_err(|e| ConsensusError::Unavailable(format!("cannot read the state machine: {e}")))?;
        let last_log_id = meta.last_log_id.ok_or_else(|| {
            ConsensusError::Internal("the state machine has applied nothing after a read fence".into())
        })?;
        if last_log_id.index < read_index {
            return Err(ConsensusError::Internal(format!(
                "the state machine exported at index {} before the read index {read_index}",
                last_log_id.index
            )));
        }
        metrics::counter!("ark_metadata_backups_total").increment(1);
        Ok(Backup {
            last_log_id,
            membership: meta.last_membership,
            body,
        })
    }
}

/// Why a data dir could not be seeded from a backup.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The data dir holds files: a restore only ever creates a new node.
    #[error("data dir {0} is not empty: a restore creates a new cluster and never overwrites a node; pick an empty or new directory")]
    NotEmpty(String),
    /// The body does not decode (the file's checksum passed, so it was written wrong).
    #[error("the snapshot body does not decode: {0}")]
    BadBody(String),
    /// Reading or writing the data dir failed.
    #[error("{0}")]
    Io(String),
}

/// The node a restored cluster starts with.
#[derive(Debug, Clone)]
pub struct RestoreTarget {
    /// Its id.
    pub node_id: NodeId,
    /// Its site and addresses.
    pub node: ArkNode,
}

/// Seeds `data_dir` (absent or empty) with `body`, taken at `at`, as a new cluster whose only
/// voter is `target`. The body is decoded completely before anything is written; if a later
/// step fails, the data dir is removed again (it held nothing before).
pub async fn restore(
    data_dir: &Path,
    at: LogId<NodeId>,
    body: Vec<u8>,
    target: &RestoreTarget,
) -> Result<BodySummary, RestoreError> {
    let summary = check_body(&body).map_err(|e| RestoreError::BadBody(e.to_string()))?;
    let existed = match std::fs::read_dir(data_dir) {
        Ok(mut d) => {
            if d.next().is_some() {
                return Err(RestoreError::NotEmpty(data_dir.display().to_string()));
            }
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(RestoreError::Io(format!("cannot read {}: {e}", data_dir.display()))),
    };
    match seed(data_dir, at, body, target).await {
        Ok(()) => Ok(summary),
        Err(e) => {
            // Leave the directory as it was found: absent, or empty.
            let undo = if existed {
                std::fs::read_dir(data_dir).and_then(|mut d| {
                    d.try_for_each(|ent| {
                        let p = ent?.path();
                        if p.is_dir() {
                            std::fs::remove_dir_all(p)
                        } else {
                            std::fs::remove_file(p)
                        }
                    })
                })
            } else {
                std::fs::remove_dir_all(data_dir)
            };
            if let Err(u) = undo {
                return Err(RestoreError::Io(format!(
                    "{e}; and cleaning up {} failed too ({u}): remove it by hand",
                    data_dir.display()
                )));
            }
            Err(e)
        }
    }
}

async fn seed(data_dir: &Path, at: LogId<NodeId>, body: Vec<u8>, target: &RestoreTarget) -> Result<(), RestoreError> {
    let io = |what: &str, e: &dyn std::fmt::Display| RestoreError::Io(format!("{what}: {e}"));
    let db = open_database(data_dir).map_err(|e| io("creating the database", &e))?;
    let members = BTreeMap::from([(target.node_id, target.node.clone())]);
    let membership = Membership::new(vec![BTreeSet::from([target.node_id])], members);
    let meta = SnapshotMeta {
        last_log_id: Some(at),
        last_membership: StoredMembership::new(Some(at), membership),
        snapshot_id: format!("restored-{}-{}", at.leader_id.term, at.index),
    };
    let mut sm = StateMachine::new(db.clone(), data_dir);
    // Durable (install commits with fsync) and complete, or nothing.
    sm.install(&meta, body)
        .await
        .map_err(|e| io("installing the snapshot", &e))?;
    seed_purged(&db, at).map_err(|e| io("recording the log's start", &e))?;
    let vote = Vote::<NodeId>::new(at.leader_id.term, target.node_id);
    write_value_durably(&db, META, KEY_VOTE, Some(&vote)).map_err(|e| io("recording the vote", &e))?;
    drop(sm);
    drop(db);
    // The data dir's own entry, and the files in it, must survive a crash after we return.
    for dir in [Some(data_dir), data_dir.parent()].into_iter().flatten() {
        if dir.as_os_str().is_empty() {
            continue;
        }
        std::fs::File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(|e| io(&format!("syncing {}", dir.display()), &e))?;
    }
    Ok(())
}

/// Describes this file's metrics to the recorder; called once at start-up by `server`.
pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        "ark_metadata_backups_total",
        "Metadata snapshots (Cluster.SaveSnapshot) taken on this node."
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::state_machine::StoredValue;
    use openraft::CommittedLeaderId;

    fn target() -> RestoreTarget {
        RestoreTarget {
            node_id: 4,
            node: ArkNode {
                site: "s".into(),
                peer_addr: "127.0.0.1:1".into(),
                client_addr: "127.0.0.1:2".into(),
            },
        }
    }

    /// A body as a running node exports it, with one KV record.
    async fn body_with_one_key() -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let db = open_database(dir.path()).unwrap();
        let mut sm = StateMachine::new(db.clone(), dir.path());
        {
            use redb::TableDefinition;
            let kv: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_kv");
            let tx = db.begin_write().unwrap();
            {
                let mut t = tx.open_table(kv).unwrap();
                let v = crate::raft::codec::encode(&StoredValue {
                    revision: 3,
                    value: b"v".to_vec(),
                })
                .unwrap();
                t.insert("k", v.as_slice()).unwrap();
            }
            tx.commit().unwrap();
        }
        sm.export().await.unwrap().1
    }

    #[tokio::test]
    async fn a_restored_dir_starts_after_the_index_with_the_new_node_alone() {
        let body = body_with_one_key().await;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("new");
        let at = LogId::new(CommittedLeaderId::new(7, 2), 90);
        let s = restore(&data, at, body.clone(), &target()).await.unwrap();
        assert_eq!(s.keys, 1);

        let db = open_database(&data).unwrap();
        let vote: Vote<NodeId> = crate::raft::db::read_value(&db, META, KEY_VOTE).unwrap().unwrap();
        assert_eq!(vote, Vote::new(7, 4), "a plain vote in the snapshot's term");
        let mut store = super::super::store::LogStore::open(&data, db.clone()).unwrap();
        let st = openraft::storage::RaftLogStorage::get_log_state(&mut store)
            .await
            .unwrap();
        assert_eq!(st.last_purged_log_id, Some(at));
        assert_eq!(st.last_log_id, Some(at));
        let mut sm = StateMachine::new(db.clone(), &data);
        let (applied, membership) = openraft::storage::RaftStateMachine::applied_state(&mut sm)
            .await
            .unwrap();
        assert_eq!(applied, Some(at));
        assert_eq!(membership.voter_ids().collect::<Vec<_>>(), vec![4]);
        let v = sm.reader().get("k").unwrap().unwrap();
        assert_eq!(v.value, b"v");
        drop(store);
        drop(sm);
        drop(db);

        // Never over an existing node.
        let e = restore(&data, at, body, &target()).await.unwrap_err();
        assert!(matches!(e, RestoreError::NotEmpty(_)), "{e}");
    }

    #[tokio::test]
    async fn a_body_that_does_not_decode_writes_nothing() {
        let body = body_with_one_key().await;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("new");
        let at = LogId::new(CommittedLeaderId::new(1, 1), 5);
        let e = restore(&data, at, body[..body.len() - 1].to_vec(), &target())
            .await
            .unwrap_err();
        assert!(matches!(e, RestoreError::BadBody(_)), "{e}");
        assert!(!data.exists(), "nothing created");
    }
}
