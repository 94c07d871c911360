//! The TTL cache of an `enrich` step's answers, keyed on the rendered request and weighed by
//! the bytes it holds.

use std::time::Duration;

use serde::Deserialize;


use super::call::{Answer, Request};

/// `[steps.cache]`: answers kept for `ttl_ms`, at most `max_bytes` of them.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// How long an answer is reused, in milliseconds.
    pub ttl_ms: u64,
    /// Most bytes of answers kept (default 67108864, 64 MiB); the least used go first.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
}

pub(super) fn default_max_bytes() -> u64 {
    64 * 1024 * 1024
}

/// A cached answer, with the size of the body it came from (its weight in the cache).
#[derive(Debug, Clone)]
pub(super) struct Cached {
    pub(super) answer: Answer,
    pub(super) bytes: usize,
}


impl CacheConfig {
    /// The cache: at most `max_bytes` of answers (requests and bodies), each for `ttl_ms`.
    pub(super) fn build(&self) -> moka::future::Cache<Request, Cached> {
        moka::future::Cache::builder()
            .max_capacity(self.max_bytes)
            .weigher(|request: &Request, cached: &Cached| {
                let bytes = request.weight() + cached.bytes;
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .time_to_live(Duration::from_millis(self.ttl_ms))
            .build()
    }
}
