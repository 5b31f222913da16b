//! The chunk RPC client: what this node asks of a peer's data plane (have? / put / get /
//! verify / pull / scrub / prestage), with per-call deadlines sized to the bytes moved, and
//! the hedged fetch that asks the next holder when one stays silent.
//!
//! Owns the request side of the data-plane RPCs. Must not touch: the serving side
//! ([`super::serve`]), consensus.

use std::time::Duration;

use ark_proto::v1::{
    peer_request, peer_response, ChunkGet, ChunkIds, ChunkPull, ChunkPut, ChunkState, ObjectRef, PeerAddr, PeerRequest,
    Prestage, PrestageAck, RaftCodec,
};
use bytes::Bytes;

use super::{chunk_timeout, parse_ids, DataError, DataPlane, Peer, PRESTAGE_TIMEOUT};
use crate::chunks::{chunk_id, to_hex, ChunkId};
use crate::raft::NodeId;

/// A member that answered this recently counts as live for a placement without a probe.
const ANSWERED_FRESH: Duration = Duration::from_millis(500);

impl DataPlane {
    pub(super) async fn call(
        &self,
        p: &Peer,
        body: peer_request::Body,
        timeout: Duration,
    ) -> Result<peer_response::Body, DataError> {
        let req = PeerRequest {
            from: self.id,
            raft_codec: RaftCodec::Unspecified as i32,
            body: Some(body),
        };
        let resp = self.pool.call(p.id, &p.addr, &req, timeout).await?;
        match resp.body {
            Some(peer_response::Body::Failure(msg)) => Err(DataError::Remote { node: p.id, msg }),
            Some(peer_response::Body::DiskFull(msg)) => Err(DataError::DiskFull { node: p.id, msg }),
            Some(b) => Ok(b),
            None => Err(DataError::Remote {
                node: p.id,
                msg: "empty response".into(),
            }),
        }
    }

    /// Whether `id` answered this node recently (always true for this node). Meaningful on
    /// the leader, which talks to every member all the time.
    pub fn recently_alive(&self, id: NodeId) -> bool {
        id == self.id
            || self
                .pool
                .since_last_ok(id)
                .is_some_and(|d| d < Duration::from_millis(self.cfg.holder_lost_after_ms))
    }

    /// Data members (never a witness) other than this node that answered anything in the
    /// last [`ANSWERED_FRESH`] or answer a no-op chunk query within `timeout`. (Under load every
    /// member answers all the time; probing each again would cost every put a round trip.)
    pub async fn live_peers(&self, timeout: Duration) -> Vec<Peer> {
        let others: Vec<Peer> = self
            .members
            .data_peers()
            .into_iter()
            .filter(|p| p.id != self.id)
            .collect();
        let probes = others.into_iter().map(|p| async move {
            if self.pool.since_last_ok(p.id).is_some_and(|d| d < ANSWERED_FRESH) {
                return Some(p);
            }
            let ok = self
                .call(&p, peer_request::Body::ChunkHave(ChunkIds::default()), timeout)
                .await
                .is_ok();
            ok.then_some(p)
        });
        futures::future::join_all(probes).await.into_iter().flatten().collect()
    }

    /// Sends chunk `id` to `p` unless it already holds it; returns the bytes sent.
    ///
    /// `recorded`: `p` is a recorded holder of a chunk of a live version (an upload's known
    /// chunk), so it is asked for the file's presence only, not to re-hash it.
    pub async fn push_chunk(
        &self,
        p: &Peer,
        id: ChunkId,
        data: Bytes,
        compress: bool,
        recorded: bool,
    ) -> Result<u64, DataError> {
        let have = self
            .call(
                p,
                peer_request::Body::ChunkHave(ChunkIds {
                    ids: vec![id.to_vec()],
                    presence_only: recorded,
                }),
                self.rpc_timeout * 2,
            )
            .await?;
        let missing = matches!(&have, peer_response::Body::ChunkIds(m) if !m.ids.is_empty());
        if !missing {
            return Ok(0);
        }
        let len = data.len();
        let body = peer_request::Body::ChunkPut(ChunkPut {
            id: id.to_vec(),
            data,
            compress,
        });
        self.call(p, body, chunk_timeout(self.rpc_timeout, len)).await?;
        metrics::counter!("ark_replication_bytes_sent_total").increment(len as u64);
        metrics::counter!("ark_replication_chunks_sent_total").increment(1);
        Ok(len as u64)
    }

