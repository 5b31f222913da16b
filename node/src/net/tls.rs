//! Mutual TLS material for both planes: loading PEM files and building rustls configs.
//!
//! One cluster CA signs every node and client certificate. Servers (QUIC peer endpoint and
//! gRPC) require a client certificate signed by that CA; clients trust only that CA. Node
//! certificates carry the DNS names `ark-node` (what clients verify) and `node-<id>` (what
//! peers verify, so one node cannot answer for another's id), and the server-auth key usage.
//!
//! A node certificate is one that would pass as a TLS server certificate for `ark-node`:
//! signed by the CA, with the server-auth extended key usage and that name. Client
//! certificates (`ark certs client`) have neither, so the peer plane refuses them in the
//! handshake ([`TlsMaterial::server_config`]), and [`NodeIdentity`] binds a peer connection
//! to the one node id whose `node-<id>` name its certificate carries.
//!
//! Also builds the client plane's server config ([`TlsMaterial::client_plane_config`]: any
//! client chain to the CA, intermediates included) and checks that material is usable by
//! one node before it is put in force ([`TlsMaterial::check_node`], used at start-up and by
//! `net::reload`). Must not decide when material is loaded or swapped.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

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
    /// The material is well-formed but not usable by this node (wrong key, wrong node,
    /// another CA, expired).
    #[error("TLS material not usable: {0}")]
    Invalid(String),
}

/// What a node's certificates say about themselves, for metrics and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The node certificate's notAfter, seconds since the Unix epoch.
    pub node_not_after: i64,
    /// The earliest notAfter among the CA certificates trusted (`ca` and `client_ca`).
    pub ca_not_after: i64,
    /// The node certificate's serial number, in hex.
    pub serial: String,
}

/// A certificate's notAfter (Unix seconds) and serial number (hex).
pub fn not_after_and_serial(cert: &CertificateDer<'_>) -> Result<(i64, String), TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| TlsError::Invalid(format!("unreadable certificate: {e}")))?;
    Ok((parsed.validity().not_after.timestamp(), parsed.raw_serial_as_string()))
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
    /// More CA certificates trusted on the client plane only (`tls.client_ca`), never for
    /// node certificates.
    pub client_ca: Vec<CertificateDer<'static>>,
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// A file's PEM that does not parse, as the error `load` reports.
fn bad_pem(what: &'static str, path: &Path, e: rustls::pki_types::pem::Error) -> TlsError {
    TlsError::Read {
        what,
        path: path.display().to_string(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
    }
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| bad_pem(what, path, e))?;
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
        let key_der = match PrivateKeyDer::from_pem_slice(&key_pem) {
            Ok(k) => k,
            Err(rustls::pki_types::pem::Error::NoItemsFound) => {
                return Err(TlsError::Empty {
                    what: "private key",
                    path: key.display().to_string(),
                    expected: "PEM private key",
                })
            }
            Err(e) => return Err(bad_pem("private key", key, e)),
        };
        Ok(Self {
            ca: ca_certs,
            chain,
            key: Arc::new(key_der),
            client_ca: Vec::new(),
        })
    }

    /// Adds the CA certificates in `path` as trusted for client certificates only.
    pub fn with_client_ca(mut self, path: &Path) -> Result<Self, TlsError> {
        self.client_ca = certs("client CA certificate", path)?;
        Ok(self)
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

    /// The check of node certificates against this cluster's CA.
    pub fn node_identity(&self) -> Result<NodeIdentity, TlsError> {
        let server = WebPkiServerVerifier::builder_with_provider(Arc::new(self.roots()?), Self::provider())
            .build()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        Ok(NodeIdentity { server })
    }

    /// The peer plane's server config: it demands a client certificate signed by the
    /// cluster CA that is a node certificate (a client certificate is refused in the
    /// handshake).
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<rustls::ServerConfig, TlsError> {
        let client = WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), Self::provider())
            .build()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        let verifier = Arc::new(NodesOnly {
            client,
            nodes: self.node_identity()?,
        });
        let mut cfg = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        Ok(cfg)
    }

    /// The client plane's server config (gRPC over TLS 1.2 or 1.3, ALPN `h2`): it demands a
    /// client certificate that chains to a CA of `ca` or `client_ca`, through the
    /// intermediates the client sends after its own certificate. Which callers it admits beyond that is the API's
    /// business (`api::client_cert`).
    pub fn client_plane_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let mut roots = self.roots()?;
        for c in &self.client_ca {
            roots
                .add(c.clone())
                .map_err(|e| TlsError::Rustls(format!("bad client CA certificate: {e}")))?;
        }
        let client = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Self::provider())
            .build()
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_client_cert_verifier(client)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(cfg)
    }

    /// Checks that this is usable material for node `id`: the key is the certificate's, and
    /// the certificate is node `id`'s, signed by (a CA of) `ca` and valid now. Answers what
    /// the certificates say about their lifetimes.
    pub fn check_node(&self, id: u64) -> Result<CertInfo, TlsError> {
        let key = Self::provider()
            .key_provider
            .load_private_key(self.key.clone_key())
            .map_err(|e| TlsError::Invalid(format!("unusable private key: {e}")))?;
        rustls::sign::CertifiedKey::new(self.chain.clone(), key)
            .keys_match()
            .map_err(|e| TlsError::Invalid(format!("the private key does not belong to the certificate: {e}")))?;
        self.node_identity()?
            .check_node(&self.chain, id)
            .map_err(TlsError::Invalid)?;
        let leaf = self
            .chain
            .first()
            .ok_or_else(|| TlsError::Invalid("no certificate".into()))?;
        let (node_not_after, serial) = not_after_and_serial(leaf)?;
        let mut ca_not_after = i64::MAX;
        for c in self.ca.iter().chain(&self.client_ca) {
            ca_not_after = ca_not_after.min(not_after_and_serial(c)?.0);
        }
        Ok(CertInfo {
            node_not_after,
            ca_not_after,
            serial,
        })
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

/// Tells node certificates of this cluster from others, and which node one names.
#[derive(Clone)]
pub struct NodeIdentity {
    server: Arc<WebPkiServerVerifier>,
}

impl std::fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeIdentity")
    }
}

