//! The peer transport: one QUIC endpoint per node with mutual TLS, length-prefixed protobuf
//! frames on bidirectional streams, and a pool of reusable connections with backoff: two
//! per peer ([`Lane`]: control and bulk), dialled in the background.
//!
//! Owns sockets, TLS and framing. It knows nothing of Raft: requests are handed to a
//! [`PeerHandler`] and the `raft::network` module turns openraft calls into [`PeerPool`]
//! calls. Every RPC has a deadline and every frame a size limit.

pub mod fault;
pub mod link_stats;
pub mod live;
pub mod reload;
pub mod tls;
pub mod tls_accept;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ark_proto::v1::{peer_response, PeerRequest, PeerResponse};
use bytes::{Bytes, BytesMut};
use prost::Message;
use tokio::sync::Mutex;

pub use link_stats::LinkStats;
pub use tls::TlsMaterial;

/// Largest frame accepted on a peer stream (snapshot chunks are far smaller).
pub const FRAME_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Longest wait between two reconnect attempts to an unreachable peer.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// First wait after a failed connect.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Deadline of the QUIC + TLS handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a peer RPC failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The peer could not be reached (resolution, handshake, refused certificate, backoff).
    #[error("peer {addr} unreachable: {reason}")]
    Unreachable {
        /// Address dialled.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The RPC did not complete before its deadline.
    #[error("peer RPC to {addr} timed out after {after:?}")]
    Timeout {
        /// Address dialled.
        addr: String,
        /// Deadline.
        after: Duration,
    },
    /// The connection broke or the peer sent something malformed.
    #[error("peer RPC to {addr} failed: {reason}")]
    Io {
        /// Address dialled.
        addr: String,
        /// Why.
        reason: String,
    },
}

/// Handles requests that arrive from peers.
pub trait PeerHandler: Send + Sync + 'static {
    /// Answers one request. Must not block for long: it runs on the endpoint's tasks.
    fn handle(&self, req: PeerRequest) -> impl std::future::Future<Output = PeerResponse> + Send;
}

/// The node's QUIC endpoint (server and client side share one UDP socket).
#[derive(Clone)]
pub struct PeerEndpoint {
    endpoint: quinn::Endpoint,
    /// Binds each accepted connection to the node its certificate names (replaced on a
    /// certificate reload, [`PeerEndpoint::install_tls`]).
    identity: live::Live<tls::NodeIdentity>,
    /// What this node presents and trusts when it dials (replaced on a reload).
    client: live::Live<quinn::ClientConfig>,
    /// Shared by both sides' configs, kept to rebuild them on a reload.
    transport: Arc<quinn::TransportConfig>,
    /// Per-peer counters, shared with the [`PeerPool`] built on this endpoint: the streams
    /// peers open here count their bytes in the same place as the calls this node makes.
    links: LinkStats,
}

/// The peer plane's TLS, built from new material by [`PeerEndpoint::prepare_tls`] and put
/// in force by [`PeerEndpoint::install_tls`]: everything that can fail happens in the first.
pub struct PeerTls {
    server: quinn::ServerConfig,
    client: quinn::ClientConfig,
    identity: tls::NodeIdentity,
}

impl PeerEndpoint {
    /// Binds the endpoint with the node's TLS material.
    pub fn bind(addr: SocketAddr, tls: &TlsMaterial) -> anyhow::Result<Self> {
        Self::bind_with_faults(addr, tls, None)
    }

