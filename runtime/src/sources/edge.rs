//! The edge of an HTTP source: who is calling (API keys) and how often they may (quotas).
//!
//! API keys are read from an environment variable or a file named in the pipeline file, never
//! written in it. A request presents its key in `X-API-Key` or `Authorization: Bearer`. Quotas
//! are token buckets (governor) per client: the API key's client name, or the caller's IP
//! address when the source has no authentication.
//!
//! # The key-file format (`docs/operations/security.md`)
//!
//! One entry a line (a comma-separated list in the environment variable); blank lines and
//! lines starting with `#` are skipped; spaces around an entry and around `=` are ignored.
//! An entry is either
//! - a key alone: `Jx3q0b2Yk9y8zUuQ1c9hV1mXr3m1s5QeP0bYVq8cJ0Q=` (any printable ASCII without
//!   spaces; base64 with its `=` padding, `+` and `/` as `openssl rand -base64 32` prints it),
//! - or `client=key`: a client name (letters, digits, `.`, `_`, `-`, at most 64, starting
//!   with a letter or digit), the first `=`, then the key (which may hold `=`).
//!
//! Standard and URL-safe base64 only hold `=` as trailing padding, so the two never mix up:
//! an entry whose part after its first `=` is empty or only `=` is a key alone when it is
//! well-formed padded base64 of at least 16 characters (`openssl rand -base64 12` and longer),
//! and otherwise an error (`tso=`: a client whose key is missing). An entry that is neither (`a+b=c`, a key with a space, a key given twice) is a
//! load error naming the file and line, never the key. An empty or blank key is never
//! accepted, in the file or on a request.
//!
//! Keys are kept as SHA-256 digests and compared in constant time. A key file is re-read
//! every second ([`ApiKeys::reload`]): a revoked key is refused within about a second, a new
//! one is let in; a file that cannot be read or is invalid keeps the last good set (logged once,
//! counted in `gridflow_access_list_reloads_total{outcome="failed"}` at every check while it
//! stays so).

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::http::HeaderMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::BuildError;

/// How often a key file is checked for changes.
pub const KEY_FILE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// `[source.auth]` of an HTTP source.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Environment variable holding the accepted keys: comma-separated `key` or `client=key`.
    #[serde(default)]
    pub api_keys_env: Option<String>,
    /// File holding the accepted keys, one per line (`key` or `client=key`; `#` comments);
    /// re-read every second when it changes.
    #[serde(default)]
    pub api_keys_file: Option<PathBuf>,
}

/// `[source.quota]` of an HTTP source.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
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

    /// Reads the keys.
    pub fn load(&self) -> Result<ApiKeys, BuildError> {
        self.check()?;
        let origin = match (&self.api_keys_env, &self.api_keys_file) {
            (Some(var), _) => KeyOrigin::Env(var.clone()),
            (_, Some(path)) => KeyOrigin::File(path.clone()),
            _ => unreachable!("checked above"),
        };
        let text = origin.read().map_err(|e| {
            let error = BuildError::at("auth", e);
            match &origin {
                KeyOrigin::Env(_) => {
                    error.with_hint("export it with the accepted keys, comma-separated")
                }
                KeyOrigin::File(_) => error,
            }
        })?;
        let set = origin.parse(&text).map_err(|e| {
            BuildError::at("auth", e).with_hint(
                "one key a line, alone or as `client=key` (see docs/operations/security.md); generate keys with `openssl rand -base64 32`",
            )
        })?;
        for line in &set.short {
            tracing::warn!(source = %origin, line, "API key shorter than 16 characters; generate keys with `openssl rand -base64 32`.");
        }
        Ok(ApiKeys {
            seen: Mutex::new(Seen::Valid(digest(text.as_bytes()))),
            origin,
            set: ArcSwap::from_pointee(set),
        })
    }
}

/// Where a key list comes from.
#[derive(Debug, Clone, PartialEq)]
enum KeyOrigin {
    Env(String),
    File(PathBuf),
}

impl std::fmt::Display for KeyOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyOrigin::Env(var) => write!(f, "environment variable `{var}`"),
            KeyOrigin::File(path) => write!(f, "{}", path.display()),
        }
    }
}

