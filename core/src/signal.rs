//! Reading signaling fields out of text messages.

use crate::config::{Signaling, Sticky};
use crate::route::Headers;

/// What a text message says about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Signal {
    /// Message type (`offer`, `answer`, ...), from `signaling.type`; `None` if absent.
    pub kind: Option<String>,
    /// Room, from `signaling.room`.
    pub room: Option<String>,
    /// Sending peer, from `signaling.peer`.
    pub peer: Option<String>,
}

impl Signal {
    /// Reads the configured pointers from `text`. Never fails: what cannot be read is `None`.
    pub fn read(text: &str, cfg: &Signaling) -> Signal {
        let _ = (text, cfg);
        todo!()
    }
}

/// The value at a JSON pointer in `text`, as a string (numbers and bools are formatted).
pub fn pointer_value(text: &str, pointer: &str) -> Option<String> {
    let _ = (text, pointer);
    todo!()
}

/// The sticky key of a request for `query:`, `header:` and `cookie:` stickiness
/// (`message:` and `none` give `None`). `query` is the raw query string without `?`.
pub fn sticky_key<H: Headers + ?Sized>(sticky: &Sticky, query: Option<&str>, headers: &H) -> Option<String> {
    let _ = (sticky, query, headers);
    todo!()
}
