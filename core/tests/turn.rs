//! TURN tracking: the tracker on whole message flows, and never panicking on arbitrary bytes.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use proptest::prelude::*;
use sigmesh_core::config::Cidr;
use sigmesh_core::turn::stun::{self, Builder, Class, Message, attr, encode_xor_address, method};
use sigmesh_core::turn::tracker::rest_password;
use sigmesh_core::turn::{
    FiveTuple, Frame, Framer, Limits, PeerPolicy, Tracker, Transport, TurnAction,
};

const SECRET: &str = "s3cret";
const USER: &str = "4000000000:alice";
const REALM: &str = "sigmesh.test";

fn ft() -> FiveTuple {
    FiveTuple {
        transport: Transport::Udp,
        client: "127.0.0.1:50000".parse().unwrap(),
        server: "127.0.0.1:3478".parse().unwrap(),
    }
}

fn t(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn tracker(deny: Option<&[Cidr]>) -> Tracker {
    Tracker::new(
        PeerPolicy::new(deny),
        Some(SECRET.into()),
        Limits::default(),
    )
}

fn key() -> [u8; 16] {
    stun::long_term_key(USER, REALM, &rest_password(SECRET, USER))
}

fn request(m: u16, txid: u8, peers: &[&str], extra: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let id = [txid; 12];
    let mut b = Builder::new(m, Class::Request, &id)
        .attribute(attr::USERNAME, USER.as_bytes())
        .attribute(attr::REALM, REALM.as_bytes())
        .attribute(attr::NONCE, b"n0nce");
    for p in peers {
        let a: SocketAddr = p.parse().unwrap();
        b = b.attribute(attr::XOR_PEER_ADDRESS, &encode_xor_address(a, &id));
    }
    for (k, v) in extra {
        b = b.attribute(*k, v);
    }
    b.integrity(&key()).fingerprint()
}

fn allocate_success(txid: u8, lifetime: u32) -> Vec<u8> {
    let id = [txid; 12];
    Builder::new(method::ALLOCATE, Class::Success, &id)
        .attribute(
            attr::XOR_RELAYED_ADDRESS,
            &encode_xor_address("127.0.0.1:49152".parse().unwrap(), &id),
        )
        .attribute(
            attr::XOR_MAPPED_ADDRESS,
            &encode_xor_address("127.0.0.1:40000".parse().unwrap(), &id),
        )
        .attribute(attr::LIFETIME, &lifetime.to_be_bytes())
        .finish()
}

fn success(m: u16, txid: u8, extra: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut b = Builder::new(m, Class::Success, &[txid; 12]);
    for (k, v) in extra {
        b = b.attribute(*k, v);
    }
    b.finish()
}

fn open(tr: &mut Tracker) {
    let a = request(
        method::ALLOCATE,
        1,
        &[],
        &[(attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])],
    );
    assert_eq!(tr.from_client(ft(), &a, t(0)).action, TurnAction::Forward);
    tr.from_server(ft(), &allocate_success(1, 600), t(0));
}

