//! `sigmesh-signaling-server --listen 127.0.0.1:9001 --name stable [--subprotocol P]...`

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use sigmesh_signaling_server::{ServerOptions, serve};
use tracing_subscriber::EnvFilter;

const USAGE: &str =
    "usage: sigmesh-signaling-server [--listen ADDR] [--name NAME] [--subprotocol P]... [--relay-delay-ms N]

  --listen ADDR      address to listen on (default 127.0.0.1:9001)
  --name NAME        name reported to clients (default \"signaling\")
  --subprotocol P    a subprotocol to accept (repeatable; none: accept the first offered)
  --relay-delay-ms N hold every relayed message N ms (a slow version, for canary trials)

Serves WebSocket signaling on any path, the demo page on /, and /healthz.
RUST_LOG sets the log filter (default info).";

struct Args {
    listen: SocketAddr,
    opts: ServerOptions,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 9001));
    let mut opts = ServerOptions::default();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--listen" | "-l" => {
                let v = value()?;
                listen = v.parse().map_err(|e| format!("--listen {v}: {e}"))?;
            }
            "--name" | "-n" => opts.name = value()?,
            "--subprotocol" => opts.subprotocols.push(value()?),
            "--relay-delay-ms" => {
                let v = value()?;
                let ms: u64 = v
                    .parse()
                    .map_err(|e| format!("--relay-delay-ms {v}: {e}"))?;
                opts.relay_delay = std::time::Duration::from_millis(ms);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Some(Args { listen, opts }))
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    let args = match parse_args(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("error: {err}\n\n{USAGE}");
            return ExitCode::from(1);
        }
    };

    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(l) => l,
        Err(err) => {
            eprintln!("error: cannot listen on {}: {err}", args.listen);
            return ExitCode::from(2);
        }
    };
    let name = args.opts.name.clone();
    let server = match serve(listener, args.opts).await {
        Ok(s) => s,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(2);
        }
    };
    println!(
        "signaling server {name:?}: demo page http://{addr}/  websocket ws://{addr}/ws",
        addr = server.local_addr
    );

    wait_for_signal().await;
    tracing::info!("shutting down");
    server.shutdown();
    if tokio::time::timeout(Duration::from_secs(5), server.closed())
        .await
        .is_err()
    {
        tracing::warn!("some sessions did not close in time");
    }
    ExitCode::SUCCESS
}

/// Waits for Ctrl-C (or SIGTERM on Unix).
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    if let Err(err) = tokio::signal::ctrl_c().await {
        eprintln!("error: cannot wait for ctrl-c: {err}");
        std::future::pending::<()>().await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(args: &[&str]) -> Result<Option<Args>, String> {
        parse_args(args.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn parses_flags() {
        let a = parse(&[
            "--listen",
            "127.0.0.1:9002",
            "--name=canary",
            "--subprotocol",
            "x",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(a.listen.port(), 9002);
        assert_eq!(a.opts.name, "canary");
        assert_eq!(a.opts.subprotocols, vec!["x".to_owned()]);
        assert!(parse(&["--help"]).unwrap().is_none());
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["--listen"]).is_err());
        assert!(parse(&["--listen", "nope"]).is_err());
    }
}
