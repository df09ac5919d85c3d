//! Upstream pools: each upstream's endpoints with their live-session counts and health, and
//! the pick of one for a new session (core's [`sigmesh_core::balance`]).
//!
//! ```text
//! Runtime (one config generation) ─► Pools [route][upstream] ─► Pool ─► EndpointSet (ArcSwap)
//!                                                                        endpoints + ring + TLS
//! pick ─► Lease (sessions +1 until dropped) ─► the handshake ─► passed / failed (passive health)
//! supervise_pools (one task, reload.rs) ─► active checks ([`health`]) and DNS refreshes ([`dns`]) when due
//! ```
//!
//! An endpoint is one `Arc<Endpoint>`: a reload that keeps an upstream's endpoint (same route,
//! upstream and id) keeps its object, so its session count and health carry over, and a
//! session holds its endpoint (its lease) until it ends, whatever the generation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use sigmesh_core::balance::{self, Balance, Load, Ring};
use sigmesh_core::compiled::{Compiled, Target};
use sigmesh_core::config::HealthCheck;

use crate::upstream_tls::{Table, UpstreamTls};

pub mod dns;
pub mod engine_io;
pub mod health;

/// How long passive ejection keeps an endpoint out when there is no active check to bring it
/// back (doubled for each ejection in a row, up to [`MAX_EJECTION`]).
pub const BASE_EJECTION: Duration = Duration::from_secs(10);
/// The longest passive ejection.
pub const MAX_EJECTION: Duration = Duration::from_secs(300);
/// Consecutive failed handshakes (or mid-session resets) that eject an endpoint when the
/// upstream has no `health_check` (else its `unhealthy`).
pub const PASSIVE_FAILURES: u32 = 3;
/// Longest `last_error` kept.
const MAX_ERROR: usize = 256;

/// One endpoint of an upstream.
#[derive(Debug)]
pub struct Endpoint {
    /// Its name in `/upstreams` and metrics: the URL as configured, or `ip:port` from DNS.
    pub id: String,
    /// Where and how to make the request (path, query, Host).
    pub target: Target,
    /// The address to connect to, when not the target's host (a DNS endpoint).
    pub dial: Option<std::net::SocketAddr>,
    sessions: AtomicU64,
    healthy: AtomicBool,
    state: Mutex<HealthState>,
    /// What its gauge says: -1 not yet set, else 0 or 1 ([`sync_gauges`]).
    reported: std::sync::atomic::AtomicI8,
}

#[derive(Debug, Default)]
struct HealthState {
    fails: u32,
    passes: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
    last_error: Option<String>,
}

