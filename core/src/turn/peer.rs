//! Which peer addresses a TURN client may reach through the relay (`turn.relay.deny_peers`).
//!
//! Every address is normalised before the check, since coturn's own checks were bypassed
//! exactly there (CVE-2020-26262: `0.0.0.0` and `::` reach the TURN host's loopback services):
//! - IPv4-mapped (`::ffff:10.0.0.1`) and IPv4-compatible (`::10.0.0.1`) IPv6 addresses are checked
//!   as the IPv4 address they carry, and so are NAT64 (`64:ff9b::/96`) and 6to4 (`2002::/16`)
//!   addresses;
//! - the unspecified addresses `0.0.0.0` and `::` are always denied (operating systems send
//!   them to the local host);
//! - a CIDR denies every address it contains, whichever way the address is written.
//!
//! Without `deny_peers` the default denies every range that is not globally routable
//! ([`default_deny`]). A `deny_peers` list is **added** to [`ALWAYS_DENY`] (unspecified,
//! loopback, link-local, the cloud metadata addresses), never instead of it: `[10.0.0.0/8]`
//! alone used to leave 127/8, 169.254.169.254, `::1` and `fe80::/10` open. Only an explicit
//! `allow_peers` entry (coturn's `allowed-peer-ip`) reaches an address these deny.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::config::Cidr;

/// The verdict on one peer address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerVerdict {
    /// The peer may be reached.
    Allow,
    /// The peer is denied: `by` is the range that matched (`None`: the unspecified address).
    Deny {
        /// The address as checked (after normalisation).
        checked: IpAddr,
        /// The denying range.
        by: Option<Cidr>,
    },
}

impl PeerVerdict {
    /// Whether the verdict is [`PeerVerdict::Deny`].
    pub fn is_denied(&self) -> bool {
        matches!(self, PeerVerdict::Deny { .. })
    }
}

/// The peer-address policy of a relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPolicy {
    deny: Vec<Cidr>,
    /// Explicit exceptions (`allow_peers`), checked first.
    allow: Vec<Cidr>,
}

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Cidr {
    Cidr {
        addr: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
        prefix,
    }
}

#[allow(clippy::too_many_arguments)]
const fn v6(s: [u16; 8], prefix: u8) -> Cidr {
    Cidr {
        addr: IpAddr::V6(Ipv6Addr::new(
            s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7],
        )),
        prefix,
    }
}

/// Every non-global range (IANA special-purpose registries): the default `deny_peers`.
pub const DEFAULT_DENY: &[Cidr] = &[
    v4(0, 0, 0, 0, 8),                         // "this network"
    v4(10, 0, 0, 0, 8),                        // RFC 1918
    v4(100, 64, 0, 0, 10),                     // CGNAT (RFC 6598)
    v4(127, 0, 0, 0, 8),                       // loopback
    v4(169, 254, 0, 0, 16),                    // link-local, incl. cloud metadata 169.254.169.254
    v4(172, 16, 0, 0, 12),                     // RFC 1918
    v4(192, 0, 0, 0, 24),                      // IETF protocol assignments
    v4(192, 0, 2, 0, 24),                      // TEST-NET-1
    v4(192, 31, 196, 0, 24),                   // AS112
    v4(192, 52, 193, 0, 24),                   // AMT
    v4(192, 88, 99, 0, 24),                    // 6to4 relay anycast (deprecated)
    v4(192, 168, 0, 0, 16),                    // RFC 1918
    v4(192, 175, 48, 0, 24),                   // AS112 direct delegation
    v4(198, 18, 0, 0, 15),                     // benchmarking
    v4(198, 51, 100, 0, 24),                   // TEST-NET-2
    v4(203, 0, 113, 0, 24),                    // TEST-NET-3
    v4(224, 0, 0, 0, 4),                       // multicast
    v4(240, 0, 0, 0, 4),                       // reserved, incl. broadcast 255.255.255.255
    v6([0, 0, 0, 0, 0, 0, 0, 0], 128),         // unspecified
    v6([0, 0, 0, 0, 0, 0, 0, 1], 128),         // loopback
    v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),  // local-use NAT64
    v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64),      // discard-only
    v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23),     // IETF protocol assignments (incl. Teredo)
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), // documentation
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),     // documentation (RFC 9637)
    v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16),     // segment routing SIDs
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),      // unique local
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),     // link-local
    v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),     // site-local (deprecated)
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),      // multicast
];

/// Denied whatever `deny_peers` says: "this network", loopback, link-local (cloud metadata
/// 169.254.169.254 among it), the other clouds' metadata addresses.
pub const ALWAYS_DENY: &[Cidr] = &[
    v4(0, 0, 0, 0, 8),                               // "this network", incl. 0.0.0.0
    v4(127, 0, 0, 0, 8),                             // loopback
    v4(169, 254, 0, 0, 16),                          // link-local, metadata
    v4(100, 100, 100, 200, 32),                      // Alibaba Cloud metadata
    v6([0, 0, 0, 0, 0, 0, 0, 0], 128),               // unspecified
    v6([0, 0, 0, 0, 0, 0, 0, 1], 128),               // loopback
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),           // link-local
    v6([0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254], 128), // AWS metadata (IPv6)
];

/// [`DEFAULT_DENY`] as a vector.
pub fn default_deny() -> Vec<Cidr> {
    DEFAULT_DENY.to_vec()
}

/// Whether `cidr` contains `ip` (never across families).
pub fn contains(cidr: &Cidr, ip: IpAddr) -> bool {
    cidr.contains(ip)
}

