//! A validated config compiled once for a front end: the route table, each route's splitter,
//! each upstream's parsed address, and what the front end can do ([`Capabilities`]).
//!
//! Both front ends build one [`Compiled`] per config generation and hand it to the request
//! phase ([`crate::request`]) and the session phase ([`crate::session`]); neither re-parses a
//! URL or rebuilds a splitter at run time. What a front end cannot serve (a `wss://` upstream in
//! a build without TLS, `sticky: message:` behind Envoy) is a [`CompileError`] with its key
//! path, reported by `sigmesh check` like any other config error, never a 502 at run time.

use crate::config::{Config, Route, Sticky};
use crate::route::RouteTable;
use crate::split::{SplitError, Splitter};

/// What a front end can do, which decides what it accepts at compile time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// It connects to upstreams itself, so every upstream needs a usable `url:`.
    pub dials_upstreams: bool,
    /// It can open `wss://` and `https://` upstreams.
    pub tls_upstreams: bool,
    /// It can hold a client until its first message (`sticky: message:`).
    pub first_message_pick: bool,
    /// What it does with a client's `permessage-deflate` offer.
    pub deflate: DeflatePolicy,
    /// The host routes on the split header (Envoy): it is set to the picked upstream's name.
    /// Otherwise (the proxy dials the upstream itself) it is removed from the upstream request.
    pub routes_by_header: bool,
}

impl Capabilities {
    /// The standalone proxy of this build: dials upstreams (wss:// and https:// too), holds
    /// first messages, reads compressed sessions through.
    pub const PROXY: Capabilities = Capabilities {
        dials_upstreams: true,
        tls_upstreams: true,
        first_message_pick: true,
        deflate: DeflatePolicy::ReadThrough,
        routes_by_header: false,
    };

    /// The Envoy filter: Envoy dials; the upstream is picked from the request headers.
    pub const fn filter(deflate: DeflatePolicy) -> Capabilities {
        Capabilities {
            dials_upstreams: false,
            tls_upstreams: true,
            first_message_pick: false,
            deflate,
            routes_by_header: true,
        }
    }
}

/// What to do with a client's `permessage-deflate` offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeflatePolicy {
    /// Take it out of the upgrade request: never negotiated, every message can be read.
    #[default]
    Strip,
    /// Rewrite it so neither side keeps a context, and read compressed messages through
    /// (the standalone proxy; `websocket.compression: strip` still strips).
    ReadThrough,
}

/// A parsed upstream URL (`ws`, `wss`, `http` or `https`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `wss://` or `https://`.
    pub tls: bool,
    /// `host:port` (the port defaulted from the scheme).
    pub authority: String,
    /// The URL's path, empty when it has none (or `/`).
    pub base_path: String,
    /// The URL's query, without `?`.
    pub base_query: Option<String>,
}

/// Why a URL is not an upstream address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Not `scheme://…`, or another scheme.
    #[error("`{0}`: the scheme must be ws, wss, http or https")]
    Scheme(String),
    /// No host.
    #[error("`{0}`: no host")]
    NoHost(String),
    /// A port that is not a number.
    #[error("`{0}`: bad port")]
    Port(String),
}

impl Target {
    /// The host of [`Target::authority`]: without the port, an IPv6 address without brackets.
    pub fn host(&self) -> &str {
        let host = match self.authority.rfind(']') {
            Some(close) => &self.authority[..=close],
            None => self
                .authority
                .rsplit_once(':')
                .map_or(self.authority.as_str(), |(h, _)| h),
        };
        host.trim_start_matches('[').trim_end_matches(']')
    }

