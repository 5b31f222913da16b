//! The state model of the power-loss filesystem (issue 16, part 5): what a disk holds durably
//! and what only sits in volatile caches, and what a power cut leaves behind. Pure: no FUSE,
//! no I/O, unit-tested here; [`crate::lazyfs_fuse`] serves it to the kernel.
//!
//! Owns: inodes (regular files and directories), their current content, and their durable
//! content. Must not touch: files on the host, processes, mounts.
//!
//! What is modelled, and the rule chosen where POSIX leaves room (docs/drills.md repeats it):
//!
//! - **File data and size.** Every write lands in the current content at once (readers see
//!   it), and is volatile until `fsync` or `fdatasync` of that file (both make the data and the
//!   size durable; timestamps and permissions are not modelled as durable or volatile). A
//!   write through a descriptor opened `O_SYNC`/`O_DSYNC` is synced as part of the write.
//!   `O_DIRECT` writes are volatile like any other: a real disk's write cache loses them too.
//!   Granularity is the 4 KiB page: a power cut reverts every page written since the file's
//!   last successful sync, and the size to its last synced value.
//! - **Directory entries.** Create, mkdir, unlink, rmdir, rename and link change the current
//!   entries at once and are volatile until `fsync` of the directory that holds them (for a
//!   rename across directories: of both). The strict rule: `fsync` of a new file does NOT
//!   make its name durable (ext4 does in practice, POSIX does not promise it); only the
//!   parent's `fsync` does. A new directory starts out with no durable entries.
//! - **Power cut** ([`LazyFs::power_cut`]): every directory reverts to its durable entries,
//!   every file to its durable pages and size, and whatever no durable entry reaches any more
//!   is freed.
//! - **Failed fsync** ([`LazyFs::set_fail_sync`]): while armed, every file or directory sync
//!   fails with EIO. As Linux does after a failed writeback, the file's unsynced pages are
//!   then marked clean but lost: readers still see them, a later successful sync does not
//!   write them (the durable copy stays the old one), and a power cut reverts them. A failed
//!   directory sync leaves its pending entries pending (a later sync may still persist them).
//!
//! Bounds: a file holds at most [`FILE_BYTES_MAX`], a filesystem [`CAPACITY_BYTES`] of pages
//! (ENOSPC beyond); names at most [`NAME_BYTES_MAX`] bytes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::time::SystemTime;

/// Page size of the model: the unit a power cut reverts.
pub const PAGE: u64 = 4096;
/// Largest file the model accepts (EFBIG beyond).
pub const FILE_BYTES_MAX: u64 = 16 << 30;
/// Pages the whole filesystem may hold, in bytes (ENOSPC beyond). Held in memory.
pub const CAPACITY_BYTES: u64 = 4 << 30;
/// Longest name in a directory.
pub const NAME_BYTES_MAX: usize = 255;
/// Inode number of the root directory (FUSE's).
pub const ROOT: Ino = 1;
/// Unlinks and replacing renames between two sweeps of unreachable inodes.
const SWEEP_EVERY: u32 = 1024;

/// An inode number.
pub type Ino = u64;

/// Why an operation failed; [`FsError::errno`] is what the caller sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FsError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("injected I/O error (the disk failed a sync)")]
    Io,
    #[error("invalid argument")]
    Invalid,
    #[error("name too long")]
    NameTooLong,
    #[error("file too large")]
    TooBig,
    #[error("no space left (the model holds at most {CAPACITY_BYTES} bytes)")]
    NoSpace,
}

impl FsError {
    /// The errno this error stands for.
    pub fn errno(self) -> nix::errno::Errno {
        use nix::errno::Errno;
        match self {
            Self::NotFound => Errno::ENOENT,
            Self::Exists => Errno::EEXIST,
            Self::NotDir => Errno::ENOTDIR,
            Self::IsDir => Errno::EISDIR,
            Self::NotEmpty => Errno::ENOTEMPTY,
            Self::Io => Errno::EIO,
            Self::Invalid => Errno::EINVAL,
            Self::NameTooLong => Errno::ENAMETOOLONG,
            Self::TooBig => Errno::EFBIG,
            Self::NoSpace => Errno::ENOSPC,
        }
    }
}

/// Result of a model operation.
pub type FsResult<T> = Result<T, FsError>;

/// File or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// What `stat` shows of an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub kind: Kind,
    pub size: u64,
    /// Permission bits (`0o7777`).
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
}

/// What one power cut dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CutStats {
    /// Unsynced pages reverted or dropped, in bytes (4 KiB granularity).
    pub bytes_dropped: u64,
    /// Files whose content or size was reverted.
    pub files_reverted: u64,
    /// Directory entries that appeared, vanished or changed target.
    pub entries_reverted: u64,
    /// Inodes freed because no durable entry reaches them.
    pub inodes_freed: u64,
}

/// Counters since the model was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Successful syncs of files and directories.
    pub syncs: u64,
    /// Syncs answered with EIO.
    pub syncs_failed: u64,
    /// Bytes (4 KiB pages) whose sync failed and which are therefore lost at the next cut.
    pub bytes_lost_by_eio: u64,
    /// Power cuts.
    pub cuts: u64,
    /// Sum of [`CutStats::bytes_dropped`] over every cut.
    pub bytes_dropped: u64,
    /// Sum of [`CutStats::entries_reverted`] over every cut.
    pub entries_reverted: u64,
}

