//! Applies what the rollouts say ([`crate::rollout::Change`]) and walks them every [`TICK`]:
//! weights on the route in force, the canary's paced drain on an abort, the rollout metrics,
//! and, with `cluster.redis`, aborts shared between replicas.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use sigmesh_core::rollout::Action;

use crate::rollout::{Change, RolloutError};
use crate::state::Shared;

/// How often rollouts are walked.
pub const TICK: Duration = Duration::from_millis(200);
/// How often replicas look at each other's aborts in `cluster.redis` (every this many ticks).
const SHARE_EVERY: u32 = 5;

/// `resume`, `abort`, `promote` on `route`'s rollout, applied.
pub fn act(shared: &Shared, route: &str, verb: &str) -> Result<(), RolloutError> {
    let change = shared.rollouts().act(route, verb)?;
    apply(shared, &change);
    Ok(())
}

/// Applies one change: the step gauge, an abort's count and log, weights, the canary's drain.
pub fn apply(shared: &Shared, change: &Change) {
    let route = change.route.as_str();
    let m = shared.metrics();
    m.rollout_step
        .get_or_create(&crate::metrics::RouteLabel {
            route: route.to_owned(),
        })
        .set(change.step);
    if let Some((kind, reason)) = &change.aborted {
        tracing::warn!(route, reason, "rollout aborted");
        m.rollout_aborts
            .get_or_create(&crate::metrics::AbortLabels {
                route: route.to_owned(),
                reason: kind,
            })
            .inc();
    }
    if change.actions.is_empty() {
        return;
    }
    let runtime = shared.runtime();
    let Some(cfg) = runtime
        .compiled()
        .route(route)
        .and_then(|(_, r)| r.route.rollout.as_ref())
    else {
        return;
    };
    for a in &change.actions {
        match a {
            Action::Weights { baseline, canary } => {
                let w = [
                    (cfg.baseline.clone(), *baseline),
                    (cfg.canary.clone(), *canary),
                ]
                .into();
                match runtime.reweight(route, &w) {
                    Ok(w) => tracing::info!(route, weights = ?w, "rollout weights"),
                    Err(e) => tracing::warn!(route, error = %e, "rollout weights refused"),
                }
            }
            Action::DrainCanary(spread) => match runtime.drain_upstream(
                route,
                &cfg.canary,
                *spread,
                sigmesh_core::frame::close_code::RESTART,
            ) {
                Ok(n) => {
                    tracing::info!(
                        route,
                        sessions = n,
                        ?spread,
                        "rollout abort: canary drained"
                    )
                }
                Err(e) => tracing::warn!(route, error = %e, "rollout abort: no drain"),
            },
        }
    }
}

/// With `cluster.redis`, replicas share aborts: one that aborts a rollout publishes it, and
/// the others abort the same rollout (same route, same `rollout:`) within [`SHARE_EVERY`]
/// ticks. A replica that starts later sees it too, and does not roll the canary out again.
async fn share(shared: &Shared, published: &mut HashSet<String>) {
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
                    if let Some(change) = shared.rollouts().abort_elsewhere(&route, &fp, &reason) {
                        apply(shared, &change);
                    }
                }
            }
        }
    }
}

/// Walks the rollouts every [`TICK`] until the drain starts.
pub async fn drive(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u32 = 0;
    let mut published = HashSet::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {
                for change in shared.rollouts().tick() {
                    apply(&shared, &change);
                }
                n = n.wrapping_add(1);
                if n.is_multiple_of(SHARE_EVERY) {
                    share(&shared, &mut published).await;
                }
            }
            _ = shared.drained() => return,
        }
    }
}
