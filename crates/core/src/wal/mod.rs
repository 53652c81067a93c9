//! The write-ahead log of updates: the source of truth of the update path.
//!
//! Every update is appended here, with the next sequence number, before it is
//! offered to the shared-memory ring; the ring may drop, the log may not. The log is
//! a directory of segment files (`segment`), each named by its first sequence number,
//! so replaying from a sequence number opens the one segment that holds it and
//! truncation deletes whole files.
//!
//! - **Group commit.** [`Wal::append`] only encodes into a buffer; [`Wal::commit`]
//!   writes the buffer with one write(2) and fsyncs under the [`FsyncPolicy`]. The
//!   writer thread appends everything queued, then commits once.
//! - **Acknowledged means written.** After `commit` returns, the records are in the
//!   page cache: another process can read them and a SIGKILL cannot take them. The
//!   fsync policy only decides what a machine crash can take.
//! - **Repair, don't refuse.** [`Wal::open`] checks every record's CRC. A torn tail
//!   (a write a crash interrupted) or a corrupt record is cut at the last good record
//!   and reported; the server starts either way.
//! - **Readers in other processes.** [`replay`] only reads, and treats an incomplete
//!   record at the very end as "not written yet", so the worker can read the log
//!   while the server appends.

mod segment;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use segment::MAX_PAYLOAD;
use segment::{Damage, HEADER_LEN};

/// When [`Wal::commit`] calls fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// On every commit: nothing acknowledged is lost even to a power cut.
    Always,
    /// Only when segments rotate and at [`Wal::sync`].
    Never,
    /// On a commit at least this many ms after the last fsync (and on the writer's
    /// idle tick), so a machine crash loses at most about this window.
    IntervalMs(u64),
}

/// Where the log lives and how it is written.
#[derive(Debug, Clone)]
pub struct WalConfig {
    /// The directory of segment files.
    pub dir: PathBuf,
    /// A new segment starts once the active one passes this size.
    pub segment_bytes: u64,
    /// See [`FsyncPolicy`].
    pub fsync: FsyncPolicy,
    /// Sequence numbers continue after at least this one, even if the segments that
    /// held it are gone (truncated, or unreadable): the serving checkpoint has
    /// learned up to it, so reusing a number below it would lose an update.
    pub start_after: u64,
}

impl WalConfig {
    /// 8 MiB segments, fsync at most every 100 ms.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_bytes: 8 << 20,
            fsync: FsyncPolicy::IntervalMs(100),
            start_after: 0,
        }
    }
}

/// Why the log cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("WAL {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("an update of {len} bytes exceeds the WAL record limit of {max}")]
    RecordTooLarge { len: usize, max: usize },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> WalError + 'a {
    move |source| WalError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A segment cut at its last good record when the log was opened.
#[derive(Debug, Clone)]
pub struct Repair {
    pub segment: PathBuf,
    /// Where the file now ends.
    pub offset: u64,
    /// Bytes removed.
    pub cut_bytes: u64,
    pub reason: String,
}

/// What [`Wal::open`] found.
#[derive(Debug, Clone)]
pub struct OpenReport {
    pub segments: usize,
    pub records: u64,
    pub first_seq: Option<u64>,
    pub last_seq: u64,
    pub bytes: u64,
    pub repaired: Vec<Repair>,
}

/// A closed segment: deletable once the serving weights have learned all of it.
#[derive(Debug)]
struct Closed {
    first_seq: u64,
    last_seq: u64,
    path: PathBuf,
    len: u64,
}

/// The single writer of the log.
#[derive(Debug)]
pub struct Wal {
    config: WalConfig,
    closed: Vec<Closed>,
    active: File,
    active_path: PathBuf,
    active_first: u64,
    /// Committed bytes of the active segment.
    active_len: u64,
    /// The last sequence number assigned (committed or buffered).
    last_seq: u64,
    /// The last sequence number committed.
    committed_seq: u64,
    buf: Vec<u8>,
    bytes: u64,
    /// Committed but not yet fsynced.
    dirty: bool,
    /// The last sequence number fsynced: what a machine crash cannot take.
    synced_seq: u64,
    last_fsync: Instant,
}