impl KeyOrigin {
    fn read(&self) -> Result<String, String> {
        match self {
            KeyOrigin::Env(var) => {
                std::env::var(var).map_err(|_| format!("environment variable `{var}` is not set"))
            }
            KeyOrigin::File(path) => std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display())),
        }
    }

    fn parse(&self, text: &str) -> Result<KeySet, String> {
        match self {
            KeyOrigin::Env(var) => parse_keys(text, ',', &format!("`{var}` entry")),
            KeyOrigin::File(path) => parse_keys(text, '\n', &format!("{} line", path.display())),
        }
    }
}

/// The accepted keys at one moment: SHA-256 of each key → its client.
#[derive(Default)]
pub struct KeySet {
    entries: Vec<([u8; 32], Arc<str>)>,
    /// Lines (entries) whose key is shorter than 16 characters, for a warning.
    short: Vec<usize>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Clients only: not even the digests of the keys are shown.
        f.debug_struct("KeySet")
            .field(
                "clients",
                &self.entries.iter().map(|(_, c)| c).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl KeySet {
    /// The number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no key is accepted.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The client of `key`: every entry is compared, in constant time, whatever matches.
    pub fn client_of(&self, key: &str) -> Option<Arc<str>> {
        let presented = digest(key.as_bytes());
        let mut found = None;
        for (known, client) in &self.entries {
            if bool::from(known.ct_eq(&presented)) {
                found = Some(client);
            }
        }
        found.cloned()
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// One entry of a key list: the client name it gives (if any) and the key.
#[derive(Debug, PartialEq, Eq)]
pub struct KeyEntry<'a> {
    /// The client name written before `=`, if any.
    pub client: Option<&'a str>,
    /// The key.
    pub key: &'a str,
}

/// A client name: letters, digits, `.`, `_`, `-`, at most 64, starting with a letter or digit.
pub fn valid_client_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The shortest entry ending in `=` read as a padded base64 key alone: shorter ones (`tso=`)
/// are more likely a client whose key is missing, an error.
pub const MIN_PADDED_KEY_LEN: usize = 16;

/// Well-formed padded base64 (standard or URL-safe alphabet): a multiple of 4 characters,
/// at most two `=` and only at the end.
fn padded_base64(text: &str) -> bool {
    let body = text.trim_end_matches('=');
    let padding = text.len() - body.len();
    !body.is_empty()
        && text.len().is_multiple_of(4)
        && padding <= 2
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_'))
}

fn check_key(key: &str) -> Result<(), &'static str> {
    if key.is_empty() {
        return Err("the key is empty");
    }
    if key.bytes().any(|b| b.is_ascii_whitespace()) {
        return Err("a key cannot hold spaces (write `client=key`, without spaces in the key)");
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("a key is printable ASCII only");
    }
    Ok(())
}

/// Reads one non-blank, non-comment entry (already trimmed). The error never holds the key.
pub fn parse_entry(entry: &str) -> Result<KeyEntry<'_>, String> {
    match entry.split_once('=') {
        None => {
            check_key(entry)?;
            Ok(KeyEntry {
                client: None,
                key: entry,
            })
        }
        Some((before, after)) => {
            let (client, key) = (before.trim(), after.trim());
            if key.bytes().all(|b| b == b'=') {
                // `name=`, `name==`: base64 padding, or a client whose key is missing.
                if padded_base64(entry) && entry.len() >= MIN_PADDED_KEY_LEN {
                    return Ok(KeyEntry {
                        client: None,
                        key: entry,
                    });
                }
                if valid_client_name(client) {
                    return Err(format!(
                        "client `{client}` has no key after `=` (a key alone ending in `=` is padded base64 of at least {MIN_PADDED_KEY_LEN} characters)"
                    ));
                }
                return Err("neither a key nor `client=key`: nothing after `=`, and not a padded base64 key".into());
            }
            if !valid_client_name(client) {
                return Err("neither a key nor `client=key`: the part before the first `=` is not a client name (letters, digits, `.`, `_`, `-`), and a base64 key holds `=` only at its end".into());
            }
            check_key(key)?;
            Ok(KeyEntry {
                client: Some(client),
                key,
            })
        }
    }
}

/// Reads a key list: entries separated by `separator`, `#` comments and blank entries skipped.
/// Errors name `place` (`keys.txt line`) and the entry's number, never the key.
pub fn parse_keys(text: &str, separator: char, place: &str) -> Result<KeySet, String> {
    let mut set = KeySet::default();
    let mut lines = Vec::new();
    for (i, raw) in text.split(separator).enumerate() {
        let line = i + 1;
        let entry = raw.trim();
        if entry.is_empty() || entry.starts_with('#') {
            continue;
        }
        let parsed = parse_entry(entry).map_err(|e| format!("{place} {line}: {e}"))?;
        let hash = digest(parsed.key.as_bytes());
        if let Some(first) = set.entries.iter().position(|(known, _)| *known == hash) {
            return Err(format!(
                "{place} {line}: this key is already given on line {}",
                lines[first]
            ));
        }
        let client: Arc<str> = match parsed.client {
            Some(client) => Arc::from(client),
            // Named by the key's fingerprint: the same key keeps its quota bucket when other
            // lines come and go.
            None => Arc::from(format!("key-{}", &hex::encode(hash)[..8]).as_str()),
        };
        if parsed.key.len() < 16 {
            set.short.push(line);
        }
        set.entries.push((hash, client));
        lines.push(line);
    }
    if set.entries.is_empty() {
        return Err(format!("{place}s: no API key found"));
    }
    Ok(set)
}

/// What was last read from a key file, to log a change once.
#[derive(Debug, PartialEq)]
enum Seen {
    Valid([u8; 32]),
    Invalid([u8; 32]),
    Unreadable(String),
}

/// What a [`ApiKeys::reload`] did.
#[derive(Debug, PartialEq)]
pub enum Reloaded {
    /// Nothing changed (or the keys come from the environment).
    Unchanged,
    /// A new set is in force, of this many keys.
    Applied(usize),
    /// The file could not be read or is invalid: the last good set stays.
    Failed(String),
    /// Still failing as at the last check (already reported).
    StillFailing,
}

/// Accepted API keys: the set in force, swapped when the key file changes.
#[derive(Debug)]
pub struct ApiKeys {
    origin: KeyOrigin,
    set: ArcSwap<KeySet>,
    seen: Mutex<Seen>,
}

/// Why a request was not let in.
#[derive(Debug, PartialEq)]
pub enum Refusal {
    /// No key presented, or an empty one: `401`.
    Unauthenticated,
    /// A key that is not accepted: `403`.
    Forbidden,
    /// Over quota: `429`, retry after this long.
    OverQuota(Duration),
}

/// The key a request presents: `X-API-Key`, else `Authorization: Bearer`; `None` when absent,
/// empty or blank.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let key = match headers.get("x-api-key") {
        Some(value) => value.to_str().ok()?,
        None => {
            let value = headers.get("authorization")?.to_str().ok()?.trim_start();
            let (scheme, rest) = value.split_at_checked(6)?;
            if !scheme.eq_ignore_ascii_case("bearer") || !rest.starts_with(' ') {
                return None;
            }
            rest
        }
    };
    let key = key.trim();
    (!key.is_empty()).then_some(key)
}

