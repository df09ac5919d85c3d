//! TLS on `listen` (`tls:`): rustls with the ring provider.
//!
//! - **Certificates** are PEM chains and keys (PKCS#8, PKCS#1 RSA or SEC1 EC), chosen by the
//!   client's SNI among `tls.certificates` (the first whose names cover it, else the first).
//! - **ALPN** offers `tls.alpn` (default `h2, http/1.1`); TLS 1.2 and 1.3, or 1.3 only.
//! - **Client certificates** are required when `tls.client_ca` names a CA file.
//! - **Reload**: the files are read again every second and compared by content (a
//!   cert-manager rotation swaps a Secret's symlink and may keep the mtime), on SIGHUP, and on
//!   a config reload that changes `tls:`. A good new set goes to new handshakes at once (live
//!   sessions keep theirs); a bad one is refused, logged and counted in
//!   `sigmesh_config_reloads_total{result="error"}`, and the old one stays.
//! - **Handshakes** must finish within [`crate::state::Tuning::tls_handshake_timeout`]; a failed
//!   one is counted in `sigmesh_tls_handshake_errors_total` and logged at most once a second.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use sigmesh_core::config::{Tls, TlsVersion};
use tokio_rustls::TlsAcceptor;

use crate::metrics::Metrics;

/// How often the certificate files are looked at.
pub const POLL: Duration = Duration::from_secs(1);

/// Why a TLS setup could not be built from its files.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read, or holds nothing usable.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: String,
        /// What is wrong with it.
        why: String,
    },
    /// rustls refused the setup.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
}

fn file_error(path: &str, why: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        why: why.into(),
    }
}

/// The certificates, picked by SNI: the first that covers the name, else the first.
#[derive(Debug)]
struct BySni {
    certs: Vec<Arc<CertifiedKey>>,
    /// Each exact (not wildcard) DNS name of the certificates, lower-case → the first
    /// certificate naming it: a handshake for a listed name parses no certificate.
    exact: HashMap<String, usize>,
}

impl BySni {
    fn new(certs: Vec<Arc<CertifiedKey>>) -> BySni {
        let mut exact = HashMap::new();
        for (i, ck) in certs.iter().enumerate() {
            let Ok(der) = ck.end_entity_cert() else {
                continue;
            };
            let Ok(ee) = webpki::EndEntityCert::try_from(der) else {
                continue;
            };
            for name in ee.valid_dns_names().filter(|n| !n.starts_with('*')) {
                exact.entry(name.to_ascii_lowercase()).or_insert(i);
            }
        }
        BySni { certs, exact }
    }
}

impl ResolvesServerCert for BySni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(sni) = hello.server_name() else {
            return self.certs.first().cloned();
        };
        // rustls hands the name over lower-cased; any other spelling takes the slow path.
        if let Some(&i) = self.exact.get(sni) {
            return self.certs.get(i).cloned();
        }
        // Wildcards, or a name no certificate has: ask each certificate.
        if let Ok(name) = ServerName::try_from(sni) {
            for ck in &self.certs {
                let covers = ck.end_entity_cert().ok().is_some_and(|der| {
                    webpki::EndEntityCert::try_from(der)
                        .is_ok_and(|ee| ee.verify_is_valid_for_subject_name(&name).is_ok())
                });
                if covers {
                    return Some(ck.clone());
                }
            }
        }
        self.certs.first().cloned()
    }
}

/// The crypto provider of every TLS setup here (ring).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The CA certificates of a PEM file's contents (for `client_ca` and an upstream's `tls.ca`).
pub(crate) fn ca_roots(pem: &[u8]) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem) {
        let c = c.map_err(|e| format!("bad PEM: {e}"))?;
        roots
            .add(c)
            .map_err(|e| format!("not a CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no CERTIFICATE in it".to_owned());
    }
    Ok(roots)
}

/// Every file a `tls:` section names, path and contents.
type Files = Vec<(String, Vec<u8>)>;

