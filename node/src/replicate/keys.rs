//! This node's keyring for encrypted namespaces: the cluster's key-encryption key (KEK)
//! read at start-up from `[encryption]` (a file or an environment variable, plus previous
//! KEKs during a KEK rotation), and the namespaces' data keys unwrapped on demand from their
//! wrapped copies in the state machine and kept only in memory.
//!
//! Owns which KEK is current, making and rewrapping key records ([`Keyring::new_keys`],
//! [`Keyring::rekey`]) and the sealers of unwrapped keys. Must not touch: chunk bytes (the
//! upload and read paths call `chunks::seal` with the sealer it hands out), Raft (callers
//! propose the records it makes), gRPC.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::chunks::seal::{kek_hex, ChunkSealer, Kek, KekId, Secret};
use crate::config::EncryptionConfig;
use crate::raft::objects::{NsKeys, WrappedKey};

/// Unwrapped data keys kept in memory at most; beyond it the cache starts again (a key is
/// unwrapped again on its next use, which costs microseconds).
const SEALERS_CACHED_MAX: usize = 4096;

/// (namespace, generation, wrapped key bytes).
type SealerKey = (String, u32, Vec<u8>);

/// Why a key could not be had; nothing was sealed, opened or changed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// This node has no KEK.
    #[error(
        "this node has no key-encryption key: add an [encryption] section with kek_file or kek_env \
         to its arkd.toml (the same KEK on every node) and restart it"
    )]
    NoKek,
    /// The KEK could not be read.
    #[error("reading the key-encryption key from {from}: {why}")]
    Read {
        /// The file or variable.
        from: String,
        /// What went wrong.
        why: String,
    },
    /// The namespace's data key is wrapped by a KEK this node does not have.
    #[error(
        "namespace {ns}'s data key (generation {generation}) is wrapped by KEK {want}, this node has {have}; \
         give the node that KEK (kek_file, or previous_kek_files during a rotation)"
    )]
    WrongKek {
        /// Namespace.
        ns: String,
        /// Generation.
        generation: u32,
        /// The KEK id the record names.
        want: String,
        /// The KEK ids this node has.
        have: String,
    },
    /// The record names this node's KEK but does not open under it.
    #[error("namespace {ns}'s data key (generation {generation}) does not open under KEK {kek}: {why}")]
    Unwrap {
        /// Namespace.
        ns: String,
        /// Generation.
        generation: u32,
        /// KEK id.
        kek: String,
        /// The cryptographic error.
        why: String,
    },
    /// A chunk names a generation the namespace does not have.
    #[error("namespace {ns} has no data key generation {generation}")]
    NoGeneration {
        /// Namespace.
        ns: String,
        /// Generation.
        generation: u32,
    },
    /// Making a key failed (the random source).
    #[error("making a data key: {0}")]
    Make(String),
}

/// The node's KEKs and the sealers of the data keys it unwrapped.
#[derive(Debug)]
pub struct Keyring {
    /// The current KEK first, then previous ones; empty when none is configured.
    keks: Vec<Kek>,
    /// (namespace, generation, wrapped bytes) → sealer: a rewrapped or recreated key is
    /// another entry, never a stale hit.
    sealers: Mutex<HashMap<SealerKey, Arc<ChunkSealer>>>,
}

impl Keyring {
    /// A keyring without a KEK: encrypted namespaces can be neither made nor read.
    pub fn none() -> Self {
        Self::with_keks(Vec::new())
    }

    /// A keyring over these KEKs, the current one first.
    pub fn with_keks(keks: Vec<Kek>) -> Self {
        Self {
            keks,
            sealers: Mutex::default(),
        }
    }

    /// Reads the KEKs `cfg` names (none when `cfg` is `None`).
    pub fn load(cfg: Option<&EncryptionConfig>) -> Result<Self, KeyError> {
        let Some(cfg) = cfg else {
            return Ok(Self::none());
        };
        let read_file = |p: &std::path::Path| -> Result<Kek, KeyError> {
            let err = |why: String| KeyError::Read {
                from: p.display().to_string(),
                why,
            };
            let b = std::fs::read(p).map_err(|e| err(e.to_string()))?;
            Kek::parse(&b).map_err(|e| err(e.to_string()))
        };
        let mut keks = Vec::new();
        match (&cfg.kek_file, &cfg.kek_env) {
            (Some(p), _) => keks.push(read_file(p)?),
            (None, Some(var)) => {
                let err = |why: String| KeyError::Read {
                    from: format!("${var}"),
                    why,
                };
                let v = std::env::var(var).map_err(|e| err(e.to_string()))?;
                keks.push(Kek::parse(v.as_bytes()).map_err(|e| err(e.to_string()))?);
            }
            (None, None) => return Err(KeyError::NoKek),
        }
        for p in &cfg.previous_kek_files {
            keks.push(read_file(p)?);
        }
        Ok(Self::with_keks(keks))
    }

    /// The current KEK's id, if there is one.
    pub fn kek_id(&self) -> Option<KekId> {
        self.keks.first().map(Kek::id)
    }

    fn current(&self) -> Result<&Kek, KeyError> {
        self.keks.first().ok_or(KeyError::NoKek)
    }

