//! Conversions between the wire types of `ark-proto` and the SDK's own types
//! ([`crate::types`]), one file per type family (as openraft keeps its `pb_impl/`).
//!
//! The only module that names a generated message outside the transport calls; must not
//! hold logic beyond filling fields (an absent sub-message becomes its default).

mod auth;
mod cluster;
mod namespace;
mod object;
mod snapshot;
mod telemetry;
