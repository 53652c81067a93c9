//! The ring file's header: `#[repr(C)]`, versioned, every field atomic.
//!
//! Each cache line has one writer, so the producer's and the consumer's counters
//! never share a line (no false sharing between the processes):
//!
//! | line | fields | written by |
//! |---|---|---|
//! | 0 | magic, layout version, capacity, slot size, server pid, generation, server start time | creator, once |
//! | 1 | head | producer |
//! | 2 | tail | consumer |
//! | 3 | worker pid, heartbeat (unix ms), applied_seq, published_version | worker |
//! | 4 | dropped, produced_seq, sync_target | server |
//!
//! Slots follow at [`HEADER_SIZE`]; each starts with a [`SlotHeader`].

use std::sync::atomic::{AtomicU32, AtomicU64};

/// "ADSRING1", little-endian.
pub const MAGIC: u64 = u64::from_le_bytes(*b"ADSRING1");
/// Bumped on any change to this layout; a worker refuses a ring of another version.
pub const LAYOUT_VERSION: u32 = 2;

/// Line 0: fixed at creation. The magic is stored last (Release), so a process that
/// sees it sees the rest.
#[derive(Debug)]
#[repr(C, align(64))]
pub struct Meta {
    pub magic: AtomicU64,
    pub version: AtomicU32,
    pub capacity: AtomicU32,
    pub slot_size: AtomicU32,
    pub server_pid: AtomicU32,
    pub generation: AtomicU64,
    /// The creating process's start time (clock ticks since boot, from
    /// `/proc/<pid>/stat`): with the pid, it tells a live owner from a reused pid.
    pub server_start: AtomicU64,
}

/// A counter alone on its cache line.
#[derive(Debug)]
#[repr(C, align(64))]
pub struct Line {
    pub value: AtomicU64,
}

/// Line 3: the worker's reports.
#[derive(Debug)]
#[repr(C, align(64))]
pub struct WorkerLine {
    pub pid: AtomicU64,
    pub heartbeat_ms: AtomicU64,
    pub applied_seq: AtomicU64,
    pub published_version: AtomicU64,
}

/// Line 4: the server's side.
#[derive(Debug)]
#[repr(C, align(64))]
pub struct ServerLine {
    pub dropped: AtomicU64,
    pub produced_seq: AtomicU64,
    pub sync_target: AtomicU64,
}

/// The whole header, at offset 0 of the mapping.
#[derive(Debug)]
#[repr(C)]
pub struct Header {
    pub meta: Meta,
    pub head: Line,
    pub tail: Line,
    pub worker: WorkerLine,
    pub server: ServerLine,
}

/// Bytes before the first slot.
pub const HEADER_SIZE: usize = std::mem::size_of::<Header>();
const _: () = assert!(HEADER_SIZE == 5 * 64, "one cache line per header part");
const _: () = assert!(std::mem::align_of::<Header>() == 64);

/// The start of every slot. `stamp` is the slot's sequence stamp (Vyukov): `pos`
/// when free for the producer at position `pos`, `pos + 1` once written,
/// `pos + capacity` once the consumer has freed it for the next lap.
#[derive(Debug)]
#[repr(C)]
pub struct SlotHeader {
    pub stamp: AtomicU64,
    pub seq: AtomicU64,
    pub len: AtomicU32,
    pub crc: AtomicU32,
}

/// Bytes of a slot before its payload.
pub const SLOT_HEADER_SIZE: usize = std::mem::size_of::<SlotHeader>();
const _: () = assert!(SLOT_HEADER_SIZE == 24);