#[test]
fn allocation_lifecycle_and_bytes() {
    let mut tr = tracker(Some(&[]));
    open(&mut tr);
    let a = tr.table().get(&ft()).unwrap().clone();
    assert_eq!(a.user.as_deref(), Some("alice"));
    assert!(
        a.sigmesh_credential,
        "MESSAGE-INTEGRITY checked with the key from sigmesh's secret"
    );
    assert_eq!(
        a.relayed,
        vec!["127.0.0.1:49152".parse::<SocketAddr>().unwrap()]
    );
    assert_eq!(a.expires_at, t(600));

    // Permission, channel bind, data both ways.
    let cp = request(method::CREATE_PERMISSION, 2, &["8.8.8.8:1"], &[]);
    assert_eq!(tr.from_client(ft(), &cp, t(1)).action, TurnAction::Forward);
    tr.from_server(ft(), &success(method::CREATE_PERMISSION, 2, &[]), t(1));
    let cb = request(
        method::CHANNEL_BIND,
        3,
        &["8.8.4.4:9"],
        &[(attr::CHANNEL_NUMBER, vec![0x40, 0x00, 0, 0])],
    );
    assert_eq!(tr.from_client(ft(), &cb, t(1)).action, TurnAction::Forward);
    tr.from_server(ft(), &success(method::CHANNEL_BIND, 3, &[]), t(1));
    let send = Builder::new(method::SEND, Class::Indication, &[4; 12])
        .attribute(
            attr::XOR_PEER_ADDRESS,
            &encode_xor_address("8.8.8.8:1".parse().unwrap(), &[4; 12]),
        )
        .attribute(attr::DATA, &[0; 10])
        .finish();
    assert_eq!(tr.from_client(ft(), &send, t(2)).relayed, 10);
    let cd = [0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0];
    assert_eq!(tr.from_client(ft(), &cd, t(2)).relayed, 5);
    assert_eq!(tr.from_server(ft(), &cd, t(2)).relayed, 5);
    let data = Builder::new(method::DATA, Class::Indication, &[5; 12])
        .attribute(
            attr::XOR_PEER_ADDRESS,
            &encode_xor_address("8.8.8.8:1".parse().unwrap(), &[5; 12]),
        )
        .attribute(attr::DATA, &[0; 7])
        .finish();
    assert_eq!(tr.from_server(ft(), &data, t(3)).relayed, 7);
    let a = tr.table().get(&ft()).unwrap();
    assert_eq!((a.bytes_to_peers, a.bytes_from_peers), (15, 12));
    assert_eq!(a.peers(t(3)).len(), 2);
    assert_eq!(a.channels.len(), 1);

    // Refresh extends; expiry removes at the end of the lifetime.
    let r = request(
        method::REFRESH,
        6,
        &[],
        &[(attr::LIFETIME, 300u32.to_be_bytes().to_vec())],
    );
    tr.from_client(ft(), &r, t(100));
    tr.from_server(
        ft(),
        &success(
            method::REFRESH,
            6,
            &[(attr::LIFETIME, 300u32.to_be_bytes().to_vec())],
        ),
        t(100),
    );
    assert_eq!(tr.table().get(&ft()).unwrap().expires_at, t(400));
    assert!(tr.expire(t(399)).is_empty());
    assert_eq!(tr.expire(t(400)).len(), 1);
    assert!(tr.table().is_empty());
}

#[test]
fn refresh_zero_ends_and_errors_do_not_allocate() {
    let mut tr = tracker(None);
    // 401 to the first Allocate: nothing is tracked.
    let a = request(method::ALLOCATE, 9, &[], &[]);
    tr.from_client(ft(), &a, t(0));
    let err = Builder::new(method::ALLOCATE, Class::Error, &[9; 12])
        .error_code(401, "Unauthorized")
        .finish();
    tr.from_server(ft(), &err, t(0));
    assert!(tr.table().is_empty());
    open(&mut tr);
    assert_eq!(tr.table().len(), 1);
    let r = request(method::REFRESH, 7, &[], &[(attr::LIFETIME, vec![0; 4])]);
    tr.from_client(ft(), &r, t(1));
    tr.from_server(
        ft(),
        &success(method::REFRESH, 7, &[(attr::LIFETIME, vec![0; 4])]),
        t(1),
    );
    assert!(tr.table().is_empty());
}

fn refused(tr: &mut Tracker, bytes: &[u8], txid: u8, m: u16) {
    let out = tr.from_client(ft(), bytes, t(1));
    let TurnAction::Reply(resp) = out.action else {
        panic!("expected a reply, got {out:?}")
    };
    let r = Message::parse(&resp).unwrap();
    assert_eq!((r.method, r.class, r.txid), (m, Class::Error, [txid; 12]));
    assert_eq!(r.error_code(), Some(403));
    assert!(
        r.verify_integrity(&key()),
        "signed with the client's long-term key"
    );
}

