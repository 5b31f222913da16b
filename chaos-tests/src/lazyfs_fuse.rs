//! The power-loss filesystem mounted for real: [`crate::lazyfs`]'s model served to the kernel
//! over FUSE (the `fuser` crate, its pure-Rust mount: no libfuse; as root it mounts with
//! mount(2), else through `fusermount3`), in threads of the drill's own process.
//!
//! Owns: the FUSE sessions of a drill, moving a stopped node's data dir into a model (every
//! byte durable) and mounting it in its place, the power cut of a mount (freeze, so the
//! killed node's last requests fail, then revert to the durable state), the armed fsync
//! failure, and unmounting (on drop, and [`unmount_all`] from the drill's cleanup for a mount
//! a crashed run left behind). Must not touch: processes (the drill kills and starts them).
//!
//! Every file is opened with `FOPEN_DIRECT_IO` and every entry and attribute has a zero TTL:
//! the kernel keeps no page cache and no dentries of its own, so after a cut a restarted
//! node reads exactly the model's durable state (and `O_DIRECT` opens work as on a disk).
//! Operations arkd does not use answer ENOSYS (symlinks, xattrs, ioctl) or EOPNOTSUPP
//! (fallocate modes other than 0 and KEEP_SIZE); flock and POSIX locks stay in the kernel.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, MountOption, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::lazyfs::{Attr, CutStats, FsError, Ino, Kind, LazyFs, Stats, CAPACITY_BYTES, NAME_BYTES_MAX, PAGE, ROOT};

/// Source name of the drill's FUSE mounts in /proc/self/mounts, so cleanup finds only its own.
pub const SOURCE: &str = "ark-chaos-lazyfs";
/// Deepest directory tree [`import`] walks (arkd's data dir is three levels deep).
const IMPORT_DEPTH_MAX: usize = 16;
/// FUSE worker threads per mount: syncs wait [`SYNC_LATENCY`] without holding one another up.
const THREADS: usize = 4;
/// How long an fsync or fdatasync takes, as a disk's cache flush does (1-10 ms on real
/// disks). Without it a node's sync follows its write within microseconds and a cut almost
/// never finds anything unsynced; with it, writes in flight are the norm under load, as on a
/// real disk.
pub const SYNC_LATENCY: Duration = Duration::from_millis(5);
/// Longest wait for a session to end after its mount is detached.
const UNMOUNT_WAIT_MAX: Duration = Duration::from_secs(10);
/// Polling step of [`Mounted::freeze_all_when_dirty`].
const DIRTY_POLL: Duration = Duration::from_millis(1);
/// Nothing is cached by the kernel: see the module doc.
const TTL: Duration = Duration::ZERO;

/// The model and whether the power is off.
#[derive(Debug)]
struct State {
    fs: LazyFs,
    /// Between the freeze and the cut every operation fails with EIO, as on a disk without
    /// power: what the dying node still sends cannot land after the cut.
    frozen: bool,
    /// Power cuts so far: a sync that began before a cut fails instead of completing after it.
    cuts: u64,
}

#[derive(Debug)]
struct Shared(Mutex<State>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The model does not panic half-way through an operation; a poisoned lock still
        // holds a consistent model.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `op` on the model unless the power is off.
    fn with<T>(&self, op: impl FnOnce(&mut LazyFs) -> Result<T, FsError>) -> Result<T, Errno> {
        let mut st = self.lock();
        if st.frozen {
            return Err(Errno::EIO);
        }
        op(&mut st.fs).map_err(errno)
    }
}

fn errno(e: FsError) -> Errno {
    Errno::from_i32(e.errno() as i32)
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: a.mtime,
        mtime: a.mtime,
        ctime: a.ctime,
        crtime: a.ctime,
        kind: match a.kind {
            Kind::File => FileType::RegularFile,
            Kind::Dir => FileType::Directory,
        },
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: PAGE as u32,
        flags: 0,
    }
}

fn has_flag(flags: i32, flag: nix::fcntl::OFlag) -> bool {
    flags & flag.bits() == flag.bits()
}

/// One directory listing: `.`, `..`, then the entries.
type Listing = Vec<(std::ffi::OsString, Ino, Kind)>;

/// Listings of open directory handles: a listing is taken at `opendir` (and again when a
/// reader starts over at offset 0), so entries created or removed meanwhile neither shift
/// the offsets of the others nor make a reader skip or repeat one.
#[derive(Debug, Default)]
struct Listings {
    next_fh: u64,
    open: std::collections::HashMap<u64, Listing>,
}

