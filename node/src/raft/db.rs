//! One value of a `&str`-keyed table of the node's redb database, read or written
//! durably, and the Raft meta table with its keys. The log store, the state machine and
//! log recovery all keep single values this way; it sits below them so that none of them
//! has to import another for it.
//!
//! Owns reading and durably writing single values. Must not touch: the tables' meaning.

use redb::{Database, Durability, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::codec::{decode, encode};

/// The Raft meta table: the vote, the purge point, the log-damage record.
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

/// The vote's key in [`META`].
pub(crate) const KEY_VOTE: &str = "vote";

/// One value of a `&str`-keyed table of the database, decoded; `None` when the key is absent.
pub(crate) fn read_value<T: DeserializeOwned>(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
) -> Result<Option<T>, String> {
    let tx = db.begin_read().map_err(|e| e.to_string())?;
    let t = tx.open_table(table).map_err(|e| e.to_string())?;
    let v = t.get(key).map_err(|e| e.to_string())?;
    match v {
        Some(v) => decode(v.value()).map(Some).map_err(|e| e.to_string()),
        None => Ok(None),
    }
}

/// Writes (or, with `None`, removes) one value of a `&str`-keyed table in a durable commit:
/// when this returns Ok, the change survives a crash.
pub(crate) fn write_value_durably<T: Serialize>(
    db: &Database,
    table: TableDefinition<&str, &[u8]>,
    key: &str,
    value: Option<&T>,
) -> Result<(), String> {
    let s = |e: &dyn std::fmt::Display| e.to_string();
    let mut tx = db.begin_write().map_err(|e| s(&e))?;
    tx.set_durability(Durability::Immediate);
    {
        let mut t = tx.open_table(table).map_err(|e| s(&e))?;
        match value {
            Some(v) => {
                let b = encode(v).map_err(|e| s(&e))?;
                t.insert(key, b.as_slice()).map_err(|e| s(&e))?;
            }
            None => {
                t.remove(key).map_err(|e| s(&e))?;
            }
        }
    }
    tx.commit().map_err(|e| s(&e))
}
