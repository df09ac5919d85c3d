//! The label values of the contract's metrics, as enums both front ends print.
//!
//! The standalone proxy turns them into Prometheus labels, the Envoy filter into Envoy stat
//! names; neither spells a label value of its own, so the two cannot drift apart. Every value set
//! here is fixed: nothing from the network becomes a label.

use crate::ice::{CandidateType, Transport};

macro_rules! label_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vdoc])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The label value.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

label_enum! {
    /// `outcome` of `sigmesh_connections_total`.
    Outcome {
        /// The session opened.
        Accepted => "accepted",
        /// The origin was not allowed (403).
        Forbidden => "forbidden",
        /// The connection bucket was empty (429).
        RateLimited => "rate_limited",
        /// No route matched (404).
        NoRoute => "no_route",
        /// The upstream handshake failed (502).
        UpstreamError => "upstream_error",
    }
}

label_enum! {
    /// `limit` of `sigmesh_rate_limited_total`.
    LimitKind {
        /// The route's connection bucket.
        Connections => "connections",
        /// A connection's message bucket.
        Messages => "messages",
        /// A room's bucket.
        Rooms => "rooms",
        /// `max_message_bytes` (close 1009).
        MessageSize => "message_size",
        /// The TURN credentials endpoint's own bucket.
        Credentials => "credentials",
        /// A live-session cap (`limits.max_sessions`, `max_sessions_per_ip`, `limits.sessions`).
        Sessions => "sessions",
    }
}

label_enum! {
    /// `direction` of `sigmesh_messages_total` (and of trace events).
    MessageDirection {
        /// Client to upstream.
        In => "in",
        /// Upstream to client.
        Out => "out",
    }
}

label_enum! {
    /// `kind` of `sigmesh_upstream_errors_total`.
    UpstreamErrorKind {
        /// The upstream's URL cannot be used.
        Config => "config",
        /// TCP connect failed.
        Connect => "connect",
        /// The handshake (or a plain HTTP response) did not come in time.
        Timeout => "timeout",
        /// The upstream answered the handshake with another status than 101.
        Refused => "refused",
        /// The handshake broke (bad accept key, bad headers, ...).
        Handshake => "handshake",
        /// The TLS handshake to a `wss://`/`https://` upstream failed (certificate, name).
        Tls => "tls",
        /// The connection was reset or ended mid-session.
        Reset => "reset",
        /// The upstream's frames broke RFC 6455.
        Protocol => "protocol",
        /// No endpoint of the upstream was healthy (503 at once).
        Unavailable => "unavailable",
    }
}

label_enum! {
    /// `type` of `sigmesh_messages_total`: a known signaling type, `other`, or what a message
    /// is when its text is not read.
    MessageType {
        /// An SDP offer.
        Offer => "offer",
        /// An SDP answer.
        Answer => "answer",
        /// A trickled ICE candidate.
        Candidate => "candidate",
        /// Joining a room.
        Join => "join",
        /// Leaving a room.
        Leave => "leave",
        /// Hanging up.
        Bye => "bye",
        /// A server's welcome.
        Welcome => "welcome",
        /// Another peer joined.
        PeerJoined => "peer-joined",
        /// Another peer left.
        PeerLeft => "peer-left",
        /// An application ping.
        Ping => "ping",
        /// An application pong.
        Pong => "pong",
        /// An application error.
        Error => "error",
        /// A text message of no known type.
        Other => "other",
        /// A binary message.
        Binary => "binary",
        /// A text message whose text was not read.
        Text => "text",
        /// A `permessage-deflate` message (not read).
        Compressed => "compressed",
    }
}

impl MessageType {
    /// The type of a label the signaling reader produced ([`crate::signal::Reading::label`]);
    /// anything else is [`MessageType::Other`].
    pub fn from_label(label: &str) -> MessageType {
        // A `match` on the text (by length, then bytes), not a scan: this runs per message.
        match label {
            "offer" => MessageType::Offer,
            "answer" => MessageType::Answer,
            "candidate" => MessageType::Candidate,
            "join" => MessageType::Join,
            "leave" => MessageType::Leave,
            "bye" => MessageType::Bye,
            "welcome" => MessageType::Welcome,
            "peer-joined" => MessageType::PeerJoined,
            "peer-left" => MessageType::PeerLeft,
            "ping" => MessageType::Ping,
            "pong" => MessageType::Pong,
            "error" => MessageType::Error,
            "binary" => MessageType::Binary,
            "text" => MessageType::Text,
            "compressed" => MessageType::Compressed,
            _ => MessageType::Other,
        }
    }
}

