//! `ark bench objects`: a closed-loop load generator for objects. Concurrent clients put
//! `count` objects of a given size (or of mixed sizes) into one namespace through the SDK,
//! and optionally read them back, so that per-object overhead (objects/s, put and get
//! latency) and its growth with the namespace's size can be measured.
//!
//! The work is cut into slices of `slice` objects: each slice's puts run to the end, then
//! its gets (every object of the slice, or a sample over all objects put so far), and each
//! slice is reported on its own. Latency per slice is latency as the namespace grows.
//!
//! Every object's bytes are a pure function of the seed and its index, so a get is checked
//! twice: by the SDK (size and SHA-256 against the manifest) and here, byte for byte,
//! against the bytes that were put.
//!
//! Owns the load loop and its report. Must not touch transfers (the SDK) or printing (the
//! `bench` command).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ark_client::objects::{GetOptions, PutOptions, PutSource};
use ark_client::{ArkClient, ClientError, NamespacePolicy};
use rand::{Rng, RngCore, SeedableRng};
use serde::Serialize;

use crate::bench::Latency;

/// Longest one put or get may take, retries included, before it counts as failed: a stuck
/// transfer must not hold the run forever.
const OBJECT_TIMEOUT: Duration = Duration::from_secs(60);

/// Load parameters.
#[derive(Debug, Clone)]
pub struct Params {
    /// Namespace (created with the cluster's default policy when missing).
    pub ns: String,
    /// Objects to put.
    pub count: u64,
    /// Bytes per object; with `object_bytes_max` above it, the smallest size.
    pub object_bytes: usize,
    /// Largest object; sizes are then log-uniform between the two (mixed sizes).
    pub object_bytes_max: usize,
    /// Concurrent closed-loop clients.
    pub clients: usize,
    /// Connections they share.
    pub conns: usize,
    /// Objects per reported slice.
    pub slice: u64,
    /// Read the objects back after each slice's puts.
    pub get: bool,
    /// With `get`: read this many objects per slice, drawn uniformly from every object put
    /// so far; 0 reads exactly the slice's own objects.
    pub get_sample: u64,
    /// Key prefix (keys are `<prefix><index, 9 digits>`).
    pub prefix: String,
    /// Seeds the objects' bytes and sizes.
    pub seed: u64,
}

/// One phase (puts or gets) of a slice or of the whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// Operations that succeeded (for gets: the SDK's check and the byte comparison both
    /// passed).
    pub ok: u64,
    /// Operations that failed.
    pub errors: u64,
    /// Gets whose bytes differed from what was put although the SDK accepted them
    /// (always 0 for puts; anything else is a bug).
    pub mismatched: u64,
    /// Bytes of the successful operations.
    pub bytes: u64,
    /// Wall time of the phase.
    pub duration_s: f64,
    /// Successful operations per second.
    pub objects_per_s: f64,
    /// Bytes per second, MiB.
    pub mib_per_s: f64,
    /// Latency of the successful operations.
    pub latency_ms: Latency,
    /// The first failure, as the SDK reported it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

/// One slice of the run.
#[derive(Debug, Clone, Serialize)]
pub struct Slice {
    /// Objects of this run put before the slice.
    pub from: u64,
    /// Objects of this run put after it.
    pub to: u64,
    /// Live objects of the namespace after the slice: its count at the start plus the puts
    /// that succeeded (keys of an earlier run overwritten count twice); `None` when the count
    /// at the start could not be read.
    pub namespace_objects: Option<u64>,
    /// The slice's puts.
    pub put: Phase,
    /// Its gets, with `--get`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub get: Option<Phase>,
}

/// Result of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The node every client talked to.
    pub endpoint: String,
    /// Namespace.
    pub namespace: String,
    /// Live objects in it when the run started; `None` when the node did not answer in time
    /// (`ListNamespaces` reads every object of every namespace, so at a few hundred thousand
    /// objects it takes longer than the client's RPC timeout).
    pub namespace_objects_at_start: Option<u64>,
    /// Concurrent clients.
    pub clients: usize,
    /// Connections.
    pub conns: usize,
    /// Smallest object.
    pub object_bytes: usize,
    /// Largest object.
    pub object_bytes_max: usize,
    /// Objects asked for.
    pub count: u64,
    /// Every put of the run (time: the sum of the slices' put phases).
    pub put: Phase,
    /// Every get of the run, with `--get`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub get: Option<Phase>,
    /// Per slice.
    pub slices: Vec<Slice>,
}

