//! Semantic validation: the document tree of [`super::tree`] to the validated [`Config`].
//!
//! The walk never stops at the first problem: each builder records its errors (with key path
//! and line) and carries on with a placeholder, so that one run reports everything. The caller
//! returns the [`Config`] only when no error was recorded.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use super::tree::{Key, Kind, Node};
use super::{
    Cidr, Config, ConfigError, ConnectionLimit, LimitKey, Limits, Match, MessageLimit, OnExceed,
    OtlpProtocol, Rate, Route, Shutdown, Signaling, Split, Sticky, Tracing, Turn, TurnRelay,
    Upstream, WebSocket, duration_str,
};

/// Which front end the config is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The standalone proxy: everything, and upstreams need a `url`.
    Proxy,
    /// The Envoy/Istio Wasm filter: `routes` and `turn` (without `relay`); upstreams have no `url`.
    Filter,
}

/// The error collector.
pub(crate) struct Cx {
    pub mode: Mode,
    pub errors: Vec<ConfigError>,
}

impl Cx {
    fn err(&mut self, path: &str, line: usize, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.to_owned(),
            line: Some(line),
            message: message.into(),
        });
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

// === key names ===

const TOP_PROXY: &[&str] = &["listen", "admin", "shutdown", "routes", "turn", "tracing"];
const TOP_FILTER: &[&str] = &["routes", "turn"];
const SHUTDOWN: &[&str] = &["drain_timeout"];
const ROUTE: &[&str] = &["name", "match", "websocket", "limits", "split", "upstreams"];
const MATCH: &[&str] = &["path", "path_prefix", "host", "headers"];
const WEBSOCKET: &[&str] = &[
    "max_message_bytes",
    "idle_timeout",
    "allowed_origins",
    "signaling",
];
const SIGNALING: &[&str] = &["type", "room", "peer"];
const LIMITS: &[&str] = &["connections", "messages", "rooms"];
const CONNECTIONS: &[&str] = &["rate", "per", "burst", "key"];
const MESSAGES: &[&str] = &["rate", "per", "burst", "on_exceed"];
const ROOMS: &[&str] = &["rate", "per", "burst"];
const SPLIT: &[&str] = &["sticky", "override_header"];
const UPSTREAM_PROXY: &[&str] = &["name", "url", "weight"];
const UPSTREAM_FILTER: &[&str] = &["name", "weight"];
const TURN_PROXY: &[&str] = &["secret", "ttl", "uris", "credentials_path", "relay"];
const TURN_FILTER: &[&str] = &["secret", "ttl", "uris", "credentials_path"];
const RELAY: &[&str] = &["listen", "upstream", "deny_peers"];
const TRACING: &[&str] = &["otlp_endpoint", "protocol", "service_name", "sample_ratio"];

// === the mapping helper ===

/// The entries of one mapping, after unknown keys have been reported.
struct Fields<'a> {
    path: String,
    line: usize,
    entries: &'a [(Key, Node)],
}

impl<'a> Fields<'a> {
    fn get(&self, key: &str) -> Option<&'a Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }

    /// The value of `key`, unless absent or null.
    fn value(&self, key: &str) -> Option<&'a Node> {
        self.get(key).filter(|n| n.kind != Kind::Null)
    }

    fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    fn key_line(&self, key: &str) -> usize {
        self.entries
            .iter()
            .find(|(k, _)| k.name == key)
            .map_or(self.line, |(k, _)| k.line)
    }
}

/// Reads a mapping (null reads as an empty one), reporting every key not in `allowed`.
/// `extra` explains keys that exist elsewhere but not here: `(key, why)`.
fn fields<'a>(
    cx: &mut Cx,
    node: &'a Node,
    path: &str,
    allowed: &[&str],
    extra: &[(&str, &str)],
) -> Option<Fields<'a>> {
    let entries: &'a [(Key, Node)] = match &node.kind {
        Kind::Map(entries) => entries,
        Kind::Null => &[],
        _ => {
            let what = if path.is_empty() {
                "the config".to_owned()
            } else {
                format!("`{}`", last_key(path))
            };
            cx.err(
                path,
                node.line,
                format!(
                    "{what} must be a mapping (`key: value` lines), found {}",
                    node.describe()
                ),
            );
            return None;
        }
    };
    for (k, _) in entries {
        if allowed.contains(&k.name.as_str()) {
            continue;
        }
        let kpath = join(path, &k.name);
        if let Some((_, why)) = extra.iter().find(|(name, _)| *name == k.name) {
            cx.err(&kpath, k.line, *why);
            continue;
        }
        let mut msg = if k.name.is_empty() {
            "empty key".to_owned()
        } else {
            format!("unknown key `{}`", k.name)
        };
        if let Some(s) = suggest(&k.name, allowed) {
            msg.push_str(&format!("; did you mean `{s}`?"));
        }
        msg.push_str(&format!(" (allowed here: {})", allowed.join(", ")));
        cx.err(&kpath, k.line, msg);
    }
    Some(Fields {
        path: path.to_owned(),
        line: node.line,
        entries,
    })
}

