//! The on-disk chunk store: one file per chunk under `<data_dir>/chunks/`, named by its id.
//!
//! Owns: chunk ids (SHA-256 of the uncompressed bytes), the directory layout, atomic and
//! durable chunk writes, and refusing to hand out bytes that no longer match their id. It
//! knows nothing of objects, manifests, replication, Raft or the network.
//!
//! Layout: `chunks/ab/<64 hex>` for a raw chunk, `chunks/ab/<64 hex>.zst` for a chunk
//! stored zstd-compressed (level 3); `ab` is the first byte of the id. The 256 fan-out
//! directories are created once by `open` (a put never creates a directory). Writes go
//! to `chunks/tmp/`, are fsynced, renamed into place and the directory is fsynced, so a name
//! under the fan-out directories always refers to complete bytes; `open` deletes what a crash
//! left in `tmp/`. One process owns a data directory at a time (the node holds it).
//!
//! All methods block; async callers run them in `tokio::task::spawn_blocking`.
//!
//! There is no free-space query: `statvfs` needs `unsafe` (or `nix`), which the workspace
//! forbids here. A full disk shows up as [`ChunkError::DiskFull`] on the write that hits it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Largest chunk the store accepts, in bytes (uncompressed).
pub const MAX_CHUNK: usize = 16 * 1024 * 1024;

/// zstd level for compressed chunks: fast to write, decent ratio.
const ZSTD_LEVEL: i32 = 3;

/// Subdirectory of the data directory that holds the chunks.
const CHUNKS_DIR: &str = "chunks";

/// Subdirectory of the chunks directory for files being written.
const TMP_DIR: &str = "tmp";

/// Suffix of a compressed chunk file.
const ZST_SUFFIX: &str = ".zst";

/// `EDQUOT` ("disk quota exceeded"). `io::ErrorKind::QuotaExceeded` is newer than the
/// workspace's minimum Rust version, so match the raw code.
#[cfg(any(target_os = "linux", target_os = "android"))]
const EDQUOT: i32 = 122;
#[cfg(not(any(target_os = "linux", target_os = "android")))]
const EDQUOT: i32 = 69;

/// A chunk's id: the SHA-256 of its uncompressed bytes.
pub type ChunkId = [u8; 32];

/// The id of `data` (its SHA-256).
pub fn chunk_id(data: &[u8]) -> ChunkId {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut id = [0u8; 32];
    id.copy_from_slice(digest.as_ref());
    id
}

/// The id as 64 lowercase hex digits.
pub fn to_hex(id: &ChunkId) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for &b in id {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Parses 64 hex digits (either case) into an id; `None` for anything else.
pub fn from_hex(s: &str) -> Option<ChunkId> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let bytes = s.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut id = [0u8; 32];
    for (out, pair) in id.iter_mut().zip(bytes.chunks_exact(2)) {
        *out = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(id)
}

/// Incremental SHA-256 of a whole object, fed chunk by chunk.
#[derive(Clone)]
pub struct ObjectHasher {
    ctx: ring::digest::Context,
}

impl Default for ObjectHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl ObjectHasher {
    /// A hasher that has seen no bytes.
    pub fn new() -> Self {
        Self {
            ctx: ring::digest::Context::new(&ring::digest::SHA256),
        }
    }

    /// Feeds the next bytes.
    pub fn update(&mut self, data: &[u8]) {
        self.ctx.update(data);
    }

    /// The SHA-256 of everything fed.
    pub fn finish(self) -> [u8; 32] {
        let digest = self.ctx.finish();
        let mut out = [0u8; 32];
        out.copy_from_slice(digest.as_ref());
        out
    }
}

/// What can go wrong in the chunk store.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// No chunk with this id is stored.
    #[error("chunk {id} is not in this node's chunk store")]
    NotFound {
        /// The id, in hex.
        id: String,
    },
    /// The stored file no longer hashes to its id (or does not decompress).
    #[error(
        "chunk {id} is corrupt on disk (its bytes no longer match its id); fetch it from another \
         replica: storing the good bytes again repairs it"
    )]
    Corrupt {
        /// The id, in hex.
        id: String,
    },
    /// The bytes given to `put` do not hash to the id given with them.
    #[error("chunk data does not hash to the id it was sent with; nothing was written, resend the chunk")]
    HashMismatch,
    /// The chunk is larger than [`MAX_CHUNK`].
    #[error("chunk of {len} bytes exceeds the {MAX_CHUNK}-byte limit; nothing was written")]
    TooLarge {
        /// Its length in bytes.
        len: usize,
    },
    /// The disk (or the quota) is full; nothing partial was kept.
    #[error("no space left for the chunk store (disk or quota full); free space on the data disk, then retry")]
    DiskFull,
    /// Any other I/O failure; the message names the file and what was being done.
    #[error("chunk store I/O error: {0}; check the data disk and the permissions of the data directory")]
    Io(io::Error),
}

/// Maps an I/O error to [`ChunkError::DiskFull`] when the disk or quota is full, else to
/// [`ChunkError::Io`] with `what` and `path` in the message.
fn map_io(e: io::Error, what: &str, path: &Path) -> ChunkError {
    if is_disk_full(&e) {
        return ChunkError::DiskFull;
    }
    ChunkError::Io(io::Error::new(e.kind(), format!("{what} {}: {e}", path.display())))
}

