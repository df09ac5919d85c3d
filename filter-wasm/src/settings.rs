//! The plugin configuration: the contract's `routes` and `turn` (JSON), validated by
//! `sigmesh-core`'s own loader ([`sigmesh_core::config::load_filter`]), plus an optional
//! `filter` section for what only the filter has:
//!
//! ```json
//! { "routes": [ … ], "turn": { … },
//!   "filter": { "permessage_deflate": "strip", "bucket_slots": 1024, "bucket_seed": 0 } }
//! ```
//!
//! - `permessage_deflate`: `strip` (default) removes `permessage-deflate` from the upgrade
//!   request's `Sec-WebSocket-Extensions`, so it is never negotiated; `keep` lets it through,
//!   rewritten so that neither side keeps a compression context (as the standalone proxy
//!   does). When the upstream agrees, compressed text messages are inflated to be read, like
//!   any other (types, rooms, candidates, the room bucket; a message past
//!   `max_message_bytes` once inflated closes 1009); an upstream that insists on a context is
//!   answered 502, since its messages could not be read.
//! - `bucket_slots`: slots of each shared bucket family (connections per route, rooms per route,
//!   credential requests); see [`crate::shared`]. Default 1024, at most 65536.
//! - `bucket_seed`: seed of the key → slot hash; default (0): random per Envoy, made by the
//!   first VM and shared through shared data (see [`crate::shared::shared_seed`]). A fixed seed
//!   is for tests only: whoever knows it can choose keys that collide.

use serde::Deserialize;
use sigmesh_core::compiled::{Capabilities, Compiled, DeflatePolicy};
use sigmesh_core::config::{ConfigError, load_filter};
use std::cell::Cell;

use crate::shared::{Store, shared_seed, stored_seed};

/// What to do with `permessage-deflate` offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Deflate {
    /// Remove it from the upgrade request: never negotiated.
    #[default]
    Strip,
    /// Let it through without a context either way; compressed messages are read through.
    Keep,
}

/// The `filter` section.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterSection {
    /// `permessage_deflate`.
    pub permessage_deflate: Deflate,
    /// `bucket_slots`.
    pub bucket_slots: u32,
    /// `bucket_seed` (0: random, shared by the VMs of one Envoy).
    pub bucket_seed: u64,
}

impl Default for FilterSection {
    fn default() -> Self {
        FilterSection {
            permessage_deflate: Deflate::Strip,
            bucket_slots: 1024,
            bucket_seed: 0,
        }
    }
}

/// The most slots a bucket family may have.
pub const MAX_SLOTS: u32 = 65_536;

impl Deflate {
    /// Core's policy for it.
    pub fn policy(self) -> DeflatePolicy {
        match self {
            Deflate::Strip => DeflatePolicy::Strip,
            Deflate::Keep => DeflatePolicy::ReadThrough,
        }
    }
}

/// A validated plugin configuration, compiled.
#[derive(Debug)]
pub struct Settings {
    /// The routes and turn section, compiled by core for the filter (route table, splitters).
    pub compiled: Compiled,
    /// The `filter` section.
    pub filter: FilterSection,
    /// Seed of the key → slot hash ([`Settings::settle_seed`]).
    pub seed: Cell<u64>,
    /// The seed was checked against shared data at a request ([`Settings::confirm_seed`]).
    confirmed: Cell<bool>,
}

impl Settings {
    /// At configuration: the seed every VM of this Envoy shares (`fresh`, random, if this VM
    /// is the first), unless `bucket_seed` fixes one.
    pub fn settle_seed(&self, store: &dyn Store, fresh: u64) {
        if self.filter.bucket_seed == 0 {
            self.seed.set(shared_seed(store, fresh).unwrap_or(fresh));
        }
    }

    /// At the first request: adopts the seed in shared data if another VM's write replaced
    /// this one's (two first VMs racing); later requests cost nothing.
    pub fn confirm_seed(&self, store: &dyn Store) {
        if self.confirmed.replace(true) || self.filter.bucket_seed != 0 {
            return;
        }
        if let Some(seed) = stored_seed(store) {
            self.seed.set(seed);
        }
    }
}

/// Parses and validates the plugin configuration; every problem as `path: message`.
pub fn parse(bytes: &[u8]) -> Result<Settings, Vec<String>> {
    let text =
        std::str::from_utf8(bytes).map_err(|_| vec!["configuration is not UTF-8".to_owned()])?;
    let (core_text, filter) = split_filter_section(text)?;
    // Lines are the text's own unless the filter section was taken out (then the rest was
    // re-serialized, and only the key paths hold).
    let lines = core_text == text;
    let config = load_filter(&core_text)
        .map_err(|e| e.iter().map(|e| describe(e, lines)).collect::<Vec<_>>())?;
    let mut errors = Vec::new();
    if filter.bucket_slots == 0 || filter.bucket_slots > MAX_SLOTS {
        errors.push(format!(
            "filter.bucket_slots: {} is out of range (1 to {MAX_SLOTS})",
            filter.bucket_slots
        ));
    }
    let compiled = match Compiled::new(
        config,
        Capabilities::filter(filter.permessage_deflate.policy()),
    ) {
        Ok(c) => Some(c),
        Err(e) => {
            errors.extend(e.iter().map(ToString::to_string));
            None
        }
    };
    let Some(compiled) = compiled.filter(|_| errors.is_empty()) else {
        return Err(errors);
    };
    Ok(Settings {
        compiled,
        seed: Cell::new(filter.bucket_seed),
        filter,
        confirmed: Cell::new(false),
    })
}