fn last_key(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

/// The closest allowed key, if it is close enough to be a typo.
fn suggest<'k>(key: &str, allowed: &[&'k str]) -> Option<&'k str> {
    let key = key.to_ascii_lowercase().replace('-', "_");
    allowed
        .iter()
        .map(|a| (levenshtein(&key, a), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 4) && *d < a.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

// === scalars ===

/// A string value; numbers and booleans read as their text. `None` (with an error) for lists
/// and mappings; `None` (no error) for null.
fn string(cx: &mut Cx, node: &Node, path: &str) -> Option<String> {
    match &node.kind {
        Kind::Scalar { value, .. } => Some(value.clone()),
        Kind::Null => None,
        _ => {
            cx.err(
                path,
                node.line,
                format!("expected a string, found {}", node.describe()),
            );
            None
        }
    }
}

/// A required, non-empty string.
fn required_string(cx: &mut Cx, f: &Fields<'_>, key: &str, what: &str) -> Option<String> {
    let path = f.path(key);
    match f.value(key) {
        None => {
            cx.err(&path, f.key_line(key), format!("missing {what}"));
            None
        }
        Some(n) => match string(cx, n, &path) {
            Some(s) if s.trim().is_empty() => {
                cx.err(&path, n.line, format!("{what} must not be empty"));
                None
            }
            s => s,
        },
    }
}

fn parse_int(s: &str) -> Option<i64> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let v = if let Some(h) = digits.strip_prefix("0x") {
        i64::from_str_radix(h, 16).ok()?
    } else if let Some(o) = digits.strip_prefix("0o") {
        i64::from_str_radix(o, 8).ok()?
    } else {
        let d = digits.replace('_', "");
        if d.is_empty() || !d.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        d.parse::<i64>().ok()?
    };
    if neg { v.checked_neg() } else { Some(v) }
}

/// A whole number (plain scalar).
fn int(cx: &mut Cx, node: &Node, path: &str) -> Option<i64> {
    if let Kind::Null = node.kind {
        return None;
    }
    if let Kind::Scalar { value, plain: true } = &node.kind {
        if let Some(v) = parse_int(value.trim()) {
            return Some(v);
        }
        if value.bytes().all(|b| b.is_ascii_digit()) && !value.is_empty() {
            cx.err(path, node.line, format!("`{value}` is too large"));
            return None;
        }
    }
    let hint = match &node.kind {
        Kind::Scalar {
            value,
            plain: false,
        } if parse_int(value).is_some() => format!("; write it without quotes: {value}"),
        _ => String::new(),
    };
    cx.err(
        path,
        node.line,
        format!("expected a whole number, found {}{hint}", node.describe()),
    );
    None
}

/// A whole number in `min..=max`.
fn int_in(cx: &mut Cx, node: &Node, path: &str, min: i64, max: i64, what: &str) -> Option<i64> {
    let v = int(cx, node, path)?;
    if v < min {
        cx.err(
            path,
            node.line,
            format!("{what} must be at least {min}, found {v}"),
        );
        None
    } else if v > max {
        cx.err(
            path,
            node.line,
            format!("{what} must be at most {max}, found {v}"),
        );
        None
    } else {
        Some(v)
    }
}

fn parse_float(s: &str) -> Option<f64> {
    match s {
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => return Some(f64::INFINITY),
        "-.inf" | "-.Inf" | "-.INF" => return Some(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Some(f64::NAN),
        _ => {}
    }
    let ok = s
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-' | b'_'));
    if !ok || !s.bytes().any(|b| b.is_ascii_digit()) {
        return None;
    }
    s.replace('_', "").parse::<f64>().ok()
}

/// A number (plain scalar), whole or not.
fn float(cx: &mut Cx, node: &Node, path: &str) -> Option<f64> {
    match &node.kind {
        Kind::Null => None,
        Kind::Scalar { value, plain: true } if parse_float(value.trim()).is_some() => {
            parse_float(value.trim())
        }
        _ => {
            cx.err(
                path,
                node.line,
                format!("expected a number, found {}", node.describe()),
            );
            None
        }
    }
}

/// A duration string such as `250ms`, `30s`, `1h`.
fn duration(cx: &mut Cx, node: &Node, path: &str) -> Option<Duration> {
    let s = match &node.kind {
        Kind::Scalar { value, .. } => value,
        Kind::Null => return None,
        _ => {
            cx.err(
                path,
                node.line,
                format!(
                    "expected a duration such as `30s`, found {}",
                    node.describe()
                ),
            );
            return None;
        }
    };
    if let Kind::Scalar { plain: true, .. } = node.kind
        && s.trim() != "0"
        && parse_int(s.trim()).is_some()
    {
        cx.err(
            path,
            node.line,
            format!("a duration needs a unit: `{s}s` or `{s}ms`, say"),
        );
        return None;
    }
    match duration_str::parse(s) {
        Ok(d) => Some(d),
        Err(e) => {
            cx.err(path, node.line, e);
            None
        }
    }
}

/// A duration that must be more than zero; `default` when absent.
fn positive_duration(cx: &mut Cx, f: &Fields<'_>, key: &str, default: Duration) -> Duration {
    let path = f.path(key);
    match f.value(key) {
        None => default,
        Some(n) => match duration(cx, n, &path) {
            Some(d) if d.is_zero() => {
                cx.err(&path, n.line, format!("`{key}` must be more than 0"));
                default
            }
            Some(d) => d,
            None => default,
        },
    }
}

/// A list of strings (null reads as empty).
fn string_list(cx: &mut Cx, node: &Node, path: &str) -> Vec<(String, usize)> {
    match &node.kind {
        Kind::Null => Vec::new(),
        Kind::Seq(items) => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let p = index(path, i);
                match string(cx, item, &p) {
                    Some(s) => out.push((s, item.line)),
                    None if item.kind == Kind::Null => cx.err(&p, item.line, "empty list entry"),
                    None => {}
                }
            }
            out
        }
        _ => {
            cx.err(
                path,
                node.line,
                format!("expected a list, found {}", node.describe()),
            );
            Vec::new()
        }
    }
}

