//! Starting and stopping the proxy.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use sigmesh_core::compiled::CompileError;
use sigmesh_core::config::Config;
use tokio::net::TcpListener;

use crate::state::{Runtime, Shared, Tuning};

/// Why the proxy could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A listener could not bind (exit code 2).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The config is valid but this build cannot serve it (exit code 1).
    #[error("{}", Lines(.0))]
    Compile(Vec<CompileError>),
    /// The config does not load (exit code 1).
    #[error("{0}")]
    Config(#[from] sigmesh_core::config::ConfigErrors),
    /// The TLS certificates or keys are not usable (exit code 1).
    #[error("{0}")]
    Tls(#[from] crate::tls::TlsError),
}

impl RunError {
    /// The process exit code for it (the contract's: 1 bad config, 2 runtime failure).
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Bind { .. } => 2,
            RunError::Compile(_) | RunError::Config(_) | RunError::Tls(_) => 1,
        }
    }
}

/// Compile errors, one per line.
struct Lines<'a>(&'a [CompileError]);

impl std::fmt::Display for Lines<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Whether this build can serve `config` (`sigmesh check` runs this after the schema check);
/// the warnings when it can.
pub fn check(config: &Config) -> Result<Vec<String>, Vec<CompileError>> {
    Runtime::new(config.clone(), None).map(|r| r.compiled().warnings())
}

/// Whether the TLS files of `config` make a usable set (`sigmesh check` reads them too).
pub fn check_tls(config: &Config) -> Result<(), crate::tls::TlsError> {
    match &config.tls {
        Some(tls) => crate::tls::build(tls).map(|_| ()),
        None => Ok(()),
    }
}

/// A running proxy: its bound addresses and the handle to stop it.
pub struct Proxy {
    pub shared: Arc<Shared>,
    pub listen: SocketAddr,
    pub admin: Option<SocketAddr>,
    tasks: tokio::task::JoinSet<()>,
}

impl Proxy {
    /// Binds the listeners and starts serving. `config_path` enables reloads.
    pub async fn start(config: Config, config_path: Option<PathBuf>) -> Result<Proxy, RunError> {
        Self::start_with(config, config_path, Tuning::default()).await
    }

    /// [`Proxy::start`] with non-default timeouts.
    pub async fn start_with(
        config: Config,
        config_path: Option<PathBuf>,
        tuning: Tuning,
    ) -> Result<Proxy, RunError> {
        let runtime = Runtime::new(config, None).map_err(RunError::Compile)?;
        for w in runtime.compiled().warnings() {
            tracing::warn!("{w}");
        }
        let config = runtime.config().clone();
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| RunError::Bind {
                addr: config.listen,
                source,
            })?;
        let admin_listener = match config.admin {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|source| RunError::Bind { addr, source })?,
            ),
            None => None,
        };
        // `turn.relay`: UDP and TCP on one port, bound before anything starts.
        let turn_relay = match config
            .turn
            .as_ref()
            .and_then(|t| Some((t.relay.clone()?, t.secret.clone())))
        {
            Some((relay, secret)) => Some((
                crate::turn_relay::bind(relay.listen)
                    .await
                    .map_err(|source| RunError::Bind {
                        addr: relay.listen,
                        source,
                    })?,
                relay,
                secret,
            )),
            None => None,
        };
        let shared = Shared::new(runtime, config_path, tuning);
        if let Some(tls) = &config.tls {
            let state = crate::tls::TlsState::new(tls, shared.metrics().clone())?;
            shared.set_tls(Arc::new(state));
        }
        let listen = listener.local_addr().map_err(|source| RunError::Bind {
            addr: config.listen,
            source,
        })?;
        let admin = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(crate::listener::serve(shared.clone(), listener));
        if let Some(l) = admin_listener {
            tasks.spawn(crate::admin::serve(shared.clone(), l));
        }
        tasks.spawn(crate::reload::watch(shared.clone()));
        tasks.spawn(crate::reload::watch_certificates(shared.clone()));
        tasks.spawn(crate::reload::supervise_pools(shared.clone()));
        tasks.spawn(crate::rollout_run::drive(shared.clone()));
        if let Some((bound, relay, secret)) = turn_relay {
            tasks.spawn(crate::turn_relay::serve(
                shared.turn().clone(),
                shared.drain_token(),
                bound,
                relay,
                Some(secret),
            ));
        }
        Ok(Proxy {
            shared,
            listen,
            admin,
            tasks,
        })
    }

    /// Drains: readiness 503, listener closed, sessions closed with 1001; returns when no
    /// session is left or at `drain_timeout`. Then stops every task.
    pub async fn drain(mut self) {
        let timeout = self.shared.runtime().config().shutdown.drain_timeout;
        self.shared.start_drain();
        let sessions = self.shared.sessions();
        tracing::info!(sessions = sessions.len(), ?timeout, "draining");
        if tokio::time::timeout(timeout, sessions.wait_empty())
            .await
            .is_err()
        {
            tracing::warn!(left = sessions.len(), "drain timeout; closing the rest");
        }
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        // The sessions' spans have ended: export what is queued.
        self.shared.telemetry().shutdown().await;
    }
}

/// Runs until SIGTERM or SIGINT, then drains.
pub async fn run(config: Config, config_path: Option<PathBuf>) -> Result<(), RunError> {
    let proxy = Proxy::start(config, config_path).await?;
    tracing::info!(listen = %proxy.listen, admin = ?proxy.admin, "sigmesh running");
    shutdown_signal().await;
    proxy.drain().await;
    tracing::info!("stopped");
    Ok(())
}

/// SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
