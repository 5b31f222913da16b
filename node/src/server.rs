//! Start-up and ordered shutdown of one node.
//!
//! Start-up logs numbered milestones; gRPC health answers NOT_SERVING until this node knows
//! a leader, and systemd hears `READY=1` ([`crate::notify`]) at that moment, or once the
//! client API listens on a node that is not a member yet (it has to be added by a client
//! before it can know a leader). Shutdown runs in a fixed order: stop accepting clients, stop Raft (no new log
//! writes), close the peer endpoint, and drop the database last so that the final flush
//! completes.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use ark_proto::v1::auth_server::AuthServer;
use ark_proto::v1::cluster_server::ClusterServer;
use ark_proto::v1::kv_server::KvServer;
use ark_proto::v1::objects_server::ObjectsServer;
use openraft::SnapshotPolicy;
use tokio::sync::watch;
use tonic::transport::Server;
use tonic_health::ServingStatus;

use crate::api::client_cert::ClientCertRule;
use crate::api::cluster::ClusterService;
use crate::api::kv::KvService;
use crate::api::objects::ObjectsService;
use crate::chunks::ChunkStore;
use crate::config::NodeConfig;
use crate::net::live::Live;
use crate::net::reload::{Reloader, TlsFiles};
use crate::net::{PeerEndpoint, PeerPool};
use crate::raft::fence::ReadFence;
use crate::raft::front::Front;
use crate::raft::log_clock::LogClock;
use crate::raft::members::Members;
use crate::raft::network::{NetworkFactory, RaftPeerService};
use crate::raft::objects::ObjectReader;
use crate::raft::proposer::Proposer;
use crate::raft::recovery::Recovery;
use crate::raft::state_machine::StateMachine;
use crate::raft::store::{open_database, LogStore};
use crate::raft::{ArkNode, ArkRaft, NodeId};
use crate::replicate::serve::PeerRouter;
use crate::replicate::DataPlane;
use crate::telemetry::Telemetry;

/// Largest gRPC message accepted (a KV value is at most 64 KiB; lists can be larger).
const GRPC_MESSAGE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// openraft's config. Its election timer is off: `raft::elector` decides when to campaign
/// (after a pre-vote), and stays out while the node recovers a damaged log.
fn raft_config(cfg: &NodeConfig) -> anyhow::Result<Arc<openraft::Config>> {
    let r = &cfg.raft;
    let c = openraft::Config {
        cluster_name: "ark".into(),
        heartbeat_interval: r.heartbeat_interval_ms,
        election_timeout_min: r.election_timeout_min_ms,
        election_timeout_max: r.election_timeout_max_ms,
        install_snapshot_timeout: r.rpc_timeout_ms * 5,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(r.snapshot_logs_since_last),
        max_in_snapshot_log_to_keep: r.logs_kept_after_snapshot,
        max_payload_entries: 1024,
        enable_elect: false,
        ..Default::default()
    };
    Ok(Arc::new(c.validate().context("raft timing config")?))
}

/// How long shutdown lets in-flight client calls finish before closing their connections.
const CLIENT_API_STOP: Duration = Duration::from_secs(3);

/// How long shutdown waits for each background loop to notice the stop signal.
const BACKGROUND_STOP: Duration = Duration::from_millis(500);

/// Waits for a background loop to end, at most [`BACKGROUND_STOP`], then aborts it.
async fn stop_within(name: &str, task: tokio::task::JoinHandle<()>) {
    let abort = task.abort_handle();
    if tokio::time::timeout(BACKGROUND_STOP, task).await.is_err() {
        abort.abort();
        tracing::info!(
            task = name,
            "shutdown: abandoned a background task still busy after {BACKGROUND_STOP:?}"
        );
    }
}

