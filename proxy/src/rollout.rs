//! The rollouts of the config in force (`routes[].rollout`), by route name.
//!
//! Core's [`sigmesh_core::rollout::Rollout`] decides; this module feeds it (sessions that
//! opened and ended, failed handshakes, from the session and handshake paths) and returns what
//! it says as [`Change`]s, which `crate::rollout_run` applies: new weights on the route in
//! force (as `PUT /routes/NAME/weights` would), and on an abort a paced drain of the canary's
//! live sessions with 1012 (as `POST /routes/NAME/upstreams/UP/drain` would).
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

    /// `resume`, `abort`, `promote` on `route`'s rollout: what to apply.
    pub fn act(&self, route: &str, verb: &str) -> Result<Change, RolloutError> {
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
        Ok(Change::of(route, r, before, actions))
    }

    /// Walks every rollout once: what to apply (every rollout, for its step gauge).
    pub fn tick(&self) -> Vec<Change> {
        let now = clock::now();
        let mut map = self.lock();
        map.iter_mut()
            .map(|(route, r)| {
                let before = r.phase();
                let actions = r.tick(now);
                Change::of(route, r, before, actions)
            })
            .collect()
    }

    /// `(route, weights by upstream name)` of every started rollout, to put on a new config
    /// generation.
    pub fn weights(&self) -> Vec<(String, std::collections::BTreeMap<String, u32>)> {
        self.lock()
            .iter()
            .filter(|(_, r)| r.step() > 0)
            .map(|(k, r)| {
                let (b, c) = r.weights();
                let cfg = r.config();
                (
                    k.clone(),
                    [(cfg.baseline.clone(), b), (cfg.canary.clone(), c)].into(),
                )
            })
            .collect()
    }

    /// `(route, fingerprint, Some(reason) when aborted here)` of every rollout not done.
    pub fn shareable(&self) -> Vec<(String, String, Option<String>)> {
        self.lock()
            .iter()
            .filter(|(_, r)| r.phase() != Phase::Done)
            .map(|(k, r)| {
                let reason = (r.phase() == Phase::Aborted)
                    .then(|| r.reason().unwrap_or_default().to_owned());
                (k.clone(), fingerprint(r.config()), reason)
            })
            .collect()
    }

    /// Another replica aborted `route`'s rollout `fp`: abort here too (unless it is another
    /// rollout now, or over).
    pub fn abort_elsewhere(&self, route: &str, fp: &str, reason: &str) -> Option<Change> {
        let mut map = self.lock();
        let r = map.get_mut(route)?;
        if fingerprint(r.config()) != fp || !matches!(r.phase(), Phase::Running | Phase::Paused) {
            return None;
        }
        let before = r.phase();
        let actions = r.abort(
            clock::now(),
            &format!("{reason} (judged by another replica)"),
        );
        Some(Change::of(route, r, before, actions))
    }
}

/// What a rollout's step asks of the proxy.
#[derive(Debug)]
pub struct Change {
    /// The route.
    pub route: String,
    /// Weights to set, a drain to start.
    pub actions: Vec<Action>,
    /// It was aborted now: the reason kind (`sigmesh_rollout_aborts_total`) and the reason.
    pub aborted: Option<(&'static str, String)>,
    /// `sigmesh_rollout_step` (0 after an abort).
    pub step: i64,
}

impl Change {
    fn of(route: &str, r: &Rollout, before: Phase, actions: Vec<Action>) -> Change {
        let aborted = (before != Phase::Aborted && r.phase() == Phase::Aborted).then(|| {
            (
                r.abort_kind().unwrap_or("manual"),
                r.reason().unwrap_or_default().to_owned(),
            )
        });
        Change {
            route: route.to_owned(),
            actions,
            aborted,
            step: if r.phase() == Phase::Aborted {
                0
            } else {
                r.step() as i64
            },
        }
    }
}

/// A rollout's identity across replicas: its `rollout:` keys, hashed (FNV-1a 64 of their
/// JSON), so a new rollout of the same route is not the old one.
pub fn fingerprint(config: &sigmesh_core::config::Rollout) -> String {
    let text = serde_json::to_string(config).unwrap_or_default();
    format!("{:016x}", sigmesh_core::split::stable_hash(text.as_bytes()))
}
