//! The object half of a drill's workload, and the disk fault that goes with it.
//!
//! Owns: object puts and gets against the cluster during a drill (unique keys, seeded random
//! bytes, each acknowledged put remembered with its SHA-256), the final read-back of every
//! acknowledged object, and flipping bytes in chunk files (the `chunk-corruption` fault).
//! Judging is [`crate::checks::object_integrity`]'s: this module only hashes what came back.
//!
//! A get hashes the bytes itself, whatever the SDK checked, so a node that served bytes
//! other than the acknowledged ones is caught even if the SDK's own check were wrong. A get
//! that the SDK refuses because the bytes do not match their manifest (`Integrity`) is a
//! corrupt read too: the node served them.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use ark_client::objects::{GetOptions, PutOptions, PutSource};
use ark_client::{ArkClient, ClientError};
use ark_client::{DurabilityMode, NamespacePolicy};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

use crate::checks::ObjectRead;
use crate::report::ObjectOps;

/// The namespace the drills write objects to: synchronous, on every site, one version kept.
pub const NAMESPACE: &str = "chaos-objects";
/// Object sizes (bytes): from below the smallest chunk to a few chunks (FastCDC 256 KiB /
/// 1 MiB / 4 MiB), so that objects of one chunk and of several are both written.
const SIZE: std::ops::Range<usize> = 16 * 1024..2 * 1024 * 1024;
/// Acknowledged objects per run at most; after that the workers only read. Bounds the
/// disk a drill uses and the time of the final read-back.
const PUTS_MAX: usize = 150;
/// Deadline of one object operation, retries included.
const OBJECT_OP_TIMEOUT: Duration = Duration::from_secs(15);
/// Reasons for missing objects kept in the report.
const MISSING_WHY_MAX: usize = 20;
/// Attempts of each final read-back before an acknowledged object counts as lost.
const FINAL_ATTEMPTS: u32 = 3;

/// One acknowledged put.
#[derive(Clone, Debug)]
struct Acked {
    key: String,
    sha256_hex: String,
}

/// What the object workers share: acknowledged objects, reads to judge, counts.
#[derive(Debug, Default)]
struct Shared {
    acked: Vec<Acked>,
    reads: Vec<ObjectRead>,
    ops: ObjectOps,
}

/// The object workload of one drill.
#[derive(Clone, Debug, Default)]
pub struct ObjectWorkload {
    shared: Arc<Mutex<Shared>>,
}

/// SHA-256 of `data`, lower-case hex.
pub fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Creates the drills' object namespace (synchronous, `copies` copies on at least two sites).
pub async fn create_namespace(client: &ArkClient, copies: u32) -> anyhow::Result<()> {
    let policy = NamespacePolicy {
        copies,
        min_sites: 2,
        mode: DurabilityMode::Sync,
        max_lag_ms: 60_000,
        priority: 1,
        versions_kept: 1,
        compress: false,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client.create_namespace(NAMESPACE, policy).await {
            Ok(_) | Err(ClientError::AlreadyExists(_)) => return Ok(()),
            Err(e) if Instant::now() < deadline && e.is_indeterminate() => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e).context("creating the drill's object namespace"),
        }
    }
}

