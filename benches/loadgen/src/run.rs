//! The load client: `sigmesh-loadgen run`.
//!
//! Every session is one WebSocket connection sending JSON text messages of about `--size` bytes:
//!
//! ```json
//! {"type":"candidate","room":"r3","from":"p7","seq":42,"ts":1234567,"candidate":"candidate:…","pad":"xxxx"}
//! ```
//!
//! `seq` numbers the messages of a session and `ts` is the latency start (nanoseconds since the run's
//! epoch); the echo sends the text back as-is, so the round trip is read off the echoed message itself.
//! Two sessions share a room (`r{id/2}`), as two peers of a call would.
//!
//! * Closed loop (default): each session keeps `--window` messages in flight; a message is sent as
//!   soon as one comes back. Throughput = round trips completed inside the measured window / its length.
//! * Fixed rate (`--rate R`): each session sends R messages/s on a fixed schedule (sessions are
//!   staggered over one period), whatever comes back. Latency is measured from the *scheduled* send
//!   time, so a stall that delays sends shows up in the latency (no coordinated omission). The
//!   loadgen's own timer lateness (tokio timers have 1 ms granularity) is not the system under test's,
//!   so up to `--timer-slack` of send lateness is forgiven: start = min(actual, scheduled + slack).
//!
//! Messages sent during `--warmup` are not recorded; the run stops by itself at warmup + duration,
//! waits at most `--grace` for outstanding echoes (those that never come are `lost`), and closes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::{SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::conn::{SourceIps, Ws, parse_source_ips};
use crate::parse_duration;

/// Lowest and highest trackable latencies, in nanoseconds (1 µs resolution, up to 60 s).
const HIST_LOW_NS: u64 = 1_000;
const HIST_HIGH_NS: u64 = 60_000_000_000;
const MAX_ERROR_SAMPLES: usize = 5;
const CANDIDATE: &str =
    "candidate:842163049 1 udp 1677729535 203.0.113.7 40127 typ srflx raddr 0.0.0.0 rport 0";

#[derive(clap::Args, Clone)]
pub struct RunArgs {
    /// WebSocket URL to load (`ws://127.0.0.1:9001/ws`).
    #[arg(long)]
    pub url: String,
    /// Concurrent sessions (WebSocket connections).
    #[arg(long, default_value_t = 100)]
    pub sessions: usize,
    /// Measured duration (`10s`, `500ms`).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Unmeasured load before the measured duration, on the same connections.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Approximate size of each text message in bytes (the JSON envelope sets a floor of ~70).
    #[arg(long, default_value_t = 200)]
    pub size: usize,
    /// Closed loop: messages in flight per session.
    #[arg(long, default_value_t = 4)]
    pub window: usize,
    /// Fixed-rate mode: messages per second per session (replaces the closed loop).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Write the result as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// A label for the summary and the JSON (e.g. `direct`, `sigmesh`).
    #[arg(long, default_value = "")]
    pub label: String,
    /// Runtime worker threads (default: the number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Per-connection handshake timeout.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Handshakes in progress at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// How long to wait for outstanding echoes after the end.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub grace: Duration,
    /// Fixed-rate mode: send lateness forgiven as timer granularity (see the module docs).
    #[arg(long, default_value = "2ms", value_parser = parse_duration)]
    pub timer_slack: Duration,
    /// Local addresses to connect from, round-robin (`127.0.0.2-127.0.0.9` or a comma list), so
    /// that many sessions do not run out of ephemeral ports on one address.
    #[arg(long, value_parser = parse_source_ips)]
    pub source_ips: Option<SourceIps>,
    /// Spread the messages over this many distinct rooms (all sessions together: message `seq`
    /// of session `id` names room `(id + seq × sessions) mod N`), to fill a proxy's per-room
    /// tables; 0 (the default) keeps one room per pair of sessions.
    #[arg(long, default_value_t = 0)]
    pub rooms: u64,
}

