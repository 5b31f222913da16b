//! Certificate reload without a restart: on SIGHUP, and when the CA, certificate or key file
//! changes (polled every [`WATCH_INTERVAL`]), the node reads its TLS files again, checks
//! them, and puts them in force on both planes for every new connection; open connections
//! keep theirs. Material that fails a check (bad PEM, a key that is not the certificate's,
//! a certificate that is not this node's, not signed by the CA or not valid now) changes
//! nothing: the node keeps what it had, logs an error and counts it.
//!
//! Owns the triggers, the all-or-nothing swap and the TLS metrics. Must not touch what
//! the certificates are checked against beyond `net::tls`, nor open or close connections.

use std::path::PathBuf;
use std::time::Duration;

use tokio::signal::unix::Signal;
use tokio::sync::watch;

use super::live::Live;
use super::tls::{CertInfo, TlsMaterial};
use super::PeerEndpoint;

/// How often the files are looked at. A change is applied once the files have stayed the
/// same for one more interval, so that a cert and a key written one after the other are
/// read together.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Device, inode, size, mtime (s, ns), ctime (s, ns) of one file.
type FileStamp = (u64, u64, u64, i64, i64, i64, i64);

/// Where a node's TLS material lives (`[tls]` of `arkd.toml`).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// CA bundle (PEM, one or more certificates).
    pub ca: PathBuf,
    /// Node certificate chain (PEM, leaf first).
    pub cert: PathBuf,
    /// Node private key (PEM).
    pub key: PathBuf,
    /// CAs trusted for client certificates only (PEM), if any.
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Reads the files and checks them for node `id`.
    pub fn load(&self, id: u64) -> Result<(TlsMaterial, CertInfo), super::tls::TlsError> {
        let mut m = TlsMaterial::load(&self.ca, &self.cert, &self.key)?;
        if let Some(p) = &self.client_ca {
            m = m.with_client_ca(p)?;
        }
        let info = m.check_node(id)?;
        Ok((m, info))
    }

    /// What identifies the files' current contents without reading them: device, inode,
    /// size, modification and change times of each (a rename over the file, an in-place
    /// write, a symlink switched to another target all change it); `None` for a file
    /// that cannot be looked at.
    fn fingerprint(&self) -> Vec<Option<FileStamp>> {
        use std::os::unix::fs::MetadataExt;
        [
            Some(&self.ca),
            Some(&self.cert),
            Some(&self.key),
            self.client_ca.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(|p| {
            std::fs::metadata(p).ok().map(|m| {
                (
                    m.dev(),
                    m.ino(),
                    m.len(),
                    m.mtime(),
                    m.mtime_nsec(),
                    m.ctime(),
                    m.ctime_nsec(),
                )
            })
        })
        .collect()
    }
}

/// Records what the certificates in force say about their expiry.
pub fn record(info: &CertInfo) {
    metrics::gauge!("ark_tls_certificate_expiry_timestamp_seconds", "cert" => "node").set(info.node_not_after as f64);
    metrics::gauge!("ark_tls_certificate_expiry_timestamp_seconds", "cert" => "ca").set(info.ca_not_after as f64);
    let left_days = (info.node_not_after - unix_now()) / 86_400;
    if left_days < 30 {
        tracing::warn!(
            serial = %info.serial,
            left_days,
            "the node certificate expires within 30 days: issue a new one and reload (see docs/security.md)"
        );
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Reloads the node's TLS material into the peer endpoint and the client plane.
pub struct Reloader {
    node_id: u64,
    files: TlsFiles,
    peer: PeerEndpoint,
    client_plane: Live<rustls::ServerConfig>,
}

impl Reloader {
    /// A reloader for node `node_id`'s `files`, swapping the configs of `peer` and
    /// `client_plane`.
    pub fn new(node_id: u64, files: TlsFiles, peer: PeerEndpoint, client_plane: Live<rustls::ServerConfig>) -> Self {
        // Both results exist from the start, so that a rate over them is defined.
        metrics::counter!("ark_tls_reloads_total", "result" => "ok").increment(0);
        metrics::counter!("ark_tls_reloads_total", "result" => "error").increment(0);
        Self {
            node_id,
            files,
            peer,
            client_plane,
        }
    }

    /// Reads, checks and puts in force the material in the files, or changes nothing.
    pub fn reload(&self) -> anyhow::Result<CertInfo> {
        let (m, info) = self.files.load(self.node_id)?;
        // Everything that can fail before anything is swapped: both planes change or neither.
        let peer = self.peer.prepare_tls(&m)?;
        let client_plane = m.client_plane_config()?;
        self.peer.install_tls(peer);
        self.client_plane.set(client_plane);
        Ok(info)
    }

    fn reload_logged(&self, why: &str) {
        match self.reload() {
            Ok(info) => {
                metrics::counter!("ark_tls_reloads_total", "result" => "ok").increment(1);
                record(&info);
                tracing::info!(
                    trigger = why,
                    serial = %info.serial,
                    not_after = info.node_not_after,
                    "TLS material reloaded: new connections on both planes use it"
                );
            }
            Err(e) => {
                metrics::counter!("ark_tls_reloads_total", "result" => "error").increment(1);
                tracing::error!(
                    trigger = why,
                    error = %format!("{e:#}"),
                    "TLS reload failed; keeping the certificates in use"
                );
            }
        }
    }

    /// Reloads on every SIGHUP (`hup`, registered at start-up so that the signal never
    /// kills the node) and on file changes, until `stop` turns true.
    pub async fn run(self, mut hup: Option<Signal>, mut stop: watch::Receiver<bool>) {
        let mut loaded = self.files.fingerprint();
        let mut seen = loaded.clone();
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                Some(()) = async {
                    match hup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    let now = self.files.fingerprint();
                    self.reload_logged("SIGHUP");
                    loaded = now.clone();
                    seen = now;
                }
                _ = tick.tick() => {
                    let now = self.files.fingerprint();
                    // Changed since the last load and settled since the last look; a failed
                    // attempt is not retried until the files change again (or a SIGHUP).
                    if now != loaded && now == seen {
                        self.reload_logged("files changed");
                        loaded = now.clone();
                    }
                    seen = now;
                }
            }
        }
    }
}

