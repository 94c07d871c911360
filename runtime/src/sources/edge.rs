//! The edge of an HTTP source: who is calling (API keys) and how often they may (quotas).
//!
//! API keys are read from an environment variable or a file named in the pipeline file, never
//! written in it. A request presents its key in `X-API-Key` or `Authorization: Bearer`. Quotas
//! are token buckets (governor) per client: the API key's client name, or the caller's IP
//! address when the source has no authentication.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;

use crate::error::BuildError;

/// `[source.auth]` of an HTTP source.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Environment variable holding the accepted keys: comma-separated `key` or `client=key`.
    #[serde(default)]
    pub api_keys_env: Option<String>,
    /// File holding the accepted keys, one per line (`key` or `client=key`; `#` comments).
    #[serde(default)]
    pub api_keys_file: Option<PathBuf>,
}

/// `[source.quota]` of an HTTP source.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Requests per second each client may make, on average.
    pub per_second: u32,
    /// Requests a client may make at once (default `per_second`).
    #[serde(default)]
    pub burst: Option<u32>,
}

impl AuthConfig {
    /// Checks that exactly one key source is named.
    pub fn check(&self) -> Result<(), BuildError> {
        match (&self.api_keys_env, &self.api_keys_file) {
            (Some(_), None) | (None, Some(_)) => Ok(()),
            _ => Err(BuildError::at("auth", "give api_keys_env or api_keys_file (one of them)")
                .with_hint("keys are read from the environment or a file, never written in the pipeline file")),
        }
    }

    /// Reads the keys: key → client name.
    pub fn load(&self) -> Result<ApiKeys, BuildError> {
        self.check()?;
        let (text, separator) = match (&self.api_keys_env, &self.api_keys_file) {
            (Some(var), _) => (
                std::env::var(var).map_err(|_| {
                    BuildError::at("auth", format!("environment variable `{var}` is not set"))
                        .with_hint("export it with the accepted keys, comma-separated")
                })?,
                ',',
            ),
            (_, Some(path)) => (
                std::fs::read_to_string(path).map_err(|e| {
                    BuildError::at("auth", format!("cannot read {}: {e}", path.display()))
                })?,
                '\n',
            ),
            _ => unreachable!("checked above"),
        };
        let mut keys = HashMap::new();
        for (i, entry) in text
            .split(separator)
            .map(str::trim)
            .filter(|e| !e.is_empty() && !e.starts_with('#'))
            .enumerate()
        {
            let (client, key) = match entry.split_once('=') {
                Some((client, key)) => (client.trim().to_string(), key.trim().to_string()),
                None => (format!("client-{}", i + 1), entry.to_string()),
            };
            keys.insert(key, Arc::from(client.as_str()));
        }
        if keys.is_empty() {
            return Err(BuildError::at("auth", "no API key found"));
        }
        Ok(ApiKeys { keys })
    }
}

/// Accepted API keys.
#[derive(Debug)]
pub struct ApiKeys {
    keys: HashMap<String, Arc<str>>,
}

/// Why a request was not let in.
#[derive(Debug, PartialEq)]
pub enum Refusal {
    /// No key presented: `401`.
    Unauthenticated,
    /// A key that is not accepted: `403`.
    Forbidden,
    /// Over quota: `429`, retry after this long.
    OverQuota(Duration),
}

impl ApiKeys {
    /// The client of the key `headers` present.
    pub fn client(&self, headers: &HeaderMap) -> Result<Arc<str>, Refusal> {
        let presented = headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .or_else(|| {
                headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
            })
            .map(str::trim)
            .ok_or(Refusal::Unauthenticated)?;
        self.keys.get(presented).cloned().ok_or(Refusal::Forbidden)
    }
}

impl QuotaConfig {
    /// Checks the numbers.
    pub fn check(&self) -> Result<(), BuildError> {
        if self.per_second == 0 || self.burst == Some(0) {
            return Err(BuildError::at(
                "quota",
                "per_second and burst must be at least 1",
            ));
        }
        Ok(())
    }

    /// A limiter per client.
    pub fn build(&self) -> Result<Limiter, BuildError> {
        self.check()?;
        let per_second = NonZeroU32::new(self.per_second).expect("checked above");
        let burst = NonZeroU32::new(self.burst.unwrap_or(self.per_second)).expect("checked above");
        Ok(Limiter {
            limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
        })
    }
}

/// Token buckets per client.
pub struct Limiter {
    limiter: DefaultKeyedRateLimiter<Arc<str>>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Limiter")
    }
}

impl Limiter {
    /// Takes one token of `client`'s bucket.
    pub fn check(&self, client: &Arc<str>) -> Result<(), Refusal> {
        // Forget the buckets of clients that are full again, now and then, so that memory
        // does not grow with every caller ever seen.
        if self.limiter.len() > 10_000 {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(client).map_err(|not_until| {
            Refusal::OverQuota(not_until.wait_time_from(DefaultClock::default().now()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn keys_from_a_file_with_clients_and_comments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "# partners\ntso=abc\n\nxyz\n").unwrap();
        let keys = AuthConfig {
            api_keys_env: None,
            api_keys_file: Some(path),
        }
        .load()
        .unwrap();
        let mut h = HeaderMap::new();
        assert_eq!(keys.client(&h), Err(Refusal::Unauthenticated));
        h.insert("x-api-key", HeaderValue::from_static("abc"));
        assert_eq!(&*keys.client(&h).unwrap(), "tso");
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer xyz"));
        assert_eq!(&*keys.client(&h).unwrap(), "client-2");
        h.insert("authorization", HeaderValue::from_static("Bearer nope"));
        assert_eq!(keys.client(&h), Err(Refusal::Forbidden));
    }

    #[test]
    fn exactly_one_key_source() {
        assert!(AuthConfig {
            api_keys_env: None,
            api_keys_file: None
        }
        .check()
        .is_err());
        let missing = AuthConfig {
            api_keys_env: Some("GRIDFLOW_TEST_UNSET_VAR".into()),
            api_keys_file: None,
        };
        assert!(missing
            .load()
            .unwrap_err()
            .message
            .contains("GRIDFLOW_TEST_UNSET_VAR"));
    }

    #[test]
    fn buckets_are_per_client() {
        let limiter = QuotaConfig {
            per_second: 1,
            burst: Some(2),
        }
        .build()
        .unwrap();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        assert!(limiter.check(&a).is_ok());
        assert!(limiter.check(&a).is_ok());
        match limiter.check(&a) {
            Err(Refusal::OverQuota(wait)) => assert!(wait <= Duration::from_secs(1)),
            other => panic!("{other:?}"),
        }
        assert!(
            limiter.check(&b).is_ok(),
            "another client has its own bucket"
        );
    }
}
