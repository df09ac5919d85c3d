//! The stream logic without a host: headers and body chunks in, verdicts and stats out.
use std::collections::BTreeMap;

use sigmesh_core::frame::{Forward, frame};

use super::*;
use crate::settings::parse;
use crate::shared::MemStore;

#[derive(Default)]
struct Counters(BTreeMap<String, i64>);

impl Sink for Counters {
    fn counter(&mut self, name: &str, delta: u64) {
        *self.0.entry(name.to_owned()).or_default() += delta as i64;
    }
    fn gauge(&mut self, name: &str, delta: i64) {
        *self.0.entry(name.to_owned()).or_default() += delta;
    }
    fn histogram(&mut self, name: &str, _: u64) {
        *self.0.entry(name.to_owned()).or_default() += 1;
    }
}

fn settings(extra_route: &str, extra: &str) -> Settings {
    let text = format!(
        r#"{{"routes": [{{"name": "sig", "match": {{"path_prefix": "/ws"}},
            "websocket": {{"max_message_bytes": 64, "allowed_origins": ["https://ok"]}},
            "split": {{"sticky": "query:room"}} {extra_route},
            "upstreams": [{{"name": "stable", "weight": 50}}, {{"name": "canary", "weight": 50}}]}}]
            {extra}}}"#
    );
    parse(text.as_bytes()).expect("valid settings")
}

fn headers(path: &str, upgrade: bool, more: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut h = vec![
        (":method".to_owned(), "GET".to_owned()),
        (":path".to_owned(), path.to_owned()),
        (":authority".to_owned(), "example.com".to_owned()),
        ("origin".to_owned(), "https://ok".to_owned()),
    ];
    if upgrade {
        h.push(("upgrade".into(), "websocket".into()));
        h.push(("connection".into(), "upgrade".into()));
        h.push((
            "sec-websocket-key".into(),
            "dGhlIHNhbXBsZSBub25jZQ==".into(),
        ));
        h.push(("sec-websocket-version".into(), "13".into()));
    }
    h.extend(more.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    h
}

fn cx() -> HostFacts<'static> {
    HostFacts {
        client_ip: "192.0.2.1",
        now: Duration::from_secs(1_700_000_000),
        random: 7,
    }
}

#[test]
fn unrouted_requests_pass_untouched() {
    let s = settings("", "");
    let v = on_request_headers(
        &s,
        &MemStore::default(),
        &mut Counters::default(),
        &headers("/other", true, &[]),
        cx(),
    );
    assert!(matches!(v, HeadersVerdict::Pass));
}

#[test]
fn upgrade_gets_the_split_header_and_loses_deflate() {
    let s = settings("", "");
    let h = headers(
        "/ws?room=room-42",
        true,
        &[(
            "sec-websocket-extensions",
            "permessage-deflate; client_max_window_bits",
        )],
    );
    let mut m = Counters::default();
    let v = on_request_headers(&s, &MemStore::default(), &mut m, &h, cx());
    let HeadersVerdict::Proceed {
        set,
        remove,
        reroute,
        session,
    } = v
    else {
        panic!("{v:?}");
    };
    assert!(reroute);
    assert_eq!(
        set,
        vec![("x-sigmesh-upstream".to_owned(), "canary".to_owned())]
    );
    assert_eq!(remove, vec!["sec-websocket-extensions".to_owned()]);
    assert_eq!(
        session.map(|s| s.upstream().to_owned()).as_deref(),
        Some("canary")
    );
    // HTTP/2 extended CONNECT is an upgrade too; a plain request is split but not read.
    let h2 = vec![
        (":method".to_owned(), "CONNECT".to_owned()),
        (":protocol".to_owned(), "websocket".to_owned()),
        (":path".to_owned(), "/ws?room=room-42".to_owned()),
        ("origin".to_owned(), "https://ok".to_owned()),
    ];
    let v = on_request_headers(&s, &MemStore::default(), &mut m, &h2, cx());
    assert!(matches!(
        v,
        HeadersVerdict::Proceed {
            session: Some(_),
            ..
        }
    ));
    let plain = headers("/ws?room=room-42", false, &[]);
    let v = on_request_headers(&s, &MemStore::default(), &mut m, &plain, cx());
    assert!(matches!(v, HeadersVerdict::Proceed { session: None, .. }));
}