    /// Binds the endpoint; with `faults`, every datagram passes through the fault layer
    /// ([`fault`]) driven by that table.
    pub fn bind_with_faults(
        addr: SocketAddr,
        tls: &TlsMaterial,
        faults: Option<fault::FaultTable>,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let mut transport = quinn::TransportConfig::default();
        transport.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(10)).context("idle timeout")?,
        ));
        transport.keep_alive_interval(Some(Duration::from_secs(2)));
        transport.max_concurrent_bidi_streams(1024u32.into());
        // Chunks of up to 4 MiB travel one per stream, several streams at a time: windows
        // large enough that a stream never waits for a window update on a chunk.
        transport.stream_receive_window((8u32 << 20).into());
        transport.receive_window((64u32 << 20).into());
        transport.send_window(64 << 20);
        // Path MTU discovery searches up to PEER_UDP_PAYLOAD_MAX (quinn's default stops at
        // 1452): where the path allows it (loopback, jumbo frames) fewer, larger datagrams
        // carry the same bytes, and quinn's cost is mostly per datagram.
        let mut mtud = quinn::MtuDiscoveryConfig::default();
        mtud.upper_bound(PEER_UDP_PAYLOAD_MAX);
        transport.mtu_discovery_config(Some(mtud));
        let transport = Arc::new(transport);
        let peer_tls = Self::build_tls(tls, &transport)?;
        let mut endpoint_config = quinn::EndpointConfig::default();
        endpoint_config
            .max_udp_payload_size(PEER_UDP_PAYLOAD_MAX)
            .context("QUIC endpoint config")?;
        let sock =
            std::net::UdpSocket::bind(addr).with_context(|| format!("cannot bind QUIC peer endpoint on {addr}"))?;
        let runtime: Arc<dyn quinn::Runtime> = Arc::new(quinn::TokioRuntime);
        let socket = runtime.wrap_udp_socket(sock).context("wrapping the UDP socket")?;
        let socket: Arc<dyn quinn::AsyncUdpSocket> = match faults {
            None => socket,
            Some(table) => Arc::new(fault::FaultySocket::new(socket, table)),
        };
        let endpoint =
            quinn::Endpoint::new_with_abstract_socket(endpoint_config, Some(peer_tls.server), socket, runtime)
                .with_context(|| format!("cannot start QUIC peer endpoint on {addr}"))?;
        Ok(Self {
            endpoint,
            identity: live::Live::new(peer_tls.identity),
            client: live::Live::new(peer_tls.client),
            transport,
            links: LinkStats::default(),
        })
    }

    fn build_tls(tls: &TlsMaterial, transport: &Arc<quinn::TransportConfig>) -> anyhow::Result<PeerTls> {
        use anyhow::Context;
        let server_tls = tls.server_config(&[tls::PEER_ALPN])?;
        let client_tls = tls.client_config(&[tls::PEER_ALPN])?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(
            quinn::crypto::rustls::QuicServerConfig::try_from(server_tls).context("QUIC server TLS config")?,
        ));
        server.transport_config(transport.clone());
        let mut client = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(client_tls).context("QUIC client TLS config")?,
        ));
        client.transport_config(transport.clone());
        Ok(PeerTls {
            server,
            client,
            identity: tls.node_identity()?,
        })
    }

    /// Builds the peer plane's TLS from `tls`, without putting it in force.
    pub fn prepare_tls(&self, tls: &TlsMaterial) -> anyhow::Result<PeerTls> {
        Self::build_tls(tls, &self.transport)
    }

    /// Puts `p` in force for every connection accepted or dialled from now on; open
    /// connections keep the certificates they were made with.
    pub fn install_tls(&self, p: PeerTls) {
        self.endpoint.set_server_config(Some(p.server));
        self.client.set(p.client);
        self.identity.set(p.identity);
    }

    /// The check of node certificates in force (replaced on every reload).
    pub fn node_identity(&self) -> live::Live<tls::NodeIdentity> {
        self.identity.clone()
    }

    /// The bound local address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Accepts connections until `shutdown` resolves, handing each request to `handler`.
    pub async fn serve<H: PeerHandler>(&self, handler: Arc<H>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            let incoming = tokio::select! {
                _ = &mut shutdown => break,
                i = self.endpoint.accept() => match i {
                    Some(i) => i,
                    None => break,
                },
            };
            let handler = handler.clone();
            let identity = tls::NodeIdentity::clone(&self.identity.get());
            let links = self.links.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) => {
                        // A peer without a CA-signed certificate ends here.
                        tracing::warn!(%remote, error = %e, "refused peer connection");
                        metrics::counter!("ark_peer_connections_refused_total").increment(1);
                        return;
                    }
                };
                let chain = conn
                    .peer_identity()
                    .and_then(|a| a.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok())
                    .map(|b| *b)
                    .unwrap_or_default();
                let peer = Arc::new(AcceptedPeer {
                    identity,
                    chain,
                    node: std::sync::OnceLock::new(),
                });
                loop {
                    let (send, recv) = match conn.accept_bi().await {
                        Ok(s) => s,
                        Err(_) => break,
                    };
                    let handler = handler.clone();
                    let peer = peer.clone();
                    let links = links.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve_stream(handler, &peer, &links, send, recv).await {
                            tracing::debug!(%remote, error = %e, "peer stream failed");
                        }
                    });
                }
            });
        }
    }

    /// Closes the endpoint: open connections are told the node is going away.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"shutdown");
    }
}

