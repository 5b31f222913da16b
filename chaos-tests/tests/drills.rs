//! The short CI suite of drills: each scenario runs 20 s against real `arkd` processes and
//! must report a linearizable history with nothing lost and a recovery after every fault.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::process::Command;

fn drill_passes(scenario: &str) -> serde_json::Value {
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_ark-chaos"))
        .args([
            "run",
            "--scenario",
            scenario,
            "--duration",
            "20",
            "--seed",
            "1",
            "--out",
        ])
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "drill failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(r["scenario"], scenario);
    assert_eq!(r["linearizable"], true);
    assert_eq!(r["lost_acked"], 0);
    assert_eq!(r["corrupt_reads"], 0);
    assert!(r["ops"]["ok"].as_u64().unwrap() > 1000, "{r}");
    assert!(r["rto_ms"].as_f64().unwrap() < 10_000.0, "{r}");
    assert!(r["notes"][0].as_str().unwrap().contains("faults"), "{r}");
    // Objects were written and every acknowledged one was read back intact.
    assert!(r["objects"]["puts_ok"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["objects"]["final_checked"], r["objects"]["puts_ok"], "{r}");
    // Network faults never outlive the drill: every node's control file ends empty.
    for node in std::fs::read_dir(out.path().join("cluster")).unwrap() {
        let control = node.unwrap().path().join("faults.toml");
        if control.exists() {
            let rules = std::fs::read_to_string(&control).unwrap();
            assert!(rules.trim().is_empty(), "{} still holds {rules}", control.display());
        }
    }
    r
}

/// A drill on arkd's network fault layer: it must pass and say how its faults were injected.
fn network_drill_passes(scenario: &str) {
    let r = drill_passes(scenario);
    let notes = r["notes"].as_array().unwrap();
    assert!(
        notes
            .iter()
            .any(|n| n.as_str().unwrap().contains("fault layer under quinn")),
        "{r}"
    );
}

#[test]
fn leader_kill_drill_passes() {
    drill_passes("leader-kill");
}

#[test]
fn random_kill_drill_passes() {
    drill_passes("random-kill");
}

#[test]
fn pause_drill_passes() {
    drill_passes("pause");
}

#[test]
fn rolling_restart_drill_passes() {
    drill_passes("rolling-restart");
}

#[test]
fn membership_drill_passes() {
    drill_passes("membership");
}

#[test]
fn site_partition_drill_passes() {
    network_drill_passes("site-partition");
}

#[test]
fn minority_partition_drill_passes() {
    network_drill_passes("minority-partition");
}

#[test]
fn asymmetric_partition_drill_passes() {
    network_drill_passes("asymmetric-partition");
}

#[test]
fn wan_drill_passes() {
    network_drill_passes("wan");
}

#[test]
fn site_kill_drill_passes() {
    drill_passes("site-kill");
}

#[test]
fn chunk_corruption_drill_passes() {
    let r = drill_passes("chunk-corruption");
    // The corruption reached chunks and the scrub found it: the drill proved something.
    let log = r["notes"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|n| n.as_str().filter(|s| s.starts_with("fault log:")))
        .unwrap_or_else(|| panic!("no fault log in {r}"));
    assert!(log.contains("flipped a byte in 3 chunk files"), "{log}");
    assert!(r["objects"]["reads_ok"].as_u64().unwrap() > 0, "{r}");
}

#[test]
fn unknown_scenario_is_a_clear_error() {
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_ark-chaos"))
        .args(["run", "--scenario", "no-such-thing", "--duration", "1", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown scenario"));
}
