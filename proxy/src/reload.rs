//! Config reloads: on SIGHUP and when the file changes (checked every second by content, so
//! editors that replace the file and ConfigMap symlink swaps are both seen).
//!
//! The new config applies to new connections; live sessions keep the route generation they
//! started with. An invalid file is refused, logged and counted in
//! `sigmesh_config_reloads_total{result="error"}`; the old config stays.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::state::{Runtime, Shared};

/// How often the file is looked at.
pub const POLL: Duration = Duration::from_secs(1);

/// Watches `shared.config_path` until the drain starts.
pub async fn watch(shared: Arc<Shared>) {
    let Some(path) = shared.config_path().map(Path::to_path_buf) else {
        return;
    };
    let mut last = std::fs::read(&path).ok();
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let hup_recv = async {
            match hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hup_recv = std::future::pending::<Option<()>>();
        let forced = tokio::select! {
            _ = tick.tick() => false,
            _ = hup_recv => true,
            _ = shared.drained() => return,
        };
        let current = tokio::fs::read(&path).await.ok();
        if !forced && current == last {
            continue;
        }
        if current.is_none() {
            tracing::warn!(path = %path.display(), "config file unreadable; keeping the config in force");
            shared.metrics().reload(false);
            last = current;
            continue;
        }
        last = current.clone();
        let text = String::from_utf8_lossy(current.as_deref().unwrap_or_default()).into_owned();
        apply(&shared, &path, &text);
    }
}

/// Validates and applies `text`; returns whether it was applied.
pub fn apply(shared: &Shared, path: &Path, text: &str) -> bool {
    match sigmesh_core::config::load(text) {
        Ok(config) => {
            let old = shared.runtime();
            if config.listen != old.config().listen || config.admin != old.config().admin {
                tracing::warn!("listen and admin addresses change only on restart");
            }
            if config.tracing != old.config().tracing {
                tracing::warn!("`tracing:` changes apply only on restart");
            }
            if config.tls.is_some() != old.config().tls.is_some() {
                tracing::warn!("turning `tls:` on or off applies only on restart");
            }
            // The certificates are read again (a SIGHUP is the usual way to ask).
            if let (Some(state), Some(tls)) = (shared.tls(), &config.tls) {
                state.refresh(tls, true);
            }
            match Runtime::new(config, Some(&old)) {
                Ok(rt) => {
                    for w in rt.compiled().warnings() {
                        tracing::warn!("{w}");
                    }
                    let relay =
                        |r: &Runtime| r.config().turn.as_ref().and_then(|t| t.relay.clone());
                    shared
                        .turn()
                        .reconfigure(relay(&old).as_ref(), relay(&rt).as_ref());
                    shared.replace_runtime(rt);
                    shared.metrics().reload(true);
                    tracing::info!(path = %path.display(), "config reloaded");
                    true
                }
                Err(errors) => {
                    shared.metrics().reload(false);
                    let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
                    tracing::error!(path = %path.display(), errors = ?errors, "config refused; keeping the config in force");
                    false
                }
            }
        }
        Err(errors) => {
            shared.metrics().reload(false);
            tracing::error!(path = %path.display(), "config refused; keeping the config in force:\n{errors}");
            false
        }
    }
}

/// Looks at `tls:`'s certificate files every [`crate::tls::POLL`] until the drain starts
/// ([`crate::tls::TlsState::refresh`]: by content, so a Secret's symlink swap is seen).
pub async fn watch_certificates(shared: Arc<Shared>) {
    let Some(tls) = shared.tls().cloned() else {
        return;
    };
    let mut tick = tokio::time::interval(crate::tls::POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.drained() => return,
        }
        if let Some(section) = shared.runtime().config().tls.clone() {
            let state = tls.clone();
            let _ = tokio::task::spawn_blocking(move || state.refresh(&section, false)).await;
        }
    }
}

/// The task of the pools' active health checks and DNS refreshes ([`crate::pool::tick`]),
/// for the generation in force, until the drain starts; it owns every check it starts.
pub async fn supervise_pools(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(crate::pool::TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut work = tokio::task::JoinSet::new();
    let mut ticks = 0u32;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.drained() => return,
        }
        crate::pool::tick(shared.runtime().pools(), shared.metrics(), &mut work, ticks);
        ticks = ticks.wrapping_add(1);
    }
}
