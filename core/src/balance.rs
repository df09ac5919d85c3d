//! Picking an endpoint inside one upstream (`balance`): the weights split between upstreams
//! (versions, [`crate::split`]); this picks one of an upstream's endpoints (pods).
//!
//! - [`Balance::Room`]: consistent hashing with bounded loads. Each endpoint owns
//!   [`VNODES`] points on a 64-bit ring; a key (the room, or the sticky key) goes to the first
//!   point at or after its own position, walking on past an endpoint that is unhealthy or
//!   full. Full means holding `ceil(1.25 × (live + 1) / healthy) + 8` sessions or more, where
//!   `live` counts the healthy endpoints' sessions: no endpoint takes more than 1.25× its fair
//!   share of new rooms (plus [`LOAD_SLACK`] sessions, so that at a low load placement is
//!   the ring's alone instead of following who happened to hold one session more). Adding an
//!   endpoint moves only the keys that now land on its points (about 1/n of them). The front
//!   end keeps a room that has live sessions on its endpoint whatever the load (the proxy's
//!   room table), so a room's sessions meet on one endpoint unless it goes down.
//! - [`Balance::LeastSessions`]: the healthy endpoint with the fewest sessions, the first of
//!   equals from a random start (so ties do not all go to the first).
//! - [`Balance::Random`]: a random healthy endpoint.
//!
//! ## The ring (the same definition wherever it is computed)
//! A point of endpoint `id` (its URL as configured, or `ip:port` for a DNS endpoint), vnode `v`
//! (0 to [`VNODES`] − 1), is `mix(stable_hash(id) ^ (v × 0x9e3779b97f4a7c15))`; a key's position
//! is `mix(stable_hash(key))`, where `stable_hash` is the split's FNV-1a ([`crate::split`]) and
//! `mix` is SplitMix64's finalizer ([`mix`]). Ties between points sort by endpoint index.
//!
//! No endpoint healthy: `None` (the front end answers 503 at once).

use crate::split::stable_hash;

/// Points per endpoint on the ring: at 256, an endpoint's share of keys is within about 6 %
/// (one standard deviation) of fair, and the ring takes 4 KiB per endpoint.
pub const VNODES: u32 = 256;

/// Most endpoints one upstream may have (the index is a `u16` on the ring).
pub const MAX_ENDPOINTS: usize = 4096;

/// The load bound: no endpoint takes more than `LOAD_BOUND_PERCENT` % of its fair share.
pub const LOAD_BOUND_PERCENT: u64 = 125;

/// Sessions an endpoint may hold above the bound: below it, the ring alone decides.
pub const LOAD_SLACK: u64 = 8;

pub use crate::config::Balance;

/// What the front end knows of one endpoint when it picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Load {
    /// It may get new sessions (health checks and passive ejection).
    pub healthy: bool,
    /// Its live sessions.
    pub sessions: u64,
}

