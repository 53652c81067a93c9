//! The update-worker process.
//!
//! It is its own binary so that a crash, a hang or a runaway allocation in training
//! can never take the serving process down with it. Issue 3 fills it in: it will
//! consume the shared-memory ring, train on mini-batches and publish checkpoints.
//! Until then it only reports that the update path is not wired, and exits non-zero
//! so that nothing mistakes it for a working worker.

fn main() -> anyhow::Result<()> {
    anyhow::bail!(
        "update-worker {}: the shared-memory update path is not built yet; \
         the server applies feedback to its k-NN memory directly",
        adaptserve::VERSION
    )
}
