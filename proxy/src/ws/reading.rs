//! Reading relayed text messages once each ([`sigmesh_core::signal::read_message_with`]) and
//! applying what they say to the session: ICE candidate counts (both directions, in
//! `/sessions`), `sigmesh_ice_candidates_total` (client-sent candidates only, so a candidate
//! relayed from one sigmesh client to another is counted once), and call setup (offer → answer,
//! either direction) into `setup_ms` and `sigmesh_call_setup_seconds`.
//!
//! Counters are resolved once per session and label set, then bumped without a lookup.

use std::sync::PoisonError;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use sigmesh_core::config::Signaling;
use sigmesh_core::ice::{Candidate, CandidateType, Transport};
use sigmesh_core::signal::{Kind, Reading, read_message_with};

use crate::metrics::{IceLabels, RouteUpstream, SignalMetrics};
use crate::sessions::{IceCounts, SessionInfo};
use crate::state;

const TYPES: [&str; 5] = ["host", "srflx", "prflx", "relay", "other"];
const PROTOCOLS: [&str; 3] = ["udp", "tcp", "other"];

/// The reader of one direction of one session: the metric children it resolved (the session's
/// config, info and metrics are passed in, not held, so an idle session keeps only this).
#[derive(Default)]
pub(super) struct MessageReader {
    /// `sigmesh_ice_candidates_total` children by (type, protocol), resolved on first use.
    ice: [[Option<Counter>; 3]; 5],
    setup: Option<Histogram>,
}

impl MessageReader {
    /// Reads `text` and records its candidates and call setup on the session; `inbound`
    /// (client → upstream) also counts the candidates in the metric.
    pub(super) fn read<'t>(
        &mut self,
        text: &'t str,
        signaling: &Signaling,
        info: &SessionInfo,
        metrics: &SignalMetrics,
        inbound: bool,
    ) -> Reading<'t> {
        let ice = &mut self.ice;
        let reading = read_message_with(text, signaling, |c| {
            let (t, p) = indices(c);
            count(&info.ice, t, p);
            if inbound {
                ice[t][p]
                    .get_or_insert_with(|| counter(metrics, &info.route, t, p))
                    .inc();
            }
        });
        if matches!(reading.kind, Kind::Offer | Kind::Answer) {
            let took = info
                .call
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .observe(reading.kind, state::now());
            if let Some(took) = took {
                let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX - 1);
                // The first offer/answer pair is the session's call setup.
                let _ = info.setup_ms.compare_exchange(
                    u64::MAX,
                    ms,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                self.setup
                    .get_or_insert_with(|| {
                        metrics.call_setup.get_or_create_owned(&RouteUpstream {
                            route: info.route.clone(),
                            upstream: info.upstream.clone(),
                        })
                    })
                    .observe(took.as_secs_f64());
            }
        }
        reading
    }
}

fn indices(c: &Candidate<'_>) -> (usize, usize) {
    let t = match c.typ {
        CandidateType::Host => 0,
        CandidateType::Srflx => 1,
        CandidateType::Prflx => 2,
        CandidateType::Relay => 3,
        CandidateType::Other(_) => 4,
    };
    let p = match c.transport {
        Transport::Udp => 0,
        Transport::Tcp => 1,
        Transport::Other(_) => 2,
    };
    (t, p)
}

fn count(ice: &IceCounts, t: usize, p: usize) {
    let inc = |a: &AtomicU64| {
        a.fetch_add(1, Ordering::Relaxed);
    };
    match t {
        0 => inc(&ice.host),
        1 => inc(&ice.srflx),
        2 => inc(&ice.prflx),
        3 => inc(&ice.relay),
        _ => {}
    }
    match p {
        0 => inc(&ice.udp),
        1 => inc(&ice.tcp),
        _ => {}
    }
}

fn counter(metrics: &SignalMetrics, route: &str, t: usize, p: usize) -> Counter {
    metrics.ice_candidates.get_or_create_owned(&IceLabels {
        route: route.to_owned(),
        typ: TYPES[t],
        protocol: PROTOCOLS[p],
    })
}
