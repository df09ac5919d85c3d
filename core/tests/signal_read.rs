//! `signal::read_message`: every dialect, candidates, pointers, and properties (never fails;
//! the configured pointers read exactly what `pointer_value` reads).
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use serde_json::json;
use sigmesh_core::config::Signaling;
use sigmesh_core::signal::{
    Dialect, IceTally, SignalKind, pointer_value, read_message, read_message_with,
};

const HOST: &str = "candidate:842163049 1 udp 2122260223 192.168.1.5 53622 typ host generation 0";
const SRFLX_TCP: &str = "candidate:1 1 tcp 1342177279 203.0.113.7 50000 typ srflx raddr 192.168.1.5 rport 9 tcptype passive";
const RELAY: &str =
    "candidate:3 1 UDP 92217343 198.51.100.4 57843 typ relay raddr 198.51.100.4 rport 57843";
const MDNS: &str =
    "candidate:0 1 UDP 2122252543 4a0ab2e2-9c15-4f39-a2a4-4fd3ed5e5dd2.local 54589 typ host";

fn none() -> Signaling {
    Signaling::default()
}

fn demo() -> Signaling {
    Signaling {
        kind: Some("/type".into()),
        room: Some("/room".into()),
        peer: Some("/from".into()),
    }
}

fn sdp(cands: &[&str]) -> String {
    let mut s = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=ice-ufrag:Kx9d\r\n".to_owned();
    for c in cands {
        s += &format!("a={c}\r\n");
    }
    s
}

/// (kind, dialect, wrapped, label)
fn shape(text: &str, cfg: &Signaling) -> (SignalKind, Dialect, bool, &'static str) {
    let r = read_message(text, cfg);
    (r.kind, r.dialect, r.wrapped, r.label)
}

#[test]
fn plain_browser_json() {
    let offer = json!({ "type": "offer", "sdp": sdp(&[HOST, RELAY]) }).to_string();
    let r = read_message(&offer, &none());
    assert_eq!(
        (r.kind, r.dialect, r.label),
        (SignalKind::Offer, Dialect::Plain, "offer")
    );
    assert_eq!(
        r.ice,
        IceTally {
            host: 1,
            relay: 1,
            udp: 2,
            ..IceTally::default()
        }
    );
    let answer = json!({ "type": "answer", "sdp": sdp(&[]) }).to_string();
    assert_eq!(
        shape(&answer, &none()),
        (SignalKind::Answer, Dialect::Plain, false, "answer")
    );
    let cand =
        json!({ "candidate": { "candidate": SRFLX_TCP, "sdpMid": "0", "sdpMLineIndex": 0 } })
            .to_string();
    let r = read_message(&cand, &none());
    assert_eq!(
        (r.kind, r.dialect, r.label),
        (SignalKind::Candidate, Dialect::Plain, "candidate")
    );
    assert_eq!(
        r.ice,
        IceTally {
            srflx: 1,
            tcp: 1,
            ..IceTally::default()
        }
    );
    // End of candidates: a candidate message without a candidate line.
    let end = json!({ "candidate": { "candidate": "", "sdpMid": "0" } }).to_string();
    let r = read_message(&end, &none());
    assert_eq!(
        (r.kind, r.ice.total(), r.ice.invalid),
        (SignalKind::Candidate, 0, 0)
    );
}

