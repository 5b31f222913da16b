//! Hot chunks this node does not hold itself, in a foyer hybrid cache (memory, then a
//! bounded on-disk tier under `<data_dir>/cache/`).
//!
//! A chunk read through this node but held elsewhere is fetched from a replica, verified and
//! cached here, so the next read of a hot object is served locally; this is also what the
//! forecaster's pre-staging will warm on the node likely to take over. The cache is an
//! accelerator, never a source of truth: every hit is re-hashed before it is used, and a
//! mismatch is dropped and counted (`ark_cache_corrupt_total`).

use std::path::Path;

use bytes::Bytes;
use foyer::{DirectFsDeviceOptions, Engine, HybridCache, HybridCacheBuilder};
use serde::{Deserialize, Serialize};

use crate::chunks::{chunk_id, ChunkId};
use crate::config::CacheConfig;

/// A cached chunk's bytes.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cached(#[serde(with = "serde_bytes")] Vec<u8>);

/// The node's chunk cache.
pub struct ChunkCache {
    inner: HybridCache<ChunkId, Cached>,
}

impl ChunkCache {
    /// Opens (or creates) the cache under `<data_dir>/cache`.
    pub async fn open(data_dir: &Path, cfg: &CacheConfig) -> anyhow::Result<Self> {
        let dir = data_dir.join("cache");
        std::fs::create_dir_all(&dir)?;
        let mib = 1024 * 1024;
        let disk = (cfg.disk_mib.max(16) as usize) * mib;
        let inner = HybridCacheBuilder::new()
            .with_name("ark-chunks")
            .memory((cfg.memory_mib.max(1) as usize) * mib)
            .with_weighter(|_id: &ChunkId, v: &Cached| v.0.len() + 32)
            .storage(Engine::Large)
            .with_device_options(
                DirectFsDeviceOptions::new(&dir)
                    .with_capacity(disk)
                    .with_file_size((16 * mib).min(disk)),
            )
            .build()
            .await?;
        Ok(Self { inner })
    }

    /// A cache with no disk device and 1 MiB of memory, for a witness voter (it reads no
    /// chunks): nothing is created under the data dir.
    pub async fn memory_only() -> anyhow::Result<Self> {
        let inner = HybridCacheBuilder::new()
            .with_name("ark-chunks")
            .memory(1024 * 1024)
            .with_weighter(|_id: &ChunkId, v: &Cached| v.0.len() + 32)
            .storage(Engine::Large)
            .build()
            .await?;
        Ok(Self { inner })
    }

    /// A verified copy of chunk `id`, if cached.
    pub async fn get(&self, id: &ChunkId) -> Option<Bytes> {
        let entry = match self.inner.get(id).await {
            Ok(Some(e)) => e,
            Ok(None) => {
                metrics::counter!("ark_cache_misses_total").increment(1);
                return None;
            }
            Err(e) => {
                tracing::warn!(error = %e, "chunk cache read failed");
                return None;
            }
        };
        let data = Bytes::from(entry.value().0.clone());
        drop(entry);
        let check = data.clone();
        let ok = tokio::task::spawn_blocking(move || chunk_id(&check))
            .await
            .is_ok_and(|h| &h == id);
        if !ok {
            metrics::counter!("ark_cache_corrupt_total").increment(1);
            self.inner.remove(id);
            return None;
        }
        metrics::counter!("ark_cache_hits_total").increment(1);
        Some(data)
    }

    /// Caches verified bytes of chunk `id`.
    pub fn insert(&self, id: ChunkId, data: &Bytes) {
        self.inner.insert(id, Cached(data.to_vec()));
        metrics::counter!("ark_cache_inserts_total").increment(1);
    }

    /// Flushes and closes the disk tier.
    pub async fn close(&self) {
        if let Err(e) = self.inner.close().await {
            tracing::warn!(error = %e, "closing the chunk cache");
        }
    }
}

/// foyer 0.12's metric names that break Prometheus conventions, and the names Ark exports
/// them under: a counter without `_total` (which `promtool check metrics` refuses) and
/// durations and sizes without their unit. foyer records them itself, so
/// [`crate::metrics`] renames them on their way into the recorder.
const FOYER_RENAMES: &[(&str, &str)] = &[
    ("foyer_memory_usage", "foyer_memory_usage_bytes"),
    ("foyer_storage_op_duration", "foyer_storage_op_duration_seconds"),
    (
        "foyer_storage_inner_op_duration",
        "foyer_storage_inner_op_duration_seconds",
    ),
    ("foyer_storage_disk_io_bytes", "foyer_storage_disk_io_bytes_total"),
    (
        "foyer_storage_disk_io_duration",
        "foyer_storage_disk_io_duration_seconds",
    ),
    (
        "foyer_storage_entry_serde_duration",
        "foyer_storage_entry_serde_duration_seconds",
    ),
    ("foyer_hybrid_op_duration", "foyer_hybrid_op_duration_seconds"),
];

