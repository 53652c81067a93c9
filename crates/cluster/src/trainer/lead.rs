//! One term of leading: resume from the newest version, read, learn, guard,
//! publish, renew the lease, trim the label stream.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use adaptserve_core::model::kl::compare;
use adaptserve_core::model::{Mlp, SaveDtype};
use adaptserve_core::update::checkpoints::{stamp, unix_ms};
use adaptserve_core::update::guard::{Evidence, Verdict, judge};
use adaptserve_core::update::learner::Learner;
use adaptserve_core::update::{Provenance, UpdateKind, codec};
use anyhow::{Context, bail};

use super::{TermEnd, TrainerConfig};
use crate::labels;
use crate::lease;
use crate::link::Link;
use crate::registry::{self, TrainerStatus};
use crate::reply::StreamId;
use crate::versions::{self, Version};

/// Entries read per call; fewer back means the trainer has caught up.
const READ_COUNT: usize = 512;
/// How long the trainer waits after a read that found nothing. Not a blocking
/// read: Redis times blocked reads out on its 100 ms tick, which would hold a sync
/// request (checked between reads) for up to ~190 ms; polling costs ~200 cheap
/// reads a second while idle.
const IDLE: Duration = Duration::from_millis(5);
/// How often the sync counter and the status are looked at.
const POLL: Duration = Duration::from_millis(50);
// (and after every read that found nothing: an idle trainer answers a sync at once)
const STATUS_EVERY: Duration = Duration::from_secs(1);

/// What the published lineage has learned: the newest version's entry, carried
/// forward.
struct Lineage {
    /// The version serving (the parent of the next).
    version: u64,
    /// Its weights as the replicas load them (F16 round trip), for the guard.
    model: Arc<Mlp>,
    /// The token that published it (0 for the seed).
    token: u64,
    /// Read through (and, at a publish, learned through).
    position: StreamId,
    learned: BTreeMap<u16, u64>,
    labels: u64,
    updates: u64,
    duplicates: u64,
    skipped: u64,
    labels_skipped: u64,
}

