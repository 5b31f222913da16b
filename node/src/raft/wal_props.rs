//! Property tests of the Raft log's segment files as a damaged disk leaves them: whatever a
//! segment holds, [`Wal::open`] gives a log or an error, never a panic, and a log it opens
//! never yields an entry that was not written (a damaged record is cut off as a torn tail or
//! refused, never read as another entry).
//!
//! Only the log's crate-visible API is used ([`Wal::open`], [`Wal::append`], [`Wal::commit`],
//! [`WalIndex::read_range`]), so that this module outlives a rewrite of `wal.rs`. The record
//! format written by hand below is the one `wal.rs`'s module doc states; a test checks it
//! against what `Wal::append` writes.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
use proptest::prelude::*;

use crate::damage_props::{damage, Damage};

use super::store::{decode, encode};
use super::wal::Wal;
use super::{NodeId, Request, TypeConfig};

/// How the log store reads an entry's id from its payload (`store.rs`'s `entry_log_id`).
fn id_of(payload: &[u8]) -> Result<LogId<NodeId>, String> {
    decode::<Entry<TypeConfig>>(payload)
        .map(|e| e.log_id)
        .map_err(|e| e.to_string())
}

fn entry(index: u64, body: usize) -> Vec<u8> {
    let payload = if body == 0 {
        EntryPayload::Blank
    } else {
        EntryPayload::Normal(Request {
            proposed_at_ms: index,
            ops: vec![super::Op {
                request_id: vec![index as u8; 4],
                command: super::Command::Put {
                    key: format!("k{index}"),
                    value: vec![index as u8; body],
                },
            }],
        })
    };
    encode(&Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload,
    })
    .unwrap()
}

