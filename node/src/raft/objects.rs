//! Object metadata in the state machine: namespaces with their policy, object versions
//! (manifests), and chunk locations with reference counts.
//!
//! Only metadata goes through Raft; chunk bytes live in `crate::chunks` on each node and
//! travel over the peer transport (`crate::replicate`). A manifest is committed only after
//! its chunks are stored on the holders it names. Applying is deterministic like the rest of
//! the state machine: versions count per key from 1, old versions beyond the namespace's
//! `versions_kept` are pruned in the same apply, and a chunk whose reference count drops to
//! zero loses its record, which is what tells every node that its file is garbage.
//!
//! Those rules are decided in `plan.rs`, a pure function of what the tables hold; this file
//! owns the tables, their encoding, the shell that executes a plan in the apply transaction,
//! the snapshot export/import and the read-only [`ObjectReader`]. It must not touch chunk
//! bytes nor decide anything a plan did not.

mod plan;

use std::collections::BTreeMap;
use std::ops::Bound;

use redb::{ReadableTable, ReadableTableMetadata, Table, TableDefinition};
use serde::{Deserialize, Serialize};

use super::codec::{decode, encode};
use super::OpResult;
use plan::{ObjPlan, ObjRead};

pub use super::types::{
    ChunkId, ChunkRecord, ChunkRef, Manifest, Mode, NsKeys, NsPolicy, NsRecord, ObjectRecord, WrappedKey, NS_NAME_MAX,
    OBJECT_KEY_MAX,
};

pub(crate) const NAMESPACES: TableDefinition<&str, &[u8]> = TableDefinition::new("obj_namespaces");
/// (namespace, key, version) → [`ObjectRecord`].
pub(crate) const OBJECTS: TableDefinition<(&str, &str, u64), &[u8]> = TableDefinition::new("obj_objects");
/// chunk id → [`ChunkRecord`].
pub(crate) const CHUNKS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("obj_chunks");
/// namespace → [`NsKeys`], for encrypted namespaces only (wrapped keys, never in clear).
pub(crate) const NS_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("obj_ns_keys");
/// namespace → (live objects, their bytes), a live object being a key whose latest version
/// is not a tombstone. Derived from [`OBJECTS`], so that counting a namespace does not walk
/// it: [`execute`] keeps it in the apply transaction that changes the objects, a snapshot
/// import rebuilds it, and [`open_usage`] builds it for a database from before it existed.
pub(crate) const NS_USAGE: TableDefinition<&str, (u64, u64)> = TableDefinition::new("obj_ns_usage");

/// The tables the object commands write.
pub(crate) struct ObjTables<'t> {
    pub ns: Table<'t, &'static str, &'static [u8]>,
    pub objects: Table<'t, (&'static str, &'static str, u64), &'static [u8]>,
    pub chunks: Table<'t, &'static [u8], &'static [u8]>,
    pub keys: Table<'t, &'static str, &'static [u8]>,
    pub usage: Table<'t, &'static str, (u64, u64)>,
}

fn e<E: std::fmt::Display>(err: E) -> String {
    err.to_string()
}

/// The apply transaction's tables, as the planner reads them.
impl ObjRead for ObjTables<'_> {
    fn ns(&self, name: &str) -> Result<Option<NsRecord>, String> {
        match self.ns.get(name).map_err(e)? {
            Some(v) => Ok(Some(decode(v.value()).map_err(e)?)),
            None => Ok(None),
        }
    }

    fn versions(&self, ns: &str, key: &str) -> Result<Vec<(u64, ObjectRecord)>, String> {
        let mut out = Vec::new();
        for item in self.objects.range((ns, key, 0u64)..=(ns, key, u64::MAX)).map_err(e)? {
            let (k, v) = item.map_err(e)?;
            out.push((k.value().2, decode(v.value()).map_err(e)?));
        }
        Ok(out)
    }

    fn ns_versions(&self, ns: &str) -> Result<Vec<(String, u64, ObjectRecord)>, String> {
        let mut out = Vec::new();
        for item in self.objects.range((ns, "", 0u64)..).map_err(e)? {
            let (k, v) = item.map_err(e)?;
            let (n, key, ver) = k.value();
            if n != ns {
                break;
            }
            out.push((key.to_string(), ver, decode(v.value()).map_err(e)?));
        }
        Ok(out)
    }

    fn chunk(&self, id: &ChunkId) -> Result<Option<ChunkRecord>, String> {
        match self.chunks.get(&id[..]).map_err(e)? {
            Some(v) => Ok(Some(decode(v.value()).map_err(e)?)),
            None => Ok(None),
        }
    }

    fn ns_count(&self) -> Result<u64, String> {
        self.ns.len().map_err(e)
    }

    fn ns_keys(&self, name: &str) -> Result<Option<NsKeys>, String> {
        match self.keys.get(name).map_err(e)? {
            Some(v) => Ok(Some(decode(v.value()).map_err(e)?)),
            None => Ok(None),
        }
    }
}