label_enum! {
    /// `type` of `sigmesh_ice_candidates_total`.
    CandidateKind {
        /// `typ host`.
        Host => "host",
        /// `typ srflx`.
        Srflx => "srflx",
        /// `typ prflx`.
        Prflx => "prflx",
        /// `typ relay`.
        Relay => "relay",
        /// Another type token.
        Other => "other",
    }
}

impl From<&CandidateType<'_>> for CandidateKind {
    fn from(t: &CandidateType<'_>) -> Self {
        match t {
            CandidateType::Host => CandidateKind::Host,
            CandidateType::Srflx => CandidateKind::Srflx,
            CandidateType::Prflx => CandidateKind::Prflx,
            CandidateType::Relay => CandidateKind::Relay,
            CandidateType::Other(_) => CandidateKind::Other,
        }
    }
}

label_enum! {
    /// `protocol` of `sigmesh_ice_candidates_total`.
    CandidateProtocol {
        /// UDP.
        Udp => "udp",
        /// TCP.
        Tcp => "tcp",
        /// Another transport.
        Other => "other",
    }
}

impl From<&Transport<'_>> for CandidateProtocol {
    fn from(t: &Transport<'_>) -> Self {
        match t {
            Transport::Udp => CandidateProtocol::Udp,
            Transport::Tcp => CandidateProtocol::Tcp,
            Transport::Other(_) => CandidateProtocol::Other,
        }
    }
}

label_enum! {
    /// Who closed a session, in traces and logs.
    Party {
        /// The client.
        Client => "client",
        /// The upstream.
        Upstream => "upstream",
        /// sigmesh itself (a limit, a timeout, the drain, a leg gone).
        Proxy => "proxy",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_types_round_trip_and_fold_the_rest() {
        for t in MessageType::ALL {
            assert_eq!(MessageType::from_label(t.as_str()), *t);
        }
        assert_eq!(MessageType::from_label("nope"), MessageType::Other);
        for known in crate::signal::KNOWN_TYPES {
            assert_ne!(
                MessageType::from_label(known),
                MessageType::Other,
                "{known}"
            );
        }
    }
}

/// The `code_class` of `sigmesh_session_closes_total`: what a session's close code says, in a
/// fixed set. A rollout judges `abnormal` closes: every class but `normal`, `going_away` and
/// `restart`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseClass {
    /// 1000, or a close without a code (a browser's `ws.close()`; 1005 on the other side).
    Normal,
    /// 1001.
    GoingAway,
    /// 1012 (a drain, a restart).
    Restart,
    /// 1008 (a limit, a policy).
    Policy,
    /// 1009.
    TooBig,
    /// 1011.
    Error,
    /// 1014 (the upstream failed, as a gateway says it).
    UpstreamGone,
    /// No close frame: the connection ended (1006).
    NoClose,
    /// Any other code below 3000 (1002, 1003, 1007, …).
    Other,
    /// 3000 to 4999: the application's own.
    App,
}

impl CloseClass {
    /// Every class.
    pub const ALL: [CloseClass; 10] = [
        CloseClass::Normal,
        CloseClass::GoingAway,
        CloseClass::Restart,
        CloseClass::Policy,
        CloseClass::TooBig,
        CloseClass::Error,
        CloseClass::UpstreamGone,
        CloseClass::NoClose,
        CloseClass::Other,
        CloseClass::App,
    ];

    /// The class of a session's first close code (`None`: the connection ended without one).
    pub fn of(code: Option<u16>) -> CloseClass {
        match code {
            None | Some(1006) => CloseClass::NoClose,
            Some(1000 | 1005) => CloseClass::Normal,
            Some(1001) => CloseClass::GoingAway,
            Some(1012) => CloseClass::Restart,
            Some(1008) => CloseClass::Policy,
            Some(1009) => CloseClass::TooBig,
            Some(1011) => CloseClass::Error,
            Some(1014) => CloseClass::UpstreamGone,
            Some(3000..=4999) => CloseClass::App,
            Some(_) => CloseClass::Other,
        }
    }

    /// Not 1000, 1001 or 1012.
    pub fn is_abnormal(self) -> bool {
        !matches!(
            self,
            CloseClass::Normal | CloseClass::GoingAway | CloseClass::Restart
        )
    }

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseClass::Normal => "normal",
            CloseClass::GoingAway => "going_away",
            CloseClass::Restart => "restart",
            CloseClass::Policy => "policy",
            CloseClass::TooBig => "too_big",
            CloseClass::Error => "error",
            CloseClass::UpstreamGone => "upstream_gone",
            CloseClass::NoClose => "no_close",
            CloseClass::Other => "other",
            CloseClass::App => "app",
        }
    }
}
