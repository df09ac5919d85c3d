//! Shared state: the config generation in force, its compiled policy, and process-wide parts
//! (metrics, session table, drain signal).
//!
//! A config generation ([`Runtime`]) is immutable but for the live weights; a reload builds a
//! new one and swaps it in atomically. Sessions hold the `Arc<RouteRuntime>` they started with,
//! so live sessions keep their upstream across reloads.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use sigmesh_core::bucket::{KeyedBuckets, Verdict};
use sigmesh_core::config::{Config, LimitKey, Rate, Route};
use sigmesh_core::route::RouteTable;
use sigmesh_core::split::Splitter;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::sessions::Sessions;

/// Most buckets one keyed set holds (client IPs, header values or rooms) before idle ones are
/// evicted. 100k buckets are a few MiB.
pub const MAX_KEYS: usize = 100_000;

/// Monotonic time since the process started: the `now` every core call gets.
pub fn now() -> Duration {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

/// A keyed bucket set shared by the sessions of a route.
pub type SharedBuckets = Arc<Mutex<KeyedBuckets<String>>>;

/// One route of a config generation, compiled.
pub struct RouteRuntime {
    pub route: Route,
    /// Live weights: `PUT /routes/NAME/weights` swaps this.
    pub splitter: ArcSwap<Splitter>,
    pub connections: Option<(SharedBuckets, LimitKey)>,
    pub rooms: Option<SharedBuckets>,
}

/// A config generation.
pub struct Runtime {
    pub config: Config,
    pub table: RouteTable,
    pub routes: Vec<Arc<RouteRuntime>>,
}

impl Runtime {
    /// Compiles `config`. Buckets of a route with the same name and the same rate in `previous`
    /// are carried over, so a reload does not hand every client a fresh burst.
    pub fn new(config: Config, previous: Option<&Runtime>) -> Result<Runtime, String> {
        let table = RouteTable::new(&config.routes);
        let mut routes = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            let old = previous.and_then(|p| p.route(&route.name));
            let splitter =
                Splitter::new(route.upstreams.iter().map(|u| (u.name.as_str(), u.weight)))
                    .map_err(|e| format!("route {}: {e}", route.name))?;
            let connections = route.limits.connections.as_ref().map(|c| {
                let reuse = old.and_then(|o| match (&o.connections, &o.route.limits.connections) {
                    (Some((b, _)), Some(oc)) if oc == c => Some(b.clone()),
                    _ => None,
                });
                (reuse.unwrap_or_else(|| new_buckets(c.rate)), c.key.clone())
            });
            let rooms = route.limits.rooms.map(|r| {
                old.and_then(|o| match (&o.rooms, o.route.limits.rooms) {
                    (Some(b), Some(or)) if or == r => Some(b.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| new_buckets(r))
            });
            routes.push(Arc::new(RouteRuntime {
                route: route.clone(),
                splitter: ArcSwap::from_pointee(splitter),
                connections,
                rooms,
            }));
        }
        Ok(Runtime {
            config,
            table,
            routes,
        })
    }

    pub fn route(&self, name: &str) -> Option<&Arc<RouteRuntime>> {
        self.routes.iter().find(|r| r.route.name == name)
    }

    /// The config in force, with live weights and secrets redacted (for `/config`).
    pub fn effective_config(&self) -> Config {
        let mut c = self.config.redacted();
        for (route, rt) in c.routes.iter_mut().zip(&self.routes) {
            let live = rt.splitter.load();
            for (u, (_, w)) in route.upstreams.iter_mut().zip(live.weights()) {
                u.weight = w;
            }
        }
        c
    }
}

fn new_buckets(rate: Rate) -> SharedBuckets {
    Arc::new(Mutex::new(KeyedBuckets::new(rate, MAX_KEYS)))
}

/// Takes a token from `key`'s bucket in a shared set.
pub fn take(buckets: &SharedBuckets, key: &str) -> Verdict {
    match buckets.lock() {
        Ok(mut b) => b.try_take(key, now()),
        // A panic while holding the lock cannot leave a bucket set inconsistent in a way that
        // matters more than refusing service would: keep going with the data as it is.
        Err(poisoned) => poisoned.into_inner().try_take(key, now()),
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
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            header_read_timeout: Duration::from_secs(10),
            upstream_handshake_timeout: Duration::from_secs(10),
            first_message_timeout: Duration::from_secs(10),
            close_grace: Duration::from_secs(5),
        }
    }
}

/// Process-wide state shared by listeners, sessions and the admin API.
pub struct Shared {
    pub tuning: Tuning,
    pub runtime: ArcSwap<Runtime>,
    pub metrics: Arc<Metrics>,
    pub sessions: Arc<Sessions>,
    /// Cancelled on SIGTERM/SIGINT: listeners stop accepting, sessions close with 1001.
    pub drain: CancellationToken,
    pub draining: AtomicBool,
    /// The file the config came from, for reloads (none for `demo`).
    pub config_path: Option<PathBuf>,
    /// Spans and their export (off without `tracing:`); built once at start.
    pub telemetry: crate::telemetry::Telemetry,
    /// The TURN relay's tracker and allocation table (empty while `turn.relay` is off).
    pub turn: Arc<crate::turn_relay::TurnState>,
}

impl Shared {
    pub fn new(runtime: Runtime, config_path: Option<PathBuf>, tuning: Tuning) -> Arc<Shared> {
        let metrics = Metrics::new();
        let telemetry =
            crate::telemetry::Telemetry::start(runtime.config.tracing.as_ref(), &metrics.trace);
        Arc::new(Shared {
            tuning,
            runtime: ArcSwap::from_pointee(runtime),
            metrics,
            sessions: Arc::new(Sessions::default()),
            drain: CancellationToken::new(),
            draining: AtomicBool::new(false),
            config_path,
            telemetry,
            turn: Arc::default(),
        })
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Starts the drain: readiness turns 503, listeners stop, sessions close with 1001.
    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::Release);
        self.drain.cancel();
    }
}