type Page = Box<[u8]>;

fn zero_page() -> Page {
    vec![0u8; PAGE as usize].into_boxed_slice()
}

#[derive(Debug, Default)]
struct FileData {
    /// Current content; a missing page reads as zeros. Bytes past `len` are zero.
    pages: BTreeMap<u64, Page>,
    len: u64,
    /// Size at the last successful sync.
    durable_len: u64,
    /// Pages written since the last sync: their durable version (`None`: a hole, or a page
    /// past the durable size that a cut drops anyway).
    undo: BTreeMap<u64, Option<Page>>,
    /// Pages whose sync failed (EIO): their durable version, kept across later syncs until the
    /// page is written again.
    lost: BTreeMap<u64, Option<Page>>,
}

impl FileData {
    /// Remembers page `idx`'s durable version before it changes.
    fn save(&mut self, idx: u64) {
        if self.undo.contains_key(&idx) {
            return;
        }
        let durable = match self.lost.remove(&idx) {
            Some(d) => d,
            None if idx * PAGE >= self.durable_len => None,
            None => self.pages.get(&idx).cloned(),
        };
        self.undo.insert(idx, durable);
    }

    /// Pages changed since the last sync or lost by a failed one.
    fn dirty_pages(&self) -> u64 {
        (self.undo.len() + self.lost.len()) as u64
    }
}

#[derive(Debug)]
struct DirData {
    entries: BTreeMap<OsString, Ino>,
    /// The durable entries when they differ from `entries` (set at the first change after a
    /// sync); `None`: the current entries are durable.
    durable: Option<BTreeMap<OsString, Ino>>,
    parent: Ino,
}

impl DirData {
    fn touch(&mut self) {
        if self.durable.is_none() {
            self.durable = Some(self.entries.clone());
        }
    }
}

#[derive(Debug)]
enum Body {
    File(FileData),
    Dir(DirData),
}

#[derive(Debug)]
struct Node {
    body: Body,
    perm: u16,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: SystemTime,
    ctime: SystemTime,
}

/// The filesystem: every inode's current and durable state.
#[derive(Debug)]
pub struct LazyFs {
    nodes: HashMap<Ino, Node>,
    next_ino: Ino,
    /// Open handles per inode (the kernel's), which keep an unlinked inode alive.
    open: HashMap<Ino, u32>,
    pages_total: u64,
    fail_sync: bool,
    unlinks_since_sweep: u32,
    stats: Stats,
}

impl Default for LazyFs {
    fn default() -> Self {
        Self::new()
    }
}

impl LazyFs {
    /// An empty filesystem whose (empty) root directory is durable.
    pub fn new() -> Self {
        let now = SystemTime::now();
        let root = Node {
            body: Body::Dir(DirData {
                entries: BTreeMap::new(),
                durable: None,
                parent: ROOT,
            }),
            perm: 0o755,
            uid: 0,
            gid: 0,
            nlink: 2,
            mtime: now,
            ctime: now,
        };
        Self {
            nodes: HashMap::from([(ROOT, root)]),
            next_ino: ROOT + 1,
            open: HashMap::new(),
            pages_total: 0,
            fail_sync: false,
            unlinks_since_sweep: 0,
            stats: Stats::default(),
        }
    }

    fn node(&self, ino: Ino) -> FsResult<&Node> {
        self.nodes.get(&ino).ok_or(FsError::NotFound)
    }

    fn node_mut(&mut self, ino: Ino) -> FsResult<&mut Node> {
        self.nodes.get_mut(&ino).ok_or(FsError::NotFound)
    }

    fn dir(&self, ino: Ino) -> FsResult<&DirData> {
        match &self.node(ino)?.body {
            Body::Dir(d) => Ok(d),
            Body::File(_) => Err(FsError::NotDir),
        }
    }

    fn dir_mut(&mut self, ino: Ino) -> FsResult<&mut DirData> {
        match &mut self.node_mut(ino)?.body {
            Body::Dir(d) => Ok(d),
            Body::File(_) => Err(FsError::NotDir),
        }
    }

    fn file_mut(&mut self, ino: Ino) -> FsResult<&mut FileData> {
        match &mut self.node_mut(ino)?.body {
            Body::File(f) => Ok(f),
            Body::Dir(_) => Err(FsError::IsDir),
        }
    }

    /// Attributes of `ino`.
    pub fn attr(&self, ino: Ino) -> FsResult<Attr> {
        let n = self.node(ino)?;
        let (kind, size) = match &n.body {
            Body::File(f) => (Kind::File, f.len),
            Body::Dir(d) => (Kind::Dir, d.entries.len() as u64),
        };
        Ok(Attr {
            ino,
            kind,
            size,
            perm: n.perm,
            nlink: n.nlink,
            uid: n.uid,
            gid: n.gid,
            mtime: n.mtime,
            ctime: n.ctime,
        })
    }

