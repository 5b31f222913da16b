//! Certificates: a node takes a new certificate without a restart (SIGHUP, or its files
//! changing), refuses unusable material and keeps serving throughout; client chains issued
//! by an intermediate under the cluster CA are accepted; `ark certs check` warns before
//! expiry.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ark_playground::playground;
use ark_playground::testkit::{stderr, stdout, Pg};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs_of(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// A TLS client config trusting `ca` and presenting `name`.pem/.key from `dir`.
fn tls_client(dir: &Path, name: &str, alpn: &[u8], tls13_only: bool) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs_of(&dir.join("ca.pem")) {
        roots.add(c).unwrap();
    }
    let key = PrivateKeyDer::from_pem_file(dir.join(format!("{name}.key"))).unwrap();
    let versions: &[&rustls::SupportedProtocolVersion] = if tls13_only {
        &[&rustls::version::TLS13]
    } else {
        rustls::DEFAULT_VERSIONS
    };
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs_of(&dir.join(format!("{name}.pem"))), key)
        .unwrap();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    cfg
}

/// The certificate a fresh TLS handshake to the client API at `addr` sees.
fn client_plane_leaf(certs: &Path, addr: &str) -> CertificateDer<'static> {
    let cfg = Arc::new(tls_client(certs, "client", b"h2", false));
    let mut conn = rustls::ClientConnection::new(cfg, ServerName::try_from("ark-node").unwrap()).unwrap();
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).unwrap();
    }
    conn.peer_certificates().unwrap()[0].clone().into_owned()
}

/// The certificate a fresh QUIC handshake to node `id`'s peer endpoint at `addr` sees
/// (presenting node 2's certificate: the peer plane admits node certificates only).
async fn peer_plane_leaf(certs: &Path, addr: &str, id: u64) -> CertificateDer<'static> {
    let cfg = tls_client(certs, "node-2", b"ark-peer/1", true);
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(cfg).unwrap();
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let conn = tokio::time::timeout(
        Duration::from_secs(5),
        ep.connect_with(
            quinn::ClientConfig::new(Arc::new(crypto)),
            addr.parse().unwrap(),
            &format!("node-{id}"),
        )
        .unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    let chain = conn
        .peer_identity()
        .unwrap()
        .downcast::<Vec<CertificateDer<'static>>>()
        .unwrap();
    conn.close(0u32.into(), b"done");
    ep.wait_idle().await;
    chain[0].clone()
}

/// Issues a new certificate for node 1, valid `days`, and moves it over node 1's files
/// (rename: a node never reads half a file).
fn replace_node_1(certs: &Path, days: u32) -> CertificateDer<'static> {
    let fresh = certs.join(format!("fresh-{days}"));
    let (cert, key) = ark_playground::certs::create_node_days(certs, &fresh, 1, &[], days).unwrap();
    std::fs::rename(&key, certs.join("node-1.key")).unwrap();
    std::fs::rename(&cert, certs.join("node-1.pem")).unwrap();
    certs_of(&certs.join("node-1.pem")).remove(0)
}

