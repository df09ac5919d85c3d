//! A session's task: both ways (client → upstream, upstream → client) in one task, every byte
//! through core's [`Session`] ([`super::relay`] moves them), with the idle timer, the drain and
//! the close grace. This file decides nothing: transport events go to [`Session::on`], and what
//! it answers is applied to the ways.
//!
//! What core answers, for reference (see `sigmesh_core::session`):
//!
//! | event | client gets | upstream gets |
//! |---|---|---|
//! | message over `max_message_bytes` | 1009 | 1009 |
//! | message bucket empty, `on_exceed: close` | 1008 | 1008 |
//! | client's frames break RFC 6455 | 1002 | 1002 |
//! | client gone without a close frame | – | 1001 `client gone` |
//! | upstream gone without a close frame, or failed | 1011 | – |
//! | upstream's frames break RFC 6455 | 1002 | 1002 |
//! | idle timeout / drain | 1001 | 1001 |
//!
//! Frames pass as they are, masks included: a close frame from one side reaches the other as
//! it was sent, and its answer comes back the same way; pings are answered end to end.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use sigmesh_core::frame::Pushed;
use sigmesh_core::label::Outcome;
use sigmesh_core::session::{Ending, Happened, LegEnd, Session, SessionEnv, SessionOptions};

use super::failover::Failover;
use super::record::{Handles, Recorder};
use super::relay::{Push, Way, WayEvent};
use crate::clock;
use crate::io::Leg;
use crate::metrics::RouteUpstream;
use crate::sessions::SessionInfo;
use crate::state::{Places, Runtime, Shared};
use crate::telemetry::SessionTrace;

/// One direction of core's session, for one push.
struct SessionWay<'a, 'e> {
    session: &'a mut Session,
    env: &'a SessionEnv<'e>,
    recorder: &'a mut Recorder<'e>,
    from_client: bool,
    /// Reads the client's first message for a replay (`on_upstream_failure: reconnect`).
    failover: Option<&'a mut Failover>,
}

impl Push for SessionWay<'_, '_> {
    fn push(&mut self, chunk: &[u8]) -> Pushed<'_> {
        if self.from_client {
            if let Some(f) = self.failover.as_deref_mut() {
                f.client_bytes(chunk);
            }
            self.session.client_bytes(chunk, self.env, self.recorder)
        } else {
            self.session.upstream_bytes(chunk, self.env, self.recorder)
        }
    }

    fn trim(&mut self, keep: usize) {
        // Only the reader this push went through can have grown.
        if self.from_client {
            self.session.trim_client(keep);
        } else {
            self.session.trim_upstream(keep);
        }
    }
}

/// What woke the session.
enum Wake {
    In(WayEvent),
    Out(WayEvent),
    /// A drain started (its plan: an upstream drain's, else the shutdown's).
    DrainPlanned(Option<Arc<crate::drain::DrainPlan>>),
    /// The session's turn in the drain came.
    Drain,
    Timer,
    /// A leg took nothing of what waits for it within the write timeout (`true`: the
    /// upstream, written by the inbound way).
    Stalled(bool),
    /// A close frame came through: the close grace starts.
    Closing,
    Done,
}

/// How the client's leg comes to the session.
pub(super) enum ClientLeg {
    /// The 101 is on its way: the session completes hyper's upgrade first.
    Upgrade(hyper::upgrade::OnUpgrade),
    Ready(Leg),
    /// Taken (the upgrade is under way or failed).
    Gone,
}

/// Everything a session starts with. Its task's future keeps these in place: nothing is moved
/// out of them into locals of its own (an async fn's arguments, and what it would move out of
/// them, each take a slot of every session's task).
pub(super) struct Parts {
    pub shared: Arc<Shared>,
    pub runtime: Arc<Runtime>,
    pub route: usize,
    pub info: Arc<SessionInfo>,
    pub client: ClientLeg,
    pub upstream: Leg,
    pub trace: Option<Arc<SessionTrace>>,
    pub opts: Option<SessionOptions>,
    /// Held for the session's life: its places in the live-session counts and on its endpoint.
    pub places: Places,
    pub failover: Option<Box<Failover>>,
}

