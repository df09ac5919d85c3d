//! What the core tests share: token buckets in a plain map, as a front end would keep them,
//! and the config error checks.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use sigmesh_core::bucket::{BucketVerdict, TokenBucket};
use sigmesh_core::config::{ConfigError, ConfigErrors, Rate, load};
use sigmesh_core::request::{Bucket, BucketStore};

/// Buckets in a map.
#[derive(Default)]
pub struct Buckets(RefCell<HashMap<(Bucket, String), TokenBucket>>);

impl BucketStore for Buckets {
    fn take(&self, bucket: Bucket, key: &str, rate: &Rate, now: Duration) -> BucketVerdict {
        let mut m = self.0.borrow_mut();
        m.entry((bucket, key.to_owned()))
            .or_insert_with(|| TokenBucket::new(rate, now))
            .try_take(rate, now)
    }
}

/// The errors of `text`, which must not load.
pub fn errors(text: &str) -> Vec<ConfigError> {
    match load(text) {
        Ok(c) => panic!("expected errors, loaded {c:#?}"),
        Err(ConfigErrors(e)) => {
            assert!(!e.is_empty());
            e
        }
    }
}

/// The one error at `path`, checked to mention `needle` and be on `line`.
#[track_caller]
pub fn has(errs: &[ConfigError], path: &str, line: usize, needle: &str) {
    let found = errs
        .iter()
        .find(|e| e.path == path && e.message.contains(needle));
    match found {
        Some(e) => assert_eq!(e.line, Some(line), "line of {e}"),
        None => panic!(
            "no error at `{path}` mentioning `{needle}` in:\n{}",
            ConfigErrors(errs.to_vec())
        ),
    }
}

#[track_caller]
pub fn one_error(text: &str, path: &str, line: usize, needle: &str) {
    let errs = errors(text);
    assert_eq!(
        errs.len(),
        1,
        "expected one error, got:\n{}",
        ConfigErrors(errs.clone())
    );
    has(&errs, path, line, needle);
}
