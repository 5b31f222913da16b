//! openraft's network traits over the QUIC peer transport, both directions: outgoing
//! vote / append-entries / install-snapshot calls become [`PeerPool`] calls, and incoming
//! [`PeerRequest`]s are handed to the local [`ArkRaft`].
//!
//! The Raft messages are openraft's serde types, bincode-encoded inside the protobuf
//! envelope (see `proto/ark/v1/peer.proto`).

use ark_proto::v1::{peer_request, peer_response, PeerRequest, PeerResponse, RaftCodec};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::store::{decode, encode};
use super::{ArkNode, ArkRaft, NodeId, TypeConfig};
use crate::net::{NetError, PeerHandler, PeerPool};

/// Creates per-peer clients for openraft.
#[derive(Clone)]
pub struct NetworkFactory {
    pool: PeerPool,
    self_id: NodeId,
}

impl NetworkFactory {
    /// A factory dialling through `pool`.
    pub fn new(pool: PeerPool, self_id: NodeId) -> Self {
        Self { pool, self_id }
    }
}

/// openraft's client for one peer.
pub struct PeerClient {
    pool: PeerPool,
    self_id: NodeId,
    target: NodeId,
    node: ArkNode,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &ArkNode) -> Self::Network {
        PeerClient {
            pool: self.pool.clone(),
            self_id: self.self_id,
            target,
            node: node.clone(),
        }
    }
}

type RpcErr<E> = RPCError<NodeId, ArkNode, RaftError<NodeId, E>>;

impl PeerClient {
    async fn rpc<Resp, E>(
        &self,
        kind: RPCTypes,
        body: peer_request::Body,
        option: &RPCOption,
    ) -> Result<Resp, RpcErr<E>>
    where
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let req = PeerRequest {
            from: self.self_id,
            raft_codec: RaftCodec::BincodeOpenraft09 as i32,
            body: Some(body),
        };
        let timeout = option.hard_ttl();
        let started = std::time::Instant::now();
        let res = self.pool.call(self.target, &self.node.peer_addr, &req, timeout).await;
        let kind_label = match kind {
            RPCTypes::Vote => "vote",
            RPCTypes::AppendEntries => "append_entries",
            RPCTypes::InstallSnapshot => "install_snapshot",
        };
        metrics::histogram!("ark_peer_rpc_duration_seconds", "kind" => kind_label)
            .record(started.elapsed().as_secs_f64());
        let resp = match res {
            Ok(r) => r,
            Err(e) => {
                metrics::counter!("ark_peer_rpc_total", "kind" => kind_label, "result" => "error").increment(1);
                return Err(match e {
                    NetError::Unreachable { .. } => RPCError::Unreachable(Unreachable::new(&e)),
                    NetError::Timeout { .. } => RPCError::Timeout(Timeout {
                        action: kind,
                        id: self.self_id,
                        target: self.target,
                        timeout,
                    }),
                    NetError::Io { .. } => RPCError::Network(NetworkError::new(&e)),
                });
            }
        };
        metrics::counter!("ark_peer_rpc_total", "kind" => kind_label, "result" => "ok").increment(1);
        match resp.body {
            Some(peer_response::Body::Ok(b)) => decode(&b).map_err(|e| RPCError::Network(NetworkError::new(&e))),
            Some(peer_response::Body::RaftError(b)) => {
                let e: RaftError<NodeId, E> = decode(&b).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
                Err(RPCError::RemoteError(RemoteError::new_with_node(
                    self.target,
                    self.node.clone(),
                    e,
                )))
            }
            Some(peer_response::Body::Failure(msg)) => {
                Err(RPCError::Network(NetworkError::new(&std::io::Error::other(msg))))
            }
            None => Err(RPCError::Network(NetworkError::new(&std::io::Error::other(
                "empty peer response",
            )))),
            Some(_) => Err(RPCError::Network(NetworkError::new(&std::io::Error::other(
                "peer answered a Raft request with a data-plane response",
            )))),
        }
    }
}

fn enc<T: Serialize, E: std::error::Error>(v: &T) -> Result<Vec<u8>, RPCError<NodeId, ArkNode, RaftError<NodeId, E>>> {
    encode(v).map_err(|e| RPCError::Network(NetworkError::new(&e)))
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, ArkNode, RaftError<NodeId>>> {
        let b = enc(&rpc)?;
        self.rpc(RPCTypes::AppendEntries, peer_request::Body::AppendEntries(b), &option)
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, ArkNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        let b = enc(&rpc)?;
        self.rpc(
            RPCTypes::InstallSnapshot,
            peer_request::Body::InstallSnapshot(b),
            &option,
        )
        .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, ArkNode, RaftError<NodeId>>> {
        let b = enc(&rpc)?;
        self.rpc(RPCTypes::Vote, peer_request::Body::Vote(b), &option).await
    }
}

/// Serves incoming peer requests with the local Raft.
pub struct RaftPeerService {
    raft: ArkRaft,
}

impl RaftPeerService {
    /// Wraps the local Raft.
    pub fn new(raft: ArkRaft) -> Self {
        Self { raft }
    }
}

fn answer<T: Serialize, E: Serialize>(r: Result<T, E>) -> PeerResponse {
    let body = match r {
        Ok(v) => match encode(&v) {
            Ok(b) => peer_response::Body::Ok(b),
            Err(e) => peer_response::Body::Failure(format!("cannot encode response: {e}")),
        },
        Err(e) => match encode(&e) {
            Ok(b) => peer_response::Body::RaftError(b),
            Err(e) => peer_response::Body::Failure(format!("cannot encode error: {e}")),
        },
    };
    PeerResponse { body: Some(body) }
}

fn failure(msg: String) -> PeerResponse {
    PeerResponse {
        body: Some(peer_response::Body::Failure(msg)),
    }
}

impl PeerHandler for RaftPeerService {
    async fn handle(&self, req: PeerRequest) -> PeerResponse {
        if req.raft_codec != RaftCodec::BincodeOpenraft09 as i32 {
            return failure(format!("unsupported raft codec {}", req.raft_codec));
        }
        match req.body {
            Some(peer_request::Body::AppendEntries(b)) => match decode::<AppendEntriesRequest<TypeConfig>>(&b) {
                Ok(r) => answer(self.raft.append_entries(r).await),
                Err(e) => failure(format!("malformed append-entries: {e}")),
            },
            Some(peer_request::Body::Vote(b)) => match decode::<VoteRequest<NodeId>>(&b) {
                Ok(r) => answer(self.raft.vote(r).await),
                Err(e) => failure(format!("malformed vote: {e}")),
            },
            Some(peer_request::Body::InstallSnapshot(b)) => match decode::<InstallSnapshotRequest<TypeConfig>>(&b) {
                Ok(r) => answer(self.raft.install_snapshot(r).await),
                Err(e) => failure(format!("malformed install-snapshot: {e}")),
            },
            None => failure("empty peer request".into()),
            Some(_) => failure("not a Raft request".into()),
        }
    }
}
