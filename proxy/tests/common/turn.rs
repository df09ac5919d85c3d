//! A real TURN server (coturn on 127.0.0.1) and a TURN client built on webrtc-rs's `stun`
//! crate (independent of sigmesh's own STUN code), for the relay tests.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use stun::agent::TransactionId;
use stun::attributes::*;
use stun::error_code::ErrorCodeAttribute;
use stun::fingerprint::FINGERPRINT;
use stun::integrity::MessageIntegrity;
use stun::message::*;
use stun::textattrs::TextAttribute;
use stun::xoraddr::XorMappedAddress;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UdpSocket};
use tokio::process::{Child, Command};

use super::{WAIT, within};

pub const SECRET: &str = "turn-test-secret";
pub const REALM: &str = "sigmesh.test";

// === coturn ===

/// A `turnserver` on 127.0.0.1, killed on drop; its log (stdout) is collected.
pub struct Coturn {
    _child: Child,
    _dir: tempfile::TempDir,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl Coturn {
    pub async fn start() -> Coturn {
        if std::process::Command::new("turnserver")
            .arg("--version")
            .output()
            .is_err()
        {
            panic!(
                "`turnserver` (coturn) is not installed: run scripts/install/coturn.sh \
                 (or `apt-get install coturn`); these tests need a real TURN server"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..10 {
            // A port free for both UDP and TCP.
            let port = {
                let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                let p = u.local_addr().unwrap().port();
                if std::net::TcpListener::bind(("127.0.0.1", p)).is_err() {
                    continue;
                }
                p
            };
            let mut child = Command::new("turnserver")
                .args([
                    "-n",
                    "--listening-ip=127.0.0.1",
                    "--relay-ip=127.0.0.1",
                    &format!("--listening-port={port}"),
                    "--use-auth-secret",
                    &format!("--static-auth-secret={SECRET}"),
                    &format!("--realm={REALM}"),
                    "--allow-loopback-peers",
                    "--no-cli",
                    "--no-tls",
                    "--no-dtls",
                    "--verbose",
                    "--simple-log",
                    "--log-file",
                    "stdout",
                    &format!("--pidfile={}", dir.path().join("pid").display()),
                    &format!("--db={}", dir.path().join("turndb").display()),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .expect("spawn turnserver");
            let log = Arc::new(Mutex::new(String::new()));
            let out = child.stdout.take().unwrap();
            let sink = log.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(out).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    let mut g = sink.lock().unwrap();
                    g.push_str(&l);
                    g.push('\n');
                }
            });
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            // Ready when it answers a Binding request (polled with a deadline).
            let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let deadline = tokio::time::Instant::now() + WAIT;
            let mut req = Message::new();
            req.build(&[Box::new(TransactionId::new()), Box::new(BINDING_REQUEST)])
                .unwrap();
            while tokio::time::Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited: port taken? try another
                }
                let _ = sock.send_to(&req.raw, addr).await;
                let mut buf = [0u8; 1500];
                if let Ok(Ok(_)) =
                    tokio::time::timeout(Duration::from_millis(100), sock.recv_from(&mut buf)).await
                {
                    return Coturn {
                        _child: child,
                        _dir: dir,
                        addr,
                        log,
                    };
                }
            }
        }
        panic!("turnserver did not start on 127.0.0.1");
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// How many requests of this method coturn processed (its `incoming packet METHOD
    /// processed` log lines).
    pub fn processed(&self, method: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains(&format!("incoming packet {method} processed")))
            .count()
    }
}

// === a TURN client built on webrtc-rs's `stun` ===

pub fn rest_credential(user: &str) -> (String, String) {
    let expiry = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let username = format!("{expiry}:{user}");
    let password = sigmesh_core::turn::tracker::rest_password(SECRET, &username);
    (username, password)
}

pub struct PeerAttr(pub SocketAddr);
impl Setter for PeerAttr {
    fn add_to(&self, m: &mut Message) -> Result<(), stun::Error> {
        XorMappedAddress {
            ip: self.0.ip(),
            port: self.0.port(),
        }
        .add_to_as(m, ATTR_XOR_PEER_ADDRESS)
    }
}
pub struct Raw(pub AttrType, pub Vec<u8>);
impl Setter for Raw {
    fn add_to(&self, m: &mut Message) -> Result<(), stun::Error> {
        m.add(self.0, &self.1);
        Ok(())
    }
}

pub enum Io {
    Udp(UdpSocket),
    Tcp(TcpStream, Vec<u8>),
}

pub struct TurnClient {
    pub io: Io,
    pub username: String,
    pub password: String,
    pub nonce: String,
}

impl TurnClient {
    pub async fn udp(server: SocketAddr, user: &str) -> TurnClient {
        let (username, password) = rest_credential(user);
        TurnClient::udp_as(server, username, password).await
    }

    /// Over UDP, with a credential obtained elsewhere (the credentials endpoint).
    pub async fn udp_as(server: SocketAddr, username: String, password: String) -> TurnClient {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.connect(server).await.unwrap();
        TurnClient {
            io: Io::Udp(s),
            username,
            password,
            nonce: String::new(),
        }
    }

    pub async fn tcp(server: SocketAddr, user: &str) -> TurnClient {
        let s = within(TcpStream::connect(server)).await.unwrap();
        TurnClient::tcp_over(s, user)
    }

