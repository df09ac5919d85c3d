//! Property tests of the route table against a naive, allocating reference matcher.

use std::collections::BTreeMap;

use proptest::prelude::*;
use sigmesh_core::config::{Limits, Match, Route, Split, Upstream};
use sigmesh_core::route::{RequestHead, RouteTable};

fn route(i: usize, m: Match) -> Route {
    Route {
        name: format!("r{i}"),
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

/// Straight from the spec, allocating freely.
fn reference(
    routes: &[Route],
    host: Option<&str>,
    path: &str,
    headers: &[(String, String)],
) -> Option<usize> {
    let host = host.map(|h| {
        let h = h.to_lowercase();
        let h = match h.rsplit_once(':') {
            Some((a, p)) if p.chars().all(|c| c.is_ascii_digit()) => a.to_owned(),
            _ => h,
        };
        h.trim_end_matches('.').to_owned()
    });
    routes.iter().position(|r| {
        let m = &r.matcher;
        let path_ok = match (&m.path, &m.path_prefix) {
            (Some(p), _) => path == p,
            (None, Some(p)) => path.starts_with(p.as_str()),
            (None, None) => true,
        };
        let host_ok = match (&m.host, &host) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(want), Some(h)) => match want.to_lowercase().strip_prefix("*.") {
                Some(suffix) => h.ends_with(&format!(".{suffix}")),
                None => *h == want.to_lowercase(),
            },
        };
        let headers_ok = m.headers.iter().all(|(n, v)| {
            headers
                .iter()
                .find(|(hn, _)| hn.to_lowercase() == *n)
                .map(|(_, hv)| hv)
                == Some(v)
        });
        path_ok && host_ok && headers_ok
    })
}

fn matcher() -> impl Strategy<Value = Match> {
    (
        prop::option::of("/[ab]{0,2}"),
        prop::option::of("/[ab]{0,2}"),
        prop::option::of(prop_oneof![
            "[aB]{1,2}\\.(ex|EX)\\.com",
            "\\*\\.(ex|EX)\\.com",
            "\\*\\.[ab]\\.ex\\.com"
        ]),
        prop::collection::btree_map("x-[ab]", "[ab]", 0..2),
    )
        .prop_map(
            |(path, path_prefix, host, headers): (_, _, _, BTreeMap<String, String>)| {
                // Validation gives `path` or `path_prefix`, not both.
                let path_prefix = if path.is_some() { None } else { path_prefix };
                Match {
                    path,
                    path_prefix,
                    host,
                    headers,
                }
            },
        )
}

proptest! {
    #[test]
    fn find_is_the_reference(
        matchers in prop::collection::vec(matcher(), 0..8),
        host in prop::option::of("([aAbB]{1,2}\\.){0,2}(ex|Ex)\\.com\\.?(:[0-9]{1,4})?"),
        path in "/[ab]{0,3}",
        headers in prop::collection::vec(("(x|X)-[ab]", "[ab]"), 0..3),
    ) {
        let routes: Vec<Route> = matchers.into_iter().enumerate().map(|(i, m)| route(i, m)).collect();
        let table = RouteTable::new(&routes);
        let got = table.find(&RequestHead { host: host.as_deref(), path: &path, headers: &headers });
        prop_assert_eq!(got, reference(&routes, host.as_deref(), &path, &headers));
    }

    #[test]
    fn arbitrary_hosts_never_panic(host in "\\PC{0,20}", path in "\\PC{0,10}") {
        let routes = vec![
            route(0, Match { host: Some("*.example.com".into()), ..Match::default() }),
            route(1, Match { host: Some("[::1]".into()), ..Match::default() }),
        ];
        let _ = RouteTable::new(&routes).find(&RequestHead { host: Some(&host), path: &path, headers: &[("a", "b")] });
    }
}
