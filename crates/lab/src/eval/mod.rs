//! `adaptserve eval`: how well the server learns while it serves, measured the way
//! the online-learning field measures it (prequential, test-then-train), through the
//! real HTTP API and the real update path.
//!
//! Each sample of a CSV stream is first predicted (`/v1/infer`); its label is sent
//! back later (`/v1/feedback` with the prediction's `request_id`), for every
//! `--label-every`-th sample, `--delay` samples later. Only predictions made before
//! their label arrived are scored, so no label leaks into its own prediction. Every
//! `--sync-every` samples the run waits on the sync barrier, so the served weights
//! have caught up with the labels sent, as a learner in River's loop would have.
//!
//! - `stream`: reading and checking the CSV;
//! - `score`: accuracy, windows, κ, drift recovery (the same definitions as
//!   `scripts/quality.py`, which scores River's learners);
//! - `run`: the replay against our own fresh server or `--url`;
//! - `report`: `results.json`, `predictions.csv` and `report.html`.

mod report;
mod run;
pub mod score;
pub mod stream;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

/// Flags of `adaptserve eval`.
#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// The stream: a CSV with the header f0,…,f{d-1},label and labels 0..K-1
    #[arg(long)]
    pub csv: PathBuf,
    /// Replay against a running server (its model must match the stream) instead of
    /// a fresh `init-model` server of our own
    #[arg(long)]
    pub url: Option<String>,
    /// Admin token of the --url server, for the sync barrier
    #[arg(long, env = "ADAPTSERVE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Send the label of every N-th sample only (10 = 10% of the labels)
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub label_every: u64,
    /// A label comes back this many samples after its prediction
    #[arg(long, default_value_t = 0)]
    pub delay: u64,
    /// Learn from confident answers (pseudo-labels) too
    #[arg(long, value_enum, default_value_t = Switch::On)]
    pub pseudo_labels: Switch,
    /// Wait on the sync barrier every N samples (0 = never: the worker keeps its own pace)
    #[arg(long, default_value_t = 32)]
    pub sync_every: u64,
    /// Positions of known drifts, for the recovery score; by default read from the
    /// streams.json written by scripts/quality.py beside the CSV
    #[arg(long, value_delimiter = ',')]
    pub drift_at: Vec<usize>,
    /// Settings for our own server (TOML, as for `serve --config`); pseudo_labels is
    /// taken from --pseudo-labels
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Hidden layer widths of the fresh model, comma separated
    #[arg(long, value_delimiter = ',', default_value = "64,32")]
    pub hidden: Vec<usize>,
    /// Seed of the fresh model's initialisation
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Directory for results.json, predictions.csv, report.html and server.log [default: out/eval/<csv stem>]
    #[arg(long)]
    pub output: Option<PathBuf>,
}

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

impl EvalArgs {
    /// The stream's name: the CSV's file stem.
    pub fn stream_name(&self) -> String {
        self.csv
            .file_stem()
            .map_or_else(|| "stream".into(), |s| s.to_string_lossy().into_owned())
    }

    fn output_dir(&self) -> PathBuf {
        self.output
            .clone()
            .unwrap_or_else(|| Path::new("out/eval").join(self.stream_name()))
    }

    /// `--drift-at`, or the stream's entry in `streams.json` beside the CSV.
    fn drifts(&self) -> anyhow::Result<Vec<usize>> {
        if !self.drift_at.is_empty() {
            return Ok(self.drift_at.clone());
        }
        let meta = self.csv.with_file_name("streams.json");
        let Ok(text) = std::fs::read_to_string(&meta) else {
            return Ok(Vec::new());
        };
        let value: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", meta.display()))?;
        Ok(value[self.stream_name()]["drifts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_u64().map(|p| p as usize))
                    .collect()
            })
            .unwrap_or_default())
    }
}

/// Runs an evaluation and writes its results; prints the headline scores.
pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let stream = stream::read(&args.csv)?;
    let drifts = args.drifts()?;
    let out = args.output_dir();
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let outcome = runtime.block_on(run::replay(&args, &stream, &out))?;
    let scores = score::score(&outcome.predicted, &stream.labels, outcome.classes, &drifts);
    report::write(&out, &args, &outcome, &scores, &stream.labels, &drifts)?;
    let recoveries: Vec<String> = scores
        .recoveries
        .iter()
        .map(|r| match r {
            Some(r) => r
                .samples
                .map_or("never".into(), |s| format!("{s} after {}", r.position)),
            None => "n/a".into(),
        })
        .collect();
    println!(
        "{}: {} samples, labels 1 in {}, delay {}, pseudo-labels {:?}: accuracy {:.4}, \
         first 1000 {:.4}, kappa {:.4}, recovery {:?} ({:.1} s); {}",
        args.stream_name(),
        scores.samples,
        args.label_every,
        args.delay,
        args.pseudo_labels,
        scores.accuracy,
        scores.first_1000,
        scores.kappa,
        recoveries,
        outcome.seconds,
        out.join("report.html").display()
    );
    Ok(())
}
