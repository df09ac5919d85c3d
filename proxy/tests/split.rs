//! The canary split through the real proxy: ratio, stickiness, override, live weights,
//! message-pointer stickiness; and the admin API's view of it.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;

const SPLIT: &str = r#"
routes:
  - name: signaling
    match: { path_prefix: /ws }
    websocket:
      signaling: { type: /type, room: /room, peer: /from }
    split: { sticky: query:room, override_header: x-sigmesh-upstream }
    upstreams:
      - { name: stable, url: "ws://{A}/ws", weight: 80 }
      - { name: canary, url: "ws://{B}/ws", weight: 20 }
"#;

async fn server_of(p: &sigmesh::app::Proxy, path: &str, headers: &[(&str, &str)]) -> String {
    let (mut c, _) = connect(p.listen, path, headers).await.unwrap();
    let s = whoami(&mut c).await["server"].as_str().unwrap().to_owned();
    let _ = c.close(None).await;
    s
}

#[tokio::test]
async fn split_ratio_over_1000_rooms_and_rooms_stick() {
    let stable = signaling("stable").await;
    let canary = signaling("canary").await;
    let p = proxy(SPLIT, &[stable.local_addr, canary.local_addr]).await;
    let mut canary_rooms = 0;
    let mut first = Vec::new();
    for i in 0..1000 {
        let s = server_of(&p, &format!("/ws?room=call-{i}"), &[]).await;
        if s == "canary" {
            canary_rooms += 1;
        }
        first.push(s);
    }
    // 20% of 1000 rooms: binomial sd is about 12.6; allow four sd.
    assert!(
        (150..=250).contains(&canary_rooms),
        "canary got {canary_rooms} of 1000 rooms"
    );
    // The same room always goes to the same upstream.
    for i in (0..1000).step_by(50) {
        assert_eq!(
            server_of(&p, &format!("/ws?room=call-{i}"), &[]).await,
            first[i],
            "call-{i}"
        );
    }
}

#[tokio::test]
async fn override_header_wins_over_weights() {
    let stable = signaling("stable").await;
    let canary = signaling("canary").await;
    let p = proxy(SPLIT, &[stable.local_addr, canary.local_addr]).await;
    for i in 0..10 {
        let path = format!("/ws?room=o-{i}");
        assert_eq!(
            server_of(&p, &path, &[("x-sigmesh-upstream", "canary")]).await,
            "canary"
        );
        assert_eq!(
            server_of(&p, &path, &[("x-sigmesh-upstream", "stable")]).await,
            "stable"
        );
    }
}

