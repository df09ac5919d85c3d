//! Global room buckets without a Redis round trip per message: each replica leases tokens from
//! the room's bucket in Redis in batches and spends them locally.
//!
//! Per room, a replica holds `tokens`: leased and unspent, or negative while it owes some:
//! - a message takes a leased token when there is one; when the lease runs down to half a
//!   batch, a refill is asked in the background (never on the message's path);
//! - with no leased token, and none known to be missing in Redis, a message may **borrow** a
//!   token, up to one batch owed: the first messages of a room never wait for Redis. The debt
//!   is paid from the next grant (a refill asks for a batch plus the debt);
//! - when Redis grants less than asked, the room's bucket is empty: messages are refused until
//!   the retry-after Redis gave;
//! - leased tokens are spent within [`LEASE`] or dropped (never given back).
//!
//! **The error bound.** Every message let through is paid by a token the shared bucket
//! granted, except at most one batch borrowed per room per replica at a time. So with `R`
//! replicas, a room gets at most `burst + rate × (t + LEASE) + R × batch` messages in any
//! window `t` (against `burst + rate × t` for one bucket in one place). The other way, a
//! message may be refused while up to `R × batch` tokens sit leased in other replicas (for at
//! most [`LEASE`]), or when more than a batch of a room's messages reach one replica within
//! one Redis round trip (its refill is still out). `batch` is [`batch`]: an eighth of the
//! burst, from 1 to 64.
//!
//! The table holds at most [`MAX_ROOMS`] rooms; when it is full, rooms whose lease ran out are
//! dropped first, then all (dropping unspent tokens only refuses more, never less; a dropped
//! debt is the one message per room above).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sigmesh_core::bucket::BucketVerdict;
use sigmesh_core::config::{OnClusterError, Rate};

use super::{Cluster, Op};
use crate::clock;

/// How long leased tokens may be spent.
pub const LEASE: Duration = Duration::from_secs(1);
/// Most rooms a replica holds leases for.
pub const MAX_ROOMS: usize = 100_000;

/// Tokens leased at a time: an eighth of the burst, from 1 to 64.
pub fn batch(rate: &Rate) -> i64 {
    i64::from((rate.burst / 8).clamp(1, 64))
}

#[derive(Debug, Clone, Copy, Default)]
struct Room {
    /// Leased and unspent; negative while borrowed tokens are owed (at most a batch).
    tokens: i64,
    /// Leased tokens are dropped at this `now`.
    expires: Duration,
    /// Redis said the bucket is empty until this `now`.
    empty_until: Duration,
    /// A refill is out.
    refilling: bool,
    /// The last refill failed (Redis down): decisions are `on_error`'s until one succeeds.
    failed: bool,
}

/// Per route name, per room.
#[derive(Debug, Default)]
pub struct RoomLeases {
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    routes: HashMap<String, HashMap<String, Room>>,
    rooms: usize,
}

impl Table {
    /// `room`'s lease on `route`, made empty when new. A room already held costs two lookups
    /// and no allocation (this is on every message of a global room bucket).
    fn room(&mut self, route: &str, room: &str, now: Duration) -> Option<&mut Room> {
        if !self.routes.get(route).is_some_and(|r| r.contains_key(room)) {
            if self.rooms >= MAX_ROOMS {
                self.evict(now);
            }
            self.rooms += 1;
            self.routes
                .entry(route.to_owned())
                .or_default()
                .insert(room.to_owned(), Room::default());
        }
        self.routes.get_mut(route)?.get_mut(room)
    }

    fn evict(&mut self, now: Duration) {
        for rooms in self.routes.values_mut() {
            rooms.retain(|_, r| r.refilling || r.expires > now);
        }
        self.rooms = self.routes.values().map(HashMap::len).sum();
        if self.rooms >= MAX_ROOMS {
            self.routes.clear();
            self.rooms = 0;
        }
    }
}

impl Cluster {
    /// A message's token from the global bucket of `room` on route `route` (the hot path: a
    /// lock and a map lookup; a refill, when one is due, is spawned, not awaited).
    pub fn take_room(
        self: &Arc<Self>,
        route: &str,
        room: &str,
        rate: &Rate,
        now: Duration,
    ) -> BucketVerdict {
        let batch = batch(rate);
        let mut t = self.rooms.table.lock().unwrap_or_else(|p| p.into_inner());
        let Some(r) = t.room(route, room, now) else {
            // Not reached: `room` has just made it.
            return BucketVerdict::Limited {
                retry_after: Duration::from_millis(1),
            };
        };
        if now >= r.expires && r.tokens > 0 {
            r.tokens = 0;
        }
        let verdict;
        let mut refill = false;
        if r.tokens > 0 {
            r.tokens -= 1;
            verdict = BucketVerdict::Allow {
                remaining: u32::try_from(r.tokens).unwrap_or(0),
            };
            refill = r.tokens <= batch / 2;
        } else if r.failed {
            refill = true;
            self.count_error(Op::Rooms);
            verdict = match self.on_error() {
                OnClusterError::Allow => BucketVerdict::Allow { remaining: 0 },
                OnClusterError::Deny => BucketVerdict::Limited {
                    retry_after: Duration::from_secs(1),
                },
            };
        } else if now < r.empty_until {
            verdict = BucketVerdict::Limited {
                retry_after: r.empty_until - now,
            };
        } else if r.tokens > -batch {
            r.tokens -= 1;
            refill = true;
            verdict = BucketVerdict::Allow { remaining: 0 };
        } else {
            refill = true;
            verdict = BucketVerdict::Limited {
                retry_after: Duration::from_millis(1),
            };
        }
        if refill && !r.refilling && now >= r.empty_until && self.breaker.may_call(now) {
            r.refilling = true;
            let want = batch - r.tokens.min(0);
            let cluster = self.clone();
            let (route, room, rate) = (route.to_owned(), room.to_owned(), *rate);
            // Ends within `cluster.timeout` (Cluster::call).
            tokio::spawn(async move {
                let got = cluster
                    .lease_tokens(&route, &room, &rate, want as u64)
                    .await;
                cluster.refilled(&route, &room, want, got);
            });
        }
        verdict
    }

    fn refilled(&self, route: &str, room: &str, want: i64, got: Option<(u64, Duration)>) {
        let now = clock::now();
        let mut t = self.rooms.table.lock().unwrap_or_else(|p| p.into_inner());
        let Some(r) = t.room(route, room, now) else {
            return;
        };
        r.refilling = false;
        match got {
            None => r.failed = true,
            Some((granted, retry)) => {
                r.failed = false;
                let granted = i64::try_from(granted).unwrap_or(i64::MAX);
                r.tokens = r.tokens.saturating_add(granted);
                r.expires = now + LEASE;
                if granted < want {
                    r.empty_until = now + retry.max(Duration::from_millis(1));
                }
            }
        }
    }

    /// Rooms with a lease on this replica.
    pub fn leased_rooms(&self) -> usize {
        self.rooms
            .table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .rooms
    }
}
