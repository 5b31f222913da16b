//! Object metadata in the state machine: namespaces with their policy, object versions
//! (manifests), and chunk locations with reference counts.
//!
//! Only metadata goes through Raft; chunk bytes live in `crate::chunks` on each node and
//! travel over the peer transport (`crate::replicate`). A manifest is committed only after
//! its chunks are stored on the holders it names. Applying is deterministic like the rest of
//! the state machine: versions count per key from 1, old versions beyond the namespace's
//! `versions_kept` are pruned in the same apply, and a chunk whose reference count drops to
//! zero loses its record, which is what tells every node that its file is garbage.

use std::collections::BTreeSet;

use redb::{ReadableTable, Table, TableDefinition};
use serde::{Deserialize, Serialize};

use super::codec::{decode, encode};
use super::{NodeId, OpResult};

pub use super::types::{
    ChunkId, ChunkRecord, ChunkRef, Manifest, Mode, NsPolicy, NsRecord, ObjectRecord, NS_NAME_MAX, OBJECT_KEY_MAX,
};

pub(crate) const NAMESPACES: TableDefinition<&str, &[u8]> = TableDefinition::new("obj_namespaces");
/// (namespace, key, version) → [`ObjectRecord`].
pub(crate) const OBJECTS: TableDefinition<(&str, &str, u64), &[u8]> = TableDefinition::new("obj_objects");
/// chunk id → [`ChunkRecord`].
pub(crate) const CHUNKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("obj_chunks");

/// The tables the object commands write.
pub(crate) struct ObjTables<'t> {
    pub ns: Table<'t, &'static str, &'static [u8]>,
    pub objects: Table<'t, (&'static str, &'static str, u64), &'static [u8]>,
    pub chunks: Table<'t, &'static [u8], &'static [u8]>,
}

type ApplyResult = Result<OpResult, String>;

fn refused(rev: u64, msg: String) -> OpResult {
    OpResult {
        revision: rev,
        error: Some(msg),
        ..OpResult::default()
    }
}

fn e<E: std::fmt::Display>(err: E) -> String {
    err.to_string()
}

fn get_ns(t: &ObjTables<'_>, name: &str) -> Result<Option<NsRecord>, String> {
    match t.ns.get(name).map_err(e)? {
        Some(v) => Ok(Some(decode(v.value()).map_err(e)?)),
        None => Ok(None),
    }
}

/// Versions of one key, oldest first.
fn versions(t: &ObjTables<'_>, ns: &str, key: &str) -> Result<Vec<(u64, ObjectRecord)>, String> {
    let mut out = Vec::new();
    for item in t.objects.range((ns, key, 0u64)..=(ns, key, u64::MAX)).map_err(e)? {
        let (k, v) = item.map_err(e)?;
        out.push((k.value().2, decode(v.value()).map_err(e)?));
    }
    Ok(out)
}

fn distinct(chunks: &[ChunkRef]) -> BTreeSet<(ChunkId, u32)> {
    chunks.iter().map(|c| (c.id, c.len)).collect()
}

fn add_refs(t: &mut ObjTables<'_>, rec: &ObjectRecord, holders: &[NodeId], now_ms: u64) -> Result<(), String> {
    for (id, len) in distinct(&rec.chunks) {
        let mut cr = match t.chunks.get(&id[..]).map_err(e)? {
            Some(v) => decode::<ChunkRecord>(v.value()).map_err(e)?,
            None => ChunkRecord {
                refs: 0,
                holders: Vec::new(),
                len,
                since_ms: now_ms,
            },
        };
        cr.refs += 1;
        for h in holders {
            if !cr.holders.contains(h) {
                cr.holders.push(*h);
            }
        }
        cr.holders.sort_unstable();
        let b = encode(&cr).map_err(e)?;
        t.chunks.insert(&id[..], b.as_slice()).map_err(e)?;
    }
    Ok(())
}

fn drop_refs(t: &mut ObjTables<'_>, rec: &ObjectRecord) -> Result<(), String> {
    for (id, _) in distinct(&rec.chunks) {
        let cr = match t.chunks.get(&id[..]).map_err(e)? {
            Some(v) => decode::<ChunkRecord>(v.value()).map_err(e)?,
            None => continue,
        };
        if cr.refs <= 1 {
            t.chunks.remove(&id[..]).map_err(e)?;
        } else {
            let cr = ChunkRecord {
                refs: cr.refs - 1,
                ..cr
            };
            let b = encode(&cr).map_err(e)?;
            t.chunks.insert(&id[..], b.as_slice()).map_err(e)?;
        }
    }
    Ok(())
}

