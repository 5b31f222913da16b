//! Cluster behaviour through the public API, on real `arkd` processes over loopback:
//! election, replication, failover without losing acknowledged writes, recovery from disk,
//! snapshots for new and lagging nodes, and membership changes under load.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ark_client::NodeSpec;
use ark_playground::testkit::{stderr, stdout, Pg};

/// The script from the issue, through the CLI: 50 puts, kill -9 of the leader found via
/// `status --json` and `playground.json`, a put succeeds again within 5 s, all keys read back.
#[tokio::test(flavor = "multi_thread")]
async fn cli_leader_kill_script() {
    let pg = Pg::up(3, 20_000).await;
    for i in 0..50 {
        let o = pg.ark(&["kv", "put", &format!("k{i:02}"), &format!("v{i}")]);
        assert!(o.status.success(), "put {i}: {}", stderr(&o));
    }
    let o = pg.ark(&["status", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let st: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let leader = st["leader_id"].as_u64().expect("leader_id is a number");
    assert_eq!(st["nodes"].as_array().unwrap().len(), 3);
    for n in st["nodes"].as_array().unwrap() {
        for f in ["id", "site", "role", "client_addr", "healthy"] {
            assert!(n.get(f).is_some(), "status node lacks {f}: {n}");
        }
    }
    let pj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(pg.path().join("playground.json")).unwrap()).unwrap();
    let node = pj["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"].as_u64() == Some(leader))
        .expect("leader in playground.json")
        .clone();
    for f in ["id", "site", "pid", "client_addr", "peer_addr", "data_dir"] {
        assert!(node.get(f).is_some(), "playground.json node lacks {f}");
    }
    let pid = node["pid"].as_u64().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let t0 = Instant::now();
    let o = pg.ark(&["--timeout-ms", "5000", "kv", "put", "after-kill", "yes"]);
    let took = t0.elapsed();
    assert!(o.status.success(), "put after kill failed: {}", stderr(&o));
    assert!(took < Duration::from_secs(5), "put after kill took {took:?}");
    for i in 0..50 {
        let o = pg.ark(&["kv", "get", &format!("k{i:02}")]);
        assert!(o.status.success(), "get {i}: {}", stderr(&o));
        assert_eq!(stdout(&o).trim(), format!("v{i}"));
    }
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_ark"))
        .args(["playground", "down", "--dir"])
        .arg(pg.path())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 3, "down reports every node: {}", stdout(&o));
}

