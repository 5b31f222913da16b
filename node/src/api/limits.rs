//! What one client may ask of this node (`[limits]`): a request rate per identity (a token
//! bucket), uploads in progress per identity (RAII permits), the largest object, and a
//! deadline on every RPC (a tower layer in front of every service, [`DeadlineLayer`]).
//!
//! Owns those rules and their refusals: RESOURCE_EXHAUSTED for a rate or a count,
//! INVALID_ARGUMENT for a size, DEADLINE_EXCEEDED for a deadline, each naming its config key.
//! The clock is passed in (`*_at`), so the rules are tested without sleeping. Memory is
//! bounded: at most [`IDENTITIES_TRACKED_MAX`] buckets (full ones, which a new bucket would
//! equal, go first), and an upload count lives only while an upload runs. Must not decide
//! who a caller is (`identity_of` is a placeholder until `api::auth`) nor touch data.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tonic::codegen::{http, Service};
use tonic::Status;

use crate::config::LimitsConfig;

/// Most identities whose token buckets are kept; beyond it the full (idle) buckets are
/// dropped, then the least recently used.
pub const IDENTITIES_TRACKED_MAX: usize = 10_000;

/// The RPCs that get `limits.admin_rpc_timeout_ms` instead of `limits.rpc_timeout_ms`: their
/// work grows with the data or waits for a learner to catch up.
const ADMIN_PATHS: [&str; 4] = [
    "/ark.v1.Objects/Verify",
    "/ark.v1.Objects/Scrub",
    "/ark.v1.Cluster/AddLearner",
    "/ark.v1.Cluster/SaveSnapshot",
];
/// The RPC with no deadline on the whole call: an upload of any size lives as long as its
/// messages keep coming (`limits.stream_idle_timeout_ms`, enforced by the handler).
const UPLOAD_PATH: &str = "/ark.v1.Objects/PutObject";

/// One identity's token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The node's limits and the state they need.
#[derive(Debug)]
pub struct Limits {
    cfg: LimitsConfig,
    buckets: Mutex<HashMap<String, Bucket>>,
    uploads: Arc<Mutex<HashMap<String, u32>>>,
}

/// One upload in progress for an identity; dropping it ends the upload's claim.
#[derive(Debug)]
pub struct UploadPermit {
    identity: String,
    uploads: Arc<Mutex<HashMap<String, u32>>>,
}

impl Drop for UploadPermit {
    fn drop(&mut self) {
        metrics::gauge!("ark_client_uploads_in_progress").decrement(1.0);
        if let Ok(mut m) = self.uploads.lock() {
            if let Some(n) = m.get_mut(&self.identity) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    m.remove(&self.identity);
                }
            }
        }
    }
}

fn refuse(limit: &'static str, st: Status) -> Status {
    metrics::counter!("ark_limit_refusals_total", "limit" => limit).increment(1);
    st
}

impl Limits {
    /// Limits as configured.
    pub fn new(cfg: LimitsConfig) -> Self {
        Self {
            cfg,
            buckets: Mutex::default(),
            uploads: Arc::default(),
        }
    }

    /// The configured values.
    pub fn config(&self) -> &LimitsConfig {
        &self.cfg
    }

    /// Takes one token of `identity`'s bucket, or refuses with RESOURCE_EXHAUSTED (nothing to
    /// take when the rate is unlimited, the default). `api::auth::Authz` calls it for every
    /// identified call.
    pub fn admit(&self, identity: &str) -> Result<(), Status> {
        if self.cfg.requests_per_second_per_identity == 0 {
            return Ok(());
        }
        self.admit_at(identity, Instant::now())
    }

    fn burst(&self) -> f64 {
        let c = &self.cfg;
        f64::from(if c.requests_burst_per_identity == 0 {
            c.requests_per_second_per_identity
        } else {
            c.requests_burst_per_identity
        })
    }