/// Adds version `rec` of `ns/key` and prunes the oldest beyond the policy.
fn add_version(
    t: &mut ObjTables<'_>,
    ns: &str,
    key: &str,
    policy: &NsPolicy,
    rec: &ObjectRecord,
    holders: &[NodeId],
) -> Result<u64, String> {
    let existing = versions(t, ns, key)?;
    let version = existing.last().map(|(v, _)| v + 1).unwrap_or(1);
    add_refs(t, rec, holders, rec.created_ms)?;
    let b = encode(rec).map_err(e)?;
    t.objects.insert((ns, key, version), b.as_slice()).map_err(e)?;
    let total = existing.len() + 1;
    let keep = policy.versions_kept.max(1) as usize;
    if total > keep {
        for (v, old) in existing.iter().take(total - keep) {
            drop_refs(t, old)?;
            t.objects.remove((ns, key, *v)).map_err(e)?;
        }
    }
    // A tombstone that is now the only version left keeps nothing alive: drop it too.
    if rec.deleted && keep == 1 {
        t.objects.remove((ns, key, version)).map_err(e)?;
    }
    Ok(version)
}

/// Applies one object command. `Ok(None)` when the command is not an object command.
pub(crate) fn apply(
    t: &mut ObjTables<'_>,
    rev: u64,
    now_ms: u64,
    cmd: &super::Command,
) -> Result<Option<OpResult>, String> {
    use super::Command as C;
    let ok = |version: u64, existed: bool| OpResult {
        revision: rev,
        version,
        existed,
        ..OpResult::default()
    };
    let r: ApplyResult = match cmd {
        C::Put { .. } | C::Delete { .. } => return Ok(None),
        C::NsCreate { name, policy } => {
            if let Some(p) = policy.problem() {
                Ok(refused(rev, p))
            } else if get_ns(t, name)?.is_some() {
                Ok(refused(rev, format!("namespace {name} already exists")))
            } else {
                let b = encode(&NsRecord {
                    policy: policy.clone(),
                    created_ms: now_ms,
                })
                .map_err(e)?;
                t.ns.insert(name.as_str(), b.as_slice()).map_err(e)?;
                Ok(ok(0, false))
            }
        }
        C::NsSet { name, policy } => match (policy.problem(), get_ns(t, name)?) {
            (Some(p), _) => Ok(refused(rev, p)),
            (None, None) => Ok(refused(rev, format!("namespace {name} does not exist"))),
            (None, Some(old)) => {
                let b = encode(&NsRecord {
                    policy: policy.clone(),
                    created_ms: old.created_ms,
                })
                .map_err(e)?;
                t.ns.insert(name.as_str(), b.as_slice()).map_err(e)?;
                Ok(ok(0, true))
            }
        },
        C::NsDelete { name } => {
            if get_ns(t, name)?.is_none() {
                Ok(ok(0, false))
            } else {
                let mut all = Vec::new();
                for item in t.objects.range((name.as_str(), "", 0u64)..).map_err(e)? {
                    let (k, v) = item.map_err(e)?;
                    let (n, key, ver) = k.value();
                    if n != name {
                        break;
                    }
                    all.push((key.to_string(), ver, decode::<ObjectRecord>(v.value()).map_err(e)?));
                }
                let live: BTreeSet<&str> = {
                    let mut latest: std::collections::BTreeMap<&str, bool> = Default::default();
                    for (k, _, r) in &all {
                        latest.insert(k.as_str(), r.deleted);
                    }
                    latest.into_iter().filter(|(_, d)| !d).map(|(k, _)| k).collect()
                };
                if !live.is_empty() {
                    Ok(refused(
                        rev,
                        format!("namespace {name} still holds {} objects; delete them first", live.len()),
                    ))
                } else {
                    for (k, v, r) in &all {
                        drop_refs(t, r)?;
                        t.objects.remove((name.as_str(), k.as_str(), *v)).map_err(e)?;
                    }
                    t.ns.remove(name.as_str()).map_err(e)?;
                    Ok(ok(0, true))
                }
            }
        }
        C::ObjPut { ns, key, manifest } => match get_ns(t, ns)? {
            None => Ok(refused(rev, format!("namespace {ns} does not exist"))),
            Some(nsr) => {
                let rec = ObjectRecord {
                    size: manifest.size,
                    sha256: manifest.sha256,
                    chunks: manifest.chunks.clone(),
                    created_ms: manifest.created_ms,
                    deleted: false,
                };
                let v = add_version(t, ns, key, &nsr.policy, &rec, &manifest.holders)?;
                Ok(ok(v, false))
            }
        },
        C::ObjDelete { ns, key } => match get_ns(t, ns)? {
            None => Ok(refused(rev, format!("namespace {ns} does not exist"))),
            Some(nsr) => {
                let existing = versions(t, ns, key)?;
                match existing.last() {
                    Some((_, last)) if !last.deleted => {
                        let tomb = ObjectRecord {
                            size: 0,
                            sha256: [0; 32],
                            chunks: Vec::new(),
                            created_ms: now_ms,
                            deleted: true,
                        };
                        let v = add_version(t, ns, key, &nsr.policy, &tomb, &[])?;
                        Ok(ok(v, true))
                    }
                    _ => Ok(ok(0, false)),
                }
            }
        },
        C::ChunkHolders { node, add, remove } => {
            for (ids, adding) in [(add, true), (remove, false)] {
                for id in ids {
                    let Some(v) = t.chunks.get(&id[..]).map_err(e)? else {
                        continue;
                    };
                    let mut cr: ChunkRecord = decode(v.value()).map_err(e)?;
                    drop(v);
                    cr.holders.retain(|h| h != node);
                    if adding {
                        cr.holders.push(*node);
                        cr.holders.sort_unstable();
                    }
                    let b = encode(&cr).map_err(e)?;
                    t.chunks.insert(&id[..], b.as_slice()).map_err(e)?;
                }
            }
            Ok(ok(0, false))
        }
    };
    r.map(Some)
}

