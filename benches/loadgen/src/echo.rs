//! The echo upstream.

use std::net::SocketAddr;

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

pub async fn serve(listen: SocketAddr) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let local = listener.local_addr()?;
    println!("sigmesh-loadgen echo listening on ws://{local}/");
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                tokio::spawn(async move {
                    if let Err(e) = session(stream).await {
                        // Clients going away mid-run are expected at the end of a run; keep quiet
                        // unless asked.
                        if std::env::var_os("LOADGEN_ECHO_VERBOSE").is_some() {
                            eprintln!("echo session: {e:#}");
                        }
                    }
                });
            }
            Err(e) => {
                // EMFILE and the like: back off briefly rather than spin.
                eprintln!("echo accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

async fn session(stream: TcpStream) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut ws = tokio_tungstenite::accept_async(stream)
        .await
        .context("handshake")?;
    while let Some(msg) = ws.next().await {
        match msg? {
            m @ (Message::Text(_) | Message::Binary(_)) => ws.send(m).await?,
            // Pings are answered by tungstenite itself; a close is answered by it too, and the
            // stream ends once the reply is out.
            Message::Close(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }
    Ok(())
}
