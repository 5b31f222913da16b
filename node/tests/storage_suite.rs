//! openraft's own storage conformance suite (log store and state machine, storage-v2) run
//! against Ark's implementation (log segment files, redb state machine with its overlay): appends, reads, truncation, purge, votes,
//! membership and snapshot handling must all behave as openraft requires.

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use ark_node::raft::state_machine::StateMachine;
use ark_node::raft::store::{open_database, LogStore};
use ark_node::raft::TypeConfig;
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().map_err(|e| openraft::StorageIOError::write(&e))?;
        let db = open_database(dir.path()).map_err(|e| openraft::StorageIOError::write(&e))?;
        let log = LogStore::open(dir.path(), db.clone()).map_err(|e| openraft::StorageIOError::write(&e))?;
        let sm = StateMachine::new(db, dir.path());
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_passes() -> Result<(), StorageError<u64>> {
    Suite::test_all(Builder)
}