    /// The inode `name` in directory `parent`.
    pub fn lookup(&self, parent: Ino, name: &OsStr) -> FsResult<Attr> {
        let d = self.dir(parent)?;
        let ino = match name.as_bytes() {
            b"." => parent,
            b".." => d.parent,
            _ => *d.entries.get(name).ok_or(FsError::NotFound)?,
        };
        self.attr(ino)
    }

    /// Entries of directory `ino` (without `.` and `..`), in name order.
    pub fn readdir(&self, ino: Ino) -> FsResult<Vec<(OsString, Ino, Kind)>> {
        let d = self.dir(ino)?;
        Ok(d.entries
            .iter()
            .filter_map(|(name, i)| {
                let kind = match self.nodes.get(i)?.body {
                    Body::File(_) => Kind::File,
                    Body::Dir(_) => Kind::Dir,
                };
                Some((name.clone(), *i, kind))
            })
            .collect())
    }

    /// The parent of directory `ino`.
    pub fn parent_of(&self, ino: Ino) -> FsResult<Ino> {
        Ok(self.dir(ino)?.parent)
    }

    fn check_name(name: &OsStr) -> FsResult<()> {
        let b = name.as_bytes();
        if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') {
            return Err(FsError::Invalid);
        }
        if b.len() > NAME_BYTES_MAX {
            return Err(FsError::NameTooLong);
        }
        Ok(())
    }

    /// Makes a file or directory `name` in `parent` (EEXIST if the name is taken).
    pub fn create(&mut self, parent: Ino, name: &OsStr, kind: Kind, perm: u16, uid: u32, gid: u32) -> FsResult<Attr> {
        Self::check_name(name)?;
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(FsError::Exists);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        let now = SystemTime::now();
        let (body, nlink) = match kind {
            Kind::File => (Body::File(FileData::default()), 1),
            Kind::Dir => (
                Body::Dir(DirData {
                    entries: BTreeMap::new(),
                    durable: None,
                    parent,
                }),
                2,
            ),
        };
        self.nodes.insert(
            ino,
            Node {
                body,
                perm: perm & 0o7777,
                uid,
                gid,
                nlink,
                mtime: now,
                ctime: now,
            },
        );
        let d = self.dir_mut(parent)?;
        d.touch();
        d.entries.insert(name.to_owned(), ino);
        self.dir_changed(parent, now);
        self.attr(ino)
    }

    fn dir_changed(&mut self, dir: Ino, now: SystemTime) {
        if let Some(n) = self.nodes.get_mut(&dir) {
            n.mtime = now;
            n.ctime = now;
        }
    }

    /// A new name `newname` in `newparent` for file `ino`.
    pub fn link(&mut self, ino: Ino, newparent: Ino, newname: &OsStr) -> FsResult<Attr> {
        Self::check_name(newname)?;
        if let Body::Dir(_) = self.node(ino)?.body {
            return Err(FsError::IsDir);
        }
        if self.dir(newparent)?.entries.contains_key(newname) {
            return Err(FsError::Exists);
        }
        let d = self.dir_mut(newparent)?;
        d.touch();
        d.entries.insert(newname.to_owned(), ino);
        let now = SystemTime::now();
        self.dir_changed(newparent, now);
        let n = self.node_mut(ino)?;
        n.nlink += 1;
        n.ctime = now;
        self.attr(ino)
    }

    /// Removes the entry `name` (a file, or with `dir` an empty directory) from `parent`.
    pub fn remove(&mut self, parent: Ino, name: &OsStr, dir: bool) -> FsResult<()> {
        let ino = *self.dir(parent)?.entries.get(name).ok_or(FsError::NotFound)?;
        match (&self.node(ino)?.body, dir) {
            (Body::Dir(_), false) => return Err(FsError::IsDir),
            (Body::File(_), true) => return Err(FsError::NotDir),
            (Body::Dir(d), true) if !d.entries.is_empty() => return Err(FsError::NotEmpty),
            _ => {}
        }
        let d = self.dir_mut(parent)?;
        d.touch();
        d.entries.remove(name);
        self.unlinked(ino);
        self.dir_changed(parent, SystemTime::now());
        Ok(())
    }

    fn unlinked(&mut self, ino: Ino) {
        if let Some(n) = self.nodes.get_mut(&ino) {
            n.nlink = match n.body {
                Body::Dir(_) => 0,
                Body::File(_) => n.nlink.saturating_sub(1),
            };
        }
        self.unlinks_since_sweep += 1;
        if self.unlinks_since_sweep >= SWEEP_EVERY {
            self.sweep(true);
        }
    }

    /// Renames `parent/name` to `newparent/newname`, replacing a file there (or an empty
    /// directory, when a directory moves); with `noreplace`, EEXIST instead.
    pub fn rename(
        &mut self,
        parent: Ino,
        name: &OsStr,
        newparent: Ino,
        newname: &OsStr,
        noreplace: bool,
    ) -> FsResult<()> {
        Self::check_name(newname)?;
        let ino = *self.dir(parent)?.entries.get(name).ok_or(FsError::NotFound)?;
        self.dir(newparent)?;
        let moving_dir = matches!(self.node(ino)?.body, Body::Dir(_));
        if moving_dir && self.is_ancestor(ino, newparent) {
            return Err(FsError::Invalid);
        }
        let replaced = self.dir(newparent)?.entries.get(newname).copied();
        if replaced == Some(ino) {
            return Ok(());
        }
        if let Some(old) = replaced {
            if noreplace {
                return Err(FsError::Exists);
            }
            match (&self.node(old)?.body, moving_dir) {
                (Body::Dir(_), false) => return Err(FsError::IsDir),
                (Body::File(_), true) => return Err(FsError::NotDir),
                (Body::Dir(d), true) if !d.entries.is_empty() => return Err(FsError::NotEmpty),
                _ => {}
            }
        }
        let src = self.dir_mut(parent)?;
        src.touch();
        src.entries.remove(name);
        let dst = self.dir_mut(newparent)?;
        dst.touch();
        dst.entries.insert(newname.to_owned(), ino);
        if moving_dir {
            self.dir_mut(ino)?.parent = newparent;
        }
        let now = SystemTime::now();
        self.dir_changed(parent, now);
        self.dir_changed(newparent, now);
        if let Some(old) = replaced {
            self.unlinked(old);
        }
        Ok(())
    }

    /// Whether directory `a` is `b` or one of its ancestors (current entries).
    fn is_ancestor(&self, a: Ino, mut b: Ino) -> bool {
        // Bounded by the number of directories: a parent chain cannot be longer.
        for _ in 0..=self.nodes.len() {
            if a == b {
                return true;
            }
            match self.dir(b) {
                Ok(d) if d.parent != b => b = d.parent,
                _ => return false,
            }
        }
        false
    }

    /// Up to `size` bytes of file `ino` from `offset` (short at the end of the file).
    pub fn read(&self, ino: Ino, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let f = match &self.node(ino)?.body {
            Body::File(f) => f,
            Body::Dir(_) => return Err(FsError::IsDir),
        };
        let end = f.len.min(offset.saturating_add(u64::from(size)));
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = vec![0u8; (end - offset) as usize];
        let mut pos = offset;
        while pos < end {
            let (idx, at) = (pos / PAGE, (pos % PAGE) as usize);
            let n = (PAGE as usize - at).min((end - pos) as usize);
            if let Some(p) = f.pages.get(&idx) {
                let o = (pos - offset) as usize;
                out[o..o + n].copy_from_slice(&p[at..at + n]);
            }
            pos += n as u64;
        }
        Ok(out)
    }

    /// Writes `data` at `offset` of file `ino` (volatile until [`LazyFs::sync`]).
    pub fn write(&mut self, ino: Ino, offset: u64, data: &[u8]) -> FsResult<usize> {
        let end = offset.checked_add(data.len() as u64).ok_or(FsError::TooBig)?;
        if end > FILE_BYTES_MAX {
            return Err(FsError::TooBig);
        }
        let mut new_pages = 0u64;
        {
            let f = self.file_mut(ino)?;
            let mut pos = offset;
            while pos < end {
                if !f.pages.contains_key(&(pos / PAGE)) {
                    new_pages += 1;
                }
                pos = (pos / PAGE + 1) * PAGE;
            }
        }
        if (self.pages_total + new_pages) * PAGE > CAPACITY_BYTES {
            return Err(FsError::NoSpace);
        }
        self.pages_total += new_pages;
        let f = self.file_mut(ino)?;
        let mut pos = offset;
        while pos < end {
            let (idx, at) = (pos / PAGE, (pos % PAGE) as usize);
            let n = (PAGE as usize - at).min((end - pos) as usize);
            f.save(idx);
            let page = f.pages.entry(idx).or_insert_with(zero_page);
            let o = (pos - offset) as usize;
            page[at..at + n].copy_from_slice(&data[o..o + n]);
            pos += n as u64;
        }
        f.len = f.len.max(end);
        let now = SystemTime::now();
        let n = self.node_mut(ino)?;
        n.mtime = now;
        n.ctime = now;
        Ok(data.len())
    }

    /// Sets the size of file `ino` (truncate or extend with zeros; volatile until a sync).
    pub fn set_len(&mut self, ino: Ino, len: u64) -> FsResult<()> {
        if len > FILE_BYTES_MAX {
            return Err(FsError::TooBig);
        }
        let f = self.file_mut(ino)?;
        let mut freed = 0u64;
        if len < f.len {
            let first_gone = len.div_ceil(PAGE);
            let gone: Vec<u64> = f.pages.range(first_gone..).map(|(i, _)| *i).collect();
            for idx in gone {
                f.save(idx);
                f.pages.remove(&idx);
                freed += 1;
            }
            if !len.is_multiple_of(PAGE) {
                let idx = len / PAGE;
                if f.pages.contains_key(&idx) {
                    f.save(idx);
                    if let Some(p) = f.pages.get_mut(&idx) {
                        p[(len % PAGE) as usize..].fill(0);
                    }
                }
            }
        }
        f.len = len;
        self.pages_total -= freed;
        let now = SystemTime::now();
        let n = self.node_mut(ino)?;
        n.mtime = now;
        n.ctime = now;
        Ok(())
    }

    /// `fallocate`: mode 0 extends the size to `offset + len` (the range reads as zeros until
    /// written; no page is reserved); `keep_size` changes nothing visible.
    pub fn allocate(&mut self, ino: Ino, offset: u64, len: u64, keep_size: bool) -> FsResult<()> {
        let end = offset.checked_add(len).ok_or(FsError::TooBig)?;
        let cur = self.attr(ino)?.size;
        if keep_size || end <= cur {
            self.file_mut(ino)?;
            return Ok(());
        }
        self.set_len(ino, end)
    }

    /// Sets the permission bits of `ino`.
    pub fn set_perm(&mut self, ino: Ino, perm: u16) -> FsResult<()> {
        let n = self.node_mut(ino)?;
        n.perm = perm & 0o7777;
        n.ctime = SystemTime::now();
        Ok(())
    }

    /// Sets the owner of `ino`.
    pub fn set_owner(&mut self, ino: Ino, uid: Option<u32>, gid: Option<u32>) -> FsResult<()> {
        let n = self.node_mut(ino)?;
        n.uid = uid.unwrap_or(n.uid);
        n.gid = gid.unwrap_or(n.gid);
        n.ctime = SystemTime::now();
        Ok(())
    }

    /// Sets the modification time of `ino`.
    pub fn set_mtime(&mut self, ino: Ino, mtime: SystemTime) -> FsResult<()> {
        self.node_mut(ino)?.mtime = mtime;
        Ok(())
    }

    /// `fsync`/`fdatasync` of a file (its pages and size become durable) or of a directory
    /// (its entries become durable). EIO while a failure is armed.
    pub fn sync(&mut self, ino: Ino) -> FsResult<()> {
        let fail = self.fail_sync;
        let node = self.nodes.get_mut(&ino).ok_or(FsError::NotFound)?;
        match &mut node.body {
            Body::File(f) if fail => {
                let n = f.undo.len() as u64;
                let undo = std::mem::take(&mut f.undo);
                for (idx, durable) in undo {
                    // A page already lost keeps its older durable version.
                    f.lost.entry(idx).or_insert(durable);
                }
                self.stats.syncs_failed += 1;
                self.stats.bytes_lost_by_eio += n * PAGE;
                Err(FsError::Io)
            }
            Body::Dir(_) if fail => {
                self.stats.syncs_failed += 1;
                Err(FsError::Io)
            }
            Body::File(f) => {
                f.undo.clear();
                f.durable_len = f.len;
                self.stats.syncs += 1;
                Ok(())
            }
            Body::Dir(d) => {
                d.durable = None;
                self.stats.syncs += 1;
                Ok(())
            }
        }
    }

    /// Makes every file and directory durable as it is now (the state a drill starts from).
    pub fn sync_everything(&mut self) {
        for n in self.nodes.values_mut() {
            match &mut n.body {
                Body::File(f) => {
                    f.undo.clear();
                    f.lost.clear();
                    f.durable_len = f.len;
                }
                Body::Dir(d) => d.durable = None,
            }
        }
    }

    /// Arms (true) or clears (false) the EIO answer to every sync.
    pub fn set_fail_sync(&mut self, fail: bool) {
        self.fail_sync = fail;
    }

    /// The kernel opened a handle on `ino`.
    pub fn opened(&mut self, ino: Ino) {
        *self.open.entry(ino).or_insert(0) += 1;
    }

    /// The kernel released a handle on `ino`.
    pub fn released(&mut self, ino: Ino) {
        if let Some(c) = self.open.get_mut(&ino) {
            *c = c.saturating_sub(1);
            if *c == 0 {
                self.open.remove(&ino);
            }
        }
    }

    /// Bytes of pages held (what `statfs` reports as used).
    pub fn used_bytes(&self) -> u64 {
        self.pages_total * PAGE
    }

    /// Counters since the model was made.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Bytes that a power cut now would drop (pages written since the last sync, or lost by a
    /// failed one).
    pub fn unsynced_bytes(&self) -> u64 {
        self.nodes
            .values()
            .map(|n| match &n.body {
                Body::File(f) => f.dirty_pages() * PAGE,
                Body::Dir(_) => 0,
            })
            .sum()
    }

    /// The power is cut: every directory and file reverts to its durable state, and what no
    /// durable entry reaches is freed. Open handles die with the power.
    pub fn power_cut(&mut self) -> CutStats {
        let mut cut = CutStats::default();
        for n in self.nodes.values_mut() {
            match &mut n.body {
                Body::Dir(d) => {
                    if let Some(durable) = d.durable.take() {
                        cut.entries_reverted += entries_differing(&d.entries, &durable);
                        d.entries = durable;
                    }
                }
                Body::File(f) => {
                    if f.undo.is_empty() && f.lost.is_empty() && f.len == f.durable_len {
                        continue;
                    }
                    cut.files_reverted += 1;
                    cut.bytes_dropped += f.dirty_pages() * PAGE;
                    let undo = std::mem::take(&mut f.undo);
                    let lost = std::mem::take(&mut f.lost);
                    for (idx, durable) in undo.into_iter().chain(lost) {
                        match durable {
                            Some(p) => {
                                f.pages.insert(idx, p);
                            }
                            None => {
                                f.pages.remove(&idx);
                            }
                        }
                    }
                    f.len = f.durable_len;
                    let first_gone = f.len.div_ceil(PAGE);
                    let gone: Vec<u64> = f.pages.range(first_gone..).map(|(i, _)| *i).collect();
                    for idx in gone {
                        f.pages.remove(&idx);
                    }
                    if !f.len.is_multiple_of(PAGE) {
                        if let Some(p) = f.pages.get_mut(&(f.len / PAGE)) {
                            p[(f.len % PAGE) as usize..].fill(0);
                        }
                    }
                }
            }
        }
        self.open.clear();
        cut.inodes_freed = self.sweep(false);
        self.stats.cuts += 1;
        self.stats.bytes_dropped += cut.bytes_dropped;
        self.stats.entries_reverted += cut.entries_reverted;
        cut
    }

    /// Frees the inodes nothing reaches: from the root through current entries and (with
    /// `keep_durable`, between cuts) durable entries, plus open handles. Recounts links and
    /// pages. Returns how many inodes it freed.
    fn sweep(&mut self, keep_durable: bool) -> u64 {
        self.unlinks_since_sweep = 0;
        let mut reached: HashSet<Ino> = HashSet::from([ROOT]);
        let mut links: HashMap<Ino, u32> = HashMap::new();
        let mut todo = vec![ROOT];
        if keep_durable {
            for ino in self.open.keys() {
                if reached.insert(*ino) {
                    todo.push(*ino);
                }
            }
        }
        // Each inode is pushed once, so this ends after at most `nodes.len()` steps.
        while let Some(ino) = todo.pop() {
            let Some(Body::Dir(d)) = self.nodes.get(&ino).map(|n| &n.body) else {
                continue;
            };
            let durable = if keep_durable { d.durable.as_ref() } else { None };
            for (i, current) in d
                .entries
                .values()
                .map(|i| (i, true))
                .chain(durable.into_iter().flat_map(|m| m.values()).map(|i| (i, false)))
            {
                if current {
                    *links.entry(*i).or_insert(0) += 1;
                }
                if self.nodes.contains_key(i) && reached.insert(*i) {
                    todo.push(*i);
                }
            }
        }
        let before = self.nodes.len();
        self.nodes.retain(|ino, _| reached.contains(ino));
        let mut pages = 0u64;
        for (ino, n) in self.nodes.iter_mut() {
            match &mut n.body {
                Body::File(f) => {
                    pages += f.pages.len() as u64;
                    n.nlink = links.get(ino).copied().unwrap_or(0);
                }
                Body::Dir(_) => n.nlink = 2,
            }
        }
        self.pages_total = pages;
        (before - self.nodes.len()) as u64
    }
}

