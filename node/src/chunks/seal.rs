//! Encryption at rest, the pure half: sealing a chunk's bytes under a namespace's data key,
//! opening them again, and wrapping data keys under the cluster's key-encryption key (KEK).
//!
//! A sealed chunk is `format (1) | flags (1) | generation (4, LE) | nonce (12) |
//! AES-256-GCM ciphertext | tag (16)`; the first six bytes are the AEAD's associated data,
//! so neither the generation nor the compression flag can be changed unnoticed. The nonce is
//! derived from the bytes being sealed (HMAC-SHA256 under a key derived from the data key,
//! cut to 96 bits; a synthetic IV as in SIV), so sealing is deterministic: the same chunk in
//! the same namespace and generation seals to the same bytes and therefore to the same chunk
//! id (SHA-256 of the sealed bytes), which keeps deduplication inside a namespace, while
//! another namespace (another data key) gives other bytes and another id. What that reveals
//! (that two chunks of one namespace are equal) is written down in `docs/security.md`.
//!
//! A wrapped data key is `nonce (12, random) | ciphertext (32) | tag (16)` under the KEK,
//! with the namespace's name and the generation as associated data, so a wrapped key cannot
//! be moved to another namespace or generation. A KEK is named by its [`KekId`], the first
//! 8 bytes of a SHA-256 over it, which says which KEK is needed without revealing it.
//!
//! Owns the byte formats and the cryptography. Must not touch: files, Raft, the network
//! (callers hand in the keys and store the results).

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use super::MAX_CHUNK;

/// Bytes of a data key and of a KEK.
pub const KEY_BYTES: usize = 32;
/// The only sealed-chunk format this release writes.
pub const FORMAT_V1: u8 = 1;
/// Flag bit: the plaintext was zstd-compressed before sealing.
const FLAG_ZSTD: u8 = 1;
/// `format | flags | generation`: the associated data.
const AAD_LEN: usize = 6;
/// Header bytes before the ciphertext.
pub const HEADER_BYTES: usize = AAD_LEN + NONCE_LEN;
/// Tag bytes after the ciphertext.
pub const TAG_BYTES: usize = 16;
/// Bytes a wrapped data key takes.
pub const WRAPPED_KEY_BYTES: usize = NONCE_LEN + KEY_BYTES + TAG_BYTES;

/// The name of a KEK: the first 8 bytes of SHA-256("ark-kek-id-v1" | KEK).
pub type KekId = [u8; 8];

/// Why sealing, opening, wrapping or unwrapping failed. Never partial output.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// The bytes are too short or of a format this release does not know.
    #[error("not a sealed chunk: {0}")]
    Format(String),
    /// The authentication tag did not match: a wrong key or tampered bytes.
    #[error("authentication failed: wrong key or tampered ciphertext")]
    Auth,
    /// A sealed chunk's plaintext does not fit the limits, or its compressed body is bad.
    #[error("sealed chunk body: {0}")]
    Body(String),
    /// A KEK file's content is not 32 bytes (raw) or 64 hex digits.
    #[error("a KEK is 32 random bytes, raw or as 64 hex digits: {0}")]
    BadKek(String),
    /// The system's random source failed.
    #[error("random source failed")]
    Random,
}

/// A 256-bit secret. Its `Debug` shows nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret([u8; KEY_BYTES]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Secret {
    /// 32 fresh bytes from the system's random source.
    pub fn random() -> Result<Self, SealError> {
        let mut k = [0u8; KEY_BYTES];
        SystemRandom::new().fill(&mut k).map_err(|_| SealError::Random)?;
        Ok(Self(k))
    }

    /// A secret from its 32 bytes.
    pub fn from_bytes(b: [u8; KEY_BYTES]) -> Self {
        Self(b)
    }
}

/// A key-encryption key with its name.
#[derive(Clone, Debug)]
pub struct Kek {
    key: Secret,
    id: KekId,
}