/// Runs a node until `shutdown` resolves, then stops it in order.
pub async fn run(cfg: NodeConfig, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let id = cfg.node_id;
    let witness = cfg.role == crate::config::NodeRole::Witness;
    tracing::info!(node_id = id, site = %cfg.site, role = cfg.role.as_str(), "[1/6] config loaded");
    let prom = crate::metrics::install(describe_all_metrics);

    // SIGHUP reloads the certificates (`net::reload`); caught from here on, so that it never
    // kills the node (its default action).
    let hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot catch SIGHUP: certificates reload only when their files change");
            None
        }
    };
    let tls_files = TlsFiles {
        ca: cfg.tls.ca.clone(),
        cert: cfg.tls.cert.clone(),
        key: cfg.tls.key.clone(),
        client_ca: cfg.tls.client_ca.clone(),
    };
    let (tls, tls_info) = tls_files.load(id).context("loading TLS material")?;
    crate::net::reload::record(&tls_info);
    tracing::info!(serial = %tls_info.serial, not_after = tls_info.node_not_after, "TLS material loaded");
    let keyring = crate::replicate::keys::Keyring::load(cfg.encryption.as_ref())
        .context("loading the key-encryption key ([encryption])")?;
    if let Some(kek) = keyring.kek_id() {
        tracing::info!(kek = %crate::chunks::seal::kek_hex(&kek), "encryption at rest: KEK loaded");
    }
    let db = open_database(&cfg.data_dir)?;
    let state_machine = StateMachine::new(db.clone(), &cfg.data_dir);
    let log_clock = Arc::new(LogClock::new(state_machine.log_time()));
    let log_store = LogStore::open(&cfg.data_dir, db.clone())?.with_snapshot_gate(state_machine.snapshot_gate());
    let fsync_stats = log_store.fsync_stats();
    let pre_voter = crate::raft::elector::PreVoter {
        contact: crate::raft::elector::Contact::default(),
        last_log: crate::raft::elector::LastLog::new(log_store.clone()),
        lease: Duration::from_millis(cfg.raft.election_timeout_max_ms),
    };
    let recovery =
        Recovery::open(db.clone(), id).map_err(|e| anyhow::anyhow!("reading the raft log's damage record: {e}"))?;
    crate::raft::force_new::log_at_start(&db);
    let reader = state_machine.reader();
    let roles = state_machine.role_view();
    let audit = crate::audit::AuditLog::open(
        &cfg.data_dir.join("audit"),
        crate::audit::FILE_BYTES_MAX,
        crate::audit::FILES_KEPT,
    )
    .context("opening the audit log")?;
    let limits = Arc::new(crate::api::limits::Limits::new(cfg.limits.clone()));
    let authz = crate::api::auth::Authz::new(state_machine.auth_view(), Arc::new(audit), id, limits.clone());
    // Witness voter: no chunk files and no cache on disk (see `witness_storage`).
    let (chunk_store, cache) = if witness {
        witness_storage(&cfg.data_dir).await?
    } else {
        let chunk_store = ChunkStore::open(&cfg.data_dir).context("opening the chunk store")?;
        let cache = crate::cache::ChunkCache::open(&cfg.data_dir, &cfg.cache)
            .await
            .context("opening the chunk cache")?;
        (chunk_store, cache)
    };
    let cache = Arc::new(cache);
    tracing::info!(data_dir = %cfg.data_dir.display(), "[2/6] storage opened");

    let faults = cfg.faults.as_ref().map(|f| {
        let table = crate::net::fault::FaultTable::default();
        tracing::warn!(file = %f.control_file.display(), "fault injection enabled on the peer transport");
        table.clone().watch(f.control_file.clone());
        table
    });
    let endpoint = PeerEndpoint::bind_with_faults(cfg.listen.peer, &tls, faults)?;
    let pool = PeerPool::new(endpoint.clone());
    tracing::info!(addr = %endpoint.local_addr()?, "[3/6] peer transport listening (QUIC, mutual TLS)");

    let network = NetworkFactory::new(pool.clone(), id, cfg.raft.append_entries_max_bytes);
    let fenced = network.fenced();
    let left_out = crate::raft::force_new::fenced_ids(&db, id)
        .map_err(|e| anyhow::anyhow!("reading the record of forced recoveries: {e}"))?;
    // A handle on the same state machine for metadata snapshots (`raft::backup`).
    let backup_sm = state_machine.clone();
    let raft = ArkRaft::new(id, raft_config(&cfg)?, network, log_store, state_machine)
        .await
        .context("starting raft")?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let proposer = Proposer::start(raft.clone(), cfg.raft.proposals_in_flight, log_clock.clone());
    let fence = Arc::new(ReadFence::new(raft.clone(), log_clock));
    let snapshots = crate::api::snapshot::SnapshotSaver::new(
        crate::raft::backup::BackupSource::new(backup_sm, fence.clone()),
        crate::api::snapshot::cluster_id(tls.ca.first().map_or(&[][..], |c| c.as_ref())),
        id,
    );
    let risk = Arc::new(crate::risk::Risk::new(
        cfg.risk.clone(),
        Duration::from_millis(cfg.telemetry.interval_ms),
    ));
    let hot = Arc::new(crate::telemetry::hot::HotReads::default());
    let front = Arc::new(Front::new(
        Members::new(id, raft.clone(), roles.clone()),
        raft.clone(),
        proposer.clone(),
        fence.clone(),
        pool.clone(),
        Duration::from_millis(cfg.raft.rpc_timeout_ms),
    ));
    let data_plane = DataPlane::new(
        cfg.site.clone(),
        chunk_store,
        pool.clone(),
        front.clone(),
        ObjectReader::new(db.clone()),
        cfg.objects.clone(),
        Duration::from_millis(cfg.raft.rpc_timeout_ms),
        cache.clone(),
        risk.clone(),
        keyring,
    );
    let data_plane = Arc::new(if witness { data_plane.into_witness() } else { data_plane });
    let telemetry = Arc::new(Telemetry::new(
        id,
        cfg.telemetry.clone(),
        Duration::from_millis(cfg.raft.rpc_timeout_ms),
        pool.clone(),
        raft.clone(),
        fsync_stats,
        cfg.data_dir.clone(),
        hot.clone(),
    )?);
    let peer_service = Arc::new(PeerRouter::new(
        RaftPeerService::new(raft.clone(), recovery.clone(), pre_voter.clone(), id, left_out),
        data_plane.clone(),
        telemetry.clone(),
    ));
    let peer_task = {
        let endpoint = endpoint.clone();
        let s = stopped(stop_rx.clone());
        tokio::spawn(async move { endpoint.serve(peer_service, s).await })
    };
    bootstrap(&cfg, &raft).await?;
    tracing::info!("[4/6] raft started");

    // `/readyz` answers what gRPC health answers: set with it below.
    let (ready_tx, ready_rx) = watch::channel(false);
    let metrics_task = match cfg.listen.metrics {
        Some(addr) => {
            let l = crate::metrics::bind(addr)
                .await
                .with_context(|| format!("cannot bind metrics listener on {addr}"))?;
            let serve = crate::metrics::serve(l, prom.clone(), ready_rx, stopped(stop_rx.clone()));
            Some(tokio::spawn(serve))
        }
        None => None,
    };
    let upkeep_task = prom.map(|h| tokio::spawn(crate::metrics::upkeep(h, stopped(stop_rx.clone()))));
    tokio::spawn(crate::metrics::export_raft(raft.clone()));
    // A witness runs no repair queue, scrub or forecaster: it holds no chunks, and it hands
    // leadership over as soon as it has it.
    let data_tasks = (!witness).then(|| {
        let queue_task = tokio::spawn(crate::replicate::queue::run(data_plane.clone(), stop_rx.clone()));
        let scrub_task = tokio::spawn(crate::replicate::scrub::run(data_plane.clone(), stop_rx.clone()));
        let risk_task = tokio::spawn(crate::risk::run(
            risk.clone(),
            data_plane.clone(),
            telemetry.clone(),
            Duration::from_millis(cfg.telemetry.interval_ms),
            stop_rx.clone(),
        ));
        (queue_task, scrub_task, risk_task)
    });
    let elector_task = tokio::spawn(crate::raft::elector::run(
        raft.clone(),
        Members::new(id, raft.clone(), roles.clone()),
        pool.clone(),
        pre_voter,
        recovery.clone(),
        crate::raft::elector::Timing {
            tick: Duration::from_millis((cfg.raft.heartbeat_interval_ms / 2).max(10)),
            min: Duration::from_millis(cfg.raft.election_timeout_min_ms),
            // A witness asks for votes only after the data voters had their turn (twice the
            // lease): a data node wins whenever its log is as long as the witness's, and
            // the witness wins (then hands over) only when it alone holds the newest entries.
            max: Duration::from_millis(match cfg.role {
                crate::config::NodeRole::Data => cfg.raft.election_timeout_max_ms,
                crate::config::NodeRole::Witness => cfg.raft.election_timeout_max_ms * 2,
            }),
            rpc_timeout: Duration::from_millis(cfg.raft.rpc_timeout_ms.min(cfg.raft.election_timeout_min_ms)),
        },
        fenced.clone(),
        stop_rx.clone(),
    ));
    let telemetry_task = tokio::spawn(telemetry.clone().run(stop_rx.clone()));
    let hand_over_task = witness.then(|| {
        tokio::spawn(crate::raft::witness::hand_over_when_leading(
            data_plane.front.clone(),
            stop_rx.clone(),
        ))
    });
    let role_task = tokio::spawn(crate::raft::witness::announce_role(
        data_plane.front.clone(),
        cfg.role,
        Duration::from_millis(cfg.raft.rpc_timeout_ms * 5),
        stop_rx.clone(),
    ));

    // Client plane.
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_service_status("", ServingStatus::NotServing).await;
    health_reporter.set_not_serving::<KvServer<KvService>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ark_proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building reflection service")?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ark_proto::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building reflection service")?;
    let client_plane_tls = Live::new(tls.client_plane_config().context("client API TLS config")?);
    let reload_task = tokio::spawn(
        Reloader::new(id, tls_files, endpoint.clone(), client_plane_tls.clone()).run(hup, stop_rx.clone()),
    );
    let listener = tokio::net::TcpListener::bind(cfg.listen.client)
        .await
        .with_context(|| format!("cannot bind client API on {}", cfg.listen.client))?;
    tracing::info!(addr = %listener.local_addr()?, "[5/6] client API listening (gRPC, TLS)");
    // A node outside any cluster learns of a leader only after `ark members add`, which needs
    // it running: it is as ready as it can be once it listens.
    if !raft.is_initialized().await.context("reading raft state")? {
        crate::notify::notify("READY=1\nSTATUS=not a cluster member yet: waiting to be added");
    }
    let healthy_within = Duration::from_millis((cfg.raft.heartbeat_interval_ms * 4).max(1000));
    // Nagle's algorithm with the client's delayed ACKs would hold small responses back by
    // up to 40 ms: every accepted socket gets TCP_NODELAY.
    let tcp = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)));
    // Our own TLS acceptor rather than tonic's, which cannot change its certificate.
    let incoming = crate::net::tls_accept::incoming(tcp, client_plane_tls, stopped(stop_rx.clone()));
    let auth = AuthServer::new(crate::api::auth_service::AuthService::new(
        authz.clone(),
        data_plane.front.clone(),
        id,
    ));
    let gate = crate::api::witness::WitnessGate::new(witness, id, raft.clone());
    let kv = KvServer::new(KvService::new(authz.clone(), reader, proposer, fence, limits.clone()))
        .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
    let kv = {
        let gate = gate.clone();
        tonic::service::interceptor::InterceptedService::new(kv, move |r| gate.check(r))
    };
    let objects = ObjectsServer::new(ObjectsService::new(
        authz.clone(),
        data_plane.clone(),
        hot,
        limits.clone(),
    ))
    .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
    .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX);
    let objects = tonic::service::interceptor::InterceptedService::new(objects, move |r| gate.check(r));
    let cluster = ClusterService::new(
        authz,
        raft.clone(),
        pool.clone(),
        id,
        healthy_within,
        telemetry.clone(),
        risk.clone(),
        data_plane.clone(),
    );
    let cluster = ClusterServer::new(cluster.with_limits(limits.clone()).with_snapshots(snapshots));
    let cert_rule = ClientCertRule::new(endpoint.node_identity(), cfg.tls.allow_node_clients);
    let grpc = Server::builder()
        .layer(tonic::service::InterceptorLayer::new(move |req| cert_rule.check(req)))
        .layer(limits.deadline_layer())
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(kv)
        .add_service(objects)
        .add_service(cluster)
        .add_service(auth)
        .serve_with_incoming_shutdown(incoming, stopped(stop_rx.clone()));
    let grpc_task = tokio::spawn(grpc);

    // Readiness follows leadership knowledge.
    let readiness = {
        let raft = raft.clone();
        let reporter = health_reporter.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut rx = raft.metrics();
            let mut serving = false;
            loop {
                let has_leader = rx.borrow_and_update().current_leader.is_some();
                if has_leader != serving {
                    serving = has_leader;
                    let st = if serving {
                        ServingStatus::Serving
                    } else {
                        ServingStatus::NotServing
                    };
                    reporter.set_service_status("", st).await;
                    reporter.set_service_status("ark.v1.Kv", st).await;
                    reporter.set_service_status("ark.v1.Objects", st).await;
                    ready_tx.send_replace(serving);
                    if serving {
                        tracing::info!("[6/6] ready: a leader is known, serving clients");
                        crate::notify::notify("READY=1\nSTATUS=serving: a leader is known");
                    } else {
                        crate::notify::notify("STATUS=not serving: no leader known");
                    }
                }
                tokio::select! {
                    c = rx.changed() => if c.is_err() { break },
                    _ = stop.wait_for(|s| *s) => break,
                }
            }
            // A stopping node is not ready, whatever it knew last.
            ready_tx.send_replace(false);
        })
    };

    // A Raft core that stopped on its own (a storage error such as a full disk: openraft
    // treats it as fatal) leaves a node that can only refuse: stop the whole process, with an
    // error, so that a supervisor restarts it once the cause is fixed.
    let mut fenced_rx = fenced.subscribe();
    let fatal = tokio::select! {
        () = shutdown => None,
        f = raft_stopped(&raft) => Some(format!(
            "raft stopped: {f}; fix the cause (e.g. free disk space under the data dir) and start the node again"
        )),
        // A recovered cluster said this node's data is from before a forced recovery.
        f = fenced_rx.wait_for(Option::is_some) => Some(match f.as_deref() {
            Ok(Some(msg)) => msg.clone(),
            _ => "a peer said a forced recovery left this node out".to_owned(),
        }),
    };
    if let Some(f) = &fatal {
        if f.starts_with(crate::raft::force_new::FENCED_MARKER) {
            tracing::error!(error = %f, "left out by a forced recovery; shutting the node down");
        } else {
            tracing::error!(error = %f, "raft stopped by itself; shutting the node down");
        }
    }
    crate::notify::notify("STOPPING=1");
    // A leader stopped on purpose hands its leadership over first, so that writes pause for
    // a hand-over (a few round trips) rather than for an election timeout, and none fails.
    // Its client API still answers meanwhile (held writes then get the new leader's address).
    if fatal.is_none() && front.members().is_leader() && front.members().voter_ids().len() > 1 {
        let max = raft.config().election_timeout_max;
        let deadline = Duration::from_millis(3 * max).clamp(Duration::from_secs(1), Duration::from_secs(10));
        tracing::info!("shutdown: handing the leadership over");
        // Never to a witness: it would only hand the leadership on again.
        let witnesses: Vec<NodeId> = front.members().roles().witnesses().into_iter().collect();
        match front.transfer_leader(None, &witnesses, deadline).await {
            Ok(h) => tracing::info!(leader = h.leader, took = ?h.took, "shutdown: leadership handed over"),
            Err(e) => tracing::warn!(error = %e, "shutdown: could not hand the leadership over; stopping anyway"),
        }
    }
    tracing::info!("shutdown: stopping client API");
    let _ = stop_tx.send(true);
    let _ = readiness.await;
    // tonic's graceful stop waits for every client connection to close, and clients keep
    // theirs open: bounded, or a node whose Raft core died would never exit for its
    // supervisor to restart it (found by the fsync-eio drill).
    let grpc_abort = grpc_task.abort_handle();
    // After a fatal stop no call can succeed any more: no reason to wait for them.
    let grace = if fatal.is_some() {
        Duration::from_millis(200)
    } else {
        CLIENT_API_STOP
    };
    match tokio::time::timeout(grace, grpc_task).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "client API ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "client API task failed"),
        Ok(Ok(Ok(()))) => {}
        Err(_) => {
            grpc_abort.abort();
            tracing::info!("shutdown: closed client connections still open after {grace:?}");
        }
    }
    // The background loops stop at their next turn, but one may be in the middle of a peer
    // RPC with a deadline of seconds (a chunk pull); a leader waiting for it keeps its
    // leadership while serving no one. Each is abandoned after a short wait: its work is
    // idempotent and the next leader's queue or the next scrub redoes it.
    if let Some((queue_task, scrub_task, risk_task)) = data_tasks {
        stop_within("repair queue", queue_task).await;
        stop_within("scrub", scrub_task).await;
        stop_within("risk", risk_task).await;
    }
    stop_within("telemetry", telemetry_task).await;
    stop_within("role announcement", role_task).await;
    if let Some(t) = hand_over_task {
        stop_within("witness hand-over", t).await;
    }
    stop_within("elector", elector_task).await;
    stop_within("certificate reload", reload_task).await;
    drop(data_plane);
    cache.close().await;
    tracing::info!("shutdown: stopping raft");
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft shutdown");
    }
    tracing::info!("shutdown: closing peer transport");
    endpoint.close();
    let _ = peer_task.await;
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    if let Some(t) = upkeep_task {
        let _ = t.await;
    }
    drop(raft);
    drop(db);
    tracing::info!("shutdown complete");
    match fatal {
        Some(f) => anyhow::bail!("{f}"),
        None => Ok(()),
    }
}