/// Everything object-related, for snapshots.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct ObjSnapshot {
    pub ns: Vec<(String, NsRecord)>,
    pub objects: Vec<((String, String, u64), ObjectRecord)>,
    pub chunks: Vec<(Vec<u8>, ChunkRecord)>,
}

pub(crate) fn export(tx: &redb::ReadTransaction) -> Result<ObjSnapshot, String> {
    let mut out = ObjSnapshot::default();
    let t = tx.open_table(NAMESPACES).map_err(e)?;
    for item in t.iter().map_err(e)? {
        let (k, v) = item.map_err(e)?;
        out.ns.push((k.value().to_string(), decode(v.value()).map_err(e)?));
    }
    let t = tx.open_table(OBJECTS).map_err(e)?;
    for item in t.iter().map_err(e)? {
        let (k, v) = item.map_err(e)?;
        let (n, key, ver) = k.value();
        out.objects
            .push(((n.to_string(), key.to_string(), ver), decode(v.value()).map_err(e)?));
    }
    let t = tx.open_table(CHUNKS).map_err(e)?;
    for item in t.iter().map_err(e)? {
        let (k, v) = item.map_err(e)?;
        out.chunks.push((k.value().to_vec(), decode(v.value()).map_err(e)?));
    }
    Ok(out)
}

pub(crate) fn import(t: &mut ObjTables<'_>, snap: &ObjSnapshot) -> Result<(), String> {
    t.ns.retain(|_, _| false).map_err(e)?;
    t.objects.retain(|_, _| false).map_err(e)?;
    t.chunks.retain(|_, _| false).map_err(e)?;
    for (k, v) in &snap.ns {
        let b = encode(v).map_err(e)?;
        t.ns.insert(k.as_str(), b.as_slice()).map_err(e)?;
    }
    for ((n, k, ver), v) in &snap.objects {
        let b = encode(v).map_err(e)?;
        t.objects
            .insert((n.as_str(), k.as_str(), *ver), b.as_slice())
            .map_err(e)?;
    }
    for (id, v) in &snap.chunks {
        let b = encode(v).map_err(e)?;
        t.chunks.insert(id.as_slice(), b.as_slice()).map_err(e)?;
    }
    Ok(())
}

/// A listed object version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectEntry {
    /// Namespace.
    pub ns: String,
    /// Key.
    pub key: String,
    /// Version.
    pub version: u64,
    /// The record.
    pub record: ObjectRecord,
}

/// Read-only queries over the object tables (one read transaction per call).
#[derive(Clone)]
pub struct ObjectReader {
    db: std::sync::Arc<redb::Database>,
}

