//! Who is on the other end of a client-plane call: the verified client certificate chain and
//! the TCP peer address, as the TLS acceptor hands them to a request.
//!
//! Owns the one place that knows how that information reaches a `tonic::Request`. Must not
//! decide anything about it (identities: `api::auth`; the node-certificate rule:
//! `api::client_cert`).

use std::net::SocketAddr;

use rustls::pki_types::CertificateDer;
use tonic::Request;

use crate::net::tls_accept::ClientConnInfo;

/// The client's certificate chain, leaf first, as verified by the TLS handshake; `None` on a
/// connection without client certificates (which the client plane refuses at handshake).
///
/// The client plane's acceptor (`net::tls_accept`) puts a [`ClientConnInfo`] into every
/// request; a test can insert one to make a request look as if it came from a client.
pub fn peer_chain<T>(req: &Request<T>) -> Option<Vec<CertificateDer<'static>>> {
    let info = req.extensions().get::<ClientConnInfo>()?;
    info.chain.as_ref().map(|c| c.to_vec())
}

/// The identity the client's certificate names, as the acceptor read it once for the
/// connection; `None` when it names none (or on a request that did not come through it).
pub fn peer_identity<T>(req: &Request<T>) -> Option<std::sync::Arc<str>> {
    req.extensions().get::<ClientConnInfo>()?.identity.clone()
}

/// The client's TCP address, where known.
pub fn peer_addr<T>(req: &Request<T>) -> Option<SocketAddr> {
    req.extensions().get::<ClientConnInfo>()?.addr
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn what_the_acceptor_recorded_is_what_a_request_tells() {
        let mut req = Request::new(());
        assert!(peer_chain(&req).is_none() && peer_addr(&req).is_none());
        let chain = vec![CertificateDer::from(vec![1u8, 2]), CertificateDer::from(vec![3u8])];
        let addr: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        req.extensions_mut().insert(ClientConnInfo {
            addr: Some(addr),
            chain: Some(Arc::new(chain.clone())),
            identity: Some(Arc::from("trainer")),
        });
        assert_eq!(
            peer_chain(&req),
            Some(chain),
            "leaf first, as the handshake verified it"
        );
        assert_eq!(peer_addr(&req), Some(addr));
        assert_eq!(peer_identity(&req).as_deref(), Some("trainer"));
    }
}
