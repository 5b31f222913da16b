//! The peer-request server: a peer's data-plane requests answered here (have? / put / get /
//! verify / pull / prestage / scrub, and the leader's side of forwarded writes and read
//! indexes, handed to consensus's front door), and the [`PeerRouter`] that splits incoming
//! peer requests between Raft, the telemetry inbox and the data plane.
//!
//! Owns the serving side of the data-plane RPCs. Must not touch: what telemetry does with a
//! report (it only hands it to a [`ReportInbox`]).

use std::sync::Arc;

use ark_proto::v1::{
    peer_request, peer_response, ChunkIds, ChunkPull, ChunkPut, ChunkStates, ObjectRef, PeerAddr, PeerRequest,
    PeerResponse, PrestageAck, TelemetryReport,
};

use super::{parse_id, parse_ids, DataPlane, Peer, PRESTAGE_OBJECTS_MAX};
use crate::chunks::{to_hex, ChunkError};
use crate::net::PeerHandler;
use crate::raft::network::RaftPeerService;
use crate::raft::NodeId;

/// Where telemetry reports from peers go (the telemetry service, above this layer).
pub trait ReportInbox: Send + Sync {
    /// Takes node `from`'s report and says how it went.
    fn handle_report(&self, from: NodeId, report: TelemetryReport) -> peer_response::Body;
}

impl DataPlane {
    /// Answers a data-plane request from a peer.
    pub async fn handle(&self, body: peer_request::Body) -> PeerResponse {
        let body = match body {
            // Witness voter: nothing that would store a chunk here is accepted.
            peer_request::Body::ChunkPut(_) | peer_request::Body::ChunkPull(_) | peer_request::Body::Prestage(_)
                if self.witness =>
            {
                metrics::counter!("ark_replication_chunks_refused_total").increment(1);
                peer_response::Body::Failure(format!(
                    "node {} is a witness: it stores no chunks (choose a data node)",
                    self.id
                ))
            }
            peer_request::Body::ChunkHave(have) => match parse_ids(&have.ids) {
                Err(e) => peer_response::Body::Failure(e),
                Ok(ids) => {
                    // Claimed first: a put is about to refer to them, so garbage collection
                    // must not take them meanwhile. A copy counts as present only if it is
                    // intact, read and hashed now: a rotten one answered as present would
                    // make the uploader throw away the good bytes it holds. (The upload
                    // then pushes the chunk, and the put replaces the bad copy.) Asked for
                    // presence only, about a recorded copy of a live version's chunk, the
                    // file's existence answers (the scrubber re-hashes it on its schedule).
                    for id in &ids {
                        self.claims.claim(id);
                    }
                    let store = self.store.clone();
                    let presence_only = have.presence_only;
                    let missing = tokio::task::spawn_blocking(move || {
                        ids.into_iter()
                            .filter(|id| {
                                if presence_only {
                                    !store.has(id)
                                } else {
                                    store.verify(id).is_err()
                                }
                            })
                            .map(|id| id.to_vec())
                            .collect()
                    })
                    .await;
                    match missing {
                        Ok(ids) => peer_response::Body::ChunkIds(ChunkIds {
                            ids,
                            presence_only: false,
                        }),
                        Err(e) => peer_response::Body::Failure(e.to_string()),
                    }
                }
            },
            peer_request::Body::ChunkPut(p) => self.handle_put(p).await,
            peer_request::Body::ChunkGet(g) => match parse_id(&g.id) {
                Err(e) => peer_response::Body::Failure(e),
                Ok(id) => {
                    let store = self.store.clone();
                    match tokio::task::spawn_blocking(move || store.get(&id)).await {
                        Ok(Ok(b)) => peer_response::Body::ChunkData(b),
                        Ok(Err(e)) => peer_response::Body::ChunkUnavailable(e.to_string()),
                        Err(e) => peer_response::Body::Failure(e.to_string()),
                    }
                }
            },
            peer_request::Body::ChunkVerify(ids) => match parse_ids(&ids.ids) {
                Err(e) => peer_response::Body::Failure(e),
                Ok(ids) => match self.verify_local(ids).await {
                    Ok(states) => peer_response::Body::ChunkStates(ChunkStates {
                        states: states.into_iter().map(|s| s as i32).collect(),
                    }),
                    Err(e) => peer_response::Body::Failure(e.to_string()),
                },
            },
            peer_request::Body::ChunkPull(p) => self.handle_pull(p).await,
            peer_request::Body::ForwardWrite(b) => self.front.serve_forwarded_write(&b).await,
            peer_request::Body::ReadIndex(_) => self.front.serve_read_index().await,
            peer_request::Body::NsLag(_) => self.serve_ns_lag().await,
            peer_request::Body::Campaign(_) => {
                peer_response::Body::Failure("campaign request sent to the data plane".into())
            }
            peer_request::Body::Prestage(p) => peer_response::Body::PrestageAck(self.prestage(&p.objects).await),
            peer_request::Body::ScrubRun(_) => match self.scrub_now().await {
                Ok(r) => peer_response::Body::Scrub(r),
                Err(e) => peer_response::Body::Failure(e),
            },
            peer_request::Body::AppendEntries(_)
            | peer_request::Body::Vote(_)
            | peer_request::Body::InstallSnapshot(_)
            | peer_request::Body::PreVote(_) => {
                peer_response::Body::Failure("raft request sent to the data plane".into())
            }
            peer_request::Body::Telemetry(_) => {
                peer_response::Body::Failure("telemetry report sent to the data plane".into())
            }
        };
        PeerResponse { body: Some(body) }
    }

