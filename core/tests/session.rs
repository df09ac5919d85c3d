//! The session phase: what one WebSocket's object forwards, cuts and closes, and the events it
//! reports, fed frames as a front end would.
#![allow(clippy::unwrap_used)]

mod common;

use common::Buckets;

use std::time::Duration;

use sigmesh_core::config::{Route, load};
use sigmesh_core::frame::{close_frame, frame};
use sigmesh_core::label::{
    CandidateKind, CandidateProtocol, LimitKind, MessageDirection, MessageType, Party,
    UpstreamErrorKind,
};
use sigmesh_core::session::{
    Event, Happened, LegEnd, Observer, Session, SessionEnv, SessionOptions,
};

/// Events as owned values.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Message(MessageDirection, MessageType, bool, Option<LimitKind>),
    Candidates(MessageDirection, CandidateKind, CandidateProtocol, u32),
    Room(String),
    Peer(String),
    Setup(bool),
    Limited(LimitKind),
    UpstreamError(UpstreamErrorKind),
    Closed(Party, Option<u16>),
}

#[derive(Default)]
struct Log(Vec<Seen>);

impl Observer for Log {
    fn event(&mut self, e: Event<'_>) {
        self.0.push(match e {
            Event::Message {
                direction,
                kind,
                forwarded,
                cut_by,
                ..
            } => Seen::Message(direction, kind, forwarded, cut_by),
            Event::Candidates {
                direction,
                kind,
                protocol,
                count,
            } => Seen::Candidates(direction, kind, protocol, count),
            Event::Room(r) => Seen::Room(r.to_owned()),
            Event::Peer(p) => Seen::Peer(p.to_owned()),
            Event::CallSetup { first, .. } => Seen::Setup(first),
            Event::Limited(l) => Seen::Limited(l),
            Event::UpstreamError(k) => Seen::UpstreamError(k),
            Event::Closed { by, code, .. } => Seen::Closed(by, code),
        });
    }
}

