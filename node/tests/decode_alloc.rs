//! Allocation bounds of the decoders a peer or a file can feed: a hostile input (a length
//! field set huge, a truncated or flipped encoding, random bytes) makes a decoder allocate at
//! most a stated bound, never what the input claims.
//!
//! How it is measured: this test binary's global allocator counts the bytes allocated
//! (`peak_alloc`, since the workspace forbids the `unsafe` a hand-written `GlobalAlloc`
//! needs), and each check records the peak above the level it started from while one decode
//! runs. The checks take one lock, so only one measures at a time; the harness allocates a
//! few KiB meanwhile at most, far below the bounds. A decode that asked for an absurd amount
//! would either be counted (and fail the bound) or fail to allocate (and abort the binary):
//! both fail the test.
//!
//! The bound for the serde codec's decodes (tagged postcard, and the legacy bincode 1 layout
//! of older data dirs) and protobuf decodes is [`SLACK_BYTES`] plus [`AMPLIFICATION`] times
//! the input: serde caps the preallocation of each sequence at 1 MiB whatever length it
//! declares, and a hostile input can hold one such buffer per nesting level at once (an
//! AppendEntries' entries, an entry's ops, an op's chunk list); everything else a decoded
//! value holds was paid for by input bytes, times the in-memory size of what they decode to.
//! Not counted: allocations inside C libraries (zstd's decompression context).

#![allow(clippy::unwrap_used)] // tests fail loudly on purpose

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use ark_node::net::{read_frame, FRAME_BYTES_MAX};
use ark_node::raft::objects::{ChunkRef, Manifest, NsPolicy};
use ark_node::raft::store::{decode, encode};
use ark_node::raft::{ArkNode, Command, NodeId, Op, OpResult, Request, TypeConfig};
use ark_node::NodeConfig;
use ark_proto::v1::{peer_request, PeerRequest, PeerResponse};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership, SnapshotMeta, StoredMembership, Vote};
use peak_alloc::PeakAlloc;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use prost::Message;
use serde::de::DeserializeOwned;

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// One measurement at a time.
static MEASURING: Mutex<()> = Mutex::new(());

/// Fixed part of the bound: four nesting levels of serde's 1 MiB preallocation cap, doubled
/// for `Vec` growth and the decoder's own state.
const SLACK_BYTES: usize = 8 << 20;
/// Variable part of the bound: in-memory bytes per input byte (strings and byte vectors are
/// 1:1; the worst is a small struct in a `Vec` or a `BTreeMap` node from a few bytes, doubled
/// by growth).
const AMPLIFICATION: usize = 16;

fn bound(input_len: usize) -> usize {
    SLACK_BYTES + AMPLIFICATION * input_len
}

/// Runs `f` and answers its result and the most bytes allocated at once while it ran, above
/// what was allocated before.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = ALLOC.current_usage();
    ALLOC.reset_peak_usage();
    let out = f();
    let peak = ALLOC.peak_usage().saturating_sub(before);
    (out, peak)
}

fn log_id(index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(3, 1), index)
}

