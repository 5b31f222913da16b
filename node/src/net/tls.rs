//! Mutual TLS material for both planes: loading PEM files and building rustls configs.
//!
//! One cluster CA signs every node and client certificate. Servers (QUIC peer endpoint and
//! gRPC) require a client certificate signed by that CA; clients trust only that CA. Node
//! certificates carry the DNS names `ark-node` (what clients verify) and `node-<id>` (what
//! peers verify, so one node cannot answer for another's id).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;

/// DNS name every node certificate carries and clients verify.
pub const NODE_SERVER_NAME: &str = "ark-node";
/// ALPN protocol of the peer transport.
pub const PEER_ALPN: &[u8] = b"ark-peer/1";

/// The DNS name peers verify when dialling node `id`.
pub fn peer_server_name(id: u64) -> String {
    format!("node-{id}")
}

/// TLS material could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// Which file (CA, certificate, key).
        what: &'static str,
        /// Where.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A PEM file held nothing usable.
    #[error("{what} {path} contains no {expected}; create TLS material with `ark certs`")]
    Empty {
        /// Which file.
        what: &'static str,
        /// Where.
        path: String,
        /// What was expected in it.
        expected: &'static str,
    },
    /// rustls refused the material.
    #[error("TLS configuration rejected: {0}")]
    Rustls(String),
}

/// PEM material of one node or client.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    /// CA certificates trusted.
    pub ca: Vec<CertificateDer<'static>>,
    /// Own certificate chain.
    pub chain: Vec<CertificateDer<'static>>,
    /// Own private key.
    pub key: Arc<PrivateKeyDer<'static>>,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::Read {
            what,
            path: path.display().to_string(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.display().to_string(),
            expected: "PEM certificate",
        });
    }
    Ok(certs)
}

impl TlsMaterial {
    /// Loads CA, certificate and key PEM files.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let ca_certs = certs("CA certificate", ca)?;
        let chain = certs("certificate", cert)?;
        let key_pem = read("private key", key)?;
        let key_der = rustls_pemfile::private_key(&mut key_pem.as_slice())
            .map_err(|source| TlsError::Read {
                what: "private key",
                path: key.display().to_string(),
                source,
            })?
            .ok_or_else(|| TlsError::Empty {
                what: "private key",
                path: key.display().to_string(),
                expected: "PEM private key",
            })?;
        Ok(Self {
            ca: ca_certs,
            chain,
            key: Arc::new(key_der),
        })
    }

    fn roots(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        for c in &self.ca {
            roots
                .add(c.clone())
                .map_err(|e| TlsError::Rustls(format!("bad CA certificate: {e}")))?;
        }
        Ok(roots)
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// A server config that demands a client certificate signed by the cluster CA.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<rustls::ServerConfig, TlsError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), Self::provider())
            .build()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        Ok(cfg)
    }

    /// A client config that trusts only the cluster CA and presents this certificate.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<rustls::ClientConfig, TlsError> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        Ok(cfg)
    }
}
