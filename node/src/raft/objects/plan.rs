//! The decision half of applying an object command: which namespace, object version and
//! chunk records it creates, changes or removes: version numbers, pruning beyond the
//! namespace's `versions_kept`, reference counts up and down, and which chunks lose their
//! last reference (their record goes, which tells every node that the file is garbage).
//!
//! Owns those rules and nothing else: it reads the tables only through [`ObjRead`] and
//! returns an [`ObjPlan`] that `objects.rs` executes in the apply transaction. It must not
//! touch redb or the codec, so that the rules are tested on plain maps (below) as well as on
//! a real database (`objects.rs`).

use std::collections::{BTreeMap, BTreeSet};

use crate::raft::types::{ChunkId, ChunkRecord, ChunkRef, NsKeys, NsPolicy, NsRecord, ObjectRecord};
use crate::raft::{Command, NodeId, OpResult};

/// What planning reads: the current records, before the command.
pub(crate) trait ObjRead {
    /// One namespace.
    fn ns(&self, name: &str) -> Result<Option<NsRecord>, String>;
    /// The versions of one key, oldest first.
    fn versions(&self, ns: &str, key: &str) -> Result<Vec<(u64, ObjectRecord)>, String>;
    /// Every version in a namespace, in key then version order.
    fn ns_versions(&self, ns: &str) -> Result<Vec<(String, u64, ObjectRecord)>, String>;
    /// One chunk's record.
    fn chunk(&self, id: &ChunkId) -> Result<Option<ChunkRecord>, String>;
    /// How many namespaces exist.
    fn ns_count(&self) -> Result<u64, String>;
    /// An encrypted namespace's wrapped data keys (`None`: not encrypted).
    fn ns_keys(&self, name: &str) -> Result<Option<NsKeys>, String>;
}

/// The records one command leaves: `Some` is written, `None` removed. Each map holds a key's
/// final state only, so executing the plan in any order gives the same tables.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ObjPlan {
    /// Namespaces by name.
    pub ns: BTreeMap<String, Option<NsRecord>>,
    /// Object versions by (namespace, key, version).
    pub objects: BTreeMap<(String, String, u64), Option<ObjectRecord>>,
    /// Chunk records by id.
    pub chunks: BTreeMap<ChunkId, Option<ChunkRecord>>,
    /// Encrypted namespaces' wrapped data keys by namespace name.
    pub keys: BTreeMap<String, Option<NsKeys>>,
}

/// A plan being built, reading through its own changes to the tables.
struct Planner<'v, V: ObjRead> {
    view: &'v V,
    plan: ObjPlan,
}

impl<V: ObjRead> Planner<'_, V> {
    fn chunk(&self, id: &ChunkId) -> Result<Option<ChunkRecord>, String> {
        match self.plan.chunks.get(id) {
            Some(c) => Ok(c.clone()),
            None => self.view.chunk(id),
        }
    }

    /// Each distinct chunk of `rec` gains one reference (a chunk repeated inside one object
    /// version counts once), and `holders` join its holders.
    fn add_refs(&mut self, rec: &ObjectRecord, holders: &[NodeId], now_ms: u64) -> Result<(), String> {
        for (id, len) in distinct(&rec.chunks) {
            let mut cr = self.chunk(&id)?.unwrap_or(ChunkRecord {
                refs: 0,
                holders: Vec::new(),
                len,
                since_ms: now_ms,
            });
            cr.refs += 1;
            for h in holders {
                if !cr.holders.contains(h) {
                    cr.holders.push(*h);
                }
            }
            cr.holders.sort_unstable();
            self.plan.chunks.insert(id, Some(cr));
        }
        Ok(())
    }

    /// Each distinct chunk of `rec` loses one reference; the last one removes its record.
    fn drop_refs(&mut self, rec: &ObjectRecord) -> Result<(), String> {
        for (id, _) in distinct(&rec.chunks) {
            let Some(cr) = self.chunk(&id)? else { continue };
            let after = (cr.refs > 1).then(|| ChunkRecord {
                refs: cr.refs - 1,
                ..cr
            });
            self.plan.chunks.insert(id, after);
        }
        Ok(())
    }

    /// Adds version `rec` of `ns/key` and prunes the oldest beyond the policy; answers the
    /// new version's number.
    fn add_version(
        &mut self,
        ns: &str,
        key: &str,
        policy: &NsPolicy,
        rec: &ObjectRecord,
        holders: &[NodeId],
    ) -> Result<u64, String> {
        let existing = self.view.versions(ns, key)?;
        let version = existing.last().map(|(v, _)| v + 1).unwrap_or(1);
        self.add_refs(rec, holders, rec.created_ms)?;
        let at = |v: u64| (ns.to_string(), key.to_string(), v);
        self.plan.objects.insert(at(version), Some(rec.clone()));
        let total = existing.len() + 1;
        let keep = policy.versions_kept.max(1) as usize;
        if total > keep {
            for (v, old) in existing.iter().take(total - keep) {
                self.drop_refs(old)?;
                self.plan.objects.insert(at(*v), None);
            }
        }
        // A tombstone that is now the only version left keeps nothing alive: drop it too.
        if rec.deleted && keep == 1 {
            self.plan.objects.insert(at(version), None);
        }
        Ok(version)
    }
}

