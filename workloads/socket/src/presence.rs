//! Who is online, and how many realtime connections each tenant holds — across every socket pod.
//!
//! One record per connection with an expiry that the owning pod refreshes on every heartbeat.
//! A pod that dies without saying goodbye stops refreshing, and its connections expire: presence
//! and the per-tenant connection quota both heal by themselves, never by a counter that leaks.
//!
//! [`MemoryPresence`] serves one process (`caas standalone`); [`RedisPresence`] keeps the records
//! in two sorted sets per tenant and user (member = connection id, score = expiry in ms, Redis
//! server time), changed by Lua scripts so that the quota check and the insert are one atomic step.

use async_trait::async_trait;
use caas_domain::{TenantId, UserId};
use parking_lot::Mutex;
use redis::aio::ConnectionManager;
use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    /// The tenant already holds its maximum of connections.
    #[error("the tenant's limit of {0} realtime connections is reached")]
    QuotaExceeded(u32),
    #[error("presence unavailable: {0}")]
    Unavailable(String),
}

pub type Result<T, E = PresenceError> = std::result::Result<T, E>;

/// One live connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Conn {
    pub tenant: TenantId,
    pub user: UserId,
    pub id: String,
}

#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Records a new connection unless the tenant already holds `max`. `true` when it is the
    /// user's first live connection (the user came online).
    async fn connect(&self, conn: &Conn, max: u32) -> Result<bool>;
    /// Refreshes the expiry of these connections (all of this pod's, every heartbeat).
    async fn heartbeat(&self, conns: &[Conn]) -> Result<()>;
    /// Forgets a connection. `true` when the user has no live connection left (went offline).
    async fn disconnect(&self, conn: &Conn) -> Result<bool>;
    /// Which of `users` are online.
    async fn online(&self, tenant: &TenantId, users: &[UserId]) -> Result<Vec<bool>>;
}

/// Presence in this process only.
#[derive(Debug)]
pub struct MemoryPresence {
    ttl: Duration,
    inner: Mutex<MemoryInner>,
}

#[derive(Debug, Default)]
struct MemoryInner {
    /// tenant -> connection id -> expiry
    tenants: HashMap<TenantId, HashMap<String, Instant>>,
    /// (tenant, user) -> connection id -> expiry
    users: HashMap<(TenantId, UserId), HashMap<String, Instant>>,
}

impl MemoryPresence {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            inner: Mutex::new(MemoryInner::default()),
        }
    }
}

fn live(m: &mut HashMap<String, Instant>, now: Instant) {
    m.retain(|_, exp| *exp > now);
}

#[async_trait]
impl Presence for MemoryPresence {
    async fn connect(&self, conn: &Conn, max: u32) -> Result<bool> {
        let now = Instant::now();
        let exp = now + self.ttl;
        let mut g = self.inner.lock();
        let t = g.tenants.entry(conn.tenant.clone()).or_default();
        live(t, now);
        if t.len() >= max as usize {
            return Err(PresenceError::QuotaExceeded(max));
        }
        t.insert(conn.id.clone(), exp);
        let u = g
            .users
            .entry((conn.tenant.clone(), conn.user.clone()))
            .or_default();
        live(u, now);
        let first = u.is_empty();
        u.insert(conn.id.clone(), exp);
        Ok(first)
    }

    async fn heartbeat(&self, conns: &[Conn]) -> Result<()> {
        let exp = Instant::now() + self.ttl;
        let mut g = self.inner.lock();
        for c in conns {
            if let Some(e) = g.tenants.get_mut(&c.tenant).and_then(|t| t.get_mut(&c.id)) {
                *e = exp;
            }
            if let Some(e) = g
                .users
                .get_mut(&(c.tenant.clone(), c.user.clone()))
                .and_then(|u| u.get_mut(&c.id))
            {
                *e = exp;
            }
        }
        Ok(())
    }

