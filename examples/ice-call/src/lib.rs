//! Two ICE agents (webrtc-ice) set up a call the way a WebRTC app does, over sigmesh:
//!
//! 1. each peer opens a WebSocket to the signaling server *through sigmesh*
//!    (`/ws?room=ROOM&peer=NAME`) and fetches a TURN REST credential from sigmesh's
//!    `GET /turn-credentials?user=NAME`;
//! 2. each gathers **relay candidates only**, from the TURN server behind sigmesh's TURN relay;
//! 3. the caller sends an `offer` (an SDP carrying its ICE ufrag/pwd), the callee an `answer`;
//!    both trickle `candidate` messages in the browser's `RTCIceCandidate` JSON shape;
//! 4. the agents connect (the only possible path is TURN relay to TURN relay) and exchange
//!    `ping` / `pong`.
//!
//! Run it against a running `sigmesh` with `cargo run -p sigmesh-ice-call -- --help`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use webrtc_ice::agent::Agent;
use webrtc_ice::agent::agent_config::AgentConfig;
use webrtc_ice::candidate::candidate_base::unmarshal_candidate;
use webrtc_ice::candidate::{Candidate, CandidateType};
use webrtc_ice::network_type::NetworkType;
use webrtc_ice::url::Url;
use webrtc_util::Conn;

/// A TURN REST credential (`{username, password, ttl, uris}`).
#[derive(Debug, Clone)]
pub struct TurnCredential {
    pub username: String,
    pub password: String,
}

/// One side of the call.
#[derive(Debug, Clone)]
pub struct Peer {
    /// Peer name (`from` in the messages, `peer` in the URL, `user` of the TURN credential).
    pub name: String,
    /// Room.
    pub room: String,
    /// `ws://HOST:PORT/ws` of the signaling route on sigmesh (query added here).
    pub signaling: String,
    /// The TURN server (sigmesh's TURN relay), `HOST:PORT`.
    pub turn: String,
    pub credential: TurnCredential,
    /// The caller (ICE controlling side).
    pub caller: bool,
}

/// What one side saw.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub local_candidates: Vec<String>,
    pub remote_candidates: Vec<String>,
    /// The selected pair's local and remote candidate types.
    pub selected: Option<(String, String)>,
    /// What arrived over the ICE connection.
    pub received: Vec<u8>,
}

