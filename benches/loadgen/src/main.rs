//! `sigmesh-loadgen`: the end-to-end load harness for sigmesh.
//!
//! * `echo` — a WebSocket echo upstream (text and binary frames come back as-is).
//! * `run` — N client sessions pushing small signaling-like JSON text messages at a WebSocket URL
//!   (the echo server directly, or sigmesh in front of it), measuring round-trip latency with an
//!   HDR histogram. Closed-loop (a window of in-flight messages per session → messages/s) or
//!   fixed-rate (`--rate`, latency from the *scheduled* send time, correcting coordinated omission).
//! * `report` — folds the JSON of a direct and a proxied run into a comparison table.
//! * `idle` — opens N sessions, one round trip each, then holds them idle (proxy memory per session).
//! * `storm` — a reconnect storm: completed handshakes/s and handshake time with N connectors.
//! * `soak` — holds N sessions with churn beside a flood of bad input, reporting the proxy's RSS,
//!   file descriptors and round-trip p99 every interval.
//! * `raw-echo` / `raw-run` — compressed sessions (`permessage-deflate`) and uncompressed ones
//!   from raw frames, for `benches/compression.sh`.
//! * `free-ports` — prints free loopback TCP ports (for the e2e script's temporary config).

mod attack;
mod conn;
mod echo;
mod idle;
mod raw;
mod report;
mod run;
mod soak;
mod storm;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sigmesh-loadgen",
    version,
    about = "End-to-end load harness for sigmesh"
)]
struct Cli {
    /// CA certificate(s), PEM, that `wss://` URLs are verified with.
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A WebSocket echo server (any path), echoing text and binary messages as-is.
    Echo {
        /// Address to listen on; port 0 picks a free port (the bound address is printed).
        #[arg(long, default_value = "127.0.0.1:9001")]
        listen: SocketAddr,
        /// Runtime worker threads; 1 (the default) runs a current-thread runtime, which pins well
        /// with `taskset`.
        #[arg(long, default_value_t = 1)]
        threads: usize,
    },
    /// Drive load at a WebSocket URL and report messages/s and round-trip latency.
    Run(run::RunArgs),
    /// Open N sessions (one round trip each), print `ready`, and hold them idle.
    Idle(idle::IdleArgs),
    /// A reconnect storm: handshakes/s and handshake time with N concurrent connectors.
    Storm(storm::StormArgs),
    /// Hold N sessions with churn and a flood of bad input; report the proxy every interval.
    Soak(soak::SoakArgs),
    /// An echo upstream that accepts permessage-deflate and echoes frames as they came.
    RawEcho {
        #[arg(long, default_value = "127.0.0.1:9002")]
        listen: SocketAddr,
    },
    /// Closed-loop raw sessions, compressed (`--deflate`) or not; prints round trips as JSON.
    RawRun(raw::RawRunArgs),
    /// Compare a direct and a proxied run (the JSON written by `run --json`).
    Report(report::ReportArgs),
    /// Print N free loopback TCP ports, one per line.
    FreePorts {
        #[arg(default_value_t = 1)]
        count: usize,
    },
}

/// Parses `10s`, `250ms`, `1m30s`; a bare number is seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
        return Err(format!("invalid duration {s:?}"));
    }
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

fn runtime(threads: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    let rt = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    Ok(rt)
}

fn free_ports(count: usize) -> anyhow::Result<()> {
    // Hold every listener until all are bound so the ports are distinct.
    let listeners = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    for l in &listeners {
        println!("{}", l.local_addr()?.port());
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(ca) = &cli.ca
        && let Err(e) = conn::trust(ca)
    {
        eprintln!("sigmesh-loadgen: error: --ca: {e:#}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Echo { listen, threads } => {
            runtime(threads).and_then(|rt| rt.block_on(echo::serve(listen)))
        }
        Command::Run(args) => {
            let threads = args
                .threads
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            runtime(threads).and_then(|rt| rt.block_on(run::run(args)))
        }
        Command::Idle(args) => runtime(args.threads).and_then(|rt| rt.block_on(idle::idle(args))),
        Command::Storm(args) => {
            runtime(args.threads).and_then(|rt| rt.block_on(storm::storm(args)))
        }
        Command::Soak(args) => runtime(args.threads).and_then(|rt| rt.block_on(soak::soak(args))),
        Command::RawEcho { listen } => runtime(1).and_then(|rt| rt.block_on(raw::echo(listen))),
        Command::RawRun(args) => runtime(args.threads).and_then(|rt| rt.block_on(raw::run(args))),
        Command::Report(args) => report::report(&args),
        Command::FreePorts { count } => free_ports(count),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sigmesh-loadgen: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Reads a JSON file into `T` (used by `report`).
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &PathBuf) -> anyhow::Result<T> {
    use anyhow::Context as _;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}
