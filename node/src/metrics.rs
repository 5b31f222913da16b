//! Prometheus metrics: the process-wide recorder (with each histogram's buckets and every
//! family's HELP text), the plain-HTTP endpoint for `/metrics`, `/healthz` and `/readyz`,
//! and the gauges sampled from Raft's own metrics.
//!
//! Names follow Prometheus conventions: `ark_` prefix, base units as suffix, counters end in
//! `_total`, no unbounded label values. Other modules record with the `metrics` macros and
//! describe their own metrics in a `describe_metrics()` next to where they record them; only
//! this module installs the recorder and serves the endpoint; `server` hands it the list of
//! those functions. It does not
//! decide when the node is ready: `server` tells it. The metric table for operators is
//! docs/metrics.md.
//!
//! The endpoint is a small router on hyper (already in the tree through tonic) rather than
//! the exporter's own listener, which answers every path with the metrics and so could not
//! serve the health checks on the same port.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use openraft::ServerState;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::raft::ArkRaft;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
static BUILD_TAG: OnceLock<&'static str> = OnceLock::new();

/// Names this build in `ark_build_info{build=...}` (arkd passes its compile-time
/// `ARK_BUILD_TAG`, so an upgrade can be seen on a running node). Call before [`install`];
/// the first call wins.
pub fn set_build_tag(tag: &'static str) {
    let _ = BUILD_TAG.set(tag);
}

/// Latencies of requests, commits, peer RPCs, flushes and fsyncs: from a fast local fsync
/// to a chunk transfer close to its RPC timeout.
const LATENCY_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Client writes per Raft entry: 1 up to [`crate::raft::OPS_PER_ENTRY_MAX`].
const ENTRY_OPS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

/// Log operations per group commit: 1 up to the log writer's batch bound (4096).
const LOG_BATCH_OPS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// foyer's operations: microseconds in memory up to milliseconds (or worse) on disk.
const CACHE_SECONDS: &[f64] = &[
    0.000001, 0.0000025, 0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Every Ark histogram and the buckets that fit its values. A histogram missing here would
/// get [`LATENCY_SECONDS`] (a unit test refuses that).
const HISTOGRAM_BUCKETS: &[(&str, &[f64])] = &[
    ("ark_kv_request_duration_seconds", LATENCY_SECONDS),
    ("ark_raft_entry_commit_seconds", LATENCY_SECONDS),
    ("ark_peer_rpc_duration_seconds", LATENCY_SECONDS),
    ("ark_sm_flush_seconds", LATENCY_SECONDS),
    ("ark_raft_log_fsync_seconds", LATENCY_SECONDS),
    ("ark_repair_scan_seconds", LATENCY_SECONDS),
    ("ark_raft_snapshot_build_seconds", LATENCY_SECONDS),
    ("ark_raft_entry_ops", ENTRY_OPS),
    ("ark_raft_log_flush_batch_size", LOG_BATCH_OPS),
];

/// How often recorded histogram samples are folded into their buckets. The exporter keeps
/// them in a queue until then, which without this would grow for as long as nobody scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Open connections to the endpoint at most; one more is closed on accept. Prometheus holds
/// one per scrape job.
const CONNECTIONS_MAX: usize = 64;

/// How long a client may take to send a request's head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Content type of the text exposition format, as Prometheus asks for it.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4";

/// The recorder's configuration: each histogram's buckets.
fn builder() -> Result<PrometheusBuilder, BuildError> {
    let mut b = PrometheusBuilder::new().set_buckets(LATENCY_SECONDS)?;
    for (name, buckets) in HISTOGRAM_BUCKETS {
        b = b.set_buckets_for_metric(Matcher::Full((*name).to_owned()), buckets)?;
    }
    for name in crate::cache::FOYER_HISTOGRAMS {
        b = b.set_buckets_for_metric(Matcher::Full((*name).to_owned()), CACHE_SECONDS)?;
    }
    Ok(b)
}

/// Installs the process-wide recorder (once; later calls, e.g. a second in-process node in a
/// test, share it), describes this module's metrics and, with `describe_others`, every other
/// module's (the caller at the top of the node knows them all; this layer may not import
/// the layers above it), and returns the handle that renders them.
pub fn install(describe_others: fn()) -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = match builder() {
                Ok(b) => b.build_recorder(),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not built");
                    return None;
                }
            };
            let handle = recorder.handle();
            if let Err(e) = metrics::set_global_recorder(FoyerNames(recorder)) {
                tracing::warn!(error = %e, "metrics recorder not installed");
                return None;
            }
            describe_metrics();
            describe_others();
            let build = BUILD_TAG.get().copied().unwrap_or("");
            metrics::gauge!("ark_build_info", "version" => env!("CARGO_PKG_VERSION"), "build" => build).set(1.0);
            Some(handle)
        })
        .clone()
}