/// Runs a session between two legs until both are closed (the client's upgraded first when it
/// is not yet).
// Not an `async fn`: its arguments would be stored twice in the task (as the future's upvars and
// as the locals the body binds them to); an `async move` block keeps `p` once, in place.
#[allow(clippy::manual_async_fn)]
pub(super) fn run(mut p: Parts) -> impl std::future::Future<Output = ()> + Send + 'static {
    async move {
        if let ClientLeg::Upgrade(_) = p.client {
            let ClientLeg::Upgrade(on_upgrade) = std::mem::replace(&mut p.client, ClientLeg::Gone)
            else {
                return;
            };
            match super::upgraded_leg(on_upgrade).await {
                Some(leg) => p.client = ClientLeg::Ready(leg),
                None => return,
            }
        }
        relay(&mut p).await;
        drop(p);
    }
}

/// The session proper, on `p` in place.
async fn relay(p: &mut Parts) {
    let Parts {
        shared,
        runtime,
        route,
        info,
        client,
        upstream,
        trace,
        opts,
        places,
        failover,
    } = p;
    let route = *route;
    let (ClientLeg::Ready(client), Some(opts)) = (client, opts.take()) else {
        return;
    };
    let _ = info.transport.set(client.io.transport());
    let lease = &mut places.endpoint;
    info.endpoint
        .store(lease.as_ref().map(|l| l.endpoint_arc().clone()));
    let metrics = shared.metrics();
    let active = metrics
        .connections_active
        .get_or_create_owned(&RouteUpstream {
            route: info.route.clone(),
            upstream: info.upstream.clone(),
        });
    active.inc();
    metrics.connection(&info.route, &info.upstream, Outcome::Accepted);
    shared
        .rollouts()
        .session_opened(&info.route, &info.upstream);
    let _guard = shared.sessions().register(info.clone());
    tracing::debug!(session = info.id, route = %info.route, upstream = %info.upstream, client = %info.client, "session open");

    let compiled = &runtime.route(route).route;
    let mut session = Session::new(compiled, opts);
    let idle = session.idle_timeout();
    let mut handles = Handles::default();
    let recording = trace.as_deref().filter(|t| t.is_recording());
    let mut inbound = Way::new(std::mem::take(&mut client.pre));
    let mut outbound = Way::new(std::mem::take(&mut upstream.pre));

    // The shutdown, or a drain of this session's upstream; then its paced close.
    let upstream_drain = lease.as_ref().map(crate::pool::Lease::drain_signal);
    let mut drain = std::pin::pin!(async {
        match &upstream_drain {
            Some(signal) => tokio::select! {
                _ = shared.drained() => None,
                _ = signal.started() => signal.plan().cloned(),
            },
            None => {
                shared.drained().await;
                None
            }
        }
    });
    let mut planned: Option<Arc<crate::drain::DrainPlan>> = None;
    // This session's turn in a planned drain: the one timer below also wakes for it.
    let mut drain_at: Option<tokio::time::Instant> = None;
    let mut pending = None;
    let mut timer = std::pin::pin!(tokio::time::sleep(idle));
    let write_timeout = shared.tuning().write_timeout;
    // Set once the session is ending: the timer is then the close grace.
    let mut ending = false;
    let cluster = shared.cluster();
    let buckets = crate::state::SessionBuckets {
        runtime,
        cluster: cluster.as_ref(),
    };
    loop {
        let wake = poll_fn(|task| {
            // One clock read per wake, not per message.
            let env = SessionEnv {
                route: compiled,
                route_index: route,
                buckets: &buckets,
                now: clock::now(),
            };
            let mut recorder = Recorder {
                metrics,
                info,
                trace: recording,
                handles: &mut handles,
                endpoint: lease.as_ref(),
            };
            let mut way = SessionWay {
                session: &mut session,
                env: &env,
                recorder: &mut recorder,
                from_client: true,
                failover: failover.as_deref_mut(),
            };
            if let Poll::Ready(ev) = inbound.poll(task, &mut client.io, &mut upstream.io, &mut way)
            {
                return Poll::Ready(Wake::In(ev));
            }
            way.from_client = false;
            if let Poll::Ready(ev) = outbound.poll(task, &mut upstream.io, &mut client.io, &mut way)
            {
                return Poll::Ready(Wake::Out(ev));
            }
            if inbound.finished() && outbound.finished() {
                return Poll::Ready(Wake::Done);
            }
            if !ending && session.is_closing() {
                return Poll::Ready(Wake::Closing);
            }
            if !ending && planned.is_none() {
                if let Poll::Ready(plan) = drain.as_mut().poll(task) {
                    return Poll::Ready(Wake::DrainPlanned(plan));
                }
            } else if !ending && let Some(at) = drain_at {
                if at <= tokio::time::Instant::now() {
                    return Poll::Ready(Wake::Drain);
                }
                if at < timer.deadline() {
                    timer.as_mut().reset(at);
                }
            }
            // A leg that stopped reading: the timer also wakes for the earliest stall's end
            // (during the close grace, the grace is the bound).
            if !ending {
                for (to_upstream, way) in [(true, &inbound), (false, &outbound)] {
                    if let Some(since) = way.stalled_since() {
                        let at = since + write_timeout;
                        if at <= tokio::time::Instant::now() {
                            return Poll::Ready(Wake::Stalled(to_upstream));
                        }
                        if at < timer.deadline() {
                            timer.as_mut().reset(at);
                        }
                    }
                }
            }
            if timer.as_mut().poll(task).is_ready() {
                return Poll::Ready(Wake::Timer);
            }
            Poll::Pending
        })
        .await;
        // The upstream died mid-session: move to another endpoint when the route says so and
        // both ways are at a message boundary.
        let upstream_down = matches!(
            wake,
            Wake::Out(WayEvent::SrcEnded(_)) | Wake::In(WayEvent::DstFailed(_))
        );
        if upstream_down
            && !ending
            && session.can_fail_over()
            && let (Some(f), Some(old)) = (failover.as_mut(), lease.as_ref())
            && f.can_try()
        {
            old.failed("mid-session: the connection ended");
            let pool = old.pool().clone();
            // Boxed: the reconnect (a whole upstream handshake) is a large future, and inline it
            // would grow every session's task by its size, reconnecting or not.
            let result = Box::pin(f.reconnect(&pool, old)).await;
            let labels = |result| crate::metrics::ReconnectLabels {
                route: info.route.clone(),
                upstream: info.upstream.clone(),
                result,
            };
            if let Some((conn, new_lease, replay)) = result {
                metrics
                    .session_reconnects
                    .get_or_create(&labels("ok"))
                    .inc();
                let dropped = inbound.redirect();
                let lost = if dropped.is_empty() {
                    0
                } else {
                    sigmesh_core::frame::count_messages(&dropped)
                        .unwrap_or(1)
                        .max(1)
                };
                if lost > 0 {
                    metrics
                        .reconnect_lost
                        .get_or_create(&RouteUpstream {
                            route: info.route.clone(),
                            upstream: info.upstream.clone(),
                        })
                        .inc_by(lost);
                }
                if let Some(r) = replay {
                    inbound.send_first(&r);
                }
                upstream.io = conn.io;
                outbound = Way::new(conn.read_ahead);
                session.upstream_replaced();
                tracing::info!(session = info.id, route = %info.route, upstream = %info.upstream, endpoint = %new_lease.endpoint().id, lost, "session moved to another endpoint");
                info.endpoint.store(Some(new_lease.endpoint_arc().clone()));
                *lease = Some(new_lease);
                continue;
            }
            metrics
                .session_reconnects
                .get_or_create(&labels("failed"))
                .inc();
        }
        let mut recorder = Recorder {
            metrics,
            info,
            trace: recording,
            handles: &mut handles,
            endpoint: lease.as_ref(),
        };
        let was_ending = ending;
        let happened = match wake {
            Wake::Done => break,
            Wake::Timer if ending => {
                tracing::debug!(session = info.id, "close grace over");
                break;
            }
            Wake::Closing => None,
            Wake::Timer => match session.check_idle(clock::now(), &mut recorder) {
                Ok(end) => {
                    tracing::debug!(session = info.id, "idle timeout");
                    apply(end, &mut inbound, &mut outbound);
                    None
                }
                Err(left) => {
                    timer.as_mut().reset(tokio::time::Instant::now() + left);
                    continue;
                }
            },
            Wake::DrainPlanned(plan) => {
                let Some(plan) = plan.or_else(|| shared.shutdown_plan().cloned()) else {
                    continue;
                };
                drain_at = Some(plan.close_at());
                pending = Some(metrics.drain_pending_guard());
                planned = Some(plan);
                continue;
            }
            Wake::Drain => {
                let (code, reason) = planned
                    .as_ref()
                    .map_or((1001, "server shutting down"), |p| p.close());
                Some(Happened::Drain(code, reason))
            }
            Wake::Stalled(to_upstream) => {
                tracing::debug!(session = info.id, upstream = to_upstream, "write timeout");
                let way = if to_upstream {
                    &mut inbound
                } else {
                    &mut outbound
                };
                let ev = way.write_timed_out();
                Some(happened(info.id, ev, to_upstream))
            }
            Wake::In(ev) => Some(happened(info.id, ev, true)),
            Wake::Out(ev) => Some(happened(info.id, ev, false)),
        };
        if let Some(happened) = happened {
            let end = session.on(happened, &mut recorder);
            apply(end, &mut inbound, &mut outbound);
        }
        // Whatever woke the session now (but a quiet idle check) ends it: the close grace runs.
        ending = true;
        if !was_ending {
            timer
                .as_mut()
                .reset(tokio::time::Instant::now() + shared.tuning().close_grace);
        }
    }
    if let Some(t) = trace.as_ref() {
        t.finish(Some(info));
    }
    drop(pending);
    active.dec();
    let class = info.close_class();
    metrics
        .session_closes
        .get_or_create(&crate::metrics::CloseLabels {
            route: info.route.clone(),
            upstream: info.upstream.clone(),
            code_class: class.as_str(),
        })
        .inc();
    let setup = match info.setup_ms.load(std::sync::atomic::Ordering::Relaxed) {
        u64::MAX => None,
        ms => Some(Duration::from_millis(ms)),
    };
    shared.rollouts().session_ended(
        &info.route,
        &info.upstream,
        class,
        info.upstream_failed
            .load(std::sync::atomic::Ordering::Relaxed),
        setup,
    );
    tracing::debug!(session = info.id, "session closed");
}

