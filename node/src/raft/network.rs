//! openraft's network traits over the QUIC peer transport, both directions: outgoing
//! vote / append-entries / install-snapshot calls become [`PeerPool`] calls, and incoming
//! [`PeerRequest`]s are handed to the local [`ArkRaft`].
//!
//! The Raft messages are openraft's serde types, encoded with `raft::codec` inside the
//! protobuf envelope (see `proto/ark/v1/peer.proto`), whose codec tag is [`RAFT_CODEC`].

use std::collections::BTreeSet;
use std::sync::Arc;

use ark_proto::v1::{peer_request, peer_response, PeerRequest, PeerResponse, RaftCodec};
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec::{decode, encode, encoded_len};
use super::elector::{serve_pre_vote, PreVoter};
use super::recovery::Recovery;
use super::{ArkNode, ArkRaft, NodeId, TypeConfig};
use crate::net::{NetError, PeerHandler, PeerPool};

/// Creates per-peer clients for openraft.
#[derive(Clone)]
pub struct NetworkFactory {
    pool: PeerPool,
    self_id: NodeId,
    append_max_bytes: u64,
    fenced: Fenced,
}

/// Set once a recovered cluster told this node that a forced recovery left it out (see
/// `force_new::fenced_ids`); `server` stops the node on it.
pub type Fenced = Arc<tokio::sync::watch::Sender<Option<String>>>;

impl NetworkFactory {
    /// A factory dialling through `pool`; AppendEntries carry at most `append_max_bytes` of
    /// entries (see [`cap_entries`]).
    pub fn new(pool: PeerPool, self_id: NodeId, append_max_bytes: u64) -> Self {
        Self {
            pool,
            self_id,
            append_max_bytes,
            fenced: Arc::new(tokio::sync::watch::channel(None).0),
        }
    }

    /// Set (with the peer's explanation) when a peer says a forced recovery left this node out.
    pub fn fenced(&self) -> Fenced {
        self.fenced.clone()
    }
}

