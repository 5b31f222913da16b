//! [`StateMachine`]: the handle over the database and the overlay, and its core methods:
//! construction, applying a run of KV entries to the overlay, and flushing generations to
//! redb. openraft's trait is in `openraft_impl.rs`, snapshots in `snapshot.rs`.
//!
//! Owns the state machine's fields. Must not decide what a command does (`apply.rs`) nor
//! the overlay's shape (`overlay.rs`).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Instant;

use openraft::{Entry, EntryPayload, StorageError, StoredMembership};
use redb::Database;

use super::apply::*;
use super::overlay::*;
use super::reader::KvReader;
use super::sessions::*;
use super::snapshot_file::SnapshotFiles;
use super::tables::*;
use crate::raft::auth::AuthView;
use crate::raft::codec::decode;
use crate::raft::{revision, Command, NodeId, OpResult, Response, TypeConfig};

/// The state machine over the shared database.
#[derive(Clone)]
pub struct StateMachine {
    pub(super) db: Arc<Database>,
    pub(super) overlay: SharedOverlay,
    /// Held by whoever writes a generation to redb; flushes run one at a time, in order.
    pub(super) flush_lock: Arc<tokio::sync::Mutex<()>>,
    pub(super) applied_since_sweep: u64,
    /// When a flush last committed durably (see [`DURABLE_EVERY`]).
    pub(super) last_durable: Instant,
    /// Set while a snapshot is being received, until it is installed (the log store's purge
    /// waits for it).
    pub(super) receiving_snapshot: Arc<AtomicBool>,
    /// The newest `proposed_at_ms` applied: where a new leader's [`crate::raft::log_clock`]
    /// continues from.
    pub(super) log_time: Arc<AtomicU64>,
    /// The applied authorization state, for the client plane (reloaded after every entry
    /// that changes it and after a snapshot install).
    pub(super) auth: AuthView,
    /// The applied node roles (which members are witnesses), reloaded like `auth`.
    pub(super) roles: crate::raft::roles::RoleView,
    /// Transactions that applied entries straight to redb (tests check the grouping).
    pub(super) direct_commits: u64,
    /// Where the kept snapshot's body lives.
    pub(super) files: SnapshotFiles,
}

impl StateMachine {
    /// Wraps the database (opened by [`crate::raft::store::open_database`] on `data_dir`,
    /// where the kept snapshot's body file lives too).
    pub fn new(db: Arc<Database>, data_dir: &Path) -> Self {
        let log_time = match newest_session_stamp(&db) {
            Ok(t) => t,
            Err(e) => {
                // Only a new leader's first stamps depend on it (they then start from its
                // wall clock): worth a warning, not a refusal to start.
                tracing::warn!(error = %e, "cannot read the newest applied stamp");
                0
            }
        };
        let auth = AuthView::default();
        if let Err(e) = auth.reload(&db) {
            // Refusing every call would lock out even the admin; the grants come back with
            // the next change or snapshot. Loud, because until then only root is admin.
            tracing::error!(error = %e, "cannot read the authorization state; only the bootstrap admin is allowed");
        }
        let roles = crate::raft::roles::RoleView::default();
        if let Err(e) = roles.reload(&db) {
            // Until the next role change or snapshot every member counts as a data node;
            // a witness then refuses chunk writes itself, so nothing is stored there.
            tracing::error!(error = %e, "cannot read the node roles; every member counts as a data node");
        }
        let sm = Self {
            auth,
            roles,
            db,
            overlay: SharedOverlay::default(),
            flush_lock: Arc::default(),
            applied_since_sweep: 0,
            last_durable: Instant::now(),
            receiving_snapshot: Arc::default(),
            log_time: Arc::new(AtomicU64::new(log_time)),
            direct_commits: 0,
            files: SnapshotFiles::new(data_dir),
        };
        if let Err(e) = sm.remove_unnamed_snapshot_files() {
            // Only disk space is at stake: they are removed at the next start.
            tracing::warn!(error = %e, "cannot remove snapshot files no record names");
        }
        sm
    }

    /// The newest stamp applied, for [`crate::raft::log_clock::LogClock::new`].
    pub fn log_time(&self) -> Arc<AtomicU64> {
        self.log_time.clone()
    }

