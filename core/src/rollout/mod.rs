//! A canary rollout that judges itself: the state machine behind `routes[].rollout`.
//!
//! Sans-IO: time is the caller's `now` (any fixed monotonic origin); the front end feeds it
//! what ended (sessions, with their close class, upstream failure and call setup time, and
//! failed handshakes) and applies the [`Action`]s it returns (new weights, a paced drain of the
//! canary's live sessions).
//!
//! ```text
//!   start ─► step 1 (steps[0] %) ─► … each step: `interval`, then judged ─► next step …
//!                 │  fewer than `min_sessions` canary sessions ended: wait (the step goes on)
//!                 │  a ratio over its bound: ABORTED (canary 0 %, its sessions drained, 1012)
//!                 └─ the last step: DONE (held there; at 100 % nothing is left to compare)
//!   pause / resume (the step starts over) · abort · promote (canary 100 %, DONE)
//! ```
//!
//! ## The judgement
//! Each step compares the canary with the baseline over the same window (the step's own
//! time): sessions that *ended* in it, and handshakes that failed in it.
//! - `abnormal_close_ratio`: closes other than 1000, 1001, 1012 per ended session;
//! - `upstream_error_ratio`: failed handshakes and mid-session upstream failures per session
//!   (ended sessions and failed handshakes);
//! - `setup_p90_ratio`: the 90th percentile of offer-to-answer time (both sides need
//!   [`MIN_SETUP_SAMPLES`] setups, else it is not judged).
//!
//! A rate ratio is `canary rate / max(baseline rate, 1 / canary sessions)`: a baseline with no
//! failure counts as if it had one failure's worth over the canary's sample, so one unlucky
//! close of a canary that ended 20 sessions is a ratio of 1, not infinity.
//!
//! Sticky splits move rooms, not sessions: a step changes the weights for rooms not yet
//! split; a room already on an upstream stays there (`crate::split`), and only an abort (its
//! drain) moves the canary's rooms back.

mod sketch;

use std::collections::VecDeque;
use std::time::Duration;

use serde::Serialize;

use crate::config::Rollout as Config;
pub use sketch::Sketch;

/// Setups each side needs before `setup_p90_ratio` is judged.
pub const MIN_SETUP_SAMPLES: u64 = 5;
/// History entries kept (the oldest go first).
pub const MAX_HISTORY: usize = 64;

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Walking the steps.
    Running,
    /// Held at its step by an operator (or a manual weight change).
    Paused,
    /// The canary was judged worse (or aborted by hand): its weight is 0.
    Aborted,
    /// The last step was reached (or promoted).
    Done,
}

/// What the front end must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// New weights for new sessions.
    Weights {
        /// The baseline's.
        baseline: u32,
        /// The canary's.
        canary: u32,
    },
    /// Close the canary's live sessions with 1012, spread over this window.
    DrainCanary(Duration),
}

/// Which side of the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `baseline`.
    Baseline,
    /// `canary`.
    Canary,
}

/// One side's figures over the current step.
#[derive(Debug, Clone, Default)]
struct Window {
    ended: u64,
    abnormal: u64,
    failed_handshakes: u64,
    upstream_errors: u64,
    setup: Sketch,
}

impl Window {
    fn sessions(&self) -> u64 {
        self.ended + self.failed_handshakes
    }
}

/// One side as `GET /routes/NAME/rollout` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SideView {
    /// The upstream.
    pub upstream: String,
    /// Sessions ended in this step.
    pub sessions_ended: u64,
    /// Live sessions now.
    pub sessions_live: u64,
    /// Of the ended, closed other than 1000, 1001, 1012.
    pub abnormal_closes: u64,
    /// Abnormal closes per ended session.
    pub abnormal_close_ratio: Option<f64>,
    /// Failed handshakes and mid-session upstream failures.
    pub upstream_errors: u64,
    /// Upstream errors per session.
    pub upstream_error_ratio: Option<f64>,
    /// 90th percentile of call setup, ms.
    pub setup_p90_ms: Option<u64>,
}

