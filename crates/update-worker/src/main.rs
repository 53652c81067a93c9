//! The update-worker process.
//!
//! It is its own binary so that a crash, a hang or a runaway allocation in training
//! can never take the serving process down with it. The server starts it with a
//! [`WorkerSpec`]; it then:
//! 1. loads the serving checkpoint, which has learned every update up to its
//!    `applied_seq`;
//! 2. takes updates in sequence order from the ring, falling back to the WAL for
//!    anything the ring dropped (`feed`);
//! 3. trains on mini-batches (`learner`);
//! 4. publishes FP16 checkpoints atomically, each stamped with its parent, its ring
//!    generation and its parent's, then bumps `published_version`: the server admits
//!    only the versions of the generation it names live, trained from a parent it
//!    knows (`adaptserve_core::update::fence`);
//! 5. heartbeats into the ring header every `heartbeat_ms`.
//!
//! A publish happens every `publish_every_steps` steps or `publish_every_ms`, and at
//! once when the server raises `sync_target` (the `/v1/admin/sync` barrier). The
//! worker keeps no state of its own: everything it has not published, it can learn
//! again from the WAL, so SIGKILL at any instant loses nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use adaptserve_core::ipc::Ring;
use adaptserve_core::update::{
    Checkpoints, Provenance, WorkerSpec, checkpoints::unix_ms, provenance,
};
use anyhow::{Context, bail};
use clap::Parser;

use adaptserve_core::update::feed::Feed;
use adaptserve_core::update::learner::Learner;

/// adaptserve's update-worker: started by the server, never by hand.
#[derive(Debug, Parser)]
#[command(name = "update-worker", version)]
struct Args {
    /// The worker spec, as JSON (written by the server).
    #[arg(long)]
    spec: String,
}

/// How long the loop sleeps when there is nothing to do. Short enough that an update
/// waits well under a millisecond for the worker, long enough to cost no CPU.
const IDLE_SLEEP: Duration = Duration::from_micros(500);

fn main() -> anyhow::Result<()> {
    adaptserve_core::telemetry::init();
    let args = Args::parse();
    let spec =
        WorkerSpec::from_arg(&args.spec).context("the --spec argument is not a worker spec")?;
    // Die with the server: a worker training for a server that is gone would hold
    // the ring and the checkpoint directory for nobody.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .context("cannot set the parent-death signal")?;
    if nix::unistd::getppid().as_raw() as u32 != spec.parent_pid {
        bail!(
            "the server (pid {}) exited before the worker started",
            spec.parent_pid
        );
    }
    run(spec)
}

fn run(spec: WorkerSpec) -> anyhow::Result<()> {
    let ring = Arc::new(
        Ring::open(&spec.ring)
            .with_context(|| format!("cannot open the ring {}", spec.ring.display()))?,
    );
    if ring.generation() != spec.generation {
        bail!(
            "the ring is generation {}, the spec was written for {}",
            ring.generation(),
            spec.generation
        );
    }
    let consumer = ring
        .consumer()
        .context("the ring already has a consumer in this process")?;
    let store = Checkpoints::new(&spec.checkpoint_dir);
    let model = store
        .load(spec.start_version)
        .with_context(|| format!("cannot load checkpoint v{}", spec.start_version))?;
    let started_from = provenance(&model);
    let start = started_from.applied_seq.max(spec.applied_floor);
    let settings = spec.settings.clone();
    let mut learner = Learner::new(&model, settings.clone(), start)?;
    let mut feed = Feed::new(consumer, spec.wal_dir.clone(), start);
    ring.set_worker_pid(std::process::id());
    ring.set_applied_seq(start);
    ring.set_heartbeat_ms(unix_ms());
    tracing::info!(
        version = spec.start_version,
        applied_seq = start,
        "update-worker started"
    );

    let heartbeat = Duration::from_millis(settings.heartbeat_ms);
    let batch_timeout = Duration::from_millis(settings.batch_timeout_ms);
    let publish_every = Duration::from_millis(settings.publish_every_ms);
    let mut last_beat = Instant::now();
    let mut batch_started: Option<Instant> = None;
    let mut parent_version = spec.start_version;
    // The start version's own generation (0 for the seed or an unstamped checkpoint);
    // every later parent is this worker's own publication.
    let mut parent_generation = started_from.generation;
    let mut published_through = start;
    let mut steps_at_publish = 0u64;
    let mut last_publish = Instant::now();
    loop {
        if last_beat.elapsed() >= heartbeat {
            ring.set_heartbeat_ms(unix_ms());
            last_beat = Instant::now();
            if nix::unistd::getppid().as_raw() as u32 != spec.parent_pid {
                tracing::info!("the server is gone; stopping");
                return Ok(());
            }
        }
        let mut got = false;
        while learner.batch_len() < settings.train_batch {
            match feed.next_update()? {
                Some((seq, update)) => {
                    learner.add(seq, update);
                    batch_started.get_or_insert_with(Instant::now);
                    got = true;
                }
                None => break,
            }
        }
        let sync_target = ring.sync_target();
        let waiting = feed.delivered() > learner.trained_through;
        if waiting
            && (learner.batch_len() >= settings.train_batch
                || batch_started.is_some_and(|t| t.elapsed() >= batch_timeout)
                || sync_target > learner.trained_through)
        {
            learner.train()?;
            ring.set_applied_seq(learner.trained_through);
            batch_started = None;
        }
        let trained = learner.trained_through > published_through;
        let due = learner.steps - steps_at_publish >= settings.publish_every_steps
            || last_publish.elapsed() >= publish_every
            || (sync_target > published_through && learner.trained_through >= sync_target);
        if trained && due {
            let version = next_version(&store, &ring, parent_version);
            let model = learner.snapshot(version)?;
            let from = Provenance {
                version,
                parent: Some(parent_version),
                generation: spec.generation,
                parent_generation,
                applied_seq: learner.trained_through,
            };
            store
                .publish(&model, &from)
                .with_context(|| format!("cannot publish v{version}"))?;
            ring.set_published_version(version);
            tracing::debug!(version, applied_seq = learner.trained_through, "published");
            parent_version = version;
            parent_generation = spec.generation;
            published_through = learner.trained_through;
            steps_at_publish = learner.steps;
            last_publish = Instant::now();
        }
        if !got {
            std::thread::sleep(IDLE_SLEEP);
        }
    }
}

/// One above every version anyone has used: on disk, announced in the ring, or the
/// one this worker started from, so a restarted worker never reuses a number.
fn next_version(store: &Checkpoints, ring: &Ring, parent: u64) -> u64 {
    let on_disk = store.versions().last().copied().unwrap_or(0);
    on_disk.max(ring.published_version()).max(parent) + 1
}
