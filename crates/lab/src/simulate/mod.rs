//! Simulation: the synthetic drifting task, and `adaptserve simulate`, the tool that
//! shows the server stays up and keeps learning under chaos.
//!
//! - [`stream`]: the seeded task with abrupt and gradual drift (shared with the
//!   default model's training and the tests).
//! - `args`: the flags, every check's threshold among them.
//! - `run`: the driver — open-loop load, delayed labels, chaos, sampling; `target`:
//!   the server under test (our own child process, or `--url`); `sink`: a webhook that
//!   always fails.
//! - `checks`: the verdicts; `report`: `results.json` and `report.html`.
//! - `cluster`: `--cluster N`, the same stream and verdicts against Redis, N
//!   replicas, a trainer and HAProxy, with chaos on each of them.

mod args;
mod checks;
mod cluster;
mod load;
mod report;
mod run;
mod sink;
pub mod stream;
pub(crate) mod target;

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::Context;

pub use args::SimulateArgs;
pub use checks::Check;

/// One second's progress line: on the bar on a terminal, else every tenth second
/// on stderr.
fn show_progress(bar: Option<&indicatif::ProgressBar>, t: f64, total: u64, line: String) {
    match bar {
        Some(bar) => {
            bar.set_position((t as u64).min(total));
            bar.set_message(line);
        }
        None if (t as u64).is_multiple_of(10) => eprintln!("[{t:>5.0} s] {line}"),
        None => {}
    }
}

/// Runs a simulation; returns whether every check passed.
pub fn simulate(args: SimulateArgs) -> anyhow::Result<bool> {
    args.validate()?;
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("cannot create {}", args.output.display()))?;
    let frozen_dir =
        std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/default"));
    let frozen_dir = if frozen_dir.exists() {
        frozen_dir
    } else {
        std::path::PathBuf::from("models/default")
    };
    let frozen =
        Arc::new(crate::model::Mlp::load(&frozen_dir).with_context(|| {
            format!("cannot load the frozen model from {}", frozen_dir.display())
        })?);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    if args.cluster > 0 {
        return runtime.block_on(cluster::simulate(args, frozen, frozen_dir));
    }
    runtime.block_on(async move {
        // With chaos, our own server's alerts also go to a webhook that always fails.
        let sink = if args.chaos && args.url.is_none() {
            Some(
                sink::FailingSink::start()
                    .await
                    .context("cannot start the failing webhook sink")?,
            )
        } else {
            None
        };
        let mut target = match &args.url {
            Some(url) => target::Target::remote(url, args.admin_token.clone()),
            None => {
                // Small WAL segments, so that truncation happens within a short run;
                // with chaos, the k-NN fault hook is allowed.
                let mut toml = String::from("[wal]\nsegment_bytes = 262144\n");
                if args.chaos {
                    toml.push_str("[engine]\nfault_injection = true\n");
                }
                target::Target::start(
                    &args.output,
                    &frozen_dir,
                    &toml,
                    sink.as_ref().map(|s| s.url()),
                )
                .await?
            }
        };
        let total = args.duration.as_secs();
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = indicatif::ProgressBar::new(total);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{elapsed_precise} [{bar:40}] {pos}/{len} s {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        let drive = run::drive(&args, &target, frozen, |s| {
            let line = format!(
                "v{} p99 {:.1} ms acc {} ring {} rss {} MiB worker {} restarts {}",
                s.model_version,
                s.p99_ms.unwrap_or(0.0),
                s.accuracy.map_or("-".to_string(), |a| format!("{a:.2}")),
                s.ring_depth,
                s.rss_bytes >> 20,
                s.worker_state,
                s.restarts
            );
            show_progress(bar.as_ref(), s.t, total, line);
        });
        // Ctrl-C or SIGTERM: stop our server too (it would outlive us otherwise).
        let outcome = tokio::select! {
            outcome = drive => outcome,
            () = crate::shutdown::signal() => {
                Err(anyhow::anyhow!("interrupted before the end of the run: no verdict"))
            }
        };
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        target.stop().await;
        let mut outcome = outcome?;
        outcome.failing_webhook_calls = sink.as_ref().map(sink::FailingSink::calls);
        let checks = checks::evaluate(&args, &outcome);
        report::write_results(&args.output, &args, &outcome, &checks)?;
        report::write_report(&args.output, &args, &outcome, &checks)?;
        Ok(checks::print_verdict("simulation", &checks, &args.output))
    })
}