/// An accepted peer connection: its certificate chain and, after the first request, the
/// node it is bound to.
struct AcceptedPeer {
    identity: tls::NodeIdentity,
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    node: std::sync::OnceLock<u64>,
}

impl AcceptedPeer {
    /// Admits a request claiming to come from node `from` only if the connection's
    /// certificate is that node's: the first request binds the connection to its node, and
    /// every later one must name the same.
    fn admit(&self, from: u64) -> Result<(), String> {
        if self.node.get().is_none() {
            self.identity.check_node(&self.chain, from)?;
        }
        let bound = *self.node.get_or_init(|| from);
        if bound != from {
            return Err(format!(
                "the request claims to come from node {from}, but this connection belongs to node {bound}"
            ));
        }
        Ok(())
    }
}

/// Serves one request on a stream a peer opened. Its bytes count on the link to the peer
/// once the peer is admitted: a request from a node its certificate does not name is not
/// that node's traffic.
async fn serve_stream<H: PeerHandler>(
    handler: Arc<H>,
    peer: &AcceptedPeer,
    links: &LinkStats,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> anyhow::Result<()> {
    let buf = read_frame(&mut recv).await?;
    let request_frame_bytes = FRAME_PREFIX_BYTES + buf.len();
    let req = PeerRequest::decode(buf)?;
    let from = req.from;
    let (resp, bytes) = match peer.admit(from) {
        Ok(()) => {
            let bytes = links.bytes(from);
            bytes.received(request_frame_bytes);
            (handler.handle(req).await, Some(bytes))
        }
        Err(why) => {
            metrics::counter!("ark_peer_requests_refused_total").increment(1);
            tracing::warn!(from = req.from, reason = %why, "refused a peer request");
            let resp = PeerResponse {
                body: Some(peer_response::Body::Failure(format!("refused: {why}"))),
            };
            (resp, None)
        }
    };
    let sent = write_frame(&mut send, encode_response(&resp)).await?;
    if let Some(b) = bytes {
        b.sent(sent);
    }
    send.finish()?;
    Ok(())
}

/// Bytes of a frame's length prefix.
const FRAME_PREFIX_BYTES: usize = 4;

/// Writes one length-prefixed frame from its pieces. The pieces are handed to quinn as they
/// are (no copy into the stream's buffer: chunk bytes are the bulk of the peer traffic).
/// Returns the bytes written, prefix included.
async fn write_frame(send: &mut quinn::SendStream, parts: Vec<Bytes>) -> anyhow::Result<usize> {
    let total: usize = parts.iter().map(Bytes::len).sum();
    anyhow::ensure!(total <= FRAME_BYTES_MAX, "frame of {total} bytes exceeds the limit");
    let mut chunks = Vec::with_capacity(parts.len() + 1);
    chunks.push(Bytes::copy_from_slice(&(total as u32).to_be_bytes()));
    chunks.extend(parts);
    send.write_all_chunks(&mut chunks).await?;
    Ok(FRAME_PREFIX_BYTES + total)
}

/// Protobuf field numbers that [`encode_request`] and [`encode_response`] write by hand
/// (`proto/ark/v1/peer.proto`; the tests compare with prost's own encoding).
const REQUEST_CHUNK_PUT_TAG: u32 = 21;
const CHUNK_PUT_DATA_TAG: u32 = 2;
const RESPONSE_CHUNK_DATA_TAG: u32 = 5;

/// Encodes a request as the pieces of one frame body: the same bytes as `encode_to_vec`, but a
/// chunk's bytes are not copied into the encoding. They follow it as a piece of their own:
/// protobuf lets a field come last, and a nested message's length is known before its bytes
/// are written. (Copying them cost the node that fans a put out to two targets 5% of its CPU.)
fn encode_request(req: &PeerRequest) -> Vec<Bytes> {
    use ark_proto::v1::peer_request::Body;
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
    let put = match &req.body {
        Some(Body::ChunkPut(put)) if !put.data.is_empty() => put,
        _ => return vec![req.encode_to_vec().into()],
    };
    let outer = PeerRequest {
        body: None,
        ..req.clone()
    };
    let inner = ark_proto::v1::ChunkPut {
        data: Bytes::new(),
        ..put.clone()
    };
    let data_len = put.data.len();
    let inner_len = inner.encoded_len() + key_len(CHUNK_PUT_DATA_TAG) + encoded_len_varint(data_len as u64) + data_len;
    let mut head = Vec::with_capacity(outer.encoded_len() + inner.encoded_len() + 32);
    outer.encode_raw(&mut head);
    encode_key(REQUEST_CHUNK_PUT_TAG, WireType::LengthDelimited, &mut head);
    encode_varint(inner_len as u64, &mut head);
    inner.encode_raw(&mut head);
    encode_key(CHUNK_PUT_DATA_TAG, WireType::LengthDelimited, &mut head);
    encode_varint(data_len as u64, &mut head);
    vec![head.into(), put.data.clone()]
}

/// [`encode_request`] for answers: a served chunk's bytes follow the encoding uncopied.
fn encode_response(resp: &PeerResponse) -> Vec<Bytes> {
    use ark_proto::v1::peer_response::Body;
    use prost::encoding::{encode_key, encode_varint, WireType};
    match &resp.body {
        Some(Body::ChunkData(data)) if !data.is_empty() => {
            let mut head = Vec::with_capacity(16);
            encode_key(RESPONSE_CHUNK_DATA_TAG, WireType::LengthDelimited, &mut head);
            encode_varint(data.len() as u64, &mut head);
            vec![head.into(), data.clone()]
        }
        _ => vec![resp.encode_to_vec().into()],
    }
}

/// Largest UDP payload of a peer datagram (what path MTU discovery may reach, and what the
/// endpoint accepts). quinn hands the kernel up to 10 datagrams per `sendmsg` (GSO), and a
/// batch must stay within one UDP datagram's 65 507 bytes: a larger one is refused with
/// EMSGSIZE, which quinn takes for a failed MTU probe, and the whole batch is lost. That is
/// why 8952- and 65527-byte datagrams were slower in an earlier trial (docs/benchmarks.md).
pub const PEER_UDP_PAYLOAD_MAX: u16 = 6500;

/// The most datagrams quinn 0.11 gives one `sendmsg` (its `MAX_TRANSMIT_SEGMENTS`).
const QUINN_GSO_SEGMENTS_MAX: usize = 10;

// A full GSO batch of the largest datagrams fits one UDP datagram (65 535 - 8 - 20 bytes).
const _: () = assert!(PEER_UDP_PAYLOAD_MAX as usize * QUINN_GSO_SEGMENTS_MAX <= 65_507);

/// Reads one length-prefixed frame (a big-endian `u32` length, then the body) from a peer
/// stream. A length over [`FRAME_BYTES_MAX`] is refused before anything is allocated for it;
/// a stream that ends early is an error. Generic over the reader so that it is tested
/// without sockets (`frame_props.rs`).
pub async fn read_frame<R: tokio::io::AsyncRead + Unpin>(recv: &mut R) -> anyhow::Result<Bytes> {
    let mut len = [0u8; FRAME_PREFIX_BYTES];
    tokio::io::AsyncReadExt::read_exact(recv, &mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    anyhow::ensure!(
        len <= FRAME_BYTES_MAX,
        "peer announced a frame of {len} bytes, over the limit"
    );
    // Read into spare capacity: no zeroing of a buffer about to be overwritten. Decoding from
    // the frozen buffer hands chunk bytes out without another copy.
    let mut buf = BytesMut::with_capacity(len);
    let mut body = tokio::io::AsyncReadExt::take(&mut *recv, len as u64);
    while buf.len() < len {
        if tokio::io::AsyncReadExt::read_buf(&mut body, &mut buf).await? == 0 {
            anyhow::bail!("stream ended after {} of a {len}-byte frame", buf.len());
        }
    }
    Ok(buf.freeze())
}

/// Outcome of a handshake, shared by every call that waits for it (`Err` says why it failed).
type DialOutcome = Option<Result<quinn::Connection, String>>;

struct PeerConn {
    conn: Option<quinn::Connection>,
    addr: String,
    next_attempt: Instant,
    backoff: Duration,
    /// A handshake under way in the background, if any.
    dialing: Option<tokio::sync::watch::Receiver<DialOutcome>>,
}

/// The send half of a call's stream, reset when dropped before the call took it back.
struct AbandonOnDrop(Option<quinn::SendStream>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if let Some(mut s) = self.0.take() {
            let _ = s.reset(0u32.into());
        }
    }
}

/// A connection on which no RPC has succeeded for this long (or four RPC deadlines, if
/// longer) is given up at the next timeout, even while datagrams arrive on it.
pub const CONNECTION_STUCK_AFTER: Duration = Duration::from_secs(3);

/// Which of the two connections to a peer a request travels on.
///
/// Bulk data (chunk bytes, snapshot chunks) and control messages (Raft votes and
/// AppendEntries, forwarded writes, read indexes, small data-plane queries) use separate QUIC
/// connections, so each has its own congestion window: on a slow or lossy link a 4 MiB chunk
/// on a shared connection holds heartbeats back for seconds, past their deadline of one
/// heartbeat interval, and the leader loses its followers (seen in the `wan` drill).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Small, latency-sensitive messages.
    Control,
    /// Messages that carry chunk or snapshot bytes.
    Bulk,
}

