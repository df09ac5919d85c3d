//! TURN over TCP: one upstream connection per client connection; both directions cut into
//! STUN/ChannelData frames so each message goes through the tracker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sigmesh_core::turn::{FiveTuple, Frame, Framer, Transport, TurnAction};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use super::TurnState;
use super::{CONNECT_TIMEOUT, Dir, FLOW_IDLE, MAX_CONNECTIONS};

/// Bytes read at a time from each side.
const READ_CHUNK: usize = 16 * 1024;

/// A write that does not finish within this ends the connection: a peer that never reads must
/// not pin its slot (and the other side's buffer) for ever.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes all of `bytes`; `false` when the peer is gone or did not take them within
/// [`WRITE_TIMEOUT`].
async fn write(w: &mut (impl tokio::io::AsyncWrite + Unpin), bytes: &[u8]) -> bool {
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, w.write_all(bytes)).await,
        Ok(Ok(()))
    )
}

/// Accepts TCP clients until dropped; dropping it closes every connection.
pub async fn serve(
    turn: Arc<TurnState>,
    listener: TcpListener,
    local: SocketAddr,
    upstream: SocketAddr,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => {
                let Ok((client, addr)) = r else { continue };
                if conns.len() >= MAX_CONNECTIONS {
                    tracing::warn!(client = %addr, "TURN relay: too many TCP connections; closed");
                    continue;
                }
                let ft = FiveTuple { transport: Transport::Tcp, client: addr, server: local };
                conns.spawn(connection(turn.clone(), client, ft, upstream));
            }
            Some(_) = conns.join_next() => {}
        }
    }
}

async fn connection(turn: Arc<TurnState>, client: TcpStream, ft: FiveTuple, upstream: SocketAddr) {
    let up = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(upstream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::warn!(client = %ft.client, error = %e, "TURN relay: upstream connect failed");
            return;
        }
        Err(_) => {
            tracing::warn!(client = %ft.client, "TURN relay: upstream connect timed out");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = up.set_nodelay(true);
    relay(&turn, client, up, ft).await;
    turn.closed(&ft);
}

async fn relay(turn: &TurnState, client: TcpStream, up: TcpStream, ft: FiveTuple) {
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = up.into_split();
    let (mut cf, mut uf) = (Framer::new(), Framer::new());
    let mut cbuf = vec![0u8; READ_CHUNK];
    let mut ubuf = vec![0u8; READ_CHUNK];
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            r = cr.read(&mut cbuf) => {
                let n = match r { Ok(0) | Err(_) => return, Ok(n) => n };
                last = tokio::time::Instant::now();
                cf.push(&cbuf[..n]);
                while let Some(frame) = cf.next_frame() {
                    let action = match &frame {
                        Frame::Opaque(_) => TurnAction::Forward,
                        Frame::Invalid => {
                            // Not TURN, or a frame over 65,535 bytes: fail closed (counted as
                            // an unknown message dropped) and end the connection.
                            let _ = turn.handle(Dir::FromClient, ft, &[]);
                            tracing::debug!(client = %ft.client, "TURN relay: not TURN framing; connection closed");
                            return;
                        }
                        f => turn.handle(Dir::FromClient, ft, f.bytes()).action,
                    };
                    let ok = match action {
                        TurnAction::Forward => write(&mut uw, frame.bytes()).await,
                        TurnAction::Reply(resp) => write(&mut cw, &resp).await,
                        TurnAction::Drop => true,
                    };
                    if !ok { return; }
                }
            }
            r = ur.read(&mut ubuf) => {
                let n = match r { Ok(0) | Err(_) => return, Ok(n) => n };
                last = tokio::time::Instant::now();
                uf.push(&ubuf[..n]);
                while let Some(frame) = uf.next_frame() {
                    if frame == Frame::Invalid {
                        tracing::debug!(client = %ft.client, "TURN relay: the server broke TURN framing; connection closed");
                        return;
                    }
                    if !matches!(frame, Frame::Opaque(_)) {
                        let out = turn.handle(Dir::FromServer, ft, frame.bytes());
                        if out.raw_after {
                            // RFC 6062 data connection: from here on, raw peer bytes.
                            cf.set_opaque();
                            uf.set_opaque();
                        }
                    }
                    if !write(&mut cw, frame.bytes()).await { return; }
                }
            }
            _ = sweep.tick() => {
                if last.elapsed() >= FLOW_IDLE && !turn.has_allocation(&ft) {
                    return;
                }
            }
        }
    }
}
