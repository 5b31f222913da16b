//! Streaming content-defined chunking (FastCDC 2020 style, gear hash with normalized chunking).
//!
//! Owns: where an object's byte stream is cut into chunks. It does no I/O, knows nothing of
//! chunk ids or the disk, and must not grow any dependency on Raft or the network. It is a
//! crate of its own because both sides cut: a node cuts every upload, and the SDK cuts a
//! changed file so that it can send only the chunks the key's previous version lacks (the
//! two must agree on every boundary, so they share this code).
//!
//! # Why not the `fastcdc` crate
//!
//! `fastcdc` 3 chunks a whole slice or pulls from an `io::Read`; neither fits a server that is
//! *pushed* message-sized pieces of an upload. Re-running its cut function over a growing
//! buffer after every push would re-hash the pending bytes each time (quadratic for small
//! pushes), and its constructor asserts (panics) on parameters outside its own table. The
//! algorithm is small, so this module implements it with a resumable state (position in the
//! current chunk and the rolling hash): every byte is hashed exactly once and copied exactly
//! once, whatever the push sizes.
//!
//! # The cut rule (part of the on-disk format)
//!
//! For a chunk starting at offset 0 the gear hash `h = (h << 1) + GEAR[byte]` is rolled from
//! byte `min - 64` on, so the 64-byte window is full at `min` (a byte shifted out 64 times no
//! longer affects a 64-bit gear hash, so skipping earlier bytes changes no cut). After the byte
//! that makes the chunk `n` bytes long, the chunk ends if
//!
//! - `min <= n < avg` and `h < u64::MAX / (2 * s)` (strict: one candidate per `2s` bytes), or
//! - `avg <= n < max` and `h < u64::MAX / (s / 2)` (loose: one candidate per `s / 2` bytes), or
//! - `n == max`.
//!
//! This is FastCDC's normalized chunking at level 1 (the `fastcdc` crate's default), with
//! thresholds instead of bit masks so the spacing `s` need not be a power of two:
//! `s = (avg - min) / 1.16`, which solves `2(1 - e^(-x/2)) + e^(-x/2)/2 = x` for
//! `x = (avg - min) / s` and so makes the mean chunk size come out near `avg` (1.0 MiB
//! measured for the defaults) instead of `min + avg`. The last chunk of an object is whatever
//! remains.
//!
//! The thresholds are nested (every strict candidate is a loose one), so a cut that one
//! chunking makes is a candidate for any other: after an edit the chunking falls back in step
//! with the original within a chunk or two. Level 2 gives tighter sizes but denser loose
//! candidates, which delays that resynchronisation: over 30 seeded 1% overwrites of 64 MiB,
//! level 1 stored 3.3% of the object as new chunks on average (worst 5.0%), level 2 up to 9%
//! (12% with power-of-two masks).
//!
//! Changing the gear table, the thresholds or this rule changes every boundary and so defeats
//! deduplication against everything already stored: `golden_boundaries_are_stable` pins it.

use std::fmt;

use bytes::Bytes;

/// Smallest `min` accepted: the rolling hash window is 64 bytes and needs a full window.
pub const CHUNK_SIZE_MIN_BYTES: usize = 64;

/// Largest `max` accepted: matches the chunk store's limit.
pub const CHUNK_SIZE_MAX_BYTES: usize = 16 * 1024 * 1024;

/// Bytes of history the gear hash depends on (it is shifted left one bit per byte).
const WINDOW_BYTES: usize = 64;

/// Normalization level: candidates are `2^level` times rarer than the spacing before `avg`
/// and `2^level` times denser after it.
const NORMALIZATION_LEVEL: u32 = 1;

/// `s = (avg - min) * SPACING_NUM / SPACING_DEN`: see the module doc for where 1.16 comes from.
const SPACING_NUM: u64 = 100;
const SPACING_DEN: u64 = 116;

