//! What must be refused: clients whose certificate the cluster CA did not sign, bad requests
//! (which must change nothing), and bad configs (with a clear error and exit code).

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::path::Path;
use std::process::Command;

use ark_playground::testkit::{stderr, stdout, Pg};

/// `ark kv put KEY x` against the playground, presenting the certificate `cert`/`key`;
/// asserts that it failed (exit 1) and wrote nothing, and answers its stderr.
fn put_refused_with(pg: &Pg, cert: &Path, key: &Path, key_name: &str) -> String {
    let cfg = pg.client_toml_as(key_name, cert, key, 3000);
    let o = Command::new(env!("CARGO_BIN_EXE_ark"))
        .arg("--config")
        .arg(&cfg)
        .args(["kv", "put", key_name, "x"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "stdout {} stderr {}", stdout(&o), stderr(&o));
    // Nothing was written.
    let get = pg.ark(&["kv", "get", key_name]);
    assert_eq!(get.status.code(), Some(1));
    assert!(stderr(&get).contains("not found"));
    stderr(&o)
}

#[tokio::test(flavor = "multi_thread")]
async fn client_with_foreign_certificate_is_refused() {
    let pg = Pg::up(3, 20_000).await;
    let rogue = tempfile::tempdir().unwrap();
    ark_playground::certs::create_ca(rogue.path()).unwrap();
    let (cert, key) = ark_playground::certs::create_client(rogue.path(), rogue.path(), "mallory").unwrap();
    let err = put_refused_with(&pg, &cert, &key, "intruder");
    assert!(err.contains("unavailable"), "{err}");
}

/// A node's certificate is for the peer plane: the client API refuses it (no operator opted
/// in with `tls.allow_node_clients`), and the refusal says what to use instead.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_certificate_is_refused_on_the_client_plane() {
    let pg = Pg::up(3, 20_000).await;
    let certs = pg.path().join("certs");
    let err = put_refused_with(&pg, &certs.join("node-2.pem"), &certs.join("node-2.key"), "from-a-node");
    assert!(err.contains("ark certs client"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_are_rejected_and_change_nothing() {
    let pg = Pg::up(3, 20_000).await;
    let client = pg.client();
    client.put("keep", b"1").await.unwrap();

    let err = client.put("", b"x").await.unwrap_err();
    assert!(matches!(err, ark_client::ClientError::InvalidArgument(_)), "{err}");
    let big = vec![0u8; 64 * 1024 + 1];
    let err = client.put("big", &big).await.unwrap_err();
    assert!(err.to_string().contains("limit"), "{err}");
    let long_key = "k".repeat(1025);
    assert!(client.put(&long_key, b"x").await.is_err());
    // Exactly at the limit is fine.
    client.put("max", &vec![7u8; 64 * 1024]).await.unwrap();

    let (items, _) = client.list("", &ark_client::ListKeysOptions::default()).await.unwrap();
    let keys: Vec<&str> = items.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, vec!["keep", "max"]);

    // The CLI says what is wrong and exits 1; usage errors exit 2.
    let o = pg.ark(&["kv", "put", "", "x"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("key must not be empty"), "{}", stderr(&o));
    let o = pg.ark(&["kv", "frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_write_is_applied_once() {
    let pg = Pg::up(3, 20_000).await;
    let client = pg.client();
    let rid = ark_client::client::new_request_id();
    let r1 = client.put_with_id("once", b"first", rid.clone()).await.unwrap();
    // A retry of the same logical write (same request id) must not apply again, even with
    // a different payload: the recorded answer comes back.
    let r2 = client.put_with_id("once", b"second", rid).await.unwrap();
    assert_eq!(r1, r2);
    assert_eq!(
        client
            .get("once", &ark_client::ReadOptions::LINEARIZABLE)
            .await
            .unwrap()
            .unwrap()
            .value,
        b"first"
    );
}

fn arkd() -> std::path::PathBuf {
    ark_playground::testkit::arkd_built();
    ark_playground::playground::find_arkd().unwrap()
}

#[test]
fn bad_configs_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let sample = Command::new(arkd()).arg("--print-sample-config").output().unwrap();
    assert!(sample.status.success());
    let sample = stdout(&sample);

    let good = dir.path().join("good.toml");
    std::fs::write(&good, &sample).unwrap();
    let o = Command::new(arkd())
        .arg("--config")
        .arg(&good)
        .arg("--check-config")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));

    let unknown = dir.path().join("unknown.toml");
    std::fs::write(
        &unknown,
        sample.replace("site = \"site-a\"", "site = \"site-a\"\nsiet = \"typo\""),
    )
    .unwrap();
    let o = Command::new(arkd())
        .arg("--config")
        .arg(&unknown)
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("siet"), "{}", stderr(&o));

    let malformed = dir.path().join("malformed.toml");
    std::fs::write(&malformed, "node_id = = 1\n").unwrap();
    let o = Command::new(arkd())
        .arg("--config")
        .arg(&malformed)
        .arg("--check-config")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("invalid"), "{}", stderr(&o));

    let o = Command::new(arkd()).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "no arguments is a usage error");
}

