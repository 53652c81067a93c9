//! Logging: tracing to stderr, filtered by `RUST_LOG`. The default is `info`, with
//! hnsw_rs and its distance crate held to `warn`: they log every graph build and drop
//! at info level through `log`, which the subscriber bridges.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The filter when `RUST_LOG` is unset.
const DEFAULT_FILTER: &str = "info,hnsw_rs=warn,anndists=warn";

/// Installs the global subscriber. Safe to call more than once (later calls no-op),
/// which keeps tests that start several servers simple.
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