/// One record as `wal.rs` documents it: length, CRC-32 of the length bytes and the payload,
/// payload.
fn record(payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(payload);
    let mut out = len.to_le_bytes().to_vec();
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fn segment_name(key: u64) -> String {
    format!("{key:020}.wal")
}

/// Opens the log in `dir` and reads every entry it lists; `Err` if either step refuses.
fn open_and_read(dir: &Path, last_purged: Option<u64>) -> Result<Vec<(u64, Vec<u8>)>, String> {
    let (wal, _) = Wal::open(dir, last_purged, id_of, |_| Ok(())).map_err(|e| e.to_string())?;
    let shared = wal.shared();
    let index = shared.read().map_err(|_| "poisoned".to_string())?;
    let mut out = Vec::new();
    index
        .read_range(0, u64::MAX, |i, p| {
            out.push((i, p.to_vec()));
            Ok(())
        })
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// A valid log of `n` entries, written by `Wal` itself, and the payloads written.
fn write_log(dir: &Path, n: u64, body: usize) -> Vec<(u64, Vec<u8>)> {
    let (mut wal, _) = Wal::open(dir, None, id_of, |_| Ok(())).unwrap();
    let mut written = Vec::new();
    for i in 0..n {
        let p = entry(i, body * (i as usize % 3));
        wal.append(LogId::new(CommittedLeaderId::new(1, 1), i), &p).unwrap();
        written.push((i, p));
    }
    wal.commit().unwrap();
    written
}

/// A record's length field (or any 4 bytes) overwritten.
fn arb_damage() -> impl Strategy<Value = Damage> {
    crate::damage_props::arb_damage(
        prop_oneof![
            Just(u32::MAX.to_le_bytes()),
            Just(0u32.to_le_bytes()),
            Just((64u32 << 20).to_le_bytes()),
            any::<[u8; 4]>()
        ]
        .prop_map(|b| b.to_vec()),
    )
}

/// A log of `n` entries in two segments written by hand (the writer only starts a second
/// one past 64 MiB), the first damaged by `d`; answers the payloads written.
fn two_segments(dir: &Path, n: u64, split: usize, d: &Damage) -> Vec<(u64, Vec<u8>)> {
    let payloads: Vec<_> = (0..n).map(|i| (i, entry(i, 20))).collect();
    let split = 1 + split % (n as usize - 1);
    let first: Vec<u8> = payloads[..split].iter().flat_map(|(_, p)| record(p)).collect();
    let second: Vec<u8> = payloads[split..].iter().flat_map(|(_, p)| record(p)).collect();
    std::fs::write(dir.join(segment_name(0)), damage(first, d)).unwrap();
    std::fs::write(dir.join(segment_name(split as u64)), second).unwrap();
    payloads
}

#[test]
fn records_written_by_hand_match_the_log_writer() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_log(dir.path(), 5, 40);
    let on_disk = std::fs::read(dir.path().join(segment_name(0))).unwrap();
    let by_hand: Vec<u8> = written.iter().flat_map(|(_, p)| record(p)).collect();
    assert_eq!(on_disk, by_hand);
}

proptest! {
    #![proptest_config(ProptestConfig {
        // Each case creates, syncs and deletes files: a quarter of the default keeps CI fast;
        // scripts/fuzz-decoders.sh raises it with PROPTEST_CASES.
        cases: ProptestConfig::default().cases.div_ceil(4),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_segment_files_open_or_are_refused(
        segments in proptest::collection::vec((0u64..64, proptest::collection::vec(any::<u8>(), 0..512)), 1..4),
        last_purged in proptest::option::of(0u64..64),
    ) {
        let dir = tempfile::tempdir().unwrap();
        for (key, bytes) in &segments {
            std::fs::write(dir.path().join(segment_name(*key)), bytes).unwrap();
        }
        let _ = open_and_read(dir.path(), last_purged);
    }

    #[test]
    fn a_damaged_segment_never_yields_an_entry_that_was_not_written(
        n in 1u64..24,
        body in 0usize..300,
        d in arb_damage(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let written = write_log(dir.path(), n, body);
        let path = dir.path().join(segment_name(0));
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, damage(bytes, &d)).unwrap();
        if let Ok(read) = open_and_read(dir.path(), None) {
            // Only the newest segment was damaged: what survives is a prefix of the log.
            prop_assert!(read.len() <= written.len());
            prop_assert_eq!(&read[..], &written[..read.len()]);
        }
    }

    #[test]
    fn damage_in_an_older_segment_never_yields_an_entry_that_was_not_written(
        n in 2u64..16,
        split in any::<usize>(),
        d in arb_damage(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let payloads = two_segments(dir.path(), n, split, &d);
        if let Ok(read) = open_and_read(dir.path(), None) {
            // Every entry served is the one written at its index, in order without gaps.
            for (k, (i, p)) in read.iter().enumerate() {
                prop_assert_eq!(p, &payloads[*i as usize].1, "entry {} is not what was written", i);
                prop_assert_eq!(*i, read[0].0 + k as u64);
            }
        }
    }

    #[test]
    fn records_with_valid_checksums_and_any_payload_open_or_are_refused(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..128), 1..6),
        last_purged in proptest::option::of(0u64..8),
    ) {
        // A payload that is not an entry (a bug, or damage the CRC missed) is cut as a torn
        // tail or refused.
        let dir = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = payloads.iter().flat_map(|p| record(p)).collect();
        std::fs::write(dir.path().join(segment_name(0)), bytes).unwrap();
        let _ = open_and_read(dir.path(), last_purged);
    }
}

/// Entries with valid checksums whose indices are at the end of the `u64` range: an error or
/// a log, never an overflow panic in `Wal::open`.
#[test]
fn an_index_at_the_end_of_the_range_is_refused_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let bytes: Vec<u8> = [u64::MAX, 0].iter().flat_map(|&i| record(&entry(i, 0))).collect();
    std::fs::write(dir.path().join(segment_name(0)), bytes).unwrap();
    let _ = open_and_read(dir.path(), None);
}

/// The same for a purge point of `u64::MAX` (read from the database, which a damaged file
/// can hold) in an empty log directory.
#[test]
fn a_purge_point_at_the_end_of_the_range_is_refused_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let _ = open_and_read(dir.path(), Some(u64::MAX));
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: ProptestConfig::default().cases.div_ceil(4),
        ..ProptestConfig::default()
    })]

    /// Damage to an older segment is refused, never a log that silently lost its start: an
    /// older segment cut to nothing (or to a record boundary before its first entry) opens as
    /// a log beginning at the next segment's first entry although nothing was purged.
    /// `Wal::open` treats a segment that is empty, or does not start at the index its name
    /// says, while a later segment exists, as damage and cuts the log there.
    #[test]
    fn damage_in_an_older_segment_never_loses_the_start_of_the_log(
        n in 2u64..16,
        split in any::<usize>(),
        d in arb_damage(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let payloads = two_segments(dir.path(), n, split, &d);
        if let Ok(read) = open_and_read(dir.path(), None) {
            prop_assert_eq!(&read[..], &payloads[..read.len()]);
        }
    }
}
