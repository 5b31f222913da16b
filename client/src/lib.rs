//! Ark's Rust SDK and the code behind the `ark` CLI.
//!
//! - [`client::ArkClient`]: leader discovery and redirect, retries that reuse the request
//!   id, deadlines, typed [`error::ClientError`]s.
//! - [`objects`]: namespaces and streamed, SHA-256-checked object puts and gets on the same
//!   client; [`restore`]: a whole namespace (latest, a version, or a point in time) back
//!   into a folder.
//! - [`config`]: the `client.toml` file.
//! - [`certs`]: the cluster CA and certificates (`ark certs`).
//! - [`playground`] and [`demo`]: a local multi-site cluster of real `arkd` processes and the
//!   guided failover tour.
//! - [`bench`]: the KV load generator (`ark bench kv`); [`risk_bench`]: the risk-aware
//!   replication experiment (`ark bench risk`).
//! - [`units`]: durations, times and sizes as the CLI reads and prints them.
//! - [`cli`]: argument parsing and command dispatch for the `ark` binary; [`drill`]: `ark
//!   drill`, handed over to the `ark-chaos` binary.

#[macro_use]
mod macros;

pub mod bench;
pub mod certs;
pub mod cli;
pub mod client;
pub mod config;
pub mod demo;
pub mod drill;
pub mod error;
pub mod objects;
mod objects_cli;
pub mod playground;
pub mod restore;
pub mod risk_bench;
pub mod units;

pub use client::ArkClient;
pub use config::ClientConfig;
pub use error::ClientError;
