//! # adaptserve-lab
//!
//! The tools that measure the server from outside: the chaos simulation, the
//! prequential evaluation, the synthetic drifting stream they share, the shipped
//! default model's training, and the plots of their reports. The lab is a client of
//! the server, over HTTP and signals only; it stands on `adaptserve-core` for the
//! model and never on the server's crate, which Cargo enforces.
//!
//! # Layout
//! - [`simulate`] — `adaptserve simulate`: open-loop load, delayed labels, chaos,
//!   server kills, checks and the report; and the synthetic drifting task.
//! - [`eval`] — `adaptserve eval`: prequential accuracy of a CSV stream replayed
//!   test-then-train through the HTTP API.
//! - [`train`] — `adaptserve train-default`: the shipped default model's recipe.
//! - [`plot`] — line charts as inline SVG for the HTML reports.

pub mod eval;
pub mod plot;
pub mod simulate;
pub mod train;

pub use adaptserve_core::{model, shutdown};
pub use train::{TrainReport, train_default_model};
