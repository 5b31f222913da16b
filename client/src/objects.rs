//! The object half of the SDK (`ark.v1.Objects`), as more methods on [`ArkClient`]:
//! namespaces, streamed puts and gets, listing, deletion, verification and scrub.
//!
//! - Namespace writes and object deletes go to the leader through the KV machinery
//!   (`ArkClient::call`): leader hints followed, the request id reused on every retry.
//! - Puts and gets talk to any node over stream connections that have no per-request
//!   deadline; a transfer is bounded instead by a stall limit ([`TRANSFER_STALL_MAX`]), a
//!   commit wait ([`PUT_COMMIT_WAIT_MAX`]), a number of attempts, and the client's optional
//!   object timeout ([`ArkClient::with_object_timeout`]).
//! - Both directions hash the whole object with SHA-256 as the bytes pass and compare with
//!   what the node reports; memory stays bounded by a few 1 MiB messages per transfer.
//! - Downloads to a file go to `<file>.ark-partial`, are fsynced and renamed into place only
//!   once verified, and removed on failure.
//!
//! Owns the transfer loops, their retries and commit wait, and the partial-file protocol;
//! the primitives both upload producers share (message size, stall limit, the request
//! stream) are in `transfer.rs`, the changed-file producer in `delta.rs`. Must not touch
//! leader discovery or KV retries (`client.rs`), restore policy (`restore.rs`) or printing
//! (the CLI).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ark_proto::v1::{
    get_object_response, put_object_request, CreateNamespaceRequest, DeleteNamespaceRequest, DeleteObjectRequest,
    GetObjectRequest, GetObjectResponse, ListNamespacesRequest, ListObjectsRequest, PutObjectHeader, PutObjectRequest,
    PutObjectResponse, RekeyNamespaceRequest, ScrubRequest, SetNamespaceRequest, VerifyRequest,
};
use futures::{Stream, StreamExt};
use ring::digest;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tonic::{Request, Status};

use crate::client::{new_request_id, ArkClient};
use crate::delta::{self, Base, DELTA_MIN_BYTES};
use crate::error::{classify, ClientError, Failure};
use crate::retry::Attempts;
use crate::transfer::{objects, send_data, upload_stream, Produce, Sent};
pub use crate::transfer::{Progress, PUT_MESSAGE_BYTES, TRANSFER_STALL_MAX};
use crate::types::{DeletedObject, NamespaceInfo, NamespacePolicy, ObjectInfo, RekeyReport, ScrubReport, VerifyReport};

/// Messages queued ahead of the transport per upload: with the one being read, the
/// client's memory per upload is bounded by `PUT_QUEUE_MESSAGES + 1` messages (plus the
/// HTTP/2 send window).
const PUT_QUEUE_MESSAGES: usize = 2;
/// Longest a node may take to commit an upload once its last byte was sent (it may still
/// be replicating the last chunks and then commits the manifest through Raft).
pub const PUT_COMMIT_WAIT_MAX: Duration = Duration::from_secs(120);
/// Lower-case hex of bytes (how digests are spelled in errors and reports).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Suffix of a download that is not yet verified.
pub const PARTIAL_SUFFIX: &str = ".ark-partial";

/// Where an upload's bytes come from.
pub enum PutSource {
    /// A file. A regular file's size is announced to the node (a stream that ends short or
    /// long is refused), and the whole upload may be retried from its start, on another
    /// node, with the same request id. Anything else (a FIFO, a device) is sent as a stream.
    File(PathBuf),
    /// A one-pass stream such as stdin: sent as it is read, never retried once a byte of
    /// it has been read.
    Reader {
        /// The bytes.
        reader: Box<dyn AsyncRead + Send + Unpin>,
        /// Its exact length when known, announced to the node.
        size: Option<u64>,
    },
}

impl PutSource {
    /// A one-pass stream of unknown length.
    pub fn reader(reader: impl AsyncRead + Send + Unpin + 'static) -> Self {
        PutSource::Reader {
            reader: Box::new(reader),
            size: None,
        }
    }
}

impl std::fmt::Debug for PutSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PutSource::File(p) => f.debug_tuple("File").field(p).finish(),
            PutSource::Reader { size, .. } => f.debug_struct("Reader").field("size", size).finish_non_exhaustive(),
        }
    }
}

/// Options of [`ArkClient::put_object`].
#[derive(Clone, Default)]
pub struct PutOptions {
    /// Told the bytes handed to the transport so far.
    pub progress: Option<Progress>,
    /// Send every byte even when the key's current version shares chunks with the file
    /// (by default a file of at least [`crate::delta::DELTA_MIN_BYTES`] is sent as the
    /// chunks that version lacks).
    pub whole: bool,
}

/// Options of [`ArkClient::get_object`] and [`ArkClient::get_object_to_file`].
#[derive(Clone, Default)]
pub struct GetOptions {
    /// The version to read; 0 = the latest.
    pub version: u64,
    /// Read the manifest from the answering node's replica without confirming leadership
    /// (works in a site cut off from the majority).
    pub stale: bool,
    /// The SHA-256 the caller expects (e.g. from a listing): the transfer is refused before
    /// a byte is written if the node's manifest says otherwise.
    pub expect_sha256: Option<Vec<u8>>,
    /// Told the bytes received so far and the object's size.
    pub progress: Option<Progress>,
}

/// What [`ArkClient::list_objects`] and [`ArkClient::list_objects_page`] list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListObjectsOptions {
    /// Only keys that start with this.
    pub prefix: String,
    /// Every version, tombstones included, instead of the live latest versions.
    pub all_versions: bool,
    /// [`ArkClient::list_objects`]: at most this many in all, 0 = no limit (it walks every
    /// page). [`ArkClient::list_objects_page`]: the page size, 0 for the node's maximum
    /// (`limits.list_page_max`).
    pub limit: u32,
    /// Read the answering node's replica without confirming leadership.
    pub stale: bool,
}

