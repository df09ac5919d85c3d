//! `sticky: message:/pointer`: the client is upgraded before the upstream is picked, and its
//! first data message names the key. [`FirstMessage`] reads the client's bytes until that
//! message is complete; the front end keeps every byte it pushed and relays them all, in order,
//! once the upstream is open (nothing is lost or re-framed).

use crate::config::Route;
use crate::frame::{
    DEFAULT_TEXT_LIMIT, FrameReader, HOLD_SLACK, Handler, MessageAction, MessageInfo, close_code,
};

use super::client_reader_config;

/// How far the wait for the first message has come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum First {
    /// Push more bytes.
    More,
    /// The first data message is complete: its text when it is a text message in UTF-8.
    Message(Option<String>),
    /// Refuse the client: close it with this code and reason.
    Refused(u16, &'static str),
    /// The client sent its close frame first.
    Gone,
}

/// Reads a client's bytes until its first data message is complete, holding at most the
/// route's `max_message_bytes` plus [`HOLD_SLACK`] (control frames before the message count).
#[derive(Debug)]
pub struct FirstMessage {
    reader: FrameReader,
    held: usize,
    limit: usize,
}

struct Catch {
    text: Option<Option<String>>,
    closed: bool,
}

impl Handler for Catch {
    fn decide(&mut self, _: &MessageInfo, _: Option<&str>) -> MessageAction {
        MessageAction::Forward
    }
    fn done(&mut self, _: &MessageInfo, text: Option<&str>, _: bool) {
        if self.text.is_none() {
            self.text = Some(text.map(str::to_owned));
        }
    }
    fn close(&mut self, _: Option<u16>, _: &str) {
        self.closed = true;
    }
}

impl FirstMessage {
    /// For a client of `route`.
    pub fn new(route: &Route) -> FirstMessage {
        let limit = route
            .websocket
            .as_ref()
            .map_or(DEFAULT_TEXT_LIMIT, |w| w.max_message_bytes)
            .saturating_add(HOLD_SLACK);
        FirstMessage {
            reader: FrameReader::new(client_reader_config(route, false, [0; 4])),
            held: 0,
            limit,
        }
    }

    /// The next bytes from the client.
    pub fn push(&mut self, chunk: &[u8]) -> First {
        let mut catch = Catch {
            text: None,
            closed: false,
        };
        let p = self.reader.push(chunk, &mut catch);
        self.held = self.held.saturating_add(chunk.len());
        if let Some(c) = p.close {
            return First::Refused(c.code, c.reason);
        }
        if let Some(text) = catch.text {
            return First::Message(text);
        }
        if catch.closed {
            return First::Gone;
        }
        if self.held > self.limit {
            return First::Refused(close_code::TOO_BIG, "message too big");
        }
        First::More
    }
}
