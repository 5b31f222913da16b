//! The Raft log on disk: append-only segment files under `<data_dir>/raft-log/`.
//!
//! A segment is named by the index its first entry has (or will have), 20 digits, `.wal`.
//! It holds records back to back, each `[payload length: u32 LE][CRC-32 of the length bytes
//! and the payload: u32 LE][payload]`, the payload being one encoded log entry. Appends
//! write at the end of the newest segment and become durable with one `fdatasync` per batch;
//! a segment past [`SEGMENT_BYTES`] is closed and a new one started.
//!
//! Ahead of the newest record the active segment keeps a runway of zeros, written and synced
//! between group commits ([`Wal::extend_runway`]): an append then overwrites blocks the file
//! already has, so its `fdatasync` writes the data alone. Growing the file instead makes every
//! `fdatasync` also write the inode (its new size), which on this project's disks doubles its
//! cost (0.34 against 0.15 ms per synchronous 4 KiB write, measured with `dd oflag=dsync`).
//! `fallocate` does not help: its extents are marked unwritten, and the first write to each
//! block updates them. So a segment ends in zero bytes that are not records; on open, a tail
//! of zeros after the last record is that runway, kept as it is. Truncation (a follower
//! dropping a conflicting suffix) cuts the file and deletes later segments; a purge (after a
//! snapshot) deletes segments that hold only purged entries.
//!
//! On open every segment is read back and checked. A bad record is a write torn by a crash
//! only if it is in the newest segment and no valid record of a later entry follows it
//! anywhere in that file (a crash tears only the last write, which was never acknowledged):
//! the tail is cut off there. Anything else (a bad record followed by a valid one, a bad
//! record in an older segment, a gap in the indices, missing first segments) is damage to
//! entries this node may have acknowledged. The log is then cut before the bad record, the
//! original files are kept under `raft-log/damaged/`, and the caller is told first (see
//! [`Damage`]; `store.rs` records it durably and the node abstains from votes and elections
//! until a leader has given it the lost entries back, `raft::recovery`).
//!
//! [`Wal`] is owned by the log writer thread; readers go through the shared [`WalIndex`],
//! which only ever lists records that are on disk and synced.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use openraft::LogId;

use super::NodeId;

/// A segment is closed once it reaches this size (a single larger entry still fits).
pub(crate) const SEGMENT_BYTES: u64 = 64 << 20;
/// Zero-filled space kept ahead of the newest record (see the module's documentation); it is
/// topped up once less than half of it is left.
const RUNWAY: u64 = 8 << 20;
const HEADER: usize = 8;
const SUFFIX: &str = ".wal";

/// Where one durable entry lives.
#[derive(Debug, Clone, Copy)]
struct Loc {
    seg: u64,
    offset: u64,
    len: u32,
    log_id: LogId<NodeId>,
}

/// The durable entries, in index order without gaps, and the files holding them.
#[derive(Default)]
pub(crate) struct WalIndex {
    segments: BTreeMap<u64, Arc<File>>,
    locs: VecDeque<Loc>,
}

/// Readers' view of the log files.
pub(crate) type SharedIndex = Arc<RwLock<WalIndex>>;

