//! The allocation table: what the relay has seen of each TURN allocation.
//!
//! Keyed by the client's 5-tuple (transport, client address, relay listen address). Entries are
//! created by an Allocate success response, kept alive by Refresh success responses (lifetime
//! 0 removes), and removed by [`Table::expire`] once their lifetime has run out. The table is
//! bounded: past [`Table::capacity`] new allocations are not tracked (still relayed), and counted.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Transport between the TURN client and the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
}

impl Transport {
    /// `udp` or `tcp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// A client's 5-tuple as the relay sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FiveTuple {
    /// Transport.
    pub transport: Transport,
    /// The client's address.
    pub client: SocketAddr,
    /// The relay's listen address.
    pub server: SocketAddr,
}

/// A permission's lifetime (RFC 8656 §9).
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// A channel binding's lifetime (RFC 8656 §12).
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);

/// One allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The client's 5-tuple.
    pub five_tuple: FiveTuple,
    /// USERNAME of the Allocate request.
    pub username: Option<String>,
    /// The user of a TURN REST username (`expiry:user` → `user`).
    pub user: Option<String>,
    /// Whether the Allocate request's MESSAGE-INTEGRITY checked with a key derived from
    /// sigmesh's own TURN secret (the credential came from sigmesh).
    pub sigmesh_credential: bool,
    /// XOR-RELAYED-ADDRESS (one per family).
    pub relayed: Vec<SocketAddr>,
    /// XOR-MAPPED-ADDRESS: the client as the TURN server saw it (the relay's upstream socket).
    pub mapped: Option<SocketAddr>,
    /// Peers with a permission, and when it runs out.
    pub permissions: BTreeMap<IpAddr, Duration>,
    /// Channel bindings: number → peer.
    pub channels: BTreeMap<u16, SocketAddr>,
    /// LIFETIME last granted, in seconds.
    pub lifetime: u32,
    /// When the allocation ends unless refreshed.
    pub expires_at: Duration,
    /// Relayed application bytes, client to peers (Send indications, ChannelData).
    pub bytes_to_peers: u64,
    /// Relayed application bytes, peers to client (Data indications, ChannelData).
    pub bytes_from_peers: u64,
    /// When the Allocate succeeded.
    pub opened_at: Duration,
    /// When a message of this allocation last went by.
    pub last_seen: Duration,
}

impl Allocation {
    /// Peers that currently have a permission.
    pub fn peers(&self, now: Duration) -> Vec<IpAddr> {
        self.permissions
            .iter()
            .filter(|(_, until)| **until > now)
            .map(|(ip, _)| *ip)
            .collect()
    }
}

/// The user part of a TURN REST API username (`1700000000:alice` → `alice`): the text after the
/// first `:` when the part before it is a decimal timestamp.
pub fn rest_user(username: &str) -> Option<&str> {
    let (ts, user) = username.split_once(':')?;
    (!ts.is_empty() && ts.bytes().all(|b| b.is_ascii_digit()) && !user.is_empty()).then_some(user)
}

/// The allocation table.
#[derive(Debug, Clone)]
pub struct Table {
    live: HashMap<FiveTuple, Allocation>,
    capacity: usize,
    untracked: u64,
}

impl Table {
    /// A table of at most `capacity` allocations.
    pub fn new(capacity: usize) -> Table {
        Table {
            live: HashMap::new(),
            capacity,
            untracked: 0,
        }
    }

    /// Most allocations tracked at once.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Allocations that were not tracked because the table was full.
    pub fn untracked(&self) -> u64 {
        self.untracked
    }

    /// Live allocations.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether no allocation is live.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// The allocation of a 5-tuple.
    pub fn get(&self, key: &FiveTuple) -> Option<&Allocation> {
        self.live.get(key)
    }

    /// The allocation of a 5-tuple, to update.
    pub fn get_mut(&mut self, key: &FiveTuple) -> Option<&mut Allocation> {
        self.live.get_mut(key)
    }

    /// Every allocation, ordered by opening time.
    pub fn all(&self) -> Vec<&Allocation> {
        let mut v: Vec<_> = self.live.values().collect();
        v.sort_by_key(|a| (a.opened_at, a.five_tuple));
        v
    }

    /// Records an allocation (replacing one of the same 5-tuple). `false` when the table is
    /// full and the allocation is not tracked.
    pub fn insert(&mut self, a: Allocation) -> bool {
        if self.live.len() >= self.capacity && !self.live.contains_key(&a.five_tuple) {
            self.untracked += 1;
            return false;
        }
        self.live.insert(a.five_tuple, a);
        true
    }

    /// Removes an allocation.
    pub fn remove(&mut self, key: &FiveTuple) -> Option<Allocation> {
        self.live.remove(key)
    }

    /// Removes and returns the allocations whose lifetime has run out at `now`, and drops
    /// expired permissions and channels of the others.
    pub fn expire(&mut self, now: Duration) -> Vec<Allocation> {
        let gone: Vec<FiveTuple> = self
            .live
            .iter()
            .filter(|(_, a)| a.expires_at <= now)
            .map(|(k, _)| *k)
            .collect();
        for a in self.live.values_mut() {
            a.permissions.retain(|_, until| *until > now);
        }
        gone.iter().filter_map(|k| self.live.remove(k)).collect()
    }

    /// When the next allocation expires, if any.
    pub fn next_expiry(&self) -> Option<Duration> {
        self.live.values().map(|a| a.expires_at).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rest_usernames() {
        assert_eq!(rest_user("1700000000:alice"), Some("alice"));
        assert_eq!(rest_user("1700000000:a:b"), Some("a:b"));
        assert_eq!(rest_user("alice"), None);
        assert_eq!(rest_user("x1:alice"), None);
        assert_eq!(rest_user("17:"), None);
        assert_eq!(rest_user(":a"), None);
    }
}
