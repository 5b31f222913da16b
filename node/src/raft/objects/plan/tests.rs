//! The object rules on plain maps: reference counts, version pruning, namespaces.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use super::*;
use crate::raft::objects::{Manifest, Mode};

/// The tables as maps; [`Mem::apply`] plans a command and executes the plan on them, as the
/// redb shell does on the tables.
#[derive(Default)]
struct Mem {
    ns: BTreeMap<String, NsRecord>,
    objects: BTreeMap<(String, String, u64), ObjectRecord>,
    chunks: BTreeMap<ChunkId, ChunkRecord>,
    keys: BTreeMap<String, NsKeys>,
    rev: u64,
}

impl ObjRead for Mem {
    fn ns(&self, name: &str) -> Result<Option<NsRecord>, String> {
        Ok(self.ns.get(name).cloned())
    }

    fn versions(&self, ns: &str, key: &str) -> Result<Vec<(u64, ObjectRecord)>, String> {
        Ok(self
            .objects
            .iter()
            .filter(|((n, k, _), _)| n == ns && k == key)
            .map(|((_, _, v), r)| (*v, r.clone()))
            .collect())
    }

    fn ns_versions(&self, ns: &str) -> Result<Vec<(String, u64, ObjectRecord)>, String> {
        Ok(self
            .objects
            .iter()
            .filter(|((n, _, _), _)| n == ns)
            .map(|((_, k, v), r)| (k.clone(), *v, r.clone()))
            .collect())
    }

    fn chunk(&self, id: &ChunkId) -> Result<Option<ChunkRecord>, String> {
        Ok(self.chunks.get(id).cloned())
    }

    fn ns_count(&self) -> Result<u64, String> {
        Ok(self.ns.len() as u64)
    }

    fn ns_keys(&self, name: &str) -> Result<Option<NsKeys>, String> {
        Ok(self.keys.get(name).cloned())
    }
}

fn put_or_remove<K: Ord + Clone, V: Clone>(m: &mut BTreeMap<K, V>, changes: &BTreeMap<K, Option<V>>) {
    for (k, v) in changes {
        match v {
            Some(v) => m.insert(k.clone(), v.clone()),
            None => m.remove(k),
        };
    }
}

impl Mem {
    fn apply(&mut self, cmd: Command) -> OpResult {
        self.rev += 1;
        let (result, p) = plan(self, self.rev, 1000 + self.rev, &cmd).unwrap().unwrap();
        if result.error.is_some() {
            assert_eq!(p, ObjPlan::default(), "a refused command changes nothing");
        }
        put_or_remove(&mut self.ns, &p.ns);
        put_or_remove(&mut self.objects, &p.objects);
        put_or_remove(&mut self.chunks, &p.chunks);
        put_or_remove(&mut self.keys, &p.keys);
        result
    }

    fn ns_create(&mut self, name: &str, versions_kept: u32) {
        let policy = NsPolicy {
            copies: 1,
            min_sites: 1,
            mode: Mode::Sync,
            versions_kept,
            ..NsPolicy::default()
        };
        let r = self.apply(Command::NsCreate {
            name: name.into(),
            policy,
        });
        assert_eq!(r.error, None);
    }

    fn put(&mut self, ns: &str, key: &str, chunks: &[u8]) -> u64 {
        let r = self.apply(Command::ObjPut {
            ns: ns.into(),
            key: key.into(),
            manifest: Manifest {
                size: chunks.len() as u64,
                sha256: [0; 32],
                chunks: chunks.iter().map(|&c| ChunkRef { id: id(c), len: 1 }).collect(),
                holders: vec![1],
                created_ms: 5,
            },
        });
        assert_eq!(r.error, None);
        r.version
    }

    fn delete(&mut self, ns: &str, key: &str) -> OpResult {
        self.apply(Command::ObjDelete {
            ns: ns.into(),
            key: key.into(),
        })
    }

    /// Reference count of chunk `c`; `None` when it has no record (garbage).
    fn refs(&self, c: u8) -> Option<u64> {
        self.chunks.get(&id(c)).map(|r| r.refs)
    }

    fn kept(&self, ns: &str, key: &str) -> Vec<u64> {
        self.versions(ns, key).unwrap().into_iter().map(|(v, _)| v).collect()
    }

    /// Every chunk's count equals the number of stored versions that refer to it (each
    /// counted once per version), and no chunk without a reference keeps a record.
    fn assert_counts_match_versions(&self) {
        let mut want: BTreeMap<ChunkId, u64> = BTreeMap::new();
        for r in self.objects.values() {
            for (c, _) in distinct(&r.chunks) {
                *want.entry(c).or_default() += 1;
            }
        }
        let have: BTreeMap<ChunkId, u64> = self.chunks.iter().map(|(k, r)| (*k, r.refs)).collect();
        assert_eq!(have, want);
    }
}

fn id(c: u8) -> ChunkId {
    [c; 32]
}