#[tokio::test]
async fn live_weight_change_applies_to_new_sessions_only() {
    let stable = signaling("stable").await;
    let canary = signaling("canary").await;
    let p = proxy(SPLIT, &[stable.local_addr, canary.local_addr]).await;
    let admin = p.admin.unwrap();
    // Find a room on stable and keep a session open in it.
    let mut room = String::new();
    for i in 0..100 {
        room = format!("/ws?room=w-{i}");
        if server_of(&p, &room, &[]).await == "stable" {
            break;
        }
    }
    let mut live = ws(p.listen, &room).await;
    assert_eq!(whoami(&mut live).await["server"], "stable");

    let (status, _, body) = http(
        admin,
        "PUT",
        "/routes/signaling/weights",
        &[],
        r#"{"stable": 0, "canary": 100}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(server_of(&p, &room, &[]).await, "canary");
    // The live session keeps its upstream.
    assert_eq!(whoami(&mut live).await["server"], "stable");
    // /config shows the weights in force.
    let (_, cfg) = admin_get(&p, "/config").await;
    let cfg: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    assert_eq!(cfg["routes"][0]["upstreams"][0]["weight"], 0);
    assert_eq!(cfg["routes"][0]["upstreams"][1]["weight"], 100);

    // Bad input: 400 with a reason, weights unchanged.
    for bad in [
        r#"{"stable": -1}"#,
        r#"{"nope": 5}"#,
        r#"{"stable": 0, "canary": 0}"#,
        "not json",
        r#"{"stable": 1.5}"#,
    ] {
        let (status, _, body) = http(admin, "PUT", "/routes/signaling/weights", &[], bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("error"), "{body}");
    }
    assert_eq!(
        http(admin, "PUT", "/routes/missing/weights", &[], "{}")
            .await
            .0,
        404
    );
    assert_eq!(server_of(&p, &room, &[]).await, "canary");
}

#[tokio::test]
async fn message_pointer_stickiness_picks_by_first_message() {
    let stable = signaling("stable").await;
    let canary = signaling("canary").await;
    let p = proxy(
        r#"
routes:
  - name: msg
    match: { path_prefix: /ws }
    websocket: { signaling: { type: /type, room: /room, peer: /from } }
    split: { sticky: "message:/room" }
    upstreams:
      - { name: stable, url: "ws://{A}/ws", weight: 50 }
      - { name: canary, url: "ws://{B}/ws", weight: 50 }
"#,
        &[stable.local_addr, canary.local_addr],
    )
    .await;
    // The split of a room is the core's hash of the room name.
    let splitter = sigmesh_core::split::Splitter::new([("stable", 50), ("canary", 50)]).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..12 {
        let room = format!("msg-room-{i}");
        let expected = ["stable", "canary"][splitter.pick(None, Some(room.as_bytes()), 0).index];
        let mut c = ws(p.listen, "/ws").await;
        // The first message is forwarded to the upstream picked from it: the join is answered.
        send(
            &mut c,
            &format!(r#"{{"type":"join","room":"{room}","from":"alice"}}"#),
        )
        .await;
        let welcome = recv_json(&mut c).await;
        assert_eq!(welcome["type"], "welcome");
        assert_eq!(welcome["server"], expected, "{room}");
        seen.insert(expected);
        eventually(|| async {
            sessions(&p).await.iter().any(|s| {
                s["room"] == room.as_str() && s["peer"] == "alice" && s["upstream"] == expected
            })
        })
        .await;
    }
    assert_eq!(seen.len(), 2, "both upstreams used");
}

#[tokio::test]
async fn sessions_metrics_and_config_show_the_call() {
    let stable = signaling("stable").await;
    let canary = signaling("canary").await;
    let yaml = format!("{SPLIT}turn:\n  secret: s3cret-value\n  uris: [\"turn:127.0.0.1:3478\"]\n");
    let p = proxy(&yaml, &[stable.local_addr, canary.local_addr]).await;
    let mut alice = ws(p.listen, "/ws?room=abc").await;
    let mut bob = ws(p.listen, "/ws?room=abc").await;
    send(&mut alice, r#"{"type":"join","room":"abc","from":"alice"}"#).await;
    assert_eq!(recv_json(&mut alice).await["type"], "welcome");
    send(&mut bob, r#"{"type":"join","room":"abc","from":"bob"}"#).await;
    assert_eq!(recv_json(&mut bob).await["type"], "welcome");
    assert_eq!(recv_json(&mut alice).await["type"], "peer-joined");
    send(
        &mut bob,
        r#"{"type":"offer","room":"abc","from":"bob","sdp":"v=0"}"#,
    )
    .await;
    assert_eq!(recv_json(&mut alice).await["type"], "offer");

    let all = sessions(&p).await;
    assert_eq!(all.len(), 2);
    for s in &all {
        assert_eq!(s["route"], "signaling");
        assert_eq!(s["room"], "abc");
        assert!(s["client"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert!(s["opened_at"].as_str().unwrap().ends_with('Z'));
        for k in [
            "id",
            "upstream",
            "messages_in",
            "messages_out",
            "bytes_in",
            "bytes_out",
            "dropped",
            "ice",
            "setup_ms",
            "peer",
        ] {
            assert!(s.get(k).is_some(), "missing {k} in {s}");
        }
    }
    let bob_s = all.iter().find(|s| s["peer"] == "bob").unwrap();
    assert_eq!(bob_s["messages_in"], 2);
    assert!(bob_s["bytes_in"].as_u64().unwrap() > 40);

    let m = metrics(&p).await;
    let up = all[0]["upstream"].as_str().unwrap();
    assert_eq!(
        metric(
            &m,
            &format!(r#"sigmesh_connections_active{{route="signaling",upstream="{up}"}}"#)
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &m,
            &format!(
                r#"sigmesh_connections_total{{route="signaling",upstream="{up}",outcome="accepted"}}"#
            )
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &m,
            &format!(
                r#"sigmesh_messages_total{{route="signaling",upstream="{up}",direction="in",type="offer"}}"#
            )
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            &format!(
                r#"sigmesh_messages_total{{route="signaling",upstream="{up}",direction="out",type="offer"}}"#
            )
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            &format!(
                r#"sigmesh_messages_total{{route="signaling",upstream="{up}",direction="in",type="join"}}"#
            )
        ),
        Some(2.0)
    );

    let (status, cfg) = admin_get(&p, "/config").await;
    assert_eq!(status, 200);
    assert!(!cfg.contains("s3cret-value"), "{cfg}");
    assert!(cfg.contains("redacted"));
    assert_eq!(admin_get(&p, "/healthz").await, (200, "ok\n".to_owned()));
    assert_eq!(admin_get(&p, "/nope").await.0, 404);
}
