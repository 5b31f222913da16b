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
