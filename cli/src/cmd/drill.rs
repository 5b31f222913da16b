//! `ark drill`: hands over to the `ark-chaos` binary, like a git subcommand.
//!
//! The drills against a deployed cluster live in the chaos crate, whose FUSE and network
//! namespace machinery an operator's `ark` should not carry, so `ark` does not link them: it
//! execs `ark-chaos drill` with the remaining arguments, found next to the running `ark` or
//! else on `PATH`. Owns only finding and starting that binary;
//! must not parse the drill's arguments (`ark-chaos drill --help` documents them).

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The binary `ark drill` runs.
pub const BINARY: &str = "ark-chaos";

/// What to do when it is missing.
pub const NOT_FOUND: &str =
    "ark drill needs the ark-chaos binary installed next to ark: cargo build --release -p ark-chaos";

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `ark-chaos` in `exe_dir` (the folder of the running `ark`), else in the first folder of
/// `path` (a `PATH` value) that has it.
pub fn find(exe_dir: Option<&Path>, path: Option<&OsStr>) -> Option<PathBuf> {
    let beside = exe_dir.map(|d| d.join(BINARY)).filter(|p| is_executable(p));
    beside.or_else(|| {
        std::env::split_paths(path?)
            .map(|d| d.join(BINARY))
            .find(|p| is_executable(p))
    })
}

/// Replaces this process with `ark-chaos drill ARGS...` (so its exit status and Ctrl-C
/// handling are the drill's own); returns only when that is impossible.
pub fn exec(args: &[OsString]) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf));
    let Some(bin) = find(exe_dir.as_deref(), std::env::var_os("PATH").as_deref()) else {
        eprintln!("error: {NOT_FOUND}");
        return ExitCode::from(1);
    };
    let err = std::process::Command::new(&bin).arg("drill").args(args).exec();
    eprintln!("error: cannot run {}: {err}", bin.display());
    ExitCode::from(1)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn make(dir: &Path, mode: u32) -> PathBuf {
        let p = dir.join(BINARY);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn beside_ark_first_then_path() {
        let (beside, on_path, empty) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        let p = make(on_path.path(), 0o755);
        let path = std::env::join_paths([empty.path(), on_path.path()]).unwrap();
        assert_eq!(find(Some(empty.path()), Some(&path)), Some(p.clone()));
        let b = make(beside.path(), 0o755);
        assert_eq!(find(Some(beside.path()), Some(&path)), Some(b));
        assert_eq!(find(Some(empty.path()), None), None);
        // Not executable: not a candidate.
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(find(None, Some(&path)), None);
    }
}
