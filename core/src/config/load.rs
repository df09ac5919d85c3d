//! Loading: YAML/JSON text to a validated [`Config`], or every error.
//!
//! Two passes: [`super::tree`] parses the YAML (JSON is YAML) into a tree whose nodes carry
//! their line, then [`super::validate`] walks that tree against the schema, turning it into the
//! validated types and recording every problem with its key path and line.

use super::Config;
use super::validate::{Mode, Validator};

/// One problem in a config file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{path}: {message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct ConfigError {
    /// Key path, such as `routes[1].upstreams[0].weight`; empty for the whole document.
    pub path: String,
    /// 1-based line, where the parser can tell.
    pub line: Option<usize>,
    /// What is wrong, and what would be right.
    pub message: String,
}

/// Every problem found in a config file; never empty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} error(s) in config:\n{}", .0.len(), .0.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// Loads a config for the standalone proxy: every upstream needs a `url`.
pub fn load(text: &str) -> Result<Config, ConfigErrors> {
    load_mode(text, Mode::Proxy)
}

/// Loads the Wasm filter's config: only `routes` and `turn` (without `relay`); upstreams have
/// a `name` and `weight` and no `url`.
pub fn load_filter(text: &str) -> Result<Config, ConfigErrors> {
    load_mode(text, Mode::Filter)
}

fn load_mode(text: &str, mode: Mode) -> Result<Config, ConfigErrors> {
    let parsed = super::tree::parse(text);
    let mut cx = Validator {
        mode,
        errors: parsed.errors,
        cluster: false,
    };
    let config = parsed
        .root
        .as_ref()
        .map(|root| super::validate::config(&mut cx, root));
    match config {
        Some(c) if cx.errors.is_empty() => Ok(c),
        _ => {
            let mut errors = cx.errors;
            // Document order; errors without a line (none today) last.
            errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
            errors.dedup();
            if errors.is_empty() {
                errors.push(ConfigError {
                    path: String::new(),
                    line: None,
                    message: "invalid config".into(),
                });
            }
            Err(ConfigErrors(errors))
        }
    }
}

impl ConfigErrors {
    /// The errors, in document order.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }
}