impl ApiKeys {
    /// The client of the key `headers` present.
    pub fn client(&self, headers: &HeaderMap) -> Result<Arc<str>, Refusal> {
        let presented = presented_key(headers).ok_or(Refusal::Unauthenticated)?;
        self.set
            .load()
            .client_of(presented)
            .ok_or(Refusal::Forbidden)
    }

    /// The number of keys in force.
    pub fn len(&self) -> usize {
        self.set.load().len()
    }

    /// True when no key is in force (never, once loaded).
    pub fn is_empty(&self) -> bool {
        self.set.load().is_empty()
    }

    /// True when the keys come from a file (and are re-read).
    pub fn watched(&self) -> bool {
        matches!(self.origin, KeyOrigin::File(_))
    }

    /// Re-reads the key file; a valid new content replaces the set in force, an unreadable
    /// or invalid one keeps it.
    pub fn reload(&self) -> Reloaded {
        if !self.watched() {
            return Reloaded::Unchanged;
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let text = match self.origin.read() {
            Ok(text) => text,
            Err(e) => {
                if matches!(&*seen, Seen::Unreadable(previous) if *previous == e) {
                    return Reloaded::StillFailing;
                }
                *seen = Seen::Unreadable(e.clone());
                return Reloaded::Failed(e);
            }
        };
        let hash = digest(text.as_bytes());
        match &*seen {
            Seen::Valid(h) if *h == hash => return Reloaded::Unchanged,
            Seen::Invalid(h) if *h == hash => return Reloaded::StillFailing,
            _ => {}
        }
        match self.origin.parse(&text) {
            Ok(set) => {
                *seen = Seen::Valid(hash);
                let count = set.len();
                for line in &set.short {
                    tracing::warn!(source = %self.origin, line, "API key shorter than 16 characters; generate keys with `openssl rand -base64 32`.");
                }
                self.set.store(Arc::new(set));
                Reloaded::Applied(count)
            }
            Err(e) => {
                *seen = Seen::Invalid(hash);
                Reloaded::Failed(e)
            }
        }
    }

    /// Re-reads the key file every `interval` until `stop`, logging and counting what changed
    /// (polling, like the Kafka secret files: it sees the symlink swaps of Kubernetes secret
    /// volumes that file events do not always report).
    pub async fn watch(
        self: Arc<Self>,
        pipeline: Arc<str>,
        interval: Duration,
        stop: tokio_util::sync::CancellationToken,
    ) {
        if !self.watched() {
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.cancelled() => return,
            }
            let keys = Arc::clone(&self);
            let outcome = match tokio::task::spawn_blocking(move || keys.reload()).await {
                Ok(outcome) => outcome,
                Err(_) => continue,
            };
            match outcome {
                Reloaded::Applied(keys) => {
                    crate::metrics::access_list_reload("api_keys", "applied");
                    tracing::info!(pipeline = %pipeline, source = %self.origin, keys, "API keys reloaded.");
                }
                Reloaded::Failed(error) => {
                    crate::metrics::access_list_reload("api_keys", "failed");
                    tracing::error!(pipeline = %pipeline, error = %error, keys = self.len(), "API key file not applied; the last good keys stay in force.");
                }
                // Counted at every check while it lasts (for the alert), logged once.
                Reloaded::StillFailing => {
                    crate::metrics::access_list_reload("api_keys", "failed");
                }
                Reloaded::Unchanged => {}
            }
        }
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

    fn file_keys(text: &str) -> Result<ApiKeys, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, text).unwrap();
        AuthConfig {
            api_keys_env: None,
            api_keys_file: Some(path),
        }
        .load()
        .map_err(|e| e.message)
    }

    fn with_key(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn keys_from_a_file_with_clients_and_comments() {
        let keys = file_keys("# partners\ntso=abc\n\nxyz\n").unwrap();
        assert_eq!(
            keys.client(&HeaderMap::new()),
            Err(Refusal::Unauthenticated)
        );
        assert_eq!(&*keys.client(&with_key("x-api-key", "abc")).unwrap(), "tso");
        let bare = keys
            .client(&with_key("authorization", "Bearer xyz"))
            .unwrap();
        assert!(bare.starts_with("key-"), "{bare}");
        assert_eq!(
            keys.client(&with_key("authorization", "Bearer nope")),
            Err(Refusal::Forbidden)
        );
    }

    /// The key-file formats (issue 24, item 1): what each line means, or the error it is.
    #[test]
    fn key_file_formats() {
        // A 32-byte key as `openssl rand -base64 32` prints it: `+`, `/` and `=` padding.
        let b64 = "q+Vx/3kP0bYVq8cJ0QJx3q0b2Yk9y8zUuQ1c9hV1mX0=";
        let b64_2 = "YWJjZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXo0NTY3OA==";
        // (file content, presented key → expected client, `None` = key-<fingerprint>)
        type Expected<'a> = &'a [(&'a str, Option<&'a str>)];
        let accepted: &[(&str, Expected)] = &[
            ("abc\n", &[("abc", None)]),
            (&*format!("{b64}\n"), &[(b64, None)]),
            (&*format!("{b64_2}\n"), &[(b64_2, None)]),
            (&*format!("elia={b64}\n"), &[(b64, Some("elia"))]),
            (&*format!("  elia = {b64}  \r\n"), &[(b64, Some("elia"))]),
            (
                &*format!("tso-a.1_x={b64_2}"),
                &[(b64_2, Some("tso-a.1_x"))],
            ),
            ("tso=k=ey\n", &[("k=ey", Some("tso"))]),
            (
                &*format!("# c\n\n{b64}\nelia={b64_2}\n"),
                &[(b64, None), (b64_2, Some("elia"))],
            ),
            // One client, two keys: the old and the new during a rotation.
            (
                &*format!("elia={b64}\nelia={b64_2}\n"),
                &[(b64, Some("elia")), (b64_2, Some("elia"))],
            ),
        ];
        for (text, expected) in accepted {
            let keys = file_keys(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
            assert_eq!(keys.len(), expected.len(), "{text:?}");
            for (key, client) in *expected {
                let got = keys
                    .client(&with_key("x-api-key", key))
                    .unwrap_or_else(|e| panic!("{text:?} {key}: {e:?}"));
                match client {
                    Some(client) => assert_eq!(&*got, *client, "{text:?}"),
                    None => assert!(got.starts_with("key-"), "{text:?}: {got}"),
                }
            }
            // Never the empty key, a blank one, or the client name alone.
            for wrong in ["", "   "] {
                assert_eq!(
                    keys.client(&with_key("x-api-key", wrong)),
                    Err(Refusal::Unauthenticated),
                    "{text:?}"
                );
                assert_eq!(
                    keys.client(&with_key("authorization", &format!("Bearer {wrong}"))),
                    Err(Refusal::Unauthenticated),
                    "{text:?}"
                );
            }
            assert_eq!(
                keys.client(&with_key("x-api-key", "elia")),
                Err(Refusal::Forbidden),
                "{text:?}"
            );
        }

        // (file content, line in the error, words in the error)
        let secret = "s3cr3t-value-never-shown";
        let refused: &[(String, usize, &str)] = &[
            ("tso=\n".into(), 1, "client `tso` has no key"),
            ("# c\nelia=\n".into(), 2, "client `elia` has no key"),
            ("elia = \n".into(), 1, "has no key"),
            ("=\n".into(), 1, "nothing after `=`"),
            (format!("a+b={secret}\n"), 1, "not a client name"),
            (format!("={secret}\n"), 1, "not a client name"),
            (format!("\n\nelia {secret}\n"), 3, "cannot hold spaces"),
            (format!("elia={secret} x\n"), 1, "cannot hold spaces"),
            (
                format!("elia={secret}\ntso={secret}\n"),
                2,
                "already given on line 1",
            ),
            (format!("elia=caf\u{e9}{secret}\n"), 1, "printable ASCII"),
            ("# only comments\n\n".into(), 0, "no API key found"),
            ("".into(), 0, "no API key found"),
            ("  \n\t\n".into(), 0, "no API key found"),
        ];
        for (text, line, words) in refused {
            let error = file_keys(text)
                .err()
                .unwrap_or_else(|| panic!("{text:?} accepted"));
            assert!(error.contains(words), "{text:?}: {error}");
            assert!(error.contains("keys"), "the file is named: {error}");
            if *line > 0 {
                assert!(
                    error.contains(&format!("line {line}:")),
                    "{text:?}: {error}"
                );
            }
            assert!(!error.contains(secret), "the key is echoed: {error}");
        }
    }

    #[test]
    fn keys_from_the_environment() {
        std::env::set_var(
            "GRIDFLOW_TEST_EDGE_KEYS",
            " tso=k1-aaaaaaaaaaaaaaaa , YWJjZGVmZ2hpamtsbW5vcA==,",
        );
        let keys = AuthConfig {
            api_keys_env: Some("GRIDFLOW_TEST_EDGE_KEYS".into()),
            api_keys_file: None,
        }
        .load()
        .unwrap();
        assert_eq!(
            &*keys
                .client(&with_key("x-api-key", "k1-aaaaaaaaaaaaaaaa"))
                .unwrap(),
            "tso"
        );
        assert!(keys
            .client(&with_key("x-api-key", "YWJjZGVmZ2hpamtsbW5vcA=="))
            .is_ok());
        assert_eq!(keys.reload(), Reloaded::Unchanged);
        std::env::set_var("GRIDFLOW_TEST_EDGE_KEYS_BAD", "tso=,x");
        let error = AuthConfig {
            api_keys_env: Some("GRIDFLOW_TEST_EDGE_KEYS_BAD".into()),
            api_keys_file: None,
        }
        .load()
        .unwrap_err()
        .message;
        assert!(
            error.contains("`GRIDFLOW_TEST_EDGE_KEYS_BAD` entry 1"),
            "{error}"
        );
    }

    /// A revoked key is refused after the next reload; a broken file keeps the last good set.
    #[test]
    fn a_changed_key_file_is_applied_and_a_broken_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys");
        std::fs::write(&path, "a=key-aaaaaaaaaaaaaaaa\nb=key-bbbbbbbbbbbbbbbb\n").unwrap();
        let keys = AuthConfig {
            api_keys_env: None,
            api_keys_file: Some(path.clone()),
        }
        .load()
        .unwrap();
        let who = |key: &str| {
            keys.client(&with_key("x-api-key", key))
                .map(|c| c.to_string())
        };
        assert_eq!(keys.reload(), Reloaded::Unchanged);
        std::fs::write(&path, "b=key-bbbbbbbbbbbbbbbb\nc=key-cccccccccccccccc\n").unwrap();
        assert_eq!(keys.reload(), Reloaded::Applied(2));
        assert_eq!(who("key-aaaaaaaaaaaaaaaa"), Err(Refusal::Forbidden));
        assert_eq!(who("key-cccccccccccccccc").unwrap(), "c");
        // Invalid: reported once, the last good set stays.
        std::fs::write(&path, "b=\n").unwrap();
        assert!(matches!(keys.reload(), Reloaded::Failed(e) if e.contains("line 1")));
        assert_eq!(keys.reload(), Reloaded::StillFailing);
        assert_eq!(who("key-bbbbbbbbbbbbbbbb").unwrap(), "b");
        // Unreadable: the same.
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(keys.reload(), Reloaded::Failed(e) if e.contains("cannot read")));
        assert_eq!(keys.reload(), Reloaded::StillFailing);
        assert_eq!(who("key-cccccccccccccccc").unwrap(), "c");
        std::fs::write(&path, "d=key-dddddddddddddddd\n").unwrap();
        assert_eq!(keys.reload(), Reloaded::Applied(1));
        assert_eq!(who("key-cccccccccccccccc"), Err(Refusal::Forbidden));
        assert_eq!(who("key-dddddddddddddddd").unwrap(), "d");
    }

    #[test]
    fn presented_keys() {
        assert_eq!(presented_key(&with_key("x-api-key", "  k  ")), Some("k"));
        assert_eq!(presented_key(&with_key("x-api-key", "")), None);
        assert_eq!(
            presented_key(&with_key("authorization", "bearer k")),
            Some("k")
        );
        assert_eq!(presented_key(&with_key("authorization", "Bearer")), None);
        assert_eq!(
            presented_key(&with_key("authorization", "Bearer    ")),
            None
        );
        assert_eq!(presented_key(&with_key("authorization", "Basic k")), None);
        assert_eq!(presented_key(&with_key("authorization", "Bearerk")), None);
    }

    proptest::proptest! {
        /// Any base64 key of 10 bytes or more (standard or URL-safe, padded or not) works alone and as
        /// `client=key`, and neither its prefix nor the empty key is let in.
        #[test]
        fn generated_base64_keys_work_alone_and_with_a_client(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 10..64),
            url_safe in proptest::bool::ANY,
            padded in proptest::bool::ANY,
            client in "[a-zA-Z0-9][a-zA-Z0-9._-]{0,20}",
        ) {
            use base64::Engine as _;
            let engine = match (url_safe, padded) {
                (false, true) => base64::engine::general_purpose::STANDARD,
                (false, false) => base64::engine::general_purpose::STANDARD_NO_PAD,
                (true, true) => base64::engine::general_purpose::URL_SAFE,
                (true, false) => base64::engine::general_purpose::URL_SAFE_NO_PAD,
            };
            let key = engine.encode(&bytes);
            for (text, expected) in [
                (format!("{key}\n"), None),
                (format!("{client}={key}\n"), Some(client.as_str())),
                (format!("# rotated\n{client} = {key}\n"), Some(client.as_str())),
            ] {
                let keys = file_keys(&text).map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{text:?}: {e}")))?;
                let got = keys.client(&with_key("x-api-key", &key));
                match expected {
                    Some(client) => proptest::prop_assert_eq!(got.as_deref().ok(), Some(client)),
                    None => proptest::prop_assert!(got.is_ok_and(|c| c.starts_with("key-"))),
                }
                proptest::prop_assert_eq!(keys.client(&with_key("x-api-key", "")), Err(Refusal::Unauthenticated));
                let without_padding = key.trim_end_matches('=');
                if without_padding != key && without_padding != client {
                    proptest::prop_assert_eq!(keys.client(&with_key("x-api-key", without_padding)), Err(Refusal::Forbidden));
                }
                if client != key {
                    proptest::prop_assert_eq!(keys.client(&with_key("x-api-key", &client)), Err(Refusal::Forbidden));
                }
            }
        }
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