    fn have(&self) -> String {
        if self.keks.is_empty() {
            return "none".into();
        }
        self.keks
            .iter()
            .map(|k| kek_hex(&k.id()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The data key of `w`, unwrapped by whichever of this node's KEKs wrapped it.
    fn unwrap(&self, ns: &str, w: &WrappedKey) -> Result<Secret, KeyError> {
        if self.keks.is_empty() {
            return Err(KeyError::NoKek);
        }
        let kek = self
            .keks
            .iter()
            .find(|k| k.id() == w.kek_id)
            .ok_or_else(|| KeyError::WrongKek {
                ns: ns.to_string(),
                generation: w.generation,
                want: kek_hex(&w.kek_id),
                have: self.have(),
            })?;
        kek.unwrap(ns, w.generation, &w.wrapped).map_err(|e| KeyError::Unwrap {
            ns: ns.to_string(),
            generation: w.generation,
            kek: kek_hex(&w.kek_id),
            why: e.to_string(),
        })
    }

    fn wrap(&self, ns: &str, generation: u32, dk: &Secret, created_ms: u64) -> Result<WrappedKey, KeyError> {
        let kek = self.current()?;
        Ok(WrappedKey {
            generation,
            kek_id: kek.id(),
            wrapped: kek
                .wrap(ns, generation, dk)
                .map_err(|e| KeyError::Make(e.to_string()))?,
            created_ms,
        })
    }

    /// A new namespace's key record: one fresh data key (generation 1), wrapped by the
    /// current KEK. Refused without a KEK, so no encrypted namespace is made that this node
    /// could not read.
    pub fn new_keys(&self, ns: &str, now_ms: u64) -> Result<NsKeys, KeyError> {
        let dk = Secret::random().map_err(|e| KeyError::Make(e.to_string()))?;
        Ok(NsKeys {
            generations: vec![self.wrap(ns, 1, &dk, now_ms)?],
        })
    }

    /// `ns`'s key record rewrapped: every generation unwrapped (by the current or a previous
    /// KEK) and wrapped again by the current KEK; with `new_data_key`, a fresh generation at
    /// the end for new writes. No chunk is read: chunks are sealed under data keys, which
    /// do not change.
    pub fn rekey(&self, ns: &str, keys: &NsKeys, new_data_key: bool, now_ms: u64) -> Result<NsKeys, KeyError> {
        let mut generations = Vec::with_capacity(keys.generations.len() + 1);
        for w in &keys.generations {
            let dk = self.unwrap(ns, w)?;
            generations.push(self.wrap(ns, w.generation, &dk, w.created_ms)?);
        }
        if new_data_key {
            let next = keys.generations.last().map_or(1, |w| w.generation + 1);
            let dk = Secret::random().map_err(|e| KeyError::Make(e.to_string()))?;
            generations.push(self.wrap(ns, next, &dk, now_ms)?);
        }
        Ok(NsKeys { generations })
    }

    /// The sealer of `ns`'s generation `generation` (`None`: the current one).
    pub fn sealer(&self, ns: &str, keys: &NsKeys, generation: Option<u32>) -> Result<Arc<ChunkSealer>, KeyError> {
        let w = match generation {
            None => keys.current(),
            Some(g) => keys.generations.iter().find(|w| w.generation == g),
        }
        .ok_or_else(|| KeyError::NoGeneration {
            ns: ns.to_string(),
            generation: generation.unwrap_or(0),
        })?;
        let cache_key = (ns.to_string(), w.generation, w.wrapped.clone());
        if let Some(s) = self.sealers.lock().ok().and_then(|m| m.get(&cache_key).cloned()) {
            return Ok(s);
        }
        let sealer = Arc::new(ChunkSealer::new(&self.unwrap(ns, w)?, w.generation));
        if let Ok(mut m) = self.sealers.lock() {
            if m.len() >= SEALERS_CACHED_MAX {
                m.clear();
            }
            m.insert(cache_key, sealer.clone());
        }
        Ok(sealer)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn kek(b: u8) -> Kek {
        Kek::from_secret(Secret::from_bytes([b; 32]))
    }

    #[test]
    fn a_rekey_keeps_every_data_key_and_moves_it_to_the_current_kek() {
        let old = Keyring::with_keks(vec![kek(1)]);
        let keys = old.new_keys("ns", 5).unwrap();
        let sealed = old.sealer("ns", &keys, None).unwrap().seal(b"hello", false).unwrap();

        // The new KEK alone cannot open the old record, and says which KEK it needs.
        let new_only = Keyring::with_keks(vec![kek(2)]);
        let err = new_only.sealer("ns", &keys, None).unwrap_err().to_string();
        assert!(
            err.contains(&kek_hex(&kek(1).id())) && err.contains(&kek_hex(&kek(2).id())),
            "{err}"
        );

        // During the rotation (old as previous), rekey rewraps under the new one...
        let rotating = Keyring::with_keks(vec![kek(2), kek(1)]);
        let rewrapped = rotating.rekey("ns", &keys, false, 9).unwrap();
        assert_eq!(rewrapped.generations.len(), 1);
        assert_eq!(rewrapped.generations[0].kek_id, kek(2).id());
        // ...after which the new KEK alone opens the same chunks.
        let s = new_only.sealer("ns", &rewrapped, None).unwrap();
        assert_eq!(s.open(&sealed).unwrap(), b"hello");

        // A new generation seals new chunks differently; the old one still opens old ones.
        let two = new_only.rekey("ns", &rewrapped, true, 10).unwrap();
        assert_eq!(
            two.generations.iter().map(|w| w.generation).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert!(two.problem().is_none());
        let s2 = new_only.sealer("ns", &two, None).unwrap();
        assert_eq!(s2.generation(), 2);
        assert_ne!(s2.seal(b"hello", false).unwrap(), sealed);
        let s1 = new_only.sealer("ns", &two, Some(1)).unwrap();
        assert_eq!(s1.open(&sealed).unwrap(), b"hello");

        // No KEK: nothing can be made or opened.
        assert!(matches!(Keyring::none().new_keys("ns", 1), Err(KeyError::NoKek)));
        assert!(matches!(
            Keyring::none().sealer("ns", &keys, None),
            Err(KeyError::NoKek)
        ));
    }
}
