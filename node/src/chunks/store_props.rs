//! Property tests of reading chunk files as a damaged disk leaves them: whatever a chunk's
//! file (raw or `.zst`) holds, [`ChunkStore::get`] answers the chunk's original bytes or an
//! error, never other bytes and never a panic.
//!
//! Only the store's public API is used (`open`, `put`, `path_of`, `root`, `get`, `remove`),
//! so that this module outlives a rewrite of `store.rs`. One store per property (opening one
//! makes and syncs 256 directories); each case uses chunks of its own.

#![allow(clippy::unwrap_used)]

use proptest::prelude::*;

use crate::damage_props::{damage, Damage};
use proptest::test_runner::{TestCaseError, TestRunner};

use super::store::{chunk_id, to_hex, ChunkError, ChunkStore};

fn run<S: Strategy>(strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>) {
    let mut runner = TestRunner::new(ProptestConfig::default());
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{e}");
    }
}

fn store() -> (tempfile::TempDir, ChunkStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = ChunkStore::open(dir.path()).unwrap();
    (dir, store)
}

/// Chunk bytes that zstd shrinks (so `put` stores them compressed) or not.
fn arb_chunk() -> impl Strategy<Value = (Vec<u8>, bool)> {
    (
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 1..2048),
            (any::<u8>(), 64usize..8192).prop_map(|(b, n)| vec![b; n]),
            "[ab]{64,4096}".prop_map(String::into_bytes),
        ],
        any::<bool>(),
    )
}

/// Bytes of a zstd frame or block header set to their largest values, or any.
fn arb_damage() -> impl Strategy<Value = Damage> {
    crate::damage_props::arb_damage(prop_oneof![
        Just(vec![0xff; 8]),
        proptest::collection::vec(any::<u8>(), 1..8)
    ])
}

#[test]
fn random_file_contents_are_never_served() {
    let (_dir, store) = store();
    run(
        (
            any::<[u8; 32]>(),
            proptest::collection::vec(any::<u8>(), 0..4096),
            any::<bool>(),
        ),
        |(id, bytes, zst)| {
            let name = if zst {
                format!("{}.zst", to_hex(&id))
            } else {
                to_hex(&id)
            };
            let path = store.root().join(format!("{:02x}", id[0])).join(name);
            std::fs::write(&path, &bytes).unwrap();
            let got = store.get(&id);
            store.remove(&id).unwrap();
            prop_assert!(
                matches!(got, Err(ChunkError::Corrupt { .. })),
                "{:?}",
                got.map(|b| b.len())
            );
            Ok(())
        },
    );
}

#[test]
fn a_damaged_chunk_file_is_served_intact_or_refused() {
    let (_dir, store) = store();
    run((arb_chunk(), arb_damage()), |((data, compress), d)| {
        let id = chunk_id(&data);
        store.put(&id, &data, compress).unwrap();
        let path = store.path_of(&id).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, damage(bytes, &d)).unwrap();
        let got = store.get(&id);
        store.remove(&id).unwrap();
        match got {
            Ok(b) => prop_assert_eq!(&b[..], &data[..], "served bytes that are not the chunk"),
            Err(e) => prop_assert!(matches!(e, ChunkError::Corrupt { .. }), "{}", e),
        }
        Ok(())
    });
}

#[test]
fn a_zstd_frame_declaring_a_huge_size_is_refused() {
    // Magic, a descriptor with an 8-byte content size and a single segment, the size, then
    // one raw block of 4 bytes: a well-formed frame that claims more than a chunk may hold.
    // (u64::MAX is zstd's "size unknown": that frame is just the 4 bytes, which is fine.)
    let (_dir, store) = store();
    for size in [1u64 << 40, 1 << 32, 16 << 20 | 1, 5, u64::MAX - 1] {
        let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0xe0];
        frame.extend_from_slice(&size.to_le_bytes());
        frame.extend_from_slice(&[0x21, 0x00, 0x00, 1, 2, 3, 4]);
        let id = chunk_id(&[1, 2, 3, 4]);
        let path = store
            .root()
            .join(format!("{:02x}", id[0]))
            .join(format!("{}.zst", to_hex(&id)));
        std::fs::write(&path, &frame).unwrap();
        let got = store.get(&id);
        store.remove(&id).unwrap();
        assert!(matches!(got, Err(ChunkError::Corrupt { .. })), "size {size}: {got:?}");
    }
}
