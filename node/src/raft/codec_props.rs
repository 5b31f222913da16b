//! Property tests of the codec ([`super::codec::decode`]) on every message a peer can send
//! inside a peer frame (Raft AppendEntries / Vote / InstallSnapshot requests and their
//! answers, forwarded client writes) and every value the node reads back from its log and
//! database: random bytes and mutated valid encodings, in the tagged postcard format and in
//! the legacy bincode 1 layout of older data dirs (the fixtures of `codec/legacy_tests.rs`),
//! give a value or an error, never a panic; valid values round-trip to the same bytes; and an
//! input over the limit is refused.
//!
//! Allocation bounds are checked in `node/tests/decode_alloc.rs`.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership, SnapshotMeta, StoredMembership, Vote};
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec::{decode, decode_with_limit, encode, DECODE_BYTES_MAX, TAG};
use super::objects::{ChunkRecord, ChunkRef, Manifest, Mode, NsPolicy, NsRecord, ObjectRecord};
use super::state_machine::StoredValue;
use super::{ArkNode, Command, NodeId, Op, OpResult, Request, Response, TypeConfig};

fn blob(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..max)
}

fn arb_log_id() -> impl Strategy<Value = LogId<NodeId>> {
    (any::<u64>(), any::<u64>(), any::<u64>())
        .prop_map(|(term, node, index)| LogId::new(CommittedLeaderId::new(term, node), index))
}

fn arb_vote() -> impl Strategy<Value = Vote<NodeId>> {
    (any::<u64>(), any::<u64>(), any::<bool>()).prop_map(|(term, node, committed)| {
        if committed {
            Vote::new_committed(term, node)
        } else {
            Vote::new(term, node)
        }
    })
}

fn arb_node() -> impl Strategy<Value = ArkNode> {
    (".{0,8}", ".{0,16}", ".{0,16}").prop_map(|(site, peer_addr, client_addr)| ArkNode {
        site,
        peer_addr,
        client_addr,
    })
}

fn arb_membership() -> impl Strategy<Value = Membership<NodeId, ArkNode>> {
    (
        proptest::collection::vec(proptest::collection::btree_set(0u64..8, 1..4), 1..3),
        proptest::collection::btree_map(0u64..12, arb_node(), 0..6),
    )
        .prop_map(|(configs, nodes)| {
            let configs: Vec<BTreeSet<NodeId>> = configs;
            let nodes: BTreeMap<NodeId, ArkNode> = nodes;
            Membership::new(configs, nodes)
        })
}

fn arb_policy() -> impl Strategy<Value = NsPolicy> {
    (any::<[u32; 4]>(), any::<u64>(), any::<bool>(), any::<bool>()).prop_map(
        |([copies, min_sites, priority, versions_kept], max_lag_ms, sync, compress)| NsPolicy {
            copies,
            min_sites,
            mode: if sync { Mode::Sync } else { Mode::Async },
            max_lag_ms,
            priority,
            versions_kept,
            compress,
        },
    )
}

fn arb_chunk_refs() -> impl Strategy<Value = Vec<ChunkRef>> {
    proptest::collection::vec(
        (any::<[u8; 32]>(), any::<u32>()).prop_map(|(id, len)| ChunkRef { id, len }),
        0..6,
    )
}

fn arb_command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (".{0,16}", blob(256)).prop_map(|(key, value)| Command::Put { key, value }),
        ".{0,16}".prop_map(|key| Command::Delete { key }),
        (".{0,8}", arb_policy()).prop_map(|(name, policy)| Command::NsCreate { name, policy }),
        (".{0,8}", arb_policy()).prop_map(|(name, policy)| Command::NsSet { name, policy }),
        ".{0,8}".prop_map(|name| Command::NsDelete { name }),
        (
            ".{0,8}",
            ".{0,16}",
            any::<u64>(),
            any::<[u8; 32]>(),
            arb_chunk_refs(),
            proptest::collection::vec(any::<u64>(), 0..4),
            any::<u64>()
        )
            .prop_map(|(ns, key, size, sha256, chunks, holders, created_ms)| Command::ObjPut {
                ns,
                key,
                manifest: Manifest {
                    size,
                    sha256,
                    chunks,
                    holders,
                    created_ms
                },
            }),
        (".{0,8}", ".{0,16}").prop_map(|(ns, key)| Command::ObjDelete { ns, key }),
        (
            any::<u64>(),
            proptest::collection::vec(any::<[u8; 32]>(), 0..4),
            proptest::collection::vec(any::<[u8; 32]>(), 0..4)
        )
            .prop_map(|(node, add, remove)| Command::ChunkHolders { node, add, remove }),
        (".{0,8}", arb_policy(), any::<u32>()).prop_map(|(name, policy, namespaces_max)| Command::NsCreateCapped {
            name,
            policy,
            namespaces_max
        }),
        (".{0,8}", arb_policy(), arb_ns_keys(), any::<u32>()).prop_map(|(name, policy, keys, namespaces_max)| {
            Command::NsCreateEncrypted {
                name,
                policy,
                keys,
                namespaces_max,
            }
        }),
        (".{0,8}", arb_ns_keys()).prop_map(|(name, keys)| Command::NsRekey { name, keys }),
        (any::<u64>(), any::<bool>()).prop_map(|(node, w)| Command::SetRole {
            node,
            role: if w {
                crate::config::NodeRole::Witness
            } else {
                crate::config::NodeRole::Data
            },
        }),
    ]
}

