//! `ark demo`: the guided failover tour on a fresh playground in a temp dir. It writes data,
//! kills every node of the leader's site while writers keep writing, measures the time until
//! a write succeeds again, proves that every acknowledged write is still readable, and
//! cleans up after itself, also on failure.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::Signal;

use ark_client::ArkClient;
use ark_playground::playground::{self, Layout, Playground};

/// Outcome of one demo run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoReport {
    /// Leader before the failure.
    pub old_leader: u64,
    /// The site that was lost.
    pub lost_site: String,
    /// Leader after the failover.
    pub new_leader: u64,
    /// From the kill to the first acknowledged write afterwards.
    pub failover_ms: u64,
    /// Writes acknowledged over the whole run.
    pub acknowledged_writes: usize,
    /// Acknowledged writes that could not be read back with their value (must be 0).
    pub lost_writes: usize,
}

/// Runs the tour. `say` prints a line of narration.
pub async fn run(sites: u32, say: &dyn Fn(&str)) -> anyhow::Result<DemoReport> {
    let tmp = tempfile::Builder::new()
        .prefix("ark-demo-")
        .tempdir()
        .context("creating temp dir")?;
    let dir = tmp.path().to_path_buf();
    say(&format!("Starting a {sites}-site playground in {} ...", dir.display()));
    let (pg, mut children) = playground::up(
        &dir,
        &Layout {
            sites,
            ..Layout::default()
        },
    )
    .await?;
    let result = tour(&dir, &pg, say).await;
    // Clean up whatever happened.
    let _ = playground::down(&dir, Duration::from_secs(5));
    for c in &mut children {
        let _ = c.wait();
    }
    drop(tmp);
    say("Playground stopped and its temp dir removed.");
    result
}

async fn tour(dir: &std::path::Path, pg: &Playground, say: &dyn Fn(&str)) -> anyhow::Result<DemoReport> {
    let client = ArkClient::new(&Playground::client_config(dir)?)?;
    let status = client.status().await?;
    let old_leader = status.leader_id.context("no leader after start-up")?;
    for n in &status.nodes {
        say(&format!(
            "  node {} in {} ({}){}",
            n.id,
            n.site,
            n.client_addr,
            if Some(n.id) == status.leader_id {
                "  <- leader"
            } else {
                ""
            }
        ));
    }

    say("Writing 100 keys (each acknowledged only once a majority has it on disk) ...");
    let acked: Arc<Mutex<BTreeMap<String, Vec<u8>>>> = Arc::default();
    for i in 0..100 {
        let k = format!("demo/before/{i:03}");
        let v = format!("value-{i}").into_bytes();
        client.put(&k, &v).await?;
        acked.lock().map_err(|_| anyhow::anyhow!("lock"))?.insert(k, v);
    }

    // Writers keep going through the failure; only acknowledged writes are recorded.
    let stop = Arc::new(AtomicBool::new(false));
    let first_ack_after: Arc<Mutex<Option<Instant>>> = Arc::default();
    let kill_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..4 {
        let client = client.clone();
        let (stop, acked, first, kill_at) = (stop.clone(), acked.clone(), first_ack_after.clone(), kill_at.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let k = format!("demo/during/{w}/{i:06}");
                let v = format!("w{w}-{i}").into_bytes();
                let sent = Instant::now();
                if client.put(&k, &v).await.is_ok() {
                    if let Ok(mut a) = acked.lock() {
                        a.insert(k, v);
                    }
                    let killed = kill_at.lock().ok().and_then(|g| *g);
                    if let Some(t) = killed {
                        if sent > t {
                            if let Ok(mut f) = first.lock() {
                                f.get_or_insert_with(Instant::now);
                            }
                        }
                    }
                }
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let lost_site = pg
        .node(old_leader)
        .map(|n| n.site.clone())
        .context("leader not in playground")?;
    let victims: Vec<_> = pg.nodes.iter().filter(|n| n.site == lost_site).cloned().collect();
    say(&format!(
        "Losing site {lost_site}: kill -9 of node(s) {:?} (the leader's site) while 4 writers keep writing ...",
        victims.iter().map(|n| n.id).collect::<Vec<_>>()
    ));
    let t0 = Instant::now();
    *kill_at.lock().map_err(|_| anyhow::anyhow!("lock"))? = Some(t0);
    for v in &victims {
        playground::signal_node(v, Signal::SIGKILL)?;
    }
    let deadline = t0 + Duration::from_secs(30);
    let first = loop {
        if let Some(t) = *first_ack_after.lock().map_err(|_| anyhow::anyhow!("lock"))? {
            break t;
        }
        if Instant::now() > deadline {
            stop.store(true, Ordering::Relaxed);
            bail!("no write succeeded within 30 s of losing site {lost_site}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let failover_ms = first.duration_since(t0).as_millis() as u64;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    let survivors = pg.client_addrs(|n| n.site != lost_site);
    let client = client.with_endpoints(survivors);
    let status = client.status().await?;
    let new_leader = status.leader_id.context("no leader after failover")?;
    say(&format!(
        "New leader: node {new_leader} in {}; writes succeeded again {failover_ms} ms after the site was lost.",
        pg.node(new_leader).map(|n| n.site.as_str()).unwrap_or("?")
    ));

    let acked = acked.lock().map_err(|_| anyhow::anyhow!("lock"))?.clone();
    say(&format!(
        "Reading back all {} acknowledged writes (linearizable reads) ...",
        acked.len()
    ));
    let mut lost = 0;
    for (k, v) in &acked {
        match client.get(k, &ark_client::ReadOptions::LINEARIZABLE).await? {
            Some(got) if &got.value == v => {}
            _ => lost += 1,
        }
    }
    if lost == 0 {
        say(&format!("All {} acknowledged writes are intact. RPO = 0.", acked.len()));
    } else {
        say(&format!("{lost} acknowledged writes are MISSING."));
    }
    Ok(DemoReport {
        old_leader,
        lost_site,
        new_leader,
        failover_ms,
        acknowledged_writes: acked.len(),
        lost_writes: lost,
    })
}
