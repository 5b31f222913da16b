//! Which snapshot is kept: its meta and the record of its body's file in redb, read back
//! checked ([`kept_snapshot`]), replaced by a build or an install ([`keep`], [`keep_built`]),
//! the file no record names once that commits removed ([`settle`]), and the ones left by a
//! crash removed at open.
//!
//! Owns the `sm_snapshot` table's records. Must not build or decode a body (`snapshot.rs`)
//! nor name, write or check a file (`snapshot_file.rs`).

use std::io::Cursor;

use openraft::{Snapshot, SnapshotMeta, StorageError};
use redb::{Database, Durability, ReadableTable};
use serde::{Deserialize, Serialize};

use super::machine::StateMachine;
use super::snapshot_file::{BodyFile, SnapshotFiles};
use super::tables::{sm_read_err, sm_write_err, KEY_SNAP_DATA, KEY_SNAP_FILE, KEY_SNAP_META, SNAPSHOT};
use crate::raft::codec::{decode, encode};
use crate::raft::{ArkNode, NodeId, TypeConfig};

#[derive(Debug, Serialize, Deserialize)]
/// The kept snapshot's meta, as stored.
pub(super) struct StoredSnapshot {
    pub(super) meta: SnapshotMeta<NodeId, ArkNode>,
}

/// The kept snapshot, read back and checked. A body whose file is damaged or missing is
/// [`Kept::Damaged`], never handed out. Blocking (it reads and hashes the whole body):
/// callers run it on the snapshot thread.
pub(super) fn kept_snapshot(db: &Database, files: &SnapshotFiles) -> Result<Kept, StorageError<NodeId>> {
    // A build may replace the kept snapshot (and remove its file) between reading the
    // record and reading the file: a missing file is looked up again once.
    let mut missing = None;
    for _ in 0..2 {
        let (meta, file, inline) = {
            let tx = db.begin_read().map_err(sm_read_err)?;
            let t = tx.open_table(SNAPSHOT).map_err(sm_read_err)?;
            let Some(meta) = kept_meta(&t)? else {
                return Ok(Kept::None);
            };
            let file = body_file(&t)?;
            // Kept by a release that stored the body in redb.
            let inline = match &file {
                Some(_) => None,
                None => t.get(KEY_SNAP_DATA).map_err(sm_read_err)?.map(|d| d.value().to_vec()),
            };
            (meta, file, inline)
        };
        let data = match (file, inline) {
            (Some(f), _) => match files.read(&f) {
                Ok(d) => d,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && missing.is_none() => {
                    missing = Some(e.to_string());
                    continue;
                }
                Err(e) => return Ok(Kept::Damaged(e.to_string())),
            },
            (None, Some(d)) => d,
            (None, None) => return Ok(Kept::None),
        };
        return Ok(Kept::Snapshot(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }));
    }
    Ok(Kept::Damaged(missing.unwrap_or_default()))
}

impl StateMachine {
    /// Removes snapshot files no record names (a crash between writing one and committing
    /// its record, or before removing the one it replaced). Run when the state machine is
    /// opened, before anything else can write one.
    pub(super) fn remove_unnamed_snapshot_files(&self) -> Result<(), StorageError<NodeId>> {
        let tx = self.db.begin_read().map_err(sm_read_err)?;
        let t = tx.open_table(SNAPSHOT).map_err(sm_read_err)?;
        let kept = body_file(&t)?.map(|f| f.name);
        self.files.remove_all_but(kept.as_deref()).map_err(sm_write_err)
    }
}

/// What [`kept_snapshot`] found.
pub(super) enum Kept {
    None,
    Snapshot(Snapshot<TypeConfig>),
    /// Its body is missing or fails its check: why.
    Damaged(String),
}

/// Records `file` as the kept snapshot's body with `meta`, in `tx`, dropping a body kept by
/// an older release in redb; the name of the file it replaced, which [`settle`] removes once
/// `tx` has committed.
pub(super) fn keep(
    tx: &redb::WriteTransaction,
    meta: &SnapshotMeta<NodeId, ArkNode>,
    file: &BodyFile,
) -> Result<Option<String>, StorageError<NodeId>> {
    let mut snap = tx.open_table(SNAPSHOT).map_err(sm_write_err)?;
    let replaced = body_file(&snap)?.map(|f| f.name);
    let m = encode(&StoredSnapshot { meta: meta.clone() }).map_err(sm_write_err)?;
    snap.insert(KEY_SNAP_META, m.as_slice()).map_err(sm_write_err)?;
    let f = encode(file).map_err(sm_write_err)?;
    snap.insert(KEY_SNAP_FILE, f.as_slice()).map_err(sm_write_err)?;
    snap.remove(KEY_SNAP_DATA).map_err(sm_write_err)?;
    Ok(replaced)
}

