//! Snapshots: the body (every KV record, session and object record) built from one read
//! transaction, and the install of a received one. Which one is kept is `kept.rs`'s.
//!
//! Owns the snapshot format ([`SnapshotBody`]) and the snapshot tables. Must not apply log
//! entries; an install replaces every table and the overlay at once.

use std::io::Cursor;
use std::time::Instant;

use openraft::{LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta, StorageError, StorageIOError, StoredMembership};
use redb::{Database, Durability, ReadableTable};
use serde::{Deserialize, Serialize};

use super::kept::{keep, keep_built, settle};
use super::machine::StateMachine;
use super::overlay::Overlay;
use super::sessions::{pack_ids, SessionRecord};
use super::tables::{
    obj_tables, poisoned, sm_read_err, sm_write_err, StoredValue, KEY_APPLIED, KEY_MEMBERSHIP, KV, SESSIONS,
    SESSIONS_BY_TIME, SM_META,
};
use crate::raft::auth;
use crate::raft::codec::{decode, decode_with_limit, encode};
use crate::raft::objects::{self, NsKeys, ObjSnapshot};
use crate::raft::roles;
use crate::raft::{ArkNode, NodeId, TypeConfig};

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SnapshotBody {
    pub(super) kv: Vec<(String, StoredValue)>,
    pub(super) sessions: Vec<(Vec<u8>, SessionRecord)>,
    pub(super) objects: ObjSnapshot,
    /// Named sections, each its own encoded value ([`SECTION_AUTH`], ...), so that state
    /// added later needs a new name, not a new layout. Absent from snapshots written before
    /// sections existed ([`SnapshotBodyV1`]).
    pub(super) sections: Vec<(String, serde_bytes::ByteBuf)>,
}

/// The layout before [`SnapshotBody::sections`]: still read, from a kept snapshot or a leader
/// of the previous release.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotBodyV1 {
    kv: Vec<(String, StoredValue)>,
    sessions: Vec<(Vec<u8>, SessionRecord)>,
    objects: ObjSnapshot,
}

/// The section holding the authorization state (`raft::auth::AuthState`).
pub(super) const SECTION_AUTH: &str = "auth";
/// The section holding encrypted namespaces' wrapped data keys (`Vec<(String, NsKeys)>`).
const SECTION_NS_KEYS: &str = "ns_keys";
/// The section holding the node roles (`Vec<(NodeId, NodeRole)>`, `raft::roles`); absent
/// from snapshots written before witnesses existed, which means "every node is a data node".
const SECTION_ROLES: &str = "roles";

/// A received or stored snapshot body, in this release's layout or the previous one. The
/// current one first: postcard ignores trailing bytes, so the old layout would also "decode"
/// a new body. The previous layout is taken only when it spans the bytes exactly, so that a
/// new body cut short inside its sections is an error rather than a body without them.
pub(super) fn decode_body(data: &[u8]) -> Result<SnapshotBody, crate::raft::codec::CodecError> {
    let new_err = match decode_with_limit::<SnapshotBody>(data, data.len() as u64) {
        Ok(b) => return Ok(b),
        Err(e) => e,
    };
    let v1 = match data.strip_prefix(&crate::raft::codec::TAG) {
        Some(body) => match postcard::take_from_bytes::<SnapshotBodyV1>(body) {
            Ok((v1, [])) => v1,
            _ => return Err(new_err),
        },
        // Written by a release that used bincode 1 (before the tag), hence before sections.
        None => decode_with_limit::<SnapshotBodyV1>(data, data.len() as u64).map_err(|_| new_err)?,
    };
    Ok(SnapshotBody {
        kv: v1.kv,
        sessions: v1.sessions,
        objects: v1.objects,
        sections: Vec::new(),
    })
}

/// What a snapshot body holds, counted (for an operator restoring one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodySummary {
    /// KV records.
    pub keys: usize,
    /// Request ids remembered for exactly-once retries.
    pub sessions: usize,
    /// Namespaces.
    pub namespaces: usize,
    /// Object versions (manifests).
    pub objects: usize,
    /// Chunk location records.
    pub chunks: usize,
    /// Named sections present.
    pub sections: Vec<String>,
}

