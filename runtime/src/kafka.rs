//! Kafka client settings shared by the Kafka source, the Kafka sink and the dead-letter writer,
//! topic checks, the one builder of the records gridflow produces ([`record`]), and the
//! embedded development broker.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer as _};
use rdkafka::statistics::Statistics;

use crate::secrets::Secrets;

/// How gridflow talks to Kafka: the bootstrap servers and any librdkafka property
/// (`security.protocol`, `sasl.*`, `ssl.*`, ...). Its `Debug` never shows a secret.
#[derive(Clone, PartialEq, Default)]
pub struct KafkaSettings {
    /// Comma-separated `host:port` list.
    pub brokers: String,
    /// librdkafka properties applied to every client; they override gridflow's defaults.
    pub properties: BTreeMap<String, String>,
    /// Properties read from files (re-read when they change).
    pub secrets: Secrets,
    /// `linger.ms` of the producer of pipelines whose caller waits for the broker's
    /// acknowledgement (HTTP and SOAP sources); see [`Producers`].
    pub request_linger_ms: u32,
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown: BTreeMap<&str, &str> = self
            .properties
            .iter()
            .map(|(k, v)| {
                let v = if crate::secrets::is_secret(k) {
                    crate::secrets::REDACTED
                } else {
                    v.as_str()
                };
                (k.as_str(), v)
            })
            .collect();
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("properties", &shown)
            .field("secrets", &self.secrets)
            .field("request_linger_ms", &self.request_linger_ms)
            .finish()
    }
}

/// Properties gridflow sets on producers unless the configuration overrides them.
const PRODUCER_DEFAULTS: &[(&str, &str)] = &[
    ("enable.idempotence", "true"),
    ("acks", "all"),
    ("linger.ms", "5"),
    // One delivery attempt is bounded, so that `on_error` decides about retries and an HTTP
    // caller gets an answer instead of waiting librdkafka's default five minutes.
    ("message.timeout.ms", "10000"),
    ("allow.auto.create.topics", "false"),
];

/// Properties gridflow sets on consumers unless the configuration overrides them.
const CONSUMER_DEFAULTS: &[(&str, &str)] = &[
    ("enable.auto.commit", "true"),
    // Offsets are stored only once their message was delivered or dead-lettered.
    ("enable.auto.offset.store", "false"),
    ("auto.commit.interval.ms", "1000"),
    ("auto.offset.reset", "earliest"),
    ("allow.auto.create.topics", "false"),
    ("session.timeout.ms", "10000"),
    ("heartbeat.interval.ms", "1000"),
    // Records prefetched, per partition: each partition is read from a queue of its own, to
    // which librdkafka applies this limit (64 MiB by default) one by one.
    ("queued.max.messages.kbytes", "4096"),
];

/// Why `[kafka.properties]` may not set `key` to `value`, when at-least-once depends on it:
/// gridflow's producers must wait for every in-sync replica (`acks`) and be idempotent (a
/// retried batch is neither duplicated nor reordered), every delivery report must come back
/// (the caller's `202` and the source's commit wait for it), and the Kafka source's offsets
/// are stored only once their record is settled and then auto-committed. `None`: allowed.
/// librdkafka's aliases are checked too (`request.required.acks`, `max.in.flight`).
///
/// `allow_non_idempotent` (`[kafka] allow_non_idempotent = true`) lets `enable.idempotence`
/// be turned off, and with it the in-flight limit: retries may then duplicate or reorder
/// records, but nothing is lost. It exists for brokers that cannot keep an idempotent
/// producer's state (tansu 0.6 across its own restart).
pub fn guarded_property(key: &str, value: &str, allow_non_idempotent: bool) -> Option<String> {
    let v = value.trim().to_ascii_lowercase();
    let truthy = matches!(v.as_str(), "true" | "1" | "yes" | "on");
    let why = match key {
        "acks" | "request.required.acks" | "topic.acks" | "topic.request.required.acks"
            if !matches!(v.as_str(), "all" | "-1") =>
        {
            "gridflow's producers wait for every in-sync replica (`all`); fewer acknowledgements can lose a record the caller was told was delivered"
        }
        "enable.idempotence" if !truthy && !allow_non_idempotent => {
            "gridflow's producers are idempotent: without it a retried batch can be written twice or out of order (where the broker cannot keep an idempotent producer's state, set `[kafka] allow_non_idempotent = true`)"
        }
        "max.in.flight.requests.per.connection" | "max.in.flight"
            if !allow_non_idempotent && v.parse::<u64>().map_or(true, |n| n > 5) =>
        {
            "an idempotent producer keeps order and avoids duplicates with at most 5 requests in flight per connection"
        }
        "enable.auto.offset.store" if truthy => {
            "the Kafka source stores an offset only once its record is delivered or dead-lettered; an automatic store commits records that reached nobody"
        }
        "enable.auto.commit" if !truthy => {
            "the Kafka source commits the offsets it stored through auto-commit; without it nothing is ever committed and every restart consumes everything again"
        }
        "delivery.report.only.error" if truthy => {
            "gridflow waits for the delivery report of every record before it answers or commits"
        }
        _ => return None,
    };
    Some(format!(
        "`{key}` = `{value}` is not allowed: {why} (remove it from [kafka.properties])"
    ))
}