/// The size of `ns/key`'s latest version, or `None` when it has none or it is a tombstone.
fn latest_live(
    objects: &impl ReadableTable<(&'static str, &'static str, u64), &'static [u8]>,
    ns: &str,
    key: &str,
) -> Result<Option<u64>, String> {
    match objects
        .range((ns, key, 0u64)..=(ns, key, u64::MAX))
        .map_err(e)?
        .next_back()
    {
        Some(item) => {
            let (_, v) = item.map_err(e)?;
            let r: ObjectRecord = decode(v.value()).map_err(e)?;
            Ok((!r.deleted).then_some(r.size))
        }
        None => Ok(None),
    }
}

/// Every namespace's live objects and bytes, counted from the object table in one walk
/// (versions come in key then version order, so a key's last one is its latest).
fn count_usage(
    objects: &impl ReadableTable<(&'static str, &'static str, u64), &'static [u8]>,
    only: Option<&str>,
) -> Result<BTreeMap<String, (u64, u64)>, String> {
    let mut out: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut latest: Option<(String, String, ObjectRecord)> = None;
    let mut add = |ns: String, r: ObjectRecord| {
        if !r.deleted {
            let u = out.entry(ns).or_default();
            u.0 += 1;
            u.1 += r.size;
        }
    };
    let range = match only {
        Some(ns) => objects.range((ns, "", 0u64)..).map_err(e)?,
        None => objects.range::<(&str, &str, u64)>(..).map_err(e)?,
    };
    for item in range {
        let (k, v) = item.map_err(e)?;
        let (ns, key, _) = k.value();
        if only.is_some_and(|o| o != ns) {
            break;
        }
        if let Some((pns, pkey, r)) = latest.take() {
            if pns != ns || pkey != key {
                add(pns, r);
            }
        }
        latest = Some((ns.to_string(), key.to_string(), decode(v.value()).map_err(e)?));
    }
    if let Some((ns, _, r)) = latest {
        add(ns, r);
    }
    Ok(out)
}

/// Replaces the usage table with a count of the object table.
fn rebuild_usage(
    objects: &impl ReadableTable<(&'static str, &'static str, u64), &'static [u8]>,
    usage: &mut Table<'_, &'static str, (u64, u64)>,
) -> Result<(), String> {
    let counted = count_usage(objects, None)?;
    usage.retain(|_, _| false).map_err(e)?;
    for (ns, u) in &counted {
        usage.insert(ns.as_str(), u).map_err(e)?;
    }
    Ok(())
}

/// Opens the usage table in `tx`, counting the object table into it when the database is
/// from a release without it (once: an upgrade's first start walks every object).
pub(crate) fn open_usage(tx: &redb::WriteTransaction) -> Result<(), String> {
    use redb::TableHandle;
    let exists = tx.list_tables().map_err(e)?.any(|h| h.name() == NS_USAGE.name());
    let mut usage = tx.open_table(NS_USAGE).map_err(e)?;
    if !exists {
        let objects = tx.open_table(OBJECTS).map_err(e)?;
        rebuild_usage(&objects, &mut usage)?;
    }
    Ok(())
}