impl Wal {
    /// Opens (creating if needed) the log in `config.dir`: checks every segment,
    /// cuts damage at the last good record, and reports what it found.
    pub fn open(config: WalConfig) -> Result<(Wal, OpenReport), WalError> {
        let dir = config.dir.clone();
        std::fs::create_dir_all(&dir).map_err(io("create directory", &dir))?;
        let mut repaired = Vec::new();
        let mut closed = Vec::new();
        let mut records = 0u64;
        let mut last_seq = 0u64;
        let listed = segment::list(&dir).map_err(io("list", &dir))?;
        let count = listed.len();
        for (i, (name_seq, path)) in listed.into_iter().enumerate() {
            let is_last = i + 1 == count;
            let bytes = std::fs::read(&path).map_err(io("read", &path))?;
            let scan = segment::scan(&bytes, |_, _| ControlFlow::Continue(()));
            if scan.damage == Some(Damage::BadHeader) || scan.first_seq != name_seq {
                // Nothing in it can be trusted; keep it aside for a human.
                let aside = path.with_extension("wal.corrupt");
                std::fs::rename(&path, &aside).map_err(io("rename", &path))?;
                tracing::error!(segment = %path.display(), "WAL segment has a bad header; moved aside");
                repaired.push(Repair {
                    segment: path,
                    offset: 0,
                    cut_bytes: bytes.len() as u64,
                    reason: "bad segment header (moved aside)".into(),
                });
                continue;
            }
            if let Some(damage) = &scan.damage {
                let file = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io("open", &path))?;
                file.set_len(scan.good_len).map_err(io("truncate", &path))?;
                file.sync_all().map_err(io("fsync", &path))?;
                let repair = Repair {
                    segment: path.clone(),
                    offset: scan.good_len,
                    cut_bytes: bytes.len() as u64 - scan.good_len,
                    reason: damage.to_string(),
                };
                if is_last && *damage == Damage::Torn {
                    tracing::warn!(segment = %path.display(), offset = repair.offset, cut = repair.cut_bytes, "WAL: cut a torn tail");
                } else {
                    tracing::error!(segment = %path.display(), offset = repair.offset, cut = repair.cut_bytes,
                        reason = %damage, "WAL: cut a damaged segment; records after the damage are lost");
                }
                repaired.push(repair);
            }
            if scan.first_seq <= last_seq && scan.records > 0 {
                tracing::error!(segment = %path.display(), "WAL segment overlaps its predecessor");
            }
            records += scan.records;
            last_seq = last_seq.max(scan.last_seq());
            closed.push(Closed {
                first_seq: scan.first_seq,
                last_seq: scan.last_seq(),
                path,
                len: scan.good_len,
            });
        }
        let start = last_seq.max(config.start_after);
        // Append to the last segment if its numbering continues; otherwise start one.
        let reuse = closed
            .last()
            .is_some_and(|c| c.last_seq == start && c.len < config.segment_bytes);
        let (active_path, active_first, active_len) = if reuse {
            let c = closed.pop().expect("checked above: this is a bug");
            (c.path, c.first_seq, c.len)
        } else {
            let path = dir.join(segment::file_name(start + 1));
            create_segment(&path, start + 1)?;
            sync_dir(&dir);
            (path, start + 1, HEADER_LEN as u64)
        };
        let active = OpenOptions::new()
            .append(true)
            .open(&active_path)
            .map_err(io("open", &active_path))?;
        let bytes = closed.iter().map(|c| c.len).sum::<u64>() + active_len;
        let first_seq = closed
            .first()
            .map(|c| c.first_seq)
            .or(Some(active_first))
            .filter(|_| records > 0);
        let report = OpenReport {
            segments: closed.len() + 1,
            records,
            first_seq,
            last_seq: start,
            bytes,
            repaired,
        };
        let wal = Wal {
            config,
            closed,
            active,
            active_path,
            active_first,
            active_len,
            last_seq: start,
            committed_seq: start,
            buf: Vec::with_capacity(64 << 10),
            bytes,
            dirty: false,
            synced_seq: start,
            last_fsync: Instant::now(),
        };
        Ok((wal, report))
    }

    /// The last sequence number assigned; 0 for a new log.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The last sequence number fsynced: a machine crash or power cut loses only
    /// records after it (a killed process loses nothing committed).
    pub fn synced_seq(&self) -> u64 {
        self.synced_seq
    }

    /// The first sequence number still on disk, if any record is.
    pub fn first_seq(&self) -> Option<u64> {
        let first = self
            .closed
            .first()
            .map_or(self.active_first, |c| c.first_seq);
        (first <= self.committed_seq).then_some(first)
    }

    /// Bytes of all segments on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Gives `payload` the next sequence number and buffers it; [`commit`](Self::commit)
    /// writes it.
    pub fn append(&mut self, payload: &[u8]) -> Result<u64, WalError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(WalError::RecordTooLarge {
                len: payload.len(),
                max: MAX_PAYLOAD,
            });
        }
        self.last_seq += 1;
        segment::encode_record(self.last_seq, payload, &mut self.buf);
        Ok(self.last_seq)
    }

    /// Writes everything appended since the last commit with one write(2), fsyncs
    /// under the policy, and rotates the segment if it is full. On failure the
    /// buffered records are dropped, their sequence numbers are reused, and the file
    /// is cut back to its last committed length.
    pub fn commit(&mut self) -> Result<(), WalError> {
        self.commit_at(Instant::now())
    }

    /// [`commit`](Self::commit) at `now`: an interval policy's fsync is due once
    /// `now` is the interval past the last fsync. The time is an argument so tests
    /// step it instead of sleeping through the interval.
    pub fn commit_at(&mut self, now: Instant) -> Result<(), WalError> {
        if !self.buf.is_empty() {
            if let Err(e) = self.active.write_all(&self.buf) {
                let _ = self.active.set_len(self.active_len);
                self.buf.clear();
                self.last_seq = self.committed_seq;
                return Err(io("write", &self.active_path)(e));
            }
            let n = self.buf.len() as u64;
            self.buf.clear();
            self.active_len += n;
            self.bytes += n;
            self.committed_seq = self.last_seq;
            self.dirty = true;
        }
        let due = match self.config.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::Never => false,
            FsyncPolicy::IntervalMs(ms) => {
                now.saturating_duration_since(self.last_fsync) >= Duration::from_millis(ms)
            }
        };
        if self.dirty && due {
            self.fsync()?;
        }
        if self.active_len >= self.config.segment_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    /// Commits and fsyncs whatever the policy has not yet.
    pub fn sync(&mut self) -> Result<(), WalError> {
        self.commit()?;
        if self.dirty {
            self.fsync()?;
        }
        Ok(())
    }

    /// Deletes every closed segment whose records are all at or below `seq`; returns
    /// how many. The active segment is never deleted.
    pub fn truncate_through(&mut self, seq: u64) -> Result<usize, WalError> {
        let keep_from = self
            .closed
            .iter()
            .position(|c| c.last_seq > seq)
            .unwrap_or(self.closed.len());
        let mut deleted = 0;
        for c in self.closed.drain(..keep_from) {
            match std::fs::remove_file(&c.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("delete", &c.path)(e)),
            }
            self.bytes -= c.len;
            deleted += 1;
        }
        if deleted > 0 {
            sync_dir(&self.config.dir);
        }
        Ok(deleted)
    }

    fn fsync(&mut self) -> Result<(), WalError> {
        self.active
            .sync_data()
            .map_err(io("fsync", &self.active_path))?;
        self.dirty = false;
        self.synced_seq = self.committed_seq;
        self.last_fsync = Instant::now();
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), WalError> {
        self.fsync()?;
        let first = self.committed_seq + 1;
        let path = self.config.dir.join(segment::file_name(first));
        create_segment(&path, first)?;
        sync_dir(&self.config.dir);
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io("open", &path))?;
        let old_path = std::mem::replace(&mut self.active_path, path);
        self.closed.push(Closed {
            first_seq: self.active_first,
            last_seq: self.committed_seq,
            path: old_path,
            len: self.active_len,
        });
        self.active = file;
        self.active_first = first;
        self.active_len = HEADER_LEN as u64;
        self.bytes += HEADER_LEN as u64;
        Ok(())
    }
}