impl ObjectWorkload {
    /// Starts `workers` object clients. Each client goes to one node of `endpoints` (in turn),
    /// so that reads pass through every node's chunk store, corrupt copies included.
    pub fn spawn(
        &self,
        client: &ArkClient,
        endpoints: &[String],
        workers: usize,
        seed: u64,
        stop: Arc<AtomicBool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let mut handles = Vec::new();
        for w in 0..workers {
            let clients: Vec<ArkClient> = endpoints
                .iter()
                .map(|e| {
                    client
                        .with_endpoints(vec![e.clone()])
                        .with_object_timeout(Some(OBJECT_OP_TIMEOUT))
                })
                .collect();
            let shared = self.shared.clone();
            let stop = stop.clone();
            let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(7919).wrapping_add(w as u64));
            handles.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) && !clients.is_empty() {
                    let via = &clients[rng.gen_range(0..clients.len())];
                    let acked = lock(&shared).acked.len();
                    let done = if acked < PUTS_MAX && (acked == 0 || rng.gen_bool(0.5)) {
                        n += 1;
                        let key = format!("w{w}-{n}");
                        let mut data = vec![0u8; rng.gen_range(SIZE)];
                        rng.fill_bytes(&mut data);
                        put(via, &shared, key, data).await
                    } else {
                        let pick = lock(&shared).acked[rng.gen_range(0..acked)].clone();
                        read(via, &shared, &pick).await
                    };
                    if !done {
                        // A refusal can come at once; do not spin on a cluster that refuses.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }));
        }
        handles
    }