/// Names that are in one map and not the other, or point at different inodes.
fn entries_differing(a: &BTreeMap<OsString, Ino>, b: &BTreeMap<OsString, Ino>) -> u64 {
    let changed = a.iter().filter(|(k, v)| b.get(*k) != Some(*v)).count();
    let gone = b.keys().filter(|k| !a.contains_key(*k)).count();
    (changed + gone) as u64
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn os(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    fn file(fs: &mut LazyFs, parent: Ino, name: &str) -> Ino {
        fs.create(parent, os(name), Kind::File, 0o644, 0, 0).unwrap().ino
    }

    fn dir(fs: &mut LazyFs, parent: Ino, name: &str) -> Ino {
        fs.create(parent, os(name), Kind::Dir, 0o755, 0, 0).unwrap().ino
    }

    fn content(fs: &LazyFs, ino: Ino) -> Vec<u8> {
        fs.read(ino, 0, u32::MAX).unwrap()
    }

    #[test]
    fn writes_are_visible_at_once_and_lost_at_a_cut_unless_synced() {
        let mut fs = LazyFs::new();
        let f = file(&mut fs, ROOT, "log");
        fs.sync(ROOT).unwrap();
        fs.write(f, 0, b"synced").unwrap();
        fs.sync(f).unwrap();
        fs.write(f, 6, b" and not").unwrap();
        assert_eq!(content(&fs, f), b"synced and not");
        assert_eq!(fs.unsynced_bytes(), PAGE);
        let cut = fs.power_cut();
        assert_eq!(content(&fs, f), b"synced");
        assert_eq!(cut.bytes_dropped, PAGE);
        assert_eq!(cut.files_reverted, 1);
        assert_eq!(fs.unsynced_bytes(), 0);
    }

    #[test]
    fn overwrites_in_place_revert_to_the_synced_bytes_across_pages() {
        let mut fs = LazyFs::new();
        let f = file(&mut fs, ROOT, "db");
        fs.sync(ROOT).unwrap();
        let old: Vec<u8> = (0..3 * PAGE).map(|i| (i % 251) as u8).collect();
        fs.write(f, 0, &old).unwrap();
        fs.sync(f).unwrap();
        // Straddles pages 0 and 1, and rewrites page 1 twice.
        fs.write(f, PAGE - 10, &[0xAA; 20]).unwrap();
        fs.write(f, PAGE + 100, &[0xBB; 5]).unwrap();
        assert_ne!(content(&fs, f), old);
        let cut = fs.power_cut();
        assert_eq!(content(&fs, f), old);
        assert_eq!(cut.bytes_dropped, 2 * PAGE);
    }

    #[test]
    fn truncation_and_growth_are_volatile_too() {
        let mut fs = LazyFs::new();
        let f = file(&mut fs, ROOT, "seg");
        fs.sync(ROOT).unwrap();
        let data = vec![7u8; (2 * PAGE + 5) as usize];
        fs.write(f, 0, &data).unwrap();
        fs.sync(f).unwrap();
        fs.set_len(f, 10).unwrap();
        assert_eq!(fs.attr(f).unwrap().size, 10);
        fs.power_cut();
        assert_eq!(content(&fs, f), data);
        // Grown, then cut: back to the synced size, no garbage past it.
        fs.set_len(f, 5 * PAGE).unwrap();
        fs.write(f, 4 * PAGE, b"tail").unwrap();
        fs.power_cut();
        assert_eq!(content(&fs, f), data);
        // Truncated and synced: durable.
        fs.set_len(f, 3).unwrap();
        fs.sync(f).unwrap();
        fs.write(f, 3, b"xyz").unwrap();
        fs.power_cut();
        assert_eq!(content(&fs, f), vec![7u8; 3]);
        // Re-extending reads zeros, not the old bytes.
        fs.set_len(f, 8).unwrap();
        assert_eq!(content(&fs, f), [7, 7, 7, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn a_new_files_name_needs_the_parents_sync_not_only_its_own() {
        let mut fs = LazyFs::new();
        let f = file(&mut fs, ROOT, "new");
        fs.write(f, 0, b"data").unwrap();
        fs.sync(f).unwrap();
        let cut = fs.power_cut();
        assert_eq!(fs.lookup(ROOT, os("new")), Err(FsError::NotFound));
        assert_eq!(cut.entries_reverted, 1);
        assert_eq!(cut.inodes_freed, 1);
        // With the parent synced as well, it survives.
        let f = file(&mut fs, ROOT, "new");
        fs.write(f, 0, b"data").unwrap();
        fs.sync(f).unwrap();
        fs.sync(ROOT).unwrap();
        fs.power_cut();
        let f = fs.lookup(ROOT, os("new")).unwrap().ino;
        assert_eq!(content(&fs, f), b"data");
    }

    #[test]
    fn rename_into_place_is_durable_only_after_the_directory_sync() {
        let mut fs = LazyFs::new();
        let d = dir(&mut fs, ROOT, "chunks");
        fs.sync(ROOT).unwrap();
        let old = file(&mut fs, d, "c1");
        fs.write(old, 0, b"old").unwrap();
        fs.sync(old).unwrap();
        fs.sync(d).unwrap();
        let tmp = file(&mut fs, d, "c1.tmp");
        fs.write(tmp, 0, b"new").unwrap();
        fs.sync(tmp).unwrap();
        fs.rename(d, os("c1.tmp"), d, os("c1"), false).unwrap();
        assert_eq!(content(&fs, fs.lookup(d, os("c1")).unwrap().ino), b"new");
        fs.power_cut();
        // Not synced: the old name and content are back, the temp file is gone.
        assert_eq!(content(&fs, fs.lookup(d, os("c1")).unwrap().ino), b"old");
        assert_eq!(fs.lookup(d, os("c1.tmp")), Err(FsError::NotFound));
        let tmp = file(&mut fs, d, "c1.tmp");
        fs.write(tmp, 0, b"new").unwrap();
        fs.sync(tmp).unwrap();
        fs.rename(d, os("c1.tmp"), d, os("c1"), false).unwrap();
        fs.sync(d).unwrap();
        fs.power_cut();
        assert_eq!(content(&fs, fs.lookup(d, os("c1")).unwrap().ino), b"new");
        assert_eq!(fs.readdir(d).unwrap().len(), 1);
    }

    #[test]
    fn unlink_and_rmdir_come_back_unless_the_parent_is_synced() {
        let mut fs = LazyFs::new();
        let d = dir(&mut fs, ROOT, "raft-log");
        let f = file(&mut fs, d, "1.wal");
        fs.write(f, 0, b"entries").unwrap();
        fs.sync(f).unwrap();
        fs.sync(d).unwrap();
        fs.sync(ROOT).unwrap();
        fs.remove(d, os("1.wal"), false).unwrap();
        assert_eq!(fs.remove(ROOT, os("raft-log"), true), Ok(()));
        fs.power_cut();
        let f = fs.lookup(d, os("1.wal")).unwrap();
        assert_eq!(f.nlink, 1);
        assert_eq!(content(&fs, f.ino), b"entries");
        fs.remove(d, os("1.wal"), false).unwrap();
        fs.sync(d).unwrap();
        fs.remove(ROOT, os("raft-log"), true).unwrap();
        fs.sync(ROOT).unwrap();
        let cut = fs.power_cut();
        assert_eq!(fs.lookup(ROOT, os("raft-log")), Err(FsError::NotFound));
        assert_eq!(cut.inodes_freed, 2);
    }

    #[test]
    fn a_new_directory_starts_with_no_durable_entries() {
        let mut fs = LazyFs::new();
        let d = dir(&mut fs, ROOT, "ab");
        fs.sync(ROOT).unwrap();
        let f = file(&mut fs, d, "x");
        fs.sync(f).unwrap();
        fs.power_cut();
        assert!(fs.readdir(d).unwrap().is_empty());
    }

    #[test]
    fn a_hard_link_survives_the_original_name_when_both_are_synced() {
        let mut fs = LazyFs::new();
        let f = file(&mut fs, ROOT, "a");
        fs.write(f, 0, b"x").unwrap();
        fs.sync(f).unwrap();
        assert_eq!(fs.link(f, ROOT, os("b")).unwrap().nlink, 2);
        fs.remove(ROOT, os("a"), false).unwrap();
        fs.sync(ROOT).unwrap();
        fs.power_cut();
        assert_eq!(fs.lookup(ROOT, os("a")), Err(FsError::NotFound));
        let b = fs.lookup(ROOT, os("b")).unwrap();
        assert_eq!((b.ino, b.nlink), (f, 1));
    }

    #[test]
    fn a_failed_sync_loses_the_pages_even_if_a_later_sync_succeeds() {
        let mut fs = LazyFs::new();
        let f = file(&mut fs, ROOT, "wal");
        fs.sync(ROOT).unwrap();
        fs.write(f, 0, b"one").unwrap();
        fs.sync(f).unwrap();
        fs.write(f, 3, b"two").unwrap();
        fs.set_fail_sync(true);
        assert_eq!(fs.sync(f), Err(FsError::Io));
        assert_eq!(fs.sync(ROOT), Err(FsError::Io));
        fs.set_fail_sync(false);
        // Linux after a failed writeback: the page cache still shows the data and a retried
        // fsync reports success, but the data never reached the disk.
        assert_eq!(content(&fs, f), b"onetwo");
        fs.sync(f).unwrap();
        let st = fs.stats();
        assert_eq!((st.syncs_failed, st.bytes_lost_by_eio), (2, PAGE));
        let cut = fs.power_cut();
        assert_eq!(cut.bytes_dropped, PAGE);
        // The size was synced after the failure; the bytes were not.
        assert_eq!(content(&fs, f), b"one\0\0\0");
        // A page written again after the failure is synced normally.
        fs.write(f, 0, b"ONETWO").unwrap();
        fs.sync(f).unwrap();
        fs.power_cut();
        assert_eq!(content(&fs, f), b"ONETWO");
    }

    #[test]
    fn unlinked_files_are_freed_only_when_nothing_durable_or_open_reaches_them() {
        let mut fs = LazyFs::new();
        let f = file(&mut fs, ROOT, "f");
        fs.write(f, 0, &vec![1u8; PAGE as usize]).unwrap();
        fs.sync(f).unwrap();
        fs.sync(ROOT).unwrap();
        fs.opened(f);
        fs.remove(ROOT, os("f"), false).unwrap();
        // A sweep now keeps it: open, and durable in the root.
        assert_eq!(fs.sweep(true), 0);
        fs.sync(ROOT).unwrap();
        assert_eq!(fs.sweep(true), 0);
        fs.released(f);
        assert_eq!(fs.sweep(true), 1);
        assert_eq!(fs.used_bytes(), 0);
    }

    #[test]
    fn names_and_sizes_are_bounded() {
        let mut fs = LazyFs::new();
        let long = "x".repeat(NAME_BYTES_MAX + 1);
        assert_eq!(
            fs.create(ROOT, os(&long), Kind::File, 0o644, 0, 0),
            Err(FsError::NameTooLong)
        );
        let f = file(&mut fs, ROOT, "f");
        assert_eq!(fs.write(f, FILE_BYTES_MAX, b"x"), Err(FsError::TooBig));
        assert_eq!(file_err(&mut fs, ROOT, "f"), FsError::Exists);
        assert_eq!(fs.rename(ROOT, os("f"), ROOT, os("g"), true), Ok(()));
        let h = file(&mut fs, ROOT, "h");
        assert_eq!(fs.rename(ROOT, os("h"), ROOT, os("g"), true), Err(FsError::Exists));
        assert_eq!(fs.rename(ROOT, os("h"), ROOT, os("g"), false), Ok(()));
        assert_eq!(fs.lookup(ROOT, os("g")).unwrap().ino, h);
    }

    fn file_err(fs: &mut LazyFs, parent: Ino, name: &str) -> FsError {
        fs.create(parent, os(name), Kind::File, 0o644, 0, 0).unwrap_err()
    }

    #[test]
    fn a_directory_cannot_move_into_itself() {
        let mut fs = LazyFs::new();
        let a = dir(&mut fs, ROOT, "a");
        let b = dir(&mut fs, a, "b");
        assert_eq!(fs.rename(ROOT, os("a"), b, os("a"), false), Err(FsError::Invalid));
        fs.rename(a, os("b"), ROOT, os("b"), false).unwrap();
        assert_eq!(fs.parent_of(b).unwrap(), ROOT);
    }
}
