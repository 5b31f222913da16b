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
    /// The thing to create exists already (e.g. a namespace of that name).
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// A node ran out of a resource (e.g. its disk is full); retrying elsewhere or later,
    /// after freeing space, may help.
    #[error("out of resources: {0}")]
    ResourceExhausted(String),
    /// The cluster reports data it can no longer serve intact (every copy of a chunk is
    /// corrupt or missing). Run `ark verify` and `ark scrub`; restore from another copy.
    #[error("data loss reported by the cluster: {0}")]
    DataLoss(String),
    /// What the client sent or received does not match its manifest (size or SHA-256): the
    /// transfer is rejected and nothing is kept.
    #[error("integrity check failed: {0}")]
    Integrity(String),
    /// A local file or stream could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being attempted, with the path.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Any other server error.
    #[error("server error: {0}")]
    Server(String),
}

impl ClientError {
    /// An [`ClientError::Io`] saying what was being attempted.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        ClientError::Io {
            what: what.into(),
            source,
        }
    }

    /// Whether the outcome of a write that failed this way is unknown (it may have applied).
    pub fn is_indeterminate(&self) -> bool {
        matches!(self, ClientError::Unavailable { .. } | ClientError::Server(_))
    }
}
