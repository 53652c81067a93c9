//! Per-client request counts of one second, summed across replicas: each replica
//! adds what it let through and reads the cluster's total back, in one pipeline.

use crate::link::{ClusterError, Link};
use crate::reply;

/// Adds `counts` (client, requests) to Unix second `second`'s counters; returns
/// the cluster-wide totals, in order. The counters expire two seconds on.
pub async fn add(
    link: &Link,
    second: u64,
    counts: &[(String, u32)],
) -> Result<Vec<u64>, ClusterError> {
    let mut pipe = redis::pipe();
    for (client, n) in counts {
        let key = link.keys().rate(client, second);
        pipe.cmd("INCRBY").arg(&key).arg(*n);
        pipe.cmd("EXPIRE").arg(&key).arg(2).ignore();
    }
    let totals = link.pipe(&pipe).await?;
    if totals.len() != counts.len() {
        return Err(ClusterError::garbage(
            "one total per client",
            format!("{} totals for {} clients", totals.len(), counts.len()),
        ));
    }
    totals
        .iter()
        .map(|t| {
            let n = reply::int(t, "a request count")?;
            u64::try_from(n).map_err(|_| ClusterError::garbage("a count of zero or more", n))
        })
        .collect()
}