#[test]
fn a_chunk_shared_by_two_objects_keeps_its_count_when_one_is_deleted() {
    let mut m = Mem::default();
    m.ns_create("ns", 1);
    m.put("ns", "a", &[1, 2]);
    m.put("ns", "b", &[2, 3]);
    assert_eq!(m.refs(2), Some(2));
    assert!(m.delete("ns", "a").existed);
    // a's only chunk goes, the shared one is still b's.
    assert_eq!(m.refs(1), None);
    assert_eq!(m.refs(2), Some(1));
    assert_eq!(m.refs(3), Some(1));
    // With one version kept, the tombstone itself is not kept either.
    assert!(m.kept("ns", "a").is_empty());
    m.delete("ns", "b");
    assert_eq!((m.refs(2), m.refs(3)), (None, None));
    m.assert_counts_match_versions();
}

#[test]
fn pruning_old_versions_drops_exactly_their_chunks() {
    let mut m = Mem::default();
    m.ns_create("ns", 2);
    assert_eq!(m.put("ns", "k", &[1, 2]), 1);
    assert_eq!(m.put("ns", "k", &[2, 3]), 2);
    assert_eq!(m.put("ns", "k", &[3, 4]), 3);
    // Version 1 is pruned: chunk 1 was only its, chunk 2 is still version 2's.
    assert_eq!(m.kept("ns", "k"), vec![2, 3]);
    assert_eq!(m.refs(1), None);
    assert_eq!(m.refs(2), Some(1));
    assert_eq!(m.refs(3), Some(2));
    assert_eq!(m.refs(4), Some(1));
    m.assert_counts_match_versions();
}

#[test]
fn versions_count_on_and_only_the_newest_are_kept() {
    let mut m = Mem::default();
    m.ns_create("ns", 3);
    for n in 1..=5u64 {
        assert_eq!(m.put("ns", "k", &[n as u8]), n);
    }
    assert_eq!(m.kept("ns", "k"), vec![3, 4, 5]);
    // A tombstone is a version like any other and pushes the oldest out.
    assert_eq!(m.delete("ns", "k").version, 6);
    assert_eq!(m.kept("ns", "k"), vec![4, 5, 6]);
    // Deleting what is already deleted writes nothing.
    let again = m.delete("ns", "k");
    assert_eq!((again.version, again.existed), (0, false));
    assert_eq!(m.kept("ns", "k"), vec![4, 5, 6]);
    m.assert_counts_match_versions();
}

#[test]
fn a_re_put_of_identical_chunks_does_not_double_count() {
    let mut m = Mem::default();
    m.ns_create("one", 1);
    // A chunk repeated inside one object counts once.
    m.put("one", "k", &[7, 7, 8]);
    assert_eq!((m.refs(7), m.refs(8)), (Some(1), Some(1)));
    // The same bytes again replace the old version: still one reference each.
    m.put("one", "k", &[7, 7, 8]);
    assert_eq!((m.refs(7), m.refs(8)), (Some(1), Some(1)));
    assert_eq!(m.kept("one", "k"), vec![2]);
    // Where both versions are kept, each counts.
    m.ns_create("two", 2);
    m.put("two", "k", &[9]);
    m.put("two", "k", &[9]);
    assert_eq!(m.refs(9), Some(2));
    m.assert_counts_match_versions();
}

#[test]
fn deleting_a_namespace_releases_every_version_it_kept() {
    let mut m = Mem::default();
    m.ns_create("ns", 3);
    m.ns_create("other", 1);
    m.put("ns", "a", &[1, 2]);
    m.put("ns", "a", &[2, 3]);
    m.put("other", "x", &[3]);
    // Live objects: refused, nothing changes.
    let r = m.apply(Command::NsDelete { name: "ns".into() });
    assert!(r.error.is_some_and(|e| e.contains("still holds 1 objects")));
    assert_eq!(m.refs(2), Some(2));
    // Once every key is a tombstone, the namespace goes with all its old versions.
    m.delete("ns", "a");
    assert_eq!(m.kept("ns", "a"), vec![1, 2, 3]);
    let r = m.apply(Command::NsDelete { name: "ns".into() });
    assert_eq!((r.error, r.existed), (None, true));
    assert!(!m.ns.contains_key("ns"));
    assert!(m.ns_versions("ns").unwrap().is_empty());
    assert_eq!((m.refs(1), m.refs(2)), (None, None));
    // A chunk the other namespace still uses keeps that reference.
    assert_eq!(m.refs(3), Some(1));
    m.assert_counts_match_versions();
    // Deleting it again: nothing there.
    let r = m.apply(Command::NsDelete { name: "ns".into() });
    assert_eq!((r.error, r.existed), (None, false));
}

#[test]
fn holders_change_only_on_chunks_that_have_a_record() {
    let mut m = Mem::default();
    m.ns_create("ns", 1);
    m.put("ns", "a", &[1]);
    m.apply(Command::ChunkHolders {
        node: 4,
        add: vec![id(1), id(9)],
        remove: vec![],
    });
    assert_eq!(m.chunks[&id(1)].holders, vec![1, 4]);
    assert!(m.refs(9).is_none(), "an unreferenced chunk gets no record");
    m.apply(Command::ChunkHolders {
        node: 1,
        add: vec![],
        remove: vec![id(1)],
    });
    assert_eq!(m.chunks[&id(1)].holders, vec![4]);
    assert_eq!(m.refs(1), Some(1), "holders do not change the count");
}