fn arb_ns_keys() -> impl Strategy<Value = crate::raft::types::NsKeys> {
    proptest::collection::vec(
        (any::<u32>(), any::<[u8; 8]>(), blob(60), any::<u64>()).prop_map(
            |(generation, kek_id, wrapped, created_ms)| crate::raft::types::WrappedKey {
                generation,
                kek_id,
                wrapped,
                created_ms,
            },
        ),
        0..3,
    )
    .prop_map(|generations| crate::raft::types::NsKeys { generations })
}

fn arb_op() -> impl Strategy<Value = Op> {
    (blob(24), arb_command()).prop_map(|(request_id, command)| Op { request_id, command })
}

fn arb_op_result() -> impl Strategy<Value = OpResult> {
    (
        any::<u64>(),
        any::<bool>(),
        any::<bool>(),
        any::<u64>(),
        proptest::option::of(".{0,24}"),
    )
        .prop_map(|(revision, existed, duplicate, version, error)| OpResult {
            revision,
            existed,
            duplicate,
            version,
            error,
        })
}

fn arb_entry() -> impl Strategy<Value = Entry<TypeConfig>> {
    let payload = prop_oneof![
        Just(EntryPayload::Blank),
        (any::<u64>(), proptest::collection::vec(arb_op(), 0..4))
            .prop_map(|(proposed_at_ms, ops)| EntryPayload::Normal(Request { proposed_at_ms, ops })),
        arb_membership().prop_map(EntryPayload::Membership),
    ];
    (arb_log_id(), payload).prop_map(|(log_id, payload)| Entry { log_id, payload })
}

fn arb_append() -> impl Strategy<Value = AppendEntriesRequest<TypeConfig>> {
    (
        arb_vote(),
        proptest::option::of(arb_log_id()),
        proptest::collection::vec(arb_entry(), 0..4),
        proptest::option::of(arb_log_id()),
    )
        .prop_map(|(vote, prev_log_id, entries, leader_commit)| AppendEntriesRequest {
            vote,
            prev_log_id,
            entries,
            leader_commit,
        })
}

fn arb_snapshot_meta() -> impl Strategy<Value = SnapshotMeta<NodeId, ArkNode>> {
    (proptest::option::of(arb_log_id()), arb_membership(), ".{0,24}").prop_map(
        |(last_log_id, membership, snapshot_id)| SnapshotMeta {
            last_membership: StoredMembership::new(last_log_id, membership),
            last_log_id,
            snapshot_id,
        },
    )
}

fn arb_install() -> impl Strategy<Value = InstallSnapshotRequest<TypeConfig>> {
    (arb_vote(), arb_snapshot_meta(), any::<u64>(), blob(512), any::<bool>()).prop_map(
        |(vote, meta, offset, data, done)| InstallSnapshotRequest {
            vote,
            meta,
            offset,
            data,
            done,
        },
    )
}

fn arb_vote_request() -> impl Strategy<Value = VoteRequest<NodeId>> {
    (arb_vote(), proptest::option::of(arb_log_id())).prop_map(|(vote, last)| VoteRequest::new(vote, last))
}

fn arb_append_response() -> impl Strategy<Value = AppendEntriesResponse<NodeId>> {
    // Not `Clone`, so no `Just`: built from a variant number.
    (0u8..4, proptest::option::of(arb_log_id()), arb_vote()).prop_map(|(variant, log_id, vote)| match variant {
        0 => AppendEntriesResponse::Success,
        1 => AppendEntriesResponse::PartialSuccess(log_id),
        2 => AppendEntriesResponse::Conflict,
        _ => AppendEntriesResponse::HigherVote(vote),
    })
}

