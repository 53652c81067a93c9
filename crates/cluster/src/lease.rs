//! The trainer's leader lease and its fencing token.
//!
//! One trainer learns and publishes at a time. It holds a key that expires unless
//! renewed; taking the lease draws a new token from a counter that only rises, and
//! the lease key holds it with the holder's name. Renewing and publishing both check that the key still
//! holds the caller's token, atomically, so a trainer that stalled past its lease
//! (a long GC-like pause, a SIGSTOP) finds itself fenced out the moment it acts.

use std::time::Duration;

use redis::{Script, Value};

use crate::link::{ClusterError, Link};
use crate::reply;

/// A held lease: the fencing token and who holds it. The lease key holds
/// `token|holder`, so a trainer whose term ended on an error (a dropped connection,
/// a reply that never came) takes its own lease back at once instead of waiting
/// for it to lapse; holders must be unique (`--trainer-id`, default host and pid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub token: u64,
    pub holder: String,
}

impl Lease {
    /// What the lease key holds while this lease lasts.
    pub fn value(&self) -> String {
        format!("{}|{}", self.token, self.holder)
    }
}

/// KEYS: lease, tokens. ARGV: ttl ms, holder. The token if taken (a new one) or
/// already this holder's (extended), else nil.
const ACQUIRE: &str = r"
local v = redis.call('GET', KEYS[1])
if v then
  local sep = string.find(v, '|', 1, true)
  if sep and string.sub(v, sep + 1) == ARGV[2] then
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
    return tonumber(string.sub(v, 1, sep - 1))
  end
  return false
end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token .. '|' .. ARGV[2], 'PX', ARGV[1])
return token
";

/// KEYS: lease. ARGV: value, ttl ms. 1 if renewed, 0 if it is no longer held.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// KEYS: lease. ARGV: value. Deletes the lease if it is still this one.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Takes the lease for `ttl` for `holder` if nobody else holds it.
pub async fn acquire(
    link: &Link,
    holder: &str,
    ttl: Duration,
) -> Result<Option<Lease>, ClusterError> {
    if holder.contains('|') {
        return Err(ClusterError::Refused(format!(
            "a trainer name may not contain '|': {holder:?}"
        )));
    }
    let script = Script::new(ACQUIRE);
    let mut invocation = script.prepare_invoke();
    invocation
        .key(link.keys().lease())
        .key(link.keys().tokens())
        .arg(ttl.as_millis() as u64)
        .arg(holder);
    match link.script(&invocation).await? {
        Value::Nil => Ok(None),
        value => {
            let token = reply::int(&value, "a fencing token")?;
            let token = u64::try_from(token)
                .map_err(|_| ClusterError::garbage("a positive fencing token", token))?;
            Ok(Some(Lease {
                token,
                holder: holder.to_string(),
            }))
        }
    }
}

/// Extends the lease if it is still `lease`; false if another trainer took it.
pub async fn renew(link: &Link, lease: &Lease, ttl: Duration) -> Result<bool, ClusterError> {
    let script = Script::new(RENEW);
    let mut invocation = script.prepare_invoke();
    invocation
        .key(link.keys().lease())
        .arg(lease.value())
        .arg(ttl.as_millis() as u64);
    Ok(reply::int(&link.script(&invocation).await?, "0 or 1")? == 1)
}

/// Gives the lease up, if it is still `lease`.
pub async fn release(link: &Link, lease: &Lease) -> Result<(), ClusterError> {
    let script = Script::new(RELEASE);
    let mut invocation = script.prepare_invoke();
    invocation.key(link.keys().lease()).arg(lease.value());
    link.script(&invocation).await.map(|_| ())
}
