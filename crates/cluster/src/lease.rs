//! The trainer's leader lease and its fencing token.
//!
//! One trainer learns and publishes at a time. It holds a key that expires unless
//! renewed; taking the lease draws a new token from a counter that only rises, and
//! the lease key holds it. Renewing and publishing both check that the key still
//! holds the caller's token, atomically, so a trainer that stalled past its lease
//! (a long GC-like pause, a SIGSTOP) finds itself fenced out the moment it acts.

use std::time::Duration;

use redis::{Script, Value};

use crate::link::{ClusterError, Link};
use crate::reply;

/// KEYS: lease, tokens. ARGV: ttl ms. A new token if the lease is free, else nil.
const ACQUIRE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return false
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token, 'PX', ARGV[1])
return token
";

/// KEYS: lease. ARGV: token, ttl ms. 1 if renewed, 0 if the token no longer holds.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// KEYS: lease. ARGV: token. Deletes the lease if it still holds the token.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Takes the lease for `ttl` if nobody holds it; returns the new fencing token.
pub async fn acquire(link: &Link, ttl: Duration) -> Result<Option<u64>, ClusterError> {
    let script = Script::new(ACQUIRE);
    let mut invocation = script.prepare_invoke();
    invocation
        .key(link.keys().lease())
        .key(link.keys().tokens())
        .arg(ttl.as_millis() as u64);
    match link.script(&invocation).await? {
        Value::Nil => Ok(None),
        value => {
            let token = reply::int(&value, "a fencing token")?;
            u64::try_from(token)
                .map(Some)
                .map_err(|_| ClusterError::garbage("a positive fencing token", token))
        }
    }
}

/// Extends the lease if it still holds `token`; false if another trainer took it.
pub async fn renew(link: &Link, token: u64, ttl: Duration) -> Result<bool, ClusterError> {
    let script = Script::new(RENEW);
    let mut invocation = script.prepare_invoke();
    invocation
        .key(link.keys().lease())
        .arg(token)
        .arg(ttl.as_millis() as u64);
    Ok(reply::int(&link.script(&invocation).await?, "0 or 1")? == 1)
}

/// Gives the lease up (on a clean exit), if it still holds `token`.
pub async fn release(link: &Link, token: u64) -> Result<(), ClusterError> {
    let script = Script::new(RELEASE);
    let mut invocation = script.prepare_invoke();
    invocation.key(link.keys().lease()).arg(token);
    link.script(&invocation).await.map(|_| ())
}
