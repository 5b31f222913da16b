//! Telemetry end to end on real `arkd` processes over loopback: every node's samples reach
//! the leader over the peer protocol, `ark telemetry` shows them from any node, the leader's
//! windows never hold more than the configured number of points, and a removed member's
//! windows are dropped.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::time::{Duration, Instant};

use ark_playground::playground::{self, Layout};
use ark_playground::testkit::{stderr, stdout, Pg};
use serde_json::Value;

/// Small, so that the windows fill (and must stop growing) within the test.
const WINDOW: u64 = 5;

fn series<'a>(node: &'a Value, prefix: &str) -> impl Iterator<Item = &'a Value> + 'a {
    let prefix = prefix.to_string();
    node["series"]
        .as_array()
        .unwrap()
        .iter()
        .filter(move |s| s["name"].as_str().unwrap().starts_with(&prefix))
}

/// Whether the leader's answer shows what the issue asks for: samples from all three nodes,
/// free space on each, a positive round trip on some link, and windows that filled up.
fn complete(v: &Value) -> bool {
    let nodes = v["nodes"].as_array().unwrap();
    let ids: Vec<u64> = nodes.iter().map(|n| n["node_id"].as_u64().unwrap()).collect();
    if ids != [1, 2, 3] {
        return false;
    }
    let free_everywhere = nodes
        .iter()
        .all(|n| series(n, "disk_free_bytes").any(|s| s["latest"].as_f64().unwrap() > 0.0));
    let some_rtt = nodes
        .iter()
        .any(|n| series(n, "link_rtt_seconds:").any(|s| s["latest"].as_f64().unwrap() > 0.0));
    let full = nodes
        .iter()
        .all(|n| series(n, "disk_free_bytes").any(|s| s["points"].as_u64().unwrap() == WINDOW));
    free_everywhere && some_rtt && full
}

#[tokio::test(flavor = "multi_thread")]
async fn leader_holds_bounded_telemetry_from_every_node() {
    ark_playground::testkit::arkd_built();
    let dir = tempfile::Builder::new().prefix("ark-test-").tempdir().unwrap();
    let layout = Layout {
        sites: 3,
        nodes_per_site: 1,
        ready_timeout: Duration::from_secs(60),
        telemetry_window_points: WINDOW as u32,
        ..Layout::default()
    };
    let (_, children) = playground::up(dir.path(), &layout).await.unwrap();
    let pg = Pg { dir, children };

    // 1 s interval and a 5-point window: complete after about 6 s; 20 s is the bound.
    let deadline = Instant::now() + Duration::from_secs(20);
    let v = loop {
        let o = pg.ark(&["telemetry", "--json"]);
        let last = if o.status.success() {
            let v: Value = serde_json::from_str(&stdout(&o)).unwrap();
            assert_eq!(v["interval_ms"].as_u64(), Some(1000), "{v}");
            assert_eq!(v["window_points"].as_u64(), Some(WINDOW), "{v}");
            for n in v["nodes"].as_array().unwrap() {
                for s in n["series"].as_array().unwrap() {
                    let points = s["points"].as_u64().unwrap();
                    assert!((1..=WINDOW).contains(&points), "window over its bound: {s}");
                }
            }
            if complete(&v) {
                break v;
            }
            stdout(&o)
        } else {
            stderr(&o)
        };
        assert!(
            Instant::now() < deadline,
            "the leader did not show complete telemetry within 20 s; last answer:\n{last}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let leader = v["leader_id"].as_u64().unwrap();

    // A follower points the CLI at the leader, which answers.
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    let o = pg.ark(&["--endpoint", &pg.node(follower).client_addr, "telemetry", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let via: Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(via["leader_id"].as_u64(), Some(leader));

    // The human table names the series.
    let o = pg.ark(&["telemetry"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("disk_free_bytes"), "{}", stdout(&o));

    // Exported as metrics: each node its own samples, the leader what it holds per node.
    for id in 1..=3 {
        assert!(
            pg.metric(id, "ark_disk_free_bytes") > 0.0,
            "node {id} exports no free space"
        );
    }
    assert!(pg.metric(leader, "ark_link_rtt_seconds") > 0.0);
    let held = pg.metric(leader, "ark_telemetry_window_points");
    assert!(held > 0.0, "the leader exports no window sizes");

    // A removed member's windows go (it may keep running and reporting; it is refused).
    let client = pg.client();
    client.remove(follower).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match client.telemetry().await {
            Ok(t) if !t.nodes.iter().any(|n| n.node_id == follower) => {
                assert_eq!(t.nodes.len(), 2, "{t:?}");
                break;
            }
            other => assert!(
                Instant::now() < deadline,
                "node {follower} still in the leader's telemetry 10 s after its removal: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
