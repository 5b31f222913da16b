//! `ark bench risk`: does forecast-driven replication keep more data safe when a node dies?
//!
//! One run: a 3-site playground of real `arkd` processes. Every node's SMART telemetry is a
//! real drive's daily record from a Backblaze file, replayed one day per `day_ms`
//! (`[telemetry] smart_replay`): node 2 (a follower) replays a drive that failed, the others
//! drives that did not. The failure forecaster is trained on the file's first ten days
//! (`arkd forecast fit-failure`) and stored as the cluster object `_ark/failure-model`.
//! Writers put objects into an async namespace (2 copies in 2 sites) through node 2 and node
//! 3 at a fixed rate above the repair queue's bandwidth budget (`objects.repair_mib_per_s`),
//! so a backlog builds. When node 2's replay reaches its drive's last day, node 2 is killed
//! (SIGKILL) and `verify` counts the acknowledged bytes that had no other copy (lost) and
//! those below policy. Each seed runs twice on the same drives and write schedule: queue
//! ordering `fifo` (risk-blind) and `expected-loss`.
//!
//! `ark bench prestage` ([`run_prestage`]): 3 sites × 2 nodes with a delay between sites
//! (each node's fault layer); hot objects (2 copies, 2 sites) written through random nodes
//! and read through the leader; then the leader's whole site is killed and each hot object is
//! read once through the successor the leader chose (another site, lowest id without
//! forecasts), with `risk.prestage` off and on.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ark_client::{DurabilityMode, NamespacePolicy};
use nix::sys::signal::Signal;
use rand::{RngCore, SeedableRng};
use serde::Serialize;

use ark_client::objects::{PutOptions, PutSource};
use ark_client::ArkClient;
use ark_playground::playground::{self, Layout, Playground};

use crate::bench::metric_sum;

/// The node that replays the failing drive and is killed.
const VICTIM: u64 = 2;
/// The other node the writers use.
const OTHER_WRITER: u64 = 3;
/// `risk.at_risk_probability` (the default, which the experiment keeps).
const AT_RISK: f64 = 0.9;
/// Namespace the writers fill.
const NAMESPACE: &str = "data";

/// Experiment settings.
#[derive(Debug, Clone)]
pub struct Params {
    /// Backblaze-layout CSV (`entity,date,failure,smart_*_raw...`), plain or gzip.
    pub backblaze: PathBuf,
    /// The failing drive node 2 replays.
    pub entity: String,
    /// Seeds (healthy drives drawn and object bytes); each runs both orderings.
    pub seeds: Vec<u64>,
    /// Milliseconds per replayed day.
    pub day_ms: u64,
    /// Repair queue budget, MiB/s.
    pub repair_mib_per_s: u64,
    /// Write rate over both writers, MiB/s.
    pub write_mib_per_s: f64,
    /// Bytes per object.
    pub object_bytes: usize,
    /// Working directory (weights, histories, one playground per run).
    pub dir: PathBuf,
}

/// One run's figures.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// Seed.
    pub seed: u64,
    /// `fifo` or `expected-loss`.
    pub ordering: String,
    /// Drives replayed by nodes 1, 2 (the failing one) and 3.
    pub drives: Vec<String>,
    /// Objects and bytes acknowledged before the kill.
    pub objects_acked: usize,
    /// Bytes acknowledged.
    pub bytes_acked: u64,
    /// Acknowledged objects whose only copies were on the killed node.
    pub objects_lost: usize,
    /// Their bytes.
    pub bytes_lost: u64,
    /// Acknowledged bytes below policy (fewer than 2 copies or sites) after the kill.
    pub bytes_below_policy: u64,
    /// Seconds from start until the leader first reported node 2 at risk (none: never).
    pub victim_at_risk_after_s: Option<f64>,
    /// Seconds from start until the kill.
    pub killed_after_s: f64,
    /// Node 2's highest failure probability the leader reported.
    pub victim_max_risk: Option<f64>,
}