fn arb_vote_response() -> impl Strategy<Value = VoteResponse<NodeId>> {
    (arb_vote(), any::<bool>(), proptest::option::of(arb_log_id())).prop_map(|(vote, vote_granted, last_log_id)| {
        VoteResponse {
            vote,
            vote_granted,
            last_log_id,
        }
    })
}

fn arb_object_record() -> impl Strategy<Value = ObjectRecord> {
    (
        any::<u64>(),
        any::<[u8; 32]>(),
        arb_chunk_refs(),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|(size, sha256, chunks, created_ms, deleted)| ObjectRecord {
            size,
            sha256,
            chunks,
            created_ms,
            deleted,
        })
}

fn arb_chunk_record() -> impl Strategy<Value = ChunkRecord> {
    (
        any::<u64>(),
        proptest::collection::vec(any::<u64>(), 0..6),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(|(refs, holders, len, since_ms)| ChunkRecord {
            refs,
            holders,
            len,
            since_ms,
        })
}

/// One valid value of every type the node decodes, encoded. The decoder to try on a mutation
/// of it is named by the variant.
#[derive(Debug, Clone)]
enum Encoded {
    Entry(Vec<u8>),
    Append(Vec<u8>),
    Install(Vec<u8>),
    Vote(Vec<u8>),
    AppendResponse(Vec<u8>),
    VoteResponse(Vec<u8>),
    Op(Vec<u8>),
    OpResult(Vec<u8>),
    Stored(Vec<u8>),
}

fn arb_encoded() -> impl Strategy<Value = Encoded> {
    prop_oneof![
        arb_entry().prop_map(|v| Encoded::Entry(enc(&v))),
        arb_append().prop_map(|v| Encoded::Append(enc(&v))),
        arb_install().prop_map(|v| Encoded::Install(enc(&v))),
        arb_vote_request().prop_map(|v| Encoded::Vote(enc(&v))),
        arb_append_response().prop_map(|v| Encoded::AppendResponse(enc(&v))),
        arb_vote_response().prop_map(|v| Encoded::VoteResponse(enc(&v))),
        arb_op().prop_map(|v| Encoded::Op(enc(&v))),
        arb_op_result().prop_map(|v| Encoded::OpResult(enc(&v))),
        arb_object_record().prop_map(|v| Encoded::Stored(enc(&v))),
    ]
}

fn enc<T: Serialize>(v: &T) -> Vec<u8> {
    encode(v).unwrap()
}

/// Decodes `b` as `T`, and if that works, checks that the value survives a round trip (it
/// may encode to other bytes than `b`: a set decoded from a damaged list with a repeat is
/// shorter, legacy bytes come back tagged). Panics only if the decoder does.
fn try_decode<T: Serialize + DeserializeOwned>(b: &[u8]) {
    if let Ok(v) = decode::<T>(b) {
        let again = encode(&v).unwrap();
        assert_eq!(
            encode(&decode::<T>(&again).unwrap()).unwrap(),
            again,
            "a decoded value does not round-trip"
        );
    }
}

/// Every decoder a peer or a file can reach, on the same bytes.
fn decode_as_everything(b: &[u8]) {
    try_decode::<Entry<TypeConfig>>(b);
    try_decode::<AppendEntriesRequest<TypeConfig>>(b);
    try_decode::<InstallSnapshotRequest<TypeConfig>>(b);
    try_decode::<VoteRequest<NodeId>>(b);
    try_decode::<AppendEntriesResponse<NodeId>>(b);
    try_decode::<VoteResponse<NodeId>>(b);
    try_decode::<InstallSnapshotResponse<NodeId>>(b);
    try_decode::<RaftError<NodeId>>(b);
    try_decode::<RaftError<NodeId, InstallSnapshotError>>(b);
    try_decode::<Op>(b);
    try_decode::<OpResult>(b);
    try_decode::<Response>(b);
    try_decode::<u64>(b);
    try_decode::<Option<LogId<NodeId>>>(b);
    try_decode::<Vote<NodeId>>(b);
    try_decode::<StoredMembership<NodeId, ArkNode>>(b);
    try_decode::<StoredValue>(b);
    try_decode::<NsRecord>(b);
    try_decode::<ObjectRecord>(b);
    try_decode::<ChunkRecord>(b);
}

/// Decodes a mutation of an encoding as the type it was encoded from.
fn decode_as_its_type(e: &Encoded, b: &[u8]) {
    match e {
        Encoded::Entry(_) => try_decode::<Entry<TypeConfig>>(b),
        Encoded::Append(_) => try_decode::<AppendEntriesRequest<TypeConfig>>(b),
        Encoded::Install(_) => try_decode::<InstallSnapshotRequest<TypeConfig>>(b),
        Encoded::Vote(_) => try_decode::<VoteRequest<NodeId>>(b),
        Encoded::AppendResponse(_) => try_decode::<AppendEntriesResponse<NodeId>>(b),
        Encoded::VoteResponse(_) => try_decode::<VoteResponse<NodeId>>(b),
        Encoded::Op(_) => try_decode::<Op>(b),
        Encoded::OpResult(_) => try_decode::<OpResult>(b),
        Encoded::Stored(_) => try_decode::<ObjectRecord>(b),
    }
}

fn bytes_of(e: &Encoded) -> &[u8] {
    match e {
        Encoded::Entry(b)
        | Encoded::Append(b)
        | Encoded::Install(b)
        | Encoded::Vote(b)
        | Encoded::AppendResponse(b)
        | Encoded::VoteResponse(b)
        | Encoded::Op(b)
        | Encoded::OpResult(b)
        | Encoded::Stored(b) => b,
    }
}

/// Values that a damaged or hostile length holds.
const HUGE: [u64; 5] = [u64::MAX, 1 << 62, 1 << 40, 1 << 32, DECODE_BYTES_MAX + 1];

/// Every way [`HUGE`] can be written where a length is read: a varint (postcard) and a u64
/// LE (the legacy layout).
fn huge_patterns() -> Vec<Vec<u8>> {
    HUGE.iter()
        .flat_map(|&h| [postcard::to_stdvec(&h).unwrap(), h.to_le_bytes().to_vec()])
        .collect()
}

fn round_trips<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(v: &T) -> Result<(), TestCaseError> {
    let b = encode(v).unwrap();
    prop_assert!(
        b.starts_with(&TAG),
        "a value written without the tag would be read as legacy"
    );
    let back: T = decode(&b).unwrap();
    prop_assert_eq!(&back, v);
    Ok(())
}

/// For types without `PartialEq` (openraft's requests): the decoded value encodes to the same
/// bytes.
fn round_trips_bytes<T: Serialize + DeserializeOwned>(v: &T) -> Result<(), TestCaseError> {
    let b = encode(v).unwrap();
    let back: T = decode(&b).unwrap();
    prop_assert_eq!(encode(&back).unwrap(), b);
    Ok(())
}

proptest! {
    #[test]
    fn random_bytes_decode_to_a_value_or_an_error(b in blob(1024)) {
        decode_as_everything(&b);
    }

    #[test]
    fn raft_messages_round_trip(
        append in arb_append(),
        install in arb_install(),
        vote in arb_vote_request(),
        entry in arb_entry(),
        ar in arb_append_response(),
        vr in arb_vote_response(),
    ) {
        round_trips_bytes(&append)?;
        round_trips(&install)?;
        round_trips(&vote)?;
        round_trips_bytes(&entry)?;
        round_trips(&ar)?;
        round_trips(&vr)?;
    }

    #[test]
    fn forwarded_writes_and_stored_values_round_trip(
        op in arb_op(),
        res in arb_op_result(),
        obj in arb_object_record(),
        chunk in arb_chunk_record(),
        policy in arb_policy(),
        created_ms in any::<u64>(),
        revision in any::<u64>(),
        value in blob(256),
    ) {
        round_trips(&op)?;
        round_trips(&res)?;
        round_trips(&obj)?;
        round_trips(&chunk)?;
        round_trips(&NsRecord { policy, created_ms })?;
        round_trips(&StoredValue { revision, value })?;
    }

    #[test]
    fn flipped_cut_or_extended_encodings_are_a_value_or_an_error(
        e in arb_encoded(),
        at in any::<usize>(),
        bit in 0u8..8,
        more in blob(32),
    ) {
        let b = bytes_of(&e);
        prop_assume!(!b.is_empty());
        let at = at % b.len();
        let mut flipped = b.to_vec();
        flipped[at] ^= 1 << bit;
        decode_as_its_type(&e, &flipped);
        decode_as_its_type(&e, &b[..at]);
        let mut longer = b.to_vec();
        longer.extend_from_slice(&more);
        decode_as_its_type(&e, &longer);
        // A cut encoding is never mistaken for a whole one of the same type... unless the
        // cut falls after the value's last byte, which it cannot (`at` < len).
        prop_assert!(decode_is_err(&e, &b[..at]), "a truncated encoding decoded");
    }

    #[test]
    fn an_input_over_the_limit_is_refused_unread(len in 0u64..4096, extra in 1u64..64) {
        // A value exactly at the limit decodes, one byte more does not.
        let v = vec![7u8; len as usize];
        let b = encode(&v).unwrap();
        let n = b.len() as u64;
        prop_assert_eq!(n, super::codec::encoded_len(&v).unwrap() as u64);
        prop_assert_eq!(decode_with_limit::<Vec<u8>>(&b, n).unwrap(), v.clone());
        prop_assert!(decode_with_limit::<Vec<u8>>(&b, n - 1).is_err());
        // A length past the limit with the bytes missing is an error too (it runs out of
        // input before anything is allocated for it), tagged or legacy.
        let huge = DECODE_BYTES_MAX + extra;
        let mut declared = TAG.to_vec();
        declared.extend(postcard::to_stdvec(&huge).unwrap());
        declared.extend(&v);
        prop_assert!(decode::<Vec<u8>>(&declared).is_err());
        let mut legacy = huge.to_le_bytes().to_vec();
        legacy.extend(&v);
        prop_assert!(decode::<Vec<u8>>(&legacy).is_err());
    }
}

fn decode_is_err(e: &Encoded, b: &[u8]) -> bool {
    match e {
        Encoded::Entry(_) => decode::<Entry<TypeConfig>>(b).is_err(),
        Encoded::Append(_) => decode::<AppendEntriesRequest<TypeConfig>>(b).is_err(),
        Encoded::Install(_) => decode::<InstallSnapshotRequest<TypeConfig>>(b).is_err(),
        Encoded::Vote(_) => decode::<VoteRequest<NodeId>>(b).is_err(),
        Encoded::AppendResponse(_) => decode::<AppendEntriesResponse<NodeId>>(b).is_err(),
        Encoded::VoteResponse(_) => decode::<VoteResponse<NodeId>>(b).is_err(),
        Encoded::Op(_) => decode::<Op>(b).is_err(),
        Encoded::OpResult(_) => decode::<OpResult>(b).is_err(),
        Encoded::Stored(_) => decode::<ObjectRecord>(b).is_err(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        // Each case is an exhaustive sweep (every offset, five values, ~10k decodes): an
        // eighth of the default keeps CI fast; scripts/fuzz-decoders.sh raises it.
        cases: ProptestConfig::default().cases.div_ceil(8),
        ..ProptestConfig::default()
    })]

    #[test]
    fn huge_length_fields_anywhere_give_a_value_or_an_error(e in arb_encoded()) {
        // Every offset, every huge value: where it lands on a length field the decoder must
        // refuse it (without allocating, see decode_alloc.rs); elsewhere anything goes but a
        // panic.
        let b = bytes_of(&e);
        for huge in huge_patterns() {
            for at in 0..b.len().saturating_sub(huge.len() - 1) {
                let mut m = b.to_vec();
                m[at..at + huge.len()].copy_from_slice(&huge);
                decode_as_its_type(&e, &m);
            }
        }
    }
}