fn ops() -> Vec<Op> {
    let chunks = (0..5u8)
        .map(|i| ChunkRef {
            id: [i; 32],
            len: 1 << 20,
        })
        .collect();
    vec![
        Op {
            request_id: b"req-1".to_vec(),
            command: Command::Put {
                key: "key".into(),
                value: vec![9; 100],
            },
        },
        Op {
            request_id: b"req-2".to_vec(),
            command: Command::ObjPut {
                ns: "ns".into(),
                key: "object".into(),
                manifest: Manifest {
                    size: 5 << 20,
                    sha256: [7; 32],
                    chunks,
                    holders: vec![1, 2, 3],
                    created_ms: 1,
                },
            },
        },
        Op {
            request_id: b"req-3".to_vec(),
            command: Command::ChunkHolders {
                node: 2,
                add: vec![[1; 32], [2; 32]],
                remove: vec![[3; 32]],
            },
        },
        Op {
            request_id: vec![],
            command: Command::NsCreate {
                name: "ns".into(),
                policy: NsPolicy::default(),
            },
        },
    ]
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

fn entries() -> Vec<Entry<TypeConfig>> {
    vec![
        Entry {
            log_id: log_id(7),
            payload: EntryPayload::Blank,
        },
        Entry {
            log_id: log_id(8),
            payload: EntryPayload::Normal(Request {
                proposed_at_ms: 5,
                ops: ops(),
            }),
        },
        Entry {
            log_id: log_id(9),
            payload: EntryPayload::Membership(membership()),
        },
    ]
}

/// A message's name, a valid encoding of it, and its decoder (true when it decodes).
type Sample = (&'static str, Vec<u8>, fn(&[u8]) -> bool);

/// A legacy (bincode 1 layout) value from the fixtures older data dirs are checked against.
fn legacy(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/fixtures/bincode1/{name}.hex", env!("CARGO_MANIFEST_DIR"));
    let hex = std::fs::read_to_string(&path).unwrap();
    let hex = hex.trim();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// A valid encoding of every kind of serde-encoded message and stored value (tagged, and
/// the legacy layout a data dir may still hold), and the decoder for it.
fn corpus() -> Vec<Sample> {
    fn ok<T: DeserializeOwned>(b: &[u8]) -> bool {
        decode::<T>(b).is_ok()
    }
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(3, 1),
        prev_log_id: Some(log_id(6)),
        entries: entries(),
        leader_commit: Some(log_id(6)),
    };
    let install = InstallSnapshotRequest::<TypeConfig> {
        vote: Vote::new_committed(3, 1),
        meta: SnapshotMeta {
            last_log_id: Some(log_id(9)),
            last_membership: StoredMembership::new(Some(log_id(9)), membership()),
            snapshot_id: "3-9-1".into(),
        },
        offset: 0,
        data: vec![5; 300],
        done: false,
    };
    let vote = VoteRequest::<NodeId>::new(Vote::new(4, 2), Some(log_id(9)));
    let result = OpResult {
        revision: 1,
        existed: true,
        duplicate: false,
        version: 2,
        error: Some("namespace missing".into()),
    };
    vec![
        (
            "append-entries",
            encode(&append).unwrap(),
            ok::<AppendEntriesRequest<TypeConfig>>,
        ),
        (
            "install-snapshot",
            encode(&install).unwrap(),
            ok::<InstallSnapshotRequest<TypeConfig>>,
        ),
        ("vote", encode(&vote).unwrap(), ok::<VoteRequest<NodeId>>),
        ("log entry", encode(&entries()[1]).unwrap(), ok::<Entry<TypeConfig>>),
        ("forwarded write", encode(&ops()[1]).unwrap(), ok::<Op>),
        ("op result", encode(&result).unwrap(), ok::<OpResult>),
        ("legacy log entry", legacy("entry_normal"), ok::<Entry<TypeConfig>>),
        (
            "legacy membership entry",
            legacy("entry_membership"),
            ok::<Entry<TypeConfig>>,
        ),
        ("legacy request", legacy("request"), ok::<Request>),
    ]
}

/// Values a hostile length field holds.
const HUGE: [u64; 5] = [u64::MAX, 1 << 62, 1 << 40, 1 << 32, FRAME_BYTES_MAX as u64 + 1];

/// [`HUGE`] as lengths are written: a varint (postcard) and a u64 LE (the legacy layout).
fn huge_patterns() -> Vec<Vec<u8>> {
    HUGE.iter()
        .flat_map(|&h| {
            let mut varint = Vec::new();
            let mut v = h;
            while v >= 0x80 {
                varint.push((v as u8) | 0x80);
                v >>= 7;
            }
            varint.push(v as u8);
            [varint, h.to_le_bytes().to_vec()]
        })
        .collect()
}

#[test]
fn serde_messages_with_huge_length_fields_stay_within_the_bound() {
    let _one = MEASURING.lock().unwrap();
    // Every offset of every message, every huge value: wherever it lands, the decode stays
    // within the bound (where it lands on a length field, it is also an error).
    let mut worst = (0usize, "");
    for (name, bytes, decode_it) in corpus() {
        assert!(decode_it(&bytes), "{name}: the valid encoding does not decode");
        for huge in huge_patterns() {
            for at in 0..bytes.len() - (huge.len() - 1) {
                let mut m = bytes.clone();
                m[at..at + huge.len()].copy_from_slice(&huge);
                let (_, peak) = peak_during(|| decode_it(&m));
                assert!(
                    peak <= bound(m.len()),
                    "{name}: {huge:02x?} at byte {at} made the decoder allocate {peak} bytes"
                );
                if peak > worst.0 {
                    worst = (peak, name);
                }
            }
        }
    }
    eprintln!("worst peak: {} bytes ({})", worst.0, worst.1);
}

#[test]
fn mutated_and_random_serde_encodings_stay_within_the_bound() {
    let _one = MEASURING.lock().unwrap();
    let corpus = corpus();
    let n = corpus.len();
    let strategy = (
        0..n,
        any::<usize>(),
        0u8..8,
        any::<usize>(),
        proptest::collection::vec(any::<u8>(), 0..2048),
    );
    let mut runner = TestRunner::new(ProptestConfig::default());
    let res = runner.run(&strategy, |(which, at, bit, cut, random)| {
        let (name, bytes, decode_it) = &corpus[which];
        let mut flipped = bytes.clone();
        flipped[at % bytes.len()] ^= 1 << bit;
        let cut = &bytes[..cut % bytes.len()];
        for input in [&flipped[..], cut, &random[..]] {
            let (_, peak) = peak_during(|| decode_it(input));
            prop_assert!(peak <= bound(input.len()), "{}: {} bytes allocated", name, peak);
        }
        Ok(())
    });
    if let Err(e) = res {
        panic!("{e}");
    }
}

fn read(bytes: &[u8]) -> anyhow::Result<bytes::Bytes> {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut r = bytes;
    rt.block_on(read_frame(&mut r))
}

#[test]
fn frame_lengths_over_the_limit_allocate_nothing_and_within_it_at_most_the_length() {
    let _one = MEASURING.lock().unwrap();
    for len in [FRAME_BYTES_MAX as u32 + 1, 1 << 30, u32::MAX] {
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0; 16]);
        let (res, peak) = peak_during(|| read(&bytes));
        assert!(res.is_err());
        // The runtime's own state, nothing for the frame.
        assert!(peak < 256 << 10, "a refused {len}-byte frame allocated {peak} bytes");
    }
    // Within the limit a frame's buffer is reserved from its header (so that the body is read
    // without copies): never more than the limit, whatever follows.
    for len in [1u32 << 20, FRAME_BYTES_MAX as u32] {
        let mut bytes = len.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0; 16]);
        let (res, peak) = peak_during(|| read(&bytes));
        assert!(res.is_err(), "a frame cut short must not be read");
        assert!(peak <= len as usize + (256 << 10), "{len}-byte frame: {peak} bytes");
    }
}