impl Lane {
    /// The lane of a request, from what it carries.
    pub fn of(req: &PeerRequest) -> Self {
        use ark_proto::v1::peer_request::Body;
        match req.body {
            Some(Body::InstallSnapshot(_) | Body::ChunkPut(_) | Body::ChunkGet(_) | Body::ChunkPull(_)) => Lane::Bulk,
            _ => Lane::Control,
        }
    }
}

/// One peer's connection on one lane, shared by the calls and the background dial.
type Slot = Arc<Mutex<PeerConn>>;

/// Reusable connections to peers, keyed by node id and lane.
#[derive(Clone)]
pub struct PeerPool {
    endpoint: PeerEndpoint,
    conns: Arc<Mutex<HashMap<(u64, Lane), Slot>>>,
    /// When each peer last answered an RPC on each lane, for health reporting and for
    /// spotting stuck connections.
    last_ok: Arc<std::sync::Mutex<HashMap<(u64, Lane), Instant>>>,
    /// Per-link counters for telemetry, written by `call` and by the endpoint's streams
    /// (the same counters as `endpoint.links`).
    links: LinkStats,
}

impl PeerPool {
    /// A pool dialling from `endpoint`.
    pub fn new(endpoint: PeerEndpoint) -> Self {
        let links = endpoint.links.clone();
        Self {
            endpoint,
            conns: Arc::default(),
            last_ok: Arc::default(),
            links,
        }
    }