impl Endpoint {
    pub(crate) fn new(id: String, target: Target, dial: Option<std::net::SocketAddr>) -> Endpoint {
        Endpoint {
            id,
            target,
            dial,
            sessions: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            state: Mutex::new(HealthState::default()),
            reported: std::sync::atomic::AtomicI8::new(-1),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Its live sessions.
    pub fn sessions(&self) -> u64 {
        self.sessions.load(Ordering::Relaxed)
    }

    /// Whether it gets new sessions now (a passive ejection that has run out lets it back).
    pub fn is_healthy(&self) -> bool {
        if self.healthy.load(Ordering::Relaxed) {
            return true;
        }
        let mut st = self.state();
        match st.ejected_until {
            Some(t) if Instant::now() >= t => {
                st.ejected_until = None;
                st.fails = 0;
                self.healthy.store(true, Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    /// The last failure seen (check, handshake or reset).
    pub fn last_error(&self) -> Option<String> {
        self.state().last_error.clone()
    }

    /// A failure: `threshold` in a row make it unhealthy; `eject` bounds it in time (no active
    /// check would bring it back). Returns whether this made it unhealthy.
    fn failed(&self, why: &str, threshold: u32, eject: bool) -> bool {
        let mut st = self.state();
        st.passes = 0;
        st.fails = st.fails.saturating_add(1);
        let mut why = why.to_owned();
        if why.len() > MAX_ERROR {
            let mut cut = MAX_ERROR;
            while !why.is_char_boundary(cut) {
                cut -= 1;
            }
            why.truncate(cut);
        }
        st.last_error = Some(why);
        if st.fails < threshold || !self.healthy.load(Ordering::Relaxed) {
            return false;
        }
        self.healthy.store(false, Ordering::Relaxed);
        if eject {
            let factor = 1u32 << st.ejections.min(5);
            st.ejections = st.ejections.saturating_add(1);
            st.ejected_until = Some(Instant::now() + (BASE_EJECTION * factor).min(MAX_EJECTION));
        }
        true
    }

    /// A success: `threshold` in a row make an unhealthy one healthy. Returns whether this
    /// made it healthy.
    fn passed(&self, threshold: u32) -> bool {
        let mut st = self.state();
        st.fails = 0;
        st.passes = st.passes.saturating_add(1);
        if self.healthy.load(Ordering::Relaxed) {
            st.ejections = 0;
            return false;
        }
        if st.passes >= threshold {
            st.ejected_until = None;
            st.ejections = 0;
            self.healthy.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }
}

/// An upstream's endpoints as they are now.
pub struct EndpointSet {
    /// The endpoints, in config (or resolved, sorted) order.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// TLS of each (SNI from its URL's host or `tls.server_name`).
    tls: Vec<Option<UpstreamTls>>,
    ring: Ring,
}

impl EndpointSet {
    fn new(endpoints: Vec<Arc<Endpoint>>, tls: Vec<Option<UpstreamTls>>) -> EndpointSet {
        let ids: Vec<&str> = endpoints.iter().map(|e| e.id.as_str()).collect();
        EndpointSet {
            ring: Ring::new(&ids),
            endpoints,
            tls,
        }
    }
}

/// One upstream's pool.
pub struct Pool {
    /// The route's name.
    pub route: String,
    /// The upstream's name.
    pub upstream: String,
    /// How an endpoint is picked.
    pub balance: Balance,
    /// Its `health_check`.
    pub check: Option<HealthCheck>,
    /// Its `dns` URL.
    pub dns: Option<Target>,
    /// The TLS of its endpoints when its URL is `wss://`/`https://` (DNS endpoints use it as
    /// it is: the name is the DNS name's).
    tls: Option<UpstreamTls>,
    set: ArcSwap<EndpointSet>,
    /// When the next active check round and DNS refresh are due ([`tick`]).
    due: Mutex<(Instant, Instant)>,
    /// `balance: room`: each room with live sessions here (by its ring position) → its
    /// endpoint and how many: a room stays with its sessions whatever the load. One entry per
    /// live room, so it is bounded by the live sessions. Shared with the next generation's
    /// pool of the same upstream, so a reload keeps rooms where their sessions are.
    rooms: Arc<Mutex<Rooms>>,
    /// `POST /routes/NAME/upstreams/UP/drain`.
    pub drains: crate::drain::Drains,
    /// Whether this upstream ejects endpoints on failed handshakes: with a health check, or
    /// with more than one endpoint (one `url:` alone keeps answering 502 per attempt).
    passive: bool,
}

/// The room table: a room's ring position → its endpoint and its live sessions there.
type Rooms = HashMap<u64, (Arc<Endpoint>, u32)>;

/// A session's place on an endpoint: counted there until dropped.
pub struct Lease {
    endpoint: Arc<Endpoint>,
    tls: Option<UpstreamTls>,
    pool: Arc<Pool>,
    /// Its room's position, when it counts in the room table.
    room: Option<u64>,
}

impl Lease {
    /// The endpoint.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The endpoint, shared (to remember it, as an Engine.IO sid does).
    pub fn endpoint_arc(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// Its TLS.
    pub fn tls(&self) -> Option<&UpstreamTls> {
        self.tls.as_ref()
    }

    /// The pool it is in.
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// What the session watches for a drain of its upstream.
    pub fn drain_signal(&self) -> Arc<crate::drain::DrainSignal> {
        self.pool.drains.signal()
    }

    /// The handshake (or request) failed: passive health.
    pub fn failed(&self, why: &str) {
        self.pool.passive_failure(&self.endpoint, why);
    }

    /// The handshake (or request) went through.
    pub fn passed(&self) {
        if self.pool.passive {
            self.endpoint.state().fails = 0;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.endpoint.sessions.fetch_sub(1, Ordering::Relaxed);
        if let Some(pos) = self.room {
            let mut rooms = self.pool.rooms();
            if let Some(home) = rooms.get_mut(&pos)
                && Arc::ptr_eq(&home.0, &self.endpoint)
            {
                home.1 = home.1.saturating_sub(1);
                if home.1 == 0 {
                    rooms.remove(&pos);
                }
            }
        }
    }
}

impl Pool {
    fn rooms(&self) -> std::sync::MutexGuard<'_, Rooms> {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn threshold(&self) -> u32 {
        self.check
            .as_ref()
            .map_or(PASSIVE_FAILURES, |c| c.unhealthy)
    }

    fn passive_failure(&self, ep: &Endpoint, why: &str) {
        if self.passive && ep.failed(why, self.threshold(), self.check.is_none()) {
            tracing::warn!(route = %self.route, upstream = %self.upstream, endpoint = %ep.id, error = why, "endpoint ejected");
        }
    }

    /// Its live sessions (on every endpoint).
    pub fn sessions(&self) -> u64 {
        self.set.load().endpoints.iter().map(|e| e.sessions()).sum()
    }

    /// The endpoints now.
    pub fn endpoints(&self) -> Arc<EndpointSet> {
        self.set.load_full()
    }

    /// Picks an endpoint for a new session (`key`: the room or sticky key) and counts the
    /// session there; `None` when no endpoint is healthy.
    pub fn pick(self: &Arc<Self>, key: Option<&str>, random: u32) -> Option<Lease> {
        let set = self.set.load();
        let lease = |i: usize, room: Option<u64>| {
            let endpoint: Arc<Endpoint> = set.endpoints[i].clone();
            endpoint.sessions.fetch_add(1, Ordering::Relaxed);
            Lease {
                endpoint,
                tls: set.tls.get(i).cloned().flatten(),
                pool: self.clone(),
                room,
            }
        };
        let by_room = key.filter(|_| self.balance == Balance::Room);
        let Some(key) = by_room else {
            return self.pick_index(&set, key, random).map(|i| lease(i, None));
        };
        let pos = balance::position(key.as_bytes());
        let mut rooms = self.rooms();
        // The room's home while it has sessions there and stays healthy and in the set.
        if let Some(home) = rooms.get_mut(&pos)
            && home.0.is_healthy()
            && let Some(i) = set.endpoints.iter().position(|e| Arc::ptr_eq(e, &home.0))
        {
            home.1 += 1;
            return Some(lease(i, Some(pos)));
        }
        let i = self.pick_index(&set, Some(key), random)?;
        rooms.insert(pos, (set.endpoints[i].clone(), 1));
        Some(lease(i, Some(pos)))
    }

    /// Another endpoint than `failed`'s for a session moving off it (a reconnect): picked as
    /// a session without a key would be, `failed`'s endpoint left out.
    pub fn pick_other(self: &Arc<Self>, failed: &Lease, random: u32) -> Option<Lease> {
        let set = self.set.load();
        let loads: Vec<Load> = set
            .endpoints
            .iter()
            .map(|e| Load {
                healthy: !Arc::ptr_eq(e, &failed.endpoint) && e.is_healthy(),
                sessions: e.sessions(),
            })
            .collect();
        let balance = match self.balance {
            Balance::Room => Balance::LeastSessions,
            b => b,
        };
        let i = balance::pick(balance, &set.ring, None, &loads, random)?;
        let endpoint: Arc<Endpoint> = set.endpoints[i].clone();
        endpoint.sessions.fetch_add(1, Ordering::Relaxed);
        Some(Lease {
            endpoint,
            tls: set.tls.get(i).cloned().flatten(),
            pool: self.clone(),
            room: None,
        })
    }

    /// A lease on `ep` itself, while it is one of this pool's endpoints and healthy.
    pub fn lease_on(self: &Arc<Self>, ep: &Arc<Endpoint>) -> Option<Lease> {
        let set = self.set.load();
        let i = set.endpoints.iter().position(|e| Arc::ptr_eq(e, ep))?;
        if !ep.is_healthy() {
            return None;
        }
        ep.sessions.fetch_add(1, Ordering::Relaxed);
        Some(Lease {
            endpoint: ep.clone(),
            tls: set.tls.get(i).cloned().flatten(),
            pool: self.clone(),
            room: None,
        })
    }

    fn pick_index(&self, set: &EndpointSet, key: Option<&str>, random: u32) -> Option<usize> {
        let mut small = [Load::default(); 16];
        let mut big = Vec::new();
        let loads: &mut [Load] = if set.endpoints.len() <= small.len() {
            &mut small[..set.endpoints.len()]
        } else {
            big.resize(set.endpoints.len(), Load::default());
            &mut big
        };
        for (l, e) in loads.iter_mut().zip(&set.endpoints) {
            *l = Load {
                healthy: e.is_healthy(),
                sessions: e.sessions(),
            };
        }
        balance::pick(
            self.balance,
            &set.ring,
            key.map(str::as_bytes),
            loads,
            random,
        )
    }

    /// Replaces the endpoints (a DNS answer), keeping the objects of those that stay.
    fn resolved(&self, addrs: &[std::net::SocketAddr]) -> bool {
        let Some(template) = &self.dns else {
            return false;
        };
        let old = self.set.load();
        let ids: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        if ids.len() == old.endpoints.len()
            && ids.iter().zip(&old.endpoints).all(|(a, e)| *a == e.id)
        {
            return false;
        }
        let endpoints: Vec<Arc<Endpoint>> = ids
            .into_iter()
            .zip(addrs)
            .map(|(id, addr)| {
                old.endpoints
                    .iter()
                    .find(|e| e.id == id)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Endpoint::new(id, template.clone(), Some(*addr))))
            })
            .collect();
        let tls = vec![self.tls.clone(); endpoints.len()];
        self.set.store(Arc::new(EndpointSet::new(endpoints, tls)));
        true
    }
}

/// Every upstream's pool of a generation, `[route][upstream]`, and each `affinity:
/// engine_io` route's sids.
pub struct Pools(Vec<Vec<Arc<Pool>>>, Vec<Option<Arc<engine_io::Sids>>>);

impl Pools {
    /// The pools of `compiled`; endpoints of `previous` with the same route, upstream and id
    /// are carried over (their sessions and health).
    pub fn new(compiled: &Compiled, tls: &Table, previous: Option<&Pools>) -> Pools {
        let now = Instant::now();
        let rows = compiled.routes.iter().enumerate().map(|(ri, r)| {
            r.route
                .upstreams
                .iter()
                .enumerate()
                .map(|(ui, up)| {
                    let old = previous.and_then(|p| p.find(&r.route.name, &up.name));
                    let carry = |id: &str| {
                        old.and_then(|o| {
                            o.set.load().endpoints.iter().find(|e| e.id == id).cloned()
                        })
                    };
                    let up_tls = tls.get(ri).and_then(|row| row.get(ui)).cloned().flatten();
                    let statics = &r.endpoints[ui];
                    let ids: Vec<String> = if up.url.is_some() {
                        up.url.iter().cloned().collect()
                    } else {
                        up.pool.endpoints.clone()
                    };
                    let mut endpoints = Vec::with_capacity(statics.len());
                    let mut tlss = Vec::with_capacity(statics.len());
                    for (id, target) in ids.into_iter().zip(statics) {
                        let ep = carry(&id)
                            .filter(|e| e.target == *target)
                            .unwrap_or_else(|| Arc::new(Endpoint::new(id, target.clone(), None)));
                        tlss.push(up_tls.as_ref().map(|t| t.for_host(target.host())));
                        endpoints.push(ep);
                    }
                    let dns = r.dns[ui].clone();
                    // A DNS upstream starts from what the old generation resolved.
                    if dns.is_some()
                        && let Some(o) = old.filter(|o| o.dns == dns)
                    {
                        let set = o.set.load();
                        endpoints = set.endpoints.clone();
                        tlss = vec![up_tls.clone(); endpoints.len()];
                    }
                    let passive =
                        up.pool.health_check.is_some() || endpoints.len() > 1 || dns.is_some();
                    Arc::new(Pool {
                        route: r.route.name.clone(),
                        upstream: up.name.clone(),
                        balance: r.balance[ui],
                        check: up.pool.health_check.clone(),
                        dns,
                        tls: up_tls,
                        set: ArcSwap::from_pointee(EndpointSet::new(endpoints, tlss)),
                        due: Mutex::new((now, now)),
                        rooms: old.map_or_else(Default::default, |o| o.rooms.clone()),
                        drains: old.map_or_else(Default::default, |o| o.drains.carry()),
                        passive,
                    })
                })
                .collect()
        });
        let rows: Vec<Vec<Arc<Pool>>> = rows.collect();
        let sids = compiled
            .routes
            .iter()
            .map(|r| {
                (r.route.affinity == sigmesh_core::config::Affinity::EngineIo).then(|| {
                    previous
                        .and_then(|p| {
                            let i = p.0.iter().position(|row| {
                                row.first().is_some_and(|x| x.route == r.route.name)
                            })?;
                            p.1.get(i).cloned().flatten()
                        })
                        .unwrap_or_default()
                })
            })
            .collect();
        Pools(rows, sids)
    }

    /// Route `route`'s Engine.IO sids (`affinity: engine_io`).
    pub fn sids(&self, route: usize) -> Option<&Arc<engine_io::Sids>> {
        self.1.get(route)?.as_ref()
    }

    /// A lease on the endpoint that issued Engine.IO `sid` on route `route`, while it is in its
    /// upstream and healthy: `(upstream index, lease)`.
    pub fn pinned(&self, route: usize, sid: &str) -> Option<(usize, Lease)> {
        let (upstream, ep) = self.sids(route)?.get(sid)?;
        let lease = self.get(route, upstream)?.lease_on(&ep)?;
        Some((upstream, lease))
    }

    fn find(&self, route: &str, upstream: &str) -> Option<&Arc<Pool>> {
        self.0
            .iter()
            .flatten()
            .find(|p| p.route == route && p.upstream == upstream)
    }

    /// Upstream `upstream` of route `route`.
    pub fn get(&self, route: usize, upstream: usize) -> Option<&Arc<Pool>> {
        self.0.get(route)?.get(upstream)
    }

    /// Every pool.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.0.iter().flatten()
    }
}

/// How often [`tick`] runs.
pub const TICK: Duration = Duration::from_millis(100);
/// How often a DNS upstream is resolved again.
pub const DNS_REFRESH: Duration = Duration::from_secs(5);

/// One tick of the task that runs the active health checks and DNS refreshes of the
/// generation in force ([`crate::reload::supervise_pools`], every [`TICK`]): starts the work
/// that is due in `work` (each check bounded by its `timeout`; a pool's next round is due an
/// `interval` after this one started), and every tenth tick brings the endpoint gauges up to
/// date.
pub fn tick(
    pools: &Pools,
    metrics: &Arc<crate::metrics::Metrics>,
    work: &mut tokio::task::JoinSet<()>,
    ticks: u32,
) {
    while work.try_join_next().is_some() {}
    if ticks.is_multiple_of(10) {
        sync_gauges(pools, metrics);
    }
    let now = Instant::now();
    for pool in pools.all() {
        let (check_due, dns_due) = {
            let mut due = pool.due.lock().unwrap_or_else(|p| p.into_inner());
            let c = pool.check.as_ref().filter(|_| now >= due.0).map(|c| {
                due.0 = now + c.interval;
            });
            let d = pool.dns.as_ref().filter(|_| now >= due.1).map(|_| {
                due.1 = now + DNS_REFRESH;
            });
            (c.is_some(), d.is_some())
        };
        if check_due {
            work.spawn(health::round(pool.clone(), metrics.clone()));
        }
        if dns_due {
            work.spawn(dns::refresh(pool.clone(), metrics.clone()));
        }
    }
}

/// An endpoint's health changed: its gauge.
fn record(metrics: &crate::metrics::Metrics, pool: &Pool, ep: &Endpoint) {
    let healthy = ep.is_healthy();
    ep.reported.store(i8::from(healthy), Ordering::Relaxed);
    metrics.endpoint_healthy(&pool.route, &pool.upstream, &ep.id, healthy);
}

/// Every endpoint's gauge where it is not what the endpoint is now (new endpoints, passive
/// ejections and their end): a label set is built only on a change.
fn sync_gauges(pools: &Pools, metrics: &crate::metrics::Metrics) {
    for pool in pools.all() {
        for ep in &pool.endpoints().endpoints {
            if ep.reported.load(Ordering::Relaxed) != i8::from(ep.is_healthy()) {
                record(metrics, pool, ep);
            }
        }
    }
}

impl Pool {
    /// After a check: pass or fail, by the thresholds of `health_check`.
    fn checked(
        &self,
        ep: &Endpoint,
        result: Result<(), String>,
        metrics: &crate::metrics::Metrics,
    ) {
        let Some(c) = &self.check else { return };
        let changed = match &result {
            Ok(()) => ep.passed(c.healthy),
            Err(why) => ep.failed(why, c.unhealthy, false),
        };
        if changed {
            match &result {
                Ok(()) => {
                    tracing::info!(route = %self.route, upstream = %self.upstream, endpoint = %ep.id, "endpoint healthy")
                }
                Err(why) => {
                    tracing::warn!(route = %self.route, upstream = %self.upstream, endpoint = %ep.id, error = %why, "endpoint unhealthy")
                }
            }
        }
        record(metrics, self, ep);
    }
}

/// `GET /upstreams`: every route's upstreams with their endpoints, health and sessions.
pub fn view(pools: &Pools) -> serde_json::Value {
    let mut routes: Vec<serde_json::Value> = Vec::new();
    for row in &pools.0 {
        let Some(first) = row.first() else { continue };
        let upstreams: Vec<serde_json::Value> = row
            .iter()
            .map(|p| {
                let set = p.endpoints();
                let endpoints: Vec<serde_json::Value> = set
                    .endpoints
                    .iter()
                    .map(|e| {
                        serde_json::json!({
                            "endpoint": e.id,
                            "healthy": e.is_healthy(),
                            "sessions": e.sessions(),
                            "last_error": e.last_error(),
                        })
                    })
                    .collect();
                serde_json::json!({
                    "name": p.upstream,
                    "balance": p.balance.as_str(),
                    "health_check": p.check.is_some(),
                    "dns": p.dns.as_ref().map(|t| t.authority.clone()),
                    "healthy": set.endpoints.iter().filter(|e| e.is_healthy()).count(),
                    "endpoints": endpoints,
                })
            })
            .collect();
        routes.push(serde_json::json!({ "route": first.route, "upstreams": upstreams }));
    }
    serde_json::Value::Array(routes)
}