#[test]
fn denied_peers_get_403_in_every_spelling() {
    let deny = [Cidr {
        addr: "10.0.0.0".parse().unwrap(),
        prefix: 8,
    }];
    for policy in [Some(&deny[..]), None] {
        let mut tr = tracker(policy);
        open(&mut tr);
        for (i, p) in [
            "10.0.0.1:80",
            "[::ffff:10.0.0.1]:80",
            "[::10.0.0.1]:80",
            "0.0.0.0:80",
            "[::]:80",
        ]
        .iter()
        .enumerate()
        {
            let id = 20 + i as u8;
            refused(
                &mut tr,
                &request(method::CREATE_PERMISSION, id, &[p], &[]),
                id,
                method::CREATE_PERMISSION,
            );
            let cb = request(
                method::CHANNEL_BIND,
                id + 10,
                &[p],
                &[(attr::CHANNEL_NUMBER, vec![0x40, 1, 0, 0])],
            );
            refused(&mut tr, &cb, id + 10, method::CHANNEL_BIND);
            refused(
                &mut tr,
                &request(method::CONNECT, id + 20, &[p], &[]),
                id + 20,
                method::CONNECT,
            );
            // One bad peer among good ones refuses the whole request.
            let mixed = request(method::CREATE_PERMISSION, id + 30, &["8.8.8.8:1", p], &[]);
            refused(&mut tr, &mixed, id + 30, method::CREATE_PERMISSION);
            let send = Builder::new(method::SEND, Class::Indication, &[1; 12])
                .attribute(
                    attr::XOR_PEER_ADDRESS,
                    &encode_xor_address(p.parse().unwrap(), &[1; 12]),
                )
                .attribute(attr::DATA, b"x")
                .finish();
            let out = tr.from_client(ft(), &send, t(1));
            assert_eq!(out.action, TurnAction::Drop, "{p}");
            assert!(out.denied.is_some());
        }
        assert!(tr.table().get(&ft()).unwrap().permissions.is_empty());
    }
}

#[test]
fn unsigned_403_when_the_credential_is_not_sigmesh_s() {
    let mut tr = Tracker::new(PeerPolicy::new(None), None, Limits::default());
    let out = tr.from_client(
        ft(),
        &request(method::CREATE_PERMISSION, 1, &["10.0.0.1:1"], &[]),
        t(0),
    );
    let TurnAction::Reply(resp) = out.action else {
        panic!()
    };
    let r = Message::parse(&resp).unwrap();
    assert_eq!(r.error_code(), Some(403));
    assert!(r.attribute(attr::MESSAGE_INTEGRITY).is_none());
}

