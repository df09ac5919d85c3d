//! Shared state: the config generation in force ([`Runtime`]), and the process-wide parts
//! (metrics, session table, drain signal, telemetry, the TURN relay's table) behind [`Shared`].
//!
//! A config generation is core's [`Compiled`] config plus what lives beside it at run time: the
//! live weights (`PUT /routes/NAME/weights`) and the token buckets, in memory. The generation is
//! the proxy's [`BucketStore`] and [`Weights`] for core's request and session phases. A reload
//! builds a new one and swaps it in atomically; sessions hold the generation they started with,
//! so live sessions keep their upstream and buckets across reloads.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use sigmesh_core::bucket::{BucketVerdict, KeyedBuckets};
use sigmesh_core::compiled::{Capabilities, CompileError, Compiled, CompiledRoute};
use sigmesh_core::config::{Config, Rate};
use sigmesh_core::request::{
    Bucket, BucketStore, CREDENTIALS_RATE, Cap, Lease, SessionCounts, Weights,
};
use sigmesh_core::split::Splitter;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::sessions::Sessions;
use crate::telemetry::Telemetry;
use crate::turn_relay::TurnState;

/// Most buckets one keyed set holds (client IPs, header values or rooms) before idle ones are
/// evicted. 100k buckets are a few MiB.
pub const MAX_KEYS: usize = 100_000;

/// A keyed bucket set shared by the sessions of a route.
type SharedBuckets = Arc<Mutex<KeyedBuckets<String>>>;

/// What lives beside one compiled route at run time.
struct LiveRoute {
    /// Live weights: `PUT /routes/NAME/weights` swaps this.
    splitter: ArcSwap<Splitter>,
    connections: Option<SharedBuckets>,
    rooms: Option<SharedBuckets>,
}

/// A config generation: compiled once, with its live weights and buckets.
pub struct Runtime {
    compiled: Compiled,
    live: Vec<LiveRoute>,
    credentials: SharedBuckets,
    /// `admin_auth`'s token, read from its file when the generation was built.
    admin_token: Option<String>,
    /// TLS of the `wss://` and `https://` upstreams, `[route][upstream]`.
    upstream_tls: crate::upstream_tls::Table,
    /// Each upstream's endpoints, `[route][upstream]`.
    pools: crate::pool::Pools,
}

impl Runtime {
    /// Compiles `config` for this build of the proxy. Buckets of a route with the same name and
    /// the same rate in `previous` are carried over, so a reload does not hand every client a
    /// fresh burst.
    pub fn new(config: Config, previous: Option<&Runtime>) -> Result<Runtime, Vec<CompileError>> {
        let admin_token = match &config.admin_auth {
            Some(auth) => Some(read_token(&auth.token_file).map_err(|e| vec![e])?),
            None => None,
        };
        let compiled = Compiled::new(config, Capabilities::PROXY)?;
        let upstream_tls = crate::upstream_tls::table(&compiled)?;
        let pools = crate::pool::Pools::new(&compiled, &upstream_tls, previous.map(|p| &p.pools));
        let live = compiled
            .routes
            .iter()
            .map(|r| LiveRoute::new(r, previous))
            .collect();
        Ok(Runtime {
            compiled,
            live,
            credentials: previous
                .map_or_else(|| new_buckets(CREDENTIALS_RATE), |p| p.credentials.clone()),
            admin_token,
            upstream_tls,
            pools,
        })
    }

    /// Every upstream's pool of endpoints.
    pub fn pools(&self) -> &crate::pool::Pools {
        &self.pools
    }

    /// How upstream `upstream` of route `route` is dialled over TLS (`None`: plain).
    pub fn upstream_tls(
        &self,
        route: usize,
        upstream: usize,
    ) -> Option<&crate::upstream_tls::UpstreamTls> {
        self.upstream_tls.get(route)?.get(upstream)?.as_ref()
    }

    /// The admin API's bearer token (`admin_auth`), if one is required.
    pub fn admin_token(&self) -> Option<&str> {
        self.admin_token.as_deref()
    }

