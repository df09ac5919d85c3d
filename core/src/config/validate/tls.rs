//! The `tls` section: certificates chosen by SNI, ALPN, the oldest version, client certificates.
//! Paths only: the front end reads the files (core does no I/O) and reports what is in them.

use super::super::tree::{Node, NodeKind};
use super::super::{Alpn, CertificatePair, Tls, TlsVersion};
use super::fields::fields;
use super::scalars::{required_string, string, string_list};
use super::{Validator, index};

const TLS: &[&str] = &["certificates", "alpn", "min_version", "client_ca"];
const PAIR: &[&str] = &["cert", "key"];

/// Most certificates one listener may hold (each handshake looks at them in order).
pub const MAX_CERTIFICATES: usize = 64;

pub(super) fn tls(cx: &mut Validator, node: &Node, path: &str) -> Option<Tls> {
    let f = fields(cx, node, path, TLS, &[])?;
    let mut certificates = Vec::new();
    let cp = f.path("certificates");
    match f.value("certificates").map(|n| (n, &n.kind)) {
        Some((_, NodeKind::Seq(items))) => {
            for (i, item) in items.iter().enumerate() {
                let p = index(&cp, i);
                let Some(pair) = fields(cx, item, &p, PAIR, &[]) else {
                    continue;
                };
                let cert = required_string(cx, &pair, "cert", "`cert` (a PEM certificate chain)");
                let key = required_string(cx, &pair, "key", "`key` (a PEM private key)");
                if let (Some(cert), Some(key)) = (cert, key) {
                    certificates.push(CertificatePair { cert, key });
                }
            }
            if items.is_empty() {
                cx.err(
                    &cp,
                    f.key_line("certificates"),
                    "at least one certificate is needed",
                );
            } else if items.len() > MAX_CERTIFICATES {
                cx.err(
                    &cp,
                    f.key_line("certificates"),
                    format!("at most {MAX_CERTIFICATES} certificates"),
                );
            }
        }
        Some((n, _)) => cx.err(
            &cp,
            n.line,
            format!("expected a list of {{ cert, key }}, found {}", n.describe()),
        ),
        None => cx.err(
            &cp,
            f.key_line("certificates"),
            "missing `certificates`: a list of { cert: PEM, key: PEM }",
        ),
    }
    let mut alpn = vec![Alpn::H2, Alpn::Http11];
    if let Some(n) = f.value("alpn") {
        let p = f.path("alpn");
        alpn.clear();
        for (i, (name, line)) in string_list(cx, n, &p).into_iter().enumerate() {
            let a = match name.as_str() {
                "h2" => Alpn::H2,
                "http/1.1" => Alpn::Http11,
                other => {
                    cx.err(
                        &index(&p, i),
                        line,
                        format!(
                            "`{other}` is not a protocol sigmesh serves: use `h2` or `http/1.1`"
                        ),
                    );
                    continue;
                }
            };
            if alpn.contains(&a) {
                cx.err(&index(&p, i), line, format!("`{name}` is listed twice"));
            } else {
                alpn.push(a);
            }
        }
        if alpn.is_empty() {
            cx.err(&p, n.line, "at least one of `h2` and `http/1.1`");
            alpn = vec![Alpn::Http11];
        }
    }
    let mut min_version = TlsVersion::V1_2;
    if let Some(n) = f.value("min_version") {
        let p = f.path("min_version");
        match string(cx, n, &p).as_deref() {
            Some("1.2") => {}
            Some("1.3") => min_version = TlsVersion::V1_3,
            Some(other) => cx.err(
                &p,
                n.line,
                format!("`{other}`: use \"1.2\" or \"1.3\" (older versions are not offered)"),
            ),
            None => {}
        }
    }
    let client_ca = f
        .value("client_ca")
        .and_then(|n| string(cx, n, &f.path("client_ca")))
        .filter(|s| !s.trim().is_empty());
    Some(Tls {
        certificates,
        alpn,
        min_version,
        client_ca,
    })
}