/// Describes this module's own metrics.
fn describe_metrics() {
    use metrics::{describe_gauge, Unit};
    describe_gauge!(
        "ark_build_info",
        "Always 1; the labels name the running arkd's version and build tag."
    );
    describe_gauge!("ark_raft_term", "This node's current Raft term.");
    describe_gauge!("ark_raft_is_leader", "1 while this node is the Raft leader, else 0.");
    describe_gauge!(
        "ark_raft_last_log_index",
        Unit::Count,
        "Index of the last entry in this node's Raft log."
    );
    describe_gauge!(
        "ark_raft_applied_index",
        Unit::Count,
        "Index of the last Raft entry this node applied."
    );
    describe_gauge!("ark_raft_has_leader", "1 while this node knows a Raft leader, else 0.");
}

/// A recorder that hands everything to the exporter's, with foyer's non-conforming names
/// replaced (see `crate::cache::foyer_metric_name`): foyer records through the global
/// recorder itself, so its names can only be fixed on the way in.
struct FoyerNames<R>(R);

impl<R> FoyerNames<R> {
    fn name(key: KeyName) -> KeyName {
        match crate::cache::foyer_metric_name(key.as_str()) {
            Some(n) => KeyName::from_const_str(n),
            None => key,
        }
    }

    fn key(key: &Key) -> Option<Key> {
        let n = crate::cache::foyer_metric_name(key.name())?;
        Some(Key::from_parts(n, key.labels().cloned().collect::<Vec<_>>()))
    }
}

impl<R: Recorder> Recorder for FoyerNames<R> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_counter(Self::name(key), unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_gauge(Self::name(key), unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.0.describe_histogram(Self::name(key), unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        match Self::key(key) {
            Some(k) => self.0.register_counter(&k, metadata),
            None => self.0.register_counter(key, metadata),
        }
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        match Self::key(key) {
            Some(k) => self.0.register_gauge(&k, metadata),
            None => self.0.register_gauge(key, metadata),
        }
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        match Self::key(key) {
            Some(k) => self.0.register_histogram(&k, metadata),
            None => self.0.register_histogram(key, metadata),
        }
    }
}

/// Folds recorded histogram samples into their buckets every [`UPKEEP_EVERY`] until
/// `shutdown` resolves.
pub async fn upkeep(handle: PrometheusHandle, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    let mut every = tokio::time::interval(UPKEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = every.tick() => handle.run_upkeep(),
        }
    }
}

