//! `cluster.redis`: the store replicas share for `scope: global` limits.
//!
//! ```text
//! handshake ─► core decide ─► Verdict { global: bucket? place? } ─► Cluster::admit
//!                 one EVALSHA of core's ADMIT_LUA (bucket math + session places, atomic)
//!                 ─► core Global::judge ─► 429 / 503 / through (with a GlobalLease)
//! message   ─► core Session ─► room bucket (scope: global) ─► rooms::RoomLeases (local, no
//!                 wait) ─► batches of tokens leased from Redis in the background
//! ```
//!
//! Every call to Redis has `cluster.timeout` (a `tokio::time::timeout` around it, and the
//! client's own response timeout), goes through the [`breaker::Breaker`], and when it fails
//! the decision is `cluster.on_error`'s, counted in `sigmesh_cluster_errors_total{op}`.
//!
//! **Session places** are members of a sorted set per key (`{prefix}s:{route}:{key}`), scored
//! by their expiry: `cluster.lease` after the last refresh. A replica refreshes the places of
//! its live sessions every third of the lease; a replica that dies stops refreshing, and its
//! places are gone from every count a lease later (the script drops expired members before it
//! counts).

pub mod breaker;
pub mod rooms;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use sigmesh_core::bucket::global::{ADMIT_LUA, per_us};
use sigmesh_core::config::{Cluster as ClusterConfig, OnClusterError, Rate};
use sigmesh_core::request::{Admission, Global};

use crate::clock;
use crate::metrics::{Metrics, OpLabel};
use breaker::{Breaker, Gate};

/// Refreshes the places of live sessions, `{prefix}s:…` sorted sets, with Redis' clock.
const REFRESH_LUA: &str = r"
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, string.format('%.0f', now_ms + lease), ARGV[i + 1])
  redis.call('PEXPIRE', key, string.format('%.0f', lease))
end
return #KEYS
";

/// Most places refreshed by one call.
const REFRESH_BATCH: usize = 500;

/// What a failed call was for: the `op` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A global connection bucket (a handshake or plain request).
    Connections,
    /// A global session count (a handshake).
    Sessions,
    /// A global room bucket's lease of tokens.
    Rooms,
    /// Refreshing the places of live sessions.
    Refresh,
    /// Giving a place back.
    Release,
    /// Sharing a rollout's abort.
    Rollout,
}

impl Op {
    fn label(self) -> &'static str {
        match self {
            Op::Connections => "connections",
            Op::Sessions => "sessions",
            Op::Rooms => "rooms",
            Op::Refresh => "refresh",
            Op::Release => "release",
            Op::Rollout => "rollout",
        }
    }
}

/// The shared store, one per process (rebuilt when `cluster:` changes on a reload).
pub struct Cluster {
    config: ClusterConfig,
    /// `None` when the URL could not be turned into a client (every call fails).
    conn: Option<ConnectionManager>,
    admit: redis::Script,
    refresh: redis::Script,
    breaker: Breaker,
    metrics: Arc<Metrics>,
    /// This replica's id in place members (random per process).
    replica: String,
    seq: AtomicU64,
    /// Live places of this replica: member → key.
    live: Mutex<HashMap<String, String>>,
    /// Tokens leased for global room buckets.
    pub(crate) rooms: rooms::RoomLeases,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("redis", &self.config.redis)
            .field("replica", &self.replica)
            .finish()
    }
}