/// Waits until fresh handshakes on both of node 1's planes see `want`.
async fn wait_both_planes(pg: &Pg, want: &CertificateDer<'static>, within: Duration) {
    let certs = pg.path().join("certs");
    let n = pg.node(1);
    let deadline = Instant::now() + within;
    loop {
        let client = client_plane_leaf(&certs, &n.client_addr);
        let peer = peer_plane_leaf(&certs, &n.peer_addr, 1).await;
        if &client == want && &peer == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node 1 still presents its old certificate after {within:?} (client plane new: {}, peer plane new: {})",
            &client == want,
            &peer == want
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn reloads(pg: &Pg, result: &str) -> f64 {
    pg.metric(1, &format!("ark_tls_reloads_total{{result=\"{result}\"}}"))
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_takes_a_new_certificate_without_a_restart_and_refuses_a_bad_one() {
    let pg = Pg::up(3, 20_000).await;
    let certs = pg.path().join("certs");
    let n1 = pg.node(1);
    let original = certs_of(&certs.join("node-1.pem")).remove(0);
    assert_eq!(client_plane_leaf(&certs, &n1.client_addr), original);
    assert_eq!(peer_plane_leaf(&certs, &n1.peer_addr, 1).await, original);

    // Writes through one client (its connections opened before the reload and kept
    // after), none of which may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let failure = Arc::new(Mutex::new(None::<String>));
    let writer = {
        let client = pg.client();
        let (stop, acked, failure) = (stop.clone(), acked.clone(), failure.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match client.put(&format!("reload-{i}"), b"v").await {
                    Ok(_) => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        failure.lock().unwrap().get_or_insert(format!("put {i}: {e}"));
                    }
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let wait_acked = |more: u64| {
        let acked = acked.clone();
        async move {
            let target = acked.load(Ordering::Relaxed) + more;
            let deadline = Instant::now() + Duration::from_secs(20);
            while acked.load(Ordering::Relaxed) < target {
                assert!(Instant::now() < deadline, "writes stalled");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_acked(20).await;

    // SIGHUP: a certificate valid 30 days replaces the year-long one.
    let ok_before = reloads(&pg, "ok");
    let second = replace_node_1(&certs, 30);
    assert!(playground::signal_node(&n1, nix::sys::signal::Signal::SIGHUP).unwrap());
    wait_both_planes(&pg, &second, Duration::from_secs(10)).await;
    assert!(reloads(&pg, "ok") > ok_before);
    let expiry = pg.metric(1, "ark_tls_certificate_expiry_timestamp_seconds{cert=\"node\"}");
    let in_30_days = unix_now() + 30.0 * 86_400.0;
    assert!(
        (expiry - in_30_days).abs() < 3_600.0,
        "expiry gauge {expiry}, expected about {in_30_days}"
    );
    wait_acked(20).await;

    // Another node's certificate is not node 1's: refused, and node 1 keeps the one it has.
    let errors_before = reloads(&pg, "error");
    std::fs::copy(certs.join("node-2.key"), certs.join("node-1.key")).unwrap();
    std::fs::copy(certs.join("node-2.pem"), certs.join("node-1.pem")).unwrap();
    assert!(playground::signal_node(&n1, nix::sys::signal::Signal::SIGHUP).unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while reloads(&pg, "error") <= errors_before {
        assert!(Instant::now() < deadline, "the bad material was not reported");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(client_plane_leaf(&certs, &n1.client_addr), second);
    assert_eq!(peer_plane_leaf(&certs, &n1.peer_addr, 1).await, second);
    assert!(playground::process_alive(n1.pid), "a bad reload stopped the node");
    wait_acked(20).await;

    // No signal: the files changing is enough.
    let third = replace_node_1(&certs, 60);
    wait_both_planes(&pg, &third, Duration::from_secs(20)).await;
    wait_acked(20).await;

    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    assert_eq!(
        failure.lock().unwrap().take(),
        None,
        "a write failed across the reloads"
    );
    assert!(playground::process_alive(n1.pid));
    // The cluster still works end to end through node 1's new certificate.
    let put = pg.ark(&["kv", "put", "after-reload", "yes"]);
    assert!(put.status.success(), "{}", stderr(&put));
}

/// `ark kv put` with the client certificate `cert`/`key`; answers its output.
fn put_with(pg: &Pg, cert: &Path, key: &Path, k: &str) -> std::process::Output {
    let cfg = pg.client_toml_as(k, cert, key, 3000);
    Command::new(env!("CARGO_BIN_EXE_ark"))
        .arg("--config")
        .arg(&cfg)
        .args(["kv", "put", k, "x"])
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn client_chains_through_an_intermediate_a_csr_or_a_client_only_ca_are_accepted() {
    let mut pg = Pg::up(1, 20_000).await;
    // What is tested here is whose certificates the handshake accepts; what each identity may
    // do is authorization's (cli/tests/authz.rs): each may write KV keys.
    for id in ["team", "billing", "partner"] {
        let o = pg.ark(&["auth", "grant", id, "kv-write", "*"]);
        assert!(o.status.success(), "grant {id}: {}", String::from_utf8_lossy(&o.stderr));
    }
    let certs = pg.path().join("certs");
    let sub = certs.join("team-ca");
    let ark = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_ark")).args(args).output().unwrap();
    let o = ark(&[
        "certs",
        "intermediate",
        "--ca-dir",
        certs.to_str().unwrap(),
        "--out",
        sub.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = ark(&["certs", "client", "team", "--ca-dir", sub.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (cert, key) = (sub.join("team.pem"), sub.join("team.key"));
    assert_eq!(
        certs_of(&cert).len(),
        2,
        "the client's file holds its certificate and the intermediate"
    );

    let o = put_with(&pg, &cert, &key, "via-intermediate");
    assert!(o.status.success(), "stdout {} stderr {}", stdout(&o), stderr(&o));

    // Without the intermediate the chain does not reach the cluster CA: refused.
    let leaf_only = sub.join("team-leaf-only.pem");
    let pem = std::fs::read_to_string(&cert).unwrap();
    let end = pem.find("-----END CERTIFICATE-----").unwrap() + "-----END CERTIFICATE-----\n".len();
    std::fs::write(&leaf_only, &pem[..end]).unwrap();
    let o = put_with(&pg, &leaf_only, &key, "leaf-only");
    assert_eq!(o.status.code(), Some(1), "stdout {} stderr {}", stdout(&o), stderr(&o));

    // A CSR signed by `ark certs sign` is a working client certificate too.
    let req = pg.path().join("req");
    let o = ark(&["certs", "csr", "billing", "--out", req.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = ark(&[
        "certs",
        "sign",
        req.join("billing.csr").to_str().unwrap(),
        "--ca-dir",
        certs.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = put_with(&pg, &req.join("billing.pem"), &req.join("billing.key"), "via-csr");
    assert!(o.status.success(), "stdout {} stderr {}", stdout(&o), stderr(&o));

    // An external CA's client: refused, until the node trusts that CA for clients
    // (`tls.client_ca`); replacing that file and a SIGHUP take the trust away again.
    let ext = pg.path().join("partner-ca");
    ark_playground::certs::create_ca(&ext).unwrap();
    let (partner, partner_key) = ark_playground::certs::create_client(&ext, &ext, "partner").unwrap();
    let o = put_with(&pg, &partner, &partner_key, "partner-before");
    assert_eq!(o.status.code(), Some(1), "stdout {} stderr {}", stdout(&o), stderr(&o));
    let n1 = pg.node(1);
    let client_ca = certs.join("clients-ca.pem");
    std::fs::copy(ext.join("ca.pem"), &client_ca).unwrap();
    let config = std::fs::read_to_string(&n1.config).unwrap();
    let config = config.replacen(
        "[tls]\n",
        &format!("[tls]\nclient_ca = \"{}\"\n", client_ca.display()),
        1,
    );
    pg.kill(1);
    std::fs::write(&n1.config, config).unwrap();
    pg.start(1);
    pg.wait_leader(None, Duration::from_secs(30)).await;
    let o = put_with(&pg, &partner, &partner_key, "partner-trusted");
    assert!(o.status.success(), "stdout {} stderr {}", stdout(&o), stderr(&o));
    let other = pg.path().join("other-ca");
    ark_playground::certs::create_ca(&other).unwrap();
    std::fs::copy(other.join("ca.pem"), certs.join("clients-ca.new")).unwrap();
    std::fs::rename(certs.join("clients-ca.new"), &client_ca).unwrap();
    assert!(playground::signal_node(&pg.node(1), nix::sys::signal::Signal::SIGHUP).unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = put_with(&pg, &partner, &partner_key, "partner-after");
        if o.status.code() == Some(1) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the partner CA is still trusted after the reload"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[test]
fn certs_check_warns_before_expiry() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().to_str().unwrap();
    let ark = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_ark")).args(args).output().unwrap();
    assert!(ark(&["certs", "ca", "--dir", dir]).status.success());
    assert!(ark(&["certs", "node", "1", "--ca-dir", dir]).status.success());
    assert!(ark(&["certs", "client", "ops", "--ca-dir", dir]).status.success());

    // Defaults: CA ten years, node one year, client 90 days; none within 30 days.
    let o = ark(&["certs", "check", dir]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("CN=ops") && out.contains("(90 days)"), "{out}");
    assert!(out.contains("CN=ark node 1") && out.contains("(365 days)"), "{out}");
    assert!(out.contains("(3650 days)"), "{out}");

    // The client certificate expires within 100 days: warned, exit 1.
    let o = ark(&["certs", "check", "--warn-days", "100", dir]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    let warned: Vec<&str> = out.lines().filter(|l| l.ends_with("EXPIRES SOON")).collect();
    assert_eq!(warned.len(), 1, "{out}");
    assert!(warned[0].contains("CN=ops"), "{out}");
    assert!(stderr(&o).contains("1 certificate"), "{}", stderr(&o));

    // Nothing to check is an error, not a pass.
    let empty = tempfile::tempdir().unwrap();
    assert_eq!(
        ark(&["certs", "check", empty.path().to_str().unwrap()]).status.code(),
        Some(1)
    );
}