#[test]
fn origin_and_connection_bucket_answer_locally() {
    let s = settings(
        r#", "limits": {"connections": {"rate": 1, "per": "1h", "burst": 2}}"#,
        "",
    );
    let store = MemStore::default();
    let mut m = Counters::default();
    let bad = headers("/ws", true, &[("origin", "https://evil")]);
    // The last `origin` wins in this list; put the bad one first.
    let bad: Vec<_> = bad.into_iter().rev().collect();
    let v = on_request_headers(&s, &store, &mut m, &bad, cx());
    assert!(
        matches!(v, HeadersVerdict::Respond { status: 403, .. }),
        "{v:?}"
    );
    let ok = headers("/ws", true, &[]);
    for _ in 0..2 {
        let v = on_request_headers(&s, &store, &mut m, &ok, cx());
        assert!(matches!(v, HeadersVerdict::Proceed { .. }));
    }
    let v = on_request_headers(&s, &store, &mut m, &ok, cx());
    let HeadersVerdict::Respond {
        status: 429,
        headers,
        ..
    } = v
    else {
        panic!("{v:?}");
    };
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("retry-after"), Some("3600"));
    assert_eq!(get("x-ratelimit-limit"), Some("2"));
    assert_eq!(get("x-ratelimit-remaining"), Some("0"));
    assert_eq!(get("x-ratelimit-reset"), Some("3600"));
    assert_eq!(
        m.0.get("sigmesh.rate_limited_total.route.sig.limit.connections"),
        Some(&1)
    );
}

