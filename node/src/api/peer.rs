//! Who is on the other end of a client-plane call: the verified client certificate chain and
//! the TCP peer address, as the TLS acceptor hands them to a request.
//!
//! Owns the one place that knows how that information reaches a `tonic::Request`. Must not
//! decide anything about it (identities: `api::auth`; the node-certificate rule:
//! `api::client_cert`).

use std::net::SocketAddr;

use rustls::pki_types::CertificateDer;
use tonic::Request;

/// The client's certificate chain, leaf first, as verified by the TLS handshake; `None` on a
/// connection without client certificates (which the client plane refuses at handshake).
pub fn peer_chain<T>(req: &Request<T>) -> Option<Vec<CertificateDer<'static>>> {
    req.peer_certs()
        .map(|chain| chain.iter().map(|c| c.clone().into_owned()).collect())
}

/// The client's TCP address, where known.
pub fn peer_addr<T>(req: &Request<T>) -> Option<SocketAddr> {
    req.remote_addr()
}
