//! Load balancing of a route: its `split` section (stickiness, override header) and its
//! weighted `upstreams`.

use std::collections::BTreeMap;

use super::super::tree::{Node, NodeKind};
use super::super::{Split, Sticky, Upstream, UpstreamPool, UpstreamTls};
use super::fields::{fields, name_line};
use super::scalars::{
    check_name, cidr_list, header_name, int, is_tchar, json_pointer, required_string, string, url,
};
use super::{Mode, SPLIT, UPSTREAM_FILTER, UPSTREAM_PROXY, UPSTREAM_TLS, Validator, index};

// === split ===

pub(super) fn split(cx: &mut Validator, node: &Node, path: &str, is_ws: bool) -> Split {
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
    if let Some(n) = f.value("override_from") {
        s.override_from = Some(cidr_list(cx, n, &f.path("override_from")));
    }
    s
}

fn sticky(cx: &mut Validator, v: &str, path: &str, line: usize, is_ws: bool) -> Sticky {
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

// === upstreams ===

pub(super) fn upstreams(cx: &mut Validator, node: &Node, path: &str, is_ws: bool) -> Vec<Upstream> {
    let NodeKind::Seq(items) = &node.kind else {
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
            &[
                (
                    "url",
                    "`url` is not used by the Wasm filter: Envoy routes by the upstream's name (written to the split header); remove it",
                ),
                (
                    "endpoints",
                    "in Envoy the upstream's cluster holds the endpoints (a Kubernetes Service in Istio); remove it",
                ),
                (
                    "dns",
                    "in Envoy the upstream's cluster resolves its endpoints (a STRICT_DNS cluster, or a Service in Istio); remove it",
                ),
                (
                    "balance",
                    "in Envoy the cluster's lb_policy picks the endpoint; for `room`, hash the split header (Istio: DestinationRule `consistentHash: {httpHeaderName: ...}`), see docs/upstreams.md",
                ),
                (
                    "health_check",
                    "in Envoy the cluster's health_checks and outlier_detection judge endpoints (Istio: DestinationRule `outlierDetection`); remove it",
                ),
            ],
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
        let (schemes, why): (&[&str], &str) = if is_ws {
            (
                &["ws", "wss"],
                " on a route with `websocket:` (sigmesh speaks WebSocket to the upstream)",
            )
        } else {
            (&["http", "https", "ws", "wss"], "")
        };
        let mut url_value = None;
        let mut pool = UpstreamPool::default();
        if cx.mode == Mode::Proxy {
            let given: Vec<&str> = ["url", "endpoints", "dns"]
                .into_iter()
                .filter(|k| f.value(k).is_some())
                .collect();
            match given.as_slice() {
                [] => cx.err(
                    &f.path("url"),
                    f.key_line("url"),
                    "missing upstream `url` (or `endpoints:`, a list of URLs, or `dns:`, a URL whose host name resolves to every endpoint)",
                ),
                [_] => {}
                [a, b, ..] => cx.err(
                    &f.path(b),
                    f.key_line(b),
                    format!("`{a}` and `{b}` both given: an upstream has one of `url`, `endpoints` and `dns`"),
                ),
            }
            if let Some(n) = f.value("url") {
                url_value = url(cx, n, &f.path("url"), schemes, why);
            }
            if let Some(n) = f.value("endpoints") {
                pool.endpoints = super::pools::endpoints(cx, n, &f.path("endpoints"), schemes, why);
            }
            if let Some(n) = f.value("dns") {
                pool.dns = url(cx, n, &f.path("dns"), schemes, why);
            }
            if let Some(n) = f.value("balance") {
                pool.balance = super::pools::balance(cx, n, &f.path("balance"));
            }
            if let Some(n) = f.get("health_check") {
                pool.health_check = super::pools::health_check(cx, n, &f.path("health_check"));
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
        let tls = match f.get("tls") {
            Some(n) if cx.mode == Mode::Proxy => {
                let first = url_value
                    .as_deref()
                    .or(pool.endpoints.first().map(String::as_str))
                    .or(pool.dns.as_deref());
                let secure =
                    first.is_some_and(|u| u.starts_with("wss:") || u.starts_with("https:"));
                if first.is_some() && !secure {
                    cx.err(
                        &f.path("tls"),
                        n.line,
                        "`tls` is for wss:// and https:// upstreams; this one is plain",
                    );
                }
                upstream_tls(cx, n, &f.path("tls"))
            }
            _ => None,
        };
        out.push(Upstream {
            name,
            url: url_value,
            weight: weight.unwrap_or(1),
            tls,
            pool,
        });
    }
    if weights_ok && out.iter().map(|u| u64::from(u.weight)).sum::<u64>() == 0 {
        cx.err(path, node.line, "the weights of a route's upstreams sum to 0: at least one upstream needs a weight above 0");
    }
    out
}

/// `tls: { ca, server_name }` of an upstream.
fn upstream_tls(cx: &mut Validator, node: &Node, path: &str) -> Option<UpstreamTls> {
    let f = fields(cx, node, path, UPSTREAM_TLS, &[])?;
    let ca = f
        .value("ca")
        .and_then(|n| string(cx, n, &f.path("ca")))
        .filter(|s| !s.trim().is_empty());
    let server_name = f.value("server_name").and_then(|n| {
        let p = f.path("server_name");
        let name = string(cx, n, &p)?;
        let ok = !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !ok {
            cx.err(&p, n.line, format!("`{name}` is not a DNS name"));
        }
        ok.then_some(name)
    });
    Some(UpstreamTls { ca, server_name })
}
