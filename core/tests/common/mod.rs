//! What the core tests share: token buckets in a plain map, as a front end would keep them.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use sigmesh_core::bucket::{BucketVerdict, TokenBucket};
use sigmesh_core::config::Rate;
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
