//! A small room-based WebRTC signaling server.
//!
//! It is the real upstream behind `sigmesh demo` (two instances, `stable` and `canary`) and in the
//! proxy's integration tests. One TCP listener serves both WebSocket signaling (any path) and a
//! little plain HTTP (`GET /` → [`DEMO_PAGE`], `GET /healthz` → `ok`, anything else 404).
//!
//! # Protocol
//!
//! JSON text messages, each with a `type`:
//!
//! | client sends | server does |
//! |---|---|
//! | `{"type":"join","room":"r","from":"alice"}` | replies `welcome` (with the other `peers`), sends `peer-joined` to the room |
//! | `offer`, `answer`, `candidate`, any other type | relays the text verbatim to the other peers of the room (only to `"to"` if present) |
//! | `{"type":"leave"}` (or disconnect) | sends `peer-left` to the room |
//! | `{"type":"echo",...}` | the same text back; binary messages are echoed as binary |
//! | `{"type":"whoami"}` | `{"type":"whoami","server","headers","path","subprotocol","client"}` |
//! | `{"type":"close","code":4000,"reason":"bye"}` | closes the connection with that code and reason |
//!
//! The room and peer may also come from the URL query (`/ws?room=r&peer=alice`): the connection
//! then joins at once and gets its `welcome` without sending `join`. A later `join` for the same
//! room and peer only repeats the `welcome`. Malformed messages get
//! `{"type":"error","reason":"..."}` and the connection stays open.
//!
//! Every outgoing message from other peers goes through a bounded per-connection queue
//! ([`QUEUE_CAPACITY`]); when it is full the message is dropped and counted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod http;
mod session;

/// The demo web page (served on `GET /` and `GET /index.html`).
pub const DEMO_PAGE: &str = include_str!("demo.html");

/// Capacity of each connection's outbound queue (messages relayed from other peers).
pub const QUEUE_CAPACITY: usize = 256;

/// How the server presents itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerOptions {
    /// Reported to clients (`welcome.server`, `whoami.server`, the `x-signaling-server` header).
    pub name: String,
    /// Subprotocols this server speaks: of those a client offers, the first one in this list is
    /// chosen. Empty: the first offered one is accepted, whatever it is.
    pub subprotocols: Vec<String>,
    /// Every relayed message (offer, answer, candidate, …) is held this long before it is
    /// delivered: a slow version of a server, for canary tests. Default: none.
    pub relay_delay: std::time::Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            name: "signaling".to_owned(),
            subprotocols: Vec::new(),
            relay_delay: std::time::Duration::ZERO,
        }
    }
}

impl ServerOptions {
    /// Options with this name and no subprotocol preference.
    pub fn named(name: impl Into<String>) -> Self {
        ServerOptions {
            name: name.into(),
            ..ServerOptions::default()
        }
    }
}

/// A running server. Dropping the handle does not stop the server; call [`ServerHandle::shutdown`].
#[derive(Debug)]
pub struct ServerHandle {
    /// The address the server listens on.
    pub local_addr: SocketAddr,
    cancel: CancellationToken,
    tracker: TaskTracker,
    shared: Arc<Shared>,
}

impl ServerHandle {
    /// Stops accepting connections and closes every WebSocket session with 1001.
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }

    /// Waits until the accept loop and every connection task have ended (after [`shutdown`]).
    ///
    /// [`shutdown`]: ServerHandle::shutdown
    pub async fn closed(&self) {
        self.tracker.wait().await;
    }

    /// Messages dropped so far because a receiving peer's queue was full.
    pub fn dropped_messages(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// The `ws://` base URL of this server (`ws://127.0.0.1:PORT`).
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.local_addr)
    }
}

/// Starts serving on `listener`: spawns the accept loop and returns at once.
pub async fn serve(listener: TcpListener, opts: ServerOptions) -> std::io::Result<ServerHandle> {
    let local_addr = listener.local_addr()?;
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let shared = Arc::new(Shared {
        opts,
        rooms: Mutex::new(HashMap::new()),
        next_conn: AtomicU64::new(1),
        dropped: AtomicU64::new(0),
    });
    tracker.spawn(accept_loop(
        listener,
        shared.clone(),
        cancel.clone(),
        tracker.clone(),
    ));
    tracker.close();
    tracing::info!(server = %shared.opts.name, %local_addr, "signaling server listening");
    Ok(ServerHandle {
        local_addr,
        cancel,
        tracker,
        shared,
    })
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, client)) => {
                    let _ = tcp.set_nodelay(true);
                    tracker.spawn(connection(tcp, client, shared.clone(), cancel.clone()));
                }
                Err(err) => {
                    // Usually out of file descriptors: back off a little instead of spinning.
                    tracing::warn!(server = %shared.opts.name, error = %err, "accept failed");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                }
            },
        }
    }
    tracing::debug!(server = %shared.opts.name, "accept loop stopped");
}

