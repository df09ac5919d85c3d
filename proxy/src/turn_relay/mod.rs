//! The TURN relay (`turn.relay`): sigmesh on the path between TURN clients and a TURN server.
//!
//! Every message goes through [`sigmesh_core::turn::Tracker`], which decides (forward, answer
//! with an error response, drop) and keeps the allocation table; this module only moves bytes:
//! - [`udp`]: one listen socket; one upstream socket per client 5-tuple, so the TURN server sees
//!   distinct clients (and its allocations stay per client);
//! - [`tcp`]: one upstream connection per client connection, both directions cut into frames by
//!   [`sigmesh_core::turn::Framer`].
//!
//! Flows idle for [`FLOW_IDLE`] without a live allocation are closed; every task is owned by
//! the relay's task (a `JoinSet`) and ends when the proxy drains.

pub mod tcp;
pub mod udp;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use sigmesh_core::config::TurnRelay;
use sigmesh_core::turn::{FiveTuple, Limits, PeerPolicy, Tracker, TurnAction, TurnOutcome};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::clock::now;
use crate::metrics::{DirectionLabel, KindLabel, TurnMessageLabels, TurnMetrics};
use crate::sessions::Sessions;

/// A flow (UDP 5-tuple or TCP connection) with no traffic for this long and no live allocation
/// is closed.
pub const FLOW_IDLE: Duration = Duration::from_secs(60);
/// Most concurrent UDP flows; packets from further clients are dropped and counted.
pub const MAX_FLOWS: usize = 10_000;
/// Most concurrent UDP flows from one client IP (one NAT may hide many clients).
pub const MAX_FLOWS_PER_IP: usize = 100;
/// Most concurrent TCP connections; further ones are closed at once.
pub const MAX_CONNECTIONS: usize = 10_000;
/// Largest datagram read.
pub const MAX_DATAGRAM: usize = 65_536;
/// How often allocations are expired.
pub const EXPIRY_TICK: Duration = Duration::from_secs(1);
/// Connecting to the TURN server over TCP must finish within this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

// === shared state ===

/// The relay's state, shared with the admin API (`GET /turn/allocations`).
pub struct TurnState {
    tracker: Mutex<Option<Tracker>>,
    metrics: TurnMetrics,
    /// The bound address (UDP and TCP share the port).
    pub addr: OnceLock<SocketAddr>,
}

/// Which way a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Client to TURN server.
    FromClient,
    /// TURN server to client.
    FromServer,
}

impl TurnState {
    /// The relay's state, recording into `metrics`; no tracker until [`serve`] installs one.
    pub fn new(metrics: TurnMetrics) -> TurnState {
        TurnState {
            tracker: Mutex::new(None),
            metrics,
            addr: OnceLock::new(),
        }
    }

    /// Runs `f` on the tracker (none while the relay is off).
    pub fn with<R>(&self, f: impl FnOnce(&mut Tracker) -> R) -> Option<R> {
        let mut g = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        g.as_mut().map(f)
    }

    /// Whether the relay runs.
    pub fn enabled(&self) -> bool {
        self.with(|_| ()).is_some()
    }

    /// Passes one message through the tracker and records it in the metrics.
    pub fn handle(&self, dir: Dir, ft: FiveTuple, bytes: &[u8]) -> TurnOutcome {
        let t = now();
        let out = self
            .with(|tr| {
                let out = match dir {
                    Dir::FromClient => tr.from_client(ft, bytes, t),
                    Dir::FromServer => tr.from_server(ft, bytes, t),
                };
                self.metrics.allocations_active.set(tr.table().len() as i64);
                out
            })
            .unwrap_or(TurnOutcome {
                action: TurnAction::Forward,
                kind: sigmesh_core::turn::TurnKind::Unknown,
                understood: false,
                relayed: 0,
                denied: None,
                raw_after: false,
            });
        let m = &self.metrics;
        if out.relayed > 0 {
            let direction = match dir {
                Dir::FromClient => "in",
                Dir::FromServer => "out",
            };
            m.relayed_bytes
                .get_or_create(&DirectionLabel { direction })
                .inc_by(out.relayed);
        }
        let action = match out.action {
            TurnAction::Forward => "forwarded",
            TurnAction::Reply(_) => "refused",
            TurnAction::Drop => "dropped",
        };
        m.messages
            .get_or_create(&TurnMessageLabels {
                kind: KindLabel(out.kind.as_str()),
                action,
            })
            .inc();
        if let Some(peer) = out.denied {
            tracing::info!(client = %ft.client, transport = ft.transport.as_str(), %peer, kind = out.kind.as_str(), "TURN peer denied");
        }
        out
    }

    /// A reload: the new relay section's peer policy applies to later requests at once (a
    /// tightened deny list must not wait for a restart); a new `listen` or `upstream` only on
    /// restart, which is logged.
    pub fn reconfigure(&self, old: Option<&TurnRelay>, new: Option<&TurnRelay>) {
        if old == new {
            return;
        }
        match (old, new) {
            (Some(o), Some(n)) => {
                if o.listen != n.listen || o.upstream != n.upstream {
                    tracing::warn!("turn.relay.listen and .upstream change only on restart");
                }
                let policy = PeerPolicy::with_exceptions(n.deny_peers.as_deref(), &n.allow_peers);
                let quota = n.quota.allocations_per_user;
                self.with(|tr| {
                    tr.set_policy(policy);
                    tr.set_quota(quota);
                });
                tracing::info!("TURN relay peer policy and quota reloaded");
            }
            _ => tracing::warn!("turn.relay is started or stopped only on restart"),
        }
    }