/// One page of an object listing ([`ArkClient::list_objects_page`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ObjectPage {
    /// Object versions, in key then version order.
    pub objects: Vec<ObjectInfo>,
    /// More matched than this page holds.
    pub more: bool,
    /// Pass it to the next [`ArkClient::list_objects_page`] to go on; empty when the
    /// listing is done (or the node is too old to page: then `more` tells whether it cut
    /// the listing short).
    pub next_cursor: String,
}

/// How [`ArkClient::scrub`] answers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScrubOptions {
    /// Answer once every node's pass has finished, with per-node results, instead of as soon
    /// as the passes have started.
    pub wait: bool,
}

/// What a successful put committed.
#[derive(Debug, Clone, PartialEq)]
pub struct PutOutcome {
    /// The new version; its size and SHA-256 were checked against what was sent.
    pub object: ObjectInfo,
    /// Chunks of the object, and how many the answering node did not hold before.
    pub chunks: u64,
    /// Chunks the answering node did not hold before.
    pub chunks_new: u64,
    /// Bytes sent to other nodes before the put was acknowledged.
    pub bytes_replicated: u64,
    /// Bytes not sent because the key's previous version already had those chunks.
    pub bytes_reused: u64,
    /// The node answered from an earlier attempt's commit (same request id).
    pub duplicate: bool,
    /// Uploads made, the successful one included.
    pub attempts: u32,
}

/// One transfer or report's retries: endpoints in turn under the client's transfer
/// [`crate::retry::RetryPolicy`].
struct Retries {
    budget: Attempts,
    next: usize,
    last: String,
}

impl Retries {
    fn new(client: &ArkClient) -> Self {
        Self {
            budget: Attempts::start(client.transfer_retry()),
            next: 0,
            last: String::new(),
        }
    }

    /// The endpoint of the next attempt.
    fn endpoint(&mut self, endpoints: &[String]) -> Result<String, ClientError> {
        if endpoints.is_empty() {
            return Err(ClientError::Config("no endpoints configured".into()));
        }
        let a = endpoints[self.next % endpoints.len()].clone();
        self.next += 1;
        self.budget.attempt();
        Ok(a)
    }

    /// Records a transient failure; waits before the next attempt when one is allowed.
    async fn failed(&mut self, last: String) -> Result<(), ClientError> {
        self.last = last;
        if self.budget.exhausted() {
            return Err(self.give_up(""));
        }
        self.budget.wait().await;
        Ok(())
    }

    fn give_up(&self, why: &str) -> ClientError {
        self.budget.give_up(format!("{}{why}", self.last))
    }

    /// Runs one attempt under the overall deadline, if there is one.
    async fn within<T>(&self, attempt: impl Future<Output = Result<T, Failure>>) -> Result<T, Failure> {
        match self.budget.deadline() {
            None => attempt.await,
            Some(d) => match tokio::time::timeout_at(tokio::time::Instant::from_std(d), attempt).await {
                Ok(r) => r,
                Err(_) => Err(Failure::Transient(format!(
                    "the object timeout of {} ms ran out{}",
                    d.saturating_duration_since(self.budget.started()).as_millis(),
                    if self.last.is_empty() {
                        String::new()
                    } else {
                        format!(" (earlier failure: {})", self.last)
                    }
                ))),
            },
        }
    }
}

fn missing(what: &str) -> ClientError {
    ClientError::Server(format!("the node's answer has no {what}"))
}

impl ArkClient {
    /// Creates namespace `name` with `policy` (zero fields take the cluster's defaults).
    /// Applied once even when retried.
    pub async fn create_namespace(&self, name: &str, policy: NamespacePolicy) -> Result<NamespaceInfo, ClientError> {
        let req = CreateNamespaceRequest {
            name: name.to_string(),
            policy: Some(policy.into()),
            request_id: new_request_id(),
            encrypt: false,
        };
        self.call(|ch| {
            let req = req.clone();
            async move { objects(ch).create_namespace(req).await }
        })
        .await?
        .into_inner()
        .namespace
        .map(NamespaceInfo::from)
        .ok_or_else(|| missing("namespace"))
    }

    /// Creates namespace `name` with `policy`, encrypted at rest: every chunk is sealed
    /// (AES-256-GCM) under a data key of the namespace's own, which the cluster keeps wrapped
    /// by its key-encryption key. Refused ([`ClientError::FailedPrecondition`]) when the node
    /// has no key-encryption key. The SDK sends the plaintext over TLS and never sees a key;
    /// nodes seal and open.
    pub async fn create_encrypted_namespace(
        &self,
        name: &str,
        policy: NamespacePolicy,
    ) -> Result<NamespaceInfo, ClientError> {
        let req = CreateNamespaceRequest {
            name: name.to_string(),
            policy: Some(policy.into()),
            request_id: new_request_id(),
            encrypt: true,
        };
        self.call(|ch| {
            let req = req.clone();
            async move { objects(ch).create_namespace(req).await }
        })
        .await?
        .into_inner()
        .namespace
        .map(NamespaceInfo::from)
        .ok_or_else(|| missing("namespace"))
    }

    /// Rewraps encrypted namespace `name`'s data keys under the cluster's current
    /// key-encryption key (no chunk is read or rewritten) and, with `new_data_key`, starts a
    /// new data key generation for new writes (older chunks stay sealed under theirs).
    pub async fn rekey_namespace(&self, name: &str, new_data_key: bool) -> Result<RekeyReport, ClientError> {
        let req = RekeyNamespaceRequest {
            name: name.to_string(),
            request_id: new_request_id(),
            new_data_key,
        };
        let r = self
            .call(|ch| {
                let req = req.clone();
                async move { objects(ch).rekey_namespace(req).await }
            })
            .await?
            .into_inner();
        Ok(RekeyReport {
            namespace: r
                .namespace
                .map(NamespaceInfo::from)
                .ok_or_else(|| missing("namespace"))?,
            rewrapped: r.rewrapped,
            kek_id: r.kek_id,
        })
    }