/// Reads every file `tls` names; a fingerprint of their contents.
fn read_all(tls: &Tls) -> Result<(Files, u64), TlsError> {
    let mut paths: Vec<&str> = Vec::new();
    for p in &tls.certificates {
        paths.push(&p.cert);
        paths.push(&p.key);
    }
    if let Some(ca) = &tls.client_ca {
        paths.push(ca);
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let mut out = Vec::with_capacity(paths.len());
    for p in paths {
        let bytes = std::fs::read(p).map_err(|e| file_error(p, e.to_string()))?;
        p.hash(&mut h);
        bytes.hash(&mut h);
        out.push((p.to_owned(), bytes));
    }
    Ok((out, h.finish()))
}

/// The fingerprint of the files as they are now (`None` when one cannot be read).
fn fingerprint(tls: &Tls) -> Option<u64> {
    read_all(tls).ok().map(|(_, f)| f)
}

/// The rustls server config of `tls`, from its files, and the files' fingerprint.
pub fn build(tls: &Tls) -> Result<(rustls::ServerConfig, u64), TlsError> {
    let (files, print) = read_all(tls)?;
    let bytes = |path: &str| -> &[u8] {
        files
            .iter()
            .find(|(p, _)| p == path)
            .map_or(&[][..], |(_, b)| b.as_slice())
    };
    let provider = provider();
    let mut certs = Vec::with_capacity(tls.certificates.len());
    for pair in &tls.certificates {
        let chain = CertificateDer::pem_slice_iter(bytes(&pair.cert))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| file_error(&pair.cert, format!("bad PEM: {e}")))?;
        if chain.is_empty() {
            return Err(file_error(&pair.cert, "no CERTIFICATE in it"));
        }
        let key = PrivateKeyDer::from_pem_slice(bytes(&pair.key)).map_err(|e| {
            file_error(
                &pair.key,
                format!("no private key (PKCS#8, RSA or EC PEM): {e}"),
            )
        })?;
        let ck = CertifiedKey::from_der(chain, key, &provider)
            .map_err(|e| file_error(&pair.key, format!("does not go with {}: {e}", pair.cert)))?;
        certs.push(Arc::new(ck));
    }
    let versions: &[&'static rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let roots = ca_roots(bytes(ca)).map_err(|why| file_error(ca, why))?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| file_error(ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(Arc::new(BySni::new(certs)));
    config.alpn_protocols = tls.alpn.iter().map(|a| a.id().to_vec()).collect();
    Ok((config, print))
}

/// The listener's TLS: the acceptor in force, and what it was built from.
pub struct TlsState {
    acceptor: ArcSwap<TlsAcceptor>,
    /// The `tls:` section and the fingerprint of its files as last seen (good or bad; `None`:
    /// a file could not be read).
    current: Mutex<(Tls, Option<u64>)>,
    /// Unix seconds of the last handshake error logged.
    last_log: AtomicU64,
    metrics: Arc<Metrics>,
}

impl TlsState {
    /// Built from `tls`'s files; fails when they are not a usable set.
    pub fn new(tls: &Tls, metrics: Arc<Metrics>) -> Result<TlsState, TlsError> {
        let (config, print) = build(tls)?;
        Ok(TlsState {
            acceptor: ArcSwap::from_pointee(TlsAcceptor::from(Arc::new(config))),
            current: Mutex::new((tls.clone(), Some(print))),
            last_log: AtomicU64::new(0),
            metrics,
        })
    }

    /// The acceptor for the next handshake.
    pub fn acceptor(&self) -> Arc<TlsAcceptor> {
        self.acceptor.load_full()
    }

    /// Builds again from `tls` when it or its files changed since last seen (or always, when
    /// `forced`): a good set is put in force, a bad one is logged and counted once, and the
    /// one in force stays. Whether a new set was put in force.
    pub fn refresh(&self, tls: &Tls, forced: bool) -> bool {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let print = fingerprint(tls);
        if !forced && cur.0 == *tls && print == cur.1 {
            return false;
        }
        *cur = (tls.clone(), print);
        match build(tls) {
            Ok((config, _)) => {
                self.acceptor
                    .store(Arc::new(TlsAcceptor::from(Arc::new(config))));
                self.metrics.reload(true);
                tracing::info!("TLS certificates loaded; new handshakes use them");
                true
            }
            Err(e) => {
                self.metrics.reload(false);
                tracing::error!(error = %e, "TLS certificates refused; the ones in force stay");
                false
            }
        }
    }

    /// A failed handshake: counted, and logged at most once a second.
    pub fn handshake_failed(&self, client: std::net::SocketAddr, error: &dyn std::fmt::Display) {
        self.metrics.tls_handshake_errors.inc();
        let now = crate::clock::unix_secs();
        let last = self.last_log.load(Ordering::Relaxed);
        if now > last
            && self
                .last_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(%client, error = %error, "TLS handshake failed (logged at most once a second; all are counted in sigmesh_tls_handshake_errors_total)");
        }
    }
}
