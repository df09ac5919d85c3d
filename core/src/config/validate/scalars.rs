//! Scalar readers and string checks: strings, whole numbers, numbers, durations, lists of
//! strings and socket addresses; header names, JSON pointers, route/upstream names, URLs and
//! CIDRs. Each reader records its error in the [`Validator`] and returns `None`.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use super::super::tree::{Node, NodeKind};
use super::super::{Cidr, duration_str};
use super::fields::Fields;
use super::{Validator, index};

// === scalars ===

/// A string value; numbers and booleans read as their text. `None` (with an error) for lists
/// and mappings; `None` (no error) for null.
pub(super) fn string(cx: &mut Validator, node: &Node, path: &str) -> Option<String> {
    match &node.kind {
        NodeKind::Scalar { value, .. } => Some(value.clone()),
        NodeKind::Null => None,
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
pub(super) fn required_string(
    cx: &mut Validator,
    f: &Fields<'_>,
    key: &str,
    what: &str,
) -> Option<String> {
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
pub(super) fn int(cx: &mut Validator, node: &Node, path: &str) -> Option<i64> {
    if let NodeKind::Null = node.kind {
        return None;
    }
    if let NodeKind::Scalar { value, plain: true } = &node.kind {
        if let Some(v) = parse_int(value.trim()) {
            return Some(v);
        }
        if value.bytes().all(|b| b.is_ascii_digit()) && !value.is_empty() {
            cx.err(path, node.line, format!("`{value}` is too large"));
            return None;
        }
    }
    let hint = match &node.kind {
        NodeKind::Scalar {
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
pub(super) fn int_in(
    cx: &mut Validator,
    node: &Node,
    path: &str,
    min: i64,
    max: i64,
    what: &str,
) -> Option<i64> {
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
pub(super) fn float(cx: &mut Validator, node: &Node, path: &str) -> Option<f64> {
    match &node.kind {
        NodeKind::Null => None,
        NodeKind::Scalar { value, plain: true } if parse_float(value.trim()).is_some() => {
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
pub(super) fn duration(cx: &mut Validator, node: &Node, path: &str) -> Option<Duration> {
    let s = match &node.kind {
        NodeKind::Scalar { value, .. } => value,
        NodeKind::Null => return None,
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
    if let NodeKind::Scalar { plain: true, .. } = node.kind
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
pub(super) fn positive_duration(
    cx: &mut Validator,
    f: &Fields<'_>,
    key: &str,
    default: Duration,
) -> Duration {
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
pub(super) fn string_list(cx: &mut Validator, node: &Node, path: &str) -> Vec<(String, usize)> {
    match &node.kind {
        NodeKind::Null => Vec::new(),
        NodeKind::Seq(items) => {
            let mut out = Vec::new();
            for (i, item) in items.iter().enumerate() {
                let p = index(path, i);
                match string(cx, item, &p) {
                    Some(s) => out.push((s, item.line)),
                    None if item.kind == NodeKind::Null => {
                        cx.err(&p, item.line, "empty list entry")
                    }
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
pub(super) fn socket_addr(cx: &mut Validator, node: &Node, path: &str) -> Option<SocketAddr> {
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
pub(super) fn required_addr(cx: &mut Validator, f: &Fields<'_>, key: &str) -> Option<SocketAddr> {
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

pub(super) fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// A header name, lower-cased, or an error.
pub(super) fn header_name(
    cx: &mut Validator,
    name: &str,
    path: &str,
    line: usize,
) -> Option<String> {
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
pub(super) fn json_pointer(cx: &mut Validator, p: &str, path: &str, line: usize) -> bool {
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
pub(super) fn check_name(
    cx: &mut Validator,
    name: &str,
    path: &str,
    line: usize,
    what: &str,
) -> bool {
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

pub(super) fn url(
    cx: &mut Validator,
    node: &Node,
    path: &str,
    schemes: &[&str],
    why: &str,
) -> Option<String> {
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

/// A list of CIDRs (`10.0.0.0/8`, `::1/128`, or a bare address for one host).
pub(super) fn cidr_list(cx: &mut Validator, node: &Node, path: &str) -> Vec<Cidr> {
    let mut v = Vec::new();
    for (i, (s, line)) in string_list(cx, node, path).into_iter().enumerate() {
        match parse_cidr(&s) {
            Ok(c) => v.push(c),
            Err(e) => cx.err(&index(path, i), line, e),
        }
    }
    v
}
