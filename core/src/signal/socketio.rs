//! Socket.IO over Engine.IO text frames: `42["event",{…}]`, `42/chat,["event",{…}]`,
//! `4217["event",{…}]` (ack id 17), `43/chat,17[{…}]` (an ack), `451-["event",{"_placeholder":true,"num":0}]`
//! (a binary event whose attachments follow as binary messages), `40`, `40/chat,{"token":…}`.
//!
//! Engine.IO packet `4` (message) carrying a Socket.IO packet: `0` CONNECT, `1` DISCONNECT,
//! `2` EVENT, `3` ACK, `4` CONNECT_ERROR, `5` BINARY_EVENT, `6` BINARY_ACK.

/// A Socket.IO packet inside an Engine.IO message frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'t> {
    /// Socket.IO packet type, 0 to 6.
    pub packet: u8,
    /// Namespace without the trailing comma (`/chat`); `None` for the main namespace `/`.
    pub namespace: Option<&'t str>,
    /// Ack id.
    pub ack: Option<u64>,
    /// The JSON part (may be empty).
    pub body: &'t str,
}

impl Frame<'_> {
    /// An EVENT or BINARY_EVENT: `body` is `["event", args…]`.
    pub fn is_event(&self) -> bool {
        matches!(self.packet, 2 | 5)
    }

    /// An ACK or BINARY_ACK: `body` is `[args…]`.
    pub fn is_ack(&self) -> bool {
        matches!(self.packet, 3 | 6)
    }
}

/// Reads `text` as a Socket.IO frame; `None` if it is not one.
pub fn frame(text: &str) -> Option<Frame<'_>> {
    let b = text.as_bytes();
    if b.len() < 2 || b[0] != b'4' || !(b'0'..=b'6').contains(&b[1]) {
        return None;
    }
    let packet = b[1] - b'0';
    let mut i = 2;
    // Binary packets: the attachment count and a dash.
    if matches!(packet, 5 | 6) {
        let n = count_digits(&b[i..]);
        if n == 0 || b.get(i + n) != Some(&b'-') {
            return None;
        }
        i += n + 1;
    }
    let mut namespace = None;
    if b.get(i) == Some(&b'/') {
        let comma = text[i..].find(',')?;
        namespace = Some(&text[i..i + comma]);
        i += comma + 1;
    }
    let n = count_digits(&b[i..]);
    let ack = if n > 0 {
        Some(text[i..i + n].parse().ok()?)
    } else {
        None
    };
    i += n;
    let body = &text[i..];
    let ok = match packet {
        2 | 3 | 5 | 6 => body.starts_with('['),
        // CONNECT (optional auth object), DISCONNECT, CONNECT_ERROR (an object or a string).
        _ => ack.is_none() && (body.is_empty() || body.starts_with('{') || body.starts_with('"')),
    };
    ok.then_some(Frame {
        packet,
        namespace,
        ack,
        body,
    })
}

fn count_digits(b: &[u8]) -> usize {
    b.iter().take_while(|c| c.is_ascii_digit()).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        let f = |t| frame(t).map(|f| (f.packet, f.namespace, f.ack, f.body));
        assert_eq!(
            f(r#"42["offer",{}]"#),
            Some((2, None, None, r#"["offer",{}]"#))
        );
        assert_eq!(
            f(r#"42/chat,["x"]"#),
            Some((2, Some("/chat"), None, r#"["x"]"#))
        );
        assert_eq!(f(r#"4217["x"]"#), Some((2, None, Some(17), r#"["x"]"#)));
        assert_eq!(
            f(r#"43/chat,17[{}]"#),
            Some((3, Some("/chat"), Some(17), "[{}]"))
        );
        assert_eq!(f(r#"451-["x",{}]"#), Some((5, None, None, r#"["x",{}]"#)));
        assert_eq!(f("40"), Some((0, None, None, "")));
        assert_eq!(
            f(r#"40/admin,{"token":"t"}"#),
            Some((0, Some("/admin"), None, r#"{"token":"t"}"#))
        );
        for t in [
            "",
            "4",
            "42",
            "47[]",
            "2",
            "3probe",
            "42x",
            "45-[]",
            "42/ns[]",
            "{\"a\":1}",
            "4299999999999999999999[]",
        ] {
            assert_eq!(frame(t), None, "{t}");
        }
    }
}