/// Directory handles open at once per mount (EMFILE beyond).
const DIR_HANDLES_MAX: usize = 4096;

/// The FUSE face of one model.
struct LazyFsFuse(Arc<Shared>, Mutex<Listings>);

impl LazyFsFuse {
    fn entry(&self, reply: ReplyEntry, r: Result<Attr, Errno>) {
        match r {
            Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    /// `.`, `..` and the entries of directory `ino`, as they are now.
    fn listing(&self, ino: Ino) -> Result<Listing, Errno> {
        self.0.with(|fs| {
            let mut l: Listing = vec![
                (OsStr::new(".").to_owned(), ino, Kind::Dir),
                (OsStr::new("..").to_owned(), fs.parent_of(ino)?, Kind::Dir),
            ];
            l.extend(fs.readdir(ino)?);
            Ok(l)
        })
    }

    fn listings(&self) -> MutexGuard<'_, Listings> {
        self.1.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A sync that takes [`SYNC_LATENCY`], during which the file stays volatile (other
    /// requests go on); it fails if the power went off meanwhile.
    fn slow_sync(&self, ino: Ino) -> Result<(), Errno> {
        let cuts = {
            let st = self.0.lock();
            if st.frozen {
                return Err(Errno::EIO);
            }
            st.cuts
        };
        std::thread::sleep(SYNC_LATENCY);
        let mut st = self.0.lock();
        if st.frozen || st.cuts != cuts {
            return Err(Errno::EIO);
        }
        st.fs.sync(ino).map_err(errno)
    }

    fn empty(reply: ReplyEmpty, r: Result<(), Errno>) {
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }
}

impl Filesystem for LazyFsFuse {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let r = self.0.with(|fs| fs.lookup(parent.0, name));
        self.entry(reply, r);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.0.with(|fs| fs.attr(ino.0)) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let r = self.0.with(|fs| {
            let ino = ino.0;
            if let Some(m) = mode {
                fs.set_perm(ino, (m & 0o7777) as u16)?;
            }
            if uid.is_some() || gid.is_some() {
                fs.set_owner(ino, uid, gid)?;
            }
            if let Some(len) = size {
                fs.set_len(ino, len)?;
            }
            match mtime {
                Some(TimeOrNow::SpecificTime(t)) => fs.set_mtime(ino, t)?,
                Some(TimeOrNow::Now) => fs.set_mtime(ino, SystemTime::now())?,
                None => {}
            }
            fs.attr(ino)
        });
        match r {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        use nix::sys::stat::SFlag;
        if mode & SFlag::S_IFMT.bits() != SFlag::S_IFREG.bits() {
            // Only regular files: arkd makes no fifos, sockets or devices here.
            return reply.error(Errno::ENOSYS);
        }
        let perm = (mode & !umask & 0o7777) as u16;
        let r = self
            .0
            .with(|fs| fs.create(parent.0, name, Kind::File, perm, req.uid(), req.gid()));
        self.entry(reply, r);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let perm = (mode & !umask & 0o7777) as u16;
        let r = self
            .0
            .with(|fs| fs.create(parent.0, name, Kind::Dir, perm, req.uid(), req.gid()));
        self.entry(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        Self::empty(reply, self.0.with(|fs| fs.remove(parent.0, name, false)));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        Self::empty(reply, self.0.with(|fs| fs.remove(parent.0, name, true)));
    }

    fn symlink(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, _target: &Path, reply: ReplyEntry) {
        reply.error(Errno::ENOSYS);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            return reply.error(Errno::EINVAL);
        }
        let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        Self::empty(
            reply,
            self.0
                .with(|fs| fs.rename(parent.0, name, newparent.0, newname, noreplace)),
        );
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let r = self.0.with(|fs| fs.link(ino.0, newparent.0, newname));
        self.entry(reply, r);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let r = self.0.with(|fs| {
            if fs.attr(ino.0)?.kind == Kind::Dir {
                return Err(FsError::IsDir);
            }
            if has_flag(flags.0, nix::fcntl::OFlag::O_TRUNC) {
                fs.set_len(ino.0, 0)?;
            }
            fs.opened(ino.0);
            Ok(())
        });
        match r {
            Ok(()) => reply.opened(FileHandle(ino.0), FopenFlags::FOPEN_DIRECT_IO),
            Err(e) => reply.error(e),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let perm = (mode & !umask & 0o7777) as u16;
        let r = self.0.with(|fs| {
            let a = fs.create(parent.0, name, Kind::File, perm, req.uid(), req.gid())?;
            fs.opened(a.ino);
            Ok(a)
        });
        match r {
            Ok(a) => reply.created(
                &TTL,
                &file_attr(&a),
                Generation(0),
                FileHandle(a.ino),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        match self.0.with(|fs| fs.read(ino.0, offset, size)) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let r = self.0.with(|fs| {
            let n = fs.write(ino.0, offset, data)?;
            // O_SYNC includes O_DSYNC's bit: either makes the write durable before it returns.
            if has_flag(flags.0, nix::fcntl::OFlag::O_DSYNC) {
                fs.sync(ino.0)?;
            }
            Ok(n)
        });
        match r {
            Ok(n) => reply.written(u32::try_from(n).unwrap_or(u32::MAX)),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: fuser::LockOwner, reply: ReplyEmpty) {
        // close() is not a sync: nothing becomes durable here.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // Also while frozen: the handle is gone whatever the power does.
        self.0.lock().fs.released(ino.0);
        reply.ok();
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        Self::empty(reply, self.slow_sync(ino.0));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let listing = match self.listing(ino.0) {
            Ok(l) => l,
            Err(e) => return reply.error(e),
        };
        let mut ls = self.listings();
        if ls.open.len() >= DIR_HANDLES_MAX {
            return reply.error(Errno::EMFILE);
        }
        ls.next_fh += 1;
        let fh = ls.next_fh;
        ls.open.insert(fh, listing);
        reply.opened(FileHandle(fh), FopenFlags::empty());
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let mut ls = self.listings();
        if offset == 0 || !ls.open.contains_key(&fh.0) {
            match self.listing(ino.0) {
                Ok(l) => {
                    ls.open.insert(fh.0, l);
                }
                Err(e) => return reply.error(e),
            }
        }
        let Some(listing) = ls.open.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        // The offset of an entry is its position + 1; the kernel hands back the last one seen.
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (name, child, kind)) in listing.iter().enumerate().skip(skip) {
            let kind = match kind {
                Kind::File => FileType::RegularFile,
                Kind::Dir => FileType::Directory,
            };
            if reply.add(INodeNo(*child), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.listings().open.remove(&fh.0);
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        Self::empty(reply, self.slow_sync(ino.0));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let st = self.0.lock();
        let blocks = CAPACITY_BYTES / PAGE;
        let free = blocks.saturating_sub(st.fs.used_bytes() / PAGE);
        reply.statfs(
            blocks,
            free,
            free,
            1 << 20,
            1 << 20,
            PAGE as u32,
            NAME_BYTES_MAX as u32,
            PAGE as u32,
        );
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        // Only root uses these mounts (no allow_other).
        Self::empty(reply, self.0.with(|fs| fs.attr(ino.0).map(|_| ())));
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        const KEEP_SIZE: i32 = 1; // FALLOC_FL_KEEP_SIZE
        if mode & !KEEP_SIZE != 0 {
            return reply.error(Errno::EOPNOTSUPP);
        }
        Self::empty(
            reply,
            self.0
                .with(|fs| fs.allocate(ino.0, offset, length, mode & KEEP_SIZE != 0)),
        );
    }
}

/// A model holding a copy of the tree at `dir` (regular files and directories, permission
/// bits), every byte of it durable. All-zero pages are left as holes.
pub fn import(dir: &Path) -> anyhow::Result<LazyFs> {
    let mut fs = LazyFs::new();
    import_into(&mut fs, dir, ROOT, 0)?;
    fs.sync_everything();
    Ok(fs)
}

fn import_into(fs: &mut LazyFs, dir: &Path, ino: Ino, depth: usize) -> anyhow::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if depth > IMPORT_DEPTH_MAX {
        bail!("{} is nested deeper than {IMPORT_DEPTH_MAX} directories", dir.display());
    }
    for ent in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let ent = ent.with_context(|| format!("listing {}", dir.display()))?;
        let path = ent.path();
        let meta = std::fs::symlink_metadata(&path).with_context(|| format!("stat {}", path.display()))?;
        let perm = (meta.permissions().mode() & 0o7777) as u16;
        let name = ent.file_name();
        if meta.is_dir() {
            let a = fs
                .create(ino, &name, Kind::Dir, perm, meta.uid(), meta.gid())
                .with_context(|| format!("importing {}", path.display()))?;
            import_into(fs, &path, a.ino, depth + 1)?;
        } else if meta.is_file() {
            let a = fs
                .create(ino, &name, Kind::File, perm, meta.uid(), meta.gid())
                .with_context(|| format!("importing {}", path.display()))?;
            let mut f = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            let mut page = vec![0u8; PAGE as usize];
            let mut off = 0u64;
            loop {
                let n = read_full(&mut f, &mut page).with_context(|| format!("reading {}", path.display()))?;
                if n == 0 {
                    break;
                }
                if page[..n].iter().any(|b| *b != 0) {
                    fs.write(a.ino, off, &page[..n])
                        .with_context(|| format!("importing {}", path.display()))?;
                }
                off += n as u64;
                if n < page.len() {
                    break;
                }
            }
            fs.set_len(a.ino, meta.len())
                .with_context(|| format!("importing {}", path.display()))?;
        } else {
            bail!(
                "{} is neither a file nor a directory; the power-loss filesystem holds only those",
                path.display()
            );
        }
    }
    Ok(())
}

/// Reads until `buf` is full or the file ends.
fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// One mounted power-loss filesystem. Unmounted on drop.
pub struct Mounted {
    shared: Arc<Shared>,
    session: Option<fuser::BackgroundSession>,
    path: PathBuf,
}

impl std::fmt::Debug for Mounted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mounted")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Whether this process may mount a FUSE filesystem as the drills do (effective uid 0).
pub fn can_mount() -> bool {
    nix::unistd::geteuid().is_root()
}

impl Mounted {
    /// Serves `fs` at `path` (an existing, empty directory).
    pub fn mount(fs: LazyFs, path: &Path) -> anyhow::Result<Self> {
        if !can_mount() {
            bail!("the power-loss drills mount a FUSE filesystem and need root (run them as root or pick another scenario)");
        }
        let shared = Arc::new(Shared(Mutex::new(State {
            fs,
            frozen: false,
            cuts: 0,
        })));
        let mut config = Config::default();
        config.mount_options = vec![
            MountOption::FSName(SOURCE.to_owned()),
            MountOption::Subtype("lazyfs".to_owned()),
            MountOption::RW,
            MountOption::NoAtime,
        ];
        config.n_threads = Some(THREADS);
        let session = fuser::spawn_mount(
            LazyFsFuse(shared.clone(), Mutex::new(Listings::default())),
            path,
            &config,
        )
        .with_context(|| {
            format!(
                "mounting the power-loss filesystem at {} (is /dev/fuse there?)",
                path.display()
            )
        })?;
        Ok(Self {
            shared,
            session: Some(session),
            path: path.to_owned(),
        })
    }

    /// Moves the data dir `data_dir` of a stopped node onto a new mount of the power-loss
    /// filesystem, its current content durable.
    pub fn take_over(data_dir: &Path) -> anyhow::Result<Self> {
        if !can_mount() {
            bail!("the power-loss drills mount a FUSE filesystem and need root (run them as root or pick another scenario)");
        }
        let fs = import(data_dir)?;
        let aside = data_dir.with_extension("before-lazyfs");
        std::fs::rename(data_dir, &aside).with_context(|| format!("moving {} aside", data_dir.display()))?;
        std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
        match Self::mount(fs, data_dir) {
            Ok(m) => {
                std::fs::remove_dir_all(&aside).with_context(|| format!("removing {}", aside.display()))?;
                Ok(m)
            }
            Err(e) => {
                // Put the data back where the node looks for it.
                let _ = std::fs::remove_dir(data_dir);
                let _ = std::fs::rename(&aside, data_dir);
                Err(e)
            }
        }
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The power goes off: from now on every operation fails with EIO until [`Mounted::cut`].
    /// Kill the node between the two, so nothing it still sends lands after the cut.
    pub fn freeze(&self) {
        self.shared.lock().frozen = true;
    }

    /// Waits (at most `within`) for a moment at which every one of `disks` holds unsynced
    /// writes, and freezes them all at that instant: the power of a node, a site or a cluster
    /// fails while writes are in flight everywhere, the moment that tests fsync ordering.
    /// Freezes them anyway when `within` runs out; answers, per disk, whether anything was in
    /// flight.
    pub fn freeze_all_when_dirty(disks: &[&Mounted], within: Duration) -> Vec<bool> {
        let deadline = std::time::Instant::now() + within;
        loop {
            // Only this function holds more than one of these locks at a time.
            let mut states: Vec<MutexGuard<'_, State>> = disks.iter().map(|d| d.shared.lock()).collect();
            let dirty: Vec<bool> = states.iter().map(|st| st.fs.unsynced_bytes() > 0).collect();
            if dirty.iter().all(|d| *d) || std::time::Instant::now() >= deadline {
                for st in &mut states {
                    st.frozen = true;
                }
                return dirty;
            }
            drop(states);
            std::thread::sleep(DIRTY_POLL);
        }
    }

    /// Reverts everything to its durable state and turns the power back on.
    pub fn cut(&self) -> CutStats {
        let mut st = self.shared.lock();
        let cut = st.fs.power_cut();
        st.cuts += 1;
        st.frozen = false;
        cut
    }

    /// Arms (true) or clears (false) EIO for every fsync and fdatasync.
    pub fn set_fail_sync(&self, fail: bool) {
        self.shared.lock().fs.set_fail_sync(fail);
    }

    /// The model's counters.
    pub fn stats(&self) -> Stats {
        self.shared.lock().fs.stats()
    }

    /// Unmounts (lazily: a process still inside lets go when it exits) and stops the session.
    pub fn unmount(mut self) -> anyhow::Result<()> {
        self.stop()
    }

    /// Detaches the mount and waits (at most [`UNMOUNT_WAIT_MAX`]) for the session to end,
    /// which it does once no process holds a file there any more.
    ///
    /// The detach is lazy (`umount -l`): fuser's own unmount is a plain `umount(2)`, which
    /// fails with EBUSY while a node killed a moment ago is still closing its files (each
    /// close a FLUSH this session must answer), and then left the mount behind.
    fn stop(&mut self) -> anyhow::Result<()> {
        let Some(s) = self.session.take() else {
            return Ok(());
        };
        let detached = Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .output()
            .with_context(|| format!("running umount -l {}", self.path.display()))?;
        if !detached.status.success() {
            // Put back, so that the drop or the sweep (`unmount_all`) tries again.
            self.session = Some(s);
            bail!(
                "umount -l {} failed: {}",
                self.path.display(),
                String::from_utf8_lossy(&detached.stderr).trim()
            );
        }
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("lazyfs-unmount".to_owned())
            .spawn(move || {
                // Detached: the session ends when the kernel lets the filesystem go.
                let _ = tx.send(s.join());
            })
            .context("starting the unmount thread")?;
        match rx.recv_timeout(UNMOUNT_WAIT_MAX) {
            Ok(r) => r.with_context(|| format!("unmounting {}", self.path.display())),
            Err(_) => bail!(
                "the power-loss filesystem at {} was detached but its session did not end within {UNMOUNT_WAIT_MAX:?}: a process still holds a file there",
                self.path.display()
            ),
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The drill's FUSE mounts under `dir`.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    crate::diskfull::mounts_under(dir, SOURCE)
}

/// Detaches every power-loss mount under `dir` that is still there (a session that could not
/// unmount, or one whose process died).
pub fn unmount_all(dir: &Path) -> anyhow::Result<()> {
    for m in mounts_under(dir) {
        let o = Command::new("umount")
            .arg("-l")
            .arg(&m)
            .output()
            .with_context(|| format!("running umount -l {}", m.display()))?;
        if !o.status.success() {
            bail!(
                "umount -l {} failed: {}",
                m.display(),
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The mount itself, through the kernel: what the drills rely on.
    #[test]
    fn a_mounted_filesystem_loses_exactly_what_was_not_synced() {
        use std::io::{Read, Write};
        use std::os::unix::fs::OpenOptionsExt;
        let d = tempfile::tempdir().unwrap();
        if !can_mount() {
            let e = Mounted::mount(LazyFs::new(), d.path()).unwrap_err();
            assert!(format!("{e:#}").contains("need root"), "{e:#}");
            return;
        }
        let m = Mounted::mount(LazyFs::new(), d.path()).unwrap();
        let at = |name: &str| d.path().join(name);
        // Synced file, synced name.
        std::fs::create_dir(at("raft-log")).unwrap();
        let mut f = std::fs::File::create(at("raft-log/1.wal")).unwrap();
        f.write_all(b"acknowledged").unwrap();
        f.sync_data().unwrap();
        std::fs::File::open(at("raft-log")).unwrap().sync_all().unwrap();
        std::fs::File::open(d.path()).unwrap().sync_all().unwrap();
        // Then an unsynced append, and a file whose name was never synced.
        f.write_all(b" and lost").unwrap();
        drop(f);
        std::fs::write(at("unsynced"), b"x").unwrap();
        // O_DIRECT from an aligned buffer works and is volatile like any write.
        let mut raw = vec![0u8; 3 * PAGE as usize];
        let skew = (PAGE as usize - raw.as_ptr() as usize % PAGE as usize) % PAGE as usize;
        let buf = &mut raw[skew..skew + PAGE as usize];
        buf.fill(0xC5);
        let mut direct = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
            .open(at("raft-log/direct"))
            .unwrap();
        direct.write_all(buf).unwrap();
        drop(direct);
        assert_eq!(std::fs::read(at("raft-log/1.wal")).unwrap(), b"acknowledged and lost");
        assert_eq!(std::fs::read(at("raft-log/direct")).unwrap(), vec![0xC5; PAGE as usize]);
        // statvfs works (arkd's telemetry reads free space).
        let st = nix::sys::statvfs::statvfs(d.path()).unwrap();
        assert!(st.blocks_available() > 0);

        m.freeze();
        assert!(
            std::fs::read(at("raft-log/1.wal")).is_err(),
            "a frozen filesystem answers nothing"
        );
        let cut = m.cut();
        assert!(cut.bytes_dropped >= 2 * PAGE, "{cut:?}");
        assert_eq!(std::fs::read(at("raft-log/1.wal")).unwrap(), b"acknowledged");
        assert!(!at("unsynced").exists());
        assert!(!at("raft-log/direct").exists());
        let mut names: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["raft-log"]);

        // A failed fsync reaches the caller as EIO, and the data it could not write is lost
        // at the next cut even though a retried fsync succeeds.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(at("raft-log/1.wal"))
            .unwrap();
        f.write_all(b"!").unwrap();
        m.set_fail_sync(true);
        let e = f.sync_data().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(nix::errno::Errno::EIO as i32), "{e}");
        m.set_fail_sync(false);
        f.sync_data().unwrap();
        drop(f);
        let mut back = String::new();
        std::fs::File::open(at("raft-log/1.wal"))
            .unwrap()
            .read_to_string(&mut back)
            .unwrap();
        assert_eq!(back, "acknowledged!");
        assert_eq!(m.stats().syncs_failed, 1);
        m.freeze();
        m.cut();
        assert_eq!(std::fs::read(at("raft-log/1.wal")).unwrap(), b"acknowledged\0");

        // A listing is stable while entries come and go: none skipped, none repeated.
        std::fs::create_dir(at("ab")).unwrap();
        // More entries than one readdir request carries (the kernel asks for up to 32 KiB).
        for i in 0..3000 {
            std::fs::write(at(&format!("ab/c{i:04}")), b"").unwrap();
        }
        let mut seen = std::collections::HashSet::new();
        for (n, e) in std::fs::read_dir(at("ab")).unwrap().enumerate() {
            let name = e.unwrap().file_name().into_string().unwrap();
            assert!(seen.insert(name.clone()), "{name} listed twice");
            if n == 10 {
                // Entries before the reader's position go away: offsets by position in the
                // current entries would now point 1000 further on.
                for i in 0..1000 {
                    std::fs::remove_file(at(&format!("ab/c{i:04}"))).unwrap();
                }
            }
        }
        assert!(
            (1000..3000).all(|i| seen.contains(&format!("c{i:04}"))),
            "{} seen",
            seen.len()
        );
        m.unmount().unwrap();
        assert!(mounts_under(d.path()).is_empty());
    }

    #[test]
    fn import_copies_files_and_directories_as_durable() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("raft-log")).unwrap();
        std::fs::write(d.path().join("raft-log/1.wal"), b"entries").unwrap();
        let mut big = vec![0u8; 3 * PAGE as usize + 10];
        big[PAGE as usize + 1] = 9;
        std::fs::write(d.path().join("ark.redb"), &big).unwrap();
        let mut fs = import(d.path()).unwrap();
        assert_eq!(fs.unsynced_bytes(), 0);
        let cut = fs.power_cut();
        assert_eq!(cut, CutStats::default());
        let log = fs.lookup(ROOT, OsStr::new("raft-log")).unwrap().ino;
        let wal = fs.lookup(log, OsStr::new("1.wal")).unwrap().ino;
        assert_eq!(fs.read(wal, 0, 100).unwrap(), b"entries");
        let db = fs.lookup(ROOT, OsStr::new("ark.redb")).unwrap().ino;
        assert_eq!(fs.read(db, 0, u32::MAX).unwrap(), big);
        // Holes stay holes: only the one non-zero page is held.
        assert_eq!(fs.used_bytes(), 2 * PAGE);
    }
}
