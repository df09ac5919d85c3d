//! Property tests for config loading: no input makes `load` panic, and every loaded config
//! survives a round trip through JSON.
#![allow(clippy::unwrap_used)] // tests: a panic is the failure report

use proptest::prelude::*;
use sigmesh_core::config::{ConfigErrors, load, load_filter};

const EXAMPLE: &str = r#"listen: 0.0.0.0:8080
admin: 127.0.0.1:9901
shutdown: { drain_timeout: 30s }
routes:
  - name: signaling
    match: { path_prefix: /ws, host: "*.example.com", headers: { x-tenant: blue } }
    websocket:
      max_message_bytes: 65536
      idle_timeout: 120s
      allowed_origins: [https://app.example.com]
      signaling: { type: /type, room: /room, peer: /from }
    limits:
      connections: { rate: 20, per: 1s, burst: 40, key: client_ip }
      messages: { rate: 50, per: 1s, burst: 100, on_exceed: drop }
      rooms: { rate: 200, per: 1s, burst: 400 }
    split: { sticky: query:room, override_header: x-sigmesh-upstream }
    upstreams:
      - { name: stable, url: ws://127.0.0.1:9001/ws, weight: 90 }
      - { name: canary, url: ws://127.0.0.1:9002/ws, weight: 10 }
turn:
  secret: change-me
  ttl: 1h
  uris: [turn:turn.example.com:3478?transport=udp]
  relay: { listen: 0.0.0.0:3478, upstream: 127.0.0.1:3479, deny_peers: [10.0.0.0/8] }
tracing: { otlp_endpoint: http://127.0.0.1:4317, protocol: grpc, sample_ratio: 0.5 }
"#;

/// Pieces YAML is made of, to reach deeper than random characters do.
fn token() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "\n",
        "  ",
        " ",
        "- ",
        ": ",
        ":",
        "{",
        "}",
        "[",
        "]",
        ",",
        "&a ",
        "*a",
        "<<: ",
        "? ",
        "|\n",
        ">\n",
        "'",
        "\"",
        "#",
        "---\n",
        "...\n",
        "!!str ",
        "!x ",
        "~",
        "null",
        "-1",
        "0",
        "1.5",
        "65536",
        "routes",
        "name",
        "upstreams",
        "url",
        "weight",
        "websocket",
        "limits",
        "rooms",
        "split",
        "sticky",
        "query:room",
        "message:/r",
        "ws://h:1",
        "http://[::1]",
        "turn",
        "relay",
        "deny_peers",
        "10.0.0.0/33",
        "30s",
        "0ms",
        "listen",
        "0.0.0.0:80",
        "\t",
        "\u{feff}",
        "\\",
        "%YAML 1.2\n",
        "%TAG ! x\n",
    ])
}

fn assert_errors_well_formed(r: &Result<sigmesh_core::config::Config, ConfigErrors>) {
    if let Err(ConfigErrors(e)) = r {
        assert!(!e.is_empty());
        for err in e {
            assert!(!err.message.is_empty());
            let _ = err.to_string();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_text_never_panics(s in any::<String>()) {
        assert_errors_well_formed(&load(&s));
        assert_errors_well_formed(&load_filter(&s));
    }

    #[test]
    fn yaml_token_soup_never_panics(tokens in prop::collection::vec(token(), 0..80)) {
        let s: String = tokens.concat();
        assert_errors_well_formed(&load(&s));
        assert_errors_well_formed(&load_filter(&s));
    }

    #[test]
    fn mutated_example_never_panics(
        edits in prop::collection::vec((any::<prop::sample::Index>(), 0usize..3, token()), 1..6),
    ) {
        let mut s = EXAMPLE.to_owned();
        for (at, op, tok) in edits {
            let mut i = at.index(s.len() + 1);
            while !s.is_char_boundary(i) { i -= 1; }
            match op {
                0 => s.insert_str(i, tok),
                1 => { let end = (i + tok.len()).min(s.len()); if s.is_char_boundary(end) { s.replace_range(i..end, ""); } }
                _ => { let end = (i + tok.len()).min(s.len()); if s.is_char_boundary(end) { s.replace_range(i..end, tok); } }
            }
        }
        let r = load(&s);
        assert_errors_well_formed(&r);
        if let Ok(c) = r {
            let json = serde_json::to_string(&c).unwrap();
            prop_assert_eq!(load(&json).map_err(|e| e.to_string()), Ok(c));
        }
    }

    #[test]
    fn generated_configs_round_trip(
        routes in prop::collection::vec(
            (
                any::<bool>(),                                   // websocket
                prop::collection::vec(0u32..1000, 1..4),         // weights
                1u64..100_000, prop::sample::select(vec!["ns", "us", "ms", "s", "m", "h"]),
                0u32..1000, prop::option::of(1u32..1000),        // fractional millis, burst
                prop::sample::select(vec!["none", "query:room", "header:X-Room", "cookie:sid", "message:/room"]),
            ),
            1..4,
        ),
        ratio in 0.0f64..=1.0,
    ) {
        let mut text = String::from("routes:\n");
        for (i, (ws, weights, n, unit, frac, burst, sticky)) in routes.iter().enumerate() {
            text.push_str(&format!("  - name: r{i}\n"));
            let sticky = if !*ws && sticky.starts_with("message:") { "none" } else { sticky };
            if *ws {
                text.push_str(&format!("    websocket: {{ idle_timeout: \"{n}.{frac:03}{unit}\" }}\n"));
            }
            let burst = burst.map(|b| format!(", burst: {b}")).unwrap_or_default();
            text.push_str(&format!("    limits: {{ connections: {{ rate: {}, per: {n}{unit}{burst} }} }}\n", n % 1000 + 1));
            text.push_str(&format!("    split: {{ sticky: \"{sticky}\" }}\n    upstreams:\n"));
            let scheme = if *ws { "ws" } else { "http" };
            for (j, w) in weights.iter().enumerate() {
                let w = if j == 0 { w + 1 } else { *w };
                text.push_str(&format!("      - {{ name: u{j}, url: \"{scheme}://h{j}:80/\", weight: {w} }}\n"));
            }
        }
        text.push_str(&format!("tracing: {{ otlp_endpoint: \"http://c\", sample_ratio: {ratio:?} }}\n"));
        let c = load(&text).map_err(|e| format!("{e}\n{text}")).unwrap();
        let json = serde_json::to_string(&c).unwrap();
        prop_assert_eq!(load(&json).map_err(|e| e.to_string()), Ok(c));
    }
}
