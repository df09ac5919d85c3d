//! Semantic validation. (Stub: to be written.)
