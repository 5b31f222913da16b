//! `ark bench kv`: a closed-loop load generator for small writes. The same loop drives Ark
//! or, for side-by-side comparison, etcd's v3 gRPC API (plain `etcdserverpb.KV/Put`), so both
//! are measured with the same client code, concurrency, value size and connection count.
//!
//! Also the small helpers the playground experiments share (`risk_bench`, `pacing_bench`):
//! percentiles of recorded latencies and reading a node's `/metrics`.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tonic::transport::Channel;

use ark_client::ArkClient;

/// What to load.
#[derive(Debug, Clone)]
pub enum Target {
    /// An Ark cluster through the SDK (leader discovery, mTLS, request ids).
    Ark(ArkClient),
    /// An etcd endpoint (`http://host:port`, or `https://` with the given TLS).
    Etcd {
        /// The URL.
        url: String,
        /// TLS for an `https://` URL.
        tls: Option<tonic::transport::ClientTlsConfig>,
    },
}

/// Load parameters.
#[derive(Debug, Clone)]
pub struct Params {
    /// Concurrent closed-loop clients.
    pub clients: usize,
    /// Connections they share.
    pub conns: usize,
    /// Bytes per value.
    pub value_bytes: usize,
    /// How long to run.
    pub duration: Duration,
    /// Distinct keys per client (keys are overwritten round-robin).
    pub keys_per_client: usize,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
}

impl Latency {
    /// The percentiles of ascending latencies in microseconds.
    pub fn of_sorted_us(sorted: &[u32]) -> Self {
        Self {
            p50: percentile(sorted, 0.50),
            p99: percentile(sorted, 0.99),
            p999: percentile(sorted, 0.999),
            max: sorted.last().map(|m| f64::from(*m) / 1000.0).unwrap_or(0.0),
        }
    }
}

/// Result of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// "ark" or "etcd".
    pub target: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Connections.
    pub conns: usize,
    /// Bytes per value.
    pub value_bytes: usize,
    /// Wall time measured.
    pub duration_s: f64,
    /// Acknowledged writes.
    pub ops: u64,
    /// Failed writes.
    pub errors: u64,
    /// Acknowledged writes per second.
    pub throughput_ops_per_s: f64,
    /// Latency of acknowledged writes.
    pub latency_ms: Latency,
}

#[derive(Clone, PartialEq, prost::Message)]
struct EtcdPutRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct EtcdPutResponse {}

async fn etcd_put(ch: Channel, key: Vec<u8>, value: Vec<u8>) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/etcdserverpb.KV/Put");
    let codec = tonic::codec::ProstCodec::<EtcdPutRequest, EtcdPutResponse>::default();
    grpc.unary(tonic::Request::new(EtcdPutRequest { key, value }), path, codec)
        .await
        .map(|_| ())
}

/// The `q` quantile (0..=1, nearest rank) of ascending latencies in microseconds, in
/// milliseconds; 0 when there are none.
pub fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    f64::from(sorted[idx.min(sorted.len() - 1)]) / 1000.0
}

/// Runs the load and reports.
pub async fn run(target: Target, p: &Params) -> anyhow::Result<Report> {
    let conns = p.conns.clamp(1, p.clients.max(1));
    let (name, arks, etcds): (&str, Vec<ArkClient>, Vec<Channel>) = match &target {
        Target::Ark(c) => {
            // One client (so one HTTP/2 connection) per conn, each starting at the leader.
            let st = c.status().await?;
            let leader = st
                .nodes
                .iter()
                .find(|n| Some(n.id) == st.leader_id)
                .map(|n| n.client_addr.clone())
                .context("the cluster has no leader to load")?;
            let v = (0..conns).map(|_| c.with_endpoints(vec![leader.clone()])).collect();
            ("ark", v, Vec::new())
        }
        Target::Etcd { url, tls } => {
            let mut v = Vec::new();
            for _ in 0..conns {
                let mut ep = tonic::transport::Endpoint::from_shared(url.clone())?
                    .tcp_nodelay(true)
                    .timeout(Duration::from_secs(10));
                if let Some(tls) = tls {
                    ep = ep.tls_config(tls.clone())?;
                }
                v.push(
                    ep.connect()
                        .await
                        .with_context(|| format!("cannot connect to etcd at {url}"))?,
                );
            }
            ("etcd", Vec::new(), v)
        }
    };
    let value = vec![0xa5u8; p.value_bytes];
    let started = Instant::now();
    let end = started + p.duration;
    let mut tasks = Vec::new();
    for c in 0..p.clients {
        let value = value.clone();
        let ark = arks.get(c % arks.len().max(1)).cloned();
        let etcd = etcds.get(c % etcds.len().max(1)).cloned();
        let keys = p.keys_per_client.max(1);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(16 * 1024);
            let mut errors = 0u64;
            let mut i = 0usize;
            while Instant::now() < end {
                let key = format!("bench/{c:04}/{:06}", i % keys);
                i += 1;
                let t = Instant::now();
                let ok = match (&ark, &etcd) {
                    (Some(a), _) => a.put(&key, &value).await.is_ok(),
                    (None, Some(ch)) => etcd_put(ch.clone(), key.into_bytes(), value.clone()).await.is_ok(),
                    (None, None) => false,
                };
                if ok {
                    lat.push(u32::try_from(t.elapsed().as_micros()).unwrap_or(u32::MAX));
                } else {
                    errors += 1;
                }
            }
            (lat, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await?;
        all.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    Ok(Report {
        target: name.to_string(),
        clients: p.clients,
        conns,
        value_bytes: p.value_bytes,
        duration_s: elapsed,
        ops: all.len() as u64,
        errors,
        throughput_ops_per_s: all.len() as f64 / elapsed,
        latency_ms: Latency::of_sorted_us(&all),
    })
}

/// The body of a node's Prometheus `/metrics` page (plain HTTP on its metrics address).
pub fn metrics_text(addr: &str) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).with_context(|| format!("connecting to metrics at {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)
        .with_context(|| format!("reading metrics from {addr}"))?;
    Ok(body)
}

/// Sum of the samples in a Prometheus text page whose line starts with `prefix` (a metric
/// name, optionally with the start of its labels); `None` when no line matches.
pub fn sum_samples(text: &str, prefix: &str) -> Option<f64> {
    let mut found = None;
    for v in text
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    {
        found = Some(found.unwrap_or(0.0) + v);
    }
    found
}

/// [`sum_samples`] of a node's page, 0 when it cannot be read or nothing matches.
pub fn metric_sum(addr: &str, prefix: &str) -> f64 {
    metrics_text(addr)
        .ok()
        .and_then(|t| sum_samples(&t, prefix))
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank_in_ms() {
        let us: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile(&us, 0.5), 51.0);
        assert_eq!(percentile(&us, 0.99), 99.0);
        assert_eq!(percentile(&us, 1.0), 100.0);
        assert_eq!(percentile(&[], 0.99), 0.0);
    }

    #[test]
    fn samples_are_summed_by_prefix_and_absence_is_none() {
        let page = "# HELP ark_x_total X.\n# TYPE ark_x_total counter\nark_x_total{result=\"a\"} 2\nark_x_total{result=\"b\"} 3.5\nark_xy 100\n";
        assert_eq!(sum_samples(page, "ark_x_total"), Some(5.5));
        assert_eq!(sum_samples(page, "ark_x_total{result=\"b\"}"), Some(3.5));
        assert_eq!(sum_samples(page, "ark_y"), None);
    }
}
