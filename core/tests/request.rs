//! The request phase: the order of checks and every verdict, with buckets in a plain map.
#![allow(clippy::unwrap_used)]

mod common;

use common::Buckets;

use std::time::Duration;

use sigmesh_core::compiled::{Capabilities, Compiled, DeflatePolicy};
use sigmesh_core::config::load;
use sigmesh_core::label::{LimitKind, Outcome};
use sigmesh_core::request::{Refusal, RequestFacts, Uncounted, Verdict, decide};
use sigmesh_core::split::{Reason, bucket_of};

const CONFIG: &str = r#"
listen: 127.0.0.1:0
routes:
  - name: sig
    match: { path_prefix: /ws }
    websocket: { allowed_origins: [https://ok.example] }
    limits: { connections: { rate: 1, per: 1h, burst: 2, key: client_ip } }
    split: { sticky: query:room }
    upstreams:
      - { name: stable, url: ws://127.0.0.1:1/ws, weight: 50 }
      - { name: canary, url: ws://127.0.0.1:2/ws, weight: 50 }
  - name: first
    match: { path_prefix: /first }
    websocket: {}
    split: { sticky: "message:/room" }
    upstreams:
      - { name: stable, url: ws://127.0.0.1:1/ws, weight: 50 }
      - { name: canary, url: ws://127.0.0.1:2/ws, weight: 50 }
  - name: web
    match: { path_prefix: /turn }
    limits: { connections: { rate: 1, per: 1h, burst: 1, key: client_ip } }
    upstreams: [{ name: web, url: http://127.0.0.1:3 }]
turn: { secret: s, uris: [turn:t], credentials_path: /creds }
"#;

fn compiled(caps: Capabilities) -> Compiled {
    Compiled::new(load(CONFIG).unwrap(), caps).unwrap()
}

struct Req {
    method: &'static str,
    path: &'static str,
    query: Option<&'static str>,
    headers: Vec<(&'static str, &'static str)>,
    draining: bool,
}

fn upgrade(path: &'static str, query: Option<&'static str>) -> Req {
    Req {
        method: "GET",
        path,
        query,
        headers: vec![
            ("upgrade", "websocket"),
            ("connection", "keep-alive, Upgrade"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
            ("sec-websocket-version", "13"),
            ("origin", "https://ok.example"),
        ],
        draining: false,
    }
}

fn plain(method: &'static str, path: &'static str, query: Option<&'static str>) -> Req {
    Req {
        method,
        path,
        query,
        headers: vec![],
        draining: false,
    }
}

fn run(c: &Compiled, b: &Buckets, r: &Req) -> Verdict {
    let facts = RequestFacts {
        method: r.method,
        protocol: None,
        host: Some("example.com"),
        path: r.path,
        query: r.query,
        headers: &r.headers,
        client_ip: "192.0.2.1",
        now: Duration::from_secs(10),
        unix_secs: 1_700_000_000,
        random: 0,
        draining: r.draining,
    };
    decide(c, &facts, b, c, &Uncounted)
}

fn status(v: &Verdict) -> u16 {
    match v {
        Verdict::Respond(r) => r.status,
        Verdict::NoRoute => 404,
        _ => 0,
    }
}

#[test]
fn draining_answers_first_and_credentials_come_before_routes() {
    let c = compiled(Capabilities::PROXY);
    let b = Buckets::default();
    let mut r = plain("GET", "/nowhere", None);
    r.draining = true;
    let v = run(&c, &b, &r);
    let Verdict::Respond(reply) = &v else {
        panic!("{v:?}")
    };
    assert_eq!(reply.status, 503);
    assert!(reply.headers.contains(&("connection", "close".into())));
    assert_eq!(reply.refusal, Some(Refusal::Draining));

    assert!(matches!(
        run(&c, &b, &plain("GET", "/nowhere", None)),
        Verdict::NoRoute
    ));
    // The credentials path is answered whether a route matches it or not.
    let v = run(&c, &b, &plain("GET", "/creds", Some("user=al")));
    let Verdict::Respond(reply) = v else { panic!() };
    assert_eq!(reply.status, 200);
    assert_eq!(reply.content_type, "application/json");
    assert!(reply.body.contains("\"username\":\"1700003600:al\""));
    assert_eq!(status(&run(&c, &b, &plain("POST", "/creds", None))), 405);
    assert_eq!(status(&run(&c, &b, &plain("GET", "/creds", None))), 400);
}

#[test]
fn credentials_auth_asks_after_the_bucket_and_fails_closed() {
    use sigmesh_core::request::AuthAnswer;
    let plain_turn = compiled(Capabilities::PROXY);
    assert!(
        plain_turn
            .warnings()
            .iter()
            .any(|w| w.starts_with("turn.credentials_auth: absent"))
    );
    let text = CONFIG.replace(
        "turn: { secret: s, uris: [turn:t], credentials_path: /creds }",
        "turn: { secret: s, uris: [turn:t], credentials_path: /creds, credentials_auth: { request: \"http://127.0.0.1:9/auth\" } }",
    );
    let c = Compiled::new(load(&text).unwrap(), Capabilities::PROXY).unwrap();
    assert!(!c.warnings().iter().any(|w| w.starts_with("turn.")));
    let b = Buckets::default();
    // The method is checked first; the bucket before anyone is asked.
    assert_eq!(status(&run(&c, &b, &plain("POST", "/creds", None))), 405);
    let mut r = plain("GET", "/creds", Some("user=mallory"));
    r.headers = vec![("cookie", "s=1"), ("authorization", "Bearer t")];
    let Verdict::AskCredentialsAuth(check) = run(&c, &b, &r) else {
        panic!("not asked")
    };
    assert_eq!(check.request, "http://127.0.0.1:9/auth");
    assert_eq!(check.user_header(), "x-user");
    assert_eq!(
        check.headers,
        vec![
            ("cookie", "s=1".to_owned()),
            ("authorization", "Bearer t".to_owned()),
            ("x-forwarded-for", "192.0.2.1".to_owned()),
            ("x-original-uri", "/creds?user=mallory".to_owned()),
        ]
    );
    let said = |status, user| AuthAnswer::Status {
        status,
        user,
        www_authenticate: Some("Bearer"),
    };
    let ok = check.answer(said(200, Some("alice")), 1_700_000_000);
    assert_eq!(ok.status, 200);
    assert!(
        ok.body.contains("\"username\":\"1700003600:alice\""),
        "{}",
        ok.body
    );
    let denied = check.answer(said(401, None), 0);
    assert_eq!(denied.status, 401);
    assert!(
        denied
            .headers
            .contains(&("www-authenticate", "Bearer".into()))
    );
    assert_eq!(denied.refusal, Some(Refusal::CredentialsAuth));
    for (answer, want) in [
        (said(403, Some("alice")), 403),
        (said(204, None), 502),
        (said(200, Some("")), 502),
        (said(200, Some("a\u{1}b")), 502),
        (said(302, Some("alice")), 502),
        (said(500, Some("alice")), 502),
        (AuthAnswer::Unreachable, 502),
        (AuthAnswer::TimedOut, 504),
    ] {
        let reply = check.answer(answer, 0);
        assert_eq!(reply.status, want, "{answer:?}");
        assert!(!reply.body.contains("password"), "{answer:?}");
    }
    // Past the bucket (burst 20), nobody is asked.
    let asked = (0..25)
        .filter(|_| matches!(run(&c, &b, &r), Verdict::AskCredentialsAuth(_)))
        .count();
    assert_eq!(asked, 19);
}

#[test]
fn credentials_use_the_default_bucket_or_the_route_they_match() {
    let c = compiled(Capabilities::PROXY);
    let b = Buckets::default();
    let limited = (0..25)
        .map(|_| run(&c, &b, &plain("GET", "/creds", Some("user=u"))))
        .filter_map(|v| match v {
            Verdict::Respond(r) if r.status == 429 => Some(r),
            _ => None,
        })
        .collect::<Vec<_>>();
    // The default bucket's burst is 20.
    assert_eq!(limited.len(), 5);
    assert_eq!(limited[0].limit(), Some(LimitKind::Credentials));
    assert_eq!(limited[0].outcome(), None);
    // `/turn…` would match route `web`, whose connection bucket (burst 1) is lent instead.
    let mut c2 = load(CONFIG).unwrap();
    c2.turn.as_mut().unwrap().credentials_path = "/turn".into();
    let c2 = Compiled::new(c2, Capabilities::PROXY).unwrap();
    let b = Buckets::default();
    assert_eq!(
        status(&run(&c2, &b, &plain("GET", "/turn", Some("user=u")))),
        200
    );
    let v = run(&c2, &b, &plain("GET", "/turn", Some("user=u")));
    let Verdict::Respond(reply) = v else { panic!() };
    assert_eq!(reply.status, 429);
    assert_eq!(reply.limit(), Some(LimitKind::Connections));
    assert_eq!(reply.route, Some(2));
}

#[test]
fn a_handshake_is_checked_then_the_origin_then_the_bucket() {
    let c = compiled(Capabilities::PROXY);
    let b = Buckets::default();
    let mut r = upgrade("/ws", Some("room=a"));
    r.headers.retain(|(k, _)| *k != "sec-websocket-key");
    assert_eq!(status(&run(&c, &b, &r)), 400);
    let mut r = upgrade("/ws", Some("room=a"));
    r.headers.retain(|(k, _)| *k != "sec-websocket-version");
    assert_eq!(status(&run(&c, &b, &r)), 426);
    let mut r = upgrade("/ws", Some("room=a"));
    r.method = "POST";
    assert_eq!(status(&run(&c, &b, &r)), 405);
    let mut r = upgrade("/ws", Some("room=a"));
    r.headers.retain(|(k, _)| *k != "origin");
    let v = run(&c, &b, &r);
    let Verdict::Respond(reply) = v else { panic!() };
    assert_eq!(
        (reply.status, reply.outcome()),
        (403, Some(Outcome::Forbidden))
    );
    assert!(reply.upgrade);
    // None of those took a token: the burst of 2 is still there.
    for _ in 0..2 {
        assert!(matches!(
            run(&c, &b, &upgrade("/ws", Some("room=a"))),
            Verdict::Upgrade(_)
        ));
    }
    let v = run(&c, &b, &upgrade("/ws", Some("room=a")));
    let Verdict::Respond(reply) = v else { panic!() };
    assert_eq!(reply.status, 429);
    assert_eq!(reply.outcome(), Some(Outcome::RateLimited));
    assert_eq!(reply.limit(), Some(LimitKind::Connections));
    assert!(reply.headers.contains(&("retry-after", "3600".into())));
    assert!(reply.headers.contains(&("x-ratelimit-limit", "2".into())));
    // A plain request on the route takes from the same bucket.
    assert_eq!(status(&run(&c, &b, &plain("GET", "/ws", None))), 429);
}

#[test]
fn the_split_is_the_sticky_hash_and_the_override_wins() {
    let c = compiled(Capabilities::PROXY);
    let b = Buckets::default();
    let v = run(&c, &b, &upgrade("/ws", Some("room=room-42")));
    let Verdict::Upgrade(u) = v else {
        panic!("{v:?}")
    };
    // room-42 is bucket 6867 (split.rs): above 5,000, so canary.
    assert_eq!(bucket_of(b"room-42"), 6867);
    assert_eq!((u.upstream, u.reason), (1, Reason::Sticky));
    assert_eq!(u.room.as_deref(), Some("room-42"));
    // The proxy dials the upstream itself: the client's split header never reaches it.
    assert_eq!(u.edits.remove, vec!["x-sigmesh-upstream".to_owned()]);
    let mut r = upgrade("/ws", Some("room=room-42"));
    r.headers.push(("x-sigmesh-upstream", "stable"));
    let v = run(&c, &b, &r);
    let Verdict::Upgrade(u) = v else {
        panic!("{v:?}")
    };
    assert_eq!((u.upstream, u.reason), (0, Reason::Override));
    // A plain request is forwarded, split the same way.
    let b = Buckets::default();
    let v = run(&c, &b, &plain("GET", "/ws", Some("room=room-42")));
    let Verdict::Forward(f) = v else {
        panic!("{v:?}")
    };
    assert_eq!((f.route, f.upstream), (0, 1));
}

#[test]
fn message_stickiness_waits_for_the_first_message() {
    let c = compiled(Capabilities::PROXY);
    let b = Buckets::default();
    let v = run(&c, &b, &upgrade("/first", None));
    let Verdict::AwaitFirstMessage(mut wait) = v else {
        panic!("{v:?}")
    };
    let up = wait.pick(&c, &c, Some(r#"{"room":"room-42"}"#), 0);
    assert_eq!((up.upstream, up.reason), (1, Reason::Sticky));
    let up = wait.pick(&c, &c, Some("not json"), 0);
    assert_eq!(up.reason, Reason::Random);
    // Behind Envoy the upstream is chosen from the headers: refused at compile time.
    let errs = Compiled::new(
        load(CONFIG).unwrap(),
        Capabilities::filter(DeflatePolicy::Strip),
    )
    .unwrap_err();
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].path, "routes[1].split.sticky");
}

#[test]
fn compression_offers_follow_the_front_ends_policy() {
    let b = Buckets::default();
    let mut r = upgrade("/ws", Some("room=a"));
    r.headers.push((
        "sec-websocket-extensions",
        "permessage-deflate; client_max_window_bits, x-other",
    ));
    // The proxy reads compressed sessions through: the offer goes on rewritten so neither
    // side keeps a context, and nothing else is offered.
    let proxy = compiled(Capabilities::PROXY);
    let Verdict::Upgrade(u) = run(&proxy, &b, &r) else {
        panic!()
    };
    assert!(u.deflate);
    assert!(u.edits.set.contains(&(
        "sec-websocket-extensions".into(),
        "permessage-deflate; client_max_window_bits; client_no_context_takeover; server_no_context_takeover".into()
    )));
    // `compression: strip` on the route, and a front end that strips.
    let text = CONFIG.replace(
        "websocket: { allowed_origins: [https://ok.example] }",
        "websocket: { allowed_origins: [https://ok.example], compression: strip }",
    );
    let strip_route = Compiled::new(load(&text).unwrap(), Capabilities::PROXY).unwrap();
    let strip = compiled(Capabilities {
        deflate: DeflatePolicy::Strip,
        ..Capabilities::PROXY
    });
    for c in [&strip_route, &strip] {
        // Fresh buckets: the route's connection bucket has a burst of 2.
        let Verdict::Upgrade(u) = run(c, &Buckets::default(), &r) else {
            panic!()
        };
        assert!(!u.deflate);
        assert!(
            u.edits
                .set
                .contains(&("sec-websocket-extensions".into(), "x-other".into()))
        );
    }
}

#[test]
fn http2_extended_connect_is_an_upgrade_without_a_key() {
    let c = compiled(Capabilities::PROXY);
    let b = Buckets::default();
    let headers = vec![(":protocol", "websocket"), ("origin", "https://ok.example")];
    let facts = RequestFacts {
        method: "CONNECT",
        protocol: None,
        host: None,
        path: "/ws",
        query: Some("room=a"),
        headers: &headers,
        client_ip: "192.0.2.1",
        now: Duration::ZERO,
        unix_secs: 0,
        random: 0,
        draining: false,
    };
    assert!(matches!(
        decide(&c, &facts, &b, &c, &Uncounted),
        Verdict::Upgrade(_)
    ));
}

#[test]
fn what_a_build_cannot_serve_is_a_compile_error() {
    let text = CONFIG.replace("ws://127.0.0.1:2/ws", "wss://127.0.0.1:2/ws");
    // The proxy dials wss:// now; a front end without TLS to upstreams is told at compile.
    assert!(Compiled::new(load(&text).unwrap(), Capabilities::PROXY).is_ok());
    let no_tls = Capabilities {
        tls_upstreams: false,
        ..Capabilities::PROXY
    };
    let errs = Compiled::new(load(&text).unwrap(), no_tls).unwrap_err();
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert_eq!(errs[0].path, "routes[0].upstreams[1].url");
    assert!(errs[0].message.contains("TLS"), "{}", errs[0]);
    // The filter does not dial: only its own limit (`message:` stickiness) is reported there.
    let errs = Compiled::new(
        load(&text).unwrap(),
        Capabilities::filter(DeflatePolicy::Strip),
    )
    .unwrap_err();
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].path, "routes[1].split.sticky");
}

#[test]
fn the_override_needs_an_allowed_client_and_a_live_upstream() {
    let text = CONFIG.replace(
        "split: { sticky: query:room }",
        "split: { sticky: query:room, override_from: [10.0.0.0/8, \"::1\"] }",
    );
    let c = Compiled::new(
        load(&text).unwrap(),
        Capabilities::filter(DeflatePolicy::Strip),
    );
    // The filter refuses route 1 (`message:`); build the proxy's instead and flip the header rule.
    assert!(c.is_err());
    let mut caps = Capabilities::PROXY;
    caps.routes_by_header = true;
    let c = Compiled::new(load(&text).unwrap(), caps).unwrap();
    let b = Buckets::default();
    let pick = |ip: &'static str, name: &'static str| {
        let mut r = upgrade("/ws", Some("room=room-42"));
        r.headers.push(("x-sigmesh-upstream", name));
        let facts = RequestFacts {
            method: r.method,
            protocol: None,
            host: None,
            path: r.path,
            query: r.query,
            headers: &r.headers,
            client_ip: ip,
            now: Duration::ZERO,
            unix_secs: 0,
            random: 0,
            draining: false,
        };
        match decide(&c, &facts, &b, &c, &Uncounted) {
            Verdict::Upgrade(u) => (u.upstream, u.reason, u.edits.set),
            v => panic!("{v:?}"),
        }
    };
    // room-42 is canary (1) by its hash; stable (0) only by override.
    assert_eq!(pick("10.1.2.3", "stable").1, Reason::Override);
    assert_eq!(
        pick("::ffff:10.1.2.3", "stable").1,
        Reason::Override,
        "v4-mapped"
    );
    assert_eq!(pick("::1", "stable").0, 0);
    let (up, reason, set) = pick("192.0.2.1", "stable");
    assert_eq!(
        (up, reason),
        (1, Reason::Sticky),
        "outside override_from: ignored"
    );
    // Where the host routes on the header, it carries the pick, never the client's value.
    assert!(set.contains(&("x-sigmesh-upstream".into(), "canary".into())));
    assert!(!c.warnings().iter().any(|w| w.starts_with("routes[0]")));
    assert!(
        c.warnings()
            .iter()
            .any(|w| w.starts_with("routes[1].split.override_from"))
    );
}

#[test]
fn client_chosen_keys_are_bounded_in_bytes() {
    use sigmesh_core::request::{MAX_KEY_BYTES, bucket_key, shown};
    let short = "room-1";
    assert_eq!(bucket_key(short), short);
    let a = format!("{}a", "x".repeat(60_000));
    let b = format!("{}b", "x".repeat(60_000));
    assert!(bucket_key(&a).len() <= MAX_KEY_BYTES);
    assert_ne!(bucket_key(&a), bucket_key(&b));
    assert_eq!(bucket_key(&a), bucket_key(&a.clone()));
    assert_eq!(shown(&"é".repeat(200)).len(), 256);
}

#[test]
fn the_client_is_the_peer_unless_it_is_a_trusted_proxy() {
    use sigmesh_core::config::Cidr;
    use sigmesh_core::request::client_address;
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let lb = [Cidr {
        addr: ip("10.0.0.0"),
        prefix: 8,
    }];
    // Not trusted: the header is ignored.
    assert_eq!(
        client_address(ip("192.0.2.7"), Some("6.6.6.6"), &lb),
        ip("192.0.2.7")
    );
    // Trusted: the last hop the proxies did not add, whatever the client put before it.
    assert_eq!(
        client_address(ip("10.0.0.2"), Some("6.6.6.6, 198.51.100.4, 10.0.0.9"), &lb),
        ip("198.51.100.4")
    );
    assert_eq!(client_address(ip("10.0.0.2"), None, &lb), ip("10.0.0.2"));
    assert_eq!(
        client_address(ip("10.0.0.2"), Some("junk, 10.0.0.3"), &lb),
        ip("10.0.0.3")
    );
    assert_eq!(
        client_address(ip("::ffff:10.0.0.2"), Some("198.51.100.4"), &lb),
        ip("198.51.100.4")
    );
}