    /// Per-link counters (calls in flight, timeouts, errors, bytes both ways on every
    /// connection, the connection last used).
    pub fn link_stats(&self) -> &LinkStats {
        &self.links
    }

    /// Time since peer `id` last answered, on any lane, if ever.
    pub fn since_last_ok(&self, id: u64) -> Option<Duration> {
        let m = self.last_ok.lock().ok()?;
        [Lane::Control, Lane::Bulk]
            .iter()
            .filter_map(|lane| m.get(&(id, *lane)).map(|t| t.elapsed()))
            .min()
    }

    fn since_last_ok_on(&self, id: u64, lane: Lane) -> Option<Duration> {
        self.last_ok
            .lock()
            .ok()
            .and_then(|m| m.get(&(id, lane)).map(|t| t.elapsed()))
    }

    async fn forget(&self, id: u64, lane: Lane, conn: &quinn::Connection) {
        let slot = self.conns.lock().await.get(&(id, lane)).cloned();
        if let Some(slot) = slot {
            let mut pc = slot.lock().await;
            if pc.conn.as_ref().is_some_and(|c| c.stable_id() == conn.stable_id()) {
                pc.conn = None;
            }
        }
        conn.close(1u32.into(), b"rpc failed");
    }

    /// The connection to peer `id`, dialling it if there is none. A handshake runs in the
    /// background with its own deadline ([`CONNECT_TIMEOUT`]), not the calling RPC's: on a
    /// slow, lossy link a QUIC + TLS handshake can take longer than one heartbeat, and a dial
    /// cut at the caller's deadline would be retried, and cut again, for ever. The caller
    /// waits for it at most as long as its own deadline lets it; later calls find the
    /// connection, or wait on the same handshake.
    async fn connection(&self, id: u64, lane: Lane, addr: &str) -> Result<quinn::Connection, NetError> {
        let slot = {
            let mut conns = self.conns.lock().await;
            conns
                .entry((id, lane))
                .or_insert_with(|| {
                    Arc::new(Mutex::new(PeerConn {
                        conn: None,
                        addr: addr.to_string(),
                        next_attempt: Instant::now(),
                        backoff: BACKOFF_MIN,
                        dialing: None,
                    }))
                })
                .clone()
        };
        let mut outcome = {
            let mut pc = slot.lock().await;
            if pc.addr != addr {
                // The node moved: forget the old connection and any handshake with it.
                pc.conn = None;
                pc.dialing = None;
                pc.addr = addr.to_string();
                pc.backoff = BACKOFF_MIN;
                pc.next_attempt = Instant::now();
            }
            if let Some(c) = &pc.conn {
                if c.close_reason().is_none() {
                    return Ok(c.clone());
                }
            }
            pc.conn = None;
            match &pc.dialing {
                Some(rx) => rx.clone(),
                None => {
                    let now = Instant::now();
                    if now < pc.next_attempt {
                        return Err(NetError::Unreachable {
                            addr: addr.to_string(),
                            reason: format!("backing off for {:?} after a failed connect", pc.next_attempt - now),
                        });
                    }
                    let (tx, rx) = tokio::sync::watch::channel(None);
                    pc.dialing = Some(rx.clone());
                    tokio::spawn(self.clone().dial_in_background(id, addr.to_string(), slot.clone(), tx));
                    rx
                }
            }
        };
        let done = outcome.wait_for(Option::is_some).await.map(|o| o.clone());
        match done {
            Ok(Some(Ok(c))) => Ok(c),
            Ok(Some(Err(reason))) => Err(NetError::Unreachable {
                addr: addr.to_string(),
                reason,
            }),
            // The dial was abandoned (its task ended without an outcome).
            Ok(None) | Err(_) => Err(NetError::Unreachable {
                addr: addr.to_string(),
                reason: "handshake abandoned".into(),
            }),
        }
    }

