//! The short CI suite of drills: each scenario runs 20 s against real `arkd` processes and
//! must report a linearizable history with nothing lost and a recovery after every fault.
//! The scenarios run on loopback (arkd's fault layer); two network scenarios run again in
//! network namespaces with nftables partitions when the host allows it.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

mod common;

use std::process::Command;

fn drill_passes(scenario: &str) -> serde_json::Value {
    drill_passes_in(scenario, "loopback")
}

fn drill_passes_in(scenario: &str, mode: &str) -> serde_json::Value {
    drill_passes_kept(scenario, mode).0
}

/// [`drill_passes_in`], keeping the drill's folder for more checks.
fn drill_passes_kept(scenario: &str, mode: &str) -> (serde_json::Value, tempfile::TempDir) {
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_ark-chaos"))
        .args([
            "run",
            "--scenario",
            scenario,
            "--duration",
            "20",
            "--seed",
            "1",
            "--mode",
            mode,
            "--out",
        ])
        .arg(out.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "drill failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(r["scenario"], scenario);
    assert_eq!(r["linearizable"], true);
    assert_eq!(r["lost_acked"], 0);
    assert_eq!(r["corrupt_reads"], 0);
    assert!(r["ops"]["ok"].as_u64().unwrap() > 1000, "{r}");
    assert!(r["rto_ms"].as_f64().unwrap() < 10_000.0, "{r}");
    assert!(r["notes"][0].as_str().unwrap().contains("faults"), "{r}");
    // Objects were written and every acknowledged one was read back intact.
    assert!(r["objects"]["puts_ok"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(r["objects"]["final_checked"], r["objects"]["puts_ok"], "{r}");
    // Network faults never outlive the drill: every node's control file ends empty.
    for node in std::fs::read_dir(out.path().join("cluster")).unwrap() {
        let control = node.unwrap().path().join("faults.toml");
        if control.exists() {
            let rules = std::fs::read_to_string(&control).unwrap();
            assert!(rules.trim().is_empty(), "{} still holds {rules}", control.display());
        }
    }
    (r, out)
}

/// A drill on arkd's network fault layer: it must pass and say how its faults were injected.
fn network_drill_passes(scenario: &str) {
    let r = drill_passes(scenario);
    assert!(
        common::notes(&r).iter().any(|n| n.contains("fault layer under quinn")),
        "{r}"
    );
}

#[test]
fn leader_kill_drill_passes() {
    drill_passes("leader-kill");
}

#[test]
fn random_kill_drill_passes() {
    drill_passes("random-kill");
}

#[test]
fn pause_drill_passes() {
    drill_passes("pause");
}

/// A rolling restart hands the leadership over before the leader's restart (issue 20):
/// the fault log shows each hand-over done, and no KV write or object put failed or went
/// unanswered during planned restarts.
#[test]
fn rolling_restart_drill_passes() {
    let r = drill_passes("rolling-restart");
    let log = fault_log(&r);
    assert!(log.contains("leadership handed to node"), "no hand-over in {log}");
    assert!(!log.contains("hand-over failed"), "{log}");
    assert_eq!(r["ops"]["fail"], 0, "{r}");
    assert_eq!(r["ops"]["unknown"], 0, "{r}");
}

#[test]
fn membership_drill_passes() {
    drill_passes("membership");
}

#[test]
fn site_partition_drill_passes() {
    network_drill_passes("site-partition");
}

#[test]
fn minority_partition_drill_passes() {
    network_drill_passes("minority-partition");
}

#[test]
fn asymmetric_partition_drill_passes() {
    network_drill_passes("asymmetric-partition");
}

#[test]
fn wan_drill_passes() {
    network_drill_passes("wan");
}

#[test]
fn site_kill_drill_passes() {
    drill_passes("site-kill");
}

/// Two data sites and a witness voter in a third: losing the leader's data site leaves one
/// data node and the witness, a bare majority, and the cluster must fail over by itself
/// (the witness votes, or wins and hands over) with nothing lost; the witness ends with no
/// chunk file although objects were written throughout.
#[test]
fn site_kill_with_witness_drill_passes() {
    let (r, out) = drill_passes_kept("site-kill-witness", "loopback");
    assert_eq!(r["witness_chunk_files"], 0, "{r}");
    let pg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("cluster/playground.down.json")).unwrap())
            .unwrap();
    let nodes = pg["nodes"].as_array().unwrap();
    let witnesses: Vec<&serde_json::Value> = nodes.iter().filter(|n| n["witness"] == true).collect();
    assert_eq!(witnesses.len(), 1, "{pg}");
    assert_eq!(witnesses[0]["site"], "witness", "{pg}");
    assert_eq!(nodes.len(), 3, "{pg}");
}

/// Why this host cannot run drills in network namespaces, `None` when it can.
fn netns_unavailable() -> Option<String> {
    // `Uid: real effective saved fs`.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1));
    if euid != Some("0") {
        return Some(format!("not root (effective uid {euid:?})"));
    }
    for tool in ["ip", "nft"] {
        match Command::new(tool).arg("-V").output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => return Some(format!("{tool} -V failed: {}", String::from_utf8_lossy(&o.stderr))),
            Err(e) => return Some(format!("{tool} not found: {e}")),
        }
    }
    let ns = format!("arktest{}", std::process::id());
    match Command::new("ip").args(["netns", "add", &ns]).output() {
        Ok(o) if o.status.success() => {
            let _ = Command::new("ip").args(["netns", "delete", &ns]).output();
            None
        }
        Ok(o) => Some(format!(
            "ip netns add failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run ip: {e}")),
    }
}