/// Seed of the gear table ("ARK_CDC1"). Never change it: see the module doc.
const GEAR_SEED: u64 = 0x4152_4B5F_4344_4331;

/// The gear table: 256 pseudo-random 64-bit values from splitmix64, computed at compile time so
/// that the table is fixed by this source and not by any crate's version.
static GEAR: [u64; 256] = gear_table();

const fn gear_table() -> [u64; 256] {
    let mut table = [0u64; 256];
    let mut state = GEAR_SEED;
    let mut i = 0;
    while i < 256 {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        table[i] = z ^ (z >> 31);
        i += 1;
    }
    table
}

/// Why a set of chunker parameters was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamsError {
    /// `min` is below the rolling-hash window.
    #[error("chunk size min {min} is below {CHUNK_SIZE_MIN_BYTES} bytes; raise it")]
    MinTooSmall {
        /// The `min` given.
        min: usize,
    },
    /// The sizes are not ordered `min <= avg <= max`.
    #[error("chunk sizes must satisfy min <= avg <= max, got min {min}, avg {avg}, max {max}")]
    NotOrdered {
        /// The `min` given.
        min: usize,
        /// The `avg` given.
        avg: usize,
        /// The `max` given.
        max: usize,
    },
    /// `max` is above what the chunk store accepts.
    #[error("chunk size max {max} is above the {CHUNK_SIZE_MAX_BYTES}-byte limit; lower it")]
    MaxTooLarge {
        /// The `max` given.
        max: usize,
    },
}

/// Chunk size bounds in bytes. Every chunk but an object's last is within `[min, max]`; sizes
/// cluster around `avg`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkerParams {
    /// Smallest chunk (except an object's last), in bytes.
    pub min: usize,
    /// Target mean chunk size, in bytes.
    pub avg: usize,
    /// Largest chunk, in bytes: a cut is forced here.
    pub max: usize,
}

impl Default for ChunkerParams {
    /// 256 KiB / 1 MiB / 4 MiB.
    fn default() -> Self {
        Self {
            min: 256 * 1024,
            avg: 1024 * 1024,
            max: 4 * 1024 * 1024,
        }
    }
}

impl ChunkerParams {
    /// Checks that `64 <= min <= avg <= max <= 16 MiB`.
    pub fn validate(&self) -> Result<(), ParamsError> {
        if self.min < CHUNK_SIZE_MIN_BYTES {
            return Err(ParamsError::MinTooSmall { min: self.min });
        }
        if !(self.min <= self.avg && self.avg <= self.max) {
            return Err(ParamsError::NotOrdered {
                min: self.min,
                avg: self.avg,
                max: self.max,
            });
        }
        if self.max > CHUNK_SIZE_MAX_BYTES {
            return Err(ParamsError::MaxTooLarge { max: self.max });
        }
        Ok(())
    }
}

/// Incremental chunker: feed it an object's bytes in pieces of any size with [`Chunker::push`],
/// then call [`Chunker::finish`]. The chunks are the same as for one push of the whole object.
///
/// Memory: it buffers only the current, not yet cut chunk (fewer than `max` bytes); each byte
/// is copied once, into the allocation of the chunk that is returned.
pub struct Chunker {
    params: ChunkerParams,
    /// A chunk of length in `[min, avg)` ends where the hash is below this.
    threshold_strict: u64,
    /// A chunk of length in `[avg, max)` ends where the hash is below this.
    threshold_loose: u64,
    /// Bytes of the current chunk already scanned; always shorter than `params.max`.
    pending: Vec<u8>,
    /// Length of the current chunk scanned so far (the pending bytes plus any part of the
    /// slice being scanned).
    pos: usize,
    /// Gear hash of the current chunk so far.
    hash: u64,
}

impl fmt::Debug for Chunker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chunker")
            .field("params", &self.params)
            .field("pending_len", &self.pending.len())
            .finish()
    }
}

