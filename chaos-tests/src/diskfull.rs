//! The `disk-full` fault: one node's data dir on a small tmpfs whose size the drill shrinks to
//! what is in use (the disk is full: every new byte fails with ENOSPC) and grows back.
//!
//! Owns: moving a stopped node's data dir onto a tmpfs, the remounts that fill and free it,
//! and unmounting it when the drill ends (also after a failure: [`unmount_all`] runs from
//! the drill's cleanup). Needs root (mount); without it the scenario fails with a clear error
//! before the workload starts.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};

/// Size of the tmpfs while the disk is healthy: far more than a drill writes.
const ROOMY: &str = "2g";
/// Filesystem type tag of the drill's mounts, so cleanup finds only its own.
const SOURCE: &str = "ark-chaos-disk";

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let o = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !o.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&o.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// Whether this process may mount (effective uid 0).
pub fn can_mount() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Puts `data_dir` (whose node is stopped) on a fresh tmpfs, keeping its contents.
pub fn move_to_tmpfs(data_dir: &Path) -> anyhow::Result<()> {
    if !can_mount() {
        bail!("the disk-full drill mounts a tmpfs and needs root (run it as root or pick another scenario)");
    }
    let aside = data_dir.with_extension("before-tmpfs");
    std::fs::rename(data_dir, &aside).with_context(|| format!("moving {} aside", data_dir.display()))?;
    std::fs::create_dir_all(data_dir)?;
    if let Err(e) = run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={ROOMY}"), SOURCE])
        .arg(data_dir))
    {
        // Put the data back where the node looks for it, so a failed drill leaves the
        // node's state as it found it.
        let _ = std::fs::remove_dir(data_dir);
        let _ = std::fs::rename(&aside, data_dir);
        return Err(e);
    }
    let mut copy = aside.clone().into_os_string();
    copy.push("/.");
    run(Command::new("cp").arg("-a").arg(copy).arg(data_dir))?;
    std::fs::remove_dir_all(&aside).with_context(|| format!("removing {}", aside.display()))?;
    Ok(())
}

/// Bytes in use on the filesystem at `path`.
fn used_bytes(path: &Path) -> anyhow::Result<u64> {
    let out = run(Command::new("df").args(["-B1", "--output=used"]).arg(path))?;
    out.lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("cannot read df output {out:?}"))
}

/// Shrinks the tmpfs at `data_dir` to what it holds plus a few pages: it is full. Returns the
/// size set, in bytes.
pub fn fill(data_dir: &Path) -> anyhow::Result<u64> {
    // The node writes on while we measure: a size below what it holds by then is refused
    // (EINVAL), so try again with more slack.
    let mut last = None;
    for pages in [8u64, 64, 512] {
        let size = used_bytes(data_dir)? + pages * 4096;
        match run(Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(data_dir))
        {
            Ok(_) => return Ok(size),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no attempt made")))
}

/// Grows the tmpfs at `data_dir` back to its roomy size.
pub fn free(data_dir: &Path) -> anyhow::Result<()> {
    run(Command::new("mount")
        .args(["-o", &format!("remount,size={ROOMY}")])
        .arg(data_dir))
    .map(|_| ())
}

/// The mounts under `dir` whose source is `source` (each drill tags its own), from
/// /proc/self/mounts. Shared with the power-loss drill's FUSE mounts (`lazyfs_fuse`).
pub(crate) fn mounts_under(dir: &Path, source: &str) -> Vec<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    parse_mounts(&mounts, dir, source)
}

fn parse_mounts(mounts: &str, dir: &Path, source: &str) -> Vec<PathBuf> {
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (src, target) = (f.next()?, f.next()?);
            // Spaces in paths are escaped as \040 in /proc/self/mounts.
            let target = PathBuf::from(target.replace("\\040", " "));
            (src == source && target.starts_with(dir)).then_some(target)
        })
        .collect()
}

/// Unmounts every tmpfs this drill mounted under `dir` (the nodes must be stopped).
pub fn unmount_all(dir: &Path) -> anyhow::Result<()> {
    for m in mounts_under(dir, SOURCE) {
        run(Command::new("umount").arg(&m))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_drills_own_mounts_under_its_dir_are_found() {
        let mounts = "\
ark-chaos-disk /tmp/d/cluster/node-2/data tmpfs rw,size=2097152k 0 0
tmpfs /tmp/d/cluster/node-1/data tmpfs rw 0 0
ark-chaos-disk /tmp/other/node-2/data tmpfs rw 0 0
ark-chaos-disk /tmp/d/with\\040space/data tmpfs rw 0 0
ark-chaos-lazyfs /tmp/d/cluster/node-3/data fuse.lazyfs rw 0 0
";
        assert_eq!(
            parse_mounts(mounts, Path::new("/tmp/d"), SOURCE),
            vec![
                PathBuf::from("/tmp/d/cluster/node-2/data"),
                PathBuf::from("/tmp/d/with space/data")
            ]
        );
        assert_eq!(
            parse_mounts(mounts, Path::new("/tmp/d"), crate::lazyfs_fuse::SOURCE),
            vec![PathBuf::from("/tmp/d/cluster/node-3/data")]
        );
    }
}