    /// Replaces the whole policy of namespace `name`.
    pub async fn set_namespace(&self, name: &str, policy: NamespacePolicy) -> Result<NamespaceInfo, ClientError> {
        let req = SetNamespaceRequest {
            name: name.to_string(),
            policy: Some(policy.into()),
            request_id: new_request_id(),
        };
        self.call(|ch| {
            let req = req.clone();
            async move { objects(ch).set_namespace(req).await }
        })
        .await?
        .into_inner()
        .namespace
        .map(NamespaceInfo::from)
        .ok_or_else(|| missing("namespace"))
    }

    /// Reads namespace `name`'s policy, lets `change` edit it and writes it back. Not
    /// atomic: a concurrent change between the read and the write is overwritten.
    pub async fn update_namespace(
        &self,
        name: &str,
        change: impl FnOnce(&mut NamespacePolicy),
    ) -> Result<NamespaceInfo, ClientError> {
        let mut policy = self.namespace(name).await?.policy;
        change(&mut policy);
        self.set_namespace(name, policy).await
    }

    /// Removes an empty namespace; returns whether it existed.
    pub async fn delete_namespace(&self, name: &str) -> Result<bool, ClientError> {
        let req = DeleteNamespaceRequest {
            name: name.to_string(),
            request_id: new_request_id(),
        };
        Ok(self
            .call(|ch| {
                let req = req.clone();
                async move { objects(ch).delete_namespace(req).await }
            })
            .await?
            .into_inner()
            .existed)
    }

    /// Every namespace with its policy and replication state, as the leader sees them.
    pub async fn list_namespaces(&self) -> Result<Vec<NamespaceInfo>, ClientError> {
        Ok(self
            .call(|ch| async move { objects(ch).list_namespaces(ListNamespacesRequest {}).await })
            .await?
            .into_inner()
            .namespaces
            .into_iter()
            .map(NamespaceInfo::from)
            .collect())
    }

    /// One namespace, or [`ClientError::NotFound`].
    pub async fn namespace(&self, name: &str) -> Result<NamespaceInfo, ClientError> {
        self.list_namespaces()
            .await?
            .into_iter()
            .find(|n| n.name == name)
            .ok_or_else(|| ClientError::NotFound(format!("namespace {name} does not exist")))
    }

    /// Objects of namespace `ns` as `opts` selects them, walking every page up to
    /// `opts.limit` (0: all of them); the flag tells whether more matched than were
    /// returned. Each page is a read of its own: a version present during the whole walk is
    /// listed exactly once.
    pub async fn list_objects(
        &self,
        ns: &str,
        opts: &ListObjectsOptions,
    ) -> Result<(Vec<ObjectInfo>, bool), ClientError> {
        let mut out = Vec::new();
        let mut cursor = String::new();
        loop {
            let page_opts = ListObjectsOptions {
                limit: opts.limit.saturating_sub(out.len() as u32),
                ..opts.clone()
            };
            let page = self.list_objects_page(ns, &page_opts, &cursor).await?;
            out.extend(page.objects);
            let limited = opts.limit != 0 && out.len() >= opts.limit as usize;
            if page.next_cursor.is_empty() || limited {
                return Ok((out, page.more));
            }
            cursor = crate::client::next_cursor(cursor, page.next_cursor)?;
        }
    }

    /// One page of the objects of namespace `ns` (`opts.limit` is the page size), from
    /// `cursor`: empty for the first page, then the previous page's
    /// [`ObjectPage::next_cursor`].
    pub async fn list_objects_page(
        &self,
        ns: &str,
        opts: &ListObjectsOptions,
        cursor: &str,
    ) -> Result<ObjectPage, ClientError> {
        let stale = opts.stale;
        let req = ListObjectsRequest {
            namespace: ns.to_string(),
            prefix: opts.prefix.clone(),
            all_versions: opts.all_versions,
            limit: opts.limit,
            stale,
            cursor: cursor.to_string(),
        };
        let f = |ch: Channel| {
            let req = req.clone();
            async move { objects(ch).list_objects(req).await }
        };
        let r = if stale {
            self.call_any(f).await?
        } else {
            self.call(f).await?
        }
        .into_inner();
        Ok(ObjectPage {
            objects: r.objects.into_iter().map(ObjectInfo::from).collect(),
            more: r.more,
            next_cursor: r.next_cursor,
        })
    }

    /// Deletes `ns/key` by writing a tombstone version. Applied once even when retried.
    pub async fn delete_object(&self, ns: &str, key: &str) -> Result<DeletedObject, ClientError> {
        let req = DeleteObjectRequest {
            namespace: ns.to_string(),
            key: key.to_string(),
            request_id: new_request_id(),
        };
        Ok(self
            .call(|ch| {
                let req = req.clone();
                async move { objects(ch).delete_object(req).await }
            })
            .await?
            .into_inner()
            .into())
    }

    /// Checks every object of `ns` (every namespace when `None`) against its policy, asking
    /// every holder to re-hash its copies. May take long: bounded by the object timeout if
    /// set, otherwise only by the connection's keep-alive.
    pub async fn verify(&self, ns: Option<&str>) -> Result<VerifyReport, ClientError> {
        let req = VerifyRequest {
            namespace: ns.unwrap_or_default().to_string(),
        };
        self.call_long(|ch| {
            let req = req.clone();
            async move { objects(ch).verify(req).await }
        })
        .await
        .map(VerifyReport::from)
    }