    /// Parses `scheme://host[:port][/path][?query]`.
    pub fn parse(url: &str) -> Result<Target, TargetError> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| TargetError::Scheme(url.to_owned()))?;
        let (tls, default_port) = match scheme.to_ascii_lowercase().as_str() {
            "ws" | "http" => (false, 80),
            "wss" | "https" => (true, 443),
            _ => return Err(TargetError::Scheme(url.to_owned())),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        if authority.is_empty() {
            return Err(TargetError::NoHost(url.to_owned()));
        }
        // `[v6]:port`, `[v6]`, `host:port` or `host`.
        let has_port = match authority.rfind(']') {
            Some(close) => authority[close..].contains(':'),
            None => authority.contains(':'),
        };
        let authority = if has_port {
            let (host, port) = authority.rsplit_once(':').unwrap_or((authority, ""));
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(TargetError::Port(url.to_owned()));
            }
            authority.to_owned()
        } else {
            format!("{authority}:{default_port}")
        };
        let tail = tail.split_once('#').map_or(tail, |(t, _)| t);
        let (path, query) = match tail.split_once('?') {
            Some((p, q)) => (p, Some(q.to_owned())),
            None => (tail, None),
        };
        Ok(Target {
            tls,
            authority,
            base_path: if path == "/" {
                String::new()
            } else {
                path.to_owned()
            },
            base_query: query,
        })
    }

    /// The request URI for `client_path_and_query` on a route with `route_prefix`, with
    /// `scheme` (`ws` or `http`). Paths map like nginx's `proxy_pass` with a URI: on a
    /// `path_prefix` route the matched prefix is replaced by the URL's path (`/ws` route,
    /// `ws://h/v2` upstream: `/ws/abc` becomes `/v2/abc`); on a `path` route, or when the URL
    /// has no path, the client's path goes through unchanged. The client's query is kept, after
    /// the URL's own.
    pub fn request_uri(
        &self,
        scheme: &str,
        route_prefix: Option<&str>,
        client_path_and_query: &str,
    ) -> String {
        let (path, query) = match client_path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (client_path_and_query, None),
        };
        let path = match (self.base_path.is_empty(), route_prefix) {
            (false, Some(prefix)) => {
                let rest = path.strip_prefix(prefix).unwrap_or(path);
                join(&self.base_path, rest)
            }
            (false, None) => self.base_path.clone(),
            (true, _) if path.is_empty() => "/".to_owned(),
            (true, _) => path.to_owned(),
        };
        let query = match (&self.base_query, query) {
            (Some(a), Some(b)) if !b.is_empty() => Some(format!("{a}&{b}")),
            (Some(a), _) => Some(a.clone()),
            (None, Some(b)) if !b.is_empty() => Some(b.to_owned()),
            _ => None,
        };
        match query {
            Some(q) => format!("{scheme}://{}{path}?{q}", self.authority),
            None => format!("{scheme}://{}{path}", self.authority),
        }
    }
}

fn join(base: &str, rest: &str) -> String {
    match (base.ends_with('/'), rest.starts_with('/')) {
        _ if rest.is_empty() => base.to_owned(),
        (true, true) => format!("{base}{}", &rest[1..]),
        (false, false) => format!("{base}/{rest}"),
        _ => format!("{base}{rest}"),
    }
}

/// A config the front end cannot serve, with the key path of the culprit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct CompileError {
    /// Key path (`routes[0].upstreams[1].url`).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// One route, compiled.
#[derive(Debug, Clone)]
pub struct CompiledRoute {
    /// The route as configured.
    pub route: Route,
    /// The split over its upstreams, with the configured weights.
    pub splitter: Splitter,
    /// Each upstream's parsed URL, in upstream order (`None` where the front end does not dial):
    /// its `url`, its first endpoint, or its `dns` URL (whose host names the TLS server).
    pub targets: Vec<Option<Target>>,
    /// Each upstream's static endpoints: its `url` alone, or its `endpoints` (empty for `dns`,
    /// resolved by the front end, and where the front end does not dial).
    pub endpoints: Vec<Vec<Target>>,
    /// Each upstream's `dns` URL, parsed.
    pub dns: Vec<Option<Target>>,
    /// Each upstream's balancing, defaults applied ([`CompiledRoute::balance`]).
    pub balance: Vec<crate::balance::Balance>,
}

impl CompiledRoute {
    /// How upstream `upstream` picks an endpoint: its `balance`, else `room` when the route's
    /// `split.sticky` names a room source (the key is there at every handshake), else
    /// `least_sessions`.
    pub fn balance_of(route: &Route, upstream: usize) -> crate::balance::Balance {
        use crate::balance::Balance;
        route
            .upstreams
            .get(upstream)
            .and_then(|u| u.pool.balance)
            .unwrap_or(match route.split.sticky {
                Sticky::None => Balance::LeastSessions,
                _ => Balance::Room,
            })
    }
}

/// A config generation, compiled for one front end.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// The validated config.
    pub config: Config,
    /// First-match route table over `config.routes`.
    pub table: RouteTable,
    /// The routes, in config order (the table's indices).
    pub routes: Vec<CompiledRoute>,
    /// What the front end can do.
    pub caps: Capabilities,
}

