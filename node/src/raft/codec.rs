//! Ark's one binary codec, for everything it writes with serde: Raft messages and forwarded
//! writes inside the peer envelope, log entries in the segment files, and every value in the
//! database (vote, purge point, state machine and object tables, snapshot metadata), and the
//! snapshot bodies a leader sends.
//!
//! Owns the byte format and its limits; must not know what the values mean, nor where they
//! go (the envelope's codec tag is `raft/network.rs`'s, the tables are their owners').
//!
//! A value is [`TAG`] followed by its postcard encoding (varint integers, trailing bytes
//! allowed). Releases before this one wrote bincode 1 (fixed-width integers) without a tag;
//! such bytes still decode, through [`bincode1`], so a data dir written by them keeps
//! working after an in-place upgrade and its values are rewritten in the new format as they
//! change. The tag cannot be mistaken for the start of a legacy value: every type Ark
//! stores begins with an option or bool byte (0 or 1), an enum's `u32` variant index, a
//! `u32` below 2^24, or a `u64` counter, length, time in ms or size in bytes below 2^56,
//! and the tag's first byte is neither 0 nor 1, its fourth and eighth bytes are not 0.

pub mod bincode1;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// What every value this release writes begins with ("Ark" postcard, format 1).
pub const TAG: [u8; 8] = *b"\xa7Ark\xc0pc\x01";

/// Most bytes one encoded value may take when [`decode`]d. Every such value travels in one
/// peer frame (a Raft message, a forwarded write, a log entry in an AppendEntries) or was
/// written by this node, so nothing legitimate is larger than a frame. Snapshots, which can
/// be, are decoded with their own size as the limit ([`decode_with_limit`]).
pub const DECODE_BYTES_MAX: u64 = crate::net::FRAME_BYTES_MAX as u64;

/// Why a value did not encode or decode.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The input is larger than the decoder's limit; it was not read.
    #[error("encoded value of {len} bytes is over the limit of {limit}")]
    TooLarge {
        /// Bytes offered.
        len: u64,
        /// Bytes allowed.
        limit: u64,
    },
    /// postcard refused the value or the bytes.
    #[error("postcard value: {0}")]
    Postcard(#[from] postcard::Error),
    /// Untagged bytes that are not a legacy value of the type either.
    #[error(transparent)]
    Legacy(#[from] bincode1::Bincode1Error),
}

/// Encodes a value for the wire, the log or the database: [`TAG`], then postcard.
pub fn encode<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&TAG);
    Ok(postcard::to_extend(v, out)?)
}

/// How many bytes [`encode`] writes for `v`, without writing them.
pub fn encoded_len<T: Serialize + ?Sized>(v: &T) -> Result<usize, CodecError> {
    let body = postcard::serialize_with_flavor::<T, _, usize>(v, postcard::ser_flavors::Size::default())?;
    Ok(TAG.len() + body)
}

/// Decodes a value written by [`encode`] or by a release that wrote bincode 1, from bytes a
/// peer or a damaged file may have made: any input gives a value or an error, never a panic,
/// and an input over [`DECODE_BYTES_MAX`] is refused unread.
pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, CodecError> {
    decode_with_limit(b, DECODE_BYTES_MAX)
}

/// [`decode`] with another limit on the input's size.
///
/// The limit is checked on the input. What bounds the memory a decode allocates is the
/// input itself: both formats check a byte string's or string's length against the bytes
/// left before copying, and serde preallocates at most 1 MiB for a sequence whatever length
/// it declares (`node/tests/decode_alloc.rs` measures both).
pub fn decode_with_limit<T: DeserializeOwned>(b: &[u8], limit: u64) -> Result<T, CodecError> {
    if b.len() as u64 > limit {
        return Err(CodecError::TooLarge {
            len: b.len() as u64,
            limit,
        });
    }
    match b.strip_prefix(&TAG) {
        Some(body) => Ok(postcard::from_bytes(body)?),
        None => Ok(bincode1::from_slice(b)?),
    }
}

#[cfg(test)]
pub(crate) mod legacy_tests;