impl Kek {
    /// A KEK from a file's or variable's content: 32 raw bytes, or 64 hex digits with
    /// surrounding whitespace ignored.
    pub fn parse(content: &[u8]) -> Result<Self, SealError> {
        let trimmed = std::str::from_utf8(content).map(str::trim).ok();
        let key: [u8; KEY_BYTES] = match trimmed {
            Some(t) if t.len() == 2 * KEY_BYTES => {
                super::from_hex(t).ok_or_else(|| SealError::BadKek("64 characters that are not hex".into()))?
            }
            _ => content
                .try_into()
                .map_err(|_| SealError::BadKek(format!("got {} bytes", content.len())))?,
        };
        if key.iter().all(|b| *b == 0) {
            return Err(SealError::BadKek("all zero".into()));
        }
        Ok(Self::from_secret(Secret(key)))
    }

    /// A KEK from its 32 bytes.
    pub fn from_secret(key: Secret) -> Self {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"ark-kek-id-v1");
        ctx.update(&key.0);
        let d = ctx.finish();
        let mut id = [0u8; 8];
        id.copy_from_slice(&d.as_ref()[..8]);
        Self { key, id }
    }

    /// Its name.
    pub fn id(&self) -> KekId {
        self.id
    }

    /// Wraps data key `dk` of `ns`'s generation `generation` (random nonce).
    pub fn wrap(&self, ns: &str, generation: u32, dk: &Secret) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut out = Vec::with_capacity(WRAPPED_KEY_BYTES);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&dk.0);
        let tag = aead_key(&self.key)
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(wrap_aad(ns, generation)),
                &mut out[NONCE_LEN..],
            )
            .map_err(|_| SealError::Auth)?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// The data key inside `wrapped`, if this KEK wrapped it for `ns`'s `generation`.
    pub fn unwrap(&self, ns: &str, generation: u32, wrapped: &[u8]) -> Result<Secret, SealError> {
        if wrapped.len() != WRAPPED_KEY_BYTES {
            return Err(SealError::Format(format!(
                "a wrapped key is {WRAPPED_KEY_BYTES} bytes, not {}",
                wrapped.len()
            )));
        }
        let nonce = Nonce::try_assume_unique_for_key(&wrapped[..NONCE_LEN]).map_err(|_| SealError::Auth)?;
        let mut buf = wrapped[NONCE_LEN..].to_vec();
        let plain = aead_key(&self.key)
            .open_in_place(nonce, Aad::from(wrap_aad(ns, generation)), &mut buf)
            .map_err(|_| SealError::Auth)?;
        let key: [u8; KEY_BYTES] = (&*plain).try_into().map_err(|_| SealError::Auth)?;
        Ok(Secret(key))
    }
}

fn wrap_aad(ns: &str, generation: u32) -> Vec<u8> {
    let mut aad = b"ark-dk-v1\0".to_vec();
    aad.extend_from_slice(ns.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&generation.to_le_bytes());
    aad
}

fn aead_key(k: &Secret) -> LessSafeKey {
    // AES-256-GCM takes any 32 bytes; ring refuses only a wrong length.
    #[allow(clippy::expect_used)]
    let unbound = UnboundKey::new(&AES_256_GCM, &k.0).expect("a 32-byte key fits AES-256-GCM");
    LessSafeKey::new(unbound)
}

/// Lowercase hex of a KEK id, for messages.
pub fn kek_hex(id: &KekId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

/// Seals and opens the chunks of one namespace's data key generation.
pub struct ChunkSealer {
    generation: u32,
    enc: LessSafeKey,
    nonce_key: hmac::Key,
}

impl std::fmt::Debug for ChunkSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChunkSealer(generation {})", self.generation)
    }
}