/// The kept snapshot's meta, if any.
fn kept_meta(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
) -> Result<Option<SnapshotMeta<NodeId, ArkNode>>, StorageError<NodeId>> {
    match t.get(KEY_SNAP_META).map_err(sm_read_err)? {
        Some(m) => Ok(Some(decode::<StoredSnapshot>(m.value()).map_err(sm_read_err)?.meta)),
        None => Ok(None),
    }
}

/// The record of the kept snapshot's body file, if it has one.
fn body_file(t: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<Option<BodyFile>, StorageError<NodeId>> {
    match t.get(KEY_SNAP_FILE).map_err(sm_read_err)? {
        Some(f) => Ok(Some(decode::<BodyFile>(f.value()).map_err(sm_read_err)?)),
        None => Ok(None),
    }
}

/// Settles the files after a new body file `file` was written: `commit` records it (or
/// decides not to) in a durable transaction and returns the name of the file no record names
/// afterwards (the one it replaced, or `file` itself when not kept), which is removed; if
/// `commit` fails, `file` is removed. So only a committed record ever names a file.
pub(super) fn settle(
    files: &SnapshotFiles,
    file: &BodyFile,
    commit: impl FnOnce() -> Result<Option<String>, StorageError<NodeId>>,
) -> Result<(), StorageError<NodeId>> {
    match commit() {
        Ok(unnamed) => {
            if let Some(name) = unnamed {
                files.remove_unkept(&name);
            }
            Ok(())
        }
        Err(e) => {
            files.remove_unkept(&file.name);
            Err(e)
        }
    }
}

/// Keeps a snapshot this node built: its body to a new file, then its record, unless a newer
/// snapshot was installed meanwhile (then that one stays and this file goes).
pub(super) fn keep_built(
    db: &Database,
    files: &SnapshotFiles,
    meta: &SnapshotMeta<NodeId, ArkNode>,
    data: &[u8],
) -> Result<(), StorageError<NodeId>> {
    let file = files.write(data).map_err(sm_write_err)?;
    settle(files, &file, || {
        // Durable: the record must not fall back to one whose file is removed afterwards.
        let mut tx = db.begin_write().map_err(sm_write_err)?;
        tx.set_durability(Durability::Immediate);
        // Strictly newer only: a build at the same index replaces the kept one (which is how
        // a damaged body is replaced, see `get_current_snapshot`).
        let kept = kept_meta(&tx.open_table(SNAPSHOT).map_err(sm_write_err)?)?;
        if kept.and_then(|m| m.last_log_id) > meta.last_log_id {
            return Ok(Some(file.name.clone()));
        }
        let replaced = keep(&tx, meta, &file)?;
        tx.commit().map_err(sm_write_err)?;
        Ok(replaced)
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    use super::*;

    fn put(index: u64, key: &str) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(crate::raft::Request {
                proposed_at_ms: 1_000 + index,
                ops: vec![crate::raft::Op {
                    request_id: format!("r{index}").into_bytes(),
                    command: crate::raft::Command::Put {
                        key: key.into(),
                        value: key.as_bytes().to_vec(),
                    },
                }],
            }),
        }
    }

    fn snapshot_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(dir.join("snapshots"))
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    fn inline_body(db: &Database) -> Option<Vec<u8>> {
        let tx = db.begin_read().unwrap();
        let t = tx.open_table(SNAPSHOT).unwrap();
        let v = t.get(KEY_SNAP_DATA).unwrap().map(|v| v.value().to_vec());
        v
    }

    async fn current(sm: &mut StateMachine) -> Option<Snapshot<TypeConfig>> {
        sm.get_current_snapshot().await.unwrap()
    }

    #[tokio::test]
    async fn the_kept_body_is_one_checked_file_and_a_damaged_one_is_rebuilt_never_sent() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::raft::store::open_database(dir.path()).unwrap();
        let mut sm = StateMachine::new(db.clone(), dir.path());
        assert!(current(&mut sm).await.is_none());
        sm.apply(vec![put(1, "a"), put(2, "b")]).await.unwrap();
        let built = sm.build_snapshot().await.unwrap();
        let body = built.snapshot.into_inner();
        let files = snapshot_files(dir.path());
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(std::fs::read(&files[0]).unwrap(), body);
        assert_eq!(inline_body(&db), None, "the body is not in redb");
        let kept = current(&mut sm).await.unwrap();
        assert_eq!(kept.meta, built.meta);
        assert_eq!(kept.snapshot.into_inner(), body);

        // A newer build replaces the file; the old one goes.
        sm.apply(vec![put(3, "c")]).await.unwrap();
        let newer = sm.build_snapshot().await.unwrap();
        let files = snapshot_files(dir.path());
        assert_eq!(files.len(), 1, "{files:?}");
        let body = newer.snapshot.into_inner();
        assert_eq!(std::fs::read(&files[0]).unwrap(), body);

        // One flipped byte: not handed out; a new snapshot of the same state replaces it.
        let mut bad = body.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x40;
        std::fs::write(&files[0], &bad).unwrap();
        let rebuilt = current(&mut sm).await.unwrap();
        assert_eq!(rebuilt.meta.last_log_id, newer.meta.last_log_id);
        assert_eq!(rebuilt.snapshot.into_inner(), body);
        let files = snapshot_files(dir.path());
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(std::fs::read(&files[0]).unwrap(), body);

        // A missing file likewise.
        std::fs::remove_file(&files[0]).unwrap();
        let rebuilt = current(&mut sm).await.unwrap();
        assert_eq!(rebuilt.snapshot.into_inner(), body);
    }

    #[tokio::test]
    async fn a_body_kept_in_redb_by_an_older_release_is_served_then_moved_and_strays_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::raft::store::open_database(dir.path()).unwrap();
        let mut sm = StateMachine::new(db.clone(), dir.path());
        sm.apply(vec![put(1, "a")]).await.unwrap();
        let (meta, body) = sm.export().await.unwrap();
        // As a release before the files kept it.
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(SNAPSHOT).unwrap();
            let m = encode(&StoredSnapshot { meta: meta.clone() }).unwrap();
            t.insert(KEY_SNAP_META, m.as_slice()).unwrap();
            t.insert(KEY_SNAP_DATA, body.as_slice()).unwrap();
        }
        tx.commit().unwrap();
        // A file a crash left behind before its record was committed.
        std::fs::create_dir_all(dir.path().join("snapshots")).unwrap();
        std::fs::write(dir.path().join("snapshots/00000000000000aa.snap"), b"torn").unwrap();
        drop(sm);

        let mut sm = StateMachine::new(db.clone(), dir.path());
        assert!(
            snapshot_files(dir.path()).is_empty(),
            "the unnamed file is removed at open"
        );
        let kept = current(&mut sm).await.unwrap();
        assert_eq!(kept.meta, meta);
        assert_eq!(kept.snapshot.into_inner(), body);
        sm.build_snapshot().await.unwrap();
        assert_eq!(
            inline_body(&db),
            None,
            "the next kept snapshot drops the body from redb"
        );
        assert_eq!(snapshot_files(dir.path()).len(), 1);
    }

    /// A snapshot built by another node that applied five puts of `key` (its dir with it).
    async fn leader_snapshot(key: &str) -> (tempfile::TempDir, Snapshot<TypeConfig>) {
        let src = tempfile::tempdir().unwrap();
        let mut leader = StateMachine::new(crate::raft::store::open_database(src.path()).unwrap(), src.path());
        leader
            .apply((1..=5).map(|i| put(i, key)).collect::<Vec<_>>())
            .await
            .unwrap();
        let s = leader.build_snapshot().await.unwrap();
        (src, s)
    }

    #[tokio::test]
    async fn an_install_keeps_the_received_body_and_an_older_build_does_not_replace_it() {
        let (_src, s) = leader_snapshot("k").await;

        let dir = tempfile::tempdir().unwrap();
        let db = crate::raft::store::open_database(dir.path()).unwrap();
        let mut sm = StateMachine::new(db.clone(), dir.path());
        sm.apply(vec![put(1, "k")]).await.unwrap();
        let (old_meta, old_body) = sm.export().await.unwrap();
        sm.build_snapshot().await.unwrap();
        let body = s.snapshot.into_inner();
        sm.install(&s.meta, body.clone()).await.unwrap();
        let files = snapshot_files(dir.path());
        assert_eq!(files.len(), 1, "the built one's file is removed: {files:?}");
        assert_eq!(current(&mut sm).await.unwrap().snapshot.into_inner(), body);

        // A build exported before the install and kept after it: the installed one stays.
        keep_built(&db, &sm.files, &old_meta, &old_body).unwrap();
        let kept = current(&mut sm).await.unwrap();
        assert_eq!(kept.meta.last_log_id, s.meta.last_log_id);
        assert_eq!(kept.snapshot.into_inner(), body);
        assert_eq!(snapshot_files(dir.path()), files);
    }

    /// A received body whose sections do not decode (here the authorization section) is
    /// refused before anything is written: no file, the kept snapshot and the state as they
    /// were. The same body with its section intact installs.
    #[tokio::test]
    async fn a_body_with_a_damaged_section_is_refused_before_anything_is_written() {
        use super::super::snapshot::{decode_body, SnapshotBody, SECTION_AUTH};
        let (_src, s) = leader_snapshot("new").await;
        let bytes = s.snapshot.into_inner();
        let good: SnapshotBody = decode_body(&bytes).unwrap();
        assert!(
            good.sections.iter().any(|(n, _)| n == SECTION_AUTH),
            "a built body has an authorization section"
        );
        let with_auth = |auth: Vec<u8>| {
            let mut b = decode_body(&bytes).unwrap();
            for (n, v) in &mut b.sections {
                if n == SECTION_AUTH {
                    *v = serde_bytes::ByteBuf::from(auth.clone());
                }
            }
            encode(&b).unwrap()
        };

        let dir = tempfile::tempdir().unwrap();
        let db = crate::raft::store::open_database(dir.path()).unwrap();
        let mut sm = StateMachine::new(db.clone(), dir.path());
        sm.apply(vec![put(1, "old")]).await.unwrap();
        let built = sm.build_snapshot().await.unwrap();
        let files = snapshot_files(dir.path());

        let err = sm.install(&s.meta, with_auth(vec![0xff; 7])).await.unwrap_err();
        assert!(err.to_string().contains("snapshot"), "{err}");
        assert_eq!(snapshot_files(dir.path()), files, "a refused body left a file");
        let kept = current(&mut sm).await.unwrap();
        assert_eq!(kept.meta, built.meta, "a refused body replaced the kept snapshot");
        assert!(
            sm.reader().get("old").unwrap().is_some(),
            "a refused body changed the state"
        );
        assert!(
            sm.reader().get("new").unwrap().is_none(),
            "a refused body changed the state"
        );

        let auth = good
            .sections
            .iter()
            .find(|(n, _)| n == SECTION_AUTH)
            .map(|(_, v)| v.to_vec())
            .unwrap();
        sm.install(&s.meta, with_auth(auth)).await.unwrap();
        assert!(sm.reader().get("new").unwrap().is_some());
        assert_eq!(current(&mut sm).await.unwrap().meta, s.meta);
        assert_eq!(snapshot_files(dir.path()).len(), 1);
    }

    /// Whatever the commit does, no file is left that no record names: a failed commit
    /// removes the new file, a committed one the file it replaced.
    #[test]
    fn settle_removes_the_new_file_on_failure_and_the_replaced_one_on_success() {
        let dir = tempfile::tempdir().unwrap();
        let files = SnapshotFiles::new(dir.path());
        let old = files.write(b"old").unwrap();
        let new = files.write(b"new").unwrap();
        let failed = settle(&files, &new, || Err(sm_write_err(std::io::Error::other("disk"))));
        assert!(failed.is_err());
        assert_eq!(snapshot_files(dir.path()).len(), 1, "the failed one's file stayed");
        assert!(files.read(&old).is_ok());

        let newer = files.write(b"newer").unwrap();
        settle(&files, &newer, || Ok(Some(old.name.clone()))).unwrap();
        assert!(files.read(&newer).is_ok());
        assert_eq!(snapshot_files(dir.path()).len(), 1, "the replaced one's file stayed");
    }
}