/// `IP:PORT`.
fn socket_addr(cx: &mut Cx, node: &Node, path: &str) -> Option<SocketAddr> {
    let s = string(cx, node, path)?;
    match s.trim().parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            let hint = if parse_int(s.trim()).is_some_and(|p| (0..=65535).contains(&p)) {
                format!("; for every interface write `0.0.0.0:{}`", s.trim())
            } else if s.trim().starts_with("localhost:") {
                format!(
                    "; write `127.0.0.1:{}`",
                    s.trim().trim_start_matches("localhost:")
                )
            } else {
                String::new()
            };
            cx.err(
                path,
                node.line,
                format!("`{s}` is not a socket address: expected IP:PORT such as `0.0.0.0:8080` or `[::1]:8080`{hint}"),
            );
            None
        }
    }
}

/// A required socket address.
fn required_addr(cx: &mut Cx, f: &Fields<'_>, key: &str) -> Option<SocketAddr> {
    match f.value(key) {
        None => {
            cx.err(
                &f.path(key),
                f.key_line(key),
                format!("missing `{key}` (IP:PORT)"),
            );
            None
        }
        Some(n) => socket_addr(cx, n, &f.path(key)),
    }
}

// === checks on strings ===

fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// A header name, lower-cased, or an error.
fn header_name(cx: &mut Cx, name: &str, path: &str, line: usize) -> Option<String> {
    if name.is_empty() {
        cx.err(path, line, "empty header name");
        None
    } else if !name.chars().all(is_tchar) {
        cx.err(
            path,
            line,
            format!(
                "`{name}` is not a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~)"
            ),
        );
        None
    } else {
        Some(name.to_ascii_lowercase())
    }
}

/// A JSON pointer (RFC 6901): `/a/b`, `~0` for `~` and `~1` for `/`.
fn json_pointer(cx: &mut Cx, p: &str, path: &str, line: usize) -> bool {
    if !p.starts_with('/') {
        cx.err(
            path,
            line,
            format!("`{p}` is not a JSON pointer: it must start with `/`, as in `/{p}`"),
        );
        return false;
    }
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            cx.err(
                path,
                line,
                format!(
                    "`{p}`: in a JSON pointer `~` must be written `~0` (and `/` in a name `~1`)"
                ),
            );
            return false;
        }
    }
    true
}

/// Names of routes and upstreams: they appear in metrics, headers and admin URLs.
fn check_name(cx: &mut Cx, name: &str, path: &str, line: usize, what: &str) -> bool {
    if name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        true
    } else {
        cx.err(
            path,
            line,
            format!("{what} `{name}` may hold only letters, digits, `-`, `_` and `.` (it appears in metrics, headers and admin URLs)"),
        );
        false
    }
}

/// The parts of a URL that matter here.
pub(crate) struct UrlParts {
    pub scheme: String,
}

/// Checks `scheme://host[:port][/path][?query]` and returns the lower-cased scheme.
pub(crate) fn parse_url(s: &str) -> Result<UrlParts, String> {
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "`{s}` is not a URL: it contains spaces or control characters"
        ));
    }
    let Some((scheme, rest)) = s.split_once("://") else {
        return Err(format!(
            "`{s}` is not a URL: expected `scheme://host[:port][/path]`"
        ));
    };
    if scheme.is_empty()
        || !scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return Err(format!("`{s}` is not a URL: bad scheme `{scheme}`"));
    }
    if rest.contains('#') {
        return Err(format!(
            "`{s}`: a URL fragment (`#...`) is never sent to a server; remove it"
        ));
    }
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let Some((addr, after)) = v6.split_once(']') else {
            return Err(format!("`{s}`: unclosed `[` in the host"));
        };
        if addr.parse::<Ipv6Addr>().is_err() {
            return Err(format!("`{s}`: `{addr}` is not an IPv6 address"));
        }
        match after {
            "" => (v6, None),
            p => match p.strip_prefix(':') {
                Some(p) => (v6, Some(p)),
                None => return Err(format!("`{s}`: unexpected `{p}` after the host")),
            },
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() {
        return Err(format!("`{s}` has no host"));
    }
    if !hostport.starts_with('[')
        && !host.chars().all(|c| {
            c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '%') || !c.is_ascii()
        })
    {
        return Err(format!("`{s}`: `{host}` is not a valid host name"));
    }
    if let Some(p) = port {
        match p.parse::<u16>() {
            Ok(n) if n > 0 && p.bytes().all(|b| b.is_ascii_digit()) => {}
            _ => return Err(format!("`{s}`: `{p}` is not a port (1 to 65535)")),
        }
    }
    Ok(UrlParts {
        scheme: scheme.to_ascii_lowercase(),
    })
}

