//! Bytes written by releases before the postcard codec (bincode 1, fixed-width integers),
//! kept as fixtures in `node/tests/fixtures/bincode1/`: each must still decode to the value it
//! was written from, and the value then re-encodes in the new, tagged format.
//!
//! The fixtures are `bincode::serialize` (bincode 1.3.3, the `serialize` the releases used)
//! of the values below, hex, written by a test that went with the crate. Before it went,
//! [`super::bincode1`] was also checked against bincode 1.3.3 itself on random values of every
//! type here and on their flipped, truncated and random mutations (2048 cases): both refused
//! or both read the same value.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership, StoredMembership, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{decode, encode, TAG};
use crate::raft::objects::{ChunkRecord, ChunkRef, Manifest, Mode, NsPolicy, NsRecord, ObjectRecord};
use crate::raft::recovery::LogDamage;
use crate::raft::state_machine::StoredValue;
use crate::raft::{ArkNode, Command, NodeId, Op, OpResult, Request, TypeConfig};

fn log_id(index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(3, 1), index)
}

fn membership() -> Membership<NodeId, ArkNode> {
    let node = |i: u64| ArkNode {
        site: format!("site-{i}"),
        peer_addr: format!("10.0.0.{i}:7000"),
        client_addr: format!("10.0.0.{i}:7100"),
    };
    Membership::new(
        vec![BTreeSet::from([1, 2, 3])],
        BTreeMap::from([(1, node(1)), (2, node(2)), (3, node(3)), (4, node(4))]),
    )
}

fn policy() -> NsPolicy {
    NsPolicy {
        copies: 3,
        min_sites: 2,
        mode: Mode::Async,
        max_lag_ms: 60_000,
        priority: 7,
        versions_kept: 4,
        compress: true,
    }
}

fn ops() -> Vec<Op> {
    vec![
        Op {
            request_id: b"req-1".to_vec(),
            command: Command::Put {
                key: "kéy".into(),
                value: vec![9; 20],
            },
        },
        Op {
            request_id: b"req-2".to_vec(),
            command: Command::Delete { key: "gone".into() },
        },
        Op {
            request_id: vec![],
            command: Command::NsCreate {
                name: "ns".into(),
                policy: policy(),
            },
        },
        Op {
            request_id: b"r4".to_vec(),
            command: Command::NsSet {
                name: "ns".into(),
                policy: NsPolicy::default(),
            },
        },
        Op {
            request_id: b"r5".to_vec(),
            command: Command::NsDelete { name: "old".into() },
        },
        Op {
            request_id: b"r6".to_vec(),
            command: Command::ObjPut {
                ns: "ns".into(),
                key: "object".into(),
                manifest: Manifest {
                    size: 5 << 20,
                    sha256: [7; 32],
                    chunks: vec![
                        ChunkRef {
                            id: [1; 32],
                            len: 1 << 20,
                        },
                        ChunkRef { id: [2; 32], len: 5 },
                    ],
                    holders: vec![1, 2, 3],
                    created_ms: 1_765_000_000_000,
                },
            },
        },
        Op {
            request_id: b"r7".to_vec(),
            command: Command::ObjDelete {
                ns: "ns".into(),
                key: "object".into(),
            },
        },
        Op {
            request_id: b"r8".to_vec(),
            command: Command::ChunkHolders {
                node: 2,
                add: vec![[1; 32], [2; 32]],
                remove: vec![[3; 32]],
            },
        },
    ]
}

fn entry_normal() -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(8),
        payload: EntryPayload::Normal(Request {
            proposed_at_ms: 1_765_000_000_123,
            ops: ops(),
        }),
    }
}

fn entry_membership() -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(9),
        payload: EntryPayload::Membership(membership()),
    }
}

fn entry_blank() -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(7),
        payload: EntryPayload::Blank,
    }
}

fn op_result() -> OpResult {
    OpResult {
        revision: 8 * 1024 + 3,
        existed: true,
        duplicate: false,
        version: 2,
        error: Some("namespace missing".into()),
    }
}

