//! What a signaling message is: its kind (as far as call setup goes) and how it said so.

/// What a message is, as far as call setup goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignalKind {
    /// An SDP offer.
    Offer,
    /// An SDP answer.
    Answer,
    /// A trickled ICE candidate (or end of candidates).
    Candidate,
    /// Joining a room.
    Join,
    /// Leaving a room or hanging up.
    Leave,
    /// Anything else.
    Other,
}

impl SignalKind {
    /// `offer`, `answer`, `candidate`, `join`, `leave` or `other`.
    pub fn label(self) -> &'static str {
        match self {
            SignalKind::Offer => "offer",
            SignalKind::Answer => "answer",
            SignalKind::Candidate => "candidate",
            SignalKind::Join => "join",
            SignalKind::Leave => "leave",
            SignalKind::Other => "other",
        }
    }
}

/// How the message said what it is (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// Nothing recognised: not JSON, malformed, or an unknown shape.
    Unknown,
    /// The route's `signaling.type` pointer.
    Configured,
    /// An app message with a `type` (`event`, `action`) word.
    Typed,
    /// Browser `RTCSessionDescription` / `RTCIceCandidate` JSON (and simple-peer's signals).
    Plain,
    /// PeerJS server protocol.
    PeerJs,
    /// simple-peer's renegotiation signals.
    SimplePeer,
    /// A Socket.IO frame over Engine.IO.
    SocketIo,
}