fn route(limits: &str) -> Route {
    let text = format!(
        r#"
listen: 127.0.0.1:0
routes:
  - name: sig
    match: {{ path_prefix: /ws }}
    websocket:
      max_message_bytes: 256
      idle_timeout: 10s
      signaling: {{ type: /type, room: /room, peer: /from }}
    limits: {limits}
    upstreams: [{{ name: a, url: ws://h/ws }}]
"#
    );
    load(&text).unwrap().routes.remove(0)
}

const MASK: [u8; 4] = [1, 2, 3, 4];

fn client(text: &str) -> Vec<u8> {
    frame(1, true, text.as_bytes(), Some(MASK))
}

fn server(text: &str) -> Vec<u8> {
    frame(1, true, text.as_bytes(), None)
}

struct Rig {
    route: Route,
    buckets: Buckets,
    session: Session,
    log: Log,
    now: Duration,
}

impl Rig {
    fn new(limits: &str, sticky_room: Option<&str>) -> Rig {
        let route = route(limits);
        let session = Session::new(
            &route,
            SessionOptions {
                sticky_room: sticky_room.map(str::to_owned),
                mask_key: [9, 9, 9, 9],
                ..SessionOptions::default()
            },
        );
        Rig {
            route,
            buckets: Buckets::default(),
            session,
            log: Log::default(),
            now: Duration::ZERO,
        }
    }

    /// Pushes client bytes; returns the bytes sent on and the close code, if any.
    fn client_sends(&mut self, bytes: &[u8]) -> (Vec<u8>, Option<u16>) {
        self.push(bytes, true)
    }

    fn upstream_sends(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.push(bytes, false).0
    }

    fn push(&mut self, bytes: &[u8], from_client: bool) -> (Vec<u8>, Option<u16>) {
        self.now += Duration::from_millis(5);
        let env = SessionEnv {
            route: &self.route,
            route_index: 0,
            buckets: &self.buckets,
            now: self.now,
        };
        let p = if from_client {
            self.session.client_bytes(bytes, &env, &mut self.log)
        } else {
            self.session.upstream_bytes(bytes, &env, &mut self.log)
        };
        (p.forward.bytes(bytes).to_vec(), p.close.map(|c| c.code))
    }
}

#[test]
fn messages_are_read_limited_and_recorded_in_order() {
    let mut r = Rig::new(
        "{ messages: { rate: 1, per: 1h, burst: 2 }, rooms: { rate: 1, per: 1h, burst: 5 } }",
        None,
    );
    let offer = client(
        r#"{"type":"offer","room":"r1","from":"al","sdp":"a=candidate:1 1 udp 1 10.0.0.1 9 typ host"}"#,
    );
    assert_eq!(r.client_sends(&offer), (offer.clone(), None));
    let answer = server(r#"{"type":"answer"}"#);
    assert_eq!(r.upstream_sends(&answer), answer);
    let second = client(r#"{"type":"join"}"#);
    assert_eq!(r.client_sends(&second).0, second);
    // The third takes no token from an empty message bucket: cut whole.
    let third = client(r#"{"type":"leave"}"#);
    assert_eq!(r.client_sends(&third), (Vec::new(), None));
    use MessageDirection::{In, Out};
    assert_eq!(
        r.log.0,
        vec![
            Seen::Room("r1".into()),
            Seen::Peer("al".into()),
            Seen::Message(In, MessageType::Offer, true, None),
            Seen::Candidates(In, CandidateKind::Host, CandidateProtocol::Udp, 1),
            Seen::Message(Out, MessageType::Answer, true, None),
            Seen::Setup(true),
            Seen::Message(In, MessageType::Join, true, None),
            Seen::Limited(LimitKind::Messages),
            // The message bucket refused it before it was read (a room bucket defers text
            // messages, but only those the message bucket lets through are read).
            Seen::Message(In, MessageType::Text, false, Some(LimitKind::Messages)),
        ]
    );
}

#[test]
fn the_room_bucket_takes_the_messages_room_else_the_sessions() {
    let shared = Buckets::default();
    let mut a = Rig::new("{ rooms: { rate: 1, per: 1h, burst: 2 } }", Some("lobby"));
    a.buckets = shared;
    assert_eq!(a.client_sends(&client(r#"{"type":"x"}"#)).1, None);
    assert_eq!(
        a.client_sends(&client(r#"{"type":"x","room":"other"}"#)).1,
        None
    );
    let third = client(r#"{"type":"x"}"#);
    assert_eq!(a.client_sends(&third).0, third);
    // `lobby` has had 2 now (the sticky room); `other` 1.
    assert!(a.client_sends(&client(r#"{"type":"x"}"#)).0.is_empty());
    assert!(
        !a.client_sends(&client(r#"{"type":"x","room":"other"}"#))
            .0
            .is_empty()
    );
    assert!(a.log.0.contains(&Seen::Limited(LimitKind::Rooms)));
}

#[test]
fn oversize_and_close_limits_end_the_session_with_their_codes() {
    let mut r = Rig::new("{}", None);
    let big = client(&"x".repeat(300));
    let (out, close) = r.client_sends(&big);
    assert_eq!(close, Some(1009));
    // What went on is the reader's own close frame, masked toward the upstream.
    assert_eq!(out[0], 0x88);
    assert!(r.log.0.contains(&Seen::Limited(LimitKind::MessageSize)));
    let mut r = Rig::new(
        "{ messages: { rate: 1, per: 1h, burst: 1, on_exceed: close } }",
        None,
    );
    r.client_sends(&client("a"));
    assert_eq!(r.client_sends(&client("b")).1, Some(1008));
}

#[test]
fn transport_events_map_to_closes_and_count_a_failure_once() {
    let mut r = Rig::new("{}", None);
    let mut log = Log::default();
    // The upstream vanishes mid-session: 1011 to the client, one reset counted.
    let end = r.session.on(Happened::UpstreamEnded, &mut log);
    let LegEnd::Close(Some(frame)) = end.to_client else {
        panic!("{end:?}")
    };
    assert_eq!(&frame[2..4], &1011u16.to_be_bytes());
    assert_eq!(end.to_upstream, LegEnd::Keep);
    let again = r.session.on(Happened::UpstreamWriteFailed, &mut log);
    assert_eq!(again.to_client, LegEnd::Shut);
    let resets = log
        .0
        .iter()
        .filter(|e| **e == Seen::UpstreamError(UpstreamErrorKind::Reset))
        .count();
    assert_eq!(resets, 1);

    // After sigmesh closed the session itself, the upstream ending is no failure.
    let mut r = Rig::new("{}", None);
    let mut log = Log::default();
    let end = r
        .session
        .on(Happened::Drain(1001, "server shutting down"), &mut log);
    assert!(matches!(end.to_client, LegEnd::Close(Some(_))));
    assert!(matches!(end.to_upstream, LegEnd::Close(Some(_))));
    let end = r.session.on(Happened::UpstreamEnded, &mut log);
    assert_eq!(end.to_client, LegEnd::Keep);
    assert!(!log.0.iter().any(|e| matches!(e, Seen::UpstreamError(_))));

    // The client gone without a close frame: the upstream hears 1001.
    let mut r = Rig::new("{}", None);
    let mut log = Log::default();
    let end = r.session.on(Happened::ClientEnded, &mut log);
    assert!(matches!(end.to_upstream, LegEnd::Close(Some(_))));
    assert_eq!(log.0, vec![Seen::Closed(Party::Proxy, Some(1001))]);
}

#[test]
fn a_close_frame_from_a_side_is_passed_and_noted() {
    let mut r = Rig::new("{}", None);
    let bye = close_frame(1000, "bye", Some(MASK));
    assert_eq!(r.client_sends(&bye).0, bye);
    assert!(r.session.is_closing());
    assert_eq!(r.log.0, vec![Seen::Closed(Party::Client, Some(1000))]);
    // Its answer: the upstream's close comes back untouched, and the drain adds nothing.
    let reply = close_frame(1000, "bye", None);
    assert_eq!(r.upstream_sends(&reply), reply);
    let end = r.session.on(
        Happened::Drain(1001, "server shutting down"),
        &mut Log::default(),
    );
    assert_eq!(end.to_client, LegEnd::Shut);
    assert_eq!(end.to_upstream, LegEnd::Shut);
}

#[test]
fn idle_is_measured_from_the_last_message_either_way() {
    let mut r = Rig::new("{}", None);
    r.client_sends(&client("hi"));
    let last = r.now;
    let left = r
        .session
        .check_idle(last + Duration::from_secs(4), &mut Log::default())
        .unwrap_err();
    assert_eq!(left, Duration::from_secs(6));
    let end = r
        .session
        .check_idle(last + Duration::from_secs(10), &mut Log::default())
        .unwrap();
    assert!(matches!(end.to_client, LegEnd::Close(Some(_))));
}

#[test]
fn a_session_may_fail_over_only_at_a_message_boundary_both_ways() {
    let mut r = Rig::new("{}", None);
    assert!(r.session.can_fail_over());
    // Half a frame from the upstream: a reconnect would splice it.
    let whole = server(r#"{"type":"offer","sdp":"v=0"}"#);
    r.upstream_sends(&whole[..5]);
    assert!(!r.session.can_fail_over());
    r.upstream_sends(&whole[5..]);
    assert!(r.session.can_fail_over());
    // The same for the client's way.
    let c = client(r#"{"type":"join","room":"a"}"#);
    r.client_sends(&c[..3]);
    assert!(!r.session.can_fail_over());
    r.client_sends(&c[3..]);
    assert!(r.session.can_fail_over());
    // A fresh upstream reader after the move; the session goes on.
    r.session.upstream_replaced();
    r.upstream_sends(&server(r#"{"type":"welcome"}"#));
    assert!(r.session.can_fail_over());
    // Once the client closed, no more.
    r.client_sends(&frame(8, true, &1000u16.to_be_bytes(), Some(MASK)));
    assert!(!r.session.can_fail_over());
}