impl ChunkSealer {
    /// The sealer of data key `dk`, generation `generation`. Two subkeys are derived from
    /// the data key (HMAC-SHA256 with distinct labels), one for the AEAD and one for nonces,
    /// so that the nonce never depends on the encryption key directly.
    pub fn new(dk: &Secret, generation: u32) -> Self {
        let master = hmac::Key::new(hmac::HMAC_SHA256, &dk.0);
        let derive = |label: &[u8]| {
            let t = hmac::sign(&master, label);
            let mut k = [0u8; KEY_BYTES];
            k.copy_from_slice(t.as_ref());
            Secret(k)
        };
        let enc = derive(b"ark-chunk-enc-v1");
        let nonce = derive(b"ark-chunk-nonce-v1");
        Self {
            generation,
            enc: aead_key(&enc),
            nonce_key: hmac::Key::new(hmac::HMAC_SHA256, &nonce.0),
        }
    }

    /// The generation it seals under.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Seals one chunk's plaintext, zstd-compressing it first when `compress` and that makes
    /// it smaller. Deterministic: equal inputs give equal outputs.
    pub fn seal(&self, plain: &[u8], compress: bool) -> Result<Vec<u8>, SealError> {
        if plain.len() > MAX_CHUNK {
            return Err(SealError::Body(format!(
                "{} bytes is over the chunk limit",
                plain.len()
            )));
        }
        let packed = if compress {
            zstd::bulk::compress(plain, 3).ok().filter(|z| z.len() < plain.len())
        } else {
            None
        };
        let (flags, body) = match &packed {
            Some(z) => (FLAG_ZSTD, z.as_slice()),
            None => (0, plain),
        };
        let mut aad = [0u8; AAD_LEN];
        aad[0] = FORMAT_V1;
        aad[1] = flags;
        aad[2..6].copy_from_slice(&self.generation.to_le_bytes());
        let mut mac = hmac::Context::with_key(&self.nonce_key);
        mac.update(&aad);
        mac.update(body);
        let tag = mac.sign();
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&tag.as_ref()[..NONCE_LEN]);

        let mut out = Vec::with_capacity(HEADER_BYTES + body.len() + TAG_BYTES);
        out.extend_from_slice(&aad);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(body);
        let tag = self
            .enc
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[HEADER_BYTES..],
            )
            .map_err(|_| SealError::Auth)?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Opens a sealed chunk: its plaintext, or an error (never unauthenticated bytes).
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let (flags, generation) = parse_header(sealed)?;
        if generation != self.generation {
            return Err(SealError::Format(format!(
                "sealed under generation {generation}, this key is generation {}",
                self.generation
            )));
        }
        let mut aad = [0u8; AAD_LEN];
        aad.copy_from_slice(&sealed[..AAD_LEN]);
        let nonce = Nonce::try_assume_unique_for_key(&sealed[AAD_LEN..HEADER_BYTES]).map_err(|_| SealError::Auth)?;
        let mut buf = sealed[HEADER_BYTES..].to_vec();
        let plain_len = self
            .enc
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .map_err(|_| SealError::Auth)?
            .len();
        buf.truncate(plain_len);
        if flags & FLAG_ZSTD != 0 {
            return zstd::bulk::decompress(&buf, MAX_CHUNK).map_err(|e| SealError::Body(e.to_string()));
        }
        Ok(buf)
    }
}

/// The data key generation a sealed chunk names, read from its header (not authenticated
/// until [`ChunkSealer::open`] succeeds).
pub fn generation_of(sealed: &[u8]) -> Result<u32, SealError> {
    parse_header(sealed).map(|(_, g)| g)
}

fn parse_header(sealed: &[u8]) -> Result<(u8, u32), SealError> {
    if sealed.len() < HEADER_BYTES + TAG_BYTES {
        return Err(SealError::Format(format!(
            "{} bytes is shorter than a header and tag",
            sealed.len()
        )));
    }
    if sealed[0] != FORMAT_V1 {
        return Err(SealError::Format(format!("unknown format {}", sealed[0])));
    }
    let flags = sealed[1];
    if flags & !FLAG_ZSTD != 0 {
        return Err(SealError::Format(format!("unknown flags {flags:#04x}")));
    }
    let mut g = [0u8; 4];
    g.copy_from_slice(&sealed[2..6]);
    Ok((flags, u32::from_le_bytes(g)))
}