/// A query failed inside the database.
#[derive(Debug, thiserror::Error)]
#[error("object metadata read failed: {0}")]
pub struct ObjReadError(String);

fn re<E: std::fmt::Display>(err: E) -> ObjReadError {
    ObjReadError(err.to_string())
}

impl ObjectReader {
    /// A reader over the node's database.
    pub fn new(db: std::sync::Arc<redb::Database>) -> Self {
        Self { db }
    }

    /// One namespace.
    pub fn namespace(&self, name: &str) -> Result<Option<NsRecord>, ObjReadError> {
        let tx = self.db.begin_read().map_err(re)?;
        let t = tx.open_table(NAMESPACES).map_err(re)?;
        match t.get(name).map_err(re)? {
            Some(v) => Ok(Some(decode(v.value()).map_err(re)?)),
            None => Ok(None),
        }
    }

    /// Every namespace, by name.
    pub fn namespaces(&self) -> Result<Vec<(String, NsRecord)>, ObjReadError> {
        let tx = self.db.begin_read().map_err(re)?;
        let t = tx.open_table(NAMESPACES).map_err(re)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(re)? {
            let (k, v) = item.map_err(re)?;
            out.push((k.value().to_string(), decode(v.value()).map_err(re)?));
        }
        Ok(out)
    }

    /// Versions in `ns` whose key starts with `prefix`, in key then version order: every
    /// version, or only each key's latest when it is not a tombstone.
    pub fn list(&self, ns: &str, prefix: &str, all_versions: bool) -> Result<Vec<ObjectEntry>, ObjReadError> {
        let tx = self.db.begin_read().map_err(re)?;
        let t = tx.open_table(OBJECTS).map_err(re)?;
        let mut out: Vec<ObjectEntry> = Vec::new();
        for item in t.range((ns, prefix, 0u64)..).map_err(re)? {
            let (k, v) = item.map_err(re)?;
            let (n, key, version) = k.value();
            if n != ns || !key.starts_with(prefix) {
                break;
            }
            let record: ObjectRecord = decode(v.value()).map_err(re)?;
            if !all_versions && out.last().is_some_and(|l| l.key == key) {
                out.pop();
            }
            out.push(ObjectEntry {
                ns: n.to_string(),
                key: key.to_string(),
                version,
                record,
            });
        }
        if !all_versions {
            out.retain(|o| !o.record.deleted);
        }
        Ok(out)
    }

    /// One version (0 = the latest); tombstones are returned as such.
    pub fn get(&self, ns: &str, key: &str, version: u64) -> Result<Option<ObjectEntry>, ObjReadError> {
        let tx = self.db.begin_read().map_err(re)?;
        let t = tx.open_table(OBJECTS).map_err(re)?;
        let found = if version == 0 {
            t.range((ns, key, 0u64)..=(ns, key, u64::MAX))
                .map_err(re)?
                .next_back()
                .transpose()
                .map_err(re)?
                .map(|(k, v)| (k.value().2, v.value().to_vec()))
        } else {
            t.get((ns, key, version))
                .map_err(re)?
                .map(|v| (version, v.value().to_vec()))
        };
        match found {
            Some((version, b)) => Ok(Some(ObjectEntry {
                ns: ns.to_string(),
                key: key.to_string(),
                version,
                record: decode(&b).map_err(re)?,
            })),
            None => Ok(None),
        }
    }

    /// One chunk's record.
    pub fn chunk(&self, id: &ChunkId) -> Result<Option<ChunkRecord>, ObjReadError> {
        let tx = self.db.begin_read().map_err(re)?;
        let t = tx.open_table(CHUNKS).map_err(re)?;
        match t.get(&id[..]).map_err(re)? {
            Some(v) => Ok(Some(decode(v.value()).map_err(re)?)),
            None => Ok(None),
        }
    }

    /// Every chunk record (the replication queue and the scrubber walk them).
    pub fn chunks(&self) -> Result<Vec<(ChunkId, ChunkRecord)>, ObjReadError> {
        let tx = self.db.begin_read().map_err(re)?;
        let t = tx.open_table(CHUNKS).map_err(re)?;
        let mut out = Vec::new();
        for item in t.iter().map_err(re)? {
            let (k, v) = item.map_err(re)?;
            let Ok(id) = <ChunkId>::try_from(k.value()) else {
                continue;
            };
            out.push((id, decode(v.value()).map_err(re)?));
        }
        Ok(out)
    }
}