fn crc(len: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn corrupt(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl WalIndex {
    /// The newest durable entry.
    pub(crate) fn last(&self) -> Option<LogId<NodeId>> {
        self.locs.back().map(|l| l.log_id)
    }

    fn first_index(&self) -> Option<u64> {
        self.locs.front().map(|l| l.log_id.index)
    }

    /// Position in `locs` of the first entry with an index at or above `index` (the entries
    /// are in index order; openraft never leaves a gap, but nothing here relies on that).
    fn pos_at_or_after(&self, index: u64) -> usize {
        self.locs.partition_point(|l| l.log_id.index < index)
    }

    /// Calls `f` with the index and payload of every durable entry in `[start, end)`, in
    /// order, each checked against its CRC first.
    pub(crate) fn read_range(
        &self,
        start: u64,
        end: u64,
        mut f: impl FnMut(u64, &[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut buf = Vec::new();
        for loc in self.locs.iter().skip(self.pos_at_or_after(start)) {
            if loc.log_id.index >= end {
                break;
            }
            let file = self
                .segments
                .get(&loc.seg)
                .ok_or_else(|| io::Error::other(format!("raft log segment {} is missing", loc.seg)))?;
            buf.resize(HEADER + loc.len as usize, 0);
            file.read_exact_at(&mut buf, loc.offset)?;
            let stored = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
            let payload = &buf[HEADER..];
            if stored != crc(loc.len, payload) {
                return Err(corrupt(format!(
                    "raft log entry {} (segment {}, byte {}) fails its checksum",
                    loc.log_id.index, loc.seg, loc.offset
                )));
            }
            f(loc.log_id.index, payload)?;
        }
        Ok(())
    }
}

/// What opening the log found, for the startup log line.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Recovered {
    /// Segment files read.
    pub segments: usize,
    /// Entries after the last purge.
    pub entries: usize,
    /// Bytes cut off the end of the newest segment (a write torn by a crash).
    pub torn_bytes: u64,
    /// Corruption found and cut off (see [`Damage`]).
    pub damage: Option<Damage>,
}

/// A bad record that is not a torn tail: entries this node may have acknowledged are gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Damage {
    /// The segment holding the bad record.
    pub segment: PathBuf,
    /// Its byte offset there.
    pub offset: u64,
    /// The first entry the log no longer holds: the log now ends just before it.
    pub first_lost: u64,
    /// What was wrong with the record.
    pub why: String,
    /// Where the original files went (`raft-log/damaged/`), for a post-mortem.
    pub kept_in: PathBuf,
}

/// Where damaged segments are kept, inside the log directory (not a segment name).
const DAMAGED_DIR: &str = "damaged";

/// Checks the record at the start of `rest`: `Ok` with its length and log id, or why not.
fn check_record(
    rest: &[u8],
    id_of: &impl Fn(&[u8]) -> Result<LogId<NodeId>, String>,
) -> Result<(u32, LogId<NodeId>), String> {
    if rest.len() < HEADER {
        return Err("a record header is cut short".to_string());
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
    let stored = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
    if len == 0 || len as usize > rest.len() - HEADER {
        return Err(format!("a record claims {len} bytes, {} remain", rest.len() - HEADER));
    }
    let payload = &rest[HEADER..HEADER + len as usize];
    // The id first: it is cheap, and on garbage it fails before the checksum is computed.
    let log_id = id_of(payload).map_err(|e| format!("a record does not decode: {e}"))?;
    if stored != crc(len, payload) {
        return Err("a record fails its checksum".to_string());
    }
    Ok((len, log_id))
}

/// Whether a valid record of an entry numbered from `first` on starts anywhere in
/// `data[from..]`.
///
/// This decides between a torn write and corruption. A crash can only tear the last write,
/// so nothing valid follows a torn record; a record that fails its check and is followed by
/// a later valid entry was damaged after it was written (and possibly acknowledged). A
/// candidate's id must fall in a window above `first` before its checksum is computed, so
/// the scan costs little on garbage (a random id lands there once in 2^32).
fn valid_record_after(
    data: &[u8],
    from: usize,
    first: u64,
    id_of: &impl Fn(&[u8]) -> Result<LogId<NodeId>, String>,
) -> bool {
    let window = first..first.saturating_add(1 << 32);
    (from..data.len().saturating_sub(HEADER)).any(|p| {
        let rest = &data[p..];
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len == 0 || len > rest.len() - HEADER {
            return false;
        }
        match id_of(&rest[HEADER..HEADER + len]) {
            Ok(id) if window.contains(&id.index) => check_record(rest, id_of).is_ok(),
            _ => false,
        }
    })
}

/// The writer's side of the log files.
pub(crate) struct Wal {
    dir: PathBuf,
    shared: SharedIndex,
    /// Size at which the active segment is closed ([`SEGMENT_BYTES`]; small in tests).
    segment_bytes: u64,
    active_key: u64,
    active: Arc<File>,
    active_len: u64,
    active_dirty: bool,
    /// Where the active segment's file ends: from `active_len` up to here it holds zeros.
    prealloc_end: u64,
    /// The runway could not be extended for lack of space; not retried in this segment.
    runway_full: bool,
    /// Records encoded but not yet written to `active`.
    buf: Vec<u8>,
    /// Written since the last [`Wal::commit`], not yet visible to readers.
    pending_locs: Vec<Loc>,
    pending_segments: Vec<(u64, Arc<File>)>,
    dirty: Vec<Arc<File>>,
    dir_dirty: bool,
}

fn segment_path(dir: &Path, key: u64) -> PathBuf {
    dir.join(format!("{key:020}{SUFFIX}"))
}

pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn lock_err() -> io::Error {
    io::Error::other("raft log index lock poisoned")
}

impl Wal {
    /// Opens the log under `dir` (created if missing), checks every record and returns the
    /// writer with the shared index. Entries at or below `last_purged` are skipped; `id_of`
    /// reads an entry's log id from its payload.
    ///
    /// A torn tail is cut off. Any other bad record (or a gap, or missing first segments) is
    /// damage: `before_cut` is called with it first (the log store records it durably, so the
    /// node abstains from elections until it has fetched the lost entries again even if it
    /// restarts meanwhile), then the log is cut just before the bad record, the original
    /// files being kept under `raft-log/damaged/`. If `before_cut` fails nothing is changed.
    pub(crate) fn open(
        dir: &Path,
        last_purged: Option<u64>,
        id_of: impl Fn(&[u8]) -> Result<LogId<NodeId>, String>,
        before_cut: impl FnOnce(&Damage) -> io::Result<()>,
    ) -> io::Result<(Self, Recovered)> {
        std::fs::create_dir_all(dir)?;
        let mut keys = Vec::new();
        for ent in std::fs::read_dir(dir)? {
            let name = ent?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(stem) = name.strip_suffix(SUFFIX) {
                if stem.len() == 20 {
                    if let Ok(k) = stem.parse::<u64>() {
                        keys.push(k);
                    }
                }
            }
        }
        keys.sort_unstable();
        let mut index = WalIndex::default();
        let mut rec = Recovered::default();
        let mut active_len = 0;
        let first_expected = last_purged.map_or(0, |p| p.saturating_add(1));
        // Where to cut: the segment's key, the offset, why, and whether it is a torn tail.
        let mut cut: Option<(u64, usize, String, bool)> = None;
        for (i, &key) in keys.iter().enumerate() {
            let path = segment_path(dir, key);
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let mut data = Vec::new();
            (&file).read_to_end(&mut data)?;
            index.segments.insert(key, Arc::new(file));
            let last_segment = i + 1 == keys.len();
            let mut off = 0usize;
            let bad = loop {
                let rest = &data[off..];
                // Nothing, or only zeros (the runway, never a record: a record's length is
                // never 0): the end of this segment's records.
                if rest.iter().all(|b| *b == 0) {
                    break None;
                }
                let (len, log_id) = match check_record(rest, &id_of) {
                    Ok(r) => r,
                    Err(why) => {
                        let next = index.last().map_or(first_expected, |l| l.index.saturating_add(1));
                        let torn = last_segment && !valid_record_after(&data, off + 1, next, &id_of);
                        break Some((why, torn));
                    }
                };
                // A segment is named after its first entry (rotation, truncation, purge and
                // recovery all keep it so): anything else is damage, e.g. a segment emptied or
                // replaced while a later one exists.
                if off == 0 && log_id.index != key {
                    break Some((format!("the segment's first entry is {}", log_id.index), false));
                }
                if last_purged.is_none_or(|p| log_id.index > p) {
                    if let Some(prev) = index.last() {
                        if Some(log_id.index) != prev.index.checked_add(1) {
                            break Some((
                                format!("entry {} follows entry {}: the log has a gap", log_id.index, prev.index),
                                false,
                            ));
                        }
                    }
                    index.locs.push_back(Loc {
                        seg: key,
                        offset: off as u64,
                        len,
                        log_id,
                    });
                }
                off += HEADER + len as usize;
            };
            if let Some((why, torn)) = bad {
                cut = Some((key, off, why, torn));
                break;
            }
            if off == 0 && !last_segment {
                cut = Some((key, 0, "the segment is empty but a later one exists".to_string(), false));
                break;
            }
            if last_segment {
                active_len = off as u64;
            }
        }
        if let (None, Some(first), Some(&key)) = (&cut, index.first_index(), keys.first()) {
            if first > first_expected {
                let why = match last_purged {
                    Some(p) => format!("the log starts at entry {first} but only entries up to {p} were purged"),
                    None => format!("the log starts at entry {first} but nothing was purged"),
                };
                cut = Some((key, 0, why, false));
            }
        }
        if let Some((key, off, why, torn)) = cut {
            index.locs.retain(|l| (l.seg, l.offset) < (key, off as u64));
            let path = segment_path(dir, key);
            if torn {
                tracing::warn!(segment = %path.display(), offset = off, reason = %why,
                    "cutting a torn write off the end of the raft log (nothing valid follows it)");
                let file = index.segments.get(&key).cloned().ok_or_else(|| lost_segment(key))?;
                rec.torn_bytes = file.metadata()?.len() - off as u64;
                file.set_len(off as u64)?;
                file.sync_all()?;
                active_len = off as u64;
            } else {
                let damage = Damage {
                    segment: path.clone(),
                    offset: off as u64,
                    first_lost: index.last().map_or(first_expected, |l| l.index.saturating_add(1)),
                    why,
                    kept_in: dir.join(DAMAGED_DIR),
                };
                before_cut(&damage)?;
                let later: Vec<u64> = keys.iter().copied().filter(|k| *k > key).collect();
                active_len = cut_damaged(dir, &mut index, (key, off as u64), &later, damage.first_lost)?;
                rec.damage = Some(damage);
            }
        }
        rec.segments = index.segments.len();
        rec.entries = index.locs.len();
        let (active_key, active) = match index.segments.last_key_value() {
            Some((k, f)) => (*k, f.clone()),
            None => {
                let key = first_expected;
                let f = Arc::new(create_segment(dir, key)?);
                index.segments.insert(key, f.clone());
                (key, f)
            }
        };
        // Whatever lies past the records is zeros: the runway an earlier run left.
        let prealloc_end = active.metadata()?.len().max(active_len);
        let wal = Self {
            dir: dir.to_path_buf(),
            shared: Arc::new(RwLock::new(index)),
            segment_bytes: SEGMENT_BYTES,
            active_key,
            active,
            active_len,
            active_dirty: false,
            prealloc_end,
            runway_full: false,
            buf: Vec::new(),
            pending_locs: Vec::new(),
            pending_segments: Vec::new(),
            dirty: Vec::new(),
            dir_dirty: false,
        };
        Ok((wal, rec))
    }

    /// The index readers use.
    pub(crate) fn shared(&self) -> SharedIndex {
        self.shared.clone()
    }

    /// Queues one entry; it is written, synced and visible after the next [`Wal::commit`].
    pub(crate) fn append(&mut self, log_id: LogId<NodeId>, payload: &[u8]) -> io::Result<()> {
        let len = u32::try_from(payload.len())
            .map_err(|_| io::Error::other(format!("log entry of {} bytes is too large", payload.len())))?;
        let used = self.active_len + self.buf.len() as u64;
        if used > 0 && used + (HEADER + payload.len()) as u64 > self.segment_bytes {
            // The closed segment is synced before the next one exists: after a crash, only the
            // newest segment can end in a torn record.
            self.write_buf()?;
            if self.active_dirty {
                self.active.sync_data()?;
                self.dirty.retain(|f| !Arc::ptr_eq(f, &self.active));
            }
            let f = Arc::new(create_segment(&self.dir, log_id.index)?);
            self.pending_segments.push((log_id.index, f.clone()));
            self.set_active(log_id.index, f, 0);
            self.dir_dirty = true;
        }
        let offset = self.active_len + self.buf.len() as u64;
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(&crc(len, payload).to_le_bytes());
        self.buf.extend_from_slice(payload);
        self.pending_locs.push(Loc {
            seg: self.active_key,
            offset,
            len,
            log_id,
        });
        Ok(())
    }

    fn set_active(&mut self, key: u64, file: Arc<File>, len: u64) {
        // Callers have just created the file or cut it at `len`: nothing lies beyond.
        self.active_key = key;
        self.active = file;
        self.active_len = len;
        self.active_dirty = false;
        self.prealloc_end = len;
        self.runway_full = false;
    }

    /// Tops up the zeros ahead of the newest record of the active segment (up to [`RUNWAY`],
    /// within [`SEGMENT_BYTES`]) and syncs them, once less than half the runway is left.
    /// Called by the log writer between group commits, so that the cost falls on no
    /// acknowledged write. A full disk only stops the runway from growing (appends then grow
    /// the file, and fail themselves if there is no room); any other error is returned.
    pub(crate) fn extend_runway(&mut self) -> io::Result<()> {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        // Records still in `buf` go at `active_len` when written, over these zeros.
        let have = self.prealloc_end.max(self.active_len);
        if self.runway_full || have >= self.segment_bytes || have - self.active_len >= RUNWAY / 2 {
            return Ok(());
        }
        let target = (self.active_len + RUNWAY).min(self.segment_bytes);
        let mut at = have;
        while at < target {
            let n = (target - at).min(ZEROS.len() as u64) as usize;
            match self.active.write_all_at(&ZEROS[..n], at) {
                Ok(()) => at += n as u64,
                Err(e) if e.kind() == io::ErrorKind::StorageFull => {
                    self.runway_full = true;
                    // Whatever got written is still zeros beyond the records.
                    at = self.active.metadata()?.len().max(self.active_len);
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if at > have {
            self.active.sync_data()?;
        }
        self.prealloc_end = at;
        Ok(())
    }

    fn write_buf(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.active.write_all_at(&self.buf, self.active_len)?;
        self.active_len += self.buf.len() as u64;
        self.buf.clear();
        if !self.active_dirty {
            self.active_dirty = true;
            self.dirty.push(self.active.clone());
        }
        Ok(())
    }

    /// Writes and syncs everything appended since the last commit, then makes it visible to
    /// readers. When this returns Ok the entries survive a crash.
    pub(crate) fn commit(&mut self) -> io::Result<()> {
        self.write_buf()?;
        for f in self.dirty.drain(..) {
            f.sync_data()?;
        }
        self.active_dirty = false;
        if std::mem::take(&mut self.dir_dirty) {
            sync_dir(&self.dir)?;
        }
        let mut idx = self.shared.write().map_err(|_| lock_err())?;
        for (k, f) in self.pending_segments.drain(..) {
            idx.segments.insert(k, f);
        }
        idx.locs.extend(self.pending_locs.drain(..));
        Ok(())
    }

    /// Drops every entry at or above `from`, durably.
    pub(crate) fn truncate(&mut self, from: u64) -> io::Result<()> {
        self.commit()?;
        let shared = self.shared.clone();
        let mut idx = shared.write().map_err(|_| lock_err())?;
        let pos = idx.pos_at_or_after(from);
        let Some(cut) = idx.locs.get(pos).copied() else {
            return Ok(());
        };
        idx.locs.truncate(pos);
        let later: Vec<u64> = idx.segments.range(cut.seg + 1..).map(|(k, _)| *k).collect();
        for k in &later {
            idx.segments.remove(k);
            std::fs::remove_file(segment_path(&self.dir, *k))?;
        }
        let file = idx
            .segments
            .get(&cut.seg)
            .cloned()
            .ok_or_else(|| io::Error::other(format!("raft log segment {} is missing", cut.seg)))?;
        file.set_len(cut.offset)?;
        file.sync_data()?;
        if !later.is_empty() {
            sync_dir(&self.dir)?;
        }
        drop(idx);
        self.set_active(cut.seg, file, cut.offset);
        Ok(())
    }

    /// Forgets every entry at or below `upto` and deletes the segments that held only such
    /// entries. The caller records the purge durably first.
    pub(crate) fn purge(&mut self, upto: u64) -> io::Result<()> {
        self.commit()?;
        let shared = self.shared.clone();
        let mut idx = shared.write().map_err(|_| lock_err())?;
        while idx.locs.front().is_some_and(|l| l.log_id.index <= upto) {
            idx.locs.pop_front();
        }
        let keep_from = match idx.locs.front() {
            Some(l) => l.seg,
            None => {
                // Everything is purged (possibly past the end, after a snapshot install): the
                // next entry is `upto + 1`, so it starts a fresh segment of that name.
                if self.active_len > 0 || self.active_key <= upto {
                    let key = upto + 1;
                    let f = Arc::new(create_segment(&self.dir, key)?);
                    sync_dir(&self.dir)?;
                    idx.segments.insert(key, f.clone());
                    self.set_active(key, f, 0);
                }
                self.active_key
            }
        };
        let old: Vec<u64> = idx.segments.range(..keep_from).map(|(k, _)| *k).collect();
        for k in &old {
            idx.segments.remove(k);
            std::fs::remove_file(segment_path(&self.dir, *k))?;
        }
        if !old.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }
}

fn lost_segment(key: u64) -> io::Error {
    io::Error::other(format!("raft log segment {key} is missing"))
}

/// Cuts the log at byte `off` of segment `key` after damage, keeping the original files in
/// `raft-log/damaged/` (a copy of the damaged segment, the later ones moved there), and
/// returns the length of the segment now appended to. A segment cut to nothing is moved
/// aside whole and replaced by an empty one named after `first_lost`, the next entry.
fn cut_damaged(
    dir: &Path,
    index: &mut WalIndex,
    (key, off): (u64, u64),
    later: &[u64],
    first_lost: u64,
) -> io::Result<u64> {
    let kept = dir.join(DAMAGED_DIR);
    std::fs::create_dir_all(&kept)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let aside = |k: u64| kept.join(format!("{k:020}{SUFFIX}.{stamp}"));
    for &k in later {
        index.segments.remove(&k);
        std::fs::rename(segment_path(dir, k), aside(k))?;
    }
    let len = if off == 0 {
        index.segments.remove(&key);
        std::fs::rename(segment_path(dir, key), aside(key))?;
        index
            .segments
            .insert(first_lost, Arc::new(create_segment(dir, first_lost)?));
        0
    } else {
        let copy = aside(key);
        std::fs::copy(segment_path(dir, key), &copy)?;
        File::open(&copy)?.sync_all()?;
        let file = index.segments.get(&key).ok_or_else(|| lost_segment(key))?;
        file.set_len(off)?;
        file.sync_all()?;
        off
    };
    sync_dir(&kept)?;
    sync_dir(dir)?;
    Ok(len)
}

fn create_segment(dir: &Path, key: u64) -> io::Result<File> {
    let path = segment_path(dir, key);
    // A leftover file of the same name can only hold entries that were truncated or purged.
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot create raft log segment {}: {e}", path.display()),
            )
        })
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn id(index: u64) -> LogId<NodeId> {
        LogId::new(CommittedLeaderId::new(1, 1), index)
    }

    /// Payload: the index, then filler, so that recovery can read the id back.
    fn payload(index: u64, size: usize) -> Vec<u8> {
        let mut p = index.to_le_bytes().to_vec();
        p.resize(size.max(8), (index % 251) as u8);
        p
    }

    fn id_of(p: &[u8]) -> Result<LogId<NodeId>, String> {
        let b: [u8; 8] = p.get(..8).ok_or("short")?.try_into().map_err(|_| "short")?;
        Ok(id(u64::from_le_bytes(b)))
    }

    fn read_all(w: &Wal) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        w.shared()
            .read()
            .unwrap()
            .read_range(0, u64::MAX, |i, p| {
                out.push((i, p.to_vec()));
                Ok(())
            })
            .unwrap();
        out
    }

    fn indices(w: &Wal) -> Vec<u64> {
        read_all(w).into_iter().map(|(i, _)| i).collect()
    }

    /// Opens with 1000-byte segments so that a few entries span several files.
    fn open(dir: &Path, last_purged: Option<u64>) -> io::Result<(Wal, Recovered)> {
        let (mut w, r) = Wal::open(dir, last_purged, id_of, |_| Ok(()))?;
        w.segment_bytes = 1000;
        Ok((w, r))
    }

    fn flip(path: &Path, at: u64) {
        let f = OpenOptions::new().read(true).write(true).open(path).unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x20], at).unwrap();
    }

    fn append(w: &mut Wal, range: std::ops::Range<u64>, size: usize) {
        for i in range {
            w.append(id(i), &payload(i, size)).unwrap();
        }
        w.commit().unwrap();
    }

    fn segments(dir: &Path) -> usize {
        std::fs::read_dir(dir).unwrap().count()
    }

    #[test]
    fn entries_survive_reopen_and_are_invisible_until_committed() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, rec) = open(d.path(), None).unwrap();
        assert_eq!(rec, Recovered::default());
        append(&mut w, 0..10, 100);
        w.append(id(10), &payload(10, 100)).unwrap();
        assert_eq!(indices(&w), (0..10).collect::<Vec<_>>());
        w.commit().unwrap();
        drop(w);
        let (w, rec) = open(d.path(), None).unwrap();
        assert_eq!(rec.entries, 11);
        let all = read_all(&w);
        assert_eq!(all.len(), 11);
        for (i, p) in all {
            assert_eq!(p, payload(i, 100));
        }
    }

    #[test]
    fn a_torn_tail_is_cut_and_appends_continue_after_it() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, _) = open(d.path(), None).unwrap();
        append(&mut w, 0..5, 50);
        drop(w);
        let seg = segment_path(d.path(), 0);
        let full = std::fs::metadata(&seg).unwrap().len();
        // A crash in the middle of writing a sixth record.
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&[40, 0, 0, 0, 1, 2, 3, 4, 9, 9], full).unwrap();
        drop(f);
        let (mut w, rec) = open(d.path(), None).unwrap();
        assert_eq!(rec.torn_bytes, 10);
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), full);
        append(&mut w, 5..7, 50);
        drop(w);
        let (w, _) = open(d.path(), None).unwrap();
        assert_eq!(indices(&w), (0..7).collect::<Vec<_>>());
    }

    #[test]
    fn a_flipped_byte_is_caught_on_read_and_cut_as_damage_when_not_at_the_tail() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, _) = open(d.path(), None).unwrap();
        // Two segments: big entries force a rotation.
        let big = 500;
        append(&mut w, 0..3, big);
        assert_eq!(segments(d.path()), 3);
        let first = segment_path(d.path(), 0);
        flip(&first, 100);
        let res = w.shared().read().unwrap().read_range(0, 1, |_, _| Ok(()));
        assert_eq!(res.unwrap_err().kind(), io::ErrorKind::InvalidData);
        drop(w);
        let mut told = None;
        let (w, rec) = Wal::open(d.path(), None, id_of, |dmg| {
            told = Some(dmg.clone());
            Ok(())
        })
        .unwrap();
        let dmg = rec.damage.expect("damage reported");
        assert_eq!(told.as_ref(), Some(&dmg), "the caller is told before the cut");
        assert_eq!((dmg.first_lost, dmg.offset), (0, 0));
        assert!(indices(&w).is_empty());
        // The originals are kept for a post-mortem: every segment, the damaged one included.
        assert_eq!(std::fs::read_dir(d.path().join(DAMAGED_DIR)).unwrap().count(), 3);
    }

    #[test]
    fn a_flipped_byte_in_the_middle_of_the_newest_segment_is_damage_not_a_torn_tail() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, _) = open(d.path(), None).unwrap();
        w.segment_bytes = SEGMENT_BYTES;
        append(&mut w, 0..30, 60);
        drop(w);
        let seg = segment_path(d.path(), 0);
        let rec_len = (HEADER + 60) as u64;
        // Entry 10: once in its payload, once (another run) in its length field.
        for at in [10 * rec_len + HEADER as u64 + 20, 10 * rec_len + 1] {
            let d2 = tempfile::tempdir().unwrap();
            std::fs::copy(&seg, segment_path(d2.path(), 0)).unwrap();
            flip(&segment_path(d2.path(), 0), at);
            let mut calls = 0;
            let (w, rec) = Wal::open(d2.path(), None, id_of, |_| {
                calls += 1;
                Ok(())
            })
            .unwrap();
            assert_eq!(calls, 1, "flip at {at}");
            assert_eq!(rec.torn_bytes, 0, "flip at {at}: not a torn write");
            let dmg = rec.damage.unwrap();
            assert_eq!((dmg.first_lost, dmg.offset), (10, 10 * rec_len));
            assert_eq!(indices(&w), (0..10).collect::<Vec<_>>());
            // The log continues right after the cut.
            drop(w);
            let (mut w, rec) = open(d2.path(), None).unwrap();
            assert_eq!(rec.damage, None);
            append(&mut w, 10..12, 60);
            assert_eq!(indices(&w), (0..12).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_failed_report_of_damage_changes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, _) = open(d.path(), None).unwrap();
        w.segment_bytes = SEGMENT_BYTES;
        append(&mut w, 0..10, 60);
        drop(w);
        let seg = segment_path(d.path(), 0);
        flip(&seg, 3 * (HEADER as u64 + 60) + 30);
        let before = std::fs::read(&seg).unwrap();
        let err = Wal::open(d.path(), None, id_of, |_| Err(io::Error::other("disk full")))
            .err()
            .unwrap();
        assert!(err.to_string().contains("disk full"), "{err}");
        assert_eq!(std::fs::read(&seg).unwrap(), before);
    }

    #[test]
    fn a_zero_filled_tail_is_unwritten_space_kept_for_later_appends() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, _) = open(d.path(), None).unwrap();
        w.segment_bytes = SEGMENT_BYTES;
        append(&mut w, 0..5, 60);
        drop(w);
        let seg = segment_path(d.path(), 0);
        let full = std::fs::metadata(&seg).unwrap().len();
        // The file grew but the pages of the last write never reached the disk: zeros, which
        // is also what the runway ahead of the records looks like.
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&[0u8; 4096], full).unwrap();
        drop(f);
        let (mut w, rec) = open(d.path(), None).unwrap();
        w.segment_bytes = SEGMENT_BYTES;
        assert_eq!((rec.entries, rec.torn_bytes, rec.damage), (5, 0, None));
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), full + 4096);
        // Appends go right after the last record, into the zeros.
        append(&mut w, 5..8, 60);
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), full + 4096);
        drop(w);
        let (w, rec) = open(d.path(), None).unwrap();
        assert_eq!((rec.torn_bytes, rec.damage), (0, None));
        assert_eq!(indices(&w), (0..8).collect::<Vec<_>>());
        for (i, p) in read_all(&w) {
            assert_eq!(p, payload(i, 60));
        }
    }

    /// Appends with the runway topped up after each commit, as the log writer does.
    fn append_with_runway(w: &mut Wal, range: std::ops::Range<u64>, size: usize) {
        for i in range {
            w.append(id(i), &payload(i, size)).unwrap();
            w.commit().unwrap();
            w.extend_runway().unwrap();
        }
    }

    #[test]
    fn appends_overwrite_the_runway_in_place_and_survive_reopen_across_segments() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, _) = open(d.path(), None).unwrap();
        append_with_runway(&mut w, 0..3, 100);
        let seg = segment_path(d.path(), 0);
        // The runway reaches the segment's size (1000 bytes in these tests) ahead of time.
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), 1000);
        append_with_runway(&mut w, 3..40, 100);
        assert!(
            segments(d.path()) > 3,
            "several segments, each closed with zeros after its records"
        );
        drop(w);
        let (mut w, rec) = open(d.path(), None).unwrap();
        assert_eq!((rec.entries, rec.torn_bytes, rec.damage), (40, 0, None));
        append_with_runway(&mut w, 40..45, 100);
        drop(w);
        let (w, rec) = open(d.path(), None).unwrap();
        assert_eq!((rec.torn_bytes, rec.damage), (0, None));
        assert_eq!(indices(&w), (0..45).collect::<Vec<_>>());
        for (i, p) in read_all(&w) {
            assert_eq!(p, payload(i, 100));
        }
    }

    #[test]
    fn a_torn_record_before_the_runway_is_cut_as_torn() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, _) = open(d.path(), None).unwrap();
        w.segment_bytes = SEGMENT_BYTES;
        append_with_runway(&mut w, 0..5, 60);
        let end = w.active_len;
        assert!(std::fs::metadata(segment_path(d.path(), 0)).unwrap().len() > end + 4096);
        drop(w);
        // Half of the next record reached the disk: its header and some payload, then zeros.
        let mut rec6 = Vec::new();
        rec6.extend_from_slice(&60u32.to_le_bytes());
        rec6.extend_from_slice(&crc(60, &payload(5, 60)).to_le_bytes());
        rec6.extend_from_slice(&payload(5, 60)[..30]);
        let seg = segment_path(d.path(), 0);
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .write_all_at(&rec6, end)
            .unwrap();
        let (w, rec) = open(d.path(), None).unwrap();
        assert_eq!(rec.damage, None);
        assert!(rec.torn_bytes > 0);
        assert_eq!(std::fs::metadata(&seg).unwrap().len(), end);
        assert_eq!(indices(&w), (0..5).collect::<Vec<_>>());
    }

    #[test]
    fn zeros_over_a_record_followed_by_a_valid_one_are_damage_not_runway() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, _) = open(d.path(), None).unwrap();
        w.segment_bytes = SEGMENT_BYTES;
        append_with_runway(&mut w, 0..6, 60);
        drop(w);
        // Entry 3's record (each record: 8 header bytes + 60) lost to zeros; 4 and 5 are intact.
        let seg = segment_path(d.path(), 0);
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&[0u8; 68], 3 * 68).unwrap();
        drop(f);
        let (w, rec) = open(d.path(), None).unwrap();
        let damage = rec.damage.expect("damage, not a clean end");
        assert_eq!((damage.offset, damage.first_lost), (3 * 68, 3));
        assert_eq!(indices(&w), vec![0, 1, 2]);
    }

    #[test]
    fn an_older_segment_whose_last_records_became_zeros_is_a_gap() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, _) = open(d.path(), None).unwrap();
        append_with_runway(&mut w, 0..20, 100);
        drop(w);
        // The first segment holds entries 0..=8 (108-byte records, 1000-byte segments): its
        // last record becomes zeros, so it seems to end one entry early.
        let seg = segment_path(d.path(), 0);
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&[0u8; 108], 8 * 108).unwrap();
        drop(f);
        let (w, rec) = open(d.path(), None).unwrap();
        let damage = rec.damage.expect("a gap is damage");
        assert_eq!(damage.first_lost, 8);
        assert_eq!(indices(&w), (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn a_gap_in_the_indices_is_damage() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, _) = open(d.path(), None).unwrap();
        append(&mut w, 0..3, 20);
        append(&mut w, 5..7, 20);
        drop(w);
        let (w, rec) = open(d.path(), None).unwrap();
        assert_eq!(rec.damage.unwrap().first_lost, 3);
        assert_eq!(indices(&w), vec![0, 1, 2]);
    }

    #[test]
    fn truncate_drops_the_suffix_across_segments_durably() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, _) = open(d.path(), None).unwrap();
        let big = 330;
        append(&mut w, 0..7, big);
        assert!(segments(d.path()) >= 3);
        w.truncate(2).unwrap();
        assert_eq!(indices(&w), vec![0, 1]);
        // The segment that began at entry 2 stays, empty, as the one appended to next.
        assert_eq!(segments(d.path()), 2);
        // Re-append different entries at the same indices (a new leader's suffix).
        append(&mut w, 2..4, 10);
        drop(w);
        let (w, _) = open(d.path(), None).unwrap();
        let all = read_all(&w);
        assert_eq!(all.iter().map(|(i, _)| *i).collect::<Vec<_>>(), vec![0, 1, 2, 3]);
        assert_eq!(all[2].1, payload(2, 10));
    }

    #[test]
    fn purge_deletes_old_segments_and_reopen_skips_purged_entries() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, _) = open(d.path(), None).unwrap();
        let big = 330;
        append(&mut w, 0..7, big);
        let before = segments(d.path());
        w.purge(4).unwrap();
        assert!(segments(d.path()) < before);
        assert_eq!(indices(&w), vec![5, 6]);
        drop(w);
        let (w, rec) = open(d.path(), Some(4)).unwrap();
        assert_eq!(rec.entries, 2);
        assert_eq!(indices(&w), vec![5, 6]);
    }

    #[test]
    fn purge_past_the_end_starts_a_fresh_segment_at_the_next_index() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, _) = open(d.path(), None).unwrap();
        append(&mut w, 0..3, 10);
        // A snapshot up to 100 was installed: the log continues at 101.
        w.purge(100).unwrap();
        assert!(indices(&w).is_empty());
        append(&mut w, 101..103, 10);
        drop(w);
        assert_eq!(segments(d.path()), 1);
        let (w, _) = open(d.path(), Some(100)).unwrap();
        assert_eq!(indices(&w), vec![101, 102]);
        // Without the purge record the missing entries below 101 are damage: the log is
        // emptied and continues at 51, the first entry missing.
        drop(w);
        let (mut w, rec) = open(d.path(), Some(50)).unwrap();
        let dmg = rec.damage.unwrap();
        assert!(dmg.why.contains("starts at entry 101"), "{}", dmg.why);
        assert_eq!(dmg.first_lost, 51);
        assert!(indices(&w).is_empty());
        append(&mut w, 51..53, 10);
        drop(w);
        let (w, rec) = open(d.path(), Some(50)).unwrap();
        assert_eq!(rec.damage, None);
        assert_eq!(indices(&w), vec![51, 52]);
    }

    #[test]
    fn read_range_returns_only_the_asked_entries() {
        let d = tempfile::tempdir().unwrap();
        let (mut w, _) = open(d.path(), None).unwrap();
        append(&mut w, 3..20, 30);
        let mut got = Vec::new();
        w.shared()
            .read()
            .unwrap()
            .read_range(5, 9, |i, _| {
                got.push(i);
                Ok(())
            })
            .unwrap();
        assert_eq!(got, vec![5, 6, 7, 8]);
    }
}