    /// Over an open TCP connection (one with a small receive window, say).
    pub fn tcp_over(s: TcpStream, user: &str) -> TurnClient {
        let (username, password) = rest_credential(user);
        TurnClient {
            io: Io::Tcp(s, Vec::new()),
            username,
            password,
            nonce: String::new(),
        }
    }

    pub async fn send_raw(&mut self, b: &[u8]) {
        match &mut self.io {
            Io::Udp(s) => {
                s.send(b).await.unwrap();
            }
            Io::Tcp(s, _) => s.write_all(b).await.unwrap(),
        }
    }

    /// The next message from the server (STUN or ChannelData bytes).
    pub async fn recv_raw(&mut self) -> Vec<u8> {
        within(async {
            match &mut self.io {
                Io::Udp(s) => {
                    let mut buf = vec![0u8; 65536];
                    let n = s.recv(&mut buf).await.unwrap();
                    buf.truncate(n);
                    buf
                }
                Io::Tcp(s, pending) => loop {
                    if pending.len() >= 4 {
                        let len = u16::from_be_bytes([pending[2], pending[3]]) as usize;
                        let total = if pending[0] >> 6 == 0 {
                            20 + len
                        } else {
                            4 + len.div_ceil(4) * 4
                        };
                        if pending.len() >= total {
                            let rest = pending.split_off(total);
                            return std::mem::replace(pending, rest);
                        }
                    }
                    let mut buf = [0u8; 4096];
                    let n = s.read(&mut buf).await.unwrap();
                    assert!(n > 0, "TURN connection closed");
                    pending.extend_from_slice(&buf[..n]);
                },
            }
        })
        .await
    }

    pub fn build(
        &self,
        typ: MessageType,
        mut setters: Vec<Box<dyn Setter>>,
        signed: bool,
    ) -> Message {
        let mut all: Vec<Box<dyn Setter>> = vec![Box::new(TransactionId::new()), Box::new(typ)];
        all.append(&mut setters);
        if signed {
            all.push(Box::new(TextAttribute::new(
                ATTR_USERNAME,
                self.username.clone(),
            )));
            all.push(Box::new(TextAttribute::new(ATTR_REALM, REALM.into())));
            all.push(Box::new(TextAttribute::new(ATTR_NONCE, self.nonce.clone())));
            all.push(Box::new(self.integrity()));
        }
        all.push(Box::new(FINGERPRINT));
        let mut m = Message::new();
        m.build(&all).unwrap();
        m
    }

    pub fn integrity(&self) -> MessageIntegrity {
        MessageIntegrity::new_long_term_integrity(
            self.username.clone(),
            REALM.into(),
            self.password.clone(),
        )
    }

    /// Sends a request and returns the response with its transaction ID.
    pub async fn transact(&mut self, method: Method, setters: Vec<Box<dyn Setter>>) -> Message {
        let req = self.build(MessageType::new(method, CLASS_REQUEST), setters, true);
        self.send_raw(&req.raw).await;
        loop {
            let raw = self.recv_raw().await;
            let mut m = Message::new();
            if m.unmarshal_binary(&raw).is_ok() && m.transaction_id == req.transaction_id {
                return m;
            }
        }
    }

    /// Allocate (401 first, then with credentials); returns the relayed address.
    pub async fn allocate(&mut self) -> SocketAddr {
        let m = self.try_allocate().await;
        assert_eq!(
            m.typ.class,
            CLASS_SUCCESS_RESPONSE,
            "Allocate: {:?}",
            code(&m)
        );
        let mut relayed = XorMappedAddress::default();
        relayed.get_from_as(&m, ATTR_XOR_RELAYED_ADDRESS).unwrap();
        SocketAddr::new(relayed.ip, relayed.port)
    }

    /// Allocate (401 first, then with credentials); the final response, success or error.
    pub async fn try_allocate(&mut self) -> Message {
        let transport: Box<dyn Setter> = Box::new(Raw(ATTR_REQUESTED_TRANSPORT, vec![17, 0, 0, 0]));
        let req = self.build(
            MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST),
            vec![transport],
            false,
        );
        self.send_raw(&req.raw).await;
        let mut m = Message::new();
        m.unmarshal_binary(&self.recv_raw().await).unwrap();
        assert_eq!(code(&m), Some(401), "first Allocate is challenged");
        self.nonce = TextAttribute::get_from_as(&m, ATTR_NONCE).unwrap().text;
        self.transact(
            METHOD_ALLOCATE,
            vec![Box::new(Raw(ATTR_REQUESTED_TRANSPORT, vec![17, 0, 0, 0]))],
        )
        .await
    }

    /// Ends the allocation (Refresh with LIFETIME 0); the response.
    pub async fn release(&mut self) -> Message {
        self.transact(
            METHOD_REFRESH,
            vec![Box::new(Raw(ATTR_LIFETIME, vec![0, 0, 0, 0]))],
        )
        .await
    }
}

pub fn code(m: &Message) -> Option<u16> {
    let mut ec = ErrorCodeAttribute::default();
    ec.get_from(m).ok().map(|_| ec.code.0)
}

pub fn software(m: &Message) -> String {
    TextAttribute::get_from_as(m, ATTR_SOFTWARE)
        .map(|t| t.text)
        .unwrap_or_default()
}

pub fn channel(n: u16) -> Box<dyn Setter> {
    Box::new(Raw(
        ATTR_CHANNEL_NUMBER,
        vec![(n >> 8) as u8, n as u8, 0, 0],
    ))
}
