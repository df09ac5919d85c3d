//! YAML (or JSON) text to a small document tree whose every node knows its line.
//!
//! The events come from [`saphyr_parser`], a YAML 1.2 parser; this module resolves anchors and
//! aliases (with a budget against "billion laughs" documents), merge keys (`<<: *defaults`),
//! and plain-scalar nulls, and reports duplicate keys. Everything else (what a scalar means) is
//! decided by the validator, which knows what each key expects.

use std::collections::HashMap;

use saphyr_parser::{Event, Parser, ScalarStyle};

use super::ConfigError;

/// Deepest nesting accepted; the schema itself needs six levels.
const MAX_DEPTH: usize = 64;
/// Most nodes a document may hold once aliases are expanded.
const MAX_NODES: usize = 200_000;

/// One node of the document, with the 1-based line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    pub line: usize,
    pub kind: NodeKind,
}

/// What a node is.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum NodeKind {
    /// `~`, `null`, or nothing at all (`key:` with no value).
    Null,
    /// Any other scalar. `plain` is false for quoted, block and `!!str` scalars, which are
    /// always strings; a plain scalar may be read as a number.
    Scalar { value: String, plain: bool },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in document order; keys are unique.
    Map(Vec<(Key, Node)>),
}

/// A mapping key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Key {
    pub name: String,
    pub line: usize,
}

impl Node {
    /// A short description for type errors: "a list", "the string `x`", ...
    pub fn describe(&self) -> String {
        match &self.kind {
            NodeKind::Null => "nothing (null)".into(),
            NodeKind::Scalar { value, plain: true } => format!("`{}`", shorten(value)),
            NodeKind::Scalar {
                value,
                plain: false,
            } => format!("the string \"{}\"", shorten(value)),
            NodeKind::Seq(_) => "a list".into(),
            NodeKind::Map(_) => "a mapping".into(),
        }
    }

    fn count(&self) -> usize {
        match &self.kind {
            NodeKind::Null | NodeKind::Scalar { .. } => 1,
            NodeKind::Seq(items) => 1 + items.iter().map(Node::count).sum::<usize>(),
            NodeKind::Map(entries) => 1 + entries.iter().map(|(_, v)| 1 + v.count()).sum::<usize>(),
        }
    }
}

fn shorten(s: &str) -> String {
    const MAX: usize = 60;
    if s.chars().count() <= MAX {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(MAX).collect();
        t.push('…');
        t
    }
}

/// A collection being built.
enum Frame {
    Seq {
        line: usize,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        line: usize,
        anchor: usize,
        entries: Vec<(Key, Node)>,
        key: Option<Key>,
    },
}

/// The result of parsing: the root (`None` after a syntax error) and every error found.
pub(crate) struct Parsed {
    pub root: Option<Node>,
    pub errors: Vec<ConfigError>,
}

/// Parses `text` as one YAML document. An empty document (or one holding only comments) is an
/// empty mapping.
pub(crate) fn parse(text: &str) -> Parsed {
    let mut b = Builder {
        stack: Vec::new(),
        anchors: HashMap::new(),
        nodes: 0,
        errors: Vec::new(),
    };
    match b.run(text) {
        Ok(root) => Parsed {
            root: Some(root),
            errors: b.errors,
        },
        Err(e) => {
            b.errors.push(e);
            Parsed {
                root: None,
                errors: b.errors,
            }
        }
    }
}

struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    nodes: usize,
    errors: Vec<ConfigError>,
}

fn fatal(path: String, line: usize, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path,
        line: Some(line),
        message: message.into(),
    }
}

impl Builder {
    fn run(&mut self, text: &str) -> Result<Node, ConfigError> {
        let mut parser = Parser::new_from_str(text);
        let mut root: Option<Node> = None;
        let mut documents = 0usize;
        loop {
            let (event, span) = match parser.next_event() {
                None => break,
                Some(Ok(ev)) => ev,
                Some(Err(e)) => {
                    let m = e.marker();
                    return Err(fatal(
                        self.path(),
                        m.line().max(1),
                        format!("YAML syntax error at column {}: {}", m.col() + 1, e.info()),
                    ));
                }
            };
            let line = span.start.line().max(1);
            match event {
                Event::StreamStart | Event::Nothing | Event::DocumentEnd => {}
                Event::StreamEnd => break,
                Event::DocumentStart(_) => {
                    documents += 1;
                    if documents > 1 {
                        return Err(fatal(
                            String::new(),
                            line,
                            "a config file holds one YAML document; remove the second `---` and what follows",
                        ));
                    }
                }
                Event::Alias(id) => {
                    let node = match self.anchors.get(&id) {
                        Some(n) => n.clone(),
                        None => return Err(fatal(self.path(), line, "alias to an unknown anchor")),
                    };
                    self.nodes = self.nodes.saturating_add(node.count());
                    if self.nodes > MAX_NODES {
                        return Err(fatal(
                            self.path(),
                            line,
                            format!(
                                "the document expands to more than {MAX_NODES} nodes through aliases"
                            ),
                        ));
                    }
                    let node = Node { line, ..node };
                    self.complete(node, 0, &mut root)?;
                }
                Event::Scalar(value, style, anchor, tag) => {
                    let forced_str = tag
                        .as_ref()
                        .is_some_and(|t| t.is_yaml_core_schema() && t.suffix == "str");
                    let plain = style == ScalarStyle::Plain && !forced_str;
                    let kind =
                        if plain && matches!(value.as_ref(), "" | "~" | "null" | "Null" | "NULL") {
                            NodeKind::Null
                        } else {
                            NodeKind::Scalar {
                                value: value.into_owned(),
                                plain,
                            }
                        };
                    self.complete(Node { line, kind }, anchor, &mut root)?;
                }
                Event::SequenceStart(anchor, _) => {
                    self.push(
                        Frame::Seq {
                            line,
                            anchor,
                            items: Vec::new(),
                        },
                        line,
                    )?;
                }
                Event::MappingStart(anchor, _) => {
                    self.push(
                        Frame::Map {
                            line,
                            anchor,
                            entries: Vec::new(),
                            key: None,
                        },
                        line,
                    )?;
                }
                Event::SequenceEnd | Event::MappingEnd => {
                    let (node, anchor) = match self.stack.pop() {
                        Some(Frame::Seq {
                            line,
                            anchor,
                            items,
                        }) => (
                            Node {
                                line,
                                kind: NodeKind::Seq(items),
                            },
                            anchor,
                        ),
                        Some(Frame::Map {
                            line,
                            anchor,
                            entries,
                            ..
                        }) => {
                            let entries = self.finish_map(entries);
                            (
                                Node {
                                    line,
                                    kind: NodeKind::Map(entries),
                                },
                                anchor,
                            )
                        }
                        None => {
                            return Err(fatal(
                                String::new(),
                                line,
                                "YAML syntax error: unbalanced collection end",
                            ));
                        }
                    };
                    self.complete(node, anchor, &mut root)?;
                }
            }
        }
        Ok(root.unwrap_or(Node {
            line: 1,
            kind: NodeKind::Null,
        }))
    }