impl Cluster {
    /// A client for `config` (no connection yet: the first call connects) and the task that
    /// refreshes its places, which ends when the cluster is dropped. Needs a tokio runtime.
    pub fn start(config: &ClusterConfig, metrics: Arc<Metrics>) -> Arc<Cluster> {
        let conn = redis::Client::open(config.redis.as_str())
            .and_then(|client| {
                let cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(config.timeout.max(Duration::from_millis(200))))
                    .set_response_timeout(Some(config.timeout))
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_secs(2))
                    .set_number_of_retries(2);
                ConnectionManager::new_lazy_with_config(client, cfg)
            })
            .map_err(|e| tracing::error!(error = %e, "cluster.redis: cannot make a client; every cluster decision takes `on_error`"))
            .ok();
        let cluster = Arc::new(Cluster {
            config: config.clone(),
            conn,
            admit: redis::Script::new(ADMIT_LUA),
            refresh: redis::Script::new(REFRESH_LUA),
            breaker: Breaker::default(),
            metrics,
            replica: format!("{:016x}", rand::random::<u64>()),
            seq: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
            rooms: rooms::RoomLeases::default(),
        });
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(refresher(Arc::downgrade(&cluster), config.lease / 3));
            }
            Err(_) => tracing::warn!("cluster.redis: no runtime; places will not be refreshed"),
        }
        cluster
    }

    /// The config it was built from.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// `cluster.on_error`.
    pub fn on_error(&self) -> OnClusterError {
        self.config.on_error
    }

    /// Counts a decision made without Redis.
    pub fn count_error(&self, op: Op) {
        self.metrics
            .cluster_errors
            .get_or_create(&OpLabel { op: op.label() })
            .inc();
    }

    /// Runs `f` on the connection within `cluster.timeout`, through the breaker.
    async fn call<T, F>(&self, op: Op, f: F) -> Option<T>
    where
        F: AsyncFnOnce(&mut ConnectionManager) -> redis::RedisResult<T>,
    {
        let now = clock::now();
        if self.breaker.gate(now) == Gate::Open {
            self.count_error(op);
            return None;
        }
        let Some(conn) = self.conn.as_ref() else {
            self.failed(op, now);
            return None;
        };
        let mut conn = conn.clone();
        match tokio::time::timeout(self.config.timeout, f(&mut conn)).await {
            Ok(Ok(v)) => {
                self.breaker.success();
                self.metrics.cluster_breaker_open.set(0);
                Some(v)
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, op = op.label(), "cluster.redis call failed");
                self.failed(op, now);
                None
            }
            Err(_) => {
                tracing::debug!(op = op.label(), "cluster.redis call timed out");
                self.failed(op, now);
                None
            }
        }
    }

    fn failed(&self, op: Op, now: Duration) {
        self.count_error(op);
        self.breaker.failure(now);
        if !self.breaker.is_closed() {
            self.metrics.cluster_breaker_open.set(1);
        }
    }

    fn key(&self, kind: &str, route: &str, key: &str) -> String {
        let mut k = String::with_capacity(
            self.config.key_prefix.len() + kind.len() + route.len() + key.len() + 2,
        );
        k.push_str(&self.config.key_prefix);
        k.push_str(kind);
        k.push(':');
        k.push_str(route);
        k.push(':');
        k.push_str(key);
        k
    }

    /// Asks Redis for what `global` needs on route `route`, in one script call: the answer for
    /// core's [`Global::judge`], and the place taken (given back when the lease is dropped).
    /// With Redis failing and `on_error: allow`, a wanted place is still held locally, so the
    /// refresher puts it into the count once Redis answers again.
    pub async fn admit(
        self: &Arc<Self>,
        route: &str,
        global: &Global,
    ) -> (Admission, Option<GlobalLease>) {
        let op = if global.bucket.is_some() {
            Op::Connections
        } else {
            Op::Sessions
        };
        let place_key = global.place.as_ref().map(|p| self.key("s", route, &p.key));
        let member = place_key.as_ref().map(|_| {
            format!(
                "{}:{}",
                self.replica,
                self.seq.fetch_add(1, Ordering::Relaxed)
            )
        });
        let mut inv = self.admit.prepare_invoke();
        inv.arg("");
        match &global.bucket {
            Some(b) => {
                inv.key(self.key("c", route, &b.key));
                inv.arg(1);
                bucket_args(&mut inv, &b.rate, 1);
            }
            None => {
                inv.arg(0);
            }
        }
        inv.arg(ms(self.config.lease));
        inv.arg(member.as_deref().unwrap_or(""));
        if let (Some(k), Some(p)) = (&place_key, &global.place) {
            inv.key(k);
            inv.arg(p.max);
        }
        let answer: Option<Vec<i64>> = self.call(op, async |c| inv.invoke_async(c).await).await;
        let lease = |cluster: &Arc<Self>| match (place_key, member) {
            (Some(key), Some(member)) => Some(GlobalLease::new(cluster.clone(), key, member)),
            _ => None,
        };
        let Some(v) = answer else {
            let keep = self.config.on_error == OnClusterError::Allow;
            return (Admission::Failed, if keep { lease(self) } else { None });
        };
        if global.bucket.is_some() && v.first().is_some_and(|&g| g == 0) {
            let retry = v.get(2).copied().unwrap_or(1_000_000).max(0) as u64;
            return (
                Admission::Limited {
                    retry_after: Duration::from_micros(retry),
                },
                None,
            );
        }
        if v.last().is_some_and(|&full| full != 0) {
            return (Admission::Full, None);
        }
        (Admission::Admitted, lease(self))
    }

    /// Takes up to `n` tokens from the global bucket `key` of route `route` (a room bucket's
    /// lease): the tokens granted and the retry-after when none was, or `None` when Redis did
    /// not answer.
    pub async fn lease_tokens(
        &self,
        route: &str,
        key: &str,
        rate: &Rate,
        n: u64,
    ) -> Option<(u64, Duration)> {
        let mut inv = self.admit.prepare_invoke();
        inv.key(self.key("r", route, key));
        inv.arg("").arg(1);
        bucket_args(&mut inv, rate, n);
        inv.arg(0).arg("");
        let v: Vec<i64> = self
            .call(Op::Rooms, async |c| inv.invoke_async(c).await)
            .await?;
        let granted = v.first().copied().unwrap_or(0).max(0) as u64;
        let retry = v.get(2).copied().unwrap_or(0).max(0) as u64;
        Some((granted, Duration::from_micros(retry)))
    }

    /// Publishes that the rollout `fingerprint` of `route` was aborted, for `reason`, so the
    /// other replicas abort too (kept a day).
    pub async fn publish_abort(&self, route: &str, fingerprint: &str, reason: &str) -> bool {
        let key = self.key("rollout", route, fingerprint);
        let r: Option<()> = self
            .call(Op::Rollout, async |c| {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(reason)
                    .arg("NX")
                    .arg("EX")
                    .arg(86_400)
                    .query_async(c)
                    .await
            })
            .await;
        r.is_some()
    }

    /// The reason another replica aborted the rollout `fingerprint` of `route`, if one did.
    pub async fn abort_of(&self, route: &str, fingerprint: &str) -> Option<String> {
        let key = self.key("rollout", route, fingerprint);
        self.call(Op::Rollout, async |c| {
            redis::cmd("GET")
                .arg(&key)
                .query_async::<Option<String>>(c)
                .await
        })
        .await
        .flatten()
    }

    /// Live global places of this replica.
    pub fn live_places(&self) -> usize {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    async fn refresh_all(&self) {
        let places: Vec<(String, String)> = {
            let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            live.iter().map(|(m, k)| (k.clone(), m.clone())).collect()
        };
        for chunk in places.chunks(REFRESH_BATCH) {
            let mut inv = self.refresh.prepare_invoke();
            inv.arg(ms(self.config.lease));
            for (key, member) in chunk {
                inv.key(key);
                inv.arg(member);
            }
            let done: Option<i64> = self
                .call(Op::Refresh, async |c| inv.invoke_async(c).await)
                .await;
            if done.is_none() {
                return;
            }
        }
    }

    fn release(self: &Arc<Self>, key: String, member: String) {
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&member);
        let cluster = self.clone();
        // Ends within `cluster.timeout`; a place it fails to remove expires with its lease.
        tokio::spawn(async move {
            let _: Option<i64> = cluster
                .call(Op::Release, async |c| {
                    redis::cmd("ZREM")
                        .arg(&key)
                        .arg(&member)
                        .query_async(c)
                        .await
                })
                .await;
        });
    }
}

fn bucket_args(inv: &mut redis::ScriptInvocation<'_>, rate: &Rate, n: u64) {
    inv.arg(rate.rate)
        .arg(u64::try_from(per_us(rate)).unwrap_or(u64::MAX))
        .arg(rate.burst)
        .arg(n);
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Refreshes the live places every `every` until the cluster is gone.
async fn refresher(cluster: Weak<Cluster>, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(c) = cluster.upgrade() else {
            return;
        };
        c.refresh_all().await;
    }
}

/// A session's place in a global count; given back when dropped (and refreshed until then).
pub struct GlobalLease {
    cluster: Arc<Cluster>,
    key: String,
    member: String,
}

impl GlobalLease {
    fn new(cluster: Arc<Cluster>, key: String, member: String) -> GlobalLease {
        cluster
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(member.clone(), key.clone());
        GlobalLease {
            cluster,
            key,
            member,
        }
    }
}

impl Drop for GlobalLease {
    fn drop(&mut self) {
        self.cluster.release(
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.member),
        );
    }
}
