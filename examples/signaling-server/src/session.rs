//! One WebSocket connection: the handshake, then the message loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_util::sync::CancellationToken;

use crate::http::{self, Head};
use crate::{QUEUE_CAPACITY, RelayError, Shared};

/// How long we wait for the peer's close frame after sending ours.
const CLOSE_GRACE: Duration = Duration::from_secs(3);
/// How long sending our close frame may take (a client that stops reading blocks it).
const CLOSE_SEND_TIMEOUT: Duration = Duration::from_secs(1);

/// Completes the WebSocket handshake for `head` and runs the session.
pub(crate) async fn upgrade(
    mut tcp: TcpStream,
    head: Head,
    client: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let name = shared.opts.name.clone();
    if head.method != "GET" {
        let _ = http::respond(
            &mut tcp,
            &name,
            400,
            "text/plain",
            b"websocket upgrade needs GET\n",
            &[],
            false,
        )
        .await;
        return;
    }
    if head.header("sec-websocket-version").map(str::trim) != Some("13") {
        let _ = http::respond(
            &mut tcp,
            &name,
            426,
            "text/plain",
            b"unsupported websocket version\n",
            &[("sec-websocket-version", "13")],
            false,
        )
        .await;
        return;
    }
    let Some(key) = head.header("sec-websocket-key").map(str::trim) else {
        let _ = http::respond(
            &mut tcp,
            &name,
            400,
            "text/plain",
            b"missing sec-websocket-key\n",
            &[],
            false,
        )
        .await;
        return;
    };
    let offered: Vec<&str> = head.tokens("sec-websocket-protocol").collect();
    let subprotocol = pick_subprotocol(&offered, &shared.opts.subprotocols);

    let mut response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {}\r\nx-signaling-server: {name}\r\n",
        derive_accept_key(key.as_bytes())
    );
    if let Some(p) = &subprotocol {
        response.push_str("sec-websocket-protocol: ");
        response.push_str(p);
        response.push_str("\r\n");
    }
    response.push_str("\r\n");
    if tcp.write_all(response.as_bytes()).await.is_err() {
        return;
    }

    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let mut headers = Map::new();
    for (k, v) in &head.headers {
        match headers.get_mut(k) {
            Some(Value::String(prev)) => {
                prev.push_str(", ");
                prev.push_str(v);
            }
            _ => {
                headers.insert(k.clone(), Value::String(v.clone()));
            }
        }
    }
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    let mut session = Session {
        shared,
        conn,
        tx,
        joined: None,
        client,
        path: head.target.clone(),
        headers,
        subprotocol,
        query_room: head.query("room").filter(|r| !r.is_empty()),
        query_peer: head.query("peer").filter(|p| !p.is_empty()),
    };
    tracing::debug!(server = %name, conn, %client, path = %session.path, "websocket session opened");

    let ws = WebSocketStream::from_partially_read(tcp, head.rest, Role::Server, None).await;
    run(ws, &mut session, rx, cancel).await;
    tracing::debug!(server = %name, conn, "websocket session ended");
}

/// Of the offered subprotocols, the first that `supported` lists (any, if `supported` is empty).
pub(crate) fn pick_subprotocol(offered: &[&str], supported: &[String]) -> Option<String> {
    if supported.is_empty() {
        return offered.first().map(|s| (*s).to_owned());
    }
    offered
        .iter()
        .find(|o| supported.iter().any(|s| s == *o))
        .map(|s| (*s).to_owned())
}

/// What the message loop should do after handling a text message.
enum Outcome {
    Reply(Message),
    Close(CloseFrame),
}