impl KafkaSettings {
    fn base(&self, defaults: &[(&str, &str)]) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (k, v) in defaults {
            config.set(*k, *v);
        }
        for (k, v) in &self.properties {
            config.set(k, v);
        }
        for (k, v) in self.secrets.values() {
            config.set(k, v);
        }
        config
    }

    /// The SASL username and password clients use now, when both are set.
    pub fn sasl_credentials(&self) -> Option<(String, String)> {
        let secrets = self.secrets.values();
        let get = |k: &str| secrets.get(k).or_else(|| self.properties.get(k)).cloned();
        Some((get("sasl.username")?, get("sasl.password")?))
    }

    /// Settings of an idempotent producer.
    pub fn producer_config(&self) -> ClientConfig {
        self.base(PRODUCER_DEFAULTS)
    }

    /// Settings of the producer of request pipelines: [`producer_config`](Self::producer_config)
    /// with `linger.ms` = `request_linger_ms`, whatever the properties say.
    pub fn request_producer_config(&self) -> ClientConfig {
        let mut config = self.producer_config();
        config.set("linger.ms", self.request_linger_ms.to_string());
        config
    }

    /// Settings of a consumer in `group` that stores offsets explicitly.
    pub fn consumer_config(&self, group: &str) -> ClientConfig {
        let mut config = self.base(CONSUMER_DEFAULTS);
        config.set("group.id", group);
        // User properties win over the defaults, but the explicit offset store is what
        // at-least-once rests on.
        config.set("enable.auto.offset.store", "false");
        config
    }

    /// Does a consumer without a committed offset start from the earliest one
    /// (`auto.offset.reset`, gridflow's default `earliest`)?
    pub fn starts_from_earliest(&self) -> bool {
        self.properties
            .get("auto.offset.reset")
            .is_none_or(|v| matches!(v.as_str(), "earliest" | "smallest" | "beginning"))
    }

    /// Settings of an admin client.
    pub fn admin_config(&self) -> ClientConfig {
        self.base(&[])
    }

    /// Settings of a consumer outside any group, for metadata. It gets the consumer defaults,
    /// so that the user's consumer properties pass librdkafka's checks of a consumer (a
    /// `max.poll.interval.ms` below librdkafka's own `session.timeout.ms`, say, is valid
    /// next to gridflow's).
    fn metadata_config(&self) -> ClientConfig {
        self.base(CONSUMER_DEFAULTS)
    }

    /// A new producer, reporting its queue depth in the metrics.
    pub fn producer(&self) -> Result<Producer, KafkaError> {
        Producer::new(self.clone(), Role::Stream)
    }

    /// The process's producers (see [`Producers`]).
    pub fn producers(&self) -> Result<Producers, KafkaError> {
        let stream = self.producer()?;
        let lingers = |c: &ClientConfig| c.get("linger.ms").map(str::to_owned);
        let request =
            if lingers(&self.producer_config()) == lingers(&self.request_producer_config()) {
                None
            } else {
                Some(Producer::new(self.clone(), Role::Request)?)
            };
        Ok(Producers { stream, request })
    }

    /// `config` with librdkafka's statistics every 5 s, unless the configuration sets their
    /// interval (`statistics.interval.ms`; 0 turns them and the metrics made of them off).
    pub fn with_statistics(&self, mut config: ClientConfig) -> ClientConfig {
        if !self.properties.contains_key(STATISTICS_INTERVAL) {
            config.set(STATISTICS_INTERVAL, "5000");
        }
        config
    }

    /// Every topic of the cluster with its partition count, or the error its metadata has.
    pub async fn topic_partitions(
        &self,
        timeout: Duration,
    ) -> Result<BTreeMap<String, Result<i32, RDKafkaErrorCode>>, KafkaError> {
        let config = self.metadata_config();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = config.create()?;
            let metadata = consumer.fetch_metadata(None, timeout)?;
            Ok(metadata
                .topics()
                .iter()
                .map(|t| {
                    let partitions = match t.error() {
                        None => Ok(t.partitions().len() as i32),
                        Some(e) => Err(RDKafkaErrorCode::from(e)),
                    };
                    (t.name().to_string(), partitions)
                })
                .collect())
        })
        .await
        .map_err(|_| KafkaError::Canceled)?
    }

    /// Topics among `topics` that the broker does not have.
    pub async fn missing_topics(&self, topics: &[String]) -> Result<Vec<String>, KafkaError> {
        let present = self.topic_partitions(Duration::from_secs(10)).await?;
        Ok(topics
            .iter()
            .filter(|t| !matches!(present.get(t.as_str()), Some(Ok(_))))
            .cloned()
            .collect())
    }

    /// Is a broker reachable? (metadata within `timeout`)
    pub async fn reachable(&self, timeout: Duration) -> bool {
        let config = self.metadata_config();
        tokio::task::spawn_blocking(move || {
            config
                .create::<BaseConsumer>()
                .is_ok_and(|consumer| consumer.fetch_metadata(None, timeout).is_ok())
        })
        .await
        .unwrap_or(false)
    }

    /// Creates `topics` that do not exist yet, with `partitions` each (development helper).
    pub async fn create_topics(
        &self,
        topics: &[String],
        partitions: i32,
    ) -> Result<(), KafkaError> {
        let admin: AdminClient<DefaultClientContext> = self.base(&[]).create()?;
        let new: Vec<NewTopic> = topics
            .iter()
            .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
            .collect();
        let results = admin.create_topics(&new, &AdminOptions::new()).await?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    tracing::error!(topic = %topic, error = %code, "Topic creation failed.");
                    return Err(KafkaError::AdminOp(code));
                }
            }
        }
        Ok(())
    }
}

