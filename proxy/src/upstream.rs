//! Upstream addresses: from a configured URL and the client's request path to the URI sigmesh
//! requests upstream.
//!
//! Path mapping follows nginx's `proxy_pass` with a URI: on a `path_prefix` route the matched
//! prefix is replaced by the upstream URL's path (`/ws` route, `ws://h/ws` upstream: `/ws/abc`
//! stays `/ws/abc`; `ws://h/v2` upstream: `/ws/abc` becomes `/v2/abc`). On a `path` route, or
//! when the URL has no path, the client's path goes through unchanged. The client's query is
//! always kept, after the URL's own query if it has one.

/// A parsed upstream URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `wss://` or `https://`.
    pub tls: bool,
    /// `host:port` (port defaulted from the scheme).
    pub authority: String,
    /// Path of the URL, empty if none was given (or `/`).
    pub base_path: String,
    /// Query of the URL, without `?`.
    pub base_query: Option<String>,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let (tls, default_port) = match uri.scheme_str() {
            Some("ws") | Some("http") => (false, 80),
            Some("wss") | Some("https") => (true, 443),
            _ => return Err(format!("{url}: scheme must be ws, wss, http or https")),
        };
        let auth = uri.authority().ok_or_else(|| format!("{url}: no host"))?;
        let authority = match auth.port_u16() {
            Some(_) => auth.as_str().to_owned(),
            None => format!("{}:{default_port}", auth.host()),
        };
        let path = uri.path();
        Ok(Target {
            tls,
            authority,
            base_path: if path == "/" {
                String::new()
            } else {
                path.to_owned()
            },
            base_query: uri.query().map(str::to_owned),
        })
    }

    /// The request URI for `client_path_and_query` on a route with `route_prefix`, with
    /// `scheme` (`ws` or `http`).
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
            (true, _) => {
                if path.is_empty() {
                    "/".to_owned()
                } else {
                    path.to_owned()
                }
            }
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
        assert!(Target::parse("wss://h").expect("url").tls);
    }
}
