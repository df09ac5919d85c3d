//! The relay's decision per message: forward, refuse with an error response, or drop; and the
//! bookkeeping of the allocation table from the messages going by.
//!
//! [`Tracker::from_client`] and [`Tracker::from_server`] take one message (a UDP datagram, or a
//! frame cut by [`super::Framer`]) and return an [`TurnOutcome`]. Only client-to-server messages can
//! be refused or dropped; server-to-client messages are always forwarded.
//!
//! ## Messages that are not understood: fail closed
//! From the client, only what sigmesh can read reaches the TURN server: a well-formed STUN
//! message (of any method; an unknown one is answered by the server), or ChannelData of a client
//! that has an allocation. Everything else is dropped and reported as `understood: false` (the
//! proxy counts it): bytes that are not STUN or ChannelData (a leading `0xFF`, a TLS
//! ClientHello, DTLS), STUN without the magic cookie or with a broken body, ChannelData that
//! does not parse or comes from a client without an allocation. Otherwise TURN tunnelled inside
//! them would reach the server with no peer check. A CreatePermission, ChannelBind, Connect or
//! Send request whose header is readable but whose attributes are not is answered 400.
//!
//! From the server, everything is forwarded (and read where it can be).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub use super::outcome::{TurnAction, TurnKind, TurnOutcome};
use super::peer::{PeerPolicy, PeerVerdict};
use super::stun::{self, ChannelData, Class, FrameKind, Message, attr, method};
use super::table::{
    Allocation, CHANNEL_LIFETIME, FiveTuple, PERMISSION_LIFETIME, Table, rest_user,
};

/// Default LIFETIME when a success response has none (RFC 8656: 10 minutes).
pub const DEFAULT_LIFETIME: u32 = 600;
/// A request not answered within this is forgotten (STUN gives up after 39.5 s).
pub const PENDING_TIMEOUT: Duration = Duration::from_secs(40);

#[derive(Debug, Clone)]
enum Pending {
    Allocate {
        username: Option<String>,
        sigmesh_credential: bool,
    },
    Refresh,
    Permission(Vec<IpAddr>),
    ChannelBind(u16, SocketAddr),
    ConnectionBind,
    Other,
}

impl Pending {
    /// What remembering it costs, in bytes (the entry, its key, and what it owns).
    fn weight(&self) -> usize {
        let own = match self {
            Pending::Allocate { username, .. } => username.as_ref().map_or(0, String::len),
            Pending::Permission(ips) => ips.len() * std::mem::size_of::<IpAddr>(),
            _ => 0,
        };
        128 + own
    }
}

/// Longest USERNAME remembered (RFC 8489 §14.3: under 513 bytes), after lossy UTF-8.
pub const MAX_USERNAME: usize = 513;
/// Most peers one CreatePermission may name; more is refused 400.
pub const MAX_PEERS_PER_REQUEST: usize = 64;
/// Most permissions tracked per allocation (the expiry walks them every second).
pub const MAX_PERMISSIONS: usize = 1024;

/// Limits of a tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most allocations tracked.
    pub allocations: usize,
    /// Most outstanding requests remembered.
    pub pending: usize,
    /// Most bytes the outstanding requests may take; the oldest are forgotten past it.
    pub pending_bytes: usize,
    /// Most allocations one user may hold (`turn.relay.quota.allocations_per_user`): live ones
    /// and Allocate requests not yet answered. Past it an Allocate is answered 486.
    pub allocations_per_user: Option<u32>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            allocations: 100_000,
            pending: 100_000,
            pending_bytes: 16 << 20,
            allocations_per_user: None,
        }
    }
}

/// The user an allocation counts against in the quota: the user of a TURN REST username
/// (`expiry:user` → `user`, so fresh credentials of one user share it), else the username.
pub fn quota_user(username: &str) -> &str {
    rest_user(username).unwrap_or(username)
}

/// The relay's TURN state: peer policy, allocation table and outstanding requests.
#[derive(Debug, Clone)]
pub struct Tracker {
    policy: PeerPolicy,
    secret: Option<String>,
    table: Table,
    pending: HashMap<(FiveTuple, [u8; 12]), (Pending, Duration)>,
    order: VecDeque<((FiveTuple, [u8; 12]), Duration)>,
    /// The sum of the pending requests' weights.
    pending_bytes: usize,
    /// Per quota user ([`quota_user`]): live allocations plus pending Allocate requests.
    /// Bounded by the table's and the pending list's bounds; no zero entries.
    held: HashMap<String, u32>,
    limits: Limits,
}