    /// Whether `peer` is a proxy of `trust_forwarded_from`.
    pub fn trusts(&self, peer: std::net::IpAddr) -> bool {
        sigmesh_core::config::Cidr::any_contains(&self.config().trust_forwarded_from, peer)
    }

    /// The compiled config.
    pub fn compiled(&self) -> &Compiled {
        &self.compiled
    }

    /// The config in force.
    pub fn config(&self) -> &Config {
        &self.compiled.config
    }

    /// Route `index`, compiled.
    pub fn route(&self, index: usize) -> &CompiledRoute {
        &self.compiled.routes[index]
    }

    /// Sets new weights on route `name` (upstreams not named keep theirs); the weights now in
    /// force by upstream name.
    pub fn reweight(
        &self,
        name: &str,
        requested: &std::collections::BTreeMap<String, u32>,
    ) -> Result<Vec<(String, u32)>, ReweightError> {
        let (i, _) = self
            .compiled
            .route(name)
            .ok_or_else(|| ReweightError::NoRoute(name.to_owned()))?;
        let live = &self.live[i].splitter;
        let next = live.load().reweighted(requested)?;
        let weights = next.weights();
        live.store(Arc::new(next));
        Ok(weights)
    }

    /// Starts a paced drain of `upstream` of `route` (its live sessions closed with `code`,
    /// spread over `spread`); how many sessions it will close.
    pub fn drain_upstream(
        &self,
        route: &str,
        upstream: &str,
        spread: Duration,
        code: u16,
    ) -> Result<u64, String> {
        let Some((ri, r)) = self.compiled.route(route) else {
            return Err(format!("no route named `{route}`"));
        };
        let Some(ui) = r.route.upstreams.iter().position(|u| u.name == upstream) else {
            return Err(format!("route `{route}` has no upstream `{upstream}`"));
        };
        let Some(pool) = self.pools.get(ri, ui) else {
            return Err(format!("route `{route}` has no upstream `{upstream}`"));
        };
        let reason = if code == sigmesh_core::frame::close_code::RESTART {
            "upstream restarting"
        } else {
            "upstream going away"
        };
        let sessions = pool.sessions();
        pool.drains
            .start(crate::drain::DrainPlan::new(spread, code, reason, sessions));
        tracing::info!(
            route,
            upstream,
            sessions,
            ?spread,
            code,
            "upstream drain started"
        );
        Ok(sessions)
    }

    /// The config in force, with live weights and secrets redacted (for `/config`).
    pub fn effective_config(&self) -> Config {
        let mut c = self.compiled.config.redacted();
        for (route, live) in c.routes.iter_mut().zip(&self.live) {
            for (u, (_, w)) in route
                .upstreams
                .iter_mut()
                .zip(live.splitter.load().weights())
            {
                u.weight = w;
            }
        }
        c
    }
}

