//! The live session table behind `GET /sessions`.
//!
//! The table is touched twice per session (insert, remove); per-message counters are atomics
//! on the session's own [`SessionInfo`], so the relay path takes no shared lock.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use serde::Serialize;

/// Candidate counts of a session (filled in by ICE reading).
#[derive(Default)]
pub struct IceCounts {
    pub host: AtomicU64,
    pub srflx: AtomicU64,
    pub prflx: AtomicU64,
    pub relay: AtomicU64,
    pub udp: AtomicU64,
    pub tcp: AtomicU64,
}

/// One live session.
pub struct SessionInfo {
    pub id: u64,
    pub route: String,
    pub upstream: String,
    pub client: SocketAddr,
    pub opened_at: SystemTime,
    pub room: OnceLock<String>,
    pub peer: OnceLock<String>,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub dropped: AtomicU64,
    pub ice: IceCounts,
    /// Offer to answer, in milliseconds; `u64::MAX` while unknown.
    pub setup_ms: AtomicU64,
    /// How the client came: `http/1.1`, `http/1.1+tls` or `h2` (RFC 8441, over TLS).
    pub transport: OnceLock<&'static str>,
    /// The upstream endpoint it is on (it changes when the session moves).
    pub endpoint: arc_swap::ArcSwapOption<crate::pool::Endpoint>,
    /// The code of the session's first close (either side's, or sigmesh's own);
    /// [`NO_CLOSE`] while none, 1005 ("no status") for a close without a code.
    pub close_code: std::sync::atomic::AtomicU32,
    /// The upstream failed mid-session.
    pub upstream_failed: std::sync::atomic::AtomicBool,
}

/// [`SessionInfo::close_code`] before any close.
pub const NO_CLOSE: u32 = u32::MAX;

impl SessionInfo {
    pub fn new(id: u64, route: &str, upstream: &str, client: SocketAddr) -> SessionInfo {
        SessionInfo {
            id,
            route: route.to_owned(),
            upstream: upstream.to_owned(),
            client,
            opened_at: SystemTime::now(),
            room: OnceLock::new(),
            peer: OnceLock::new(),
            messages_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            ice: IceCounts::default(),
            setup_ms: AtomicU64::new(u64::MAX),
            transport: OnceLock::new(),
            endpoint: arc_swap::ArcSwapOption::empty(),
            close_code: std::sync::atomic::AtomicU32::new(NO_CLOSE),
            upstream_failed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The class of the session's close, once it ended.
    pub fn close_class(&self) -> sigmesh_core::label::CloseClass {
        use sigmesh_core::label::CloseClass;
        match self.close_code.load(Ordering::Relaxed) {
            NO_CLOSE => CloseClass::NoClose,
            c => CloseClass::of(u16::try_from(c).ok()),
        }
    }

    /// The JSON form of `/sessions`.
    pub fn snapshot(&self) -> SessionView<'_> {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let setup = l(&self.setup_ms);
        SessionView {
            id: self.id,
            route: &self.route,
            upstream: &self.upstream,
            client: self.client.to_string(),
            room: self.room.get().map(String::as_str),
            peer: self.peer.get().map(String::as_str),
            opened_at: humantime::format_rfc3339_millis(self.opened_at).to_string(),
            messages_in: l(&self.messages_in),
            messages_out: l(&self.messages_out),
            bytes_in: l(&self.bytes_in),
            bytes_out: l(&self.bytes_out),
            dropped: l(&self.dropped),
            ice: IceView {
                host: l(&self.ice.host),
                srflx: l(&self.ice.srflx),
                prflx: l(&self.ice.prflx),
                relay: l(&self.ice.relay),
                udp: l(&self.ice.udp),
                tcp: l(&self.ice.tcp),
            },
            setup_ms: (setup != u64::MAX).then_some(setup),
            transport: self.transport.get().copied().unwrap_or("http/1.1"),
            endpoint: self.endpoint.load().as_ref().map(|e| e.id.clone()),
        }
    }
}

#[derive(Serialize)]
pub struct SessionView<'a> {
    pub id: u64,
    pub route: &'a str,
    pub upstream: &'a str,
    pub client: String,
    pub room: Option<&'a str>,
    pub peer: Option<&'a str>,
    pub opened_at: String,
    pub messages_in: u64,
    pub messages_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub dropped: u64,
    pub ice: IceView,
    pub setup_ms: Option<u64>,
    pub transport: &'static str,
    pub endpoint: Option<String>,
}

#[derive(Serialize)]
pub struct IceView {
    pub host: u64,
    pub srflx: u64,
    pub prflx: u64,
    pub relay: u64,
    pub udp: u64,
    pub tcp: u64,
}

/// The table of live sessions.
#[derive(Default)]
pub struct Sessions {
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, Arc<SessionInfo>>>,
    changed: tokio::sync::Notify,
}

impl Sessions {
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Registers a session; it is removed when the guard drops.
    pub fn register(self: &Arc<Self>, info: Arc<SessionInfo>) -> SessionGuard {
        self.lock().insert(info.id, info.clone());
        SessionGuard {
            sessions: self.clone(),
            info,
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn all(&self) -> Vec<Arc<SessionInfo>> {
        let mut v: Vec<_> = self.lock().values().cloned().collect();
        v.sort_by_key(|s| s.id);
        v
    }

    /// Waits until no session is live.
    pub async fn wait_empty(&self) {
        loop {
            let notified = self.changed.notified();
            if self.is_empty() {
                return;
            }
            notified.await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<SessionInfo>>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Removes its session from the table on drop.
pub struct SessionGuard {
    sessions: Arc<Sessions>,
    pub info: Arc<SessionInfo>,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.sessions.lock().remove(&self.info.id);
        self.sessions.changed.notify_waiters();
    }
}