/// Decodes a body completely (every section included) without installing it: a body that
/// passes installs, barring a failing disk.
pub(crate) fn check_body(data: &[u8]) -> Result<BodySummary, crate::raft::codec::CodecError> {
    let body = decode_body(data)?;
    body.sections()?;
    Ok(BodySummary {
        keys: body.kv.len(),
        sessions: body.sessions.len(),
        namespaces: body.objects.ns.len(),
        objects: body.objects.objects.len(),
        chunks: body.objects.chunks.len(),
        sections: body.sections.iter().map(|(n, _)| n.clone()).collect(),
    })
}

impl SnapshotBody {
    fn section(&self, name: &str) -> Option<&[u8]> {
        self.sections.iter().find(|(n, _)| n == name).map(|(_, b)| b.as_slice())
    }

    /// Every named section decoded; an absent one is its empty state (bodies written before
    /// it existed). A section that does not decode is an error, never a default.
    fn sections(&self) -> Result<Sections, crate::raft::codec::CodecError> {
        fn one<T: serde::de::DeserializeOwned + Default>(
            b: &SnapshotBody,
            name: &str,
        ) -> Result<T, crate::raft::codec::CodecError> {
            match b.section(name) {
                Some(bytes) => decode_with_limit(bytes, bytes.len() as u64),
                None => Ok(T::default()),
            }
        }
        Ok(Sections {
            ns_keys: one(self, SECTION_NS_KEYS)?,
            auth: one(self, SECTION_AUTH)?,
            roles: one(self, SECTION_ROLES)?,
        })
    }
}

impl StateMachine {
    /// Installs a received snapshot: every table replaced at once, the body kept as the
    /// node's snapshot. A body that does not decode completely (its sections included) is
    /// refused before anything is written; a failure after the body file is written removes
    /// it again, so only a committed record ever names a file.
    pub(crate) async fn install(
        &mut self,
        meta: &SnapshotMeta<NodeId, ArkNode>,
        data: Vec<u8>,
    ) -> Result<(), StorageError<NodeId>> {
        // A snapshot holds the whole state and may be larger than a frame: it is bounded by
        // the bytes received, which the decoder never reads past. Decoding it and writing it
        // out take seconds at a million objects: on the snapshot thread.
        let (files, signature) = (self.files.clone(), meta.signature());
        let (body, state, file) = off_runtime(move || {
            let refused = |e: crate::raft::codec::CodecError| {
                StorageError::from(StorageIOError::read_snapshot(Some(signature.clone()), &e))
            };
            let body: SnapshotBody = decode_body(&data).map_err(refused)?;
            let state = body.sections().map_err(refused)?;
            // The body goes to its file first, durably; nothing names it until the commit below.
            let file = files.write(&data).map_err(sm_write_err)?;
            Ok((body, state, file))
        })
        .await?;
        // The snapshot replaces everything, the overlay included; readers wait meanwhile.
        // Replacing every table takes seconds at a million objects: on the snapshot thread.
        let _flushing = self.flush_lock.clone().lock_owned().await;
        let (db, overlay, files, meta) = (self.db.clone(), self.overlay.clone(), self.files.clone(), meta.clone());
        off_runtime(move || {
            settle(&files, &file, || {
                let mut ov = overlay.write().map_err(|_| poisoned())?;
                let mut tx = db.begin_write().map_err(sm_write_err)?;
                tx.set_durability(Durability::Immediate);
                replace_tables(&tx, &meta, &body, &state)?;
                let replaced = keep(&tx, &meta, &file)?;
                tx.commit().map_err(sm_write_err)?;
                // Only now: a failed install leaves the applied writes the overlay holds.
                *ov = Overlay::default();
                Ok(replaced)
            })
        })
        .await?;
        self.reload_auth()?;
        self.reload_roles()?;
        self.last_durable = Instant::now();
        metrics::counter!("ark_raft_snapshots_installed_total").increment(1);
        Ok(())
    }
}

/// A body's named sections, decoded.
struct Sections {
    ns_keys: Vec<(String, NsKeys)>,
    auth: auth::AuthState,
    roles: Vec<(NodeId, crate::config::NodeRole)>,
}