fn url(cx: &mut Cx, node: &Node, path: &str, schemes: &[&str], why: &str) -> Option<String> {
    let s = string(cx, node, path)?;
    match parse_url(&s) {
        Err(e) => {
            cx.err(path, node.line, e);
            None
        }
        Ok(parts) if !schemes.contains(&parts.scheme.as_str()) => {
            let list: Vec<String> = schemes.iter().map(|s| format!("{s}://")).collect();
            cx.err(
                path,
                node.line,
                format!("`{s}`: the scheme must be {}{why}", or_list(&list)),
            );
            None
        }
        Ok(_) => Some(s),
    }
}

fn or_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// `10.0.0.0/8`, `fd00::/8`, or a bare address (one host). Host bits are cleared.
pub(crate) fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let s = s.trim();
    let (addr, prefix) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("`{s}`: `{addr}` is not an IP address"))?;
    let max: u8 = if addr.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        None => max,
        Some(p) => match p.parse::<u8>() {
            Ok(n) if p.bytes().all(|b| b.is_ascii_digit()) => n,
            _ => return Err(format!("`{s}`: `{p}` is not a prefix length (0 to {max})")),
        },
    };
    if prefix > max {
        return Err(format!(
            "`{s}`: the prefix length is at most {max} for an IPv{} address",
            if max == 32 { 4 } else { 6 }
        ));
    }
    let addr = match addr {
        IpAddr::V4(a) => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            IpAddr::V4((u32::from(a) & mask).into())
        }
        IpAddr::V6(a) => {
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            IpAddr::V6((u128::from(a) & mask).into())
        }
    };
    Ok(Cidr { addr, prefix })
}

// === the document ===

/// Builds the whole config; errors go to `cx`.
pub(crate) fn config(cx: &mut Cx, root: &Node) -> Config {
    let mode = cx.mode;
    let (allowed, extra): (&[&str], &[(&str, &str)]) = match mode {
        Mode::Proxy => (TOP_PROXY, &[]),
        Mode::Filter => (
            TOP_FILTER,
            &[
                (
                    "listen",
                    "not used by the Wasm filter: Envoy's listener decides where traffic arrives; remove it",
                ),
                (
                    "admin",
                    "not used by the Wasm filter: use Envoy's admin interface; remove it",
                ),
                (
                    "shutdown",
                    "not used by the Wasm filter: Envoy drains its listeners; remove it",
                ),
                (
                    "tracing",
                    "not used by the Wasm filter: configure tracing in Envoy; remove it",
                ),
            ],
        ),
    };
    let mut c = Config {
        listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
        admin: None,
        shutdown: Shutdown::default(),
        routes: Vec::new(),
        turn: None,
        tracing: None,
    };
    let Some(f) = fields(cx, root, "", allowed, extra) else {
        return c;
    };
    if mode == Mode::Proxy {
        if let Some(n) = f.value("listen")
            && let Some(a) = socket_addr(cx, n, "listen")
        {
            c.listen = a;
        }
        if let Some(n) = f.value("admin") {
            c.admin = socket_addr(cx, n, "admin");
        }
        if let Some(n) = f.get("shutdown")
            && let Some(s) = fields(cx, n, "shutdown", SHUTDOWN, &[])
            && let Some(n) = s.value("drain_timeout")
            && let Some(d) = duration(cx, n, "shutdown.drain_timeout")
        {
            c.shutdown.drain_timeout = d;
        }
        if let Some(n) = f.get("tracing") {
            c.tracing = tracing(cx, n, "tracing");
        }
    }
    match f.value("routes") {
        None => cx.err(
            "routes",
            f.key_line("routes"),
            "missing `routes`: at least one route is needed",
        ),
        Some(n) => c.routes = routes(cx, n, "routes"),
    }
    if let Some(n) = f.get("turn") {
        c.turn = turn(cx, n, "turn");
    }
    c
}

fn routes(cx: &mut Cx, node: &Node, path: &str) -> Vec<Route> {
    let Kind::Seq(items) = &node.kind else {
        cx.err(
            path,
            node.line,
            format!(
                "`routes` must be a list (`- name: ...` entries), found {}",
                node.describe()
            ),
        );
        return Vec::new();
    };
    if items.is_empty() {
        cx.err(path, node.line, "no routes: at least one route is needed");
    }
    let mut out = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let p = index(path, i);
        if let Some(r) = route(cx, item, &p) {
            if !r.name.is_empty() {
                if let Some(first) = seen.get(&r.name) {
                    let line = name_line(item);
                    cx.err(
                        &join(&p, "name"),
                        line,
                        format!(
                            "duplicate route name `{}` (also the name of routes[{first}])",
                            r.name
                        ),
                    );
                } else {
                    seen.insert(r.name.clone(), i);
                }
            }
            out.push(r);
        }
    }
    out
}

fn name_line(node: &Node) -> usize {
    match &node.kind {
        Kind::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.name == "name")
            .map_or(node.line, |(_, v)| v.line),
        _ => node.line,
    }
}

