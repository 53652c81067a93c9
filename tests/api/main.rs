//! Integration tests over real sockets and real processes.
//!
//! One test binary with a module per area (cargo links each `tests/*.rs` separately,
//! so one binary builds once). Shared helpers live in `tests/common`.

#[path = "../common/mod.rs"]
mod common;

mod alerts;
mod bad_input;
mod crash;
mod engine;
mod eval;
mod infer;
mod limits;
mod metrics;
mod monitor;
mod openapi;
mod process;
mod restart;
mod simulate;
mod supervisor;
mod swap_guard;
mod ui;
mod update;
mod v2;