/// The AEAD every sealed chunk and wrapped key uses.
pub const ALGORITHM: &str = "AES-256-GCM";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn sealer(b: u8, generation: u32) -> ChunkSealer {
        ChunkSealer::new(&Secret::from_bytes([b; 32]), generation)
    }

    #[test]
    fn seal_then_open_gives_the_plaintext_back_with_and_without_compression() {
        let s = sealer(7, 3);
        let text = b"ARK-PLAINTEXT-MARKER ".repeat(1000);
        for compress in [false, true] {
            let sealed = s.seal(&text, compress).unwrap();
            assert!(!sealed.windows(20).any(|w| w == &text[..20]), "plaintext visible");
            assert_eq!(generation_of(&sealed).unwrap(), 3);
            assert_eq!(s.open(&sealed).unwrap(), text);
            if compress {
                assert!(sealed.len() < text.len());
            } else {
                assert_eq!(sealed.len(), text.len() + HEADER_BYTES + TAG_BYTES);
            }
        }
        assert_eq!(s.open(&s.seal(b"", false).unwrap()).unwrap(), b"");
    }

    #[test]
    fn sealing_is_deterministic_per_key_and_differs_between_keys() {
        let data = vec![42u8; 5000];
        assert_eq!(
            sealer(1, 1).seal(&data, false).unwrap(),
            sealer(1, 1).seal(&data, false).unwrap()
        );
        assert_ne!(
            sealer(1, 1).seal(&data, false).unwrap(),
            sealer(2, 1).seal(&data, false).unwrap()
        );
        assert_ne!(
            sealer(1, 1).seal(&data, false).unwrap(),
            sealer(1, 2).seal(&data, false).unwrap()
        );
        // Different plaintexts under one key get different nonces.
        let a = sealer(1, 1).seal(b"a", false).unwrap();
        let b = sealer(1, 1).seal(b"b", false).unwrap();
        assert_ne!(a[AAD_LEN..HEADER_BYTES], b[AAD_LEN..HEADER_BYTES]);
    }

    #[test]
    fn a_wrong_key_or_any_flipped_bit_is_an_error_never_bytes() {
        let s = sealer(1, 1);
        let sealed = s.seal(&vec![9u8; 300], true).unwrap();
        assert_eq!(sealer(2, 1).open(&sealed), Err(SealError::Auth));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x10;
            assert!(s.open(&bad).is_err(), "flipped byte {i} opened");
        }
        for cut in 0..sealed.len() {
            assert!(s.open(&sealed[..cut]).is_err(), "cut at {cut} opened");
        }
    }

    #[test]
    fn wrapped_keys_open_only_under_their_kek_namespace_and_generation() {
        let kek = Kek::from_secret(Secret::from_bytes([5; 32]));
        let other = Kek::from_secret(Secret::from_bytes([6; 32]));
        assert_ne!(kek.id(), other.id());
        let dk = Secret::random().unwrap();
        let w = kek.wrap("ns", 1, &dk).unwrap();
        assert_eq!(w.len(), WRAPPED_KEY_BYTES);
        assert_eq!(kek.unwrap("ns", 1, &w).unwrap(), dk);
        assert_eq!(other.unwrap("ns", 1, &w), Err(SealError::Auth));
        assert_eq!(kek.unwrap("ns2", 1, &w), Err(SealError::Auth));
        assert_eq!(kek.unwrap("ns", 2, &w), Err(SealError::Auth));
        assert!(kek.unwrap("ns", 1, &w[1..]).is_err());
    }

    #[test]
    fn kek_files_are_raw_or_hex_and_nothing_else() {
        let hex = "ab".repeat(32);
        let a = Kek::parse(format!("{hex}\n").as_bytes()).unwrap();
        let b = Kek::parse(&[0xab; 32]).unwrap();
        assert_eq!(a.id(), b.id());
        assert!(Kek::parse(b"short").is_err());
        assert!(Kek::parse(&[0u8; 32]).is_err());
        assert!(Kek::parse("zz".repeat(32).as_bytes()).is_err());
    }
}
