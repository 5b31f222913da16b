//! `ark bench`: the KV load generator (`crate::bench`), the object load generator
//! (`crate::objects_bench`), the risk and pre-staging experiments (`crate::risk_bench`) and the repair-pacing experiment
//! (`crate::pacing_bench`); this file parses their flags and prints their reports.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use ark_client::ClientConfig;
use clap::Subcommand;

use crate::bench;
use crate::cli::Cli;

#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Closed-loop small writes; prints throughput and p50/p99/p999 latency.
    Kv {
        /// Concurrent clients.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Connections the clients share.
        #[arg(long, default_value_t = 8)]
        conns: usize,
        /// Bytes per value.
        #[arg(long, default_value_t = 1024)]
        value_bytes: usize,
        /// Seconds to run.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Keys per client, overwritten round-robin.
        #[arg(long, default_value_t = 1000)]
        keys_per_client: usize,
        /// Load etcd instead of Ark: its gRPC endpoint, e.g. http://127.0.0.1:2379. With
        /// https://, the CA, certificate and key of --config are used (server name localhost).
        #[arg(long, value_name = "URL")]
        etcd: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Closed-loop object puts (and gets with --get) into one namespace; prints objects/s and
    /// p50/p99/p999 latency, per slice of --slice objects and over the whole run.
    ///
    /// Every client talks to the leader, or to the node given with --endpoint. Each object's
    /// bytes follow from --seed and its index, so every get is checked by the SDK (size and
    /// SHA-256 against the manifest) and compared byte for byte with what was put.
    Objects {
        /// Namespace; created with the cluster's default policy if it does not exist.
        #[arg(long, default_value = "bench")]
        ns: String,
        /// Objects to put.
        #[arg(long, default_value_t = 10_000)]
        count: u64,
        /// Bytes per object (the smallest, with --object-bytes-max).
        #[arg(long, default_value_t = 4096)]
        object_bytes: usize,
        /// Mixed sizes: the largest object; sizes are log-uniform from --object-bytes to this.
        #[arg(long)]
        object_bytes_max: Option<usize>,
        /// Concurrent clients.
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Connections the clients share.
        #[arg(long, default_value_t = 4)]
        conns: usize,
        /// Objects per reported slice (default: the whole run is one slice).
        #[arg(long)]
        slice: Option<u64>,
        /// After each slice's puts, read objects back (verified) and time the gets.
        #[arg(long)]
        get: bool,
        /// With --get: read this many objects per slice, drawn from every object put so far,
        /// instead of the slice's own objects.
        #[arg(long, default_value_t = 0)]
        get_sample: u64,
        /// Key prefix; keys are PREFIX plus the object's index in 9 digits.
        #[arg(long, default_value = "o/")]
        prefix: String,
        /// Seeds the objects' bytes and sizes.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// The risk-aware replication experiment: on fresh 3-site playgrounds, node 2 replays a
    /// failing drive's SMART record while objects are written to an async namespace, then
    /// dies; reports the acknowledged bytes lost and below policy with the repair queue in
    /// `fifo` and in `expected-loss` order, per seed.
    Risk {
        /// Backblaze-layout CSV (entity,date,failure,smart_*_raw...), plain or gzip.
        #[arg(long, value_name = "FILE")]
        backblaze: PathBuf,
        /// The failing drive node 2 replays.
        #[arg(long, default_value = "6XW00YE0")]
        entity: String,
        /// Seeds (comma-separated); each runs both orderings.
        #[arg(long, value_delimiter = ',', default_values_t = vec![0u64, 1, 2])]
        seeds: Vec<u64>,
        /// Milliseconds per replayed day.
        #[arg(long, default_value_t = 2000)]
        day_ms: u64,
        /// Repair queue budget, MiB/s.
        #[arg(long, default_value_t = 3)]
        repair_mib_per_s: u64,
        /// Write rate over both writers, MiB/s.
        #[arg(long, default_value_t = 4.0)]
        write_mib_per_s: f64,
        /// Bytes per object.
        #[arg(long, default_value_t = 512 * 1024)]
        object_bytes: usize,
        /// Working directory (default: a temp dir, removed afterwards).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// The pre-staging experiment: on fresh 3-site x 2-node playgrounds with a delay between
    /// sites, hot objects are read through the leader, then the leader's site is killed;
    /// reports the first read of each hot object through the successor the leader chose,
    /// with `risk.prestage` off and on, per seed.
    Prestage {
        /// Seeds (comma-separated); each runs with pre-staging off and on.
        #[arg(long, value_delimiter = ',', default_values_t = vec![0u64, 1, 2])]
        seeds: Vec<u64>,
        /// Hot objects.
        #[arg(long, default_value_t = 12)]
        objects: usize,
        /// Bytes per hot object.
        #[arg(long, default_value_t = 2 * 1024 * 1024)]
        object_bytes: usize,
        /// One-way delay between sites, ms.
        #[arg(long, default_value_t = 20)]
        wan_delay_ms: u64,
        /// Working directory (default: a temp dir, removed afterwards).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// The repair-pacing experiment: on fresh 3-site playgrounds a replayed load trace drives
    /// foreground writes (one trace step per telemetry interval) until the leader forecasts
    /// the nodes' load, then a follower is killed and its copies are rebuilt on the others;
    /// reports foreground latency during the repair and the time until policy is met, with
    /// `risk.pace_into_troughs` on and off at the same repair budget, per seed.
    Pacing {
        /// Load trace, `timestamp,value` CSV (NAB layout).
        #[arg(
            long,
            value_name = "FILE",
            default_value = "../shared/datasets/nab/realAWSCloudwatch/ec2_network_in_257a54.csv"
        )]
        trace: PathBuf,
        /// Seeds (comma-separated): the trace's starting step and the bytes written; each
        /// runs with pacing on and off.
        #[arg(long, value_delimiter = ',', default_values_t = vec![0u64, 1, 2])]
        seeds: Vec<u64>,
        /// Telemetry interval and trace step, ms.
        #[arg(long, default_value_t = 500)]
        step_ms: u64,
        /// Foreground write rate at the trace's 99th percentile (higher steps are clipped), MiB/s.
        #[arg(long, default_value_t = 4.0)]
        peak_mib_per_s: f64,
        /// Repair budget (`objects.repair_mib_per_s`) in both modes, MiB/s.
        #[arg(long, default_value_t = 4)]
        repair_mib_per_s: u64,
        /// Bulk data written before the warm-up, MiB.
        #[arg(long, default_value_t = 32)]
        data_mib: u64,
        /// Bytes per foreground object (bulk objects are four times larger).
        #[arg(long, default_value_t = 256 * 1024)]
        object_bytes: usize,
        /// Longest warm-up before the kill, seconds (the kill comes then even if the leader
        /// has no load forecaster yet; the report says so).
        #[arg(long, default_value_t = 240)]
        warmup_max_s: u64,
        /// Longest wait for the repair after the kill, seconds.
        #[arg(long, default_value_t = 180)]
        repair_max_s: u64,
        /// Working directory (default: a temp dir, removed afterwards).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one bench; `cli` gives the client config for `bench kv`.
pub async fn run(cli: &Cli, b: &BenchCmd) -> anyhow::Result<ExitCode> {
    match b {
        BenchCmd::Risk {
            backblaze,
            entity,
            seeds,
            day_ms,
            repair_mib_per_s,
            write_mib_per_s,
            object_bytes,
            dir,
            json,
        } => {
            let tmp = tempfile::Builder::new().prefix("ark-bench-risk-").tempdir()?;
            let dir = dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
            let params = crate::risk_bench::Params {
                backblaze: backblaze.clone(),
                entity: entity.clone(),
                seeds: seeds.clone(),
                day_ms: *day_ms,
                repair_mib_per_s: *repair_mib_per_s,
                write_mib_per_s: *write_mib_per_s,
                object_bytes: *object_bytes,
                dir,
            };
            let quiet = *json;
            let say = move |l: &str| {
                if !quiet {
                    outln!("{l}");
                }
            };
            let reports = crate::risk_bench::run(&params, &say).await?;
            if *json {
                outln!("{}", serde_json::to_string_pretty(&reports)?);
            }
        }
        BenchCmd::Prestage {
            seeds,
            objects,
            object_bytes,
            wan_delay_ms,
            dir,
            json,
        } => {
            let tmp = tempfile::Builder::new().prefix("ark-bench-prestage-").tempdir()?;
            let params = crate::risk_bench::PrestageParams {
                seeds: seeds.clone(),
                objects: *objects,
                object_bytes: *object_bytes,
                wan_delay_ms: *wan_delay_ms,
                dir: dir.clone().unwrap_or_else(|| tmp.path().to_path_buf()),
            };
            let quiet = *json;
            let say = move |l: &str| {
                if !quiet {
                    outln!("{l}");
                }
            };
            let reports = crate::risk_bench::run_prestage(&params, &say).await?;
            if *json {
                outln!("{}", serde_json::to_string_pretty(&reports)?);
            }
        }
        BenchCmd::Pacing {
            trace,
            seeds,
            step_ms,
            peak_mib_per_s,
            repair_mib_per_s,
            data_mib,
            object_bytes,
            warmup_max_s,
            repair_max_s,
            dir,
            json,
        } => {
            let tmp = tempfile::Builder::new().prefix("ark-bench-pacing-").tempdir()?;
            let params = crate::pacing_bench::Params {
                trace: trace.clone(),
                seeds: seeds.clone(),
                step_ms: (*step_ms).max(100),
                peak_mib_per_s: *peak_mib_per_s,
                repair_mib_per_s: *repair_mib_per_s,
                data_mib: *data_mib,
                object_bytes: (*object_bytes).max(1),
                warmup_max_s: *warmup_max_s,
                repair_max_s: *repair_max_s,
                dir: dir.clone().unwrap_or_else(|| tmp.path().to_path_buf()),
            };
            let quiet = *json;
            let say = move |l: &str| {
                if !quiet {
                    outln!("{l}");
                }
            };
            let reports = crate::pacing_bench::run(&params, &say).await?;
            if *json {
                outln!("{}", serde_json::to_string_pretty(&reports)?);
            }
        }
        BenchCmd::Objects {
            ns,
            count,
            object_bytes,
            object_bytes_max,
            clients,
            conns,
            slice,
            get,
            get_sample,
            prefix,
            seed,
            json,
        } => {
            let params = crate::objects_bench::Params {
                ns: ns.clone(),
                count: *count,
                object_bytes: *object_bytes,
                object_bytes_max: object_bytes_max.unwrap_or(*object_bytes),
                clients: *clients,
                conns: *conns,
                slice: slice.unwrap_or(*count),
                get: *get,
                get_sample: *get_sample,
                prefix: prefix.clone(),
                seed: *seed,
            };
            let quiet = *json;
            let show = move |s: &crate::objects_bench::Slice| {
                if !quiet {
                    outln!("{}", slice_line(s));
                }
            };
            let r = crate::objects_bench::run(&crate::cli::client(cli)?, &params, &show).await?;
            if *json {
                outln!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                outln!(
                    "objects: {} clients, {} conns via {}, {} to {} B, namespace {} ({} objects at start)",
                    r.clients,
                    r.conns,
                    r.endpoint,
                    r.object_bytes,
                    r.object_bytes_max,
                    r.namespace,
                    r.namespace_objects_at_start
                        .map_or_else(|| "unknown".to_string(), |n| n.to_string())
                );
                outln!("{}", phase_line("put", &r.put));
                if let Some(g) = &r.get {
                    outln!("{}", phase_line("get", g));
                }
            }
            let failed = r.put.errors + r.get.as_ref().map(|g| g.errors).unwrap_or(0);
            if failed > 0 {
                eprintln!("error: {failed} operations failed");
                return Ok(ExitCode::FAILURE);
            }
        }
        BenchCmd::Kv {
            clients,
            conns,
            value_bytes,
            duration,
            keys_per_client,
            etcd,
            json,
        } => {
            let target = match etcd {
                Some(url) => {
                    let tls = if url.starts_with("https://") {
                        let path = cli
                            .config
                            .as_ref()
                            .context("an https etcd URL needs --config for its TLS files")?;
                        let cfg = ClientConfig::load(path)?;
                        let read =
                            |p: &std::path::Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
                        Some(
                            tonic::transport::ClientTlsConfig::new()
                                .ca_certificate(tonic::transport::Certificate::from_pem(read(&cfg.ca)?))
                                .identity(tonic::transport::Identity::from_pem(read(&cfg.cert)?, read(&cfg.key)?))
                                .domain_name("localhost"),
                        )
                    } else {
                        None
                    };
                    bench::Target::Etcd { url: url.clone(), tls }
                }
                None => bench::Target::Ark(crate::cli::client(cli)?),
            };
            let r = bench::run(
                target,
                &bench::Params {
                    clients: *clients,
                    conns: *conns,
                    value_bytes: *value_bytes,
                    duration: Duration::from_secs(*duration),
                    keys_per_client: *keys_per_client,
                },
            )
            .await?;
            if *json {
                outln!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                outln!(
                "{}: {} clients, {} conns, {} B values, {:.1} s: {} ok, {} errors, {:.0} ops/s, latency ms p50 {:.2} p99 {:.2} p999 {:.2} max {:.2}",
                r.target,
                r.clients,
                r.conns,
                r.value_bytes,
                r.duration_s,
                r.ops,
                r.errors,
                r.throughput_ops_per_s,
                r.latency_ms.p50,
                r.latency_ms.p99,
                r.latency_ms.p999,
                r.latency_ms.max
            );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One phase as a line: counts, rate and latency.
fn phase_line(what: &str, p: &crate::objects_bench::Phase) -> String {
    format!(
        "{what}: {} ok, {} errors{}, {:.1} s, {:.0} objects/s, {:.1} MiB/s, latency ms p50 {:.2} p99 {:.2} p999 {:.2} max {:.2}{}",
        p.ok,
        p.errors,
        if p.mismatched > 0 { format!(" ({} MISMATCHED)", p.mismatched) } else { String::new() },
        p.duration_s,
        p.objects_per_s,
        p.mib_per_s,
        p.latency_ms.p50,
        p.latency_ms.p99,
        p.latency_ms.p999,
        p.latency_ms.max,
        p.first_error.as_ref().map(|e| format!("; first error: {e}")).unwrap_or_default()
    )
}

/// One slice as a line.
fn slice_line(s: &crate::objects_bench::Slice) -> String {
    let mut l = format!(
        "slice {}..{} (namespace {} objects): {}",
        s.from,
        s.to,
        s.namespace_objects
            .map_or_else(|| "unknown".to_string(), |n| n.to_string()),
        phase_line("put", &s.put)
    );
    if let Some(g) = &s.get {
        l.push_str(" | ");
        l.push_str(&phase_line("get", g));
    }
    l
}
