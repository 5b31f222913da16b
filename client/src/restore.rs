//! Restore of a whole namespace into a local folder: which version of each key to take
//! (the latest, version N, or the state at a point in time), where it may be written (never
//! outside the folder), and the bounded-parallel, verified download of each object.
//!
//! Owns the version selection and path-safety rules. Must not touch transfers themselves
//! (`objects.rs` does the downloads, with their SHA-256 checks and partial files) or
//! printing (the CLI).

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::StreamExt;

use crate::client::ArkClient;
use crate::error::ClientError;
use crate::objects::{GetOptions, ListObjectsOptions, Progress, PARTIAL_SUFFIX};
use crate::types::ObjectInfo;

/// Most objects downloaded at once by one restore.
pub const RESTORE_PARALLEL_MAX: usize = 8;

/// Which version of each key a restore takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestorePoint {
    /// The latest version of every live key.
    Latest,
    /// Version N of every key that has one (and where it is not a tombstone).
    Version(u64),
    /// The state at this time (Unix ms): per key, the newest version created at or before
    /// it, unless that version is a tombstone (the key was deleted then).
    At(u64),
}

/// Options of [`ArkClient::restore_namespace`].
#[derive(Clone)]
pub struct RestoreOptions {
    /// Which versions.
    pub point: RestorePoint,
    /// List and read from the answering node's replica without confirming leadership:
    /// what a site cut off from the majority can still restore.
    pub stale: bool,
    /// Objects downloaded at once, 1 to [`RESTORE_PARALLEL_MAX`].
    pub parallel: usize,
    /// Told the bytes restored so far and the total of the selected objects.
    pub progress: Option<Progress>,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        Self {
            point: RestorePoint::Latest,
            stale: false,
            // The most: on a 2-core test machine 8 at once restored 2000 mixed objects
            // 16-40% faster than 3 in every one of three rounds (docs/benchmarks.md).
            parallel: RESTORE_PARALLEL_MAX,
            progress: None,
        }
    }
}

/// One object that could not be restored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreFailure {
    /// Its key.
    pub key: String,
    /// The version that was selected.
    pub version: u64,
    /// Why it failed.
    pub error: String,
}

/// What a restore did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Objects selected for restore.
    pub selected: u64,
    /// Objects written and verified.
    pub restored: u64,
    /// Bytes of those objects.
    pub bytes: u64,
    /// Objects that failed, with why.
    pub failed: Vec<RestoreFailure>,
}

/// Picks the version of each key to restore from a listing (every version for
/// [`RestorePoint::Version`] and [`RestorePoint::At`], the live latest ones for
/// [`RestorePoint::Latest`]). The result is ordered by key, one entry per key, never a
/// tombstone.
pub fn select_versions(objects: Vec<ObjectInfo>, point: RestorePoint) -> Vec<ObjectInfo> {
    let mut by_key: BTreeMap<String, Vec<ObjectInfo>> = BTreeMap::new();
    for o in objects {
        by_key.entry(o.key.clone()).or_default().push(o);
    }
    by_key
        .into_values()
        .filter_map(|versions| {
            let chosen = match point {
                RestorePoint::Latest => versions.into_iter().max_by_key(|o| o.version),
                RestorePoint::Version(n) => versions.into_iter().find(|o| o.version == n),
                RestorePoint::At(t) => versions
                    .into_iter()
                    .filter(|o| o.created_ms <= t)
                    .max_by_key(|o| o.version),
            }?;
            (!chosen.deleted).then_some(chosen)
        })
        .collect()
}

/// Where key `key` is restored under `dir`: `dir/KEY` with `/` separating folders. Refuses
/// keys that could land outside `dir` or are ambiguous: absolute, empty components (`a//b`,
/// a trailing `/`), `.` or `..`, NUL, and names ending in the partial-download suffix (they
/// would collide with another key's download in progress).
pub fn restore_path(dir: &Path, key: &str) -> Result<PathBuf, String> {
    if key.is_empty() {
        return Err("the key is empty".into());
    }
    if key.starts_with('/') {
        return Err("the key is an absolute path".into());
    }
    if key.contains('\0') {
        return Err("the key contains NUL".into());
    }
    let mut path = dir.to_path_buf();
    for part in key.split('/') {
        match part {
            "" => return Err("the key has an empty path component".into()),
            "." | ".." => return Err(format!("the key has a {part:?} path component")),
            _ => {}
        }
        // Belt and braces: the component must be one plain name on this platform.
        let mut comps = Path::new(part).components();
        if !matches!((comps.next(), comps.next()), (Some(Component::Normal(_)), None)) {
            return Err(format!("the key component {part:?} is not a plain file name"));
        }
        path.push(part);
    }
    if key.ends_with(PARTIAL_SUFFIX) {
        return Err(format!(
            "the key ends with {PARTIAL_SUFFIX}, the suffix of downloads in progress"
        ));
    }
    Ok(path)
}

