//! The witness voter on real `arkd` processes: two data sites and a witness in a third
//! (`ark playground up --sites 2 --witness`). The cluster and `ark status` know its role,
//! placement never gives it a chunk, its client plane refuses data calls naming the leader,
//! and it refuses to start on a data dir that holds chunks.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ark_client::objects::{PutOptions, PutSource};
use ark_client::{ArkClient, DurabilityMode, NamespacePolicy};
use ark_playground::playground::{self, Layout, Playground};
use ark_playground::testkit::{stderr, stdout, Pg};

const WITNESS: u64 = 3;

async fn witness_playground() -> Pg {
    Pg::up_layout(&Layout {
        sites: 2,
        nodes_per_site: 1,
        witness: true,
        ready_timeout: Duration::from_secs(60),
        ..Layout::default()
    })
    .await
}

/// Regular files under `dir`, at any depth.
fn files_under(dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                files_under(&e.path())
            } else {
                1
            }
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn witness_votes_holds_no_chunks_and_refuses_data_calls() {
    let mut pg = witness_playground().await;
    let info = pg.info();
    let w = info.node(WITNESS).unwrap().clone();
    assert!(w.witness && w.site == "witness", "{w:?}");
    // client.toml names the data nodes only.
    let cfg = Playground::client_config(pg.path()).unwrap();
    assert!(!cfg.endpoints.contains(&w.client_addr), "{:?}", cfg.endpoints);

    // `ark status` shows the role, as text and as JSON.
    let o = pg.ark(&["status", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let st: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    for n in st["nodes"].as_array().unwrap() {
        let is_w = n["id"].as_u64() == Some(WITNESS);
        assert_eq!(n["witness"], is_w, "{n}");
        assert_eq!(n["role"], "voter", "{n}");
    }
    let o = pg.ark(&["status"]);
    let line = stdout(&o)
        .lines()
        .find(|l| l.starts_with(&format!("{WITNESS} ")))
        .unwrap()
        .to_string();
    assert!(line.contains("witness"), "{line}");

    // Objects with 3 copies wanted: only the two data nodes get them (2 sites satisfy
    // min_sites), never the witness.
    let c = pg.client();
    c.create_namespace("ckpt", NamespacePolicy::replicated(3, 2, DurabilityMode::Sync))
        .await
        .unwrap();
    for i in 0..8 {
        let data: Vec<u8> = (0..300_000u32).map(|b| (b.wrapping_mul(7) ^ i) as u8).collect();
        c.put_object(
            "ckpt",
            &format!("obj-{i}"),
            PutSource::reader(std::io::Cursor::new(data)),
            &PutOptions::default(),
        )
        .await
        .unwrap();
    }
    for n in info.nodes.iter().filter(|n| !n.witness) {
        assert!(
            files_under(&n.data_dir.join("chunks")) > 0,
            "node {} holds no chunk",
            n.id
        );
    }
    assert_eq!(
        files_under(&w.data_dir.join("chunks")),
        0,
        "the witness holds chunk files"
    );
    assert!(!w.data_dir.join("cache").exists(), "the witness made an on-disk cache");
    // Placement never even tried it (the witness refuses and counts any chunk pushed to it).
    assert_eq!(pg.metric(WITNESS, "ark_replication_chunks_refused_total"), 0.0);

    // A client that knows only the witness: a KV write follows the leader hint in the
    // refusal; an object upload (which any node takes, without hints) is refused, naming the
    // witness and the leader.
    let mut only_w = cfg.clone();
    only_w.endpoints = vec![w.client_addr.clone()];
    only_w.op_timeout_ms = 3000;
    let wc = ArkClient::new(&only_w).unwrap();
    wc.put("via-witness", b"v").await.unwrap();
    assert_eq!(
        c.get("via-witness", &Default::default()).await.unwrap().unwrap().value,
        b"v"
    );
    let wc = wc.with_object_timeout(Some(Duration::from_secs(3)));
    let err = wc
        .put_object(
            "ckpt",
            "refused",
            PutSource::reader(std::io::Cursor::new(vec![1u8; 1000])),
            &PutOptions::default(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("is a witness") && err.contains("ask the leader"), "{err}");
    assert_eq!(files_under(&w.data_dir.join("chunks")), 0);

    // A witness refuses to start on a data dir that holds chunk files.
    pg.kill(WITNESS);
    let fake = w.data_dir.join("chunks/ab");
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::write(fake.join("ab".repeat(32)), b"not a witness's").unwrap();
    let arkd = playground::find_arkd().unwrap();
    let mut child = Command::new(arkd)
        .arg("--config")
        .arg(&w.config)
        .current_dir(w.config.parent().unwrap())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a witness with chunk files in its data dir kept running");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("holds chunk files"), "{err}");
}