/// Describes this module's metrics (HELP text and unit) to the recorder; called once at
/// start-up by `server` (through `metrics::install`).
pub(crate) fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, Unit};
    describe_gauge!(
        "ark_tls_certificate_expiry_timestamp_seconds",
        Unit::Seconds,
        "When the certificate in force expires (notAfter, Unix time), by cert: node (this node's), ca (the earliest of tls.ca and tls.client_ca)."
    );
    describe_counter!(
        "ark_tls_reloads_total",
        "TLS material reloads (SIGHUP or changed files), by result: ok (in force for new connections), error (refused; the previous material stays)."
    );
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use ark_playground::certs;

    use super::*;

    fn files(dir: &Path, node: &str) -> TlsFiles {
        TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{node}.pem")),
            key: dir.join(format!("{node}.key")),
            client_ca: None,
        }
    }

    #[test]
    fn only_this_nodes_own_material_from_the_ca_passes() {
        let d = tempfile::tempdir().unwrap();
        certs::create_ca(d.path()).unwrap();
        certs::create_node(d.path(), d.path(), 1, &[]).unwrap();
        certs::create_node(d.path(), d.path(), 2, &[]).unwrap();
        let (_, info) = files(d.path(), "node-1").load(1).unwrap();
        let now = unix_now();
        assert!((info.node_not_after - (now + 365 * 86_400)).abs() < 7200, "{info:?}");
        assert!((info.ca_not_after - (now + 3650 * 86_400)).abs() < 7200, "{info:?}");

        let err = files(d.path(), "node-2").load(1).unwrap_err().to_string();
        assert!(err.contains("not node 1's"), "{err}");

        let mismatched = TlsFiles {
            key: d.path().join("node-2.key"),
            ..files(d.path(), "node-1")
        };
        let err = mismatched.load(1).unwrap_err().to_string();
        assert!(err.contains("does not belong"), "{err}");

        let rogue = tempfile::tempdir().unwrap();
        certs::create_ca(rogue.path()).unwrap();
        certs::create_node(rogue.path(), rogue.path(), 1, &[]).unwrap();
        let foreign = TlsFiles {
            ca: d.path().join("ca.pem"),
            ..files(rogue.path(), "node-1")
        };
        assert!(foreign.load(1).is_err(), "a certificate from another CA");

        std::fs::write(d.path().join("junk.pem"), "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
        let junk = TlsFiles {
            cert: d.path().join("junk.pem"),
            ..files(d.path(), "node-1")
        };
        assert!(junk.load(1).is_err());
    }

    #[tokio::test]
    async fn a_refused_reload_changes_nothing_and_a_good_one_swaps_both_planes() {
        let d = tempfile::tempdir().unwrap();
        certs::create_ca(d.path()).unwrap();
        certs::create_node(d.path(), d.path(), 1, &[]).unwrap();
        certs::create_node(d.path(), d.path(), 2, &[]).unwrap();
        let f = files(d.path(), "node-1");
        let (m, _) = f.load(1).unwrap();
        let peer = PeerEndpoint::bind("127.0.0.1:0".parse().unwrap(), &m).unwrap();
        let client_plane = Live::new(m.client_plane_config().unwrap());
        let reloader = Reloader::new(1, f.clone(), peer.clone(), client_plane.clone());
        let (cp_before, id_before) = (client_plane.get(), peer.node_identity().get());

        std::fs::copy(d.path().join("node-2.pem"), &f.cert).unwrap();
        assert!(reloader.reload().is_err());
        assert!(Arc::ptr_eq(&cp_before, &client_plane.get()), "client plane untouched");
        assert!(
            Arc::ptr_eq(&id_before, &peer.node_identity().get()),
            "peer plane untouched"
        );

        certs::create_node_days(d.path(), d.path(), 1, &[], 10).unwrap();
        let info = reloader.reload().unwrap();
        assert!((info.node_not_after - (unix_now() + 10 * 86_400)).abs() < 7200);
        assert!(!Arc::ptr_eq(&cp_before, &client_plane.get()));
        assert!(!Arc::ptr_eq(&id_before, &peer.node_identity().get()));
        peer.close();
    }

    #[test]
    fn fingerprint_changes_with_a_rename_over_and_an_in_place_write() {
        let d = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            ca: d.path().join("ca.pem"),
            cert: d.path().join("c.pem"),
            key: d.path().join("c.key"),
            client_ca: None,
        };
        for p in [&files.ca, &files.cert, &files.key] {
            std::fs::write(p, "a").unwrap();
        }
        let first = files.fingerprint();
        assert!(first.iter().all(Option::is_some));
        assert_eq!(first, files.fingerprint());
        let tmp = d.path().join("new");
        std::fs::write(&tmp, "a").unwrap();
        std::fs::rename(&tmp, &files.cert).unwrap();
        let renamed = files.fingerprint();
        assert_ne!(first, renamed);
        std::fs::write(&files.key, "bb").unwrap();
        assert_ne!(renamed, files.fingerprint());
        std::fs::remove_file(&files.ca).unwrap();
        assert!(files.fingerprint()[0].is_none());
    }
}