#[test]
fn the_demo_page() {
    let cfg = demo();
    let m = json!({ "type": "candidate", "room": "r1", "from": "alice", "to": "bob",
        "candidate": { "candidate": MDNS, "sdpMid": "0", "sdpMLineIndex": 0 } })
    .to_string();
    let r = read_message(&m, &cfg);
    assert_eq!(
        (r.kind, r.dialect, r.label),
        (SignalKind::Candidate, Dialect::Configured, "candidate")
    );
    assert_eq!(
        (r.room.as_deref(), r.peer.as_deref()),
        (Some("r1"), Some("alice"))
    );
    assert_eq!(
        r.ice,
        IceTally {
            host: 1,
            udp: 1,
            ..IceTally::default()
        }
    );
    let join = r#"{"type":"join","room":"r1","from":"alice"}"#;
    assert_eq!(
        shape(join, &cfg),
        (SignalKind::Join, Dialect::Configured, false, "join")
    );
    assert_eq!(
        shape(join, &none()),
        (SignalKind::Join, Dialect::Typed, false, "join")
    );
    let welcome = r#"{"type":"welcome","room":"r1","server":"stable","peers":[]}"#;
    assert_eq!(
        shape(welcome, &cfg),
        (SignalKind::Other, Dialect::Typed, false, "welcome")
    );
    assert_eq!(
        shape(welcome, &none()),
        (SignalKind::Other, Dialect::Typed, false, "welcome")
    );
    let leave = r#"{"type":"leave","room":"r1","from":"alice"}"#;
    assert_eq!(shape(leave, &none()).0, SignalKind::Leave);
    // Borrowed, not copied, when there is nothing to unescape.
    let r = read_message(join, &cfg);
    assert!(matches!(r.room, Some(std::borrow::Cow::Borrowed("r1"))));
    let r = read_message(r#"{"room":"r\u0031","from":7}"#, &cfg);
    assert_eq!(
        (r.room.as_deref(), r.peer.as_deref()),
        (Some("r1"), Some("7"))
    );
}

#[test]
fn peerjs() {
    let offer = json!({ "type": "OFFER", "dst": "peer-b",
        "payload": { "sdp": { "type": "offer", "sdp": sdp(&[HOST]) }, "type": "media", "connectionId": "mc_x", "browser": "chrome" } })
    .to_string();
    let r = read_message(&offer, &none());
    assert_eq!(
        (r.kind, r.dialect, r.label),
        (SignalKind::Offer, Dialect::PeerJs, "offer")
    );
    assert_eq!(r.ice.host, 1);
    let answer = json!({ "type": "ANSWER", "src": "peer-b", "payload": { "sdp": { "type": "answer", "sdp": "v=0" }, "type": "data" } }).to_string();
    assert_eq!(
        shape(&answer, &none()),
        (SignalKind::Answer, Dialect::PeerJs, false, "answer")
    );
    let cand = json!({ "type": "CANDIDATE", "dst": "peer-b",
        "payload": { "candidate": { "candidate": RELAY, "sdpMLineIndex": 0, "sdpMid": "0" }, "type": "data", "connectionId": "dc_y" } })
    .to_string();
    let r = read_message(&cand, &none());
    assert_eq!(
        (r.kind, r.dialect, r.ice.relay),
        (SignalKind::Candidate, Dialect::PeerJs, 1)
    );
    assert_eq!(
        shape(r#"{"type":"LEAVE","src":"peer-b"}"#, &none()).0,
        SignalKind::Leave
    );
    assert_eq!(
        shape(r#"{"type":"HEARTBEAT"}"#, &none()),
        (SignalKind::Other, Dialect::Typed, false, "other")
    );
}

#[test]
fn simple_peer_wrapped_in_app_messages() {
    // simple-peer's `signal` data, as apps relay it.
    let offer =
        json!({ "type": "signal", "to": "b", "data": { "type": "offer", "sdp": sdp(&[]) } })
            .to_string();
    assert_eq!(
        shape(&offer, &none()),
        (SignalKind::Offer, Dialect::Plain, true, "offer")
    );
    let cand = json!({ "signal": { "type": "candidate", "candidate": { "candidate": HOST, "sdpMLineIndex": 0, "sdpMid": "0" } } }).to_string();
    let r = read_message(&cand, &none());
    assert_eq!(
        (r.kind, r.wrapped, r.ice.host),
        (SignalKind::Candidate, true, 1)
    );
    let old_style =
        json!({ "room": "r", "data": { "candidate": { "candidate": HOST } } }).to_string();
    assert_eq!(shape(&old_style, &none()).0, SignalKind::Candidate);
    let reneg = json!({ "type": "signal", "data": { "renegotiate": true } }).to_string();
    assert_eq!(
        shape(&reneg, &none()),
        (SignalKind::Other, Dialect::SimplePeer, true, "other")
    );
    let tr = json!({ "type": "transceiverRequest", "transceiverRequest": { "kind": "video", "init": {} } }).to_string();
    assert_eq!(
        shape(&tr, &none()),
        (SignalKind::Other, Dialect::SimplePeer, false, "other")
    );
    // MDN's perfect negotiation and its older "video-offer" sample.
    let pn = json!({ "description": { "type": "answer", "sdp": "v=0" } }).to_string();
    assert_eq!(
        shape(&pn, &none()),
        (SignalKind::Answer, Dialect::Plain, true, "answer")
    );
    let mdn = json!({ "type": "video-offer", "name": "a", "target": "b", "sdp": { "type": "offer", "sdp": "v=0" } }).to_string();
    assert_eq!(
        shape(&mdn, &none()),
        (SignalKind::Offer, Dialect::Plain, false, "offer")
    );
    let mdn =
        json!({ "type": "new-ice-candidate", "target": "b", "candidate": { "candidate": HOST } })
            .to_string();
    assert_eq!(
        shape(&mdn, &none()),
        (SignalKind::Candidate, Dialect::Plain, false, "candidate")
    );
    // With a configured type that names an envelope, the shape still decides.
    assert_eq!(shape(&offer, &demo()).0, SignalKind::Offer);
}

#[test]
fn socket_io() {
    let offer = format!(
        r#"42["offer",{}]"#,
        json!({ "room": "r1", "from": "a", "sdp": sdp(&[HOST, SRFLX_TCP]) })
    );
    let r = read_message(&offer, &demo());
    assert_eq!(
        (r.kind, r.dialect, r.label),
        (SignalKind::Offer, Dialect::SocketIo, "offer")
    );
    assert_eq!(
        (r.room.as_deref(), r.peer.as_deref()),
        (Some("r1"), Some("a")),
        "pointers read the first argument"
    );
    assert_eq!(
        r.ice,
        IceTally {
            host: 1,
            srflx: 1,
            udp: 1,
            tcp: 1,
            ..IceTally::default()
        }
    );
    let ns = format!(
        r#"42/signal,["ice-candidate",{}]"#,
        json!({ "candidate": { "candidate": RELAY } })
    );
    let r = read_message(&ns, &none());
    assert_eq!(
        (r.kind, r.dialect, r.ice.relay),
        (SignalKind::Candidate, Dialect::SocketIo, 1)
    );
    let ack = r#"4217["join-room",{"room":"r1"}]"#;
    assert_eq!(
        shape(ack, &none()),
        (SignalKind::Join, Dialect::SocketIo, false, "join")
    );
    let generic = format!(
        r#"42/ns,5["message",{}]"#,
        json!({ "type": "answer", "sdp": "v=0" })
    );
    assert_eq!(
        shape(&generic, &none()),
        (SignalKind::Answer, Dialect::SocketIo, true, "answer")
    );
    assert_eq!(
        shape(r#"43/ns,5[{"ok":true}]"#, &none()),
        (SignalKind::Other, Dialect::SocketIo, false, "other")
    );
    assert_eq!(
        shape(r#"451-["offer",{"_placeholder":true,"num":0}]"#, &none()).0,
        SignalKind::Offer
    );
    assert_eq!(
        shape("40", &none()),
        (SignalKind::Other, Dialect::SocketIo, false, "other")
    );
    assert_eq!(
        shape("2", &none()),
        (SignalKind::Other, Dialect::Unknown, false, "other"),
        "an Engine.IO ping"
    );
    assert_eq!(shape(r#"42["leave"]"#, &none()).0, SignalKind::Leave);
}

#[test]
fn unknown_and_malformed_pass_as_other() {
    for t in [
        "",
        "hello",
        "{",
        r#"{"type":"offer""#,
        r#"{"type":"offer"} x"#,
        "[1,]",
        "42",
        "null",
        r#"{"a":1}"#,
        "[[[[[[]]]]]]",
    ] {
        assert_eq!(shape(t, &none()).0, SignalKind::Other, "{t}");
        assert_eq!(shape(t, &demo()).0, SignalKind::Other, "{t}");
    }
    let deep = "[".repeat(10_000);
    assert_eq!(
        shape(&deep, &demo()),
        (SignalKind::Other, Dialect::Unknown, false, "other")
    );
    // Malformed JSON reads no pointer, but its candidates still count.
    let broken = format!(r#"{{"type":"candidate","room":"r","candidate":"{HOST}""#);
    let r = read_message(&broken, &demo());
    assert_eq!((r.kind, r.room, r.ice.host), (SignalKind::Other, None, 1));
    // Raw SDP, not JSON.
    let raw = sdp(&[HOST, RELAY, MDNS]);
    let r = read_message(&raw, &none());
    assert_eq!(
        (r.kind, r.ice.total(), r.ice.host),
        (SignalKind::Other, 3, 2)
    );
    // `candidate:` followed by junk is invalid, not a candidate.
    let r = read_message(r#"{"note":"candidate: none yet"}"#, &none());
    assert_eq!((r.ice.total(), r.ice.invalid), (0, 1));
    // Long type words are not labels.
    let long = format!(r#"{{"type":"{}"}}"#, "offer".repeat(20));
    assert_eq!(shape(&long, &demo()).3, "other");
    assert_eq!(
        shape(r#"{"type":"OFFER"}"#, &demo()).3,
        "offer",
        "labels ignore case"
    );
}

#[test]
fn callback_sees_every_candidate() {
    let m = json!({ "type": "offer", "sdp": sdp(&[HOST, SRFLX_TCP, RELAY, MDNS]) }).to_string();
    let mut seen = Vec::new();
    let r = read_message_with(&m, &none(), |c| {
        seen.push((c.typ.label(), c.transport.label(), c.port))
    });
    assert_eq!(
        seen,
        vec![
            ("host", "udp", 53622),
            ("srflx", "tcp", 50000),
            ("relay", "udp", 57843),
            ("host", "udp", 54589)
        ]
    );
    assert_eq!(r.ice.total(), 4);
}

proptest! {
    /// Any text: never panics; the kind is always one of the six, the label from the fixed set.
    #[test]
    fn never_fails(s in "\\PC{0,300}", prefix in prop::sample::select(vec!["", "42", "42/ns,", "{\"type\":", "[\"offer\","])) {
        let t = format!("{prefix}{s}");
        let r = read_message(&t, &demo());
        let labels: Vec<&str> = sigmesh_core::signal::KNOWN_TYPES.iter().copied().chain(["other"]).collect();
        prop_assert!(labels.contains(&r.label), "{}", r.label);
    }

    /// The configured room/peer pointers read what `pointer_value` reads (non-empty values).
    #[test]
    fn pointers_agree_with_pointer_value(
        room in prop_oneof![Just(json!("r1")), Just(json!("")), Just(json!(5)), Just(json!(-1.5)), Just(json!(true)), Just(json!(null)), Just(json!({"x":1})), "\\PC{0,12}".prop_map(|s| json!(s))],
        peer in "\\PC{0,12}",
        nest in any::<bool>(),
        dup in any::<bool>(),
    ) {
        let cfg = if nest {
            Signaling { kind: Some("/type".into()), room: Some("/meta/room".into()), peer: Some("/meta/from".into()) }
        } else { demo() };
        let inner = json!({ "room": room, "from": peer });
        let mut text = if nest {
            json!({ "type": "offer", "meta": inner, "sdp": "v=0" }).to_string()
        } else {
            let mut o = inner.clone();
            o["type"] = json!("join");
            o.to_string()
        };
        if dup {
            // A repeated key: the last one counts.
            text = text.replacen('{', r#"{"room":"first","from":"first","meta":{"room":"first"},"#, 1);
        }
        let r = read_message(&text, &cfg);
        let want = |p: &Option<String>| pointer_value(&text, p.as_deref().unwrap_or("")).filter(|v| !v.is_empty());
        prop_assert_eq!(r.room.map(|c| c.into_owned()), want(&cfg.room));
        prop_assert_eq!(r.peer.map(|c| c.into_owned()), want(&cfg.peer));
    }
}