    async fn handle_put(&self, p: ChunkPut) -> peer_response::Body {
        let id = match parse_id(&p.id) {
            Ok(id) => id,
            Err(e) => return peer_response::Body::Failure(e),
        };
        let len = p.data.len() as u64;
        let store = self.store.clone();
        self.claims.claim(&id);
        match tokio::task::spawn_blocking(move || store.put(&id, &p.data, p.compress)).await {
            Ok(Ok(_)) => {
                metrics::counter!("ark_replication_bytes_received_total").increment(len);
                peer_response::Body::Ok(Vec::new())
            }
            Ok(Err(ChunkError::DiskFull)) => peer_response::Body::DiskFull(ChunkError::DiskFull.to_string()),
            Ok(Err(e)) => {
                metrics::counter!("ark_replication_chunks_refused_total").increment(1);
                peer_response::Body::Failure(format!("chunk {} refused: {e}", to_hex(&id)))
            }
            Err(e) => peer_response::Body::Failure(e.to_string()),
        }
    }

    async fn handle_pull(&self, p: ChunkPull) -> peer_response::Body {
        let ids = match parse_ids(&p.ids) {
            Ok(ids) => ids,
            Err(e) => return peer_response::Body::Failure(e),
        };
        let sources: Vec<Peer> = {
            let members = self.members.all();
            p.sources
                .iter()
                .filter(|s| s.id != self.id)
                .map(|s: &PeerAddr| Peer {
                    id: s.id,
                    site: members
                        .iter()
                        .find(|m| m.id == s.id)
                        .map(|m| m.site.clone())
                        .unwrap_or_default(),
                    addr: s.addr.clone(),
                })
                .collect()
        };
        let mut held = Vec::new();
        for id in ids {
            self.claims.claim(&id);
            let store = self.store.clone();
            let ok = tokio::task::spawn_blocking(move || store.verify(&id).is_ok())
                .await
                .unwrap_or(false);
            if ok {
                held.push(id.to_vec());
                continue;
            }
            let Ok(data) = self.fetch_from(&id, &sources).await else {
                continue;
            };
            let store = self.store.clone();
            let len = data.len() as u64;
            match tokio::task::spawn_blocking(move || store.put_hashed(&id, &data, p.compress)).await {
                Ok(Ok(_)) => {
                    metrics::counter!("ark_replication_bytes_received_total").increment(len);
                    held.push(id.to_vec());
                }
                Ok(Err(ChunkError::DiskFull)) => {
                    return peer_response::Body::DiskFull(ChunkError::DiskFull.to_string());
                }
                _ => {}
            }
        }
        peer_response::Body::ChunkIds(ChunkIds {
            ids: held,
            presence_only: false,
        })
    }

