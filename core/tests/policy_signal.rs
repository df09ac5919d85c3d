//! Property tests of signaling-field and sticky-key reading.

use proptest::prelude::*;
use serde_json::Value;
use sigmesh_core::config::{Signaling, Sticky};
use sigmesh_core::signal::{Signal, pointer_value, pointer_values, query_param, sticky_key};

/// The reference semantics: a full parse and `Value::pointer`; a text that is not an object or
/// an array is not read at all.
fn reference(text: &str, pointer: &str) -> Option<String> {
    let v: Value = serde_json::from_str(text).ok()?;
    if !v.is_object() && !v.is_array() {
        return None;
    }
    match v.pointer(pointer)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof!["[a-c]{0,2}", "[a~/]{1,3}", "0|1|01|-|\u{e9}"]
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        "[a-z \"\\\\/\u{e9}\n]{0,6}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 48, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..5)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// Pointers to places in `v` (every path), and some that lead nowhere.
fn paths(v: &Value, prefix: String, out: &mut Vec<String>) {
    out.push(prefix.clone());
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                paths(
                    c,
                    format!("{prefix}/{}", k.replace('~', "~0").replace('/', "~1")),
                    out,
                );
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                paths(c, format!("{prefix}/{i}"), out);
            }
            out.push(format!("{prefix}/{}", a.len()));
            out.push(format!("{prefix}/-"));
            out.push(format!("{prefix}/00"));
        }
        _ => out.push(format!("{prefix}/x")),
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            b' ' => "+".to_owned(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

proptest! {
    /// The streaming read gives what `Value::pointer` gives, for every path of any document,
    /// compact or pretty-printed, with duplicate keys too.
    #[test]
    fn pointer_value_is_value_pointer(v in json(), extra in prop::collection::vec("(/[a-c0-9~]{0,3}){0,3}", 0..4), pretty in any::<bool>()) {
        let text = if pretty { serde_json::to_string_pretty(&v) } else { serde_json::to_string(&v) }.expect("serializable");
        let mut ptrs = Vec::new();
        paths(&v, String::new(), &mut ptrs);
        ptrs.extend(extra);
        for p in &ptrs {
            prop_assert_eq!(pointer_value(&text, p), reference(&text, p), "pointer {:?} in {}", p, text);
        }
        if ptrs.len() >= 3 {
            let [a, b, c] = pointer_values(&text, [&ptrs[0], &ptrs[ptrs.len() / 2], &ptrs[ptrs.len() - 1]]);
            prop_assert_eq!(a, reference(&text, &ptrs[0]));
            prop_assert_eq!(b, reference(&text, &ptrs[ptrs.len() / 2]));
            prop_assert_eq!(c, reference(&text, &ptrs[ptrs.len() - 1]));
        }
    }

    /// Duplicate keys: the last occurrence counts, as with a parsed `Value`.
    #[test]
    fn duplicate_keys_last_wins(a in json(), b in json(), inner in "[a-c]{1,2}") {
        let text = format!(
            "{{\"k\":{},\"k\":{}}}",
            serde_json::to_string(&a).expect("serializable"),
            serde_json::to_string(&b).expect("serializable"),
        );
        for p in ["/k".to_owned(), format!("/k/{inner}"), "/k/0".to_owned()] {
            prop_assert_eq!(pointer_value(&text, &p), reference(&text, &p));
        }
    }

    /// Any text: no panic, and never a value where a full parse finds none.
    #[test]
    fn arbitrary_text_never_panics(text in "[ \\[\\]{}\":,a-c0-9.eE+\\-\\\\tnrul]{0,40}", p in "(/[a-c0-9]{0,2}){0,3}") {
        let got = pointer_value(&text, &p);
        if got.is_some() {
            prop_assert_eq!(got, reference(&text, &p));
        }
        let cfg = Signaling { kind: Some(p.clone()), room: Some("/a".into()), peer: None };
        let _ = Signal::read(&text, &cfg);
    }

    /// A percent-encoded query value comes back as it was.
    #[test]
    fn query_roundtrip(name in "[a-z]{1,6}", value in "\\PC{1,12}", other in "[a-z]{1,3}=[a-z]{0,3}") {
        let q = format!("{other}&{}={}&{}=second", percent_encode(&name), percent_encode(&value), name);
        let want = if other.split('=').next() == Some(name.as_str()) && !other.ends_with('=') {
            other.split_once('=').map(|(_, v)| v.to_owned())
        } else {
            Some(value.clone())
        };
        prop_assert_eq!(query_param(&q, &name), want.clone());
        prop_assert_eq!(sticky_key(&Sticky::Query(name.clone()), Some(&q), &[("a", "b")]), want);
    }

    /// Arbitrary queries and cookies never panic.
    #[test]
    fn sticky_key_never_panics(q in "\\PC{0,30}", c in "\\PC{0,30}", name in "[a-z%+]{0,3}") {
        let headers = [("cookie", c.as_str()), ("x-h", c.as_str())];
        for s in [Sticky::Query(name.clone()), Sticky::Cookie(name.clone()), Sticky::Header("x-h".into())] {
            if let Some(v) = sticky_key(&s, Some(&q), &headers) {
                prop_assert!(!v.is_empty());
            }
        }
    }
}