    /// Reads back every acknowledged object through `client` (any node), after the workload
    /// has stopped. An object that cannot be read after [`FINAL_ATTEMPTS`] counts as missing.
    pub async fn read_back(&self, client: &ArkClient) -> (Vec<ObjectRead>, ObjectOps) {
        let acked = lock(&self.shared).acked.clone();
        let client = client.with_object_timeout(Some(Duration::from_secs(30)));
        let mut finals = Vec::with_capacity(acked.len());
        let mut why = Vec::new();
        for a in &acked {
            let mut got = None;
            for attempt in 0..FINAL_ATTEMPTS {
                match get(&client, &a.key).await {
                    Ok(sha) => {
                        got = Some(sha);
                        break;
                    }
                    Err(ClientError::NotFound(m)) => {
                        why.push(format!("{}: final read: not found: {m}", a.key));
                        break;
                    }
                    Err(ClientError::Integrity(m)) => {
                        got = Some(format!("corrupt: {m}"));
                        break;
                    }
                    Err(_) if attempt + 1 < FINAL_ATTEMPTS => tokio::time::sleep(Duration::from_secs(2)).await,
                    Err(e) => why.push(format!("{}: final read failed {FINAL_ATTEMPTS} times: {e}", a.key)),
                }
            }
            finals.push(ObjectRead {
                key: a.key.clone(),
                expected_sha256_hex: a.sha256_hex.clone(),
                read_sha256_hex: got,
            });
        }
        let mut s = lock(&self.shared);
        s.ops.final_checked = finals.len() as u64;
        s.ops.missing_why.extend(why);
        s.ops.missing_why.truncate(MISSING_WHY_MAX);
        let mut reads = std::mem::take(&mut s.reads);
        reads.extend(finals);
        (reads, s.ops.clone())
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Puts one object and records the outcome; whether it was acknowledged.
async fn put(client: &ArkClient, shared: &Mutex<Shared>, key: String, data: Vec<u8>) -> bool {
    let sha = sha256_hex(&data);
    let size = data.len() as u64;
    let source = PutSource::Reader {
        reader: Box::new(std::io::Cursor::new(data)),
        size: Some(size),
    };
    let outcome = client.put_object(NAMESPACE, &key, source, &PutOptions::default()).await;
    let mut s = lock(shared);
    match outcome {
        Ok(_) => {
            s.ops.puts_ok += 1;
            s.acked.push(Acked { key, sha256_hex: sha });
            return true;
        }
        Err(e) if e.is_indeterminate() => s.ops.puts_unknown += 1,
        Err(_) => s.ops.puts_fail += 1,
    }
    false
}

/// Reads one acknowledged object and records what came back; whether anything did.
async fn read(client: &ArkClient, shared: &Mutex<Shared>, obj: &Acked) -> bool {
    let got = get(client, &obj.key).await;
    let mut s = lock(shared);
    if let Err(ClientError::NotFound(m)) = &got {
        let via = client.endpoints().join(",");
        if s.ops.missing_why.len() < MISSING_WHY_MAX {
            s.ops
                .missing_why
                .push(format!("{}: get through {via} during the run: not found: {m}", obj.key));
        }
    }
    let read_sha = match got {
        Ok(sha) => Some(sha),
        // The SDK caught bytes that do not match their manifest: a node served them.
        Err(ClientError::Integrity(m)) => Some(format!("corrupt: {m}")),
        // An acknowledged object that a linearizable read cannot find: lost or stale.
        Err(ClientError::NotFound(_)) => None,
        Err(_) => {
            s.ops.reads_fail += 1;
            return false;
        }
    };
    s.ops.reads_ok += 1;
    s.reads.push(ObjectRead {
        key: obj.key.clone(),
        expected_sha256_hex: obj.sha256_hex.clone(),
        read_sha256_hex: read_sha,
    });
    true
}

/// Reads `key` (latest version, linearizable) and hashes the bytes that arrived.
async fn get(client: &ArkClient, key: &str) -> Result<String, ClientError> {
    let mut buf: Vec<u8> = Vec::new();
    client
        .get_object(NAMESPACE, key, &GetOptions::default(), &mut buf)
        .await?;
    Ok(sha256_hex(&buf))
}

/// Every chunk file under a node's data dir (`<data_dir>/chunks/ab/<hex>[.zst]`), sorted.
pub fn chunk_files(data_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let root = data_dir.join("chunks");
    let mut out = Vec::new();
    let Ok(fanout) = std::fs::read_dir(&root) else {
        return Ok(out);
    };
    for d in fanout {
        let d = d?.path();
        if !d.is_dir() || d.file_name().is_some_and(|n| n == "tmp") {
            continue;
        }
        for f in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let f = f?.path();
            if f.is_file() {
                out.push(f);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Flips one byte (XOR 0x5a) at a seeded offset of up to `count` seeded chunk files of the
/// node whose data dir is `data_dir`, in place and synced, as a failing disk would. Returns
/// the files changed.
pub fn corrupt_chunks(data_dir: &Path, count: usize, rng: &mut StdRng) -> anyhow::Result<Vec<PathBuf>> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut files = chunk_files(data_dir)?;
    let mut hit = Vec::new();
    while hit.len() < count && !files.is_empty() {
        let p = files.swap_remove(rng.gen_range(0..files.len()));
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        if len == 0 {
            continue;
        }
        let at = rng.gen_range(0..len);
        // The file may vanish under us (garbage collection): skip it.
        let Ok(mut f) = std::fs::OpenOptions::new().read(true).write(true).open(&p) else {
            continue;
        };
        let mut b = [0u8; 1];
        f.seek(SeekFrom::Start(at))?;
        f.read_exact(&mut b)?;
        b[0] ^= 0x5a;
        f.seek(SeekFrom::Start(at))?;
        f.write_all(&b)?;
        f.sync_all()?;
        hit.push(p);
    }
    Ok(hit)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sha256_hex_matches_the_known_digest() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn corrupt_chunks_flips_exactly_one_byte_per_file_and_skips_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let mut originals = Vec::new();
        for (fan, name) in [("ab", "ab01"), ("cd", "cd02"), ("tmp", "partial")] {
            std::fs::create_dir_all(data.join("chunks").join(fan)).unwrap();
            let p = data.join("chunks").join(fan).join(name);
            std::fs::write(&p, vec![7u8; 1000]).unwrap();
            originals.push(p);
        }
        let mut rng = StdRng::seed_from_u64(3);
        let hit = corrupt_chunks(data, 5, &mut rng).unwrap();
        assert_eq!(hit.len(), 2, "only the two chunk files, not chunks/tmp: {hit:?}");
        for p in &originals {
            let now = std::fs::read(p).unwrap();
            let changed = now.iter().filter(|b| **b != 7).count();
            let expect = usize::from(hit.contains(p));
            assert_eq!(changed, expect, "{}", p.display());
        }
    }
}
