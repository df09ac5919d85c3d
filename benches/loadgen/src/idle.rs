//! `sigmesh-loadgen idle`: open N sessions, send one message on each and wait for its echo, then
//! hold them all open and idle so the proxy's memory per idle session can be read.
//!
//! Prints `ready <connected>` on stdout (and writes `--json`) once every session has had its round
//! trip, then holds until `--hold` has passed or the process is killed. The bench script waits for
//! the line, reads the proxy's memory, and kills this process.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::conn::{SourceIps, Ws, parse_source_ips};
use crate::parse_duration;
use crate::run::Builder;

#[derive(clap::Args)]
pub struct IdleArgs {
    /// WebSocket URL (`ws://127.0.0.1:8080/ws`).
    #[arg(long)]
    url: String,
    /// Sessions to open and hold.
    #[arg(long, default_value_t = 1000)]
    sessions: usize,
    /// Size of the one message sent on each session.
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Handshakes in progress at once.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// Per-connection handshake (and first round trip) timeout.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Local addresses to connect from, round-robin (`127.0.0.2-127.0.0.9` or a comma list).
    #[arg(long, value_parser = parse_source_ips)]
    source_ips: Option<SourceIps>,
    /// How long to hold the sessions open after `ready` (an upper bound; killing is the norm).
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    hold: Duration,
    /// Write the result as JSON to this file (before holding).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Runtime worker threads (default 1).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

#[derive(Serialize)]
struct IdleReport {
    url: String,
    sessions: usize,
    /// Sessions that connected and had their round trip.
    connected: usize,
    errors: usize,
    error_samples: Vec<String>,
    /// Time to open every session and complete the round trips.
    setup_s: f64,
}

async fn open(args: &IdleArgs, id: usize) -> anyhow::Result<Ws> {
    let source = args.source_ips.as_ref().and_then(|s| s.pick(id));
    let deadline = tokio::time::Instant::now() + args.connect_timeout;
    let mut ws = crate::conn::connect(&args.url, source, args.connect_timeout).await?;
    let b = Builder {
        room: (id / 2) as u64,
        peer: id as u64,
        size: args.size,
        spread: None,
    };
    ws.send(Message::text(b.build(0, 0))).await?;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => anyhow::bail!("no echo within {:?}", args.connect_timeout),
            Ok(None) => anyhow::bail!("closed before the echo"),
            Ok(Some(m)) => {
                if let Message::Text(_) | Message::Binary(_) = m? {
                    return Ok(ws);
                }
            }
        }
    }
}

pub async fn idle(args: IdleArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.sessions > 0, "--sessions must be at least 1");
    let args = Arc::new(args);
    let started = Instant::now();
    let permits = Arc::new(tokio::sync::Semaphore::new(args.connect_concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for id in 0..args.sessions {
        let (args, permits) = (args.clone(), permits.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            open(&args, id).await
        });
    }
    let mut held = Vec::with_capacity(args.sessions);
    let mut errors = 0usize;
    let mut error_samples = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok(ws) => held.push(ws),
            Err(e) => {
                errors += 1;
                let e = format!("{e:#}");
                if error_samples.len() < 5 && !error_samples.contains(&e) {
                    error_samples.push(e);
                }
            }
        }
    }
    let report = IdleReport {
        url: args.url.clone(),
        sessions: args.sessions,
        connected: held.len(),
        errors,
        error_samples,
        setup_s: (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
    };
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    for e in &report.error_samples {
        eprintln!("  error: {e}");
    }
    println!(
        "ready {} (of {}, {} errors, {:.2}s)",
        report.connected, report.sessions, report.errors, report.setup_s
    );
    // Hold: the sessions stay open, nobody reads (nothing arrives on an idle echo session).
    tokio::time::sleep(args.hold).await;
    drop(held);
    Ok(())
}