    /// [`Self::admit`] at time `now`.
    fn admit_at(&self, identity: &str, now: Instant) -> Result<(), Status> {
        let rate = f64::from(self.cfg.requests_per_second_per_identity);
        if rate == 0.0 {
            return Ok(());
        }
        let burst = self.burst();
        let mut buckets = self
            .buckets
            .lock()
            .map_err(|_| Status::internal("rate limiter lock poisoned"))?;
        if !buckets.contains_key(identity) && buckets.len() >= IDENTITIES_TRACKED_MAX {
            // A bucket that refilled completely is what a new one would be: dropping it
            // forgets nothing. If every bucket is in use, the least recently used goes.
            buckets.retain(|_, b| b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate < burst);
            if buckets.len() >= IDENTITIES_TRACKED_MAX {
                if let Some(oldest) = buckets.iter().min_by_key(|(_, b)| b.at).map(|(k, _)| k.clone()) {
                    buckets.remove(&oldest);
                }
            }
        }
        let b = buckets
            .entry(identity.to_string())
            .or_insert(Bucket { tokens: burst, at: now });
        b.tokens = (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * rate).min(burst);
        b.at = b.at.max(now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        let wait_ms = ((1.0 - b.tokens) / rate * 1000.0).ceil() as u64;
        Err(refuse(
            "rate",
            Status::resource_exhausted(format!(
                "client {} sent more than {} requests per second (burst {}) to this node \
                 (limits.requests_per_second_per_identity); retry in {wait_ms} ms",
                identity, self.cfg.requests_per_second_per_identity, burst
            )),
        ))
    }

    /// A permit for one more upload of `identity`, or RESOURCE_EXHAUSTED when it already
    /// has `limits.uploads_per_identity_max` in progress on this node.
    pub fn upload_permit(&self, identity: &str) -> Result<UploadPermit, Status> {
        let max = self.cfg.uploads_per_identity_max;
        let mut m = self
            .uploads
            .lock()
            .map_err(|_| Status::internal("upload limiter lock poisoned"))?;
        let n = m.entry(identity.to_string()).or_insert(0);
        if *n >= max {
            return Err(refuse(
                "uploads",
                Status::resource_exhausted(format!(
                    "client {} already has {max} uploads in progress on this node \
                     (limits.uploads_per_identity_max); wait for one to finish",
                    identity
                )),
            ));
        }
        *n += 1;
        metrics::gauge!("ark_client_uploads_in_progress").increment(1.0);
        Ok(UploadPermit {
            identity: identity.to_string(),
            uploads: self.uploads.clone(),
        })
    }

    /// Refuses an object of `bytes` (announced, or received so far) over
    /// `limits.object_bytes_max`.
    pub fn check_object_size(&self, bytes: u64) -> Result<(), Status> {
        let max = self.cfg.object_bytes_max;
        if bytes > max {
            return Err(refuse(
                "object_size",
                Status::invalid_argument(format!(
                    "object is larger than this node's limit of {max} bytes (limits.object_bytes_max); \
                     nothing was committed"
                )),
            ));
        }
        Ok(())
    }

    /// Refuses a namespace create when the cluster holds `count` namespaces already; the
    /// state machine checks again when the create is applied.
    pub fn check_namespaces(&self, count: usize) -> Result<(), Status> {
        let max = self.cfg.namespaces_max;
        if count >= max as usize {
            return Err(refuse("namespaces", namespaces_full(max)));
        }
        Ok(())
    }

    /// Longest wait for a transfer's next message either way.
    pub fn stream_idle(&self) -> Duration {
        Duration::from_millis(self.cfg.stream_idle_timeout_ms)
    }

    /// The refusal of a transfer that stood still for [`Self::stream_idle`].
    pub fn stream_idle_exceeded(&self, what: &str) -> Status {
        refuse(
            "stream_idle",
            Status::deadline_exceeded(format!(
                "{what} moved no data for {} ms (limits.stream_idle_timeout_ms)",
                self.cfg.stream_idle_timeout_ms
            )),
        )
    }

    /// The layer that puts a deadline on every call.
    pub fn deadline_layer(&self) -> DeadlineLayer {
        DeadlineLayer {
            unary: Duration::from_millis(self.cfg.rpc_timeout_ms),
            admin: Duration::from_millis(self.cfg.admin_rpc_timeout_ms),
        }
    }
}

/// The refusal of a namespace create over `limits.namespaces_max` (also what the state
/// machine's refusal is mapped to).
pub fn namespaces_full(max: u32) -> Status {
    Status::resource_exhausted(format!(
        "the cluster holds its limit of {max} namespaces (limits.namespaces_max); delete one first"
    ))
}

/// The state machine's refusal of a command over a limit it carries (its message names the
/// key), counted like the node's own refusals.
pub fn refused_in_apply(limit: &'static str, msg: String) -> Status {
    refuse(limit, Status::resource_exhausted(msg))
}

/// A deadline on every call of the client plane: `limits.rpc_timeout_ms`, or
/// `limits.admin_rpc_timeout_ms` for the calls in [`ADMIN_PATHS`]; none for an upload,
/// whose handler bounds each wait instead. A streamed answer's deadline covers the call up
/// to its first message; the handler bounds the rest the same way. A call past its deadline
/// is dropped (a write it proposed may still commit: its request id makes the retry safe).
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    unary: Duration,
    admin: Duration,
}