/// Moves `ns`'s counts by what one key's latest live version weighed before and after.
fn shift_usage(t: &mut ObjTables<'_>, ns: &str, before: Option<u64>, after: Option<u64>) -> Result<(), String> {
    if before == after {
        return Ok(());
    }
    let (objects, bytes) = t.usage.get(ns).map_err(e)?.map(|v| v.value()).unwrap_or((0, 0));
    let shifted = objects
        .checked_sub(u64::from(before.is_some()))
        .and_then(|o| o.checked_add(u64::from(after.is_some())))
        .zip(
            bytes
                .checked_sub(before.unwrap_or(0))
                .and_then(|b| b.checked_add(after.unwrap_or(0))),
        );
    let next = match shifted {
        Some(n) => n,
        None => {
            // The counts disagree with the table they are derived from (which only a bug
            // or a damaged database can do): count this namespace again rather than carry
            // a wrong figure. The object table is what holds the truth; it is not touched.
            tracing::error!(
                namespace = ns,
                objects,
                bytes,
                "namespace usage disagreed with the object table; recounted"
            );
            count_usage(&t.objects, Some(ns))?.remove(ns).unwrap_or((0, 0))
        }
    };
    if next == (0, 0) {
        t.usage.remove(ns).map_err(e)?;
    } else {
        t.usage.insert(ns, next).map_err(e)?;
    }
    Ok(())
}

/// Writes what a plan decided; decides nothing itself (the usage counts follow the
/// object versions it writes).
fn execute(t: &mut ObjTables<'_>, plan: &ObjPlan) -> Result<(), String> {
    // Each key this plan writes a version of, with its latest live size before.
    let mut touched: BTreeMap<(&str, &str), Option<u64>> = BTreeMap::new();
    for (ns, key, _) in plan.objects.keys() {
        if let std::collections::btree_map::Entry::Vacant(v) = touched.entry((ns.as_str(), key.as_str())) {
            v.insert(latest_live(&t.objects, ns, key)?);
        }
    }
    for (name, rec) in &plan.ns {
        match rec {
            Some(r) => {
                let b = encode(r).map_err(e)?;
                t.ns.insert(name.as_str(), b.as_slice()).map_err(e)?;
            }
            None => {
                t.ns.remove(name.as_str()).map_err(e)?;
            }
        }
    }
    for ((ns, key, ver), rec) in &plan.objects {
        match rec {
            Some(r) => {
                let b = encode(r).map_err(e)?;
                t.objects
                    .insert((ns.as_str(), key.as_str(), *ver), b.as_slice())
                    .map_err(e)?;
            }
            None => {
                t.objects.remove((ns.as_str(), key.as_str(), *ver)).map_err(e)?;
            }
        }
    }
    for (id, rec) in &plan.chunks {
        match rec {
            Some(r) => {
                let b = encode(r).map_err(e)?;
                t.chunks.insert(&id[..], b.as_slice()).map_err(e)?;
            }
            None => {
                t.chunks.remove(&id[..]).map_err(e)?;
            }
        }
    }
    for (name, rec) in &plan.keys {
        match rec {
            Some(r) => {
                let b = encode(r).map_err(e)?;
                t.keys.insert(name.as_str(), b.as_slice()).map_err(e)?;
            }
            None => {
                t.keys.remove(name.as_str()).map_err(e)?;
            }
        }
    }
    for ((ns, key), before) in touched {
        let after = latest_live(&t.objects, ns, key)?;
        shift_usage(t, ns, before, after)?;
    }
    Ok(())
}

