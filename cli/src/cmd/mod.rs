//! One file per command group of `ark` (as mini-redis keeps one file per command): each
//! holds its clap definition and a `run` that calls the SDK or the playground crate and
//! prints. Must not hold retry, transfer or process logic (the SDK and `ark-playground`
//! own those).

pub mod auth;
pub mod bench;
pub mod certs;
pub mod demo;
pub mod drill;
pub mod kv;
pub mod members;
pub mod objects;
pub mod playground;
pub mod snapshot;
pub mod status;
pub mod telemetry;