#[test]
fn credentials_endpoint() {
    let s = settings("", r#", "turn": {"secret": "s", "uris": ["turn:t"]}"#);
    let store = MemStore::default();
    let mut m = Counters::default();
    let v = on_request_headers(
        &s,
        &store,
        &mut m,
        &headers("/turn-credentials?user=al", false, &[]),
        cx(),
    );
    let HeadersVerdict::Respond {
        status: 200, body, ..
    } = v
    else {
        panic!("{v:?}");
    };
    let j: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(j["username"], "1700003600:al");
    assert_eq!(
        j["password"],
        sigmesh_core::credentials::password("s", "1700003600:al")
    );
    let v = on_request_headers(
        &s,
        &store,
        &mut m,
        &headers("/turn-credentials", false, &[]),
        cx(),
    );
    assert!(matches!(v, HeadersVerdict::Respond { status: 400, .. }));
    let mut post = headers("/turn-credentials?user=a", false, &[]);
    post[0].1 = "POST".into();
    let v = on_request_headers(&s, &store, &mut m, &post, cx());
    assert!(matches!(v, HeadersVerdict::Respond { status: 405, .. }));
}

#[test]
fn body_chunks_cut_over_the_message_bucket_and_close_oversize() {
    let s = settings(
        r#", "limits": {"messages": {"rate": 1, "per": "1h", "burst": 1}}"#,
        "",
    );
    let store = MemStore::default();
    let mut m = Counters::default();
    let v = on_request_headers(&s, &store, &mut m, &headers("/ws?room=r", true, &[]), cx());
    let HeadersVerdict::Proceed {
        session: Some(mut session),
        ..
    } = v
    else {
        panic!("{v:?}");
    };
    assert_eq!(
        session.on_response_headers(Some(101), None, &mut m),
        ResponseVerdict::Continue
    );
    let a = frame(1, true, br#"{"type":"offer"}"#, Some([1, 2, 3, 4]));
    let b = frame(1, true, br#"{"type":"answer"}"#, Some([1, 2, 3, 4]));
    let chunk = [a.clone(), b].concat();
    let p = session.on_request_body(&s, &store, &mut m, &chunk, cx().now);
    assert_eq!(p.forward, Forward::Bytes(&a));
    let big = frame(2, true, &[0; 65], Some([1, 2, 3, 4]));
    let p = session.on_request_body(&s, &store, &mut m, &big, cx().now);
    assert_eq!(p.close.map(|c| c.code), Some(1009));
    session.on_end(&mut m);
    let c = |n: &str| m.0.get(n).copied();
    let r = format!("route.sig.upstream.{}", session.upstream());
    assert_eq!(
        c(&format!(
            "sigmesh.messages_total.{r}.direction.in.type.offer"
        )),
        Some(1)
    );
    assert_eq!(
        c("sigmesh.rate_limited_total.route.sig.limit.messages"),
        Some(1)
    );
    assert_eq!(
        c("sigmesh.rate_limited_total.route.sig.limit.message_size"),
        Some(1)
    );
    assert_eq!(c(&format!("sigmesh.connections_active.{r}")), Some(0));
    assert_eq!(
        c(&format!("sigmesh.connections_total.{r}.outcome.accepted")),
        Some(1)
    );
}

/// A masked, compressed text frame (RFC 7692: raw deflate without the final empty block).
fn compressed_frame(text: &[u8]) -> Vec<u8> {
    use flate2::{Compress, Compression, FlushCompress};
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(text.len() + 64);
    c.compress_vec(text, &mut out, FlushCompress::Sync)
        .expect("deflate");
    out.truncate(out.len() - 4);
    let mut f = frame(1, true, &out, Some([1, 2, 3, 4]));
    f[0] |= 0x40;
    f
}

#[test]
fn kept_offers_are_read_through_and_a_context_is_refused() {
    let s = settings("", r#", "filter": {"permessage_deflate": "keep"}"#);
    let store = MemStore::default();
    let offer = [(
        "sec-websocket-extensions",
        "permessage-deflate; client_max_window_bits",
    )];
    let open = |m: &mut Counters| {
        let h = headers("/ws?room=r", true, &offer);
        let HeadersVerdict::Proceed {
            set,
            session: Some(session),
            ..
        } = on_request_headers(&s, &store, m, &h, cx())
        else {
            panic!("an upgrade");
        };
        // Rewritten so neither side keeps a context.
        assert!(set.contains(&(
            "sec-websocket-extensions".to_owned(),
            "permessage-deflate; client_max_window_bits; client_no_context_takeover; server_no_context_takeover".to_owned()
        )));
        session
    };
    let mut m = Counters::default();

    // Agreed without a context: the client is told `client_no_context_takeover` too, and a
    // compressed offer is read (its type counted, not `compressed`).
    let mut session = open(&mut m);
    let v = session.on_response_headers(
        Some(101),
        Some("permessage-deflate; server_no_context_takeover"),
        &mut m,
    );
    assert_eq!(
        v,
        ResponseVerdict::SetExtensions(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover".into()
        )
    );
    let f = compressed_frame(br#"{"type":"offer","room":"r","sdp":"v=0"}"#);
    let p = session.on_request_body(&s, &store, &mut m, &f, cx().now);
    assert_eq!(p.forward, Forward::All, "frames pass as they came");
    let r = format!("route.sig.upstream.{}", session.upstream());
    let c = |m: &Counters, t: &str| {
        m.0.get(&format!("sigmesh.messages_total.{r}.direction.in.type.{t}"))
            .copied()
    };
    assert_eq!(c(&m, "offer"), Some(1));
    assert_eq!(c(&m, "compressed"), None);
    // A bomb: 64 bytes allowed, far more once inflated.
    let bomb = compressed_frame(&[b' '; 100_000]);
    assert!(bomb.len() < 1024);
    let p = session.on_request_body(&s, &store, &mut m, &bomb, cx().now);
    assert_eq!(p.close.map(|c| c.code), Some(1009));
    session.on_end(&mut m);

    // An upstream that keeps its context could not be read: refused.
    let mut session = open(&mut m);
    let v = session.on_response_headers(Some(101), Some("permessage-deflate"), &mut m);
    assert!(matches!(v, ResponseVerdict::Refuse(_)), "{v:?}");
    assert!(!session.is_open());
    assert_eq!(
        m.0.get(&format!(
            "sigmesh.connections_total.{r}.outcome.upstream_error"
        ))
        .copied(),
        Some(1)
    );

    // No extension in the answer: nothing may be compressed (RSV1 is a protocol error).
    let mut session = open(&mut m);
    let v = session.on_response_headers(Some(101), None, &mut m);
    assert_eq!(v, ResponseVerdict::Continue);
    let p = session.on_request_body(&s, &store, &mut m, &f, cx().now);
    assert_eq!(p.close.map(|c| c.code), Some(1002));
}
