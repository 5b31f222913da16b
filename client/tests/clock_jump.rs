//! Exactly-once must not depend on any node's wall clock: a retried write is recognised
//! after failover to a leader whose clock runs minutes ahead, and after a clock jumps back.
//! Real `arkd` processes; each node's clock is shifted through its fault file
//! (`clock_offset_ms`), not the host's.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::time::{Duration, Instant};

use ark_client::client::new_request_id;
use ark_playground::testkit::Pg;

/// Shifts node `id`'s wall clock by `ms` and waits until the node has read it (the fault
/// file is re-read every 100 ms).
async fn shift_clock(pg: &Pg, id: u64, ms: i64) {
    let dir = pg.node(id).config.parent().unwrap().to_path_buf();
    std::fs::write(dir.join("faults.toml"), format!("clock_offset_ms = {ms}\n")).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_is_applied_once_whatever_the_leaders_clock_says() {
    let mut pg = Pg::up(3, 1_000_000).await;
    let client = pg.client().with_op_timeout(Duration::from_secs(5));
    let r = new_request_id();
    let first = client.put_with_id("k", b"first", r.clone()).await.unwrap();
    client.put("k", b"later").await.unwrap();

    // Every node but the leader runs seven minutes ahead; the leader dies.
    let leader = pg.wait_leader(None, Duration::from_secs(10)).await;
    for n in [1, 2, 3].into_iter().filter(|n| *n != leader) {
        shift_clock(&pg, n, 7 * 60 * 1000).await;
    }
    pg.kill(leader);
    let fast = pg.wait_leader(Some(leader), Duration::from_secs(15)).await;
    // The new leader proposes for a while with its fast clock.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        client.put("tick", b"t").await.unwrap();
    }

    // The retry of the first write: the recorded answer, and the later write stands.
    let again = client.put_with_id("k", b"first", r.clone()).await.unwrap();
    assert_eq!(again, first, "the retry was applied again (new revision)");
    assert_eq!(
        client
            .get("k", &ark_client::ReadOptions::LINEARIZABLE)
            .await
            .unwrap()
            .unwrap()
            .value,
        b"later"
    );

    // The leader's clock jumps back by ten minutes: new writes still succeed, and a retry
    // made after the jump is recognised too.
    shift_clock(&pg, fast, -3 * 60 * 1000).await;
    let r2 = new_request_id();
    let rev2 = client.put_with_id("k2", b"one", r2.clone()).await.unwrap();
    client.put("k2", b"two").await.unwrap();
    assert_eq!(client.put_with_id("k2", b"one", r2).await.unwrap(), rev2);
    assert_eq!(
        client
            .get("k2", &ark_client::ReadOptions::LINEARIZABLE)
            .await
            .unwrap()
            .unwrap()
            .value,
        b"two"
    );
    assert_eq!(client.put_with_id("k", b"first", r).await.unwrap(), first);
    assert_eq!(
        client
            .get("k", &ark_client::ReadOptions::LINEARIZABLE)
            .await
            .unwrap()
            .unwrap()
            .value,
        b"later"
    );
}
