//! Metadata snapshots on real processes: `ark snapshot save` under a KV and object load,
//! `arkd snapshot restore` into a new data dir, and the restored one-node cluster serving
//! every key and manifest acknowledged before the save started; damaged files refused by
//! restore and inspect; a non-admin identity refused.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ark_client::objects::{GetOptions, PutOptions, PutSource};
use ark_client::{ArkClient, DurabilityMode, ListObjectsOptions, NamespacePolicy, ReadOptions};
use ark_playground::playground::{self, Playground};
use ark_playground::testkit::{stderr, stdout, Pg};

fn ok(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed ({:?}):\n{}\n{}",
        o.status,
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

fn refused(o: Output, what: &str) -> String {
    assert_eq!(
        o.status.code(),
        Some(1),
        "{what} was not refused with exit 1:\n{}\n{}",
        stdout(&o),
        stderr(&o)
    );
    stderr(&o)
}

fn arkd(args: &[&std::ffi::OsStr]) -> Output {
    let arkd = playground::find_arkd().unwrap();
    std::process::Command::new(arkd).args(args).output().unwrap()
}

fn restore(file: &Path, config: &Path, data_dir: &Path) -> Output {
    arkd(&[
        "snapshot".as_ref(),
        "restore".as_ref(),
        file.as_os_str(),
        "-c".as_ref(),
        config.as_os_str(),
        "--data-dir".as_ref(),
        data_dir.as_os_str(),
    ])
}

fn sha256(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, b).as_ref().to_vec()
}

