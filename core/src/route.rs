//! The route table: the first route whose match fits the request wins.
//!
//! A route's `match` is compiled once by [`RouteTable::new`]; [`RouteTable::find`] then walks
//! the routes in order without allocating. All given conditions must hold:
//! - **path**: `path` is an exact match, `path_prefix` a plain, case-sensitive string prefix (as
//!   Envoy's `prefix`: `/ws` takes `/ws`, `/ws/x` and `/wsx`); neither takes every path. A
//!   query (`?…`) left on the request path is ignored.
//! - **host**: exact, case-insensitive, ignoring the port and a trailing dot (`Example.COM.:443`
//!   is `example.com`; `[::1]:8080` is `::1`); or a leading wildcard `*.example.com`, which takes
//!   `a.example.com` and `a.b.example.com` but not `example.com`. `*` alone takes any host. A
//!   request without a host matches no route that names one.
//! - **headers**: each named header is present with exactly that value.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;

use crate::config::Route;

/// Header lookup, so the front ends can pass their own header maps without copying.
/// Names are given lower-case; implementations compare case-insensitively.
pub trait Headers {
    /// The first value of header `name`, if present and valid UTF-8.
    fn get(&self, name: &str) -> Option<&str>;

    /// Calls `each` with every value of header `name` (valid UTF-8 ones) until it returns
    /// `true`; returns whether one did. The default sees the first value only.
    fn any_value(&self, name: &str, each: &mut dyn FnMut(&str) -> bool) -> bool {
        self.get(name).is_some_and(each)
    }
}

// === impl Headers ===

impl<T: Headers + ?Sized> Headers for &T {
    fn get(&self, name: &str) -> Option<&str> {
        (**self).get(name)
    }

    fn any_value(&self, name: &str, each: &mut dyn FnMut(&str) -> bool) -> bool {
        (**self).any_value(name, each)
    }
}

impl Headers for [(&str, &str)] {
    fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

impl<const N: usize> Headers for [(&str, &str); N] {
    fn get(&self, name: &str) -> Option<&str> {
        Headers::get(&self[..], name)
    }
}

impl Headers for Vec<(&str, &str)> {
    fn get(&self, name: &str) -> Option<&str> {
        Headers::get(&self[..], name)
    }
}

impl Headers for [(String, String)] {
    fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn any_value(&self, name: &str, each: &mut dyn FnMut(&str) -> bool) -> bool {
        self.iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .any(|(_, v)| each(v))
    }
}

impl Headers for Vec<(String, String)> {
    fn get(&self, name: &str) -> Option<&str> {
        Headers::get(&self[..], name)
    }

    fn any_value(&self, name: &str, each: &mut dyn FnMut(&str) -> bool) -> bool {
        self[..].any_value(name, each)
    }
}

impl Headers for BTreeMap<String, String> {
    fn get(&self, name: &str) -> Option<&str> {
        match BTreeMap::get(self, name) {
            Some(v) => Some(v.as_str()),
            None => self
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str()),
        }
    }
}

impl<S: BuildHasher> Headers for HashMap<String, String, S> {
    fn get(&self, name: &str) -> Option<&str> {
        match HashMap::get(self, name) {
            Some(v) => Some(v.as_str()),
            None => self
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str()),
        }
    }
}

/// What routing looks at.
pub struct RequestHead<'a, H: Headers + ?Sized> {
    /// `Host` (or `:authority`), possibly with a port.
    pub host: Option<&'a str>,
    /// The path without the query.
    pub path: &'a str,
    /// The request headers.
    pub headers: &'a H,
}

