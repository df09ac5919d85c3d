//! TURN over UDP: one listen socket towards clients, one upstream socket per client 5-tuple.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sigmesh_core::turn::{FiveTuple, Transport, TurnAction};
use tokio::net::UdpSocket;
use tokio::task::{AbortHandle, JoinSet};

use super::TurnState;
use super::{Dir, FLOW_IDLE, MAX_DATAGRAM, MAX_FLOWS, MAX_FLOWS_PER_IP};
use crate::clock::now;

struct Flow {
    up: Arc<UdpSocket>,
    /// Last packet either way, in ms of [`now`].
    last: Arc<AtomicU64>,
    task: AbortHandle,
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// Serves UDP clients until dropped; dropping it ends every flow.
pub async fn serve(turn: Arc<TurnState>, sock: UdpSocket, local: SocketAddr, upstream: SocketAddr) {
    let sock = Arc::new(sock);
    let mut flows: HashMap<SocketAddr, Flow> = HashMap::new();
    let mut tasks: JoinSet<SocketAddr> = JoinSet::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    let mut warned = tokio::time::Instant::now() - Duration::from_secs(2);
    let mut per_ip: HashMap<IpAddr, usize> = HashMap::new();
    loop {
        tokio::select! {
            r = sock.recv_from(&mut buf) => {
                let Ok((n, client)) = r else { continue };
                let bytes = &buf[..n];
                let ft = FiveTuple { transport: Transport::Udp, client, server: local };
                let out = turn.handle(Dir::FromClient, ft, bytes);
                match out.action {
                    TurnAction::Forward => {}
                    TurnAction::Reply(resp) => {
                        let _ = sock.send_to(&resp, client).await;
                        continue;
                    }
                    TurnAction::Drop => continue,
                }
                // Only a datagram the tracker let through (a valid STUN message, or ChannelData of
                // an allocation) opens a flow: one-byte floods from new ports open none.
                if !flows.contains_key(&client) {
                    let from_ip = per_ip.get(&client.ip()).copied().unwrap_or(0);
                    if flows.len() >= MAX_FLOWS || from_ip >= MAX_FLOWS_PER_IP {
                        if warned.elapsed() >= Duration::from_secs(1) {
                            warned = tokio::time::Instant::now();
                            tracing::warn!(%client, flows = flows.len(), from_ip, "TURN relay: too many UDP flows; packets dropped (logged once a second)");
                        }
                        continue;
                    }
                    match open(&turn, &sock, &mut tasks, ft, upstream).await {
                        Ok(f) => {
                            flows.insert(client, f);
                            *per_ip.entry(client.ip()).or_insert(0) += 1;
                        }
                        Err(e) => {
                            tracing::warn!(%client, error = %e, "TURN relay: cannot open an upstream socket");
                            continue;
                        }
                    }
                }
                if let Some(f) = flows.get(&client) {
                    f.last.store(ms(now()), Ordering::Relaxed);
                    let _ = f.up.send(bytes).await;
                }
            }
            Some(done) = tasks.join_next() => {
                if let Ok(client) = done
                    && flows.remove(&client).is_some()
                {
                    release(&mut per_ip, client.ip());
                }
            }
            _ = sweep.tick() => {
                let t = ms(now());
                let idle = ms(FLOW_IDLE);
                flows.retain(|client, f| {
                    let ft = FiveTuple { transport: Transport::Udp, client: *client, server: local };
                    let keep = t.saturating_sub(f.last.load(Ordering::Relaxed)) < idle
                        || turn.has_allocation(&ft);
                    if !keep {
                        f.task.abort();
                        release(&mut per_ip, client.ip());
                    }
                    keep
                });
            }
        }
    }
}

/// One flow of `ip` fewer.
fn release(per_ip: &mut HashMap<IpAddr, usize>, ip: IpAddr) {
    if let Some(n) = per_ip.get_mut(&ip) {
        *n -= 1;
        if *n == 0 {
            per_ip.remove(&ip);
        }
    }
}

/// Opens the upstream socket of a new client and starts reading the server's answers.
async fn open(
    turn: &Arc<TurnState>,
    sock: &Arc<UdpSocket>,
    tasks: &mut JoinSet<SocketAddr>,
    ft: FiveTuple,
    upstream: SocketAddr,
) -> std::io::Result<Flow> {
    let any = match upstream.ip() {
        IpAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        IpAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    };
    let up = Arc::new(UdpSocket::bind(any).await?);
    up.connect(upstream).await?;
    let last = Arc::new(AtomicU64::new(ms(now())));
    let task = tasks.spawn(from_server(
        turn.clone(),
        sock.clone(),
        up.clone(),
        last.clone(),
        ft,
    ));
    Ok(Flow { up, last, task })
}

/// Server to client for one flow. Ends when the upstream socket fails; the sweep aborts it
/// when the flow goes idle.
async fn from_server(
    turn: Arc<TurnState>,
    sock: Arc<UdpSocket>,
    up: Arc<UdpSocket>,
    last: Arc<AtomicU64>,
    ft: FiveTuple,
) -> SocketAddr {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut errors = 0u32;
    loop {
        match up.recv(&mut buf).await {
            Ok(n) => {
                errors = 0;
                last.store(ms(now()), Ordering::Relaxed);
                let bytes = &buf[..n];
                // Server messages are always forwarded; the tracker only reads them.
                let _ = turn.handle(Dir::FromServer, ft, bytes);
                let _ = sock.send_to(bytes, ft.client).await;
            }
            // ICMP errors surface as ECONNREFUSED on a connected UDP socket: the server is
            // not there (yet); keep the flow unless it keeps failing.
            Err(_) => {
                errors += 1;
                if errors > 100 {
                    return ft.client;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