pub(super) async fn lead(
    config: &TrainerConfig,
    link: &Link,
    reader: &Link,
    held: &lease::Lease,
    seed: &Arc<Mlp>,
    stop: &mut Pin<&mut impl Future<Output = ()>>,
) -> anyhow::Result<TermEnd> {
    let token = held.token;
    let mut lineage = resume(link, seed).await?;
    tracing::info!(
        token,
        version = lineage.version,
        position = %lineage.position,
        labels = lineage.labels,
        "resuming from the newest published version"
    );
    let settings = &config.settings;
    let mut learner = Learner::new(&lineage.model, settings.clone(), 0)?;
    // Updates handed to the learner in this term (its sequence numbers).
    let mut delivered = 0u64;
    let mut published_through = 0u64;
    let mut steps_at_publish = 0u64;
    // The lineage's counts carried forward to what has been read since; it becomes
    // the lineage when a publish lands.
    let mut fresh = lineage.clone_counts();
    let mut probe: VecDeque<(Vec<f32>, u32)> = VecDeque::with_capacity(config.probe_rows);
    // Ids of the entries read, newest last, to find where trimming may start.
    let mut recent_ids: VecDeque<StreamId> = VecDeque::with_capacity(config.retain + 1);
    let mut rejected = 0u64;
    let mut sync_seen = registry::sync_requests(link).await?;
    let mut sync_wanted = false;
    let mut last_renew = Instant::now();
    let mut last_poll = Instant::now();
    let mut last_status: Option<Instant> = None;
    let mut last_publish = Instant::now();
    let mut batch_started: Option<Instant> = None;
    let batch_timeout = Duration::from_millis(settings.batch_timeout_ms);
    let publish_every = Duration::from_millis(settings.publish_every_ms);
    loop {
        if last_renew.elapsed() >= config.lease_ttl / 5 {
            if !lease::renew(link, held, config.lease_ttl).await? {
                bail!("the lease was lost (token {token}); another trainer leads");
            }
            last_renew = Instant::now();
        }
        let read = tokio::select! {
            () = stop.as_mut() => return Ok(TermEnd::Stop),
            read = labels::read_after(reader, fresh.position, READ_COUNT, None) => read?,
        };
        let read_nothing = read.is_empty();
        if read_nothing && !sync_wanted {
            tokio::select! {
                () = stop.as_mut() => return Ok(TermEnd::Stop),
                () = tokio::time::sleep(IDLE) => {}
            }
        }
        let caught_up = read.len() < READ_COUNT;
        for entry in read {
            fresh.position = entry.id;
            recent_ids.push_back(entry.id);
            if recent_ids.len() > config.retain {
                recent_ids.pop_front();
            }
            let seen = fresh.learned.entry(entry.replica).or_insert(0);
            if entry.seq <= *seen {
                fresh.duplicates += 1;
                tracing::warn!(
                    replica = entry.replica,
                    seq = entry.seq,
                    "an update on the stream twice; skipped"
                );
                continue;
            }
            *seen = entry.seq;
            match codec::decode(&entry.payload) {
                Ok(update) => {
                    fresh.updates += 1;
                    if update.kind == UpdateKind::Label {
                        fresh.labels += 1;
                        if probe.len() == config.probe_rows {
                            probe.pop_front();
                        }
                        probe.push_back((update.features.clone(), update.label));
                    }
                    delivered += 1;
                    learner.add(delivered, update);
                    batch_started.get_or_insert_with(Instant::now);
                }
                Err(e) => tracing::error!(id = %entry.id, replica = entry.replica,
                    seq = entry.seq, error = %e, "an undecodable update on the stream; skipped"),
            }
        }
        if last_poll.elapsed() >= POLL || read_nothing {
            let requests = registry::sync_requests(link).await?;
            sync_wanted |= requests != sync_seen;
            sync_seen = requests;
            last_poll = Instant::now();
        }
        let waiting = delivered > learner.trained_through;
        if waiting
            && (learner.batch_len() >= settings.train_batch
                || batch_started.is_some_and(|t| t.elapsed() >= batch_timeout)
                || (sync_wanted && caught_up))
        {
            learner.train()?;
            batch_started = None;
        }
        let all_trained = learner.trained_through == delivered;
        let anything_new = delivered > published_through || fresh.position > lineage.position;
        let due = learner.steps - steps_at_publish >= settings.publish_every_steps
            || last_publish.elapsed() >= publish_every
            || (sync_wanted && caught_up);
        if all_trained && anything_new && due {
            let verdict = publish(
                config,
                link,
                held,
                &mut lineage,
                &fresh,
                &mut learner,
                &probe,
                seed.is_fresh(),
            )
            .await?;
            if verdict == Verdict::Reject {
                rejected += 1;
                // Start again from what serves; the updates of the rejected version
                // are accounted for as skipped.
                learner = Learner::new(&lineage.model, settings.clone(), delivered)?;
            }
            fresh = lineage.clone_counts();
            published_through = delivered;
            steps_at_publish = learner.steps;
            last_publish = Instant::now();
            sync_wanted = false;
            if recent_ids.len() >= config.retain {
                // Keep `retain` entries for the memories, and never what is unlearned.
                let floor = recent_ids[0].min(lineage.position);
                match labels::trim_below(link, floor).await {
                    Ok(n) if n > 0 => {
                        tracing::debug!(trimmed = n, below = %floor, "label stream trimmed")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot trim the label stream"),
                }
            }
            last_status = None;
        }
        if last_status.is_none_or(|t| t.elapsed() >= STATUS_EVERY) {
            let status = TrainerStatus {
                holder: config.holder.clone(),
                token,
                version: lineage.version,
                position: lineage.position.to_string(),
                labels_learned: lineage.labels,
                updates_learned: lineage.updates,
                duplicates: lineage.duplicates,
                skipped: lineage.skipped,
                labels_skipped: lineage.labels_skipped,
                rejected,
                unix_ms: unix_ms(),
            };
            registry::set_trainer(link, &status).await?;
            last_status = Some(Instant::now());
        }
    }
}

impl Lineage {
    /// A copy to count on from (what the next publish will have learned).
    fn clone_counts(&self) -> Lineage {
        Lineage {
            version: self.version,
            model: self.model.clone(),
            token: self.token,
            position: self.position,
            learned: self.learned.clone(),
            labels: self.labels,
            updates: self.updates,
            duplicates: self.duplicates,
            skipped: self.skipped,
            labels_skipped: self.labels_skipped,
        }
    }
}

/// The newest published version, or the seed when nothing is published yet.
async fn resume(link: &Link, seed: &Arc<Mlp>) -> anyhow::Result<Lineage> {
    let Some(newest) = versions::latest(link).await? else {
        return Ok(Lineage {
            version: seed.version(),
            model: seed.clone(),
            token: 0,
            position: StreamId::ZERO,
            learned: BTreeMap::new(),
            labels: 0,
            updates: 0,
            duplicates: 0,
            skipped: 0,
            labels_skipped: 0,
        });
    };
    let bytes = versions::weights(link, &newest).await?;
    let model = Arc::new(
        load(seed, &bytes, newest.version)
            .with_context(|| format!("cannot load the newest version, v{}", newest.version))?,
    );
    Ok(Lineage {
        version: newest.version,
        model,
        token: newest.token,
        position: newest.position,
        learned: newest.learned,
        labels: newest.labels,
        updates: newest.updates,
        duplicates: newest.duplicates,
        skipped: newest.skipped,
        labels_skipped: newest.labels_skipped,
    })
}

/// Weights from Redis, under the seed's shape.
fn load(seed: &Mlp, bytes: &[u8], version: u64) -> anyhow::Result<Mlp> {
    let name = format!("redis:weights:{version}");
    Ok(Mlp::from_safetensors(
        seed.config().clone(),
        bytes,
        Path::new("the model's config.json"),
        Path::new(&name),
    )?)
}

/// Guards the learner's weights against what serves and publishes them (or, when
/// the guard rejects them, the serving weights again under a new number, so that
/// the replicas' floors still advance past the skipped updates). Returns the
/// verdict.
#[allow(clippy::too_many_arguments)]
async fn publish(
    config: &TrainerConfig,
    link: &Link,
    held: &lease::Lease,
    lineage: &mut Lineage,
    fresh: &Lineage,
    learner: &mut Learner,
    probe: &VecDeque<(Vec<f32>, u32)>,
    started_fresh: bool,
) -> anyhow::Result<Verdict> {
    let (version, token) = (lineage.version + 1, held.token);
    let candidate = learner.snapshot(version)?;
    let inputs: Vec<f32> = probe.iter().flat_map(|(x, _)| x.iter().copied()).collect();
    let labels: Vec<Option<u32>> = probe.iter().map(|(_, y)| Some(*y)).collect();
    let verdict = if labels.is_empty() {
        Verdict::Young
    } else {
        let cmp = compare(&lineage.model, &candidate, &inputs, &labels)
            .context("comparing the new version with the serving one")?;
        judge(
            &Evidence {
                kl: cmp.kl,
                new_only: cmp.new_only,
                old_only: cmp.old_only,
                started_fresh,
                labels: fresh.labels,
            },
            &config.rules,
        )
    };
    let from = Provenance {
        version,
        parent: Some(lineage.version),
        generation: token,
        parent_generation: lineage.token,
        applied_seq: fresh.updates,
    };
    let path = format!("redis:weights:{version}");
    let (model, skipped, labels_skipped): (&Mlp, u64, u64) = if verdict.accepts() {
        (&candidate, 0, 0)
    } else {
        tracing::warn!(
            version,
            parent = lineage.version,
            "the guard rejected the new weights; republishing the serving ones"
        );
        // The stamp gives the serving weights the new number.
        (
            &lineage.model,
            fresh.updates - lineage.updates,
            fresh.labels - lineage.labels,
        )
    };
    let bytes = model.to_safetensors(Path::new(&path), SaveDtype::F16, &stamp(model, &from))?;
    // The guard of the next version compares with exactly what replicas load.
    let served = Arc::new(load(model, &bytes, version)?);
    let entry = Version {
        id: StreamId::ZERO,
        version,
        parent: lineage.version,
        token,
        checksum: versions::checksum(&bytes),
        bytes: bytes.len() as u64,
        position: fresh.position,
        learned: fresh.learned.clone(),
        // What the served weights have learned: a rejected version's updates are
        // counted as skipped instead.
        labels: fresh.labels - labels_skipped,
        updates: fresh.updates - skipped,
        duplicates: fresh.duplicates,
        skipped: lineage.skipped + skipped,
        labels_skipped: lineage.labels_skipped + labels_skipped,
        verdict: format!("{verdict:?}").to_lowercase(),
        unix_ms: unix_ms(),
    };
    let id = versions::publish(link, held, &entry, &bytes).await?;
    if let Some(dir) = &config.backup_dir {
        let store = adaptserve_core::update::Checkpoints::new(dir.join("checkpoints"));
        let kept = store
            .init(model.config())
            .and_then(|()| store.publish_bytes(version, &bytes))
            .map(|_| store.prune(versions::KEEP_WEIGHTS as usize, &[version]));
        if let Err(e) = kept {
            tracing::warn!(version, error = %e, "cannot keep a copy of the version");
        }
    }
    tracing::info!(version, %id, position = %entry.position, labels = entry.labels,
        verdict = %entry.verdict, "published");
    *lineage = Lineage {
        version,
        model: served,
        token,
        position: entry.position,
        learned: entry.learned,
        labels: entry.labels,
        updates: entry.updates,
        duplicates: entry.duplicates,
        skipped: entry.skipped,
        labels_skipped: entry.labels_skipped,
    };
    Ok(verdict)
}
