//! Risk-aware replication end to end: a failure forecaster stored as a cluster object, a
//! node replaying a failing drive's SMART record, and the leader acting on it; load
//! forecasters; the hot set pre-staged on the successor.
//!
//! The forecaster is trained here on a synthetic table (failing drives' reallocated-sector
//! count climbs for days before they fail), so the test needs no dataset.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::path::Path;
use std::time::{Duration, Instant};

use ark_client::objects::{GetOptions, PutOptions, PutSource};
use ark_client::{ClusterStatus, DurabilityMode, NamespacePolicy};
use ark_forecast::data::EntityTable;
use ark_forecast::global::Series;
use ark_forecast::history::{entity_history, write_history};
use ark_forecast::{FailureConfig, FailureForecaster, GlobalConfig, GlobalLoadModel};
use ark_playground::playground::{self, Layout};
use ark_playground::testkit::Pg;

/// Milliseconds per replayed (and model) day.
const DAY_MS: u64 = 500;
const DAYS: i64 = 16;

/// 60 drives over 16 days; every 6th fails on the last day after its smart_5 climbs.
fn table() -> EntityTable {
    let mut t = EntityTable {
        feature_names: vec!["smart_5_raw".into(), "smart_9_raw".into(), "smart_197_raw".into()],
        ..EntityTable::default()
    };
    for e in 0..60u32 {
        t.entity_names.push(format!("d{e}"));
        let failing = e % 6 == 0;
        for d in 0..DAYS {
            t.entity.push(e);
            t.day.push(15_000 + d);
            t.failure.push(failing && d == DAYS - 1);
            let climb = if failing && d >= 6 {
                ((d - 5) * (d - 5) * 40) as f32
            } else {
                0.0
            };
            t.features.extend([
                climb + (e % 4) as f32,
                (20_000 + e * 100 + d as u32 * 24) as f32,
                climb / 10.0,
            ]);
        }
    }
    t
}

fn prepare(dir: &Path) -> (std::path::PathBuf, [std::path::PathBuf; 3]) {
    let t = table();
    let (model, _) = FailureForecaster::fit(
        &t,
        &FailureConfig {
            horizon_days: 10,
            history_days: 7,
            hidden: vec![],
            epochs: 30,
            batch_size: 64,
            learning_rate: 2e-2,
            seed: 1,
            ensemble: 1,
            select: false,
            ..FailureConfig::default()
        },
    )
    .unwrap();
    let weights = dir.join("failure.safetensors");
    std::fs::write(&weights, model.to_bytes().unwrap()).unwrap();
    let h = |e: &str| {
        let p = dir.join(format!("{e}.csv"));
        write_history(&p, &t.feature_names, &entity_history(&t, e).unwrap()).unwrap();
        p
    };
    // Node 2 replays failing drive d6; nodes 1 and 3 healthy ones.
    (weights, [h("d1"), h("d6"), h("d7")])
}