const STATISTICS_INTERVAL: &str = "statistics.interval.ms";

/// The librdkafka producer under a [`Producer`] handle.
pub type RawProducer = FutureProducer<ProducerStats>;

/// What a producer is for: its settings, and the `producer` / `client` label of its metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Pipelines nobody waits on (Kafka and file sources), dead letters, replay.
    Stream,
    /// Pipelines whose caller waits for the broker's acknowledgement (HTTP, SOAP).
    Request,
}

impl Role {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Role::Stream => "stream",
            Role::Request => "request",
        }
    }
}

/// A producer of the process (sinks, dead letters, replay) that outlives its librdkafka
/// client: when the client hits a fatal error (`rd_kafka_fatal_error`: the idempotent
/// producer was fenced, its epoch or sequence is no longer valid, ...), it never delivers
/// again, so the next use builds a new one from the same settings (with the secrets as they
/// are now) and every later record goes there.
///
/// Nothing is lost in the swap: a record the dead client had not delivered fails with an
/// error (`_FATAL`, `_PURGE_QUEUE`, or "the producer was closed") that
/// [`is_transient`] calls transient, so the sink's retry sends it again, on the new client.
/// Concurrent failures rebuild once: each client has a generation number, and only a caller
/// that saw the current generation fail replaces it.
#[derive(Clone)]
pub struct Producer {
    inner: Arc<Handle>,
}

struct Handle {
    settings: KafkaSettings,
    role: Role,
    current: ArcSwap<Generation>,
    /// Held while a new client is built, so that one is built per fatal error.
    rebuilding: Mutex<()>,
}

/// One librdkafka client of a [`Producer`] and its number (0 for the first).
pub struct Generation {
    producer: Option<RawProducer>,
    number: u64,
    /// Set (once) by its client context when the client hit a fatal error.
    fatal: Arc<AtomicBool>,
}

impl Generation {
    /// Which client of its handle this is: 0, then one more per fatal error.
    pub fn number(&self) -> u64 {
        self.number
    }

    /// Did this client hit a fatal error (reported by librdkafka's error callback or found by
    /// asking it)?
    fn fatal(&self) -> bool {
        self.fatal.load(Ordering::Acquire) || self.raw().client().fatal_error().is_some()
    }

    /// Logs and counts this client's fatal error, unless its context did already.
    fn report_fatal(&self, role: &'static str) {
        if self.fatal.swap(true, Ordering::AcqRel) {
            return;
        }
        let (code, reason) = self
            .raw()
            .client()
            .fatal_error()
            .map(|(code, reason)| (code.to_string(), reason))
            .unwrap_or_else(|| ("fatal".into(), "unknown".into()));
        crate::metrics::kafka_fatal_error(role);
        tracing::error!(client = role, error = %code, reason = %reason, "Kafka producer hit a fatal error; it delivers nothing more and is replaced.");
    }

    fn raw(&self) -> &RawProducer {
        self.producer
            .as_ref()
            .expect("a generation holds its producer until it is dropped")
    }
}

impl std::ops::Deref for Generation {
    type Target = RawProducer;

    fn deref(&self) -> &RawProducer {
        self.raw()
    }
}

impl Drop for Generation {
    /// Closing a librdkafka client blocks (its polling thread is joined, its queue purged):
    /// off the async workers when there are some.
    fn drop(&mut self) {
        if let Some(producer) = self.producer.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn_blocking(move || drop(producer))),
                Err(_) => drop(producer),
            }
        }
    }
}

