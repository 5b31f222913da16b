//! The openraft `RaftStateMachine` implementation: the applied state, the apply loop that
//! sends runs of KV entries to the overlay and commits an object entry with everything before
//! it, and the snapshot hand-offs.
//!
//! Owns only the glue to openraft's trait; the rules live in `apply.rs`, flushing in
//! `overlay.rs`, snapshots in `snapshot.rs`.

use std::io::Cursor;
use std::sync::atomic::Ordering;

use openraft::storage::RaftStateMachine;
use openraft::{Entry, EntryPayload, LogId, OptionalSend, Snapshot, SnapshotMeta, StorageError, StoredMembership};

use super::apply::overlay_ok;
use super::machine::StateMachine;
use super::overlay::{commit_gen, Gen};
use super::tables::{poisoned, KEY_APPLIED, KEY_MEMBERSHIP};
use crate::raft::{ArkNode, Command, NodeId, Response, TypeConfig};

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, ArkNode>), StorageError<NodeId>> {
        {
            let ov = self.overlay.read().map_err(|_| poisoned())?;
            let frozen = ov.frozen.as_deref();
            let applied = ov.active.last_applied.or(frozen.and_then(|f| f.last_applied));
            if let Some(applied) = applied {
                let membership = match ov
                    .active
                    .membership
                    .as_ref()
                    .or(frozen.and_then(|f| f.membership.as_ref()))
                {
                    Some(m) => m.clone(),
                    None => self.read_meta(KEY_MEMBERSHIP)?.unwrap_or_default(),
                };
                return Ok((Some(applied), membership));
            }
        }
        let applied = self.read_meta::<Option<LogId<NodeId>>>(KEY_APPLIED)?.flatten();
        let membership = self.read_meta(KEY_MEMBERSHIP)?.unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Response>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let overlay = self.overlay.clone();
        let log_time = self.log_time.clone();
        let mut entries = entries
            .into_iter()
            .inspect(|e| {
                if let EntryPayload::Normal(req) = &e.payload {
                    log_time.fetch_max(req.proposed_at_ms, Ordering::AcqRel);
                }
            })
            .peekable();
        let mut out = Vec::new();
        loop {
            {
                // One lock for a run of KV entries: a background flush cannot retire the
                // frozen generation meanwhile, so the redb view opened below stays complete.
                let mut ov = overlay.write().map_err(|_| poisoned())?;
                ov.check()?;
                let mut stored = None;
                while let Some(e) = entries.next_if(overlay_ok) {
                    out.push(self.apply_to_overlay(&mut ov, &mut stored, e)?);
                }
            }
            let Some(e) = entries.next() else { break };
            // An object entry: everything before it goes to redb with it, in one transaction.
            let _flushing = self.flush_lock.clone().lock_owned().await;
            let mut ov = overlay.write().map_err(|_| poisoned())?;
            ov.check()?;
            let (durable, sweep_at) = self.flush_plan(&ov.active, Some(&e));
            let r = commit_gen(&self.db, &ov.active, Some(&e), durable, sweep_at)?;
            ov.active = Gen::default();
            if changes_auth(&e) {
                self.reload_auth()?;
            }
            if changes_roles(&e) {
                self.reload_roles()?;
            }
            out.push(r);
        }
        self.flush_in_background().await;
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        self.receiving_snapshot.store(true, Ordering::Release);
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, ArkNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let res = self.install(meta, snapshot.into_inner()).await;
        self.receiving_snapshot.store(false, Ordering::Release);
        res
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        self.current_snapshot()
    }
}

/// Whether an entry holds a role change (the in-memory [`crate::raft::roles::RoleView`] is
/// then reloaded).
fn changes_roles(e: &Entry<TypeConfig>) -> bool {
    match &e.payload {
        EntryPayload::Normal(req) => req.ops.iter().any(|o| matches!(o.command, Command::SetRole { .. })),
        _ => false,
    }
}

/// Whether an entry holds an authorization change (the in-memory view is then reloaded).
fn changes_auth(e: &Entry<TypeConfig>) -> bool {
    match &e.payload {
        EntryPayload::Normal(req) => req.ops.iter().any(|o| matches!(o.command, Command::Auth(_))),
        _ => false,
    }
}