fn stored_value() -> StoredValue {
    StoredValue {
        revision: 8 * 1024,
        value: b"hello".to_vec(),
    }
}

fn object_record() -> ObjectRecord {
    ObjectRecord {
        size: 5 << 20,
        sha256: [7; 32],
        chunks: vec![ChunkRef {
            id: [1; 32],
            len: 1 << 20,
        }],
        created_ms: 1_765_000_000_000,
        deleted: false,
    }
}

fn chunk_record() -> ChunkRecord {
    ChunkRecord {
        refs: 2,
        holders: vec![1, 3],
        len: 1 << 20,
        since_ms: 1_765_000_000_000,
    }
}

fn ns_record() -> NsRecord {
    NsRecord {
        policy: policy(),
        created_ms: 1_765_000_000_000,
    }
}

fn damage() -> LogDamage {
    LogDamage {
        first_lost: 41,
        detail: "bad CRC at byte 4096 of raft-log/00000000000000000001.wal".into(),
    }
}

/// The legacy bytes of fixture `name`.
pub(crate) fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/bincode1/{name}.hex", env!("CARGO_MANIFEST_DIR"));
    let hex = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let hex = hex.trim();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// The legacy bytes decode to `want`; the value re-encodes tagged and reads back the same.
fn reads_legacy<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(name: &str, want: T) {
    let old = fixture(name);
    assert!(!old.starts_with(&TAG), "{name}: a legacy value must not look tagged");
    let got: T = decode(&old).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(got, want, "{name}");
    let new = encode(&got).unwrap();
    assert!(new.starts_with(&TAG), "{name}");
    assert_ne!(new, old, "{name}");
    assert_eq!(decode::<T>(&new).unwrap(), want, "{name}");
}

/// Entries have no `PartialEq`: compared by their new encoding.
fn reads_legacy_entry(name: &str, want: Entry<TypeConfig>) {
    let old = fixture(name);
    let got: Entry<TypeConfig> = decode(&old).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(encode(&got).unwrap(), encode(&want).unwrap(), "{name}");
    // The log files read an entry's id alone from the front of its record.
    assert_eq!(decode::<LogId<NodeId>>(&old).unwrap(), want.log_id, "{name}");
}

#[test]
fn values_written_by_the_bincode_releases_still_decode() {
    reads_legacy("vote", Vote::new_committed(7, 2));
    reads_legacy("vote_uncommitted", Vote::<NodeId>::new(8, 3));
    reads_legacy("purged", Some(log_id(42)));
    reads_legacy("purged_none", None::<LogId<NodeId>>);
    reads_legacy("membership", StoredMembership::new(Some(log_id(9)), membership()));
    reads_legacy("stored_value", stored_value());
    reads_legacy("kv_list", vec![("a".to_string(), stored_value())]);
    reads_legacy("op_result", op_result());
    reads_legacy("object_record", object_record());
    reads_legacy("chunk_record", chunk_record());
    reads_legacy("ns_record", ns_record());
    reads_legacy("log_damage", damage());
    reads_legacy(
        "request",
        Request {
            proposed_at_ms: 1_765_000_000_123,
            ops: ops(),
        },
    );
    reads_legacy_entry("entry_blank", entry_blank());
    reads_legacy_entry("entry_normal", entry_normal());
    reads_legacy_entry("entry_membership", entry_membership());
}

fn cut_short_is_an_error<T: DeserializeOwned>(name: &str) {
    let old = fixture(name);
    for at in 0..old.len() {
        assert!(decode::<T>(&old[..at]).is_err(), "{name} cut at byte {at} decoded");
    }
}

#[test]
fn legacy_bytes_cut_short_are_an_error() {
    cut_short_is_an_error::<Vote<NodeId>>("vote");
    cut_short_is_an_error::<StoredValue>("stored_value");
    cut_short_is_an_error::<ObjectRecord>("object_record");
    cut_short_is_an_error::<Request>("request");
    cut_short_is_an_error::<Entry<TypeConfig>>("entry_membership");
}