    async fn disconnect(&self, conn: &Conn) -> Result<bool> {
        let now = Instant::now();
        let mut g = self.inner.lock();
        if let Some(t) = g.tenants.get_mut(&conn.tenant) {
            t.remove(&conn.id);
            if t.is_empty() {
                g.tenants.remove(&conn.tenant);
            }
        }
        let key = (conn.tenant.clone(), conn.user.clone());
        let gone = match g.users.get_mut(&key) {
            Some(u) => {
                u.remove(&conn.id);
                live(u, now);
                u.is_empty()
            }
            None => true,
        };
        if gone {
            g.users.remove(&key);
        }
        Ok(gone)
    }

    async fn online(&self, tenant: &TenantId, users: &[UserId]) -> Result<Vec<bool>> {
        let now = Instant::now();
        let g = self.inner.lock();
        Ok(users
            .iter()
            .map(|u| {
                g.users
                    .get(&(tenant.clone(), u.clone()))
                    .is_some_and(|m| m.values().any(|e| *e > now))
            })
            .collect())
    }
}

/// Presence in Redis, shared by every socket pod.
pub struct RedisPresence {
    conn: ConnectionManager,
    prefix: String,
    ttl_ms: u64,
    connect: redis::Script,
    disconnect: redis::Script,
    refresh: redis::Script,
    online: redis::Script,
}

impl std::fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPresence").finish_non_exhaustive()
    }
}

/// Server time in ms, so that pods with skewed clocks agree on expiry.
const NOW: &str = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)";

impl RedisPresence {
    pub fn new(conn: ConnectionManager, prefix: &str, ttl: Duration) -> Self {
        let ttl_ms = ttl.as_millis() as u64;
        Self {
            conn,
            prefix: prefix.to_string(),
            ttl_ms,
            // KEYS: tenant set, user set. ARGV: conn id, max, ttl ms.
            connect: redis::Script::new(&format!(
                "{NOW}
                 redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
                 if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return -1 end
                 local exp = now + tonumber(ARGV[3])
                 redis.call('ZADD', KEYS[1], exp, ARGV[1])
                 redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
                 redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
                 local before = redis.call('ZCARD', KEYS[2])
                 redis.call('ZADD', KEYS[2], exp, ARGV[1])
                 redis.call('PEXPIRE', KEYS[2], tonumber(ARGV[3]) * 2)
                 if before == 0 then return 1 end
                 return 0"
            )),
            // KEYS: tenant set, user set. ARGV: conn id.
            disconnect: redis::Script::new(&format!(
                "{NOW}
                 redis.call('ZREM', KEYS[1], ARGV[1])
                 redis.call('ZREM', KEYS[2], ARGV[1])
                 redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
                 if redis.call('ZCARD', KEYS[2]) == 0 then return 1 end
                 return 0"
            )),
            // KEYS: pairs of (tenant set, user set). ARGV: ttl ms, then conn ids.
            refresh: redis::Script::new(&format!(
                "{NOW}
                 local ttl = tonumber(ARGV[1])
                 for i = 2, #ARGV do
                   local t, u = KEYS[2 * i - 3], KEYS[2 * i - 2]
                   redis.call('ZADD', t, now + ttl, ARGV[i])
                   redis.call('ZADD', u, now + ttl, ARGV[i])
                   redis.call('PEXPIRE', t, ttl * 2)
                   redis.call('PEXPIRE', u, ttl * 2)
                 end
                 return 0"
            )),
            // KEYS: user sets. Returns 1/0 per key.
            online: redis::Script::new(&format!(
                "{NOW}
                 local out = {{}}
                 for i = 1, #KEYS do
                   if redis.call('ZCOUNT', KEYS[i], '(' .. now, '+inf') > 0 then out[i] = 1 else out[i] = 0 end
                 end
                 return out"
            )),
        }
    }

    fn tenant_key(&self, t: &TenantId) -> String {
        format!("{}conns:{{{t}}}", self.prefix)
    }

    fn user_key(&self, t: &TenantId, u: &UserId) -> String {
        format!("{}presence:{{{t}}}:{u}", self.prefix)
    }
}

fn unavailable(e: redis::RedisError) -> PresenceError {
    PresenceError::Unavailable(e.to_string())
}

