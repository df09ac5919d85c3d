//! `affinity: engine_io`: Engine.IO (Socket.IO) sessions pinned to the endpoint that issued
//! them, without a cookie or an IP hash.
//!
//! Engine.IO opens with a polling request (`?EIO=4&transport=polling`, no `sid`) whose answer
//! is the open packet, `0{"sid":"…",…}` (Engine.IO 3 prefixes a length, `96:0{…}`). Every
//! later request of that session carries `sid=…`: more polling, then the WebSocket upgrade.
//! Each must reach the server that issued the sid, or it answers 400 ("Session ID unknown").
//! sigmesh reads the sid from the open packet it forwards and sends every request carrying
//! it to that upstream and endpoint.
//!
//! The table is bounded ([`MAX_SIDS`] per route) and forgets a sid [`EXPIRY`] after its last
//! request (Engine.IO's own ping timeout is 20 s). When it is full, one sweep drops the
//! expired entries and, if the table is still over 15/16 full, arbitrary ones down to that:
//! one sweep per [`MAX_SIDS`] / 16 inserts at worst, so a client opening sessions as fast as
//! it can costs amortized constant work per sid, not a scan each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Endpoint;

/// Most sids remembered per route.
pub const MAX_SIDS: usize = 65_536;
/// A sid not seen for this long is forgotten.
pub const EXPIRY: Duration = Duration::from_secs(120);
/// Longest sid accepted (Engine.IO's are 20 characters).
pub const MAX_SID: usize = 64;
/// Longest open-packet answer read to find the sid.
pub const MAX_OPEN_PACKET: usize = 16 * 1024;

struct Pin {
    upstream: usize,
    endpoint: Arc<Endpoint>,
    seen: Instant,
}

/// One route's sids.
#[derive(Default)]
pub struct Sids {
    map: Mutex<HashMap<String, Pin>>,
}

impl Sids {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pin>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Where `sid` was issued: the upstream's index and the endpoint.
    pub fn get(&self, sid: &str) -> Option<(usize, Arc<Endpoint>)> {
        let mut map = self.map();
        let now = Instant::now();
        let pin = map.get_mut(sid)?;
        if now.duration_since(pin.seen) > EXPIRY {
            map.remove(sid);
            return None;
        }
        pin.seen = now;
        Some((pin.upstream, pin.endpoint.clone()))
    }

    /// Remembers that `endpoint` of upstream `upstream` issued `sid`.
    pub fn insert(&self, sid: &str, upstream: usize, endpoint: Arc<Endpoint>) {
        let mut map = self.map();
        let now = Instant::now();
        if map.len() >= MAX_SIDS && !map.contains_key(sid) {
            map.retain(|_, p| now.duration_since(p.seen) <= EXPIRY);
            // Down to 15/16 full, so the next sweep is MAX_SIDS / 16 inserts away.
            let target = MAX_SIDS - MAX_SIDS / 16;
            if map.len() > target {
                let drop: Vec<String> = map.keys().take(map.len() - target).cloned().collect();
                for k in drop {
                    map.remove(&k);
                }
            }
        }
        map.insert(
            sid.to_owned(),
            Pin {
                upstream,
                endpoint,
                seen: now,
            },
        );
    }

    /// Sids remembered now.
    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn valid_sid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SID
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The `sid` of an Engine.IO request's query, when it is one.
pub fn sid_of(query: Option<&str>) -> Option<&str> {
    let q = query?;
    param(q, "EIO")?;
    param(q, "sid").filter(|s| valid_sid(s))
}

/// Whether a request opens an Engine.IO session (polling, no `sid`): its answer carries one.
pub fn is_open(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        param(q, "EIO").is_some()
            && param(q, "transport") == Some("polling")
            && param(q, "sid").is_none()
    })
}

/// The sid in an open packet (`0{"sid":"…"}`, optionally `LEN:` first, Engine.IO 3).
pub fn sid_in_open_packet(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body.get(..body.len().min(MAX_OPEN_PACKET))?).ok()?;
    // Engine.IO 3: `LEN:packet` (then maybe more packets); the open packet is ASCII, so its
    // length in characters is its length in bytes.
    let text = match text.split_once(':') {
        Some((len, rest)) if !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit()) => {
            rest.get(..len.parse::<usize>().ok()?)?
        }
        _ => text,
    };
    let json = text.strip_prefix('0')?;
    // The packet may be followed by others (`\x1e`-separated in Engine.IO 4).
    let json = json.split('\u{1e}').next()?;
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let sid = v.get("sid")?.as_str()?;
    valid_sid(sid).then(|| sid.to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_table_stays_bounded_and_keeps_the_newest() {
        let sids = Sids::default();
        let ep = Arc::new(Endpoint::new(
            "ws://h:1/ws".into(),
            sigmesh_core::compiled::Target::parse("ws://h:1/ws").unwrap(),
            None,
        ));
        for i in 0..MAX_SIDS + 10 {
            sids.insert(&format!("s{i}"), 0, ep.clone());
            assert!(sids.len() <= MAX_SIDS);
        }
        // The newest is there; one sweep made room for a sixteenth, not one entry per insert.
        assert!(sids.get(&format!("s{}", MAX_SIDS + 9)).is_some());
        assert_eq!(sids.len(), MAX_SIDS - MAX_SIDS / 16 + 10);
    }

    #[test]
    fn sids_are_read_from_queries_and_open_packets() {
        assert_eq!(
            sid_of(Some("EIO=4&transport=polling&sid=abc_-1")),
            Some("abc_-1")
        );
        assert_eq!(
            sid_of(Some("transport=polling&sid=abc")),
            None,
            "not Engine.IO"
        );
        assert_eq!(sid_of(Some("EIO=4&sid=a%20b")), None, "not a sid");
        assert!(is_open(Some("EIO=4&transport=polling&t=x")));
        assert!(!is_open(Some("EIO=4&transport=polling&sid=x")));
        assert!(!is_open(Some("EIO=4&transport=websocket")));
        let open =
            br#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000}"#;
        assert_eq!(
            sid_in_open_packet(open).as_deref(),
            Some("lv_VI97HAXpY6yYWAAAC")
        );
        // Engine.IO 3: a length first, maybe more packets after.
        assert_eq!(
            sid_in_open_packet(br#"28:0{"sid":"abc","upgrades":[]}2:40"#).as_deref(),
            Some("abc")
        );
        assert_eq!(
            sid_in_open_packet(br#"14:0{"sid":"abc"}"#).as_deref(),
            Some("abc")
        );
        assert_eq!(
            sid_in_open_packet(br#"99:0{"sid":"abc"}"#),
            None,
            "a length past the end"
        );
        assert_eq!(
            sid_in_open_packet(b"0{\"sid\":\"abc\"}\x1e40").as_deref(),
            Some("abc")
        );
        assert_eq!(sid_in_open_packet(b"hello"), None);
        assert_eq!(sid_in_open_packet(br#"0{"sid":"<script>"}"#), None);
    }
}