    /// Fetches chunk `id` from the first of `sources` that has a good copy, verifying it.
    /// Sources are asked in order; when one has not answered within the RPC timeout (a
    /// holder in a lost site answers nothing until the chunk deadline), the next one is
    /// asked as well and the first good copy wins.
    pub async fn fetch_from(&self, id: &ChunkId, sources: &[Peer]) -> Result<Bytes, DataError> {
        use futures::stream::{FuturesUnordered, StreamExt};
        let mut last = None;
        let mut asked = sources.iter();
        let mut running = FuturesUnordered::new();
        // Asked and not answered yet.
        let mut waiting: Vec<NodeId> = Vec::new();
        loop {
            if running.is_empty() {
                match asked.next() {
                    Some(p) => {
                        waiting.push(p.id);
                        running.push(self.fetch_one(id, p));
                    }
                    None => break,
                }
            }
            let hedge = tokio::time::sleep(self.rpc_timeout);
            tokio::select! {
                done = running.next() => match done {
                    Some((from, Ok(b))) => {
                        // Whoever was asked first and is still silent is slow or gone: ask
                        // the others first for a while.
                        waiting.retain(|n| *n != from);
                        if !waiting.is_empty() {
                            if let Ok(mut slow) = self.slow_holders.lock() {
                                for n in &waiting {
                                    slow.insert(*n, std::time::Instant::now());
                                }
                            }
                        }
                        return Ok(b);
                    }
                    Some((from, Err(why))) => {
                        waiting.retain(|n| *n != from);
                        last = Some(why);
                    }
                    None => {}
                },
                () = hedge => {
                    if let Some(p) = asked.next() {
                        metrics::counter!("ark_chunk_fetch_hedged_total").increment(1);
                        waiting.push(p.id);
                        running.push(self.fetch_one(id, p));
                    }
                }
            }
        }
        Err(DataError::NoGoodCopy {
            chunk: to_hex(id),
            why: match last {
                Some(last) => format!("none of its holders had one (the last: {last})"),
                None => "no holder to ask".into(),
            },
        })
    }

    /// One holder's verified copy of chunk `id`, or why not, with the holder's id.
    async fn fetch_one(&self, id: &ChunkId, p: &Peer) -> (NodeId, Result<Bytes, String>) {
        (p.id, self.fetch_one_inner(id, p).await)
    }