async fn run(
    mut ws: WebSocketStream<TcpStream>,
    session: &mut Session,
    mut rx: mpsc::Receiver<Message>,
    cancel: CancellationToken,
) {
    if let (Some(room), Some(peer)) = (session.query_room.clone(), session.query_peer.clone()) {
        let welcome = session.join(room, peer);
        if !send(&mut ws, welcome, &cancel).await {
            return;
        }
    }
    // Set once we have sent our close frame: from then on we only wait for the peer's one.
    let mut closing: Option<Instant> = None;
    loop {
        let deadline = closing.unwrap_or_else(Instant::now);
        tokio::select! {
            _ = cancel.cancelled(), if closing.is_none() => {
                let frame = CloseFrame { code: CloseCode::Away, reason: "server shutting down".into() };
                if !close(&mut ws, frame).await {
                    return;
                }
                closing = Some(Instant::now() + CLOSE_GRACE);
            }
            _ = tokio::time::sleep_until(deadline), if closing.is_some() => return,
            Some(msg) = rx.recv(), if closing.is_none() => {
                if !send(&mut ws, msg, &cancel).await {
                    return;
                }
            }
            incoming = ws.next() => match incoming {
                None => return,
                Some(Err(err)) => {
                    tracing::debug!(conn = session.conn, error = %err, "websocket read failed");
                    return;
                }
                Some(Ok(Message::Text(text))) if closing.is_none() => {
                    let keep_going = match session.handle_text(text.as_str()) {
                        None => true,
                        Some(Outcome::Reply(reply)) => send(&mut ws, reply, &cancel).await,
                        Some(Outcome::Close(frame)) => {
                            closing = Some(Instant::now() + CLOSE_GRACE);
                            close(&mut ws, frame).await
                        }
                    };
                    if !keep_going {
                        return;
                    }
                }
                Some(Ok(Message::Binary(data))) if closing.is_none() => {
                    if !send(&mut ws, Message::Binary(data), &cancel).await {
                        return;
                    }
                }
                Some(Ok(Message::Ping(_))) => {
                    // tungstenite has queued the pong; push it out now.
                    if ws.flush().await.is_err() {
                        return;
                    }
                }
                // Close: tungstenite answers it; the stream then ends. Anything else: ignore.
                Some(Ok(_)) => {}
            },
        }
    }
}

/// Sends one message; `false` when the session should end.
async fn send(
    ws: &mut WebSocketStream<TcpStream>,
    msg: Message,
    cancel: &CancellationToken,
) -> bool {
    tokio::select! {
        biased;
        r = ws.send(msg) => r.is_ok(),
        // A client that stops reading must not hold up shutdown.
        _ = cancel.cancelled() => false,
    }
}

/// Sends a close frame (bounded in time); `false` when the session should end now.
async fn close(ws: &mut WebSocketStream<TcpStream>, frame: CloseFrame) -> bool {
    matches!(
        tokio::time::timeout(CLOSE_SEND_TIMEOUT, ws.close(Some(frame))).await,
        Ok(Ok(()))
    )
}

// === impl Session ===

struct Session {
    shared: Arc<Shared>,
    conn: u64,
    /// Our own queue's sender, handed to the room on join.
    tx: mpsc::Sender<Message>,
    /// (room, peer) once joined.
    joined: Option<(String, String)>,
    client: SocketAddr,
    path: String,
    headers: Map<String, Value>,
    subprotocol: Option<String>,
    query_room: Option<String>,
    query_peer: Option<String>,
}

fn error(reason: impl Into<String>) -> Option<Outcome> {
    let reason: String = reason.into();
    Some(Outcome::Reply(Message::text(
        json!({ "type": "error", "reason": reason }).to_string(),
    )))
}

