//! The client plane: tonic services for the `ark.v1` KV, Objects and Cluster APIs, the
//! client plane's certificate rule, and the one mapping of the layers' typed errors
//! (consensus, data plane, upload) to gRPC statuses, with the leader hint.
//!
//! Owns request validation, error wording and status codes. Must not touch: storage (writes
//! go through consensus's proposer or front door; reads through the readers).

pub mod auth;
pub mod auth_service;
pub mod client_cert;
pub mod cluster;
pub mod kv;
pub mod limits;
pub mod objects;
pub mod paging;
pub mod peer;
pub mod snapshot;
pub mod witness;

use tonic::metadata::MetadataValue;
use tonic::Status;

use crate::raft::error::ConsensusError;
use crate::replicate::upload::UploadError;
use crate::replicate::DataError;

/// Metadata key carrying the leader's node id on a not-leader error.
pub const LEADER_ID_HEADER: &str = "ark-leader-id";
/// Metadata key carrying the leader's client address on a not-leader error.
pub const LEADER_ADDR_HEADER: &str = "ark-leader-addr";

/// Accepted request id lengths (the SDK sends 16 bytes: microseconds, then 8 random bytes).
const REQUEST_ID_BYTES: std::ops::RangeInclusive<usize> = 8..=64;

/// Refuses a request id outside [`REQUEST_ID_BYTES`]: the rule every write shares.
pub fn check_request_id(id: &[u8]) -> Result<(), Status> {
    if !REQUEST_ID_BYTES.contains(&id.len()) {
        return Err(Status::invalid_argument(format!(
            "request_id must be {} to {} bytes (got {}); the SDK fills it in",
            REQUEST_ID_BYTES.start(),
            REQUEST_ID_BYTES.end(),
            id.len()
        )));
    }
    Ok(())
}

impl From<ConsensusError> for Status {
    fn from(e: ConsensusError) -> Status {
        match e {
            ConsensusError::NotLeader {
                leader_id,
                ref leader_addr,
            } => {
                let mut st = Status::unavailable(e.to_string());
                if let Some(id) = leader_id {
                    if let Ok(v) = MetadataValue::try_from(id.to_string()) {
                        st.metadata_mut().insert(LEADER_ID_HEADER, v);
                    }
                }
                if let Some(addr) = leader_addr {
                    if let Ok(v) = MetadataValue::try_from(addr.as_str()) {
                        st.metadata_mut().insert(LEADER_ADDR_HEADER, v);
                    }
                }
                st
            }
            ConsensusError::Unavailable(m) => Status::unavailable(m),
            ConsensusError::Refused(m) => Status::failed_precondition(m),
            ConsensusError::Internal(m) => Status::internal(m),
        }
    }
}

impl From<DataError> for Status {
    fn from(e: DataError) -> Status {
        match e {
            DataError::NoGoodCopy { .. } | DataError::Unseal(_) => Status::data_loss(e.to_string()),
            DataError::Key(m) => Status::failed_precondition(m),
            DataError::Local(m) => Status::internal(m),
            e => Status::unavailable(e.to_string()),
        }
    }
}

impl From<UploadError> for Status {
    fn from(e: UploadError) -> Status {
        match e {
            UploadError::Mismatch(_) => Status::invalid_argument(e.to_string()),
            UploadError::TooFewSites(_) | UploadError::Key(_) | UploadError::BaseUnreadable(_) => {
                Status::failed_precondition(e.to_string())
            }
            UploadError::DiskFull(_) => Status::resource_exhausted(e.to_string()),
            UploadError::Store(m) => Status::internal(m),
            UploadError::Consensus(c) => c.into(),
        }
    }
}