    async fn fetch_one_inner(&self, id: &ChunkId, p: &Peer) -> Result<Bytes, String> {
        let r = self
            .call(
                p,
                peer_request::Body::ChunkGet(ChunkGet { id: id.to_vec() }),
                chunk_timeout(self.rpc_timeout, 4 << 20),
            )
            .await;
        match r {
            Ok(peer_response::Body::ChunkData(d)) => {
                let check = d.clone();
                let ok = tokio::task::spawn_blocking(move || chunk_id(&check))
                    .await
                    .is_ok_and(|h| &h == id);
                if ok {
                    metrics::counter!("ark_replication_bytes_fetched_total").increment(d.len() as u64);
                    return Ok(d);
                }
                // The peer verified it before sending; a mismatch here means the bytes
                // changed on the way or the peer is faulty: try the next one.
                metrics::counter!("ark_chunks_bad_from_peer_total").increment(1);
                Err(format!("node {} sent bytes that do not match the id", p.id))
            }
            Ok(peer_response::Body::ChunkUnavailable(why)) => Err(format!("node {}: {why}", p.id)),
            Ok(_) => Err(format!("node {}: unexpected answer", p.id)),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Asks node `p` to fetch `ids` from `sources` and store them; returns the ids it holds.
    pub async fn pull_to(
        &self,
        p: &Peer,
        ids: &[ChunkId],
        sources: &[Peer],
        compress: bool,
        bytes: u64,
    ) -> Result<Vec<ChunkId>, DataError> {
        let body = peer_request::Body::ChunkPull(ChunkPull {
            ids: ids.iter().map(|i| i.to_vec()).collect(),
            sources: sources
                .iter()
                .map(|s| PeerAddr {
                    id: s.id,
                    addr: s.addr.clone(),
                })
                .collect(),
            compress,
        });
        match self
            .call(p, body, chunk_timeout(self.rpc_timeout, bytes as usize))
            .await?
        {
            peer_response::Body::ChunkIds(c) => parse_ids(&c.ids).map_err(|msg| DataError::Remote { node: p.id, msg }),
            _ => Err(DataError::Remote {
                node: p.id,
                msg: "unexpected answer to a pull".into(),
            }),
        }
    }

    /// Asks node `p` to re-hash `ids`.
    pub async fn verify_on(&self, p: &Peer, ids: &[ChunkId], bytes: u64) -> Result<Vec<ChunkState>, DataError> {
        if p.id == self.id {
            return self.verify_local(ids.to_vec()).await;
        }
        let body = peer_request::Body::ChunkVerify(ChunkIds {
            ids: ids.iter().map(|i| i.to_vec()).collect(),
            presence_only: false,
        });
        match self
            .call(p, body, chunk_timeout(self.rpc_timeout, bytes as usize))
            .await?
        {
            peer_response::Body::ChunkStates(s) if s.states.len() == ids.len() => Ok(s
                .states
                .into_iter()
                .map(|v| ChunkState::try_from(v).unwrap_or(ChunkState::Unspecified))
                .collect()),
            _ => Err(DataError::Remote {
                node: p.id,
                msg: "unexpected answer to verify".into(),
            }),
        }
    }

    /// Runs a scrub pass on node `p` (this node locally).
    pub async fn scrub_on(&self, p: &Peer) -> Result<ark_proto::v1::ScrubResult, String> {
        if p.id == self.id {
            return self.scrub_now().await;
        }
        match self
            .call(
                p,
                peer_request::Body::ScrubRun(ark_proto::v1::ScrubRun {}),
                Duration::from_secs(3600),
            )
            .await
        {
            Ok(peer_response::Body::Scrub(r)) => Ok(r),
            Ok(_) => Err("unexpected answer to scrub".into()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Asks `p` to warm its chunk cache with `objects` (see [`Self::prestage`]).
    pub async fn prestage_on(&self, p: &Peer, objects: Vec<(String, String)>) -> Result<PrestageAck, DataError> {
        let body = peer_request::Body::Prestage(Prestage {
            objects: objects
                .into_iter()
                .map(|(namespace, key)| ObjectRef { namespace, key })
                .collect(),
        });
        match self.call(p, body, PRESTAGE_TIMEOUT).await? {
            peer_response::Body::PrestageAck(a) => Ok(a),
            _ => Err(DataError::Remote {
                node: p.id,
                msg: "unexpected answer to prestage".into(),
            }),
        }
    }
}

/// Describes this file's metrics (HELP text and unit) to the recorder; called once at
/// start-up by `server`.
pub(crate) fn describe_metrics() {
    use metrics::{describe_counter, Unit};
    describe_counter!(
        "ark_replication_bytes_sent_total",
        Unit::Bytes,
        "Chunk bytes pushed to peers."
    );
    describe_counter!("ark_replication_chunks_sent_total", "Chunks pushed to peers.");
    describe_counter!(
        "ark_chunk_fetch_hedged_total",
        "Chunk fetches that asked a second holder because the first was slow."
    );
    describe_counter!(
        "ark_replication_bytes_fetched_total",
        Unit::Bytes,
        "Verified chunk bytes fetched from peers."
    );
    describe_counter!(
        "ark_chunks_bad_from_peer_total",
        "Chunks fetched from a peer whose bytes did not match their id."
    );
}