/// The result of one run, as written by `--json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    pub label: String,
    pub url: String,
    /// `closed` or `rate`.
    pub mode: String,
    pub sessions: usize,
    pub connected: usize,
    pub size: usize,
    pub window: Option<usize>,
    pub rate_per_session: Option<f64>,
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Round trips completed per second inside the measured window.
    pub msgs_per_sec: f64,
    /// Messages sent / echoes received over the whole run (warmup included).
    pub sent: u64,
    pub received: u64,
    /// Round trips recorded in the histogram (sent after the warmup).
    pub samples: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
    /// connect_errors + session errors + lost.
    pub errors: u64,
    pub connect_errors: u64,
    /// Messages whose echo never came (within `--grace`, or before the session failed).
    pub lost: u64,
    pub error_samples: Vec<String>,
}

#[derive(Clone)]
struct Ctx {
    args: Arc<RunArgs>,
    epoch: Instant,
    /// Start of the load (warmup begins here).
    start: Instant,
    measure_start: Instant,
    measure_end: Instant,
    hard_end: Instant,
}

impl Ctx {
    fn ns(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }
}

struct Stats {
    hist: Histogram<u64>,
    sent: u64,
    received: u64,
    in_window: u64,
    errors: u64,
    lost: u64,
    error_samples: Vec<String>,
}

impl Stats {
    fn new() -> anyhow::Result<Self> {
        Ok(Stats {
            hist: Histogram::new_with_bounds(HIST_LOW_NS, HIST_HIGH_NS, 3).context("histogram")?,
            sent: 0,
            received: 0,
            in_window: 0,
            errors: 0,
            lost: 0,
            error_samples: Vec::new(),
        })
    }

    fn error(&mut self, what: impl std::fmt::Display) {
        self.errors += 1;
        if self.error_samples.len() < MAX_ERROR_SAMPLES {
            self.error_samples.push(what.to_string());
        }
    }

    fn merge(&mut self, other: Stats) {
        if let Err(e) = self.hist.add(&other.hist) {
            self.error(format!("histogram merge: {e}"));
        }
        self.sent += other.sent;
        self.received += other.received;
        self.in_window += other.in_window;
        self.errors += other.errors;
        self.lost += other.lost;
        for s in other.error_samples {
            if self.error_samples.len() < MAX_ERROR_SAMPLES && !self.error_samples.contains(&s) {
                self.error_samples.push(s);
            }
        }
    }
}

/// Builds the session's messages; one buffer reused per message.
pub(crate) struct Builder {
    pub(crate) room: u64,
    pub(crate) peer: u64,
    pub(crate) size: usize,
    /// `(rooms, stride)`: message `seq` names room `(room + seq × stride) mod rooms` (see
    /// `RunArgs::rooms`); `None`: always `room`.
    pub(crate) spread: Option<(u64, u64)>,
}

