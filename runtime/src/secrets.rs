//! Kafka client secrets: values taken from files (`{ file = "/run/secrets/kafka-password" }`
//! in `[kafka.properties]`), re-read when the files change, and never shown.
//!
//! A rotated SASL username or password reaches the clients that are running (the shared
//! producer and every Kafka source's consumer) through librdkafka's
//! `rd_kafka_sasl_set_credentials`: their next connection authenticates with it, no restart.
//! Clients created later read the current values.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;

/// Properties whose values are never shown (logs, errors, admin endpoints): any key holding
/// one of these words (Java-style and future properties: `sasl.jaas.config`, ...), and every
/// property of [`LIBRDKAFKA_SENSITIVE`].
const SECRET_WORDS: &[&str] = &[
    "password",
    "passphrase",
    "secret",
    "jaas",
    "token",
    "key.pem",
    "private.key",
    "credentials",
];

/// The properties librdkafka itself marks sensitive (`_RK_SENSITIVE` in its property table,
/// `src/rdkafka_conf.c` of librdkafka 2.12.1, the version rdkafka-sys 4.10 builds; the table
/// is also what `CONFIGURATION.md` is generated from), and their aliases
/// (`sasl.oauthbearer.client.credentials.client.secret`). librdkafka redacts exactly these
/// when it dumps a configuration.
pub const LIBRDKAFKA_SENSITIVE: &[&str] = &[
    "ssl.key.location",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl_key",
    "ssl.ca.pem",
    "ssl.keystore.password",
    "sasl.username",
    "sasl.password",
    "sasl.oauthbearer.config",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.client.credentials.client.secret",
    "sasl.oauthbearer.assertion.private.key.file",
    "sasl.oauthbearer.assertion.private.key.passphrase",
    "sasl.oauthbearer.assertion.private.key.pem",
];

/// True for a property whose value must not be shown.
pub fn is_secret(property: &str) -> bool {
    let property = property.trim().to_ascii_lowercase();
    LIBRDKAFKA_SENSITIVE.contains(&property.as_str())
        || SECRET_WORDS.iter().any(|w| property.contains(w))
}

/// What is printed instead of a secret.
pub const REDACTED: &str = "<redacted>";

/// Secret property values read from files, shared by every Kafka client of the process.
#[derive(Clone, Default)]
pub struct Secrets(Arc<Inner>);

#[derive(Default)]
struct Inner {
    files: BTreeMap<String, PathBuf>,
    values: RwLock<BTreeMap<String, String>>,
    version: Option<watch::Sender<u64>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.files.keys().map(|k| (k, REDACTED)))
            .finish()
    }
}

impl PartialEq for Secrets {
    fn eq(&self, other: &Self) -> bool {
        self.0.files == other.0.files
    }
}

/// A file's content as a property value: without its trailing line break.
fn read(path: &PathBuf) -> Result<String, String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
        .map_err(|e| format!("cannot read the secret file {}: {e}", path.display()))
}

impl Secrets {
    /// Reads every file (`property → path`).
    pub fn load(files: BTreeMap<String, PathBuf>) -> Result<Secrets, String> {
        let mut values = BTreeMap::new();
        for (property, path) in &files {
            values.insert(property.clone(), read(path)?);
        }
        let (version, _) = watch::channel(0);
        Ok(Secrets(Arc::new(Inner {
            files,
            values: RwLock::new(values),
            version: Some(version),
        })))
    }

    /// True when no property comes from a file.
    pub fn is_empty(&self) -> bool {
        self.0.files.is_empty()
    }