fn route(cx: &mut Cx, node: &Node, path: &str) -> Option<Route> {
    let f = fields(cx, node, path, ROUTE, &[])?;
    let name = required_string(cx, &f, "name", "route `name`").unwrap_or_default();
    if !name.is_empty() {
        check_name(cx, &name, &f.path("name"), name_line(node), "route name");
    }
    let matcher = match f.get("match") {
        Some(n) => matcher(cx, n, &f.path("match")),
        None => Match::default(),
    };
    let websocket = f
        .get("websocket")
        .map(|n| websocket(cx, n, &f.path("websocket")));
    let is_ws = websocket.is_some();
    let split = match f.get("split") {
        Some(n) => split(cx, n, &f.path("split"), is_ws),
        None => Split::default(),
    };
    let room_source = websocket
        .as_ref()
        .is_some_and(|w| w.signaling.room.is_some())
        || matches!(
            split.sticky,
            Sticky::Query(_) | Sticky::Header(_) | Sticky::Cookie(_)
        );
    let limits = match f.get("limits") {
        Some(n) => limits(cx, n, &f.path("limits"), is_ws, room_source),
        None => Limits::default(),
    };
    let upstreams = match f.value("upstreams") {
        None => {
            cx.err(
                &f.path("upstreams"),
                f.key_line("upstreams"),
                "missing `upstreams`: a route needs at least one upstream",
            );
            Vec::new()
        }
        Some(n) => upstreams(cx, n, &f.path("upstreams"), is_ws),
    };
    Some(Route {
        name,
        matcher,
        websocket,
        limits,
        split,
        upstreams,
    })
}

fn matcher(cx: &mut Cx, node: &Node, path: &str) -> Match {
    let mut m = Match::default();
    let Some(f) = fields(
        cx,
        node,
        path,
        MATCH,
        &[(
            "prefix",
            "unknown key `prefix`; did you mean `path_prefix`?",
        )],
    ) else {
        return m;
    };
    for key in ["path", "path_prefix"] {
        if let Some(n) = f.value(key) {
            let p = f.path(key);
            if let Some(s) = string(cx, n, &p) {
                if !s.starts_with('/') {
                    cx.err(&p, n.line, format!("`{s}` must start with `/`"));
                } else if s.contains(['?', '#']) {
                    cx.err(
                        &p,
                        n.line,
                        format!("`{s}`: paths are matched without the query string; remove `?...`"),
                    );
                } else if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    cx.err(&p, n.line, format!("`{s}`: a path holds no spaces"));
                } else if key == "path" {
                    m.path = Some(s);
                } else {
                    m.path_prefix = Some(s);
                }
            }
        }
    }
    if f.value("path").is_some() && f.value("path_prefix").is_some() {
        cx.err(
            path,
            f.key_line("path_prefix"),
            "give either `path` (exact) or `path_prefix`, not both",
        );
    }
    if let Some(n) = f.value("host") {
        let p = f.path("host");
        if let Some(h) = string(cx, n, &p) {
            let h = h.trim().to_ascii_lowercase();
            let bare = h.strip_prefix("*.").unwrap_or(&h);
            let ok_chars = bare.chars().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') || !c.is_ascii()
            }) || (bare.starts_with('[') && bare.ends_with(']'));
            if bare.contains('*') {
                cx.err(
                    &p,
                    n.line,
                    format!("`{h}`: the only wildcard is a leading `*.`, as in `*.example.com`"),
                );
            } else if bare.is_empty()
                || bare.starts_with('.')
                || bare.ends_with('.') && bare.len() == 1
            {
                cx.err(&p, n.line, format!("`{h}` is not a host name"));
            } else if bare.contains(':') && !bare.starts_with('[') {
                cx.err(
                    &p,
                    n.line,
                    format!("`{h}`: the host is matched without its port; remove `:PORT`"),
                );
            } else if !ok_chars {
                cx.err(&p, n.line, format!("`{h}` is not a host name"));
            } else {
                m.host = Some(h);
            }
        }
    }
    if let Some(n) = f.get("headers") {
        let hp = f.path("headers");
        match &n.kind {
            Kind::Null => {}
            Kind::Map(entries) => {
                for (k, v) in entries {
                    let p = join(&hp, &k.name);
                    let Some(name) = header_name(cx, &k.name, &p, k.line) else {
                        continue;
                    };
                    let value = match string(cx, v, &p) {
                        Some(v) => v,
                        None if v.kind == Kind::Null => {
                            cx.err(&p, v.line, "missing header value (an exact match needs one; quote \"\" for an empty value)");
                            continue;
                        }
                        None => continue,
                    };
                    match m.headers.entry(name) {
                        std::collections::btree_map::Entry::Occupied(e) => cx.err(
                            &p,
                            k.line,
                            format!(
                                "header `{}` is given twice (names are case-insensitive)",
                                e.key()
                            ),
                        ),
                        std::collections::btree_map::Entry::Vacant(e) => {
                            e.insert(value);
                        }
                    }
                }
            }
            _ => cx.err(
                &hp,
                n.line,
                format!(
                    "`headers` must be a mapping `name: value`, found {}",
                    n.describe()
                ),
            ),
        }
    }
    m
}

