//! TURN relay tracking: reading STUN/TURN messages going through sigmesh's relay, the peer
//! address policy (`turn.relay.deny_peers`) and the allocation table.
//!
//! Sans-IO like the rest of core: callers hand in datagrams or stream bytes and `now`, and get
//! verdicts back ([`TurnAction::Forward`], [`TurnAction::Reply`] with a 403 to send to the client,
//! [`TurnAction::Drop`]).
//!
//! - [`stun`]: the message reader (attributes, XOR addresses, MESSAGE-INTEGRITY) and writer;
//! - [`framer`]: cutting a TURN-over-TCP stream into STUN and ChannelData frames;
//! - [`peer`]: the peer policy with address normalisation (CVE-2020-26262);
//! - [`table`]: the allocation table with expiry;
//! - [`tracker`]: the per-message decisions tying them together (and the per-user quota),
//!   each a [`TurnOutcome`].
//!
//! The STUN reader is sigmesh's own rather than webrtc-rs's `stun` crate: that crate depends on
//! tokio (with `net` and `rt-multi-thread`), `ring` and `webrtc-util`, which do not belong in a
//! sans-IO core that builds for `wasm32-wasip1`. `stun` is used in the tests instead, as an
//! independent encoder and decoder (`core/tests/turn_stun_diff.rs`).

pub mod framer;
mod outcome;
pub mod peer;
pub mod stun;
pub mod table;
pub mod tracker;

pub use framer::{Frame, Framer};
pub use peer::{PeerPolicy, PeerVerdict};
pub use table::{Allocation, FiveTuple, Table, Transport};
pub use tracker::{Limits, Tracker, TurnAction, TurnKind, TurnOutcome};
