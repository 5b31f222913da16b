//! Every node's `/metrics` on a 3-site playground of real `arkd` processes passes
//! `promtool check metrics` without a single complaint (HELP on every family, Prometheus
//! naming) once the node has served KV writes, an object put and telemetry intervals, and
//! shows foyer's cache metrics and the Raft entry histogram in finite buckets; `/healthz`
//! and `/readyz` on the same port say whether the process is up and whether the node is
//! ready (a member that knows its leader), a node outside the cluster being up but not ready.
//!
//! Needs `promtool` (Debian package `prometheus`); `.ci/run` installs it when it runs as root.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use ark_playground::testkit::{http_get, stderr, stdout, Pg};

fn ok(o: &Output, what: &str) -> String {
    assert!(o.status.success(), "{what} failed: {}\n{}", stderr(o), stdout(o));
    stdout(o)
}

/// `promtool` on the PATH, or a failure that says how to get it.
fn promtool() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("promtool"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "promtool not found on PATH: install it (Debian/Ubuntu: `apt-get install prometheus`, \
             which brings /usr/bin/promtool; .ci/run does this as root) and run the test again"
        )
    })
}

/// What `promtool check metrics` says about `text` (its exit status and everything it printed).
fn promtool_check(promtool: &Path, text: &str) -> (bool, String) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        format!("{}{}", stdout(&out), stderr(&out)).trim().to_owned(),
    )
}

/// A response split into its status code, its headers (lower-cased names) and its body.
struct Http {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Http {
    fn get(addr: &str, path: &str) -> Http {
        let raw = http_get(addr, path);
        let (head, body) = raw
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("GET {path}: no end of headers in {raw:?}"));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("GET {path}: bad status line in {raw:?}"));
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Http {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Families with a `# TYPE` line but no `# HELP` line.
fn undescribed(text: &str) -> Vec<String> {
    let help: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .filter(|f| !help.contains(f))
        .map(str::to_owned)
        .collect()
}

/// The value of the sample line that starts with `series` (name and labels), if any.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_nodes_metrics_pass_promtool_and_health_endpoints_answer() {
    let promtool = promtool();
    let mut pg = Pg::up(3, 20_000).await;
    let leader = pg.wait_leader(None, Duration::from_secs(20)).await;

    for i in 0..20 {
        ok(&pg.ark(&["kv", "put", &format!("k{i:02}"), &format!("v{i}")]), "kv put");
    }
    ok(&pg.ark(&["ns", "create", "m", "--mode", "sync"]), "ns create");
    let src = pg.path().join("object.bin");
    let data: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&src, &data).unwrap();
    let follower = (1..=3).find(|n| *n != leader).unwrap();
    let faddr = pg.node(follower).client_addr;
    ok(
        &pg.ark(&["--endpoint", &faddr, "put", "m/object.bin", src.to_str().unwrap()]),
        "object put",
    );
    let out = pg.path().join("read.bin");
    ok(
        &pg.ark(&["--endpoint", &faddr, "get", "m/object.bin", "-o", out.to_str().unwrap()]),
        "object get",
    );
    assert!(std::fs::read(&out).unwrap() == data, "object read back differs");

    // Telemetry samples every second in a playground: wait (bounded) until the leader holds
    // every node's points and each node exported its own sample, so those families are in.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let leader_text = Http::get(&pg.node(leader).metrics_addr, "/metrics").body;
        let all_sampled = (1..=3).all(|n| {
            let t = Http::get(&pg.node(n).metrics_addr, "/metrics").body;
            sample(&t, "ark_disk_free_bytes").is_some_and(|v| v > 0.0)
        });
        let windows = (1..=3).all(|n| {
            sample(&leader_text, &format!("ark_telemetry_window_points{{node=\"{n}\"}}")).is_some_and(|v| v > 0.0)
        });
        if all_sampled && windows {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "telemetry metrics did not appear within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // An idle cluster with nothing to repair is not scanned again and again: after a scan
    // that found nothing, the leader's repair queue waits for a change (a playground's
    // interval is 500 ms, so a queue that scanned every interval would count about 6 here).
    let quiet_scans = |pg: &Pg| {
        let t = Http::get(&pg.node(leader).metrics_addr, "/metrics").body;
        sample(&t, "ark_repair_scans_total{found=\"nothing\"}").unwrap_or(0.0)
    };
    let before = quiet_scans(&pg);
    assert!(before >= 1.0, "the leader's repair queue never scanned");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = quiet_scans(&pg) - before;
    assert!(idle <= 1.0, "{idle} repair scans in 3 s of an idle cluster");

    let mut entries_total = 0.0;
    for n in 1..=3 {
        let addr = pg.node(n).metrics_addr;
        let m = Http::get(&addr, "/metrics");
        assert_eq!(m.status, 200, "node {n} /metrics: {}", m.body);
        assert_eq!(
            m.header("content-type"),
            Some("text/plain; version=0.0.4"),
            "node {n} /metrics content type"
        );
        // The issue's own complaints, checked directly as well as through promtool.
        assert_eq!(
            undescribed(&m.body),
            Vec::<String>::new(),
            "node {n}: families without HELP"
        );
        assert!(
            m.body.contains("# TYPE foyer_hybrid_op_total counter"),
            "node {n}: foyer's metrics missing from /metrics"
        );
        let (clean, said) = promtool_check(&promtool, &m.body);
        assert!(
            clean && said.is_empty(),
            "node {n}: promtool check metrics complained (exit ok: {clean}):\n{said}"
        );

        // Every batch of writes is at most 1024 (OPS_PER_ENTRY_MAX): in a finite bucket,
        // never only in +Inf.
        let entries = sample(&m.body, "ark_raft_entry_ops_count").unwrap_or(0.0);
        let in_1024 = sample(&m.body, "ark_raft_entry_ops_bucket{le=\"1024\"}").unwrap_or(0.0);
        assert_eq!(in_1024, entries, "node {n}: entry sizes above the last finite bucket");
        entries_total += entries;

        let h = Http::get(&addr, "/healthz");
        assert_eq!(h.status, 200, "node {n} /healthz: {}", h.body);
        let r = Http::get(&addr, "/readyz");
        assert_eq!(
            r.status, 200,
            "node {n} /readyz (a member that knows its leader): {}",
            r.body
        );
        assert_eq!(Http::get(&addr, "/nothing-here").status, 404, "node {n}: unknown path");
    }

    assert!(
        entries_total >= 20.0,
        "{entries_total} entry sizes recorded for 20 puts and more"
    );

    // A node that no cluster has added knows no leader: up, but not ready.
    let outsider = pg.add_node("site-x", 20_000);
    wait_listening(&outsider.metrics_addr, Duration::from_secs(20)).await;
    let h = Http::get(&outsider.metrics_addr, "/healthz");
    assert_eq!(h.status, 200, "outsider /healthz: {}", h.body);
    let r = Http::get(&outsider.metrics_addr, "/readyz");
    assert_eq!(r.status, 503, "outsider /readyz (no leader known): {}", r.body);
}

/// Waits (bounded) until something accepts connections on `addr`.
async fn wait_listening(addr: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "nothing listening on {addr} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
