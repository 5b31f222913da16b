//! `ark bench objects` against a 3-site playground: it reports every put and every get,
//! and each get was checked against the bytes that were put. Speeds are not asserted here
//! (they are measured in docs/benchmarks.md).

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::time::Duration;

use ark_playground::testkit::{stderr, stdout, Pg};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_objects_reports_every_put_and_verified_get() {
    let pg = Pg::up(3, 20_000).await;
    pg.wait_leader(None, Duration::from_secs(20)).await;
    let o = pg.ark(&[
        "bench",
        "objects",
        "--count",
        "20",
        "--slice",
        "10",
        "--clients",
        "4",
        "--get",
        "--json",
    ]);
    assert!(
        o.status.success(),
        "bench objects failed: {}\n{}",
        stderr(&o),
        stdout(&o)
    );
    let r: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(r["put"]["ok"], 20, "{r}");
    assert_eq!(r["put"]["errors"], 0, "{r}");
    assert_eq!(r["get"]["ok"], 20, "{r}");
    assert_eq!(r["get"]["mismatched"], 0, "{r}");
    assert_eq!(r["get"]["bytes"], 20 * 4096, "{r}");
    let slices = r["slices"].as_array().unwrap();
    assert_eq!(slices.len(), 2, "{r}");
    // The namespace was created by the bench and holds exactly what it put.
    assert_eq!(slices[1]["namespace_objects"], 20, "{r}");
    let ls = pg.ark(&["ls", "bench", "--json"]);
    assert!(ls.status.success(), "{}", stderr(&ls));
    let listed: serde_json::Value = serde_json::from_str(&stdout(&ls)).unwrap();
    assert_eq!(listed.as_array().map(|a| a.len()), Some(20), "{listed}");
}