/// Binds the metrics listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves HTTP on `listener` until `shutdown` resolves: `GET /metrics` (rendered by `handle`;
/// 503 without a recorder), `GET /healthz` (200 while the process runs) and `GET /readyz`
/// (200 while `ready` holds true, else 503). Connections still open at shutdown are closed.
pub async fn serve(
    listener: TcpListener,
    handle: Option<PrometheusHandle>,
    ready: watch::Receiver<bool>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    // Dropped on return, which aborts the connections still open.
    let mut conns = JoinSet::new();
    loop {
        let sock = tokio::select! {
            () = &mut shutdown => return,
            a = listener.accept() => match a {
                Ok((sock, _)) => sock,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        while conns.try_join_next().is_some() {}
        if conns.len() >= CONNECTIONS_MAX {
            tracing::debug!("metrics endpoint: {CONNECTIONS_MAX} connections open, closing a new one");
            continue;
        }
        let handle = handle.clone();
        let ready = ready.clone();
        conns.spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let resp = respond(handle.as_ref(), *ready.borrow(), &req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(sock), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}

/// The answer to one request.
fn respond<B>(handle: Option<&PrometheusHandle>, ready: bool, req: &Request<B>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n".into());
        r.headers_mut().insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/metrics" => match handle {
            Some(h) => {
                let mut r = text(StatusCode::OK, h.render());
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(PROMETHEUS_TEXT));
                r
            }
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "no metrics: another recorder was installed in this process first\n".into(),
            ),
        },
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" if ready => text(StatusCode::OK, "ready: a leader is known\n".into()),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: starting, stopping, or no leader known\n".into(),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

/// Copies Raft's state into gauges whenever it changes, until Raft shuts down.
pub async fn export_raft(raft: ArkRaft) {
    let mut rx = raft.metrics();
    loop {
        {
            let m = rx.borrow_and_update();
            metrics::gauge!("ark_raft_term").set(m.current_term as f64);
            metrics::gauge!("ark_raft_is_leader").set(if m.state == ServerState::Leader { 1.0 } else { 0.0 });
            metrics::gauge!("ark_raft_last_log_index").set(m.last_log_index.unwrap_or(0) as f64);
            metrics::gauge!("ark_raft_applied_index").set(m.last_applied.map(|l| l.index).unwrap_or(0) as f64);
            metrics::gauge!("ark_raft_has_leader").set(if m.current_leader.is_some() { 1.0 } else { 0.0 });
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly on purpose

    use std::collections::BTreeMap;
    use std::path::Path;
    use std::sync::Mutex;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Records only the descriptions it is given.
    #[derive(Default)]
    struct Descriptions(Mutex<Vec<(&'static str, String, String)>>);

    impl Descriptions {
        fn push(&self, kind: &'static str, key: KeyName, text: SharedString) {
            self.0
                .lock()
                .unwrap()
                .push((kind, key.as_str().to_owned(), text.to_string()));
        }
    }

    impl Recorder for Descriptions {
        fn describe_counter(&self, key: KeyName, _: Option<Unit>, text: SharedString) {
            self.push("counter", key, text);
        }
        fn describe_gauge(&self, key: KeyName, _: Option<Unit>, text: SharedString) {
            self.push("gauge", key, text);
        }
        fn describe_histogram(&self, key: KeyName, _: Option<Unit>, text: SharedString) {
            self.push("histogram", key, text);
        }
        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
            Counter::noop()
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::noop()
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::noop()
        }
    }

    /// Every metric name the node's source records, with its kind, read from the macro
    /// calls; a call whose name is not a string literal is returned in the error list.
    fn recorded_in_source() -> (BTreeMap<String, &'static str>, Vec<String>) {
        fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    walk(&p, files);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    files.push(p);
                }
            }
        }
        let mut files = Vec::new();
        walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
        let mut names = BTreeMap::new();
        let mut problems = Vec::new();
        for f in files {
            let src = std::fs::read_to_string(&f).unwrap();
            for kind in ["counter", "gauge", "histogram"] {
                let call = format!("{kind}!(");
                for (at, _) in src.match_indices(&call) {
                    if src[..at].ends_with("describe_") {
                        continue;
                    }
                    let rest = src[at + call.len()..].trim_start();
                    let Some(name) = rest.strip_prefix('"').and_then(|r| r.split('"').next()) else {
                        problems.push(format!("{}: a {kind}! whose name is not a literal", f.display()));
                        continue;
                    };
                    // foyer's names, recorded here only by the renaming test below.
                    if name.starts_with("foyer_") {
                        continue;
                    }
                    if let Some(other) = names.insert(name.to_owned(), kind) {
                        if other != kind {
                            problems.push(format!("{name} recorded both as {other} and as {kind}"));
                        }
                    }
                }
            }
        }
        (names, problems)
    }

    fn described() -> Vec<(&'static str, String, String)> {
        let d = Descriptions::default();
        metrics::with_local_recorder(&d, || {
            describe_metrics();
            crate::server::describe_all_metrics();
        });
        d.0.into_inner().unwrap()
    }

    #[test]
    fn every_recorded_metric_is_described_once_as_its_kind() {
        let (recorded, mut problems) = recorded_in_source();
        assert!(
            recorded.len() > 60,
            "the source scan found only {} metrics",
            recorded.len()
        );
        let described = described();
        let mut by_name: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
        for (kind, name, text) in &described {
            if text.trim().is_empty() {
                problems.push(format!("{name}: empty HELP text"));
            }
            if by_name.insert(name, (kind, text)).is_some() {
                problems.push(format!("{name}: described twice"));
            }
        }
        for (name, kind) in &recorded {
            match by_name.get(name.as_str()) {
                None => problems.push(format!("{name} ({kind}) is recorded but never described")),
                Some((k, _)) if k != kind => problems.push(format!("{name} is recorded as {kind}, described as {k}")),
                Some(_) => {}
            }
        }
        for name in by_name.keys() {
            if !name.starts_with("foyer_") && !recorded.contains_key(*name) {
                problems.push(format!("{name} is described but nothing records it"));
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn every_histogram_has_buckets_chosen_for_it() {
        let (recorded, _) = recorded_in_source();
        for (name, kind) in &recorded {
            if *kind == "histogram" {
                assert!(
                    HISTOGRAM_BUCKETS.iter().any(|(n, _)| n == name),
                    "{name} has no buckets of its own in HISTOGRAM_BUCKETS"
                );
            }
        }
        assert_eq!(ENTRY_OPS.last().copied(), Some(crate::raft::OPS_PER_ENTRY_MAX as f64));
        for (_, name, _) in described()
            .iter()
            .filter(|(k, n, _)| *k == "histogram" && n.starts_with("foyer_"))
        {
            assert!(
                crate::cache::FOYER_HISTOGRAMS.contains(&name.as_str()),
                "{name} has no buckets of its own in FOYER_HISTOGRAMS"
            );
        }
    }

    #[test]
    fn the_largest_raft_entry_lands_in_a_finite_bucket() {
        let recorder = builder().unwrap().build_recorder();
        metrics::with_local_recorder(&recorder, || {
            metrics::histogram!("ark_raft_entry_ops").record(crate::raft::OPS_PER_ENTRY_MAX as f64);
            metrics::histogram!("ark_raft_entry_ops").record(1.0);
        });
        let text = recorder.handle().render();
        assert!(text.contains("ark_raft_entry_ops_bucket{le=\"1\"} 1\n"), "{text}");
        assert!(text.contains("ark_raft_entry_ops_bucket{le=\"512\"} 1\n"), "{text}");
        assert!(text.contains("ark_raft_entry_ops_bucket{le=\"1024\"} 2\n"), "{text}");
    }

    #[test]
    fn foyers_names_are_exported_the_prometheus_way() {
        let recorder = FoyerNames(builder().unwrap().build_recorder());
        metrics::with_local_recorder(&recorder, || {
            metrics::counter!("foyer_storage_disk_io_bytes", "op" => "write").increment(5);
            metrics::histogram!("foyer_hybrid_op_duration", "op" => "hit").record(0.000_002);
            metrics::counter!("foyer_hybrid_op_total", "op" => "hit").increment(1);
        });
        let text = recorder.0.handle().render();
        assert!(
            text.contains("foyer_storage_disk_io_bytes_total{op=\"write\"} 5\n"),
            "{text}"
        );
        assert!(!text.contains("foyer_storage_disk_io_bytes{"), "{text}");
        // Renamed and given the cache's microsecond buckets.
        assert!(
            text.contains("foyer_hybrid_op_duration_seconds_bucket{op=\"hit\",le=\"0.0000025\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("foyer_hybrid_op_total{op=\"hit\"} 1\n"), "{text}");
    }

    /// One HTTP/1.1 request on a fresh connection: status and the whole response.
    async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
            .await
            .unwrap()
            .unwrap();
        let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap();
        (status, out)
    }

    #[tokio::test]
    async fn the_endpoint_serves_metrics_health_and_readiness() {
        let recorder = builder().unwrap().build_recorder();
        metrics::with_local_recorder(&recorder, || metrics::counter!("ark_scrub_missing_total").increment(3));
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (ready_tx, ready_rx) = watch::channel(false);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, Some(recorder.handle()), ready_rx, async {
            let _ = stop_rx.await;
        }));

        let (st, body) = request(addr, "GET", "/metrics").await;
        assert_eq!(st, 200, "{body}");
        assert!(body.contains("content-type: text/plain; version=0.0.4\r\n"), "{body}");
        assert!(body.contains("ark_scrub_missing_total 3\n"), "{body}");
        assert_eq!(request(addr, "GET", "/healthz").await.0, 200);
        assert_eq!(request(addr, "GET", "/readyz").await.0, 503);
        ready_tx.send_replace(true);
        assert_eq!(request(addr, "GET", "/readyz").await.0, 200);
        ready_tx.send_replace(false);
        assert_eq!(request(addr, "GET", "/readyz").await.0, 503);
        assert_eq!(request(addr, "GET", "/elsewhere").await.0, 404);
        assert_eq!(request(addr, "POST", "/metrics").await.0, 405);

        // A connection left open does not keep the endpoint from stopping.
        let idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = stop_tx.send(());
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the endpoint stops on shutdown")
            .unwrap();
        drop(idle);
    }
}
