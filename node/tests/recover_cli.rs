//! `arkd recover` on a real cluster's data dirs: refused while the node runs and without a
//! comparison (nothing changed), and after a recovery with every other node compared, the
//! node leads alone and serves what was acknowledged before.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::process::{Command, Output};
use std::time::Duration;

use ark_playground::testkit::Pg;

fn recover(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arkd"))
        .arg("recover")
        .args(args)
        .output()
        .unwrap()
}

fn inspect(config: &std::path::Path) -> serde_json::Value {
    let o = recover(&[
        "--inspect".as_ref(),
        "--json".as_ref(),
        "-c".as_ref(),
        config.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn last_log(i: &serde_json::Value) -> (u64, u64, u64) {
    let l = &i["last_log_id"];
    (
        l["leader_id"]["term"].as_u64().unwrap(),
        l["leader_id"]["node_id"].as_u64().unwrap(),
        l["index"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_node_recovered_alone_serves_what_was_acknowledged() {
    let mut pg = Pg::up(3, 20_000).await;
    let client = pg.client();
    client.put("before-the-loss", b"kept").await.unwrap();
    let configs: Vec<_> = (1..=3).map(|id| pg.node(id).config).collect();

    // While node 1 runs its database is locked: a clear error, nothing done.
    let o = recover(&["--inspect".as_ref(), "-c".as_ref(), configs[0].as_os_str()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("stop it first"), "{o:?}");

    for id in 1..=3 {
        pg.kill(id);
    }
    let seen: Vec<serde_json::Value> = configs.iter().map(|c| inspect(c)).collect();
    for i in &seen {
        assert_eq!(i["voters"], serde_json::json!([1, 2, 3]), "{i}");
    }
    // A data dir without its config (a lost node's disk mounted elsewhere) reads the same.
    let disk = format!("1={}", pg.node(1).data_dir.display());
    let o = recover(&[
        "--inspect".as_ref(),
        "--json".as_ref(),
        "--disk".as_ref(),
        disk.as_ref(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let by_disk: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(by_disk.to_string(), seen[0].to_string());

    // Alone, a node cannot know whether another holds more: refused, nothing changed.
    let o = recover(&["--force-new-cluster".as_ref(), "-c".as_ref(), configs[0].as_os_str()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("cannot know") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(inspect(&configs[0]).to_string(), seen[0].to_string());

    // The most advanced node, compared with both others, is recovered.
    let best = (0..3)
        .max_by_key(|i| (last_log(&seen[*i]), std::cmp::Reverse(*i)))
        .unwrap();
    let mut args: Vec<&std::ffi::OsStr> =
        vec!["--force-new-cluster".as_ref(), "-c".as_ref(), configs[best].as_os_str()];
    for (i, c) in configs.iter().enumerate() {
        if i != best {
            args.push("--compare-with".as_ref());
            args.push(c.as_os_str());
        }
    }
    let o = recover(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let after = inspect(&configs[best]);
    let best_id = best as u64 + 1;
    assert_eq!(after["voters"], serde_json::json!([best_id]), "{after}");
    assert_eq!(after["recoveries"].as_array().unwrap().len(), 1, "{after}");

    pg.start(best_id);
    let leader = pg.wait_leader(None, Duration::from_secs(30)).await;
    assert_eq!(leader, best_id);
    let v = client
        .get("before-the-loss", &Default::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v.value, b"kept".to_vec());
    client.put("after-the-recovery", b"new").await.unwrap();
}