/// The IPv4 address an IPv6 address stands for, if any: IPv4-mapped `::ffff:a.b.c.d`,
/// IPv4-compatible `::a.b.c.d` (not `::` or `::1`), NAT64 `64:ff9b::a.b.c.d` and 6to4
/// `2002:AABB:CCDD::/48`.
pub fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let o = ip.octets();
    let tail = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if s[..5] == [0; 5] && (s[5] == 0xffff || (s[5] == 0 && u32::from(tail) > 1)) {
        return Some(tail);
    }
    // IPv4-translated (SIIT, RFC 2765): `::ffff:0:a.b.c.d`.
    if s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0 {
        return Some(tail);
    }
    // Teredo (RFC 4380): `2001:0:…`, the client's address in the last 32 bits, inverted.
    if s[0] == 0x2001 && s[1] == 0 {
        return Some(Ipv4Addr::from(!u32::from(tail)));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(tail);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    None
}

/// The addresses a peer address is checked as: itself, and the IPv4 address it embeds.
pub fn normalise(ip: IpAddr) -> (IpAddr, Option<IpAddr>) {
    match ip {
        IpAddr::V4(_) => (ip, None),
        IpAddr::V6(v6) => (ip, embedded_v4(v6).map(IpAddr::V4)),
    }
}

impl PeerPolicy {
    /// A policy denying [`ALWAYS_DENY`] and `deny`, or [`DEFAULT_DENY`] when `None`.
    pub fn new(deny: Option<&[Cidr]>) -> PeerPolicy {
        PeerPolicy::with_exceptions(deny, &[])
    }

    /// [`PeerPolicy::new`], with `allow` (`allow_peers`) reachable whatever the deny lists say
    /// (but the unspecified addresses, never).
    pub fn with_exceptions(deny: Option<&[Cidr]>, allow: &[Cidr]) -> PeerPolicy {
        let deny = match deny {
            None => default_deny(),
            Some(user) => ALWAYS_DENY.iter().chain(user).copied().collect(),
        };
        PeerPolicy {
            deny,
            allow: allow.to_vec(),
        }
    }

    /// The denied ranges.
    pub fn denied(&self) -> &[Cidr] {
        &self.deny
    }

    /// The verdict on a peer's address (the port does not matter).
    pub fn check(&self, peer: SocketAddr) -> PeerVerdict {
        self.check_ip(peer.ip())
    }

    /// The verdict on a peer IP.
    pub fn check_ip(&self, ip: IpAddr) -> PeerVerdict {
        let (orig, embedded) = normalise(ip);
        for candidate in std::iter::once(orig).chain(embedded) {
            if candidate.is_unspecified() {
                return PeerVerdict::Deny {
                    checked: candidate,
                    by: None,
                };
            }
            if self.allow.iter().any(|c| contains(c, candidate)) {
                continue;
            }
            if let Some(c) = self.deny.iter().find(|c| contains(c, candidate)) {
                return PeerVerdict::Deny {
                    checked: candidate,
                    by: Some(*c),
                };
            }
        }
        PeerVerdict::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|_| unreachable!("{s}"))
    }

    #[test]
    fn default_denies_every_non_global_range() {
        let p = PeerPolicy::new(None);
        for a in [
            "10.0.0.1",
            "::ffff:10.0.0.1",
            "::10.0.0.1",
            "0.0.0.0",
            "::",
            "0.1.2.3",
            "127.0.0.1",
            "::1",
            "::ffff:127.0.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "255.255.255.255",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "64:ff9b::10.0.0.1",
            "2002:0a00:0001::1",
            "::ffff:0.0.0.0",
            "::ffff:169.254.169.254",
        ] {
            assert!(p.check_ip(ip(a)).is_denied(), "{a} must be denied");
        }
        for a in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "100.128.0.1",
            "172.32.0.1",
        ] {
            assert_eq!(p.check_ip(ip(a)), PeerVerdict::Allow, "{a} must be allowed");
        }
    }

    #[test]
    fn configured_list_normalises_too() {
        let deny = [Cidr {
            addr: ip("10.0.0.0"),
            prefix: 8,
        }];
        let p = PeerPolicy::new(Some(&deny));
        assert!(p.check_ip(ip("::ffff:10.0.0.1")).is_denied());
        assert!(p.check_ip(ip("::10.255.0.1")).is_denied());
        assert!(p.check_ip(ip("0.0.0.0")).is_denied());
        assert!(p.check_ip(ip("::")).is_denied());
        assert_eq!(p.check_ip(ip("11.0.0.1")), PeerVerdict::Allow);
        // A user's list adds to the always-denied ranges, never replaces them.
        for a in [
            "127.0.0.1",
            "169.254.169.254",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "100.100.100.200",
            "::ffff:0:127.0.0.1",
            // Teredo whose (inverted) client address is 10.0.0.1.
            "2001:0:4136:e378:8000:63bf:f5ff:fffe",
        ] {
            assert!(p.check_ip(ip(a)).is_denied(), "{a}");
        }
        // Explicit exceptions reach them; the unspecified addresses never.
        let local = [Cidr {
            addr: ip("127.0.0.1"),
            prefix: 32,
        }];
        let p = PeerPolicy::with_exceptions(Some(&deny), &local);
        assert_eq!(p.check_ip(ip("127.0.0.1")), PeerVerdict::Allow);
        assert!(p.check_ip(ip("127.0.0.2")).is_denied());
        assert!(
            PeerPolicy::with_exceptions(
                Some(&deny),
                &[Cidr {
                    addr: ip("0.0.0.0"),
                    prefix: 0
                }]
            )
            .check_ip(ip("0.0.0.0"))
            .is_denied()
        );
        let empty = PeerPolicy::new(Some(&[]));
        assert!(
            empty.check_ip(ip("0.0.0.0")).is_denied(),
            "unspecified is always denied"
        );
    }
}
