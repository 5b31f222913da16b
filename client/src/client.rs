//! The SDK: finds the leader among the configured endpoints, follows leader hints, retries
//! with backoff under one deadline, and reuses a write's request id on every retry so that
//! the cluster applies it once.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ark_proto::v1::cluster_client::ClusterClient;
use ark_proto::v1::kv_client::KvClient;
use ark_proto::v1::{
    AddLearnerRequest, DeleteRequest, GetRequest, ListRequest, PromoteRequest, PutRequest, RemoveRequest,
    StatusRequest, TelemetryRequest, TransferLeaderRequest,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Status;

use crate::config::ClientConfig;
use crate::error::{classify, ClientError, Failure};
use crate::retry::{Attempts, RetryPolicy};
use crate::types::{ClusterStatus, ClusterTelemetry, LeaderTransfer, Membership, NodeSpec};

/// DNS name every node certificate carries.
const NODE_SERVER_NAME: &str = "ark-node";
pub(crate) const LEADER_ADDR_HEADER: &str = "ark-leader-addr";
/// Metadata key a witness voter sets on its refusals (`ark-node-role: witness`).
const NODE_ROLE_HEADER: &str = "ark-node-role";
/// HTTP/2 pings on stream connections: a peer that does not answer one within the timeout
/// is dead, and the transfer on it fails (and may be retried elsewhere).
const STREAM_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const STREAM_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// HTTP/2 receive window per stream on stream connections (twice that per connection):
/// bounds the bytes in flight per transfer while keeping a high-latency link busy.
const STREAM_WINDOW_BYTES: u32 = 4 * 1024 * 1024;

/// A value read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    /// The bytes.
    pub value: Vec<u8>,
    /// Log index of the write that produced it.
    pub revision: u64,
}

/// How a read is served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Read the answering node's replica without confirming leadership: may miss the latest
    /// writes, but works in a site cut off from the majority. Default: linearizable.
    pub stale: bool,
}

impl ReadOptions {
    /// A linearizable read (the default).
    pub const LINEARIZABLE: ReadOptions = ReadOptions { stale: false };
    /// A read of whichever node answers first, without confirming leadership.
    pub const STALE: ReadOptions = ReadOptions { stale: true };
}

/// What [`ArkClient::list`] and [`ArkClient::list_page`] return.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListKeysOptions {
    /// [`ArkClient::list`]: at most this many keys in all, 0 for every key (it walks every
    /// page). [`ArkClient::list_page`]: the page size, 0 for the node's maximum
    /// (`limits.list_page_max`).
    pub limit: u32,
    /// Served like a [`ReadOptions::stale`] read (each page on its own).
    pub stale: bool,
}

/// One page of a key listing ([`ArkClient::list_page`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPage {
    /// Keys with their values, in key order.
    pub items: Vec<(String, Value)>,
    /// More keys match than this page holds.
    pub more: bool,
    /// Pass it to the next [`ArkClient::list_page`] to go on; empty when the listing is done
    /// (or the node is too old to page: then `more` tells whether it cut the listing short).
    pub next_cursor: String,
}

/// How [`ArkClient::add_learner`] answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddLearnerOptions {
    /// Answer only once the learner has caught up with the log (or installed a snapshot).
    pub wait_caught_up: bool,
}

/// The cursor of a listing's next page, refused when it does not move on (a node that
/// answers the same page again would make the walk endless).
pub(crate) fn next_cursor(previous: String, next: String) -> Result<String, ClientError> {
    if next == previous {
        return Err(ClientError::Server(format!(
            "the node answered the listing page after cursor {previous:?} with the same cursor"
        )));
    }
    Ok(next)
}

/// A connection to an Ark cluster. Cheap to clone; clones share connections and the leader.
#[derive(Clone)]
pub struct ArkClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ArkClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArkClient")
            .field("endpoints", &self.inner.endpoints)
            .finish()
    }
}

