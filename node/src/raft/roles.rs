//! Node roles in the replicated state: which members are witnesses (voters that keep the
//! Raft log and metadata but hold no chunk and serve no client data).
//!
//! A role is not part of [`crate::raft::ArkNode`] (the membership's node record is encoded
//! with postcard, which is not self-describing: a new field would make old logs and
//! snapshots undecodable). It lives in its own table `sm_roles`, written by
//! [`crate::raft::Command::SetRole`] (appended at the end of the enum) and carried in the
//! snapshot's `roles` section. A node the table does not name is a data node, so every log,
//! snapshot and data dir written before roles existed reads as "all data nodes". Each node
//! announces its configured role itself once it knows a leader (`server`).
//!
//! Owns the table, its apply rule, its snapshot form and [`RoleView`], the applied state in
//! memory. Must not touch: what a role allows (the layers above decide).

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use redb::{ReadableTable, TableDefinition};

use super::NodeId;
use crate::config::NodeRole;

/// Witnesses by node id (the value is 1; data nodes are absent).
pub const ROLES: TableDefinition<u64, u8> = TableDefinition::new("sm_roles");

/// Marks `node` with `role` (a data node is removed from the table).
pub fn apply(t: &mut redb::Table<'_, u64, u8>, node: NodeId, role: NodeRole) -> Result<(), redb::StorageError> {
    match role {
        NodeRole::Witness => {
            t.insert(node, 1)?;
        }
        NodeRole::Data => {
            t.remove(node)?;
        }
    }
    Ok(())
}

/// Every node the table marks, with its role (the snapshot's `roles` section).
pub fn load(t: &impl ReadableTable<u64, u8>) -> Result<Vec<(NodeId, NodeRole)>, String> {
    let mut out = Vec::new();
    for item in t.iter().map_err(|e| e.to_string())? {
        let (k, v) = item.map_err(|e| e.to_string())?;
        match v.value() {
            1 => out.push((k.value(), NodeRole::Witness)),
            other => return Err(format!("sm_roles: node {} has unknown role code {other}", k.value())),
        }
    }
    Ok(out)
}

/// Replaces the whole table with `roles` (a snapshot install).
pub fn store(t: &mut redb::Table<'_, u64, u8>, roles: &[(NodeId, NodeRole)]) -> Result<(), redb::StorageError> {
    t.retain(|_, _| false)?;
    for (node, role) in roles {
        apply(t, *node, *role)?;
    }
    Ok(())
}

/// This node's applied view of the roles, in memory: replaced by the state machine after
/// every committed role change and snapshot install; read by placement, the data plane and
/// the client plane.
#[derive(Clone, Debug, Default)]
pub struct RoleView(Arc<RwLock<BTreeSet<NodeId>>>);

impl RoleView {
    /// Whether the cluster knows `node` as a witness.
    pub fn is_witness(&self, node: NodeId) -> bool {
        match self.0.read() {
            Ok(g) => g.contains(&node),
            Err(p) => p.into_inner().contains(&node),
        }
    }

    /// The role the cluster knows `node` by.
    pub fn role(&self, node: NodeId) -> NodeRole {
        if self.is_witness(node) {
            NodeRole::Witness
        } else {
            NodeRole::Data
        }
    }

    /// Every witness.
    pub fn witnesses(&self) -> BTreeSet<NodeId> {
        match self.0.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn set(&self, w: BTreeSet<NodeId>) {
        match self.0.write() {
            Ok(mut g) => *g = w,
            Err(p) => *p.into_inner() = w,
        }
    }

    /// Loads the roles committed in `db`.
    pub(crate) fn reload(&self, db: &redb::Database) -> Result<(), String> {
        let tx = db.begin_read().map_err(|e| e.to_string())?;
        let roles = match tx.open_table(ROLES) {
            Ok(t) => load(&t)?,
            Err(redb::TableError::TableDoesNotExist(_)) => Vec::new(),
            Err(e) => return Err(e.to_string()),
        };
        self.set(
            roles
                .into_iter()
                .filter(|(_, r)| *r == NodeRole::Witness)
                .map(|(n, _)| n)
                .collect(),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_apply_store_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let db = redb::Database::create(dir.path().join("db")).unwrap();
        let view = RoleView::default();
        // A database written before roles existed: everyone is a data node.
        view.reload(&db).unwrap();
        assert_eq!(view.role(3), NodeRole::Data);
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(ROLES).unwrap();
            apply(&mut t, 3, NodeRole::Witness).unwrap();
            apply(&mut t, 4, NodeRole::Witness).unwrap();
            apply(&mut t, 4, NodeRole::Data).unwrap();
            assert_eq!(load(&t).unwrap(), vec![(3, NodeRole::Witness)]);
        }
        tx.commit().unwrap();
        view.reload(&db).unwrap();
        assert!(view.is_witness(3));
        assert!(!view.is_witness(4));
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(ROLES).unwrap();
            store(&mut t, &[(7, NodeRole::Witness)]).unwrap();
        }
        tx.commit().unwrap();
        view.reload(&db).unwrap();
        assert_eq!(view.witnesses(), BTreeSet::from([7]));
    }
}
