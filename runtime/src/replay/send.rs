//! Sending what a replay plans: each record to its Kafka topic (a record built by the one
//! builder, [`crate::kafka::record`]), or POSTed to an HTTP pipeline, at most `--rate`
//! records per second.

use std::io::Write;
use std::time::{Duration, Instant};

use rdkafka::producer::FutureRecord;

use super::plan::Outgoing;
use super::{waited, Options, Summary, RATE_BOUNDS};
use crate::kafka::Carry;
use crate::message::ContentType;

/// The Kafka record of `o`: the dead letter's key, bytes and own headers but those describing
/// the failure ([`Carry::Replay`]), then `gridflow.replayed_from` and `gridflow.replay.count`.
pub(super) fn record(o: &Outgoing) -> FutureRecord<'_, [u8], [u8]> {
    let count = o.count.to_string();
    crate::kafka::record(
        &o.target,
        o.key.as_deref(),
        &o.payload,
        o.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
        Carry::Replay,
        &[
            ("gridflow.replayed_from", o.at.as_bytes()),
            ("gridflow.replay.count", count.as_bytes()),
        ],
    )
}

/// Produces `record` and waits until the broker has it, at most `timeout`.
pub(super) fn produce(
    runtime: &tokio::runtime::Runtime,
    producer: &crate::kafka::Producer,
    record: FutureRecord<'_, [u8], [u8]>,
    timeout: Duration,
) -> Result<(), String> {
    runtime.block_on(async {
        let produced = tokio::time::timeout(timeout, async {
            match crate::kafka::enqueue(producer, record).await {
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(e.to_string()),
                    Err(_) => Err("the producer was closed".to_string()),
                },
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
        produced
            .unwrap_or_else(|_| Err(waited("the broker's acknowledgement of a record", timeout)))
    })
}

/// Keeps sends at most `--rate` per second.
pub(super) struct Pace {
    every: Option<Duration>,
    next: Instant,
}

impl Pace {
    /// The pace of `options.rate` (none without one).
    pub(super) fn new(options: &Options) -> Pace {
        // `--rate` is checked by `parse_rate`; a rate given another way is kept in its bounds
        // too (`Duration::from_secs_f64` panics on what is not finite or too large).
        let every = options
            .rate
            .filter(|r| r.is_finite() && *r > 0.0)
            .map(|r| Duration::from_secs_f64(1.0 / r.clamp(RATE_BOUNDS.0, RATE_BOUNDS.1)));
        Pace {
            every,
            next: Instant::now(),
        }
    }

    /// Waits until the next send may go.
    pub(super) fn wait(&mut self) {
        if let Some(every) = self.every {
            let now = Instant::now();
            if self.next > now {
                std::thread::sleep(self.next - now);
            }
            self.next = self.next.max(now) + every;
        }
    }
}

/// Produces `o` to its topic, waiting for the broker's acknowledgement, and says so on `out`.
pub(super) fn to_topic(
    runtime: &tokio::runtime::Runtime,
    producer: &crate::kafka::Producer,
    o: &Outgoing,
    timeout: Duration,
    summary: &mut Summary,
    out: &mut dyn Write,
) -> Result<(), String> {
    produce(runtime, producer, record(o), timeout).map_err(|e| {
        format!(
            "sending {} to `{}` failed: {e}; run the replay again to resume",
            o.at, o.target
        )
    })?;
    summary.sent += 1;
    let _ = writeln!(
        out,
        "sent {} to {}: correlation_id={} code={}",
        o.at, o.target, o.correlation, o.code
    );
    Ok(())
}

/// The HTTP client of a replay: every call bounded by `timeout`, redirects not followed.
pub(super) fn http_client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

/// POSTs one record to an HTTP pipeline.
pub(super) fn post(
    runtime: &tokio::runtime::Runtime,
    client: &reqwest::Client,
    o: &Outgoing,
    summary: &mut Summary,
    out: &mut dyn Write,
) -> Result<(), String> {
    let content_type = match ContentType::sniff(&o.payload) {
        ContentType::Xml => "application/xml",
        ContentType::Json => "application/json",
        ContentType::Other => "application/octet-stream",
    };
    let mut request = client
        .post(&o.target)
        .header("content-type", content_type)
        .body(o.payload.clone());
    if o.correlation != "-" {
        request = request.header("x-correlation-id", &o.correlation);
    }
    // `send` is called inside the runtime: with a timeout it starts a timer there.
    let response = runtime
        .block_on(async { request.send().await })
        .map_err(|e| {
            let what = if e.is_timeout() {
                "timed out (--timeout)".to_string()
            } else {
                format!("failed: {e}")
            };
            format!(
                "POST {} {what}; the replay stops here and resumes from this record",
                o.target
            )
        })?;
    let status = response.status();
    if status.is_redirection() {
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .map(|l| String::from_utf8_lossy(l.as_bytes()).into_owned())
            .unwrap_or_else(|| "none".into());
        return Err(format!(
            "POST {} answered {status} (Location: {location}); a redirect is not a delivery, the replay stops here and resumes from this record",
            o.target
        ));
    }
    if status.is_success() {
        summary.sent += 1;
        let _ = writeln!(
            out,
            "sent {} to {}: correlation_id={} status={status}",
            o.at, o.target, o.correlation
        );
        Ok(())
    } else if status.is_client_error() && status.as_u16() != 429 {
        summary.refused += 1;
        let _ = writeln!(
            out,
            "refused {} by {}: correlation_id={} status={status} (dead-lettered again)",
            o.at, o.target, o.correlation
        );
        Ok(())
    } else {
        Err(format!(
            "POST {} answered {status}; the replay stops here and resumes from this record",
            o.target
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use rdkafka::message::Headers as _;

    use super::*;
    use crate::error::{ErrorCode, Failure};
    use crate::message::{Meta, Origin, Payload};
    use crate::sinks::{KafkaSinkConfig, Record, SinkContext};

    /// What a built record holds: topic, key, payload, headers in order.
    type Built = (String, Option<Vec<u8>>, Vec<u8>, Vec<(String, String)>);

    fn built(r: &FutureRecord<'_, [u8], [u8]>) -> Built {
        let headers = r.headers.as_ref().map_or_else(Vec::new, |h| {
            h.iter()
                .map(|h| {
                    let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                    (h.key.to_string(), value.into_owned())
                })
                .collect()
        });
        (
            r.topic.to_string(),
            r.key.map(<[u8]>::to_vec),
            r.payload.map(<[u8]>::to_vec).unwrap_or_default(),
            headers,
        )
    }

    fn pairs(headers: &[(String, String)]) -> Vec<(&str, &[u8])> {
        headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes()))
            .collect()
    }

    /// A sink context with a producer (never connected) for pipeline `p`, version `v1`.
    fn context() -> SinkContext {
        let producer = crate::kafka::KafkaSettings {
            brokers: "127.0.0.1:1".into(),
            ..Default::default()
        }
        .producer()
        .unwrap();
        SinkContext {
            pipeline: "p".into(),
            version: "v1".into(),
            producer: Some(producer),
            dry: false,
        }
    }

    /// An input from Kafka with key `k`, bytes `<bad` and `headers`.
    fn input(headers: &[(String, String)]) -> Arc<Meta> {
        Arc::new(Meta {
            original: Bytes::from_static(b"<bad"),
            correlation_id: "c-1".into(),
            content_type: crate::message::ContentType::Xml,
            origin: Origin::Kafka {
                topic: "in".into(),
                partition: 2,
                offset: 42,
            },
            key: Some(Bytes::from_static(b"k")),
            headers: headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                .collect(),
            reply: None,
            request_headers: Vec::new(),
            received_at: std::time::Instant::now(),
        })
    }

    /// The Kafka sink's record of `meta` delivered as it is, and the builder's.
    fn delivered(ctx: &SinkContext, meta: &Arc<Meta>, headers: &[(String, String)]) -> [Built; 2] {
        let sink = KafkaSinkConfig {
            topic: "out".into(),
            key: None,
        }
        .build(ctx)
        .unwrap();
        let message = Record {
            payload: Payload::Bytes(meta.original.clone()),
            meta: Arc::clone(meta),
            headers: Arc::new(
                headers
                    .iter()
                    .map(|(k, v)| (k.clone(), Bytes::from(v.clone())))
                    .collect(),
            ),
            key: meta.key.clone(),
        };
        let expected = crate::kafka::record(
            "out",
            Some(b"k"),
            b"<bad",
            pairs(headers),
            Carry::Delivery,
            &[
                ("gridflow.correlation_id", b"c-1"),
                ("gridflow.pipeline", b"p"),
                ("gridflow.pipeline.version", b"v1"),
            ],
        );
        [
            built(&sink.record(&message, Some(b"k"), b"<bad")),
            built(&expected),
        ]
    }

    /// The dead-letter route's record of `meta` (its envelope, through the Kafka sink of the
    /// target), and the builder's.
    fn dead_lettered(
        ctx: &SinkContext,
        meta: &Arc<Meta>,
        headers: &[(String, String)],
    ) -> [Built; 2] {
        let target = crate::engine::dead_letter::DeadLetterTarget::Topic("out.dlq".into());
        let writer = crate::engine::dead_letter::DeadLetterWriter::build(
            target.clone(),
            ctx,
            std::env::temp_dir().join("unused.fallback.ndjson"),
        )
        .unwrap();
        let failure = Failure::new("steps[0].map", ErrorCode::InvalidXml, "bad");
        let envelope = writer.envelope(meta, &failure);
        let crate::sinks::SinkConfig::Kafka(config) = target.sink() else {
            panic!("a topic target has a Kafka sink");
        };
        let sink = config.build_dead_letters(ctx).unwrap();
        let stamps: Vec<(String, String)> = envelope
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        let expected = crate::kafka::record(
            "out.dlq",
            Some(b"k"),
            b"<bad",
            pairs(headers),
            Carry::DeadLetter,
            &pairs(&stamps),
        );
        [
            built(&sink.record(&envelope, Some(b"k"), b"<bad")),
            built(&expected),
        ]
    }

    /// The replay's record of dead letter `dead`, read at `out.dlq/0/7`, and the builder's.
    fn replayed(dead: &Built) -> [Built; 2] {
        let outgoing = Outgoing {
            at: "out.dlq/0/7".into(),
            target: "in".into(),
            key: dead.1.clone(),
            payload: dead.2.clone(),
            headers: dead
                .3
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
                .collect(),
            count: 2,
            correlation: "c-1".into(),
            code: "invalid_xml".into(),
            partition: 0,
            offset: 7,
        };
        let expected = crate::kafka::record(
            "in",
            Some(b"k"),
            b"<bad",
            pairs(&dead.3),
            Carry::Replay,
            &[
                ("gridflow.replayed_from", b"out.dlq/0/7"),
                ("gridflow.replay.count", b"2"),
            ],
        );
        [built(&record(&outgoing)), built(&expected)]
    }

    /// The values of header `name`.
    fn values(h: &[(String, String)], name: &str) -> Vec<String> {
        h.iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The Kafka sink, the dead-letter route and the replay build their records with the one
    /// builder, `kafka::record`: for the same input each record is what the builder makes of
    /// it with the writer's `Carry` and stamps, and the input's own headers come first, the
    /// same in all three; the dead letter's own headers travel to the replayed record.
    #[test]
    fn the_sink_the_dead_letters_and_the_replay_share_one_record_builder() {
        let ctx = context();
        let headers = [
            ("trace".to_string(), "t".to_string()),
            ("gridflow.replay.count".to_string(), "1".to_string()),
            ("gridflow.pipeline".to_string(), "upstream".to_string()),
        ];
        let meta = input(&headers);
        let [delivered, expected] = delivered(&ctx, &meta, &headers);
        assert_eq!(delivered, expected);
        let [dead, expected] = dead_lettered(&ctx, &meta, &headers);
        assert_eq!(dead, expected);
        let [replayed, expected] = replayed(&dead);
        assert_eq!(replayed, expected);

        // The input's own header first, the same in all three.
        for (_, key, payload, headers) in [&delivered, &dead, &replayed] {
            assert_eq!(key.as_deref(), Some(&b"k"[..]));
            assert_eq!(payload, b"<bad");
            assert_eq!(headers[0], ("trace".to_string(), "t".to_string()));
        }
        let names: Vec<_> = delivered.3.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "trace",
                "gridflow.correlation_id",
                "gridflow.pipeline",
                "gridflow.pipeline.version"
            ]
        );
        // The dead letter keeps the replay count, not the upstream's pipeline.
        assert_eq!(values(&dead.3, "gridflow.replay.count"), ["1"]);
        assert_eq!(values(&dead.3, "gridflow.pipeline"), ["p"]);
        assert_eq!(values(&dead.3, "gridflow.error.code"), ["invalid_xml"]);
        // The replayed record: no failure facts, the correlation id, a count one higher.
        assert!(replayed
            .3
            .iter()
            .all(|(k, _)| !k.starts_with("gridflow.error.")
                && !k.starts_with("gridflow.source.")
                && k != "gridflow.pipeline"));
        assert_eq!(values(&replayed.3, "gridflow.correlation_id"), ["c-1"]);
        assert_eq!(values(&replayed.3, "gridflow.replay.count"), ["2"]);
    }
}
