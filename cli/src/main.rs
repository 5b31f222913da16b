//! `ark`: the Ark command-line client. Parses arguments and hands over to [`cli::main`].
//!
//! - [`cli`] and [`cmd`]: argument parsing, dispatch, one file per command group.
//! - [`bench`]: the KV load generator (`ark bench kv`); [`objects_bench`]: the object load
//!   generator (`ark bench objects`); [`risk_bench`]: the risk-aware
//!   replication and pre-staging experiments (`ark bench risk`, `ark bench prestage`);
//!   [`pacing_bench`]: repair paced into forecast load troughs vs a constant rate
//!   (`ark bench pacing`).
//! - [`demo`]: the guided failover tour on a playground.
//! - [`units`]: durations, times and sizes as the CLI reads and prints them.

#[macro_use]
mod macros;

mod bench;
mod cli;
mod cmd;
mod demo;
mod objects_bench;
mod pacing_bench;
mod risk_bench;
mod units;

fn main() -> std::process::ExitCode {
    cli::main()
}