impl Producer {
    /// A producer with the settings of `role`, reporting its queue depth in the metrics.
    pub fn new(settings: KafkaSettings, role: Role) -> Result<Producer, KafkaError> {
        crate::metrics::producer_queue(role.label(), 0, 0);
        crate::metrics::kafka_fatal_errors_init(role.label());
        let current = Self::create(&settings, role, 0)?;
        Ok(Producer {
            inner: Arc::new(Handle {
                settings,
                role,
                current: ArcSwap::from_pointee(current),
                rebuilding: Mutex::new(()),
            }),
        })
    }

    fn create(settings: &KafkaSettings, role: Role, number: u64) -> Result<Generation, KafkaError> {
        let config = match role {
            Role::Stream => settings.producer_config(),
            Role::Request => settings.request_producer_config(),
        };
        let fatal = Arc::new(AtomicBool::new(false));
        let producer = settings
            .with_statistics(config)
            .create_with_context(ProducerStats {
                role: role.label(),
                fatal: Arc::clone(&fatal),
            })?;
        Ok(Generation {
            producer: Some(producer),
            number,
            fatal,
        })
    }

    /// The client records go to now. Hold it for one send, not longer: after a fatal error a
    /// new one takes its place.
    pub fn current(&self) -> Arc<Generation> {
        self.inner.current.load_full()
    }

    /// The client to send with: the current one, or a new one when the current one hit a
    /// fatal error.
    pub fn usable(&self) -> Arc<Generation> {
        let current = self.current();
        if current.fatal.load(Ordering::Acquire) {
            return self.recover(&current);
        }
        current
    }

    /// Checks the current client for a fatal error (after a failed delivery, or from a
    /// periodic probe) and replaces it when it has one. Returns whether it had.
    pub fn recover_if_fatal(&self) -> bool {
        let current = self.current();
        if current.fatal() {
            self.recover(&current);
            true
        } else {
            false
        }
    }

    /// Replaces `failed` (when it is still the current client) by a new client; returns the
    /// client to use now. A client that cannot be built (it never can for a reason of the
    /// network: building connects to nothing) leaves the failed one in place, and the next
    /// call tries again.
    fn recover(&self, failed: &Arc<Generation>) -> Arc<Generation> {
        let _one_at_a_time = self
            .inner
            .rebuilding
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let current = self.current();
        if current.number != failed.number {
            return current;
        }
        let role = self.inner.role.label();
        failed.report_fatal(role);
        let number = failed.number + 1;
        match Self::create(&self.inner.settings, self.inner.role, number) {
            Ok(generation) => {
                self.inner.current.store(Arc::new(generation));
                tracing::warn!(client = role, generation = number, "Kafka producer replaced after a fatal error; records not delivered are sent again.");
                self.current()
            }
            Err(e) => {
                tracing::error!(client = role, error = %e, "Kafka producer not rebuilt after a fatal error; trying again on the next record.");
                current
            }
        }
    }

    /// Which role this producer has.
    pub fn role(&self) -> Role {
        self.inner.role
    }

    /// Makes the current client fail as a fenced idempotent producer does
    /// (`rd_kafka_test_fatal_error` with `PRODUCER_FENCED`): for tests of the recovery only.
    #[cfg(debug_assertions)]
    pub fn inject_fatal_error(&self, reason: &str) -> Result<(), KafkaError> {
        test_fatal_error(self.current().client(), reason)
    }
}

/// Makes `client` fail with a fatal error (librdkafka's `rd_kafka_test_fatal_error`, as a
/// fenced idempotent producer fails): for tests of the recovery only.
#[cfg(debug_assertions)]
pub fn test_fatal_error<C: rdkafka::ClientContext>(
    client: &rdkafka::client::Client<C>,
    reason: &str,
) -> Result<(), KafkaError> {
    let reason =
        std::ffi::CString::new(reason.replace('\0', " ")).map_err(|_| KafkaError::Canceled)?;
    // SAFETY: the client is alive for the call (borrowed) and `reason` is a NUL-terminated
    // string that outlives the call.
    let code = unsafe {
        rdkafka::bindings::rd_kafka_test_fatal_error(
            client.native_ptr(),
            rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_PRODUCER_FENCED,
            reason.as_ptr(),
        )
    };
    match code {
        rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => Ok(()),
        other => Err(KafkaError::Global(other.into())),
    }
}

/// Each increment asks every Kafka source's consumer of the process to fail with a fatal
/// error (`POST /admin/test/kafka-fatal-error?client=consumer` of a debug build).
#[cfg(debug_assertions)]
pub fn consumer_faults() -> &'static tokio::sync::watch::Sender<u64> {
    static FAULTS: std::sync::OnceLock<tokio::sync::watch::Sender<u64>> =
        std::sync::OnceLock::new();
    FAULTS.get_or_init(|| tokio::sync::watch::channel(0).0)
}