    /// Whether `ft` has a live allocation.
    pub fn has_allocation(&self, ft: &FiveTuple) -> bool {
        self.with(|tr| tr.table().get(ft).is_some())
            .unwrap_or(false)
    }

    /// A TCP connection ended: its allocation ends too.
    pub fn closed(&self, ft: &FiveTuple) {
        self.with(|tr| {
            tr.closed(ft);
            self.metrics.allocations_active.set(tr.table().len() as i64);
        });
    }

    /// `GET /turn/allocations`.
    pub fn view(&self, sessions: &Sessions) -> Vec<AllocationView> {
        let t = now();
        let wall = SystemTime::now();
        let at = |d: Duration| {
            let ago = t.saturating_sub(d);
            humantime::format_rfc3339_millis(wall.checked_sub(ago).unwrap_or(wall)).to_string()
        };
        let sessions = sessions.all();
        self.with(|tr| {
            tr.table()
                .all()
                .into_iter()
                .map(|a| AllocationView {
                    transport: a.five_tuple.transport.as_str(),
                    client: a.five_tuple.client.to_string(),
                    server: a.five_tuple.server.to_string(),
                    username: a.username.clone(),
                    user: a.user.clone(),
                    sigmesh_credential: a.sigmesh_credential,
                    sessions: a
                        .user
                        .as_deref()
                        .map(|u| {
                            sessions
                                .iter()
                                .filter(|s| s.peer.get().map(String::as_str) == Some(u))
                                .map(|s| s.id)
                                .collect()
                        })
                        .unwrap_or_default(),
                    relayed: a.relayed.iter().map(ToString::to_string).collect(),
                    mapped: a.mapped.map(|m| m.to_string()),
                    peers: a.peers(t).iter().map(ToString::to_string).collect(),
                    channels: a
                        .channels
                        .iter()
                        .map(|(n, p)| (format!("0x{n:04x}"), p.to_string()))
                        .collect(),
                    lifetime: a.lifetime,
                    expires_in: a.expires_at.saturating_sub(t).as_secs(),
                    bytes_in: a.bytes_to_peers,
                    bytes_out: a.bytes_from_peers,
                    opened_at: at(a.opened_at),
                    last_seen: at(a.last_seen),
                })
                .collect()
        })
        .unwrap_or_default()
    }
}

/// One allocation in `GET /turn/allocations`.
#[derive(Serialize)]
pub struct AllocationView {
    pub transport: &'static str,
    pub client: String,
    /// The relay address the client reached.
    pub server: String,
    pub username: Option<String>,
    /// The user of a TURN REST username (`expiry:user`).
    pub user: Option<String>,
    /// The Allocate was signed with a key derived from sigmesh's `turn.secret`.
    pub sigmesh_credential: bool,
    /// Live signaling sessions whose `peer` is this user.
    pub sessions: Vec<u64>,
    pub relayed: Vec<String>,
    pub mapped: Option<String>,
    pub peers: Vec<String>,
    pub channels: BTreeMap<String, String>,
    pub lifetime: u32,
    pub expires_in: u64,
    /// Relayed bytes, client to peers.
    pub bytes_in: u64,
    /// Relayed bytes, peers to client.
    pub bytes_out: u64,
    pub opened_at: String,
    pub last_seen: String,
}

// === start ===

/// The relay's bound sockets.
pub struct Bound {
    pub udp: UdpSocket,
    pub tcp: TcpListener,
    pub addr: SocketAddr,
}

/// Binds UDP and TCP on `listen`. With port 0, TCP takes the port UDP got (retrying a few
/// ports when it is taken).
pub async fn bind(listen: SocketAddr) -> std::io::Result<Bound> {
    let mut last = None;
    for _ in 0..if listen.port() == 0 { 20 } else { 1 } {
        let udp = UdpSocket::bind(listen).await?;
        let addr = udp.local_addr()?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok(Bound { udp, tcp, addr }),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no port")))
}

/// Installs the tracker (so `/turn/allocations` and the bound address are there at once) and
/// returns the relay's future, which runs until the proxy drains (or the task is aborted).
pub fn serve(
    turn: Arc<TurnState>,
    drain: CancellationToken,
    bound: Bound,
    relay: TurnRelay,
    secret: Option<String>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let policy = PeerPolicy::with_exceptions(relay.deny_peers.as_deref(), &relay.allow_peers);
    {
        let mut g = turn.tracker.lock().unwrap_or_else(|p| p.into_inner());
        let limits = Limits {
            allocations_per_user: relay.quota.allocations_per_user,
            ..Limits::default()
        };
        *g = Some(Tracker::new(policy, secret, limits));
    }
    let _ = turn.addr.set(bound.addr);
    tracing::info!(listen = %bound.addr, upstream = %relay.upstream, "TURN relay running");
    async move {
        tokio::select! {
            _ = drain.cancelled() => {}
            _ = udp::serve(turn.clone(), bound.udp, bound.addr, relay.upstream) => {}
            _ = tcp::serve(turn.clone(), bound.tcp, bound.addr, relay.upstream) => {}
            _ = expire(turn.clone()) => {}
        }
    }
}

async fn expire(turn: Arc<TurnState>) {
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    loop {
        tick.tick().await;
        let t = now();
        turn.with(|tr| {
            for a in tr.expire(t) {
                tracing::debug!(client = %a.five_tuple.client, "TURN allocation expired");
            }
            turn.metrics.allocations_active.set(tr.table().len() as i64);
        });
    }
}