fn is_disk_full(e: &io::Error) -> bool {
    e.kind() == ErrorKind::StorageFull || e.raw_os_error() == Some(EDQUOT)
}

/// The chunk store. Cheap to clone (the clones share one state); safe to use from many
/// threads at once.
#[derive(Debug, Clone)]
pub struct ChunkStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `<data_dir>/chunks`.
    root: PathBuf,
    /// `<data_dir>/chunks/tmp`.
    tmp: PathBuf,
    /// Makes temp file names unique within the process.
    tmp_seq: AtomicU64,
    /// Direct I/O state for chunk writes.
    direct: DirectIo,
}

/// Where a chunk's file is, and whether it is compressed.
struct Located {
    path: PathBuf,
    compressed: bool,
}

impl ChunkStore {
    /// Opens (creating if needed) the chunk store under `data_dir`, and deletes temp files a
    /// crash may have left.
    pub fn open(data_dir: &Path) -> Result<Self, ChunkError> {
        let root = data_dir.join(CHUNKS_DIR);
        let tmp = root.join(TMP_DIR);
        fs::create_dir_all(&tmp).map_err(|e| map_io(e, "creating", &tmp))?;
        let mut removed = 0u64;
        let entries = fs::read_dir(&tmp).map_err(|e| map_io(e, "listing", &tmp))?;
        for entry in entries {
            let entry = entry.map_err(|e| map_io(e, "listing", &tmp))?;
            let path = entry.path();
            let file_type = entry.file_type().map_err(|e| map_io(e, "inspecting", &path))?;
            if file_type.is_dir() {
                fs::remove_dir_all(&path).map_err(|e| map_io(e, "removing leftover", &path))?;
            } else {
                fs::remove_file(&path).map_err(|e| map_io(e, "removing leftover", &path))?;
            }
            removed += 1;
        }
        let mut created = false;
        for b in 0..=255u8 {
            let d = root.join(format!("{b:02x}"));
            match fs::create_dir(&d) {
                Ok(()) => created = true,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(map_io(e, "creating directory", &d)),
            }
        }
        if created {
            for b in 0..=255u8 {
                sync_dir(&root.join(format!("{b:02x}")))?;
            }
        }
        // Make the directories themselves durable before anything is renamed into them.
        sync_dir(&tmp)?;
        sync_dir(&root)?;
        sync_dir(data_dir)?;
        if removed > 0 {
            tracing::info!(removed, dir = %tmp.display(), "removed temp files left by an interrupted write");
        }
        Ok(Self {
            inner: Arc::new(Inner {
                root,
                tmp,
                tmp_seq: AtomicU64::new(0),
                direct: DirectIo::new(),
            }),
        })
    }

    /// A store over `<data_dir>/chunks` that creates nothing on disk: what a witness voter
    /// holds, since it never stores a chunk (its data plane refuses every chunk write, and a
    /// put here would fail: the directories do not exist). Reads find nothing.
    pub fn unopened(data_dir: &Path) -> Self {
        let root = data_dir.join(CHUNKS_DIR);
        let tmp = root.join(TMP_DIR);
        Self {
            inner: Arc::new(Inner {
                root,
                tmp,
                tmp_seq: AtomicU64::new(0),
                direct: DirectIo::new(),
            }),
        }
    }

    /// The directory holding the chunks (`<data_dir>/chunks`).
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Stores `data` under `id`. Returns `Ok(true)` if it was written, `Ok(false)` if a valid
    /// copy was already there. A corrupt copy is replaced. With `compress` the chunk is stored
    /// zstd-compressed unless that would not make it smaller.
    ///
    /// When this returns `Ok`, the chunk is durable (file and directory entry fsynced). On any
    /// error nothing new is visible under the chunk's name.
    pub fn put(&self, id: &ChunkId, data: &[u8], compress: bool) -> Result<bool, ChunkError> {
        if chunk_id(data) != *id {
            return Err(ChunkError::HashMismatch);
        }
        self.put_hashed(id, data, compress)
    }