/// openraft's client for one peer.
pub struct PeerClient {
    pool: PeerPool,
    self_id: NodeId,
    target: NodeId,
    node: ArkNode,
    append_max_bytes: u64,
    fenced: Fenced,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &ArkNode) -> Self::Network {
        PeerClient {
            pool: self.pool.clone(),
            self_id: self.self_id,
            target,
            node: node.clone(),
            append_max_bytes: self.append_max_bytes,
            fenced: self.fenced.clone(),
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
            raft_codec: RAFT_CODEC as i32,
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
                if msg.starts_with(super::force_new::FENCED_MARKER) {
                    self.fenced
                        .send_if_modified(|f| f.is_none() && f.replace(msg.clone()).is_none());
                }
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
        let mut rpc = rpc;
        let cut_at = cap_entries(&mut rpc.entries, self.append_max_bytes);
        if cut_at.is_some() {
            metrics::counter!("ark_raft_append_entries_capped_total").increment(1);
        }
        let b = enc(&rpc)?;
        let resp = self
            .rpc(RPCTypes::AppendEntries, peer_request::Body::AppendEntries(b), &option)
            .await?;
        // The follower took the prefix we sent: tell openraft how far it got, and it sends
        // the rest next.
        Ok(match (resp, cut_at) {
            (AppendEntriesResponse::Success, Some(last)) => AppendEntriesResponse::PartialSuccess(Some(last)),
            (resp, _) => resp,
        })
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

/// Drops the tail of `entries` beyond `max_bytes` of encoded size, keeping at least one
/// entry, and answers the id of the last entry kept if anything was dropped.
///
/// openraft 0.9 bounds an AppendEntries only by its number of entries, and gives it one
/// heartbeat interval to complete. A follower that answers `Success` to the prefix is then
/// reported to openraft as a `PartialSuccess` up to the last entry sent.
pub fn cap_entries(entries: &mut Vec<openraft::Entry<TypeConfig>>, max_bytes: u64) -> Option<openraft::LogId<NodeId>> {
    let mut total = 0u64;
    let mut keep = entries.len();
    for (i, e) in entries.iter().enumerate() {
        total = total.saturating_add(encoded_len(e).map_or(u64::MAX, |n| n as u64));
        if total > max_bytes && i > 0 {
            keep = i;
            break;
        }
    }
    if keep == entries.len() {
        return None;
    }
    entries.truncate(keep);
    entries.last().map(|e| e.log_id)
}

/// Serves incoming peer requests with the local Raft.
pub struct RaftPeerService {
    raft: ArkRaft,
    /// Withholds votes while the log is damaged, and heals it (see `raft::recovery`).
    recovery: Arc<Recovery>,
    /// Leader contact (touched here) and pre-vote answers (see `raft::elector`).
    pre_voter: PreVoter,
    /// This node's id and the nodes a forced recovery of this node left out, told to stop.
    me: NodeId,
    fenced: BTreeSet<NodeId>,
}

impl RaftPeerService {
    /// Wraps the local Raft of node `me`; Raft requests from `fenced` nodes (see
    /// `force_new::fenced_ids`) are answered with a failure that stops them.
    pub fn new(
        raft: ArkRaft,
        recovery: Arc<Recovery>,
        pre_voter: PreVoter,
        me: NodeId,
        fenced: BTreeSet<NodeId>,
    ) -> Self {
        Self {
            raft,
            recovery,
            pre_voter,
            me,
            fenced,
        }
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

/// The envelope's codec tag for the Raft messages this release sends and accepts.
pub const RAFT_CODEC: RaftCodec = RaftCodec::PostcardOpenraft09;

/// Why a request in another codec is refused: which one it was, which one this node speaks
/// and what the operator should do (nodes of releases before postcard send bincode).
pub fn codec_mismatch(got: i32) -> String {
    let name = RaftCodec::try_from(got).map_or_else(|_| format!("unknown ({got})"), |c| c.as_str_name().to_string());
    format!(
        "unsupported raft codec {name}: this node speaks {} only; the sender runs another Ark release, \
         upgrade every node to the same release (see docs/operations.md, 'Upgrading across the codec change')",
        RAFT_CODEC.as_str_name()
    )
}

/// Refuses a Raft request in another codec than [`RAFT_CODEC`] before its body is read.
fn check_codec(req: &PeerRequest) -> Result<(), PeerResponse> {
    if req.raft_codec == RAFT_CODEC as i32 {
        Ok(())
    } else {
        Err(failure(codec_mismatch(req.raft_codec)))
    }
}

fn failure(msg: String) -> PeerResponse {
    PeerResponse {
        body: Some(peer_response::Body::Failure(msg)),
    }
}

impl PeerHandler for RaftPeerService {
    async fn handle(&self, req: PeerRequest) -> PeerResponse {
        if self.fenced.contains(&req.from) {
            tracing::warn!(
                node = req.from,
                "a node left out by the forced recovery contacted this node; told it to stop"
            );
            return failure(super::force_new::fenced_message(self.me, req.from));
        }
        // Plain protobuf: no openraft codec involved.
        if let Some(peer_request::Body::PreVote(p)) = &req.body {
            let body = serve_pre_vote(&self.raft, &self.pre_voter, &self.recovery, req.from, p).await;
            return PeerResponse { body: Some(body) };
        }
        if let Err(refused) = check_codec(&req) {
            return refused;
        }
        match req.body {
            Some(peer_request::Body::AppendEntries(b)) => match decode::<AppendEntriesRequest<TypeConfig>>(&b) {
                Ok(r) => {
                    let heal = self.recovery.heal_target(&r);
                    let res = self.raft.append_entries(r).await;
                    if let (Some(t), Ok(resp)) = (heal, &res) {
                        self.recovery.after_append(t, resp);
                    }
                    // A leader this node accepts (a higher vote here means it does not).
                    if matches!(&res, Ok(r) if !matches!(r, AppendEntriesResponse::HigherVote(_))) {
                        self.pre_voter.contact.touch();
                    }
                    answer(res)
                }
                Err(e) => failure(format!("malformed append-entries: {e}")),
            },
            Some(peer_request::Body::Vote(b)) => match decode::<VoteRequest<NodeId>>(&b) {
                // Not an answer openraft could mistake for a vote: the candidate sees this
                // node as unreachable, which is what a node missing entries should be.
                Ok(_) if self.recovery.damaged() => failure(
                    "this node is recovering a damaged raft log and grants no vote until a leader has \
                     given it back every committed entry"
                        .into(),
                ),
                Ok(r) => {
                    let res = self.raft.vote(r).await;
                    if matches!(&res, Ok(v) if v.vote_granted) {
                        self.pre_voter.contact.touch();
                    }
                    answer(res)
                }
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

/// Describes this module's metrics (HELP text and unit) to the recorder; called once at start-up by
/// `server` (through `metrics::install`).
pub(crate) fn describe_metrics() {
    use metrics::{describe_counter, describe_histogram, Unit};
    describe_histogram!(
        "ark_peer_rpc_duration_seconds",
        Unit::Seconds,
        "Duration of Raft RPCs to peers, by kind (vote, append_entries, install_snapshot)."
    );
    describe_counter!(
        "ark_peer_rpc_total",
        "Raft RPCs to peers, by kind and result (ok, error)."
    );
    describe_counter!(
        "ark_raft_append_entries_capped_total",
        "AppendEntries RPCs cut to raft.append_entries_max_bytes (the rest follows in the next RPC)."
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    fn blank(index: u64) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(3, 2), index),
            payload: EntryPayload::Blank,
        }
    }

    fn refusal(raft_codec: i32) -> Option<String> {
        let req = PeerRequest {
            from: 2,
            raft_codec,
            body: Some(peer_request::Body::Vote(encode(&1u64).unwrap())),
        };
        match check_codec(&req) {
            Ok(()) => None,
            Err(PeerResponse {
                body: Some(peer_response::Body::Failure(msg)),
            }) => Some(msg),
            Err(other) => panic!("refused without a failure message: {other:?}"),
        }
    }

    #[test]
    fn a_request_in_another_codec_is_refused_naming_both() {
        assert_eq!(refusal(RaftCodec::PostcardOpenraft09 as i32), None);
        // A node of a release before postcard.
        let old = refusal(RaftCodec::BincodeOpenraft09 as i32).unwrap();
        assert!(old.contains("RAFT_CODEC_BINCODE_OPENRAFT_09"), "{old}");
        assert!(old.contains("speaks RAFT_CODEC_POSTCARD_OPENRAFT_09"), "{old}");
        assert!(old.contains("docs/operations.md"), "{old}");
        // No codec, or one from a release this one does not know.
        assert!(refusal(0).unwrap().contains("RAFT_CODEC_UNSPECIFIED"));
        assert!(refusal(9).unwrap().contains("unknown (9)"));
    }

    #[test]
    fn entries_are_capped_by_encoded_size_but_never_to_nothing() {
        let one = encoded_len(&blank(1)).unwrap() as u64;
        let mut entries: Vec<_> = (1..=10).map(blank).collect();
        // Under the cap: untouched.
        assert_eq!(cap_entries(&mut entries, one * 10), None);
        assert_eq!(entries.len(), 10);
        // Two and a half entries' worth: the first two go, and openraft learns where they end.
        let last = cap_entries(&mut entries, one * 5 / 2);
        assert_eq!(entries.len(), 2);
        assert_eq!(last, Some(blank(2).log_id));
        // A cap below one entry still sends one, or the follower would never progress.
        let mut entries: Vec<_> = (7..=9).map(blank).collect();
        assert_eq!(cap_entries(&mut entries, 1), Some(blank(7).log_id));
        assert_eq!(entries.len(), 1);
        // Nothing to send: nothing to cap.
        let mut none: Vec<Entry<TypeConfig>> = Vec::new();
        assert_eq!(cap_entries(&mut none, 1), None);
    }
}