    /// The flag that is set while a snapshot is received and not yet installed, for
    /// [`crate::raft::store::LogStore::with_snapshot_gate`].
    pub fn snapshot_gate(&self) -> Arc<AtomicBool> {
        self.receiving_snapshot.clone()
    }

    /// The applied authorization state, shared with the client plane.
    pub fn auth_view(&self) -> AuthView {
        self.auth.clone()
    }

    /// Re-reads the authorization state after a commit that may have changed it. A failure
    /// here is a failure to read the state machine's own database: fatal to the apply.
    pub(super) fn reload_auth(&self) -> Result<(), StorageError<NodeId>> {
        self.auth
            .reload(&self.db)
            .map_err(|e| sm_read_err(std::io::Error::other(e)))
    }

    /// The applied node roles, shared with the layers above.
    pub fn role_view(&self) -> crate::raft::roles::RoleView {
        self.roles.clone()
    }

    /// Re-reads the node roles after a commit that may have changed them.
    pub(super) fn reload_roles(&self) -> Result<(), StorageError<NodeId>> {
        self.roles
            .reload(&self.db)
            .map_err(|e| sm_read_err(std::io::Error::other(e)))
    }

    /// A reader of this state machine's KV records, overlay included.
    pub fn reader(&self) -> KvReader {
        KvReader {
            db: self.db.clone(),
            overlay: self.overlay.clone(),
        }
    }
}

impl StateMachine {
    pub(super) fn read_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StorageError<NodeId>> {
        crate::raft::db::read_value(&self.db, SM_META, key).map_err(|e| sm_read_err(std::io::Error::other(e)))
    }
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

impl StateMachine {
    /// Whether the next flush commits durably, and the timestamp to sweep sessions at.
    pub(super) fn flush_plan(&mut self, gen: &Gen, direct: &[Entry<TypeConfig>]) -> (bool, Option<u64>) {
        let durable = self.last_durable.elapsed() >= DURABLE_EVERY;
        if durable {
            self.last_durable = Instant::now();
        }
        let mut newest = gen.newest_ms;
        for e in direct {
            if let EntryPayload::Normal(req) = &e.payload {
                self.applied_since_sweep += req.ops.len() as u64;
                newest = newest.max(req.proposed_at_ms);
            }
        }
        let sweep_at = (self.applied_since_sweep >= SESSION_SWEEP_EVERY && newest > 0).then(|| {
            self.applied_since_sweep = 0;
            newest
        });
        (durable, sweep_at)
    }

    /// Starts writing the active generation to redb on a blocking thread once it is due,
    /// unless a flush is still running (then it waits only if the generation grew too big).
    pub(super) async fn flush_in_background(&mut self) {
        let overlay = self.overlay.clone();
        let (due, too_big) = match overlay.read() {
            Ok(ov) if ov.failed.is_none() => (ov.active.due(), ov.active.too_big()),
            _ => return,
        };
        if !due {
            return;
        }
        let guard = match self.flush_lock.clone().try_lock_owned() {
            Ok(g) => g,
            Err(_) if too_big => self.flush_lock.clone().lock_owned().await,
            Err(_) => return,
        };
        let (gen, durable, sweep_at) = {
            let Ok(mut ov) = overlay.write() else { return };
            let gen = ov.freeze();
            let (durable, sweep_at) = self.flush_plan(&gen, &[]);
            (gen, durable, sweep_at)
        };
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = commit_frozen(&db, &overlay, &gen, &[], durable, sweep_at) {
                tracing::error!(error = %e, "state machine flush failed");
            }
            drop(guard);
        });
    }

    /// Writes everything applied so far to redb and returns when it is committed (before a
    /// snapshot reads redb).
    pub(super) async fn flush_overlay(&mut self) -> Result<(), StorageError<NodeId>> {
        let _flushing = self.flush_lock.clone().lock_owned().await;
        let overlay = self.overlay.clone();
        let mut ov = overlay.write().map_err(|_| poisoned())?;
        ov.check()?;
        if !ov.active.is_empty() {
            let (durable, sweep_at) = self.flush_plan(&ov.active, &[]);
            commit_gen(&self.db, &ov.active, &[], durable, sweep_at)?;
            ov.active = Gen::default();
        }
        Ok(())
    }
}