impl Chunker {
    /// A chunker with the given bounds, or why they are refused.
    pub fn new(params: ChunkerParams) -> Result<Self, ParamsError> {
        params.validate()?;
        // validate() bounds avg - min by 16 MiB, so neither shift can overflow; the floor keeps
        // the loose spacing non-zero when avg is (nearly) min.
        let spacing = ((params.avg - params.min) as u64 * SPACING_NUM / SPACING_DEN).max(WINDOW_BYTES as u64);
        Ok(Self {
            params,
            threshold_strict: u64::MAX / (spacing << NORMALIZATION_LEVEL),
            threshold_loose: u64::MAX / (spacing >> NORMALIZATION_LEVEL),
            pending: Vec::new(),
            pos: 0,
            hash: 0,
        })
    }

    /// The bounds this chunker cuts with.
    pub fn params(&self) -> ChunkerParams {
        self.params
    }

    /// Bytes held for the chunk not yet cut (always fewer than `max`).
    pub fn buffered_len(&self) -> usize {
        self.pending.len()
    }

    /// Feeds the next bytes of the object; returns every chunk completed by them, in order.
    pub fn push(&mut self, data: &[u8]) -> Vec<Bytes> {
        let mut chunks = Vec::new();
        let mut rest = data;
        while let Some(cut) = self.scan(rest) {
            let (head, tail) = rest.split_at(cut);
            chunks.push(self.take_chunk(head));
            rest = tail;
        }
        // No cut in `rest`, so pending + rest is shorter than max: the bound holds.
        self.reserve_pending(rest.len());
        self.pending.extend_from_slice(rest);
        assert!(
            self.pending.len() == self.pos && self.pos < self.params.max,
            "chunker invariant broken: pending {} pos {} max {}",
            self.pending.len(),
            self.pos,
            self.params.max
        );
        chunks
    }

    /// Ends the object: returns its last chunk, if any bytes are left (nothing for an empty
    /// object or one that ended exactly on a cut).
    pub fn finish(mut self) -> Vec<Bytes> {
        if self.pending.is_empty() {
            return Vec::new();
        }
        vec![self.take_chunk(&[])]
    }

    /// The current chunk (pending bytes followed by `head`) as one exactly sized buffer; resets
    /// the state for the next chunk.
    fn take_chunk(&mut self, head: &[u8]) -> Bytes {
        self.pos = 0;
        self.hash = 0;
        if self.pending.is_empty() {
            return Bytes::copy_from_slice(head);
        }
        self.pending.reserve_exact(head.len());
        self.pending.extend_from_slice(head);
        let mut chunk = std::mem::take(&mut self.pending);
        // Growth may have over-allocated; a shrinking realloc is usually done in place.
        chunk.shrink_to_fit();
        Bytes::from(chunk)
    }

    /// Grows `pending` for `extra` more bytes, doubling (for amortized O(1) appends of small
    /// pushes) but never beyond `max`, so the buffer's capacity keeps the memory bound.
    fn reserve_pending(&mut self, extra: usize) {
        let needed = self.pending.len() + extra;
        if needed <= self.pending.capacity() {
            return;
        }
        let target = needed
            .max(self.pending.capacity().saturating_mul(2))
            .max(self.params.min)
            .min(self.params.max)
            .max(needed);
        self.pending.reserve_exact(target - self.pending.len());
    }