impl Tracker {
    /// A tracker enforcing `policy`. `secret` is the TURN REST secret (`turn.secret`): with it,
    /// sigmesh recognises credentials it issued and signs its error responses.
    pub fn new(policy: PeerPolicy, secret: Option<String>, limits: Limits) -> Tracker {
        Tracker {
            policy,
            secret,
            table: Table::new(limits.allocations),
            pending: HashMap::new(),
            order: VecDeque::new(),
            pending_bytes: 0,
            held: HashMap::new(),
            limits,
        }
    }

    /// Replaces the per-user quota (a reload); counts are kept.
    pub fn set_quota(&mut self, allocations_per_user: Option<u32>) {
        self.limits.allocations_per_user = allocations_per_user;
    }

    /// Allocations (live or asked for) that `username`'s user holds.
    pub fn held(&self, username: &str) -> u32 {
        self.held.get(quota_user(username)).copied().unwrap_or(0)
    }

    fn hold(&mut self, username: Option<&str>) {
        if let Some(u) = username {
            *self.held.entry(quota_user(u).to_owned()).or_default() += 1;
        }
    }

    fn release(&mut self, username: Option<&str>) {
        let Some(u) = username.map(quota_user) else {
            return;
        };
        if let Some(n) = self.held.get_mut(u) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.held.remove(u);
            }
        }
    }

    /// Removes an allocation, releasing its quota place.
    fn remove_allocation(&mut self, ft: &FiveTuple) -> Option<Allocation> {
        let a = self.table.remove(ft)?;
        self.release(a.username.as_deref());
        Some(a)
    }

    /// The allocation table.
    pub fn table(&self) -> &Table {
        &self.table
    }

    /// The peer policy.
    pub fn policy(&self) -> &PeerPolicy {
        &self.policy
    }

    /// Replaces the peer policy (a reload): later requests are checked against it. Permissions
    /// already granted stay until they expire (at most 300 s, RFC 8656).
    pub fn set_policy(&mut self, policy: PeerPolicy) {
        self.policy = policy;
    }

    /// Removes allocations whose lifetime ran out and forgets unanswered requests.
    pub fn expire(&mut self, now: Duration) -> Vec<Allocation> {
        self.trim_pending(now);
        let gone = self.table.expire(now);
        for a in &gone {
            self.release(a.username.as_deref());
        }
        gone
    }

    /// The client's transport connection ended (TCP): its allocation ends with it
    /// (RFC 8656 §5: a TCP allocation lives as long as its connection).
    pub fn closed(&mut self, five_tuple: &FiveTuple) -> Option<Allocation> {
        let keys: Vec<_> = self
            .pending
            .keys()
            .filter(|(ft, _)| ft == five_tuple)
            .copied()
            .collect();
        for k in keys {
            self.forget(&k);
        }
        self.remove_allocation(five_tuple)
    }

    /// The long-term key for `username`/`realm` when the username is a TURN REST credential of
    /// sigmesh's secret.
    fn key_for(&self, username: &str, realm: &str) -> Option<[u8; 16]> {
        let secret = self.secret.as_deref()?;
        rest_user(username)?;
        let password = rest_password(secret, username);
        Some(stun::long_term_key(username, realm, &password))
    }

    /// The key that checks this request's MESSAGE-INTEGRITY, if sigmesh can derive one.
    fn verified_key(&self, m: &Message<'_>) -> Option<[u8; 16]> {
        let key = self.key_for(&m.username()?, &m.realm()?)?;
        m.verify_integrity(&key).then_some(key)
    }

    fn refuse(
        &self,
        m: &Message<'_>,
        code: u16,
        reason: &str,
        denied: Option<SocketAddr>,
    ) -> TurnOutcome {
        let key = self.verified_key(m);
        let action = if m.class == Class::Request {
            TurnAction::Reply(stun::error_response(
                m,
                code,
                reason,
                key.as_ref().map(|k| &k[..]),
            ))
        } else {
            TurnAction::Drop
        };
        TurnOutcome {
            action,
            denied,
            ..TurnOutcome::forward(TurnKind::of(m.method))
        }
    }

    fn remember(&mut self, ft: FiveTuple, txid: [u8; 12], p: Pending, now: Duration) {
        self.forget(&(ft, txid));
        self.pending_bytes += p.weight();
        if let Pending::Allocate { username, .. } = &p {
            self.hold(username.as_deref());
        }
        self.pending.insert((ft, txid), (p, now));
        self.order.push_back(((ft, txid), now));
        self.trim_pending(now);
    }

    /// Forgets a pending request; returns it.
    fn forget(&mut self, key: &(FiveTuple, [u8; 12])) -> Option<(Pending, Duration)> {
        let p = self.pending.remove(key)?;
        self.pending_bytes = self.pending_bytes.saturating_sub(p.0.weight());
        if let Pending::Allocate { username, .. } = &p.0 {
            self.release(username.as_deref());
        }
        Some(p)
    }

    /// An Allocate of a user at its quota, on a 5-tuple without an allocation (one that has
    /// one gets the server's 437), that is not a retransmission of a pending request.
    fn over_quota(&self, ft: FiveTuple, m: &Message<'_>, username: Option<&str>) -> bool {
        let (Some(max), Some(u)) = (self.limits.allocations_per_user, username) else {
            return false;
        };
        self.held(u) >= max
            && self.table.get(&ft).is_none()
            && !self.pending.contains_key(&(ft, m.txid))
    }

    /// Bytes the outstanding requests take now.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    fn trim_pending(&mut self, now: Duration) {
        while let Some((key, at)) = self.order.front().copied() {
            let old = now.saturating_sub(at) >= PENDING_TIMEOUT;
            let full = self.order.len() > self.limits.pending
                || self.pending_bytes > self.limits.pending_bytes;
            if !old && !full {
                break;
            }
            self.order.pop_front();
            if self.pending.get(&key).is_some_and(|(_, t)| *t == at) {
                self.forget(&key);
            }
        }
    }

    /// ChannelData either way: its payload is credited to the allocation of `ft`.
    fn channel_data(
        &mut self,
        ft: FiveTuple,
        bytes: &[u8],
        now: Duration,
        to_peers: bool,
    ) -> TurnOutcome {
        let Ok(cd) = ChannelData::parse(bytes) else {
            return if to_peers {
                TurnOutcome::unreadable(TurnKind::ChannelData)
            } else {
                TurnOutcome::unknown()
            };
        };
        if to_peers && self.table.get(&ft).is_none() {
            // No allocation, so no channel: nothing the server should read.
            return TurnOutcome::unreadable(TurnKind::ChannelData);
        }
        let n = cd.data.len() as u64;
        if let Some(a) = self.table.get_mut(&ft) {
            if to_peers {
                a.bytes_to_peers += n;
            } else {
                a.bytes_from_peers += n;
            }
            a.last_seen = now;
        }
        TurnOutcome {
            relayed: n,
            ..TurnOutcome::forward(TurnKind::ChannelData)
        }
    }

    /// A message from the client towards the TURN server.
    pub fn from_client(&mut self, ft: FiveTuple, bytes: &[u8], now: Duration) -> TurnOutcome {
        let Some(&first) = bytes.first() else {
            return TurnOutcome::unreadable(TurnKind::Unknown);
        };
        match stun::frame_kind(first) {
            FrameKind::ChannelData => self.channel_data(ft, bytes, now, true),
            FrameKind::Other => TurnOutcome::unreadable(TurnKind::Unknown),
            FrameKind::Stun => self.client_stun(ft, bytes, now),
        }
    }

    fn client_stun(&mut self, ft: FiveTuple, bytes: &[u8], now: Duration) -> TurnOutcome {
        // A datagram may carry bytes after the message: read the message the header announces.
        let m = match stun::stun_len(bytes) {
            Ok(n) if n <= bytes.len() => Message::parse(&bytes[..n]),
            Ok(_) => Err(stun::Error::Length),
            Err(e) => Err(e),
        };
        let m = match m {
            Ok(m) => m,
            Err(_) => return self.unreadable_client(bytes),
        };
        if let Some(a) = self.table.get_mut(&ft) {
            a.last_seen = now;
        }
        let peer_bearing = matches!(
            m.method,
            method::CREATE_PERMISSION | method::CHANNEL_BIND | method::CONNECT | method::SEND
        ) && matches!(m.class, Class::Request | Class::Indication);
        let mut peers = Vec::new();
        if peer_bearing {
            peers = match m.peer_addresses() {
                Ok(p) if !p.is_empty() && p.len() <= MAX_PEERS_PER_REQUEST => p,
                _ => return self.refuse(&m, 400, "Bad Request", None),
            };
            if let Some(bad) = peers.iter().find(|p| self.policy.check(**p).is_denied()) {
                return self.refuse(&m, 403, "Forbidden", Some(*bad));
            }
        }
        let kind = TurnKind::of(m.method);
        match (m.method, m.class) {
            (method::SEND, Class::Indication) => {
                let n = m.data_len() as u64;
                if let Some(a) = self.table.get_mut(&ft) {
                    a.bytes_to_peers += n;
                }
                return TurnOutcome {
                    relayed: n,
                    ..TurnOutcome::forward(kind)
                };
            }
            (_, Class::Request) => {}
            _ => return TurnOutcome::forward(kind),
        }
        let pending = match m.method {
            method::ALLOCATE => {
                let username = m.username().map(|mut u| {
                    let mut end = u.len().min(MAX_USERNAME);
                    while !u.is_char_boundary(end) {
                        end -= 1;
                    }
                    u.truncate(end);
                    u
                });
                if self.over_quota(ft, &m, username.as_deref()) {
                    return self.refuse(&m, 486, "Allocation Quota Reached", None);
                }
                Pending::Allocate {
                    username,
                    sigmesh_credential: self.verified_key(&m).is_some(),
                }
            }
            method::REFRESH => Pending::Refresh,
            method::CREATE_PERMISSION => {
                Pending::Permission(peers.iter().map(|p| p.ip()).collect())
            }
            method::CHANNEL_BIND => match (m.channel_number(), peers.first()) {
                (Some(c), Some(p)) => Pending::ChannelBind(c, *p),
                _ => Pending::Other,
            },
            method::CONNECTION_BIND => Pending::ConnectionBind,
            _ => Pending::Other,
        };
        if !matches!(pending, Pending::Other) {
            self.remember(ft, m.txid, pending, now);
        }
        TurnOutcome::forward(kind)
    }

    /// A client message that is not a readable STUN message.
    fn unreadable_client(&self, bytes: &[u8]) -> TurnOutcome {
        // Header readable (cookie present) but the body is not: fail closed for methods that
        // name a peer, since sigmesh could not check it but the TURN server might read it.
        if bytes.len() >= stun::HEADER_LEN
            && u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) == stun::MAGIC_COOKIE
        {
            let (m, class) = stun::split_type(u16::from_be_bytes([bytes[0], bytes[1]]));
            if matches!(
                m,
                method::CREATE_PERMISSION | method::CHANNEL_BIND | method::CONNECT | method::SEND
            ) {
                let mut txid = [0u8; 12];
                txid.copy_from_slice(&bytes[8..20]);
                let action = if class == Class::Request {
                    let header = stun::Builder::new(m, Class::Request, &txid).finish();
                    match Message::parse(&header) {
                        Ok(req) => {
                            TurnAction::Reply(stun::error_response(&req, 400, "Bad Request", None))
                        }
                        Err(_) => TurnAction::Drop,
                    }
                } else {
                    TurnAction::Drop
                };
                return TurnOutcome {
                    action,
                    understood: false,
                    ..TurnOutcome::forward(TurnKind::of(m))
                };
            }
        }
        TurnOutcome::unreadable(TurnKind::Unknown)
    }

    /// A message from the TURN server towards the client. Always forwarded.
    pub fn from_server(&mut self, ft: FiveTuple, bytes: &[u8], now: Duration) -> TurnOutcome {
        let Some(&first) = bytes.first() else {
            return TurnOutcome::unknown();
        };
        match stun::frame_kind(first) {
            FrameKind::ChannelData => self.channel_data(ft, bytes, now, false),
            FrameKind::Other => TurnOutcome::unknown(),
            FrameKind::Stun => {
                let m = match stun::stun_len(bytes) {
                    Ok(n) if n <= bytes.len() => Message::parse(&bytes[..n]),
                    _ => return TurnOutcome::unknown(),
                };
                match m {
                    Ok(m) => self.server_stun(ft, &m, now),
                    Err(_) => TurnOutcome::unknown(),
                }
            }
        }
    }

    fn server_stun(&mut self, ft: FiveTuple, m: &Message<'_>, now: Duration) -> TurnOutcome {
        let kind = TurnKind::of(m.method);
        if let Some(a) = self.table.get_mut(&ft) {
            a.last_seen = now;
        }
        if m.method == method::DATA && m.class == Class::Indication {
            let n = m.data_len() as u64;
            if let Some(a) = self.table.get_mut(&ft) {
                a.bytes_from_peers += n;
            }
            return TurnOutcome {
                relayed: n,
                ..TurnOutcome::forward(kind)
            };
        }
        if !matches!(m.class, Class::Success | Class::Error) {
            return TurnOutcome::forward(kind);
        }
        let Some((pending, _)) = self.forget(&(ft, m.txid)) else {
            return TurnOutcome::forward(kind);
        };
        if m.class == Class::Error {
            return TurnOutcome::forward(kind);
        }
        let mut out = TurnOutcome::forward(kind);
        match pending {
            Pending::Allocate {
                username,
                sigmesh_credential,
            } => {
                let relayed: Vec<SocketAddr> = m
                    .attributes()
                    .filter(|a| a.kind == attr::XOR_RELAYED_ADDRESS)
                    .filter_map(|a| stun::xor_address(a.value, &m.txid).ok())
                    .collect();
                let lifetime = m.lifetime().unwrap_or(DEFAULT_LIFETIME);
                let user = username.as_deref().and_then(rest_user).map(str::to_owned);
                self.remove_allocation(&ft);
                let holder = username.clone();
                let tracked = self.table.insert(Allocation {
                    five_tuple: ft,
                    username,
                    user,
                    sigmesh_credential,
                    relayed,
                    mapped: m.xor_address(attr::XOR_MAPPED_ADDRESS).and_then(Result::ok),
                    permissions: Default::default(),
                    channels: Default::default(),
                    lifetime,
                    expires_at: now + Duration::from_secs(u64::from(lifetime)),
                    bytes_to_peers: 0,
                    bytes_from_peers: 0,
                    opened_at: now,
                    last_seen: now,
                });
                if tracked {
                    self.hold(holder.as_deref());
                }
            }
            Pending::Refresh => {
                let lifetime = m.lifetime().unwrap_or(DEFAULT_LIFETIME);
                if lifetime == 0 {
                    self.remove_allocation(&ft);
                } else if let Some(a) = self.table.get_mut(&ft) {
                    a.lifetime = lifetime;
                    a.expires_at = now + Duration::from_secs(u64::from(lifetime));
                }
            }
            Pending::Permission(ips) => {
                if let Some(a) = self.table.get_mut(&ft) {
                    for ip in ips {
                        if a.permissions.len() < MAX_PERMISSIONS || a.permissions.contains_key(&ip)
                        {
                            a.permissions.insert(ip, now + PERMISSION_LIFETIME);
                        }
                    }
                }
            }
            Pending::ChannelBind(channel, peer) => {
                if let Some(a) = self.table.get_mut(&ft) {
                    a.channels.insert(channel, peer);
                    let until = now + PERMISSION_LIFETIME.max(CHANNEL_LIFETIME);
                    if a.permissions.len() < MAX_PERMISSIONS
                        || a.permissions.contains_key(&peer.ip())
                    {
                        a.permissions.insert(peer.ip(), until);
                    }
                }
            }
            Pending::ConnectionBind => out.raw_after = true,
            Pending::Other => {}
        }
        out
    }

    /// The verdict on one peer (for callers that check addresses themselves).
    pub fn check_peer(&self, peer: SocketAddr) -> PeerVerdict {
        self.policy.check(peer)
    }
}

/// The TURN REST password of `username`: base64(HMAC-SHA1(secret, username)), as coturn's
/// `use-auth-secret` computes it (the scheme lives in [`crate::credentials`]).
pub fn rest_password(secret: &str, username: &str) -> String {
    crate::credentials::password(secret, username)
}
