//! The audit log: one JSON line per admin action and per denied request, appended to
//! `<data_dir>/audit/audit.log` on the node that served the call, rotated by size
//! (`audit.log.1` is the newest old file, `audit.log.<keep>` the oldest kept), and read back
//! by `ark audit tail` through the node's admin API.
//!
//! Each line: `time` (RFC 3339, UTC, ms), `time_ms`, `node`, `identity`, `peer` (the
//! client's address), `rpc`, `target`, `outcome` (`ok`, `error` or `denied`) and `detail`
//! (the error or the missing permission).
//!
//! Lines are written straight to the file (no buffer in the process, so a crash loses none
//! that were acknowledged as written) but not fsynced one by one: like etcd's and
//! Kubernetes' audit logs, it is a record for people, not a durability promise; a power loss
//! can cost the last lines. A line that cannot be written is counted
//! (`ark_audit_write_errors_total`) and logged; the call it describes is not failed for it.
//!
//! Owns the file format, rotation and reading back. Must not decide what is audited (the
//! client plane does, `api::auth`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The file name under the audit folder.
pub const FILE_NAME: &str = "audit.log";
/// Where the current file is rotated.
pub const FILE_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Old files kept (so at most `(1 + FILES_KEPT) * FILE_BYTES_MAX` on disk).
pub const FILES_KEPT: usize = 8;
/// Most lines one tail returns.
pub const TAIL_LINES_MAX: usize = 10_000;
/// Longest field kept in a line (targets and details are cut, with a marker).
const FIELD_BYTES_MAX: usize = 2048;

/// One audited event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// RFC 3339 UTC with milliseconds.
    pub time: String,
    /// The same instant, ms since the Unix epoch.
    pub time_ms: u64,
    /// The node that served the call.
    pub node: u64,
    /// Who called (the client certificate's name).
    pub identity: String,
    /// From where (`ip:port`), empty when unknown.
    pub peer: String,
    /// The RPC (`Objects/PutObject`).
    pub rpc: String,
    /// What it was about (namespace/key, node id, identity), empty when nothing.
    pub target: String,
    /// `ok`, `error` or `denied`.
    pub outcome: String,
    /// The error, or the missing permission.
    pub detail: String,
}

impl AuditRecord {
    /// A record stamped now (`time_ms`) on `node`.
    pub fn new(node: u64, time_ms: u64) -> Self {
        Self {
            time: rfc3339_ms(time_ms),
            time_ms,
            node,
            identity: String::new(),
            peer: String::new(),
            rpc: String::new(),
            target: String::new(),
            outcome: String::new(),
            detail: String::new(),
        }
    }
}

/// The appending, rotating writer.
#[derive(Debug)]
pub struct AuditLog {
    dir: PathBuf,
    file_bytes_max: u64,
    keep: usize,
    /// The open file and its length.
    state: Mutex<Option<(File, u64)>>,
}

impl AuditLog {
    /// Opens (creating) `dir` and the current file. `file_bytes_max` is where a file is
    /// rotated; `keep` old files are kept.
    pub fn open(dir: &Path, file_bytes_max: u64, keep: usize) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let log = Self {
            dir: dir.to_path_buf(),
            file_bytes_max: file_bytes_max.max(4096),
            keep: keep.max(1),
            state: Mutex::new(None),
        };
        let f = log.open_current()?;
        *log.lock() = Some(f);
        Ok(log)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(File, u64)>> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn current(&self) -> PathBuf {
        self.dir.join(FILE_NAME)
    }

    fn old(&self, n: usize) -> PathBuf {
        self.dir.join(format!("{FILE_NAME}.{n}"))
    }

    fn open_current(&self) -> io::Result<(File, u64)> {
        let f = OpenOptions::new().create(true).append(true).open(self.current())?;
        let len = f.metadata()?.len();
        Ok((f, len))
    }

    /// Appends one record (rotating first when the file is full). Errors are counted and
    /// logged, and returned for tests.
    pub fn append(&self, rec: &AuditRecord) -> io::Result<()> {
        metrics::counter!("ark_audit_events_total", "outcome" => outcome_label(&rec.outcome)).increment(1);
        let res = self.write_line(rec);
        if let Err(e) = &res {
            metrics::counter!("ark_audit_write_errors_total").increment(1);
            tracing::error!(error = %e, dir = %self.dir.display(), "cannot write the audit log");
        }
        res
    }

    fn write_line(&self, rec: &AuditRecord) -> io::Result<()> {
        let mut rec = rec.clone();
        for f in [&mut rec.target, &mut rec.detail, &mut rec.identity, &mut rec.rpc] {
            cut(f);
        }
        let mut line = serde_json::to_vec(&rec).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut st = self.lock();
        if st
            .as_ref()
            .is_none_or(|(_, len)| *len + line.len() as u64 > self.file_bytes_max)
        {
            *st = None;
            if self.current().exists() && fs::metadata(self.current())?.len() > 0 {
                self.rotate()?;
            }
            *st = Some(self.open_current()?);
        }
        let Some((f, len)) = st.as_mut() else {
            return Err(io::Error::other("audit log not open"));
        };
        // One write of the whole line: O_APPEND keeps lines whole even if the file is shared.
        f.write_all(&line)?;
        *len += line.len() as u64;
        Ok(())
    }

