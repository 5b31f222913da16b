//! Typed errors of the SDK, so callers can tell "fix your request" from "try later", and
//! the one place where a gRPC status becomes one of them (`classify`).
//!
//! Owns the error type and the status mapping; must not decide how often or where to retry
//! (that is [`crate::retry`] and the callers' endpoint choice).

use tonic::{Code, Status};

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
    /// The cluster refused this client's identity (e.g. a node certificate used as a client
    /// certificate); the message says what to use instead. Retrying will not help.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
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

/// How one failed attempt of an operation ended: worth another attempt (maybe on another
/// node) or final.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Another attempt may succeed (node unreachable, connection lost, stalled, no leader);
    /// says which node failed how.
    Transient(String),
    /// Retrying will not help.
    Fatal(ClientError),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Unavailable { last, .. } => Failure::Transient(last),
            e => Failure::Fatal(e),
        }
    }
}

/// The SDK's only mapping from a node's gRPC status to an error: every call path (leader
/// calls, any-node reads, transfers, reports) sorts statuses here, so a code means the same
/// whichever method met it. `addr` is the node that answered.
pub(crate) fn classify(addr: &str, st: &Status) -> Failure {
    let msg = || format!("{addr}: {}", st.message());
    match st.code() {
        Code::InvalidArgument | Code::OutOfRange => Failure::Fatal(ClientError::InvalidArgument(msg())),
        Code::NotFound => Failure::Fatal(ClientError::NotFound(msg())),
        Code::AlreadyExists => Failure::Fatal(ClientError::AlreadyExists(msg())),
        Code::FailedPrecondition => Failure::Fatal(ClientError::FailedPrecondition(msg())),
        Code::ResourceExhausted => Failure::Fatal(ClientError::ResourceExhausted(msg())),
        Code::DataLoss => Failure::Fatal(ClientError::DataLoss(msg())),
        Code::PermissionDenied | Code::Unauthenticated => Failure::Fatal(ClientError::PermissionDenied(msg())),
        // A follower's "not the leader" is UNAVAILABLE with a leader hint; a lost or
        // stalled connection surfaces as one of the others.
        Code::Unavailable | Code::Cancelled | Code::Aborted | Code::Unknown | Code::DeadlineExceeded => {
            Failure::Transient(format!("{addr}: {}", describe(st)))
        }
        Code::Ok | Code::Internal | Code::Unimplemented => {
            Failure::Fatal(ClientError::Server(format!("{addr}: {}", describe(st))))
        }
    }
}

impl ClientError {
    /// Whether this error is about the node that answered rather than the request: another
    /// node may answer the same read (a stale read or a status any node can serve).
    pub(crate) fn is_node_local(&self) -> bool {
        matches!(
            self,
            ClientError::Server(_) | ClientError::ResourceExhausted(_) | ClientError::DataLoss(_)
        )
    }
}

/// A status with its transport cause, which tonic keeps in the error source chain.
pub(crate) fn describe(st: &Status) -> String {
    use std::error::Error;
    let mut s = format!("{:?}: {}", st.code(), st.message());
    let mut src = st.source();
    while let Some(e) = src {
        s.push_str(&format!(": {e}"));
        src = e.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fatal(code: Code) -> ClientError {
        match classify("n1:1", &Status::new(code, "why")) {
            Failure::Fatal(e) => e,
            Failure::Transient(m) => panic!("{code:?} must be final, got transient {m}"),
        }
    }

    #[test]
    fn every_status_code_maps_to_one_typed_error_or_a_retry() {
        assert!(matches!(fatal(Code::InvalidArgument), ClientError::InvalidArgument(_)));
        assert!(matches!(fatal(Code::OutOfRange), ClientError::InvalidArgument(_)));
        assert!(matches!(fatal(Code::NotFound), ClientError::NotFound(_)));
        assert!(matches!(fatal(Code::AlreadyExists), ClientError::AlreadyExists(_)));
        assert!(matches!(
            fatal(Code::FailedPrecondition),
            ClientError::FailedPrecondition(_)
        ));
        assert!(matches!(
            fatal(Code::ResourceExhausted),
            ClientError::ResourceExhausted(_)
        ));
        assert!(matches!(fatal(Code::DataLoss), ClientError::DataLoss(_)));
        assert!(matches!(
            fatal(Code::PermissionDenied),
            ClientError::PermissionDenied(_)
        ));
        assert!(matches!(fatal(Code::Unauthenticated), ClientError::PermissionDenied(_)));
        assert!(matches!(fatal(Code::Internal), ClientError::Server(_)));
        assert!(matches!(fatal(Code::Unimplemented), ClientError::Server(_)));
        for code in [
            Code::Unavailable,
            Code::Cancelled,
            Code::Aborted,
            Code::Unknown,
            Code::DeadlineExceeded,
        ] {
            match classify("n1:1", &Status::new(code, "why")) {
                Failure::Transient(m) => assert!(m.starts_with("n1:1: "), "{m}"),
                Failure::Fatal(e) => panic!("{code:?} must be retried, got {e}"),
            }
        }
        // The node that answered and its words reach the caller.
        assert_eq!(fatal(Code::NotFound).to_string(), "not found: n1:1: why");
    }
}
