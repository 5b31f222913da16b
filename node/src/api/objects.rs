//! The `ark.v1.Objects` service: namespaces, streamed object puts and gets, listing,
//! deletion, verification and scrub.
//!
//! Put path: the request stream is validated here and fed to the data plane's one upload
//! pipeline ([`crate::replicate::upload`]), which chunks, stores, pushes and checks; the
//! manifest it hands back is committed through consensus. Reads go through the data
//! plane's verified chunk reads. Owns validation and status codes only.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ark_proto::v1::objects_server::Objects;
use ark_proto::v1::{
    get_object_response, put_object_request, ChunkState, CreateNamespaceRequest, DeleteNamespaceRequest,
    DeleteNamespaceResponse, DeleteObjectRequest, DeleteObjectResponse, DurabilityMode, GetObjectRequest,
    GetObjectResponse, KnownChunk, ListNamespacesRequest, ListNamespacesResponse, ListObjectsRequest,
    ListObjectsResponse, Namespace, NamespacePolicy, NamespaceResponse, NodeScrub, ObjectChunksRequest,
    ObjectChunksResponse, ObjectInfo, ObjectReport, PutObjectRequest, PutObjectResponse, RekeyNamespaceRequest,
    RekeyNamespaceResponse, ScrubRequest, ScrubResponse, SetNamespaceRequest, VerifyRequest, VerifyResponse,
};
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::auth::Authz;
use super::check_request_id;
use super::limits::Limits;
use super::paging;
use crate::chunks::{to_hex, ChunkId};
use crate::clock::wall_ms as now_ms;
use crate::raft::auth::Need;
use crate::raft::objects::{Mode, NsPolicy, ObjectEntry, NS_NAME_MAX, OBJECT_KEY_MAX};
use crate::raft::{Command, NodeId, Op, OpResult};
use crate::replicate::plan::LagReport;
use crate::replicate::upload::{Expected, Upload};
use crate::replicate::DataPlane;
use crate::telemetry::hot::HotReads;

/// Bytes per data message sent to clients (under tonic's default 4 MiB decoding limit).
const SEND_PIECE: usize = 1024 * 1024;
/// Chunks per `ObjectChunks` message (about 40 bytes each).
const CHUNK_LIST_PAGE: usize = 16 * 1024;
/// How long a write may look for a leader before it fails.
const PROPOSE_DEADLINE: Duration = Duration::from_secs(20);

/// The object service.
pub struct ObjectsService {
    authz: Authz,
    dp: Arc<DataPlane>,
    /// Reads served per object (reported with telemetry, for the leader's hot set).
    hot: Arc<HotReads>,
    limits: Arc<Limits>,
}

