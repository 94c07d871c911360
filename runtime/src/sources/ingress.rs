//! What the ingress listener hands every request it serves: the deadline for reading its body
//! and the budget of request-body bytes buffered at once across all requests.
//!
//! The listener (`crate::listener`) puts an [`IngressBodies`] into each request's extensions;
//! the HTTP and SOAP sources read bodies through [`read_body`], which enforces the route's
//! `max_body_bytes`, the listener's `body_read_timeout_ms` (the whole body, from the moment
//! the handler starts reading it) and its `max_buffered_body_bytes` (a [`BodyLease`] takes
//! the bytes as they are received and holds them until the request is answered). A request
//! served without a listener (`gridflow test`) has no extension and only the size limit
//! applies.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::BytesMut;
use http_body_util::BodyExt;
use serde_json::Value;

/// The listener's body limits, shared by all its requests.
#[derive(Debug)]
pub struct IngressBodies {
    /// How long reading one whole request body may take.
    pub read_timeout: Duration,
    /// Request-body bytes buffered at once across all requests, at most.
    pub budget: usize,
    /// Bytes leased now.
    leased: AtomicUsize,
}

impl IngressBodies {
    /// Limits of one listener.
    pub fn new(read_timeout: Duration, budget: usize) -> Arc<IngressBodies> {
        Arc::new(IngressBodies {
            read_timeout,
            budget,
            leased: AtomicUsize::new(0),
        })
    }

    /// Bytes leased now (for tests and logs).
    pub fn leased(&self) -> usize {
        self.leased.load(Ordering::Acquire)
    }

    /// Takes `n` more bytes of the budget into `lease`, or says there is no room.
    fn grow(self: &Arc<Self>, lease: &mut BodyLease, n: usize) -> Result<(), ()> {
        let mut current = self.leased.load(Ordering::Acquire);
        loop {
            let next = current.checked_add(n).ok_or(())?;
            if next > self.budget {
                return Err(());
            }
            match self.leased.compare_exchange_weak(
                current,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    lease.bytes += n;
                    lease.budget = Some(Arc::clone(self));
                    return Ok(());
                }
                Err(seen) => current = seen,
            }
        }
    }
}

/// Budget bytes held by one request's body; given back when dropped (keep it until the
/// request is answered: the body lives as long as its message is in flight).
#[derive(Debug, Default)]
pub struct BodyLease {
    budget: Option<Arc<IngressBodies>>,
    bytes: usize,
}

impl Drop for BodyLease {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.leased.fetch_sub(self.bytes, Ordering::AcqRel);
        }
    }
}

/// A body's share of the budget and the outcome of its input: the share is given back when
/// the outcome comes (the pipeline is done with the body), also when the request is dropped
/// before (its client went away): a task then holds the share until the outcome.
pub struct HeldBody {
    lease: Option<BodyLease>,
    outcome: Option<tokio::sync::oneshot::Receiver<crate::ack::Outcome>>,
}

impl HeldBody {
    /// Holds `lease` until `outcome`.
    pub fn new(
        lease: BodyLease,
        outcome: tokio::sync::oneshot::Receiver<crate::ack::Outcome>,
    ) -> HeldBody {
        HeldBody {
            lease: Some(lease),
            outcome: Some(outcome),
        }
    }

    /// The outcome of the input (`Err`: its acknowledgement was lost); the share is given
    /// back.
    pub async fn outcome(
        mut self,
    ) -> Result<crate::ack::Outcome, tokio::sync::oneshot::error::RecvError> {
        let outcome = self.outcome.as_mut().expect("taken only here or on drop");
        let settled = outcome.await;
        self.outcome = None;
        settled
    }
}

impl Drop for HeldBody {
    fn drop(&mut self) {
        // Dropped before the outcome (the request was dropped): the body may still be in its
        // pipeline, so its share is kept until the outcome comes.
        if let (Some(outcome), Some(lease)) = (self.outcome.take(), self.lease.take()) {
            if lease.bytes > 0 {
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        let _ = outcome.await;
                        drop(lease);
                    });
                }
            }
        }
    }
}