    /// Dials `addr`, records the outcome in `slot` (the connection, or the next backoff) and
    /// tells every caller waiting on `tx`.
    async fn dial_in_background(self, id: u64, addr: String, slot: Slot, tx: tokio::sync::watch::Sender<DialOutcome>) {
        let res = self.dial(id, &addr).await;
        {
            let mut pc = slot.lock().await;
            // A slot whose address changed meanwhile has moved on: leave it alone.
            if pc.addr == addr {
                pc.dialing = None;
                match &res {
                    Ok(c) => {
                        pc.backoff = BACKOFF_MIN;
                        pc.conn = Some(c.clone());
                    }
                    Err(_) => {
                        pc.next_attempt = Instant::now() + pc.backoff;
                        pc.backoff = (pc.backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
        }
        let result = if res.is_ok() { "ok" } else { "error" };
        metrics::counter!("ark_peer_connects_total", "result" => result).increment(1);
        if let Err(e) = &res {
            tracing::debug!(peer = id, %addr, error = %e, "peer dial failed");
        }
        let _ = tx.send(Some(res.map_err(|e| match e {
            NetError::Unreachable { reason, .. } => reason,
            other => other.to_string(),
        })));
    }

    async fn dial(&self, id: u64, addr: &str) -> Result<quinn::Connection, NetError> {
        let unreachable = |reason: String| NetError::Unreachable {
            addr: addr.to_string(),
            reason,
        };
        let sock = tokio::net::lookup_host(addr)
            .await
            .map_err(|e| unreachable(format!("cannot resolve: {e}")))?
            .next()
            .ok_or_else(|| unreachable("address resolves to nothing".into()))?;
        let client = quinn::ClientConfig::clone(&self.endpoint.client.get());
        let connecting = self
            .endpoint
            .endpoint
            .connect_with(client, sock, &tls::peer_server_name(id))
            .map_err(|e| unreachable(e.to_string()))?;
        match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(unreachable(e.to_string())),
            Err(_) => Err(unreachable(format!("handshake timed out after {CONNECT_TIMEOUT:?}"))),
        }
    }

    /// Sends one request to node `id` at `addr` and waits for its answer, at most `timeout`.
    /// A timed-out call keeps the connection (other calls share it) unless the peer sent
    /// nothing meanwhile or no call to it has succeeded for [`CONNECTION_STUCK_AFTER`].
    pub async fn call(
        &self,
        id: u64,
        addr: &str,
        req: &PeerRequest,
        timeout: Duration,
    ) -> Result<PeerResponse, NetError> {
        let body = encode_request(req);
        let lane = Lane::of(req);
        let inflight = self.links.start(id);
        let mut used: Option<(quinn::Connection, u64)> = None;
        let fut = async {
            let conn = self.connection(id, lane, addr).await?;
            used = Some((conn.clone(), conn.stats().udp_rx.datagrams));
            let io = |e: String| NetError::Io {
                addr: addr.to_string(),
                reason: e,
            };
            let (send, mut recv) = conn.open_bi().await.map_err(|e| io(e.to_string()))?;
            // Not finished until the answer is in: a call that times out drops the guard,
            // which resets the stream, so quinn stops (re)sending a request nobody waits for.
            // Finished data would be retransmitted until acknowledged and, on a slow lossy
            // link, crowd out the retries (a new leader's AppendEntries timed out for 10 s).
            let mut send = AbandonOnDrop(Some(send));
            if let Some(s) = send.0.as_mut() {
                let sent = write_frame(s, body.clone()).await.map_err(|e| io(e.to_string()))?;
                inflight.bytes().sent(sent);
            }
            let buf = read_frame(&mut recv).await.map_err(|e| io(e.to_string()))?;
            inflight.bytes().received(FRAME_PREFIX_BYTES + buf.len());
            if let Some(mut s) = send.0.take() {
                let _ = s.finish();
            }
            PeerResponse::decode(buf).map_err(|e| io(format!("malformed response: {e}")))
        };
        let res = match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(NetError::Timeout {
                addr: addr.to_string(),
                after: timeout,
            }),
        };
        let outcome = match &res {
            Ok(_) => link_stats::CallOutcome::Ok,
            Err(NetError::Timeout { .. }) => link_stats::CallOutcome::Timeout,
            Err(_) => link_stats::CallOutcome::Error,
        };
        self.links.finish(id, outcome, used.as_ref().map(|(c, _)| c));
        match (&res, used) {
            (Err(NetError::Io { .. }), Some((conn, _))) => self.forget(id, lane, &conn).await,
            (Err(NetError::Timeout { .. }), Some((conn, rx_before))) => {
                // A peer that restarted (its new process does not know this connection) or
                // died sends nothing more: forget the connection so the next call dials
                // afresh instead of waiting until the idle timeout. A peer that is merely
                // slow (a WAN link, a lost datagram) still sends: keep the connection, which
                // other RPCs share, rather than fail them all and pay a new handshake.
                // But a connection on which nothing has succeeded for a while is stuck however
                // much it receives (seen on a lossy WAN link: every RPC to a follower timed out
                // for minutes while datagrams kept arriving): dial afresh.
                let stuck = self
                    .since_last_ok_on(id, lane)
                    .is_some_and(|t| t > CONNECTION_STUCK_AFTER.max(timeout * 4));
                if stuck || conn.stats().udp_rx.datagrams == rx_before {
                    self.forget(id, lane, &conn).await;
                } else {
                    metrics::counter!("ark_peer_rpc_timeouts_kept_total").increment(1);
                }
            }
            _ => {}
        }
        if res.is_ok() {
            if let Ok(mut m) = self.last_ok.lock() {
                m.insert((id, lane), Instant::now());
            }
        }
        res
    }
}

/// Describes this module's metrics (HELP text and unit) to the recorder; called once at start-up by
/// `server` (through `metrics::install`).
pub(crate) fn describe_metrics() {
    use metrics::describe_counter;
    describe_counter!(
        "ark_peer_connections_refused_total",
        "Incoming peer connections refused in the TLS handshake (no certificate from the cluster CA)."
    );
    describe_counter!(
        "ark_peer_requests_refused_total",
        "Peer requests refused because their sender is not the node the connection's certificate names."
    );
    describe_counter!(
        "ark_peer_connects_total",
        "Outgoing peer connection attempts, by result (ok, error)."
    );
    describe_counter!(
        "ark_peer_rpc_timeouts_kept_total",
        "Peer RPC timeouts after which the connection was kept because the peer was still sending."
    );
}

#[cfg(test)]
mod frame_props;

#[cfg(test)]
mod tests {
    use super::*;
    use ark_proto::v1::{peer_request::Body, ChunkGet, ChunkIds};

    fn req(body: Body) -> PeerRequest {
        PeerRequest {
            from: 1,
            raft_codec: 0,
            body: Some(body),
        }
    }

    fn joined(parts: Vec<Bytes>) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn frames_built_from_pieces_are_prost_encodings() {
        // The hand-written field numbers must match the proto: the pieces joined decode to the
        // message and are as long as prost's encoding (the data field comes last instead of in
        // field order), for every length class of the data (varint of 1, 2 and 3 bytes).
        for len in [0usize, 1, 127, 128, 300, 20_000, 1 << 20] {
            let data = Bytes::from((0..len).map(|i| (i * 7) as u8).collect::<Vec<u8>>());
            let r = PeerRequest {
                from: 7,
                raft_codec: 1,
                body: Some(Body::ChunkPut(ark_proto::v1::ChunkPut {
                    id: vec![9; 32],
                    data: data.clone(),
                    compress: true,
                })),
            };
            let pieces = encode_request(&r);
            if len > 0 {
                // The point of the pieces: the chunk travels as the caller's buffer, not a copy.
                assert_eq!(pieces.len(), 2, "request, {len} bytes");
                assert_eq!(pieces[1].as_ptr(), data.as_ptr(), "request, {len} bytes: chunk copied");
            }
            let bytes = joined(pieces);
            assert_eq!(bytes.len(), r.encoded_len(), "request, {len} bytes");
            assert_eq!(
                PeerRequest::decode(Bytes::from(bytes)).unwrap(),
                r,
                "request, {len} bytes"
            );
            let a = PeerResponse {
                body: Some(ark_proto::v1::peer_response::Body::ChunkData(data.clone())),
            };
            let pieces = encode_response(&a);
            if len > 0 {
                assert_eq!(pieces.len(), 2, "response, {len} bytes");
                assert_eq!(pieces[1].as_ptr(), data.as_ptr(), "response, {len} bytes: chunk copied");
            }
            assert_eq!(joined(pieces), a.encode_to_vec(), "response, {len} bytes");
        }
        let other = req(Body::Vote(vec![1, 2, 3]));
        assert_eq!(joined(encode_request(&other)), other.encode_to_vec());
    }

    #[test]
    fn chunk_and_snapshot_bytes_take_the_bulk_lane_and_raft_the_control_lane() {
        assert_eq!(Lane::of(&req(Body::ChunkGet(ChunkGet { id: vec![1] }))), Lane::Bulk);
        assert_eq!(Lane::of(&req(Body::InstallSnapshot(vec![]))), Lane::Bulk);
        assert_eq!(Lane::of(&req(Body::AppendEntries(vec![]))), Lane::Control);
        assert_eq!(Lane::of(&req(Body::Vote(vec![]))), Lane::Control);
        assert_eq!(Lane::of(&req(Body::ChunkHave(ChunkIds::default()))), Lane::Control);
    }
}
