//! The rollouts of the config in force (`routes[].rollout`), walked by one task.
//!
//! Core's [`sigmesh_core::rollout::Rollout`] decides; this module feeds it (sessions that
//! opened and ended, failed handshakes, from the session and handshake paths), ticks it every
//! [`TICK`], and applies what it says: new weights on the route in force (as
//! `PUT /routes/NAME/weights` would), and on an abort a paced drain of the canary's live
//! sessions with 1012 (as `POST /routes/NAME/upstreams/UP/drain` would).
//!
//! A rollout lives across reloads that keep it (same route name, same `rollout:` and the same
//! two upstreams); a reload that changes it starts it over. Its weights are put on every new
//! config generation.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use sigmesh_core::config::Config;
use sigmesh_core::label::CloseClass;
use sigmesh_core::rollout::{Action, Phase, Rollout, View};

use crate::clock;
use crate::state::Shared;

/// How often rollouts are walked.
pub const TICK: Duration = Duration::from_millis(200);

/// Every route's rollout, by route name.
#[derive(Default)]
pub struct Rollouts {
    map: Mutex<HashMap<String, Rollout>>,
}

/// Why an admin call on a rollout was refused.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// No such route, or it has no rollout.
    #[error("route `{0}` has no rollout")]
    None(String),
    /// The verb does not apply in this state.
    #[error("the rollout of `{0}` is {1}")]
    State(String, &'static str),
}

fn phase_str(p: Phase) -> &'static str {
    match p {
        Phase::Running => "running",
        Phase::Paused => "paused",
        Phase::Aborted => "aborted",
        Phase::Done => "done",
    }
}

