//! The one place a session's events ([`sigmesh_core::session::Event`]) become metrics, the
//! session's row in `/sessions` and its span.
//!
//! Metric children are resolved once per session and label set, then bumped without a lookup.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use sigmesh_core::label::{CandidateKind, CandidateProtocol, MessageDirection, MessageType};
use sigmesh_core::session::{Event, Observer};

use crate::metrics::{IceLabels, KindLabel, MessageLabels, Metrics, RouteUpstream};
use crate::sessions::{IceCounts, SessionInfo};
use crate::telemetry::SessionTrace;

/// The metric children a session has resolved (kept for the session: an idle session holds
/// only these handles).
#[derive(Default)]
pub(super) struct Handles {
    /// `sigmesh_messages_total` by direction (in, out) and type.
    messages: [Vec<(MessageType, Counter)>; 2],
    /// `sigmesh_ice_candidates_total` by (type, protocol).
    ice: [[Option<Counter>; 3]; 5],
    setup: Option<Histogram>,
}

/// A session's observer, borrowed for one wake of the session task.
pub(super) struct Recorder<'a> {
    pub metrics: &'a Metrics,
    pub info: &'a SessionInfo,
    /// Only a sampled span (per-message hooks are skipped otherwise).
    pub trace: Option<&'a SessionTrace>,
    pub handles: &'a mut Handles,
    /// The session's place on its endpoint: a reset mid-session counts against its health.
    pub endpoint: Option<&'a crate::pool::Lease>,
}

impl Observer for Recorder<'_> {
    fn event(&mut self, e: Event<'_>) {
        let info = self.info;
        match e {
            Event::Message {
                direction,
                kind,
                len,
                forwarded,
                cut_by,
            } => {
                if forwarded {
                    self.message_counter(direction, kind).inc();
                    let (count, bytes) = match direction {
                        MessageDirection::In => (&info.messages_in, &info.bytes_in),
                        MessageDirection::Out => (&info.messages_out, &info.bytes_out),
                    };
                    count.fetch_add(1, Ordering::Relaxed);
                    bytes.fetch_add(len, Ordering::Relaxed);
                } else {
                    info.dropped.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(t) = self.trace {
                    let len = usize::try_from(len).unwrap_or(usize::MAX);
                    t.message(direction, kind, len, cut_by);
                }
            }
            Event::Candidates {
                direction,
                kind,
                protocol,
                count,
            } => {
                add(&info.ice, kind, protocol, u64::from(count));
                // Each candidate enters once, from the client that gathered it.
                if direction == MessageDirection::In {
                    let metrics = self.metrics;
                    self.handles.ice[kind as usize][protocol as usize]
                        .get_or_insert_with(|| {
                            metrics
                                .signal
                                .ice_candidates
                                .get_or_create_owned(&IceLabels {
                                    route: info.route.clone(),
                                    typ: kind.as_str(),
                                    protocol: protocol.as_str(),
                                })
                        })
                        .inc_by(u64::from(count));
                }
            }
            Event::Room(room) => {
                let _ = info.room.set(room.to_owned());
            }
            Event::Peer(peer) => {
                let _ = info.peer.set(peer.to_owned());
            }
            Event::CallSetup { took, first } => {
                if first {
                    let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX - 1);
                    info.setup_ms.store(ms, Ordering::Relaxed);
                }
                let metrics = self.metrics;
                self.handles
                    .setup
                    .get_or_insert_with(|| {
                        metrics
                            .signal
                            .call_setup
                            .get_or_create_owned(&RouteUpstream {
                                route: info.route.clone(),
                                upstream: info.upstream.clone(),
                            })
                    })
                    .observe(took.as_secs_f64());
            }
            Event::Limited(limit) => self.metrics.rate_limited(&info.route, limit),
            Event::UpstreamError(kind) => {
                info.upstream_failed.store(true, Ordering::Relaxed);
                if let Some(ep) = self.endpoint {
                    ep.failed(&format!("mid-session: {}", kind.as_str()));
                }
                self.metrics
                    .upstream_error(&info.route, &info.upstream, kind)
            }
            Event::Closed { by, code, reason } => {
                // A close without a code reads as 1005, as its receiver reports it.
                let c = code.map_or(1005, u32::from);
                let _ = info.close_code.compare_exchange(
                    crate::sessions::NO_CLOSE,
                    c,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                tracing::debug!(session = info.id, by = by.as_str(), ?code, reason, "close");
                if let Some(t) = self.trace {
                    t.closed(by, code, reason);
                }
            }
        }
    }
}

impl Recorder<'_> {
    fn message_counter(&mut self, direction: MessageDirection, kind: MessageType) -> &Counter {
        let list = &mut self.handles.messages[direction as usize];
        let i = match list.iter().position(|(k, _)| *k == kind) {
            Some(i) => i,
            None => {
                let c = self.metrics.messages.get_or_create_owned(&MessageLabels {
                    route: self.info.route.clone(),
                    upstream: self.info.upstream.clone(),
                    direction: direction.as_str(),
                    kind: KindLabel(kind.as_str()),
                });
                list.push((kind, c));
                list.len() - 1
            }
        };
        &list[i].1
    }
}

fn add(ice: &IceCounts, kind: CandidateKind, protocol: CandidateProtocol, n: u64) {
    let bump = |a: &AtomicU64| {
        a.fetch_add(n, Ordering::Relaxed);
    };
    match kind {
        CandidateKind::Host => bump(&ice.host),
        CandidateKind::Srflx => bump(&ice.srflx),
        CandidateKind::Prflx => bump(&ice.prflx),
        CandidateKind::Relay => bump(&ice.relay),
        CandidateKind::Other => {}
    }
    match protocol {
        CandidateProtocol::Udp => bump(&ice.udp),
        CandidateProtocol::Tcp => bump(&ice.tcp),
        CandidateProtocol::Other => {}
    }
}