fn websocket(cx: &mut Cx, node: &Node, path: &str) -> WebSocket {
    let mut w = WebSocket::default();
    let Some(f) = fields(cx, node, path, WEBSOCKET, &[]) else {
        return w;
    };
    if let Some(n) = f.value("max_message_bytes") {
        let max = i64::try_from(usize::MAX).unwrap_or(i64::MAX);
        if let Some(v) = int_in(
            cx,
            n,
            &f.path("max_message_bytes"),
            1,
            max,
            "`max_message_bytes`",
        ) {
            w.max_message_bytes = usize::try_from(v).unwrap_or(w.max_message_bytes);
        }
    }
    w.idle_timeout = positive_duration(cx, &f, "idle_timeout", w.idle_timeout);
    if let Some(n) = f.get("allowed_origins") {
        let p = f.path("allowed_origins");
        for (i, (o, line)) in string_list(cx, n, &p).into_iter().enumerate() {
            let ip = index(&p, i);
            if o == "*" {
                cx.err(
                    &ip,
                    line,
                    "`*`: to allow any origin, leave `allowed_origins` out (or empty)",
                );
            } else if o == "null" {
                w.allowed_origins.push(o);
            } else {
                match parse_url(&o) {
                    Err(e) => cx.err(
                        &ip,
                        line,
                        format!("{e} (an origin is `scheme://host[:port]`)"),
                    ),
                    Ok(_)
                        if o.split_once("://")
                            .is_some_and(|(_, r)| r.contains(['/', '?'])) =>
                    {
                        cx.err(
                            &ip,
                            line,
                            format!(
                                "`{o}`: an origin has no path, not even `/`: write `{}`",
                                o.trim_end_matches('/')
                            ),
                        )
                    }
                    Ok(_) => w.allowed_origins.push(o),
                }
            }
        }
    }
    if let Some(n) = f.get("signaling")
        && let Some(s) = fields(cx, n, &f.path("signaling"), SIGNALING, &[])
    {
        let mut sig = Signaling::default();
        for key in SIGNALING {
            let p = s.path(key);
            if let Some(n) = s.value(key)
                && let Some(v) = string(cx, n, &p)
                && json_pointer(cx, &v, &p, n.line)
            {
                match *key {
                    "type" => sig.kind = Some(v),
                    "room" => sig.room = Some(v),
                    _ => sig.peer = Some(v),
                }
            }
        }
        w.signaling = sig;
    }
    w
}

fn split(cx: &mut Cx, node: &Node, path: &str, is_ws: bool) -> Split {
    let mut s = Split::default();
    let Some(f) = fields(cx, node, path, SPLIT, &[]) else {
        return s;
    };
    if let Some(n) = f.value("sticky") {
        let p = f.path("sticky");
        if let Some(v) = string(cx, n, &p) {
            s.sticky = sticky(cx, &v, &p, n.line, is_ws);
        }
    }
    if let Some(n) = f.value("override_header") {
        let p = f.path("override_header");
        if let Some(v) = string(cx, n, &p) {
            s.override_header = header_name(cx, v.trim(), &p, n.line);
        }
    }
    s
}

fn sticky(cx: &mut Cx, v: &str, path: &str, line: usize, is_ws: bool) -> Sticky {
    const FORMS: &str =
        "expected `query:NAME`, `header:NAME`, `cookie:NAME`, `message:/json/pointer` or `none`";
    let v = v.trim();
    if v == "none" {
        return Sticky::None;
    }
    let Some((kind, name)) = v.split_once(':') else {
        cx.err(path, line, format!("`{v}`: {FORMS}"));
        return Sticky::None;
    };
    let name = name.trim();
    match kind.trim() {
        "query" | "cookie" if name.is_empty() => {
            cx.err(
                path,
                line,
                format!("`{v}`: a name is needed after `{kind}:`"),
            );
            Sticky::None
        }
        "query" => Sticky::Query(name.to_owned()),
        "cookie" if !name.chars().all(is_tchar) => {
            cx.err(
                path,
                line,
                format!("`{v}`: `{name}` is not a valid cookie name"),
            );
            Sticky::None
        }
        "cookie" => Sticky::Cookie(name.to_owned()),
        "header" => header_name(cx, name, path, line).map_or(Sticky::None, Sticky::Header),
        "message" => {
            if !is_ws {
                cx.err(
                    path,
                    line,
                    "`message:` stickiness reads the first WebSocket message, but this route has no `websocket:` section",
                );
                Sticky::None
            } else if json_pointer(cx, name, path, line) {
                Sticky::Message(name.to_owned())
            } else {
                Sticky::None
            }
        }
        _ => {
            cx.err(path, line, format!("`{v}`: {FORMS}"));
            Sticky::None
        }
    }
}

