//! `sigmesh-loadgen storm`: a reconnect storm. `--connectors` tasks each open a WebSocket, and as
//! soon as the handshake completes (or is refused) close it and open the next, for `--duration`.
//!
//! Reports completed handshakes (101) per second, refused ones (any other HTTP status, e.g. 429
//! from a connection bucket) per second by status, errors, and the handshake time (TCP connect to
//! the 101, p50/p99/p99.9) of the completed ones. A completed session is closed with a close frame;
//! the connector waits up to `--close-timeout` for the server's close frame, then drops the
//! connection. The client thus closes first and its side keeps the TIME_WAIT: use `--source-ips`
//! for long storms so the ephemeral ports do not run out.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::conn::{Handshake, SourceIps, parse_source_ips};
use crate::parse_duration;

#[derive(clap::Args)]
pub struct StormArgs {
    /// WebSocket URL (`ws://127.0.0.1:8080/ws`).
    #[arg(long)]
    url: String,
    /// Concurrent connectors, each opening one connection after another.
    #[arg(long, default_value_t = 50)]
    connectors: usize,
    /// How long the storm lasts.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    duration: Duration,
    /// Per-handshake timeout.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// How long to wait for the server to close after our close frame.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    close_timeout: Duration,
    /// Local addresses to connect from, round-robin over connections.
    #[arg(long, value_parser = parse_source_ips)]
    source_ips: Option<SourceIps>,
    /// A label for the summary and the JSON.
    #[arg(long, default_value = "")]
    label: String,
    /// Write the result as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Runtime worker threads (default 1).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

#[derive(Serialize)]
struct StormReport {
    label: String,
    url: String,
    connectors: usize,
    duration_s: f64,
    /// Handshakes answered 101 (started inside the duration).
    completed: u64,
    completed_per_sec: f64,
    /// Handshakes answered with another status, by status.
    refused: BTreeMap<u16, u64>,
    refused_per_sec: f64,
    errors: u64,
    error_samples: Vec<String>,
    /// Handshake time of completed handshakes, µs.
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
}

struct Tally {
    hist: Histogram<u64>,
    completed: u64,
    refused: BTreeMap<u16, u64>,
    errors: u64,
    error_samples: Vec<String>,
}

impl Tally {
    fn new() -> anyhow::Result<Self> {
        Ok(Tally {
            hist: Histogram::new_with_bounds(1_000, 60_000_000_000, 3).context("histogram")?,
            completed: 0,
            refused: BTreeMap::new(),
            errors: 0,
            error_samples: Vec::new(),
        })
    }

    fn error(&mut self, e: String) {
        self.errors += 1;
        if self.error_samples.len() < 5 && !self.error_samples.contains(&e) {
            self.error_samples.push(e);
        }
    }

    fn merge(&mut self, o: Tally) {
        let _ = self.hist.add(&o.hist);
        self.completed += o.completed;
        for (k, v) in o.refused {
            *self.refused.entry(k).or_default() += v;
        }
        self.errors += o.errors;
        for e in o.error_samples {
            if self.error_samples.len() < 5 && !self.error_samples.contains(&e) {
                self.error_samples.push(e);
            }
        }
    }
}

async fn connector(args: Arc<StormArgs>, index: usize, end: Instant) -> anyhow::Result<Tally> {
    let mut t = Tally::new()?;
    let stride = args.connectors.max(1);
    let mut n = index;
    while Instant::now() < end {
        let source = args.source_ips.as_ref().and_then(|s| s.pick(n));
        n += stride;
        let began = Instant::now();
        match crate::conn::handshake(&args.url, source, args.connect_timeout).await {
            Ok(Handshake::Open(ws)) => {
                let took = began.elapsed();
                let mut ws = *ws;
                t.completed += 1;
                t.hist.saturating_record(
                    u64::try_from(took.as_nanos())
                        .unwrap_or(u64::MAX)
                        .max(1_000),
                );
                // Close: our close frame, then read until the server's close frame (or the end of
                // the connection), and drop. Not waiting for the server's TCP close keeps proxies
                // that delay it (Envoy's `delayed_close_timeout`, 1 s) from stalling the connector.
                let _ = tokio::time::timeout(args.close_timeout, async {
                    let _ = ws.close(None).await;
                    while let Some(Ok(m)) = ws.next().await {
                        if m.is_close() {
                            break;
                        }
                    }
                })
                .await;
            }
            Ok(Handshake::Refused(status)) => {
                *t.refused.entry(status.as_u16()).or_default() += 1;
            }
            Err(e) => {
                t.error(format!("{e:#}"));
                // Do not spin on a refused port.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    Ok(t)
}

fn us(ns: u64) -> f64 {
    (ns as f64 / 100.0).round() / 10.0
}

pub async fn storm(args: StormArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.connectors > 0, "--connectors must be at least 1");
    anyhow::ensure!(!args.duration.is_zero(), "--duration must be positive");
    let args = Arc::new(args);
    let start = Instant::now();
    let end = start + args.duration;
    let mut tasks = JoinSet::new();
    for i in 0..args.connectors {
        tasks.spawn(connector(args.clone(), i, end));
    }
    let mut total = Tally::new()?;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok(t)) => total.merge(t),
            Ok(Err(e)) => total.error(format!("{e:#}")),
            Err(e) => total.error(format!("connector task: {e}")),
        }
    }
    // Handshakes started before `end` may finish a little after it; divide by the real span.
    let span = start
        .elapsed()
        .as_secs_f64()
        .max(args.duration.as_secs_f64());
    let h = &total.hist;
    let q = |q: f64| {
        if h.is_empty() {
            0.0
        } else {
            us(h.value_at_quantile(q))
        }
    };
    let refused_total: u64 = total.refused.values().sum();
    let report = StormReport {
        label: args.label.clone(),
        url: args.url.clone(),
        connectors: args.connectors,
        duration_s: (span * 1000.0).round() / 1000.0,
        completed: total.completed,
        completed_per_sec: (total.completed as f64 / span * 10.0).round() / 10.0,
        refused: total.refused.clone(),
        refused_per_sec: (refused_total as f64 / span * 10.0).round() / 10.0,
        errors: total.errors,
        error_samples: total.error_samples.clone(),
        p50_us: q(0.5),
        p99_us: q(0.99),
        p999_us: q(0.999),
        max_us: if h.is_empty() { 0.0 } else { us(h.max()) },
    };
    let label = if report.label.is_empty() {
        String::new()
    } else {
        format!("[{}] ", report.label)
    };
    println!(
        "{label}{url}: storm of {c} connectors, {d:.1}s: {ok} completed ({okr:.0}/s), refused {ref:?} \
         ({rr:.0}/s), {err} errors; handshake p50 {p50:.1} us, p99 {p99:.1} us, p99.9 {p999:.1} us",
        url = report.url,
        c = report.connectors,
        d = report.duration_s,
        ok = report.completed,
        okr = report.completed_per_sec,
        ref = report.refused,
        rr = report.refused_per_sec,
        err = report.errors,
        p50 = report.p50_us,
        p99 = report.p99_us,
        p999 = report.p999_us,
    );
    for e in &report.error_samples {
        eprintln!("  error: {e}");
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