/// Names of the host's namespaces and links.
fn ip_names(args: &[&str]) -> Vec<String> {
    let o = Command::new("ip").args(args).output().unwrap();
    assert!(
        o.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            // `ip netns list`: `name (id: N)`; `ip -o link`: `12: name@if3: <...>`.
            let name = if args.contains(&"netns") {
                l.split_whitespace().next()
            } else {
                l.split(": ").nth(1).and_then(|n| n.split('@').next())
            };
            name.map(str::to_owned)
        })
        .collect()
}

/// Whether `name` is one the run with `prefix` made (router, uplink, probe or node).
fn made_by(prefix: &str, name: &str) -> bool {
    name.strip_prefix(prefix).is_some_and(|rest| {
        matches!(rest, "r" | "u" | "p")
            || rest
                .strip_prefix('n')
                .is_some_and(|id| !id.is_empty() && id.chars().all(|c| c.is_ascii_digit()))
    })
}

/// A network drill in network namespaces: it must pass, say so, and leave no namespace, link
/// or nftables table behind. Without namespaces, says why and runs the drill on loopback
/// through `--mode auto`, which must fall back and say why.
fn netns_drill_passes(scenario: &str) {
    if let Some(why) = netns_unavailable() {
        eprintln!("network namespaces unavailable here ({why}): checking the loopback fallback of {scenario} instead");
        let r = drill_passes_in(scenario, "auto");
        assert_eq!(r["mode"], "loopback", "{r}");
        assert!(
            r["notes"][0]
                .as_str()
                .unwrap()
                .contains("network namespaces unavailable"),
            "{r}"
        );
        return;
    }
    let r = drill_passes_in(scenario, "netns");
    assert_eq!(r["mode"], "netns", "{r}");
    let notes = common::notes(&r);
    assert!(notes[0].starts_with("netns mode"), "{r}");
    assert!(notes.iter().any(|n| n.contains("nftables drops of peer UDP")), "{r}");
    let prefix = notes[0]
        .split("names ")
        .nth(1)
        .and_then(|rest| rest.split('*').next())
        .unwrap_or_else(|| panic!("no name prefix in {}", notes[0]));
    assert!(prefix.starts_with("ark") && prefix.len() >= 5, "{prefix}");
    let left: Vec<String> = ip_names(&["netns", "list"])
        .into_iter()
        .chain(ip_names(&["-o", "link", "show"]))
        .filter(|n| made_by(prefix, n))
        .collect();
    assert!(left.is_empty(), "the drill left {left:?} behind");
    // Tables lived only in the node namespaces, which are gone; none leaked to the host.
    let o = Command::new("nft").args(["list", "tables"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&o.stdout).contains("arkchaos"));
}

#[test]
fn site_partition_drill_passes_in_network_namespaces() {
    netns_drill_passes("site-partition");
}

#[test]
fn asymmetric_partition_drill_passes_in_network_namespaces() {
    netns_drill_passes("asymmetric-partition");
}

/// The report's fault log note.
/// The `arkd.log` of each of the drill's three nodes.
fn node_logs(out: &std::path::Path) -> Vec<String> {
    (1..=3)
        .map(|n| std::fs::read_to_string(out.join(format!("cluster/node-{n}/arkd.log"))).unwrap())
        .collect()
}