impl NodeIdentity {
    /// Checks that `chain` (end entity first) is a node certificate of this cluster valid
    /// for `name` (`ark-node` for any node, `node-<id>` for one).
    fn check(&self, chain: &[CertificateDer<'_>], name: &str) -> Result<(), rustls::Error> {
        let (end_entity, intermediates) = chain.split_first().ok_or(rustls::Error::NoCertificatesPresented)?;
        let name = ServerName::try_from(name.to_string())
            .map_err(|e| rustls::Error::General(format!("bad node name {name}: {e}")))?;
        self.server
            .verify_server_cert(end_entity, intermediates, &name, &[], UnixTime::now())
            .map(drop)
    }

    /// Whether `chain` is a node certificate of this cluster (any node).
    pub fn is_node(&self, chain: &[CertificateDer<'_>]) -> bool {
        self.check(chain, NODE_SERVER_NAME).is_ok()
    }

    /// Checks that `chain` is the certificate of node `id`.
    pub fn check_node(&self, chain: &[CertificateDer<'_>], id: u64) -> Result<(), String> {
        self.check(chain, &peer_server_name(id))
            .map_err(|e| format!("the certificate is not node {id}'s: {e}"))
    }
}

/// The peer plane's client-certificate check: signed by the cluster CA (as for any client)
/// and a node certificate.
#[derive(Debug)]
struct NodesOnly {
    client: Arc<dyn ClientCertVerifier>,
    nodes: NodeIdentity,
}

impl ClientCertVerifier for NodesOnly {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.client.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self.client.verify_client_cert(end_entity, intermediates, now)?;
        let mut chain = vec![end_entity.clone()];
        chain.extend(intermediates.iter().cloned());
        self.nodes.check(&chain, NODE_SERVER_NAME).map_err(|e| {
            rustls::Error::General(format!(
                "the peer plane accepts only node certificates (server-auth usage and the name \
                 {NODE_SERVER_NAME}): {e}"
            ))
        })?;
        Ok(ok)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.client.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.client.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.client.supported_verify_schemes()
    }
}

/// The prefix earlier releases of `ark certs client NAME` put before the name in the CN.
const LEGACY_CN_PREFIX: &str = "ark client ";

/// The client identity a DER certificate names, if it names one: its subject's common name
/// (`ark client NAME` from earlier releases means `NAME`), or when it has none its first
/// DNS, URI or e-mail subject alternative name. `api::auth` decides what the name may do.
pub fn identity_of_cert(der: &[u8]) -> Option<String> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty());
    if let Some(cn) = cn {
        return Some(cn.strip_prefix(LEGACY_CN_PREFIX).unwrap_or(cn).to_string());
    }
    let san = cert.subject_alternative_name().ok().flatten()?;
    san.value.general_names.iter().find_map(|n| match n {
        GeneralName::DNSName(s) | GeneralName::URI(s) | GeneralName::RFC822Name(s) if !s.is_empty() => {
            Some((*s).to_string())
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use ark_playground::certs;

    use super::*;

    /// A TLS handshake in memory: `Ok` when both sides complete it.
    fn handshake(server: rustls::ServerConfig, client: rustls::ClientConfig, name: &str) -> Result<(), rustls::Error> {
        let name = ServerName::try_from(name.to_string()).map_err(|e| rustls::Error::General(e.to_string()))?;
        let mut c = rustls::ClientConnection::new(Arc::new(client), name)?;
        let mut s = rustls::ServerConnection::new(Arc::new(server))?;
        for _ in 0..16 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                s.read_tls(&mut &buf[..]).unwrap();
                s.process_new_packets()?;
            }
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            if !buf.is_empty() {
                c.read_tls(&mut &buf[..]).unwrap();
                c.process_new_packets()?;
            }
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(());
            }
        }
        Err(rustls::Error::General("the handshake made no progress".into()))
    }

