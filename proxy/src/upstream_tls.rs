//! TLS to `wss://` and `https://` upstreams: rustls client configs with certificate
//! verification against the built-in roots (Mozilla's, `webpki-roots`) or the upstream's
//! `tls.ca`, and SNI from the URL's host or `tls.server_name`. ALPN offers `http/1.1` only
//! (the WebSocket upgrade and the forwarded requests are HTTP/1.1).
//!
//! Built with each config generation ([`crate::state::Runtime`]): a CA file that cannot be
//! read is a config error (in `sigmesh check` too), not a 502 at the first session.

use std::collections::HashMap;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use sigmesh_core::compiled::{CompileError, Compiled};

/// How one upstream is dialled over TLS.
#[derive(Clone)]
pub struct UpstreamTls {
    /// The client config (shared by every upstream with the same CA).
    pub config: Arc<ClientConfig>,
    /// SNI and the name the certificate must carry.
    pub server_name: ServerName<'static>,
    /// `server_name` was configured (`tls.server_name`), not taken from the URL.
    pub named: bool,
}

impl UpstreamTls {
    /// The same setup for an endpoint at `host`: its own name, unless `tls.server_name` fixes
    /// one for every endpoint.
    pub fn for_host(&self, host: &str) -> UpstreamTls {
        match ServerName::try_from(host.to_owned()) {
            Ok(server_name) if !self.named => UpstreamTls {
                server_name,
                ..self.clone()
            },
            _ => self.clone(),
        }
    }
}

/// The TLS of every upstream of a generation: `[route][upstream]`, `None` for plain ones.
pub type Table = Vec<Vec<Option<UpstreamTls>>>;

pub(crate) fn client_config(ca: Option<&str>) -> Result<Arc<ClientConfig>, String> {
    let roots = match ca {
        None => {
            let mut roots = RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            roots
        }
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
            crate::tls::ca_roots(&bytes).map_err(|why| format!("{path}: {why}"))?
        }
    };
    let mut config = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The table for `compiled`; every unusable CA file or name as a compile error.
pub fn table(compiled: &Compiled) -> Result<Table, Vec<CompileError>> {
    let mut configs: HashMap<Option<String>, Arc<ClientConfig>> = HashMap::new();
    let mut errors = Vec::new();
    let mut table = Vec::with_capacity(compiled.routes.len());
    for (ri, r) in compiled.routes.iter().enumerate() {
        let mut row = Vec::with_capacity(r.route.upstreams.len());
        for (ui, (up, target)) in r.route.upstreams.iter().zip(&r.targets).enumerate() {
            let Some(target) = target.as_ref().filter(|t| t.tls) else {
                row.push(None);
                continue;
            };
            let path = format!("routes[{ri}].upstreams[{ui}].tls");
            let ca = up.tls.as_ref().and_then(|t| t.ca.clone());
            let config = match configs.get(&ca) {
                Some(c) => c.clone(),
                None => match client_config(ca.as_deref()) {
                    Ok(c) => {
                        configs.insert(ca, c.clone());
                        c
                    }
                    Err(message) => {
                        errors.push(CompileError {
                            path: format!("{path}.ca"),
                            message,
                        });
                        row.push(None);
                        continue;
                    }
                },
            };
            let host = target.host();
            let named = up.tls.as_ref().and_then(|t| t.server_name.clone());
            let fixed = named.is_some();
            let name = named.unwrap_or_else(|| host.to_owned());
            match ServerName::try_from(name.clone()) {
                Ok(server_name) => row.push(Some(UpstreamTls {
                    config,
                    server_name,
                    named: fixed,
                })),
                Err(e) => {
                    errors.push(CompileError {
                        path: format!("{path}.server_name"),
                        message: format!("`{name}`: {e}"),
                    });
                    row.push(None);
                }
            }
        }
        table.push(row);
    }
    if errors.is_empty() {
        Ok(table)
    } else {
        Err(errors)
    }
}
