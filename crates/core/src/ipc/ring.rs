//! The ring itself: mapping, the slot protocol, the producer and consumer ends.
//!
//! The protocol, per slot at position `pos` (slot index `pos % capacity`):
//! 1. the producer writes only when `stamp == pos`: the seq, length, CRC and
//!    payload, then publishes with `stamp = pos + 1` (Release);
//! 2. the consumer reads only when `stamp == pos + 1` (Acquire), copies the payload
//!    out, checks the CRC, then frees the slot with `stamp = pos + capacity`
//!    (Release) and advances `tail`.
//!
//! A killed consumer leaves the ring consistent for the next one: if it died after
//! copying but before freeing, the slot is read again (the worker skips sequence
//! numbers it has applied); if it died after freeing but before advancing `tail`, a
//! new [`Consumer`] sees the freed stamp and moves `tail` past it. A killed producer
//! may leave a half-written slot, which is never published (its stamp is unchanged).

use std::fs::OpenOptions;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use memmap2::MmapMut;

use super::header::{HEADER_SIZE, Header, LAYOUT_VERSION, MAGIC, SLOT_HEADER_SIZE, SlotHeader};
use super::{IpcError, PushError};

/// A mapped ring file. Either process may read and write the control fields; the
/// producer and consumer ends are taken at most once per mapping.
pub struct Ring {
    /// Keeps the mapping alive; all access goes through `base`.
    _map: MmapMut,
    /// The mapping's first byte, taken from `&mut` at creation so writes through it
    /// are allowed.
    base: NonNull<u8>,
    path: PathBuf,
    capacity: u64,
    slot_size: usize,
    producer_taken: AtomicBool,
    consumer_taken: AtomicBool,
    /// The creator unlinks the file when its mapping goes away, so a server that
    /// stops (or a test that drops one) leaves nothing in /dev/shm. Only SIGKILL
    /// leaves a ring behind; the supervisor's startup cleanup removes those.
    owner: bool,
}

// SAFETY: the mapping is shared memory that both processes access only through
// atomics (header, stamps) or through the stamp protocol, which gives a slot's
// payload to one side at a time; `producer_taken`/`consumer_taken` make each end
// unique within a process. Nothing in `Ring` is tied to the creating thread.
unsafe impl Send for Ring {}
// SAFETY: as above; every method takes `&self` and touches shared state atomically.
unsafe impl Sync for Ring {}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("path", &self.path)
            .field("capacity", &self.capacity)
            .field("slot_size", &self.slot_size)
            .field("generation", &self.generation())
            .finish()
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> IpcError + '_ {
    move |source| IpcError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn file_len(capacity: u64, slot_size: usize) -> Option<usize> {
    usize::try_from(capacity)
        .ok()?
        .checked_mul(slot_size)?
        .checked_add(HEADER_SIZE)
}

impl Ring {
    /// Creates the ring file (replacing a stale one), mode 0600, with room for
    /// `capacity` (rounded up to a power of two, at least 2) payloads of up to
    /// `max_payload` bytes.
    pub fn create(
        path: &Path,
        capacity: usize,
        max_payload: usize,
        generation: u64,
    ) -> Result<Ring, IpcError> {
        let capacity = capacity.clamp(2, 1 << 24).next_power_of_two() as u64;
        let slot_size = (SLOT_HEADER_SIZE + max_payload).div_ceil(64) * 64;
        let len = file_len(capacity, slot_size).ok_or_else(|| IpcError::BadLayout {
            path: path.to_path_buf(),
            reason: format!("{capacity} slots of {slot_size} bytes overflow"),
        })?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(io(path))?;
        // A stale file kept its old mode through the truncation.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io(path))?;
        file.set_len(len as u64).map_err(io(path))?;
        // SAFETY: we just created and sized the file; other processes may map it
        // too, which is the point, and every access below is atomic or follows the
        // stamp protocol, so no Rust reference ever aliases a concurrent write.
        let map = unsafe { MmapMut::map_mut(&file) }.map_err(io(path))?;
        let ring = Self::from_map(map, path, capacity, slot_size, true);
        let h = ring.header();
        h.meta.version.store(LAYOUT_VERSION, Ordering::Relaxed);
        h.meta.capacity.store(capacity as u32, Ordering::Relaxed);
        h.meta.slot_size.store(slot_size as u32, Ordering::Relaxed);
        h.meta
            .server_pid
            .store(std::process::id(), Ordering::Relaxed);
        h.meta.generation.store(generation, Ordering::Relaxed);
        h.meta.server_start.store(
            process_start(std::process::id()).unwrap_or(0),
            Ordering::Relaxed,
        );
        for i in 0..capacity {
            ring.slot(i).stamp.store(i, Ordering::Relaxed);
        }
        h.meta.magic.store(MAGIC, Ordering::Release);
        Ok(ring)
    }