impl Builder {
    pub(crate) fn build(&self, seq: u64, ts: u64) -> String {
        use std::fmt::Write as _;
        let mut s = String::with_capacity(self.size + 16);
        let _ = write!(
            s,
            r#"{{"type":"candidate","room":"r{}","from":"p{}","seq":{seq},"ts":{ts}"#,
            match self.spread {
                Some((rooms, stride)) => self.room.wrapping_add(seq.wrapping_mul(stride)) % rooms,
                None => self.room,
            },
            self.peer
        );
        // `,"candidate":"…"` and `,"pad":""}` around the variable part.
        const PAD_ENVELOPE: usize = r#","pad":""}"#.len();
        let with_candidate = s.len() + r#","candidate":"""#.len() + CANDIDATE.len() + PAD_ENVELOPE;
        if with_candidate <= self.size {
            let _ = write!(s, r#","candidate":"{CANDIDATE}""#);
        }
        let pad = self.size.saturating_sub(s.len() + PAD_ENVELOPE);
        s.push_str(r#","pad":""#);
        s.extend(std::iter::repeat_n('x', pad));
        s.push_str("\"}");
        s
    }
}

/// The unsigned integer after `"key":` in `text`.
fn field_u64(text: &str, key: &str) -> Option<u64> {
    let at = text.find(key)? + key.len();
    let digits = text[at..].bytes().take_while(u8::is_ascii_digit).count();
    text[at..at + digits].parse().ok()
}

/// Where a session's echoes are checked and recorded.
struct Receiver {
    expect: u64,
}

impl Receiver {
    /// Handles one incoming message; `Err` ends the session.
    fn on_message(&mut self, msg: Message, ctx: &Ctx, st: &mut Stats) -> Result<(), String> {
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(_) => {
                st.error("unexpected binary message");
                return Ok(());
            }
            Message::Close(frame) => {
                return Err(match frame {
                    Some(f) => format!("closed by peer: {} {}", u16::from(f.code), f.reason),
                    None => "closed by peer".to_owned(),
                });
            }
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return Ok(()),
        };
        let now = Instant::now();
        let (Some(seq), Some(ts)) = (field_u64(&text, "\"seq\":"), field_u64(&text, "\"ts\":"))
        else {
            st.error("echo without seq/ts");
            return Ok(());
        };
        if seq != self.expect {
            st.error(format!(
                "out of order: expected seq {}, got {seq}",
                self.expect
            ));
            if seq < self.expect {
                return Ok(()); // a duplicate: ignore it
            }
            st.lost += seq - self.expect;
        }
        self.expect = seq + 1;
        st.received += 1;
        if ts >= ctx.ns(ctx.measure_start) {
            let rtt = ctx.ns(now).saturating_sub(ts);
            st.hist.saturating_record(rtt.max(HIST_LOW_NS));
        }
        if now >= ctx.measure_start && now <= ctx.measure_end {
            st.in_window += 1;
        }
        Ok(())
    }
}

async fn session(mut ws: Ws, id: usize, ctx: Ctx) -> anyhow::Result<Stats> {
    let mut st = Stats::new()?;
    let builder = Builder {
        room: if ctx.args.rooms > 0 {
            id as u64
        } else {
            (id / 2) as u64
        },
        peer: id as u64,
        size: ctx.args.size,
        spread: (ctx.args.rooms > 0).then(|| (ctx.args.rooms, ctx.args.sessions as u64)),
    };
    let mut rx = Receiver { expect: 0 };
    let outcome = match ctx.args.rate {
        None => closed_loop(&mut ws, &builder, &mut rx, &ctx, &mut st).await,
        Some(rate) => fixed_rate(&mut ws, &builder, &mut rx, &ctx, &mut st, rate, id).await,
    };
    // Whatever is still outstanding never came back.
    st.lost += st.sent.saturating_sub(rx.expect);
    match outcome {
        Ok(()) => {
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
        }
        Err(e) => st.error(e),
    }
    Ok(st)
}

/// Reads the next message, or `Ok(None)` at `hard_end`.
async fn next_before(ws: &mut Ws, ctx: &Ctx) -> Result<Option<Message>, String> {
    match tokio::time::timeout_at(ctx.hard_end, ws.next()).await {
        Err(_) => Ok(None),
        Ok(None) => Err("connection closed".to_owned()),
        Ok(Some(Err(e))) => Err(format!("receive: {e}")),
        Ok(Some(Ok(m))) => Ok(Some(m)),
    }
}

async fn closed_loop(
    ws: &mut Ws,
    b: &Builder,
    rx: &mut Receiver,
    ctx: &Ctx,
    st: &mut Stats,
) -> Result<(), String> {
    for _ in 0..ctx.args.window.max(1) {
        let msg = b.build(st.sent, ctx.ns(Instant::now()));
        ws.feed(Message::text(msg))
            .await
            .map_err(|e| format!("send: {e}"))?;
        st.sent += 1;
    }
    ws.flush().await.map_err(|e| format!("send: {e}"))?;
    while rx.expect < st.sent {
        let Some(msg) = next_before(ws, ctx).await? else {
            return Ok(()); // grace is over; the rest is lost
        };
        let before = rx.expect;
        rx.on_message(msg, ctx, st)?;
        let now = Instant::now();
        if rx.expect > before && now < ctx.measure_end {
            // One came back: refill the window (as many as came back, out-of-order skips included).
            for _ in before..rx.expect {
                let msg = b.build(st.sent, ctx.ns(now));
                ws.feed(Message::text(msg))
                    .await
                    .map_err(|e| format!("send: {e}"))?;
                st.sent += 1;
            }
            ws.flush().await.map_err(|e| format!("send: {e}"))?;
        }
    }
    Ok(())
}

async fn fixed_rate(
    ws: &mut Ws,
    b: &Builder,
    rx: &mut Receiver,
    ctx: &Ctx,
    st: &mut Stats,
    rate: f64,
    id: usize,
) -> Result<(), String> {
    let period = Duration::from_secs_f64(1.0 / rate);
    // Stagger the sessions over one period so they do not all send at the same instant.
    let phase = period.mul_f64(id as f64 / ctx.args.sessions.max(1) as f64);
    let slack = ctx.args.timer_slack;
    let mut next_at = ctx.start + phase;
    let mut sending = true;
    loop {
        if !sending && rx.expect >= st.sent {
            return Ok(());
        }
        tokio::select! {
            msg = next_before(ws, ctx) => {
                let Some(msg) = msg? else { return Ok(()) };
                rx.on_message(msg, ctx, st)?;
            }
            () = tokio::time::sleep_until(next_at), if sending => {
                let actual = Instant::now();
                if next_at >= ctx.measure_end {
                    sending = false;
                    continue;
                }
                // Sent within `slack` of the schedule: timed from the actual send; later than that, the
                // lateness beyond `slack` counts (coordinated omission).
                let start = actual.min(next_at + slack);
                let msg = b.build(st.sent, ctx.ns(start));
                ws.send(Message::text(msg)).await.map_err(|e| format!("send: {e}"))?;
                st.sent += 1;
                next_at += period;
            }
        }
    }
}

fn us(ns: u64) -> f64 {
    (ns as f64 / 100.0).round() / 10.0
}

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    if let Some(rate) = args.rate {
        anyhow::ensure!(
            rate.is_finite() && rate > 0.0,
            "--rate must be a positive number"
        );
    }
    anyhow::ensure!(args.sessions > 0, "--sessions must be at least 1");
    anyhow::ensure!(!args.duration.is_zero(), "--duration must be positive");
    let args = Arc::new(args);
    let epoch = Instant::now();