/// Every table of the state machine emptied and filled from `body` and `state`, and the
/// applied position set to `meta`'s, in `tx` (not committed).
fn replace_tables(
    tx: &redb::WriteTransaction,
    meta: &SnapshotMeta<NodeId, ArkNode>,
    body: &SnapshotBody,
    state: &Sections,
) -> Result<(), StorageError<NodeId>> {
    let mut kv = tx.open_table(KV).map_err(sm_write_err)?;
    kv.retain(|_, _| false).map_err(sm_write_err)?;
    for (k, v) in &body.kv {
        let b = encode(v).map_err(sm_write_err)?;
        kv.insert(k.as_str(), b.as_slice()).map_err(sm_write_err)?;
    }
    let mut s = tx.open_table(SESSIONS).map_err(sm_write_err)?;
    s.retain(|_, _| false).map_err(sm_write_err)?;
    let mut bt = tx.open_table(SESSIONS_BY_TIME).map_err(sm_write_err)?;
    bt.retain(|_, _| false).map_err(sm_write_err)?;
    let mut buckets: std::collections::BTreeMap<u64, Vec<&[u8]>> = Default::default();
    for (id, rec) in &body.sessions {
        let b = encode(rec).map_err(sm_write_err)?;
        s.insert(id.as_slice(), b.as_slice()).map_err(sm_write_err)?;
        buckets.entry(rec.applied_at_ms).or_default().push(id.as_slice());
    }
    for (at, ids) in buckets {
        let packed = pack_ids(ids.into_iter());
        bt.insert((at, 0), packed.as_slice()).map_err(sm_write_err)?;
    }
    let mut ot = obj_tables(tx)?;
    objects::import(&mut ot, &body.objects).map_err(|e| sm_write_err(std::io::Error::other(e)))?;
    objects::import_keys(&mut ot, &state.ns_keys).map_err(|e| sm_write_err(std::io::Error::other(e)))?;
    drop(ot);
    let mut at = tx.open_table(auth::AUTH).map_err(sm_write_err)?;
    auth::store(&mut at, &state.auth).map_err(|e| sm_write_err(std::io::Error::other(e)))?;
    let mut rt = tx.open_table(roles::ROLES).map_err(sm_write_err)?;
    roles::store(&mut rt, &state.roles).map_err(sm_write_err)?;
    let mut m = tx.open_table(SM_META).map_err(sm_write_err)?;
    let a = encode(&meta.last_log_id).map_err(sm_write_err)?;
    m.insert(KEY_APPLIED, a.as_slice()).map_err(sm_write_err)?;
    let b = encode(&meta.last_membership).map_err(sm_write_err)?;
    m.insert(KEY_MEMBERSHIP, b.as_slice()).map_err(sm_write_err)?;
    Ok(())
}

impl StateMachine {
    /// Everything applied so far, as a snapshot body and its meta, without keeping it: what
    /// openraft's snapshot builder stores, and what a metadata backup (`raft::backup`)
    /// writes to a file. Covers at least every entry applied when it was called.
    pub(crate) async fn export(&mut self) -> Result<Exported, StorageError<NodeId>> {
        // Everything applied so far goes to redb first; then one read transaction gives the
        // tables and the applied position as one consistent view even while apply() goes on.
        self.flush_overlay().await?;
        // Reading and encoding every record takes seconds at a million objects: off the
        // runtime, whose workers also carry heartbeats and replication.
        let db = self.db.clone();
        off_runtime(move || export_db(&db)).await
    }
}

/// A snapshot's meta and its encoded body.
pub(crate) type Exported = (SnapshotMeta<NodeId, ArkNode>, Vec<u8>);

/// A piece of snapshot work for [`snapshot_jobs`]'s thread.
type Job = Box<dyn FnOnce() + Send>;

/// The one thread snapshot work runs on, started at first use. Off the runtime: at a million
/// objects a build takes seconds, and a runtime worker held that long delayed the leader's
/// heartbeats past the election timeout. And always the same thread: a build allocates about
/// as much as the state it encodes, and memory freed on a thread stays in that thread's malloc
/// arena, so on the blocking pool's changing threads each build left its own (measured: RSS
/// 2.1-2.6 GiB instead of about 1 GiB per node at 1M objects); here each build reuses the last
/// one's.
fn snapshot_jobs() -> Result<&'static std::sync::mpsc::Sender<Job>, StorageError<NodeId>> {
    static JOBS: std::sync::OnceLock<std::sync::mpsc::Sender<Job>> = std::sync::OnceLock::new();
    if let Some(j) = JOBS.get() {
        return Ok(j);
    }
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("ark-snapshot".into())
        .spawn(move || {
            for job in rx {
                job();
            }
        })
        .map_err(|e| sm_read_err(std::io::Error::other(format!("cannot start the snapshot thread: {e}"))))?;
    // Two callers racing here start two threads; the one whose sender is not kept ends at once.
    Ok(JOBS.get_or_init(|| tx))
}

