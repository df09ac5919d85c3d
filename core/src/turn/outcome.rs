//! What the tracker says about one message: its kind (a metric label), and what to do with it.

use std::net::SocketAddr;

use super::stun::method;

/// What kind of message went by (a fixed set, usable as a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TurnKind {
    /// Allocate request or response.
    Allocate,
    /// Refresh.
    Refresh,
    /// CreatePermission.
    CreatePermission,
    /// ChannelBind.
    ChannelBind,
    /// Connect (RFC 6062).
    Connect,
    /// ConnectionBind / ConnectionAttempt (RFC 6062).
    Connection,
    /// Send indication.
    Send,
    /// Data indication.
    Data,
    /// ChannelData.
    ChannelData,
    /// Binding.
    Binding,
    /// Another STUN method.
    OtherStun,
    /// Not understood.
    Unknown,
}

impl TurnKind {
    /// Lower-case label.
    pub fn as_str(self) -> &'static str {
        match self {
            TurnKind::Allocate => "allocate",
            TurnKind::Refresh => "refresh",
            TurnKind::CreatePermission => "create_permission",
            TurnKind::ChannelBind => "channel_bind",
            TurnKind::Connect => "connect",
            TurnKind::Connection => "connection_bind",
            TurnKind::Send => "send",
            TurnKind::Data => "data",
            TurnKind::ChannelData => "channel_data",
            TurnKind::Binding => "binding",
            TurnKind::OtherStun => "other_stun",
            TurnKind::Unknown => "unknown",
        }
    }

    pub(super) fn of(m: u16) -> TurnKind {
        match m {
            method::ALLOCATE => TurnKind::Allocate,
            method::REFRESH => TurnKind::Refresh,
            method::CREATE_PERMISSION => TurnKind::CreatePermission,
            method::CHANNEL_BIND => TurnKind::ChannelBind,
            method::CONNECT => TurnKind::Connect,
            method::CONNECTION_BIND | method::CONNECTION_ATTEMPT => TurnKind::Connection,
            method::SEND => TurnKind::Send,
            method::DATA => TurnKind::Data,
            method::BINDING => TurnKind::Binding,
            _ => TurnKind::OtherStun,
        }
    }
}

/// What to do with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnAction {
    /// Forward the bytes untouched.
    Forward,
    /// Do not forward; send these bytes back to the client instead (an error response).
    Reply(Vec<u8>),
    /// Do not forward.
    Drop,
}

/// The verdict on one message and what it meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnOutcome {
    /// What to do with it.
    pub action: TurnAction,
    /// What it was.
    pub kind: TurnKind,
    /// Whether sigmesh could read it.
    pub understood: bool,
    /// Application bytes it relays (client to peers from the client, peers to client from the
    /// server).
    pub relayed: u64,
    /// The denied peer, when refused or dropped by the peer policy.
    pub denied: Option<SocketAddr>,
    /// After this message the stream carries raw peer data (RFC 6062 ConnectionBind success):
    /// the shell stops framing both directions.
    pub raw_after: bool,
}

impl TurnOutcome {
    pub(super) fn forward(kind: TurnKind) -> TurnOutcome {
        TurnOutcome {
            action: TurnAction::Forward,
            kind,
            understood: true,
            relayed: 0,
            denied: None,
            raw_after: false,
        }
    }

    /// From the server: not understood, forwarded.
    pub(super) fn unknown() -> TurnOutcome {
        TurnOutcome {
            understood: false,
            ..TurnOutcome::forward(TurnKind::Unknown)
        }
    }

    /// From the client: not understood, so never forwarded.
    pub(super) fn unreadable(kind: TurnKind) -> TurnOutcome {
        TurnOutcome {
            action: TurnAction::Drop,
            understood: false,
            ..TurnOutcome::forward(kind)
        }
    }
}