    /// Starts a scrub pass on every reachable node (see [`ScrubOptions`] for when it
    /// answers). Bounded like [`ArkClient::verify`].
    pub async fn scrub(&self, opts: &ScrubOptions) -> Result<ScrubReport, ClientError> {
        let wait = opts.wait;
        self.call_long(|ch| async move { objects(ch).scrub(ScrubRequest { wait }).await })
            .await
            .map(ScrubReport::from)
    }

    /// A long unary call that any node can answer, over stream connections.
    async fn call_long<T, F, Fut>(&self, mut f: F) -> Result<T, ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let mut retries = Retries::new(self);
        loop {
            let addr = retries.endpoint(&self.data_endpoints())?;
            let attempt = async {
                let ch = self.stream_channel(&addr).await?;
                f(ch).await.map_err(|st| self.classify_noting(&addr, &st))
            };
            match retries.within(attempt).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Transient(m)) => {
                    self.forget_stream_channel(&addr);
                    retries.failed(m).await?;
                }
            }
        }
    }

    /// Uploads `source` as a new version of `ns/key` to any node and checks that the node
    /// committed exactly the bytes sent (size and SHA-256).
    ///
    /// A file is retried from its start on UNAVAILABLE or a lost connection, on the next
    /// endpoint, with the same request id (a retry of an upload that was in fact committed
    /// returns that commit); a stream only while nothing was read from it. Limits: attempts,
    /// [`TRANSFER_STALL_MAX`] without progress, [`PUT_COMMIT_WAIT_MAX`] for the commit, and
    /// the object timeout if set. An interrupted upload never becomes visible.
    pub async fn put_object(
        &self,
        ns: &str,
        key: &str,
        source: PutSource,
        opts: &PutOptions,
    ) -> Result<PutOutcome, ClientError> {
        let request_id = new_request_id();
        let (path, mut stream) = match source {
            PutSource::File(p) => (Some(p), None),
            PutSource::Reader { reader, size } => (None, Some((reader, size))),
        };
        let mut retries = Retries::new(self);
        // Off for good once a node said the base version is gone.
        let mut delta = !opts.whole;
        loop {
            let addr = retries.endpoint(&self.data_endpoints())?;
            let mut touched = false;
            let mut rereadable = false;
            let attempt = async {
                let mut file;
                let (src, size): (&mut (dyn AsyncRead + Send + Unpin), Option<u64>) = match (&path, &mut stream) {
                    (Some(p), _) => {
                        let (f, size) = open_source(p).await?;
                        file = f;
                        rereadable = size.is_some();
                        (&mut file, size)
                    }
                    (None, Some((reader, size))) => (reader.as_mut(), *size),
                    (None, None) => return Err(Failure::Fatal(ClientError::Config("upload without a source".into()))),
                };
                let base = match size {
                    Some(s) if delta && rereadable && s >= DELTA_MIN_BYTES => {
                        let ch = self.stream_channel(&addr).await?;
                        delta::fetch_base(ch, &addr, ns, key).await?
                    }
                    _ => None,
                };
                let header = PutObjectHeader {
                    namespace: ns.to_string(),
                    key: key.to_string(),
                    request_id: request_id.clone(),
                    size,
                    sha256: Vec::new(),
                    base_version: base.as_ref().map_or(0, |b| b.version),
                };
                self.put_attempt(&addr, header, src, base.as_ref(), &mut touched, opts.progress.as_ref())
                    .await
            };
            match retries.within(attempt).await {
                Ok((resp, sent)) => {
                    return check_put(ns, key, resp, &sent, retries.budget.made());
                }
                Err(Failure::Fatal(e)) if delta && delta::base_gone(&e) => {
                    tracing::info!(%ns, %key, error = %e, "the key's previous version is gone; uploading the whole file");
                    delta = false;
                }
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Transient(m)) => {
                    self.forget_stream_channel(&addr);
                    if touched && !rereadable {
                        retries.last = m;
                        return Err(retries.give_up(
                            "; the source is a one-pass stream that was already partly sent, so the upload was not \
                             retried (nothing was committed unless the node had received all of it)",
                        ));
                    }
                    retries.failed(m).await?;
                }
            }
        }
    }

    /// One upload to `addr`: the header, then the source in [`PUT_MESSAGE_BYTES`] messages,
    /// or, with a `base`, as the chunks it lacks ([`crate::delta`]).
    async fn put_attempt(
        &self,
        addr: &str,
        header: PutObjectHeader,
        source: &mut (dyn AsyncRead + Send + Unpin),
        base: Option<&Base>,
        touched: &mut bool,
        progress: Option<&Progress>,
    ) -> Result<(PutObjectResponse, Sent), Failure> {
        let ch = self.stream_channel(addr).await?;
        let total = header.size;
        let (tx, rx) = mpsc::channel::<Option<PutObjectRequest>>(PUT_QUEUE_MESSAGES);
        tx.send(Some(PutObjectRequest {
            part: Some(put_object_request::Part::Header(header)),
        }))
        .await
        .map_err(|_| Failure::Transient(format!("{addr}: upload queue closed")))?;
        let mut rpc = Box::pin(async move { objects(ch).put_object(Request::new(upload_stream(rx))).await });
        if let Some(p) = progress {
            p(0, total);
        }
        let producer = async {
            match (base, total) {
                (Some(b), Some(total)) => delta::send_delta(&tx, source, total, b, touched, progress).await,
                _ => send_data(&tx, source, total, touched, progress).await,
            }
        };
        tokio::pin!(producer);
        let sent = tokio::select! {
            biased;
            r = &mut rpc => {
                return Err(match r {
                    Err(st) => self.classify_noting(addr, &st),
                    // A node must not answer before the upload's end marker was queued.
                    Ok(_) => Failure::Fatal(ClientError::Server(format!("{addr} answered before the upload ended"))),
                });
            }
            p = &mut producer => match p {
                Ok(sent) => sent,
                Err(Produce::Closed) => {
                    // The transport dropped the upload: the RPC says why.
                    return Err(match tokio::time::timeout(TRANSFER_STALL_MAX, rpc).await {
                        Ok(Err(st)) => self.classify_noting(addr, &st),
                        Ok(Ok(_)) => Failure::Fatal(ClientError::Server(format!("{addr} answered before the upload ended"))),
                        Err(_) => Failure::Transient(format!("{addr}: the upload stream closed")),
                    });
                }
                Err(Produce::Stalled) => {
                    return Err(Failure::Transient(format!(
                        "{addr}: no upload progress for {} s",
                        TRANSFER_STALL_MAX.as_secs()
                    )))
                }
                Err(Produce::Fatal(e)) => return Err(Failure::Fatal(e)),
            },
        };
        match tokio::time::timeout(PUT_COMMIT_WAIT_MAX, rpc).await {
            Ok(Ok(resp)) => Ok((resp.into_inner(), sent)),
            Ok(Err(st)) => Err(self.classify_noting(addr, &st)),
            Err(_) => Err(Failure::Transient(format!(
                "{addr}: the upload was sent but not committed within {} s",
                PUT_COMMIT_WAIT_MAX.as_secs()
            ))),
        }
    }

    /// Streams version `opts.version` of `ns/key` into `sink` from any node (with a single
    /// endpoint, exactly that node), checking size and SHA-256 against the object's
    /// manifest as the bytes pass.
    ///
    /// On UNAVAILABLE, a stall or a lost connection before any byte was written, the next
    /// endpoint is tried; after that the transfer fails, since `sink` cannot be rewound.
    /// When this returns an error, what was written to `sink` must be discarded.
    pub async fn get_object<W>(
        &self,
        ns: &str,
        key: &str,
        opts: &GetOptions,
        sink: &mut W,
    ) -> Result<ObjectInfo, ClientError>
    where
        W: AsyncWrite + Unpin + Send,
    {
        self.get_into(ns, key, opts, &mut OneShot(sink)).await
    }

    /// The retry loop of a download; `sink` says whether it can start over.
    async fn get_into<S: Sink>(
        &self,
        ns: &str,
        key: &str,
        opts: &GetOptions,
        sink: &mut S,
    ) -> Result<ObjectInfo, ClientError> {
        let req = GetObjectRequest {
            namespace: ns.to_string(),
            key: key.to_string(),
            version: opts.version,
            stale: opts.stale,
        };
        let mut retries = Retries::new(self);
        loop {
            let addr = retries.endpoint(&self.data_endpoints())?;
            let mut wrote = false;
            let attempt = async {
                let ch = self.stream_channel(&addr).await?;
                let stream = match tokio::time::timeout(TRANSFER_STALL_MAX, objects(ch).get_object(req.clone())).await {
                    Ok(Ok(r)) => r.into_inner(),
                    Ok(Err(st)) => return Err(self.classify_noting(&addr, &st)),
                    Err(_) => {
                        return Err(Failure::Transient(format!(
                            "{addr}: no answer within {} s",
                            TRANSFER_STALL_MAX.as_secs()
                        )))
                    }
                };
                receive_object(&addr, stream, sink, opts, &mut wrote).await
            };
            match retries.within(attempt).await {
                Ok(info) => return Ok(info),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Transient(m)) => {
                    self.forget_stream_channel(&addr);
                    if wrote && !sink.can_restart() {
                        retries.last = m;
                        return Err(retries
                            .give_up("; the transfer broke after data had been written out, so it was not retried"));
                    }
                    retries.failed(m).await?;
                    if wrote {
                        sink.restart()
                            .await
                            .map_err(|e| ClientError::io("cannot start the download over", e))?;
                    }
                }
            }
        }
    }

    /// Like [`ArkClient::get_object`], into file `dest`: written to `<dest>.ark-partial` in
    /// the same folder, fsynced, and renamed over `dest` only once verified; on any failure
    /// the partial file is removed and `dest` is untouched. Since a file can be truncated, a
    /// transfer that breaks midway starts over on the next endpoint (within the same limits).
    pub async fn get_object_to_file(
        &self,
        ns: &str,
        key: &str,
        dest: &Path,
        opts: &GetOptions,
    ) -> Result<ObjectInfo, ClientError> {
        let (partial, mut file) = create_partial(dest).await?;
        let res = self.get_into(ns, key, opts, &mut file).await;
        finish_partial(file, &partial, dest, res).await
    }
}

