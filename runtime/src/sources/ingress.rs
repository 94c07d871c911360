//! What the ingress listener hands every request it serves: the deadline for reading its body
//! and the budget of request-body bytes buffered at once across all requests.
//!
//! The listener (`crate::listener`) puts an [`IngressBodies`] into each request's extensions;
//! the HTTP and SOAP sources read bodies through [`read_body`], which enforces the route's
//! `max_body_bytes`, the listener's `body_read_timeout_ms` (the whole body, from the moment
//! the handler starts reading it) and its `max_buffered_body_bytes` (a [`BodyLease`] holds the
//! bytes until the request is answered). A request served without a listener (`gridflow test`)
//! has no extension and only the size limit applies.

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
        let mut response = super::http::problem(status, title, &detail, ids);
        self.decorate(&mut response);
        response
    }
}

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
    let mut lease = BodyLease::default();
    // A declared length is reserved whole before a byte is read: a flood of large bodies is
    // refused at once instead of being buffered first.
    if let (Some(limits), Some(n)) = (&limits, declared) {
        if limits.grow(&mut lease, n).is_err() {
            crate::metrics::http_request_rejected("body_budget");
            return Err(BodyError::OverBudget);
        }
    }
    let mut body = Body::new(body);
    let read = async {
        let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).min(max));
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BodyError::Broken(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if buf.len() + data.len() > max {
                return Err(BodyError::TooLarge(max));
            }
            let beyond = (buf.len() + data.len()).saturating_sub(lease.bytes);
            if let (Some(limits), true) = (&limits, beyond > 0) {
                if limits.grow(&mut lease, beyond).is_err() {
                    crate::metrics::http_request_rejected("body_budget");
                    return Err(BodyError::OverBudget);
                }
            }
            buf.extend_from_slice(&data);
        }
        Ok(buf.freeze())
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
