//! Rate limits: GCRA (the generic cell rate algorithm), the same arithmetic in memory and in
//! Redis, so a limit means the same thing in one process and across pods. A limit of `n` per
//! minute lets a burst of `n` through, then one every `60/n` seconds.
//!
//! The Redis form runs as one Lua script that reads the server's clock (`TIME`), so pods with
//! skewed clocks still share one limit. When Redis cannot be reached the limiter fails open
//! (logs and counts it): rate limits protect the platform, they must not take it down.

use async_trait::async_trait;
use dashmap::DashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The outcome of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// When refused: how long until one more would pass.
    pub retry_after: Duration,
}

#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// Takes one unit from `key`'s budget of `per_minute`. `per_minute == 0` means unlimited.
    async fn check(&self, key: &str, per_minute: u32) -> Decision;
}

/// GCRA step. Times in microseconds. Returns the decision and the new theoretical arrival time.
fn gcra(now: u64, tat: Option<u64>, per_minute: u32) -> (Decision, u64) {
    let interval = 60_000_000 / u64::from(per_minute.max(1));
    let tolerance = interval * u64::from(per_minute.saturating_sub(1));
    let tat = tat.unwrap_or(now).max(now);
    let allow_at = tat.saturating_sub(tolerance);
    if now < allow_at {
        return (
            Decision {
                allowed: false,
                retry_after: Duration::from_micros(allow_at - now),
            },
            tat,
        );
    }
    (
        Decision {
            allowed: true,
            retry_after: Duration::ZERO,
        },
        tat + interval,
    )
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// In-process limiter.
#[derive(Debug, Default)]
pub struct MemoryLimiter {
    tats: DashMap<String, u64>,
    checks: AtomicU64,
}

impl MemoryLimiter {
    pub fn new() -> Self {
        Self::default()
    }

    fn check_at(&self, key: &str, per_minute: u32, now: u64) -> Decision {
        if per_minute == 0 {
            return Decision {
                allowed: true,
                retry_after: Duration::ZERO,
            };
        }
        let mut entry = self.tats.entry(key.to_string()).or_insert(0);
        let prev = if *entry == 0 { None } else { Some(*entry) };
        let (d, tat) = gcra(now, prev, per_minute);
        *entry = tat;
        drop(entry);
        // Forget keys whose budget is full again, now and then.
        if self.checks.fetch_add(1, Ordering::Relaxed) % 10_000 == 9_999 {
            self.tats.retain(|_, tat| *tat > now);
        }
        d
    }
}

#[async_trait]
impl RateLimiter for MemoryLimiter {
    async fn check(&self, key: &str, per_minute: u32) -> Decision {
        self.check_at(key, per_minute, now_micros())
    }
}

const SCRIPT: &str = r#"
local per_minute = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = math.floor(60000000 / per_minute)
local tolerance = interval * (per_minute - 1)
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat - tolerance
if now < allow_at then
  return {0, allow_at - now}
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1000)
return {1, 0}
"#;

/// Limiter shared by every pod through Redis.
pub struct RedisLimiter {
    conn: redis::aio::ConnectionManager,
    prefix: String,
    script: redis::Script,
    pub failures: AtomicU64,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisLimiter {
    pub fn new(conn: redis::aio::ConnectionManager, prefix: &str) -> Self {
        Self {
            conn,
            prefix: format!("{prefix}rl:"),
            script: redis::Script::new(SCRIPT),
            failures: AtomicU64::new(0),
        }
    }
}

#[async_trait]
impl RateLimiter for RedisLimiter {
    async fn check(&self, key: &str, per_minute: u32) -> Decision {
        if per_minute == 0 {
            return Decision {
                allowed: true,
                retry_after: Duration::ZERO,
            };
        }
        let mut conn = self.conn.clone();
        let res: redis::RedisResult<(i64, i64)> = self
            .script
            .key(format!("{}{key}", self.prefix))
            .arg(per_minute)
            .invoke_async(&mut conn)
            .await;
        match res {
            Ok((allowed, wait)) => Decision {
                allowed: allowed == 1,
                retry_after: Duration::from_micros(wait.max(0) as u64),
            },
            Err(e) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "Rate limit check failed; allowing the request.");
                Decision {
                    allowed: true,
                    retry_after: Duration::ZERO,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let l = MemoryLimiter::new();
        let t0 = 1_000_000_000;
        for i in 0..60 {
            assert!(l.check_at("k", 60, t0).allowed, "burst {i}");
        }
        let d = l.check_at("k", 60, t0);
        assert!(!d.allowed);
        assert!(d.retry_after <= Duration::from_secs(1) && d.retry_after > Duration::ZERO);
        // One per second after that.
        assert!(l.check_at("k", 60, t0 + 1_000_000).allowed);
        assert!(!l.check_at("k", 60, t0 + 1_000_000).allowed);
        // Other keys are independent; 0 is unlimited.
        assert!(l.check_at("other", 60, t0).allowed);
        assert!(l.check_at("k", 0, t0).allowed);
    }

    #[test]
    fn full_budget_after_a_minute() {
        let l = MemoryLimiter::new();
        let t0 = 5_000_000_000;
        for _ in 0..10 {
            assert!(l.check_at("k", 10, t0).allowed);
        }
        assert!(!l.check_at("k", 10, t0).allowed);
        let later = t0 + 60_000_000;
        for _ in 0..10 {
            assert!(l.check_at("k", 10, later).allowed);
        }
    }
}