fn limits(cx: &mut Cx, node: &Node, path: &str, is_ws: bool, room_source: bool) -> Limits {
    let mut l = Limits::default();
    let Some(f) = fields(cx, node, path, LIMITS, &[]) else {
        return l;
    };
    if let Some(n) = f.get("connections") {
        let p = f.path("connections");
        if let Some(c) = fields(cx, n, &p, CONNECTIONS, &[]) {
            let rate = rate(cx, &c);
            let mut key = LimitKey::ClientIp;
            if let Some(n) = c.value("key") {
                let kp = c.path("key");
                if let Some(v) = string(cx, n, &kp) {
                    match v.trim() {
                        "client_ip" => {}
                        "route" => key = LimitKey::Route,
                        other => match other.strip_prefix("header:") {
                            Some(h) => {
                                if let Some(h) = header_name(cx, h.trim(), &kp, n.line) {
                                    key = LimitKey::Header(h);
                                }
                            }
                            None => cx.err(
                                &kp,
                                n.line,
                                format!(
                                    "`{other}`: expected `client_ip`, `route` or `header:NAME`"
                                ),
                            ),
                        },
                    }
                }
            }
            if let Some(rate) = rate {
                l.connections = Some(ConnectionLimit { rate, key });
            }
        }
    }
    if let Some(n) = f.get("messages") {
        let p = f.path("messages");
        if !is_ws {
            cx.err(&p, f.key_line("messages"), "message limits need a WebSocket route: add a `websocket:` section to this route, or remove `messages`");
        } else if let Some(m) = fields(cx, n, &p, MESSAGES, &[]) {
            let rate = rate(cx, &m);
            let mut on_exceed = OnExceed::Drop;
            if let Some(n) = m.value("on_exceed") {
                let op = m.path("on_exceed");
                if let Some(v) = string(cx, n, &op) {
                    match v.trim() {
                        "drop" => {}
                        "close" => on_exceed = OnExceed::Close,
                        other => cx.err(
                            &op,
                            n.line,
                            format!("`{other}`: expected `drop` or `close`"),
                        ),
                    }
                }
            }
            if let Some(rate) = rate {
                l.messages = Some(MessageLimit { rate, on_exceed });
            }
        }
    }
    if let Some(n) = f.get("rooms") {
        let p = f.path("rooms");
        if !is_ws {
            cx.err(&p, f.key_line("rooms"), "room limits need a WebSocket route: add a `websocket:` section to this route, or remove `rooms`");
        } else if let Some(r) = fields(cx, n, &p, ROOMS, &[]) {
            if !room_source {
                cx.err(
                    &p,
                    f.key_line("rooms"),
                    "room limits need to know the room: set `websocket.signaling.room` (a JSON pointer such as `/room`), or `split.sticky` to `query:`, `header:` or `cookie:`",
                );
            }
            l.rooms = rate(cx, &r);
        }
    }
    l
}

/// `rate`, `per`, `burst` of a bucket.
fn rate(cx: &mut Cx, f: &Fields<'_>) -> Option<Rate> {
    let max = i64::from(u32::MAX);
    let rate = match f.value("rate") {
        None => {
            cx.err(
                &f.path("rate"),
                f.key_line("rate"),
                "missing `rate` (tokens added every `per`)",
            );
            None
        }
        Some(n) => int_in(cx, n, &f.path("rate"), 1, max, "`rate`"),
    };
    let per = positive_duration(cx, f, "per", Duration::from_secs(1));
    let burst = match f.value("burst") {
        None => rate,
        Some(n) => int_in(cx, n, &f.path("burst"), 1, max, "`burst`"),
    };
    let rate = u32::try_from(rate?).ok()?;
    let burst = u32::try_from(burst?).ok()?;
    Some(Rate { rate, per, burst })
}

fn upstreams(cx: &mut Cx, node: &Node, path: &str, is_ws: bool) -> Vec<Upstream> {
    let Kind::Seq(items) = &node.kind else {
        cx.err(
            path,
            node.line,
            format!(
                "`upstreams` must be a list (`- name: ...` entries), found {}",
                node.describe()
            ),
        );
        return Vec::new();
    };
    if items.is_empty() {
        cx.err(path, node.line, "no upstreams: a route needs at least one");
        return Vec::new();
    }
    let (allowed, extra): (&[&str], &[(&str, &str)]) = match cx.mode {
        Mode::Proxy => (UPSTREAM_PROXY, &[]),
        Mode::Filter => (
            UPSTREAM_FILTER,
            &[(
                "url",
                "`url` is not used by the Wasm filter: Envoy routes by the upstream's name (written to the split header); remove it",
            )],
        ),
    };
    let mut out = Vec::new();
    let mut weights_ok = true;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let p = index(path, i);
        let Some(f) = fields(cx, item, &p, allowed, extra) else {
            weights_ok = false;
            continue;
        };
        let name = required_string(cx, &f, "name", "upstream `name`").unwrap_or_default();
        if !name.is_empty()
            && check_name(cx, &name, &f.path("name"), name_line(item), "upstream name")
        {
            if let Some(first) = seen.get(&name) {
                cx.err(
                    &f.path("name"),
                    name_line(item),
                    format!("duplicate upstream name `{name}` in this route (also the name of upstreams[{first}])"),
                );
            } else {
                seen.insert(name.clone(), i);
            }
        }
        let mut url_value = None;
        if cx.mode == Mode::Proxy {
            match f.value("url") {
                None => cx.err(&f.path("url"), f.key_line("url"), "missing upstream `url`"),
                Some(n) => {
                    url_value = if is_ws {
                        url(
                            cx,
                            n,
                            &f.path("url"),
                            &["ws", "wss"],
                            " on a route with `websocket:` (sigmesh speaks WebSocket to the upstream)",
                        )
                    } else {
                        url(cx, n, &f.path("url"), &["http", "https", "ws", "wss"], "")
                    };
                }
            }
        }
        let weight = match f.value("weight") {
            None => Some(1),
            Some(n) => int(cx, n, &f.path("weight")).and_then(|w| {
                if w < 0 {
                    cx.err(
                        &f.path("weight"),
                        n.line,
                        format!(
                            "weight {w} is negative; weights are 0 or more (0: no new sessions)"
                        ),
                    );
                    None
                } else if w > i64::from(u32::MAX) {
                    cx.err(
                        &f.path("weight"),
                        n.line,
                        format!("weight {w} is too large (at most {})", u32::MAX),
                    );
                    None
                } else {
                    u32::try_from(w).ok()
                }
            }),
        };
        if weight.is_none() {
            weights_ok = false;
        }
        out.push(Upstream {
            name,
            url: url_value,
            weight: weight.unwrap_or(1),
        });
    }
    if weights_ok && out.iter().map(|u| u64::from(u.weight)).sum::<u64>() == 0 {
        cx.err(path, node.line, "the weights of a route's upstreams sum to 0: at least one upstream needs a weight above 0");
    }
    out
}

