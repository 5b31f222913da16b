//! The replicated state machine: KV records, client sessions (request ids already applied)
//! and the applied log position, all in redb tables next to the log; plus snapshots.
//!
//! Applying is deterministic: it depends only on the entries, never on local clocks, so
//! every replica holds the same tables after the same entries. Reads for the client API go
//! through [`KvReader`], which opens read transactions and never writes.
//!
//! KV writes (the small-write hot path) are applied to an in-memory overlay first and
//! written to redb in one transaction per 100 ms (or sooner when it grows), as
//! etcd batches its backend commits: one redb commit per log entry cost more CPU than the
//! writes themselves. Readers look in the overlay before redb, and a flush commits to redb
//! before it empties the overlay, so every applied write is always visible. Entries with any
//! other command (objects, namespaces) flush the overlay and are applied straight to redb in
//! the same transaction, so the object tables need no overlay. The overlay is lost in a
//! crash like any non-durable commit: openraft applies those entries again from the log,
//! which keeps them until the state machine is durably past them (see `store.rs`).
//!
//! One concern per file: `reader.rs` (client reads, overlay then redb), `apply.rs` (what a
//! KV command or a retried request id does), `sessions.rs` (exactly-once records, their
//! expiry and sweep), `overlay.rs` (the write-behind generations and their commit to redb),
//! `snapshot.rs` (build, install), `kept.rs` (which snapshot is kept), `snapshot_file.rs` (the
//! kept body's file),
//! `openraft_impl.rs` (openraft's trait), `tables.rs`
//! (the tables, shared by all), `machine.rs` ([`StateMachine`]: its fields, applying to the
//! overlay, flushing). This file only declares and re-exports, so that no file of the state
//! machine imports another that imports it back. Nothing here touches the log (that is
//! `store.rs`) or decides object rules (`raft::objects`).

mod apply;
mod kept;
mod machine;
mod openraft_impl;
pub(crate) mod overlay;
mod reader;
mod sessions;
pub(crate) mod snapshot;
mod snapshot_file;
mod tables;

pub use machine::StateMachine;
pub use reader::{KvReader, ReadError};
pub use sessions::SESSION_RETENTION_MS;
pub use tables::StoredValue;
pub(crate) use tables::{applied_in_db, create_tables, membership_in_db};
