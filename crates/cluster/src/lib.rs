//! # adaptserve-cluster
//!
//! Several replicas behind a load balancer, one trainer, and Redis Streams between
//! them (Redis >= 7 or Valkey, through the `redis` crate). Redis is what an
//! operations team already runs and every cloud sells managed; a stream is an
//! append-only log with ids, which is all the design needs:
//!
//! ```text
//!  replica 1 ─┐ WAL ─forward─▶  labels stream  ──read──▶ trainer (one, by lease)
//!  replica 2 ─┤ (each (replica, seq) once)      │            │ publishes
//!  replica N ─┘                                 │            ▼
//!      ▲  ▲                                     │      versions stream + weights
//!      │  └──── every replica's k-NN memory ◀───┘            │
//!      └──────────────── follow, verify, swap ◀───────────────┘
//! ```
//!
//! This crate is the protocol, shared by the replica (in the server crate) and the
//! trainer (here): the key names, the Lua scripts that make each step atomic, typed
//! entries parsed with a specific error for every malformed reply, and the trainer's
//! loop. The replica's side (the forwarder, the followers, the swap) lives in
//! `adaptserve-server`'s `cluster` module; docs/ARCHITECTURE.md section 5 draws the
//! whole and says what each failure does.
//!
//! # Layout
//! - [`link`] — the connection (lazy, reconnecting, every call bounded by a timeout)
//!   and the error type; [`keys`] — every key, under one hash tag.
//! - [`labels`] — the shared label log: append-once per `(replica, seq)`, reads,
//!   trimming.
//! - [`versions`] — published versions: the entry, the checksum, the fenced publish.
//! - [`lease`] — the trainer's leader lease and its fencing token.
//! - [`pending`] — predictions awaiting a label, shared so a label joins on any
//!   replica, claimed once.
//! - [`ratelimit`] — per-client request counts per second, summed across replicas.
//! - [`registry`] — which replicas are up and what they serve; the trainer's status.
//! - [`trainer`] — `adaptserve train --cluster`: read, learn, guard, publish.
//! - [`reply`] — reading Redis replies into typed values, or saying what was wrong.

pub mod keys;
pub mod labels;
pub mod lease;
pub mod link;
pub mod pending;
pub mod ratelimit;
pub mod registry;
pub mod reply;
pub mod trainer;
pub mod versions;

pub use keys::Keys;
pub use link::{ClusterError, Link, LinkConfig};
