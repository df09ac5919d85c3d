//! Attacks on a running sigmesh (issue 11), each with the defence it must meet: a clear status or
//! close code, no panic, nothing past a stated bound, and a control session unaffected.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

/// A room whose hash goes to `stable` at 50/50 (bucket < 5,000), and one that goes to `canary`.
fn rooms() -> (String, String) {
    let at = |want_low: bool| {
        (0..)
            .map(|i| format!("room-{i}"))
            .find(|r| (sigmesh_core::split::bucket_of(r.as_bytes()) < 5_000) == want_low)
            .unwrap()
    };
    (at(true), at(false))
}

fn split_config(override_from: &str, canary_weight: u32) -> String {
    format!(
        r#"
routes:
  - name: sig
    match: {{ path_prefix: /ws }}
    websocket: {{}}
    split: {{ sticky: "query:room"{override_from} }}
    upstreams:
      - {{ name: stable, url: "ws://{{A}}/ws", weight: 50 }}
      - {{ name: canary, url: "ws://{{B}}/ws", weight: {canary_weight} }}
"#
    )
}

/// The upstream a session landed on, and whether the split header reached it.
async fn landed(p: &sigmesh::app::Proxy, room: &str, force: &str) -> (String, bool) {
    let (mut c, _) = connect(
        p.listen,
        &format!("/ws?room={room}"),
        &[("x-sigmesh-upstream", force)],
    )
    .await
    .unwrap();
    let me = whoami(&mut c).await;
    let _ = c.close(None).await;
    let leaked = me["headers"]
        .as_object()
        .unwrap()
        .keys()
        .any(|k| k.eq_ignore_ascii_case("x-sigmesh-upstream"));
    (me["server"].as_str().unwrap().to_owned(), leaked)
}

/// Item 7: any client could force any upstream, a canary switched off (weight 0) included, and
/// the header reached the upstream.
#[tokio::test]
async fn the_override_header_is_for_allowed_networks_and_live_upstreams_only() {
    let stable = signaling("stable").await;
    let canary = signaling("canary").await;
    let addrs = [stable.local_addr, canary.local_addr];
    let (to_stable, to_canary) = rooms();

    // From outside `override_from`: ignored, the room's hash decides.
    let p = proxy(&split_config(", override_from: [10.0.0.0/8]", 50), &addrs).await;
    assert_eq!(
        landed(&p, &to_stable, "canary").await,
        ("stable".into(), false)
    );
    assert_eq!(
        landed(&p, &to_canary, "stable").await,
        ("canary".into(), false)
    );
    p.drain().await;

    // From inside it: honoured, and still never passed on.
    let p = proxy(&split_config(", override_from: [127.0.0.0/8]", 50), &addrs).await;
    assert_eq!(
        landed(&p, &to_stable, "canary").await,
        ("canary".into(), false)
    );
    p.drain().await;

    // A canary switched off cannot be forced, whoever asks.
    let p = proxy(&split_config("", 0), &addrs).await;
    assert_eq!(
        landed(&p, &to_canary, "canary").await,
        ("stable".into(), false)
    );
    p.drain().await;
}