impl Compiled {
    /// Compiles `config` for a front end with `caps`; every problem at once.
    pub fn new(config: Config, caps: Capabilities) -> Result<Compiled, Vec<CompileError>> {
        let mut errors = Vec::new();
        let mut routes = Vec::with_capacity(config.routes.len());
        for (i, route) in config.routes.iter().enumerate() {
            if !caps.first_message_pick && matches!(route.split.sticky, Sticky::Message(_)) {
                errors.push(CompileError {
                    path: format!("routes[{i}].split.sticky"),
                    message: "`message:` stickiness needs the first message before the upstream \
                              is chosen, but Envoy chooses it from the request headers; use \
                              query:, header: or cookie:"
                        .into(),
                });
            }
            if !caps.dials_upstreams && route.limits.sessions.is_some() {
                errors.push(CompileError {
                    path: format!("routes[{i}].limits.sessions"),
                    message: "session caps are counted by the standalone proxy; the Envoy filter \
                              does not count sessions yet (use Envoy's circuit breakers)"
                        .into(),
                });
            }
            let splitter = match Splitter::from_upstreams(&route.upstreams) {
                Ok(s) => s,
                Err(SplitError::ZeroTotal) => {
                    errors.push(CompileError {
                        path: format!("routes[{i}].upstreams"),
                        message: "weights sum to 0".into(),
                    });
                    continue;
                }
            };
            let n = route.upstreams.len();
            let (mut targets, mut endpoints, mut dns) = (
                Vec::with_capacity(n),
                Vec::with_capacity(n),
                Vec::with_capacity(n),
            );
            for (j, up) in route.upstreams.iter().enumerate() {
                let mut parse = |key: &str, url: &str| match Target::parse(url) {
                    Ok(t) if t.tls && !caps.tls_upstreams => {
                        errors.push(CompileError {
                            path: format!("routes[{i}].upstreams[{j}].{key}"),
                            message: format!(
                                "`{url}`: wss:// and https:// upstreams need TLS, which this \
                                 build of sigmesh does not have yet; use ws:// or http://"
                            ),
                        });
                        None
                    }
                    Ok(t) => Some(t),
                    Err(e) => {
                        errors.push(CompileError {
                            path: format!("routes[{i}].upstreams[{j}].{key}"),
                            message: e.to_string(),
                        });
                        None
                    }
                };
                let (statics, resolved) = if !caps.dials_upstreams {
                    (Vec::new(), None)
                } else if let Some(url) = &up.url {
                    (parse("url", url).into_iter().collect(), None)
                } else if !up.pool.endpoints.is_empty() {
                    let list = up
                        .pool
                        .endpoints
                        .iter()
                        .enumerate()
                        .filter_map(|(k, u)| parse(&format!("endpoints[{k}]"), u))
                        .collect();
                    (list, None)
                } else if let Some(url) = &up.pool.dns {
                    (Vec::new(), parse("dns", url))
                } else {
                    errors.push(CompileError {
                        path: format!("routes[{i}].upstreams[{j}].url"),
                        message: "an upstream needs a url".into(),
                    });
                    (Vec::new(), None)
                };
                targets.push(statics.first().cloned().or_else(|| resolved.clone()));
                endpoints.push(statics);
                dns.push(resolved);
            }
            let balance = (0..n)
                .map(|j| CompiledRoute::balance_of(route, j))
                .collect();
            routes.push(CompiledRoute {
                route: route.clone(),
                splitter,
                targets,
                endpoints,
                dns,
                balance,
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Compiled {
            table: RouteTable::new(&config.routes),
            config,
            routes,
            caps,
        })
    }

    /// What the config allows that it probably should not, as `path: message` lines: logged at
    /// start and on reload, printed by `sigmesh check`.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        for (i, r) in self.routes.iter().enumerate() {
            let route = &r.route;
            if route.upstreams.len() > 1 && route.split.override_from.is_none() {
                w.push(format!(
                    "routes[{i}].split.override_from: absent, so any client may pick its upstream \
                     with `{}`; list the networks that may",
                    route.override_header()
                ));
            }
            if route.rollout.is_some() && route.split.sticky == crate::config::Sticky::None {
                w.push(format!(
                    "routes[{i}].rollout: `split.sticky` is `none`, so a step moves sessions, not \
                     rooms, and the peers of one call can meet on both versions; make the split \
                     sticky by room (`query:room`, say)"
                ));
            }
            for (j, up) in route.upstreams.iter().enumerate() {
                let pooled = up.pool.endpoints.len() > 1 || up.pool.dns.is_some();
                if pooled && up.pool.health_check.is_none() {
                    w.push(format!(
                        "routes[{i}].upstreams[{j}].health_check: absent, so a dead endpoint is \
                         found only by failed handshakes (3 in a row eject it); add \
                         `health_check: {{}}` to check every endpoint every 5 s"
                    ));
                }
            }
        }
        if let Some(cluster) = &self.config.cluster {
            let global = self.config.routes.iter().any(|r| {
                let l = &r.limits;
                l.connections.as_ref().is_some_and(|c| c.scope.is_global())
                    || l.rooms.is_some_and(|c| c.scope.is_global())
                    || l.sessions.as_ref().is_some_and(|c| c.scope.is_global())
            });
            if !global {
                w.push(
                    "cluster: no limit has `scope: global`, so nothing is shared through Redis"
                        .to_owned(),
                );
            } else if cluster.on_error == crate::config::OnClusterError::Allow {
                w.push(format!(
                    "cluster.on_error: allow, so `scope: global` limits are not enforced while                      `{}` is down or slower than {:?} (counted in sigmesh_cluster_errors_total);                      `deny` refuses instead",
                    crate::config::Config::redacted(&self.config)
                        .cluster
                        .map(|c| c.redis)
                        .unwrap_or_default(),
                    cluster.timeout
                ));
            }
        }
        if let Some(turn) = &self.config.turn
            && turn.credentials_auth.is_none()
        {
            w.push(format!(
                "turn.credentials_auth: absent, so anyone may mint TURN credentials at `{}` \
                 for any `?user=`; name the app's auth endpoint (in Envoy: ext_authz on that path)",
                turn.credentials_path
            ));
        }
        if let Some(relay) = self.config.turn.as_ref().and_then(|t| t.relay.as_ref())
            && !relay.allow_peers.is_empty()
        {
            w.push(
                "turn.relay.allow_peers: these peers are reachable through the relay even where \
                 they are loopback, link-local or cloud metadata addresses"
                    .to_owned(),
            );
        }
        w
    }