    /// The current values (for a client being created).
    pub fn values(&self) -> BTreeMap<String, String> {
        self.0
            .values
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Notified (the version changes) when a value changed.
    pub fn subscribe(&self) -> Option<watch::Receiver<u64>> {
        self.0.version.as_ref().map(watch::Sender::subscribe)
    }

    /// Re-reads the files; the properties whose value changed. A file that cannot be read
    /// (being replaced) keeps its previous value until the next check.
    pub fn reload(&self) -> Vec<String> {
        let mut changed = Vec::new();
        let mut values = self.0.values.write().unwrap_or_else(|e| e.into_inner());
        for (property, path) in &self.0.files {
            match read(path) {
                Ok(value) if values.get(property) != Some(&value) => {
                    values.insert(property.clone(), value);
                    changed.push(property.clone());
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(property = %property, error = %e, "Secret file not read; the previous value stays.")
                }
            }
        }
        drop(values);
        if !changed.is_empty() {
            if let Some(version) = &self.0.version {
                version.send_modify(|v| *v += 1);
            }
        }
        changed
    }

    /// Re-reads the files every `interval` until `stop` (polling works with the symlink swaps
    /// of Kubernetes secret volumes, which file events do not always report).
    pub async fn watch(self, interval: Duration, stop: tokio_util::sync::CancellationToken) {
        if self.is_empty() {
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stop.cancelled() => return,
            }
            let changed = self.reload();
            if !changed.is_empty() {
                tracing::info!(properties = ?changed, "Kafka credentials reloaded.");
            }
        }
    }
}

/// Gives a running client new SASL credentials (PLAIN, SCRAM): its next connection uses them.
pub fn set_sasl_credentials<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    username: &str,
    password: &str,
) -> Result<(), String> {
    let username = std::ffi::CString::new(username)
        .map_err(|_| "the username holds a NUL byte".to_string())?;
    let password = std::ffi::CString::new(password)
        .map_err(|_| "the password holds a NUL byte".to_string())?;
    // SAFETY: the client pointer is valid while `client` is borrowed; librdkafka copies both
    // strings before it returns; a returned error object is owned by us and destroyed here.
    unsafe {
        let error = rdkafka::bindings::rd_kafka_sasl_set_credentials(
            client.native_ptr(),
            username.as_ptr(),
            password.as_ptr(),
        );
        if error.is_null() {
            Ok(())
        } else {
            let message = std::ffi::CStr::from_ptr(rdkafka::bindings::rd_kafka_error_string(error))
                .to_string_lossy()
                .into_owned();
            rdkafka::bindings::rd_kafka_error_destroy(error);
            Err(message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_property_names() {
        for p in [
            "sasl.password",
            "ssl.key.password",
            "sasl.jaas.config",
            "sasl.oauthbearer.client.secret",
            "ssl.key.pem",
            "sasl.oauthbearer.config",
            "ssl.keystore.password",
            "SSL.Key.Password",
        ] {
            assert!(is_secret(p), "{p}");
        }
        // Every property librdkafka marks sensitive (its username included).
        for p in LIBRDKAFKA_SENSITIVE {
            assert!(is_secret(p), "{p}");
        }
        for p in [
            "security.protocol",
            "linger.ms",
            "ssl.ca.location",
            "ssl.keystore.location",
            "sasl.mechanism",
        ] {
            assert!(!is_secret(p), "{p}");
        }
    }

    #[test]
    fn files_are_read_trimmed_reloaded_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("password");
        std::fs::write(&path, "first-secret\n").unwrap();
        let secrets = Secrets::load(BTreeMap::from([(
            "sasl.password".to_string(),
            path.clone(),
        )]))
        .unwrap();
        assert_eq!(secrets.values()["sasl.password"], "first-secret");
        let changes = secrets.subscribe().unwrap();
        assert!(secrets.reload().is_empty());
        std::fs::write(&path, "second-secret").unwrap();
        assert_eq!(secrets.reload(), ["sasl.password"]);
        assert!(changes.has_changed().unwrap());
        assert_eq!(secrets.values()["sasl.password"], "second-secret");
        assert!(!format!("{secrets:?}").contains("secret-"), "{secrets:?}");
        // A file being replaced (missing for a moment) keeps the value.
        std::fs::remove_file(&path).unwrap();
        assert!(secrets.reload().is_empty());
        assert_eq!(secrets.values()["sasl.password"], "second-secret");
        assert!(Secrets::load(BTreeMap::from([("x".to_string(), path)])).is_err());
    }
}