/// `GET {base}/turn-credentials?user=USER` on sigmesh (plain HTTP/1.1, `base` = `HOST:PORT`).
/// `None` when the endpoint is not there (any status but 200).
pub async fn fetch_credential(
    base: &str,
    path: &str,
    user: &str,
) -> Result<Option<TurnCredential>> {
    let mut s = TcpStream::connect(base).await?;
    let req =
        format!("GET {path}?user={user} HTTP/1.1\r\nhost: {base}\r\nconnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    s.take(1 << 20).read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if head.split_whitespace().nth(1) != Some("200") {
        return Ok(None);
    }
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    let v: Value = serde_json::from_str(&body).context("credential JSON")?;
    Ok(Some(TurnCredential {
        username: v["username"].as_str().context("username")?.to_owned(),
        password: v["password"].as_str().context("password")?.to_owned(),
    }))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

fn sdp(ufrag: &str, pwd: &str) -> String {
    format!(
        "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
         c=IN IP4 0.0.0.0\r\na=mid:0\r\na=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\n"
    )
}

fn sdp_field(sdp: &str, key: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .map(str::to_owned)
}

/// Runs one side of the call until `ping`/`pong` went through (the caller sends `ping`, the
/// callee answers `pong`).
pub async fn run(peer: Peer) -> Result<(Report, Live)> {
    let url = format!("{}?room={}&peer={}", peer.signaling, peer.room, peer.name);
    let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .context("signaling WebSocket through sigmesh")?;
    let (mut ws_tx, mut ws_rx) = ws.split();

    let (host, port) = peer.turn.rsplit_once(':').context("turn HOST:PORT")?;
    let mut turn = Url::parse_url(&format!("turn:{host}:{port}?transport=udp"))?;
    turn.username = peer.credential.username.clone();
    turn.password = peer.credential.password.clone();
    let agent = Arc::new(
        Agent::new(AgentConfig {
            urls: vec![turn],
            network_types: vec![NetworkType::Udp4],
            candidate_types: vec![CandidateType::Relay],
            is_controlling: peer.caller,
            ..Default::default()
        })
        .await?,
    );
    let (cand_tx, mut cand_rx) = mpsc::unbounded_channel::<String>();
    agent.on_candidate(Box::new(
        move |c: Option<Arc<dyn Candidate + Send + Sync>>| {
            if let Some(c) = c {
                let _ = cand_tx.send(c.marshal());
            }
            Box::pin(async {})
        },
    ));
    let (ufrag, pwd) = agent.get_local_user_credentials().await;
    let mut report = Report::default();
    let send = |v: Value| Message::text(v.to_string());

    // Signaling until both sides have the other's credentials; candidates keep flowing after.
    let mut remote: Option<(String, String)> = None;
    let mut gathering = false;
    let (remote_tx, remote_rx) = tokio::sync::oneshot::channel();
    let mut remote_tx = Some(remote_tx);
    let name = peer.name.clone();
    let agent2 = agent.clone();
    let signaling = async move {
        let mut local = Vec::new();
        let mut remote_cands = Vec::new();
        loop {
            tokio::select! {
                c = cand_rx.recv() => {
                    let Some(c) = c else { continue };
                    local.push(c.clone());
                    let msg = json!({"type": "candidate", "from": name, "candidate":
                        {"candidate": format!("candidate:{c}"), "sdpMid": "0", "sdpMLineIndex": 0}});
                    ws_tx.send(send(msg)).await?;
                }
                m = ws_rx.next() => {
                    let text = match m {
                        Some(Ok(Message::Text(t))) => t.to_string(),
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => return Err(anyhow!(e)),
                        None => return Ok::<_, anyhow::Error>((local, remote_cands, ws_tx)),
                    };
                    let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                    let from = v["from"].as_str().unwrap_or_default();
                    match v["type"].as_str() {
                        Some("welcome" | "peer-joined") if peer.caller && !gathering => {
                            let others = v["peers"].as_array().is_some_and(|p| !p.is_empty())
                                || v["type"] == "peer-joined";
                            if others {
                                gathering = true;
                                ws_tx.send(send(json!({"type": "offer", "from": name, "sdp": sdp(&ufrag, &pwd)}))).await?;
                                agent2.gather_candidates()?;
                            }
                        }
                        Some(t @ ("offer" | "answer")) if from != name && remote.is_none() => {
                            let s = v["sdp"].as_str().unwrap_or_default();
                            let r = (sdp_field(s, "a=ice-ufrag:").context("ufrag")?, sdp_field(s, "a=ice-pwd:").context("pwd")?);
                            remote = Some(r.clone());
                            if let Some(tx) = remote_tx.take() { let _ = tx.send(r); }
                            if t == "offer" {
                                ws_tx.send(send(json!({"type": "answer", "from": name, "sdp": sdp(&ufrag, &pwd)}))).await?;
                                gathering = true;
                                agent2.gather_candidates()?;
                            }
                        }
                        Some("candidate") if from != name => {
                            let line = v["candidate"]["candidate"].as_str().unwrap_or_default();
                            let line = line.strip_prefix("candidate:").unwrap_or(line);
                            if let Ok(c) = unmarshal_candidate(line) {
                                remote_cands.push(line.to_owned());
                                let c: Arc<dyn Candidate + Send + Sync> = Arc::new(c);
                                agent2.add_remote_candidate(&c)?;
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    };
    let sig = tokio::spawn(signaling);
    let (remote_ufrag, remote_pwd) = remote_rx.await.context("no offer/answer")?;
    let (_cancel_tx, cancel_rx) = mpsc::channel(1);
    let conn: Arc<dyn Conn + Send + Sync> = if peer.caller {
        agent.dial(cancel_rx, remote_ufrag, remote_pwd).await?
    } else {
        agent.accept(cancel_rx, remote_ufrag, remote_pwd).await?
    };
    if let Some(pair) = agent.get_selected_candidate_pair() {
        report.selected = Some((
            pair.local.candidate_type().to_string(),
            pair.remote.candidate_type().to_string(),
        ));
    }
    let mut buf = vec![0u8; 1500];
    if peer.caller {
        // Resend until answered: the first packets may race the far side's permission.
        let mut got = None;
        for _ in 0..50 {
            conn.send(b"ping").await?;
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(200), conn.recv(&mut buf)).await
            {
                got = Some(n);
                break;
            }
        }
        let n = got.context("no pong")?;
        report.received = buf[..n].to_vec();
    } else {
        let n = conn.recv(&mut buf).await?;
        report.received = buf[..n].to_vec();
        conn.send(b"pong").await?;
    }
    report.local_candidates = agent
        .get_local_candidates()
        .await?
        .iter()
        .map(|c| c.marshal())
        .collect();
    report.remote_candidates = agent
        .get_remote_candidates_stats()
        .await
        .iter()
        .map(|c| format!("{} {}:{}", c.candidate_type, c.ip, c.port))
        .collect();
    if report.received.is_empty() {
        bail!("nothing received");
    }
    Ok((
        report,
        Live {
            agent,
            conn,
            signaling: sig,
        },
    ))
}

/// A call that is still up: the agent (and its TURN allocation) and the signaling connection.
pub struct Live {
    agent: Arc<Agent>,
    conn: Arc<dyn Conn + Send + Sync>,
    signaling: tokio::task::JoinHandle<Result<SignalingEnd>>,
}

type SignalingEnd = (
    Vec<String>,
    Vec<String>,
    futures_util::stream::SplitSink<
        tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
        Message,
    >,
);

impl Live {
    /// Sends more data over the ICE connection and waits for `n` bytes back.
    pub async fn echo(&self, data: &[u8]) -> Result<Vec<u8>> {
        self.conn.send(data).await?;
        let mut buf = vec![0u8; 1500];
        let n = self.conn.recv(&mut buf).await?;
        Ok(buf[..n].to_vec())
    }

    /// Hangs up: closes the agent (its TURN client releases the allocation) and the signaling
    /// WebSocket.
    pub async fn close(self) {
        self.signaling.abort();
        let _ = self.signaling.await;
        let _ = self.conn.close().await;
        let _ = self.agent.close().await;
    }
}
