//! Failover drills against real `arkd` processes (issue 4): faults, workload, history checker, report.
//!
//! Built so far: the I/O-free half. [`history`] records what the clients did, [`linearizability`]
//! and [`checks`] judge it, [`report`] turns the verdicts into `report.json`. The workload, the
//! fault injectors and the CLI that drive real processes come next and only feed these modules.

pub mod checks;
pub mod history;
pub mod linearizability;
pub mod report;
