//! `sigmesh-loadgen soak`: holds `--sessions` live sessions with churn, and a flood of bad input
//! beside them, for `--duration`; every `--interval` prints one line of what the proxy
//! (`--pid`) holds and how the good sessions fare: flat lines mean nothing leaks.
//!
//! - **Good sessions**: each sends a signaling-like message every `--message-every` (jittered)
//!   and waits for its echo (the round trip goes into the window's histogram). Each lives a
//!   random time around `sessions / churn` seconds, closes with a close frame, and is replaced
//!   at once, so about `--churn` sessions per second open and close.
//! - **Bad input** (`--attackers` loops, round robin over [`Attack`]): broken frames, oversized
//!   and candidate-bomb messages, unmasked frames, garbage instead of HTTP, a handshake without a
//!   key, a request head that never ends, and a client that asks for echoes and never reads.
//!   Each waits (bounded) for the proxy to end it; how each ended is counted.
//! - **Every interval**: the proxy's RSS and open file descriptors (`/proc/PID`), live good
//!   sessions, churn, round trips and their p50/p99/max, failures, attacks by outcome.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::attack::{Attack, QUICK, SLOW, attack};
use crate::conn::{SourceIps, parse_source_ips};
use crate::parse_duration;
use crate::run::Builder;

#[derive(clap::Args)]
pub struct SoakArgs {
    /// WebSocket URL of the proxy (`ws://127.0.0.1:8080/ws`).
    #[arg(long)]
    url: String,
    /// Live good sessions to hold.
    #[arg(long, default_value_t = 5000)]
    sessions: usize,
    /// How long the soak lasts.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    duration: Duration,
    /// Report every this long.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    interval: Duration,
    /// Good sessions closed and replaced per second, on average.
    #[arg(long, default_value_t = 20.0)]
    churn: f64,
    /// Each good session sends one message this often.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    message_every: Duration,
    /// Size of a good message.
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Concurrent loops of quick bad input (broken frames, oversized and candidate-bomb
    /// messages, garbage, bad handshakes), each one attack after another.
    #[arg(long, default_value_t = 8)]
    attackers: usize,
    /// Concurrent loops of slow bad input (a request head that never ends, a client that never
    /// reads), each held until the proxy ends it.
    #[arg(long, default_value_t = 4)]
    holders: usize,
    /// The proxy's process ID (its RSS and file descriptors are read from /proc).
    #[arg(long)]
    pid: u32,
    /// Local addresses for the good sessions, round-robin (`127.0.0.2-127.0.0.17`).
    #[arg(long, value_parser = parse_source_ips)]
    source_ips: Option<SourceIps>,
    /// Write every interval's line as JSON to this file at the end.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

/// Counters shared by every task; the reporter takes and resets the window's.
#[derive(Default)]
struct Stats {
    live: AtomicU64,
    opened: AtomicU64,
    closed: AtomicU64,
    open_errors: AtomicU64,
    round_trips: AtomicU64,
    failures: AtomicU64,
    rtt: Mutex<Option<Histogram<u64>>>,
    /// (attack, outcome) → count.
    attacks: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
}

impl Stats {
    fn record_rtt(&self, d: Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        if let Some(h) = self.rtt.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            let _ = h.record(us.max(1));
        }
    }

    fn attack(&self, a: Attack, outcome: &'static str) {
        *self
            .attacks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((a.name(), outcome))
            .or_default() += 1;
    }
}

/// One interval's line.
#[derive(Serialize)]
struct Line {
    t_s: u64,
    rss_kib: u64,
    fds: u64,
    live: u64,
    opened: u64,
    closed: u64,
    open_errors: u64,
    round_trips: u64,
    failures: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    attacks: BTreeMap<String, u64>,
}

/// A small xorshift: the jitter and lifetimes need no more.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub async fn soak(args: SoakArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.sessions > 0, "--sessions must be at least 1");
    anyhow::ensure!(args.churn > 0.0, "--churn must be more than 0");
    let args = Arc::new(args);
    let stats = Arc::new(Stats::default());
    *stats.rtt.lock().unwrap_or_else(|p| p.into_inner()) = Some(Histogram::new(3)?);
    let addr = crate::conn::target(&args.url).await?;
    let path = path_of(&args.url);