/// The name Ark exports foyer's metric `name` under, if foyer's own does not follow
/// Prometheus conventions.
pub(crate) fn foyer_metric_name(name: &str) -> Option<&'static str> {
    if !name.starts_with("foyer_") {
        return None;
    }
    FOYER_RENAMES.iter().find(|(from, _)| *from == name).map(|(_, to)| *to)
}

/// foyer's histograms (after [`foyer_metric_name`]), all durations in seconds; their
/// operations take microseconds in memory up to milliseconds on disk.
pub(crate) const FOYER_HISTOGRAMS: &[&str] = &[
    "foyer_storage_op_duration_seconds",
    "foyer_storage_inner_op_duration_seconds",
    "foyer_storage_disk_io_duration_seconds",
    "foyer_storage_entry_serde_duration_seconds",
    "foyer_hybrid_op_duration_seconds",
];

/// Describes this module's metrics and foyer's (which foyer 0.12 leaves undescribed; every
/// family carries the label `name`, the cache's name `ark-chunks`) to the recorder; called
/// once at start-up by `server` (through `metrics::install`).
pub(crate) fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!("ark_cache_misses_total", "Chunk cache lookups that found nothing.");
    describe_counter!(
        "ark_cache_corrupt_total",
        "Chunk cache hits whose bytes did not match their id (dropped)."
    );
    describe_counter!(
        "ark_cache_hits_total",
        "Chunk cache lookups served with verified bytes."
    );
    describe_counter!("ark_cache_inserts_total", "Chunks inserted into the chunk cache.");

    describe_counter!(
        "foyer_memory_op_total",
        "foyer memory tier operations, by op (insert, replace, hit, miss, remove, evict, reinsert, release, queue, fetch)."
    );
    describe_gauge!(
        "foyer_memory_usage_bytes",
        Unit::Bytes,
        "Weight of the entries in foyer's memory tier (chunk bytes plus 32 per entry)."
    );
    describe_counter!(
        "foyer_storage_op_total",
        "foyer disk tier operations, by op (enqueue, hit, miss, delete)."
    );
    describe_histogram!(
        "foyer_storage_op_duration_seconds",
        Unit::Seconds,
        "Duration of foyer disk tier operations, by op (enqueue, hit, miss, delete)."
    );
    describe_counter!(
        "foyer_storage_inner_op_total",
        "foyer disk tier internal operations, by op (queue_rotate, queue_drop)."
    );
    describe_histogram!(
        "foyer_storage_inner_op_duration_seconds",
        Unit::Seconds,
        "Duration of foyer disk tier internal operations, by op (queue_rotate)."
    );
    describe_counter!(
        "foyer_storage_disk_io_total",
        "foyer disk tier I/O calls, by op (write, read, flush)."
    );
    describe_counter!(
        "foyer_storage_disk_io_bytes_total",
        Unit::Bytes,
        "Bytes foyer's disk tier wrote and read, by op (write, read)."
    );
    describe_histogram!(
        "foyer_storage_disk_io_duration_seconds",
        Unit::Seconds,
        "Duration of foyer disk tier I/O calls, by op (write, read, flush)."
    );
    describe_gauge!(
        "foyer_storage_region",
        "foyer disk tier regions, by type (total, clean, evictable)."
    );
    describe_gauge!(
        "foyer_storage_region_size_bytes",
        Unit::Bytes,
        "Size of one foyer disk tier region."
    );
    describe_histogram!(
        "foyer_storage_entry_serde_duration_seconds",
        Unit::Seconds,
        "Time foyer spends encoding and decoding entries for its disk tier, by op (serialize, deserialize)."
    );
    describe_counter!(
        "foyer_hybrid_op_total",
        "foyer hybrid cache operations, by op (insert, hit, miss, remove)."
    );
    describe_histogram!(
        "foyer_hybrid_op_duration_seconds",
        Unit::Seconds,
        "Duration of foyer hybrid cache operations, by op (insert, hit, miss, remove, fetch)."
    );
}
