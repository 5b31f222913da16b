//! Local Ark clusters for people, tests and drills, and the certificate tooling they need.
//!
//! - [`playground`]: a multi-site cluster of real `arkd` processes on loopback (or placed
//!   in network namespaces by a [`playground::NodePlacer`]), recorded in `playground.json`.
//! - [`certs`]: the cluster CA and node and client certificates (`ark certs`).
//! - [`testkit`]: the test support every crate's cluster tests share (a playground torn
//!   down on drop, the `ark` CLI run against it, `/metrics` scrapes).
//!
//! Owns process spawning and certificate issuing; must not hold SDK logic (that is
//! `ark-client`, used here as any application would) or command-line parsing (`ark-cli`).

pub mod certs;
pub mod playground;
pub mod testkit;
