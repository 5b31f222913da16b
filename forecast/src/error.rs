//! The error type of the forecaster crate. Owns nothing else; every fallible function in
//! `ark-forecast` returns [`ForecastError`] so callers (the node, the CLI) can match on it.
//! Variants wrapping another error expose it as `source()` and do not repeat it in their
//! message, so `{:#}` chains read once.

use std::path::PathBuf;

/// Everything that can go wrong while reading telemetry, training or evaluating a model.
#[derive(Debug, thiserror::Error)]
pub enum ForecastError {
    /// A file could not be opened or read.
    #[error("cannot read {path} (check that it exists and is readable)")]
    Io {
        /// The file being read.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A CSV file is malformed or lacks a required column.
    #[error("{path}: {message}")]
    Csv {
        /// The file being parsed.
        path: PathBuf,
        /// What is wrong with it, and where.
        message: String,
    },
    /// A timestamp or date cell could not be parsed.
    #[error(
        "cannot parse timestamp {0:?}: expected `YYYY-MM-DD[ HH:MM[:SS[.fff]]]`, the same with `T`, or epoch seconds"
    )]
    Timestamp(String),
    /// The input is too short or too degenerate for the requested operation.
    #[error("not enough data: {0}")]
    NotEnoughData(String),
    /// An argument is out of its valid range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// A tensor operation failed inside candle.
    #[error("tensor operation failed")]
    Candle(#[from] candle_core::Error),
    /// A weights blob could not be encoded or decoded.
    #[error("weights blob: {0}")]
    Weights(String),
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, ForecastError>;
