//! Loading: YAML/JSON bytes to a validated [`Config`], or every error.
//! (Stub: to be written.)

use super::Config;

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
    let _ = text;
    todo!()
}

/// Loads the Wasm filter's config: only `routes` and `turn` (without `relay`); upstreams have
/// a `name` and `weight` and no `url`.
pub fn load_filter(text: &str) -> Result<Config, ConfigErrors> {
    let _ = text;
    todo!()
}