#[test]
fn commands_on_a_missing_namespace_are_refused() {
    let mut m = Mem::default();
    let r = m.apply(Command::ObjPut {
        ns: "none".into(),
        key: "k".into(),
        manifest: Manifest {
            size: 0,
            sha256: [0; 32],
            chunks: vec![ChunkRef { id: id(1), len: 1 }],
            holders: vec![],
            created_ms: 0,
        },
    });
    assert!(r.error.is_some());
    assert!(m.delete("none", "k").error.is_some());
    assert!(m.chunks.is_empty() && m.objects.is_empty());
}

#[test]
fn a_capped_create_is_refused_at_the_limit_and_passes_again_after_a_delete() {
    let mut m = Mem::default();
    let capped = |name: &str| Command::NsCreateCapped {
        name: name.into(),
        policy: NsPolicy {
            copies: 1,
            min_sites: 1,
            ..NsPolicy::default()
        },
        namespaces_max: 2,
    };
    assert_eq!(m.apply(capped("a")).error, None);
    assert_eq!(m.apply(capped("b")).error, None);
    // The third is refused, whatever node proposed it: the count is the replica's own.
    let r = m.apply(capped("c"));
    let why = r.error.unwrap_or_default();
    assert!(why.contains("limits.namespaces_max"), "{why}");
    assert!(!m.ns.contains_key("c"));
    // An existing name is answered as before, not as a limit.
    let why = m.apply(capped("a")).error.unwrap_or_default();
    assert!(why.contains("already exists"), "{why}");
    assert_eq!(m.apply(Command::NsDelete { name: "b".into() }).error, None);
    assert_eq!(m.apply(capped("c")).error, None);
    assert_eq!(
        m.ns.keys().cloned().collect::<Vec<_>>(),
        vec!["a".to_string(), "c".to_string()]
    );
}

fn wrapped(generation: u32) -> crate::raft::types::WrappedKey {
    crate::raft::types::WrappedKey {
        generation,
        kek_id: [1; 8],
        wrapped: vec![generation as u8; 60],
        created_ms: u64::from(generation),
    }
}

fn keys(n: u32) -> NsKeys {
    NsKeys {
        generations: (1..=n).map(wrapped).collect(),
    }
}

#[test]
fn encrypted_namespaces_keep_every_key_generation_and_lose_them_only_with_the_namespace() {
    let mut m = Mem::default();
    let policy = NsPolicy {
        copies: 1,
        min_sites: 1,
        ..NsPolicy::default()
    };
    let create = |keys: NsKeys| Command::NsCreateEncrypted {
        namespaces_max: 1000,
        name: "enc".into(),
        policy: policy.clone(),
        keys,
    };
    // A record without keys, or with generations out of order, is refused.
    assert!(m.apply(create(NsKeys { generations: vec![] })).error.is_some());
    assert!(m
        .apply(create(NsKeys {
            generations: vec![wrapped(2)]
        }))
        .error
        .is_some());
    assert!(m.apply(create(keys(1))).error.is_none());
    assert_eq!(m.keys.get("enc"), Some(&keys(1)));
    assert!(m.apply(create(keys(1))).error.unwrap().contains("already exists"));
    // A plain namespace has nothing to rekey.
    m.ns_create("plain", 1);
    let r = m.apply(Command::NsRekey {
        name: "plain".into(),
        keys: keys(1),
    });
    assert!(r.error.unwrap().contains("not encrypted"));
    // A new generation at the end is taken; a record missing one is refused (a rekey
    // prepared before another one committed), and changes nothing.
    let rekey = |keys: NsKeys| Command::NsRekey {
        name: "enc".into(),
        keys,
    };
    assert!(m.apply(rekey(keys(2))).error.is_none());
    assert_eq!(m.keys["enc"].generations.len(), 2);
    let r = m.apply(rekey(keys(1)));
    assert!(r.error.unwrap().contains("changed while"), "a generation was dropped");
    assert_eq!(m.keys["enc"], keys(2));
    // Rewrapped (other bytes, same generations) is taken.
    let mut rewrapped = keys(2);
    for g in &mut rewrapped.generations {
        g.kek_id = [9; 8];
        g.wrapped = vec![7; 60];
    }
    assert!(m.apply(rekey(rewrapped.clone())).error.is_none());
    assert_eq!(m.keys["enc"], rewrapped);
    // Changing the policy keeps the namespace encrypted.
    assert!(m
        .apply(Command::NsSet {
            name: "enc".into(),
            policy: policy.clone()
        })
        .error
        .is_none());
    assert!(m.keys.contains_key("enc"));
    // Deleting the namespace deletes its keys.
    assert!(m.apply(Command::NsDelete { name: "enc".into() }).error.is_none());
    assert!(m.keys.is_empty());
}
