//! Encryption at rest on a 3-site playground of real `arkd` processes, through the `ark`
//! CLI: no byte of an `--encrypt` namespace's plaintext is on any node's disk, equal
//! plaintext deduplicates inside a namespace but not across two, objects read back intact
//! after every node restarted, a node with the wrong key-encryption key answers an error
//! and never bytes, and a KEK rotation (previous KEK, `ark ns rekey`, new data key
//! generation) keeps every object readable with the new KEK alone. And a cluster without a
//! KEK refuses to create an encrypted namespace and creates nothing.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use ark_playground::playground::{write_kek, KEK_FILE};
use ark_playground::testkit::{stderr, stdout, Pg};
use rand::{RngCore, SeedableRng};

const MARKER: &[u8] = b"ARK-PLAINTEXT-MARKER-5e1d";

fn ok(o: &Output, what: &str) -> String {
    assert!(o.status.success(), "{what} failed: {}\n{}", stderr(o), stdout(o));
    stdout(o)
}

/// 2 MiB of compressible lines carrying the marker, then 2 MiB of random bytes with the
/// marker every 64 KiB.
fn marked_data(seed: u64) -> Vec<u8> {
    let mut data = Vec::new();
    let mut i = 0u64;
    while data.len() < 2 << 20 {
        data.extend_from_slice(format!("line {i} seed {seed}: ").as_bytes());
        data.extend_from_slice(MARKER);
        data.push(b'\n');
        i += 1;
    }
    let mut random = vec![0u8; 2 << 20];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut random);
    for at in (0..random.len() - MARKER.len()).step_by(64 << 10) {
        random[at..at + MARKER.len()].copy_from_slice(MARKER);
    }
    data.extend_from_slice(&random);
    data
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Every file of every node's data dir (chunk files, the chunk cache, the Raft log, the
/// database) that contains the marker.
fn files_with_marker(pg: &Pg) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for n in pg.info().nodes {
        files_under(&n.data_dir, &mut files);
    }
    files
        .into_iter()
        .filter(|f| {
            std::fs::read(f)
                .map(|b| b.windows(MARKER.len()).any(|w| w == MARKER))
                .unwrap_or(false)
        })
        .collect()
}

/// Chunk files on node `id`.
fn chunk_files(pg: &Pg, id: u64) -> usize {
    let dir = pg.node(id).data_dir.join("chunks");
    let mut files = Vec::new();
    files_under(&dir, &mut files);
    // Not the temp files of writes in progress, under chunks/tmp/.
    files.iter().filter(|f| !f.starts_with(dir.join("tmp"))).count()
}

fn get(pg: &Pg, obj: &str) -> Vec<u8> {
    let out = pg.path().join("read.bin");
    ok(
        &pg.ark(&["get", obj, "-o", out.to_str().unwrap()]),
        &format!("get {obj}"),
    );
    let b = std::fs::read(&out).unwrap();
    std::fs::remove_file(&out).unwrap();
    b
}

/// Stops every node, lets `change` edit the playground folder, starts them again.
async fn restart_all(pg: &mut Pg, change: impl FnOnce(&Path)) {
    for id in 1..=3 {
        pg.kill(id);
    }
    change(pg.path());
    for id in 1..=3 {
        pg.start(id);
    }
    pg.wait_leader(None, Duration::from_secs(30)).await;
}

