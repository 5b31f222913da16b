//! Ark's Rust SDK: what an application needs to talk to an Ark cluster, and nothing else.
//!
//! - [`client::ArkClient`]: leader discovery and redirect, retries that reuse the request
//!   id, deadlines, typed [`error::ClientError`]s.
//! - [`objects`]: namespaces and streamed, SHA-256-checked object puts and gets on the same
//!   client; [`restore`]: a whole namespace (latest, a version, or a point in time) back
//!   into a folder.
//! - [`snapshot`]: metadata snapshots saved into a file and checked offline.
//! - [`config`]: the `client.toml` file; [`retry::RetryPolicy`]: the one retry policy every
//!   retrying call follows.
//! - [`types`]: the SDK's own types for what the cluster answers (no generated protobuf
//!   type appears in this crate's API).
//!
//! The `ark` command line lives in `ark-cli`; local clusters, certificate tooling and test
//! support in `ark-playground`. This crate must not depend on either (nor on a CLI parser,
//! progress bars or a log subscriber): an application that only puts objects compiles only
//! this.

#![deny(missing_docs)]

pub mod auth;
pub mod client;
pub mod config;
pub mod delta;
pub mod error;
pub mod objects;
mod pb_impl;
pub mod restore;
pub mod retry;
pub mod snapshot;
mod transfer;
pub mod types;

pub use client::{AddLearnerOptions, ArkClient, KeyPage, ListKeysOptions, ReadOptions};
pub use config::ClientConfig;
pub use error::ClientError;
pub use objects::{ListObjectsOptions, ObjectPage, ScrubOptions};
pub use retry::{Jitter, RetryPolicy};
pub use types::*;