struct Inner {
    tls: ClientTlsConfig,
    endpoints: Vec<String>,
    channels: Mutex<HashMap<String, Channel>>,
    leader: Mutex<Option<String>>,
    next: Mutex<usize>,
    /// Retries of leader calls and small reads (deadline: the operation timeout).
    calls: RetryPolicy,
    rpc_timeout: Duration,
    /// Connections for object transfers and long reports: no per-request deadline (a
    /// transfer may run for hours), HTTP/2 keep-alive instead to notice a dead peer.
    stream_channels: Mutex<HashMap<String, Channel>>,
    /// Retries of object transfers and reports; its deadline is the overall limit of one
    /// transfer (`None` = only the progress limits apply).
    transfers: RetryPolicy,
    /// Endpoints that refused a call as witness voters (they hold no data): chosen for data
    /// calls only when no other endpoint is left.
    witnesses: Mutex<Vec<String>>,
}

/// A fresh request id: the time in microseconds (big-endian), then 8 random bytes. Unique
/// as a random id is; time-ordered so that the state machine's request-id table takes each
/// The error of a call made once to one node (no retry, no leader hints).
pub(crate) fn one_attempt_error(addr: &str, st: &Status) -> ClientError {
    match classify(addr, st) {
        Failure::Fatal(e) => e,
        Failure::Transient(last) => ClientError::Unavailable {
            attempts: 1,
            elapsed_ms: 0,
            last,
        },
    }
}

/// batch of writes into its newest pages instead of one random B-tree page per write.
pub fn new_request_id() -> Vec<u8> {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let mut id = Vec::with_capacity(16);
    id.extend_from_slice(&micros.to_be_bytes());
    id.extend_from_slice(&rand::random::<[u8; 8]>());
    id
}