fn create_segment(path: &Path, first_seq: u64) -> Result<(), WalError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(io("create", path))?;
    file.write_all(&segment::header(first_seq))
        .map_err(io("write", path))?;
    file.sync_all().map_err(io("fsync", path))
}

/// Makes a create, rename or delete in `dir` durable; best effort (some filesystems
/// refuse a directory fsync, and the operation itself has already happened).
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// What a [`replay`] read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replay {
    /// Records passed to the callback.
    pub records: u64,
    /// The last sequence number passed (0 if none).
    pub last_seq: u64,
    /// True if the log ended in an incomplete record (being written, or torn).
    pub stopped_at_tail: bool,
}

/// Calls `f(seq, payload)` for every record with `seq >= from_seq`, in order, until
/// the log ends or `f` breaks. Only reads: safe alongside a writer in another
/// process. Damage in the middle of the log (which [`Wal::open`] would have cut) ends
/// that segment's records and is logged; the next segment continues.
pub fn replay(
    dir: &Path,
    from_seq: u64,
    mut f: impl FnMut(u64, &[u8]) -> ControlFlow<()>,
) -> Result<Replay, WalError> {
    let segments = segment::list(dir).map_err(io("list", dir))?;
    let start = segments
        .iter()
        .rposition(|(first, _)| *first <= from_seq)
        .unwrap_or(0);
    let mut out = Replay {
        records: 0,
        last_seq: 0,
        stopped_at_tail: false,
    };
    let count = segments.len();
    for (i, (_, path)) in segments.iter().enumerate().skip(start) {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            // Truncated away between the listing and the read.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io("read", path)(e)),
        };
        let mut stop = false;
        let scan = segment::scan(&bytes, |seq, payload| {
            if seq < from_seq {
                return ControlFlow::Continue(());
            }
            out.records += 1;
            out.last_seq = seq;
            let flow = f(seq, payload);
            stop = flow.is_break();
            flow
        });
        if stop {
            return Ok(out);
        }
        if let Some(damage) = scan.damage {
            if i + 1 == count {
                out.stopped_at_tail = true;
                return Ok(out);
            }
            tracing::error!(segment = %path.display(), %damage, "WAL replay: damaged segment; skipping to the next");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