impl Session {
    fn handle_text(&mut self, text: &str) -> Option<Outcome> {
        let value: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(err) => return error(format!("malformed JSON: {err}")),
        };
        let Some(obj) = value.as_object() else {
            return error("expected a JSON object");
        };
        let Some(kind) = obj.get("type").and_then(Value::as_str) else {
            return error("missing string field \"type\"");
        };
        let str_field = |k: &str| obj.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
        match kind {
            "echo" => Some(Outcome::Reply(Message::text(text))),
            "whoami" => Some(Outcome::Reply(Message::text(
                json!({
                    "type": "whoami",
                    "server": self.shared.opts.name,
                    "headers": self.headers,
                    "path": self.path,
                    "subprotocol": self.subprotocol,
                    "client": self.client.to_string(),
                    "room": self.joined.as_ref().map(|(r, _)| r),
                    "peer": self.joined.as_ref().map(|(_, p)| p),
                })
                .to_string(),
            ))),
            "close" => {
                let code = match obj.get("code") {
                    None => 1000,
                    Some(c) => match c.as_u64().and_then(|c| u16::try_from(c).ok()) {
                        Some(c) if CloseCode::from(c).is_allowed() => c,
                        _ => return error(format!("close code {c} cannot be sent")),
                    },
                };
                let reason = truncate(str_field("reason").unwrap_or(""), 123);
                Some(Outcome::Close(CloseFrame {
                    code: CloseCode::from(code),
                    reason: reason.into(),
                }))
            }
            "join" => {
                let Some(room) = str_field("room")
                    .map(str::to_owned)
                    .or_else(|| self.query_room.clone())
                else {
                    return error("join needs a \"room\"");
                };
                let peer = str_field("from")
                    .or_else(|| str_field("peer"))
                    .map(str::to_owned)
                    .or_else(|| self.joined.as_ref().map(|(_, p)| p.clone()))
                    .or_else(|| self.query_peer.clone())
                    .unwrap_or_else(|| format!("peer-{}", self.conn));
                Some(Outcome::Reply(self.join(room, peer)))
            }
            "leave" => {
                self.leave();
                None
            }
            _ => {
                let Some(room) = str_field("room")
                    .map(str::to_owned)
                    .or_else(|| self.joined.as_ref().map(|(r, _)| r.clone()))
                else {
                    return error(format!("\"{kind}\" needs a \"room\" (or join one first)"));
                };
                let to = str_field("to");
                match self.shared.relay(&room, self.conn, to, Message::text(text)) {
                    Ok(_) => None,
                    Err(RelayError::UnknownPeer) => error(format!(
                        "no peer \"{}\" in room \"{room}\"",
                        to.unwrap_or_default()
                    )),
                }
            }
        }
    }

    /// Joins `room` as `peer` (leaving any other room first) and returns the welcome.
    fn join(&mut self, room: String, peer: String) -> Message {
        let peers = match &self.joined {
            Some((r, p)) if *r == room && *p == peer => self.shared.peers_except(&room, self.conn),
            _ => {
                self.leave();
                let peers = self.shared.join(&room, &peer, self.conn, self.tx.clone());
                self.joined = Some((room.clone(), peer.clone()));
                peers
            }
        };
        tracing::debug!(server = %self.shared.opts.name, conn = self.conn, %room, %peer, "joined");
        Message::text(
            json!({
                "type": "welcome",
                "room": room,
                "peer": peer,
                "server": self.shared.opts.name,
                "peers": peers,
            })
            .to_string(),
        )
    }

    fn leave(&mut self) {
        if let Some((room, peer)) = self.joined.take() {
            self.shared.leave(&room, &peer, self.conn);
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.leave();
    }
}

impl Shared {
    /// The ids in `room` other than `conn`'s, sorted.
    fn peers_except(&self, room: &str, conn: u64) -> Vec<String> {
        let rooms = self.rooms();
        let mut peers: Vec<String> = rooms
            .get(room)
            .into_iter()
            .flatten()
            .filter(|(_, m)| m.conn != conn)
            .map(|(id, _)| id.clone())
            .collect();
        peers.sort();
        peers
    }
}

/// At most `max` bytes of `s`, cut on a character boundary.
fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_subprotocols() {
        let supported = vec!["b".to_owned(), "a".to_owned()];
        assert_eq!(
            pick_subprotocol(&["a", "b"], &supported).as_deref(),
            Some("a")
        );
        assert_eq!(
            pick_subprotocol(&["x", "b"], &supported).as_deref(),
            Some("b")
        );
        assert_eq!(pick_subprotocol(&["x"], &supported), None);
        assert_eq!(pick_subprotocol(&["x", "y"], &[]).as_deref(), Some("x"));
        assert_eq!(pick_subprotocol(&[], &[]), None);
    }

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("hello", 10), "hello");
    }
}
