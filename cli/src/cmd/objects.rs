//! The object commands of the `ark` CLI: `ns`, `put`, `get`, `ls`, `rm`, `restore`,
//! `verify` and `scrub`. Parses their arguments, calls the SDK and prints; progress bars go
//! to stderr, and only when stderr is a terminal.
//!
//! Holds no transfer or restore logic: that belongs to the SDK (`ark_client::objects`,
//! `ark_client::restore`).
//! Exit codes follow the CLI's: 0 success, 1 failure (including an object below its policy
//! in `verify` or an object that failed in `restore`), 2 usage error.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use ark_client::{DurabilityMode, NamespaceInfo, NamespacePolicy, ObjectInfo};
use clap::{Args, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::units::{format_bytes, format_duration_ms, format_time_ms, hex, parse_duration_ms, parse_time_ms};
use ark_client::objects::{GetOptions, Progress, PutOptions, PutSource};
use ark_client::restore::{RestoreOptions, RestorePoint, RESTORE_PARALLEL_MAX};
use ark_client::ArkClient;

/// Hex digits of a SHA-256 shown in tables.
const SHA_SHORT_CHARS: usize = 12;

/// The object commands, flattened into the top level of `ark`.
#[derive(Debug, Subcommand)]
pub(crate) enum ObjectCmd {
    /// Object namespaces and their durability policies.
    #[command(subcommand)]
    Ns(NsCmd),
    /// Upload FILE (`-` for stdin) as a new version of NS/KEY.
    ///
    /// Prints the version, its size, chunks and SHA-256 (checked against what was sent). A
    /// file is retried from its start, on another node, if a node fails; stdin is not.
    Put {
        /// Destination: namespace, '/', key (the key may contain '/').
        #[arg(value_name = "NS/KEY", value_parser = parse_object_ref)]
        target: ObjectRef,
        /// The file to upload, or `-` for stdin.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Send every byte. By default a file of 8 MiB or more is sent as the chunks the
        /// key's current version does not have (the others are read by the cluster).
        #[arg(long)]
        whole: bool,
    },
    /// Download NS/KEY, verified against its SHA-256.
    ///
    /// A file is replaced only once verified (the download goes to FILE.ark-partial first);
    /// on stdout, an error means what was written must be discarded.
    Get {
        /// The object: namespace, '/', key.
        #[arg(value_name = "NS/KEY", value_parser = parse_object_ref)]
        source: ObjectRef,
        /// Write to FILE (`-` or absent: stdout).
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
        /// This version instead of the latest.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        version: Option<u64>,
        /// Read the answering node's replica without confirming leadership (works in a site
        /// cut off from the majority; may miss the latest writes).
        #[arg(long)]
        stale: bool,
    },
    /// List the objects of a namespace.
    ///
    /// Key, version, size, creation time, SHA-256 and whether the version is a tombstone.
    Ls {
        /// Namespace.
        #[arg(value_name = "NS")]
        ns: String,
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// Every kept version, tombstones included, instead of the live latest versions.
        #[arg(long)]
        all_versions: bool,
        /// At most this many (0: all; the listing is fetched page by page).
        #[arg(long, default_value_t = 0)]
        limit: u32,
        /// Read the answering node's replica without confirming leadership.
        #[arg(long)]
        stale: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Delete NS/KEY.
    ///
    /// Writes a tombstone version; older versions stay as the namespace's `versions-kept`
    /// allows, for `restore --version/--at`.
    Rm {
        /// The object: namespace, '/', key.
        #[arg(value_name = "NS/KEY", value_parser = parse_object_ref)]
        target: ObjectRef,
    },
    /// Restore a namespace into a folder.
    ///
    /// Every live key of NS goes to DIR/KEY, each file verified against its SHA-256 before
    /// it replaces anything. Keys that are unsafe as paths (`..`, absolute, empty
    /// components) are reported as failures, never written. Prints a summary and exits 1 if
    /// any object failed.
    Restore {
        /// Namespace.
        #[arg(value_name = "NS")]
        ns: String,
        /// Folder to restore into (created if missing; existing files of restored keys are
        /// replaced).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        /// Version N of every key that has one, instead of the latest.
        #[arg(long, value_name = "N", conflicts_with = "at", value_parser = clap::value_parser!(u64).range(1..))]
        version: Option<u64>,
        /// The state at TIME (RFC 3339 such as 2026-11-25T10:00:00Z, or Unix ms): per key, the
        /// newest version created at or before TIME, unless the key was deleted by then.
        #[arg(long, value_name = "TIME", value_parser = parse_time_ms)]
        at: Option<u64>,
        /// List and read from the answering node's replica without confirming leadership
        /// (restore from a site that lost contact with the majority).
        #[arg(long)]
        stale: bool,
        /// Objects downloaded at once (default: the most).
        #[arg(long, default_value_t = RESTORE_PARALLEL_MAX as u16, value_parser = clap::value_parser!(u16).range(1..=RESTORE_PARALLEL_MAX as i64))]
        parallel: u16,
    },
    /// Check objects against their namespace's policy.
    ///
    /// Every object of NS (or of every namespace): copies, sites, and copies re-hashed on
    /// every holder. Exits 1 unless every object is at policy.
    Verify {
        /// Namespace (default: all).
        #[arg(value_name = "NS")]
        ns: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Scrub every reachable node: re-hash chunks, repair bad copies.
    ///
    /// Corrupt or missing copies are replaced from healthy ones. With --wait, exits 1 if a
    /// node failed or damage remains unrepaired.
    Scrub {
        /// Wait for every pass to finish and print per-node results.
        #[arg(long)]
        wait: bool,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum NsCmd {
    /// Create a namespace with its policy.
    Create {
        /// Name: 1 to 128 of a-z, A-Z, 0-9, '-', '_', '.'.
        name: String,
        #[command(flatten)]
        policy: PolicyArgs,
        /// Encrypt at rest: every chunk sealed (AES-256-GCM) under a data key of the
        /// namespace's own, wrapped by the cluster's key-encryption key ([encryption] in
        /// every node's arkd.toml). Cannot be turned off later.
        #[arg(long)]
        encrypt: bool,
    },
    /// Rewrap an encrypted namespace's data keys under the nodes' current key-encryption key
    /// (after a KEK rotation; no chunk is read or rewritten).
    Rekey {
        /// Name.
        name: String,
        /// Also start a new data key generation for new writes. Chunks already written stay
        /// sealed under their generation: re-encrypting them means writing the objects again.
        #[arg(long)]
        new_data_key: bool,
    },
    /// List namespaces with their policy and replication state.
    Ls {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Change some fields of a namespace's policy; the others keep their values.
    Set {
        /// Name.
        name: String,
        #[command(flatten)]
        change: PolicyChange,
    },
    /// Remove an empty namespace (delete its objects first).
    Rm {
        /// Name.
        name: String,
    },
}

/// When a put is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Mode {
    /// Once durable copies exist in --min-sites sites.
    Sync,
    /// Once the local copy is durable; the others follow (the lag is the live RPO).
    Async,
}

impl From<Mode> for DurabilityMode {
    fn from(m: Mode) -> Self {
        match m {
            Mode::Sync => DurabilityMode::Sync,
            Mode::Async => DurabilityMode::Async,
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct PolicyArgs {
    /// Copies of every chunk.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    copies: u32,
    /// Sites that must hold a copy.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    min_sites: u32,
    /// When a put is acknowledged.
    #[arg(long, value_enum, default_value_t = Mode::Sync)]
    mode: Mode,
    /// Async only: the lag above which the namespace is reported behind its policy (30s, 5m,
    /// 1h).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_lag)]
    max_lag: u64,
    /// Replication priority; higher goes first.
    #[arg(long, default_value_t = 0)]
    priority: u32,
    /// Versions of each key kept, tombstones included (1 = only the latest).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    versions_kept: u32,
    /// Store chunks zstd-compressed when that makes them smaller.
    #[arg(long)]
    compress: bool,
}

impl PolicyArgs {
    fn policy(&self) -> NamespacePolicy {
        NamespacePolicy {
            copies: self.copies,
            min_sites: self.min_sites,
            mode: DurabilityMode::from(self.mode),
            max_lag_ms: self.max_lag,
            priority: self.priority,
            versions_kept: self.versions_kept,
            compress: self.compress,
        }
    }
}

#[derive(Debug, Args)]
#[group(required = true, multiple = true)]
pub(crate) struct PolicyChange {
    /// Copies of every chunk.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    copies: Option<u32>,
    /// Sites that must hold a copy.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    min_sites: Option<u32>,
    /// When a put is acknowledged.
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// Async only: the lag above which the namespace is reported behind (30s, 5m, 1h).
    #[arg(long, value_name = "DURATION", value_parser = parse_lag)]
    max_lag: Option<u64>,
    /// Replication priority; higher goes first.
    #[arg(long)]
    priority: Option<u32>,
    /// Versions of each key kept, tombstones included.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    versions_kept: Option<u32>,
    /// Compress new chunks (`--compress`, `--compress=false`).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    compress: Option<bool>,
}

impl PolicyChange {
    fn is_empty(&self) -> bool {
        self.copies.is_none()
            && self.min_sites.is_none()
            && self.mode.is_none()
            && self.max_lag.is_none()
            && self.priority.is_none()
            && self.versions_kept.is_none()
            && self.compress.is_none()
    }

    fn apply(&self, p: &mut NamespacePolicy) {
        if let Some(v) = self.copies {
            p.copies = v;
        }
        if let Some(v) = self.min_sites {
            p.min_sites = v;
        }
        if let Some(v) = self.mode {
            p.mode = DurabilityMode::from(v);
        }
        if let Some(v) = self.max_lag {
            p.max_lag_ms = v;
        }
        if let Some(v) = self.priority {
            p.priority = v;
        }
        if let Some(v) = self.versions_kept {
            p.versions_kept = v;
        }
        if let Some(v) = self.compress {
            p.compress = v;
        }
    }
}

/// A lag limit: a duration above zero (zero would mean "the cluster default" on the wire).
fn parse_lag(s: &str) -> Result<u64, String> {
    match parse_duration_ms(s)? {
        0 => Err("the lag limit must be above zero".into()),
        ms => Ok(ms),
    }
}

/// `NS/KEY` as typed on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ObjectRef {
    /// Namespace: up to the first '/'.
    pub(crate) ns: String,
    /// Key: everything after it (may contain '/').
    pub(crate) key: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ns, self.key)
    }
}

/// Splits `NS/KEY` at the first '/'; both parts must be non-empty.
pub(crate) fn parse_object_ref(s: &str) -> Result<ObjectRef, String> {
    match s.split_once('/') {
        Some((ns, key)) if !ns.is_empty() && !key.is_empty() => Ok(ObjectRef {
            ns: ns.to_string(),
            key: key.to_string(),
        }),
        _ => Err(format!(
            "{s:?} is not NS/KEY: give a namespace, '/', and a key, e.g. models/run-7/ckpt-0042.bin"
        )),
    }
}

fn stderr_is_terminal() -> bool {
    std::io::stderr().is_terminal()
}

/// A byte progress bar on stderr when `enabled`, else a hidden one that draws nothing.
fn progress_bar(enabled: bool, what: &str, length_known: bool) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    let template = if length_known {
        "{msg} [{wide_bar}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
    } else {
        "{spinner} {msg} {bytes} {bytes_per_sec} {elapsed}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.set_message(what.to_string());
    bar
}

/// The SDK progress callback that moves `bar`; none for a hidden bar.
fn bar_progress(bar: &ProgressBar) -> Option<Progress> {
    if bar.is_hidden() {
        return None;
    }
    let bar = bar.clone();
    Some(Arc::new(move |done: u64, total: Option<u64>| {
        if let Some(t) = total {
            bar.set_length(t);
        }
        bar.set_position(done);
    }))
}

fn mode_name(mode: DurabilityMode) -> &'static str {
    match mode {
        DurabilityMode::Sync => "sync",
        DurabilityMode::Async => "async",
        DurabilityMode::Unspecified => "unspecified",
    }
}

fn describe_ns(n: &NamespaceInfo) -> String {
    let p = n.policy;
    format!(
        "namespace {}: {}, {} copies in at least {} sites, max lag {}{}, priority {}, {} version(s) kept, \
         compression {}",
        n.name,
        mode_name(p.mode),
        p.copies,
        p.min_sites,
        format_duration_ms(p.max_lag_ms),
        if p.mode == DurabilityMode::Async {
            ""
        } else {
            " (async only)"
        },
        p.priority,
        p.versions_kept,
        if p.compress { "on" } else { "off" }
    ) + &if n.encrypted {
        format!(
            ", encrypted ({} data key generation(s), KEK {})",
            n.key_generations,
            n.kek_ids.join(", ")
        )
    } else {
        String::new()
    }
}

fn ns_json(n: &NamespaceInfo) -> serde_json::Value {
    let p = n.policy;
    serde_json::json!({
        "name": n.name, "mode": mode_name(p.mode), "copies": p.copies, "min_sites": p.min_sites,
        "max_lag_ms": p.max_lag_ms, "priority": p.priority, "versions_kept": p.versions_kept,
        "compress": p.compress, "objects": n.objects, "bytes": n.bytes, "behind": n.behind, "lag_ms": n.lag_ms,
        "encrypted": n.encrypted, "key_generations": n.key_generations, "kek_ids": n.kek_ids,
    })
}

fn object_json(o: &ObjectInfo) -> serde_json::Value {
    serde_json::json!({
        "namespace": o.namespace, "key": o.key, "version": o.version, "size": o.size,
        "sha256": hex(&o.sha256), "chunks": o.chunks, "created_ms": o.created_ms,
        "created": format_time_ms(o.created_ms), "deleted": o.deleted,
    })
}

fn short_sha(sha: &[u8]) -> String {
    let mut h = hex(sha);
    h.truncate(SHA_SHORT_CHARS);
    if h.is_empty() {
        "-".into()
    } else {
        h
    }
}

/// Runs one object command.
pub(crate) async fn run(c: &ArkClient, cmd: &ObjectCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ObjectCmd::Ns(ns) => return run_ns(c, ns).await,
        ObjectCmd::Put { target, file, whole } => {
            let stdin = file.as_os_str() == "-";
            let source = if stdin {
                PutSource::reader(tokio::io::stdin())
            } else {
                PutSource::File(file.clone())
            };
            let bar = progress_bar(stderr_is_terminal(), &format!("put {target}"), !stdin);
            let opts = PutOptions {
                progress: bar_progress(&bar),
                whole: *whole,
            };
            let r = c.put_object(&target.ns, &target.key, source, &opts).await;
            bar.finish_and_clear();
            let r = r.with_context(|| {
                format!(
                    "uploading {} to {target}",
                    if stdin {
                        "stdin".to_string()
                    } else {
                        file.display().to_string()
                    }
                )
            })?;
            outln!(
                "{target} version {}: {} bytes, {} chunks ({} new), sha256 {}, {} bytes replicated{}{}",
                r.object.version,
                r.object.size,
                r.chunks,
                r.chunks_new,
                hex(&r.object.sha256),
                r.bytes_replicated,
                if r.bytes_reused > 0 {
                    format!(", {} bytes not sent (the previous version has them)", r.bytes_reused)
                } else {
                    String::new()
                },
                if r.duplicate {
                    " (committed by an earlier attempt)"
                } else {
                    ""
                }
            );
        }
        ObjectCmd::Get {
            source,
            output,
            version,
            stale,
        } => {
            let to_file = output.as_ref().filter(|p| p.as_os_str() != "-");
            if let Some(p) = to_file {
                if p.is_dir() {
                    bail!("{} is a folder; give the path of the file to write", p.display());
                }
            }
            let bar = progress_bar(stderr_is_terminal(), &format!("get {source}"), true);
            let opts = GetOptions {
                version: version.unwrap_or(0),
                stale: *stale,
                expect_sha256: None,
                progress: bar_progress(&bar),
            };
            let r = match to_file {
                Some(p) => c.get_object_to_file(&source.ns, &source.key, p, &opts).await,
                None => {
                    let mut out = tokio::io::stdout();
                    c.get_object(&source.ns, &source.key, &opts, &mut out).await
                }
            };
            bar.finish_and_clear();
            match (r, to_file) {
                (Ok(info), Some(p)) => outln!(
                    "wrote {}: {source} version {}, {} bytes, sha256 {}",
                    p.display(),
                    info.version,
                    info.size,
                    hex(&info.sha256)
                ),
                (Ok(_), None) => {}
                (Err(e), Some(p)) => {
                    return Err(e).with_context(|| format!("downloading {source} to {} (left unchanged)", p.display()))
                }
                (Err(e), None) => {
                    return Err(e).with_context(|| {
                        format!("downloading {source} to stdout: anything already written there is incomplete or wrong")
                    })
                }
            }
        }
        ObjectCmd::Ls {
            ns,
            prefix,
            all_versions,
            limit,
            stale,
            json,
        } => {
            let (objects, more) = c
                .list_objects(
                    ns,
                    &ark_client::ListObjectsOptions {
                        prefix: prefix.clone(),
                        all_versions: *all_versions,
                        limit: *limit,
                        stale: *stale,
                    },
                )
                .await?;
            if *json {
                let v: Vec<_> = objects.iter().map(object_json).collect();
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let w = objects.iter().map(|o| o.key.chars().count()).max().unwrap_or(0).max(3);
                outln!(
                    "{:<w$}  {:>7}  {:>12}  {:<20}  {:<SHA_SHORT_CHARS$}  DELETED",
                    "KEY",
                    "VERSION",
                    "SIZE",
                    "CREATED",
                    "SHA256"
                );
                for o in &objects {
                    let row = format!(
                        "{:<w$}  {:>7}  {:>12}  {:<20}  {:<SHA_SHORT_CHARS$}  {}",
                        o.key,
                        o.version,
                        o.size,
                        format_time_ms(o.created_ms),
                        short_sha(&o.sha256),
                        if o.deleted { "yes" } else { "" }
                    );
                    outln!("{}", row.trim_end());
                }
            }
            if more {
                eprintln!("(more objects match; raise --limit)");
            }
        }
        ObjectCmd::Rm { target } => {
            let r = c.delete_object(&target.ns, &target.key).await?;
            if r.existed {
                outln!("deleted {target} (tombstone version {})", r.version);
            } else {
                outln!("{target} not found (nothing deleted)");
            }
        }
        ObjectCmd::Restore {
            ns,
            to,
            version,
            at,
            stale,
            parallel,
        } => {
            let point = match (version, at) {
                (Some(v), _) => RestorePoint::Version(*v),
                (None, Some(t)) => RestorePoint::At(*t),
                (None, None) => RestorePoint::Latest,
            };
            let bar = progress_bar(stderr_is_terminal(), &format!("restore {ns}"), true);
            let opts = RestoreOptions {
                point,
                stale: *stale,
                parallel: usize::from(*parallel),
                progress: bar_progress(&bar),
            };
            let r = c.restore_namespace(ns, to, &opts).await;
            bar.finish_and_clear();
            let r = r.with_context(|| format!("restoring namespace {ns} into {}", to.display()))?;
            for f in &r.failed {
                eprintln!("failed: {ns}/{} version {}: {}", f.key, f.version, f.error);
            }
            outln!(
                "restore of namespace {ns} into {}: {} restored ({} bytes), {} failed, of {} selected",
                to.display(),
                r.restored,
                r.bytes,
                r.failed.len(),
                r.selected
            );
            if !r.failed.is_empty() {
                return Ok(ExitCode::from(1));
            }
        }
        ObjectCmd::Verify { ns, json } => {
            let r = c.verify(ns.as_deref()).await?;
            if *json {
                let objects: Vec<_> = r
                    .objects
                    .iter()
                    .map(|o| {
                        let info = o.object.clone();
                        serde_json::json!({
                            "namespace": info.namespace, "key": info.key, "version": info.version,
                            "at_policy": o.at_policy, "copies": o.copies, "sites": o.sites,
                            "bad_copies": o.bad_copies, "problems": o.problems,
                        })
                    })
                    .collect();
                let v = serde_json::json!({"all_at_policy": r.all_at_policy, "objects": objects});
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for o in &r.objects {
                    let info = o.object.clone();
                    outln!(
                        "{}/{} v{}: {} copies {} sites {} bad_copies {}{}",
                        info.namespace,
                        info.key,
                        info.version,
                        if o.at_policy { "at policy" } else { "BELOW POLICY" },
                        o.copies,
                        o.sites,
                        o.bad_copies,
                        if o.problems.is_empty() {
                            String::new()
                        } else {
                            format!(" problems: {}", o.problems.join("; "))
                        }
                    );
                }
                let below = r.objects.iter().filter(|o| !o.at_policy).count();
                outln!("{} objects checked, {below} below policy", r.objects.len());
            }
            if !r.all_at_policy {
                return Ok(ExitCode::from(1));
            }
        }
        ObjectCmd::Scrub { wait, json } => {
            let r = c.scrub(&ark_client::ScrubOptions { wait: *wait }).await?;
            if *json {
                let nodes: Vec<_> = r
                    .nodes
                    .iter()
                    .map(|n| {
                        serde_json::json!({
                            "node_id": n.node_id, "chunks_checked": n.chunks_checked, "bytes_checked": n.bytes_checked,
                            "corrupt": n.corrupt, "missing": n.missing, "repaired": n.repaired, "error": n.error,
                        })
                    })
                    .collect();
                outln!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "nodes": nodes }))?
                );
            } else if !*wait {
                outln!("scrub started on every reachable node; run `ark scrub --wait` to wait for and see the results");
            } else {
                outln!(
                    "{:<6} {:>10} {:>12} {:>8} {:>8} {:>9}  ERROR",
                    "NODE",
                    "CHECKED",
                    "BYTES",
                    "CORRUPT",
                    "MISSING",
                    "REPAIRED"
                );
                for n in &r.nodes {
                    let row = format!(
                        "{:<6} {:>10} {:>12} {:>8} {:>8} {:>9}  {}",
                        n.node_id,
                        n.chunks_checked,
                        format_bytes(n.bytes_checked),
                        n.corrupt,
                        n.missing,
                        n.repaired,
                        n.error
                    );
                    outln!("{}", row.trim_end());
                }
            }
            let failed = r
                .nodes
                .iter()
                .any(|n| !n.error.is_empty() || n.corrupt + n.missing > n.repaired);
            if failed {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_ns(c: &ArkClient, cmd: &NsCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        NsCmd::Create { name, policy, encrypt } => {
            let n = if *encrypt {
                c.create_encrypted_namespace(name, policy.policy()).await?
            } else {
                c.create_namespace(name, policy.policy()).await?
            };
            outln!("created {}", describe_ns(&n));
        }
        NsCmd::Rekey { name, new_data_key } => {
            let r = c.rekey_namespace(name, *new_data_key).await?;
            outln!(
                "rekeyed namespace {name}: {} data key generation(s) rewrapped under KEK {}{}",
                r.rewrapped,
                r.kek_id,
                if *new_data_key {
                    format!("; new writes use generation {}", r.namespace.key_generations)
                } else {
                    String::new()
                }
            );
        }
        NsCmd::Ls { json } => {
            let list = c.list_namespaces().await?;
            if *json {
                let v: Vec<_> = list.iter().map(ns_json).collect();
                outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let w = list.iter().map(|n| n.name.len()).max().unwrap_or(0).max(4);
                outln!(
                    "{:<w$}  {:<5}  {:>6}  {:>9}  {:>8}  {:>10}  {:>6}  LAG",
                    "NAME",
                    "MODE",
                    "COPIES",
                    "MIN_SITES",
                    "OBJECTS",
                    "BYTES",
                    "BEHIND"
                );
                for n in &list {
                    let p = n.policy;
                    outln!(
                        "{:<w$}  {:<5}  {:>6}  {:>9}  {:>8}  {:>10}  {:>6}  {}",
                        n.name,
                        mode_name(p.mode),
                        p.copies,
                        p.min_sites,
                        n.objects,
                        format_bytes(n.bytes),
                        n.behind,
                        format_duration_ms(n.lag_ms)
                    );
                }
            }
        }
        NsCmd::Set { name, change } => {
            // clap already requires one of the flags; this guards the invariant.
            if change.is_empty() {
                bail!("nothing to change: give at least one policy flag");
            }
            let n = c.update_namespace(name, |p| change.apply(p)).await?;
            outln!("updated {}", describe_ns(&n));
        }
        NsCmd::Rm { name } => {
            if c.delete_namespace(name).await? {
                outln!("removed namespace {name}");
            } else {
                outln!("namespace {name} not found (nothing removed)");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ns_key_splits_at_the_first_slash() {
        let r = parse_object_ref("models/run-7/ckpt.bin").unwrap();
        assert_eq!(r.ns, "models");
        assert_eq!(r.key, "run-7/ckpt.bin");
        assert_eq!(r.to_string(), "models/run-7/ckpt.bin");
        let r = parse_object_ref("a/b").unwrap();
        assert_eq!((r.ns.as_str(), r.key.as_str()), ("a", "b"));
        // A key may itself start with '/' or end with one; the node judges keys.
        assert_eq!(parse_object_ref("a//b").unwrap().key, "/b");
    }

    #[test]
    fn ns_key_needs_both_parts() {
        for bad in ["", "models", "/key", "models/", "/"] {
            assert!(parse_object_ref(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn lag_limits_must_be_positive_durations() {
        assert_eq!(parse_lag("5m"), Ok(300_000));
        assert!(parse_lag("0s").is_err());
        assert!(parse_lag("60").is_err());
    }

    #[test]
    fn policy_changes_touch_only_the_given_fields() {
        let mut p = NamespacePolicy {
            copies: 3,
            min_sites: 2,
            mode: DurabilityMode::Sync,
            max_lag_ms: 60_000,
            priority: 1,
            versions_kept: 4,
            compress: true,
        };
        let before = p;
        let change = PolicyChange {
            copies: None,
            min_sites: None,
            mode: Some(Mode::Async),
            max_lag: Some(5_000),
            priority: None,
            versions_kept: None,
            compress: Some(false),
        };
        assert!(!change.is_empty());
        change.apply(&mut p);
        assert_eq!(
            p,
            NamespacePolicy {
                mode: DurabilityMode::Async,
                max_lag_ms: 5_000,
                compress: false,
                ..before
            }
        );
    }

    #[test]
    fn progress_bars_are_hidden_and_silent_when_not_on_a_terminal() {
        let bar = progress_bar(false, "put a/b", true);
        assert!(bar.is_hidden());
        assert!(
            bar_progress(&bar).is_none(),
            "no callback is installed for a hidden bar"
        );
    }
}
