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
pub use sigmesh_core::engine_io::{MAX_OPEN_PACKET, MAX_SID, is_open, sid_in_open_packet, sid_of};

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
}