    fn rotate(&self) -> io::Result<()> {
        let _ = fs::remove_file(self.old(self.keep));
        for n in (1..self.keep).rev() {
            match fs::rename(self.old(n), self.old(n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        fs::rename(self.current(), self.old(1))
    }

    /// The newest `n` lines (at most [`TAIL_LINES_MAX`]), oldest first, across rotated files.
    pub fn tail(&self, n: usize) -> io::Result<Vec<String>> {
        let n = n.min(TAIL_LINES_MAX);
        let _st = self.lock();
        let mut out: Vec<String> = Vec::new();
        for path in std::iter::once(self.current()).chain((1..=self.keep).map(|i| self.old(i))) {
            if out.len() >= n {
                break;
            }
            let mut lines = match last_lines(&path, n - out.len()) {
                Ok(l) => l,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            lines.append(&mut out);
            out = lines;
        }
        Ok(out)
    }
}

/// The last `n` whole lines of a file, oldest first. Reads only the end it needs (64 KiB
/// steps back from the end), so a tail of a full file stays cheap.
fn last_lines(path: &Path, n: usize) -> io::Result<Vec<String>> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let mut from = len;
    loop {
        from = from.saturating_sub(64 * 1024);
        f.seek(SeekFrom::Start(from))?;
        let mut lines: Vec<String> = Vec::new();
        let mut r = BufReader::new(&mut f);
        let mut first = true;
        let mut buf = String::new();
        loop {
            buf.clear();
            // Lines are JSON written by this module; a torn or foreign line reads lossily.
            let mut raw = Vec::new();
            if r.read_until(b'\n', &mut raw)? == 0 {
                break;
            }
            let partial = first && from > 0;
            first = false;
            if partial || !raw.ends_with(b"\n") {
                continue;
            }
            raw.pop();
            lines.push(String::from_utf8_lossy(&raw).into_owned());
        }
        if lines.len() >= n || from == 0 {
            let skip = lines.len().saturating_sub(n);
            return Ok(lines.split_off(skip));
        }
    }
}

fn cut(s: &mut String) {
    if s.len() > FIELD_BYTES_MAX {
        let mut at = FIELD_BYTES_MAX;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
        s.push_str("…(cut)");
    }
}

fn outcome_label(o: &str) -> &'static str {
    match o {
        "ok" => "ok",
        "denied" => "denied",
        _ => "error",
    }
}

/// `ms` since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ` (proleptic Gregorian, UTC).
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // The date part is the forecaster's day formatting (one civil-date algorithm in Ark).
    let date = ark_forecast::prep::format_day(days);
    format!(
        "{date}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Describes this module's metrics to the recorder; called once at start-up by `server`.
pub(crate) fn describe_metrics() {
    use metrics::describe_counter;
    describe_counter!(
        "ark_audit_events_total",
        "Audited client calls (admin actions and denied requests) by outcome: ok, error, denied."
    );
    describe_counter!(
        "ark_audit_write_errors_total",
        "Audit log lines that could not be written (the call itself was not failed)."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: usize) -> AuditRecord {
        AuditRecord {
            identity: format!("id-{i}"),
            rpc: "Kv/Put".into(),
            outcome: "denied".into(),
            ..AuditRecord::new(1, 1_700_000_000_000 + i as u64)
        }
    }

    #[test]
    fn times_print_as_rfc3339_utc() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339_ms(1_796_601_599_999), "2026-12-06T23:59:59.999Z");
    }

    #[test]
    fn lines_are_json_and_rotation_keeps_the_newest_within_bounds() {
        let d = tempfile::tempdir().unwrap();
        let log = AuditLog::open(d.path(), 4096, 2).unwrap();
        for i in 0..200 {
            log.append(&rec(i)).unwrap();
        }
        // Bounded: the current file and two old ones, each at most the limit.
        let mut files: Vec<_> = fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        assert_eq!(files.len(), 3, "{files:?}");
        for f in &files {
            assert!(fs::metadata(f).unwrap().len() <= 4096);
        }
        // The tail is the newest lines in order, across files, each a whole record.
        let tail = log.tail(40).unwrap();
        assert_eq!(tail.len(), 40);
        for (k, line) in tail.iter().enumerate() {
            let r: AuditRecord = serde_json::from_str(line).unwrap();
            assert_eq!(r.identity, format!("id-{}", 160 + k));
        }
        // Reopening appends.
        drop(log);
        let log = AuditLog::open(d.path(), 4096, 2).unwrap();
        log.append(&rec(200)).unwrap();
        let last: AuditRecord = serde_json::from_str(log.tail(1).unwrap().last().unwrap()).unwrap();
        assert_eq!(last.identity, "id-200");
    }

    #[test]
    fn long_fields_are_cut_and_lines_stay_whole() {
        let d = tempfile::tempdir().unwrap();
        let log = AuditLog::open(d.path(), 1 << 20, 1).unwrap();
        let mut r = rec(0);
        r.target = "é".repeat(5000);
        log.append(&r).unwrap();
        let back: AuditRecord = serde_json::from_str(&log.tail(5).unwrap()[0]).unwrap();
        assert!(back.target.len() < 2100 && back.target.ends_with("(cut)"));
    }
}
