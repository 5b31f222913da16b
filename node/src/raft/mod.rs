//! Consensus: openraft's type configuration, the redb-backed log store and state machine,
//! snapshots, and the glue from openraft's network trait to the QUIC peer transport.
//!
//! Owns everything that is replicated through the Raft log. It must not know about gRPC or
//! the client API: `api` talks to it through [`ArkRaft`] and [`store::Store`]'s read methods.

pub mod auth;
pub mod backup;
pub mod codec;
pub mod db;
pub mod elector;
pub mod error;
pub mod fence;
pub mod force_new;
pub mod front;
pub mod handover;
pub mod log_clock;
pub mod members;
pub mod network;
pub mod objects;
pub mod proposer;
pub mod recovery;
pub mod roles;
pub mod state_machine;
pub mod store;
pub mod types;
mod wal;
pub mod witness;

#[cfg(test)]
mod codec_props;
#[cfg(test)]
mod snapshot_props;
#[cfg(test)]
mod wal_props;

pub use types::{
    revision, ArkNode, ArkRaft, Command, NodeId, Op, OpResult, Request, Response, TypeConfig, OPS_PER_ENTRY_MAX,
};
