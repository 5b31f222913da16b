//! Ark's Rust SDK and the code behind the `ark` CLI.
//!
//! - [`client::ArkClient`]: leader discovery and redirect, retries that reuse the request
//!   id, deadlines, typed [`error::ClientError`]s.
//! - [`config`]: the `client.toml` file.
//! - [`certs`]: the cluster CA and certificates (`ark certs`).
//! - [`playground`] and [`demo`]: a local multi-site cluster of real `arkd` processes and the
//!   guided failover tour.
//! - [`bench`]: the KV load generator (`ark bench kv`).
//! - [`cli`]: argument parsing and command dispatch for the `ark` binary.

pub mod bench;
pub mod certs;
pub mod cli;
pub mod client;
pub mod config;
pub mod demo;
pub mod error;
pub mod playground;

pub use client::ArkClient;
pub use config::ClientConfig;
pub use error::ClientError;