fn fault_log(r: &serde_json::Value) -> &str {
    common::notes(r)
        .into_iter()
        .find(|s| s.starts_with("fault log:"))
        .unwrap_or_else(|| panic!("no fault log in {r}"))
}

/// Two sites of three lost under load: the operator's `arkd recover` (inspect every disk,
/// a less advanced node refused, the most advanced one made the only voter) brings the
/// cluster back with every acknowledged write and object, and new nodes restore the policy.
#[test]
fn majority_loss_drill_passes() {
    let (r, out) = drill_passes_kept("majority-loss", "loopback");
    let log = fault_log(&r);
    assert!(log.contains("kill -9 of nodes"), "{log}");
    // Either a less advanced node was refused and left unchanged, or no node was behind.
    assert!(
        log.contains("refused as it must") || log.contains("no refusal to check"),
        "{log}"
    );
    assert!(log.contains("leads alone"), "{log}");
    // A lost node started on its old data is told to stop by the recovered one, and stops.
    assert!(log.contains("stopped by itself: left out by the recovery"), "{log}");
    assert!(log.contains("new voters ["), "{log}");
    // Every object back at its policy on the new nodes, and nothing corrupt.
    assert_eq!(r["objects"]["unrepaired"].as_u64(), Some(0), "{r}");
    let end = common::notes(&r)
        .into_iter()
        .find(|n| n.contains("final scrub"))
        .unwrap_or_else(|| panic!("no final check in {r}"));
    assert!(end.contains("final scrub found 0 corrupt"), "{end}");
    assert!(end.contains(" 0 below policy"), "{end}");
    // The recovered node says so in its log.
    let logs = node_logs(out.path());
    assert!(
        logs.iter().any(|l| l.contains("made the only voter of a new cluster")),
        "no node logged its forced recovery"
    );
}

#[test]
fn chunk_corruption_drill_passes() {
    let (r, out) = drill_passes_kept("chunk-corruption", "loopback");
    let log = fault_log(&r);
    let flipped = 3 * log.matches("flipped a byte in 3 chunk files").count() as u64;
    assert!(flipped > 0, "{log}");
    assert!(r["objects"]["reads_ok"].as_u64().unwrap() > 0, "{r}");
    // After the final scrub every object has all its copies, hashing right.
    assert_eq!(r["objects"]["unrepaired"].as_u64(), Some(0), "{r}");
    // Every flipped copy was found: the node that held it reported that chunk as corrupt,
    // whichever path found it (a scrub, a read that then used a replica, a put of the same
    // bytes that replaced it, a peer's "have?" that re-hashed it).
    let logs = node_logs(out.path());
    let mut checked = 0;
    for round in log.split("flipped a byte in ").skip(1) {
        let node: usize = round
            .split("of node ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no node in {round}"));
        let ids = round
            .split('[')
            .nth(1)
            .and_then(|r| r.split(']').next())
            .unwrap_or_else(|| panic!("no chunk ids in {round}"));
        for id in ids.split_whitespace() {
            let found = logs[node - 1]
                .lines()
                .any(|l| l.contains("corrupt chunk on disk") && l.contains(&format!("chunk={id}")));
            assert!(found, "node {node} never reported the flipped chunk {id}: {log}");
            checked += 1;
        }
    }
    assert_eq!(checked as u64, flipped, "{log}");
}

#[test]
fn disk_full_drill_passes() {
    if !is_root() {
        // Without root the drill cannot mount its tmpfs: it must say so and fail, not pass.
        fails_without_root("disk-full", "needs root");
        return;
    }
    let (r, out) = drill_passes_kept("disk-full", "loopback");
    let log = fault_log(&r);
    assert!(log.contains("disk of node"), "{log}");
    // The disk really filled: some node's writes failed with ENOSPC.
    let enospc = node_logs(out.path())
        .iter()
        .any(|log| log.contains("No space left on device"));
    assert!(enospc, "no node logged ENOSPC: {log}");
    // The drill's tmpfs is gone with it (other drills may hold theirs meanwhile).
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let dir = out.path().to_str().unwrap();
    assert!(
        !mounts
            .lines()
            .any(|l| l.starts_with("ark-chaos-disk ") && l.contains(dir)),
        "{mounts}"
    );
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1).map(|u| u == "0"))
        .unwrap()
}

