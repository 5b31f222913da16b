//! The state machine's cost per small object, without the network or the chunks: N object
//! puts (one chunk each, a random chunk id and request id, as `ark bench objects` makes
//! them) applied through openraft's `apply` to a fresh database on this disk, in entries of
//! `--ops` puts each and apply calls of `--entries` entries. For each tenth of the puts it
//! prints the puts per second and what the process wrote to storage per put
//! (`write_bytes` from /proc/self/io: redb's pages; nothing else writes here), then the
//! database file's size. With `--snapshot-every S`, a Raft snapshot is built every S entries
//! while the applies go on, as a node does (`raft.snapshot_logs_since_last`, 20,000 by
//! default).
//!
//! `cargo bench -p ark-bench --bench sm_apply -- [--count N] [--ops K] [--entries E]
//! [--snapshot-every S] [--dir D]` (defaults 100000, 8, 1, 0 = never, a temporary folder under
//! /var/tmp). Figures in docs/benchmarks.md.

use std::time::Instant;

use ark_node::raft::state_machine::StateMachine;
use ark_node::raft::store::open_database;
use ark_node::raft::types::{ChunkRef, Manifest, Mode, NsPolicy};
use ark_node::raft::{Command, Op, Request, TypeConfig};
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

/// A splitmix64 stream: distinct, uniformly spread ids without an RNG dependency.
struct Ids(u64);

impl Ids {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for part in out.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            part.copy_from_slice(&v[..part.len()]);
        }
        out
    }
}

fn written() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|_| panic!("{name}: not a number: {v}")))
        .unwrap_or(default)
}

fn entry(index: u64, at_ms: u64, ops: Vec<Op>) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Request {
            proposed_at_ms: at_ms,
            ops,
        }),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let count = arg(&args, "--count", 100_000);
    let per_entry = arg(&args, "--ops", 8).max(1);
    let per_call = arg(&args, "--entries", 1).max(1);
    let snapshot_every = arg(&args, "--snapshot-every", 0) as u64;
    let base = args
        .iter()
        .position(|a| a == "--dir")
        .and_then(|i| args.get(i + 1))
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("/var/tmp"));
    let dir = match tempfile::tempdir_in(&base) {
        Ok(d) => d,
        Err(e) => panic!("cannot make a folder in {}: {e}", base.display()),
    };
    let db = match open_database(dir.path()) {
        Ok(db) => db,
        Err(e) => panic!("cannot open the database: {e}"),
    };
    let mut sm = StateMachine::new(db, dir.path());
    let mut ids = Ids(1);
    let mut index = 1u64;
    let t0_ms = 1_700_000_000_000u64;
    let create = Op {
        request_id: ids.bytes::<16>().to_vec(),
        command: Command::NsCreate {
            name: "scale".into(),
            policy: NsPolicy {
                copies: 3,
                min_sites: 2,
                mode: Mode::Sync,
                ..NsPolicy::default()
            },
        },
    };
    if let Err(e) = sm.apply(vec![entry(index, t0_ms, vec![create])]).await {
        panic!("namespace create: {e}");
    }
    println!(
        "# {count} puts of one 4 KiB chunk each, {per_entry} per entry, {per_call} entries per apply call, \
         a snapshot every {snapshot_every} entries (0: none)"
    );
    let mut building: Option<tokio::task::JoinHandle<()>> = None;
    let mut snapshots = 0u32;
    let mut last_snapshot = index;
    println!("{:>9} {:>9} {:>14}", "puts", "puts/s", "KiB written/put");
    let slice = (count / 10).max(1);
    let mut made = 0usize;
    let (mut t, mut w) = (Instant::now(), written());
    let mut since = 0usize;
    while made < count {
        let mut call = Vec::with_capacity(per_call);
        while call.len() < per_call && made < count {
            let n = per_entry.min(count - made);
            let ops = (made..made + n)
                .map(|i| Op {
                    request_id: ids.bytes::<16>().to_vec(),
                    command: Command::ObjPut {
                        ns: "scale".into(),
                        key: format!("b0/{i:08}"),
                        manifest: Manifest {
                            size: 4096,
                            sha256: ids.bytes::<32>(),
                            chunks: vec![ChunkRef {
                                id: ids.bytes::<32>(),
                                len: 4096,
                            }],
                            holders: vec![1, 2, 3],
                            created_ms: t0_ms + i as u64,
                        },
                    },
                })
                .collect();
            index += 1;
            call.push(entry(index, t0_ms + made as u64, ops));
            made += n;
            since += n;
        }
        if let Err(e) = sm.apply(call).await {
            panic!("apply: {e}");
        }
        if snapshot_every > 0 && index - last_snapshot >= snapshot_every {
            if let Some(b) = building.take() {
                if let Err(e) = b.await {
                    panic!("snapshot build: {e}");
                }
            }
            last_snapshot = index;
            snapshots += 1;
            let mut builder = sm.get_snapshot_builder().await;
            building = Some(tokio::spawn(async move {
                if let Err(e) = builder.build_snapshot().await {
                    panic!("snapshot build: {e}");
                }
            }));
        }
        if since >= slice || made == count {
            let (now, nw) = (Instant::now(), written());
            let secs = now.duration_since(t).as_secs_f64();
            println!(
                "{made:>9} {:>9.0} {:>14.1}",
                since as f64 / secs,
                (nw - w) as f64 / 1024.0 / since as f64
            );
            (t, w, since) = (now, nw, 0);
        }
    }
    if let Some(b) = building.take() {
        if let Err(e) = b.await {
            panic!("snapshot build: {e}");
        }
    }
    println!("# {snapshots} snapshots built");
    let size = std::fs::metadata(dir.path().join("ark.redb"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "# redb file {:.1} MiB, {:.0} B per put",
        size as f64 / 1048576.0,
        size as f64 / count as f64
    );
}