/// One entry of the history.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// Since the rollout started, ms.
    pub at_ms: u64,
    /// `start`, `step`, `wait`, `pause`, `resume`, `abort`, `promote`, `done`.
    pub event: &'static str,
    /// The step then (1-based).
    pub step: usize,
    /// The canary's weight then.
    pub weight: u32,
    /// Why, when there is a reason.
    pub reason: Option<String>,
}

/// `GET /routes/NAME/rollout`.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    /// The route.
    pub route: String,
    /// Where it is.
    pub state: Phase,
    /// The step (1-based; 0 before the first).
    pub step: usize,
    /// The canary's weight at each step.
    pub steps: Vec<u32>,
    /// The weights in force, by upstream name.
    pub weights: std::collections::BTreeMap<String, u32>,
    /// Why it is paused, aborted or waiting.
    pub reason: Option<String>,
    /// Time in this step, ms.
    pub step_elapsed_ms: u64,
    /// `interval`, ms.
    pub interval_ms: u64,
    /// The baseline's figures over this step.
    pub baseline: SideView,
    /// The canary's.
    pub canary: SideView,
    /// What happened, oldest first.
    pub history: Vec<Entry>,
}

/// A rollout's state (see the module docs).
#[derive(Debug, Clone)]
pub struct Rollout {
    config: Config,
    phase: Phase,
    /// 1-based; 0 before the first tick.
    step: usize,
    started: Duration,
    step_started: Duration,
    windows: [Window; 2],
    live: [u64; 2],
    reason: Option<String>,
    waiting: bool,
    history: VecDeque<Entry>,
    /// The canary's weight in force.
    weight: u32,
}

impl Rollout {
    /// A rollout of `config` that starts at `now` (its first step comes with the first
    /// [`Rollout::tick`]).
    pub fn new(config: &Config, now: Duration) -> Rollout {
        Rollout {
            config: config.clone(),
            phase: Phase::Running,
            step: 0,
            started: now,
            step_started: now,
            windows: Default::default(),
            live: [0; 2],
            reason: None,
            waiting: false,
            history: VecDeque::new(),
            weight: 0,
        }
    }

    /// The config it runs.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Where it is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The step (1-based, 0 before the first).
    pub fn step(&self) -> usize {
        self.step
    }

    /// Why it is paused, aborted or waiting.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// `(baseline, canary)` weights in force.
    pub fn weights(&self) -> (u32, u32) {
        (100 - self.weight, self.weight)
    }

    /// Which side `upstream` is, if either.
    pub fn side(&self, upstream: &str) -> Option<Side> {
        if upstream == self.config.canary {
            Some(Side::Canary)
        } else if upstream == self.config.baseline {
            Some(Side::Baseline)
        } else {
            None
        }
    }

    /// A session of `side` opened.
    pub fn session_opened(&mut self, side: Side) {
        self.live[side as usize] += 1;
    }

    /// A session of `side` ended: closed abnormally (not 1000, 1001, 1012), by an upstream
    /// failure, after `setup` (its first offer-to-answer time, if it had one).
    pub fn session_ended(
        &mut self,
        side: Side,
        abnormal: bool,
        upstream_error: bool,
        setup: Option<Duration>,
    ) {
        let i = side as usize;
        self.live[i] = self.live[i].saturating_sub(1);
        if self.is_over() {
            // The figures stay those the rollout ended on.
            return;
        }
        let w = &mut self.windows[i];
        w.ended += 1;
        w.abnormal += u64::from(abnormal);
        w.upstream_errors += u64::from(upstream_error);
        if let Some(s) = setup {
            w.setup.record(s);
        }
    }

    /// A handshake to `side`'s upstream failed (the client got 502).
    pub fn handshake_failed(&mut self, side: Side) {
        if self.is_over() {
            return;
        }
        let w = &mut self.windows[side as usize];
        w.failed_handshakes += 1;
        w.upstream_errors += 1;
    }

    fn is_over(&self) -> bool {
        matches!(self.phase, Phase::Aborted | Phase::Done)
    }

