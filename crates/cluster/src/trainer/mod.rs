//! `adaptserve train --cluster`: the one trainer of a cluster.
//!
//! It stands by until it holds the lease ([`crate::lease`]), then leads
//! (`lead`): it resumes from the newest published version (its weights, its
//! position on the label stream, what it learned of each replica), reads the label
//! stream from there, trains with the same [`Learner`] the standalone update-worker
//! runs, and publishes versions. The quality guard runs here, once, so replicas
//! never disagree on which version is good. Anything that goes wrong while leading
//! (Redis away, the lease lost, weights that do not load) ends the term: it goes
//! back to standing by, and whoever leads next resumes from the newest version, so
//! each label is learned once in the published lineage.
//!
//! [`Learner`]: adaptserve_core::update::learner::Learner

mod lead;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use adaptserve_core::model::Mlp;
use adaptserve_core::update::WorkerConfig;
use adaptserve_core::update::guard::Rules;
use anyhow::Context;

use crate::lease;
use crate::link::{Link, LinkConfig, Retry};

/// What the trainer runs with.
#[derive(Debug, Clone)]
pub struct TrainerConfig {
    pub link: LinkConfig,
    /// The model the cluster starts from (the replicas' `--model`), and the shape
    /// every published version must have.
    pub model_dir: PathBuf,
    /// Where every published version is also kept as a checkpoint (optional).
    pub backup_dir: Option<PathBuf>,
    /// This trainer's name in the status and the lease: unique per trainer.
    pub holder: String,
    /// Training and publishing (the update-worker's settings).
    pub settings: WorkerConfig,
    /// The quality guard's thresholds.
    pub rules: Rules,
    /// How long the lease lasts without renewal: how soon a standby takes over.
    pub lease_ttl: Duration,
    /// Label stream entries kept below the learned position, for replicas that
    /// seed their k-NN memory from the newest entries.
    pub retain: usize,
    /// Recent labelled rows the guard compares versions on.
    pub probe_rows: usize,
}

/// Why a term of leading ended.
#[derive(Debug)]
enum TermEnd {
    /// Asked to stop.
    Stop,
}

/// Stands by and leads until `stop` resolves; returns after giving the lease up.
pub async fn run(config: TrainerConfig, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    let seed = std::sync::Arc::new({
        let dir = config.model_dir.clone();
        tokio::task::spawn_blocking(move || Mlp::load(&dir))
            .await
            .context("model loading task failed")?
            .with_context(|| format!("cannot load the model {}", config.model_dir.display()))?
    });
    // One link for commands, one for the blocking read of the label stream.
    let link = Link::open(&config.link)?;
    let reader = Link::open(&config.link)?;
    tracing::info!(holder = %config.holder, "trainer standing by for the lease");
    let mut backoff = Retry::new(Duration::from_millis(200), Duration::from_secs(5));
    tokio::pin!(stop);
    loop {
        let acquired = tokio::select! {
            () = &mut stop => return Ok(()),
            acquired = lease::acquire(&link, &config.holder, config.lease_ttl) => acquired,
        };
        let held = match acquired {
            Ok(Some(held)) => held,
            Ok(None) => {
                // Another trainer leads: look again within a fraction of its lease.
                tokio::select! {
                    () = &mut stop => return Ok(()),
                    () = tokio::time::sleep(config.lease_ttl / 5) => continue,
                }
            }
            Err(e) => {
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, ?wait, "cannot reach Redis for the lease");
                tokio::select! {
                    () = &mut stop => return Ok(()),
                    () = tokio::time::sleep(wait) => continue,
                }
            }
        };
        backoff.reset();
        let token = held.token;
        tracing::info!(token, holder = %config.holder, "trainer leads");
        let ended = lead::lead(&config, &link, &reader, &held, &seed, &mut stop).await;
        match ended {
            Ok(TermEnd::Stop) => {
                if let Err(e) = lease::release(&link, &held).await {
                    tracing::warn!(error = %e, "could not give the lease up; it expires");
                }
                tracing::info!(token, "trainer stopped");
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(token, error = %format!("{e:#}"), "trainer's term ended; standing by");
                tokio::select! {
                    () = &mut stop => return Ok(()),
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
    }
}
