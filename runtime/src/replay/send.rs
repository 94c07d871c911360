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
