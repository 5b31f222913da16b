//! Failover drills against real `arkd` processes (issue 4): faults, workload, history checker, report. Not built yet.