fn edit_configs(dir: &Path, edit: impl Fn(&str) -> String) {
    for id in 1..=3 {
        edit_configs_of(dir, id, &edit);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_namespace_keeps_no_plaintext_on_disk_survives_restarts_and_refuses_a_wrong_key() {
    let mut pg = Pg::up(3, 20_000).await;
    pg.wait_leader(None, Duration::from_secs(20)).await;
    ok(
        &pg.ark(&["ns", "create", "secret", "--copies", "3", "--compress", "--encrypt"]),
        "ns create --encrypt",
    );
    ok(
        &pg.ark(&["ns", "create", "secret2", "--copies", "3", "--encrypt"]),
        "ns create",
    );
    let ls = ok(&pg.ark(&["ns", "ls", "--json"]), "ns ls");
    let v: serde_json::Value = serde_json::from_str(&ls).unwrap();
    assert!(
        v.as_array()
            .unwrap()
            .iter()
            .all(|n| n["encrypted"] == true && n["key_generations"] == 1),
        "{ls}"
    );

    let data = marked_data(1);
    let src = pg.path().join("plain.bin");
    std::fs::write(&src, &data).unwrap();
    ok(&pg.ark(&["put", "secret/a", src.to_str().unwrap()]), "put");
    assert!(get(&pg, "secret/a") == data, "secret/a read back different bytes");

    // Equal plaintext: deduplicated inside the namespace, other chunks in another one.
    let before = chunk_files(&pg, 1);
    assert!(before > 0);
    ok(&pg.ark(&["put", "secret/b", src.to_str().unwrap()]), "put again");
    assert_eq!(
        chunk_files(&pg, 1),
        before,
        "the same bytes in the same namespace made new chunks"
    );
    ok(&pg.ark(&["put", "secret2/a", src.to_str().unwrap()]), "put in secret2");
    assert!(
        chunk_files(&pg, 1) >= 2 * before,
        "the same bytes in another encrypted namespace reused its chunks ({before} -> {})",
        chunk_files(&pg, 1)
    );

    // A changed copy of a large object is sent whole: an encrypted namespace's chunk ids
    // are of sealed bytes, which the client cannot name (the node refuses the chunk list).
    let mut big = Vec::new();
    for seed in 2..5 {
        big.extend(marked_data(seed));
    }
    let big_src = pg.path().join("big.bin");
    std::fs::write(&big_src, &big).unwrap();
    ok(&pg.ark(&["put", "secret/big", big_src.to_str().unwrap()]), "put big");
    big[5 << 20] ^= 0xff;
    std::fs::write(&big_src, &big).unwrap();
    let out = ok(&pg.ark(&["put", "secret/big", big_src.to_str().unwrap()]), "re-put big");
    assert!(!out.contains("not sent"), "{out}");
    assert!(get(&pg, "secret/big") == big, "secret/big read back different bytes");

    let found = files_with_marker(&pg);
    assert!(found.is_empty(), "plaintext found on disk: {found:?}");

    // Every node restarted: read back intact, still no plaintext.
    restart_all(&mut pg, |_| {}).await;
    assert!(get(&pg, "secret/a") == data, "secret/a changed across a restart");
    assert!(get(&pg, "secret2/a") == data, "secret2/a changed across a restart");
    assert!(files_with_marker(&pg).is_empty());

    // Another KEK on every node: an error naming the KEKs, never bytes.
    restart_all(&mut pg, |dir| {
        std::fs::rename(dir.join(KEK_FILE), dir.join("kek.old")).unwrap();
        write_kek(&dir.join(KEK_FILE)).unwrap();
    })
    .await;
    let out = pg.path().join("wrong.bin");
    let o = pg.ark(&["get", "secret/a", "-o", out.to_str().unwrap()]);
    assert!(!o.status.success(), "get with the wrong KEK succeeded");
    assert!(stderr(&o).contains("KEK"), "{}", stderr(&o));
    assert!(!out.exists(), "a failed get left a file");
    let o = pg.ark(&["get", "secret/a"]);
    assert!(!o.status.success());
    assert!(
        o.stdout.is_empty(),
        "{} bytes written with the wrong KEK",
        o.stdout.len()
    );
    let o = pg.ark(&["put", "secret/c", src.to_str().unwrap()]);
    assert!(!o.status.success(), "put with the wrong KEK succeeded");

    // KEK rotation: the old one as previous, rekey (with a new data key generation for new
    // writes), then the new KEK alone reads old and new objects.
    restart_all(&mut pg, |dir| {
        edit_configs(dir, |t| {
            t.replace(
                "kek_file = \"../kek\"\n",
                "kek_file = \"../kek\"\nprevious_kek_files = [\"../kek.old\"]\n",
            )
        })
    })
    .await;
    assert!(get(&pg, "secret/a") == data, "unreadable with the old KEK as previous");
    let r = ok(&pg.ark(&["ns", "rekey", "secret", "--new-data-key"]), "ns rekey");
    assert!(r.contains("1 data key generation(s) rewrapped"), "{r}");
    ok(&pg.ark(&["ns", "rekey", "secret2"]), "ns rekey secret2");
    let data2 = marked_data(2);
    let src2 = pg.path().join("plain2.bin");
    std::fs::write(&src2, &data2).unwrap();
    ok(
        &pg.ark(&["put", "secret/new", src2.to_str().unwrap()]),
        "put after rekey",
    );
    restart_all(&mut pg, |dir| {
        edit_configs(dir, |t| t.replace("previous_kek_files = [\"../kek.old\"]\n", ""));
        std::fs::remove_file(dir.join("kek.old")).unwrap();
    })
    .await;
    assert!(
        get(&pg, "secret/a") == data,
        "old generation unreadable after the rotation"
    );
    assert!(
        get(&pg, "secret/new") == data2,
        "new generation unreadable after the rotation"
    );
    assert!(get(&pg, "secret2/a") == data, "secret2 unreadable after the rotation");
    let ls = ok(&pg.ark(&["ns", "ls", "--json"]), "ns ls");
    let v: serde_json::Value = serde_json::from_str(&ls).unwrap();
    let secret = v.as_array().unwrap().iter().find(|n| n["name"] == "secret").unwrap();
    assert_eq!(secret["key_generations"], 2, "{ls}");
    assert_eq!(secret["kek_ids"].as_array().unwrap().len(), 1, "{ls}");
    assert!(files_with_marker(&pg).is_empty());

    // The same bytes in a plain namespace are on disk in clear: the check above can fail.
    ok(&pg.ark(&["ns", "create", "plain", "--copies", "3"]), "ns create plain");
    ok(&pg.ark(&["put", "plain/a", src.to_str().unwrap()]), "put plain");
    assert!(
        !files_with_marker(&pg).is_empty(),
        "the marker search finds nothing at all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_kek_an_encrypted_namespace_is_refused_and_nothing_is_created() {
    let mut pg = Pg::up(1, 20_000).await;
    pg.kill(1);
    edit_configs_of(pg.path(), 1, |t| t.replace("[encryption]\nkek_file = \"../kek\"\n", ""));
    pg.start(1);
    pg.wait_leader(None, Duration::from_secs(30)).await;
    let o = pg.ark(&[
        "ns",
        "create",
        "secret",
        "--copies",
        "1",
        "--min-sites",
        "1",
        "--encrypt",
    ]);
    assert!(!o.status.success(), "created without a KEK");
    assert!(stderr(&o).contains("no key-encryption key"), "{}", stderr(&o));
    let ls = ok(&pg.ark(&["ns", "ls", "--json"]), "ns ls");
    assert!(!ls.contains("secret"), "{ls}");
    // A plain namespace still works, and cannot be rekeyed.
    ok(
        &pg.ark(&["ns", "create", "plain", "--copies", "1", "--min-sites", "1"]),
        "ns create plain",
    );
    let o = pg.ark(&["ns", "rekey", "plain"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("not encrypted"), "{}", stderr(&o));
}

fn edit_configs_of(dir: &Path, id: u64, edit: impl Fn(&str) -> String) {
    let p = dir.join(format!("node-{id}")).join("arkd.toml");
    let text = std::fs::read_to_string(&p).unwrap();
    let new = edit(&text);
    assert_ne!(new, text, "the edit changed nothing");
    std::fs::write(&p, new).unwrap();
}

/// A node that was down while an encrypted namespace was created and the log compacted
/// gets the namespace's wrapped keys from the snapshot, and reads its objects (through its
/// chunk cache, as it holds no copy) without leaving plaintext on its disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_catches_up_from_a_snapshot_reads_encrypted_objects() {
    let mut pg = Pg::up(3, 100).await;
    let leader = pg.wait_leader(None, Duration::from_secs(20)).await;
    let lagger = (1..=3).find(|id| *id != leader).unwrap();
    pg.kill(lagger);
    ok(
        &pg.ark(&[
            "ns",
            "create",
            "secret",
            "--copies",
            "2",
            "--min-sites",
            "2",
            "--encrypt",
        ]),
        "ns create --encrypt",
    );
    let data = marked_data(3);
    let src = pg.path().join("plain.bin");
    std::fs::write(&src, &data).unwrap();
    ok(&pg.ark(&["put", "secret/a", src.to_str().unwrap()]), "put");
    let client = pg.client();
    for i in 0..600 {
        client.put(&format!("snap/{i:04}"), b"x").await.unwrap();
    }
    pg.start(lagger);
    let addr = pg.node(lagger).client_addr;
    let out = pg.path().join("lagger.bin");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let o = pg.ark(&["--endpoint", &addr, "get", "secret/a", "-o", out.to_str().unwrap()]);
        if o.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node {lagger} never read secret/a: {}",
            stderr(&o)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(std::fs::read(&out).unwrap() == data, "node {lagger} read other bytes");
    assert!(
        pg.metric(lagger, "ark_raft_snapshots_installed_total") >= 1.0,
        "catch-up did not use a snapshot"
    );
    // The lagger holds no copy: it read through its chunk cache, which keeps sealed bytes.
    let found = files_with_marker(&pg);
    assert!(found.is_empty(), "plaintext found on disk: {found:?}");
}