/// Concurrent writers with unique keys; returns the acknowledged (key, value) pairs.
struct Writers {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<BTreeMap<String, String>>>,
    /// The writes that failed (key and error).
    failed: Arc<Mutex<Vec<(String, String)>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Writers {
    /// `n` writers whose operations may take up to 10 s (they ride out failovers).
    fn start(client: ark_client::ArkClient, n: usize, tag: &str) -> Writers {
        Self::start_as(client.with_op_timeout(Duration::from_secs(10)), n, tag)
    }

    /// `n` writers with `client`'s own timeouts.
    fn start_as(client: ark_client::ArkClient, n: usize, tag: &str) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
        let failed: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let tasks = (0..n)
            .map(|w| {
                let (client, stop, acked, failed) = (client.clone(), stop.clone(), acked.clone(), failed.clone());
                let tag = tag.to_string();
                tokio::spawn(async move {
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let k = format!("{tag}/{w}/{i:07}");
                        let v = format!("{w}-{i}-{}", rand::random::<u32>());
                        // Only acknowledged writes are recorded; a failed one is unknown and
                        // never retried under another request id.
                        match client.put(&k, v.as_bytes()).await {
                            Ok(_) => {
                                acked.lock().unwrap().insert(k, v);
                            }
                            Err(e) => failed.lock().unwrap().push((k, e.to_string())),
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        Writers {
            stop,
            acked,
            failed,
            tasks,
        }
    }

    /// Stops the writers; the acknowledged writes.
    async fn stop(self) -> BTreeMap<String, String> {
        self.stop_all().await.0
    }

    /// Stops the writers; the acknowledged writes and the failed ones.
    async fn stop_all(self) -> (BTreeMap<String, String>, Vec<(String, String)>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let acked = self.acked.lock().unwrap().clone();
        let failed = self.failed.lock().unwrap().clone();
        (acked, failed)
    }
}

async fn assert_all_readable(client: &ark_client::ArkClient, acked: &BTreeMap<String, String>) {
    let mut lost = Vec::new();
    for (k, v) in acked {
        match client.get(k, &ark_client::ReadOptions::LINEARIZABLE).await.unwrap() {
            Some(got) if got.value == v.as_bytes() => {}
            other => lost.push((k.clone(), other.map(|g| String::from_utf8_lossy(&g.value).to_string()))),
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost: {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
}

/// 20 consecutive leader kills under concurrent writes: every acknowledged write survives.
#[tokio::test(flavor = "multi_thread")]
async fn twenty_leader_kills_lose_no_acknowledged_write() {
    let mut pg = Pg::up(3, 500).await;
    let writers = Writers::start(pg.client(), 4, "kills");
    let started = Instant::now();
    let mut leader = pg.wait_leader(None, Duration::from_secs(10)).await;
    for round in 0..20 {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "kill loop ran too long (round {round})"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        pg.kill(leader);
        let new = pg.wait_leader(Some(leader), Duration::from_secs(10)).await;
        pg.start(leader);
        leader = new;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let acked = writers.stop().await;
    assert!(
        acked.len() > 100,
        "too few writes acknowledged to mean anything: {}",
        acked.len()
    );
    assert_all_readable(&pg.client(), &acked).await;
}

/// Planned hand-overs under load: `ark members transfer-leader` moves the leadership to the
/// named voter (and, without a name, to another one), and not one write fails, with the
/// client's ordinary timeouts. Then the leader is stopped with SIGTERM (as systemd stops it)
/// and hands over by itself: again no write fails.
#[tokio::test(flavor = "multi_thread")]
async fn transfer_leader_under_load_fails_no_write() {
    let mut pg = Pg::up(3, 10_000).await;
    let client = pg.client();
    let writers = Writers::start_as(client.clone(), 4, "handover");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut leader = pg.wait_leader(None, Duration::from_secs(10)).await;
    for round in 0..6 {
        let named = round % 3 != 2;
        let to = (1..=3)
            .map(|d| (leader + d - 1) % 3 + 1)
            .find(|id| *id != leader)
            .unwrap();
        let to_arg = to.to_string();
        let args: Vec<&str> = if named {
            vec!["members", "transfer-leader", &to_arg]
        } else {
            vec!["members", "transfer-leader"]
        };
        let o = pg.ark(&args);
        assert!(o.status.success(), "round {round}: {}", stderr(&o));
        let now = pg.wait_leader(None, Duration::from_secs(10)).await;
        assert_ne!(
            now,
            leader,
            "round {round}: the leadership did not move: {}",
            stdout(&o)
        );
        if named {
            assert_eq!(now, to, "round {round}: {}", stdout(&o));
        }
        assert!(stdout(&o).contains(&format!("node {now} leads now")), "{}", stdout(&o));
        leader = now;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Naming the node that already leads changes nothing.
    let o = pg.ark(&["members", "transfer-leader", &leader.to_string()]);
    assert!(
        o.status.success() && stdout(&o).contains("already leads"),
        "{}",
        stdout(&o)
    );
    // A graceful stop of the leader hands over before the node goes.
    pg.stop(leader);
    let after = pg.wait_leader(Some(leader), Duration::from_secs(10)).await;
    pg.start(leader);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (acked, failed) = writers.stop_all().await;
    assert!(acked.len() > 100, "too few writes to mean anything: {}", acked.len());
    assert!(
        failed.is_empty(),
        "{} of {} writes failed during planned hand-overs (last leader {after}): {:?}",
        failed.len(),
        failed.len() + acked.len(),
        &failed[..failed.len().min(5)]
    );
    assert_all_readable(&client, &acked).await;
}

/// A cluster whose every node is killed at once comes back from its disks with every
/// acknowledged write.
#[tokio::test(flavor = "multi_thread")]
async fn whole_cluster_crash_recovers_from_disk() {
    let mut pg = Pg::up(3, 300).await;
    let writers = Writers::start(pg.client(), 4, "crash");
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Kill while writes are in flight.
    for id in 1..=3 {
        pg.kill(id);
    }
    let acked = writers.stop().await;
    assert!(acked.len() > 50, "only {} writes before the crash", acked.len());
    for id in 1..=3 {
        pg.start(id);
    }
    pg.wait_leader(None, Duration::from_secs(20)).await;
    assert_all_readable(&pg.client(), &acked).await;
}

/// A node that was down while the log was compacted catches up from a snapshot.
#[tokio::test(flavor = "multi_thread")]
async fn far_behind_node_catches_up_from_snapshot() {
    let mut pg = Pg::up(3, 100).await;
    let leader = pg.wait_leader(None, Duration::from_secs(10)).await;
    let lagger = (1..=3).find(|id| *id != leader).unwrap();
    pg.kill(lagger);
    let client = pg.client();
    for i in 0..600 {
        client
            .put(&format!("snap/{i:04}"), format!("{i}").as_bytes())
            .await
            .unwrap();
    }
    pg.start(lagger);
    let addr = pg.node(lagger).client_addr;
    let direct = client.with_endpoints(vec![addr]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (items, _) = direct
            .list("snap/", &ark_client::ListKeysOptions { limit: 0, stale: true })
            .await
            .unwrap_or_default();
        if items.len() == 600 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lagging node has {} of 600 keys",
            items.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        pg.metric(lagger, "ark_raft_snapshots_installed_total") >= 1.0,
        "catch-up did not use a snapshot"
    );
    let v = direct
        .get("snap/0599", &ark_client::ReadOptions::STALE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v.value, b"599");
}

/// Add a learner (it catches up from a snapshot), promote it, remove a voter, all while
/// writers keep writing; nothing acknowledged is lost and membership is what was asked for.
#[tokio::test(flavor = "multi_thread")]
async fn membership_add_promote_remove_under_load() {
    let mut pg = Pg::up(3, 200).await;
    let client = pg.client();
    for i in 0..400 {
        client.put(&format!("pre/{i:04}"), b"x").await.unwrap();
    }
    let writers = Writers::start(client.clone(), 4, "members");
    let new = pg.add_node("site-d", 200);
    let spec = NodeSpec {
        id: new.id,
        site: new.site.clone(),
        peer_addr: new.peer_addr.clone(),
        client_addr: new.client_addr.clone(),
    };
    let r = client
        .add_learner(spec, &ark_client::AddLearnerOptions { wait_caught_up: true })
        .await
        .unwrap();
    assert!(r.learners.contains(&new.id), "{r:?}");
    let r = client.promote(new.id).await.unwrap();
    assert!(r.voters.contains(&new.id), "{r:?}");
    let leader = pg.wait_leader(None, Duration::from_secs(10)).await;
    let victim = (1..=3).find(|id| *id != leader).unwrap();
    let r = client.remove(victim).await.unwrap();
    assert!(!r.voters.contains(&victim) && !r.learners.contains(&victim), "{r:?}");
    pg.kill(victim);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acked = writers.stop().await;
    let st = client.status().await.unwrap();
    let mut voters: Vec<u64> = st.nodes.iter().filter(|n| n.role == "voter").map(|n| n.id).collect();
    voters.sort();
    let mut want: Vec<u64> = (1..=3).filter(|id| *id != victim).chain([new.id]).collect();
    want.sort();
    assert_eq!(voters, want);
    assert_all_readable(&client, &acked).await;
    // The new node serves the data it caught up on.
    let direct = client.with_endpoints(vec![new.client_addr.clone()]);
    let (items, _) = direct
        .list("pre/", &ark_client::ListKeysOptions { limit: 0, stale: true })
        .await
        .unwrap();
    assert_eq!(items.len(), 400);
    assert!(
        pg.metric(new.id, "ark_raft_snapshots_installed_total") >= 1.0,
        "the learner should have started from a snapshot"
    );
}

/// The load generator runs against a playground and reports what the issue asks for.
#[tokio::test(flavor = "multi_thread")]
async fn bench_kv_reports_throughput_and_latency() {
    let pg = Pg::up(3, 20_000).await;
    let o = pg.ark(&[
        "bench",
        "kv",
        "--clients",
        "8",
        "--value-bytes",
        "256",
        "--duration",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(r["target"], "ark");
    assert_eq!(r["errors"].as_u64(), Some(0), "{r}");
    assert!(r["ops"].as_u64().unwrap() > 0, "{r}");
    assert!(r["throughput_ops_per_s"].as_f64().unwrap() > 0.0);
    let lat = &r["latency_ms"];
    let (p50, p99, p999) = (
        lat["p50"].as_f64().unwrap(),
        lat["p99"].as_f64().unwrap(),
        lat["p999"].as_f64().unwrap(),
    );
    assert!(0.0 < p50 && p50 <= p99 && p99 <= p999, "{lat}");
    // The benchmark's writes are real: one of its keys reads back with its value size.
    let v = pg
        .client()
        .get("bench/0000/000000", &ark_client::ReadOptions::LINEARIZABLE)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v.value.len(), 256);
}

/// A burst of linearizable reads, on the leader and through a follower (which asks the
/// leader for a read index), all answer with the acknowledged value and share leadership
/// confirmations: a heartbeat round per read made some reads fail under load ("cannot reach
/// a quorum") on a healthy cluster.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_linearizable_reads_shares_leadership_confirmations() {
    const READS: usize = 600;
    let pg = Pg::up(3, 20_000).await;
    let leader = pg.wait_leader(None, Duration::from_secs(20)).await;
    let follower = (1..=3).find(|n| *n != leader).unwrap();
    let (on_leader, via_follower) = (pg.client_of(leader), pg.client_of(follower));
    let revision = on_leader.put("burst", b"acknowledged").await.unwrap();
    let linearizable = &ark_client::ReadOptions::LINEARIZABLE;
    // Both clients have read once, so the burst finds the fence entry committed and its
    // connections open.
    on_leader.get("burst", linearizable).await.unwrap();
    via_follower.get("burst", linearizable).await.unwrap();

    let confirmations = || pg.metric(leader, "ark_read_confirmations_total");
    let failed_reads = || {
        (1..=3)
            .map(|n| pg.metric(n, "ark_kv_requests_total{op=\"get\",result=\"error\"}"))
            .sum::<f64>()
    };
    let (confirmed_before, failed_before) = (confirmations(), failed_reads());
    let reads = (0..READS).map(|i| {
        let c = if i % 2 == 0 { &on_leader } else { &via_follower };
        c.get("burst", linearizable)
    });
    for (i, answer) in futures::future::join_all(reads).await.into_iter().enumerate() {
        let v = answer
            .unwrap_or_else(|e| panic!("read {i}: {e}"))
            .expect("the key was written");
        assert_eq!((v.value.as_slice(), v.revision), (&b"acknowledged"[..], revision));
    }
    assert_eq!(failed_reads() - failed_before, 0.0, "reads failed and were retried");
    let rounds = confirmations() - confirmed_before;
    assert!(
        (1.0..=(READS / 4) as f64).contains(&rounds),
        "{rounds} leadership confirmations for {READS} concurrent reads"
    );
}
