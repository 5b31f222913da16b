//! Telemetry preparation, candle forecasters and their evaluation against naive baselines.
//!
//! - [`prep`]: pure series preparation (resampling, gap filling, normalisation, windows,
//!   time-of-day features).
//! - [`data`]: reading the `timestamp,value` and `entity,date,failure,...` layouts.
//! - [`nn`]: the small candle network, its seeded training loop and safetensors encoding.
//! - [`load`] and [`failure`]: the two forecasters.
//! - [`history`]: one entity's daily history (replayed as a node's SMART telemetry) and its
//!   risk.
//! - [`metrics`], [`eval`], [`eval_failure`]: figures and the offline evaluation against
//!   baselines.
//! - `cli` (cargo feature `cli`): the `forecast` subcommands (`arkd forecast ...`).
//!
//! Training runs on the calling thread; call [`cap_compute_threads`] at start-up and run
//! [`LoadForecaster::fit`] / [`FailureForecaster::fit`] through [`spawn_training`] (or a
//! blocking task) so training never starves heartbeats.

#![warn(missing_docs)]

pub mod baseline;
#[cfg(feature = "cli")]
pub mod cli;
pub mod data;
pub mod error;
pub mod eval;
pub mod eval_cross;
pub mod eval_failure;
pub mod failure;
pub mod global;
pub mod history;
pub mod load;
pub mod metrics;
pub mod nn;
pub mod prep;
pub mod seq;

#[cfg(feature = "cli")]
pub use cli::{EvalFailureArgs, EvalLoadArgs, ForecastCmd, SplitDaysArgs};
pub use error::{ForecastError, Result};
pub use failure::{FailureConfig, FailureForecaster};
pub use global::{GlobalConfig, GlobalLoadModel, QuantileForecast, SeriesForecaster};
pub use load::{LoadConfig, LoadForecaster};
pub use nn::{cap_compute_threads, spawn_training};
