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

    /// The Kafka sink, the dead-letter route and the replay build their records with the one
    /// builder, `kafka::record`: for the same input each record is what the builder makes of
    /// it with the writer's `Carry` and stamps, and the input's own headers come first, the
    /// same in all three; the dead letter's own header travels to the replayed record.
    #[test]
    fn the_sink_the_dead_letters_and_the_replay_share_one_record_builder() {
        let producer = crate::kafka::KafkaSettings {
            brokers: "127.0.0.1:1".into(),
            ..Default::default()
        }
        .producer()
        .unwrap();
        let ctx = SinkContext {
            pipeline: "p".into(),
            version: "v1".into(),
            producer: Some(producer),
            dry: false,
        };
        let input = vec![
            ("trace".to_string(), b"t".to_vec()),
            ("gridflow.replay.count".to_string(), b"1".to_vec()),
            ("gridflow.pipeline".to_string(), b"upstream".to_vec()),
        ];
        let meta = Arc::new(Meta {
            original: Bytes::from_static(b"<bad"),
            correlation_id: "c-1".into(),
            content_type: crate::message::ContentType::Xml,
            origin: Origin::Kafka {
                topic: "in".into(),
                partition: 2,
                offset: 42,
            },
            key: Some(Bytes::from_static(b"k")),
            headers: input.clone(),
            reply: None,
            request_headers: Vec::new(),
            received_at: std::time::Instant::now(),
        });
        let as_text = |h: &[(String, Vec<u8>)]| -> Vec<(String, String)> {
            h.iter()
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect()
        };
        let input_text = as_text(&input);

        // The Kafka sink delivering the input as it is.
        let sink = KafkaSinkConfig {
            topic: "out".into(),
            key: None,
        }
        .build(&ctx)
        .unwrap();
        let message = Record {
            payload: Payload::Bytes(meta.original.clone()),
            meta: Arc::clone(&meta),
            headers: Arc::new(
                input
                    .iter()
                    .map(|(k, v)| (k.clone(), Bytes::from(v.clone())))
                    .collect(),
            ),
            key: meta.key.clone(),
        };
        let delivered = built(&sink.record(&message, Some(b"k"), b"<bad"));
        let expected = crate::kafka::record(
            "out",
            Some(b"k"),
            b"<bad",
            pairs(&input_text),
            Carry::Delivery,
            &[
                ("gridflow.correlation_id", b"c-1"),
                ("gridflow.pipeline", b"p"),
                ("gridflow.pipeline.version", b"v1"),
            ],
        );
        assert_eq!(delivered, built(&expected));

        // The dead-letter route: the envelope, through the Kafka sink of the target.
        let target = crate::engine::dead_letter::DeadLetterTarget::Topic("out.dlq".into());
        let writer = crate::engine::dead_letter::DeadLetterWriter::build(
            target,
            &ctx,
            std::env::temp_dir().join("unused.fallback.ndjson"),
        )
        .unwrap();
        let failure = Failure::new("steps[0].map", ErrorCode::InvalidXml, "bad");
        let envelope = writer.envelope(&meta, &failure);
        let dlq_sink = KafkaSinkConfig {
            topic: "out.dlq".into(),
            key: None,
        }
        .build_dead_letters(&ctx)
        .unwrap();
        let dead = built(&dlq_sink.record(&envelope, Some(b"k"), b"<bad"));
        let stamps: Vec<(String, String)> = as_text(
            &envelope
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.to_vec()))
                .collect::<Vec<_>>(),
        );
        let expected = crate::kafka::record(
            "out.dlq",
            Some(b"k"),
            b"<bad",
            pairs(&input_text),
            Carry::DeadLetter,
            &pairs(&stamps),
        );
        assert_eq!(dead, built(&expected));

        // The replay of that dead letter, as read from the dead-letter topic.
        let outgoing = Outgoing {
            at: "out.dlq/0/7".into(),
            target: "in".into(),
            key: Some(b"k".to_vec()),
            payload: b"<bad".to_vec(),
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
        let replayed = built(&record(&outgoing));
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
        assert_eq!(replayed, built(&expected));

        // The input's own header first, the same in all three.
        for (_, key, payload, headers) in [&delivered, &dead, &replayed] {
            assert_eq!(key.as_deref(), Some(&b"k"[..]));
            assert_eq!(payload, b"<bad");
            assert_eq!(headers[0], ("trace".to_string(), "t".to_string()));
        }
        let names = |h: &[(String, String)]| h.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(&delivered.3),
            [
                "trace",
                "gridflow.correlation_id",
                "gridflow.pipeline",
                "gridflow.pipeline.version"
            ]
        );
        let value = |h: &[(String, String)], name: &str| {
            h.iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .collect::<Vec<_>>()
        };
        // The dead letter keeps the replay count, not the upstream's pipeline.
        assert_eq!(value(&dead.3, "gridflow.replay.count"), ["1"]);
        assert_eq!(value(&dead.3, "gridflow.pipeline"), ["p"]);
        assert_eq!(value(&dead.3, "gridflow.error.code"), ["invalid_xml"]);
        // The replayed record: no failure facts, the correlation id, a count one higher.
        assert!(replayed
            .3
            .iter()
            .all(|(k, _)| !k.starts_with("gridflow.error.")
                && !k.starts_with("gridflow.source.")
                && k != "gridflow.pipeline"));
        assert_eq!(value(&replayed.3, "gridflow.correlation_id"), ["c-1"]);
        assert_eq!(value(&replayed.3, "gridflow.replay.count"), ["2"]);
    }
}