/// A witness's storage: it refuses to start on a data dir that holds chunk files (a data
/// node cannot become a witness in place: remove it from the cluster and add a new node),
/// and opens no chunk store and no on-disk cache. The returned store points at the
/// (absent) `chunks/` directory and is never written: the data plane refuses every chunk
/// write on a witness ([`DataPlane::witness`]).
async fn witness_storage(data_dir: &std::path::Path) -> anyhow::Result<(ChunkStore, crate::cache::ChunkCache)> {
    let chunks = data_dir.join("chunks");
    if let Some(f) = first_file_under(&chunks)? {
        anyhow::bail!(
            "role = \"witness\" but {} holds chunk files (e.g. {}): this data dir belonged to a data node. \
             Remove that node from the cluster (`ark members remove`) and start the witness with an empty data dir",
            chunks.display(),
            f.display()
        );
    }
    let cache = crate::cache::ChunkCache::memory_only()
        .await
        .context("opening the witness's (empty, in-memory) chunk cache")?;
    Ok((ChunkStore::unopened(data_dir), cache))
}

/// The first regular file found under `dir` (depth-first), if any; a missing `dir` has none.
fn first_file_under(dir: &std::path::Path) -> anyhow::Result<Option<std::path::PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow::anyhow!("listing {}: {e}", dir.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let path = entry.path();
        if entry
            .file_type()
            .with_context(|| format!("inspecting {}", path.display()))?
            .is_dir()
        {
            if let Some(f) = first_file_under(&path)? {
                return Ok(Some(f));
            }
        } else {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// Resolves when the Raft core has stopped without being asked to (a fatal error), with why.
async fn raft_stopped(raft: &crate::raft::ArkRaft) -> String {
    let mut rx = raft.metrics();
    loop {
        if let Err(f) = &rx.borrow_and_update().running_state {
            return f.to_string();
        }
        if rx.changed().await.is_err() {
            return "the raft core ended".to_owned();
        }
    }
}

/// Initialises a brand-new cluster on the node configured to do so.
async fn bootstrap(cfg: &NodeConfig, raft: &ArkRaft) -> anyhow::Result<()> {
    if !cfg.bootstrap.initialize {
        return Ok(());
    }
    if raft.is_initialized().await.context("reading raft state")? {
        tracing::info!("cluster already initialised; bootstrap skipped");
        return Ok(());
    }
    let mut members: BTreeMap<NodeId, ArkNode> = BTreeMap::new();
    members.insert(
        cfg.node_id,
        ArkNode {
            site: cfg.site.clone(),
            peer_addr: cfg.advertised_peer_addr(),
            client_addr: cfg.advertised_client_addr(),
        },
    );
    for p in &cfg.bootstrap.peers {
        members.insert(
            p.id,
            ArkNode {
                site: p.site.clone(),
                peer_addr: p.peer_addr.clone(),
                client_addr: p.client_addr.clone(),
            },
        );
    }
    tracing::info!(voters = ?members.keys().collect::<Vec<_>>(), "initialising a new cluster");
    raft.initialize(members).await.context("initialising the cluster")?;
    Ok(())
}

/// Describes every metric the node records, each by the module that records it (passed to
/// [`crate::metrics::install`]).
pub(crate) fn describe_all_metrics() {
    crate::api::auth::describe_metrics();
    crate::audit::describe_metrics();
    crate::api::client_cert::describe_metrics();
    crate::api::cluster::describe_metrics();
    crate::api::kv::describe_metrics();
    crate::api::limits::describe_metrics();
    crate::api::objects::describe_metrics();
    crate::raft::proposer::describe_metrics();
    crate::raft::fence::describe_metrics();
    crate::cache::describe_metrics();
    crate::chunks::store::describe_metrics();
    crate::net::describe_metrics();
    crate::net::fault::describe_metrics();
    crate::net::reload::describe_metrics();
    crate::net::tls_accept::describe_metrics();
    crate::raft::network::describe_metrics();
    crate::raft::recovery::describe_metrics();
    crate::raft::elector::describe_metrics();
    crate::raft::handover::describe_metrics();
    crate::raft::state_machine::overlay::describe_metrics();
    crate::raft::state_machine::snapshot::describe_metrics();
    crate::raft::backup::describe_metrics();
    crate::raft::store::describe_metrics();
    crate::raft::witness::describe_metrics();
    crate::replicate::read::describe_metrics();
    crate::replicate::rpc::describe_metrics();
    crate::replicate::serve::describe_metrics();
    crate::replicate::queue::describe_metrics();
    crate::replicate::scrub::describe_metrics();
    crate::risk::describe_metrics();
    crate::telemetry::describe_metrics();
}