/// Creates the folders of `key` under `dir` one by one, refusing to pass through a symbolic
/// link or a file (so that a link planted in `dir` cannot send the restore elsewhere).
async fn make_parents(dir: &Path, key: &str) -> Result<(), ClientError> {
    let parts: Vec<&str> = key.split('/').collect();
    let mut p = dir.to_path_buf();
    for part in &parts[..parts.len().saturating_sub(1)] {
        p.push(part);
        let meta = match tokio::fs::symlink_metadata(&p).await {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match tokio::fs::create_dir(&p).await {
                    Ok(()) => continue,
                    // Another download of this restore created it meanwhile.
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => tokio::fs::symlink_metadata(&p)
                        .await
                        .map_err(|e| ClientError::io(format!("cannot stat {}", p.display()), e))?,
                    Err(e) => return Err(ClientError::io(format!("cannot create folder {}", p.display()), e)),
                }
            }
            Err(e) => return Err(ClientError::io(format!("cannot stat {}", p.display()), e)),
        };
        if meta.file_type().is_symlink() {
            return Err(ClientError::InvalidArgument(format!(
                "{} is a symbolic link; refusing to restore through it",
                p.display()
            )));
        }
        if !meta.is_dir() {
            return Err(ClientError::InvalidArgument(format!(
                "{} exists and is not a folder",
                p.display()
            )));
        }
    }
    Ok(())
}