/// Why new weights were refused.
#[derive(Debug, thiserror::Error)]
pub enum ReweightError {
    /// No route has that name.
    #[error("no route named `{0}`")]
    NoRoute(String),
    /// Core refused the weights.
    #[error(transparent)]
    Weights(#[from] sigmesh_core::split::ReweightError),
}

impl LiveRoute {
    fn new(r: &CompiledRoute, previous: Option<&Runtime>) -> LiveRoute {
        let old = previous.and_then(|p| {
            let (i, old) = p.compiled.route(&r.route.name)?;
            Some((&p.live[i], &old.route))
        });
        let limits = &r.route.limits;
        // A global connection bucket still has a local twin: the TURN credentials path lends
        // the route's bucket per replica (core's `credentials`).
        let connections = limits.connections.as_ref().map(|c| {
            old.and_then(
                |(live, route)| match (&live.connections, &route.limits.connections) {
                    (Some(b), Some(oc)) if oc == c => Some(b.clone()),
                    _ => None,
                },
            )
            .unwrap_or_else(|| new_buckets(c.rate))
        });
        let rooms = limits.rooms.filter(|r| !r.scope.is_global()).map(|rooms| {
            old.and_then(|(live, route)| match (&live.rooms, route.limits.rooms) {
                (Some(b), Some(or)) if or == rooms => Some(b.clone()),
                _ => None,
            })
            .unwrap_or_else(|| new_buckets(rooms.rate))
        });
        LiveRoute {
            splitter: ArcSwap::from_pointee(r.splitter.clone()),
            connections,
            rooms,
        }
    }
}

/// Reads `admin_auth.token_file`: the token is the file's text without surrounding whitespace,
/// at least 16 bytes (a guessable token is no protection).
fn read_token(path: &str) -> Result<String, CompileError> {
    let err = |message: String| CompileError {
        path: "admin_auth.token_file".into(),
        message,
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| err(format!("cannot read `{path}`: {e}")))?;
    let token = text.trim();
    if token.len() < 16 {
        return Err(err(format!(
            "the token in `{path}` is {} bytes; use at least 16 (e.g. `openssl rand -hex 32`)",
            token.len()
        )));
    }
    Ok(token.to_owned())
}

fn new_buckets(rate: Rate) -> SharedBuckets {
    Arc::new(Mutex::new(KeyedBuckets::new(rate, MAX_KEYS)))
}

impl BucketStore for Runtime {
    fn take(&self, bucket: Bucket, key: &str, _rate: &Rate, now: Duration) -> BucketVerdict {
        let set = match bucket {
            Bucket::Connections { route } => {
                self.live.get(route).and_then(|l| l.connections.as_ref())
            }
            Bucket::Rooms { route } => self.live.get(route).and_then(|l| l.rooms.as_ref()),
            Bucket::Credentials => Some(&self.credentials),
        };
        let Some(set) = set else {
            // Core asks only for buckets the config has.
            return BucketVerdict::Allow { remaining: 0 };
        };
        // A panic while holding the lock cannot leave a bucket set inconsistent in a way that
        // matters more than refusing service would: keep going with the data as it is.
        let mut set = set.lock().unwrap_or_else(|p| p.into_inner());
        set.try_take(key, now)
    }
}

/// The buckets a session takes from: its generation's, and `cluster.redis` for a route whose
/// room bucket is `scope: global`.
pub struct SessionBuckets<'a> {
    pub runtime: &'a Runtime,
    pub cluster: Option<&'a Arc<crate::cluster::Cluster>>,
}

impl BucketStore for SessionBuckets<'_> {
    fn take(&self, bucket: Bucket, key: &str, rate: &Rate, now: Duration) -> BucketVerdict {
        if let Bucket::Rooms { route } = bucket
            && let Some(r) = self.runtime.compiled.routes.get(route)
            && r.route.limits.rooms.is_some_and(|l| l.scope.is_global())
        {
            return match self.cluster {
                Some(c) => c.take_room(&r.route.name, key, rate, now),
                // The config in force lost its `cluster:` while this session lives: the
                // session's generation still says global, and there is no store to ask.
                None => match self.runtime.config().cluster.as_ref().map(|c| c.on_error) {
                    Some(sigmesh_core::config::OnClusterError::Deny) => BucketVerdict::Limited {
                        retry_after: Duration::from_secs(1),
                    },
                    _ => BucketVerdict::Allow { remaining: 0 },
                },
            };
        }
        self.runtime.take(bucket, key, rate, now)
    }
}

impl Weights for Runtime {
    fn with_splitter(&self, route: usize, f: &mut dyn FnMut(&Splitter)) {
        if let Some(live) = self.live.get(route) {
            f(&live.splitter.load());
        }
    }
}

/// Live-session counts (`limits.max_sessions`, `max_sessions_per_ip`, `routes[].limits.sessions`)
/// for the whole process, across reloads. An entry exists only while a session holds a place,
/// so the table is bounded by the live sessions.
#[derive(Default)]
pub struct SessionCounter {
    taken: Mutex<std::collections::HashMap<(Cap, String), u32>>,
}