async fn leader_status(pg: &Pg) -> ClusterStatus {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(s) = pg.client().status().await {
            if let Some(l) = s.leader_id {
                if let Ok(s) = pg.client().status_of(&pg.node(l).client_addr).await {
                    if s.state == "leader" {
                        return s;
                    }
                }
            }
        }
        assert!(Instant::now() < deadline, "no leader answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn chunk_files(root: &Path) -> usize {
    let mut n = 0;
    for fan in std::fs::read_dir(root).unwrap() {
        let fan = fan.unwrap().path();
        if fan.is_dir() {
            n += std::fs::read_dir(&fan)
                .unwrap()
                .filter(|e| !e.as_ref().unwrap().file_name().to_string_lossy().starts_with('.'))
                .count();
        }
    }
    n
}

/// The keys of the objects in `_ark` (where the forecasters live), at most 100.
async fn ark_keys(pg: &Pg) -> Option<Vec<String>> {
    let options = ark_client::ListObjectsOptions {
        limit: 100,
        ..Default::default()
    };
    let (list, _) = pg.client().list_objects("_ark", &options).await.ok()?;
    Some(list.into_iter().map(|i| i.key).collect())
}

async fn put(pg: &Pg, node: u64, key: &str, byte: u8) {
    put_in(pg, "data", node, key, byte).await;
}

async fn put_in(pg: &Pg, ns: &str, node: u64, key: &str, byte: u8) {
    let data = vec![byte; 600 * 1024];
    pg.client()
        .with_endpoints(vec![pg.node(node).client_addr])
        .put_object(
            ns,
            key,
            PutSource::Reader {
                reader: Box::new(std::io::Cursor::new(data)),
                size: Some(600 * 1024),
            },
            &PutOptions::default(),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn leader_flags_a_failing_node_and_moves_its_data_first() {
    ark_playground::testkit::arkd_built();
    let work = tempfile::Builder::new().prefix("ark-test-").tempdir().unwrap();
    let (weights, histories) = prepare(work.path());
    let settings = vec![
        (0, "risk".to_string(), format!("day_ms = {DAY_MS}")),
        (0, "telemetry".to_string(), format!("smart_replay_day_ms = {DAY_MS}")),
        // A small budget, so that the queue has a visible backlog.
        (0, "objects".to_string(), "repair_mib_per_s = 1".to_string()),
    ];
    let mut layout = Layout {
        sites: 3,
        nodes_per_site: 1,
        ready_timeout: Duration::from_secs(60),
        settings,
        ..Layout::default()
    };
    for (i, h) in histories.iter().enumerate() {
        layout.replay_smart(i as u64 + 1, h);
    }
    let dir = tempfile::Builder::new().prefix("ark-test-").tempdir().unwrap();
    let (_, children) = playground::up(dir.path(), &layout).await.unwrap();
    let pg = Pg { dir, children };

    // Without the forecaster nobody has a failure probability.
    let s = leader_status(&pg).await;
    assert!(s.risk_model.is_empty(), "{s:?}");
    assert!(s.nodes.iter().all(|n| n.failure_risk.is_none() && !n.at_risk), "{s:?}");

    let c = pg.client();
    c.create_namespace("_ark", NamespacePolicy::replicated(3, 2, DurabilityMode::Sync))
        .await
        .unwrap();
    c.put_object(
        "_ark",
        "failure-model",
        PutSource::File(weights),
        &PutOptions::default(),
    )
    .await
    .unwrap();

    // The failing drive's climb starts on day 6 (3 s in): node 2 must be flagged at risk
    // while the healthy nodes are not.
    let deadline = Instant::now() + Duration::from_secs(30);
    let s = loop {
        let s = leader_status(&pg).await;
        if s.nodes.iter().any(|n| n.id == 2 && n.at_risk) {
            break s;
        }
        assert!(Instant::now() < deadline, "node 2 never flagged at risk: {s:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert!(s.risk_model.starts_with("_ark/failure-model@"), "{s:?}");
    assert_eq!(s.queue_ordering, "expected-loss");
    for n in &s.nodes {
        let p = n.failure_risk.expect("every node replays SMART data");
        if n.id == 2 {
            assert!(p >= 0.9, "{s:?}");
        } else {
            assert!(!n.at_risk && p < 0.9, "healthy node flagged: {s:?}");
        }
    }

    // Async writes through node 1 and node 2 build a backlog (1 MiB/s budget).
    c.create_namespace("data", NamespacePolicy::replicated(2, 2, DurabilityMode::Async))
        .await
        .unwrap();
    let before_on_2 = chunk_files(&pg.node(2).data_dir.join("chunks"));
    for i in 0..6u8 {
        put(&pg, 1, &format!("n1-{i}"), i).await;
        put(&pg, 2, &format!("n2-{i}"), 100 + i).await;
    }
    let own_on_2 = chunk_files(&pg.node(2).data_dir.join("chunks")) - before_on_2;
    assert!(own_on_2 >= 6, "node 2 stored its own puts: {own_on_2}");

    // While the backlog drains, chunks held only by the node at risk always come first, and
    // the head is in score order.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut saw_risky_head = false;
    loop {
        let s = leader_status(&pg).await;
        let h = &s.queue_head;
        for w in h.windows(2) {
            assert!(w[0].score >= w[1].score, "head out of order: {s:?}");
        }
        if let Some(first_other) = h.iter().position(|q| q.holders != vec![2]) {
            assert!(
                h[first_other..].iter().all(|q| q.holders != vec![2]),
                "a chunk only on the node at risk waits behind another: {s:?}"
            );
        }
        if h.first().is_some_and(|q| q.holders == vec![2]) {
            assert!(
                h[0].object.starts_with("data/n2-") && h[0].loss_probability >= 0.9,
                "{s:?}"
            );
            saw_risky_head = true;
        }
        let v = c.verify(Some("data")).await.unwrap();
        if v.all_at_policy {
            break;
        }
        assert!(Instant::now() < deadline, "data never reached its policy: {v:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(saw_risky_head, "never saw node 2's chunks at the head of the queue");

    // Placement avoids the node at risk: node 1's objects got their second copy in site-c
    // (node 3), although site-b (node 2) comes first by name, so node 2 holds nothing new.
    assert_eq!(
        chunk_files(&pg.node(2).data_dir.join("chunks")),
        before_on_2 + own_on_2,
        "a new copy was placed on the node at risk"
    );

    // Pre-staging: an object with a single copy, read repeatedly, is warmed into the cache
    // of the follower most likely to take over (not node 2, which is at risk); with its only
    // holder killed, that follower still serves it, verified.
    c.create_namespace("hot", NamespacePolicy::replicated(1, 1, DurabilityMode::Async))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let successor = loop {
        let s = leader_status(&pg).await;
        if s.prestage_node.is_some() || Instant::now() > deadline {
            // Before any read there is no hot set, so nothing is pre-staged yet: pick the
            // successor the way the leader will, from the status.
            break s.prestage_node.unwrap_or(0);
        }
        let eligible: Vec<u64> = s
            .nodes
            .iter()
            .filter(|n| Some(n.id) != s.leader_id && !n.at_risk && n.role == "voter")
            .map(|n| n.id)
            .collect();
        if eligible.len() == 1 {
            break eligible[0];
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(successor == 1 || successor == 3, "successor {successor}");
    let holder = 4 - successor; // the other of nodes 1 and 3
    put_in(&pg, "hot", holder, "weights", 0xAB).await;
    let via_holder = c.with_endpoints(vec![pg.node(holder).client_addr]);
    for _ in 0..5 {
        let mut out = Vec::new();
        via_holder
            .get_object("hot", "weights", &GetOptions::default(), &mut out)
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = leader_status(&pg).await;
        let fetched = pg.metric(successor, "ark_prestage_chunks_total{result=\"fetched\"}");
        if s.prestage_node == Some(successor) && s.prestage_objects >= 1 && fetched >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "hot object never pre-staged on node {successor}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let mut pg = pg;
    pg.kill(holder);
    let mut out = Vec::new();
    c.with_endpoints(vec![pg.node(successor).client_addr])
        .get_object(
            "hot",
            "weights",
            &GetOptions {
                stale: true,
                ..GetOptions::default()
            },
            &mut out,
        )
        .await
        .expect("the successor serves the pre-staged object without its holder");
    assert_eq!(out, vec![0xAB; 600 * 1024]);
    drop(pg);
}

#[tokio::test(flavor = "multi_thread")]
async fn leader_learns_every_nodes_load_stores_it_and_a_new_leader_starts_warm() {
    ark_playground::testkit::arkd_built();
    // A short window and horizon: 2 x (6 + 3 + 20) = 58 one-second points to train on.
    let layout = Layout {
        sites: 3,
        nodes_per_site: 1,
        ready_timeout: Duration::from_secs(60),
        settings: vec![
            (0, "risk".to_string(), "load_window = 6".to_string()),
            (0, "risk".to_string(), "load_horizon = 3".to_string()),
        ],
        ..Layout::default()
    };
    let dir = tempfile::Builder::new().prefix("ark-test-").tempdir().unwrap();
    let (_, children) = playground::up(dir.path(), &layout).await.unwrap();
    let mut pg = Pg { dir, children };
    // The namespace the forecasters' weights go to (beside the failure forecaster).
    pg.client()
        .create_namespace("_ark", NamespacePolicy::replicated(3, 2, DurabilityMode::Sync))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    let s = loop {
        let s = leader_status(&pg).await;
        if s.nodes.iter().all(|n| n.load_forecast_min.is_some()) {
            break s;
        }
        assert!(Instant::now() < deadline, "no load forecast for every node: {s:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    for n in &s.nodes {
        let (now, min) = (n.load_bytes_per_second.unwrap(), n.load_forecast_min.unwrap());
        assert!(now.is_finite() && now >= 0.0 && min.is_finite(), "{s:?}");
        assert!((1..=3).contains(&n.load_trough_in), "{s:?}");
    }
    let leader = s.leader_id.unwrap();
    assert!(pg.metric(leader, "ark_risk_load_trainings_total{result=\"ok\"}") >= 3.0);
    let o = pg.ark(&["status"]);
    assert!(
        ark_playground::testkit::stdout(&o).contains("forecast low"),
        "{}",
        ark_playground::testkit::stdout(&o)
    );
    // The weights are cluster objects...
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let keys = ark_keys(&pg).await.unwrap_or_default();
        if (1..=3).all(|n| keys.contains(&format!("load-node-{n}"))) {
            break;
        }
        assert!(Instant::now() < deadline, "weights not stored: {keys:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // ...so a new leader forecasts at once from them, long before it could have trained
    // (its windows start empty and training needs 58 points).
    pg.kill(leader);
    let new_leader = pg.wait_leader(Some(leader), Duration::from_secs(20)).await;
    let elected = Instant::now();
    loop {
        let s = leader_status(&pg).await;
        let alive: Vec<_> = s.nodes.iter().filter(|n| n.id != leader).collect();
        if s.leader_id == Some(new_leader) && alive.iter().all(|n| n.load_forecast_min.is_some()) {
            break;
        }
        assert!(
            elected.elapsed() < Duration::from_secs(40),
            "new leader did not start warm: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(pg.metric(new_leader, "ark_risk_load_models_loaded_total{result=\"ok\"}") >= 2.0);
    assert_eq!(
        pg.metric(new_leader, "ark_risk_load_trainings_total"),
        0.0,
        "it loaded, not trained"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stored_global_load_model_forecasts_every_node_without_training_one_per_node() {
    ark_playground::testkit::arkd_built();
    // A tiny global model fitted here on synthetic cycles: it needs 2 x (8 + 3 + 20) = 62
    // one-second points of a node's window before it is chosen for that node.
    let corpus: Vec<Series> = (0..3)
        .map(|k| Series {
            name: format!("s{k}"),
            values: (0..600)
                .map(|i| 1e5 * (2.0 + k as f64) + 3e4 * (i as f64 / (10.0 + k as f64)).sin())
                .collect(),
            start_s: 0,
            step_s: 1,
        })
        .collect();
    let config = GlobalConfig {
        horizon: 3,
        context: 8,
        stats_steps: 32,
        channels: 4,
        hidden: 8,
        epochs_max: 4,
        ..GlobalConfig::default()
    };
    let (model, _) = GlobalLoadModel::fit(&corpus, &config).unwrap();
    let work = tempfile::Builder::new().prefix("ark-test-").tempdir().unwrap();
    let weights = work.path().join("load-model");
    std::fs::write(&weights, model.to_bytes().unwrap()).unwrap();

    let layout = Layout {
        sites: 3,
        nodes_per_site: 1,
        ready_timeout: Duration::from_secs(60),
        // The per-node path would train after 2 x (6 + 3 + 20) = 58 points and store
        // load-node-N objects; with the global model stored it must do neither.
        settings: vec![
            (0, "risk".to_string(), "load_window = 6".to_string()),
            (0, "risk".to_string(), "load_horizon = 3".to_string()),
        ],
        ..Layout::default()
    };
    let dir = tempfile::Builder::new().prefix("ark-test-").tempdir().unwrap();
    let (_, children) = playground::up(dir.path(), &layout).await.unwrap();
    let pg = Pg { dir, children };
    let c = pg.client();
    c.create_namespace("_ark", NamespacePolicy::replicated(3, 2, DurabilityMode::Sync))
        .await
        .unwrap();
    c.put_object("_ark", "load-model", PutSource::File(weights), &PutOptions::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    let s = loop {
        let s = leader_status(&pg).await;
        if s.nodes.iter().all(|n| n.load_forecast_min.is_some()) {
            break s;
        }
        assert!(Instant::now() < deadline, "no load forecast for every node: {s:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let leader = s.leader_id.unwrap();
    for n in &s.nodes {
        let min = n.load_forecast_min.unwrap();
        assert!(min.is_finite(), "{s:?}");
        assert!((1..=3).contains(&n.load_trough_in), "{s:?}");
    }
    assert_eq!(
        pg.metric(leader, "ark_risk_global_load_model_loads_total{result=\"ok\"}"),
        1.0
    );
    assert!(pg.metric(leader, "ark_risk_load_trainings_total{result=\"ok\"}") >= 3.0);
    let keys = ark_keys(&pg).await.unwrap();
    assert_eq!(
        keys,
        vec!["load-model".to_string()],
        "no per-node forecaster may be stored"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_successor_serves_the_pre_staged_hot_set_after_the_leaders_loss_without_fetching() {
    let mut pg = Pg::up(3, 20_000).await;
    let leader = leader_status(&pg).await.node_id;
    // One copy, on the node that received it: once the leader dies, a hot object is readable
    // only if the successor warmed its cache with it beforehand.
    pg.client()
        .create_namespace("hot", NamespacePolicy::replicated(1, 1, DurabilityMode::Sync))
        .await
        .unwrap();
    let via_leader = pg.client().with_endpoints(vec![pg.node(leader).client_addr]);
    let objects: Vec<(String, Vec<u8>)> = (0..3u8)
        .map(|i| {
            // Distinct bytes per object (no shared chunks), 2 MiB: two chunks or more.
            let data: Vec<u8> = (0..2 * 1024 * 1024u32)
                .map(|j| (j.wrapping_mul(2_654_435_761) >> (8 + i)) as u8)
                .collect();
            (format!("hot-{i}"), data)
        })
        .collect();
    for (key, data) in objects
        .iter()
        .chain(std::iter::once(&("cold".to_string(), vec![7u8; 100_000])))
    {
        via_leader
            .put_object(
                "hot",
                key,
                PutSource::Reader {
                    reader: Box::new(std::io::Cursor::new(data.clone())),
                    size: Some(data.len() as u64),
                },
                &PutOptions::default(),
            )
            .await
            .unwrap();
    }
    for _ in 0..3 {
        for (key, _) in &objects {
            let mut sink = Vec::new();
            via_leader
                .get_object("hot", key, &GetOptions::default(), &mut sink)
                .await
                .unwrap();
        }
    }
    // The leader names its successor in status once it has sent it the hot set; wait until
    // that node has fetched chunks and stopped (bounded).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = -1.0;
    let successor = loop {
        let st = leader_status(&pg).await;
        let fetched = match st.prestage_node {
            Some(n) => pg.metric(n, "ark_prestage_chunks_total{result=\"fetched\"}"),
            None => 0.0,
        };
        if let Some(n) = st
            .prestage_node
            .filter(|_| st.prestage_objects as usize >= objects.len() && fetched > 0.0 && fetched == last)
        {
            break n;
        }
        last = fetched;
        assert!(
            Instant::now() < deadline,
            "the leader never pre-staged its hot set: {st:?}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    assert_ne!(successor, leader);
    assert_ne!(
        pg.node(successor).site,
        pg.node(leader).site,
        "successor in the leader's site"
    );
    let fetched_before = pg.metric(successor, "ark_replication_bytes_fetched_total");
    pg.kill(leader);
    // Stale reads: the successor's own replica of the manifest, whatever the election does.
    let via_s = pg.client().with_endpoints(vec![pg.node(successor).client_addr]);
    let stale = GetOptions {
        stale: true,
        ..GetOptions::default()
    };
    for (key, want) in &objects {
        let mut got = Vec::new();
        via_s.get_object("hot", key, &stale, &mut got).await.unwrap();
        assert!(&got == want, "{key} read back different bytes");
    }
    assert_eq!(
        pg.metric(successor, "ark_replication_bytes_fetched_total"),
        fetched_before,
        "the successor fetched bytes for the hot set after the leader died"
    );
    // The object nobody read was not pre-staged, and its only copy died with the leader.
    let mut sink = Vec::new();
    let cold = via_s
        .with_op_timeout(Duration::from_secs(20))
        .get_object("hot", "cold", &stale, &mut sink)
        .await;
    assert!(
        cold.is_err(),
        "the cold object's only copy is gone; reading it must fail"
    );
}
