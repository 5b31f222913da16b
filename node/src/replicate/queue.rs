//! The leader's replication queue: brings every chunk back to its namespace's policy after a
//! node or site is lost (or after an async put), and measures each namespace's lag.
//!
//! Every `objects.repair_interval_ms` the leader walks the object tables: a chunk is below
//! policy when its holders that answered recently are fewer than `copies` or span fewer
//! than `min_sites` sites. Work is ordered by namespace priority, then by age (oldest
//! first, so nothing starves); for each such chunk [`super::placement::choose`] picks new
//! holders among live nodes, the target pulls the chunk from a live holder (verifying it),
//! and the leader records the new holder through Raft. A namespace's lag is the age of its
//! oldest object that is below policy (0 when none is), exported as
//! `ark_namespace_lag_seconds` and `ark_namespace_behind_objects`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::{placement, DataPlane, Peer};
use crate::chunks::ChunkId;
use crate::raft::{Command, NodeId, Op};

/// Chunks asked of one target in one pull.
const PULL_BATCH: usize = 16;
/// Chunks scheduled per target per pass (the rest waits for the next pass).
const PER_TARGET_PER_PASS: usize = 512;

/// Runs the queue until `stop` turns true. Does nothing on followers.
pub async fn run(dp: Arc<DataPlane>, mut stop: watch::Receiver<bool>) {
    let every = Duration::from_millis(dp.cfg.repair_interval_ms.max(100));
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if !dp.is_leader() {
            // Only the leader measures lag; a former leader's figures would go stale.
            if let Ok(mut l) = dp.lag.lock() {
                l.clear();
            }
            continue;
        }
        if let Err(e) = pass(&dp).await {
            tracing::warn!(error = %e, "replication pass failed");
        }
    }
}

/// One chunk for one target: id, length, live holders (sources), compress.
type Job = (ChunkId, u32, Vec<NodeId>, bool);

#[derive(Clone, Copy)]
struct Need {
    copies: u32,
    min_sites: u32,
    priority: u32,
    compress: bool,
}

