//! An upstream's pool: `endpoints` (static URLs), `balance` and `health_check`.

use super::super::tree::{Node, NodeKind};
use super::super::{Balance, HealthCheck};

use super::fields::fields;
use super::scalars::{int_in, positive_duration, string, url};
use super::{HEALTH_CHECK, Validator, index};

/// Most endpoints one upstream lists (or resolves to).
pub const MAX_ENDPOINTS: usize = 1024;

/// `endpoints: [URL, ...]`: one scheme for all (TLS is per upstream), no duplicates.
pub(super) fn endpoints(
    cx: &mut Validator,
    node: &Node,
    path: &str,
    schemes: &[&str],
    why: &str,
) -> Vec<String> {
    let NodeKind::Seq(items) = &node.kind else {
        cx.err(
            path,
            node.line,
            format!(
                "`endpoints` must be a list of URLs, found {}",
                node.describe()
            ),
        );
        return Vec::new();
    };
    if items.is_empty() {
        cx.err(
            path,
            node.line,
            "`endpoints` is empty: list at least one URL",
        );
        return Vec::new();
    }
    if items.len() > MAX_ENDPOINTS {
        cx.err(
            path,
            node.line,
            format!("{} endpoints: at most {MAX_ENDPOINTS}", items.len()),
        );
        return Vec::new();
    }
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let p = index(path, i);
        let Some(u) = url(cx, item, &p, schemes, why) else {
            continue;
        };
        let scheme = |s: &str| s.split("://").next().unwrap_or("").to_ascii_lowercase();
        if let Some(first) = out.first()
            && scheme(first) != scheme(&u)
        {
            cx.err(
                &p,
                item.line,
                format!(
                    "`{u}`: every endpoint of an upstream has one scheme (the first is `{first}`); make another upstream for the others"
                ),
            );
            continue;
        }
        if out.contains(&u) {
            cx.err(&p, item.line, format!("`{u}` is listed twice"));
            continue;
        }
        out.push(u);
    }
    out
}

/// `balance: room | least_sessions | random`.
pub(super) fn balance(cx: &mut Validator, node: &Node, path: &str) -> Option<Balance> {
    let v = string(cx, node, path)?;
    let b = Balance::parse(v.trim());
    if b.is_none() {
        cx.err(
            path,
            node.line,
            format!("`{v}`: expected `room`, `least_sessions` or `random`"),
        );
    }
    b
}

/// `health_check: { path, interval, timeout, unhealthy, healthy }` (`{}` for the defaults).
pub(super) fn health_check(cx: &mut Validator, node: &Node, path: &str) -> Option<HealthCheck> {
    let d = HealthCheck::default();
    if node.kind == NodeKind::Null {
        return Some(d);
    }
    let f = fields(cx, node, path, HEALTH_CHECK, &[])?;
    let check_path = match f.value("path") {
        None => d.path.clone(),
        Some(n) => match string(cx, n, &f.path("path")) {
            Some(p)
                if p.starts_with('/') && !p.chars().any(|c| c.is_ascii_control() || c == ' ') =>
            {
                p
            }
            Some(p) => {
                cx.err(
                    &f.path("path"),
                    n.line,
                    format!("`{p}`: a path starting with `/`, without spaces"),
                );
                d.path.clone()
            }
            None => d.path.clone(),
        },
    };
    let interval = positive_duration(cx, &f, "interval", d.interval);
    let timeout = positive_duration(cx, &f, "timeout", d.timeout);
    if timeout > interval {
        cx.err(
            &f.path("timeout"),
            f.key_line("timeout"),
            format!("`timeout` ({timeout:?}) is longer than `interval` ({interval:?})"),
        );
    }
    let count = |cx: &mut Validator, key: &str, default: u32| match f.value(key) {
        None => default,
        Some(n) => {
            int_in(cx, n, &f.path(key), 1, 100, &format!("`{key}`")).map_or(default, |v| v as u32)
        }
    };
    let unhealthy = count(cx, "unhealthy", d.unhealthy);
    let healthy = count(cx, "healthy", d.healthy);
    Some(HealthCheck {
        path: check_path,
        interval,
        timeout,
        unhealthy,
        healthy,
    })
}