/// SplitMix64's finalizer: spreads FNV-1a's output over all 64 bits.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The ring position of vnode `v` of endpoint `id`.
pub fn point(id: &str, v: u32) -> u64 {
    mix(stable_hash(id.as_bytes()) ^ u64::from(v).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// The ring position of a key.
pub fn position(key: &[u8]) -> u64 {
    mix(stable_hash(key))
}

/// One upstream's endpoints on the ring.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ring {
    /// (position, endpoint index), sorted.
    points: Vec<(u64, u16)>,
    endpoints: usize,
}

impl Ring {
    /// The ring of endpoints `ids` (at most [`MAX_ENDPOINTS`]; more are left off).
    pub fn new<S: AsRef<str>>(ids: &[S]) -> Ring {
        let n = ids.len().min(MAX_ENDPOINTS);
        let mut points = Vec::with_capacity(n * VNODES as usize);
        for (i, id) in ids.iter().take(n).enumerate() {
            for v in 0..VNODES {
                points.push((point(id.as_ref(), v), i as u16));
            }
        }
        points.sort_unstable();
        Ring {
            points,
            endpoints: n,
        }
    }

    /// Endpoints on the ring.
    pub fn len(&self) -> usize {
        self.endpoints
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.endpoints == 0
    }

    /// The endpoint for `key` among `loads` (indexed like the ring's endpoints) by bounded-load
    /// consistent hashing; `None` when none is healthy.
    pub fn pick(&self, key: &[u8], loads: &[Load]) -> Option<usize> {
        let (healthy, live) = census(loads);
        if healthy == 0 || self.points.is_empty() {
            return None;
        }
        let cap = capacity(live, healthy);
        let start = self.points.partition_point(|&(p, _)| p < position(key));
        let n = self.points.len();
        // Every healthy endpoint below the cap is reached within one turn; the cap leaves at
        // least one below it (the healthy endpoints' average is below the cap).
        for k in 0..n {
            let e = self.points[(start + k) % n].1 as usize;
            if loads.get(e).is_some_and(|l| l.healthy && l.sessions < cap) {
                return Some(e);
            }
        }
        least(loads, 0)
    }
}

/// (healthy endpoints, their live sessions).
fn census(loads: &[Load]) -> (u64, u64) {
    loads
        .iter()
        .filter(|l| l.healthy)
        .fold((0, 0), |(n, s), l| (n + 1, s.saturating_add(l.sessions)))
}

/// `ceil(1.25 × (live + 1) / healthy) + 8`: the most sessions one endpoint may hold before a
/// new room goes elsewhere.
pub fn capacity(live: u64, healthy: u64) -> u64 {
    let num = LOAD_BOUND_PERCENT.saturating_mul(live.saturating_add(1));
    let den = 100 * healthy.max(1);
    num.div_ceil(den).saturating_add(LOAD_SLACK)
}

/// The healthy endpoint with the fewest sessions, ties broken from `from` on.
fn least(loads: &[Load], from: usize) -> Option<usize> {
    let n = loads.len();
    (0..n)
        .map(|k| (from + k) % n.max(1))
        .filter(|&i| loads[i].healthy)
        .min_by_key(|&i| loads[i].sessions)
}

/// Picks an endpoint of one upstream: `ring` for [`Balance::Room`] with a `key` (without a key,
/// room balancing falls back to the fewest sessions), `random` from the caller's RNG.
pub fn pick(
    balance: Balance,
    ring: &Ring,
    key: Option<&[u8]>,
    loads: &[Load],
    random: u32,
) -> Option<usize> {
    if loads.is_empty() {
        return None;
    }
    match (balance, key) {
        (Balance::Room, Some(k)) => ring.pick(k, loads),
        (Balance::Room, None) | (Balance::LeastSessions, _) => {
            least(loads, random as usize % loads.len())
        }
        (Balance::Random, _) => {
            let healthy = loads.iter().filter(|l| l.healthy).count();
            if healthy == 0 {
                return None;
            }
            let nth = random as usize % healthy;
            loads
                .iter()
                .enumerate()
                .filter(|(_, l)| l.healthy)
                .nth(nth)
                .map(|(i, _)| i)
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("ws://10.0.0.{i}:9001/ws")).collect()
    }

    fn up(n: usize) -> Vec<Load> {
        vec![
            Load {
                healthy: true,
                sessions: 0
            };
            n
        ]
    }

    #[test]
    fn rooms_meet_on_one_endpoint_and_shares_are_fair() {
        let ring = Ring::new(&ids(3));
        let mut loads = up(3);
        // 1,000 rooms, 4 sessions each, opened room after room; where each room's went.
        let mut split = 0;
        for r in 0..1000 {
            let key = format!("room-{r}");
            let mut seen = Vec::new();
            for _ in 0..4 {
                let e = ring.pick(key.as_bytes(), &loads).unwrap();
                loads[e].sessions += 1;
                seen.push(e);
            }
            seen.dedup();
            split += usize::from(seen.len() > 1);
        }
        let total: u64 = loads.iter().map(|l| l.sessions).sum();
        assert_eq!(total, 4000);
        for l in &loads {
            // At most 1.25× the fair share, plus the slack and one of rounding up.
            assert!(
                l.sessions * 3 * 100 <= total * 125 + 300 * (LOAD_SLACK + 1),
                "{loads:?}"
            );
        }
        // A room is split only when its endpoint filled up mid-room.
        assert!(split < 50, "{split} rooms split: {loads:?}");
    }

    #[test]
    fn adding_an_endpoint_moves_only_its_share() {
        let three = Ring::new(&ids(3));
        let four = Ring::new(&ids(4));
        let (l3, l4) = (up(3), up(4));
        let mut moved = 0;
        for r in 0..10_000 {
            let k = format!("room-{r}");
            let a = three.pick(k.as_bytes(), &l3).unwrap();
            let b = four.pick(k.as_bytes(), &l4).unwrap();
            if a != b {
                assert_eq!(b, 3, "a key only moves to the new endpoint");
                moved += 1;
            }
        }
        // About a quarter move.
        assert!((2000..3000).contains(&moved), "{moved}");
    }

    #[test]
    fn unhealthy_and_full_endpoints_are_passed_over() {
        let ring = Ring::new(&ids(3));
        let mut loads = up(3);
        let k = b"room-7";
        let home = ring.pick(k, &loads).unwrap();
        loads[home].healthy = false;
        let next = ring.pick(k, &loads).unwrap();
        assert_ne!(next, home);
        loads[home].healthy = true;
        // Full: 20 sessions there, none elsewhere; the cap is ceil(1.25 × 21 / 3) + 8 = 17.
        loads[home].sessions = 20;
        assert_eq!(capacity(20, 3), 17);
        assert_ne!(ring.pick(k, &loads).unwrap(), home);
        for l in &mut loads {
            l.healthy = false;
        }
        assert_eq!(ring.pick(k, &loads), None);
        assert_eq!(pick(Balance::Random, &ring, None, &loads, 3), None);
        assert_eq!(pick(Balance::LeastSessions, &ring, None, &loads, 3), None);
    }

    #[test]
    fn least_sessions_and_random() {
        let ring = Ring::new(&ids(3));
        let mut loads = up(3);
        loads[0].sessions = 5;
        loads[1].sessions = 2;
        loads[2].sessions = 9;
        assert_eq!(
            pick(Balance::LeastSessions, &ring, None, &loads, 0),
            Some(1)
        );
        loads[1].healthy = false;
        assert_eq!(
            pick(Balance::LeastSessions, &ring, None, &loads, 0),
            Some(0)
        );
        let picks: std::collections::BTreeSet<_> = (0..10)
            .filter_map(|r| pick(Balance::Random, &ring, None, &loads, r))
            .collect();
        assert_eq!(picks, [0, 2].into_iter().collect());
        // Room without a key: the fewest sessions.
        assert_eq!(pick(Balance::Room, &ring, None, &loads, 0), Some(0));
    }

    #[test]
    fn the_ring_definition_is_fixed() {
        // Reference values: the filter and every replica compute the same.
        assert_eq!(mix(0), 0);
        assert_eq!(position(b"room-42"), mix(0xb57038d1b56f17b3));
        assert_eq!(
            point("ws://10.0.0.1:9001/ws", 0),
            mix(stable_hash(b"ws://10.0.0.1:9001/ws"))
        );
    }
}
