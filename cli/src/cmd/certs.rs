//! `ark certs`: the cluster CA, node and client certificates, an intermediate CA, CSRs for
//! an external CA, signing a CSR, and the expiry check, all by `ark_playground::certs`.
//! No network.

use std::path::PathBuf;
use std::process::ExitCode;

use ark_playground::certs;
use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum CertsCmd {
    /// Create a cluster CA (ca.pem, ca.key) in DIR.
    Ca {
        /// Output folder.
        #[arg(long)]
        dir: PathBuf,
        /// Days the CA stays valid.
        #[arg(long, default_value_t = certs::CA_DAYS)]
        days: u32,
    },
    /// Issue node-<ID>.pem/.key signed by the CA in --ca-dir.
    Node {
        /// Node id.
        id: u64,
        /// Folder with ca.pem and ca.key (the cluster CA or an intermediate).
        #[arg(long)]
        ca_dir: PathBuf,
        /// Output folder (default: the CA folder).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Extra DNS names or IP addresses for the certificate (repeatable).
        #[arg(long = "name")]
        names: Vec<String>,
        /// Days the certificate stays valid (nodes reload a new one on SIGHUP).
        #[arg(long, default_value_t = certs::NODE_DAYS)]
        days: u32,
    },
    /// Issue NAME.pem/.key for a client (common name NAME).
    Client {
        /// Client name.
        name: String,
        /// Folder with ca.pem and ca.key (the cluster CA or an intermediate).
        #[arg(long)]
        ca_dir: PathBuf,
        /// Output folder (default: the CA folder).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Days the certificate stays valid.
        #[arg(long, default_value_t = certs::CLIENT_DAYS)]
        days: u32,
    },
    /// Create an intermediate CA (OUT/ca.pem, OUT/ca.key) signed by the CA in --ca-dir.
    ///
    /// OUT then works as --ca-dir, and what it issues carries the intermediate. Nodes and
    /// clients keep trusting the root's ca.pem.
    Intermediate {
        /// Folder with the issuing ca.pem and ca.key.
        #[arg(long)]
        ca_dir: PathBuf,
        /// Folder for the intermediate.
        #[arg(long)]
        out: PathBuf,
        /// Days the intermediate stays valid.
        #[arg(long, default_value_t = certs::INTERMEDIATE_DAYS)]
        days: u32,
    },
    /// Create a private key NAME.key and a signing request NAME.csr for a client.
    ///
    /// The request's common name is NAME; send it to an external CA or `ark certs sign`.
    Csr {
        /// Client name.
        name: String,
        /// Output folder.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Sign a client CSR with the CA in --ca-dir, writing NAME.pem.
    ///
    /// NAME is the request's common name; only its key and name are used: the result is a
    /// client certificate whatever the request asks for.
    Sign {
        /// The signing request (PEM).
        csr: PathBuf,
        /// Folder with ca.pem and ca.key (the cluster CA or an intermediate).
        #[arg(long)]
        ca_dir: PathBuf,
        /// Output folder (default: the request's folder).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Days the certificate stays valid.
        #[arg(long, default_value_t = certs::CLIENT_DAYS)]
        days: u32,
    },
    /// Print each certificate's subject and expiry; exit 1 if one expires within
    /// --warn-days (or has expired).
    Check {
        /// PEM files or folders (their *.pem files).
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Warn about certificates expiring within this many days.
        #[arg(long, default_value_t = 30)]
        warn_days: i64,
    },
}

/// Runs one certificate command.
pub fn run(c: &CertsCmd) -> anyhow::Result<ExitCode> {
    match c {
        CertsCmd::Ca { dir, days } => {
            let p = certs::create_ca_days(dir, *days)?;
            outln!("created {} and {}", p.display(), dir.join("ca.key").display());
        }
        CertsCmd::Node {
            id,
            ca_dir,
            out,
            names,
            days,
        } => {
            let (c, k) = certs::create_node_days(ca_dir, out.as_ref().unwrap_or(ca_dir), *id, names, *days)?;
            outln!("created {} and {}", c.display(), k.display());
        }
        CertsCmd::Client {
            name,
            ca_dir,
            out,
            days,
        } => {
            let (c, k) = certs::create_client_days(ca_dir, out.as_ref().unwrap_or(ca_dir), name, *days)?;
            outln!("created {} and {}", c.display(), k.display());
        }
        CertsCmd::Intermediate { ca_dir, out, days } => {
            let p = certs::create_intermediate(ca_dir, out, *days)?;
            outln!("created {} and {}", p.display(), out.join("ca.key").display());
        }
        CertsCmd::Csr { name, out } => {
            let (csr, key) = certs::create_csr(out, name)?;
            outln!(
                "created {} and {} (keep the key; send the request)",
                csr.display(),
                key.display()
            );
        }
        CertsCmd::Sign { csr, ca_dir, out, days } => {
            let dir = match out {
                Some(o) => o.clone(),
                None => csr
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .map(PathBuf::from)
                    .unwrap_or_else(|| PathBuf::from(".")),
            };
            let (cert, name) = certs::sign_csr(ca_dir, csr, &dir, *days)?;
            outln!("created {} for client {name}", cert.display());
        }
        CertsCmd::Check { paths, warn_days } => return check(paths, *warn_days),
    }
    Ok(ExitCode::SUCCESS)
}

fn check(paths: &[PathBuf], warn_days: i64) -> anyhow::Result<ExitCode> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let found = certs::check(paths, now)?;
    if found.is_empty() {
        anyhow::bail!("no certificates found in {}", join(paths));
    }
    let mut soon = 0;
    for c in &found {
        let mark = if c.expires_within(0) {
            soon += 1;
            "  EXPIRED"
        } else if c.expires_within(warn_days) {
            soon += 1;
            "  EXPIRES SOON"
        } else {
            ""
        };
        outln!(
            "{}[{}]  {}  not after {} ({} days){mark}",
            c.file.display(),
            c.index,
            c.subject,
            c.not_after_text,
            c.days_left()
        );
    }
    if soon > 0 {
        eprintln!("warning: {soon} certificate(s) expired or expiring within {warn_days} days: issue new ones and reload the nodes (docs/security.md)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn join(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