    let mut tasks = tokio::task::JoinSet::new();
    // Good sessions: opened 64 at a time at the start, then each replaces itself.
    let permits = Arc::new(tokio::sync::Semaphore::new(64));
    for id in 0..args.sessions {
        let (args, stats, permits) = (args.clone(), stats.clone(), permits.clone());
        tasks.spawn(async move { good(id, &args, &stats, &permits).await });
    }
    // Every task runs until the last report, then is aborted: the reports see steady state.
    let loops = (0..args.attackers)
        .map(|n| (n, &QUICK[..]))
        .chain((0..args.holders).map(|n| (n, &SLOW[..])));
    for (n, kinds) in loops {
        let (stats, path, args) = (stats.clone(), path.clone(), args.clone());
        tasks.spawn(async move {
            for i in n.. {
                let a = kinds[i % kinds.len()];
                // Spread over the source addresses: the proxy closes first, and its TIME_WAITs
                // would use up one address's ports within a minute.
                let source = args.source_ips.as_ref().and_then(|s| s.pick(i));
                let outcome = attack(a, addr, source, &path).await;
                stats.attack(a, outcome);
                // About 100 quick attacks per second per loop.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
    }

    let started = Instant::now();
    let end = started + args.duration;
    let mut lines = Vec::new();
    println!(
        "{:>6} {:>9} {:>6} {:>6} {:>7} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8}  attacks (ended by the proxy / other)",
        "t_s",
        "rss_kib",
        "fds",
        "live",
        "opened",
        "closed",
        "rtts",
        "fail",
        "p50_ms",
        "p99_ms",
        "max_ms"
    );
    let mut next = started + args.interval;
    while next <= end + Duration::from_millis(10) {
        tokio::time::sleep_until(next).await;
        next += args.interval;
        let line = sample(&args, &stats, started);
        let (ok, other): (u64, u64) = line.attacks.iter().fold((0, 0), |(a, b), (k, v)| {
            if k.ends_with(":ended") {
                (a + v, b)
            } else {
                (a, b + v)
            }
        });
        println!(
            "{:>6} {:>9} {:>6} {:>6} {:>7} {:>7} {:>8} {:>8} {:>8.2} {:>8.2} {:>8.2}  {ok} / {other}",
            line.t_s,
            line.rss_kib,
            line.fds,
            line.live,
            line.opened,
            line.closed,
            line.round_trips,
            line.failures,
            line.p50_ms,
            line.p99_ms,
            line.max_ms
        );
        lines.push(line);
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    // Everything closed: what the proxy still holds once its close grace is over.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = sample(&args, &stats, started);
    println!(
        "after everything closed (+10 s): rss_kib {} fds {} (the idle proxy's own: listeners, admin, epoll)",
        after.rss_kib, after.fds
    );
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&lines)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Reads the proxy and takes the window's counters.
fn sample(args: &SoakArgs, stats: &Stats, started: Instant) -> Line {
    let rss_kib = std::fs::read_to_string(format!("/proc/{}/status", args.pid))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{}/fd", args.pid))
        .map(|d| d.count() as u64)
        .unwrap_or(0);
    let h = stats
        .rtt
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .replace(Histogram::new(3).unwrap_or_else(|_| unreachable!()));
    let ms = |us: u64| us as f64 / 1000.0;
    let (p50, p99, max) = h.map_or((0, 0, 0), |h| {
        (h.value_at_quantile(0.5), h.value_at_quantile(0.99), h.max())
    });
    let attacks = std::mem::take(&mut *stats.attacks.lock().unwrap_or_else(|p| p.into_inner()))
        .into_iter()
        .map(|((a, o), n)| (format!("{a}:{o}"), n))
        .collect();
    Line {
        t_s: started.elapsed().as_secs_f64().round() as u64,
        rss_kib,
        fds,
        live: stats.live.load(Relaxed),
        opened: stats.opened.swap(0, Relaxed),
        closed: stats.closed.swap(0, Relaxed),
        open_errors: stats.open_errors.swap(0, Relaxed),
        round_trips: stats.round_trips.swap(0, Relaxed),
        failures: stats.failures.swap(0, Relaxed),
        p50_ms: ms(p50),
        p99_ms: ms(p99),
        max_ms: ms(max),
        attacks,
    }
}

/// One good slot: a session, replaced when its life is over, until aborted.
async fn good(id: usize, args: &SoakArgs, stats: &Stats, permits: &tokio::sync::Semaphore) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (id as u64 + 1).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mean_life = args.sessions as f64 / args.churn;
    let source = args.source_ips.as_ref().and_then(|s| s.pick(id));
    let mut generation = 0u64;
    loop {
        let ws = {
            let _permit = permits.acquire().await;
            crate::conn::connect(&args.url, source, Duration::from_secs(10)).await
        };
        let Ok(mut ws) = ws else {
            stats.open_errors.fetch_add(1, Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        stats.opened.fetch_add(1, Relaxed);
        stats.live.fetch_add(1, Relaxed);
        // The first generation's lives are spread over two means, so the churn is even.
        let life = Duration::from_secs_f64(rng.unit() * 2.0 * mean_life);
        let dies = Instant::now() + life;
        let b = Builder {
            room: (id / 2) as u64,
            peer: (id as u64) << 20 | generation,
            size: args.size,
            spread: None,
        };
        let mut send_at = Instant::now() + args.message_every.mul_f64(rng.unit());
        let mut seq = 0u64;
        let mut failed = false;
        while send_at < dies {
            tokio::time::sleep_until(send_at).await;
            send_at += args.message_every;
            let sent = Instant::now();
            if ws.send(Message::text(b.build(seq, 0))).await.is_err() {
                failed = true;
                break;
            }
            seq += 1;
            let echo = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(_))) => return true,
                        Some(Ok(_)) => continue,
                        _ => return false,
                    }
                }
            })
            .await;
            if echo == Ok(true) {
                stats.round_trips.fetch_add(1, Relaxed);
                stats.record_rtt(sent.elapsed());
            } else {
                failed = true;
                break;
            }
        }
        if failed {
            stats.failures.fetch_add(1, Relaxed);
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
        stats.live.fetch_sub(1, Relaxed);
        stats.closed.fetch_add(1, Relaxed);
        generation += 1;
    }
}

/// The path (and query) of the URL.
fn path_of(url: &str) -> String {
    let rest = url.strip_prefix("ws://").unwrap_or(url);
    match rest.find('/') {
        Some(i) => rest[i..].to_owned(),
        None => "/".to_owned(),
    }
}
