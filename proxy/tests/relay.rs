//! The relay at the byte level, with raw sockets on both sides: frames pass untouched (masks,
//! fragments, control frames between fragments), bytes read together with a handshake are
//! relayed, a frame trickled byte by byte arrives whole, and the proxy's own close frames
//! land on frame boundaries.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;

use common::*;
use sigmesh_core::frame::{close_frame, frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

const ROUTE: &str = r#"
routes:
  - name: raw
    match: { path_prefix: /ws }
    websocket:
      max_message_bytes: 4096
      signaling: { type: /type, room: /room }
    upstreams:
      - { name: up, url: "ws://{A}/ws" }
"#;

const KEY: [u8; 4] = [0xa1, 0xb2, 0xc3, 0xd4];

/// Reads an HTTP head (up to the blank line); returns it and any bytes after it.
async fn read_head(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return (String::from_utf8(buf).unwrap(), rest);
        }
        let n = within(s.read(&mut chunk)).await.unwrap();
        assert!(n > 0, "connection ended inside an HTTP head");
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Reads exactly `n` bytes (after `have`, bytes already read).
async fn read_exact(s: &mut TcpStream, mut have: Vec<u8>, n: usize) -> Vec<u8> {
    let mut chunk = [0u8; 4096];
    while have.len() < n {
        let r = within(s.read(&mut chunk)).await.unwrap();
        assert!(r > 0, "connection ended after {} of {n} bytes", have.len());
        have.extend_from_slice(&chunk[..r]);
    }
    assert_eq!(have.len(), n, "more bytes than expected");
    have
}

/// A raw upstream: accepts one connection, answers the handshake with 101 followed (in the same
/// write) by `greeting`, and hands the socket and any bytes read past the request to the test.
async fn raw_upstream(
    greeting: Vec<u8>,
) -> (SocketAddr, tokio::task::JoinHandle<(TcpStream, Vec<u8>)>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut s, _) = within(l.accept()).await.unwrap();
        let (head, rest) = read_head(&mut s).await;
        let key = header(&head, "sec-websocket-key").unwrap();
        let mut out = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            derive_accept_key(key.as_bytes())
        )
        .into_bytes();
        out.extend_from_slice(&greeting);
        s.write_all(&out).await.unwrap();
        (s, rest)
    });
    (addr, task)
}