impl ArkClient {
    /// Builds a client from a config. No connection is made until the first call.
    pub fn new(cfg: &ClientConfig) -> Result<Self, ClientError> {
        let read = |p: &std::path::Path, what: &str| {
            std::fs::read(p).map_err(|e| ClientError::Config(format!("cannot read {what} {}: {e}", p.display())))
        };
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&cfg.ca, "CA certificate")?))
            .identity(Identity::from_pem(
                read(&cfg.cert, "client certificate")?,
                read(&cfg.key, "client key")?,
            ))
            .domain_name(NODE_SERVER_NAME);
        if cfg.endpoints.is_empty() {
            return Err(ClientError::Config("no endpoints configured".into()));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                tls,
                endpoints: cfg.endpoints.clone(),
                channels: Mutex::default(),
                leader: Mutex::default(),
                next: Mutex::new(0),
                calls: RetryPolicy::calls(Duration::from_millis(cfg.op_timeout_ms)),
                rpc_timeout: Duration::from_millis(cfg.rpc_timeout_ms),
                stream_channels: Mutex::default(),
                transfers: RetryPolicy::transfers(None),
                witnesses: Mutex::default(),
            }),
        })
    }

    /// A new client (own connections, own leader cache) for other endpoints; leader hints
    /// are still followed.
    pub fn with_endpoints(&self, endpoints: Vec<String>) -> Self {
        self.rebuild(endpoints, self.inner.calls.clone(), self.inner.transfers.clone())
    }

    /// A new client whose operations give up after `t`, retries included.
    pub fn with_op_timeout(&self, t: Duration) -> Self {
        let calls = RetryPolicy {
            deadline: Some(t),
            ..self.inner.calls.clone()
        };
        self.rebuild(self.inner.endpoints.clone(), calls, self.inner.transfers.clone())
    }

    /// A new client whose object transfers (put, get, restore) and reports (verify, scrub)
    /// give up after `t`, retries included. `None` (the default) sets no overall limit: a
    /// transfer may take as long as its size needs, and only stalls end it.
    pub fn with_object_timeout(&self, t: Option<Duration>) -> Self {
        let transfers = RetryPolicy {
            deadline: t,
            ..self.inner.transfers.clone()
        };
        self.rebuild(self.inner.endpoints.clone(), self.inner.calls.clone(), transfers)
    }

    /// A new client whose leader calls and small reads retry under `policy` (default:
    /// [`RetryPolicy::calls`] with the config's `op_timeout_ms`).
    pub fn with_call_retry(&self, policy: RetryPolicy) -> Self {
        self.rebuild(self.inner.endpoints.clone(), policy, self.inner.transfers.clone())
    }

    /// A new client whose object transfers and reports retry under `policy` (default:
    /// [`RetryPolicy::transfers`] without a deadline).
    pub fn with_transfer_retry(&self, policy: RetryPolicy) -> Self {
        self.rebuild(self.inner.endpoints.clone(), self.inner.calls.clone(), policy)
    }

    /// The overall limit of object transfers and reports, if any.
    pub fn object_timeout(&self) -> Option<Duration> {
        self.inner.transfers.deadline
    }

    /// The retry policy of object transfers and reports.
    pub(crate) fn transfer_retry(&self) -> &RetryPolicy {
        &self.inner.transfers
    }

    /// The endpoints this client talks to, in order.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    fn rebuild(&self, endpoints: Vec<String>, calls: RetryPolicy, transfers: RetryPolicy) -> Self {
        Self {
            inner: Arc::new(Inner {
                tls: self.inner.tls.clone(),
                endpoints,
                channels: Mutex::default(),
                leader: Mutex::default(),
                next: Mutex::new(0),
                calls,
                rpc_timeout: self.inner.rpc_timeout,
                stream_channels: Mutex::default(),
                transfers,
                witnesses: Mutex::default(),
            }),
        }
    }

    pub(crate) fn channel(&self, addr: &str) -> Result<Channel, ClientError> {
        let mut chans = self
            .inner
            .channels
            .lock()
            .map_err(|_| ClientError::Config("lock poisoned".into()))?;
        if let Some(c) = chans.get(addr) {
            return Ok(c.clone());
        }
        let ep = self.endpoint(addr)?.timeout(self.inner.rpc_timeout);
        let ch = ep.connect_lazy();
        chans.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// The TLS endpoint of `addr` that both kinds of connection start from.
    fn endpoint(&self, addr: &str) -> Result<Endpoint, ClientError> {
        Ok(Endpoint::from_shared(format!("https://{addr}"))
            .map_err(|e| ClientError::Config(format!("bad endpoint {addr}: {e}")))?
            .tls_config(self.inner.tls.clone())
            .map_err(|e| ClientError::Config(format!("TLS config: {e}")))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true))
    }

    /// A connection to `addr` for long streams: connected now (so that an unreachable node
    /// fails before any data is read from an upload's source), no per-request deadline,
    /// HTTP/2 keep-alive to detect a dead peer, larger flow-control windows for throughput.
    pub(crate) async fn stream_channel(&self, addr: &str) -> Result<Channel, ClientError> {
        if let Some(c) = self
            .inner
            .stream_channels
            .lock()
            .ok()
            .and_then(|m| m.get(addr).cloned())
        {
            return Ok(c);
        }
        let ep = self
            .endpoint(addr)?
            .http2_keep_alive_interval(STREAM_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(STREAM_KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true)
            .initial_stream_window_size(Some(STREAM_WINDOW_BYTES))
            .initial_connection_window_size(Some(2 * STREAM_WINDOW_BYTES));
        let ch = ep.connect().await.map_err(|e| ClientError::Unavailable {
            attempts: 1,
            elapsed_ms: 0,
            last: format!("{addr}: cannot connect: {}", error_chain(&e)),
        })?;
        if let Ok(mut m) = self.inner.stream_channels.lock() {
            m.insert(addr.to_string(), ch.clone());
        }
        Ok(ch)
    }

    /// Drops the cached stream connection to `addr`, so that the next use reconnects.
    pub(crate) fn forget_stream_channel(&self, addr: &str) {
        if let Ok(mut c) = self.inner.stream_channels.lock() {
            c.remove(addr);
        }
    }

    fn pick(&self) -> String {
        self.pick_avoiding(&[])
    }

    /// Remembers `addr` as a witness voter when `st` is a witness's refusal.
    pub(crate) fn note_role(&self, addr: &str, st: &Status) {
        let witness = st
            .metadata()
            .get(NODE_ROLE_HEADER)
            .is_some_and(|v| v.as_bytes() == b"witness");
        if witness {
            let mut w = self.inner.witnesses.lock().unwrap_or_else(|p| p.into_inner());
            if !w.iter().any(|a| a == addr) {
                w.push(addr.to_string());
            }
        }
    }

    /// [`classify`], after noting a witness's refusal ([`ArkClient::note_role`]).
    pub(crate) fn classify_noting(&self, addr: &str, st: &Status) -> Failure {
        self.note_role(addr, st);
        classify(addr, st)
    }

    /// The endpoints to use for data calls, in order: every endpoint not known to be a
    /// witness, then the witnesses (so that a client with only a witness left still gets
    /// its refusal, which names the leader).
    pub(crate) fn data_endpoints(&self) -> Vec<String> {
        let w = self.inner.witnesses.lock().unwrap_or_else(|p| p.into_inner());
        let (mut data, wit): (Vec<String>, Vec<String>) =
            self.inner.endpoints.iter().cloned().partition(|a| !w.contains(a));
        data.extend(wit);
        data
    }

    /// The known leader, else the next endpoint in turn, skipping `avoid` and known witnesses
    /// while others remain.
    fn pick_avoiding(&self, avoid: &[String]) -> String {
        let witnesses = self.inner.witnesses.lock().map(|w| w.clone()).unwrap_or_default();
        let mut avoid_all: Vec<String> = avoid.to_vec();
        avoid_all.extend(witnesses);
        if avoid_all.len() > avoid.len() && self.inner.endpoints.iter().any(|e| !avoid_all.contains(e)) {
            return self.pick_avoiding_exactly(&avoid_all);
        }
        self.pick_avoiding_exactly(avoid)
    }

    fn pick_avoiding_exactly(&self, avoid: &[String]) -> String {
        if let Ok(l) = self.inner.leader.lock() {
            if let Some(a) = l.as_ref().filter(|a| !avoid.contains(a)) {
                return a.clone();
            }
        }
        let mut n = self.inner.next.lock().unwrap_or_else(|p| p.into_inner());
        let eps = &self.inner.endpoints;
        for _ in 0..eps.len() {
            let a = &eps[*n % eps.len()];
            *n += 1;
            if !avoid.contains(a) {
                return a.clone();
            }
        }
        let a = eps[*n % eps.len()].clone();
        *n += 1;
        a
    }

    fn set_leader(&self, addr: Option<String>) {
        if let Ok(mut l) = self.inner.leader.lock() {
            *l = addr;
        }
    }

    fn forget_channel(&self, addr: &str) {
        if let Ok(mut c) = self.inner.channels.lock() {
            c.remove(addr);
        }
    }

    /// Runs `f` against the leader, following hints and retrying transient failures under
    /// the call retry policy.
    pub(crate) async fn call<T, F, Fut>(&self, mut f: F) -> Result<T, ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut budget = Attempts::start(&self.inner.calls);
        let mut last;
        let mut target = self.pick();
        // Nodes that did not answer during this operation: a hint pointing at one of them is
        // stale (a paused or dead leader that the others have not yet replaced), so it is
        // not followed; the other endpoints are tried until one of them leads.
        let mut silent: Vec<String> = Vec::new();
        loop {
            budget.attempt();
            let ch = self.channel(&target)?;
            let res = tokio::time::timeout(self.inner.rpc_timeout, f(ch)).await;
            let mut hinted = false;
            match res {
                Ok(Ok(v)) => {
                    self.set_leader(Some(target));
                    return Ok(v);
                }
                Ok(Err(st)) => match self.classify_noting(&target, &st) {
                    Failure::Fatal(e) => return Err(e),
                    Failure::Transient(m) => {
                        last = m;
                        let hint = st
                            .metadata()
                            .get(LEADER_ADDR_HEADER)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_string);
                        match hint {
                            Some(h) if h != target && !silent.contains(&h) => {
                                target = h.clone();
                                self.set_leader(Some(h));
                                hinted = true;
                            }
                            _ => {
                                if st.code() != tonic::Code::Unavailable || st.message().contains("transport") {
                                    self.forget_channel(&target);
                                }
                                self.set_leader(None);
                                target = self.pick_avoiding(&silent);
                            }
                        }
                    }
                },
                Err(_) => {
                    last = format!("{target}: no answer within {:?}", self.inner.rpc_timeout);
                    self.forget_channel(&target);
                    self.set_leader(None);
                    if silent.len() < 16 && !silent.contains(&target) {
                        silent.push(target.clone());
                    }
                    target = self.pick_avoiding(&silent);
                }
            }
            if budget.exhausted() {
                return Err(budget.give_up(last));
            }
            // A hint names the leader: go there at once.
            if !hinted {
                budget.wait().await;
            }
        }
    }

    /// Writes `value` at `key`; returns the revision.
    pub async fn put(&self, key: &str, value: &[u8]) -> Result<u64, ClientError> {
        let rid = new_request_id();
        self.put_with_id(key, value, rid).await
    }

    /// Writes with a caller-chosen request id (to retry a write across client restarts).
    pub async fn put_with_id(&self, key: &str, value: &[u8], request_id: Vec<u8>) -> Result<u64, ClientError> {
        let req = PutRequest {
            key: key.to_string(),
            value: value.to_vec(),
            request_id,
        };
        let r = self
            .call(|ch| {
                let req = req.clone();
                async move { KvClient::new(ch).put(req).await }
            })
            .await?;
        Ok(r.into_inner().revision)
    }

    /// Reads `key`: linearizable unless `opts` asks for a stale read.
    pub async fn get(&self, key: &str, opts: &ReadOptions) -> Result<Option<Value>, ClientError> {
        let stale = opts.stale;
        let req = GetRequest {
            key: key.to_string(),
            stale,
        };
        let r = if stale {
            // A stale read is served by whichever endpoint answers first in the list.
            self.call_any(|ch| {
                let req = req.clone();
                async move { KvClient::new(ch).get(req).await }
            })
            .await?
        } else {
            self.call(|ch| {
                let req = req.clone();
                async move { KvClient::new(ch).get(req).await }
            })
            .await?
        };
        let r = r.into_inner();
        Ok(r.found.then_some(Value {
            value: r.value,
            revision: r.revision,
        }))
    }

    /// Deletes `key`; returns whether it existed.
    pub async fn delete(&self, key: &str) -> Result<bool, ClientError> {
        let req = DeleteRequest {
            key: key.to_string(),
            request_id: new_request_id(),
        };
        let r = self
            .call(|ch| {
                let req = req.clone();
                async move { KvClient::new(ch).delete(req).await }
            })
            .await?;
        Ok(r.into_inner().existed)
    }

    /// Lists keys under `prefix` with their values, in key order, walking every page up to
    /// `opts.limit` keys (0: all of them); the flag tells whether more matched than were
    /// returned. Each page is a read of its own: a key present during the whole walk is
    /// listed exactly once.
    pub async fn list(
        &self,
        prefix: &str,
        opts: &ListKeysOptions,
    ) -> Result<(Vec<(String, Value)>, bool), ClientError> {
        let mut out = Vec::new();
        let mut cursor = String::new();
        loop {
            let left = opts.limit.saturating_sub(out.len() as u32);
            let page_opts = ListKeysOptions { limit: left, ..*opts };
            let page = self.list_page(prefix, &page_opts, &cursor).await?;
            out.extend(page.items);
            let limited = opts.limit != 0 && out.len() >= opts.limit as usize;
            if page.next_cursor.is_empty() || limited {
                return Ok((out, page.more));
            }
            cursor = next_cursor(cursor, page.next_cursor)?;
        }
    }

    /// One page of keys under `prefix` (`opts.limit` is the page size), from `cursor`: empty
    /// for the first page, then the previous page's [`KeyPage::next_cursor`].
    pub async fn list_page(&self, prefix: &str, opts: &ListKeysOptions, cursor: &str) -> Result<KeyPage, ClientError> {
        let ListKeysOptions { limit, stale } = *opts;
        let req = ListRequest {
            prefix: prefix.to_string(),
            stale,
            limit,
            keys_only: false,
            cursor: cursor.to_string(),
        };
        let fut = |ch: Channel| {
            let req = req.clone();
            async move { KvClient::new(ch).list(req).await }
        };
        let r = if stale {
            self.call_any(fut).await?
        } else {
            self.call(fut).await?
        }
        .into_inner();
        Ok(KeyPage {
            items: r
                .items
                .into_iter()
                .map(|kv| {
                    (
                        kv.key,
                        Value {
                            value: kv.value,
                            revision: kv.revision,
                        },
                    )
                })
                .collect(),
            more: r.truncated,
            next_cursor: r.next_cursor,
        })
    }

    /// Status as the leader sees it when one is reachable, else as the first node that
    /// answers sees it.
    pub async fn status(&self) -> Result<ClusterStatus, ClientError> {
        let first = ClusterStatus::from(
            self.call_any(|ch| async move { ClusterClient::new(ch).status(StatusRequest {}).await })
                .await?
                .into_inner(),
        );
        let Some(leader) = first.leader_id else {
            return Ok(first);
        };
        if leader == first.node_id {
            return Ok(first);
        }
        let Some(addr) = first
            .nodes
            .iter()
            .find(|n| n.id == leader)
            .map(|n| n.client_addr.clone())
        else {
            return Ok(first);
        };
        Ok(self.status_of(&addr).await.unwrap_or(first))
    }

    /// Status as one specific node sees it.
    pub async fn status_of(&self, addr: &str) -> Result<ClusterStatus, ClientError> {
        let ch = self.channel(addr)?;
        match tokio::time::timeout(self.inner.rpc_timeout, ClusterClient::new(ch).status(StatusRequest {})).await {
            Ok(Ok(r)) => Ok(r.into_inner().into()),
            Ok(Err(st)) => Err(one_attempt_error(addr, &st)),
            Err(_) => Err(ClientError::Unavailable {
                attempts: 1,
                elapsed_ms: self.inner.rpc_timeout.as_millis() as u64,
                last: format!("{addr}: no answer"),
            }),
        }
    }

    /// The telemetry the leader holds: per node, the latest point and window length of each
    /// series. Follows leader hints like a write.
    pub async fn telemetry(&self) -> Result<ClusterTelemetry, ClientError> {
        Ok(self
            .call(|ch| async move { ClusterClient::new(ch).telemetry(TelemetryRequest {}).await })
            .await?
            .into_inner()
            .into())
    }

    /// Adds a learner; see [`AddLearnerOptions`] for when it answers.
    pub async fn add_learner(&self, node: NodeSpec, opts: &AddLearnerOptions) -> Result<Membership, ClientError> {
        let req = AddLearnerRequest {
            node: Some(node.into()),
            wait_caught_up: opts.wait_caught_up,
        };
        Ok(self
            .call(|ch| {
                let req = req.clone();
                async move { ClusterClient::new(ch).add_learner(req).await }
            })
            .await?
            .into_inner()
            .into())
    }

    /// Promotes a learner to voter.
    pub async fn promote(&self, id: u64) -> Result<Membership, ClientError> {
        Ok(self
            .call(|ch| async move { ClusterClient::new(ch).promote(PromoteRequest { id }).await })
            .await?
            .into_inner()
            .into())
    }

    /// Removes a node from the cluster.
    pub async fn remove(&self, id: u64) -> Result<Membership, ClientError> {
        Ok(self
            .call(|ch| async move { ClusterClient::new(ch).remove(RemoveRequest { id }).await })
            .await?
            .into_inner()
            .into())
    }

    /// Hands the leadership over to voter `to`, or to the most caught-up voter when `None`
    /// (a planned hand-over before restarting the leader's node or site). The leader holds
    /// new writes while the target catches up and campaigns, which usually takes a few
    /// round trips and at most about three election timeouts; held writes then go to the new
    /// leader, so callers see them take longer, not fail.
    ///
    /// Sent once, to the leader, and never retried by the SDK: a retry could move the
    /// leadership twice. Naming a node that already leads answers at once.
    pub async fn transfer_leader(&self, to: Option<u64>) -> Result<LeaderTransfer, ClientError> {
        let status = self.status().await?;
        let leader = status.leader_id.ok_or_else(|| ClientError::Unavailable {
            attempts: 1,
            elapsed_ms: 0,
            last: "no leader is known right now (election in progress); retry shortly".into(),
        })?;
        if to == Some(leader) {
            return Ok(LeaderTransfer {
                leader,
                term: status.term,
                took_ms: 0,
            });
        }
        let addr = status
            .nodes
            .iter()
            .find(|n| n.id == leader)
            .map(|n| n.client_addr.clone())
            .ok_or_else(|| ClientError::Unavailable {
                attempts: 1,
                elapsed_ms: 0,
                last: format!("leader {leader} has no client address in the status"),
            })?;
        // The hand-over may take several election timeouts: longer than one attempt.
        let wait = (self.inner.rpc_timeout * 4).max(Duration::from_secs(30));
        let ch = self.endpoint(&addr)?.timeout(wait).connect_lazy();
        let req = TransferLeaderRequest { to: to.unwrap_or(0) };
        match tokio::time::timeout(wait, ClusterClient::new(ch).transfer_leader(req)).await {
            Ok(Ok(r)) => {
                let t: LeaderTransfer = r.into_inner().into();
                self.set_leader(None);
                Ok(t)
            }
            Ok(Err(st)) => Err(one_attempt_error(&addr, &st)),
            Err(_) => Err(ClientError::Unavailable {
                attempts: 1,
                elapsed_ms: wait.as_millis() as u64,
                last: format!("{addr}: no answer to the hand-over within {wait:?}"),
            }),
        }
    }

    /// Like `call`, but any node's answer will do (stale reads, status): tries endpoints in
    /// order and never follows leader hints. An error about the answering node alone (a
    /// server error, a full disk) moves on to the next endpoint; one about the request ends
    /// the call.
    pub(crate) async fn call_any<T, F, Fut>(&self, mut f: F) -> Result<T, ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut budget = Attempts::start(&self.inner.calls);
        let mut last = String::new();
        loop {
            for addr in &self.data_endpoints() {
                budget.attempt();
                let ch = self.channel(addr)?;
                match tokio::time::timeout(self.inner.rpc_timeout, f(ch)).await {
                    Ok(Ok(v)) => return Ok(v),
                    Ok(Err(st)) => match self.classify_noting(addr, &st) {
                        Failure::Fatal(e) if !e.is_node_local() => return Err(e),
                        Failure::Fatal(e) => {
                            self.forget_channel(addr);
                            last = e.to_string();
                        }
                        Failure::Transient(m) => {
                            self.forget_channel(addr);
                            last = m;
                        }
                    },
                    Err(_) => {
                        self.forget_channel(addr);
                        last = format!("{addr}: no answer within {:?}", self.inner.rpc_timeout);
                    }
                }
            }
            if budget.exhausted() {
                return Err(budget.give_up(last));
            }
            budget.wait().await;
        }
    }
}

/// An error with its whole source chain on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(e) = src {
        s.push_str(&format!(": {e}"));
        src = e.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_distinct_sixteen_bytes_and_time_ordered() {
        let micros = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros() as u64
        };
        let before = micros();
        let a = new_request_id();
        let after = micros();
        let b = new_request_id();
        assert_eq!(a.len(), 16);
        let stamp = u64::from_be_bytes(a[..8].try_into().unwrap());
        assert!(
            (before..=after).contains(&stamp),
            "the first 8 bytes are the time in microseconds: {stamp} not in {before}..={after}"
        );
        assert_ne!(
            a, b,
            "two ids in the same microsecond still differ in their random half"
        );
        std::thread::sleep(Duration::from_millis(2));
        let c = new_request_id();
        assert!(a[..8] < c[..8], "a later id sorts after an earlier one");
    }
}
