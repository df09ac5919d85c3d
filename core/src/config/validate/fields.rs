//! The mapping helper: reads one mapping's entries and reports every key that is not allowed
//! there, with a did-you-mean suggestion for likely typos.

use super::super::tree::{Key, Node, NodeKind};
use super::{Validator, join};

// === the mapping helper ===

/// The entries of one mapping, after unknown keys have been reported.
pub(super) struct Fields<'a> {
    path: String,
    line: usize,
    entries: &'a [(Key, Node)],
}

impl<'a> Fields<'a> {
    pub(super) fn get(&self, key: &str) -> Option<&'a Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == key)
            .map(|(_, v)| v)
    }

    /// The value of `key`, unless absent or null.
    pub(super) fn value(&self, key: &str) -> Option<&'a Node> {
        self.get(key).filter(|n| n.kind != NodeKind::Null)
    }

    pub(super) fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    pub(super) fn key_line(&self, key: &str) -> usize {
        self.entries
            .iter()
            .find(|(k, _)| k.name == key)
            .map_or(self.line, |(k, _)| k.line)
    }
}

/// Reads a mapping (null reads as an empty one), reporting every key not in `allowed`.
/// `extra` explains keys that exist elsewhere but not here: `(key, why)`.
pub(super) fn fields<'a>(
    cx: &mut Validator,
    node: &'a Node,
    path: &str,
    allowed: &[&str],
    extra: &[(&str, &str)],
) -> Option<Fields<'a>> {
    let entries: &'a [(Key, Node)] = match &node.kind {
        NodeKind::Map(entries) => entries,
        NodeKind::Null => &[],
        _ => {
            let what = if path.is_empty() {
                "the config".to_owned()
            } else {
                format!("`{}`", last_key(path))
            };
            cx.err(
                path,
                node.line,
                format!(
                    "{what} must be a mapping (`key: value` lines), found {}",
                    node.describe()
                ),
            );
            return None;
        }
    };
    for (k, _) in entries {
        if allowed.contains(&k.name.as_str()) {
            continue;
        }
        let kpath = join(path, &k.name);
        if let Some((_, why)) = extra.iter().find(|(name, _)| *name == k.name) {
            cx.err(&kpath, k.line, *why);
            continue;
        }
        let mut msg = if k.name.is_empty() {
            "empty key".to_owned()
        } else {
            format!("unknown key `{}`", k.name)
        };
        if let Some(s) = suggest(&k.name, allowed) {
            msg.push_str(&format!("; did you mean `{s}`?"));
        }
        msg.push_str(&format!(" (allowed here: {})", allowed.join(", ")));
        cx.err(&kpath, k.line, msg);
    }
    Some(Fields {
        path: path.to_owned(),
        line: node.line,
        entries,
    })
}

fn last_key(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

/// The closest allowed key, if it is close enough to be a typo.
fn suggest<'k>(key: &str, allowed: &[&'k str]) -> Option<&'k str> {
    let key = key.to_ascii_lowercase().replace('-', "_");
    allowed
        .iter()
        .map(|a| (levenshtein(&key, a), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 4) && *d < a.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The line of a map's `name:` value (else the map's own line), for errors about the name.
pub(super) fn name_line(node: &Node) -> usize {
    match &node.kind {
        NodeKind::Map(entries) => entries
            .iter()
            .find(|(k, _)| k.name == "name")
            .map_or(node.line, |(_, v)| v.line),
        _ => node.line,
    }
}
