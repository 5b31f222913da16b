//! Reads of the KV records for the client API: the overlay first, then redb.
//!
//! Owns [`KvReader`] and the merge of overlay and redb in a listing. Must not write: it opens
//! read transactions only and takes the overlay's lock for reading.

use std::collections::BTreeMap;
use std::ops::Bound;
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
        self.list_after(prefix, None, limit)
    }

    /// [`Self::list`] from the first key after `after` (one page of a listing that goes on
    /// where the previous page ended).
    pub fn list_after(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<(String, StoredValue)>, bool), ReadError> {
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a),
            _ => Bound::Included(prefix),
        };
        let newer: BTreeMap<String, Option<StoredValue>> = {
            let ov = self.overlay.read().map_err(|_| rerr("overlay lock poisoned"))?;
            let range = |m: &BTreeMap<String, Option<StoredValue>>| {
                m.range::<str, _>((start, Bound::Unbounded))
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
        let mut stored = t.range::<&str>((start, Bound::Unbounded)).map_err(rerr)?;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    use super::*;
    use crate::raft::state_machine::StateMachine;
    use crate::raft::{Command, Op, TypeConfig};

    fn entry(index: u64, command: Command) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(crate::raft::Request {
                proposed_at_ms: 1_000 + index,
                ops: vec![Op {
                    request_id: format!("op-{index}").into_bytes(),
                    command,
                }],
            }),
        }
    }

    /// Every page after the previous page's last key, as the API's cursors walk.
    fn walk(r: &KvReader, prefix: &str, page: usize) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for _ in 0..1000 {
            let (items, more) = r.list_after(prefix, out.last().map(String::as_str), page).unwrap();
            assert!(items.len() <= page);
            out.extend(items.into_iter().map(|(k, _)| k));
            if !more {
                return out;
            }
        }
        panic!("the walk did not end: {out:?}");
    }

    #[tokio::test]
    async fn pages_walk_every_key_once_across_the_overlay_and_redb() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::raft::store::open_database(dir.path()).unwrap();
        let mut sm = StateMachine::new(db, dir.path());
        let r = sm.reader();
        let put = |i: u64, key: &str| {
            entry(
                i,
                Command::Put {
                    key: key.into(),
                    value: vec![1],
                },
            )
        };
        sm.apply((0..10).map(|i| put(i + 1, &format!("p/{i:02}"))).collect::<Vec<_>>())
            .await
            .unwrap();
        sm.flush_overlay().await.unwrap();
        // In the overlay: a delete of a stored key, a new key between stored ones, a key
        // outside the prefix.
        sm.apply(vec![
            entry(11, Command::Delete { key: "p/03".into() }),
            put(12, "p/045"),
            put(13, "q"),
        ])
        .await
        .unwrap();
        let (all, more) = r.list("p/", 100).unwrap();
        assert!(!more);
        let all: Vec<String> = all.into_iter().map(|(k, _)| k).collect();
        assert_eq!(all.len(), 10);
        assert!(!all.contains(&"p/03".to_string()) && all.contains(&"p/045".to_string()));
        for page in 1..=11 {
            assert_eq!(walk(&r, "p/", page), all, "page size {page}");
        }
        // A cursor before the prefix starts at the prefix.
        assert_eq!(r.list_after("p/", Some("a"), 1).unwrap().0[0].0, "p/00");
    }
}