#[test]
fn protobuf_envelopes_stay_within_the_bound() {
    let _one = MEASURING.lock().unwrap();
    let req = PeerRequest {
        from: 3,
        raft_codec: 1,
        body: Some(peer_request::Body::ChunkHave(ark_proto::v1::ChunkIds {
            ids: (0..20u8).map(|i| vec![i; 32]).collect(),
            presence_only: false,
        })),
    }
    .encode_to_vec();
    let mut runner = TestRunner::new(ProptestConfig::default());
    let strategy = (
        any::<usize>(),
        prop_oneof![
            Just(vec![0xffu8; 10]),
            Just(vec![0xff, 0xff, 0xff, 0xff, 0x0f]),
            proptest::collection::vec(any::<u8>(), 1..8)
        ],
        proptest::collection::vec(any::<u8>(), 0..2048),
    );
    let res = runner.run(&strategy, |(at, over, random)| {
        let mut m = req.clone();
        let at = at % m.len();
        for (i, b) in over.iter().enumerate() {
            if let Some(x) = m.get_mut(at + i) {
                *x = *b;
            }
        }
        for input in [&m[..], &random[..]] {
            let (_, peak) = peak_during(|| {
                let _ = PeerRequest::decode(input);
                let _ = PeerResponse::decode(input);
            });
            prop_assert!(peak <= bound(input.len()), "{} bytes allocated", peak);
        }
        Ok(())
    });
    if let Err(e) = res {
        panic!("{e}");
    }
}

#[test]
fn configs_stay_within_the_bound() {
    let _one = MEASURING.lock().unwrap();
    let sample = NodeConfig::sample();
    let (res, peak) = peak_during(|| NodeConfig::parse(sample));
    assert!(res.is_ok());
    eprintln!("sample config ({} bytes): {peak} bytes at peak", sample.len());
    let mut runner = TestRunner::new(ProptestConfig::default());
    let res = runner.run(&"(?s).{0,2048}", |text| {
        let (_, peak) = peak_during(|| NodeConfig::parse(&text));
        // TOML keeps spans and decoration for every item: a larger factor than the serde codec's.
        prop_assert!(peak <= (1 << 20) + 256 * text.len(), "{} bytes allocated", peak);
        Ok(())
    });
    if let Err(e) = res {
        panic!("{e}");
    }
    let nested = format!("site = {}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (res, peak) = peak_during(|| NodeConfig::parse(&nested));
    assert!(res.is_err());
    assert!(peak <= (1 << 20) + 256 * nested.len(), "{peak} bytes allocated");
}

/// A chunk file larger than any chunk (a damaged file system, a stray file) is refused by its
/// length, before it is read (`chunks/store.rs`, `read_file`): reading it whole would cost
/// its whole size in memory.
#[test]
fn an_oversized_chunk_file_is_refused_before_it_is_read() {
    use ark_node::chunks::{chunk_id, to_hex, ChunkStore, MAX_CHUNK};
    let _one = MEASURING.lock().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    let id = chunk_id(b"any chunk");
    for name in [to_hex(&id), format!("{}.zst", to_hex(&id))] {
        let path = store.root().join(format!("{:02x}", id[0])).join(name);
        // Sparse: 256 MiB of holes costs no disk.
        std::fs::File::create(&path).unwrap().set_len(256 << 20).unwrap();
        let (got, peak) = peak_during(|| store.get(&id));
        std::fs::remove_file(&path).unwrap();
        assert!(got.is_err());
        assert!(peak <= MAX_CHUNK + (1 << 20), "{path:?}: {peak} bytes allocated");
    }
}
