//! `ark certs`: the cluster CA and node and client certificates, issued by
//! `ark_playground::certs`. No network.

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
    },
    /// Issue node-<ID>.pem/.key signed by the CA in --ca-dir.
    Node {
        /// Node id.
        id: u64,
        /// Folder with ca.pem and ca.key.
        #[arg(long)]
        ca_dir: PathBuf,
        /// Output folder (default: the CA folder).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Extra DNS names or IP addresses for the certificate (repeatable).
        #[arg(long = "name")]
        names: Vec<String>,
    },
    /// Issue NAME.pem/.key for a client.
    Client {
        /// Client name.
        name: String,
        /// Folder with ca.pem and ca.key.
        #[arg(long)]
        ca_dir: PathBuf,
        /// Output folder (default: the CA folder).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Runs one certificate command.
pub fn run(c: &CertsCmd) -> anyhow::Result<ExitCode> {
    match c {
        CertsCmd::Ca { dir } => {
            let p = certs::create_ca(dir)?;
            outln!("created {} and {}", p.display(), dir.join("ca.key").display());
        }
        CertsCmd::Node { id, ca_dir, out, names } => {
            let (c, k) = certs::create_node(ca_dir, out.as_ref().unwrap_or(ca_dir), *id, names)?;
            outln!("created {} and {}", c.display(), k.display());
        }
        CertsCmd::Client { name, ca_dir, out } => {
            let (c, k) = certs::create_client(ca_dir, out.as_ref().unwrap_or(ca_dir), name)?;
            outln!("created {} and {}", c.display(), k.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