impl SessionCounts for SessionCounter {
    fn acquire(&self, cap: &Cap, key: &str, max: u32) -> bool {
        let mut t = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        let n = t.entry((cap.clone(), key.to_owned())).or_insert(0);
        if *n >= max {
            if *n == 0 {
                t.remove(&(cap.clone(), key.to_owned()));
            }
            return false;
        }
        *n += 1;
        true
    }

    fn release(&self, cap: &Cap, key: &str) {
        let mut t = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        let k = (cap.clone(), key.to_owned());
        if let Some(n) = t.get_mut(&k) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                t.remove(&k);
            }
        }
    }
}

/// The places a session holds in the counts; given back on drop (the session ended, or its
/// upstream handshake failed).
pub struct Places {
    counter: Arc<SessionCounter>,
    leases: Vec<Lease>,
    /// Its place in a `scope: global` session count (given back when dropped).
    pub global: Option<crate::cluster::GlobalLease>,
    /// Its place on the upstream endpoint, once connected.
    pub endpoint: Option<crate::pool::Lease>,
}

impl Places {
    pub fn new(counter: Arc<SessionCounter>, leases: Vec<Lease>) -> Places {
        Places {
            counter,
            leases,
            global: None,
            endpoint: None,
        }
    }
}

impl Drop for Places {
    fn drop(&mut self) {
        for l in &self.leases {
            self.counter.release(&l.cap, &l.key);
        }
    }
}

/// Timeouts that are not part of the config file (defaults suit production; tests shorten them).
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// A client must send its whole request head within this (slow-loris bound).
    pub header_read_timeout: Duration,
    /// Upstream TCP connect plus WebSocket handshake must finish within this.
    pub upstream_handshake_timeout: Duration,
    /// With `sticky: message:`, the client's first message must arrive within this.
    pub first_message_timeout: Duration,
    /// After one leg of a session closed, the other gets this long to finish.
    pub close_grace: Duration,
    /// A TLS handshake on `listen` must finish within this.
    pub tls_handshake_timeout: Duration,
    /// A session leg that takes no byte of what is waiting for it for this long (a peer that
    /// stopped reading) has failed: the session ends (nginx's `send_timeout`).
    pub write_timeout: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            header_read_timeout: Duration::from_secs(10),
            upstream_handshake_timeout: Duration::from_secs(10),
            first_message_timeout: Duration::from_secs(10),
            close_grace: Duration::from_secs(5),
            write_timeout: Duration::from_secs(30),
            tls_handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Process-wide state shared by listeners, sessions and the admin API.
pub struct Shared {
    tuning: Tuning,
    runtime: ArcSwap<Runtime>,
    metrics: Arc<Metrics>,
    sessions: Arc<Sessions>,
    /// Cancelled on SIGTERM/SIGINT: listeners stop accepting, sessions close with 1001.
    drain: CancellationToken,
    draining: AtomicBool,
    /// The shutdown's plan, made when the drain starts.
    shutdown_plan: std::sync::OnceLock<Arc<crate::drain::DrainPlan>>,
    /// The file the config came from, for reloads (none for `demo`).
    config_path: Option<PathBuf>,
    /// Spans and their export (off without `tracing:`); built once at start.
    telemetry: Telemetry,
    /// The TURN relay's tracker and allocation table (empty while `turn.relay` is off).
    turn: Arc<TurnState>,
    /// Live-session counts.
    counts: Arc<SessionCounter>,
    /// TLS on `listen`, when `tls:` is set (installed once at start).
    tls: std::sync::OnceLock<Arc<crate::tls::TlsState>>,
    /// `cluster.redis`, while the config in force has one (rebuilt when it changes).
    cluster: arc_swap::ArcSwapOption<crate::cluster::Cluster>,
    /// The routes' rollouts.
    rollouts: crate::rollout::Rollouts,
}