impl ArkClient {
    /// Restores namespace `ns` into folder `dir` (created if missing): one file per
    /// selected key at `dir/KEY`, each verified against its manifest's SHA-256 before it
    /// replaces anything. Keys that are unsafe as paths and objects that fail are reported in
    /// [`RestoreReport::failed`]; the others are still restored. Fails as a whole only when
    /// the namespace cannot be listed or `dir` cannot be created.
    pub async fn restore_namespace(
        &self,
        ns: &str,
        dir: &Path,
        opts: &RestoreOptions,
    ) -> Result<RestoreReport, ClientError> {
        let all_versions = opts.point != RestorePoint::Latest;
        let (objects, more) = self
            .list_objects(
                ns,
                &ListObjectsOptions {
                    all_versions,
                    stale: opts.stale,
                    ..ListObjectsOptions::default()
                },
            )
            .await?;
        if more {
            return Err(ClientError::Server(format!(
                "the listing of namespace {ns} was cut short; nothing was restored"
            )));
        }
        let chosen = select_versions(objects, opts.point);
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| ClientError::io(format!("cannot create folder {}", dir.display()), e))?;
        let total: u64 = chosen.iter().map(|o| o.size).sum();
        let done = Arc::new(AtomicU64::new(0));
        if let Some(p) = &opts.progress {
            p(0, Some(total));
        }
        let mut report = RestoreReport {
            selected: chosen.len() as u64,
            ..RestoreReport::default()
        };
        let downloads = chosen.into_iter().map(|o| {
            let done = done.clone();
            async move {
                let r = self.restore_one(ns, dir, &o, opts, total, &done).await;
                (o, r)
            }
        });
        let mut results =
            futures::stream::iter(downloads).buffer_unordered(opts.parallel.clamp(1, RESTORE_PARALLEL_MAX));
        while let Some((o, r)) = results.next().await {
            match r {
                Ok(()) => {
                    report.restored += 1;
                    report.bytes += o.size;
                }
                Err(e) => report.failed.push(RestoreFailure {
                    key: o.key,
                    version: o.version,
                    error: e.to_string(),
                }),
            }
        }
        report.failed.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(report)
    }

    async fn restore_one(
        &self,
        ns: &str,
        dir: &Path,
        o: &ObjectInfo,
        opts: &RestoreOptions,
        total: u64,
        done: &Arc<AtomicU64>,
    ) -> Result<(), ClientError> {
        let path =
            restore_path(dir, &o.key).map_err(|why| ClientError::InvalidArgument(format!("unsafe key: {why}")))?;
        make_parents(dir, &o.key).await?;
        // This object's share of the overall progress, given back if it fails.
        let mine = Arc::new(AtomicU64::new(0));
        let progress: Option<Progress> = opts.progress.clone().map(|outer| {
            let (done, mine) = (done.clone(), mine.clone());
            Arc::new(move |n: u64, _: Option<u64>| {
                let prev = mine.swap(n, Ordering::Relaxed);
                let now = if n >= prev {
                    done.fetch_add(n - prev, Ordering::Relaxed) + (n - prev)
                } else {
                    done.fetch_sub(prev - n, Ordering::Relaxed) - (prev - n)
                };
                outer(now, Some(total));
            }) as Progress
        });
        let get = GetOptions {
            version: o.version,
            stale: opts.stale,
            expect_sha256: Some(o.sha256.clone()),
            progress,
        };
        let r = self.get_object_to_file(ns, &o.key, &path, &get).await.map(|_| ());
        if r.is_err() {
            done.fetch_sub(mine.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(key: &str, version: u64, created_ms: u64, deleted: bool) -> ObjectInfo {
        ObjectInfo {
            namespace: "ns".into(),
            key: key.into(),
            version,
            size: 10 * version,
            sha256: vec![version as u8; 32],
            chunks: 1,
            created_ms,
            deleted,
        }
    }

    fn picked(v: &[ObjectInfo]) -> Vec<(&str, u64)> {
        v.iter().map(|o| (o.key.as_str(), o.version)).collect()
    }

    fn history() -> Vec<ObjectInfo> {
        vec![
            obj("a", 1, 100, false),
            obj("a", 2, 200, false),
            obj("a", 3, 300, false),
            obj("b", 1, 150, false),
            obj("b", 2, 250, true), // deleted at 250
            obj("c", 1, 400, false),
            obj("d", 2, 120, false), // version 1 pruned by versions_kept
        ]
    }

    #[test]
    fn at_a_time_takes_the_newest_version_then_and_skips_deleted_keys() {
        assert_eq!(
            picked(&select_versions(history(), RestorePoint::At(220))),
            vec![("a", 2), ("b", 1), ("d", 2)]
        );
        // b was deleted at 250: it is not restored at 260, c did not exist yet.
        assert_eq!(
            picked(&select_versions(history(), RestorePoint::At(260))),
            vec![("a", 2), ("d", 2)]
        );
        // Exactly at a version's creation time, that version counts.
        assert_eq!(picked(&select_versions(history(), RestorePoint::At(300)))[0], ("a", 3));
        assert!(select_versions(history(), RestorePoint::At(99)).is_empty());
    }

    #[test]
    fn version_n_is_taken_where_it_exists_and_is_not_a_tombstone() {
        assert_eq!(
            picked(&select_versions(history(), RestorePoint::Version(2))),
            vec![("a", 2), ("d", 2)]
        );
        assert_eq!(
            picked(&select_versions(history(), RestorePoint::Version(1))),
            vec![("a", 1), ("b", 1), ("c", 1)]
        );
    }

    #[test]
    fn latest_takes_one_live_version_per_key() {
        let live = vec![obj("b", 1, 1, false), obj("a", 3, 3, false), obj("x", 4, 4, true)];
        assert_eq!(
            picked(&select_versions(live, RestorePoint::Latest)),
            vec![("a", 3), ("b", 1)]
        );
    }

    #[test]
    fn safe_keys_map_under_the_folder() {
        let dir = Path::new("/restore");
        assert_eq!(restore_path(dir, "a").unwrap(), PathBuf::from("/restore/a"));
        assert_eq!(
            restore_path(dir, "models/v1/ckpt.bin").unwrap(),
            PathBuf::from("/restore/models/v1/ckpt.bin")
        );
        assert_eq!(restore_path(dir, "..a/b..").unwrap(), PathBuf::from("/restore/..a/b.."));
        assert_eq!(restore_path(dir, "a b\\c").unwrap(), PathBuf::from("/restore/a b\\c"));
    }

    #[test]
    fn unsafe_keys_are_refused() {
        let dir = Path::new("/restore");
        for key in [
            "",
            "/etc/passwd",
            "//x",
            "..",
            "../x",
            "a/../../x",
            "a/..",
            "a//b",
            "a/",
            "./a",
            "a/./b",
            "a\0b",
            "x.ark-partial",
        ] {
            assert!(restore_path(dir, key).is_err(), "{key:?} must be refused");
        }
    }

    #[test]
    fn every_accepted_key_stays_inside_the_folder() {
        let dir = Path::new("/restore");
        let pieces = ["a", "..", ".", "", "b", "..c", "/"];
        // Every key of up to three pieces joined by '/'.
        for x in pieces {
            for y in pieces {
                for z in pieces {
                    let key = format!("{x}/{y}/{z}");
                    if let Ok(p) = restore_path(dir, &key) {
                        assert!(p.starts_with(dir), "{key:?} -> {}", p.display());
                        assert!(
                            p.components()
                                .all(|c| matches!(c, Component::RootDir | Component::Normal(_))),
                            "{key:?} -> {}",
                            p.display()
                        );
                    }
                }
            }
        }
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn folders_are_created_but_never_through_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        make_parents(dir.path(), "a/b/c.bin").await.unwrap();
        assert!(dir.path().join("a/b").is_dir());
        make_parents(dir.path(), "top.bin").await.unwrap();

        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        let r = make_parents(dir.path(), "link/x/y.bin").await;
        assert!(matches!(r, Err(ClientError::InvalidArgument(_))), "{r:?}");
        assert!(!outside.path().join("x").exists());

        std::fs::write(dir.path().join("file"), b"").unwrap();
        assert!(make_parents(dir.path(), "file/y.bin").await.is_err());
    }
}
