//! Failover drills against real `arkd` processes (issue 4): faults, workload, history checker, report.
//!
//! The I/O-free half: [`history`] records what the clients did, [`linearizability`] and
//! [`checks`] judge it, [`report`] turns the verdicts into `report.json`. The I/O half,
//! [`drill`], starts real processes, runs the workload and the faults, and feeds them; so far
//! it has one scenario (leader kill) in loopback mode.

pub mod checks;
pub mod drill;
pub mod history;
pub mod linearizability;
pub mod report;