    /// Reads the chunks of the latest versions of `objects` that this node does not hold
    /// into its chunk cache (each verified on arrival, like any read), so that this node
    /// serves them locally if it takes over. Bounded by [`PRESTAGE_OBJECTS_MAX`].
    pub async fn prestage(&self, objects: &[ObjectRef]) -> PrestageAck {
        let mut ack = PrestageAck::default();
        for o in objects.iter().take(PRESTAGE_OBJECTS_MAX) {
            let Ok(Some(entry)) = self.reader.get(&o.namespace, &o.key, 0) else {
                continue;
            };
            if entry.record.deleted {
                continue;
            }
            let compress = self
                .reader
                .namespace(&o.namespace)
                .ok()
                .flatten()
                .is_some_and(|n| n.policy.compress);
            for c in &entry.record.chunks {
                let holders = self
                    .reader
                    .chunk(&c.id)
                    .ok()
                    .flatten()
                    .map(|r| r.holders)
                    .unwrap_or_default();
                let result = if holders.contains(&self.id) {
                    ack.local += 1;
                    "local"
                } else if self.cache.get(&c.id).await.is_some() {
                    ack.cached += 1;
                    "cached"
                } else if self.read_chunk(&c.id, &holders, compress).await.is_ok() {
                    ack.fetched += 1;
                    ack.bytes_fetched += u64::from(c.len);
                    "fetched"
                } else {
                    ack.failed += 1;
                    "failed"
                };
                metrics::counter!("ark_prestage_chunks_total", "result" => result).increment(1);
            }
        }
        ack
    }
}

/// Routes peer requests: Raft messages to Raft, telemetry reports to the telemetry
/// service, the rest to the data plane.
pub struct PeerRouter {
    raft: RaftPeerService,
    data: Arc<DataPlane>,
    telemetry: Arc<dyn ReportInbox>,
}

impl PeerRouter {
    /// A router over all three.
    pub fn new(raft: RaftPeerService, data: Arc<DataPlane>, telemetry: Arc<dyn ReportInbox>) -> Self {
        Self { raft, data, telemetry }
    }
}

impl PeerHandler for PeerRouter {
    async fn handle(&self, req: PeerRequest) -> PeerResponse {
        match req.body {
            Some(peer_request::Body::AppendEntries(_))
            | Some(peer_request::Body::Vote(_))
            | Some(peer_request::Body::InstallSnapshot(_))
            | Some(peer_request::Body::PreVote(_)) => self.raft.handle(req).await,
            Some(peer_request::Body::Telemetry(r)) => PeerResponse {
                body: Some(self.telemetry.handle_report(req.from, r)),
            },
            Some(peer_request::Body::Campaign(c)) => PeerResponse {
                body: Some(self.data.front.serve_campaign(req.from, &c).await),
            },
            Some(b) => self.data.handle(b).await,
            None => PeerResponse {
                body: Some(peer_response::Body::Failure("empty peer request".into())),
            },
        }
    }
}

/// Describes this file's metrics (HELP text and unit) to the recorder; called once at
/// start-up by `server`.
pub(crate) fn describe_metrics() {
    use metrics::{describe_counter, Unit};
    describe_counter!(
        "ark_prestage_chunks_total",
        "Chunks of hot objects pre-staged on this node, by result (fetched, cached, local, failed)."
    );
    describe_counter!(
        "ark_replication_bytes_received_total",
        Unit::Bytes,
        "Chunk bytes received from peers and stored."
    );
    describe_counter!(
        "ark_replication_chunks_refused_total",
        "Chunks pushed by a peer that this node refused to store."
    );
}