/// Size of object `i`: fixed, or log-uniform between `min` and `max`.
pub fn object_size(seed: u64, i: u64, min: usize, max: usize) -> usize {
    if max <= min {
        return min;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5151_5151 ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let (lo, hi) = ((min.max(1) as f64).ln(), (max as f64).ln());
    let s = (lo + rng.gen::<f64>() * (hi - lo)).exp().round() as usize;
    s.clamp(min, max)
}

/// The bytes of object `i`: pseudo-random (so every object has chunks of its own).
pub fn object_bytes(seed: u64, i: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed.wrapping_mul(1_000_003) ^ i.wrapping_mul(0x2545_f491_4f6c_dd1d))
        .fill_bytes(&mut data);
    data
}

fn key(p: &Params, i: u64) -> String {
    format!("{}{i:09}", p.prefix)
}

/// What one worker recorded in one phase.
#[derive(Default)]
struct Tally {
    lat_us: Vec<u32>,
    errors: u64,
    mismatched: u64,
    bytes: u64,
    failed: Vec<u64>,
    first_error: Option<String>,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.lat_us.extend(o.lat_us);
        self.errors += o.errors;
        self.mismatched += o.mismatched;
        self.bytes += o.bytes;
        self.failed.extend(o.failed);
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }

    fn fail(&mut self, i: u64, e: String) {
        self.errors += 1;
        self.failed.push(i);
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }

    fn phase(&mut self, duration_s: f64) -> Phase {
        self.lat_us.sort_unstable();
        let ok = self.lat_us.len() as u64;
        let d = duration_s.max(1e-9);
        Phase {
            ok,
            errors: self.errors,
            mismatched: self.mismatched,
            bytes: self.bytes,
            duration_s,
            objects_per_s: ok as f64 / d,
            mib_per_s: self.bytes as f64 / d / 1_048_576.0,
            latency_ms: Latency::of_sorted_us(&self.lat_us),
            first_error: self.first_error.clone(),
        }
    }
}

fn micros(t: Instant) -> u32 {
    u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX)
}

/// Runs `clients` closed-loop workers over the indices `todo`, each calling `op` on its
/// connection; returns what they recorded and the phase's wall time.
async fn closed_loop<F, Fut>(
    arks: &[ArkClient],
    clients: usize,
    todo: Arc<Vec<u64>>,
    op: F,
) -> anyhow::Result<(Tally, f64)>
where
    F: Fn(ArkClient, u64, Tally) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = Tally> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients.max(1) {
        let ark = arks[c % arks.len()].clone();
        let (next, todo, op) = (next.clone(), todo.clone(), op.clone());
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some(i) = usize::try_from(n).ok().and_then(|n| todo.get(n)) else {
                    break;
                };
                t = op(ark.clone(), *i, t).await;
            }
            t
        }));
    }
    let mut all = Tally::default();
    for t in tasks {
        all.merge(t.await.context("a load worker panicked")?);
    }
    Ok((all, started.elapsed().as_secs_f64()))
}