    /// The route named `name`, with its index.
    pub fn route(&self, name: &str) -> Option<(usize, &CompiledRoute)> {
        self.routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.route.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_paths_like_nginx() {
        let t = Target::parse("ws://127.0.0.1:9001/ws").expect("url");
        assert_eq!(t.authority, "127.0.0.1:9001");
        assert_eq!(
            t.request_uri("ws", Some("/ws"), "/ws?room=a"),
            "ws://127.0.0.1:9001/ws?room=a"
        );
        assert_eq!(
            t.request_uri("ws", Some("/ws"), "/ws/x"),
            "ws://127.0.0.1:9001/ws/x"
        );
        assert_eq!(
            t.request_uri("ws", None, "/other?q=1"),
            "ws://127.0.0.1:9001/ws?q=1"
        );
        let v2 = Target::parse("ws://h/v2?a=1").expect("url");
        assert_eq!(v2.authority, "h:80");
        assert_eq!(
            v2.request_uri("ws", Some("/ws"), "/ws/abc?b=2"),
            "ws://h:80/v2/abc?a=1&b=2"
        );
        let bare = Target::parse("http://h:8000").expect("url");
        assert_eq!(
            bare.request_uri("http", Some("/"), "/x/y?z"),
            "http://h:8000/x/y?z"
        );
        assert!(Target::parse("ftp://h").is_err());
        assert!(Target::parse("ws://h:port").is_err());
        assert!(Target::parse("ws:///x").is_err());
        assert!(Target::parse("wss://h").expect("url").tls);
        assert_eq!(Target::parse("wss://h").expect("url").host(), "h");
        assert_eq!(Target::parse("wss://[::1]:9/x").expect("url").host(), "::1");
        assert_eq!(
            Target::parse("https://10.0.0.1:8443").expect("url").host(),
            "10.0.0.1"
        );
        let v6 = Target::parse("ws://[::1]/x").expect("url");
        assert_eq!(v6.authority, "[::1]:80");
        assert_eq!(
            Target::parse("ws://[::1]:9/").expect("url").authority,
            "[::1]:9"
        );
    }
}
