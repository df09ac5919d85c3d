//! Unit tests of `rollout`.
#![allow(clippy::unwrap_used)]
use super::*;
use crate::config::{AbortIf, OnAbort};

const S: Duration = Duration::from_secs(1);

fn config(steps: &[u32]) -> Config {
    Config {
        baseline: "stable".into(),
        canary: "canary".into(),
        steps: steps.to_vec(),
        interval: S * 10,
        min_sessions: 5,
        abort_if: AbortIf {
            abnormal_close_ratio: Some(2.0),
            upstream_error_ratio: Some(2.0),
            setup_p90_ratio: Some(1.5),
        },
        on_abort: OnAbort { drain: S * 30 },
    }
}

fn ended(r: &mut Rollout, side: Side, n: usize, abnormal: bool, setup_ms: u64) {
    for _ in 0..n {
        r.session_opened(side);
        r.session_ended(side, abnormal, false, Some(Duration::from_millis(setup_ms)));
    }
}

fn w(baseline: u32, canary: u32) -> Action {
    Action::Weights { baseline, canary }
}

#[test]
fn a_healthy_canary_walks_every_step_to_done() {
    let mut r = Rollout::new(&config(&[5, 25, 50, 100]), Duration::ZERO);
    assert_eq!(r.tick(Duration::ZERO), vec![w(95, 5)]);
    let mut now = Duration::ZERO;
    for (step, expected) in [(1, w(75, 25)), (2, w(50, 50))] {
        assert_eq!(r.step(), step);
        ended(&mut r, Side::Baseline, 20, false, 100);
        ended(&mut r, Side::Canary, 5, false, 110);
        assert!(r.tick(now + S * 9).is_empty(), "not before the interval");
        now += S * 10;
        assert_eq!(r.tick(now), vec![expected]);
    }
    ended(&mut r, Side::Baseline, 20, false, 100);
    ended(&mut r, Side::Canary, 5, false, 100);
    now += S * 10;
    assert_eq!(r.tick(now), vec![w(0, 100)]);
    assert_eq!(r.phase(), Phase::Done);
    let events: Vec<&str> = r.history.iter().map(|e| e.event).collect();
    assert_eq!(events, ["start", "step", "step", "step", "step", "done"]);
}

#[test]
fn too_few_canary_sessions_wait_then_judge() {
    let mut r = Rollout::new(&config(&[10, 100]), Duration::ZERO);
    r.tick(Duration::ZERO);
    ended(&mut r, Side::Canary, 4, false, 100);
    assert!(r.tick(S * 10).is_empty());
    assert!(r.view("r", S * 10).reason.unwrap().contains("4 of 5"));
    ended(&mut r, Side::Canary, 1, false, 100);
    assert_eq!(r.tick(S * 11), vec![w(0, 100)]);
}

#[test]
fn abnormal_closes_abort_and_drain_the_canary() {
    let mut r = Rollout::new(&config(&[10, 50, 100]), Duration::ZERO);
    r.tick(Duration::ZERO);
    ended(&mut r, Side::Baseline, 50, false, 100);
    ended(&mut r, Side::Canary, 10, true, 100);
    let a = r.tick(S * 10);
    assert_eq!(a, vec![w(100, 0), Action::DrainCanary(S * 30)]);
    assert_eq!(r.phase(), Phase::Aborted);
    assert_eq!(r.abort_kind(), Some("abnormal_close_ratio"));
    assert!(r.tick(S * 100).is_empty(), "an abort is final");
}

#[test]
fn one_unlucky_close_is_not_an_abort() {
    let mut r = Rollout::new(&config(&[10, 100]), Duration::ZERO);
    r.tick(Duration::ZERO);
    ended(&mut r, Side::Baseline, 100, false, 100);
    ended(&mut r, Side::Canary, 19, false, 100);
    ended(&mut r, Side::Canary, 1, true, 100);
    assert_eq!(r.tick(S * 10), vec![w(0, 100)]);
}

#[test]
fn a_slow_canary_aborts_on_setup_time_and_handshake_failures_count() {
    let mut r = Rollout::new(&config(&[10, 100]), Duration::ZERO);
    r.tick(Duration::ZERO);
    ended(&mut r, Side::Baseline, 20, false, 100);
    ended(&mut r, Side::Canary, 10, false, 300);
    r.tick(S * 10);
    assert_eq!(r.abort_kind(), Some("setup_p90_ratio"));

    let mut r = Rollout::new(&config(&[10, 100]), Duration::ZERO);
    r.tick(Duration::ZERO);
    ended(&mut r, Side::Baseline, 20, false, 100);
    ended(&mut r, Side::Canary, 5, false, 100);
    for _ in 0..5 {
        r.handshake_failed(Side::Canary);
    }
    r.tick(S * 10);
    assert_eq!(r.abort_kind(), Some("upstream_error_ratio"));
}

#[test]
fn pause_resume_promote_and_manual_abort() {
    let mut r = Rollout::new(&config(&[10, 50, 100]), Duration::ZERO);
    r.tick(Duration::ZERO);
    assert!(r.pause(S, "weights set by hand"));
    ended(&mut r, Side::Canary, 10, false, 100);
    assert!(r.tick(S * 20).is_empty(), "paused");
    assert_eq!(r.resume(S * 20), vec![w(90, 10)]);
    // The step starts over at the resume: what ended before is not judged.
    assert!(r.tick(S * 25).is_empty());
    assert_eq!(r.promote(S * 26), vec![w(0, 100)]);
    assert_eq!(r.phase(), Phase::Done);

    let mut r = Rollout::new(&config(&[10, 100]), Duration::ZERO);
    r.tick(Duration::ZERO);
    assert_eq!(
        r.abort(S, "by hand"),
        vec![w(100, 0), Action::DrainCanary(S * 30)]
    );
    assert_eq!(r.abort_kind(), Some("manual"));
}

#[test]
fn the_history_is_bounded() {
    let mut r = Rollout::new(&config(&[10, 100]), Duration::ZERO);
    r.tick(Duration::ZERO);
    for i in 0..500 {
        r.pause(S * i, "p");
        r.resume(S * i);
    }
    assert_eq!(r.history.len(), MAX_HISTORY);
}

#[test]
fn the_sketch_p90_is_within_a_bucket() {
    let mut s = Sketch::default();
    for ms in 1..=1000u64 {
        s.record(Duration::from_millis(ms));
    }
    let p90 = s.quantile(0.9).unwrap().as_secs_f64() * 1000.0;
    assert!((900.0..=900.0 * 1.19).contains(&p90), "{p90}");
    assert_eq!(Sketch::default().quantile(0.9), None);
    s.record(Duration::from_secs(100_000));
}
