//! The client plane's TLS acceptor: TCP connections from the listener, each taken through a
//! TLS handshake with the configuration current at that moment ([`Live`]), so that a
//! certificate reload applies to every new connection while open ones keep theirs.
//!
//! Owns the handshakes and what a connection tells a request about its client
//! ([`ClientConnInfo`]: verified chain and address; read by `api::peer`). Must not decide
//! who may do what (that is `api`). tonic's own `ServerTlsConfig` cannot change its
//! certificate without a restart, hence this.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_stream::StreamExt;
use tonic::transport::server::{Connected, TcpIncoming};

use super::live::Live;

/// How long a client has to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; further connections wait in the listen backlog.
const HANDSHAKES_IN_FLIGHT_MAX: usize = 256;
/// Handshaken connections waiting for the gRPC server to take them.
const READY_QUEUE_MAX: usize = 64;

/// Who is on the other end of one client-plane connection; tonic puts it into every request
/// on that connection (`Request::extensions`).
#[derive(Debug, Clone)]
pub struct ClientConnInfo {
    /// The client's TCP address.
    pub addr: Option<SocketAddr>,
    /// The client's certificate chain, leaf first, as the handshake verified it.
    pub chain: Option<Arc<Vec<CertificateDer<'static>>>>,
    /// The identity the leaf names ([`super::tls::identity_of_cert`]), read once per
    /// connection rather than on every call.
    pub identity: Option<Arc<str>>,
}

/// One client connection after its TLS handshake.
pub struct TlsConn {
    io: tokio_rustls::server::TlsStream<TcpStream>,
    info: ClientConnInfo,
}

impl Connected for TlsConn {
    type ConnectInfo = ClientConnInfo;

    fn connect_info(&self) -> ClientConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Accepts connections from `tcp` until `stop` resolves (or the answer is dropped) and
/// answers them, handshaken with `config` as it is when each arrives, in the order their
/// handshakes complete. A failed or slow handshake (a certificate the CA did not sign, a
/// port scanner) is logged and counted, and holds up no one else.
pub fn incoming(
    tcp: TcpIncoming,
    config: Live<rustls::ServerConfig>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio_stream::wrappers::ReceiverStream<Result<TlsConn, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(READY_QUEUE_MAX);
    let handshakes = Arc::new(tokio::sync::Semaphore::new(HANDSHAKES_IN_FLIGHT_MAX));
    tokio::spawn(async move {
        tokio::pin!(stop);
        tokio::pin!(tcp);
        loop {
            let permit = tokio::select! {
                () = &mut stop => break,
                () = tx.closed() => break,
                p = handshakes.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let stream = tokio::select! {
                () = &mut stop => break,
                () = tx.closed() => break,
                s = tcp.next() => match s {
                    Some(Ok(s)) => s,
                    Some(Err(e)) => {
                        // Out of file descriptors and the like: wait a little rather than spin.
                        tracing::warn!(error = %e, "client API: accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    None => break,
                },
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(config.get());
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let addr = stream.peer_addr().ok();
                let io = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(io)) => io,
                    Ok(Err(e)) => {
                        tracing::debug!(?addr, error = %e, "client API: TLS handshake refused");
                        metrics::counter!("ark_client_tls_handshakes_failed_total").increment(1);
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(?addr, "client API: TLS handshake timed out after {HANDSHAKE_TIMEOUT:?}");
                        metrics::counter!("ark_client_tls_handshakes_failed_total").increment(1);
                        return;
                    }
                };
                let chain: Option<Arc<Vec<CertificateDer<'static>>>> = io
                    .get_ref()
                    .1
                    .peer_certificates()
                    .map(|c| Arc::new(c.iter().map(|c| c.clone().into_owned()).collect()));
                let identity = chain
                    .as_ref()
                    .and_then(|c| c.first())
                    .and_then(|leaf| super::tls::identity_of_cert(leaf))
                    .map(Arc::<str>::from);
                let _ = tx
                    .send(Ok(TlsConn {
                        io,
                        info: ClientConnInfo { addr, chain, identity },
                    }))
                    .await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Describes this module's metrics (HELP text and unit) to the recorder; called once at
/// start-up by `server` (through `metrics::install`).
pub(crate) fn describe_metrics() {
    metrics::describe_counter!(
        "ark_client_tls_handshakes_failed_total",
        "Client API connections closed in or before the TLS handshake (no certificate from the cluster CA, a timeout, not TLS)."
    );
}
