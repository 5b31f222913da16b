//! `ark-chaos drill` against a running cluster, as an operator would run it: the cluster is
//! a playground started here, and the fault actions are local shell commands on it (kill -9
//! of the pid in `playground.json`, `ark playground start`, writing a node's `faults.toml`),
//! where a real deployment would use ssh, systemctl and nftables.
//!
//! Needs the `ark` and `arkd` binaries next to `ark-chaos` (`cargo build`).

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

use ark_playground::playground::{self, Layout};

/// A playground that goes down when the test ends, passed or not.
struct Cluster {
    dir: tempfile::TempDir,
    children: Vec<Child>,
}

impl Cluster {
    fn up() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let up = rt.block_on(playground::up(dir.path(), &Layout::default()));
        let children = match up {
            Ok((_, children)) => children,
            Err(e) => {
                if dir.path().join("playground.json").exists() {
                    let _ = playground::down(dir.path(), Duration::from_secs(5));
                }
                panic!("playground did not start: {e:#}");
            }
        };
        Self { dir, children }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = playground::down(self.dir.path(), Duration::from_secs(5));
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn ark_chaos() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ark-chaos"))
}

/// The `ark` CLI built next to `ark-chaos`.
fn ark_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_ark-chaos")).with_file_name("ark");
    assert!(p.is_file(), "{} missing: run `cargo build` first", p.display());
    p
}

/// Kill -9 of the node's current pid (from playground.json, which `ark playground start`
/// updates); prints nothing, and so fails, when the node is not there.
const KILL: &str = r#"kill -9 $(awk -v id={id} '/"id":/ {{ gsub(/[^0-9]/, ""); cur = $0 }} /"pid":/ && cur == id {{ gsub(/[^0-9]/, ""); print; exit }}' {pg}/playground.json)"#;
/// Drops all peer traffic between the node and `{peers}` in arkd's fault layer; written
/// atomically. arkd re-reads the file every 100 ms: the sleep makes the command return once
/// the cut is in force, as the drill expects of every action (else the RTO would count writes
/// that slipped through before it).
const ISOLATE: &str = r#"for p in {peers}; do printf '[[rule]]\npeer = "%s"\ndrop = "both"\n' "$p"; done > {node_dir}/faults.tmp && mv {node_dir}/faults.tmp {node_dir}/faults.toml && sleep 0.3"#;
const HEAL: &str = ": > {node_dir}/faults.tmp && mv {node_dir}/faults.tmp {node_dir}/faults.toml";

/// A drill config for the playground at `pg`, with `actions` (TOML lines) and `extra` (TOML
/// lines) in every node's entry.
fn config(pg: &Path, scenario: &str, actions: &str, extra: &str) -> String {
    let mut s = format!(
        "client_config = {:?}\nscenario = {scenario:?}\nduration_s = 20\nseed = 1\nhold_s = 1.5\ngap_s = [3, 4]\n[actions]\n{actions}\n",
        pg.join("client.toml")
    );
    for id in 1..=3 {
        s.push_str(&format!(
            "[[nodes]]\nid = {id}\npg = {:?}\nark = {:?}\nnode_dir = {:?}\n{extra}\n",
            pg,
            ark_bin(),
            pg.join(format!("node-{id}"))
        ));
    }
    s
}

fn toml_str(s: &str) -> String {
    format!("'''{s}'''")
}

fn drill(cfg_dir: &Path, cfg: &str, args: &[&str]) -> Output {
    let path = cfg_dir.join("drill.toml");
    std::fs::write(&path, cfg).unwrap();
    ark_chaos()
        .arg("drill")
        .arg("--config")
        .arg(&path)
        .args(args)
        .output()
        .unwrap()
}