impl DeadlineLayer {
    /// The deadline of a call to `path`, with the key that sets it.
    fn deadline(&self, path: &str) -> Option<(Duration, &'static str)> {
        if path == UPLOAD_PATH {
            None
        } else if ADMIN_PATHS.contains(&path) {
            Some((self.admin, "limits.admin_rpc_timeout_ms"))
        } else {
            Some((self.unary, "limits.rpc_timeout_ms"))
        }
    }
}

impl<S> tower_layer::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner, layer: *self }
    }
}

/// [`DeadlineLayer`]'s service.
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    layer: DeadlineLayer,
}

impl<S, B, RB> Service<http::Request<B>> for Deadline<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    RB: Default,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let deadline = self.layer.deadline(req.uri().path());
        let call = self.inner.call(req);
        Box::pin(async move {
            let Some((limit, key)) = deadline else {
                return call.await;
            };
            match tokio::time::timeout(limit, call).await {
                Ok(answer) => answer,
                Err(_) => Ok(refuse(
                    "deadline",
                    Status::deadline_exceeded(format!(
                        "the call took longer than {} ms ({key}); a write may still have been applied: \
                         retry it with the same request id",
                        limit.as_millis()
                    )),
                )
                .into_http()),
            }
        })
    }
}

/// Describes this module's metrics (HELP text and unit) to the recorder; called once at
/// start-up by `server` (through `metrics::install`).
pub(crate) fn describe_metrics() {
    metrics::describe_gauge!(
        "ark_client_uploads_in_progress",
        "Object uploads this node is receiving now (each holds a limits.uploads_per_identity_max permit)."
    );
    metrics::describe_counter!(
        "ark_limit_refusals_total",
        "Client requests refused by a [limits] setting, by limit (rate, uploads, object_size, namespaces, \
         deadline, stream_idle)."
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn limits(rate: u32, burst: u32, uploads: u32) -> Limits {
        Limits::new(LimitsConfig {
            requests_per_second_per_identity: rate,
            requests_burst_per_identity: burst,
            uploads_per_identity_max: uploads,
            ..LimitsConfig::default()
        })
    }

    #[test]
    fn a_burst_is_admitted_then_refused_until_the_bucket_refills() {
        let l = limits(10, 5, 1);
        let t0 = Instant::now();
        for _ in 0..5 {
            l.admit_at("a", t0).unwrap();
        }
        let st = l.admit_at("a", t0).unwrap_err();
        assert_eq!(st.code(), tonic::Code::ResourceExhausted);
        assert!(
            st.message().contains("limits.requests_per_second_per_identity"),
            "{st:?}"
        );
        assert!(st.message().contains("retry in 100 ms"), "{st:?}");
        // Another identity has its own bucket.
        l.admit_at("b", t0).unwrap();
        // 10 per second: one token after 100 ms, not before.
        assert!(l.admit_at("a", t0 + Duration::from_millis(99)).is_err());
        l.admit_at("a", t0 + Duration::from_millis(100)).unwrap();
        assert!(l.admit_at("a", t0 + Duration::from_millis(100)).is_err());
        // A long pause refills up to the burst, no more.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..5 {
            l.admit_at("a", later).unwrap();
        }
        assert!(l.admit_at("a", later).is_err());
    }

    #[test]
    fn the_rate_holds_over_time_and_zero_means_unlimited() {
        let l = limits(100, 0, 1);
        let t0 = Instant::now();
        // Ten seconds of requests every millisecond: the burst (one second's worth) plus
        // the rate gets through.
        let admitted = (0..10_000)
            .filter(|ms| l.admit_at("a", t0 + Duration::from_millis(*ms)).is_ok())
            .count();
        assert!((1095..=1101).contains(&admitted), "{admitted}");
        let free = limits(0, 0, 1);
        assert!((0..100_000).all(|_| free.admit_at("a", t0).is_ok()));
        assert!(free.buckets.lock().unwrap().is_empty(), "unlimited keeps no state");
    }

    #[test]
    fn buckets_are_bounded_and_idle_ones_go_first() {
        let l = limits(1, 1, 1);
        let t0 = Instant::now();
        // An identity that spent its token, then many others.
        l.admit_at("busy", t0).unwrap();
        for i in 0..IDENTITIES_TRACKED_MAX {
            l.admit_at(&format!("id-{i}"), t0 + Duration::from_millis(1)).unwrap();
        }
        assert!(l.buckets.lock().unwrap().len() <= IDENTITIES_TRACKED_MAX);
        // Two seconds later every bucket is full again: a newcomer drops them all...
        let t2 = t0 + Duration::from_secs(2);
        l.admit_at("new", t2).unwrap();
        assert_eq!(l.buckets.lock().unwrap().len(), 1);
        // ...and when none is idle, the least recently used goes, one at a time.
        for i in 0..IDENTITIES_TRACKED_MAX - 1 {
            l.admit_at(&format!("id-{i}"), t2).unwrap();
        }
        assert!(l.admit_at("new", t2).is_err(), "new spent its token");
        l.admit_at("newer", t2 + Duration::from_millis(1)).unwrap();
        let b = l.buckets.lock().unwrap();
        assert_eq!(b.len(), IDENTITIES_TRACKED_MAX);
        assert!(b.contains_key("newer"));
    }

    #[test]
    fn upload_permits_count_per_identity_and_are_returned_on_drop() {
        let l = limits(0, 0, 2);
        let p1 = l.upload_permit("a").unwrap();
        let p2 = l.upload_permit("a").unwrap();
        let st = l.upload_permit("a").unwrap_err();
        assert_eq!(st.code(), tonic::Code::ResourceExhausted);
        assert!(st.message().contains("limits.uploads_per_identity_max"), "{st:?}");
        let other = l.upload_permit("b").unwrap();
        drop(p1);
        let p3 = l.upload_permit("a").unwrap();
        drop((p2, p3, other));
        assert!(
            l.uploads.lock().unwrap().is_empty(),
            "no count is kept without an upload"
        );
    }

    #[test]
    fn object_size_and_namespace_count() {
        let l = Limits::new(LimitsConfig {
            object_bytes_max: 100,
            namespaces_max: 2,
            ..LimitsConfig::default()
        });
        l.check_object_size(100).unwrap();
        let st = l.check_object_size(101).unwrap_err();
        assert_eq!(st.code(), tonic::Code::InvalidArgument);
        assert!(st.message().contains("limits.object_bytes_max"), "{st:?}");
        l.check_namespaces(1).unwrap();
        let st = l.check_namespaces(2).unwrap_err();
        assert_eq!(st.code(), tonic::Code::ResourceExhausted);
        assert!(st.message().contains("limits.namespaces_max"), "{st:?}");
    }

    /// A service that answers after `delay`, or never.
    #[derive(Clone)]
    struct Slow(Option<Duration>);

    impl Service<http::Request<()>> for Slow {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let delay = self.0;
            Box::pin(async move {
                match delay {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
                Ok(http::Response::new(tonic::body::Body::default()))
            })
        }
    }

    async fn call(layer: DeadlineLayer, path: &str, delay: Option<Duration>) -> Option<Status> {
        use tower_layer::Layer;
        let mut svc = layer.layer(Slow(delay));
        let req = http::Request::builder().uri(path).body(()).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(10), svc.call(req))
            .await
            .expect("the layer answered within its deadline")
            .unwrap();
        Status::from_header_map(resp.headers())
    }

    #[tokio::test]
    async fn every_call_but_an_upload_has_a_deadline() {
        let layer = DeadlineLayer {
            unary: Duration::from_millis(50),
            admin: Duration::from_millis(300),
        };
        let st = call(layer, "/ark.v1.Kv/Get", None).await.unwrap();
        assert_eq!(st.code(), tonic::Code::DeadlineExceeded);
        assert!(st.message().contains("limits.rpc_timeout_ms"), "{st:?}");
        // An admin call gets the longer deadline.
        let slow = Some(Duration::from_millis(150));
        assert!(call(layer, "/ark.v1.Objects/Verify", slow).await.is_none());
        let st = call(layer, "/ark.v1.Objects/Scrub", None).await.unwrap();
        assert!(st.message().contains("limits.admin_rpc_timeout_ms"), "{st:?}");
        // An upload is not cut by either.
        let long = Some(Duration::from_millis(500));
        assert!(call(layer, "/ark.v1.Objects/PutObject", long).await.is_none());
        assert!(call(layer, "/ark.v1.Kv/Get", Some(Duration::from_millis(1)))
            .await
            .is_none());
    }
}
