//! Failover drills against real `arkd` processes (issue 4): faults, workload, history checker, report.
//!
//! The I/O-free half: [`history`] records what the clients did, [`linearizability`] and
//! [`checks`] judge it, [`report`] turns the verdicts into `report.json`; [`plan`] chooses each
//! round's partition and [`netfault`] turns a network state into the nodes' fault rules;
//! [`lazyfs`] models a disk that loses what was not synced. The
//! I/O half, [`drill`], starts real processes (each in its own network namespace made by
//! [`netns`] when the host allows, else on loopback), runs the workload and the faults
//! (signals to processes, nftables rules or control files of arkd's fault layer, power cuts
//! of the [`lazyfs_fuse`] mounts under the data dirs), and feeds
//! the checkers. [`deployed`] runs the same workload and verdict against a deployed cluster,
//! with the faults injected by the operator's shell commands (`ark-chaos drill`, `ark drill`).

pub mod checks;
pub mod deployed;
pub mod diskfull;
pub mod drill;
pub mod history;
pub mod lazyfs;
pub mod lazyfs_fuse;
pub mod linearizability;
pub mod netfault;
pub mod netns;
pub mod objects;
pub mod plan;
pub mod report;
pub mod workload;