fn distinct(chunks: &[ChunkRef]) -> BTreeSet<(ChunkId, u32)> {
    chunks.iter().map(|c| (c.id, c.len)).collect()
}

fn refused(rev: u64, msg: String) -> OpResult {
    OpResult {
        revision: rev,
        error: Some(msg),
        ..OpResult::default()
    }
}

/// Plans one object command against `view`: its answer and the records it changes (none when
/// it is refused). `Ok(None)` when the command is not an object command.
pub(crate) fn plan(
    view: &impl ObjRead,
    rev: u64,
    now_ms: u64,
    cmd: &Command,
) -> Result<Option<(OpResult, ObjPlan)>, String> {
    use Command as C;
    let ok = |version: u64, existed: bool| OpResult {
        revision: rev,
        version,
        existed,
        ..OpResult::default()
    };
    let mut p = Planner {
        view,
        plan: ObjPlan::default(),
    };
    let result = match cmd {
        C::Put { .. } | C::Delete { .. } | C::Auth(_) | C::SetRole { .. } => return Ok(None),
        C::NsCreate { name, policy }
        | C::NsCreateCapped { name, policy, .. }
        | C::NsCreateEncrypted { name, policy, .. } => {
            let (max, keys) = match cmd {
                C::NsCreateCapped { namespaces_max, .. } => (u64::from(*namespaces_max), None),
                C::NsCreateEncrypted {
                    namespaces_max, keys, ..
                } => (u64::from(*namespaces_max), Some(keys)),
                _ => (u64::MAX, None),
            };
            if let Some(problem) = policy.problem().or_else(|| keys.and_then(NsKeys::problem)) {
                refused(rev, problem)
            } else if view.ns(name)?.is_some() {
                refused(rev, format!("namespace {name} already exists"))
            } else if view.ns_count()? >= max {
                refused(
                    rev,
                    format!(
                        "the cluster holds its limit of {max} namespaces (limits.namespaces_max); delete one first"
                    ),
                )
            } else {
                let rec = NsRecord {
                    policy: policy.clone(),
                    created_ms: now_ms,
                };
                p.plan.ns.insert(name.clone(), Some(rec));
                if let Some(keys) = keys {
                    p.plan.keys.insert(name.clone(), Some(keys.clone()));
                }
                ok(0, false)
            }
        }
        C::NsSet { name, policy } => match (policy.problem(), view.ns(name)?) {
            (Some(problem), _) => refused(rev, problem),
            (None, None) => refused(rev, format!("namespace {name} does not exist")),
            (None, Some(old)) => {
                let rec = NsRecord {
                    policy: policy.clone(),
                    created_ms: old.created_ms,
                };
                p.plan.ns.insert(name.clone(), Some(rec));
                ok(0, true)
            }
        },
        C::NsDelete { name } => {
            if view.ns(name)?.is_none() {
                ok(0, false)
            } else {
                let all = view.ns_versions(name)?;
                let live: BTreeSet<&str> = {
                    let mut latest: BTreeMap<&str, bool> = BTreeMap::new();
                    for (k, _, r) in &all {
                        latest.insert(k.as_str(), r.deleted);
                    }
                    latest.into_iter().filter(|(_, d)| !d).map(|(k, _)| k).collect()
                };
                if !live.is_empty() {
                    refused(
                        rev,
                        format!("namespace {name} still holds {} objects; delete them first", live.len()),
                    )
                } else {
                    for (k, v, r) in &all {
                        p.drop_refs(r)?;
                        p.plan.objects.insert((name.clone(), k.clone(), *v), None);
                    }
                    p.plan.ns.insert(name.clone(), None);
                    // Its data keys go with it: a namespace made later under the same
                    // name is another namespace with other keys.
                    if view.ns_keys(name)?.is_some() {
                        p.plan.keys.insert(name.clone(), None);
                    }
                    ok(0, true)
                }
            }
        }
        C::ObjPut { ns, key, manifest } => match view.ns(ns)? {
            None => refused(rev, format!("namespace {ns} does not exist")),
            Some(nsr) => {
                let rec = ObjectRecord {
                    size: manifest.size,
                    sha256: manifest.sha256,
                    chunks: manifest.chunks.clone(),
                    created_ms: manifest.created_ms,
                    deleted: false,
                };
                let v = p.add_version(ns, key, &nsr.policy, &rec, &manifest.holders)?;
                ok(v, false)
            }
        },
        C::ObjDelete { ns, key } => match view.ns(ns)? {
            None => refused(rev, format!("namespace {ns} does not exist")),
            Some(nsr) => match view.versions(ns, key)?.last() {
                Some((_, last)) if !last.deleted => {
                    let tomb = ObjectRecord {
                        size: 0,
                        sha256: [0; 32],
                        chunks: Vec::new(),
                        created_ms: now_ms,
                        deleted: true,
                    };
                    let v = p.add_version(ns, key, &nsr.policy, &tomb, &[])?;
                    ok(v, true)
                }
                _ => ok(0, false),
            },
        },
        C::ChunkHolders { node, add, remove } => {
            for (ids, adding) in [(add, true), (remove, false)] {
                for id in ids {
                    // Only chunks something refers to have a record to update.
                    let Some(mut cr) = p.chunk(id)? else { continue };
                    cr.holders.retain(|h| h != node);
                    if adding {
                        cr.holders.push(*node);
                        cr.holders.sort_unstable();
                    }
                    p.plan.chunks.insert(*id, Some(cr));
                }
            }
            ok(0, false)
        }
        C::NsRekey { name, keys } => match (keys.problem(), view.ns(name)?, view.ns_keys(name)?) {
            (Some(problem), _, _) => refused(rev, problem),
            (None, None, _) => refused(rev, format!("namespace {name} does not exist")),
            (None, Some(_), None) => refused(rev, format!("namespace {name} is not encrypted; nothing to rekey")),
            (None, Some(_), Some(old)) => {
                let kept = old.generations.len() <= keys.generations.len()
                    && old
                        .generations
                        .iter()
                        .zip(&keys.generations)
                        .all(|(o, n)| o.generation == n.generation && o.created_ms == n.created_ms);
                if !kept {
                    refused(
                        rev,
                        format!(
                            "namespace {name}'s data keys changed while this rekey was prepared \
                             (it has {} generations); nothing changed, run it again",
                            old.generations.len()
                        ),
                    )
                } else {
                    p.plan.keys.insert(name.clone(), Some(keys.clone()));
                    ok(0, true)
                }
            }
        },
    };
    Ok(Some((result, p.plan)))
}

#[cfg(test)]
mod tests;