/// The process's two producers, shared by every pipeline. Records of a pipeline whose caller
/// waits for the broker's acknowledgement (an HTTP or SOAP source answers `202` once Kafka
/// has the record) go out at once: `request` lingers `[kafka] request_linger_ms` (default
/// 0). Records of streams (Kafka and file sources) are batched: `stream` lingers `linger.ms`
/// (default 5), fewer and larger requests for more throughput. One producer serves both when
/// the two lingers are equal.
#[derive(Clone)]
pub struct Producers {
    /// For pipelines nobody waits on.
    stream: Producer,
    /// For pipelines whose caller waits; `None`: `stream` (same linger).
    request: Option<Producer>,
}

impl Producers {
    /// The producer for a pipeline whose caller waits (`true`) or not.
    pub fn for_pipeline(&self, caller_waits: bool) -> &Producer {
        match &self.request {
            Some(request) if caller_waits => request,
            _ => &self.stream,
        }
    }

    /// Each distinct producer once.
    pub fn distinct(&self) -> Vec<Producer> {
        std::iter::once(&self.stream)
            .chain(&self.request)
            .cloned()
            .collect()
    }

    /// Waits (blocking) at most `timeout` for every queued record's delivery.
    pub fn flush(&self, timeout: Duration) {
        use rdkafka::producer::Producer as _;
        for producer in self.distinct() {
            let _ = producer.current().flush(timeout);
        }
    }

    /// Replaces every producer that hit a fatal error (a periodic check, so that a fatal
    /// error is answered even while no record is sent).
    pub fn recover_if_fatal(&self) {
        for producer in self.distinct() {
            producer.recover_if_fatal();
        }
    }
}

/// The producer's client context: its statistics become the producer queue gauges of its
/// role (`stream` or `request`); a fatal error is logged and counted here, once.
pub struct ProducerStats {
    role: &'static str,
    /// Set (once) when the client hit a fatal error.
    fatal: Arc<AtomicBool>,
}

impl rdkafka::ClientContext for ProducerStats {
    fn stats(&self, statistics: Statistics) {
        crate::metrics::producer_queue(self.role, statistics.msg_cnt, statistics.msg_size);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            // The client is not at hand here: the reason librdkafka gives is the underlying
            // error. The producer is replaced on its next use (or the next periodic check).
            if !self.fatal.swap(true, Ordering::AcqRel) {
                crate::metrics::kafka_fatal_error(self.role);
                tracing::error!(client = self.role, reason = %reason, "Kafka producer hit a fatal error; it delivers nothing more and is replaced.");
            }
        } else {
            tracing::warn!(client = self.role, error = %error, reason = %reason, "Kafka producer error.");
        }
    }
}

/// Hands `record` to the producer's queue, waiting for room when the queue is full (so the
/// order of calls is the order of records), and returns the delivery to await.
///
/// A producer that hit a fatal error is replaced first (see [`Producer`]), so the record goes
/// to a client that can deliver it.
pub async fn enqueue<'a>(
    producer: &Producer,
    mut record: FutureRecord<'a, [u8], [u8]>,
) -> Result<DeliveryFuture, KafkaError> {
    let mut replaced = false;
    loop {
        let current = producer.usable();
        match current.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                drop(current);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            // Refused at once: the client is dead. Once on a new one.
            Err((error @ KafkaError::MessageProduction(RDKafkaErrorCode::Fatal), back)) => {
                if replaced {
                    return Err(error);
                }
                producer.recover(&current);
                replaced = true;
                record = back;
            }
            Err((error, _)) => return Err(error),
        }
    }
}

/// Is this producer error worth retrying? Broker and network faults are; a record the broker
/// refuses as such is not.
pub fn is_transient(error: &KafkaError) -> bool {
    let code = match error {
        KafkaError::MessageProduction(code) => *code,
        _ => return true,
    };
    // Authorisation and topic faults are operational (an ACL or a topic to fix): retried,
    // not blamed on the record.
    !matches!(
        code,
        RDKafkaErrorCode::MessageSizeTooLarge
            | RDKafkaErrorCode::InvalidMessageSize
            | RDKafkaErrorCode::InvalidMessage
            | RDKafkaErrorCode::InvalidRecord
            | RDKafkaErrorCode::MessageBatchTooLarge
    )
}

/// Which of a message's own `gridflow.*` headers a record written by gridflow carries.
///
/// Headers of other names always travel with the message; gridflow writes its own headers
/// anew (the `stamps` of [`record`]), so each writer says which ones of the message survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carry {
    /// None (the Kafka sink): a delivered message gets the sink's correlation id, pipeline
    /// and version, never an upstream's.
    Delivery,
    /// The replay count only (`gridflow.replay.count`, `gridflow.replayed_from`): the dead
    /// letter of a replayed input keeps how often it was replayed.
    DeadLetter,
    /// All but the facts of the failure (`gridflow.error.*`, `gridflow.source.*`,
    /// `gridflow.failed_at`, `gridflow.pipeline[.version]`) and the replay headers that the
    /// replay writes anew (`gridflow replay`): the correlation id travels on.
    Replay,
}

