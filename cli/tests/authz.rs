//! Who may do what, on a real cluster: grants confine an identity to what they name,
//! admin actions need admin, a revoke is in force on every node without a restart, a lockdown
//! takes the bootstrap admin's right away, and every denied call is in the audit log.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use ark_playground::testkit::{stderr, stdout, Pg};

/// An `ark` CLI speaking as `name`: a client certificate from the playground's CA and a
/// client config naming it (and, when `only` is given, that one node).
struct As {
    config: PathBuf,
}

impl As {
    fn new(pg: &Pg, name: &str) -> Self {
        let certs = pg.path().join("certs");
        let (cert, key) = ark_playground::certs::create_client(&certs, &certs, name).unwrap();
        Self {
            config: pg.client_toml_as(name, &cert, &key, 5000),
        }
    }

    fn ark(&self, args: &[&str]) -> Output {
        let ark = ark_playground::playground::find_binary("ark", "ARK_BIN").unwrap();
        std::process::Command::new(ark)
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap()
    }
}

fn ok(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: stdout {} stderr {}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// Asserts the call was refused for a missing permission (exit 1, the permission named) and
/// answers the message.
fn denied(o: Output, missing: &str, what: &str) -> String {
    let err = stderr(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{what} should be refused: stdout {} stderr {err}",
        stdout(&o)
    );
    assert!(
        err.contains("permission denied") || err.contains("PermissionDenied") || err.contains("may not call"),
        "{what}: {err}"
    );
    assert!(
        err.contains(missing),
        "{what}: the message should name `{missing}`: {err}"
    );
    err
}

/// Every node's audit lines, parsed.
fn audit(pg: &Pg) -> Vec<serde_json::Value> {
    let out = ok(pg.ark(&["audit", "tail", "-n", "1000"]), "audit tail");
    out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn has_line(lines: &[serde_json::Value], identity: &str, rpc: &str, outcome: &str) -> bool {
    lines
        .iter()
        .any(|l| l["identity"] == identity && l["rpc"] == rpc && l["outcome"] == outcome)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_grant_reads_its_namespace_only_and_a_revoke_reaches_every_node() {
    let pg = Pg::up(3, 20_000).await;
    let src = pg.path().join("blob.bin");
    std::fs::write(&src, b"dataset bytes").unwrap();
    let src = src.to_str().unwrap();
    let out = pg.path().join("out.bin");
    let out = out.to_str().unwrap();
    // The playground's client.pem is the bootstrap admin.
    let who = ok(pg.ark(&["auth", "whoami"]), "whoami root");
    assert!(who.starts_with("root (admin)"), "{who}");
    ok(pg.ark(&["ns", "create", "datasets"]), "ns create datasets");
    ok(pg.ark(&["ns", "create", "models"]), "ns create models");
    ok(pg.ark(&["ns", "create", "_ark"]), "ns create _ark");
    ok(pg.ark(&["put", "datasets/train.bin", src]), "put datasets");
    ok(pg.ark(&["put", "models/m.bin", src]), "put models");
    ok(pg.ark(&["kv", "put", "jobs/1", "x"]), "kv put");

    // No grant: nothing at all, not even status.
    let nb = As::new(&pg, "notebook");
    denied(
        nb.ark(&["get", "datasets/train.bin", "-o", out]),
        "read on datasets/train.bin",
        "get before grant",
    );
    denied(nb.ark(&["status"]), "admin", "status without grants");

    ok(pg.ark(&["auth", "grant", "notebook", "read", "datasets/*"]), "grant");
    let who = ok(nb.ark(&["auth", "whoami"]), "whoami notebook");
    assert!(
        who.contains("notebook") && who.contains("read\tdatasets/*") && !who.contains("admin"),
        "{who}"
    );

    // Reads in its namespace, from every node (each decides from its own applied grants).
    for n in pg.info().nodes {
        let addr = n.client_addr.clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let o = nb.ark(&["--endpoint", &addr, "get", "datasets/train.bin", "-o", out, "--stale"]);
            if o.status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} never let the grant in: {}",
                n.id,
                stderr(&o)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(std::fs::read(out).unwrap(), b"dataset bytes");
    }
    assert!(ok(nb.ark(&["ls", "datasets"]), "ls").contains("train.bin"));
    ok(nb.ark(&["status"]), "status with a grant");
    // Only the namespaces it may see are listed.
    let listed = ok(nb.ark(&["ns", "ls"]), "ns ls");
    assert!(listed.contains("datasets") && !listed.contains("models"), "{listed}");

    // Everything else is refused and changes nothing.
    denied(
        nb.ark(&["put", "datasets/new.bin", src]),
        "write on datasets/new.bin",
        "put in its namespace",
    );
    denied(
        nb.ark(&["rm", "datasets/train.bin"]),
        "write on datasets/train.bin",
        "rm",
    );
    denied(
        nb.ark(&["get", "models/m.bin", "-o", out]),
        "read on models/m.bin",
        "get elsewhere",
    );
    denied(nb.ark(&["ls", "models"]), "read on models/", "ls elsewhere");
    denied(nb.ark(&["kv", "get", "jobs/1"]), "kv-read on jobs/1", "kv get");
    denied(nb.ark(&["kv", "put", "jobs/2", "y"]), "kv-write on jobs/2", "kv put");
    denied(nb.ark(&["ns", "create", "mine"]), "admin", "ns create");
    denied(nb.ark(&["ns", "set", "datasets", "--copies", "1"]), "admin", "ns set");
    denied(nb.ark(&["ns", "rm", "models"]), "admin", "ns rm");
    denied(nb.ark(&["members", "remove", "3"]), "admin", "members remove");
    denied(nb.ark(&["scrub"]), "admin", "scrub");
    denied(nb.ark(&["auth", "grant", "notebook", "admin"]), "admin", "self-grant");
    denied(nb.ark(&["audit", "tail"]), "admin", "audit tail");

    // A broad write grant still does not reach the system namespace (the failure model).
    let trainer = As::new(&pg, "trainer");
    ok(pg.ark(&["auth", "grant", "trainer", "write", "*"]), "grant trainer");
    ok(trainer.ark(&["put", "models/ckpt.bin", src]), "trainer writes models");
    denied(
        trainer.ark(&["put", "_ark/failure-model", src]),
        "admin",
        "trainer writes _ark",
    );

    // Nothing the refused calls asked for happened.
    assert!(stdout(&pg.ark(&["ls", "datasets"])).contains("train.bin"));
    assert!(!stdout(&pg.ark(&["ls", "datasets"])).contains("new.bin"));
    let nss = ok(pg.ark(&["ns", "ls"]), "ns ls root");
    assert!(nss.contains("models") && !nss.contains("mine"), "{nss}");
    assert_eq!(pg.info().nodes.len(), 3);
    assert!(ok(pg.ark(&["members", "ls"]), "members").lines().count() >= 3);
    assert_eq!(pg.ark(&["kv", "get", "jobs/2"]).status.code(), Some(1));
    assert!(!stdout(&pg.ark(&["ls", "_ark"])).contains("failure-model"));

    // A revoke is in force on every node without a restart.
    ok(pg.ark(&["auth", "revoke", "notebook", "read", "datasets/*"]), "revoke");
    for n in pg.info().nodes {
        let addr = n.client_addr.clone();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let o = nb.ark(&["--endpoint", &addr, "get", "datasets/train.bin", "-o", out, "--stale"]);
            if o.status.code() == Some(1) && stderr(&o).contains("read on datasets/train.bin") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} still serves a revoked identity",
                n.id
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Each denied call is in the audit log of the node that refused it, and so are the
    // admin actions.
    let lines = audit(&pg);
    for rpc in [
        "Objects/GetObject",
        "Objects/PutObject",
        "Objects/DeleteObject",
        "Objects/ListObjects",
        "Kv/Get",
        "Kv/Put",
        "Objects/CreateNamespace",
        "Objects/SetNamespace",
        "Objects/DeleteNamespace",
        "Cluster/Remove",
        "Objects/Scrub",
        "Auth/Grant",
        "Auth/AuditTail",
        "Cluster/Status",
    ] {
        assert!(
            has_line(&lines, "notebook", rpc, "denied"),
            "no denied {rpc} line for notebook"
        );
    }
    assert!(has_line(&lines, "trainer", "Objects/PutObject", "denied"));
    assert!(has_line(&lines, "root", "Auth/Grant", "ok"));
    assert!(has_line(&lines, "root", "Auth/Revoke", "ok"));
    assert!(has_line(&lines, "root", "Objects/CreateNamespace", "ok"));
    let line = lines
        .iter()
        .find(|l| l["identity"] == "notebook" && l["rpc"] == "Objects/PutObject")
        .unwrap();
    assert_eq!(line["target"], "datasets/new.bin");
    assert!(line["peer"].as_str().unwrap().starts_with("127.0.0.1:"), "{line}");
    assert!(line["time"].as_str().unwrap().ends_with('Z'));
    assert!(line["detail"].as_str().unwrap().contains("write on datasets/new.bin"));
    // And counted.
    let denied_total: f64 = pg
        .info()
        .nodes
        .iter()
        .map(|n| pg.metric(n.id, "ark_audit_events_total{outcome=\"denied\""))
        .sum();
    assert!(denied_total >= 14.0, "{denied_total}");
}

#[tokio::test(flavor = "multi_thread")]
async fn lockdown_leaves_only_named_admins() {
    let pg = Pg::up(3, 20_000).await;
    // Refused while nobody holds an explicit admin grant: root would lock everyone out.
    let o = pg.ark(&["auth", "lockdown"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("explicit admin grant"), "{}", stderr(&o));
    ok(pg.ark(&["ns", "create", "before"]), "root is admin before lockdown");

    let ops = As::new(&pg, "ops");
    denied(ops.ark(&["ns", "create", "x"]), "admin", "ops before its grant");
    ok(pg.ark(&["auth", "grant", "ops", "admin"]), "grant ops admin");
    ok(pg.ark(&["auth", "lockdown"]), "lockdown");
    let ls = ok(ops.ark(&["auth", "ls", "--json"]), "auth ls");
    let v: serde_json::Value = serde_json::from_str(&ls).unwrap();
    assert_eq!(v["locked"], true);
    assert_eq!(v["identities"]["ops"][0]["permission"], "admin");

    // root is an identity like any other now (once the node it asks has applied the
    // lockdown); ops is the admin.
    let deadline = Instant::now() + Duration::from_secs(10);
    for attempt in 0.. {
        let o = pg.ark(&["ns", "create", &format!("after-{attempt}")]);
        if o.status.code() == Some(1) && stderr(&o).contains("missing admin") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "root still admin: {} {}",
            stdout(&o),
            stderr(&o)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ok(ops.ark(&["ns", "create", "after"]), "ops creates");
    // The last admin of a locked cluster cannot be revoked.
    let o = ops.ark(&["auth", "revoke", "ops", "admin"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("last admin"), "{}", stderr(&o));
}