    fn load(ca: &Path, dir: &Path, name: &str) -> TlsMaterial {
        TlsMaterial::load(ca, &dir.join(format!("{name}.pem")), &dir.join(format!("{name}.key"))).unwrap()
    }

    #[test]
    fn a_client_ca_is_trusted_for_clients_and_never_for_peers() {
        let cluster = tempfile::tempdir().unwrap();
        let ext = tempfile::tempdir().unwrap();
        let ca = cluster.path().join("ca.pem");
        certs::create_ca(cluster.path()).unwrap();
        certs::create_node(cluster.path(), cluster.path(), 1, &[]).unwrap();
        certs::create_node(cluster.path(), cluster.path(), 2, &[]).unwrap();
        certs::create_ca(ext.path()).unwrap();
        certs::create_client(ext.path(), ext.path(), "partner").unwrap();
        certs::create_node(ext.path(), ext.path(), 2, &[]).unwrap();

        let plain = load(&ca, cluster.path(), "node-1");
        let with_ext = load(&ca, cluster.path(), "node-1")
            .with_client_ca(&ext.path().join("ca.pem"))
            .unwrap();
        let partner = load(&ca, ext.path(), "partner").client_config(&[b"h2"]).unwrap();

        assert!(handshake(plain.client_plane_config().unwrap(), partner.clone(), NODE_SERVER_NAME).is_err());
        handshake(with_ext.client_plane_config().unwrap(), partner, NODE_SERVER_NAME).unwrap();

        // The peer plane: node 2 of the cluster is admitted, a "node 2" from the client CA not.
        let peer = |m: &TlsMaterial| m.client_config(&[PEER_ALPN]).unwrap();
        let server = || with_ext.server_config(&[PEER_ALPN]).unwrap();
        handshake(server(), peer(&load(&ca, cluster.path(), "node-2")), "node-1").unwrap();
        assert!(handshake(server(), peer(&load(&ca, ext.path(), "node-2")), "node-1").is_err());
        assert!(!with_ext
            .node_identity()
            .unwrap()
            .is_node(&load(&ca, ext.path(), "node-2").chain));
    }
}
