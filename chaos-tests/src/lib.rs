//! Failover drills against real `arkd` processes (issue 4): faults, workload, history checker, report.
//!
//! The I/O-free half: [`history`] records what the clients did, [`linearizability`] and
//! [`checks`] judge it, [`report`] turns the verdicts into `report.json`; [`plan`] chooses each
//! round's partition and [`netfault`] turns a network state into the nodes' fault rules. The
//! I/O half, [`drill`], starts real processes, runs the workload and the faults (signals to
//! processes, control files of arkd's fault layer), and feeds the checkers; every run is in
//! loopback mode.

pub mod checks;
pub mod drill;
pub mod history;
pub mod linearizability;
pub mod netfault;
pub mod objects;
pub mod plan;
pub mod report;
pub mod workload;