/// Runs `f` on the snapshot thread ([`snapshot_jobs`]); a panic there is a storage error.
pub(super) async fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StorageError<NodeId>> + Send + 'static,
) -> Result<T, StorageError<NodeId>> {
    let stopped = || sm_read_err(std::io::Error::other("the snapshot thread stopped"));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .unwrap_or_else(|_| Err(sm_read_err(std::io::Error::other("the snapshot work panicked"))));
        let _ = tx.send(r);
    });
    snapshot_jobs()?.send(job).map_err(|_| stopped())?;
    rx.await.map_err(|_| stopped())?
}

/// The body of [`StateMachine::export`], from one read transaction of `db`.
fn export_db(db: &Database) -> Result<Exported, StorageError<NodeId>> {
    let tx = db.begin_read().map_err(sm_read_err)?;
    let m = tx.open_table(SM_META).map_err(sm_read_err)?;
    let last_applied: Option<LogId<NodeId>> = match m.get(KEY_APPLIED).map_err(sm_read_err)? {
        Some(v) => decode(v.value()).map_err(sm_read_err)?,
        None => None,
    };
    let membership: StoredMembership<NodeId, ArkNode> = match m.get(KEY_MEMBERSHIP).map_err(sm_read_err)? {
        Some(v) => decode(v.value()).map_err(sm_read_err)?,
        None => StoredMembership::default(),
    };
    let kvt = tx.open_table(KV).map_err(sm_read_err)?;
    let mut kv = Vec::new();
    for item in kvt.iter().map_err(sm_read_err)? {
        let (k, v) = item.map_err(sm_read_err)?;
        kv.push((k.value().to_string(), decode(v.value()).map_err(sm_read_err)?));
    }
    let st = tx.open_table(SESSIONS).map_err(sm_read_err)?;
    let mut sessions = Vec::new();
    for item in st.iter().map_err(sm_read_err)? {
        let (k, v) = item.map_err(sm_read_err)?;
        sessions.push((k.value().to_vec(), decode(v.value()).map_err(sm_read_err)?));
    }
    let objects = objects::export(&tx).map_err(|e| sm_read_err(std::io::Error::other(e)))?;
    let at = tx.open_table(auth::AUTH).map_err(sm_read_err)?;
    let auth_state = auth::load(&at).map_err(|e| sm_read_err(std::io::Error::other(e)))?;
    let ns_keys = objects::export_keys(&tx).map_err(|e| sm_read_err(std::io::Error::other(e)))?;
    let rt = tx.open_table(roles::ROLES).map_err(sm_read_err)?;
    let node_roles = roles::load(&rt).map_err(|e| sm_read_err(std::io::Error::other(e)))?;
    let sections = vec![
        (
            SECTION_AUTH.to_string(),
            serde_bytes::ByteBuf::from(encode(&auth_state).map_err(sm_read_err)?),
        ),
        (
            SECTION_NS_KEYS.to_string(),
            serde_bytes::ByteBuf::from(encode(&ns_keys).map_err(sm_read_err)?),
        ),
        (
            SECTION_ROLES.to_string(),
            serde_bytes::ByteBuf::from(encode(&node_roles).map_err(sm_read_err)?),
        ),
    ];
    let data = encode(&SnapshotBody {
        kv,
        sessions,
        objects,
        sections,
    })
    .map_err(sm_read_err)?;
    let snapshot_id = match last_applied {
        Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, rand::random::<u32>()),
        None => format!("empty-{}", rand::random::<u32>()),
    };
    Ok((
        SnapshotMeta {
            last_log_id: last_applied,
            last_membership: membership,
            snapshot_id,
        },
        data,
    ))
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let started = Instant::now();
        let (meta, data) = self.export().await?;
        let db = self.db.clone();
        let kept = meta.clone();
        let files = self.files.clone();
        let data = off_runtime(move || {
            keep_built(&db, &files, &kept, &data)?;
            Ok(data)
        })
        .await?;
        metrics::counter!("ark_raft_snapshots_built_total").increment(1);
        metrics::histogram!("ark_raft_snapshot_build_seconds").record(started.elapsed().as_secs_f64());
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