impl Carry {
    /// Whether a message's header `name` goes into the record.
    pub fn carries(self, name: &str) -> bool {
        if !name.starts_with("gridflow.") {
            return true;
        }
        match self {
            Carry::Delivery => false,
            Carry::DeadLetter => name.starts_with("gridflow.replay"),
            Carry::Replay => {
                !(name.starts_with("gridflow.error.")
                    || name.starts_with("gridflow.source.")
                    || matches!(
                        name,
                        "gridflow.failed_at"
                            | "gridflow.pipeline"
                            | "gridflow.pipeline.version"
                            | "gridflow.replay.count"
                            | "gridflow.replayed_from"
                    ))
            }
        }
    }
}

/// Builds a record for `topic`: the one place gridflow turns a message into a Kafka record,
/// used by the Kafka sink, the dead-letter route (through the Kafka sink) and `gridflow
/// replay`.
///
/// The record has `payload`, `key` when there is one, and as headers first the message's own
/// `headers` that `carry` keeps, in their order, then gridflow's `stamps` (its `gridflow.*`
/// headers: correlation id, pipeline, envelope, replay count).
pub fn record<'a, 'h>(
    topic: &'a str,
    key: Option<&'a [u8]>,
    payload: &'a [u8],
    headers: impl IntoIterator<Item = (&'h str, &'h [u8])>,
    carry: Carry,
    stamps: &[(&str, &[u8])],
) -> FutureRecord<'a, [u8], [u8]> {
    let headers = headers.into_iter();
    let mut owned = OwnedHeaders::new_with_capacity(headers.size_hint().0 + stamps.len());
    for (name, value) in headers.filter(|(name, _)| carry.carries(name)) {
        owned = owned.insert(Header {
            key: name,
            value: Some(value),
        });
    }
    for (name, value) in stamps {
        owned = owned.insert(Header {
            key: name,
            value: Some(*value),
        });
    }
    let record = FutureRecord::to(topic).payload(payload).headers(owned);
    match key {
        Some(key) => record.key(key),
        None => record,
    }
}

/// librdkafka's in-process mock cluster, the default broker of `gridflow run` when none is
/// configured. For development only: it keeps nothing across a restart.
///
/// It lets a consumer group's first member in at once: a real broker waits
/// `group.initial.rebalance.delay.ms` (3 s by default, and so does the mock cluster) for more
/// members before the first assignment, which is most of the start of a short run. Kafka's
/// development images set that delay to 0 for the same reason.
pub struct EmbeddedBroker {
    /// The client whose handle owns the cluster (`test.mock.num.brokers`): the cluster lives as
    /// long as it does.
    owner: rdkafka::producer::BaseProducer,
}

/// The embedded broker's `group.initial.rebalance.delay.ms`.
const EMBEDDED_INITIAL_REBALANCE_DELAY_MS: i32 = 0;

impl EmbeddedBroker {
    /// Starts a one-broker mock cluster.
    pub fn start() -> Result<EmbeddedBroker, KafkaError> {
        let owner: rdkafka::producer::BaseProducer = ClientConfig::new()
            .set("test.mock.num.brokers", "1")
            .create()?;
        let broker = EmbeddedBroker { owner };
        let native = broker.owner.client().native_ptr();
        // SAFETY: `native` is the live handle of `owner`, which has a mock cluster (it was
        // created with `test.mock.num.brokers`, checked non-null below); the cluster outlives
        // this call, as `owner` does.
        unsafe {
            let cluster = rdkafka::bindings::rd_kafka_handle_mock_cluster(native);
            if cluster.is_null() {
                return Err(KafkaError::MockCluster(RDKafkaErrorCode::Fail));
            }
            rdkafka::bindings::rd_kafka_mock_group_initial_rebalance_delay_ms(
                cluster,
                EMBEDDED_INITIAL_REBALANCE_DELAY_MS,
            );
        }
        Ok(broker)
    }

