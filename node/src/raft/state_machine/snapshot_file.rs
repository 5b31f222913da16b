//! The kept snapshot's body, as a file beside the database (`<data_dir>/snapshots/`), and the
//! record redb keeps of it (name, length, SHA-256).
//!
//! Why a file: kept as one redb value, each body (hundreds of MB at a million objects) made
//! redb's copy-on-write commits after it write several times more pages, and its file grow
//! four times (measured: about 45 KiB written per small object put at 500,000-1M puts without
//! snapshots, 120-360 KiB with one kept in redb every 20,000 entries; docs/benchmarks.md).
//! etcd keeps its snapshots as files too.
//!
//! Owns the files: their names, writing one durably (synced, renamed, folder synced), reading
//! one back checked against its record, and removing the ones no record names. Must not
//! decide which snapshot is kept (`snapshot.rs`) nor touch redb.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What redb keeps of the kept snapshot's body: where it is and what it must read back as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct BodyFile {
    /// File name inside the snapshot folder.
    pub(super) name: String,
    pub(super) len: u64,
    pub(super) sha256: [u8; 32],
}

/// The folder the kept snapshot's body lives in.
#[derive(Debug, Clone)]
pub(super) struct SnapshotFiles {
    dir: PathBuf,
}

const SUFFIX: &str = ".snap";
const TMP_SUFFIX: &str = ".snap.tmp";

fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

impl SnapshotFiles {
    /// The snapshot folder of the node whose data directory is `data_dir`.
    pub(super) fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("snapshots"),
        }
    }

    /// Writes `data` to a new file, durably (the file and the folder entry synced), and
    /// returns its record. Nothing names the file until the caller commits that record.
    pub(super) fn write(&self, data: &[u8]) -> io::Result<BodyFile> {
        std::fs::create_dir_all(&self.dir)?;
        let name = format!("{:016x}{SUFFIX}", rand::random::<u64>());
        let tmp = self.dir.join(format!("{name}.tmp"));
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            std::fs::rename(&tmp, self.dir.join(&name))?;
            crate::raft::wal::sync_dir(&self.dir)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            let _ = std::fs::remove_file(self.dir.join(&name));
            return Err(io::Error::new(
                e.kind(),
                format!("cannot write snapshot file in {}: {e}", self.dir.display()),
            ));
        }
        Ok(BodyFile {
            name,
            len: data.len() as u64,
            sha256: sha256(data),
        })
    }

    /// The body `file` names, refused (`InvalidData`) unless it has the recorded length and
    /// SHA-256: a damaged body is never handed out.
    pub(super) fn read(&self, file: &BodyFile) -> io::Result<Vec<u8>> {
        let path = self.dir.join(&file.name);
        let data = std::fs::read(&path).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        if data.len() as u64 != file.len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {} bytes, {} recorded", path.display(), data.len(), file.len),
            ));
        }
        if sha256(&data) != file.sha256 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: its SHA-256 is not the one recorded", path.display()),
            ));
        }
        Ok(data)
    }

    /// Removes the file `name` once no record names it; a failure is logged (the file is
    /// removed at the next start, see [`Self::remove_all_but`]).
    pub(super) fn remove_unkept(&self, name: &str) {
        match std::fs::remove_file(self.dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(file = name, error = %e, "cannot remove a replaced snapshot file"),
        }
    }

    /// Removes every snapshot file (and leftover temporary file) except `keep`: the files
    /// of replaced snapshots, and those a crash left unnamed.
    pub(super) fn remove_all_but(&self, keep: Option<&str>) -> io::Result<()> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let ours = name.ends_with(SUFFIX) || name.ends_with(TMP_SUFFIX);
            if ours && Some(name) != keep {
                std::fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_body_reads_back_only_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let files = SnapshotFiles::new(dir.path());
        let body = b"the state at index 42".to_vec();
        let f = files.write(&body).unwrap();
        assert_eq!(files.read(&f).unwrap(), body);

        // One flipped byte, one byte short, or a missing file: refused, never returned.
        let path = dir.path().join("snapshots").join(&f.name);
        let mut bad = body.clone();
        bad[3] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        assert_eq!(files.read(&f).unwrap_err().kind(), io::ErrorKind::InvalidData);
        std::fs::write(&path, &body[..body.len() - 1]).unwrap();
        assert_eq!(files.read(&f).unwrap_err().kind(), io::ErrorKind::InvalidData);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(files.read(&f).unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn only_the_kept_file_survives_a_clean_up() {
        let dir = tempfile::tempdir().unwrap();
        let files = SnapshotFiles::new(dir.path());
        files.remove_all_but(None).unwrap(); // no folder yet: nothing to do
        let old = files.write(b"old").unwrap();
        let new = files.write(b"new").unwrap();
        assert_ne!(old.name, new.name);
        let snaps = dir.path().join("snapshots");
        std::fs::write(snaps.join("0123456789abcdef.snap.tmp"), b"torn").unwrap();
        std::fs::write(snaps.join("operator-notes.txt"), b"not ours").unwrap();
        files.remove_all_but(Some(&new.name)).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(&snaps)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, vec![new.name.clone(), "operator-notes.txt".to_string()]);
        assert_eq!(files.read(&new).unwrap(), b"new");
    }
}