fn turn(cx: &mut Cx, node: &Node, path: &str) -> Option<Turn> {
    let (allowed, extra): (&[&str], &[(&str, &str)]) = match cx.mode {
        Mode::Proxy => (TURN_PROXY, &[]),
        Mode::Filter => (
            TURN_FILTER,
            &[(
                "relay",
                "`turn.relay` is not available in the Wasm filter (it needs its own UDP/TCP listener); remove it",
            )],
        ),
    };
    let f = fields(cx, node, path, allowed, extra)?;
    let secret = required_string(
        cx,
        &f,
        "secret",
        "`secret` (the TURN REST API shared secret)",
    )
    .unwrap_or_default();
    let ttl = positive_duration(cx, &f, "ttl", Duration::from_secs(3600));
    let mut uris = Vec::new();
    if let Some(n) = f.get("uris") {
        let p = f.path("uris");
        for (i, (u, line)) in string_list(cx, n, &p).into_iter().enumerate() {
            let scheme = u.split_once(':').map(|(s, _)| s.to_ascii_lowercase());
            let rest_ok = u
                .split_once(':')
                .is_some_and(|(_, r)| !r.is_empty() && !r.starts_with('/'));
            if !matches!(scheme.as_deref(), Some("turn" | "turns" | "stun" | "stuns")) || !rest_ok {
                cx.err(
                    &index(&p, i),
                    line,
                    format!("`{u}` is not a TURN/STUN URI: expected `turn:HOST[:PORT][?transport=udp|tcp]`, `turns:...` or `stun:...` (no `//`)"),
                );
            } else {
                uris.push(u);
            }
        }
    }
    let mut credentials_path = "/turn-credentials".to_owned();
    if let Some(n) = f.value("credentials_path") {
        let p = f.path("credentials_path");
        if let Some(s) = string(cx, n, &p) {
            if !s.starts_with('/') || s.contains(['?', '#']) || s.chars().any(char::is_whitespace) {
                cx.err(
                    &p,
                    n.line,
                    format!("`{s}` must be a path starting with `/`, without a query"),
                );
            } else {
                credentials_path = s;
            }
        }
    }
    let mut relay = None;
    if cx.mode == Mode::Proxy
        && let Some(n) = f.get("relay")
    {
        let p = f.path("relay");
        if let Some(r) = fields(cx, n, &p, RELAY, &[]) {
            let listen = required_addr(cx, &r, "listen");
            let upstream = required_addr(cx, &r, "upstream");
            let deny_peers = match r.value("deny_peers") {
                None => None,
                Some(n) => {
                    let dp = r.path("deny_peers");
                    let mut v = Vec::new();
                    for (i, (s, line)) in string_list(cx, n, &dp).into_iter().enumerate() {
                        match parse_cidr(&s) {
                            Ok(c) => v.push(c),
                            Err(e) => cx.err(&index(&dp, i), line, e),
                        }
                    }
                    Some(v)
                }
            };
            if let (Some(listen), Some(upstream)) = (listen, upstream) {
                relay = Some(TurnRelay {
                    listen,
                    upstream,
                    deny_peers,
                });
            }
        }
    }
    Some(Turn {
        secret,
        ttl,
        uris,
        credentials_path,
        relay,
    })
}

fn tracing(cx: &mut Cx, node: &Node, path: &str) -> Option<Tracing> {
    let f = fields(cx, node, path, TRACING, &[])?;
    let otlp_endpoint = match f.value("otlp_endpoint") {
        None => {
            cx.err(
                &f.path("otlp_endpoint"),
                f.key_line("otlp_endpoint"),
                "missing `otlp_endpoint`, such as `http://127.0.0.1:4317`",
            );
            String::new()
        }
        Some(n) => url(cx, n, &f.path("otlp_endpoint"), &["http", "https"], "").unwrap_or_default(),
    };
    let mut protocol = OtlpProtocol::Grpc;
    if let Some(n) = f.value("protocol") {
        let p = f.path("protocol");
        if let Some(v) = string(cx, n, &p) {
            match v.trim() {
                "grpc" => {}
                "http" | "http/protobuf" => protocol = OtlpProtocol::Http,
                other => cx.err(&p, n.line, format!("`{other}`: expected `grpc` or `http`")),
            }
        }
    }
    let mut service_name = "sigmesh".to_owned();
    if let Some(n) = f.value("service_name") {
        let p = f.path("service_name");
        match string(cx, n, &p) {
            Some(s) if s.trim().is_empty() => {
                cx.err(&p, n.line, "`service_name` must not be empty")
            }
            Some(s) => service_name = s,
            None => {}
        }
    }
    let mut sample_ratio = 1.0;
    if let Some(n) = f.value("sample_ratio") {
        let p = f.path("sample_ratio");
        if let Some(r) = float(cx, n, &p) {
            if (0.0..=1.0).contains(&r) {
                sample_ratio = r;
            } else {
                cx.err(
                    &p,
                    n.line,
                    format!("`sample_ratio` is a fraction from 0.0 to 1.0, found {r}"),
                );
            }
        }
    }
    Some(Tracing {
        otlp_endpoint,
        protocol,
        service_name,
        sample_ratio,
    })
}