/// Where a download goes, and whether it can start over after a broken transfer.
trait Sink: AsyncWrite + Unpin + Send {
    /// Whether [`Sink::restart`] works.
    fn can_restart(&self) -> bool;
    /// Empties the sink so that the download can be written again from its first byte.
    fn restart(&mut self) -> impl Future<Output = std::io::Result<()>> + Send;
}

impl Sink for tokio::fs::File {
    fn can_restart(&self) -> bool {
        true
    }

    async fn restart(&mut self) -> std::io::Result<()> {
        use tokio::io::AsyncSeekExt;
        self.flush().await?;
        self.set_len(0).await?;
        self.seek(std::io::SeekFrom::Start(0)).await?;
        Ok(())
    }
}

/// Any writer, written once: a broken download cannot start over.
struct OneShot<'a, W>(&'a mut W);

impl<W: AsyncWrite + Unpin + Send> Sink for OneShot<'_, W> {
    fn can_restart(&self) -> bool {
        false
    }

    async fn restart(&mut self) -> std::io::Result<()> {
        Err(std::io::Error::other("this output cannot be rewound"))
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for OneShot<'_, W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

/// Opens a file to upload: its size when it is a regular file (and so can be re-read).
async fn open_source(path: &Path) -> Result<(tokio::fs::File, Option<u64>), Failure> {
    let f = tokio::fs::File::open(path)
        .await
        .map_err(|e| Failure::Fatal(ClientError::io(format!("cannot open {}", path.display()), e)))?;
    let meta = f
        .metadata()
        .await
        .map_err(|e| Failure::Fatal(ClientError::io(format!("cannot stat {}", path.display()), e)))?;
    if meta.is_dir() {
        return Err(Failure::Fatal(ClientError::InvalidArgument(format!(
            "{} is a folder; upload files one by one",
            path.display()
        ))));
    }
    Ok((f, meta.is_file().then_some(meta.len())))
}

/// Checks a put's answer against what was sent.
fn check_put(
    ns: &str,
    key: &str,
    resp: PutObjectResponse,
    sent: &Sent,
    attempts: u32,
) -> Result<PutOutcome, ClientError> {
    let object = ObjectInfo::from(resp.object.ok_or_else(|| missing("object"))?);
    if object.size != sent.bytes || object.sha256 != sent.sha256 {
        return Err(ClientError::Integrity(format!(
            "{ns}/{key} version {} was committed as {} bytes with sha256 {}, but the client sent {} bytes with sha256 \
             {}; do not trust that version: upload again, then check with `ark verify {ns}`",
            object.version,
            object.size,
            hex(&object.sha256),
            sent.bytes,
            hex(&sent.sha256)
        )));
    }
    Ok(PutOutcome {
        object,
        chunks: resp.chunks,
        chunks_new: resp.chunks_new,
        bytes_replicated: resp.bytes_replicated,
        bytes_reused: sent.reused,
        duplicate: resp.duplicate,
        attempts,
    })
}

/// Receives one object's stream into `sink`: its info first, then data, verified as it
/// passes. `wrote` tells whether any byte reached `sink`.
pub(crate) async fn receive_object<S, W>(
    addr: &str,
    mut stream: S,
    sink: &mut W,
    opts: &GetOptions,
    wrote: &mut bool,
) -> Result<ObjectInfo, Failure>
where
    S: Stream<Item = Result<GetObjectResponse, Status>> + Unpin,
    W: AsyncWrite + Unpin,
{
    let stalled = || {
        Failure::Transient(format!(
            "{addr}: nothing received for {} s",
            TRANSFER_STALL_MAX.as_secs()
        ))
    };
    let protocol = |what: &str| Failure::Fatal(ClientError::Server(format!("{addr}: {what}")));
    let integrity = |what: String| Failure::Fatal(ClientError::Integrity(what));
    let info = match tokio::time::timeout(TRANSFER_STALL_MAX, stream.next()).await {
        Err(_) => return Err(stalled()),
        Ok(None) => return Err(protocol("the object stream ended before its info")),
        Ok(Some(Err(st))) => return Err(classify(addr, &st)),
        Ok(Some(Ok(GetObjectResponse {
            part: Some(get_object_response::Part::Info(info)),
        }))) => ObjectInfo::from(info),
        Ok(Some(Ok(_))) => return Err(protocol("the object stream did not start with its info")),
    };
    let name = format!("{}/{} version {}", info.namespace, info.key, info.version);
    if info.sha256.len() != 32 {
        return Err(protocol("the object info has no SHA-256"));
    }
    if opts.version != 0 && info.version != opts.version {
        return Err(integrity(format!(
            "asked for version {} but {addr} sent {name}",
            opts.version
        )));
    }
    if let Some(want) = &opts.expect_sha256 {
        if *want != info.sha256 {
            return Err(integrity(format!(
                "{name} has sha256 {} on {addr}, but {} was expected",
                hex(&info.sha256),
                hex(want)
            )));
        }
    }
    let progress = opts.progress.as_ref();
    if let Some(p) = progress {
        p(0, Some(info.size));
    }
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut got: u64 = 0;
    loop {
        let data = match tokio::time::timeout(TRANSFER_STALL_MAX, stream.next()).await {
            Err(_) => return Err(stalled()),
            Ok(None) => break,
            Ok(Some(Err(st))) => return Err(classify(addr, &st)),
            Ok(Some(Ok(GetObjectResponse {
                part: Some(get_object_response::Part::Data(d)),
            }))) => d,
            Ok(Some(Ok(_))) => return Err(protocol("unexpected message in the object stream")),
        };
        got += data.len() as u64;
        if got > info.size {
            return Err(integrity(format!(
                "{addr} sent more than the {} bytes of {name}",
                info.size
            )));
        }
        ctx.update(&data);
        if !data.is_empty() {
            *wrote = true;
        }
        sink.write_all(&data)
            .await
            .map_err(|e| Failure::Fatal(ClientError::io("cannot write the object", e)))?;
        if let Some(p) = progress {
            p(got, Some(info.size));
        }
    }
    if got != info.size {
        return Err(integrity(format!(
            "{addr} sent {got} of the {} bytes of {name}",
            info.size
        )));
    }
    let sha = ctx.finish();
    if sha.as_ref() != info.sha256.as_slice() {
        return Err(integrity(format!(
            "{name} from {addr} hashes to {} but its manifest says {}",
            hex(sha.as_ref()),
            hex(&info.sha256)
        )));
    }
    sink.flush()
        .await
        .map_err(|e| Failure::Fatal(ClientError::io("cannot write the object", e)))?;
    Ok(info)
}

/// The download-in-progress name of `dest`: `<dest>.ark-partial`, in the same folder so
/// that the final rename stays on one file system.
pub fn partial_path(dest: &Path) -> Result<PathBuf, ClientError> {
    let name = dest
        .file_name()
        .ok_or_else(|| ClientError::InvalidArgument(format!("{} is not a file name", dest.display())))?;
    let mut n = name.to_os_string();
    n.push(PARTIAL_SUFFIX);
    Ok(dest.with_file_name(n))
}

/// Creates (or truncates) the partial file of `dest`, refusing a symbolic link there.
pub(crate) async fn create_partial(dest: &Path) -> Result<(PathBuf, tokio::fs::File), ClientError> {
    let partial = partial_path(dest)?;
    if let Ok(m) = tokio::fs::symlink_metadata(&partial).await {
        if m.file_type().is_symlink() {
            return Err(ClientError::InvalidArgument(format!(
                "{} is a symbolic link; refusing to write through it",
                partial.display()
            )));
        }
    }
    let file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&partial)
        .await
        .map_err(|e| ClientError::io(format!("cannot create {}", partial.display()), e))?;
    Ok((partial, file))
}

