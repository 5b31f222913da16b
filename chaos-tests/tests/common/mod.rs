//! Helpers shared by this crate's drill tests (`drills.rs`, `deployed.rs`): reading a drill
//! report. Cluster set-up lives in `ark_playground::testkit`, shared with the other crates.

#![allow(dead_code)] // each test binary uses its own subset
#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

/// The report's `notes`, as text.
pub fn notes(r: &serde_json::Value) -> Vec<&str> {
    r["notes"]
        .as_array()
        .unwrap_or_else(|| panic!("no notes in {r}"))
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect()
}
