//! `ice-call SIGMESH_HTTP TURN_RELAY [ROOM]`: runs both sides of a call over a running sigmesh
//! (`SIGMESH_HTTP` = its `listen` address, serving `/ws` and `/turn-credentials`; `TURN_RELAY` =
//! its `turn.relay.listen`), and prints what each side saw.

use anyhow::{Context, Result};
use sigmesh_ice_call::{Peer, fetch_credential, run};

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let mut args = std::env::args().skip(1);
    let (Some(http), Some(turn)) = (args.next(), args.next()) else {
        eprintln!("usage: ice-call SIGMESH_HTTP(host:port) TURN_RELAY(host:port) [ROOM]");
        std::process::exit(2);
    };
    let room = args.next().unwrap_or_else(|| "ice-call".into());
    let mut peers = Vec::new();
    for (name, caller) in [("alice", true), ("bob", false)] {
        let credential = fetch_credential(&http, "/turn-credentials", name)
            .await?
            .context("sigmesh has no /turn-credentials endpoint (configure `turn:`)")?;
        peers.push(tokio::spawn(run(Peer {
            name: name.into(),
            room: room.clone(),
            signaling: format!("ws://{http}/ws"),
            turn: turn.clone(),
            credential,
            caller,
        })));
    }
    for p in peers {
        let (report, live) = p.await??;
        println!("{report:?}");
        live.close().await;
    }
    Ok(())
}