/// A request path as routes see it (RFC 3986 §6, as Envoy's `normalize_path` and
/// `merge_slashes`): percent-encoded unreserved characters decoded (`%2E` is `.`, `%7E` is `~`;
/// `%2F` stays), empty segments merged (`//` is `/`), and `.` / `..` segments resolved (never
/// above the root), so `/ws/../admin` is `/admin`, not a path under `/ws`. Borrows when the
/// path is already normal; linear in its length.
pub fn normalize_path(path: &str) -> std::borrow::Cow<'_, str> {
    let plain = path.starts_with('/')
        && !path.contains("//")
        && !path.contains('%')
        && !path.split('/').any(|seg| seg == "." || seg == "..");
    if plain {
        return std::borrow::Cow::Borrowed(path);
    }
    // Decode %XX of unreserved characters only; keep every other escape as it is.
    let b = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            let c = h * 16 + l;
            if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                decoded.push(char::from(c));
                i += 3;
                continue;
            }
        }
        // Not an escape to decode: copy the next character whole.
        let ch_len = path[i..].chars().next().map_or(1, char::len_utf8);
        decoded.push_str(&path[i..i + ch_len]);
        i += ch_len;
    }
    let mut out: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let trailing = decoded.ends_with('/') || decoded.ends_with("/.") || decoded.ends_with("/..");
    let mut norm = String::with_capacity(decoded.len() + 1);
    for seg in &out {
        norm.push('/');
        norm.push_str(seg);
    }
    if norm.is_empty() || (trailing && !out.is_empty()) {
        norm.push('/');
    }
    std::borrow::Cow::Owned(norm)
}

/// The value of one hex digit.
pub(crate) fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// The host part of a `Host` header or `:authority`: without the port, the IPv6 brackets and a
/// trailing dot; case is kept. `Example.com.:8080` → `Example.com`, `[::1]:8080` → `::1`.
/// No allocation.
pub fn host_without_port(authority: &str) -> &str {
    let a = authority.trim();
    let h = if let Some(rest) = a.strip_prefix('[') {
        rest.find(']').map_or(rest, |i| &rest[..i])
    } else {
        match a.rsplit_once(':') {
            // One colon followed by digits: a port. More colons: a bare IPv6 address.
            Some((host, port))
                if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) =>
            {
                host
            }
            _ => a,
        }
    };
    h.strip_suffix('.').unwrap_or(h)
}

// === impl RouteTable ===

/// Compiled matchers for a route list, in order.
#[derive(Debug, Clone)]
pub struct RouteTable {
    matchers: Vec<Matcher>,
}

#[derive(Debug, Clone)]
struct Matcher {
    path: Option<String>,
    prefix: Option<String>,
    host: HostMatch,
    headers: Box<[(String, String)]>,
}

#[derive(Debug, Clone)]
enum HostMatch {
    Any,
    /// Lower-case, without port and trailing dot.
    Exact(String),
    /// `.example.com` for `*.example.com`, lower-case.
    Suffix(String),
}

impl HostMatch {
    fn compile(host: Option<&str>) -> HostMatch {
        let Some(host) = host.map(str::trim) else {
            return HostMatch::Any;
        };
        if host == "*" {
            return HostMatch::Any;
        }
        if let Some(rest) = host.strip_prefix("*.") {
            let rest = rest.strip_suffix('.').unwrap_or(rest);
            return HostMatch::Suffix(format!(".{}", rest.to_ascii_lowercase()));
        }
        HostMatch::Exact(host_without_port(host).to_ascii_lowercase())
    }

    #[inline]
    fn matches(&self, host: Option<&str>) -> bool {
        match self {
            HostMatch::Any => true,
            HostMatch::Exact(e) => {
                host.is_some_and(|h| host_without_port(h).eq_ignore_ascii_case(e))
            }
            HostMatch::Suffix(s) => host.is_some_and(|h| {
                let h = host_without_port(h).as_bytes();
                h.len() > s.len() && h[h.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes())
            }),
        }
    }
}

impl Matcher {
    #[inline]
    fn matches<H: Headers + ?Sized>(&self, path: &str, req: &RequestHead<'_, H>) -> bool {
        if let Some(p) = &self.path
            && path != p
        {
            return false;
        }
        if let Some(p) = &self.prefix
            && !path.starts_with(p.as_str())
        {
            return false;
        }
        self.host.matches(req.host)
            && self
                .headers
                .iter()
                .all(|(n, v)| req.headers.get(n) == Some(v.as_str()))
    }
}

impl RouteTable {
    /// Compiles the matchers of `routes` (already validated).
    pub fn new(routes: &[Route]) -> Self {
        let matchers = routes
            .iter()
            .map(|r| {
                let m = &r.matcher;
                Matcher {
                    path: m.path.clone(),
                    prefix: m.path_prefix.clone().filter(|p| !p.is_empty()),
                    host: HostMatch::compile(m.host.as_deref()),
                    headers: m
                        .headers
                        .iter()
                        .map(|(n, v)| (n.to_ascii_lowercase(), v.clone()))
                        .collect(),
                }
            })
            .collect();
        RouteTable { matchers }
    }