async fn connection(
    mut tcp: TcpStream,
    client: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let head = tokio::select! {
        _ = cancel.cancelled() => return,
        head = http::read_head(&mut tcp) => head,
    };
    let head = match head {
        Ok(http::ReadHead::Head(head)) => head,
        Ok(http::ReadHead::TooLarge) => {
            let _ = http::respond(
                &mut tcp,
                &shared.opts.name,
                431,
                "text/plain",
                b"request head too large\n",
                &[],
                false,
            )
            .await;
            return;
        }
        Ok(http::ReadHead::Bad) => {
            let _ = http::respond(
                &mut tcp,
                &shared.opts.name,
                400,
                "text/plain",
                b"bad request\n",
                &[],
                false,
            )
            .await;
            return;
        }
        Ok(http::ReadHead::Closed) | Err(_) => return,
    };
    if head.is_websocket_upgrade() {
        session::upgrade(tcp, head, client, shared, cancel).await;
    } else {
        let _ = http::serve_plain(&mut tcp, &head, &shared.opts.name).await;
    }
}

// === impl Shared ===

/// State shared by every connection of one server.
#[derive(Debug)]
struct Shared {
    opts: ServerOptions,
    /// room → peer id → member.
    rooms: Mutex<HashMap<String, HashMap<String, Member>>>,
    next_conn: AtomicU64,
    dropped: AtomicU64,
}

#[derive(Debug)]
struct Member {
    conn: u64,
    tx: mpsc::Sender<Message>,
}

/// Why a relay reached nobody.
#[derive(Debug)]
enum RelayError {
    UnknownPeer,
}

impl Shared {
    fn rooms(&self) -> MutexGuard<'_, HashMap<String, HashMap<String, Member>>> {
        // A poisoned lock only means another task panicked mid-update; the map is still usable.
        self.rooms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn deliver(&self, member: &Member, msg: Message, room: &str, peer: &str) {
        let delay = self.opts.relay_delay;
        if !delay.is_zero() {
            let tx = member.tx.clone();
            // Bounded like the queue: a send that cannot be made after the delay is dropped.
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = tx.try_send(msg);
            });
            return;
        }
        if let Err(err) = member.tx.try_send(msg)
            && matches!(err, mpsc::error::TrySendError::Full(_))
        {
            let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(server = %self.opts.name, room, peer, total, "peer queue full, message dropped");
        }
    }

    /// Adds (or replaces) `peer` in `room`, tells the others, and returns their ids, sorted.
    fn join(&self, room: &str, peer: &str, conn: u64, tx: mpsc::Sender<Message>) -> Vec<String> {
        let announce = Message::text(
            serde_json::json!({
                "type": "peer-joined",
                "room": room,
                "peer": peer,
                "server": self.opts.name,
            })
            .to_string(),
        );
        let mut rooms = self.rooms();
        let members = rooms.entry(room.to_owned()).or_default();
        let mut others = Vec::with_capacity(members.len());
        for (id, member) in members.iter() {
            if member.conn != conn && id != peer {
                self.deliver(member, announce.clone(), room, id);
                others.push(id.clone());
            }
        }
        members.insert(peer.to_owned(), Member { conn, tx });
        others.sort();
        others
    }

    /// Removes `peer` from `room` if `conn` still owns that id, and tells the others.
    fn leave(&self, room: &str, peer: &str, conn: u64) {
        let mut rooms = self.rooms();
        let Some(members) = rooms.get_mut(room) else {
            return;
        };
        if members.get(peer).is_none_or(|m| m.conn != conn) {
            return;
        }
        members.remove(peer);
        if members.is_empty() {
            rooms.remove(room);
            return;
        }
        let msg = Message::text(
            serde_json::json!({
                "type": "peer-left",
                "room": room,
                "peer": peer,
                "server": self.opts.name,
            })
            .to_string(),
        );
        for (id, member) in members.iter() {
            self.deliver(member, msg.clone(), room, id);
        }
    }

    /// Sends `msg` to the members of `room` other than `conn` (only to `to` if given).
    fn relay(
        &self,
        room: &str,
        conn: u64,
        to: Option<&str>,
        msg: Message,
    ) -> Result<usize, RelayError> {
        let rooms = self.rooms();
        let members = rooms.get(room);
        match to {
            Some(to) => {
                let member = members
                    .and_then(|m| m.get(to))
                    .ok_or(RelayError::UnknownPeer)?;
                self.deliver(member, msg, room, to);
                Ok(1)
            }
            None => {
                let mut n = 0;
                for (id, member) in members.into_iter().flatten() {
                    if member.conn != conn {
                        self.deliver(member, msg.clone(), room, id);
                        n += 1;
                    }
                }
                Ok(n)
            }
        }
    }
}
