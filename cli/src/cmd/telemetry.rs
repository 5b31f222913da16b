//! `ark telemetry`: the series the leader holds for every node, latest value and window
//! length. Printing only.

use std::process::ExitCode;

use ark_client::ArkClient;

/// Prints the leader's telemetry, as JSON with `json`.
pub async fn run(c: &ArkClient, json: &bool) -> anyhow::Result<ExitCode> {
    let t = c.telemetry().await?;
    if *json {
        let nodes: Vec<_> = t
            .nodes
            .iter()
            .map(|n| {
                let series: Vec<_> = n
                    .series
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "name": s.name, "latest": s.latest,
                            "latest_unix_ms": s.latest_unix_ms, "points": s.points,
                        })
                    })
                    .collect();
                serde_json::json!({
                    "node_id": n.node_id, "last_report_age_ms": n.last_report_age_ms, "series": series,
                })
            })
            .collect();
        let v = serde_json::json!({
            "leader_id": t.leader_id, "interval_ms": t.interval_ms,
            "window_points": t.window_points, "nodes": nodes,
        });
        outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        outln!(
            "leader: node {}   interval: {} ms   window: {} points per series",
            t.leader_id,
            t.interval_ms,
            t.window_points
        );
        for n in &t.nodes {
            outln!(
                "\nnode {}   last report {:.1} s ago",
                n.node_id,
                n.last_report_age_ms as f64 / 1000.0
            );
            outln!("  {:<36} {:>18} {:>8}", "SERIES", "LATEST", "POINTS");
            for s in &n.series {
                outln!("  {:<36} {:>18} {:>8}", s.name, format_value(s.latest), s.points);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A telemetry value for a terminal: integers as such, small and large numbers readably.
fn format_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else if v.abs() >= 1000.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.6}")
    }
}
