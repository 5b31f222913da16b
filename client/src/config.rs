//! The client's TOML config (`client.toml`): endpoints and TLS material.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::ClientError;

/// What the SDK and CLI need to reach a cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// gRPC addresses (`host:port`) of some or all nodes; the client finds the leader.
    pub endpoints: Vec<String>,
    /// Cluster CA certificate (PEM).
    pub ca: PathBuf,
    /// Client certificate signed by the cluster CA (PEM).
    pub cert: PathBuf,
    /// Client private key (PEM).
    pub key: PathBuf,
    /// Deadline of one logical operation, retries included.
    #[serde(default = "default_op_timeout_ms")]
    pub op_timeout_ms: u64,
    /// Deadline of one RPC attempt.
    #[serde(default = "default_rpc_timeout_ms")]
    pub rpc_timeout_ms: u64,
}

fn default_op_timeout_ms() -> u64 {
    30_000
}

fn default_rpc_timeout_ms() -> u64 {
    2_000
}

impl ClientConfig {
    /// Reads a config file; relative paths are resolved against its folder.
    pub fn load(path: &Path) -> Result<Self, ClientError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ClientError::Config(format!("cannot read {}: {e}", path.display())))?;
        let mut cfg: ClientConfig =
            toml::from_str(&text).map_err(|e| ClientError::Config(format!("{} is invalid: {e}", path.display())))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut cfg.ca, &mut cfg.cert, &mut cfg.key] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if cfg.endpoints.is_empty() {
            return Err(ClientError::Config(format!(
                "{}: endpoints must not be empty",
                path.display()
            )));
        }
        Ok(cfg)
    }
}