/// A fixture's name and the decoder of its type.
type LegacySample = (&'static str, fn(&[u8]));

/// Legacy values as older data dirs hold them (bincode 1 fixtures), as the type each is.
const LEGACY: [LegacySample; 6] = [
    ("entry_normal", try_decode::<Entry<TypeConfig>>),
    ("entry_membership", try_decode::<Entry<TypeConfig>>),
    ("membership", try_decode::<StoredMembership<NodeId, ArkNode>>),
    ("object_record", try_decode::<ObjectRecord>),
    ("chunk_record", try_decode::<ChunkRecord>),
    ("stored_value", try_decode::<StoredValue>),
];

proptest! {
    #[test]
    fn flipped_cut_or_extended_legacy_values_are_a_value_or_an_error(
        which in 0..LEGACY.len(),
        at in any::<usize>(),
        bit in 0u8..8,
        more in blob(32),
    ) {
        let (name, decode_it) = LEGACY[which];
        let b = super::codec::legacy_tests::fixture(name);
        let at = at % b.len();
        let mut flipped = b.clone();
        flipped[at] ^= 1 << bit;
        decode_it(&flipped);
        decode_as_everything(&flipped);
        decode_it(&b[..at]);
        let mut longer = b.clone();
        longer.extend_from_slice(&more);
        decode_it(&longer);
    }
}

#[test]
fn huge_length_fields_anywhere_in_legacy_values_give_a_value_or_an_error() {
    for (name, decode_it) in LEGACY {
        let b = super::codec::legacy_tests::fixture(name);
        for huge in huge_patterns() {
            for at in 0..b.len().saturating_sub(huge.len() - 1) {
                let mut m = b.clone();
                m[at..at + huge.len()].copy_from_slice(&huge);
                decode_it(&m);
            }
        }
    }
}