/// Runs `scenario` for 5 s and asserts that it fails (exit 1) with a message containing
/// `says`: what a drill that needs root must do without it.
fn fails_without_root(scenario: &str, says: &str) {
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_ark-chaos"))
        .args([
            "run",
            "--scenario",
            scenario,
            "--duration",
            "5",
            "--mode",
            "loopback",
            "--out",
        ])
        .arg(out.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains(says));
}

/// A drill on the power-loss filesystem: without root it must say so and fail; as root it
/// must pass, every cut must really have dropped unsynced data, and no mount may outlive it.
/// `None` without root.
fn power_drill_passes(scenario: &str) -> Option<serde_json::Value> {
    if !is_root() {
        fails_without_root(scenario, "need root");
        return None;
    }
    let (r, out) = drill_passes_kept(scenario, "loopback");
    let p = &r["power"];
    let cuts = p["cuts"].as_u64().unwrap();
    assert!(cuts > 0, "{r}");
    // Every cut bit: it found writes the node had not synced and dropped them.
    assert_eq!(p["cuts_without_drop"], 0, "{r}");
    assert!(p["bytes_dropped"].as_u64().unwrap() > 0, "{r}");
    let log = fault_log(&r);
    assert_eq!(log.matches("dropped ").count() as u64, cuts, "{log}");
    assert!(!log.contains("dropped 0 unsynced bytes in 0 files and 0"), "{log}");
    // Every FUSE mount of the drill is gone with it.
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let dir = out.path().to_str().unwrap();
    assert!(
        !mounts
            .lines()
            .any(|l| l.starts_with("ark-chaos-lazyfs ") && l.contains(dir)),
        "{mounts}"
    );
    Some(r)
}

#[test]
fn power_loss_node_drill_passes() {
    if let Some(r) = power_drill_passes("power-loss-node") {
        assert!(r["power"]["cuts"].as_u64().unwrap() >= 2, "{r}");
    }
}

#[test]
fn power_loss_site_drill_passes() {
    if let Some(r) = power_drill_passes("power-loss-site") {
        // Both nodes of a site each time.
        let cuts = r["power"]["cuts"].as_u64().unwrap();
        assert_eq!(cuts % 2, 0, "{r}");
    }
}

#[test]
fn power_loss_all_drill_passes() {
    if let Some(r) = power_drill_passes("power-loss-all") {
        let cuts = r["power"]["cuts"].as_u64().unwrap();
        assert_eq!(cuts % 3, 0, "{r}");
    }
}

#[test]
fn fsync_eio_drill_passes() {
    let Some(r) = power_drill_passes("fsync-eio") else {
        return;
    };
    let p = &r["power"];
    let rounds = p["cuts"].as_u64().unwrap() / 2;
    assert!(rounds >= 1, "{r}");
    // The fault happened: the victims' syncs failed, in every round.
    assert!(p["syncs_failed"].as_u64().unwrap() >= 2 * rounds, "{r}");
    let log = fault_log(&r);
    assert!(!log.contains("answered 0 syncs with EIO"), "{log}");
    // No node carried on as if unsynced data were durable: nothing was acknowledged while a
    // majority could not sync, and (after the power cut that makes such a lie visible) the
    // verdict holds.
    assert_eq!(r["acked_without_durable_majority"], 0, "{r}");
    // The drill's own writes in those windows (the workload's clients may all be waiting
    // on writes sent before): sent, none acknowledged. The refusal was tested, not assumed.
    assert!(p["eio_probes_sent"].as_u64().unwrap() >= 2 * rounds, "{r}");
    assert_eq!(p["eio_probes_acked"], 0, "{r}");
    // Every victim either stopped or ran on refusing writes (the check above); the report
    // says which. A victim whose first failed sync came late in the window, or was a chunk
    // write (which fails the put, not the node), may still be running when it closes.
    let stopped = p["eio_nodes_stopped"].as_u64().unwrap();
    let running = p["eio_nodes_kept_running"].as_u64().unwrap();
    assert_eq!(stopped + running, 2 * rounds, "{r}");
}

#[test]
fn unknown_scenario_is_a_clear_error() {
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_ark-chaos"))
        .args(["run", "--scenario", "no-such-thing", "--duration", "1", "--out"])
        .arg(out.path())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown scenario"));
}