/// Applies one object command: plans it against the tables ([`plan::plan`]) and writes the
/// plan. `Ok(None)` when the command is not an object command.
pub(crate) fn apply(
    t: &mut ObjTables<'_>,
    rev: u64,
    now_ms: u64,
    cmd: &super::Command,
) -> Result<Option<OpResult>, String> {
    let Some((result, plan)) = plan::plan(t, rev, now_ms, cmd)? else {
        return Ok(None);
    };
    execute(t, &plan)?;
    Ok(Some(result))
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

/// Every encrypted namespace's wrapped keys, for snapshots (carried after [`ObjSnapshot`],
/// whose layout older releases read).
pub(crate) fn export_keys(tx: &redb::ReadTransaction) -> Result<Vec<(String, NsKeys)>, String> {
    let t = tx.open_table(NS_KEYS).map_err(e)?;
    let mut out = Vec::new();
    for item in t.iter().map_err(e)? {
        let (k, v) = item.map_err(e)?;
        out.push((k.value().to_string(), decode(v.value()).map_err(e)?));
    }
    Ok(out)
}

/// Replaces the key table with a snapshot's (empty for a snapshot from before encryption).
pub(crate) fn import_keys(t: &mut ObjTables<'_>, keys: &[(String, NsKeys)]) -> Result<(), String> {
    t.keys.retain(|_, _| false).map_err(e)?;
    for (k, v) in keys {
        let b = encode(v).map_err(e)?;
        t.keys.insert(k.as_str(), b.as_slice()).map_err(e)?;
    }
    Ok(())
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
    // Snapshots carry no counts: they are derived, so they are counted here.
    rebuild_usage(&t.objects, &mut t.usage)
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

/// A namespace's live objects (each key's latest version, when it is not a tombstone), as
/// [`NS_USAGE`] keeps them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NsUsage {
    /// Live objects.
    pub objects: u64,
    /// Their bytes.
    pub bytes: u64,
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

    /// An encrypted namespace's wrapped data keys (`None`: the namespace is not encrypted
    /// or does not exist).
    pub fn ns_keys(&self, name: &str) -> Result<Option<NsKeys>, ObjReadError> {
        let tx = self.db.begin_read().map_err(re)?;
        let t = tx.open_table(NS_KEYS).map_err(re)?;
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

    /// One page of [`Self::list`]: at most `limit` (at least 1) entries after `after`
    /// (key, version; `u64::MAX` skips the rest of that key), and whether more follow.
    pub fn list_page(
        &self,
        ns: &str,
        prefix: &str,
        all_versions: bool,
        after: Option<(&str, u64)>,
        limit: usize,
    ) -> Result<(Vec<ObjectEntry>, bool), ObjReadError> {
        let tx = self.db.begin_read().map_err(re)?;
        let t = tx.open_table(OBJECTS).map_err(re)?;
        let start = match after {
            Some((key, version)) if key >= prefix => Bound::Excluded((ns, key, version)),
            _ => Bound::Included((ns, prefix, 0u64)),
        };
        let limit = limit.max(1);
        let mut out: Vec<ObjectEntry> = Vec::new();
        // Latest versions only: the newest version seen of the key being read, added once
        // the next key (or the end) shows it is the latest.
        let mut latest: Option<ObjectEntry> = None;
        let add = |out: &mut Vec<ObjectEntry>, entry: ObjectEntry| {
            if out.len() == limit {
                return true;
            }
            out.push(entry);
            false
        };
        for item in t.range((start, Bound::Unbounded)).map_err(re)? {
            let (k, v) = item.map_err(re)?;
            let (n, key, version) = k.value();
            if n != ns || !key.starts_with(prefix) {
                break;
            }
            let entry = ObjectEntry {
                ns: n.to_string(),
                key: key.to_string(),
                version,
                record: decode(v.value()).map_err(re)?,
            };
            if all_versions {
                if add(&mut out, entry) {
                    return Ok((out, true));
                }
                continue;
            }
            // An older version of the same key, or a tombstone, is not listed.
            let prev = latest.take().filter(|p| p.key != entry.key && !p.record.deleted);
            if prev.is_some_and(|p| add(&mut out, p)) {
                return Ok((out, true));
            }
            latest = Some(entry);
        }
        if let Some(last) = latest.filter(|l| !l.record.deleted) {
            if add(&mut out, last) {
                return Ok((out, true));
            }
        }
        Ok((out, false))
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

    /// A namespace's live objects and bytes: one lookup, whatever its size (the counts
    /// are kept on apply).
    pub fn namespace_usage(&self, ns: &str) -> Result<NsUsage, ObjReadError> {
        let tx = self.db.begin_read().map_err(re)?;
        let t = tx.open_table(NS_USAGE).map_err(re)?;
        let (objects, bytes) = t.get(ns).map_err(re)?.map(|v| v.value()).unwrap_or((0, 0));
        Ok(NsUsage { objects, bytes })
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use super::*;
    use crate::raft::Command;

    fn tables(tx: &redb::WriteTransaction) -> ObjTables<'_> {
        ObjTables {
            ns: tx.open_table(NAMESPACES).unwrap(),
            objects: tx.open_table(OBJECTS).unwrap(),
            chunks: tx.open_table(CHUNKS).unwrap(),
            keys: tx.open_table(NS_KEYS).unwrap(),
            usage: tx.open_table(NS_USAGE).unwrap(),
        }
    }

    /// Applies `cmds` in one write transaction, as one log entry would.
    fn apply_all(db: &redb::Database, cmds: Vec<Command>) -> Vec<OpResult> {
        let tx = db.begin_write().unwrap();
        let out = {
            let mut t = tables(&tx);
            cmds.iter()
                .enumerate()
                .map(|(i, c)| apply(&mut t, i as u64, 1000, c).unwrap().unwrap())
                .collect()
        };
        tx.commit().unwrap();
        out
    }

    /// A fresh database in a temporary folder (kept while the folder lives).
    fn db() -> (tempfile::TempDir, Arc<redb::Database>) {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(redb::Database::create(dir.path().join("t.redb")).unwrap());
        (dir, db)
    }

    fn put(key: &str, chunks: &[u8]) -> Command {
        put_on("ns", key, chunks, &[2], 7, 1)
    }

    /// A put of `ns/key` made of 1-byte chunks `[c; 32]`, each recorded on `holders`.
    fn put_on(
        ns: &str,
        key: &str,
        chunks: &[u8],
        holders: &[crate::raft::NodeId],
        created_ms: u64,
        size: u64,
    ) -> Command {
        Command::ObjPut {
            ns: ns.into(),
            key: key.into(),
            manifest: Manifest {
                size,
                sha256: [0; 32],
                chunks: chunks.iter().map(|&c| ChunkRef { id: [c; 32], len: 1 }).collect(),
                holders: holders.to_vec(),
                created_ms,
            },
        }
    }

    #[test]
    fn the_shell_writes_what_the_plan_decided_into_redb() {
        let (_dir, db) = db();
        let policy = NsPolicy {
            copies: 1,
            min_sites: 1,
            versions_kept: 2,
            ..NsPolicy::default()
        };
        let r = apply_all(
            &db,
            vec![
                Command::NsCreate {
                    name: "ns".into(),
                    policy,
                },
                put("a", &[1, 2]),
                put("b", &[2]),
            ],
        );
        assert!(r.iter().all(|r| r.error.is_none()));
        // Within one transaction too, later commands see earlier ones' records.
        let reader = ObjectReader::new(db.clone());
        assert_eq!(reader.chunk(&[2; 32]).unwrap().map(|c| c.refs), Some(2));
        // Two more versions of a: version 1 is pruned, its chunk 1 goes, chunk 2 stays b's
        // and version 2's.
        apply_all(&db, vec![put("a", &[2, 3]), put("a", &[3])]);
        let versions: Vec<u64> = reader
            .list("ns", "a", true)
            .unwrap()
            .iter()
            .map(|o| o.version)
            .collect();
        assert_eq!(versions, vec![2, 3]);
        assert_eq!(reader.chunk(&[1; 32]).unwrap(), None);
        assert_eq!(reader.chunk(&[2; 32]).unwrap().map(|c| c.refs), Some(2));
        assert_eq!(
            reader.chunk(&[3; 32]).unwrap().map(|c| (c.refs, c.holders)),
            Some((2, vec![2]))
        );
        // Deleting b and then the namespace releases everything.
        let r = apply_all(
            &db,
            vec![
                Command::ObjDelete {
                    ns: "ns".into(),
                    key: "a".into(),
                },
                Command::ObjDelete {
                    ns: "ns".into(),
                    key: "b".into(),
                },
                Command::NsDelete { name: "ns".into() },
            ],
        );
        assert!(r.iter().all(|r| r.error.is_none()), "{r:?}");
        assert!(reader.chunks().unwrap().is_empty());
        assert!(reader.namespaces().unwrap().is_empty());
        assert!(reader.list("ns", "", true).unwrap().is_empty());
    }

    /// What a walk of the latest versions gives: the figures the kept counts must equal.
    fn recount(reader: &ObjectReader, ns: &str) -> NsUsage {
        let live = reader.list(ns, "", false).unwrap();
        NsUsage {
            objects: live.len() as u64,
            bytes: live.iter().map(|o| o.record.size).sum(),
        }
    }

    /// One step of the usage property: (namespace, key, what).
    #[derive(Debug, Clone)]
    enum Step {
        Create(usize, u32),
        Put(usize, usize, u64, u8),
        Delete(usize, usize),
        DropNs(usize),
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            (0..2usize, 1..4u32).prop_map(|(n, k)| Step::Create(n, k)),
            (0..2usize, 0..4usize, 0..5000u64, 1..6u8).prop_map(|(n, k, size, c)| Step::Put(n, k, size, c)),
            (0..2usize, 0..4usize).prop_map(|(n, k)| Step::Delete(n, k)),
            (0..2usize).prop_map(Step::DropNs),
        ]
    }

    #[test]
    fn namespace_usage_kept_on_apply_equals_a_recount_after_any_commands() {
        use proptest::prelude::*;
        let nss = ["ns", "nt"];
        let keys = ["a", "b", "c", "d"];
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            // Each transaction is a redb commit with an fsync.
            cases: 48,
            ..ProptestConfig::default()
        });
        let strategy = proptest::collection::vec(proptest::collection::vec(step(), 1..8), 1..6);
        let res = runner.run(&strategy, |batches| {
            let (_dir, db) = db();
            let reader = ObjectReader::new(db.clone());
            for batch in batches {
                let cmds = batch
                    .iter()
                    .map(|s| match *s {
                        Step::Create(n, kept) => Command::NsCreate {
                            name: nss[n].into(),
                            policy: NsPolicy {
                                copies: 1,
                                min_sites: 1,
                                versions_kept: kept,
                                ..NsPolicy::default()
                            },
                        },
                        Step::Put(n, k, size, c) => put_on(nss[n], keys[k], &[c], &[2], 1, size),
                        Step::Delete(n, k) => Command::ObjDelete {
                            ns: nss[n].into(),
                            key: keys[k].into(),
                        },
                        Step::DropNs(n) => Command::NsDelete { name: nss[n].into() },
                    })
                    .collect();
                // Refused commands (no such namespace, not empty) change nothing, counts included.
                apply_all(&db, cmds);
                for ns in nss {
                    prop_assert_eq!(reader.namespace_usage(ns).unwrap(), recount(&reader, ns), "{}", ns);
                }
            }
            Ok(())
        });
        if let Err(e) = res {
            panic!("{e}");
        }
    }

    #[test]
    fn namespace_usage_is_counted_for_an_older_database_and_after_a_snapshot_import() {
        // Through the node's own open, so that the start-up path is what is checked.
        let dir = tempfile::tempdir().unwrap();
        let open = || crate::raft::store::open_database(dir.path()).unwrap();
        let db = open();
        let policy = NsPolicy {
            copies: 1,
            min_sites: 1,
            versions_kept: 3,
            ..NsPolicy::default()
        };
        let mut cmds = vec![Command::NsCreate {
            name: "ns".into(),
            policy,
        }];
        // b: two versions, the latest counts. c: a tombstone, not counted.
        cmds.push(put_on("ns", "a", &[1], &[2], 30, 10));
        cmds.push(put_on("ns", "b", &[2], &[2], 5, 100));
        cmds.push(put_on("ns", "b", &[3], &[2, 3], 40, 20));
        cmds.push(put_on("ns", "c", &[4], &[2], 1, 1000));
        cmds.push(Command::ObjDelete {
            ns: "ns".into(),
            key: "c".into(),
        });
        apply_all(&db, cmds);
        let reader = ObjectReader::new(db.clone());
        let want = NsUsage { objects: 2, bytes: 30 };
        assert_eq!(reader.namespace_usage("ns").unwrap(), want);
        assert_eq!(recount(&reader, "ns"), want);
        assert_eq!(reader.namespace_usage("none").unwrap(), NsUsage::default());

        // A database written by a release without the counts: opening it counts them.
        let tx = db.begin_write().unwrap();
        assert!(tx.delete_table(NS_USAGE).unwrap());
        tx.commit().unwrap();
        drop((reader, db));
        let db = open();
        let reader = ObjectReader::new(db.clone());
        assert_eq!(reader.namespace_usage("ns").unwrap(), want);
        // Opening it again does not count twice.
        drop((reader, db));
        let db = open();
        let reader = ObjectReader::new(db.clone());
        assert_eq!(reader.namespace_usage("ns").unwrap(), want);

        // A snapshot carries no counts; importing one counts what it holds and drops the rest.
        let snap = export(&db.begin_read().unwrap()).unwrap();
        let (_dir2, other) = db_with_other_usage();
        let tx = other.begin_write().unwrap();
        import(&mut tables(&tx), &snap).unwrap();
        tx.commit().unwrap();
        let r2 = ObjectReader::new(other.clone());
        assert_eq!(r2.namespace_usage("ns").unwrap(), want);
        assert_eq!(r2.namespace_usage("gone").unwrap(), NsUsage::default());
    }

    /// A database whose counts name a namespace that a snapshot will not hold.
    fn db_with_other_usage() -> (tempfile::TempDir, Arc<redb::Database>) {
        let (dir, db) = db();
        let tx = db.begin_write().unwrap();
        tx.open_table(NS_USAGE).unwrap().insert("gone", (5, 50)).unwrap();
        tx.commit().unwrap();
        (dir, db)
    }

    /// Walks `list_page` from the start, `page` entries at a time, as the API's cursors do.
    fn walk(reader: &ObjectReader, prefix: &str, all_versions: bool, page: usize) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = Vec::new();
        let mut after: Option<(String, u64)> = None;
        for _ in 0..100 {
            let a = after.as_ref().map(|(k, v)| (k.as_str(), *v));
            let (entries, more) = reader.list_page("ns", prefix, all_versions, a, page).unwrap();
            assert!(entries.len() <= page);
            out.extend(entries.iter().map(|o| (o.key.clone(), o.version)));
            if !more {
                return out;
            }
            let last = entries.last().unwrap();
            after = Some((last.key.clone(), if all_versions { last.version } else { u64::MAX }));
        }
        panic!("the walk did not end");
    }

    #[test]
    fn pages_list_every_entry_once_in_order() {
        let (_dir, db) = db();
        let policy = NsPolicy {
            copies: 1,
            min_sites: 1,
            versions_kept: 3,
            ..NsPolicy::default()
        };
        let mut cmds = vec![Command::NsCreate {
            name: "ns".into(),
            policy,
        }];
        for k in ["a", "b", "c", "d", "e", "x"] {
            cmds.push(put(k, &[1]));
        }
        // b has three versions, d's latest is a tombstone, x is outside the prefix below.
        cmds.push(put("b", &[2]));
        cmds.push(put("b", &[3]));
        cmds.push(Command::ObjDelete {
            ns: "ns".into(),
            key: "d".into(),
        });
        apply_all(&db, cmds);
        let reader = ObjectReader::new(db.clone());
        let whole = |all: bool| -> Vec<(String, u64)> {
            reader
                .list("ns", "", all)
                .unwrap()
                .into_iter()
                .map(|o| (o.key, o.version))
                .collect()
        };
        for all in [false, true] {
            for page in 1..=12 {
                assert_eq!(
                    walk(&reader, "", all, page),
                    whole(all),
                    "all_versions {all}, page {page}"
                );
            }
        }
        let latest: Vec<String> = walk(&reader, "", false, 2).into_iter().map(|(k, _)| k).collect();
        assert_eq!(latest, ["a", "b", "c", "e", "x"]);
        assert_eq!(
            walk(&reader, "b", true, 1),
            [("b".to_string(), 1), ("b".into(), 2), ("b".into(), 3)]
        );
        // Exactly a page's worth says no more.
        let (first, more) = reader.list_page("ns", "", false, None, 5).unwrap();
        assert_eq!((first.len(), more), (5, false));
    }
}