impl ObjectsService {
    /// A service over the node's data plane.
    pub fn new(authz: Authz, dp: Arc<DataPlane>, hot: Arc<HotReads>, limits: Arc<Limits>) -> Self {
        Self { authz, dp, hot, limits }
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

fn check_ns(name: &str) -> Result<(), Status> {
    let ok = !name.is_empty()
        && name.len() <= NS_NAME_MAX
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if !ok {
        return Err(Status::invalid_argument(format!(
            "namespace {name:?} must be 1 to {NS_NAME_MAX} characters of a-z, A-Z, 0-9, '-', '_', '.'"
        )));
    }
    Ok(())
}

fn check_key(key: &str) -> Result<(), Status> {
    if key.is_empty() || key.len() > OBJECT_KEY_MAX || key.contains('\0') {
        return Err(Status::invalid_argument(format!(
            "object key must be 1 to {OBJECT_KEY_MAX} bytes without NUL"
        )));
    }
    Ok(())
}

fn policy_from_proto(p: Option<NamespacePolicy>) -> Result<NsPolicy, Status> {
    let d = NsPolicy::default();
    let Some(p) = p else {
        return Ok(d);
    };
    let pol = NsPolicy {
        copies: if p.copies == 0 { d.copies } else { p.copies },
        min_sites: if p.min_sites == 0 { d.min_sites } else { p.min_sites },
        mode: match DurabilityMode::try_from(p.mode).unwrap_or(DurabilityMode::Unspecified) {
            DurabilityMode::Async => Mode::Async,
            _ => Mode::Sync,
        },
        max_lag_ms: if p.max_lag_ms == 0 { d.max_lag_ms } else { p.max_lag_ms },
        priority: p.priority,
        versions_kept: if p.versions_kept == 0 {
            d.versions_kept
        } else {
            p.versions_kept
        },
        compress: p.compress,
    };
    if let Some(problem) = pol.problem() {
        return Err(Status::invalid_argument(problem));
    }
    Ok(pol)
}

fn policy_to_proto(p: &NsPolicy) -> NamespacePolicy {
    NamespacePolicy {
        copies: p.copies,
        min_sites: p.min_sites,
        mode: match p.mode {
            Mode::Sync => DurabilityMode::Sync as i32,
            Mode::Async => DurabilityMode::Async as i32,
        },
        max_lag_ms: p.max_lag_ms,
        priority: p.priority,
        versions_kept: p.versions_kept,
        compress: p.compress,
    }
}

fn info(o: &ObjectEntry) -> ObjectInfo {
    ObjectInfo {
        namespace: o.ns.clone(),
        key: o.key.clone(),
        version: o.version,
        size: o.record.size,
        sha256: if o.record.deleted {
            Vec::new()
        } else {
            o.record.sha256.to_vec()
        },
        chunks: o.record.chunks.len() as u32,
        created_ms: o.record.created_ms,
        deleted: o.record.deleted,
    }
}

/// Maps a state machine refusal to a status.
/// The id of a `known` message, checked against the upload's base version.
fn known_chunk(base: Option<&HashMap<ChunkId, u32>>, k: &KnownChunk) -> Result<ChunkId, Status> {
    let base = base.ok_or_else(|| Status::invalid_argument("a known message needs the header's base_version"))?;
    let id: ChunkId =
        k.id.as_slice()
            .try_into()
            .map_err(|_| Status::invalid_argument("a known chunk id must be 32 bytes"))?;
    match base.get(&id) {
        Some(len) if *len == k.len => Ok(id),
        _ => Err(Status::invalid_argument(format!(
            "chunk {} ({} bytes) is not a chunk of the base version",
            to_hex(&id),
            k.len
        ))),
    }
}

fn refused(r: &OpResult) -> Result<(), Status> {
    match &r.error {
        None => Ok(()),
        // The one limit the state machine applies itself (`Command::NsCreateCapped`).
        Some(msg) if msg.contains("limits.namespaces_max") => {
            Err(super::limits::refused_in_apply("namespaces", msg.clone()))
        }
        Some(msg) if msg.contains("does not exist") => Err(Status::not_found(msg.clone())),
        Some(msg) if msg.contains("already exists") => Err(Status::already_exists(msg.clone())),
        Some(msg) if msg.contains("must be") => Err(Status::invalid_argument(msg.clone())),
        Some(msg) => Err(Status::failed_precondition(msg.clone())),
    }
}

impl ObjectsService {
    async fn write(&self, request_id: Vec<u8>, command: Command) -> Result<OpResult, Status> {
        let r = self
            .dp
            .front
            .propose(Op { request_id, command }, PROPOSE_DEADLINE)
            .await?;
        refused(&r)?;
        Ok(r)
    }

    /// Creates or replaces a namespace (`make` builds the command) and answers with its view.
    async fn write_namespace(
        &self,
        name: String,
        request_id: Vec<u8>,
        policy: Option<NamespacePolicy>,
        make: impl FnOnce(String, NsPolicy) -> Command,
    ) -> Result<Response<NamespaceResponse>, Status> {
        check_ns(&name)?;
        check_request_id(&request_id)?;
        let policy = policy_from_proto(policy)?;
        self.write(request_id, make(name.clone(), policy.clone())).await?;
        Ok(Response::new(NamespaceResponse {
            namespace: Some(self.namespace_now(&name, &policy).await?),
        }))
    }

    /// The namespace's policy from the local replica, waiting briefly for a namespace that
    /// was just created on the leader to be applied here.
    async fn policy(&self, ns: &str) -> Result<NsPolicy, Status> {
        for _ in 0..40 {
            if let Some(r) = self.dp.reader.namespace(ns).map_err(internal)? {
                return Ok(r.policy);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(Status::not_found(format!("namespace {ns} does not exist")))
    }

    /// The chunks of version `version` of `ns/key` that an upload may name instead of
    /// sending them. The caller must be allowed to read the key (naming a chunk proves
    /// nothing the caller could not read), the version must be live on this node, and the
    /// namespace must not be encrypted.
    fn base_chunks(
        &self,
        who: &super::auth::Caller,
        ns: &str,
        key: &str,
        version: u64,
    ) -> Result<HashMap<ChunkId, u32>, Status> {
        self.authz.check(who, "Objects/PutObject", Need::Read { ns, key })?;
        self.refuse_encrypted(ns)?;
        let entry = self.dp.reader.get(ns, key, version).map_err(internal)?;
        match entry {
            Some(e) if !e.record.deleted && e.version == version => {
                Ok(e.record.chunks.iter().map(|c| (c.id, c.len)).collect())
            }
            _ => Err(Status::failed_precondition(format!(
                "base version {version} of {ns}/{key} is not on this node (deleted or collected); upload the whole object"
            ))),
        }
    }

    /// Chunk lists and uploads that name chunks are for namespaces that are not encrypted:
    /// an encrypted one's chunk ids are of sealed bytes, which a client cannot compute.
    fn refuse_encrypted(&self, ns: &str) -> Result<(), Status> {
        match self.dp.reader.ns_keys(ns).map_err(internal)? {
            Some(_) => Err(Status::failed_precondition(format!(
                "namespace {ns} is encrypted: its chunk ids are of sealed bytes, so chunks cannot be named"
            ))),
            None => Ok(()),
        }
    }

    /// The leader's latest lag report, for namespace views (`unavailable` when it cannot
    /// be had: no leader, or one that has not finished a pass since it took over).
    async fn lag(&self) -> Result<Arc<LagReport>, Status> {
        self.dp.leader_lag().await.map_err(Status::unavailable)
    }

    /// One namespace's view now, as a namespace write answers it.
    async fn namespace_now(&self, name: &str, policy: &NsPolicy) -> Result<Namespace, Status> {
        self.namespace_view(name, policy, &*self.lag().await?, now_ms())
    }

    /// The namespace as `GetNamespace` and `ListNamespaces` show it: its counts are kept
    /// on apply (one lookup, whatever its size); how many objects are below policy and for
    /// how long is what the leader's latest repair pass measured (`lag`, asked once per
    /// request).
    fn namespace_view(&self, name: &str, policy: &NsPolicy, lag: &LagReport, now: u64) -> Result<Namespace, Status> {
        let usage = self.dp.reader.namespace_usage(name).map_err(internal)?;
        let (behind, lag_ms) = lag.at(name, now);
        let keys = self.dp.reader.ns_keys(name).map_err(internal)?;
        let mut kek_ids: Vec<String> = keys
            .iter()
            .flat_map(|k| &k.generations)
            .map(|w| crate::chunks::seal::kek_hex(&w.kek_id))
            .collect();
        kek_ids.sort();
        kek_ids.dedup();
        Ok(Namespace {
            name: name.to_string(),
            policy: Some(policy_to_proto(policy)),
            objects: usage.objects,
            bytes: usage.bytes,
            behind,
            lag_ms,
            encrypted: keys.is_some(),
            key_generations: keys.map_or(0, |k| k.generations.len() as u32),
            kek_ids,
        })
    }
}

/// Counts one upload in `ark_object_puts_total` with its result when dropped.
struct PutOutcome(&'static str);

impl Drop for PutOutcome {
    fn drop(&mut self) {
        metrics::counter!("ark_object_puts_total", "result" => self.0).increment(1);
    }
}

type GetStream = Pin<Box<dyn Stream<Item = Result<GetObjectResponse, Status>> + Send>>;

/// Where a download's messages go: each waits at most `limits.stream_idle_timeout_ms` for
/// the client to take it, so a client that stops reading does not hold the reads forever.
struct Sink {
    tx: mpsc::Sender<Result<GetObjectResponse, Status>>,
    /// Told the stall, which then ends the stream as an error rather than a clean end.
    stalled: Option<oneshot::Sender<Status>>,
    limits: Arc<Limits>,
}

impl Sink {
    /// Sends `msg`; false when the client went away or stalled (then stop).
    async fn send(&mut self, msg: Result<GetObjectResponse, Status>) -> bool {
        match tokio::time::timeout(self.limits.stream_idle(), self.tx.send(msg)).await {
            Ok(sent) => sent.is_ok(),
            Err(_) => {
                if let Some(s) = self.stalled.take() {
                    let _ = s.send(self.limits.stream_idle_exceeded("the download"));
                }
                false
            }
        }
    }
}

#[tonic::async_trait]
impl Objects for ObjectsService {
    async fn create_namespace(
        &self,
        request: Request<CreateNamespaceRequest>,
    ) -> Result<Response<NamespaceResponse>, Status> {
        let call = self
            .authz
            .admin(&request, "Objects/CreateNamespace", request.get_ref().name.clone())?;
        let r = request.into_inner();
        call.done(self.create_namespace_now(r).await)
    }

    async fn rekey_namespace(
        &self,
        request: Request<RekeyNamespaceRequest>,
    ) -> Result<Response<RekeyNamespaceResponse>, Status> {
        let call = self
            .authz
            .admin(&request, "Objects/RekeyNamespace", request.get_ref().name.clone())?;
        call.done(self.rekey_namespace_now(request.into_inner()).await)
    }

    async fn set_namespace(
        &self,
        request: Request<SetNamespaceRequest>,
    ) -> Result<Response<NamespaceResponse>, Status> {
        let call = self
            .authz
            .admin(&request, "Objects/SetNamespace", request.get_ref().name.clone())?;
        let r = request.into_inner();
        call.done(
            self.write_namespace(r.name, r.request_id, r.policy, |name, policy| Command::NsSet {
                name,
                policy,
            })
            .await,
        )
    }

    async fn delete_namespace(
        &self,
        request: Request<DeleteNamespaceRequest>,
    ) -> Result<Response<DeleteNamespaceResponse>, Status> {
        let call = self
            .authz
            .admin(&request, "Objects/DeleteNamespace", request.get_ref().name.clone())?;
        let r = request.into_inner();
        let res = async {
            check_ns(&r.name)?;
            check_request_id(&r.request_id)?;
            self.write(r.request_id, Command::NsDelete { name: r.name }).await
        }
        .await;
        let res = call.done(res)?;
        Ok(Response::new(DeleteNamespaceResponse { existed: res.existed }))
    }

    async fn list_namespaces(
        &self,
        request: Request<ListNamespacesRequest>,
    ) -> Result<Response<ListNamespacesResponse>, Status> {
        // Everyone may ask; each sees the namespaces it holds a grant on (admins: all).
        let who = self.authz.identify(&request, "Objects/ListNamespaces")?;
        let auth = self.authz.state();
        self.dp.front.linearize().await?;
        let mut namespaces = Vec::new();
        let (lag, now) = (self.lag().await?, now_ms());
        for (name, rec) in self.dp.reader.namespaces().map_err(internal)? {
            if !auth.sees_namespace(&who.identity, &name) {
                continue;
            }
            namespaces.push(self.namespace_view(&name, &rec.policy, &lag, now)?);
        }
        Ok(Response::new(ListNamespacesResponse { namespaces }))
    }

    async fn put_object(
        &self,
        request: Request<Streaming<PutObjectRequest>>,
    ) -> Result<Response<PutObjectResponse>, Status> {
        // The target arrives with the header: the caller is known now, the check follows.
        let who = self.authz.identify(&request, "Objects/PutObject")?;
        let _permit = self.limits.upload_permit(&who.identity)?;
        let idle = self.limits.stream_idle();
        let stalled = || self.limits.stream_idle_exceeded("the upload");
        let mut stream = request.into_inner();
        let header = match tokio::time::timeout(idle, stream.message())
            .await
            .map_err(|_| stalled())??
        {
            Some(PutObjectRequest {
                part: Some(put_object_request::Part::Header(h)),
            }) => h,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of an upload must be its header",
                ))
            }
        };
        check_ns(&header.namespace)?;
        check_key(&header.key)?;
        self.authz.check(
            &who,
            "Objects/PutObject",
            Need::Write {
                ns: &header.namespace,
                key: &header.key,
            },
        )?;
        check_request_id(&header.request_id)?;
        if !header.sha256.is_empty() && header.sha256.len() != 32 {
            return Err(Status::invalid_argument("sha256 must be 32 bytes when given"));
        }
        if let Some(size) = header.size {
            self.limits.check_object_size(size)?;
        }
        let policy = self.policy(&header.namespace).await?;
        let base = match header.base_version {
            0 => None,
            v => Some(self.base_chunks(&who, &header.namespace, &header.key, v)?),
        };
        let dp = self.dp.clone();
        let targets = dp
            .place_upload(&header.namespace, &header.key, &policy, false, Duration::from_secs(2))
            .await?;
        let expected = Expected {
            size: header.size,
            sha256: match header.sha256.as_slice() {
                [] => None,
                s => Some(
                    s.try_into()
                        .map_err(|_| Status::invalid_argument("sha256 must be 32 bytes when given"))?,
                ),
            },
        };

        // Counted when the handler ends, however it ends (a cancelled upload drops it).
        let mut outcome = PutOutcome("aborted");
        let mut upload = Upload::start(dp.clone(), &header.namespace, policy, targets, expected)?;
        let received: Result<(), Status> = async {
            loop {
                let msg = match tokio::time::timeout(idle, stream.message())
                    .await
                    .map_err(|_| stalled())?
                {
                    Ok(Some(m)) => m,
                    Ok(None) => return Ok(()),
                    Err(st) => {
                        return Err(Status::aborted(format!(
                            "upload interrupted ({}); nothing was committed",
                            st.message()
                        )))
                    }
                };
                match msg.part {
                    Some(put_object_request::Part::Data(data)) => {
                        self.limits.check_object_size(upload.size() + data.len() as u64)?;
                        upload.write(data).await?;
                    }
                    Some(put_object_request::Part::Known(k)) => {
                        let id = known_chunk(base.as_ref(), &k)?;
                        self.limits.check_object_size(upload.size() + u64::from(k.len))?;
                        upload.write_known(id, k.len).await?;
                    }
                    _ => {
                        return Err(Status::invalid_argument(
                            "only data and known messages may follow the header",
                        ))
                    }
                }
            }
        }
        .await;
        if let Err(st) = received {
            upload.abort();
            return Err(st);
        }
        let stored = upload.finish().await?;
        let (size, sha) = (stored.manifest.size, stored.manifest.sha256);
        let chunks = stored.manifest.chunks.len() as u64;
        let res = dp
            .commit_object(
                header.request_id,
                &header.namespace,
                &header.key,
                stored.manifest,
                PROPOSE_DEADLINE,
            )
            .await?;
        refused(&res)?;
        outcome.0 = "ok";
        metrics::counter!("ark_object_put_bytes_total").increment(size);
        Ok(Response::new(PutObjectResponse {
            object: Some(ObjectInfo {
                namespace: header.namespace,
                key: header.key,
                version: res.version,
                size,
                sha256: sha.to_vec(),
                chunks: chunks as u32,
                created_ms: now_ms(),
                deleted: false,
            }),
            chunks,
            chunks_new: stored.new_local,
            bytes_replicated: stored.replicated,
            duplicate: res.duplicate,
        }))
    }

    type GetObjectStream = GetStream;

    async fn get_object(&self, request: Request<GetObjectRequest>) -> Result<Response<Self::GetObjectStream>, Status> {
        let (ns, key) = (&request.get_ref().namespace, &request.get_ref().key);
        self.authz
            .require(&request, "Objects/GetObject", Need::Read { ns, key })?;
        let r = request.into_inner();
        check_ns(&r.namespace)?;
        check_key(&r.key)?;
        if !r.stale {
            self.dp.front.linearize().await?;
        }
        let entry = self
            .dp
            .reader
            .get(&r.namespace, &r.key, r.version)
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("{}/{} not found", r.namespace, r.key)))?;
        if entry.record.deleted {
            return Err(Status::not_found(format!(
                "{}/{} was deleted (version {})",
                r.namespace, r.key, entry.version
            )));
        }
        self.hot.record(&r.namespace, &r.key);
        let compress = self
            .dp
            .reader
            .namespace(&r.namespace)
            .map_err(internal)?
            .is_some_and(|n| n.policy.compress);
        let (tx, rx) = mpsc::channel::<Result<GetObjectResponse, Status>>(4);
        let first = GetObjectResponse {
            part: Some(get_object_response::Part::Info(info(&entry))),
        };
        let dp = self.dp.clone();
        let (stall_tx, stall_rx) = oneshot::channel();
        let mut sink = Sink {
            tx,
            stalled: Some(stall_tx),
            limits: self.limits.clone(),
        };
        let ns = r.namespace.clone();
        tokio::spawn(async move {
            if !sink.send(Ok(first)).await {
                return;
            }
            let chunks = entry.record.chunks.clone();
            let mut reads = futures::stream::iter(chunks.into_iter().map(|c| {
                let dp = dp.clone();
                let ns = ns.clone();
                async move {
                    let holders = dp
                        .reader
                        .chunk(&c.id)
                        .map_err(internal)?
                        .map(|r| r.holders)
                        .unwrap_or_default();
                    Ok::<_, Status>(dp.read_object_chunk(&ns, &c.id, &holders, compress).await?)
                }
            }))
            .buffered(2);
            while let Some(r) = reads.next().await {
                match r {
                    Ok(b) => {
                        let mut off = 0;
                        while off < b.len() {
                            let end = (off + SEND_PIECE).min(b.len());
                            let msg = GetObjectResponse {
                                part: Some(get_object_response::Part::Data(b.slice(off..end))),
                            };
                            if !sink.send(Ok(msg)).await {
                                return;
                            }
                            off = end;
                        }
                    }
                    Err(st) => {
                        sink.send(Err(st)).await;
                        return;
                    }
                }
            }
        });
        // After the last message, the stall's error if there was one (not a clean end).
        let stall = futures::stream::once(stall_rx).filter_map(|s| async move { s.ok().map(Err) });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).chain(stall))))
    }

    type ObjectChunksStream = Pin<Box<dyn Stream<Item = Result<ObjectChunksResponse, Status>> + Send>>;

    async fn object_chunks(
        &self,
        request: Request<ObjectChunksRequest>,
    ) -> Result<Response<Self::ObjectChunksStream>, Status> {
        let (ns, key) = (&request.get_ref().namespace, &request.get_ref().key);
        self.authz
            .require(&request, "Objects/ObjectChunks", Need::Read { ns, key })?;
        let r = request.into_inner();
        check_ns(&r.namespace)?;
        check_key(&r.key)?;
        self.refuse_encrypted(&r.namespace)?;
        // This node's replica, unconfirmed: the list is only a hint for an upload to this
        // same node, which checks every named chunk against its own copy of the version.
        let entry = self
            .dp
            .reader
            .get(&r.namespace, &r.key, r.version)
            .map_err(internal)?
            .filter(|e| !e.record.deleted)
            .ok_or_else(|| Status::not_found(format!("{}/{} not found", r.namespace, r.key)))?;
        let version = entry.version;
        let pages: Vec<Result<ObjectChunksResponse, Status>> = entry
            .record
            .chunks
            .chunks(CHUNK_LIST_PAGE)
            .map(|page| {
                Ok(ObjectChunksResponse {
                    version,
                    chunks: page
                        .iter()
                        .map(|c| KnownChunk {
                            id: c.id.to_vec(),
                            len: c.len,
                        })
                        .collect(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(futures::stream::iter(pages))))
    }

    async fn list_objects(
        &self,
        request: Request<ListObjectsRequest>,
    ) -> Result<Response<ListObjectsResponse>, Status> {
        let (ns, key) = (&request.get_ref().namespace, &request.get_ref().prefix);
        self.authz
            .require(&request, "Objects/ListObjects", Need::Read { ns, key })?;
        let r = request.into_inner();
        check_ns(&r.namespace)?;
        if !r.stale {
            self.dp.front.linearize().await?;
        }
        if self.dp.reader.namespace(&r.namespace).map_err(internal)?.is_none() {
            return Err(Status::not_found(format!("namespace {} does not exist", r.namespace)));
        }
        let after = paging::objects_after(&r.cursor, &r.prefix, r.all_versions)?;
        let limit = paging::page_size(r.limit, self.limits.config().list_page_max);
        let (page, more) = self
            .dp
            .reader
            .list_page(
                &r.namespace,
                &r.prefix,
                r.all_versions,
                after.as_ref().map(|(k, v)| (k.as_str(), *v)),
                limit,
            )
            .map_err(internal)?;
        let next_cursor = match page.last() {
            Some(o) if more => paging::objects_cursor(&o.key, o.version),
            _ => String::new(),
        };
        Ok(Response::new(ListObjectsResponse {
            objects: page.iter().map(info).collect(),
            more,
            next_cursor,
        }))
    }

    async fn delete_object(
        &self,
        request: Request<DeleteObjectRequest>,
    ) -> Result<Response<DeleteObjectResponse>, Status> {
        let (ns, key) = (&request.get_ref().namespace, &request.get_ref().key);
        self.authz
            .require(&request, "Objects/DeleteObject", Need::Write { ns, key })?;
        let r = request.into_inner();
        check_ns(&r.namespace)?;
        check_key(&r.key)?;
        check_request_id(&r.request_id)?;
        let res = self
            .write(
                r.request_id,
                Command::ObjDelete {
                    ns: r.namespace,
                    key: r.key,
                },
            )
            .await?;
        Ok(Response::new(DeleteObjectResponse {
            existed: res.existed,
            version: res.version,
        }))
    }

    async fn verify(&self, request: Request<VerifyRequest>) -> Result<Response<VerifyResponse>, Status> {
        // One namespace: its readers may; every namespace at once: admins.
        let ns = &request.get_ref().namespace;
        let need = if ns.is_empty() {
            Need::Admin
        } else {
            Need::Read { ns, key: "" }
        };
        self.authz.require(&request, "Objects/Verify", need)?;
        let r = request.into_inner();
        self.dp.front.linearize().await?;
        let dp = &self.dp;
        let namespaces: Vec<(String, NsPolicy)> = dp
            .reader
            .namespaces()
            .map_err(internal)?
            .into_iter()
            .filter(|(n, _)| r.namespace.is_empty() || *n == r.namespace)
            .map(|(n, rec)| (n, rec.policy))
            .collect();
        if !r.namespace.is_empty() && namespaces.is_empty() {
            return Err(Status::not_found(format!("namespace {} does not exist", r.namespace)));
        }
        let mut objects = Vec::new();
        for (ns, policy) in &namespaces {
            for o in dp.reader.list(ns, "", false).map_err(internal)? {
                objects.push((o, policy.clone()));
            }
        }
        // Which holder must check which chunks.
        let mut holders_of: HashMap<[u8; 32], Vec<NodeId>> = HashMap::new();
        let mut per_node: BTreeMap<NodeId, (Vec<[u8; 32]>, u64)> = BTreeMap::new();
        for (o, _) in &objects {
            for c in &o.record.chunks {
                if holders_of.contains_key(&c.id) {
                    continue;
                }
                let holders = dp
                    .reader
                    .chunk(&c.id)
                    .map_err(internal)?
                    .map(|r| r.holders)
                    .unwrap_or_default();
                for h in &holders {
                    let e = per_node.entry(*h).or_default();
                    e.0.push(c.id);
                    e.1 += c.len as u64;
                }
                holders_of.insert(c.id, holders);
            }
        }
        let members = dp.members.all();
        let checks = per_node.into_iter().map(|(node, (ids, bytes))| {
            let peer = members.iter().find(|m| m.id == node).cloned();
            async move {
                let Some(peer) = peer else {
                    return (node, Err(format!("node {node} is no longer a member")));
                };
                let mut states = Vec::with_capacity(ids.len());
                for batch in ids.chunks(256) {
                    let b = bytes.min(batch.len() as u64 * (4 << 20));
                    match dp.verify_on(&peer, batch, b).await {
                        Ok(s) => states.extend(batch.iter().copied().zip(s)),
                        Err(e) => return (node, Err(e.to_string())),
                    }
                }
                (node, Ok(states))
            }
        });
        let mut state: HashMap<([u8; 32], NodeId), ChunkState> = HashMap::new();
        let mut unreachable: BTreeMap<NodeId, String> = BTreeMap::new();
        for (node, res) in futures::future::join_all(checks).await {
            match res {
                Ok(s) => {
                    for (id, st) in s {
                        state.insert((id, node), st);
                    }
                }
                Err(e) => {
                    unreachable.insert(node, e);
                }
            }
        }
        let mut reports = Vec::new();
        let mut all_ok = true;
        for (o, policy) in &objects {
            let mut min_copies = u32::MAX;
            let mut min_sites = u32::MAX;
            let mut bad = 0u32;
            let mut problems = Vec::new();
            let distinct: BTreeSet<[u8; 32]> = o.record.chunks.iter().map(|c| c.id).collect();
            for id in &distinct {
                let holders = holders_of.get(id).cloned().unwrap_or_default();
                let mut good = Vec::new();
                for h in &holders {
                    match state.get(&(*id, *h)) {
                        Some(ChunkState::Ok) => good.push(*h),
                        Some(s) => {
                            bad += 1;
                            if problems.len() < 10 {
                                problems.push(format!("node {h}: chunk {} {}", to_hex(id), s.as_str_name()));
                            }
                        }
                        None => {
                            if let Some(e) = unreachable.get(h) {
                                if problems.len() < 10 {
                                    problems.push(format!("node {h} did not answer: {e}"));
                                }
                            }
                        }
                    }
                }
                min_copies = min_copies.min(good.len() as u32);
                min_sites = min_sites.min(dp.members.sites_of(&good).len() as u32);
            }
            if distinct.is_empty() {
                min_copies = policy.copies;
                min_sites = policy.min_sites;
            }
            let at_policy = min_copies >= policy.copies && min_sites >= policy.min_sites;
            all_ok &= at_policy;
            problems.dedup();
            reports.push(ObjectReport {
                object: Some(info(o)),
                at_policy,
                copies: min_copies,
                sites: min_sites,
                bad_copies: bad,
                problems,
            });
        }
        Ok(Response::new(VerifyResponse {
            objects: reports,
            all_at_policy: all_ok,
        }))
    }

    async fn scrub(&self, request: Request<ScrubRequest>) -> Result<Response<ScrubResponse>, Status> {
        let call = self.authz.admin(&request, "Objects/Scrub", "every node")?;
        let r = request.into_inner();
        let dp = self.dp.clone();
        let members = dp.members.data_peers();
        let run = {
            let dp = dp.clone();
            async move {
                let passes = members.iter().map(|m| {
                    let dp = dp.clone();
                    async move {
                        let res = dp.scrub_on(m).await;
                        match res {
                            Ok(s) => NodeScrub {
                                node_id: m.id,
                                chunks_checked: s.chunks_checked,
                                bytes_checked: s.bytes_checked,
                                corrupt: s.corrupt,
                                missing: s.missing,
                                repaired: s.repaired,
                                error: String::new(),
                            },
                            Err(e) => NodeScrub {
                                node_id: m.id,
                                error: e,
                                ..NodeScrub::default()
                            },
                        }
                    }
                });
                futures::future::join_all(passes).await
            }
        };
        if r.wait {
            call.done(Ok(Response::new(ScrubResponse { nodes: run.await })))
        } else {
            tokio::spawn(run);
            call.done(Ok(Response::new(ScrubResponse { nodes: Vec::new() })))
        }
    }
}

/// Namespace creation and rekeying, once admitted.
impl ObjectsService {
    async fn create_namespace_now(&self, r: CreateNamespaceRequest) -> Result<Response<NamespaceResponse>, Status> {
        // Early, on this replica (a create of an existing name is answered as before); the
        // apply checks again on the replicated count, with this node's limit.
        let namespaces_max = self.limits.config().namespaces_max;
        let existing = self.dp.reader.namespaces().map_err(internal)?;
        if !existing.iter().any(|(n, _)| *n == r.name) {
            self.limits.check_namespaces(existing.len())?;
        }
        if !r.encrypt {
            return self
                .write_namespace(r.name, r.request_id, r.policy, move |name, policy| {
                    Command::NsCreateCapped {
                        name,
                        policy,
                        namespaces_max,
                    }
                })
                .await;
        }
        check_ns(&r.name)?;
        check_request_id(&r.request_id)?;
        let policy = policy_from_proto(r.policy)?;
        // The first data key, made and wrapped here: only the wrapped copy enters the log.
        // Without a KEK on this node nothing is proposed.
        let keys =
            self.dp.keys.new_keys(&r.name, now_ms()).map_err(|e| {
                Status::failed_precondition(format!("cannot create encrypted namespace {}: {e}", r.name))
            })?;
        let command = Command::NsCreateEncrypted {
            name: r.name.clone(),
            policy: policy.clone(),
            keys,
            namespaces_max,
        };
        self.write(r.request_id, command).await?;
        Ok(Response::new(NamespaceResponse {
            namespace: Some(self.namespace_now(&r.name, &policy).await?),
        }))
    }

    async fn rekey_namespace_now(&self, r: RekeyNamespaceRequest) -> Result<Response<RekeyNamespaceResponse>, Status> {
        check_ns(&r.name)?;
        check_request_id(&r.request_id)?;
        // The latest key record: a rekey built on a stale one is refused by the state
        // machine anyway (a generation missing), this only avoids the round trip.
        self.dp.front.linearize().await?;
        let policy = self
            .dp
            .reader
            .namespace(&r.name)
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("namespace {} does not exist", r.name)))?
            .policy;
        let keys = self
            .dp
            .reader
            .ns_keys(&r.name)
            .map_err(internal)?
            .ok_or_else(|| Status::failed_precondition(format!("namespace {} is not encrypted", r.name)))?;
        let new = self
            .dp
            .keys
            .rekey(&r.name, &keys, r.new_data_key, now_ms())
            .map_err(|e| Status::failed_precondition(format!("cannot rekey namespace {}: {e}", r.name)))?;
        let kek_id = self
            .dp
            .keys
            .kek_id()
            .map(|k| crate::chunks::seal::kek_hex(&k))
            .unwrap_or_default();
        self.write(
            r.request_id,
            Command::NsRekey {
                name: r.name.clone(),
                keys: new,
            },
        )
        .await?;
        Ok(Response::new(RekeyNamespaceResponse {
            namespace: Some(self.namespace_now(&r.name, &policy).await?),
            rewrapped: keys.generations.len() as u32,
            kek_id,
        }))
    }
}

/// Describes this module's metrics (HELP text and unit) to the recorder; called once at start-up by
/// `server` (through `metrics::install`).
pub(crate) fn describe_metrics() {
    use metrics::{describe_counter, Unit};
    describe_counter!(
        "ark_object_puts_total",
        "Object uploads, by result (ok, or aborted when the upload failed or the client went away)."
    );
    describe_counter!(
        "ark_object_put_bytes_total",
        Unit::Bytes,
        "Bytes of objects stored by successful uploads (before compression)."
    );
}