fn describe(e: &ConfigError, lines: bool) -> String {
    if lines {
        e.to_string()
    } else if e.path.is_empty() {
        e.message.clone()
    } else {
        format!("{}: {}", e.path, e.message)
    }
}

/// Takes the `filter` section out of the JSON object, leaving the rest for core's loader. The
/// text is passed on as it is when there is no such section (so core's line numbers hold).
fn split_filter_section(text: &str) -> Result<(String, FilterSection), Vec<String>> {
    let value: serde_json::Value = match serde_json::from_str(text) {
        Ok(v) => v,
        // Not JSON (YAML is accepted by core too): no filter section to take out.
        Err(_) => return Ok((text.to_owned(), FilterSection::default())),
    };
    let serde_json::Value::Object(mut map) = value else {
        return Ok((text.to_owned(), FilterSection::default()));
    };
    let Some(section) = map.remove("filter") else {
        return Ok((text.to_owned(), FilterSection::default()));
    };
    let filter: FilterSection =
        serde_json::from_value(section).map_err(|e| vec![format!("filter: {e}")])?;
    let rest = serde_json::to_string_pretty(&serde_json::Value::Object(map))
        .map_err(|e| vec![format!("configuration: {e}")])?;
    Ok((rest, filter))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
      "routes": [{
        "name": "signaling",
        "match": {"path_prefix": "/ws"},
        "websocket": {"max_message_bytes": 1024, "signaling": {"type": "/type", "room": "/room"}},
        "limits": {"connections": {"rate": 1, "per": "1s", "burst": 2}},
        "split": {"sticky": "query:room"},
        "upstreams": [{"name": "stable", "weight": 90}, {"name": "canary", "weight": 10}]
      }],
      "turn": {"secret": "s", "uris": ["turn:t:3478"]},
      "filter": {"permessage_deflate": "keep", "bucket_slots": 64}
    }"#;

    #[test]
    fn good_config_with_filter_section() {
        let s = parse(GOOD.as_bytes()).expect("valid");
        assert_eq!(s.compiled.routes.len(), 1);
        assert_eq!(s.filter.permessage_deflate, Deflate::Keep);
        assert_eq!(s.filter.bucket_slots, 64);
        assert_eq!(s.compiled.routes[0].splitter.len(), 2);
        assert_eq!(
            s.compiled
                .config
                .turn
                .as_ref()
                .map(|t| t.credentials_path.as_str()),
            Some("/turn-credentials")
        );
    }

    #[test]
    fn bad_configs_give_reasons_not_panics() {
        for (text, want) in [
            ("", "routes"),
            ("{", "line"),
            ("\u{0}\u{1}", ""),
            (r#"{"routes": []}"#, "routes"),
            (
                r#"{"routes": [{"name": "a", "upstreams": [{"name": "x", "url": "ws://h"}]}]}"#,
                "url",
            ),
            (r#"{"listen": "0.0.0.0:1", "routes": []}"#, "listen"),
            (r#"{"routes": [], "filter": {"nope": 1}}"#, "filter"),
            (
                r#"{"routes": [{"name": "a", "upstreams": [{"name": "x"}]}], "filter": {"bucket_slots": 0}}"#,
                "bucket_slots",
            ),
            (
                r#"{"routes": [{"name": "a", "split": {"sticky": "message:/room"}, "upstreams": [{"name": "x"}]}]}"#,
                "message:",
            ),
        ] {
            let errs = parse(text.as_bytes()).expect_err(text);
            assert!(!errs.is_empty());
            assert!(errs.join("\n").contains(want), "{text}: {errs:?}");
        }
        assert!(parse(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn the_seed_is_random_and_shared_unless_fixed() {
        let store = crate::shared::MemStore::default();
        let a = parse(GOOD.as_bytes()).expect("valid");
        let b = parse(GOOD.as_bytes()).expect("valid");
        a.settle_seed(&store, 0xdead_beef);
        b.settle_seed(&store, 0x0bad_cafe);
        assert_eq!(a.seed.get(), 0xdead_beef, "the first VM's random seed");
        assert_eq!(b.seed.get(), 0xdead_beef, "shared with the next");
        // Another VM's later write (the racing case) is adopted at the first request.
        store
            .set(crate::shared::SEED_KEY, &7u64.to_le_bytes(), None)
            .expect("write");
        b.confirm_seed(&store);
        assert_eq!(b.seed.get(), 7);
        let fixed = GOOD.replace(
            r#""bucket_slots": 64"#,
            r#""bucket_slots": 64, "bucket_seed": 99"#,
        );
        let f = parse(fixed.as_bytes()).expect("valid");
        f.settle_seed(&store, 1);
        f.confirm_seed(&store);
        assert_eq!(f.seed.get(), 99);
    }
}
