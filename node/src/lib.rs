//! One Ark node (`arkd`): consensus, storage, peer transport and the client API.
//!
//! Modules, each owning one concern: [`config`] (TOML), [`server`] (start-up and ordered
//! shutdown), [`raft`] (openraft types, log store, state machine, snapshots, network glue),
//! [`net`] (QUIC endpoint, mutual TLS, framing, peer pool), [`chunks`] (content-defined
//! chunking and the on-disk chunk store), [`replicate`] (chunk transfer, placement, the
//! repair queue, scrub), [`cache`] (foyer cache of hot remote chunks), [`telemetry`] (per-node samples and the
//! leader's windows of them), [`risk`] (the leader's node failure forecasts and the repair
//! queue's head), [`api`] (tonic services), [`metrics`] (Prometheus) and [`notify`] (systemd
//! readiness).

pub mod api;
pub mod cache;
pub mod chunks;
pub mod clock;
pub mod config;
pub mod latency;
#[cfg(test)]
mod damage_props;
pub mod metrics;
pub mod net;
pub mod notify;
pub mod raft;
pub mod replicate;
pub mod risk;
pub mod server;
pub mod telemetry;

pub use config::NodeConfig;
pub use server::run;