/// A way's event as core's transport event (`from_client`: the client → upstream way).
fn happened(session: u64, ev: WayEvent, from_client: bool) -> Happened {
    let (src, dst) = if from_client {
        ("client", "upstream")
    } else {
        ("upstream", "client")
    };
    match ev {
        WayEvent::SrcEnded(e) => {
            tracing::debug!(session, error = ?e, "{src} ended");
            if from_client {
                Happened::ClientEnded
            } else {
                Happened::UpstreamEnded
            }
        }
        WayEvent::ReaderClosed(c) if from_client => Happened::ClientReaderClosed(c),
        WayEvent::ReaderClosed(c) => Happened::UpstreamReaderClosed(c),
        WayEvent::DstFailed(e) => {
            tracing::debug!(session, error = %e, "{dst} write failed");
            if from_client {
                Happened::UpstreamWriteFailed
            } else {
                Happened::ClientWriteFailed
            }
        }
    }
}

/// Applies core's ending to the ways: `inbound` writes to the upstream, `outbound` to the
/// client.
fn apply(end: Ending, inbound: &mut Way, outbound: &mut Way) {
    for (leg, way) in [(end.to_upstream, inbound), (end.to_client, outbound)] {
        match leg {
            LegEnd::Keep => {}
            LegEnd::Shut => way.shut_when_flushed(),
            LegEnd::Close(frame) => way.close(frame.as_deref()),
        }
    }
}
