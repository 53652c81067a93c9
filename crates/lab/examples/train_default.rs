//! Regenerates the shipped default model:
//!
//! ```text
//! RAYON_NUM_THREADS=1 cargo run --release --example train_default -- models/default 42
//! ```
//!
//! Both arguments are optional (those are the defaults). It does what
//! `adaptserve train-default --output models/default --seed 42` does, without needing
//! the server to build.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let output = PathBuf::from(args.next().unwrap_or_else(|| "models/default".into()));
    let seed: u64 = match args.next() {
        Some(s) => s.parse().map_err(|e| anyhow::anyhow!("seed {s:?}: {e}"))?,
        None => 42,
    };
    let report = adaptserve_lab::train_default_model(&output, seed)?;
    println!("{report}");
    Ok(())
}