/// A raw client handshake to the proxy, with `after` written in the same write as the request;
/// returns the socket and the bytes read past the 101.
async fn raw_client(proxy: SocketAddr, after: &[u8]) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let mut req = format!(
        "GET /ws HTTP/1.1\r\nHost: {proxy}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes();
    req.extend_from_slice(after);
    s.write_all(&req).await.unwrap();
    let (head, rest) = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(
        header(&head, "sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    (s, rest)
}

#[tokio::test]
async fn frames_pass_untouched_with_read_ahead_both_ways() {
    // The upstream's first frame comes in the same write as its 101; the client's first frames
    // in the same write as its request: both are read with the handshakes and must be relayed.
    let greeting = frame(1, true, br#"{"type":"hello"}"#, None);
    let (up_addr, up_task) = raw_upstream(greeting.clone()).await;
    let p = proxy(ROUTE, &[up_addr]).await;

    // A fragmented text message with a ping between its fragments, masked with our key.
    let first = [
        frame(1, false, br#"{"type":"off"#, Some(KEY)),
        frame(9, true, b"are you there", Some(KEY)),
        frame(0, true, br#"er","room":"r1"}"#, Some(KEY)),
    ]
    .concat();
    let (mut client, got) = raw_client(p.listen, &first).await;
    let (mut upstream, rest) = within(up_task).await.unwrap();

    // Same bytes, masks and fragment boundaries included.
    assert_eq!(read_exact(&mut upstream, rest, first.len()).await, first);
    assert_eq!(read_exact(&mut client, got, greeting.len()).await, greeting);

    // A frame trickled one byte per write arrives whole and unchanged.
    let slow = frame(2, true, &[7u8; 300], Some(KEY));
    for b in &slow {
        client.write_all(std::slice::from_ref(b)).await.unwrap();
        client.flush().await.unwrap();
    }
    assert_eq!(
        read_exact(&mut upstream, Vec::new(), slow.len()).await,
        slow
    );

    // The proxy read what passed: the offer (reassembled across fragments), the room.
    eventually(|| async {
        let s = sessions(&p).await;
        s.len() == 1 && s[0]["room"] == "r1" && s[0]["messages_in"] == 2
    })
    .await;
    let m = metrics(&p).await;
    assert_eq!(
        metric(
            &m,
            r#"sigmesh_messages_total{route="raw",upstream="up",direction="in",type="offer"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &m,
            r#"sigmesh_messages_total{route="raw",upstream="up",direction="out",type="other"}"#
        ),
        Some(1.0)
    );

    // Close handshake end to end: the client's close frame reaches the upstream as sent, the
    // upstream's answer reaches the client, and the upstream's end of the connection ends the
    // client's.
    let close = close_frame(4002, "bye", Some(KEY));
    client.write_all(&close).await.unwrap();
    assert_eq!(
        read_exact(&mut upstream, Vec::new(), close.len()).await,
        close
    );
    let answer = close_frame(4002, "bye", None);
    upstream.write_all(&answer).await.unwrap();
    drop(upstream);
    assert_eq!(
        read_exact(&mut client, Vec::new(), answer.len()).await,
        answer
    );
    let mut tail = [0u8; 16];
    assert_eq!(within(client.read(&mut tail)).await.unwrap(), 0);
    eventually(|| async { sessions(&p).await.is_empty() }).await;
}

#[tokio::test]
async fn proxy_close_waits_for_the_frame_boundary() {
    // The upstream starts a large frame and stalls halfway; the drain's close frame cannot be put
    // in the middle of it: the client gets the half frame and then the end of the connection,
    // never a close frame spliced into the payload. The upstream, at a boundary, gets 1001.
    let (up_addr, up_task) = raw_upstream(Vec::new()).await;
    let p = proxy(ROUTE, &[up_addr]).await;
    let (mut client, got) = raw_client(p.listen, &[]).await;
    assert!(got.is_empty());
    let (mut upstream, _) = within(up_task).await.unwrap();
    let big = frame(2, true, &[1u8; 3000], None);
    upstream.write_all(&big[..1000]).await.unwrap();
    let half = read_exact(&mut client, Vec::new(), 1000).await;
    assert_eq!(half, big[..1000]);

    p.drain().await;
    // The upstream's way is at a boundary: it gets the proxy's close (masked) and then its end.
    let mut buf = Vec::new();
    within(upstream.read_to_end(&mut buf)).await.unwrap();
    assert!(buf.len() > 2, "no close frame: {buf:?}");
    assert_eq!(buf[0], 0x88, "a final close frame");
    assert_eq!(buf[1] & 0x80, 0x80, "masked toward the upstream");
    // The client's way is mid-frame: nothing more, then the end of the connection.
    let mut rest = Vec::new();
    within(client.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty(), "bytes after the half frame: {rest:?}");
}

#[tokio::test]
async fn first_message_wait_is_bounded_by_the_message_limit() {
    // `sticky: message:/room` holds what the client sends until its first data message: a
    // client that sends only control frames is closed with 1009 once they pass the message
    // limit plus the control-frame slack, instead of growing the hold without bound.
    let (up_addr, _up) = raw_upstream(Vec::new()).await;
    let p = proxy(
        &ROUTE.replace(
            "    upstreams:",
            "    split: { sticky: \"message:/room\" }\n    upstreams:",
        ),
        &[up_addr],
    )
    .await;
    let (mut client, _) = raw_client(p.listen, &[]).await;
    let ping = frame(9, true, &[0u8; 125], Some(KEY));
    let mut sent = 0;
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    // 4096 + 4096 bytes of slack: about 60 pings; stop at 200 either way.
    while sent < 200 {
        if client.write_all(&ping).await.is_err() {
            break;
        }
        sent += 1;
        if let Ok(Ok(n)) =
            tokio::time::timeout(std::time::Duration::from_millis(5), client.read(&mut buf)).await
        {
            got.extend_from_slice(&buf[..n]);
            if n == 0 || got.len() >= 4 {
                break;
            }
        }
    }
    if got.len() < 4 {
        let _ = within(client.read_to_end(&mut got)).await;
    }
    assert!(sent < 200, "still reading after {sent} pings");
    assert_eq!(got[0], 0x88, "a close frame: {got:?}");
    assert_eq!(u16::from_be_bytes([got[2], got[3]]), 1009);
}

#[tokio::test]
async fn a_slow_upstream_back_pressures_the_client_and_nothing_is_lost() {
    // The upstream does not read. The proxy keeps at most one read's worth of bytes of its own,
    // so the client's writes stall once the kernel buffers on the way are full (tens of MiB on
    // loopback), long before the 256 MiB this test would send to a proxy that buffered without
    // bound. Then the upstream reads, and gets every byte, in order.
    let (up_addr, up_task) = raw_upstream(Vec::new()).await;
    let p = proxy(ROUTE, &[up_addr]).await;
    let (mut client, _) = raw_client(p.listen, &[]).await;
    let (mut upstream, _) = within(up_task).await.unwrap();

    // Frames numbered in their payload, so order and loss both show.
    let frames: Vec<u8> = (0..64u32)
        .flat_map(|i| frame(2, true, &[i as u8; 4000], Some(KEY)))
        .collect();
    let mut sent = 0usize;
    let limit = 256 << 20;
    loop {
        let at = sent % frames.len();
        let w = tokio::time::timeout(
            std::time::Duration::from_millis(500),
            client.write(&frames[at..]),
        )
        .await;
        match w {
            Ok(Ok(n)) => sent += n,
            Ok(Err(e)) => panic!("client write failed: {e}"),
            Err(_) => break, // stalled: back-pressure reached the client
        }
        assert!(sent < limit, "no back-pressure after {sent} bytes");
    }
    assert!(sent > 0);
    // The session is alive and the admin API answers while the relay is stalled.
    assert_eq!(sessions(&p).await.len(), 1);

    // Now the upstream reads everything: the exact byte stream the client wrote.
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    while got < sent {
        let n = within(upstream.read(&mut buf)).await.unwrap();
        assert!(n > 0, "upstream stream ended after {got} of {sent} bytes");
        for (k, b) in buf[..n].iter().enumerate() {
            let want = frames[(got + k) % frames.len()];
            if *b != want {
                panic!("byte {} differs", got + k);
            }
        }
        got += n;
    }
    assert_eq!(got, sent);
}

#[tokio::test]
async fn an_upstream_breaking_the_protocol_is_closed_both_ways_with_1002() {
    // A server must not mask its frames (RFC 6455 §5.1): the proxy stops that stream there.
    // The client gets 1002 instead of the bad frame, the upstream gets 1002 too (masked, as a
    // client's frame), and the upstream's error is counted.
    let bad = frame(1, true, b"masked by a server", Some(KEY));
    let (up_addr, up_task) = raw_upstream(bad).await;
    let p = proxy(ROUTE, &[up_addr]).await;
    let (mut client, got) = raw_client(p.listen, &[]).await;
    let (mut upstream, _) = within(up_task).await.unwrap();

    let mut to_client = got;
    within(client.read_to_end(&mut to_client)).await.unwrap();
    assert_eq!(to_client[0], 0x88, "a close frame: {to_client:?}");
    assert_eq!(to_client[1] & 0x80, 0, "unmasked toward the client");
    assert_eq!(u16::from_be_bytes([to_client[2], to_client[3]]), 1002);

    let mut to_upstream = Vec::new();
    within(upstream.read_to_end(&mut to_upstream))
        .await
        .unwrap();
    assert_eq!(to_upstream[0], 0x88, "a close frame: {to_upstream:?}");
    assert_eq!(to_upstream[1] & 0x80, 0x80, "masked toward the upstream");
    let m = metrics(&p).await;
    assert_eq!(
        metric(
            &m,
            r#"sigmesh_upstream_errors_total{route="raw",upstream="up",kind="protocol"}"#
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn an_upstream_reset_is_counted_once_and_the_client_gets_1011() {
    // The upstream resets its connection while the client keeps sending: the proxy may see a
    // failed write toward the upstream and a reset read from it, in either order. The client
    // gets one 1011, and the failure is counted once.
    let (up_addr, up_task) = raw_upstream(Vec::new()).await;
    let p = proxy(ROUTE, &[up_addr]).await;
    let (mut client, got) = raw_client(p.listen, &[]).await;
    let (mut upstream, rest) = within(up_task).await.unwrap();
    let msg = frame(1, true, br#"{"type":"ping"}"#, Some(KEY));
    client.write_all(&msg).await.unwrap();
    let _ = read_exact(&mut upstream, rest, msg.len()).await;
    upstream.set_zero_linger().unwrap();
    drop(upstream); // RST
    for _ in 0..20 {
        if client.write_all(&msg).await.is_err() {
            break;
        }
    }
    let mut to_client = got;
    let _ = within(client.read_to_end(&mut to_client)).await;
    assert!(to_client.len() >= 4, "no close frame: {to_client:?}");
    assert_eq!(to_client[0], 0x88);
    assert_eq!(u16::from_be_bytes([to_client[2], to_client[3]]), 1011);
    assert_eq!(
        to_client.len(),
        2 + usize::from(to_client[1]),
        "exactly one close frame"
    );
    eventually(|| async { sessions(&p).await.is_empty() }).await;
    let m = metrics(&p).await;
    assert_eq!(
        metric(
            &m,
            r#"sigmesh_upstream_errors_total{route="raw",upstream="up",kind="reset"}"#
        ),
        Some(1.0),
        "{m}"
    );
}