    /// [`put`](Self::put) for a caller that has just computed `id` from these very bytes
    /// (hashing 1 GiB twice costs a second of CPU). Anything else must use `put`.
    pub fn put_hashed(&self, id: &ChunkId, data: &[u8], compress: bool) -> Result<bool, ChunkError> {
        if data.len() > MAX_CHUNK {
            return Err(ChunkError::TooLarge { len: data.len() });
        }
        if let Some(found) = self.locate(id) {
            // `data` hashes to `id`, so an existing copy equal to it byte for byte is intact:
            // a comparison instead of hashing the copy again (a re-put of an unchanged 1 GiB
            // object would otherwise hash it a third time).
            let intact = self.read_file(id, &found).and_then(|copy| {
                if copy == data {
                    Ok(())
                } else {
                    Err(self.corrupt(id, &found.path, "differs from the bytes being stored"))
                }
            });
            match intact {
                Ok(()) => {
                    ::metrics::counter!("ark_chunks_put_existing_total").increment(1);
                    return Ok(false);
                }
                Err(ChunkError::Corrupt { .. }) => {
                    tracing::warn!(chunk = %to_hex(id), path = %found.path.display(), "replacing corrupt chunk");
                    self.remove(id)?;
                }
                // Removed since locate(): write it afresh.
                Err(ChunkError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }

        let compressed = if compress {
            let packed =
                zstd::bulk::compress(data, ZSTD_LEVEL).map_err(|e| map_io(e, "compressing", &self.raw_path(id)))?;
            (packed.len() < data.len()).then_some(packed)
        } else {
            None
        };
        let (bytes, final_path) = match &compressed {
            Some(packed) => (packed.as_slice(), self.zst_path(id)),
            None => (data, self.raw_path(id)),
        };
        self.write_durably(id, bytes, &final_path)?;
        ::metrics::counter!("ark_chunks_written_total").increment(1);
        ::metrics::counter!("ark_chunks_written_bytes_total").increment(bytes.len() as u64);
        Ok(true)
    }

    /// Writes `bytes` to a temp file, fsyncs it, renames it to `final_path` and fsyncs the
    /// directory. On error the temp file is gone and `final_path` is not left behind.
    fn write_durably(&self, id: &ChunkId, bytes: &[u8], final_path: &Path) -> Result<(), ChunkError> {
        let seq = self.inner.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp_path = self
            .inner
            .tmp
            .join(format!("{}.{}.{seq}.tmp", to_hex(id), std::process::id()));

        let written = write_tmp(&tmp_path, bytes, &self.inner.direct).and_then(|()| {
            let dir = final_path.parent().unwrap_or(&self.inner.root);
            self.ensure_fanout_dir(dir)?;
            fs::rename(&tmp_path, final_path).map_err(|e| map_io(e, "renaming into place", final_path))
        });
        if let Err(e) = written {
            remove_quietly(&tmp_path);
            return Err(e);
        }
        let dir = final_path.parent().unwrap_or(&self.inner.root);
        if let Err(e) = sync_dir(dir) {
            // The entry may not survive a crash, so the write is not acknowledged; take the
            // name away so that a retry writes (and syncs) it again instead of finding it.
            remove_quietly(final_path);
            return Err(e);
        }
        Ok(())
    }

    /// Creates a fan-out directory if it is missing (`open` makes all of them), fsyncing the
    /// parents that gained an entry so the new directory survives a crash.
    fn ensure_fanout_dir(&self, dir: &Path) -> Result<(), ChunkError> {
        if dir.is_dir() {
            return Ok(());
        }
        let mut missing = Vec::new();
        let mut cur = dir;
        while cur != self.inner.root.as_path() && !cur.is_dir() {
            missing.push(cur);
            match cur.parent() {
                Some(parent) => cur = parent,
                None => break,
            }
        }
        for d in missing.into_iter().rev() {
            match fs::create_dir(d) {
                Ok(()) => {}
                // Another thread created it first.
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(map_io(e, "creating directory", d)),
            }
            if let Some(parent) = d.parent() {
                sync_dir(parent)?;
            }
        }
        Ok(())
    }

    /// Reads the chunk, checking it against its id. Never returns bytes that do not match.
    pub fn get(&self, id: &ChunkId) -> Result<Bytes, ChunkError> {
        let found = self.locate(id).ok_or_else(|| ChunkError::NotFound { id: to_hex(id) })?;
        self.read_verified(id, &found)
    }

    /// Whether a file for the chunk exists (no read, no hash check).
    pub fn has(&self, id: &ChunkId) -> bool {
        self.locate(id).is_some()
    }

    /// Reads and re-hashes the chunk: `Ok` if it is intact.
    pub fn verify(&self, id: &ChunkId) -> Result<(), ChunkError> {
        self.get(id).map(|_| ())
    }

    /// Deletes the chunk (both the raw and the compressed file, if present). Returns whether
    /// anything was deleted.
    ///
    /// The directory is not fsynced: a removal undone by a crash leaves an unreferenced chunk,
    /// which garbage collection finds again; it never loses data.
    pub fn remove(&self, id: &ChunkId) -> Result<bool, ChunkError> {
        let mut removed = false;
        for path in [self.raw_path(id), self.zst_path(id)] {
            match fs::remove_file(&path) {
                Ok(()) => removed = true,
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(map_io(e, "removing", &path)),
            }
        }
        Ok(removed)
    }

    /// Every stored chunk's id, sorted, each once. Temp and foreign files are ignored.
    pub fn list(&self) -> Result<Vec<ChunkId>, ChunkError> {
        let mut ids = Vec::new();
        self.walk(|id, _| ids.push(id))?;
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// The file holding the chunk (raw or `.zst`), if there is one.
    pub fn path_of(&self, id: &ChunkId) -> Option<PathBuf> {
        self.locate(id).map(|found| found.path)
    }

    /// Total size of the chunk files on disk, in bytes (compressed size for `.zst` files).
    pub fn stored_bytes(&self) -> Result<u64, ChunkError> {
        let mut total = 0u64;
        self.walk(|_, len| total += len)?;
        Ok(total)
    }

    /// Calls `f(id, file_len)` for every chunk file in the fan-out directories.
    fn walk(&self, mut f: impl FnMut(ChunkId, u64)) -> Result<(), ChunkError> {
        let root = &self.inner.root;
        for first in read_dir_sorted(root)? {
            let Some(b0) = fanout_byte(&first) else { continue };
            let entries = fs::read_dir(&first).map_err(|e| map_io(e, "listing", &first))?;
            for entry in entries {
                let entry = entry.map_err(|e| map_io(e, "listing", &first))?;
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                let hex = name.strip_suffix(ZST_SUFFIX).unwrap_or(name);
                let Some(id) = from_hex(hex) else { continue };
                // A file in the wrong fan-out directory is not where get() would look.
                if id[0] != b0 {
                    continue;
                }
                let meta = entry.metadata().map_err(|e| map_io(e, "inspecting", &entry.path()))?;
                if meta.is_file() {
                    f(id, meta.len());
                }
            }
        }
        Ok(())
    }

    fn raw_path(&self, id: &ChunkId) -> PathBuf {
        self.fanout_dir(id).join(to_hex(id))
    }

    fn zst_path(&self, id: &ChunkId) -> PathBuf {
        self.fanout_dir(id).join(format!("{}{ZST_SUFFIX}", to_hex(id)))
    }

    /// One level of 256 fan-out directories, all created (and made durable) by `open`, so
    /// that a put never pays for creating and syncing a directory.
    fn fanout_dir(&self, id: &ChunkId) -> PathBuf {
        self.inner.root.join(format!("{:02x}", id[0]))
    }

    /// The chunk's file, raw preferred.
    fn locate(&self, id: &ChunkId) -> Option<Located> {
        let raw = self.raw_path(id);
        if raw.is_file() {
            return Some(Located {
                path: raw,
                compressed: false,
            });
        }
        let zst = self.zst_path(id);
        zst.is_file().then_some(Located {
            path: zst,
            compressed: true,
        })
    }

    /// Reads a located chunk file, decompresses it if needed and checks the hash.
    fn read_verified(&self, id: &ChunkId, found: &Located) -> Result<Bytes, ChunkError> {
        let data = self.read_file(id, found)?;
        if chunk_id(&data) != *id {
            return Err(self.corrupt(id, &found.path, "hash does not match its id"));
        }
        Ok(Bytes::from(data))
    }

    /// Reads a located chunk file and decompresses it if needed; no hash check.
    fn read_file(&self, id: &ChunkId, found: &Located) -> Result<Vec<u8>, ChunkError> {
        let mut file = match fs::File::open(&found.path) {
            Ok(f) => f,
            // Removed between locate() and the read.
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(ChunkError::NotFound { id: to_hex(id) }),
            Err(e) => return Err(map_io(e, "reading", &found.path)),
        };
        // A file larger than any chunk can be (a damaged file system, a stray file) is
        // refused before it is read: reading it whole could take any amount of memory.
        let len = file.metadata().map_err(|e| map_io(e, "reading", &found.path))?.len();
        let max = if found.compressed {
            zstd::zstd_safe::compress_bound(MAX_CHUNK)
        } else {
            MAX_CHUNK
        };
        if len > max as u64 {
            return Err(self.corrupt(id, &found.path, &format!("is {len} bytes, more than any chunk file")));
        }
        let mut raw = Vec::with_capacity(len as usize);
        std::io::Read::read_to_end(&mut file, &mut raw).map_err(|e| map_io(e, "reading", &found.path))?;
        let data = if found.compressed {
            // The capacity bounds what a corrupt frame can make us allocate.
            match zstd::bulk::decompress(&raw, MAX_CHUNK) {
                Ok(data) => data,
                Err(e) => return Err(self.corrupt(id, &found.path, &format!("does not decompress: {e}"))),
            }
        } else {
            raw
        };
        Ok(data)
    }

    fn corrupt(&self, id: &ChunkId, path: &Path, why: &str) -> ChunkError {
        tracing::error!(chunk = %to_hex(id), path = %path.display(), why, "corrupt chunk on disk");
        ::metrics::counter!("ark_chunks_corrupt_total").increment(1);
        ChunkError::Corrupt { id: to_hex(id) }
    }
}

/// Creates `path` (which must not exist), writes `bytes` and syncs it: with direct I/O
/// (`O_DIRECT`, from a reused aligned buffer) when the filesystem takes it, else buffered.
///
/// Why direct I/O: a chunk is written once and read rarely (gets, scrub), so the page cache
/// buys little, while copying 1 GiB into freshly allocated page-cache pages cost this machine
/// 0.4 to 2.4 CPU-s (`copy_folio_from_iter_atomic` was 28% of all samples of a 1 GiB put
/// on three local nodes). A direct write is a DMA from the aligned buffer: 0.25 CPU-s per
/// GiB. See docs/benchmarks.md.
fn write_tmp(path: &Path, bytes: &[u8], direct: &DirectIo) -> Result<(), ChunkError> {
    if direct.enabled.load(Ordering::Relaxed) {
        let refused = match create_new(path, true) {
            Ok(file) => match write_direct(file, bytes, direct) {
                Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => e,
                written => return written.map_err(|e| map_io(e, "writing", path)),
            },
            Err(e) if e.raw_os_error() == Some(nix::libc::EINVAL) => e,
            Err(e) => return Err(map_io(e, "creating", path)),
        };
        // This filesystem does not do direct I/O (at open or at the first write): buffered
        // from now on.
        tracing::info!(path = %path.display(), error = %refused, "direct I/O refused; chunk writes are buffered");
        direct.enabled.store(false, Ordering::Relaxed);
        remove_quietly(path);
    }
    let mut file = create_new(path, false).map_err(|e| map_io(e, "creating", path))?;
    file.write_all(bytes).map_err(|e| map_io(e, "writing", path))?;
    // fdatasync: the contents and the size are what must be durable; the name is made durable
    // by the directory fsync after the rename. Measured ~1 ms cheaper per chunk than fsync.
    file.sync_data().map_err(|e| map_io(e, "syncing", path))
}

/// Creates `path` for writing; it must not exist. `direct` opens it with `O_DIRECT`.
fn create_new(path: &Path, direct: bool) -> io::Result<File> {
    let flags = if direct { nix::fcntl::OFlag::O_DIRECT.bits() } else { 0 };
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(flags)
        .open(path)
}

/// Writes `bytes` to a file opened with `O_DIRECT`: copied into an aligned buffer, padded
/// with zeros to a whole number of blocks, written in one call, cut back to the exact length
/// and synced (the size and the block allocation are metadata that `fdatasync` makes durable).
fn write_direct(mut file: File, bytes: &[u8], direct: &DirectIo) -> io::Result<()> {
    let padded = bytes.len().div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
    let mut buf = direct.take();
    let needed = padded + DIRECT_ALIGN;
    buf.reserve_exact(needed.saturating_sub(buf.len()));
    buf.resize(needed, 0);
    let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
    let block = &mut buf[start..start + padded];
    block[..bytes.len()].copy_from_slice(bytes);
    block[bytes.len()..].fill(0);
    let written = file
        .write_all(block)
        .and_then(|()| file.set_len(bytes.len() as u64))
        .and_then(|()| file.sync_data());
    direct.give_back(buf);
    written
}

/// Block alignment of direct writes (buffer address and length): the page size, a multiple
/// of every logical block size in use.
const DIRECT_ALIGN: usize = 4096;

/// Buffers kept for reuse by direct writes: the chunks one put writes at once (8 streams).
const DIRECT_BUFFERS_KEPT: usize = 8;

/// Largest buffer kept for reuse (the chunker's default maximum chunk, 4 MiB, plus alignment
/// slack), so what the pool holds between writes stays under 8 x 4 MiB. A buffer grown for a
/// larger chunk is freed after its write.
const DIRECT_BUFFER_KEPT_MAX: usize = 4 * 1024 * 1024 + 2 * DIRECT_ALIGN;

/// Whether chunk writes use `O_DIRECT`, and the aligned buffers they reuse. Reuse matters:
/// a fresh allocation is fresh pages, whose first touch is what direct I/O avoids.
#[derive(Debug)]
struct DirectIo {
    enabled: AtomicBool,
    buffers: Mutex<Vec<Vec<u8>>>,
}

impl DirectIo {
    fn new() -> Self {
        Self {
            enabled: AtomicBool::new(true),
            buffers: Mutex::new(Vec::new()),
        }
    }

    fn take(&self) -> Vec<u8> {
        self.buffers.lock().ok().and_then(|mut b| b.pop()).unwrap_or_default()
    }

    fn give_back(&self, buf: Vec<u8>) {
        if let Ok(mut b) = self.buffers.lock() {
            if b.len() < DIRECT_BUFFERS_KEPT && buf.capacity() <= DIRECT_BUFFER_KEPT_MAX {
                b.push(buf);
            }
        }
    }
}

/// fsyncs a directory so that entries created or renamed in it survive a crash.
fn sync_dir(dir: &Path) -> Result<(), ChunkError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| map_io(e, "syncing directory", dir))
}

/// Removes a file on an error path, where the first error is the one to report.
fn remove_quietly(path: &Path) {
    if let Err(e) = fs::remove_file(path) {
        if e.kind() != ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %e, "could not remove file after a failed chunk write");
        }
    }
}

