//! A node whose Raft log was corrupted must never help a majority forget an acknowledged
//! write: it keeps its vote, abstains from elections until a leader has given it back every
//! committed entry, and then rejoins. Real `arkd` processes on loopback, a real byte flip in
//! a real log segment.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ark_playground::testkit::Pg;

/// The newest segment of a node's Raft log.
fn newest_segment(data_dir: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(data_dir.join("raft-log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segs.sort();
    segs.pop().expect("a log segment")
}

/// Flips one byte at `fraction` of the segment's records. The file is longer: the log
/// writer keeps zeros ahead of the newest record (the runway), which hold no entry.
fn flip_byte(path: &Path, fraction: f64) -> u64 {
    let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let data = std::fs::read(path).unwrap();
    let len = data.iter().rposition(|b| *b != 0).map_or(0, |p| p + 1) as u64;
    assert!(len > 0, "the segment holds records");
    let at = (len as f64 * fraction) as u64;
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x5a], at).unwrap();
    f.sync_all().unwrap();
    at
}

#[tokio::test(flavor = "multi_thread")]
async fn a_corrupted_follower_never_lets_a_majority_forget_an_acknowledged_write() {
    // Snapshots far away: the whole history stays in the log.
    let mut pg = Pg::up(3, 1_000_000).await;
    let client = pg.client().with_op_timeout(Duration::from_secs(5));
    for i in 0..300 {
        client
            .put(&format!("before-{i:03}"), format!("v{i}").as_bytes())
            .await
            .unwrap();
    }
    let leader = pg.wait_leader(None, Duration::from_secs(10)).await;
    let mut others: Vec<u64> = [1, 2, 3].into_iter().filter(|n| *n != leader).collect();
    let (corrupted, stopped) = (others.remove(0), others.remove(0));

    // Node `stopped` misses W; W is acknowledged by the leader and `corrupted`.
    pg.kill(stopped);
    client.put("w", b"acknowledged").await.unwrap();
    pg.kill(leader);
    pg.kill(corrupted);

    let seg = newest_segment(&pg.node(corrupted).data_dir);
    let at = flip_byte(&seg, 0.33);
    eprintln!("flipped byte {at} of {}", seg.display());

    // The corrupted node and the one that never had W: a majority of the membership.
    pg.start(corrupted);
    pg.start(stopped);
    let probe = pg.client().with_op_timeout(Duration::from_millis(700));
    let until = Instant::now() + Duration::from_secs(12);
    let mut refused = 0;
    while Instant::now() < until {
        match probe.get("w", &ark_client::ReadOptions::LINEARIZABLE).await {
            Ok(Some(v)) => assert_eq!(v.value, b"acknowledged"),
            Ok(None) => panic!("a cluster without the acknowledged write W answered 'not found'"),
            Err(_) => refused += 1,
        }
        // Nor may such a cluster accept writes (it would have to have elected a leader).
        assert!(
            probe.put("probe", b"x").await.is_err(),
            "nodes {corrupted} and {stopped} elected a leader without W"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(refused > 0);
    assert_eq!(pg.metric(corrupted, "ark_raft_log_damaged"), 1.0);
    let kept = pg.node(corrupted).data_dir.join("raft-log").join("damaged");
    assert!(
        std::fs::read_dir(&kept).unwrap().count() > 0,
        "the damaged segment is kept for a post-mortem"
    );

    // The operator's view of the stopped node: the record, and no clearing it by accident.
    pg.kill(corrupted);
    let arkd = ark_playground::playground::find_arkd().unwrap();
    let config = pg.node(corrupted).config;
    let o = std::process::Command::new(&arkd)
        .args(["log-damage", "show", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && out.contains("first entry lost"), "{out}");
    let o = std::process::Command::new(&arkd)
        .args(["log-damage", "clear", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "clear without --accept-data-loss must refuse");
    pg.start(corrupted);

    // The old leader comes back: the cluster serves W, and the corrupted node heals.
    pg.start(leader);
    let client = pg.client().with_op_timeout(Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(30);
    let w = loop {
        if let Ok(v) = client.get("w", &ark_client::ReadOptions::LINEARIZABLE).await {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "the cluster did not come back with the old leader"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(w.unwrap().value, b"acknowledged");
    client.put("after", b"healed").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg.metric(corrupted, "ark_raft_log_damaged") != 0.0 {
        assert!(Instant::now() < deadline, "node {corrupted} did not recover its log");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The healed node holds every acknowledged write again: with it and without the old
    // leader, the cluster still serves all of them.
    pg.kill(leader);
    let client = pg.client().with_op_timeout(Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.get("after", &ark_client::ReadOptions::LINEARIZABLE).await {
            Ok(Some(v)) => {
                assert_eq!(v.value, b"healed");
                break;
            }
            Ok(None) => panic!("'after' lost"),
            Err(_) => {}
        }
        assert!(
            Instant::now() < deadline,
            "no leader among the healed node and the other"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        client
            .get("w", &ark_client::ReadOptions::LINEARIZABLE)
            .await
            .unwrap()
            .unwrap()
            .value,
        b"acknowledged"
    );
    for i in 0..300 {
        let v = client
            .get(&format!("before-{i:03}"), &ark_client::ReadOptions::LINEARIZABLE)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(v.value, format!("v{i}").as_bytes());
    }
}
