//! Engine.IO (Socket.IO) as `affinity: engine_io` reads it: the `sid` of a request's query,
//! whether a request opens a session, and the sid in the open packet that answers it (see
//! the proxy's `pool::engine_io` for the table). Both come from the network: bounded, linear,
//! and never a panic (`fuzz/fuzz_targets/engine_io.rs`).

/// Longest sid accepted (Engine.IO's are 20 characters).
pub const MAX_SID: usize = 64;
/// Longest open-packet answer read to find the sid.
pub const MAX_OPEN_PACKET: usize = 16 * 1024;

fn valid_sid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SID
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The `sid` of an Engine.IO request's query, when it is one.
pub fn sid_of(query: Option<&str>) -> Option<&str> {
    let q = query?;
    param(q, "EIO")?;
    param(q, "sid").filter(|s| valid_sid(s))
}

/// Whether a request opens an Engine.IO session (polling, no `sid`): its answer carries one.
pub fn is_open(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        param(q, "EIO").is_some()
            && param(q, "transport") == Some("polling")
            && param(q, "sid").is_none()
    })
}

/// The sid in an open packet (`0{"sid":"…"}`, optionally `LEN:` first, Engine.IO 3).
pub fn sid_in_open_packet(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body.get(..body.len().min(MAX_OPEN_PACKET))?).ok()?;
    // Engine.IO 3: `LEN:packet` (then maybe more packets); the open packet is ASCII, so its
    // length in characters is its length in bytes.
    let text = match text.split_once(':') {
        Some((len, rest)) if !len.is_empty() && len.bytes().all(|b| b.is_ascii_digit()) => {
            rest.get(..len.parse::<usize>().ok()?)?
        }
        _ => text,
    };
    let json = text.strip_prefix('0')?;
    // The packet may be followed by others (`\x1e`-separated in Engine.IO 4).
    let json = json.split('\u{1e}').next()?;
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let sid = v.get("sid")?.as_str()?;
    valid_sid(sid).then(|| sid.to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn sids_are_read_from_queries_and_open_packets() {
        assert_eq!(
            sid_of(Some("EIO=4&transport=polling&sid=abc_-1")),
            Some("abc_-1")
        );
        assert_eq!(
            sid_of(Some("transport=polling&sid=abc")),
            None,
            "not Engine.IO"
        );
        assert_eq!(sid_of(Some("EIO=4&sid=a%20b")), None, "not a sid");
        assert!(is_open(Some("EIO=4&transport=polling&t=x")));
        assert!(!is_open(Some("EIO=4&transport=polling&sid=x")));
        assert!(!is_open(Some("EIO=4&transport=websocket")));
        let open =
            br#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000}"#;
        assert_eq!(
            sid_in_open_packet(open).as_deref(),
            Some("lv_VI97HAXpY6yYWAAAC")
        );
        // Engine.IO 3: a length first, maybe more packets after.
        assert_eq!(
            sid_in_open_packet(br#"28:0{"sid":"abc","upgrades":[]}2:40"#).as_deref(),
            Some("abc")
        );
        assert_eq!(
            sid_in_open_packet(br#"14:0{"sid":"abc"}"#).as_deref(),
            Some("abc")
        );
        assert_eq!(
            sid_in_open_packet(br#"99:0{"sid":"abc"}"#),
            None,
            "a length past the end"
        );
        assert_eq!(
            sid_in_open_packet(b"0{\"sid\":\"abc\"}\x1e40").as_deref(),
            Some("abc")
        );
        assert_eq!(sid_in_open_packet(b"hello"), None);
        assert_eq!(sid_in_open_packet(br#"0{"sid":"<script>"}"#), None);
    }
}