/// Describes this file's metrics (HELP text and unit) to the recorder; called once at
/// start-up by `server` (through `metrics::install`).
pub(crate) fn describe_metrics() {
    use metrics::{describe_counter, describe_histogram, Unit};
    describe_counter!(
        "ark_raft_snapshots_installed_total",
        "Raft snapshots received from a leader and installed."
    );
    describe_counter!("ark_raft_snapshots_built_total", "Raft snapshots built by this node.");
    describe_counter!(
        "ark_raft_snapshots_damaged_total",
        "Kept snapshots found damaged or missing when asked for (never sent; a new one is built)."
    );
    describe_histogram!(
        "ark_raft_snapshot_build_seconds",
        Unit::Seconds,
        "Time to build one Raft snapshot: write the applied state out, read and encode every record, store it."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_of_both_layouts_decode_and_sections_survive() {
        let kv = vec![(
            "k".to_string(),
            StoredValue {
                revision: 7,
                value: b"v".to_vec(),
            },
        )];
        // The layout before sections: the same fields in order, nothing after them.
        let v1 = encode(&(
            kv.clone(),
            Vec::<(Vec<u8>, SessionRecord)>::new(),
            ObjSnapshot::default(),
        ))
        .unwrap();
        let b = decode_body(&v1).unwrap();
        assert_eq!(b.kv, kv);
        assert!(b.sections.is_empty());

        let auth = crate::raft::auth::AuthState {
            locked: true,
            ..Default::default()
        };
        let v2 = encode(&SnapshotBody {
            kv: kv.clone(),
            sessions: Vec::new(),
            objects: ObjSnapshot::default(),
            sections: vec![(SECTION_AUTH.into(), serde_bytes::ByteBuf::from(encode(&auth).unwrap()))],
        })
        .unwrap();
        let b = decode_body(&v2).unwrap();
        assert_eq!(b.kv, kv);
        let back: crate::raft::auth::AuthState = decode(b.section(SECTION_AUTH).unwrap()).unwrap();
        assert_eq!(back, auth);
        // A new body cut short is an error, not an old body without its sections.
        assert!(decode_body(&v2[..v2.len() - 3]).is_err());

        let keys = vec![(
            "enc".to_string(),
            NsKeys {
                generations: vec![crate::raft::objects::WrappedKey {
                    generation: 1,
                    kek_id: [4; 8],
                    wrapped: vec![5; 60],
                    created_ms: 6,
                }],
            },
        )];
        let v3 = encode(&SnapshotBody {
            kv: Vec::new(),
            sessions: Vec::new(),
            objects: ObjSnapshot::default(),
            sections: vec![(
                SECTION_NS_KEYS.into(),
                serde_bytes::ByteBuf::from(encode(&keys).unwrap()),
            )],
        })
        .unwrap();
        let b = decode_body(&v3).unwrap();
        let back: Vec<(String, NsKeys)> = decode(b.section(SECTION_NS_KEYS).unwrap()).unwrap();
        assert_eq!(back, keys);
        let node_roles = vec![(3u64, crate::config::NodeRole::Witness)];
        let v4 = encode(&SnapshotBody {
            kv: Vec::new(),
            sessions: Vec::new(),
            objects: ObjSnapshot::default(),
            sections: vec![(
                SECTION_ROLES.into(),
                serde_bytes::ByteBuf::from(encode(&node_roles).unwrap()),
            )],
        })
        .unwrap();
        let b = decode_body(&v4).unwrap();
        let back: Vec<(NodeId, crate::config::NodeRole)> = decode(b.section(SECTION_ROLES).unwrap()).unwrap();
        assert_eq!(back, node_roles);
        // Damage is an error, never a default.
        assert!(decode_body(&v2[..v2.len() / 2]).is_err());
    }
}
