//! Typed errors of the SDK, so callers can tell "fix your request" from "try later".

/// What went wrong with a client operation.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client config or TLS material is unusable.
    #[error("client configuration: {0}")]
    Config(String),
    /// The request is invalid; retrying will not help.
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    /// The thing asked for does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The cluster refused the operation in its current state (e.g. a membership change
    /// while another is in progress).
    #[error("refused by the cluster: {0}")]
    FailedPrecondition(String),
    /// No node answered successfully before the operation's deadline. A write that ends here
    /// may or may not have been applied (exactly once if it was).
    #[error("cluster unavailable after {attempts} attempts over {elapsed_ms} ms; last error: {last}")]
    Unavailable {
        /// RPC attempts made.
        attempts: u32,
        /// Time spent.
        elapsed_ms: u64,
        /// The last error seen.
        last: String,
    },
    /// Any other server error.
    #[error("server error: {0}")]
    Server(String),
}

impl ClientError {
    /// Whether the outcome of a write that failed this way is unknown (it may have applied).
    pub fn is_indeterminate(&self) -> bool {
        matches!(self, ClientError::Unavailable { .. } | ClientError::Server(_))
    }
}