impl Shared {
    pub fn new(runtime: Runtime, config_path: Option<PathBuf>, tuning: Tuning) -> Arc<Shared> {
        let metrics = Metrics::new();
        let telemetry = Telemetry::start(runtime.config().tracing.as_ref(), &metrics.trace);
        let turn = Arc::new(TurnState::new(metrics.turn.clone()));
        let cluster = runtime
            .config()
            .cluster
            .as_ref()
            .map(|c| crate::cluster::Cluster::start(c, metrics.clone()));
        let shared = Arc::new(Shared {
            tuning,
            runtime: ArcSwap::from_pointee(runtime),
            metrics,
            sessions: Arc::new(Sessions::default()),
            drain: CancellationToken::new(),
            draining: AtomicBool::new(false),
            shutdown_plan: std::sync::OnceLock::new(),
            config_path,
            telemetry,
            turn,
            counts: Arc::default(),
            tls: std::sync::OnceLock::new(),
            cluster: arc_swap::ArcSwapOption::new(cluster),
            rollouts: crate::rollout::Rollouts::default(),
        });
        shared.rollouts.sync(shared.runtime().config());
        shared
    }

    /// TLS on `listen`, if configured.
    pub fn tls(&self) -> Option<&Arc<crate::tls::TlsState>> {
        self.tls.get()
    }

    /// Installs the listener's TLS (once, at start).
    pub fn set_tls(&self, tls: Arc<crate::tls::TlsState>) {
        let _ = self.tls.set(tls);
    }

    /// The live-session counts.
    pub fn counts(&self) -> &Arc<SessionCounter> {
        &self.counts
    }

    /// The config generation in force.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Puts a new config generation in force (new connections use it). A changed `cluster:`
    /// gets a new client; sessions keep the one their places were taken in.
    pub fn replace_runtime(&self, runtime: Runtime) {
        let wanted = runtime.config().cluster.as_ref();
        let current = self.cluster.load_full();
        if current.as_ref().map(|c| c.config()) != wanted {
            self.cluster
                .store(wanted.map(|c| crate::cluster::Cluster::start(c, self.metrics.clone())));
        }
        let runtime = Arc::new(runtime);
        self.runtime.store(runtime.clone());
        self.rollouts.sync(runtime.config());
        // The rollouts' weights, not the file's, on the new generation.
        for (route, weights) in self.rollouts.weights() {
            if let Err(e) = runtime.reweight(&route, &weights) {
                tracing::warn!(route, error = %e, "rollout weights refused");
            }
        }
    }

    /// The routes' rollouts.
    pub fn rollouts(&self) -> &crate::rollout::Rollouts {
        &self.rollouts
    }

    /// `cluster.redis`, if the config in force has one.
    pub fn cluster(&self) -> Option<Arc<crate::cluster::Cluster>> {
        self.cluster.load_full()
    }

    pub fn tuning(&self) -> &Tuning {
        &self.tuning
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    pub fn telemetry(&self) -> &Telemetry {
        &self.telemetry
    }

    pub fn turn(&self) -> &Arc<TurnState> {
        &self.turn
    }

    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }

    /// A token cancelled when the drain starts.
    pub fn drain_token(&self) -> CancellationToken {
        self.drain.clone()
    }

    /// The shutdown's plan, once the drain started.
    pub fn shutdown_plan(&self) -> Option<&Arc<crate::drain::DrainPlan>> {
        self.shutdown_plan.get()
    }

    /// Resolves when the drain starts.
    pub async fn drained(&self) {
        self.drain.cancelled().await
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Starts the drain: readiness turns 503, listeners stop, sessions close with 1001.
    pub fn start_drain(&self) {
        let runtime = self.runtime();
        let s = &runtime.config().shutdown;
        let reason = if s.close_code == sigmesh_core::frame::close_code::RESTART {
            "server restarting"
        } else {
            "server shutting down"
        };
        let total = self.sessions().len() as u64;
        let _ = self.shutdown_plan.set(crate::drain::DrainPlan::new(
            s.spread,
            s.close_code,
            reason,
            total,
        ));
        self.draining.store(true, Ordering::Release);
        self.drain.cancel();
    }
}
