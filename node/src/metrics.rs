//! Prometheus metrics: the process-wide recorder, the plain-HTTP `/metrics` endpoint and the
//! gauges sampled from Raft's own metrics.
//!
//! Names follow Prometheus conventions: `ark_` prefix, base units as suffix, counters end in
//! `_total`, no unbounded label values. Other modules record with the `metrics` macros; only
//! this module installs the recorder and serves it.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use openraft::ServerState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::raft::ArkRaft;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
static BUILD_TAG: OnceLock<&'static str> = OnceLock::new();

/// Names this build in `ark_build_info{build=...}` (arkd passes its compile-time
/// `ARK_BUILD_TAG`, so an upgrade can be seen on a running node). Call before [`install`];
/// the first call wins.
pub fn set_build_tag(tag: &'static str) {
    let _ = BUILD_TAG.set(tag);
}

const LATENCY_BUCKETS_SECONDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the process-wide recorder (once; later calls, e.g. a second in-process node in a
/// test, share it) and returns the handle that renders it.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new().set_buckets(LATENCY_BUCKETS_SECONDS).ok()?;
            match builder.install_recorder() {
                Ok(h) => {
                    let build = BUILD_TAG.get().copied().unwrap_or("");
                    metrics::gauge!("ark_build_info", "version" => env!("CARGO_PKG_VERSION"), "build" => build)
                        .set(1.0);
                    Some(h)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .clone()
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, handle: PrometheusHandle, shutdown: impl std::future::Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let (mut sock, _) = tokio::select! {
            _ = &mut shutdown => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            // Read the request head (bounded), answer, close.
            let mut buf = [0u8; 2048];
            let n = match tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let head = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if head.starts_with("GET /metrics") {
                ("200 OK", handle.render())
            } else {
                ("404 Not Found", "try /metrics\n".to_string())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
}

/// Binds the metrics listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
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
