//! `ark drill` hands its arguments to the `ark-chaos` binary beside `ark` and returns its exit
//! status, or says how to install it. Runs a copy of `ark` in a scratch folder, with a stand-in
//! `ark-chaos` script there or none.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

#[test]
fn ark_drill_execs_ark_chaos_beside_ark_or_says_how_to_install_it() {
    let dir = tempfile::tempdir().unwrap();
    let ark = dir.path().join("ark");
    std::fs::copy(env!("CARGO_BIN_EXE_ark"), &ark).unwrap();
    let empty = tempfile::tempdir().unwrap();

    let o = Command::new(&ark)
        .args(["drill", "--config", "d.toml", "--dry-run"])
        .env("PATH", empty.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("ark drill needs the ark-chaos binary installed next to ark: cargo build --release -p ark-chaos"),
        "{err}"
    );

    let chaos = dir.path().join("ark-chaos");
    std::fs::write(&chaos, "#!/bin/sh\necho \"args: $*\"\nexit 7\n").unwrap();
    std::fs::set_permissions(&chaos, std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = Command::new(&ark)
        .args(["drill", "--config", "d.toml", "--dry-run", "--seed", "3"])
        .env("PATH", empty.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(7), "{o:?}");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "args: drill --config d.toml --dry-run --seed 3\n"
    );
}