fn arkd_forecast(arkd: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(arkd)
        .arg("forecast")
        .args(args)
        .output()
        .with_context(|| format!("running {} forecast {}", arkd.display(), args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "arkd forecast {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs every seed with both orderings; `say` narrates.
pub async fn run(p: &Params, say: &dyn Fn(&str)) -> anyhow::Result<Vec<RunReport>> {
    let arkd = playground::find_arkd()?;
    std::fs::create_dir_all(&p.dir).with_context(|| format!("creating {}", p.dir.display()))?;
    let s = |x: &Path| x.display().to_string();
    let (train, test, weights) = (
        p.dir.join("train.csv.gz"),
        p.dir.join("test.csv.gz"),
        p.dir.join("failure.safetensors"),
    );
    say("Training the failure forecaster on the first ten days ...");
    arkd_forecast(
        &arkd,
        &[
            "split-days",
            "--input",
            &s(&p.backblaze),
            "--first-days",
            "10",
            "--before",
            &s(&train),
            "--after",
            &s(&test),
        ],
    )?;
    say(arkd_forecast(&arkd, &["fit-failure", "--train", &s(&train), "--out", &s(&weights)])?.trim());
    let mut reports = Vec::new();
    for &seed in &p.seeds {
        let hist_dir = p.dir.join(format!("histories-{seed}"));
        let written = arkd_forecast(
            &arkd,
            &[
                "extract-history",
                "--input",
                &s(&p.backblaze),
                "--entity",
                &p.entity,
                "--out-dir",
                &s(&hist_dir),
                "--json",
            ],
        )?;
        let victim: serde_json::Value = serde_json::from_str(&written)?;
        let days = victim[0]["days"].as_u64().context("extract-history printed no days")?;
        if victim[0]["failed"] != serde_json::Value::Bool(true) {
            bail!("{} never fails in {}", p.entity, p.backblaze.display());
        }
        let healthy: serde_json::Value = serde_json::from_str(&arkd_forecast(
            &arkd,
            &[
                "extract-history",
                "--input",
                &s(&p.backblaze),
                "--healthy",
                "2",
                "--min-days",
                &days.to_string(),
                "--seed",
                &seed.to_string(),
                "--out-dir",
                &s(&hist_dir),
                "--json",
            ],
        )?)?;
        let file = |v: &serde_json::Value| v["file"].as_str().map(PathBuf::from).context("no file");
        let drives = [
            (
                file(&healthy[0])?,
                healthy[0]["entity"].as_str().unwrap_or("").to_string(),
            ),
            (file(&victim[0])?, p.entity.clone()),
            (
                file(&healthy[1])?,
                healthy[1]["entity"].as_str().unwrap_or("").to_string(),
            ),
        ];
        for ordering in ["fifo", "expected-loss"] {
            say(&format!(
                "seed {seed}, ordering {ordering}: node 2 replays {} ({days} days at {} ms/day) ...",
                p.entity, p.day_ms
            ));
            let r = run_one(p, seed, ordering, &drives, days, &weights).await?;
            say(&format!(
                "  {} objects ({} MiB) acknowledged; node 2 at risk after {}; killed after {:.1} s; lost {} objects ({:.1} MiB); below policy {:.1} MiB",
                r.objects_acked,
                r.bytes_acked / (1 << 20),
                r.victim_at_risk_after_s.map_or("never".to_string(), |t| format!("{t:.1} s")),
                r.killed_after_s,
                r.objects_lost,
                r.bytes_lost as f64 / f64::from(1 << 20),
                r.bytes_below_policy as f64 / f64::from(1 << 20),
            ));
            reports.push(r);
        }
    }
    Ok(reports)
}

async fn run_one(
    p: &Params,
    seed: u64,
    ordering: &str,
    drives: &[(PathBuf, String); 3],
    days: u64,
    weights: &Path,
) -> anyhow::Result<RunReport> {
    let dir = p.dir.join(format!("run-{seed}-{ordering}"));
    if dir.exists() {
        let _ = playground::down(&dir, Duration::from_secs(5));
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let settings = vec![
        (0, "risk".to_string(), format!("ordering = \"{ordering}\"")),
        (0, "risk".to_string(), format!("day_ms = {}", p.day_ms)),
        (
            0,
            "objects".to_string(),
            format!("repair_mib_per_s = {}", p.repair_mib_per_s),
        ),
        (
            0,
            "telemetry".to_string(),
            format!("smart_replay_day_ms = {}", p.day_ms),
        ),
    ];
    let mut layout = Layout {
        sites: 3,
        nodes_per_site: 1,
        settings,
        ..Layout::default()
    };
    for (i, (path, _)) in drives.iter().enumerate() {
        layout.replay_smart(i as u64 + 1, &std::fs::canonicalize(path)?);
    }
    let (pg, mut children) = playground::up(&dir, &layout).await?;
    let started = Instant::now();
    let result = drive(p, seed, ordering, drives, days, weights, &dir, &pg, started).await;
    let _ = playground::down(&dir, Duration::from_secs(5));
    for c in &mut children {
        let _ = c.wait();
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn drive(
    p: &Params,
    seed: u64,
    ordering: &str,
    drives: &[(PathBuf, String); 3],
    days: u64,
    weights: &Path,
    dir: &Path,
    pg: &Playground,
    started: Instant,
) -> anyhow::Result<RunReport> {
    let client = ArkClient::new(&Playground::client_config(dir)?)?;
    let status = client.status().await?;
    if status.leader_id == Some(VICTIM) {
        bail!("node {VICTIM} won the first election; the experiment needs it to be a follower (rerun)");
    }
    client
        .create_namespace("_ark", NamespacePolicy::replicated(3, 2, DurabilityMode::Sync))
        .await?;
    client
        .put_object(
            "_ark",
            "failure-model",
            PutSource::File(weights.to_path_buf()),
            &PutOptions::default(),
        )
        .await?;
    client
        .create_namespace(NAMESPACE, NamespacePolicy::replicated(2, 2, DurabilityMode::Async))
        .await?;
    let kill_at = started + Duration::from_millis(days * p.day_ms);
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    // Writers: one per endpoint, each at half the write rate.
    let mut writers = Vec::new();
    for node in [VICTIM, OTHER_WRITER] {
        let addr = pg.node(node).context("node missing")?.client_addr.clone();
        let c = client
            .with_endpoints(vec![addr])
            .with_op_timeout(Duration::from_secs(10));
        let (stop, acked) = (stop.clone(), acked.clone());
        let size = p.object_bytes;
        let every = Duration::from_secs_f64(size as f64 / (p.write_mib_per_s * 1048576.0 / 2.0));
        writers.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(node));
            let mut next = tokio::time::Instant::now();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut buf = vec![0u8; size];
                rng.fill_bytes(&mut buf);
                let key = format!("n{node}-{i:06}");
                i += 1;
                let src = PutSource::Reader {
                    reader: Box::new(std::io::Cursor::new(buf)),
                    size: Some(size as u64),
                };
                if c.put_object(NAMESPACE, &key, src, &PutOptions::default()).await.is_ok() {
                    if let Ok(mut a) = acked.lock() {
                        a.push((key, size as u64));
                    }
                }
                next += every;
                tokio::time::sleep_until(next).await;
            }
        }));
    }
    // Watch the leader's view of node 2 until the kill.
    let mut at_risk_after = None;
    let mut max_risk: Option<f64> = None;
    while Instant::now() < kill_at {
        if let Ok(s) = client.status().await {
            if let Some(n) = s.nodes.iter().find(|n| n.id == VICTIM) {
                if let Some(r) = n.failure_risk {
                    max_risk = Some(max_risk.map_or(r, |m: f64| m.max(r)));
                }
                // Both orderings' leaders forecast; only expected-loss acts on it.
                if n.failure_risk.is_some_and(|r| r >= AT_RISK) && at_risk_after.is_none() {
                    at_risk_after = Some(started.elapsed().as_secs_f64());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500).min(kill_at.saturating_duration_since(Instant::now()))).await;
    }
    let victim = pg.node(VICTIM).context("node missing")?;
    playground::signal_node(victim, Signal::SIGKILL)?;
    let killed_after_s = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    // Verify through the survivors; node 2's copies no longer answer.
    let survivors = pg.client_addrs(|n| n.id != VICTIM);
    let report = client
        .with_endpoints(survivors)
        .with_op_timeout(Duration::from_secs(60))
        .verify(Some(NAMESPACE))
        .await?;
    let acked = acked.lock().map(|a| a.clone()).unwrap_or_default();
    let by_key: std::collections::HashMap<String, (u32, bool)> = report
        .objects
        .iter()
        .map(|o| (o.object.key.clone(), (o.copies, o.at_policy)))
        .collect();
    let (mut objects_lost, mut bytes_lost, mut below) = (0, 0, 0);
    for (key, size) in &acked {
        match by_key.get(key) {
            Some((copies, at_policy)) => {
                if *copies == 0 {
                    objects_lost += 1;
                    bytes_lost += size;
                }
                if !at_policy {
                    below += size;
                }
            }
            None => bail!("acknowledged object {NAMESPACE}/{key} is missing from verify"),
        }
    }
    Ok(RunReport {
        seed,
        ordering: ordering.to_string(),
        drives: drives.iter().map(|d| d.1.clone()).collect(),
        objects_acked: acked.len(),
        bytes_acked: acked.iter().map(|a| a.1).sum(),
        objects_lost,
        bytes_lost,
        bytes_below_policy: below,
        victim_at_risk_after_s: at_risk_after,
        killed_after_s,
        victim_max_risk: max_risk,
    })
}

/// Settings of the pre-staging experiment (`ark bench prestage`).
#[derive(Debug, Clone)]
pub struct PrestageParams {
    /// Seeds (object bytes and which node receives each put); each runs with and without.
    pub seeds: Vec<u64>,
    /// Hot objects.
    pub objects: usize,
    /// Bytes per hot object.
    pub object_bytes: usize,
    /// One-way delay between sites (the fault layer), ms.
    pub wan_delay_ms: u64,
    /// Working directory.
    pub dir: PathBuf,
}

/// One pre-staging run.
#[derive(Debug, Clone, Serialize)]
pub struct PrestageReport {
    /// Seed.
    pub seed: u64,
    /// Whether `risk.prestage` was on.
    pub prestage: bool,
    /// The leader whose site was killed, and the follower the leader warmed (or would have).
    pub old_leader: u64,
    /// The successor the reads went to.
    pub successor: u64,
    /// The node that won the election after the site loss.
    pub new_leader: u64,
    /// With pre-staging: hot chunks the successor already held when asked to warm them,
    /// summed over the leader's pre-stage requests.
    pub local_chunks: f64,
    /// First read of each hot object through the successor after failover, ms, sorted. The
    /// manifest comes from the successor's own replica (`stale`), so this times the data
    /// path, which pre-staging changes, without the read-index round trip, which depends on
    /// which survivor won the election (see `read_index_ms`).
    pub read_ms: Vec<f64>,
    /// Median of linearizable reads of a small key through the successor right after the
    /// object reads: what a linearizable object read adds to `read_ms`.
    pub read_index_ms: f64,
    /// Median and maximum of `read_ms`.
    pub read_p50_ms: f64,
    /// Maximum.
    pub read_max_ms: f64,
    /// Mean.
    pub read_mean_ms: f64,
    /// With pre-staging: hot chunks the successor fetched into its cache before the failover,
    /// summed over the leader's pre-stage requests.
    pub prestaged_chunks: f64,
}

/// Runs the pre-staging experiment; `say` narrates.
pub async fn run_prestage(p: &PrestageParams, say: &dyn Fn(&str)) -> anyhow::Result<Vec<PrestageReport>> {
    std::fs::create_dir_all(&p.dir).with_context(|| format!("creating {}", p.dir.display()))?;
    let mut out = Vec::new();
    for &seed in &p.seeds {
        for prestage in [false, true] {
            say(&format!(
                "seed {seed}, pre-staging {}: 3 sites x 2 nodes, {} ms between sites ...",
                if prestage { "on" } else { "off" },
                p.wan_delay_ms
            ));
            let dir = p.dir.join(format!("prestage-{seed}-{prestage}"));
            if dir.exists() {
                let _ = playground::down(&dir, Duration::from_secs(5));
                std::fs::remove_dir_all(&dir)?;
            }
            let layout = Layout {
                sites: 3,
                nodes_per_site: 2,
                settings: vec![(0, "risk".to_string(), format!("prestage = {prestage}"))],
                ..Layout::default()
            };
            let (pg, mut children) = playground::up(&dir, &layout).await?;
            let r = prestage_run(p, seed, prestage, &dir, &pg).await;
            let _ = playground::down(&dir, Duration::from_secs(5));
            for c in &mut children {
                let _ = c.wait();
            }
            let r = r?;
            say(&format!(
                "  leader {} (site lost), successor {}, new leader {}; first reads through the successor p50 {:.1} ms, mean {:.1} ms, max {:.1} ms (+ {:.1} ms read index when linearizable); hot chunks pre-staged {}, already held {}",
                r.old_leader, r.successor, r.new_leader, r.read_p50_ms, r.read_mean_ms, r.read_max_ms, r.read_index_ms, r.prestaged_chunks, r.local_chunks
            ));
            out.push(r);
        }
    }
    Ok(out)
}

async fn prestage_run(
    p: &PrestageParams,
    seed: u64,
    prestage: bool,
    dir: &Path,
    pg: &Playground,
) -> anyhow::Result<PrestageReport> {
    let client = ArkClient::new(&Playground::client_config(dir)?)?;
    // Inter-site delay through each node's fault layer.
    for n in &pg.nodes {
        let mut rules = String::new();
        for o in pg.nodes.iter().filter(|o| o.site != n.site) {
            rules.push_str(&format!(
                "[[rule]]\npeer = \"{}\"\ndelay_ms = {}\n",
                o.peer_addr, p.wan_delay_ms
            ));
        }
        let f = n.config.parent().context("node dir")?.join("faults.toml");
        std::fs::write(&f, rules)?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let leader = client.status().await?.leader_id.context("no leader")?;
    let leader_site = pg.node(leader).context("leader")?.site.clone();
    client
        .create_namespace("hot", NamespacePolicy::replicated(2, 2, DurabilityMode::Sync))
        .await?;
    client.put("read-index-probe", b"x").await?;
    // Hot objects written through random nodes, so their holders vary.
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = Vec::new();
    for i in 0..p.objects {
        let mut buf = vec![0u8; p.object_bytes];
        rng.fill_bytes(&mut buf);
        let via = &pg.nodes[(rng.next_u32() as usize) % pg.nodes.len()];
        client
            .with_endpoints(vec![via.client_addr.clone()])
            .put_object(
                "hot",
                &format!("obj-{i}"),
                PutSource::Reader {
                    reader: Box::new(std::io::Cursor::new(buf.clone())),
                    size: Some(buf.len() as u64),
                },
                &PutOptions::default(),
            )
            .await?;
        data.push(buf);
    }
    // Serve them a few times through the leader: they become the hot set.
    let via_leader = client.with_endpoints(vec![pg.node(leader).context("leader")?.client_addr.clone()]);
    for _ in 0..3 {
        for i in 0..p.objects {
            let mut sink = Vec::new();
            via_leader
                .get_object(
                    "hot",
                    &format!("obj-{i}"),
                    &ark_client::objects::GetOptions::default(),
                    &mut sink,
                )
                .await?;
        }
    }
    // The successor: as the leader chooses it (another site, lowest id without forecasts).
    let successor = pg
        .nodes
        .iter()
        .filter(|n| n.site != leader_site)
        .map(|n| n.id)
        .min()
        .context("no other site")?;
    let s_node = pg.node(successor).context("successor")?.clone();
    // Let the leader learn the hot set (one telemetry interval) and, when on, warm the
    // successor: wait until its pre-stage counters stop moving.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = -1.0;
    loop {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let now = metric_sum(&s_node.metrics_addr, "ark_prestage_chunks_total");
        let st = client
            .status_of(&pg.node(leader).context("leader")?.client_addr)
            .await?;
        if let Some(warmed) = st.prestage_node.filter(|&n| prestage && n != successor) {
            bail!("the leader warmed node {warmed} but the experiment expected {successor}");
        }
        if !prestage || (now > 0.0 && now == last) || Instant::now() > deadline {
            break;
        }
        last = now;
    }
    let prestaged_chunks = metric_sum(&s_node.metrics_addr, "ark_prestage_chunks_total{result=\"fetched\"}");
    let local_chunks = metric_sum(&s_node.metrics_addr, "ark_prestage_chunks_total{result=\"local\"}");
    // Lose the leader's site.
    let dead: Vec<u64> = pg
        .nodes
        .iter()
        .filter(|n| n.site == leader_site)
        .map(|n| n.id)
        .collect();
    for id in &dead {
        playground::signal_node(pg.node(*id).context("node")?, Signal::SIGKILL)?;
    }
    let via_s = client.with_endpoints(vec![s_node.client_addr.clone()]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let new_leader = loop {
        if let Ok(st) = via_s.status_of(&s_node.client_addr).await {
            if let Some(l) = st.leader_id.filter(|l| !dead.contains(l)) {
                break l;
            }
        }
        if Instant::now() > deadline {
            bail!("no new leader within 30 s of losing {leader_site}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // One linearizable read first, so that the timings below are reads, not the election
    // (and the successor has applied everything the new leader committed).
    let mut sink = Vec::new();
    let _ = via_s
        .get_object("hot", "obj-0", &ark_client::objects::GetOptions::default(), &mut sink)
        .await;
    let stale = ark_client::objects::GetOptions {
        stale: true,
        ..Default::default()
    };
    let mut read_ms = Vec::new();
    for (i, want) in data.iter().enumerate().skip(1) {
        let mut sink = Vec::new();
        let t = Instant::now();
        via_s.get_object("hot", &format!("obj-{i}"), &stale, &mut sink).await?;
        read_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        if &sink != want {
            bail!("obj-{i} read back different bytes");
        }
    }
    let read_p50_ms = sort_and_median(&mut read_ms);
    let mut index_ms = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        via_s
            .get("read-index-probe", &ark_client::ReadOptions::LINEARIZABLE)
            .await?;
        index_ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(PrestageReport {
        read_index_ms: sort_and_median(&mut index_ms),
        seed,
        prestage,
        old_leader: leader,
        successor,
        new_leader,
        local_chunks,
        read_p50_ms,
        read_max_ms: read_ms.last().copied().unwrap_or(0.0),
        read_mean_ms: read_ms.iter().sum::<f64>() / read_ms.len().max(1) as f64,
        read_ms,
        prestaged_chunks,
    })
}

/// Sorts timings in place and returns their median (0 when there are none).
fn sort_and_median(ms: &mut [f64]) -> f64 {
    ms.sort_by(f64::total_cmp);
    ms.get(ms.len() / 2).copied().unwrap_or(0.0)
}
