//! `ark.v1.Kv`: put, get, delete and list of small linearizable values.

use std::sync::Arc;
use std::time::Instant;

use ark_proto::v1::kv_server::Kv;
use ark_proto::v1::{
    DeleteRequest, DeleteResponse, GetRequest, GetResponse, KeyValue, ListRequest, ListResponse, PutRequest,
    PutResponse,
};
use tonic::{Request, Response, Status};

use super::auth::Authz;
use super::check_request_id;
use super::limits::Limits;
use super::paging;
use crate::config::{KV_KEY_BYTES_MAX, KV_VALUE_BYTES_MAX};
use crate::raft::auth::Need;
use crate::raft::error::ConsensusError;
use crate::raft::fence::ReadFence;
use crate::raft::proposer::Proposer;
use crate::raft::state_machine::KvReader;
use crate::raft::{Command, Op, OpResult};

/// Bytes of keys and values after which a List page ends early (under the 16 MiB message
/// limit whatever `limits.list_page_max` is: a value may be 64 KiB).
const LIST_PAGE_BYTES_MAX: usize = 4 * 1024 * 1024;

/// The KV service.
pub struct KvService {
    authz: Authz,
    reader: KvReader,
    proposer: Proposer,
    fence: Arc<ReadFence>,
    limits: Arc<Limits>,
}

impl KvService {
    /// A service over the node's Raft and state machine.
    pub fn new(authz: Authz, reader: KvReader, proposer: Proposer, fence: Arc<ReadFence>, limits: Arc<Limits>) -> Self {
        Self {
            authz,
            reader,
            proposer,
            fence,
            limits,
        }
    }

    async fn write(&self, op: &'static str, request_id: Vec<u8>, command: Command) -> Result<OpResult, Status> {
        check_request_id(&request_id)?;
        let started = Instant::now();
        let res = self.proposer.propose(Op { request_id, command }).await;
        let result = res.as_ref().map_or_else(outcome, |_| "ok");
        metrics::counter!("ark_kv_requests_total", "op" => op, "result" => result).increment(1);
        metrics::histogram!("ark_kv_request_duration_seconds", "op" => op).record(started.elapsed().as_secs_f64());
        Ok(res?)
    }
}

/// The `result` label of a request that failed with `e`.
fn outcome(e: &ConsensusError) -> &'static str {
    match e {
        ConsensusError::NotLeader { leader_id: Some(_), .. } => "not_leader",
        _ => "error",
    }
}

fn check_key(key: &str) -> Result<(), Status> {
    if key.is_empty() {
        return Err(Status::invalid_argument("key must not be empty"));
    }
    if key.len() > KV_KEY_BYTES_MAX {
        return Err(Status::invalid_argument(format!(
            "key is {} bytes; the limit is {KV_KEY_BYTES_MAX}",
            key.len()
        )));
    }
    Ok(())
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let key = &request.get_ref().key;
        self.authz.require(&request, "Kv/Put", Need::KvWrite { key })?;
        let r = request.into_inner();
        check_key(&r.key)?;
        if r.value.len() > KV_VALUE_BYTES_MAX {
            return Err(Status::invalid_argument(format!(
                "value is {} bytes; the limit is {KV_VALUE_BYTES_MAX} (store larger data as an object)",
                r.value.len()
            )));
        }
        let resp = self
            .write(
                "put",
                r.request_id,
                Command::Put {
                    key: r.key,
                    value: r.value,
                },
            )
            .await?;
        Ok(Response::new(PutResponse {
            revision: resp.revision,
            duplicate: resp.duplicate,
        }))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let key = &request.get_ref().key;
        self.authz.require(&request, "Kv/Get", Need::KvRead { key })?;
        let r = request.into_inner();
        check_key(&r.key)?;
        if !r.stale {
            if let Err(e) = self.fence.linearize().await {
                metrics::counter!("ark_kv_requests_total", "op" => "get", "result" => outcome(&e)).increment(1);
                return Err(e.into());
            }
        }
        metrics::counter!("ark_kv_requests_total", "op" => "get", "result" => "ok").increment(1);
        Ok(Response::new(match self.reader.get(&r.key).map_err(internal)? {
            Some(v) => GetResponse {
                found: true,
                value: v.value,
                revision: v.revision,
            },
            None => GetResponse::default(),
        }))
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let key = &request.get_ref().key;
        self.authz.require(&request, "Kv/Delete", Need::KvWrite { key })?;
        let r = request.into_inner();
        check_key(&r.key)?;
        let resp = self
            .write("delete", r.request_id, Command::Delete { key: r.key })
            .await?;
        Ok(Response::new(DeleteResponse {
            revision: resp.revision,
            existed: resp.existed,
            duplicate: resp.duplicate,
        }))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        let key = &request.get_ref().prefix;
        self.authz.require(&request, "Kv/List", Need::KvRead { key })?;
        let r = request.into_inner();
        if !r.stale {
            self.fence.linearize().await?;
        }
        let after = paging::kv_after(&r.cursor, &r.prefix)?;
        let limit = paging::page_size(r.limit, self.limits.config().list_page_max);
        let (mut items, mut truncated) = self
            .reader
            .list_after(&r.prefix, after.as_deref(), limit)
            .map_err(internal)?;
        let mut bytes = 0;
        if let Some(end) = items.iter().position(|(k, v)| {
            bytes += k.len() + if r.keys_only { 0 } else { v.value.len() };
            bytes > LIST_PAGE_BYTES_MAX
        }) {
            let keep = end.max(1);
            if keep < items.len() {
                items.truncate(keep);
                truncated = true;
            }
        }
        let next_cursor = match items.last() {
            Some((k, _)) if truncated => paging::kv_cursor(k),
            _ => String::new(),
        };
        Ok(Response::new(ListResponse {
            items: items
                .into_iter()
                .map(|(key, v)| KeyValue {
                    key,
                    value: if r.keys_only { Vec::new() } else { v.value },
                    revision: v.revision,
                })
                .collect(),
            truncated,
            next_cursor,
        }))
    }
}

/// Describes this module's metrics (HELP text and unit) to the recorder; called once at start-up by
/// `server` (through `metrics::install`).
pub(crate) fn describe_metrics() {
    use metrics::{describe_counter, describe_histogram, Unit};
    describe_counter!(
        "ark_kv_requests_total",
        "KV requests, by op and result (ok, not_leader, error); a read counts once answered or once its read point could not be fixed."
    );
    describe_histogram!(
        "ark_kv_request_duration_seconds",
        Unit::Seconds,
        "Time from receiving a KV write to its commit and apply, by op."
    );
}