    fn cluster(
        &self,
    ) -> rdkafka::mocking::MockCluster<'_, rdkafka::producer::DefaultProducerContext> {
        self.owner
            .client()
            .mock_cluster()
            .expect("the owner was created with a mock cluster")
    }

    /// The bootstrap servers to connect to.
    pub fn bootstrap_servers(&self) -> String {
        self.cluster().bootstrap_servers()
    }

    /// Creates `topic` with `partitions` partitions.
    pub fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), KafkaError> {
        self.cluster().create_topic(topic, partitions, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_writer_carries_its_own_set_of_gridflow_headers() {
        let names = [
            "trace",
            "gridflow.correlation_id",
            "gridflow.pipeline",
            "gridflow.error.code",
            "gridflow.source.topic",
            "gridflow.failed_at",
            "gridflow.replay.count",
            "gridflow.replayed_from",
        ];
        let carried = |carry: Carry| {
            names
                .iter()
                .copied()
                .filter(|n| carry.carries(n))
                .collect::<Vec<_>>()
        };
        assert_eq!(carried(Carry::Delivery), ["trace"]);
        assert_eq!(
            carried(Carry::DeadLetter),
            ["trace", "gridflow.replay.count", "gridflow.replayed_from"]
        );
        assert_eq!(carried(Carry::Replay), ["trace", "gridflow.correlation_id"]);
        let r = record(
            "t",
            None,
            b"x",
            [("trace", &b"1"[..]), ("gridflow.pipeline", &b"up"[..])],
            Carry::Delivery,
            &[("gridflow.pipeline", b"p")],
        );
        use rdkafka::message::Headers as _;
        let headers: Vec<_> = r
            .headers
            .as_ref()
            .unwrap()
            .iter()
            .map(|h| (h.key.to_string(), h.value.unwrap().to_vec()))
            .collect();
        assert_eq!(
            headers,
            [
                ("trace".to_string(), b"1".to_vec()),
                ("gridflow.pipeline".to_string(), b"p".to_vec())
            ]
        );
        assert!(r.key.is_none());
    }

    #[test]
    fn user_properties_override_defaults_but_not_the_offset_store() {
        let mut settings = KafkaSettings {
            brokers: "b:9092".into(),
            ..KafkaSettings::default()
        };
        settings.properties.insert("linger.ms".into(), "50".into());
        settings
            .properties
            .insert("enable.auto.offset.store".into(), "true".into());
        let p = settings.producer_config();
        assert_eq!(p.get("linger.ms"), Some("50"));
        assert_eq!(p.get("enable.idempotence"), Some("true"));
        let c = settings.consumer_config("g");
        assert_eq!(c.get("group.id"), Some("g"));
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
    }

    #[test]
    fn request_pipelines_get_a_producer_that_does_not_linger() {
        let mut settings = KafkaSettings {
            brokers: "127.0.0.1:1".into(),
            ..KafkaSettings::default()
        };
        assert_eq!(settings.producer_config().get("linger.ms"), Some("5"));
        assert_eq!(
            settings.request_producer_config().get("linger.ms"),
            Some("0")
        );
        assert_eq!(
            settings.request_producer_config().get("enable.idempotence"),
            Some("true"),
            "the same producer settings otherwise"
        );
        assert_eq!(settings.producers().unwrap().distinct().len(), 2);

        // `linger.ms` in the properties is the stream producer's; `request_linger_ms` wins
        // for the request producer.
        settings.properties.insert("linger.ms".into(), "20".into());
        settings.request_linger_ms = 2;
        assert_eq!(settings.producer_config().get("linger.ms"), Some("20"));
        assert_eq!(
            settings.request_producer_config().get("linger.ms"),
            Some("2")
        );

        // Equal lingers: one producer for both.
        settings.request_linger_ms = 20;
        assert_eq!(settings.producers().unwrap().distinct().len(), 1);
    }

    #[test]
    fn consumer_properties_valid_next_to_the_defaults_pass_every_client() {
        // librdkafka's own session.timeout.ms (45 s) is above this; gridflow's (10 s) is not.
        let mut settings = KafkaSettings {
            brokers: "127.0.0.1:1".into(),
            ..KafkaSettings::default()
        };
        settings
            .properties
            .insert("max.poll.interval.ms".into(), "20000".into());
        assert!(settings.metadata_config().create::<BaseConsumer>().is_ok());
        assert!(settings
            .consumer_config("g")
            .create::<BaseConsumer>()
            .is_ok());
        assert!(settings.producer().is_ok());
        assert!(settings
            .admin_config()
            .create::<AdminClient<DefaultClientContext>>()
            .is_ok());
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let mut settings = KafkaSettings::default();
        settings
            .properties
            .insert("sasl.password".into(), "hunter2".into());
        settings
            .properties
            .insert("sasl.username".into(), "alice".into());
        let shown = format!("{settings:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        // librdkafka marks the username sensitive too.
        assert!(!shown.contains("alice"), "{shown}");
        assert_eq!(
            settings.sasl_credentials(),
            Some(("alice".into(), "hunter2".into()))
        );
    }

    /// Sends `payload` until it is delivered (as a sink's retry does), at most 5 times; how
    /// many attempts failed.
    async fn deliver(producer: &Producer, topic: &str, payload: &str) -> usize {
        for failed in 0..5 {
            let record = FutureRecord::<[u8], [u8]>::to(topic).payload(payload.as_bytes());
            match enqueue(producer, record).await {
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => return failed,
                    Ok(Err((e, _))) => assert!(is_transient(&e), "{e}"),
                    Err(_) => {}
                },
                Err(e) => assert!(is_transient(&e), "{e}"),
            }
        }
        panic!("`{payload}` not delivered in 5 attempts");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_producer_with_a_fatal_error_is_replaced_and_loses_nothing() {
        use rdkafka::consumer::Consumer as _;
        use rdkafka::Message as _;
        let broker = EmbeddedBroker::start().unwrap();
        broker.create_topic("fatal.t", 1).unwrap();
        let settings = KafkaSettings {
            brokers: broker.bootstrap_servers(),
            ..KafkaSettings::default()
        };
        let producer = settings.producer().unwrap();
        for i in 0..5 {
            assert_eq!(
                deliver(&producer, "fatal.t", &format!("before-{i}")).await,
                0
            );
        }
        assert_eq!(producer.current().number(), 0);

        // Records in flight when the client dies: each one is delivered (again, on the new
        // client) by its retry.
        let in_flight: Vec<_> = (0..50)
            .map(|i| {
                let producer = producer.clone();
                tokio::spawn(
                    async move { deliver(&producer, "fatal.t", &format!("during-{i}")).await },
                )
            })
            .collect();
        producer.inject_fatal_error("injected by a test").unwrap();
        assert!(
            producer.current().fatal(),
            "librdkafka reports the fatal error"
        );
        for task in in_flight {
            task.await.unwrap();
        }
        for i in 0..5 {
            deliver(&producer, "fatal.t", &format!("after-{i}")).await;
        }
        assert_eq!(producer.current().number(), 1, "one new client, built once");
        assert!(!producer.current().fatal());
        assert!(!producer.recover_if_fatal(), "the new client is healthy");

        // Everything is on the topic.
        let consumer: BaseConsumer = settings.consumer_config("fatal-reader").create().unwrap();
        consumer.subscribe(&["fatal.t"]).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while seen.len() < 60 && std::time::Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
                seen.insert(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
            }
        }
        for name in (0..5)
            .map(|i| format!("before-{i}"))
            .chain((0..50).map(|i| format!("during-{i}")))
            .chain((0..5).map(|i| format!("after-{i}")))
        {
            assert!(seen.contains(&name), "{name} is not on the topic: {seen:?}");
        }
    }

    #[test]
    fn every_property_librdkafka_marks_sensitive_is_redacted() {
        let mut settings = KafkaSettings::default();
        for (i, p) in crate::secrets::LIBRDKAFKA_SENSITIVE.iter().enumerate() {
            settings
                .properties
                .insert(p.to_string(), format!("value-{i}-x"));
        }
        settings
            .properties
            .insert("security.protocol".into(), "SASL_SSL".into());
        let shown = format!("{settings:?}");
        for i in 0..crate::secrets::LIBRDKAFKA_SENSITIVE.len() {
            assert!(!shown.contains(&format!("value-{i}-x")), "{shown}");
        }
        assert!(shown.contains("SASL_SSL"), "{shown}");
        // The runtime configuration's own Debug: in `config`'s tests (a higher layer).
    }

    #[test]
    fn at_least_once_properties_are_guarded() {
        for (k, v) in [
            ("acks", "1"),
            ("acks", "0"),
            ("request.required.acks", "1"),
            ("enable.idempotence", "false"),
            ("max.in.flight.requests.per.connection", "6"),
            ("max.in.flight", "100"),
            ("enable.auto.offset.store", "true"),
            ("enable.auto.commit", "false"),
            ("delivery.report.only.error", "true"),
        ] {
            let why = guarded_property(k, v, false).unwrap_or_else(|| panic!("{k}={v}"));
            assert!(why.contains(k), "{why}");
        }
        for (k, v) in [
            ("acks", "all"),
            ("acks", "-1"),
            ("enable.idempotence", "true"),
            ("max.in.flight", "5"),
            ("enable.auto.commit", "true"),
            ("linger.ms", "50"),
        ] {
            assert_eq!(guarded_property(k, v, false), None, "{k}={v}");
        }
        // Turning idempotence off can be acknowledged; losing acknowledgements cannot.
        assert_eq!(guarded_property("enable.idempotence", "false", true), None);
        assert_eq!(guarded_property("max.in.flight", "100", true), None);
        assert!(guarded_property("acks", "1", true).is_some());
        assert!(guarded_property("enable.auto.offset.store", "true", true).is_some());
    }

    #[test]
    fn classifies_producer_errors() {
        assert!(is_transient(&KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageTimedOut
        )));
        assert!(!is_transient(&KafkaError::MessageProduction(
            RDKafkaErrorCode::MessageSizeTooLarge
        )));
    }
}
