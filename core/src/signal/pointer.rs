//! The streaming JSON pointer walk behind [`pointer_value`] and [`pointer_values`] (semantics in
//! the [module docs](super)).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// The value at a JSON pointer in `text`, as a string (numbers and bools are formatted).
pub fn pointer_value(text: &str, pointer: &str) -> Option<String> {
    let [v] = pointer_values(text, [pointer]);
    v
}

/// The values at several JSON pointers, read in one pass (see [`pointer_value`]). Pointers
/// past the 64th give `None`.
pub fn pointer_values<const N: usize>(text: &str, pointers: [&str; N]) -> [Option<String>; N] {
    let mut out: [Option<String>; N] = std::array::from_fn(|_| None);
    // The empty pointer names the whole text, an object or array: never a value.
    let mask = pointers
        .iter()
        .take(64)
        .enumerate()
        .filter(|(_, p)| p.starts_with('/'))
        .fold(0u64, |m, (i, _)| m | 1 << i);
    if mask == 0 || !looks_like_json(text) {
        return out;
    }
    let tokens = pointers.map(Tokens::of);
    let mut de = serde_json::Deserializer::from_str(text);
    let walk = Walk {
        tokens: &tokens,
        mask,
        depth: 0,
        out: &mut out,
    };
    if walk.deserialize(&mut de).and_then(|()| de.end()).is_err() {
        out = std::array::from_fn(|_| None);
    }
    out
}

/// Whether `text` starts, after JSON whitespace, with `{` or `[`.
pub(super) fn looks_like_json(text: &str) -> bool {
    matches!(
        text.trim_start_matches([' ', '\t', '\n', '\r'])
            .as_bytes()
            .first(),
        Some(b'{' | b'[')
    )
}

// === the streaming pointer walk ===

/// A pointer's reference tokens, split once per message (as written: `~0` and `~1` are undone
/// only for a pointer that has a `~`).
pub(super) struct Tokens<'p> {
    first: [&'p str; 8],
    len: usize,
    pointer: &'p str,
    tilde: bool,
}

impl<'p> Tokens<'p> {
    pub(super) fn of(pointer: &'p str) -> Tokens<'p> {
        let mut t = Tokens {
            first: [""; 8],
            len: 0,
            pointer,
            tilde: pointer.contains('~'),
        };
        if let Some(rest) = pointer.strip_prefix('/') {
            for (i, tok) in rest.split('/').enumerate() {
                if let Some(slot) = t.first.get_mut(i) {
                    *slot = tok;
                }
                t.len = i + 1;
            }
        }
        t
    }

    /// Whether the pointer ends at `depth` (has no token there).
    #[inline]
    pub(super) fn ends_at(&self, depth: usize) -> bool {
        depth >= self.len
    }

    /// Token `depth`, as written; `None` past the last one.
    #[inline]
    pub(super) fn get(&self, depth: usize) -> Option<&'p str> {
        if depth >= self.len {
            return None;
        }
        match self.first.get(depth) {
            Some(t) => Some(t),
            None => self.pointer[1..].split('/').nth(depth),
        }
    }

    /// Token `depth` unescaped (RFC 6901, in serde_json's order).
    pub(super) fn unescaped(&self, depth: usize) -> Option<Cow<'p, str>> {
        let t = self.get(depth)?;
        Some(if self.tilde && t.contains('~') {
            Cow::Owned(t.replace("~1", "/").replace("~0", "~"))
        } else {
            Cow::Borrowed(t)
        })
    }

    /// Whether token `depth` is `key` (unescaped).
    #[inline]
    pub(super) fn matches(&self, depth: usize, key: &str) -> bool {
        if self.tilde {
            return self.unescaped(depth).is_some_and(|t| t == key);
        }
        self.get(depth) == Some(key)
    }
}

/// An array index token, as serde_json's `Value::pointer` reads it.
pub(super) fn index(token: &str) -> Option<usize> {
    if token.starts_with('+') || (token.starts_with('0') && token.len() != 1) {
        return None;
    }
    token.parse().ok()
}

/// Visits one JSON value for the pointers in `mask`, all of which have matched `depth` tokens.
struct Walk<'a, const N: usize> {
    tokens: &'a [Tokens<'a>; N],
    mask: u64,
    depth: usize,
    out: &'a mut [Option<String>; N],
}

impl<'a, const N: usize> Walk<'a, N> {
    fn bits(&self) -> impl Iterator<Item = usize> + use<N> {
        let mask = self.mask;
        (0..N.min(64)).filter(move |i| mask & (1 << i) != 0)
    }

    /// The pointers in `mask` whose token at `depth` satisfies `f`.
    fn child_mask(&self, f: impl Fn(&Tokens<'a>) -> bool) -> u64 {
        self.bits()
            .filter(|&i| f(&self.tokens[i]))
            .fold(0, |m, i| m | 1 << i)
    }

    /// Sets every pointer that ends here to `value`.
    fn leaf(self, value: impl Fn() -> String) {
        for i in self.bits() {
            if self.tokens[i].ends_at(self.depth) {
                self.out[i] = Some(value());
            }
        }
    }
}

impl<'de, const N: usize> DeserializeSeed<'de> for Walk<'_, N> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        // A key seen again replaces what an earlier occurrence gave.
        for i in self.bits() {
            self.out[i] = None;
        }
        d.deserialize_any(self)
    }
}

impl<'de, const N: usize> Visitor<'de> for Walk<'_, N> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.leaf(|| v.to_string());
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.leaf(|| v.to_string());
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.leaf(|| v.to_string());
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        // Exactly as a `Value` prints it.
        if let Some(n) = serde_json::Number::from_f64(v) {
            self.leaf(|| n.to_string());
        }
        Ok(())
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.leaf(|| v.to_owned());
        Ok(())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(Key(key)) = map.next_key()? {
            let mask = self.child_mask(|t| t.matches(self.depth, &key));
            if mask == 0 {
                map.next_value::<IgnoredAny>()?;
            } else {
                map.next_value_seed(Walk {
                    tokens: self.tokens,
                    mask,
                    depth: self.depth + 1,
                    out: &mut *self.out,
                })?;
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let indices: [Option<usize>; N] = std::array::from_fn(|i| {
            if self.mask & (1 << i) != 0 {
                self.tokens[i].unescaped(self.depth).and_then(|t| index(&t))
            } else {
                None
            }
        });
        let mut n = 0usize;
        loop {
            let mask = self
                .bits()
                .filter(|&i| indices[i] == Some(n))
                .fold(0, |m, i| m | 1 << i);
            let more = if mask == 0 {
                seq.next_element::<IgnoredAny>()?.is_some()
            } else {
                seq.next_element_seed(Walk {
                    tokens: self.tokens,
                    mask,
                    depth: self.depth + 1,
                    out: &mut *self.out,
                })?
                .is_some()
            };
            if !more {
                return Ok(());
            }
            n += 1;
        }
    }
}

/// An object key, borrowed from the text unless it has escapes.
pub(super) struct Key<'de>(pub(super) Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}
