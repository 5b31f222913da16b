//! One Ark node (`arkd`): consensus, storage, peer transport and the client API.
//!
//! Modules are layers whose imports only point down (checked by `tests/layering.rs`; the
//! picture is in docs/architecture.md), from the bottom: [`clock`], [`latency`], [`config`],
//! [`notify`]; [`net`] (QUIC endpoint, mutual TLS, framing, peer pool) and [`chunks`]
//! (content-defined chunking and the on-disk chunk store); [`cache`] (foyer cache of hot
//! remote chunks); [`raft`] (consensus and its front door: openraft types, log store, state
//! machine, snapshots, network glue, proposer, read fence, membership view, forwarding);
//! [`replicate`] (the data plane: chunk RPCs, the upload pipeline, placement, the repair
//! planner and queue, scrub); [`telemetry`] (per-node samples, the leader's windows, read
//! counts); [`risk`] (the leader's failure and load forecasts, pre-staging); [`metrics`]
//! (Prometheus); [`api`] (tonic services); [`server`] (start-up and ordered shutdown).

pub mod api;
pub mod audit;
pub mod cache;
pub mod chunks;
pub mod clock;
pub mod config;
#[cfg(test)]
mod damage_props;
pub mod latency;
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