    /// Walks the rollout at `now`: what the front end must do.
    pub fn tick(&mut self, now: Duration) -> Vec<Action> {
        if self.phase != Phase::Running {
            return Vec::new();
        }
        if self.step == 0 {
            self.note(now, "start", None);
            return self.enter(1, now);
        }
        if now.saturating_sub(self.step_started) < self.config.interval {
            return Vec::new();
        }
        let canary = &self.windows[Side::Canary as usize];
        if canary.ended < u64::from(self.config.min_sessions) {
            if !self.waiting {
                self.waiting = true;
                let why = format!(
                    "{} of {} canary sessions ended in this step",
                    canary.ended, self.config.min_sessions
                );
                self.reason = Some(why.clone());
                self.note(now, "wait", Some(why));
            }
            return Vec::new();
        }
        match self.judge() {
            Some(why) => self.abort_with(now, why),
            None if self.step >= self.config.steps.len() => self.finish(now, "done"),
            None => self.enter(self.step + 1, now),
        }
    }

    /// Holds the rollout at its step.
    pub fn pause(&mut self, now: Duration, reason: &str) -> bool {
        if self.phase != Phase::Running {
            return false;
        }
        self.phase = Phase::Paused;
        self.reason = Some(reason.to_owned());
        self.note(now, "pause", Some(reason.to_owned()));
        true
    }

    /// Goes on from a pause; the step's window starts over (what was seen while paused, or
    /// under hand-set weights, is not judged).
    pub fn resume(&mut self, now: Duration) -> Vec<Action> {
        if self.phase != Phase::Paused {
            return Vec::new();
        }
        self.phase = Phase::Running;
        self.reason = None;
        self.note(now, "resume", None);
        if self.step == 0 {
            return Vec::new();
        }
        let step = self.step;
        self.enter(step, now)
    }

    /// Aborts by hand.
    pub fn abort(&mut self, now: Duration, reason: &str) -> Vec<Action> {
        if matches!(self.phase, Phase::Aborted | Phase::Done) {
            return Vec::new();
        }
        self.abort_with(now, reason.to_owned())
    }

    /// Promotes the canary to 100 % now.
    pub fn promote(&mut self, now: Duration) -> Vec<Action> {
        if matches!(self.phase, Phase::Aborted | Phase::Done) {
            return Vec::new();
        }
        self.weight = 100;
        self.finish(now, "promote")
    }

    /// The abort reason when a bound is exceeded.
    fn judge(&self) -> Option<String> {
        let b = &self.windows[Side::Baseline as usize];
        let c = &self.windows[Side::Canary as usize];
        let a = &self.config.abort_if;
        if let Some(bound) = a.abnormal_close_ratio {
            let r = rate_ratio(c.abnormal, c.ended, b.abnormal, b.ended);
            if r > bound {
                return Some(format!(
                    "abnormal_close_ratio {r:.2} > {bound} (canary {}/{} ended sessions, baseline {}/{})",
                    c.abnormal, c.ended, b.abnormal, b.ended
                ));
            }
        }
        if let Some(bound) = a.upstream_error_ratio {
            let r = rate_ratio(
                c.upstream_errors,
                c.sessions(),
                b.upstream_errors,
                b.sessions(),
            );
            if r > bound {
                return Some(format!(
                    "upstream_error_ratio {r:.2} > {bound} (canary {}/{} sessions, baseline {}/{})",
                    c.upstream_errors,
                    c.sessions(),
                    b.upstream_errors,
                    b.sessions()
                ));
            }
        }
        if let Some(bound) = a.setup_p90_ratio
            && c.setup.count() >= MIN_SETUP_SAMPLES
            && b.setup.count() >= MIN_SETUP_SAMPLES
            && let (Some(cp), Some(bp)) = (c.setup.quantile(0.9), b.setup.quantile(0.9))
        {
            let r = cp.as_secs_f64() / bp.as_secs_f64().max(0.001);
            if r > bound {
                return Some(format!(
                    "setup_p90_ratio {r:.2} > {bound} (canary p90 {} ms, baseline {} ms)",
                    cp.as_millis(),
                    bp.as_millis()
                ));
            }
        }
        None
    }

