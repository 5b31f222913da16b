//! `arkd forecast` runs the offline evaluations without a node config.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::fmt::Write as _;
use std::process::Command;

#[test]
fn eval_load_runs_from_arkd_and_prints_json() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("series.csv");
    // Four days of a daily cycle at 5-minute steps, in the NAB layout.
    let mut text = String::from("timestamp,value\n");
    for i in 0..(4 * 288) {
        let (d, m) = (i / 288, (i % 288) * 5);
        let v = 50.0 + 20.0 * ((i % 288) as f64 / 288.0 * std::f64::consts::TAU).sin();
        writeln!(text, "2024-01-{:02} {:02}:{:02}:00,{v:.3}", d + 1, m / 60, m % 60).unwrap();
    }
    std::fs::write(&csv, text).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_arkd"))
        .args(["forecast", "eval-load", "--horizon", "6", "--json", "--csv"])
        .arg(&csv)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let text = r.to_string();
    for k in ["persistence", "seasonal", "ewma"] {
        assert!(text.to_lowercase().contains(k), "report lacks {k}: {text}");
    }
}

#[test]
fn running_a_node_needs_a_config() {
    let o = Command::new(env!("CARGO_BIN_EXE_arkd")).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--config"));
}