/// What the writers had acknowledged, with when each acknowledgement arrived.
#[derive(Default)]
struct Acked {
    kv: Vec<(Instant, String, Vec<u8>)>,
    objects: Vec<(Instant, String, u64, Vec<u8>)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_saved_under_load_restores_every_acknowledged_key_and_manifest() {
    // Raft snapshots every 200 entries: the saved state spans openraft snapshots and a log.
    let mut pg = Pg::up(3, 200).await;
    pg.wait_leader(None, Duration::from_secs(20)).await;
    let c = pg.client();
    c.create_namespace("models", NamespacePolicy::replicated(3, 2, DurabilityMode::Sync))
        .await
        .unwrap();

    // Writers in the background: unique keys, each acknowledgement timed.
    let acked = Arc::new(Mutex::new(Acked::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..2 {
        let (c, acked, stop) = (c.clone(), acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("jobs/w{w}/{i:06}");
                let value = format!("value {w} {i} {}", "x".repeat((i % 50) as usize)).into_bytes();
                if c.put(&key, &value).await.is_ok() {
                    acked.lock().unwrap().kv.push((Instant::now(), key, value));
                }
                i += 1;
            }
        }));
    }
    {
        let (c, acked, stop) = (c.clone(), acked.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("ckpt-{i:04}");
                let data: Vec<u8> = (0..(20_000 + i * 997)).map(|b| (b * 31 + i) as u8).collect();
                let source = PutSource::Reader {
                    size: Some(data.len() as u64),
                    reader: Box::new(std::io::Cursor::new(data.clone())),
                };
                if c.put_object("models", &key, source, &PutOptions::default())
                    .await
                    .is_ok()
                {
                    acked
                        .lock()
                        .unwrap()
                        .objects
                        .push((Instant::now(), key, data.len() as u64, sha256(&data)));
                }
                i += 1;
            }
        }));
    }
    // Let the load build up, then save mid-load.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (k, o) = {
            let a = acked.lock().unwrap();
            (a.kv.len(), a.objects.len())
        };
        if k >= 400 && o >= 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the writers made no progress: {k} keys, {o} objects"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let keep = tempfile::tempdir().unwrap();
    let file = keep.path().join("meta.arksnap");
    let save_started = Instant::now();
    let save = {
        let (pg_dir, file) = (pg.path().to_path_buf(), file.clone());
        tokio::task::spawn_blocking(move || {
            let ark = playground::find_binary("ark", "ARK_BIN").unwrap();
            std::process::Command::new(ark)
                .arg("--config")
                .arg(pg_dir.join("client.toml"))
                .args(["snapshot", "save"])
                .arg(&file)
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    // The writers go on for a moment after the save, then stop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let out = ok(save, "ark snapshot save");
    assert!(out.contains("index ") && out.contains("sha256 "), "{out}");
    assert!(
        !keep.path().join("meta.arksnap.tmp").exists(),
        "the temporary file is gone"
    );
    let inspected = ok(
        pg.ark(&["snapshot", "inspect", file.to_str().unwrap(), "--json"]),
        "inspect",
    );
    let header: serde_json::Value = serde_json::from_str(&inspected).unwrap();
    let index = header["index"].as_u64().unwrap();
    assert!(index > 0, "{header}");
    assert_eq!(header["voters"], serde_json::json!([1, 2, 3]), "{header}");
    assert!(
        header["cluster_id"].as_str().unwrap().starts_with("ca-sha256:"),
        "{header}"
    );

    let (kv_before, objects_before) = {
        let a = acked.lock().unwrap();
        let kv: Vec<_> =
            a.kv.iter()
                .filter(|(t, _, _)| *t < save_started)
                .map(|(_, k, v)| (k.clone(), v.clone()))
                .collect();
        let objects: BTreeMap<_, _> = a
            .objects
            .iter()
            .filter(|(t, _, _, _)| *t < save_started)
            .map(|(_, k, size, sha)| (k.clone(), (*size, sha.clone())))
            .collect();
        (kv, objects)
    };
    assert!(kv_before.len() >= 400 && objects_before.len() >= 5);

    // A non-admin identity may not save.
    let certs = pg.path().join("certs");
    let (cert, key) = ark_playground::certs::create_client(&certs, &certs, "trainer").unwrap();
    ok(pg.ark(&["auth", "grant", "trainer", "read", "models/*"]), "grant read");
    let trainer = pg.client_toml_as("trainer", &cert, &key, 5000);
    let ark = playground::find_binary("ark", "ARK_BIN").unwrap();
    let not_admin = keep.path().join("not-admin.arksnap");
    let o = std::process::Command::new(&ark)
        .arg("--config")
        .arg(&trainer)
        .args(["snapshot", "save"])
        .arg(&not_admin)
        .output()
        .unwrap();
    let e = refused(o, "a save by a non-admin");
    assert!(e.contains("permission denied") && e.contains("admin"), "{e}");
    assert!(!not_admin.exists(), "no file for a refused save");
    // Both are audited: the save by the node that served it, the refusal by the node asked
    // (the trainer's first endpoint, node 1).
    let audit = |id: u64| -> Vec<serde_json::Value> {
        let addr = pg.node(id).client_addr;
        let out = ok(
            pg.ark(&["--endpoint", &addr, "audit", "tail", "-n", "1000"]),
            "audit tail",
        );
        out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let has = |lines: &[serde_json::Value], who: &str, outcome: &str| {
        lines
            .iter()
            .any(|l| l["identity"] == who && l["rpc"] == "Cluster/SaveSnapshot" && l["outcome"] == outcome)
    };
    assert!(
        has(&audit(header["taken_by"].as_u64().unwrap()), "root", "ok"),
        "the save is audited"
    );
    assert!(has(&audit(1), "trainer", "denied"), "the refusal is audited");

    // Stop the cluster; node 1 will come back as a new cluster of one from the file.
    let n1 = pg.node(1);
    let mut cfg = Playground::client_config(pg.path()).unwrap();
    playground::down(pg.path(), Duration::from_secs(5)).unwrap();
    let old_config = std::fs::read_to_string(&n1.config).unwrap();
    let new_dir = keep.path().join("restored");
    // Beside the old one, so that its relative certificate paths still resolve.
    let old_line = "data_dir = \"data\"";
    assert!(
        old_config.contains(old_line),
        "the playground's config names its data dir"
    );
    let new_config = n1.config.with_file_name("arkd-restored.toml");
    let new_line = format!("data_dir = \"{}\"", new_dir.display());
    std::fs::write(&new_config, old_config.replace(old_line, &new_line)).unwrap();

    // A flipped byte or a cut file is refused by inspect and restore, and nothing is made.
    let bytes = std::fs::read(&file).unwrap();
    let flipped = keep.path().join("flipped.arksnap");
    let mut b = bytes.clone();
    let mid = b.len() / 2;
    b[mid] ^= 0x40;
    std::fs::write(&flipped, &b).unwrap();
    let cut = keep.path().join("cut.arksnap");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    for (bad, what) in [(&flipped, "SHA-256"), (&cut, "truncated")] {
        let e = refused(
            pg.ark(&["snapshot", "inspect", bad.to_str().unwrap()]),
            "inspect of a bad file",
        );
        assert!(e.contains("damaged") && e.contains(what), "{e}");
        let e = refused(restore(bad, &new_config, &new_dir), "restore of a bad file");
        assert!(e.contains("damaged") && e.contains(what), "{e}");
        assert!(!new_dir.exists(), "a refused restore created {}", new_dir.display());
    }
    // Never over an existing node's data.
    let e = refused(restore(&file, &n1.config, &n1.data_dir), "restore over a node's data");
    assert!(e.contains("not empty"), "{e}");

    let out = ok(restore(&file, &new_config, &new_dir), "arkd snapshot restore");
    assert!(out.contains(&format!("index {index}")), "{out}");

    // Start node 1 on the restored dir: it elects itself and serves what was acknowledged.
    let mut node = n1.clone();
    node.config = new_config.clone();
    let child = playground::spawn_node(&playground::find_arkd().unwrap(), &node).unwrap();
    pg.children.push(child);
    cfg.endpoints = vec![n1.client_addr.clone()];
    let r = ArkClient::new(&cfg).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = r.status().await {
            if s.leader_id == Some(1) {
                assert_eq!(
                    s.nodes.iter().map(|n| n.id).collect::<Vec<_>>(),
                    vec![1],
                    "a cluster of one"
                );
                break;
            }
        }
        assert!(Instant::now() < deadline, "the restored node did not lead within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (k, v) in &kv_before {
        let got = r.get(k, &ReadOptions::LINEARIZABLE).await.unwrap();
        assert_eq!(
            got.as_ref().map(|g| &g.value),
            Some(v),
            "key {k}, acknowledged before the save, is not as written"
        );
    }
    let (listed, _) = r.list_objects("models", &ListObjectsOptions::default()).await.unwrap();
    let listed: BTreeMap<_, _> = listed.into_iter().map(|o| (o.key, (o.size, o.sha256))).collect();
    for (k, want) in &objects_before {
        assert_eq!(
            listed.get(k),
            Some(want),
            "manifest of models/{k} acknowledged before the save"
        );
    }
    // The restored cluster takes writes, with revisions after everything it holds.
    let rev = r.put("after/restore", b"1").await.unwrap();
    assert!(rev > index * 1024, "revision {rev} not after index {index}");
    // Object bytes are not in a metadata snapshot: with no chunk files here, a read is an
    // error, never made-up bytes.
    let first = objects_before.keys().next().unwrap();
    let mut sink = Vec::new();
    let got = tokio::time::timeout(
        Duration::from_secs(60),
        r.with_object_timeout(Some(Duration::from_secs(20))).get_object(
            "models",
            first,
            &GetOptions::default(),
            &mut sink,
        ),
    )
    .await;
    assert!(
        !matches!(got, Ok(Ok(_))),
        "an object whose chunks are on no member was served"
    );
}