#[async_trait]
impl Presence for RedisPresence {
    async fn connect(&self, conn: &Conn, max: u32) -> Result<bool> {
        let mut c = self.conn.clone();
        let r: i64 = self
            .connect
            .key(self.tenant_key(&conn.tenant))
            .key(self.user_key(&conn.tenant, &conn.user))
            .arg(&conn.id)
            .arg(max)
            .arg(self.ttl_ms)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        match r {
            -1 => Err(PresenceError::QuotaExceeded(max)),
            n => Ok(n == 1),
        }
    }

    async fn heartbeat(&self, conns: &[Conn]) -> Result<()> {
        // Keys of one tenant share a hash slot ({tenant}); batches stay per tenant.
        let mut by_tenant: HashMap<&TenantId, Vec<&Conn>> = HashMap::new();
        for c in conns {
            by_tenant.entry(&c.tenant).or_default().push(c);
        }
        for (tenant, list) in by_tenant {
            for chunk in list.chunks(500) {
                let mut inv = self.refresh.prepare_invoke();
                inv.arg(self.ttl_ms);
                for c in chunk {
                    inv.key(self.tenant_key(tenant))
                        .key(self.user_key(tenant, &c.user))
                        .arg(&c.id);
                }
                let mut conn = self.conn.clone();
                let _: i64 = inv.invoke_async(&mut conn).await.map_err(unavailable)?;
            }
        }
        Ok(())
    }

    async fn disconnect(&self, conn: &Conn) -> Result<bool> {
        let mut c = self.conn.clone();
        let r: i64 = self
            .disconnect
            .key(self.tenant_key(&conn.tenant))
            .key(self.user_key(&conn.tenant, &conn.user))
            .arg(&conn.id)
            .invoke_async(&mut c)
            .await
            .map_err(unavailable)?;
        Ok(r == 1)
    }

    async fn online(&self, tenant: &TenantId, users: &[UserId]) -> Result<Vec<bool>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.online.prepare_invoke();
        for u in users {
            inv.key(self.user_key(tenant, u));
        }
        let mut c = self.conn.clone();
        let r: Vec<i64> = inv.invoke_async(&mut c).await.map_err(unavailable)?;
        Ok(r.into_iter().map(|v| v == 1).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(t: &str, u: &str, id: &str) -> Conn {
        Conn {
            tenant: TenantId::parse(t).unwrap(),
            user: UserId::parse(u).unwrap(),
            id: id.into(),
        }
    }

    #[tokio::test]
    async fn memory_presence_counts_connections_and_users() {
        let p = MemoryPresence::new(Duration::from_secs(30));
        assert!(p.connect(&conn("t1", "ann", "c1"), 2).await.unwrap());
        assert!(!p.connect(&conn("t1", "ann", "c2"), 2).await.unwrap());
        assert!(matches!(
            p.connect(&conn("t1", "bob", "c3"), 2).await,
            Err(PresenceError::QuotaExceeded(2))
        ));
        // Another tenant has its own budget.
        assert!(p.connect(&conn("t2", "bob", "c4"), 2).await.unwrap());
        let t1 = TenantId::parse("t1").unwrap();
        let users = [UserId::parse("ann").unwrap(), UserId::parse("bob").unwrap()];
        assert_eq!(p.online(&t1, &users).await.unwrap(), vec![true, false]);
        assert!(!p.disconnect(&conn("t1", "ann", "c1")).await.unwrap());
        assert!(p.disconnect(&conn("t1", "ann", "c2")).await.unwrap());
        assert_eq!(p.online(&t1, &users).await.unwrap(), vec![false, false]);
    }

    #[tokio::test]
    async fn memory_presence_expires_unrefreshed_connections() {
        let p = MemoryPresence::new(Duration::from_millis(30));
        p.connect(&conn("t1", "ann", "c1"), 1).await.unwrap();
        let keep = conn("t1", "bob", "c2");
        assert!(matches!(
            p.connect(&keep, 1).await,
            Err(PresenceError::QuotaExceeded(1))
        ));
        tokio::time::sleep(Duration::from_millis(60)).await;
        // The first expired: its slot is free again.
        p.connect(&keep, 1).await.unwrap();
        let t1 = TenantId::parse("t1").unwrap();
        let ann = UserId::parse("ann").unwrap();
        assert_eq!(p.online(&t1, &[ann]).await.unwrap(), vec![false]);
    }
}