    /// The index of the first route that matches, or `None` (the front end answers 404).
    pub fn find<H: Headers + ?Sized>(&self, req: &RequestHead<'_, H>) -> Option<usize> {
        let path = req.path.split_once('?').map_or(req.path, |(p, _)| p);
        self.matchers.iter().position(|m| m.matches(path, req))
    }

    /// Whether route `index` matches (false for an index out of range).
    pub fn matches<H: Headers + ?Sized>(&self, index: usize, req: &RequestHead<'_, H>) -> bool {
        let path = req.path.split_once('?').map_or(req.path, |(p, _)| p);
        self.matchers
            .get(index)
            .is_some_and(|m| m.matches(path, req))
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.matchers.len()
    }

    /// No routes.
    pub fn is_empty(&self) -> bool {
        self.matchers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Limits, Match, Split, Upstream};

    fn route(name: &str, m: Match) -> Route {
        Route {
            name: name.into(),
            matcher: m,
            websocket: None,
            limits: Limits::default(),
            split: Split::default(),
            affinity: Default::default(),
            rollout: None,
            upstreams: vec![Upstream {
                name: "u".into(),
                url: None,
                weight: 1,
                tls: None,
                pool: Default::default(),
            }],
        }
    }

    fn find(
        t: &RouteTable,
        host: Option<&str>,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Option<usize> {
        t.find(&RequestHead {
            host,
            path,
            headers,
        })
    }

    #[test]
    fn paths_are_normalized_before_matching() {
        for (raw, norm) in [
            ("/ws", "/ws"),
            ("/ws/../admin", "/admin"),
            ("/ws/%2e%2e/admin", "/admin"),
            ("/ws/%2E./admin", "/admin"),
            ("//ws//x", "/ws/x"),
            ("/a/./b/", "/a/b/"),
            ("/../../etc", "/etc"),
            ("/..", "/"),
            ("", "/"),
            ("/a%2Fb", "/a%2Fb"),
            ("/%7euser", "/~user"),
            ("/é/%zz/%4", "/é/%zz/%4"),
        ] {
            assert_eq!(normalize_path(raw), norm, "{raw}");
        }
    }

    #[test]
    fn path_exact_prefix_and_any() {
        let t = RouteTable::new(&[
            route(
                "exact",
                Match {
                    path: Some("/exact".into()),
                    ..Match::default()
                },
            ),
            route(
                "ws",
                Match {
                    path_prefix: Some("/ws".into()),
                    ..Match::default()
                },
            ),
            route("any", Match::default()),
        ]);
        assert_eq!(find(&t, None, "/exact", &[]), Some(0));
        assert_eq!(find(&t, None, "/exact?x=1", &[]), Some(0));
        assert_eq!(find(&t, None, "/exact/", &[]), Some(2));
        assert_eq!(find(&t, None, "/ws", &[]), Some(1));
        assert_eq!(find(&t, None, "/ws/room", &[]), Some(1));
        assert_eq!(find(&t, None, "/wsx", &[]), Some(1));
        assert_eq!(find(&t, None, "/WS", &[]), Some(2));
        assert_eq!(find(&t, None, "", &[]), Some(2));
    }

    #[test]
    fn no_match_is_none() {
        let t = RouteTable::new(&[route(
            "ws",
            Match {
                path_prefix: Some("/ws".into()),
                ..Match::default()
            },
        )]);
        assert_eq!(find(&t, None, "/other", &[]), None);
        assert_eq!(
            RouteTable::new(&[]).find(&RequestHead {
                host: None,
                path: "/",
                headers: &[("a", "b")]
            }),
            None
        );
    }

    #[test]
    fn host_exact() {
        let t = RouteTable::new(&[route(
            "h",
            Match {
                host: Some("Signal.Example.com".into()),
                ..Match::default()
            },
        )]);
        for h in [
            "signal.example.com",
            "SIGNAL.example.COM",
            "signal.example.com:8443",
            "signal.example.com.",
            "signal.example.com.:80",
        ] {
            assert_eq!(find(&t, Some(h), "/", &[]), Some(0), "{h}");
        }
        for h in [
            "example.com",
            "a.signal.example.com",
            "signal.example.co",
            "signal.example.com.evil",
        ] {
            assert_eq!(find(&t, Some(h), "/", &[]), None, "{h}");
        }
        assert_eq!(find(&t, None, "/", &[]), None);
    }

    #[test]
    fn host_ipv6() {
        let t = RouteTable::new(&[route(
            "h",
            Match {
                host: Some("[::1]".into()),
                ..Match::default()
            },
        )]);
        assert_eq!(find(&t, Some("[::1]:8080"), "/", &[]), Some(0));
        assert_eq!(find(&t, Some("[::1]"), "/", &[]), Some(0));
        assert_eq!(find(&t, Some("::1"), "/", &[]), Some(0));
        assert_eq!(find(&t, Some("[::2]:8080"), "/", &[]), None);
        assert_eq!(host_without_port("[fe80::1%25eth0]:443"), "fe80::1%25eth0");
        assert_eq!(host_without_port("127.0.0.1:80"), "127.0.0.1");
        assert_eq!(host_without_port("host:notaport"), "host:notaport");
    }

    #[test]
    fn host_wildcard() {
        let t = RouteTable::new(&[route(
            "w",
            Match {
                host: Some("*.Example.com".into()),
                ..Match::default()
            },
        )]);
        for h in [
            "a.example.com",
            "a.b.example.com",
            "A.EXAMPLE.COM:443",
            "a.example.com.",
        ] {
            assert_eq!(find(&t, Some(h), "/", &[]), Some(0), "{h}");
        }
        for h in [
            "example.com",
            ".example.com",
            "aexample.com",
            "a.example.com.evil",
            "a.example.org",
        ] {
            assert_eq!(find(&t, Some(h), "/", &[]), None, "{h}");
        }
        let any = RouteTable::new(&[route(
            "w",
            Match {
                host: Some("*".into()),
                ..Match::default()
            },
        )]);
        assert_eq!(find(&any, Some("whatever"), "/", &[]), Some(0));
    }

    #[test]
    fn headers_exact_and_first_match_wins() {
        let mut headers = BTreeMap::new();
        headers.insert("x-tenant".to_owned(), "blue".to_owned());
        let t = RouteTable::new(&[
            route(
                "blue",
                Match {
                    path_prefix: Some("/ws".into()),
                    headers,
                    ..Match::default()
                },
            ),
            route(
                "ws",
                Match {
                    path_prefix: Some("/ws".into()),
                    ..Match::default()
                },
            ),
            route(
                "ws2",
                Match {
                    path_prefix: Some("/ws".into()),
                    ..Match::default()
                },
            ),
        ]);
        assert_eq!(find(&t, None, "/ws", &[("X-Tenant", "blue")]), Some(0));
        assert_eq!(find(&t, None, "/ws", &[("x-tenant", "Blue")]), Some(1));
        assert_eq!(find(&t, None, "/ws", &[("x-other", "blue")]), Some(1));
        assert_eq!(find(&t, None, "/ws", &[]), Some(1));
        assert!(t.matches(
            2,
            &RequestHead {
                host: None,
                path: "/ws",
                headers: &[("a", "b")]
            }
        ));
        assert!(!t.matches(
            3,
            &RequestHead {
                host: None,
                path: "/ws",
                headers: &[("a", "b")]
            }
        ));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn headers_impls_are_case_insensitive() {
        let v: Vec<(String, String)> = vec![("Content-Type".into(), "a".into())];
        assert_eq!(Headers::get(&v, "content-type"), Some("a"));
        let v: Vec<(&str, &str)> = vec![("Content-Type", "a"), ("content-type", "b")];
        assert_eq!(Headers::get(&v, "content-type"), Some("a"));
        let mut m = BTreeMap::new();
        m.insert("X-A".to_owned(), "1".to_owned());
        m.insert("x-b".to_owned(), "2".to_owned());
        assert_eq!(Headers::get(&m, "x-a"), Some("1"));
        assert_eq!(Headers::get(&m, "x-b"), Some("2"));
        assert_eq!(Headers::get(&m, "x-c"), None);
        let mut h = HashMap::new();
        h.insert("X-A".to_owned(), "1".to_owned());
        assert_eq!(Headers::get(&h, "x-a"), Some("1"));
        let a = [("X-A", "1")];
        assert_eq!(Headers::get(&a, "x-a"), Some("1"));
        assert_eq!(Headers::get(&&a[..], "x-a"), Some("1"));
    }
}