#[test]
fn unreadable_peer_bearing_requests_fail_closed() {
    let mut tr = tracker(None);
    // A CreatePermission whose XOR-PEER-ADDRESS has an unknown family.
    let m = Builder::new(method::CREATE_PERMISSION, Class::Request, &[3; 12])
        .attribute(attr::XOR_PEER_ADDRESS, &[0, 9, 0, 0, 1, 2, 3, 4])
        .finish();
    let TurnAction::Reply(resp) = tr.from_client(ft(), &m, t(0)).action else {
        panic!()
    };
    assert_eq!(Message::parse(&resp).unwrap().error_code(), Some(400));
    // Truncated body.
    let mut bad = request(method::CHANNEL_BIND, 4, &["8.8.8.8:1"], &[]);
    bad[3] = bad[3].wrapping_add(4);
    assert!(matches!(
        tr.from_client(ft(), &bad, t(0)).action,
        TurnAction::Reply(_)
    ));
    // Other garbage is not understood, and never reaches the TURN server (fail closed): not
    // STUN, a STUN header without the cookie, ChannelData of a client without an allocation.
    for garbage in [
        &b"\xc0hello"[..],
        &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03rest of a TLS hello"[..],
        &[0x40, 0, 0, 1, 7, 0, 0, 0][..],
    ] {
        let out = tr.from_client(ft(), garbage, t(0));
        assert_eq!(
            (out.action, out.understood),
            (TurnAction::Drop, false),
            "{garbage:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = Message::parse(&bytes);
        let _ = stun::ChannelData::parse(&bytes);
        let mut tr = tracker(None);
        let _ = tr.from_client(ft(), &bytes, t(0));
        let _ = tr.from_server(ft(), &bytes, t(0));
        let mut f = Framer::new();
        f.push(&bytes);
        // Every byte is framed, still buffered, or the stream was refused.
        let mut total = 0;
        let mut refused = false;
        while let Some(fr) = f.next_frame() {
            refused |= fr == Frame::Invalid;
            total += fr.bytes().len();
        }
        prop_assert!(refused || total + f.buffered() == bytes.len());
        prop_assert!(f.buffered() <= bytes.len());
    }

    #[test]
    fn never_panics_on_stun_shaped_bytes(
        m in 0u16..0x1000, class in 0u8..4,
        attrs in proptest::collection::vec((any::<u16>(), proptest::collection::vec(any::<u8>(), 0..40)), 0..6),
        lie in 0u16..8,
    ) {
        let class = [Class::Request, Class::Indication, Class::Success, Class::Error][class as usize];
        let mut b = Builder::new(m, class, &[9; 12]);
        for (k, v) in &attrs { b = b.attribute(*k, v); }
        let mut bytes = b.finish();
        if lie > 0 {
            let len = u16::from_be_bytes([bytes[2], bytes[3]]).wrapping_add(lie * 4);
            bytes[2..4].copy_from_slice(&len.to_be_bytes());
        }
        let mut tr = tracker(None);
        open(&mut tr);
        let out = tr.from_client(ft(), &bytes, t(1));
        let _ = tr.from_server(ft(), &bytes, t(1));
        // Whatever it is, a peer-bearing request never reaches the server with a denied peer.
        if let Ok(msg) = Message::parse(&bytes)
            && let Ok(peers) = msg.peer_addresses()
            && peers.iter().any(|p| tr.policy().check(*p).is_denied())
            && matches!(m, method::CREATE_PERMISSION | method::CHANNEL_BIND | method::CONNECT | method::SEND)
            && matches!(class, Class::Request | Class::Indication)
        {
            prop_assert_ne!(out.action, TurnAction::Forward);
        }
    }

    #[test]
    fn framer_reassembles_any_chunking(cuts in proptest::collection::vec(1usize..40, 1..20), n in 1usize..6) {
        let mut stream = Vec::new();
        let mut expect = Vec::new();
        for i in 0..n {
            let s = request(method::CREATE_PERMISSION, i as u8, &["8.8.8.8:1"], &[]);
            let cd = vec![0x40, 0x01, 0, (i % 4) as u8 + 1, 7, 7, 7, 7];
            stream.extend_from_slice(&s);
            stream.extend_from_slice(&cd);
            expect.push(Frame::Stun(s));
            expect.push(Frame::ChannelData(cd));
        }
        let mut f = Framer::new();
        let mut got = Vec::new();
        let mut at = 0;
        for c in cuts.iter().cycle() {
            if at >= stream.len() { break; }
            let end = (at + c).min(stream.len());
            f.push(&stream[at..end]);
            at = end;
            while let Some(fr) = f.next_frame() { got.push(fr); }
        }
        prop_assert_eq!(got, expect);
    }
}

/// Issue 11, item 5: outstanding requests were capped by count, not bytes (a USERNAME of 0xFF
/// bytes triples as lossy UTF-8), and a request could name any number of peers.
#[test]
fn pending_requests_are_bounded_in_bytes_and_peers_per_request() {
    let limits = Limits {
        pending_bytes: 256 * 1024,
        ..Limits::default()
    };
    let mut tr = Tracker::new(PeerPolicy::new(None), None, limits);
    for i in 0..20_000u32 {
        let id = {
            let mut id = [0u8; 12];
            id[..4].copy_from_slice(&i.to_be_bytes());
            id
        };
        let m = Builder::new(method::ALLOCATE, Class::Request, &id)
            .attribute(attr::USERNAME, &[0xff; 1000])
            .finish();
        let _ = tr.from_client(ft(), &m, t(0));
        assert!(
            tr.pending_bytes() <= 256 * 1024 + 2048,
            "{}",
            tr.pending_bytes()
        );
    }
    // 65 peers in one CreatePermission: refused before anything is remembered or forwarded.
    let peers: Vec<String> = (0..65)
        .map(|i| format!("8.8.{}.{}:9", i / 250, i % 250))
        .collect();
    let refs: Vec<&str> = peers.iter().map(String::as_str).collect();
    let out = tr.from_client(
        ft(),
        &request(method::CREATE_PERMISSION, 9, &refs, &[]),
        t(0),
    );
    let TurnAction::Reply(resp) = out.action else {
        panic!("{out:?}")
    };
    assert_eq!(Message::parse(&resp).unwrap().error_code(), Some(400));
    // 64 are fine.
    let out = tr.from_client(
        ft(),
        &request(method::CREATE_PERMISSION, 10, &refs[..64], &[]),
        t(0),
    );
    assert_eq!(out.action, TurnAction::Forward);
}

/// `allocations_per_user`: live allocations and unanswered Allocates count; errors, Refresh 0,
/// expiry and a closed connection give the place back; retransmissions are not counted twice.
#[test]
fn the_per_user_quota_counts_live_and_pending_allocations() {
    let mut tr = Tracker::new(
        PeerPolicy::new(None),
        Some(SECRET.into()),
        Limits {
            allocations_per_user: Some(2),
            ..Limits::default()
        },
    );
    let flow = |port: u16| FiveTuple {
        transport: Transport::Udp,
        client: SocketAddr::from(([127, 0, 0, 1], port)),
        server: "127.0.0.1:3478".parse().unwrap(),
    };
    let allocate = |txid: u8| request(method::ALLOCATE, txid, &[], &[]);
    let code_of = |out: &sigmesh_core::turn::TurnOutcome| match &out.action {
        TurnAction::Reply(r) => Message::parse(r).unwrap().error_code(),
        _ => None,
    };
    // Two pending Allocates on two flows hold both places: a third flow is refused at once.
    assert_eq!(
        tr.from_client(flow(1), &allocate(1), t(0)).action,
        TurnAction::Forward
    );
    assert_eq!(
        tr.from_client(flow(2), &allocate(2), t(0)).action,
        TurnAction::Forward
    );
    // A retransmission of a pending request is not a new one.
    assert_eq!(
        tr.from_client(flow(2), &allocate(2), t(0)).action,
        TurnAction::Forward
    );
    assert_eq!(tr.held(USER), 2);
    let third = tr.from_client(flow(3), &allocate(3), t(0));
    assert_eq!(code_of(&third), Some(486));
    // One is granted, one refused by the server: one place is free again.
    tr.from_server(flow(1), &allocate_success(1, 600), t(0));
    let err = Builder::new(method::ALLOCATE, Class::Error, &[2; 12])
        .error_code(438, "Stale Nonce")
        .finish();
    tr.from_server(flow(2), &err, t(0));
    assert_eq!(tr.held(USER), 1);
    assert_eq!(
        tr.from_client(flow(3), &allocate(4), t(1)).action,
        TurnAction::Forward
    );
    tr.from_server(flow(3), &allocate_success(4, 60), t(1));
    assert_eq!(tr.held(USER), 2);
    // Another user is not affected; a fresh credential of alice is still alice.
    assert_eq!(tr.held("4000000099:alice"), 2);
    assert_eq!(
        code_of(&tr.from_client(flow(4), &allocate(5), t(2))),
        Some(486)
    );
    // Refresh 0, expiry and a closed connection each free a place.
    let r = request(method::REFRESH, 6, &[], &[(attr::LIFETIME, vec![0; 4])]);
    tr.from_client(flow(1), &r, t(3));
    tr.from_server(
        flow(1),
        &success(method::REFRESH, 6, &[(attr::LIFETIME, vec![0; 4])]),
        t(3),
    );
    assert_eq!(tr.held(USER), 1);
    assert_eq!(tr.expire(t(61)).len(), 1);
    assert_eq!(tr.held(USER), 0);
    tr.from_client(flow(5), &allocate(7), t(62));
    assert_eq!(tr.held(USER), 1);
    tr.closed(&flow(5));
    assert_eq!(tr.held(USER), 0);
    // An unanswered Allocate is forgotten after the pending timeout, and its place with it.
    tr.from_client(flow(6), &allocate(8), t(70));
    tr.expire(t(70) + sigmesh_core::turn::tracker::PENDING_TIMEOUT);
    assert_eq!(tr.held(USER), 0);
}