/// Runs the load and reports; `on_slice` is told each slice as it completes.
pub async fn run(base: &ArkClient, p: &Params, on_slice: &(dyn Fn(&Slice) + Sync)) -> anyhow::Result<Report> {
    anyhow::ensure!(p.count > 0, "--count must be at least 1");
    anyhow::ensure!(p.object_bytes > 0, "--object-bytes must be at least 1");
    // One node for every client: the leader (no forwarded commit), unless the caller named
    // a node (`--endpoint`).
    let endpoint = match base.endpoints() {
        [one] => one.clone(),
        _ => {
            let st = base.status().await.context("asking the cluster for its leader")?;
            st.nodes
                .iter()
                .find(|n| Some(n.id) == st.leader_id)
                .map(|n| n.client_addr.clone())
                .context("the cluster has no leader to load")?
        }
    };
    let at_start = match base.namespace(&p.ns).await {
        Ok(info) => Some(info.objects),
        Err(ClientError::NotFound(_)) => {
            base.create_namespace(&p.ns, NamespacePolicy::default())
                .await
                .with_context(|| format!("creating namespace {}", p.ns))?;
            Some(0)
        }
        // A namespace too large to count in time exists: go on without its count.
        Err(ClientError::Unavailable { .. }) => None,
        Err(e) => return Err(e).with_context(|| format!("reading namespace {}", p.ns)),
    };
    let conns = p.conns.clamp(1, p.clients.max(1));
    let arks: Vec<ArkClient> = (0..conns)
        .map(|_| {
            base.with_endpoints(vec![endpoint.clone()])
                .with_object_timeout(Some(OBJECT_TIMEOUT))
        })
        .collect();
    let p = Arc::new(p.clone());
    let slice = p.slice.max(1);
    let mut failed_puts: HashSet<u64> = HashSet::new();
    let (mut puts, mut gets) = (Tally::default(), Tally::default());
    let (mut put_s, mut get_s) = (0.0, 0.0);
    let mut slices = Vec::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(p.seed ^ 0x00c0_ffee);
    let mut from = 0;
    while from < p.count {
        let to = (from + slice).min(p.count);
        let pp = p.clone();
        let (mut put, secs) = closed_loop(
            &arks,
            p.clients,
            Arc::new((from..to).collect()),
            move |ark, i, mut t| {
                let p = pp.clone();
                async move {
                    let len = object_size(p.seed, i, p.object_bytes, p.object_bytes_max);
                    let source = PutSource::Reader {
                        reader: Box::new(std::io::Cursor::new(object_bytes(p.seed, i, len))),
                        size: Some(len as u64),
                    };
                    let started = Instant::now();
                    match ark.put_object(&p.ns, &key(&p, i), source, &PutOptions::default()).await {
                        Ok(o) if o.object.size == len as u64 => {
                            t.lat_us.push(micros(started));
                            t.bytes += len as u64;
                        }
                        Ok(o) => t.fail(i, format!("put {i}: committed {} bytes of {len}", o.object.size)),
                        Err(e) => t.fail(i, format!("put {i}: {e}")),
                    }
                    t
                }
            },
        )
        .await?;
        failed_puts.extend(put.failed.iter().copied());
        let put_phase = put.phase(secs);
        put_s += secs;
        puts.merge(put);
        let get_phase = if p.get {
            let todo: Vec<u64> = if p.get_sample == 0 {
                (from..to).filter(|i| !failed_puts.contains(i)).collect()
            } else {
                (0..p.get_sample)
                    .map(|_| rng.gen_range(0..to))
                    .filter(|i| !failed_puts.contains(i))
                    .collect()
            };
            let pp = p.clone();
            let (mut got, secs) = closed_loop(&arks, p.clients, Arc::new(todo), move |ark, i, mut t| {
                let p = pp.clone();
                async move {
                    let len = object_size(p.seed, i, p.object_bytes, p.object_bytes_max);
                    let mut buf = Vec::with_capacity(len);
                    let started = Instant::now();
                    match ark
                        .get_object(&p.ns, &key(&p, i), &GetOptions::default(), &mut buf)
                        .await
                    {
                        Ok(_) => {
                            let lat = micros(started);
                            if buf == object_bytes(p.seed, i, len) {
                                t.lat_us.push(lat);
                                t.bytes += len as u64;
                            } else {
                                t.mismatched += 1;
                                t.fail(i, format!("get {i}: the bytes differ from what was put"));
                            }
                        }
                        Err(e) => t.fail(i, format!("get {i}: {e}")),
                    }
                    t
                }
            })
            .await?;
            let phase = got.phase(secs);
            get_s += secs;
            gets.merge(got);
            Some(phase)
        } else {
            None
        };
        // Counted here, not asked: the node's count reads every object (see the field), and
        // asking between slices would load the node being measured.
        let namespace_objects = at_start.map(|a| a + puts.lat_us.len() as u64);
        let s = Slice {
            from,
            to,
            namespace_objects,
            put: put_phase,
            get: get_phase,
        };
        on_slice(&s);
        slices.push(s);
        from = to;
    }
    Ok(Report {
        endpoint,
        namespace: p.ns.clone(),
        namespace_objects_at_start: at_start,
        clients: p.clients,
        conns,
        object_bytes: p.object_bytes,
        object_bytes_max: p.object_bytes_max.max(p.object_bytes),
        count: p.count,
        put: puts.phase(put_s),
        get: p.get.then(|| gets.phase(get_s)),
        slices,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_stay_in_range_and_repeat_for_a_seed() {
        for i in 0..1000 {
            let s = object_size(7, i, 4096, 4 << 20);
            assert!((4096..=4 << 20).contains(&s), "{s}");
            assert_eq!(s, object_size(7, i, 4096, 4 << 20));
        }
        assert_eq!(object_size(7, 3, 4096, 4096), 4096);
        assert_eq!(object_size(7, 3, 4096, 0), 4096);
        // Log-uniform: about as many below the geometric mean (128 KiB) as above.
        let small = (0..2000)
            .filter(|i| object_size(1, *i, 4096, 4 << 20) < 128 << 10)
            .count();
        assert!((800..1200).contains(&small), "{small}");
    }

    #[test]
    fn bytes_repeat_for_an_index_and_differ_between_indices() {
        assert_eq!(object_bytes(1, 5, 4096), object_bytes(1, 5, 4096));
        assert_ne!(object_bytes(1, 5, 4096), object_bytes(1, 6, 4096));
        assert_ne!(object_bytes(1, 5, 4096), object_bytes(2, 5, 4096));
    }
}
