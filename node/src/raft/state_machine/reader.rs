//! Reads of the KV records for the client API: the overlay first, then redb.
//!
//! Owns [`KvReader`] and the merge of overlay and redb in a listing. Must not write: it opens
//! read transactions only and takes the overlay's lock for reading.

use std::collections::BTreeMap;
use std::sync::Arc;

use redb::Database;

use super::overlay::SharedOverlay;
use super::tables::{StoredValue, KV};
use crate::raft::codec::decode;

/// Read-only access to the KV tables for the client API.
#[derive(Clone)]
pub struct KvReader {
    pub(super) db: Arc<Database>,
    pub(super) overlay: SharedOverlay,
}

/// A read failed inside the database.
#[derive(Debug, thiserror::Error)]
#[error("state machine read failed: {0}")]
pub struct ReadError(String);

pub(super) fn rerr(e: impl std::fmt::Display) -> ReadError {
    ReadError(e.to_string())
}

impl KvReader {
    /// One key.
    pub fn get(&self, key: &str) -> Result<Option<StoredValue>, ReadError> {
        // The overlay first: a flush commits to redb before it empties the overlay.
        if let Some(v) = self.overlay.read().map_err(|_| rerr("overlay lock poisoned"))?.kv(key) {
            return Ok(v.clone());
        }
        let tx = self.db.begin_read().map_err(rerr)?;
        let t = tx.open_table(KV).map_err(rerr)?;
        match t.get(key).map_err(rerr)? {
            Some(v) => Ok(Some(decode(v.value()).map_err(rerr)?)),
            None => Ok(None),
        }
    }

    /// Keys starting with `prefix`, in order, at most `limit`; the flag says whether more
    /// matched.
    pub fn list(&self, prefix: &str, limit: usize) -> Result<(Vec<(String, StoredValue)>, bool), ReadError> {
        let newer: BTreeMap<String, Option<StoredValue>> = {
            let ov = self.overlay.read().map_err(|_| rerr("overlay lock poisoned"))?;
            let range = |m: &BTreeMap<String, Option<StoredValue>>| {
                m.range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
                    .take_while(|(k, _)| k.starts_with(prefix))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<Vec<_>>()
            };
            // The frozen generation is older: the active one overrides it.
            let mut newer: BTreeMap<_, _> = ov
                .frozen
                .as_ref()
                .map(|f| range(&f.kv))
                .unwrap_or_default()
                .into_iter()
                .collect();
            newer.extend(range(&ov.active.kv));
            newer
        };
        let tx = self.db.begin_read().map_err(rerr)?;
        let t = tx.open_table(KV).map_err(rerr)?;
        let mut stored = t.range::<&str>(prefix..).map_err(rerr)?;
        let mut next_stored = || -> Result<Option<(String, StoredValue)>, ReadError> {
            match stored.next() {
                Some(item) => {
                    let (k, v) = item.map_err(rerr)?;
                    let k = k.value();
                    if !k.starts_with(prefix) {
                        return Ok(None);
                    }
                    Ok(Some((k.to_string(), decode(v.value()).map_err(rerr)?)))
                }
                None => Ok(None),
            }
        };
        // Merge the two sorted sequences; the overlay wins on equal keys and its deletes hide
        // the stored record.
        let mut out = Vec::new();
        let mut newer = newer.into_iter().peekable();
        let mut s = next_stored()?;
        loop {
            let take_newer = match (newer.peek(), &s) {
                (None, None) => break,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (Some((nk, _)), Some((sk, _))) => nk <= sk,
            };
            let item = if take_newer {
                let Some((k, v)) = newer.next() else { break };
                if s.as_ref().is_some_and(|(sk, _)| *sk == k) {
                    s = next_stored()?;
                }
                v.map(|v| (k, v))
            } else {
                let item = s.take();
                s = next_stored()?;
                item
            };
            if let Some(item) = item {
                if out.len() == limit {
                    return Ok((out, true));
                }
                out.push(item);
            }
        }
        Ok((out, false))
    }
}