    /// Maps an existing ring file, checking its magic, version and layout.
    pub fn open(path: &Path) -> Result<Ring, IpcError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io(path))?;
        let len = file.metadata().map_err(io(path))?.len() as usize;
        let bad = |reason: String| IpcError::BadLayout {
            path: path.to_path_buf(),
            reason,
        };
        if len < HEADER_SIZE {
            return Err(bad(format!("{len} bytes, shorter than the header")));
        }
        // Validate line 0 from a plain read before mapping anything.
        let mut line = [0u8; 24];
        std::io::Read::read_exact(&mut &file, &mut line).map_err(io(path))?;
        let word =
            |at: usize| u32::from_le_bytes([line[at], line[at + 1], line[at + 2], line[at + 3]]);
        let magic = u64::from_le_bytes(line[..8].try_into().expect("8 bytes: this is a bug"));
        if magic != MAGIC {
            return Err(IpcError::BadMagic {
                path: path.to_path_buf(),
                found: magic,
            });
        }
        let version = word(8);
        if version != LAYOUT_VERSION {
            return Err(IpcError::VersionMismatch {
                expected: LAYOUT_VERSION,
                found: version,
            });
        }
        let capacity = u64::from(word(12));
        let slot_size = word(16) as usize;
        if !capacity.is_power_of_two()
            || slot_size < SLOT_HEADER_SIZE
            || !slot_size.is_multiple_of(64)
        {
            return Err(bad(format!("capacity {capacity}, slot size {slot_size}")));
        }
        if file_len(capacity, slot_size) != Some(len) {
            return Err(bad(format!(
                "{len} bytes for {capacity} slots of {slot_size} bytes"
            )));
        }
        // SAFETY: as in `create`: shared access is atomic or stamp-guarded, and the
        // checks above keep the header and every slot inside the mapping.
        let map = unsafe { MmapMut::map_mut(&file) }.map_err(io(path))?;
        let ring = Self::from_map(map, path, capacity, slot_size, false);
        // The creator stores the magic last; seeing it (Acquire) means seeing the rest.
        if ring.header().meta.magic.load(Ordering::Acquire) != MAGIC {
            return Err(bad("the header changed while opening".into()));
        }
        Ok(ring)
    }

    fn from_map(
        mut map: MmapMut,
        path: &Path,
        capacity: u64,
        slot_size: usize,
        owner: bool,
    ) -> Ring {
        let base =
            NonNull::new(map.as_mut_ptr()).expect("a mapping is never at null: this is a bug");
        Ring {
            _map: map,
            base,
            path: path.to_path_buf(),
            capacity,
            slot_size,
            producer_taken: AtomicBool::new(false),
            consumer_taken: AtomicBool::new(false),
            owner,
        }
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping is page-aligned (Header needs 64), at least
        // HEADER_SIZE long (checked in `open`, sized in `create`), lives as long as
        // `self`, and Header is all atomics, so shared mutation through `&` is sound.
        unsafe { &*self.base.as_ptr().cast::<Header>() }
    }

    fn slot_ptr(&self, index: u64) -> *mut u8 {
        let offset = HEADER_SIZE + (index % self.capacity) as usize * self.slot_size;
        // SAFETY: index % capacity < capacity, and the file is exactly
        // HEADER_SIZE + capacity * slot_size bytes, so the offset is inside the mapping.
        unsafe { self.base.as_ptr().add(offset) }
    }

    fn slot(&self, index: u64) -> &SlotHeader {
        // SAFETY: slot starts are 64-byte aligned (HEADER_SIZE and slot_size are
        // multiples of 64) and inside the mapping; SlotHeader is all atomics.
        unsafe { &*self.slot_ptr(index).cast::<SlotHeader>() }
    }

    /// The ring file.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Slots.
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }
    /// The largest payload a slot holds.
    pub fn max_payload(&self) -> usize {
        self.slot_size - SLOT_HEADER_SIZE
    }
    /// Which incarnation of the ring this is (the supervisor bumps it per restart).
    pub fn generation(&self) -> u64 {
        self.header().meta.generation.load(Ordering::Relaxed)
    }
    /// The pid of the process that created the ring.
    pub fn server_pid(&self) -> u32 {
        self.header().meta.server_pid.load(Ordering::Relaxed)
    }
    /// The creating process's start time (see [`process_start`]).
    pub fn server_start(&self) -> u64 {
        self.header().meta.server_start.load(Ordering::Relaxed)
    }

    /// Records pushed and not yet consumed.
    pub fn depth(&self) -> u64 {
        let h = self.header();
        let head = h.head.value.load(Ordering::Acquire);
        head.saturating_sub(h.tail.value.load(Ordering::Acquire))
    }
    /// Pushes refused because the ring was full.
    pub fn dropped(&self) -> u64 {
        self.header().server.dropped.load(Ordering::Relaxed)
    }
    /// The worker's pid (0 before one attached).
    pub fn worker_pid(&self) -> u32 {
        self.header().worker.pid.load(Ordering::Relaxed) as u32
    }
    /// Set by the worker when it attaches.
    pub fn set_worker_pid(&self, pid: u32) {
        self.header()
            .worker
            .pid
            .store(u64::from(pid), Ordering::Relaxed);
    }
    /// The worker's last heartbeat, unix ms.
    pub fn heartbeat_ms(&self) -> u64 {
        self.header().worker.heartbeat_ms.load(Ordering::Acquire)
    }
    /// Written by the worker every `heartbeat_ms`.
    pub fn set_heartbeat_ms(&self, ms: u64) {
        self.header()
            .worker
            .heartbeat_ms
            .store(ms, Ordering::Release);
    }
    /// The last sequence number the worker's weights have learned.
    pub fn applied_seq(&self) -> u64 {
        self.header().worker.applied_seq.load(Ordering::Acquire)
    }
    /// Written by the worker after each training step.
    pub fn set_applied_seq(&self, seq: u64) {
        self.header()
            .worker
            .applied_seq
            .store(seq, Ordering::Release);
    }
    /// The last version the worker published.
    pub fn published_version(&self) -> u64 {
        self.header()
            .worker
            .published_version
            .load(Ordering::Acquire)
    }
    /// Written by the worker after a checkpoint file is in place.
    pub fn set_published_version(&self, version: u64) {
        self.header()
            .worker
            .published_version
            .store(version, Ordering::Release);
    }
    /// The last sequence number the server logged (pushed or dropped).
    pub fn produced_seq(&self) -> u64 {
        self.header().server.produced_seq.load(Ordering::Acquire)
    }
    /// Written by the server after each group commit.
    pub fn set_produced_seq(&self, seq: u64) {
        self.header()
            .server
            .produced_seq
            .store(seq, Ordering::Release);
    }
    /// The sequence number the server wants published as soon as it is learned.
    pub fn sync_target(&self) -> u64 {
        self.header().server.sync_target.load(Ordering::Acquire)
    }
    /// Raises the sync target (never lowers it).
    pub fn request_sync(&self, seq: u64) {
        self.header()
            .server
            .sync_target
            .fetch_max(seq, Ordering::AcqRel);
    }

    /// Takes the producer end; `None` if this mapping already gave it out.
    pub fn producer(self: &Arc<Self>) -> Option<Producer> {
        if self.producer_taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(Producer {
            pos: self.header().head.value.load(Ordering::Acquire),
            ring: self.clone(),
        })
    }

    /// Takes the consumer end; `None` if this mapping already gave it out. Repairs
    /// what a killed predecessor left: a slot freed without `tail` advancing.
    pub fn consumer(self: &Arc<Self>) -> Option<Consumer> {
        if self.consumer_taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        let tail = &self.header().tail.value;
        let mut pos = tail.load(Ordering::Acquire);
        if self.slot(pos).stamp.load(Ordering::Acquire) == pos + self.capacity {
            pos += 1;
            tail.store(pos, Ordering::Release);
        }
        Some(Consumer {
            pos,
            ring: self.clone(),
            corrupt: 0,
        })
    }

    /// Deletes the ring file (the mapping stays valid until dropped).
    pub fn remove(&self) -> std::io::Result<()> {
        std::fs::remove_file(&self.path)
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        if self.owner {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A process's start time in clock ticks since boot (`/proc/<pid>/stat`, field 22);
/// `None` if there is no such process. A pid can be reused, a (pid, start) pair not.
pub fn process_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; fields after the
    // last ')' start at field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

fn checksum(seq: u64, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&seq.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// The producing end: the server's WAL writer thread.
#[derive(Debug)]
pub struct Producer {
    ring: Arc<Ring>,
    pos: u64,
}

impl Producer {
    /// Pushes a record, or refuses at once: never waits.
    pub fn try_push(&mut self, seq: u64, payload: &[u8]) -> Result<(), PushError> {
        let ring = &*self.ring;
        let max = ring.max_payload();
        if payload.len() > max {
            return Err(PushError::TooLarge {
                len: payload.len(),
                max,
            });
        }
        let slot = ring.slot(self.pos);
        if slot.stamp.load(Ordering::Acquire) != self.pos {
            ring.header().server.dropped.fetch_add(1, Ordering::Relaxed);
            return Err(PushError::Full);
        }
        slot.seq.store(seq, Ordering::Relaxed);
        slot.len.store(payload.len() as u32, Ordering::Relaxed);
        slot.crc.store(checksum(seq, payload), Ordering::Relaxed);
        // SAFETY: the stamp says this slot belongs to the producer at `pos`, and only
        // this (unique) Producer writes; the consumer will not read the payload until
        // the Release store below. `payload.len() <= max_payload` keeps the copy
        // inside the slot.
        unsafe {
            std::ptr::copy_nonoverlapping(
                payload.as_ptr(),
                ring.slot_ptr(self.pos).add(SLOT_HEADER_SIZE),
                payload.len(),
            );
        }
        slot.stamp.store(self.pos + 1, Ordering::Release);
        self.pos += 1;
        ring.header().head.value.store(self.pos, Ordering::Release);
        Ok(())
    }

    /// The ring.
    pub fn ring(&self) -> &Arc<Ring> {
        &self.ring
    }
}

/// The consuming end: the update-worker.
#[derive(Debug)]
pub struct Consumer {
    ring: Arc<Ring>,
    pos: u64,
    corrupt: u64,
}

impl Consumer {
    /// Copies the next record's payload into `buf` and returns its sequence number;
    /// `None` when the ring is empty. A record failing its checksum is freed,
    /// counted in [`corrupt`](Self::corrupt) and skipped (the WAL still has it).
    pub fn try_pop(&mut self, buf: &mut Vec<u8>) -> Option<u64> {
        let ring = &*self.ring;
        loop {
            let slot = ring.slot(self.pos);
            if slot.stamp.load(Ordering::Acquire) != self.pos + 1 {
                return None;
            }
            let seq = slot.seq.load(Ordering::Relaxed);
            let len = (slot.len.load(Ordering::Relaxed) as usize).min(ring.max_payload());
            let crc = slot.crc.load(Ordering::Relaxed);
            buf.clear();
            buf.resize(len, 0);
            // SAFETY: the Acquire load of the stamp above saw the producer's Release
            // publish, so the slot's payload is complete and the producer will not
            // touch it until we free it below; `len` is clamped to the slot.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    ring.slot_ptr(self.pos).add(SLOT_HEADER_SIZE),
                    buf.as_mut_ptr(),
                    len,
                );
            }
            slot.stamp
                .store(self.pos + ring.capacity, Ordering::Release);
            self.pos += 1;
            ring.header().tail.value.store(self.pos, Ordering::Release);
            if checksum(seq, buf) == crc {
                return Some(seq);
            }
            self.corrupt += 1;
        }
    }

    /// Records skipped for a bad checksum.
    pub fn corrupt(&self) -> u64 {
        self.corrupt
    }

    /// The ring.
    pub fn ring(&self) -> &Arc<Ring> {
        &self.ring
    }
}

#[cfg(test)]
mod tests;