    // 1. Connect every session (bounded concurrency).
    let permits = Arc::new(tokio::sync::Semaphore::new(args.connect_concurrency.max(1)));
    let mut connecting = JoinSet::new();
    for id in 0..args.sessions {
        let (args, permits) = (args.clone(), permits.clone());
        connecting.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let source = args.source_ips.as_ref().and_then(|s| s.pick(id));
            (
                id,
                crate::conn::connect(&args.url, source, args.connect_timeout).await,
            )
        });
    }
    let mut conns = Vec::with_capacity(args.sessions);
    let mut total = Stats::new()?;
    let mut connect_errors = 0u64;
    while let Some(joined) = connecting.join_next().await {
        match joined {
            Ok((id, Ok(ws))) => conns.push((id, ws)),
            Ok((_, Err(e))) => {
                connect_errors += 1;
                total.error(format!("connect: {e}"));
            }
            Err(e) => {
                connect_errors += 1;
                total.error(format!("connect task: {e}"));
            }
        }
    }
    let connected = conns.len();

    // 2. Run them together.
    let start = Instant::now();
    let measure_start = start + args.warmup;
    let measure_end = measure_start + args.duration;
    let ctx = Ctx {
        args: args.clone(),
        epoch,
        start,
        measure_start,
        measure_end,
        hard_end: measure_end + args.grace,
    };
    let mut running = JoinSet::new();
    for (id, ws) in conns {
        running.spawn(session(ws, id, ctx.clone()));
    }
    while let Some(joined) = running.join_next().await {
        match joined {
            Ok(Ok(st)) => total.merge(st),
            Ok(Err(e)) => total.error(format!("session: {e:#}")),
            Err(e) => total.error(format!("session task: {e}")),
        }
    }

    // 3. Report.
    let h = &total.hist;
    let samples = h.len();
    let q = |q: f64| {
        if samples == 0 {
            0.0
        } else {
            us(h.value_at_quantile(q))
        }
    };
    let report = RunReport {
        label: args.label.clone(),
        url: args.url.clone(),
        mode: if args.rate.is_some() {
            "rate"
        } else {
            "closed"
        }
        .to_owned(),
        sessions: args.sessions,
        connected,
        size: args.size,
        window: args.rate.is_none().then_some(args.window.max(1)),
        rate_per_session: args.rate,
        duration_s: args.duration.as_secs_f64(),
        warmup_s: args.warmup.as_secs_f64(),
        msgs_per_sec: (total.in_window as f64 / args.duration.as_secs_f64() * 10.0).round() / 10.0,
        sent: total.sent,
        received: total.received,
        samples,
        p50_us: q(0.5),
        p90_us: q(0.9),
        p99_us: q(0.99),
        p999_us: q(0.999),
        max_us: if samples == 0 { 0.0 } else { us(h.max()) },
        mean_us: if samples == 0 {
            0.0
        } else {
            (h.mean() / 100.0).round() / 10.0
        },
        errors: total.errors + total.lost,
        connect_errors,
        lost: total.lost,
        error_samples: total.error_samples,
    };
    let mode = match (report.rate_per_session, report.window) {
        (Some(r), _) => format!("rate {r}/s/session"),
        (None, w) => format!("closed window {}", w.unwrap_or(1)),
    };
    let label = if report.label.is_empty() {
        String::new()
    } else {
        format!("[{}] ", report.label)
    };
    println!(
        "{label}{url}: {mode}, {conn}/{sessions} sessions x {size} B, {dur:.1}s: {mps:.0} msgs/s, \
         p50 {p50:.1} us, p99 {p99:.1} us, p99.9 {p999:.1} us, max {max:.1} us, errors {errors} (lost {lost})",
        url = report.url,
        conn = report.connected,
        sessions = report.sessions,
        size = report.size,
        dur = report.duration_s,
        mps = report.msgs_per_sec,
        p50 = report.p50_us,
        p99 = report.p99_us,
        p999 = report.p999_us,
        max = report.max_us,
        errors = report.errors,
        lost = report.lost,
    );
    for e in &report.error_samples {
        eprintln!("  error: {e}");
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    anyhow::ensure!(connected > 0, "no session could connect to {}", args.url);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_messages_cycle_through_the_rooms() {
        // Session 3 of 10 over 25 rooms: rooms 3, 13, 23, 8, 18, 3, …
        let b = Builder {
            room: 3,
            peer: 3,
            size: 200,
            spread: Some((25, 10)),
        };
        let rooms: Vec<String> = (0..6)
            .map(|seq| {
                let m: serde_json::Value = serde_json::from_str(&b.build(seq, 0)).expect("JSON");
                m["room"].as_str().expect("a room").to_owned()
            })
            .collect();
        assert_eq!(rooms, ["r3", "r13", "r23", "r8", "r18", "r3"]);
    }

    #[test]
    fn messages_have_the_requested_size_and_parse_back() {
        for size in [0, 60, 120, 200, 1000] {
            let b = Builder {
                room: 3,
                peer: 7,
                size,
                spread: None,
            };
            let m = b.build(123_456, 987_654_321);
            if size >= 200 {
                assert_eq!(m.len(), size, "{m}");
                assert!(m.contains("typ srflx"));
            }
            let v: serde_json::Value = serde_json::from_str(&m).expect("valid JSON");
            assert_eq!(v["type"], "candidate");
            assert_eq!(v["room"], "r3");
            assert_eq!(v["from"], "p7");
            assert_eq!(field_u64(&m, "\"seq\":"), Some(123_456));
            assert_eq!(field_u64(&m, "\"ts\":"), Some(987_654_321));
        }
    }
}