    /// Rolls the hash over `data`, continuing the current chunk. Returns the number of bytes of
    /// `data` that complete the chunk, or `None` (state advanced over all of `data`) if the
    /// chunk does not end within it.
    fn scan(&mut self, data: &[u8]) -> Option<usize> {
        let ChunkerParams { min, avg, max } = self.params;
        let mut i = 0;

        // Bytes before the window cannot affect any cut: skip them.
        let warm_from = min - WINDOW_BYTES;
        if self.pos < warm_from {
            let n = (warm_from - self.pos).min(data.len());
            self.pos += n;
            i += n;
            if self.pos < warm_from {
                return None;
            }
        }

        // Fill the window; no cut can end before `min`. After this region pos == min - 1.
        let n = (min - 1).saturating_sub(self.pos).min(data.len() - i);
        let mut hash = self.hash;
        for &b in &data[i..i + n] {
            hash = (hash << 1).wrapping_add(GEAR[usize::from(b)]);
        }
        self.hash = hash;
        self.pos += n;
        i += n;
        if self.pos < min - 1 {
            return None;
        }

        // Chunk lengths min..avg use the strict threshold, avg..max the loose one.
        if let Some(cut) = self.roll_region(data, &mut i, avg - 1, self.threshold_strict) {
            return Some(cut);
        }
        if self.pos < avg - 1 {
            return None;
        }
        if let Some(cut) = self.roll_region(data, &mut i, max - 1, self.threshold_loose) {
            return Some(cut);
        }
        if self.pos < max - 1 {
            return None;
        }

        // The byte that makes the chunk `max` long forces the cut.
        if i < data.len() {
            self.pos += 1;
            return Some(i + 1);
        }
        None
    }

    /// Rolls over `data[*i..]` while the chunk is shorter than `end_pos`, comparing the hash
    /// with `threshold` after every byte. Returns the cut (offset just past the byte that ends
    /// the chunk) if found.
    fn roll_region(&mut self, data: &[u8], i: &mut usize, end_pos: usize, threshold: u64) -> Option<usize> {
        let n = end_pos.saturating_sub(self.pos).min(data.len() - *i);
        let start = *i;
        let mut hash = self.hash;
        for (k, &b) in data[start..start + n].iter().enumerate() {
            hash = (hash << 1).wrapping_add(GEAR[usize::from(b)]);
            if hash < threshold {
                self.hash = hash;
                self.pos += k + 1;
                *i = start + k + 1;
                return Some(*i);
            }
        }
        self.hash = hash;
        self.pos += n;
        *i = start + n;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, RngCore, SeedableRng};
    use std::collections::HashSet;

    const MIB: usize = 1024 * 1024;

    fn small() -> ChunkerParams {
        ChunkerParams {
            min: 64,
            avg: 256,
            max: 1024,
        }
    }

    fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        StdRng::seed_from_u64(seed).fill_bytes(&mut data);
        data
    }

    /// Input independent of the `rand` crate's version, for the golden test.
    fn splitmix_bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut state = seed;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        out.truncate(len);
        out
    }

    fn chunk_whole(params: ChunkerParams, data: &[u8]) -> Vec<Bytes> {
        let mut chunker = Chunker::new(params).unwrap();
        let mut chunks = chunker.push(data);
        chunks.extend(chunker.finish());
        chunks
    }

    fn chunk_split(params: ChunkerParams, data: &[u8], rng: &mut StdRng, max_push: usize) -> Vec<Bytes> {
        let mut chunker = Chunker::new(params).unwrap();
        let mut chunks = Vec::new();
        let mut off = 0;
        while off < data.len() {
            let n = rng.gen_range(1..=max_push).min(data.len() - off);
            chunks.extend(chunker.push(&data[off..off + n]));
            assert!(chunker.buffered_len() < params.max);
            assert!(chunker.pending.capacity() <= params.max);
            off += n;
        }
        chunks.extend(chunker.finish());
        chunks
    }

    fn lengths(chunks: &[Bytes]) -> Vec<usize> {
        chunks.iter().map(Bytes::len).collect()
    }

    fn assert_well_formed(params: ChunkerParams, data: &[u8], chunks: &[Bytes]) {
        let joined: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert!(joined == data, "concatenated chunks differ from the input");
        for (i, c) in chunks.iter().enumerate() {
            assert!(c.len() <= params.max, "chunk {i} is {} bytes", c.len());
            assert!(!c.is_empty(), "chunk {i} is empty");
            if i + 1 < chunks.len() {
                assert!(c.len() >= params.min, "chunk {i} is {} bytes", c.len());
            }
        }
    }

    #[test]
    fn params_validation() {
        assert_eq!(ChunkerParams::default().validate(), Ok(()));
        assert_eq!(small().validate(), Ok(()));
        let p = |min, avg, max| ChunkerParams { min, avg, max };
        assert_eq!(p(63, 256, 1024).validate(), Err(ParamsError::MinTooSmall { min: 63 }));
        assert!(matches!(
            p(512, 256, 1024).validate(),
            Err(ParamsError::NotOrdered { .. })
        ));
        assert!(matches!(
            p(64, 2048, 1024).validate(),
            Err(ParamsError::NotOrdered { .. })
        ));
        assert_eq!(
            p(64, 256, 16 * MIB + 1).validate(),
            Err(ParamsError::MaxTooLarge { max: 16 * MIB + 1 })
        );
        assert_eq!(p(64, 64, 64).validate(), Ok(()));
        assert_eq!(p(64, 16 * MIB, 16 * MIB).validate(), Ok(()));
        assert!(Chunker::new(p(0, 0, 0)).is_err());
    }

    #[test]
    fn empty_input_gives_no_chunk() {
        assert!(chunk_whole(ChunkerParams::default(), &[]).is_empty());
        let mut chunker = Chunker::new(small()).unwrap();
        assert!(chunker.push(&[]).is_empty());
        assert!(chunker.push(&[]).is_empty());
        assert!(chunker.finish().is_empty());
    }

    #[test]
    fn tiny_input_is_one_chunk() {
        for len in [1, 10, 63, 64, 65] {
            let data = random_bytes(len as u64, len);
            let chunks = chunk_whole(small(), &data);
            assert_eq!(lengths(&chunks), vec![len]);
            assert_eq!(&chunks[0][..], &data[..]);
        }
        let data = random_bytes(7, 100_000);
        assert_eq!(lengths(&chunk_whole(ChunkerParams::default(), &data)), vec![100_000]);
    }

    #[test]
    fn chunks_are_within_bounds_and_concatenate_to_input() {
        let data = random_bytes(1, 4 * MIB);
        let chunks = chunk_whole(small(), &data);
        assert_well_formed(small(), &data, &chunks);
        let mean = data.len() / chunks.len();
        println!("small params: {} chunks, mean {mean} bytes", chunks.len());
        assert!((230..=290).contains(&mean), "mean chunk size {mean}");

        let data = random_bytes(2, 48 * MIB);
        let params = ChunkerParams::default();
        let chunks = chunk_whole(params, &data);
        assert_well_formed(params, &data, &chunks);
        let mean = data.len() / chunks.len();
        println!("default params: {} chunks, mean {mean} bytes", chunks.len());
        assert!((MIB * 8 / 10..=MIB * 12 / 10).contains(&mean), "mean chunk size {mean}");
    }

    #[test]
    fn degenerate_params_cut_at_max() {
        let params = ChunkerParams {
            min: 64,
            avg: 64,
            max: 64,
        };
        let data = random_bytes(8, 10_000);
        let chunks = chunk_whole(params, &data);
        assert_well_formed(params, &data, &chunks);
        assert!(chunks[..chunks.len() - 1].iter().all(|c| c.len() == 64));
        let params = ChunkerParams {
            min: 64,
            avg: 64,
            max: 1024,
        };
        let chunks = chunk_whole(params, &data);
        assert_well_formed(params, &data, &chunks);
    }

    #[test]
    fn low_entropy_input_respects_bounds() {
        for byte in [0u8, 0xff] {
            let data = vec![byte; 3 * MIB + 17];
            for params in [small(), ChunkerParams::default()] {
                let chunks = chunk_whole(params, &data);
                assert_well_formed(params, &data, &chunks);
            }
        }
    }

    #[test]
    fn boundaries_do_not_depend_on_push_sizes_small_input() {
        let mut rng = StdRng::seed_from_u64(3);
        let data = random_bytes(3, 32 * 1024);
        let whole = chunk_whole(small(), &data);
        assert!(whole.len() > 20);
        // One byte at a time.
        assert_eq!(chunk_split(small(), &data, &mut rng, 1), whole);
        for max_push in [2, 7, 100, 1000, 5000, 40_000] {
            assert_eq!(
                chunk_split(small(), &data, &mut rng, max_push),
                whole,
                "max_push {max_push}"
            );
        }
    }

    #[test]
    fn boundaries_do_not_depend_on_push_sizes_big_input() {
        let mut rng = StdRng::seed_from_u64(4);
        let params = ChunkerParams::default();
        let data = random_bytes(4, 24 * MIB + 12345);
        let whole = chunk_whole(params, &data);
        assert_well_formed(params, &data, &whole);
        for max_push in [4096, 64 * 1024, 3 * MIB, 9 * MIB, 30 * MIB] {
            let split = chunk_split(params, &data, &mut rng, max_push);
            assert!(lengths(&split) == lengths(&whole), "max_push {max_push}");
            assert!(split == whole, "max_push {max_push}");
        }
    }

    #[test]
    fn edit_in_the_middle_keeps_most_chunks() {
        let params = ChunkerParams::default();
        let len = 64 * MIB;
        let original = random_bytes(5, len);
        let mut edited = original.clone();
        let region = len / 100;
        let offset = len / 2 - region / 3;
        StdRng::seed_from_u64(6).fill_bytes(&mut edited[offset..offset + region]);

        let ids = |chunks: &[Bytes]| -> HashSet<Vec<u8>> {
            chunks
                .iter()
                .map(|c| ring::digest::digest(&ring::digest::SHA256, c).as_ref().to_vec())
                .collect()
        };
        let before = ids(&chunk_whole(params, &original));
        let after = chunk_whole(params, &edited);
        let new_bytes: usize = after
            .iter()
            .filter(|c| !before.contains(ring::digest::digest(&ring::digest::SHA256, c).as_ref()))
            .map(Bytes::len)
            .sum();
        let new_fraction = new_bytes as f64 / len as f64;
        println!(
            "1% edit at offset {offset}: {new_bytes} new bytes in {} chunks = {:.2}% of the object",
            after.len(),
            new_fraction * 100.0
        );
        assert!(new_fraction <= 0.05, "{:.2}% new", new_fraction * 100.0);
        assert!(new_bytes >= region, "the edited region itself must be new");
        assert_eq!(ids(&after).len(), after.len(), "random data should not repeat chunks");
    }

    #[test]
    fn golden_boundaries_are_stable() {
        // Changing these lengths means changing the cut rule: existing chunks would stop
        // deduplicating against new uploads. Do not update them casually.
        let data = splitmix_bytes(42, 6000);
        let got = lengths(&chunk_whole(small(), &data));
        println!("golden small: {got:?}");
        assert_eq!(got, GOLDEN_SMALL);
        let data = splitmix_bytes(43, 12 * MIB);
        let got = lengths(&chunk_whole(ChunkerParams::default(), &data));
        println!("golden default: {got:?}");
        assert_eq!(got, GOLDEN_DEFAULT);
    }

    const GOLDEN_SMALL: [usize; 24] = [
        271, 380, 282, 339, 156, 74, 359, 150, 470, 122, 326, 369, 78, 185, 77, 258, 194, 363, 172, 285, 146, 139, 725,
        80,
    ];
    const GOLDEN_DEFAULT: [usize; 16] = [
        682678, 1051809, 539122, 1142558, 394858, 352000, 867224, 372487, 1312381, 1132163, 909755, 338408, 1085885,
        1228427, 1061291, 111866,
    ];
}