    fn push(&mut self, frame: Frame, line: usize) -> Result<(), ConfigError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(fatal(
                self.path(),
                line,
                format!("nesting deeper than {MAX_DEPTH} levels"),
            ));
        }
        self.nodes = self.nodes.saturating_add(1);
        self.stack.push(frame);
        Ok(())
    }

    /// A node is complete: hand it to the collection being built, or make it the root.
    fn complete(
        &mut self,
        node: Node,
        anchor: usize,
        root: &mut Option<Node>,
    ) -> Result<(), ConfigError> {
        self.nodes = self.nodes.saturating_add(1);
        if self.nodes > MAX_NODES {
            return Err(fatal(
                self.path(),
                node.line,
                format!("the document holds more than {MAX_NODES} nodes"),
            ));
        }
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => *root = Some(node),
            Some(Frame::Seq { items, .. }) => items.push(node),
            Some(Frame::Map { key, entries, .. }) => match key.take() {
                Some(k) => entries.push((k, node)),
                None => {
                    let name = match node.kind {
                        NodeKind::Scalar { value, .. } => value,
                        NodeKind::Null => String::new(),
                        NodeKind::Seq(_) | NodeKind::Map(_) => {
                            let path = self.path();
                            return Err(fatal(
                                path,
                                node.line,
                                "mapping keys must be plain strings",
                            ));
                        }
                    };
                    if let Some(Frame::Map { key, .. }) = self.stack.last_mut() {
                        *key = Some(Key {
                            name,
                            line: node.line,
                        });
                    }
                }
            },
        }
        Ok(())
    }

    /// Applies merge keys (`<<`) and drops duplicate keys (reporting them).
    fn finish_map(&mut self, entries: Vec<(Key, Node)>) -> Vec<(Key, Node)> {
        let mut out: Vec<(Key, Node)> = Vec::with_capacity(entries.len());
        let mut merged: Vec<(Key, Node)> = Vec::new();
        for (k, v) in entries {
            if k.name == "<<" {
                match v.kind {
                    NodeKind::Map(m) => merged.extend(m),
                    NodeKind::Seq(items) => {
                        for item in items {
                            match item.kind {
                                NodeKind::Map(m) => merged.extend(m),
                                _ => self.errors.push(fatal(
                                    self.path_with(&k.name),
                                    item.line,
                                    "a merge key (`<<`) takes a mapping or a list of mappings",
                                )),
                            }
                        }
                    }
                    _ => self.errors.push(fatal(
                        self.path_with(&k.name),
                        v.line,
                        "a merge key (`<<`) takes a mapping or a list of mappings",
                    )),
                }
                continue;
            }
            if let Some((first, _)) = out.iter().find(|(o, _)| o.name == k.name) {
                let msg = format!(
                    "duplicate key `{}` (first given on line {})",
                    k.name, first.line
                );
                self.errors
                    .push(fatal(self.path_with(&k.name), k.line, msg));
                continue;
            }
            out.push((k, v));
        }
        for (k, v) in merged {
            if !out.iter().any(|(o, _)| o.name == k.name) {
                out.push((k, v));
            }
        }
        out
    }

    /// The key path of the node being built.
    fn path(&self) -> String {
        let mut p = String::new();
        for f in &self.stack {
            match f {
                Frame::Seq { items, .. } => p.push_str(&format!("[{}]", items.len())),
                Frame::Map { key: Some(k), .. } => {
                    if !p.is_empty() {
                        p.push('.');
                    }
                    p.push_str(&k.name);
                }
                Frame::Map { key: None, .. } => {}
            }
        }
        p
    }

    fn path_with(&self, key: &str) -> String {
        let p = self.path();
        if p.is_empty() {
            key.to_owned()
        } else {
            format!("{p}.{key}")
        }
    }
}
