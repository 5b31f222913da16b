//! Scrub, repair and garbage collection of this node's chunk files.
//!
//! A pass re-hashes every local chunk that some object refers to, at most
//! `objects.scrub_mib_per_s`; a corrupt copy is replaced by a verified one fetched from
//! another holder, and a chunk the state machine says this node holds but whose file is gone
//! is fetched again. A copy that cannot be repaired is dropped from the holders through
//! Raft, so that the leader's queue re-replicates it from elsewhere. Chunk files that no
//! object refers to are deleted once neither a claim (`claims.rs`, monotonic time) nor
//! their age (`objects.gc_grace_s`) protects them: an upload in progress has claimed its
//! chunks and has not committed its manifest yet.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ark_proto::v1::ScrubResult;
use tokio::sync::watch;

use super::DataPlane;
use crate::chunks::{to_hex, ChunkError, ChunkId};
use crate::raft::objects::ChunkRecord;
use crate::raft::{Command, Op};

/// Runs a background pass every `objects.scrub_interval_s` (never when 0).
pub async fn run(dp: Arc<DataPlane>, mut stop: watch::Receiver<bool>) {
    if dp.cfg.scrub_interval_s == 0 {
        return;
    }
    let every = Duration::from_secs(dp.cfg.scrub_interval_s);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        match dp.scrub_now().await {
            Ok(r) => tracing::info!(
                checked = r.chunks_checked,
                corrupt = r.corrupt,
                missing = r.missing,
                repaired = r.repaired,
                "scrub pass done"
            ),
            Err(e) => tracing::warn!(error = %e, "scrub pass failed"),
        }
    }
}

impl DataPlane {
    /// Deletes the unreferenced chunk `id` if [`super::claims`] allows it now.
    fn gc_if_old(&self, id: &ChunkId) -> bool {
        let Some(p) = self.store.path_of(id) else {
            return false;
        };
        let age = std::fs::metadata(&p)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok());
        let collected = self.claims.collect(id, age, || self.store.remove(id).unwrap_or(false));
        if collected {
            metrics::counter!("ark_chunks_collected_total").increment(1);
        }
        collected
    }

    /// Repairs the local copy of `id` from another holder; false when none had a good copy.
    async fn repair(&self, id: &ChunkId, rec: &ChunkRecord, compress: bool) -> bool {
        let sources = self.remote_holders(&rec.holders);
        match self.fetch_from(id, &sources).await {
            Ok(data) => {
                let store = self.store.clone();
                let cid = *id;
                let ok = tokio::task::spawn_blocking(move || {
                    // A corrupt file is replaced by put (it re-checks the existing copy).
                    store.put_hashed(&cid, &data, compress)
                })
                .await
                .is_ok_and(|r| r.is_ok());
                if ok {
                    metrics::counter!("ark_chunks_repaired_total", "by" => "scrub").increment(1);
                }
                ok
            }
            Err(e) => {
                tracing::warn!(chunk = %to_hex(id), error = %e, "cannot repair chunk");
                false
            }
        }
    }

    async fn give_up(&self, id: &ChunkId) {
        let store = self.store.clone();
        let cid = *id;
        let _ = tokio::task::spawn_blocking(move || store.remove(&cid)).await;
        let op = Op {
            request_id: Vec::new(),
            command: Command::ChunkHolders {
                node: self.id,
                add: Vec::new(),
                remove: vec![*id],
            },
        };
        if let Err(st) = self.front.propose(op, Duration::from_secs(10)).await {
            tracing::warn!(chunk = %to_hex(id), error = %st, "cannot drop this node from the holders");
        }
    }

    /// One scrub pass over this node's chunks (one at a time per node).
    pub async fn scrub_now(&self) -> Result<ScrubResult, String> {
        let _one = self.scrub_lock.lock().await;
        let store = self.store.clone();
        let local = tokio::task::spawn_blocking(move || store.list())
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let records: HashMap<ChunkId, ChunkRecord> =
            self.reader.chunks().map_err(|e| e.to_string())?.into_iter().collect();
        let rate = (self.cfg.scrub_mib_per_s.max(1) * 1024 * 1024) as f64;
        let started = Instant::now();
        let mut r = ScrubResult::default();
        let local_set: HashSet<ChunkId> = local.iter().copied().collect();
        for id in &local {
            let Some(rec) = records.get(id) else {
                self.gc_if_old(id);
                continue;
            };
            let store = self.store.clone();
            let cid = *id;
            let res = tokio::task::spawn_blocking(move || store.verify(&cid))
                .await
                .map_err(|e| e.to_string())?;
            r.chunks_checked += 1;
            r.bytes_checked += rec.len as u64;
            metrics::counter!("ark_scrub_chunks_checked_total").increment(1);
            match res {
                Ok(()) => {}
                Err(ChunkError::NotFound { .. }) => {}
                Err(e) => {
                    r.corrupt += 1;
                    metrics::counter!("ark_scrub_corrupt_total").increment(1);
                    tracing::warn!(chunk = %to_hex(id), error = %e, "scrub found a bad copy");
                    if self.repair(id, rec, false).await {
                        r.repaired += 1;
                    } else {
                        self.give_up(id).await;
                    }
                }
            }
            // Rate limit: never faster than scrub_mib_per_s on average.
            let due = Duration::from_secs_f64(r.bytes_checked as f64 / rate);
            let spent = started.elapsed();
            if due > spent {
                tokio::time::sleep(due - spent).await;
            }
        }
        for (id, rec) in &records {
            if rec.holders.contains(&self.id) && !local_set.contains(id) {
                r.missing += 1;
                metrics::counter!("ark_scrub_missing_total").increment(1);
                if self.repair(id, rec, false).await {
                    r.repaired += 1;
                } else {
                    self.give_up(id).await;
                }
            }
        }
        Ok(r)
    }
}

/// Describes this module's metrics (HELP text and unit) to the recorder; called once at start-up by
/// `server` (through `metrics::install`).
pub(crate) fn describe_metrics() {
    use metrics::describe_counter;
    describe_counter!(
        "ark_chunks_collected_total",
        "Unreferenced chunk files removed by garbage collection."
    );
    describe_counter!(
        "ark_scrub_chunks_checked_total",
        "Chunk files re-hashed by the scrubber."
    );
    describe_counter!("ark_scrub_corrupt_total", "Chunk files the scrubber found corrupt.");
    describe_counter!(
        "ark_scrub_missing_total",
        "Chunks the metadata says this node holds but that are not on its disk."
    );
}