/// Why a body was not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// Larger than the route's `max_body_bytes` (`413`).
    TooLarge(usize),
    /// Not received within `body_read_timeout_ms` (`408`, connection closed).
    TimedOut(Duration),
    /// The listener's body budget is used up (`503` with `Retry-After`).
    OverBudget,
    /// The client broke off (`400`).
    Broken(String),
}

/// Seconds announced in `Retry-After` when the body budget is used up: bodies are read in
/// seconds, so room comes back soon.
pub const BUDGET_RETRY_AFTER_SECS: u64 = 1;

impl BodyError {
    /// Status, title and detail of the answer.
    pub fn status(&self) -> (StatusCode, &'static str, String) {
        match self {
            BodyError::TooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "Payload Too Large",
                format!("the body exceeds {limit} bytes"),
            ),
            BodyError::TimedOut(after) => (
                StatusCode::REQUEST_TIMEOUT,
                "Request Timeout",
                format!("the body was not received within {} ms", after.as_millis()),
            ),
            BodyError::OverBudget => (
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable",
                "too many request bodies are being received at once; retry later".to_string(),
            ),
            BodyError::Broken(e) => (
                StatusCode::BAD_REQUEST,
                "Bad Request",
                format!("the body could not be read: {e}"),
            ),
        }
    }

    /// Adds the headers the error's answer needs: `Retry-After` for the budget, and
    /// `Connection: close` when the rest of the body is not read.
    pub fn decorate(&self, response: &mut Response) {
        match self {
            BodyError::OverBudget => {
                let headers = response.headers_mut();
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(BUDGET_RETRY_AFTER_SECS),
                );
                // The body is not read: the connection cannot carry another request.
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            BodyError::TimedOut(_) => {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
    }

    /// The `application/problem+json` answer.
    pub fn problem(&self, ids: Value) -> Response {
        let (status, title, detail) = self.status();
        let mut response = super::route::problem(status, title, &detail, ids);
        self.decorate(&mut response);
        response
    }
}

/// Body frames smaller than this are copied together as they arrive (16 KiB).
const SMALL_FRAME: usize = 16 * 1024;

/// Reads the body of `request` (at most `max` bytes, and at most the listener's whole body
/// budget) under the listener's limits, if any;
/// returns the request's head, its body and the lease to hold until the request is answered.
pub async fn read_body(
    request: Request,
    max: usize,
) -> Result<(Parts, Bytes, BodyLease), BodyError> {
    let (parts, body) = request.into_parts();
    let limits = parts.extensions.get::<Arc<IngressBodies>>().cloned();
    // A body larger than the whole budget never fits, however long the client waits: it is
    // too large (`413`), not refused for now (`503` with a `Retry-After` obeyed for ever).
    let max = limits.as_ref().map_or(max, |limits| max.min(limits.budget));
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(BodyError::TooLarge(max));
    }
    // The budget counts the bytes received, frame by frame, never the bytes announced: a
    // declared length reserved whole before a byte came let clients that announce large
    // bodies and send nothing hold the whole budget at no cost, and refuse every other
    // upload, for as long as `body_read_timeout_ms`.
    let mut lease = BodyLease::default();
    let mut body = Body::new(body);
    let read = async {
        // The frames as they came, joined at the end: memory grows with what arrives, never
        // to the size announced, and without the slack of a buffer grown by doubling. Small
        // frames (a trickling client) are copied together so that they neither pin the
        // connection's read buffer nor cost a list entry each.
        let mut frames: Vec<Bytes> = Vec::new();
        let mut small = BytesMut::new();
        let mut received = 0usize;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BodyError::Broken(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            if received + data.len() > max {
                return Err(BodyError::TooLarge(max));
            }
            if let Some(limits) = &limits {
                if limits.grow(&mut lease, data.len()).is_err() {
                    crate::metrics::http_request_rejected("body_budget");
                    return Err(BodyError::OverBudget);
                }
            }
            received += data.len();
            if data.len() >= SMALL_FRAME {
                if !small.is_empty() {
                    frames.push(small.split().freeze());
                }
                frames.push(data);
            } else {
                if small.is_empty() {
                    small.reserve(SMALL_FRAME);
                }
                small.extend_from_slice(&data);
                if small.len() >= SMALL_FRAME {
                    frames.push(small.split().freeze());
                }
            }
        }
        if !small.is_empty() {
            frames.push(small.freeze());
        }
        Ok(match frames.len() {
            0 => Bytes::new(),
            1 => frames.pop().expect("one frame"),
            _ => {
                let mut whole = BytesMut::with_capacity(received);
                for frame in frames {
                    whole.extend_from_slice(&frame);
                }
                whole.freeze()
            }
        })
    };
    let bytes = match &limits {
        Some(limits) => match tokio::time::timeout(limits.read_timeout, read).await {
            Ok(read) => read?,
            Err(_) => {
                crate::metrics::http_timeout("body");
                // At most one line per 10 s under a flood of trickling clients.
                static LOG: std::sync::OnceLock<crate::logging::Throttle> =
                    std::sync::OnceLock::new();
                let log =
                    LOG.get_or_init(|| crate::logging::Throttle::new(Duration::from_secs(10)));
                if let Some(held_back) = log.allow() {
                    tracing::info!(
                        timeout_ms = limits.read_timeout.as_millis() as u64,
                        held_back,
                        "Request body not received in time; connection closed."
                    );
                }
                return Err(BodyError::TimedOut(limits.read_timeout));
            }
        },
        None => read.await?,
    };
    Ok((parts, bytes, lease))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(limits: &Arc<IngressBodies>, chunks: Vec<&'static [u8]>, stall: bool) -> Request {
        let stream = futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, std::io::Error>(Bytes::from_static(c))),
        );
        let body = if stall {
            Body::from_stream(futures::StreamExt::chain(
                stream,
                futures::stream::pending(),
            ))
        } else {
            Body::from_stream(stream)
        };
        let mut request = Request::new(body);
        request.extensions_mut().insert(Arc::clone(limits));
        request
    }

    #[tokio::test]
    async fn a_chunked_body_is_counted_as_it_arrives_and_refused_past_the_budget() {
        let limits = IngressBodies::new(Duration::from_secs(5), 10);
        let held = read_body(chunked(&limits, vec![b"abcd", b"efgh"], false), 100)
            .await
            .unwrap();
        assert_eq!(held.1.as_ref(), b"abcdefgh");
        assert_eq!(limits.leased(), 8);
        let refused = read_body(chunked(&limits, vec![b"ab", b"cd"], false), 100).await;
        assert_eq!(refused.unwrap_err(), BodyError::OverBudget);
        // What the refused request had taken is given back; the held one keeps its share.
        assert_eq!(limits.leased(), 8);
        drop(held);
        assert_eq!(limits.leased(), 0);
        let too_large = read_body(chunked(&limits, vec![b"0123456789ab"], false), 4).await;
        assert_eq!(too_large.unwrap_err(), BodyError::TooLarge(4));
    }

    /// A body larger than the whole budget can never fit: `413`, not `503` with a
    /// `Retry-After` that a client would obey for ever.
    #[tokio::test]
    async fn a_body_larger_than_the_whole_budget_is_too_large_not_retried() {
        let limits = IngressBodies::new(Duration::from_secs(5), 10);
        let mut declared = Request::new(Body::from(vec![b'x'; 20]));
        declared
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(20));
        declared.extensions_mut().insert(Arc::clone(&limits));
        let refused = read_body(declared, 100).await;
        assert_eq!(refused.unwrap_err(), BodyError::TooLarge(10));
        let chunks = chunked(&limits, vec![b"0123456", b"789ab"], false);
        assert_eq!(
            read_body(chunks, 100).await.unwrap_err(),
            BodyError::TooLarge(10)
        );
        assert_eq!(limits.leased(), 0);
        // Whatever fits the budget is read as before.
        let fits = read_body(chunked(&limits, vec![b"0123456789"], false), 100)
            .await
            .unwrap();
        assert_eq!(fits.1.len(), 10);
    }

    /// A declared length takes nothing of the budget: only the bytes that came count.
    #[tokio::test]
    async fn a_declared_length_is_not_reserved_before_its_bytes_come() {
        let limits = IngressBodies::new(Duration::from_secs(5), 10);
        let mut announced = chunked(&limits, vec![b"ab"], true);
        announced
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(8));
        let waiting = tokio::spawn(read_body(announced, 100));
        for _ in 0..100 {
            if limits.leased() == 2 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(limits.leased(), 2, "only the bytes received are counted");
        // Room for another body of 8 while the first waits for its last 6 bytes.
        let mut other = Request::new(Body::from(vec![b'x'; 8]));
        other
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(8));
        other.extensions_mut().insert(Arc::clone(&limits));
        let served = read_body(other, 100).await.unwrap();
        assert_eq!(limits.leased(), 10);
        drop(served);
        waiting.abort();
        let _ = waiting.await;
        assert_eq!(
            limits.leased(),
            0,
            "a body given up on gives its bytes back"
        );
    }

    /// Small and large frames in any order make the body they carried.
    #[tokio::test]
    async fn small_and_large_frames_are_joined_in_order() {
        let limits = IngressBodies::new(Duration::from_secs(5), 1 << 20);
        let sizes = [3, SMALL_FRAME, 1, SMALL_FRAME - 1, 2, SMALL_FRAME + 5, 7];
        let mut expected = Vec::new();
        let mut chunks = Vec::new();
        for (i, n) in sizes.iter().enumerate() {
            let chunk = vec![b'a' + i as u8; *n];
            expected.extend_from_slice(&chunk);
            chunks.push(Ok::<_, std::io::Error>(Bytes::from(chunk)));
        }
        let mut request = Request::new(Body::from_stream(futures::stream::iter(chunks)));
        request.extensions_mut().insert(Arc::clone(&limits));
        let (_, bytes, lease) = read_body(request, 1 << 20).await.unwrap();
        assert_eq!(bytes.as_ref(), expected.as_slice());
        assert_eq!(limits.leased(), expected.len());
        drop(lease);
        assert_eq!(limits.leased(), 0);
    }

    #[tokio::test]
    async fn a_body_that_stops_coming_times_out() {
        let limits = IngressBodies::new(Duration::from_millis(50), 100);
        let stalled = read_body(chunked(&limits, vec![b"{"], true), 100).await;
        assert!(
            matches!(stalled, Err(BodyError::TimedOut(_))),
            "{stalled:?}"
        );
        assert_eq!(limits.leased(), 0);
    }

    /// A request dropped before its input is settled (its client left) keeps the body's share
    /// until the outcome comes; one answered gives it back with the answer.
    #[tokio::test]
    async fn a_held_body_keeps_its_share_until_its_outcome() {
        let limits = IngressBodies::new(Duration::from_secs(1), 100);
        let mut lease = BodyLease::default();
        limits.grow(&mut lease, 60).unwrap();
        let (ack, outcome) = crate::ack::Ack::channel();
        drop(HeldBody::new(lease, outcome));
        tokio::task::yield_now().await;
        assert_eq!(
            limits.leased(),
            60,
            "given back while the body is in its pipeline"
        );
        ack.delivered();
        for _ in 0..100 {
            if limits.leased() == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(limits.leased(), 0);

        let mut lease = BodyLease::default();
        limits.grow(&mut lease, 60).unwrap();
        let (ack, outcome) = crate::ack::Ack::channel();
        ack.delivered();
        let held = HeldBody::new(lease, outcome);
        assert!(held.outcome().await.is_ok());
        assert_eq!(limits.leased(), 0);
    }

    #[test]
    fn leases_are_given_back_when_dropped() {
        let limits = IngressBodies::new(Duration::from_secs(1), 100);
        let mut a = BodyLease::default();
        limits.grow(&mut a, 60).unwrap();
        let mut b = BodyLease::default();
        assert!(limits.grow(&mut b, 41).is_err());
        limits.grow(&mut b, 40).unwrap();
        assert_eq!(limits.leased(), 100);
        drop(a);
        assert_eq!(limits.leased(), 40);
        drop(b);
        assert_eq!(limits.leased(), 0);
    }
}
