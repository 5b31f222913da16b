//! `ark demo`: the guided failover tour (see `crate::demo`); this file only prints its
//! report.

use std::process::ExitCode;

use anyhow::bail;

use crate::demo;

/// Runs the demo on `sites` sites and prints its report, as JSON with `json`.
pub async fn run(sites: &u32, json: &bool) -> anyhow::Result<ExitCode> {
    if *sites < 3 {
        bail!("the demo needs at least 3 sites so that a majority survives the loss of one");
    }
    let say = |s: &str| eprintln!("{s}");
    let r = demo::run(*sites, &say).await?;
    if *json {
        outln!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        outln!(
            "failover: site {} lost (leader node {}), node {} took over; writes succeeded again after {} ms; {} acknowledged writes, {} lost",
            r.lost_site, r.old_leader, r.new_leader, r.failover_ms, r.acknowledged_writes, r.lost_writes
        );
    }
    if r.lost_writes > 0 {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