/// Subdirectories of `dir`, sorted by name (so listings are deterministic).
fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, ChunkError> {
    let mut dirs = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| map_io(e, "listing", dir))? {
        let entry = entry.map_err(|e| map_io(e, "listing", dir))?;
        if entry
            .file_type()
            .map_err(|e| map_io(e, "inspecting", &entry.path()))?
            .is_dir()
        {
            dirs.push(entry.path());
        }
    }
    dirs.sort();
    Ok(dirs)
}

/// The byte a fan-out directory stands for (`"ab"` → 0xab), `None` for any other name
/// (such as `tmp`).
fn fanout_byte(dir: &Path) -> Option<u8> {
    let name = dir.file_name()?.to_str()?;
    if name.len() != 2 || !name.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u8::from_str_radix(name, 16).ok()
}

/// Describes this module's metrics (HELP text and unit) to the recorder; called once at start-up by
/// `server` (through `metrics::install`).
pub(crate) fn describe_metrics() {
    use ::metrics::{describe_counter, Unit};
    describe_counter!(
        "ark_chunks_put_existing_total",
        "Chunk writes skipped because an intact copy was already on disk."
    );
    describe_counter!("ark_chunks_written_total", "Chunk files written and made durable.");
    describe_counter!(
        "ark_chunks_written_bytes_total",
        Unit::Bytes,
        "Bytes of chunk files written (after compression)."
    );
    describe_counter!(
        "ark_chunks_corrupt_total",
        "Chunk files found corrupt on read (hash or format mismatch)."
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngCore, SeedableRng};

    fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
        let mut data = vec![0u8; len];
        StdRng::seed_from_u64(seed).fill_bytes(&mut data);
        data
    }

    fn compressible(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| b"ark chunk store "[i % 16] ^ ((i / 4096) as u8))
            .collect()
    }

    fn open_tmp() -> (tempfile::TempDir, ChunkStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        (dir, store)
    }

    fn flip_byte(path: &Path, at: usize) {
        let mut bytes = fs::read(path).unwrap();
        let at = at.min(bytes.len() - 1);
        bytes[at] ^= 0x01;
        fs::write(path, bytes).unwrap();
    }

    fn all_files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                out.extend(all_files(&path));
            } else {
                out.push(path);
            }
        }
        out
    }

    #[test]
    fn store_is_clone_send_sync() {
        fn check<T: Clone + Send + Sync + 'static>() {}
        check::<ChunkStore>();
    }

    #[test]
    fn hex_round_trip() {
        let id = chunk_id(b"hello");
        let hex = to_hex(&id);
        assert_eq!(hex, "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!(from_hex(&hex), Some(id));
        assert_eq!(from_hex(&hex.to_uppercase()), Some(id));
        assert_eq!(from_hex(&hex[..63]), None);
        assert_eq!(from_hex(&format!("{hex}0")), None);
        assert_eq!(from_hex(&format!("g{}", &hex[1..])), None);
        assert_eq!(from_hex(""), None);
    }

    #[test]
    fn object_hasher_matches_one_shot_digest() {
        let data = random_bytes(1, 100_000);
        let mut hasher = ObjectHasher::new();
        for piece in data.chunks(7777) {
            hasher.update(piece);
        }
        assert_eq!(hasher.finish(), chunk_id(&data));
        assert_eq!(ObjectHasher::default().finish(), chunk_id(&[]));
    }

    #[test]
    fn round_trip_raw_and_compressed() {
        let (_dir, store) = open_tmp();
        let raw = random_bytes(2, 1 << 20);
        let packed = compressible(1 << 20);
        let empty: Vec<u8> = Vec::new();
        for (data, compress) in [(&raw, false), (&packed, true), (&empty, false)] {
            let id = chunk_id(data);
            assert!(store.put(&id, data, compress).unwrap());
            assert!(store.has(&id));
            assert_eq!(&store.get(&id).unwrap()[..], &data[..]);
            store.verify(&id).unwrap();
        }
        let zst = store.path_of(&chunk_id(&packed)).unwrap();
        assert!(zst.to_str().unwrap().ends_with(".zst"));
        assert!(fs::metadata(&zst).unwrap().len() < (packed.len() / 10) as u64);
        let plain = store.path_of(&chunk_id(&raw)).unwrap();
        let hex = to_hex(&chunk_id(&raw));
        assert_eq!(plain, store.root().join(&hex[0..2]).join(&hex));
    }

    #[test]
    fn direct_io_pool_keeps_a_bounded_number_of_bounded_buffers() {
        let pool = DirectIo::new();
        pool.give_back(Vec::with_capacity(MAX_CHUNK + DIRECT_ALIGN));
        assert!(
            pool.take().capacity() == 0,
            "a buffer grown for an oversized chunk is freed"
        );
        for _ in 0..DIRECT_BUFFERS_KEPT + 3 {
            pool.give_back(Vec::with_capacity(1 << 20));
        }
        assert_eq!(pool.buffers.lock().unwrap().len(), DIRECT_BUFFERS_KEPT);
    }

    /// Whether the filesystem under `dir` takes an `O_DIRECT` write of one aligned block.
    fn takes_direct_io(dir: &Path) -> bool {
        let path = dir.join("direct-probe");
        let ok = create_new(&path, true)
            .and_then(|mut f| {
                let buf = vec![0u8; 2 * DIRECT_ALIGN];
                let at = buf.as_ptr().align_offset(DIRECT_ALIGN);
                f.write_all(&buf[at..at + DIRECT_ALIGN])
            })
            .is_ok();
        let _ = fs::remove_file(path);
        ok
    }

    /// Whether `path`'s first page is in the page cache: a read with `RWF_NOWAIT` refuses
    /// (EAGAIN) instead of going to the disk. Asked once per file: the refused read still
    /// starts readahead.
    fn first_page_cached(path: &Path) -> bool {
        let file = File::open(path).unwrap();
        let mut byte = [0u8; 1];
        match rustix::io::preadv2(
            &file,
            &mut [io::IoSliceMut::new(&mut byte)],
            0,
            rustix::io::ReadWriteFlags::NOWAIT,
        ) {
            Ok(n) => n == 1,
            Err(e) if e == rustix::io::Errno::AGAIN => false,
            Err(e) => panic!("preadv2 {}: {e}", path.display()),
        }
    }

    #[test]
    fn lengths_around_the_direct_io_block_are_stored_exactly() {
        // Direct writes pad to whole blocks and cut the file back: the file must hold exactly
        // the chunk, whatever its length, and a reused buffer must not leak earlier bytes. Both
        // write paths are checked: direct (where the filesystem takes it, which must then
        // still be the path in use afterwards) and the buffered fallback.
        for direct in [true, false] {
            let (dir, store) = open_tmp();
            store.inner.direct.enabled.store(direct, Ordering::Relaxed);
            let bypassed = direct && takes_direct_io(dir.path());
            let mut cached = Vec::new();
            for (seed, len) in [
                (10, 1 << 20),
                (11, 1),
                (12, 4095),
                (13, 4096),
                (14, 4097),
                (15, (1 << 20) + 3),
            ] {
                let data = random_bytes(seed, len);
                let id = chunk_id(&data);
                assert!(store.put(&id, &data, false).unwrap());
                let path = store.path_of(&id).unwrap();
                // What direct I/O is for: the write leaves nothing in the page cache (and a
                // buffered write does, which shows the probe sees the difference).
                if first_page_cached(&path) {
                    cached.push(len);
                }
                assert_eq!(
                    fs::metadata(&path).unwrap().len(),
                    len as u64,
                    "length {len}, direct {direct}"
                );
                assert_eq!(fs::read(&path).unwrap(), data, "length {len}, direct {direct}");
                store.verify(&id).unwrap();
            }
            if bypassed {
                // Linux may serve a direct write through the page cache now and then (iomap
                // falls back to a buffered write when it cannot invalidate the range first,
                // about 1 in 1000 writes here under load): one such write of the six is the
                // kernel's choice, more means the direct path is not taken.
                assert!(
                    cached.len() <= 1,
                    "direct writes left pages cached for lengths {cached:?}"
                );
            } else {
                assert_eq!(
                    cached.len(),
                    6,
                    "buffered writes left pages cached for lengths {cached:?} only"
                );
            }
            let used = store.inner.direct.enabled.load(Ordering::Relaxed);
            assert_eq!(used, bypassed, "direct I/O asked {direct}, still in use {used}");
        }
    }

    #[test]
    fn incompressible_data_is_stored_raw_even_when_compression_is_asked() {
        let (_dir, store) = open_tmp();
        let data = random_bytes(3, 100_000);
        let id = chunk_id(&data);
        assert!(store.put(&id, &data, true).unwrap());
        assert!(!store.path_of(&id).unwrap().to_str().unwrap().ends_with(".zst"));
        assert_eq!(&store.get(&id).unwrap()[..], &data[..]);
    }

    #[test]
    fn put_with_wrong_id_is_refused_and_writes_nothing() {
        let (dir, store) = open_tmp();
        let data = random_bytes(4, 5000);
        let wrong = chunk_id(b"something else");
        assert!(matches!(store.put(&wrong, &data, false), Err(ChunkError::HashMismatch)));
        assert!(matches!(store.put(&wrong, &data, true), Err(ChunkError::HashMismatch)));
        assert!(!store.has(&wrong));
        assert!(!store.has(&chunk_id(&data)));
        assert!(all_files(dir.path()).is_empty());
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn too_large_is_refused() {
        let (_dir, store) = open_tmp();
        let data = vec![0u8; MAX_CHUNK + 1];
        let id = chunk_id(&data);
        assert!(matches!(
            store.put(&id, &data, false),
            Err(ChunkError::TooLarge { len }) if len == MAX_CHUNK + 1
        ));
        assert!(!store.has(&id));
        let at_limit = vec![0u8; MAX_CHUNK];
        assert!(store.put(&chunk_id(&at_limit), &at_limit, true).unwrap());
        assert_eq!(store.get(&chunk_id(&at_limit)).unwrap().len(), MAX_CHUNK);
    }

    #[test]
    fn put_is_idempotent() {
        let (_dir, store) = open_tmp();
        let data = random_bytes(5, 10_000);
        let id = chunk_id(&data);
        assert!(store.put(&id, &data, false).unwrap());
        let path = store.path_of(&id).unwrap();
        let mtime = fs::metadata(&path).unwrap().modified().unwrap();
        assert!(!store.put(&id, &data, false).unwrap());
        // A valid copy in the other form also counts.
        assert!(!store.put(&id, &data, true).unwrap());
        assert_eq!(fs::metadata(&path).unwrap().modified().unwrap(), mtime);
        assert_eq!(store.list().unwrap(), vec![id]);
    }

    #[test]
    fn get_of_missing_chunk_is_not_found() {
        let (_dir, store) = open_tmp();
        let id = chunk_id(b"absent");
        assert!(matches!(store.get(&id), Err(ChunkError::NotFound { id: hex }) if hex == to_hex(&id)));
        assert!(matches!(store.verify(&id), Err(ChunkError::NotFound { .. })));
        assert!(!store.has(&id));
        assert_eq!(store.path_of(&id), None);
    }

    #[test]
    fn flipped_byte_is_detected_and_repaired() {
        for (data, compress) in [(random_bytes(6, 300_000), false), (compressible(300_000), true)] {
            let (_dir, store) = open_tmp();
            let id = chunk_id(&data);
            assert!(store.put(&id, &data, compress).unwrap());
            let path = store.path_of(&id).unwrap();
            assert_eq!(path.to_str().unwrap().ends_with(".zst"), compress);
            for at in [0, 1000, usize::MAX] {
                flip_byte(&path, at);
                let hex = to_hex(&id);
                assert!(
                    matches!(store.get(&id), Err(ChunkError::Corrupt { id }) if id == hex),
                    "at {at}"
                );
                assert!(matches!(store.verify(&id), Err(ChunkError::Corrupt { .. })), "at {at}");
                assert!(store.has(&id), "has() does not hash");
                // Storing the good bytes again repairs it.
                assert!(store.put(&id, &data, compress).unwrap(), "at {at}");
                assert_eq!(&store.get(&id).unwrap()[..], &data[..]);
                store.verify(&id).unwrap();
            }
        }
    }

    #[test]
    fn corrupt_zst_is_repaired_by_a_raw_put() {
        let (_dir, store) = open_tmp();
        let data = compressible(50_000);
        let id = chunk_id(&data);
        store.put(&id, &data, true).unwrap();
        let zst = store.path_of(&id).unwrap();
        fs::write(&zst, b"not zstd at all").unwrap();
        assert!(matches!(store.get(&id), Err(ChunkError::Corrupt { .. })));
        assert!(store.put(&id, &data, false).unwrap());
        assert!(!zst.exists(), "the corrupt copy is gone");
        assert_eq!(&store.get(&id).unwrap()[..], &data[..]);
    }

    #[test]
    fn list_remove_and_stored_bytes() {
        let (_dir, store) = open_tmp();
        let mut ids = Vec::new();
        let mut on_disk = 0u64;
        for seed in 0..20u64 {
            let data = if seed % 2 == 0 {
                random_bytes(seed, 1000 + seed as usize)
            } else {
                compressible(20_000 + seed as usize)
            };
            let id = chunk_id(&data);
            store.put(&id, &data, seed % 2 == 1).unwrap();
            on_disk += fs::metadata(store.path_of(&id).unwrap()).unwrap().len();
            ids.push(id);
        }
        // Foreign files and a stray temp are ignored.
        fs::write(store.root().join("README"), b"x").unwrap();
        fs::write(store.inner.tmp.join("stray.tmp"), b"x").unwrap();
        let hex = to_hex(&ids[0]);
        fs::write(store.root().join(&hex[0..2]).join("notes.txt"), b"x").unwrap();
        fs::create_dir_all(store.root().join("zz").join("00")).unwrap();
        let misplaced = to_hex(&chunk_id(b"misplaced"));
        fs::write(store.root().join(&hex[0..2]).join(misplaced), b"x").unwrap();

        ids.sort_unstable();
        assert_eq!(store.list().unwrap(), ids);
        assert_eq!(store.stored_bytes().unwrap(), on_disk);

        let gone = ids.remove(3);
        assert!(store.remove(&gone).unwrap());
        assert!(!store.remove(&gone).unwrap());
        assert!(!store.has(&gone));
        assert_eq!(store.list().unwrap(), ids);
    }

    #[test]
    fn open_removes_leftover_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = ChunkStore::open(dir.path()).unwrap();
        let data = random_bytes(7, 4000);
        let id = chunk_id(&data);
        store.put(&id, &data, false).unwrap();
        let tmp = dir.path().join("chunks").join("tmp");
        fs::write(tmp.join(format!("{}.1.0.tmp", to_hex(&id))), &data[..100]).unwrap();
        fs::create_dir(tmp.join("half")).unwrap();
        fs::write(tmp.join("half").join("x"), b"x").unwrap();
        drop(store);

        let store = ChunkStore::open(dir.path()).unwrap();
        assert_eq!(fs::read_dir(&tmp).unwrap().count(), 0);
        assert_eq!(&store.get(&id).unwrap()[..], &data[..]);
        assert_eq!(store.list().unwrap(), vec![id]);
    }

    #[test]
    fn no_temp_files_remain_after_puts() {
        let (_dir, store) = open_tmp();
        for seed in 0..5 {
            let data = random_bytes(seed, 2000);
            store.put(&chunk_id(&data), &data, seed % 2 == 0).unwrap();
        }
        assert_eq!(fs::read_dir(&store.inner.tmp).unwrap().count(), 0);
    }

    #[test]
    fn concurrent_puts_of_the_same_chunk() {
        let (_dir, store) = open_tmp();
        let data = Arc::new(random_bytes(8, 200_000));
        let id = chunk_id(&data);
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let (store, data) = (store.clone(), Arc::clone(&data));
                std::thread::spawn(move || store.put(&id, &data, i % 2 == 0))
            })
            .collect();
        for h in handles {
            h.join().unwrap().unwrap();
        }
        assert_eq!(&store.get(&id).unwrap()[..], &data[..]);
        assert_eq!(store.list().unwrap(), vec![id]);
    }

    #[test]
    fn disk_full_errors_map_to_disk_full() {
        let path = Path::new("/data/chunks/tmp/x");
        assert!(matches!(
            map_io(io::Error::from_raw_os_error(28), "writing", path),
            ChunkError::DiskFull
        ));
        assert!(matches!(
            map_io(io::Error::from_raw_os_error(EDQUOT), "writing", path),
            ChunkError::DiskFull
        ));
        match map_io(io::Error::from_raw_os_error(5), "writing", path) {
            ChunkError::Io(e) => assert!(e.to_string().contains("/data/chunks/tmp/x"), "{e}"),
            other => panic!("EIO mapped to {other:?}"),
        }
        assert!(ChunkError::DiskFull.to_string().contains("free space"));
    }
}