/// A node whose certificate another CA signed never receives the cluster's data, even after
/// an operator adds it as a learner: the TLS handshakes between it and the members fail.
#[tokio::test(flavor = "multi_thread")]
async fn peer_with_foreign_certificate_gets_no_data() {
    let mut pg = Pg::up(3, 20_000).await;
    let client = pg.client();
    let rogue_node = pg.add_node("site-x", 20_000);
    pg.kill(rogue_node.id);
    // Re-issue its certificate from a rogue CA, then start it again.
    let rogue = tempfile::tempdir().unwrap();
    ark_playground::certs::create_ca(rogue.path()).unwrap();
    let certs = pg.path().join("certs");
    let (cert, key) = ark_playground::certs::create_node(rogue.path(), rogue.path(), rogue_node.id, &[]).unwrap();
    std::fs::copy(&cert, certs.join(format!("node-{}.pem", rogue_node.id))).unwrap();
    std::fs::copy(&key, certs.join(format!("node-{}.key", rogue_node.id))).unwrap();
    std::fs::copy(rogue.path().join("ca.pem"), pg.path().join("rogue-ca.pem")).unwrap();
    let cfg_path = rogue_node.config.clone();
    let cfg = std::fs::read_to_string(&cfg_path)
        .unwrap()
        .replace("../certs/ca.pem", "../rogue-ca.pem");
    std::fs::write(&cfg_path, cfg).unwrap();
    pg.start(rogue_node.id);

    let spec = ark_client::NodeSpec {
        id: rogue_node.id,
        site: rogue_node.site.clone(),
        peer_addr: rogue_node.peer_addr.clone(),
        client_addr: rogue_node.client_addr.clone(),
    };
    client
        .add_learner(spec, &ark_client::AddLearnerOptions::default())
        .await
        .unwrap();
    for i in 0..50 {
        client.put(&format!("secret/{i}"), b"classified").await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    assert_eq!(
        pg.metric(rogue_node.id, "ark_raft_last_log_index"),
        0.0,
        "the rogue node received log entries"
    );
    let st = client.status().await.unwrap();
    let rogue_status = st.nodes.iter().find(|n| n.id == rogue_node.id).unwrap();
    assert!(
        !rogue_status.healthy,
        "the leader must not count the rogue node as healthy"
    );
    assert_eq!(rogue_status.matched_index, 0);
}

/// The README's run command: the guided failover tour completes, loses nothing, and fails
/// over within seconds.
#[test]
fn demo_completes_without_losing_writes() {
    ark_playground::testkit::arkd_built();
    let o = Command::new(env!("CARGO_BIN_EXE_ark"))
        .args(["demo", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "demo failed: {}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(r["lost_writes"].as_u64(), Some(0));
    assert!(r["acknowledged_writes"].as_u64().unwrap() >= 100);
    assert!(r["failover_ms"].as_u64().unwrap() < 10_000, "{r}");
    assert_ne!(r["old_leader"], r["new_leader"]);
}
