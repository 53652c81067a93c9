//! The cluster-wide rate limit's share (`http::ratelimit` has the rule): every
//! [`EVERY`], the requests each client was let through here are added to the
//! client's counter for the current second in Redis, in one pipeline, and a client
//! whose cluster-wide count is past the limit is refused here until the second
//! ends. No request waits on this; with Redis away the local buckets decide alone.

use std::sync::Arc;
use std::time::Duration;

use adaptserve_cluster::ratelimit as shared;

use super::Replica;
use crate::http::ratelimit::{RateLimiter, unix_second};
use crate::state::AppState;

/// How often the counts are shared: the most a client can exceed the cluster's
/// limit by is what all replicas let through in this long.
pub(super) const EVERY: Duration = Duration::from_millis(100);

pub(super) async fn run(
    replica: Arc<Replica>,
    state: Arc<AppState>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let limiter: &RateLimiter = &state.rate_limit;
    limiter.share();
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let counts = limiter.take_unsynced();
        if counts.is_empty() {
            continue;
        }
        let second = unix_second();
        let keyed: Vec<(String, u32)> = counts.iter().map(|(ip, n)| (ip.to_string(), *n)).collect();
        match shared::add(&replica.link, second, &keyed).await {
            Ok(totals) => {
                replica.up();
                let limit = limiter.window_limit();
                for ((client, _), total) in counts.iter().zip(totals) {
                    if total > limit {
                        limiter.mark_over(*client, second);
                    }
                }
            }
            // These requests are forgotten by the cluster: the local buckets held.
            Err(e) => replica.down(&e),
        }
    }
}
