//! The SDK's own types for what the cluster answers, so that an application never sees a
//! generated protobuf type (and a new field on the wire is not a breaking change here).
//!
//! One file per type family; their conversions from and to `ark-proto` live in
//! `crate::pb_impl`, one file per family too. Plain data: must not do I/O.

pub mod auth;
pub mod cluster;
pub mod namespace;
pub mod object;
pub mod snapshot;
pub mod telemetry;

pub use auth::{AuditTail, Grant, Grants, WhoAmI};
pub use cluster::{ClusterStatus, LeaderTransfer, Membership, NodeSpec, NodeStatus, QueueEntry};
pub use namespace::{DurabilityMode, NamespaceInfo, NamespacePolicy, RekeyReport};
pub use object::{DeletedObject, NodeScrub, ObjectInfo, ObjectReport, ScrubReport, VerifyReport};
pub use snapshot::SnapshotInfo;
pub use telemetry::{ClusterTelemetry, NodeTelemetry, TelemetrySeries};
