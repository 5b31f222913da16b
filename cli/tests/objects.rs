//! Objects end to end on a 3-site playground of real `arkd` processes, through the `ark`
//! CLI: sync puts readable byte-identical from every node and after losing the node that
//! received them, incremental puts that send little, and scrub repairing a flipped byte
//! without ever serving it, and an interrupted upload that leaves nothing behind.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use ark_playground::testkit::{stderr, stdout, Pg};
use rand::{RngCore, SeedableRng};

fn ok(o: &Output, what: &str) -> String {
    assert!(o.status.success(), "{what} failed: {}\n{}", stderr(o), stdout(o));
    stdout(o)
}

fn random_file(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    std::fs::write(path, &data).unwrap();
    data
}

/// `ark get` through one node only; returns the bytes read.
fn get_via(pg: &Pg, node: u64, obj: &str, out: &Path) -> Vec<u8> {
    let addr = pg.node(node).client_addr;
    let o = pg.ark(&["--endpoint", &addr, "get", obj, "-o", out.to_str().unwrap()]);
    ok(&o, &format!("get {obj} via node {node}"));
    let b = std::fs::read(out).unwrap();
    std::fs::remove_file(out).unwrap();
    b
}

/// Sum over live nodes of the bytes moved between nodes (pushed plus pulled).
fn bytes_between_nodes(pg: &Pg, nodes: &[u64]) -> f64 {
    nodes
        .iter()
        .map(|n| {
            pg.metric(*n, "ark_replication_bytes_sent_total") + pg.metric(*n, "ark_replication_bytes_fetched_total")
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_object_is_identical_everywhere_survives_its_receiver_and_incremental_put_sends_little() {
    let mut pg = Pg::up(3, 20_000).await;
    let leader = pg.wait_leader(None, Duration::from_secs(20)).await;
    ok(&pg.ark(&["ns", "create", "ckpt", "--mode", "sync"]), "ns create");

    const LEN: usize = 256 * 1024 * 1024;
    let src = pg.path().join("model.bin");
    let mut data = random_file(&src, LEN, 7);
    // The receiving node is a follower, so the manifest is forwarded to the leader.
    let receiver = (1..=3).find(|n| *n != leader).unwrap();
    let raddr = pg.node(receiver).client_addr;
    let t = Instant::now();
    let out = ok(
        &pg.ark(&["--endpoint", &raddr, "put", "ckpt/model.bin", src.to_str().unwrap()]),
        "put",
    );
    eprintln!("put 256 MiB via node {receiver} in {:?}: {out}", t.elapsed());

    let dst: PathBuf = pg.path().join("read.bin");
    for n in 1..=3 {
        assert!(
            get_via(&pg, n, "ckpt/model.bin", &dst) == data,
            "node {n} returned different bytes"
        );
    }

    pg.kill(receiver);
    let others: Vec<u64> = (1..=3).filter(|n| *n != receiver).collect();
    pg.wait_leader(Some(receiver), Duration::from_secs(20)).await;
    for n in &others {
        assert!(
            get_via(&pg, *n, "ckpt/model.bin", &dst) == data,
            "node {n} returned different bytes after node {receiver} was killed"
        );
    }

    // Bring the receiver back, then put the object again with one contiguous 1% region
    // changed: only the chunks around that region may travel.
    pg.start(receiver);
    pg.wait_leader(None, Duration::from_secs(20)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let o = pg.ark(&["--endpoint", &raddr, "status"]);
        if o.status.success() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let region = LEN / 100;
    let at = LEN / 2 + 12345;
    rand::rngs::StdRng::seed_from_u64(8).fill_bytes(&mut data[at..at + region]);
    std::fs::write(&src, &data).unwrap();
    let all = [1, 2, 3];
    let before = bytes_between_nodes(&pg, &all);
    let out = ok(
        &pg.ark(&["--endpoint", &raddr, "put", "ckpt/model.bin", src.to_str().unwrap()]),
        "second put",
    );
    let sent = bytes_between_nodes(&pg, &all) - before;
    // Nor did the unchanged chunks travel from the client: it named them.
    let not_sent: f64 = out
        .trim_end()
        .split(", ")
        .find_map(|p| p.strip_suffix(" bytes not sent (the previous version has them)"))
        .unwrap_or_else(|| panic!("the second put sent every byte: {out}"))
        .parse()
        .unwrap();
    assert!(
        not_sent >= 0.95 * LEN as f64,
        "only {not_sent} of {LEN} bytes were named instead of sent: {out}"
    );
    eprintln!(
        "second put moved {sent} bytes between nodes = {:.2}% of the object",
        100.0 * sent / LEN as f64
    );
    assert!(
        sent <= 0.05 * LEN as f64,
        "second put moved {sent} bytes, more than 5% of {LEN}"
    );
    assert!(sent > 0.0, "the changed chunks must have travelled to the other sites");
    for n in 1..=3 {
        assert!(
            get_via(&pg, n, "ckpt/model.bin", &dst) == data,
            "node {n}: second version differs"
        );
    }
}

/// Every chunk file of node `id` (path, hex id).
fn chunk_files(pg: &Pg, id: u64) -> Vec<PathBuf> {
    let root = pg.node(id).data_dir.join("chunks");
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                if p.file_name().is_some_and(|n| n != "tmp") {
                    stack.push(p);
                }
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn flip_byte(p: &Path, at: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(p).unwrap();
    let mut b = [0u8; 1];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    b[0] ^= 0x5a;
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&b).unwrap();
    f.sync_all().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flipped_byte_is_never_served_and_scrub_repairs_it() {
    let pg = Pg::up(3, 20_000).await;
    pg.wait_leader(None, Duration::from_secs(20)).await;
    ok(&pg.ark(&["ns", "create", "data", "--mode", "sync"]), "ns create");
    let src = pg.path().join("obj.bin");
    let data = random_file(&src, 6 * 1024 * 1024 + 333, 11);
    ok(&pg.ark(&["put", "data/obj.bin", src.to_str().unwrap()]), "put");

    // Corrupt one byte of one chunk on node 3.
    let files = chunk_files(&pg, 3);
    assert!(files.len() >= 2, "expected several chunks, found {files:?}");
    let victim = files[0].clone();
    let original = std::fs::read(&victim).unwrap();
    flip_byte(&victim, original.len() as u64 / 2);

    // Scrub finds it on node 3 and repairs it from a replica.
    let o = ok(&pg.ark(&["scrub", "--wait", "--json"]), "scrub");
    let report: serde_json::Value = serde_json::from_str(&o).unwrap_or_else(|e| panic!("scrub --json: {e}: {o}"));
    let text = report.to_string();
    let nodes = report["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("no nodes in {text}"));
    let n3 = nodes
        .iter()
        .find(|n| n["node_id"].as_u64() == Some(3))
        .unwrap_or_else(|| panic!("node 3 missing in {text}"));
    assert_eq!(n3["corrupt"].as_u64(), Some(1), "{text}");
    assert_eq!(n3["repaired"].as_u64(), Some(1), "{text}");
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        original,
        "scrub did not restore the chunk file"
    );
    for n in [1, 2] {
        let r = nodes.iter().find(|x| x["node_id"].as_u64() == Some(n)).unwrap();
        assert_eq!(r["corrupt"].as_u64().unwrap_or(0), 0, "{text}");
    }

    // A read through node 3 of a chunk corrupt there is served from a replica.
    flip_byte(&victim, 0);
    let dst = pg.path().join("back.bin");
    assert!(
        get_via(&pg, 3, "data/obj.bin", &dst) == data,
        "node 3 served corrupt bytes"
    );

    // When every copy of a chunk is corrupt, the read fails loudly and writes no file.
    let name = victim.file_name().unwrap().to_owned();
    for n in 1..=3 {
        let f = chunk_files(&pg, n)
            .into_iter()
            .find(|p| p.file_name() == Some(&name))
            .unwrap_or_else(|| panic!("node {n} lacks the chunk"));
        flip_byte(&f, 7);
    }
    for n in 1..=3 {
        let addr = pg.node(n).client_addr;
        let o = pg.ark(&["--endpoint", &addr, "get", "data/obj.bin", "-o", dst.to_str().unwrap()]);
        assert!(
            !o.status.success(),
            "node {n} served an object whose chunk is corrupt everywhere"
        );
        assert!(!dst.exists(), "a failed get left {dst:?} behind");
    }
    let o = pg.ark(&["verify", "data", "--json"]);
    assert!(
        !o.status.success(),
        "verify must fail when every copy of a chunk is corrupt"
    );
}

/// Deduplication trusts only verified copies: with every copy of every chunk of an object
/// rotten on every node, a put of the same bytes under a new key stores them again (the
/// receiving node compares what it has with the bytes at hand, the others re-hash before
/// saying they have a chunk), and both keys read back intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_of_the_same_bytes_replaces_every_rotten_copy() {
    let pg = Pg::up(3, 20_000).await;
    pg.wait_leader(None, Duration::from_secs(20)).await;
    ok(
        &pg.ark(&["ns", "create", "data", "--mode", "sync", "--copies", "3"]),
        "ns create",
    );
    let src = pg.path().join("obj.bin");
    let data = random_file(&src, 3 * 1024 * 1024 + 77, 21);
    ok(&pg.ark(&["put", "data/a.bin", src.to_str().unwrap()]), "put a");
    let mut rotten = Vec::new();
    for n in 1..=3 {
        for f in chunk_files(&pg, n) {
            let len = std::fs::metadata(&f).unwrap().len();
            flip_byte(&f, len / 3);
            rotten.push((std::fs::read(&f).unwrap(), f));
        }
    }
    assert!(rotten.len() >= 3, "expected chunk files on every node");
    let dst = pg.path().join("back.bin");
    let o = pg.ark(&["get", "data/a.bin", "-o", dst.to_str().unwrap()]);
    assert!(!o.status.success(), "an object whose every copy is rotten was served");

    ok(&pg.ark(&["put", "data/b.bin", src.to_str().unwrap()]), "put b");
    for n in 1..=3 {
        assert!(get_via(&pg, n, "data/b.bin", &dst) == data, "node {n}: b differs");
        assert!(get_via(&pg, n, "data/a.bin", &dst) == data, "node {n}: a differs");
    }
    // Every rotten copy was replaced by the put (not only read around).
    for (bad, f) in &rotten {
        let now = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert_ne!(&now, bad, "{} is still the rotten copy", f.display());
    }
    ok(&pg.ark(&["verify", "data", "--json"]), "verify");
}

/// Cuts node `id` off from every other node (both directions) through the peer
/// transport's fault layer, or heals it.
fn cut_off(pg: &Pg, id: u64, cut: bool) {
    let nodes = pg.info().nodes;
    for n in &nodes {
        let file = n.data_dir.parent().unwrap().join("faults.toml");
        let peers: Vec<&str> = if n.id == id {
            nodes
                .iter()
                .filter(|o| o.id != id)
                .map(|o| o.peer_addr.as_str())
                .collect()
        } else {
            vec![nodes.iter().find(|o| o.id == id).unwrap().peer_addr.as_str()]
        };
        let text: String = if cut {
            peers
                .iter()
                .map(|p| format!("[[rule]]\npeer = \"{p}\"\ndrop = \"both\"\n"))
                .collect()
        } else {
            String::new()
        };
        std::fs::write(file, text).unwrap();
    }
}

fn ns_state(pg: &Pg, via: u64, ns: &str) -> serde_json::Value {
    let addr = pg.node(via).client_addr;
    let o = ok(&pg.ark(&["--endpoint", &addr, "ns", "ls", "--json"]), "ns ls");
    let v: serde_json::Value = serde_json::from_str(&o).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == ns)
        .cloned()
        .unwrap_or_else(|| panic!("{ns} missing in {o}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_namespace_keeps_writing_through_a_site_partition_and_catches_up() {
    let pg = Pg::up(3, 20_000).await;
    let leader = pg.wait_leader(None, Duration::from_secs(20)).await;
    ok(&pg.ark(&["ns", "create", "logs", "--mode", "async"]), "ns create");
    let lost = (1..=3).find(|n| *n != leader).unwrap();
    cut_off(&pg, lost, true);

    let laddr = pg.node(leader).client_addr;
    let mut files = Vec::new();
    for i in 0..4u64 {
        let f = pg.path().join(format!("part-{i}.bin"));
        let data = random_file(&f, 3 * 1024 * 1024 + i as usize, 100 + i);
        let key = format!("logs/part-{i}");
        let t = Instant::now();
        ok(
            &pg.ark(&["--endpoint", &laddr, "put", &key, f.to_str().unwrap()]),
            "async put",
        );
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "async put took {:?}",
            t.elapsed()
        );
        files.push((key, data));
    }
    // The figures are the leader's latest repair pass's: within an interval (2 s) and a
    // scan of the last put, all four are behind.
    let deadline = Instant::now() + Duration::from_secs(15);
    let first = loop {
        let s = ns_state(&pg, leader, "logs");
        if s["behind"].as_u64() == Some(4) {
            break s;
        }
        assert!(Instant::now() < deadline, "the 4 objects never showed as behind: {s}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = ns_state(&pg, leader, "logs");
    assert_eq!(second["behind"].as_u64(), Some(4), "{second}");
    assert!(
        second["lag_ms"].as_u64().unwrap() > first["lag_ms"].as_u64().unwrap(),
        "lag must grow while a site is cut off: {first} then {second}"
    );
    // A follower shows the same: counts from its own tables, lag from the leader's pass.
    let other = (1..=3).find(|n| *n != leader && *n != lost).unwrap();
    let seen = ns_state(&pg, other, "logs");
    assert_eq!(seen["objects"].as_u64(), Some(4), "{seen}");
    assert_eq!(seen["behind"].as_u64(), Some(4), "{seen}");
    assert!(
        seen["lag_ms"].as_u64().unwrap() >= second["lag_ms"].as_u64().unwrap(),
        "the follower's lag is the leader's, aged: {second} then {seen}"
    );
    assert!(pg.metric(leader, "ark_namespace_lag_seconds") > 0.0);

    cut_off(&pg, lost, false);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = ns_state(&pg, leader, "logs");
        if s["lag_ms"].as_u64() == Some(0) && s["behind"].as_u64() == Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "lag did not return to 0 after healing: {s}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let o = ok(&pg.ark(&["verify", "--json"]), "verify after healing");
    let v: serde_json::Value = serde_json::from_str(&o).unwrap();
    assert_eq!(v["all_at_policy"], true, "{o}");
    assert_eq!(v["objects"].as_array().unwrap().len(), 4, "{o}");
    let dst = pg.path().join("back.bin");
    for (key, data) in &files {
        assert!(
            get_via(&pg, lost, key, &dst) == *data,
            "{key} differs on the healed node"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_tombstones_restore_and_bad_uploads() {
    let pg = Pg::up(3, 20_000).await;
    pg.wait_leader(None, Duration::from_secs(20)).await;
    ok(
        &pg.ark(&["ns", "create", "docs", "--mode", "sync", "--versions-kept", "3"]),
        "ns create",
    );
    let dir = pg.path();
    let v1 = random_file(&dir.join("a1"), 300_000, 1);
    ok(
        &pg.ark(&["put", "docs/a.txt", dir.join("a1").to_str().unwrap()]),
        "put v1",
    );
    let v2 = random_file(&dir.join("a2"), 200_000, 2);
    ok(
        &pg.ark(&["put", "docs/a.txt", dir.join("a2").to_str().unwrap()]),
        "put v2",
    );
    let b = random_file(&dir.join("b"), 5_000, 3);
    ok(
        &pg.ark(&["put", "docs/sub/b.bin", dir.join("b").to_str().unwrap()]),
        "put b",
    );

    let o = ok(&pg.ark(&["ls", "docs", "--all-versions", "--json"]), "ls");
    let v: serde_json::Value = serde_json::from_str(&o).unwrap();
    let versions: Vec<(String, u64)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|o| (o["key"].as_str().unwrap().to_string(), o["version"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        versions,
        vec![("a.txt".into(), 1), ("a.txt".into(), 2), ("sub/b.bin".into(), 1)],
        "{o}"
    );
    let out = dir.join("out");
    let o = pg.ark(&["get", "docs/a.txt", "--version", "1", "-o", out.to_str().unwrap()]);
    ok(&o, "get v1");
    assert!(std::fs::read(&out).unwrap() == v1);
    let o = pg.ark(&["get", "docs/a.txt", "-o", out.to_str().unwrap()]);
    ok(&o, "get latest");
    assert!(std::fs::read(&out).unwrap() == v2);

    // Restore the namespace: every live key, checked against its manifest.
    let to = dir.join("restored");
    ok(&pg.ark(&["restore", "docs", "--to", to.to_str().unwrap()]), "restore");
    assert!(std::fs::read(to.join("a.txt")).unwrap() == v2);
    assert!(std::fs::read(to.join("sub/b.bin")).unwrap() == b);

    // Delete writes a tombstone: the key is gone, its older versions stay listed.
    ok(&pg.ark(&["rm", "docs/a.txt"]), "rm");
    let o = pg.ark(&["get", "docs/a.txt", "-o", out.to_str().unwrap()]);
    assert!(!o.status.success(), "a deleted object must not be readable");
    let o = ok(&pg.ark(&["ls", "docs", "--json"]), "ls after rm");
    assert!(!o.contains("\"a.txt\""), "{o}");

    // A put into a missing namespace and an empty key are refused and change nothing.
    let o = pg.ark(&["put", "nope/x", dir.join("b").to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("nope"), "{}", stderr(&o));
    let o = pg.ark(&["put", "docs/", dir.join("b").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // A namespace with objects cannot be removed.
    let o = pg.ark(&["ns", "rm", "docs"]);
    assert!(!o.status.success(), "ns rm of a non-empty namespace must fail");
    let o = ok(&pg.ark(&["ls", "docs", "--json"]), "ls after refused rm");
    assert!(o.contains("sub/b.bin"), "{o}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_a_copy_serves_hot_chunks_from_its_cache() {
    let mut pg = Pg::up(3, 20_000).await;
    let leader = pg.wait_leader(None, Duration::from_secs(20)).await;
    // One copy only: the object lives on the node that received it.
    ok(
        &pg.ark(&["ns", "create", "one", "--copies", "1", "--min-sites", "1"]),
        "ns create",
    );
    let holder = (1..=3).find(|n| *n != leader).unwrap();
    let reader = (1..=3).find(|n| *n != leader && *n != holder).unwrap();
    let src = pg.path().join("hot.bin");
    let data = random_file(&src, 3 * 1024 * 1024, 21);
    let haddr = pg.node(holder).client_addr;
    ok(
        &pg.ark(&["--endpoint", &haddr, "put", "one/hot", src.to_str().unwrap()]),
        "put",
    );
    let dst = pg.path().join("hot.out");
    assert!(get_via(&pg, reader, "one/hot", &dst) == data);
    assert_eq!(pg.metric(reader, "ark_cache_hits_total"), 0.0);
    assert!(pg.metric(reader, "ark_cache_inserts_total") >= 1.0);
    let fetched = pg.metric(reader, "ark_replication_bytes_fetched_total");
    assert!(get_via(&pg, reader, "one/hot", &dst) == data);
    assert!(
        pg.metric(reader, "ark_cache_hits_total") >= 1.0,
        "second read must hit the cache"
    );
    assert_eq!(
        pg.metric(reader, "ark_replication_bytes_fetched_total"),
        fetched,
        "a cached chunk must not be fetched again"
    );
    // The only holder is gone: the cached chunks are still served, verified.
    pg.kill(holder);
    assert!(get_via(&pg, reader, "one/hot", &dst) == data);
}

/// Puts `objects.gc_grace_s = 1` into node `id`'s config and restarts it (kill -9, start),
/// waiting until it answers again.
async fn restart_with_short_gc_grace(pg: &mut Pg, id: u64) {
    let cfg = pg.node(id).config;
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("[objects]\n"), "{text}");
    std::fs::write(&cfg, text.replacen("[objects]\n", "[objects]\ngc_grace_s = 1\n", 1)).unwrap();
    pg.kill(id);
    pg.start(id);
    let addr = pg.node(id).client_addr;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !pg.ark(&["--endpoint", &addr, "status"]).status.success() {
        assert!(Instant::now() < deadline, "node {id} did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_upload_leaves_no_object_and_its_chunks_are_collected() {
    use std::io::Write;
    let mut pg = Pg::up(3, 20_000).await;
    pg.wait_leader(None, Duration::from_secs(20)).await;
    for id in 1..=3 {
        restart_with_short_gc_grace(&mut pg, id).await;
    }
    pg.wait_leader(None, Duration::from_secs(20)).await;
    ok(&pg.ark(&["ns", "create", "up", "--mode", "sync"]), "ns create");
    let before: Vec<usize> = (1..=3).map(|id| chunk_files(&pg, id).len()).collect();

    // An upload of unknown length through node 1, cut off (kill -9 of the client) once the
    // node has stored some of its chunks.
    let addr = pg.node(1).client_addr;
    let mut put = std::process::Command::new(env!("CARGO_BIN_EXE_ark"))
        .arg("--config")
        .arg(pg.client_toml())
        .args(["--endpoint", &addr, "put", "up/cut.bin", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = put.stdin.take().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut buf = vec![0u8; 1 << 20];
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut sent = 0usize;
    // Keep feeding until node 1 holds new chunk files (at most 64 MiB).
    while chunk_files(&pg, 1).len() <= before[0] {
        assert!(
            Instant::now() < deadline && sent < 64 << 20,
            "no chunk stored after {sent} bytes"
        );
        rng.fill_bytes(&mut buf);
        stdin.write_all(&buf).unwrap();
        sent += buf.len();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    put.kill().unwrap();
    put.wait().unwrap();
    drop(stdin);
    let during: Vec<usize> = (1..=3).map(|id| chunk_files(&pg, id).len()).collect();
    assert!(during[0] > before[0], "{before:?} -> {during:?}");

    // Nothing visible: no key listed, no object readable.
    let o = ok(&pg.ark(&["ls", "up", "--json"]), "ls");
    assert!(!o.contains("cut.bin"), "{o}");
    let out = pg.path().join("cut.out");
    assert!(!pg
        .ark(&["get", "up/cut.bin", "-o", out.to_str().unwrap()])
        .status
        .success());

    // Past the grace period a scrub deletes the orphaned chunk files on every node.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        ok(&pg.ark(&["scrub", "--wait"]), "scrub");
        let after: Vec<usize> = (1..=3).map(|id| chunk_files(&pg, id).len()).collect();
        if after == before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "orphaned chunks stayed: before {before:?}, during {during:?}, after {after:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_holder_is_passed_over_after_one_rpc_timeout_and_then_asked_last() {
    use ark_client::objects::GetOptions;
    use ark_playground::playground;
    use nix::sys::signal::Signal;
    let pg = Pg::up(3, 20_000).await;
    pg.wait_leader(None, Duration::from_secs(20)).await;
    ok(
        &pg.ark(&[
            "ns",
            "create",
            "two",
            "--copies",
            "2",
            "--min-sites",
            "2",
            "--mode",
            "sync",
            "--versions-kept",
            "2",
        ]),
        "ns create",
    );
    // Two versions of one key through node 1: copies on node 1 and on one other node, the
    // same for both versions (placement is salted with the key). The third node, `reader`,
    // holds none and asks node 1 first (other site, lowest id).
    let a = random_file(&pg.path().join("a.bin"), 3 * 1024 * 1024, 5);
    let b = random_file(&pg.path().join("b.bin"), 3 * 1024 * 1024, 6);
    let addr1 = pg.node(1).client_addr;
    for f in ["a.bin", "b.bin"] {
        ok(
            &pg.ark(&[
                "--endpoint",
                &addr1,
                "put",
                "two/x",
                pg.path().join(f).to_str().unwrap(),
            ]),
            "put",
        );
    }
    let empty: Vec<u64> = [2, 3].into_iter().filter(|&n| chunk_files(&pg, n).is_empty()).collect();
    assert_eq!(
        empty.len(),
        1,
        "exactly one of nodes 2 and 3 must hold no copy: {empty:?}"
    );
    let reader = empty[0];
    let (listed, _) = pg
        .client()
        .list_objects(
            "two",
            &ark_client::ListObjectsOptions {
                prefix: "x".into(),
                all_versions: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut versions: Vec<u64> = listed.iter().map(|o| o.version).collect();
    versions.sort();
    assert_eq!(versions.len(), 2, "two versions of two/x: {versions:?}");
    // Node 1 goes silent (paused, its connections open): a holder in a lost site.
    assert!(playground::signal_node(&pg.node(1), Signal::SIGSTOP).unwrap());
    let via = pg.client().with_endpoints(vec![pg.node(reader).client_addr]);
    let version = |v: u64| GetOptions {
        stale: true,
        version: v,
        ..GetOptions::default()
    };
    let mut out = Vec::new();
    via.get_object("two", "x", &version(versions[0]), &mut out)
        .await
        .unwrap();
    assert!(out == a, "version 1 differs");
    let hedged = pg.metric(reader, "ark_chunk_fetch_hedged_total");
    assert!(
        hedged >= 1.0,
        "node {reader} never asked the other holder while node 1 was silent"
    );
    // Node 1 is now asked last: reading version 2 needs no hedge.
    let mut out = Vec::new();
    via.get_object("two", "x", &version(versions[1]), &mut out)
        .await
        .unwrap();
    assert!(out == b, "version 2 differs");
    assert_eq!(pg.metric(reader, "ark_chunk_fetch_hedged_total"), hedged);
    assert!(playground::signal_node(&pg.node(1), Signal::SIGCONT).unwrap());
}