    fn enter(&mut self, step: usize, now: Duration) -> Vec<Action> {
        let fresh = step != self.step;
        self.step = step;
        self.step_started = now;
        self.windows = Default::default();
        self.waiting = false;
        self.reason = None;
        self.weight = self.config.steps[step - 1];
        if fresh {
            self.note(now, "step", None);
        }
        if step == self.config.steps.len() && self.weight == 100 {
            // Nothing is left to compare the canary with.
            let mut out = self.finish(now, "done");
            out.insert(0, self.weights_action());
            out.dedup();
            return out;
        }
        vec![self.weights_action()]
    }

    fn finish(&mut self, now: Duration, event: &'static str) -> Vec<Action> {
        self.phase = Phase::Done;
        self.reason = None;
        self.note(now, event, None);
        vec![self.weights_action()]
    }

    fn abort_with(&mut self, now: Duration, why: String) -> Vec<Action> {
        self.phase = Phase::Aborted;
        self.weight = 0;
        self.reason = Some(why.clone());
        self.note(now, "abort", Some(why));
        vec![
            self.weights_action(),
            Action::DrainCanary(self.config.on_abort.drain),
        ]
    }

    fn weights_action(&self) -> Action {
        let (baseline, canary) = self.weights();
        Action::Weights { baseline, canary }
    }

    fn note(&mut self, now: Duration, event: &'static str, reason: Option<String>) {
        if self.history.len() >= MAX_HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(Entry {
            at_ms: ms(now.saturating_sub(self.started)),
            event,
            step: self.step,
            weight: self.weight,
            reason,
        });
    }

    /// The abort's reason kind (the `reason` label of `sigmesh_rollout_aborts_total`).
    pub fn abort_kind(&self) -> Option<&'static str> {
        if self.phase != Phase::Aborted {
            return None;
        }
        let r = self.reason.as_deref().unwrap_or("");
        Some(
            [
                "abnormal_close_ratio",
                "upstream_error_ratio",
                "setup_p90_ratio",
            ]
            .into_iter()
            .find(|k| r.starts_with(k))
            .unwrap_or("manual"),
        )
    }

    /// What `GET /routes/NAME/rollout` shows.
    pub fn view(&self, route: &str, now: Duration) -> View {
        let side = |s: Side, upstream: &str| {
            let w = &self.windows[s as usize];
            let ratio = |n: u64, d: u64| (d > 0).then(|| n as f64 / d as f64);
            SideView {
                upstream: upstream.to_owned(),
                sessions_ended: w.ended,
                sessions_live: self.live[s as usize],
                abnormal_closes: w.abnormal,
                abnormal_close_ratio: ratio(w.abnormal, w.ended),
                upstream_errors: w.upstream_errors,
                upstream_error_ratio: ratio(w.upstream_errors, w.sessions()),
                setup_p90_ms: w.setup.quantile(0.9).map(ms),
            }
        };
        let (b, c) = self.weights();
        View {
            route: route.to_owned(),
            state: self.phase,
            step: self.step,
            steps: self.config.steps.clone(),
            weights: [
                (self.config.baseline.clone(), b),
                (self.config.canary.clone(), c),
            ]
            .into(),
            reason: self.reason.clone(),
            step_elapsed_ms: ms(now.saturating_sub(self.step_started)),
            interval_ms: ms(self.config.interval),
            baseline: side(Side::Baseline, &self.config.baseline),
            canary: side(Side::Canary, &self.config.canary),
            history: self.history.iter().cloned().collect(),
        }
    }
}

/// `canary rate / max(baseline rate, 1 / canary sessions)` (see the module docs); 0 for a
/// canary without sessions.
fn rate_ratio(c_bad: u64, c_n: u64, b_bad: u64, b_n: u64) -> f64 {
    if c_n == 0 {
        return 0.0;
    }
    let c = c_bad as f64 / c_n as f64;
    let b = if b_n == 0 {
        0.0
    } else {
        b_bad as f64 / b_n as f64
    };
    c / b.max(1.0 / c_n as f64)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
