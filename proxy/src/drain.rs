//! Paced drains: live sessions closed evenly, with jitter, over a window instead of all at
//! once, so their clients do not come back in one storm.
//!
//! Two things drain sessions: the shutdown (SIGTERM, `shutdown.spread` and
//! `shutdown.close_code`) and an upstream drain (`POST /routes/NAME/upstreams/UP/drain`,
//! that upstream's live sessions only). Either makes a [`DrainPlan`] for the sessions live at
//! that moment; each session, woken by the drain, takes the next slot `k` of the plan's `n`
//! and closes at `start + spread × (k + u) / n`, `u` uniform in [0, 1): one session per
//! `spread / n`, jittered within its slot. Until then it relays as before.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One drain: its window, close code, and how many sessions it was made for.
#[derive(Debug)]
pub struct DrainPlan {
    start: Instant,
    spread: Duration,
    code: u16,
    reason: &'static str,
    total: u64,
    next: AtomicU64,
}

impl DrainPlan {
    /// A drain of `total` live sessions starting now.
    pub fn new(spread: Duration, code: u16, reason: &'static str, total: u64) -> Arc<DrainPlan> {
        Arc::new(DrainPlan {
            start: Instant::now(),
            spread,
            code,
            reason,
            total,
            next: AtomicU64::new(0),
        })
    }

    /// When the next session to ask closes (each asks once).
    pub fn close_at(&self) -> Instant {
        if self.spread.is_zero() {
            return self.start;
        }
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        // Sessions past the count (opened while the plan was made) share the last slot.
        let n = self.total.max(1);
        let slot = k.min(n - 1) as f64 + rand::random::<f64>();
        self.start + self.spread.mul_f64(slot / n as f64)
    }

    /// The close code and reason.
    pub fn close(&self) -> (u16, &'static str) {
        (self.code, self.reason)
    }

    /// The window.
    pub fn spread(&self) -> Duration {
        self.spread
    }

    /// The sessions it was made for.
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// What a session watches for an upstream drain: a token cancelled when one starts, and the
/// plan it started with.
#[derive(Debug, Default)]
pub struct DrainSignal {
    token: CancellationToken,
    plan: OnceLock<Arc<DrainPlan>>,
}

impl DrainSignal {
    /// Resolves when the drain starts.
    pub async fn started(&self) {
        self.token.cancelled().await
    }

    /// The plan, once started.
    pub fn plan(&self) -> Option<&Arc<DrainPlan>> {
        self.plan.get()
    }
}

/// An upstream's drains: the signal new sessions take, replaced by a fresh one each time a
/// drain starts (sessions opened after it are not drained by it).
#[derive(Debug, Default)]
pub struct Drains {
    current: Mutex<Arc<DrainSignal>>,
}

impl Drains {
    /// The signal a session opening now watches.
    pub fn signal(&self) -> Arc<DrainSignal> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The same signal for the next generation (a reload keeps an upstream's drains).
    pub fn carry(&self) -> Drains {
        Drains {
            current: Mutex::new(self.signal()),
        }
    }

    /// Starts `plan` for every session watching the current signal.
    pub fn start(&self, plan: Arc<DrainPlan>) {
        let old = {
            let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::take(&mut *cur)
        };
        let _ = old.plan.set(plan);
        old.token.cancel();
    }
}