/// One pass: measure, then repair what is below policy.
pub async fn pass(dp: &DataPlane) -> Result<(), String> {
    let now = crate::api::now_ms();
    let namespaces = dp.reader.namespaces().map_err(|e| e.to_string())?;
    let mut need: HashMap<ChunkId, Need> = HashMap::new();
    // Per namespace: (created_ms, distinct chunks) of every live version.
    let mut objects: BTreeMap<String, Vec<(u64, Vec<ChunkId>)>> = BTreeMap::new();
    for (ns, rec) in &namespaces {
        let p = &rec.policy;
        let list = dp.reader.list(ns, "", true).map_err(|e| e.to_string())?;
        let entry = objects.entry(ns.clone()).or_default();
        for o in list.into_iter().filter(|o| !o.record.deleted) {
            let ids: Vec<ChunkId> = o.record.chunks.iter().map(|c| c.id).collect();
            for id in &ids {
                let n = need.entry(*id).or_insert(Need {
                    copies: 0,
                    min_sites: 0,
                    priority: 0,
                    compress: p.compress,
                });
                n.copies = n.copies.max(p.copies);
                n.min_sites = n.min_sites.max(p.min_sites);
                n.priority = n.priority.max(p.priority);
            }
            entry.push((o.record.created_ms, ids));
        }
    }
    let members = dp.members();
    let alive: Vec<Peer> = members.iter().filter(|m| dp.recently_alive(m.id)).cloned().collect();
    let alive_ids: HashSet<NodeId> = alive.iter().map(|p| p.id).collect();

    let mut below: HashSet<ChunkId> = HashSet::new();
    let mut work: Vec<(u32, u64, ChunkId, u32, Vec<NodeId>, Need)> = Vec::new();
    let mut lost = 0u64;
    for (id, rec) in dp.reader.chunks().map_err(|e| e.to_string())? {
        let Some(n) = need.get(&id).copied() else {
            continue;
        };
        let live: Vec<NodeId> = rec.holders.iter().copied().filter(|h| alive_ids.contains(h)).collect();
        let sites = dp.sites_of(&live);
        if live.len() >= n.copies as usize && sites.len() >= n.min_sites as usize {
            continue;
        }
        below.insert(id);
        if live.is_empty() {
            lost += 1;
            continue;
        }
        work.push((n.priority, rec.since_ms, id, rec.len, rec.holders.clone(), n));
    }
    metrics::gauge!("ark_chunks_without_live_copy").set(lost as f64);

    // Lag per namespace, measured before this pass repairs anything.
    let mut lag_map = HashMap::new();
    for (ns, objs) in &objects {
        let behind: Vec<u64> = objs
            .iter()
            .filter(|(_, ids)| ids.iter().any(|i| below.contains(i)))
            .map(|(t, _)| *t)
            .collect();
        let lag_ms = behind.iter().min().map(|t| now.saturating_sub(*t)).unwrap_or(0);
        metrics::gauge!("ark_namespace_lag_seconds", "namespace" => ns.clone()).set(lag_ms as f64 / 1000.0);
        metrics::gauge!("ark_namespace_behind_objects", "namespace" => ns.clone()).set(behind.len() as f64);
        lag_map.insert(ns.clone(), (behind.len() as u64, lag_ms));
    }
    if let Ok(mut l) = dp.lag.lock() {
        *l = lag_map;
    }
    metrics::gauge!("ark_replication_queue_chunks").set(work.len() as f64);
    if work.is_empty() {
        return Ok(());
    }

    // Highest priority first, then oldest.
    work.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut jobs: BTreeMap<NodeId, (Peer, Vec<Job>)> = BTreeMap::new();
    for (_, _, id, len, holders, n) in work {
        let live: Vec<NodeId> = holders.iter().copied().filter(|h| alive_ids.contains(h)).collect();
        let sites = dp.sites_of(&live);
        let short_sites = (n.min_sites as usize).saturating_sub(sites.len());
        let want = (n.copies as usize).saturating_sub(live.len()).max(short_sites).max(1);
        for t in placement::choose(&sites, &holders, &alive, want) {
            let slot = jobs.entry(t.id).or_insert_with(|| (t.clone(), Vec::new()));
            if slot.1.len() < PER_TARGET_PER_PASS {
                slot.1.push((id, len, live.clone(), n.compress));
            }
        }
    }
    let runs = jobs.into_values().map(|(target, items)| async move {
        let mut added = 0usize;
        for batch in items.chunks(PULL_BATCH) {
            let ids: Vec<ChunkId> = batch.iter().map(|b| b.0).collect();
            let bytes: u64 = batch.iter().map(|b| b.1 as u64).sum();
            let mut src_ids: Vec<NodeId> = batch.iter().flat_map(|b| b.2.iter().copied()).collect();
            src_ids.sort_unstable();
            src_ids.dedup();
            let mut sources: Vec<Peer> = dp.members().into_iter().filter(|m| src_ids.contains(&m.id)).collect();
            sources.sort_by_key(|s| (s.site != target.site, s.id));
            let compress = batch.iter().any(|b| b.3);
            match dp.pull_to(&target, &ids, &sources, compress, bytes).await {
                Ok(held) if !held.is_empty() => {
                    added += held.len();
                    let op = Op {
                        request_id: Vec::new(),
                        command: Command::ChunkHolders {
                            node: target.id,
                            add: held,
                            remove: Vec::new(),
                        },
                    };
                    if let Err(st) = dp.propose(op, Duration::from_secs(10)).await {
                        tracing::warn!(target = target.id, error = %st.message(), "recording new holder failed");
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(target = target.id, error = %e, "re-replication pull failed");
                    break;
                }
            }
        }
        metrics::counter!("ark_replication_repaired_chunks_total").increment(added as u64);
    });
    futures::future::join_all(runs).await;
    Ok(())
}