fn show(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs the drill to its end and checks the verdict, the mode and the fault log.
fn passes(cfg: &str, action: &str) -> serde_json::Value {
    let out = tempfile::tempdir().unwrap();
    let o = drill(out.path(), cfg, &["--out", out.path().to_str().unwrap()]);
    assert!(o.status.success(), "drill failed: {}", show(&o));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(r["mode"], "deployed", "{r}");
    assert_eq!(r["linearizable"], true, "{r}");
    assert_eq!(r["lost_acked"], 0, "{r}");
    assert_eq!(r["corrupt_reads"], 0, "{r}");
    assert!(r["rto_ms"].as_f64().unwrap() < 10_000.0, "{r}");
    assert!(r["ops"]["ok"].as_u64().unwrap() > 100, "{r}");
    assert!(out.path().join("history.json").is_file());
    // Every fault ran its command and its heal, each logged with exit 0.
    let notes = common::notes(&r);
    let logged = |a: &str| {
        notes
            .iter()
            .filter(|n| n.starts_with("fault log: ") && n.contains(&format!(" {a} node ")))
            .count()
    };
    assert!(logged(action) >= 2, "fewer than 2 faults: {notes:#?}");
    let heal = if action == "kill" { "start" } else { "heal" };
    assert_eq!(logged(action), logged(heal), "{notes:#?}");
    assert!(
        notes
            .iter()
            .filter(|n| n.starts_with("fault log: "))
            .all(|n| n.contains("-> exit 0")),
        "{notes:#?}"
    );
    let log = std::fs::read_to_string(out.path().join("faults.log")).unwrap();
    assert_eq!(log.lines().count(), logged(action) + logged(heal), "{log}");
    r
}

#[test]
fn leader_kill_against_a_running_cluster_passes_and_dry_run_runs_nothing() {
    let cluster = Cluster::up();
    let pg = cluster.path();
    let scratch = tempfile::tempdir().unwrap();

    // A dry run validates against the cluster and prints the commands, running none.
    let marker = scratch.path().join("killed");
    let touch = format!(
        "kill = {}\nstart = 'true'",
        toml_str(&format!("touch {}-{{id}}", marker.display()))
    );
    let o = drill(scratch.path(), &config(pg, "leader-kill", &touch, ""), &["--dry-run"]);
    assert!(o.status.success(), "{}", show(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains(&format!("touch {}-", marker.display())), "{stdout}");
    assert!(stdout.contains("nothing was run"), "{stdout}");
    // A wrong node id is refused before anything runs, with exit 2.
    let bad = config(pg, "leader-kill", &touch, "").replace("id = 3", "id = 9");
    let o = drill(scratch.path(), &bad, &["--out", scratch.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("id 9 is not a member"),
        "{}",
        show(&o)
    );
    for id in 1..=3 {
        assert!(
            !Path::new(&format!("{}-{id}", marker.display())).exists(),
            "a dry run ran a command"
        );
    }

    // A failing fault command stops the drill with exit 1, after the heal of that fault ran.
    let m = scratch.path().join("m");
    let failing = format!(
        "kill = 'exit 3'\nstart = {}",
        toml_str(&format!("touch {}-healed-{{id}}", m.display()))
    );
    let out = scratch.path().join("failing");
    let o = drill(
        scratch.path(),
        &config(pg, "leader-kill", &failing, ""),
        &["--out", out.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("healed the 1 faults in force") && err.contains("exited with 3"),
        "{err}"
    );
    let healed = |m: &Path| {
        (1..=3)
            .filter(|id| Path::new(&format!("{}-healed-{id}", m.display())).exists())
            .count()
    };
    assert_eq!(healed(&m), 1, "{}", show(&o));
    assert!(!out.join("report.json").exists());

    // Ctrl-C while a fault is held: the fault is healed before the drill exits.
    let m = scratch.path().join("c");
    let held = format!(
        "kill = {}\nstart = {}",
        toml_str(&format!("touch {}-killed-{{id}}", m.display())),
        toml_str(&format!("touch {}-healed-{{id}}", m.display()))
    );
    let cfg_path = scratch.path().join("held.toml");
    std::fs::write(
        &cfg_path,
        config(pg, "leader-kill", &held, "").replace("hold_s = 1.5", "hold_s = 15"),
    )
    .unwrap();
    let out = scratch.path().join("interrupted");
    let mut child = ark_chaos()
        .args(["drill", "--config"])
        .arg(&cfg_path)
        .arg("--out")
        .arg(&out)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let injected = |m: &Path| (1..=3).any(|id| Path::new(&format!("{}-killed-{id}", m.display())).exists());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !injected(&m) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if !injected(&m) {
        let _ = child.kill();
        panic!("no fault within 20 s: {}", show(&child.wait_with_output().unwrap()));
    }
    assert_eq!(healed(&m), 0);
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("interrupted"),
        "{}",
        show(&o)
    );
    assert_eq!(healed(&m), 1, "{}", show(&o));

    let actions = format!(
        "kill = {}\nstart = {}",
        toml_str(KILL),
        toml_str("{ark} playground start --dir {pg} --node {id}")
    );
    passes(&config(pg, "leader-kill", &actions, ""), "kill");
}

#[test]
fn site_partition_against_a_running_cluster_passes_and_heals() {
    let cluster = Cluster::up();
    let pg = cluster.path();
    let actions = format!("isolate = {}\nheal = {}", toml_str(ISOLATE), toml_str(HEAL));
    passes(&config(pg, "site-partition", &actions, ""), "isolate");
    for id in 1..=3 {
        let f = pg.join(format!("node-{id}/faults.toml"));
        if f.exists() {
            assert_eq!(std::fs::read_to_string(&f).unwrap(), "", "{} not healed", f.display());
        }
    }
}

#[test]
fn a_config_error_exits_2_without_a_cluster() {
    let scratch = tempfile::tempdir().unwrap();
    std::fs::write(
        scratch.path().join("client.toml"),
        "endpoints = [\"127.0.0.1:1\"]\nca = \"ca.pem\"\ncert = \"c.pem\"\nkey = \"c.key\"\n",
    )
    .unwrap();
    let cfg = |actions: &str| {
        format!("client_config = \"client.toml\"\nscenario = \"pause\"\n[actions]\n{actions}\n[[nodes]]\nid = 1\nhost = \"h\"\n")
    };
    let o = drill(scratch.path(), &cfg("pause = 'true'"), &["--dry-run"]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("needs the action `resume`"),
        "{}",
        show(&o)
    );
    let o = drill(
        scratch.path(),
        &cfg("pause = 'ssh {hots}'\nresume = 'true'"),
        &["--dry-run"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("unknown placeholder {hots}"),
        "{}",
        show(&o)
    );
}