impl Rollouts {
    /// Keeps the rollouts `config` keeps, starts new ones, drops the others.
    pub fn sync(&self, config: &Config) {
        let now = clock::now();
        let mut map = self.lock();
        let mut next = HashMap::new();
        for route in &config.routes {
            let Some(cfg) = &route.rollout else { continue };
            let kept = map
                .remove(&route.name)
                .filter(|r| r.config() == cfg)
                .unwrap_or_else(|| Rollout::new(cfg, now));
            next.insert(route.name.clone(), kept);
        }
        *map = next;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Rollout>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A session of `route` on `upstream` opened.
    pub fn session_opened(&self, route: &str, upstream: &str) {
        let mut map = self.lock();
        if let Some(r) = map.get_mut(route)
            && let Some(side) = r.side(upstream)
        {
            r.session_opened(side);
        }
    }

    /// A session of `route` on `upstream` ended.
    pub fn session_ended(
        &self,
        route: &str,
        upstream: &str,
        class: CloseClass,
        upstream_error: bool,
        setup: Option<Duration>,
    ) {
        let mut map = self.lock();
        if let Some(r) = map.get_mut(route)
            && let Some(side) = r.side(upstream)
        {
            r.session_ended(side, class.is_abnormal(), upstream_error, setup);
        }
    }

    /// A handshake of `route` to `upstream` failed.
    pub fn handshake_failed(&self, route: &str, upstream: &str) {
        let mut map = self.lock();
        if let Some(r) = map.get_mut(route)
            && let Some(side) = r.side(upstream)
        {
            r.handshake_failed(side);
        }
    }

    /// `GET /routes/NAME/rollout`.
    pub fn view(&self, route: &str) -> Option<View> {
        self.lock().get(route).map(|r| r.view(route, clock::now()))
    }

    /// `GET /rollouts`, by route name.
    pub fn views(&self) -> Vec<View> {
        let now = clock::now();
        let map = self.lock();
        let mut v: Vec<View> = map.iter().map(|(k, r)| r.view(k, now)).collect();
        v.sort_by(|a, b| a.route.cmp(&b.route));
        v
    }

    /// Pauses `route`'s rollout (an operator, or weights set by hand).
    pub fn pause(&self, route: &str, reason: &str) -> Result<(), RolloutError> {
        let mut map = self.lock();
        let r = map
            .get_mut(route)
            .ok_or_else(|| RolloutError::None(route.to_owned()))?;
        if r.pause(clock::now(), reason) {
            Ok(())
        } else {
            Err(RolloutError::State(route.to_owned(), phase_str(r.phase())))
        }
    }

    /// `resume`, `abort`, `promote` on `route`'s rollout; the actions are applied.
    pub fn act(&self, shared: &Shared, route: &str, verb: &str) -> Result<(), RolloutError> {
        let actions = {
            let mut map = self.lock();
            let r = map
                .get_mut(route)
                .ok_or_else(|| RolloutError::None(route.to_owned()))?;
            let now = clock::now();
            let before = r.phase();
            let actions = match verb {
                "resume" => r.resume(now),
                "abort" => r.abort(now, "aborted by hand"),
                _ => r.promote(now),
            };
            if r.phase() == before {
                return Err(RolloutError::State(route.to_owned(), phase_str(before)));
            }
            if r.phase() == Phase::Aborted {
                count_abort(shared, route, r);
            }
            actions
        };
        apply(shared, route, &actions);
        Ok(())
    }

    /// Walks every rollout once and applies what they say.
    pub fn tick(&self, shared: &Shared) {
        let now = clock::now();
        let mut todo: Vec<(String, Vec<Action>)> = Vec::new();
        {
            let mut map = self.lock();
            for (route, r) in map.iter_mut() {
                let before = r.phase();
                let actions = r.tick(now);
                if before != Phase::Aborted && r.phase() == Phase::Aborted {
                    count_abort(shared, route, r);
                }
                shared
                    .metrics()
                    .rollout_step
                    .get_or_create(&crate::metrics::RouteLabel {
                        route: route.clone(),
                    })
                    .set(if r.phase() == Phase::Aborted {
                        0
                    } else {
                        r.step() as i64
                    });
                if !actions.is_empty() {
                    todo.push((route.clone(), actions));
                }
            }
        }
        for (route, actions) in todo {
            apply(shared, &route, &actions);
        }
    }

    /// Puts every rollout's weights on the config generation in force (after a reload).
    pub fn reapply(&self, shared: &Shared) {
        let weights: Vec<(String, Action)> = self
            .lock()
            .iter()
            .filter(|(_, r)| r.step() > 0)
            .map(|(k, r)| {
                let (baseline, canary) = r.weights();
                (k.clone(), Action::Weights { baseline, canary })
            })
            .collect();
        for (route, a) in weights {
            apply(shared, &route, std::slice::from_ref(&a));
        }
    }
}

fn count_abort(shared: &Shared, route: &str, r: &Rollout) {
    tracing::warn!(route, reason = ?r.view(route, clock::now()).reason, "rollout aborted");
    shared
        .metrics()
        .rollout_aborts
        .get_or_create(&crate::metrics::AbortLabels {
            route: route.to_owned(),
            reason: r.abort_kind().unwrap_or("manual"),
        })
        .inc();
}

fn apply(shared: &Shared, route: &str, actions: &[Action]) {
    let runtime = shared.runtime();
    let Some((_, compiled)) = runtime.compiled().route(route) else {
        return;
    };
    let Some(cfg) = compiled.route.rollout.as_ref() else {
        return;
    };
    for a in actions {
        match a {
            Action::Weights { baseline, canary } => {
                let w = [
                    (cfg.baseline.clone(), *baseline),
                    (cfg.canary.clone(), *canary),
                ]
                .into_iter()
                .collect();
                match runtime.reweight(route, &w) {
                    Ok(w) => tracing::info!(route, weights = ?w, "rollout weights"),
                    Err(e) => tracing::warn!(route, error = %e, "rollout weights refused"),
                }
            }
            Action::DrainCanary(spread) => {
                match crate::admin::start_upstream_drain(
                    shared,
                    route,
                    &cfg.canary,
                    *spread,
                    sigmesh_core::frame::close_code::RESTART,
                ) {
                    Ok(n) => tracing::info!(
                        route,
                        sessions = n,
                        ?spread,
                        "rollout abort: canary drained"
                    ),
                    Err(e) => tracing::warn!(route, error = %e, "rollout abort: no drain"),
                }
            }
        }
    }
}

/// How often replicas look at each other's aborts in `cluster.redis` (every this many ticks).
const SHARE_EVERY: u32 = 5;

/// A rollout's identity across replicas: its route's name and its `rollout:` keys, hashed
/// (FNV-1a 64 of their JSON), so a new rollout of the same route is not the old one.
pub fn fingerprint(config: &sigmesh_core::config::Rollout) -> String {
    let text = serde_json::to_string(config).unwrap_or_default();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

impl Rollouts {
    /// `(route, fingerprint, Some(reason) when aborted here)` of every rollout not done.
    fn shareable(&self) -> Vec<(String, String, Option<String>)> {
        let now = clock::now();
        self.lock()
            .iter()
            .filter(|(_, r)| r.phase() != Phase::Done)
            .map(|(k, r)| {
                let reason = (r.phase() == Phase::Aborted)
                    .then(|| r.view(k, now).reason.unwrap_or_default());
                (k.clone(), fingerprint(r.config()), reason)
            })
            .collect()
    }

    /// Another replica aborted `route`'s rollout `fingerprint`: abort here too.
    fn aborted_elsewhere(&self, shared: &Shared, route: &str, fingerprint_: &str, reason: &str) {
        let actions = {
            let mut map = self.lock();
            let Some(r) = map.get_mut(route) else { return };
            if fingerprint(r.config()) != fingerprint_
                || !matches!(r.phase(), Phase::Running | Phase::Paused)
            {
                return;
            }
            let actions = r.abort(
                clock::now(),
                &format!("{reason} (judged by another replica)"),
            );
            count_abort(shared, route, r);
            actions
        };
        apply(shared, route, &actions);
    }
}

/// With `cluster.redis`, replicas share aborts: one that aborts a rollout publishes it, and
/// the others abort the same rollout (same route, same `rollout:`) within [`SHARE_EVERY`]
/// ticks. A replica that starts later sees it too, and does not roll the canary out again.
async fn share(shared: &Shared, published: &mut std::collections::HashSet<String>) {
    let Some(cluster) = shared.cluster() else {
        return;
    };
    for (route, fp, aborted) in shared.rollouts().shareable() {
        match aborted {
            Some(reason) => {
                if !published.contains(&fp) && cluster.publish_abort(&route, &fp, &reason).await {
                    published.insert(fp);
                }
            }
            None => {
                if let Some(reason) = cluster.abort_of(&route, &fp).await {
                    published.insert(fp.clone());
                    shared
                        .rollouts()
                        .aborted_elsewhere(shared, &route, &fp, &reason);
                }
            }
        }
    }
}

/// Walks the rollouts every [`TICK`] until the drain starts.
pub async fn drive(shared: std::sync::Arc<Shared>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u32 = 0;
    let mut published = std::collections::HashSet::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                shared.rollouts().tick(&shared);
                n = n.wrapping_add(1);
                if n % SHARE_EVERY == 0 {
                    share(&shared, &mut published).await;
                }
            }
            _ = shared.drained() => return,
        }
    }
}
