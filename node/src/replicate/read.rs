//! A verified chunk from wherever a good copy is: the local store, the foyer cache (on a
//! node that does not hold it), or another holder (same site first, slow holders last); a
//! holder's bad local copy is repaired on the way. Also an object's chunk as the client
//! gets it (opened, for an encrypted namespace, after the verified sealed bytes arrived from
//! wherever they were, so that the store, the cache and every transfer only ever hold sealed
//! bytes), and a small object's whole bytes, checked against its manifest.
//!
//! Owns the read path's order of sources. Must not touch: gRPC (a chunk with no good copy is
//! [`DataError::NoGoodCopy`]).

use bytes::Bytes;

use super::{DataError, DataPlane, Peer, SLOW_HOLDER_FOR};
use crate::chunks::{seal, to_hex, ChunkError, ChunkId};
use crate::raft::NodeId;

impl DataPlane {
    /// A verified copy of chunk `id`: the local one, or one fetched from another holder
    /// (which also repairs the local copy when this node is a holder). Fails rather than
    /// return bytes that do not match the id.
    pub async fn read_chunk(&self, id: &ChunkId, holders: &[NodeId], compress: bool) -> Result<Bytes, DataError> {
        let store = self.store.clone();
        let cid = *id;
        let local = tokio::task::spawn_blocking(move || store.get(&cid))
            .await
            .map_err(|e| DataError::Local(e.to_string()))?;
        let local_err = match local {
            Ok(b) => return Ok(b),
            Err(e) => e,
        };
        if matches!(local_err, ChunkError::Corrupt { .. }) {
            tracing::warn!(chunk = %to_hex(id), "local copy corrupt; reading from a replica");
        }
        let holder_here = holders.contains(&self.id);
        if !holder_here {
            if let Some(b) = self.cache.get(id).await {
                return Ok(b);
            }
        }
        let sources = self.remote_holders(holders);
        match self.fetch_from(id, &sources).await {
            Ok(b) => {
                if !holder_here {
                    self.cache.insert(*id, &b);
                }
                if holders.contains(&self.id) || matches!(local_err, ChunkError::Corrupt { .. }) {
                    let store = self.store.clone();
                    let data = b.clone();
                    let repaired = tokio::task::spawn_blocking(move || store.put_hashed(&cid, &data, compress)).await;
                    if let Ok(Ok(true)) = repaired {
                        metrics::counter!("ark_chunks_repaired_total", "by" => "read").increment(1);
                    }
                }
                Ok(b)
            }
            Err(e) => {
                metrics::counter!("ark_object_reads_failed_total").increment(1);
                let replicas = match e {
                    DataError::NoGoodCopy { why, .. } => why,
                    other => other.to_string(),
                };
                Err(DataError::NoGoodCopy {
                    chunk: to_hex(id),
                    why: format!("local: {local_err}; replicas: {replicas}"),
                })
            }
        }
    }

    /// Chunk `id` of an object of namespace `ns`, as the client reads it: the verified copy
    /// ([`DataPlane::read_chunk`]), opened with the data key generation its header names when
    /// the namespace is encrypted. A key this node cannot have is [`DataError::Key`]; sealed
    /// bytes that do not open (a wrong key, tampered ciphertext) are [`DataError::Unseal`],
    /// never bytes.
    pub async fn read_object_chunk(
        &self,
        ns: &str,
        id: &ChunkId,
        holders: &[NodeId],
        compress: bool,
    ) -> Result<Bytes, DataError> {
        let keys = self.reader.ns_keys(ns).map_err(|e| DataError::Local(e.to_string()))?;
        let Some(keys) = keys else {
            return self.read_chunk(id, holders, compress).await;
        };
        let sealed = self.read_chunk(id, holders, false).await?;
        let unseal = |e: seal::SealError| {
            metrics::counter!("ark_chunk_opens_failed_total").increment(1);
            DataError::Unseal(format!(
                "chunk {} of encrypted namespace {ns} does not open: {e}",
                to_hex(id)
            ))
        };
        let generation = seal::generation_of(&sealed).map_err(unseal)?;
        let sealer = self
            .keys
            .sealer(ns, &keys, Some(generation))
            .map_err(|e| DataError::Key(e.to_string()))?;
        let opened = tokio::task::spawn_blocking(move || sealer.open(&sealed))
            .await
            .map_err(|e| DataError::Local(e.to_string()))?;
        opened.map(Bytes::from).map_err(unseal)
    }

    /// The bytes of a small object's version `entry`, every chunk verified and the whole
    /// checked against the manifest; refused above `max` bytes.
    pub async fn read_small_object(
        &self,
        entry: &crate::raft::objects::ObjectEntry,
        max: u64,
    ) -> Result<Vec<u8>, String> {
        if entry.record.size > max {
            return Err(format!("{} bytes is over the {max}-byte limit", entry.record.size));
        }
        let mut bytes = Vec::with_capacity(entry.record.size as usize);
        for c in &entry.record.chunks {
            let holders = self
                .reader
                .chunk(&c.id)
                .map_err(|e| e.to_string())?
                .map(|r| r.holders)
                .unwrap_or_default();
            let b = self
                .read_object_chunk(&entry.ns, &c.id, &holders, false)
                .await
                .map_err(|e| e.to_string())?;
            bytes.extend_from_slice(&b);
        }
        let sha: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, &bytes)
            .as_ref()
            .try_into()
            .map_err(|_| "bad digest length".to_string())?;
        if sha != entry.record.sha256 {
            return Err("object bytes do not match the manifest's SHA-256".into());
        }
        Ok(bytes)
    }

    /// Holders of a chunk other than this node, same site first.
    pub(super) fn remote_holders(&self, holders: &[NodeId]) -> Vec<Peer> {
        let mut peers: Vec<Peer> = self
            .members
            .all()
            .into_iter()
            .filter(|p| p.id != self.id && holders.contains(&p.id))
            .collect();
        let slow: std::collections::HashSet<NodeId> = self
            .slow_holders
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|(_, t)| t.elapsed() < SLOW_HOLDER_FOR)
                    .map(|(n, _)| *n)
                    .collect()
            })
            .unwrap_or_default();
        peers.sort_by_key(|p| (slow.contains(&p.id), p.site != self.site, p.id));
        peers
    }
}

/// Describes this file's metrics (HELP text and unit) to the recorder; called once at
/// start-up by `server`.
pub(crate) fn describe_metrics() {
    use metrics::describe_counter;
    describe_counter!(
        "ark_chunks_repaired_total",
        "Missing or corrupt local chunks rewritten from a good copy, by (read, scrub)."
    );
    describe_counter!(
        "ark_object_reads_failed_total",
        "Chunk reads for an object that no holder could serve."
    );
    describe_counter!(
        "ark_chunk_opens_failed_total",
        "Verified chunks of encrypted namespaces that did not open (wrong key or tampered ciphertext)."
    );
}