/// Ends a download into `partial`: on success fsyncs it, renames it over `dest` and fsyncs
/// the folder; on any failure (the download's or its own) removes it and leaves `dest` as
/// it was.
pub(crate) async fn finish_partial<T>(
    mut file: tokio::fs::File,
    partial: &Path,
    dest: &Path,
    res: Result<T, ClientError>,
) -> Result<T, ClientError> {
    let res = match res {
        Ok(v) => commit_partial(&mut file, partial, dest).await.map(|()| v),
        Err(e) => Err(e),
    };
    drop(file);
    if res.is_err() {
        match tokio::fs::remove_file(partial).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("cannot remove the unverified download {}: {e}", partial.display()),
        }
    }
    res
}

async fn commit_partial(file: &mut tokio::fs::File, partial: &Path, dest: &Path) -> Result<(), ClientError> {
    let io = |what: &str, p: &Path| {
        let what = format!("{what} {}", p.display());
        move |e| ClientError::io(what, e)
    };
    file.flush().await.map_err(io("cannot write", partial))?;
    file.sync_all().await.map_err(io("cannot fsync", partial))?;
    tokio::fs::rename(partial, dest)
        .await
        .map_err(io(&format!("cannot rename {} to", partial.display()), dest))?;
    // The rename is durable only once the folder is.
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let d = tokio::fs::File::open(dir)
        .await
        .map_err(io("cannot open folder", dir))?;
    d.sync_all().await.map_err(io("cannot fsync folder", dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use ark_proto::v1 as pb;
    use bytes::Bytes;

    use super::*;

    fn sha(b: &[u8]) -> Vec<u8> {
        digest::digest(&digest::SHA256, b).as_ref().to_vec()
    }

    fn info(data: &[u8]) -> pb::ObjectInfo {
        pb::ObjectInfo {
            namespace: "ns".into(),
            key: "k".into(),
            version: 3,
            size: data.len() as u64,
            sha256: sha(data),
            chunks: 1,
            created_ms: 1,
            deleted: false,
        }
    }

    fn stream_of(
        info: pb::ObjectInfo,
        pieces: &[&[u8]],
        tail: Option<Status>,
    ) -> impl Stream<Item = Result<GetObjectResponse, Status>> + Unpin {
        let mut items = vec![Ok(GetObjectResponse {
            part: Some(get_object_response::Part::Info(info)),
        })];
        for p in pieces {
            items.push(Ok(GetObjectResponse {
                part: Some(get_object_response::Part::Data(Bytes::copy_from_slice(p))),
            }));
        }
        items.extend(tail.map(Err));
        futures::stream::iter(items)
    }

    /// A download into `dest` from an in-memory stream, through the partial-file protocol.
    async fn download(
        dest: &Path,
        stream: impl Stream<Item = Result<GetObjectResponse, Status>> + Unpin,
        opts: &GetOptions,
    ) -> (Result<ObjectInfo, ClientError>, bool) {
        let (partial, mut file) = match create_partial(dest).await {
            Ok(p) => p,
            Err(e) => return (Err(e), false),
        };
        let mut wrote = false;
        let res = receive_object("test", stream, &mut file, opts, &mut wrote)
            .await
            .map_err(|f| match f {
                Failure::Fatal(e) => e,
                Failure::Transient(m) => ClientError::Server(m),
            });
        (finish_partial(file, &partial, dest, res).await, wrote)
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[tokio::test]
    async fn a_verified_download_is_renamed_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        let data = b"hello, disaster recovery";
        let (res, wrote) = download(
            &dest,
            stream_of(info(data), &[&data[..5], &data[5..]], None),
            &GetOptions::default(),
        )
        .await;
        let got = res.unwrap();
        assert!(wrote);
        assert_eq!(got.version, 3);
        assert_eq!(std::fs::read(&dest).unwrap(), data);
        assert_eq!(
            leftovers(dir.path()),
            vec!["out.bin".to_string()],
            "no partial file may remain"
        );
    }

    #[tokio::test]
    async fn a_corrupt_download_leaves_no_file_and_keeps_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        std::fs::write(&dest, b"previous good copy").unwrap();
        let data = b"0123456789";
        // Same length, one byte flipped.
        let (res, _) = download(
            &dest,
            stream_of(info(data), &[b"0123456780"], None),
            &GetOptions::default(),
        )
        .await;
        assert!(matches!(res, Err(ClientError::Integrity(_))), "{res:?}");
        assert_eq!(std::fs::read(&dest).unwrap(), b"previous good copy");
        assert_eq!(leftovers(dir.path()), vec!["out.bin".to_string()]);
    }

    #[tokio::test]
    async fn short_long_and_broken_downloads_are_refused_and_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("x");
        let data = b"0123456789";
        let cases: Vec<(Vec<&[u8]>, Option<Status>)> = vec![
            (vec![&data[..4]], None),
            (vec![&data[..], b"!"], None),
            (
                vec![&data[..4]],
                Some(Status::data_loss("every copy of chunk ab12 is corrupt")),
            ),
            (vec![&data[..4]], Some(Status::unavailable("connection reset"))),
        ];
        for (pieces, tail) in cases {
            let (res, wrote) = download(&dest, stream_of(info(data), &pieces, tail), &GetOptions::default()).await;
            assert!(res.is_err(), "{pieces:?} must fail");
            assert!(wrote);
            assert!(!dest.exists());
            assert!(leftovers(dir.path()).is_empty(), "{:?}", leftovers(dir.path()));
        }
    }

    #[tokio::test]
    async fn an_unexpected_hash_or_version_is_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("x");
        let data = b"abc";
        let opts = GetOptions {
            expect_sha256: Some(sha(b"something else")),
            ..GetOptions::default()
        };
        let (res, wrote) = download(&dest, stream_of(info(data), &[data], None), &opts).await;
        assert!(matches!(res, Err(ClientError::Integrity(_))), "{res:?}");
        assert!(!wrote);
        let opts = GetOptions {
            version: 2,
            ..GetOptions::default()
        };
        let (res, wrote) = download(&dest, stream_of(info(data), &[data], None), &opts).await;
        assert!(matches!(res, Err(ClientError::Integrity(_))), "{res:?}");
        assert!(!wrote);
        assert!(leftovers(dir.path()).is_empty());
    }

    #[tokio::test]
    async fn a_transient_failure_before_data_is_retryable() {
        let data = b"abc";
        let mut sink = Vec::new();
        let mut wrote = false;
        let s = stream_of(info(data), &[], Some(Status::unavailable("leader lost")));
        let r = receive_object("n1", s, &mut sink, &GetOptions::default(), &mut wrote).await;
        assert!(matches!(r, Err(Failure::Transient(_))), "{r:?}");
        assert!(!wrote && sink.is_empty());
    }

    #[tokio::test]
    async fn an_empty_object_downloads() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("empty");
        let (res, wrote) = download(&dest, stream_of(info(b""), &[], None), &GetOptions::default()).await;
        res.unwrap();
        assert!(!wrote);
        assert_eq!(std::fs::read(&dest).unwrap(), b"");
    }

    #[tokio::test]
    async fn a_file_download_can_start_over_but_a_writer_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut file = tokio::fs::File::create(&path).await.unwrap();
        assert!(Sink::can_restart(&file));
        file.write_all(b"first attempt, longer").await.unwrap();
        Sink::restart(&mut file).await.unwrap();
        file.write_all(b"second").await.unwrap();
        file.flush().await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");

        let mut v: Vec<u8> = Vec::new();
        let mut once = OneShot(&mut v);
        assert!(!once.can_restart());
        assert!(once.restart().await.is_err());
        once.write_all(b"x").await.unwrap();
        assert_eq!(v, b"x");
    }

    #[test]
    fn the_partial_file_sits_next_to_the_destination() {
        assert_eq!(
            partial_path(Path::new("/a/b/c.bin")).unwrap(),
            PathBuf::from("/a/b/c.bin.ark-partial")
        );
        assert_eq!(partial_path(Path::new("c")).unwrap(), PathBuf::from("c.ark-partial"));
        assert!(partial_path(Path::new("/")).is_err());
        assert!(partial_path(Path::new("a/..")).is_err());
    }

    #[tokio::test]
    async fn uploads_are_read_in_full_messages_and_hashed() {
        let data: Vec<u8> = (0..(PUT_MESSAGE_BYTES * 2 + 10)).map(|i| (i % 251) as u8).collect();
        let (tx, mut rx) = mpsc::channel(PUT_QUEUE_MESSAGES);
        let collector = tokio::spawn(async move {
            let mut sizes = Vec::new();
            let mut ended = false;
            while let Some(m) = rx.recv().await {
                match m {
                    Some(PutObjectRequest {
                        part: Some(put_object_request::Part::Data(d)),
                    }) => sizes.push(d.len()),
                    None => ended = true,
                    Some(_) => panic!("unexpected message"),
                }
            }
            (sizes, ended)
        });
        let mut src: &[u8] = &data;
        let mut touched = false;
        let sent = send_data(&tx, &mut src, Some(data.len() as u64), &mut touched, None)
            .await
            .map_err(|_| "send failed")
            .unwrap();
        drop(tx);
        let (sizes, ended) = collector.await.unwrap();
        assert_eq!(sizes, vec![PUT_MESSAGE_BYTES, PUT_MESSAGE_BYTES, 10]);
        assert!(ended && touched);
        assert_eq!(sent.bytes, data.len() as u64);
        assert_eq!(sent.sha256, sha(&data));
    }

    #[tokio::test]
    async fn a_source_that_changed_size_never_sends_the_end_marker() {
        for announced in [3u64, 100] {
            let (tx, mut rx) = mpsc::channel(8);
            let mut src: &[u8] = b"0123456789";
            let mut touched = false;
            let r = send_data(&tx, &mut src, Some(announced), &mut touched, None).await;
            assert!(matches!(r, Err(Produce::Fatal(ClientError::InvalidArgument(_)))));
            drop(tx);
            while let Some(m) = rx.recv().await {
                assert!(m.is_some(), "the end marker must not be sent for a changed source");
            }
        }
    }

    #[tokio::test]
    async fn the_upload_stream_ends_only_at_the_end_marker() {
        let (tx, rx) = mpsc::channel(4);
        let mut s = Box::pin(upload_stream(rx));
        tx.send(Some(PutObjectRequest::default())).await.unwrap();
        drop(tx);
        assert!(s.next().await.is_some());
        // The sender left without the marker: the stream must stay pending, not end.
        assert!(
            futures::FutureExt::now_or_never(s.next()).is_none(),
            "the stream ended cleanly without the end marker"
        );

        let (tx, rx) = mpsc::channel(4);
        let mut s = Box::pin(upload_stream(rx));
        tx.send(None).await.unwrap();
        assert!(s.next().await.is_none());
    }
}
