//! The ingress listener: one accept loop and one connection path for plain HTTP and TLS, so
//! that the two cannot drift apart in their limits or their drain.
//!
//! Each connection is served by hyper's HTTP/1.1 server with the axum router of the HTTP
//! sources. Around it, the listener enforces `[http]` of `gridflow.toml` (the keys, their
//! defaults and what happens when each fires: `docs/operations/ingress-limits.md`):
//!
//! - `max_connections`: a connection beyond it is closed at once;
//! - `tls_handshake_timeout_ms`: the TLS handshake, whole;
//! - `header_read_timeout_ms`: from the opening of a connection (after its handshake), or
//!   the first byte of a following request, to the end of the request's headers;
//! - `idle_timeout_ms`: a connection with no request in progress and no byte moving;
//! - `body_read_timeout_ms` and `max_buffered_body_bytes`: handed to the sources with each
//!   request ([`crate::sources::ingress`]), which read bodies under them.
//!
//! Header and idle timeouts are kept by a watchdog per connection rather than hyper's own
//! `header_read_timeout`: hyper's timer also runs while a keep-alive connection waits for its
//! next request, so it cannot tell a slow client from an idle one, and the two need different
//! bounds. The watchdog sees the bytes read and written (an I/O wrapper) and the requests in
//! progress (a service wrapper).
//!
//! Drain (shutdown): the listener stops accepting; a request arriving on an open connection
//! is answered `503` with `Retry-After` and `Connection: close`; requests in progress are
//! answered (their pipelines still run) with `Connection: close`; when none is left, every
//! connection is closed. The drain is bounded by `[engine] drain_timeout_ms`.
//!
//! The admin listener ([`serve_admin`]) is served the same way, with the same header, idle
//! and connection limits (a count of its own), so that a client of the port open to probes
//! and scrapes cannot hold a connection for ever either; its events are logged with
//! `listener = "admin"` and left out of the ingress metrics.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Router;
use futures::future::BoxFuture;
use futures::FutureExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::ListenerConfig;
use crate::sources::ingress::IngressBodies;

/// Seconds announced in `Retry-After` to a request that arrives while the listener drains:
/// another replica, or this one after its restart, takes it.
pub const DRAIN_RETRY_AFTER_SECS: u64 = 5;

/// The limits of the listener, from `[http]`.
#[derive(Debug, Clone)]
pub struct IngressLimits {
    /// Headers of a request, from the connection's opening or its first byte.
    pub header_read_timeout: Duration,
    /// A TLS handshake.
    pub tls_handshake_timeout: Duration,
    /// A connection with nothing in progress and no traffic.
    pub idle_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
    /// Body deadline and budget, handed to every request.
    pub bodies: Arc<IngressBodies>,
}

impl IngressLimits {
    /// The limits `[http]` sets.
    pub fn from_config(config: &ListenerConfig) -> IngressLimits {
        IngressLimits {
            header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
            tls_handshake_timeout: Duration::from_millis(config.tls_handshake_timeout_ms),
            idle_timeout: Duration::from_millis(config.idle_timeout_ms),
            max_connections: config.max_connections,
            bodies: IngressBodies::new(
                Duration::from_millis(config.body_read_timeout_ms),
                config.max_buffered_body_bytes,
            ),
        }
    }
}

/// TLS of the listener: the acceptor and the client certificate subjects let in.
pub struct Tls {
    /// Handshakes.
    pub acceptor: TlsAcceptor,
    /// Who may send requests (the client CA and subjects, re-read while the listener runs).
    pub access: Arc<crate::tls::ClientAccess>,
}

/// Which listener is served: logged with each event; only the ingress is counted in the
/// `gridflow_http_*` metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Listener {
    Ingress,
    Admin,
}

impl Listener {
    fn name(self) -> &'static str {
        match self {
            Listener::Ingress => "ingress",
            Listener::Admin => "admin",
        }
    }

    fn metered(self) -> bool {
        self == Listener::Ingress
    }
}

/// What every connection of one listener shares.
struct Shared {
    listener: Listener,
    app: Router,
    tls: Option<Tls>,
    limits: IngressLimits,
    http1: hyper::server::conn::http1::Builder,
    /// Cancelled when the listener starts draining.
    drain: CancellationToken,
    /// Requests in progress on all connections.
    in_flight: AtomicUsize,
    /// Woken when the last request in progress of a draining listener is answered.
    settled: Notify,
    /// Timeouts of slow clients are logged at most once per 10 s (the metric counts each).
    timeouts_log: crate::logging::Throttle,
}

impl Shared {
    /// Counts a timeout of `kind` and logs it (an idle connection closed is routine: debug).
    fn timed_out(&self, kind: &'static str, peer: SocketAddr) {
        if self.listener.metered() {
            crate::metrics::http_timeout(kind);
        }
        let listener = self.listener.name();
        if kind == "idle" {
            tracing::debug!(listener, peer = %peer, kind, "Idle HTTP connection closed.");
        } else if let Some(held_back) = self.timeouts_log.allow() {
            tracing::info!(
                listener,
                peer = %peer,
                kind,
                held_back,
                "HTTP connection closed: the client was too slow."
            );
        }
    }
}

/// Serves `app` on `tcp` (over TLS when `tls` is set) until `shutdown`, then drains for at
/// most `drain_timeout` (see the module documentation).
pub async fn serve(
    tcp: TcpListener,
    tls: Option<Tls>,
    app: Router,
    limits: IngressLimits,
    shutdown: CancellationToken,
    drain_timeout: Duration,
) {
    serve_as(
        Listener::Ingress,
        tcp,
        tls,
        app,
        limits,
        shutdown,
        drain_timeout,
    )
    .await
}

/// Serves the admin router `app` on `tcp` under the header, idle and connection limits of
/// `limits` until `shutdown`, then drains like the ingress (see the module documentation).
/// Each request carries the client's address (`ConnectInfo<SocketAddr>`) for the admin
/// guard.
pub async fn serve_admin(
    tcp: TcpListener,
    app: Router,
    limits: IngressLimits,
    shutdown: CancellationToken,
    drain_timeout: Duration,
) {
    serve_as(
        Listener::Admin,
        tcp,
        None,
        app,
        limits,
        shutdown,
        drain_timeout,
    )
    .await
}

async fn serve_as(
    listener: Listener,
    tcp: TcpListener,
    tls: Option<Tls>,
    app: Router,
    limits: IngressLimits,
    shutdown: CancellationToken,
    drain_timeout: Duration,
) {
    let name = listener.name();
    let mut http1 = hyper::server::conn::http1::Builder::new();
    // Header and idle timeouts are the watchdog's (module documentation).
    // Headers of at most 64 KiB (larger: 431); it bounds each connection's read buffer too.
    http1
        .keep_alive(true)
        .header_read_timeout(None)
        .max_header_size(64 * 1024)
        .max_buf_size(64 * 1024);
    if listener.metered() {
        crate::metrics::ingress_started();
    }
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let shared = Arc::new(Shared {
        listener,
        app,
        tls,
        limits,
        http1,
        drain: shutdown.child_token(),
        in_flight: AtomicUsize::new(0),
        settled: Notify::new(),
        timeouts_log: crate::logging::Throttle::new(Duration::from_secs(10)),
    });
    let mut tasks = JoinSet::new();
    // One line per 10 s at most under a flood (the metric counts every refusal).
    let refusals = crate::logging::Throttle::new(Duration::from_secs(10));
    let accept_errors = crate::logging::Throttle::new(Duration::from_secs(10));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = tcp.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, mostly: let some connections end first.
                    if let Some(held_back) = accept_errors.allow() {
                        tracing::warn!(listener = name, error = %e, held_back, "HTTP listener accept failed.");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        while tasks.try_join_next().is_some() {}
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            if listener.metered() {
                crate::metrics::http_connection_rejected("max_connections");
            }
            if let Some(held_back) = refusals.allow() {
                tracing::warn!(
                    listener = name,
                    peer = %peer,
                    max_connections = shared.limits.max_connections,
                    held_back,
                    "Connection closed at once: [http] max_connections reached."
                );
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        tasks.spawn(connection(Arc::clone(&shared), stream, peer, permit));
    }
    drop(tcp);
    shared.drain.cancel();
    let open = tasks.len();
    if open > 0 {
        tracing::info!(
            listener = name,
            connections = open,
            "HTTP listener draining: requests in progress are answered, new ones get 503."
        );
    }
    let drained = tokio::time::timeout(drain_timeout, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            listener = name,
            connections = tasks.len(),
            drain_timeout_ms = drain_timeout.as_millis() as u64,
            "HTTP listener drain timed out; the remaining connections are closed."
        );
        tasks.abort_all();
    }
}

/// One connection, from its acceptance to its end.
async fn connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
) {
    let _open = shared
        .listener
        .metered()
        .then(crate::metrics::OpenConnection::opened);
    let state = Arc::new(ConnState::new());
    let io = Activity {
        inner: stream,
        state: Arc::clone(&state),
    };
    match &shared.tls {
        None => serve_connection(&shared, TokioIo::new(io), peer, state, shared.app.clone()).await,
        Some(tls) => {
            let handshake =
                tokio::time::timeout(shared.limits.tls_handshake_timeout, tls.acceptor.accept(io));
            let stream = tokio::select! {
                accepted = handshake => match accepted {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::info!(peer = %peer, error = %e, "TLS handshake refused.");
                        return;
                    }
                    Err(_) => {
                        shared.timed_out("tls_handshake", peer);
                        return;
                    }
                },
                _ = shared.drain.cancelled() => return,
            };
            let client = crate::tls::Peer {
                addr: peer,
                subject: crate::tls::peer_subject(&stream),
                chain: crate::tls::peer_chain(&stream),
            };
            let app = crate::tls::guard(shared.app.clone(), Arc::clone(&tls.access), client);
            // The header timeout starts after the handshake.
            state.restart();
            serve_connection(&shared, TokioIo::new(stream), peer, state, app).await
        }
    }
}

/// Serves HTTP/1.1 on `io` under the watchdog, until the client or the drain ends it.
async fn serve_connection<I>(
    shared: &Arc<Shared>,
    io: TokioIo<I>,
    peer: SocketAddr,
    state: Arc<ConnState>,
    app: Router,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = Tracked {
        app: TowerToHyperService::new(app),
        shared: Arc::clone(shared),
        state: Arc::clone(&state),
        peer,
    };
    let conn = shared.http1.serve_connection(io, service);
    tokio::pin!(conn);
    let limits = &shared.limits;
    let every = (limits.header_read_timeout.min(limits.idle_timeout) / 4)
        .clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut watch = tokio::time::interval(every);
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut drain_seen, mut closing) = (false, false);
    loop {
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(peer = %peer, error = %e, "HTTP connection ended with an error.");
                }
                return;
            }
            _ = watch.tick() => {
                if let Some(kind) = state.expired(limits) {
                    shared.timed_out(kind, peer);
                    return;
                }
            }
            _ = shared.settled.notified(), if drain_seen && !closing => {}
            _ = shared.drain.cancelled(), if !drain_seen => drain_seen = true,
        }
        // Draining: once no request is in progress anywhere on the listener, the connection
        // ends (at once when idle, after the answer being written otherwise).
        if drain_seen && !closing && shared.in_flight.load(Ordering::SeqCst) == 0 {
            closing = true;
            conn.as_mut().graceful_shutdown();
        }
    }
}

/// The service of one connection: the router, with the connection's peer address and the
/// body limits in each request, its requests counted for the watchdog and the drain.
struct Tracked {
    app: TowerToHyperService<Router>,
    shared: Arc<Shared>,
    state: Arc<ConnState>,
    peer: SocketAddr,
}

impl hyper::service::Service<hyper::Request<Incoming>> for Tracked {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn call(&self, mut request: hyper::Request<Incoming>) -> Self::Future {
        let progress = InProgress::enter(&self.shared, &self.state);
        if self.shared.drain.is_cancelled() {
            if self.shared.listener.metered() {
                crate::metrics::http_request_rejected("draining");
            }
            return futures::future::ready(Ok(draining())).boxed();
        }
        request.extensions_mut().insert(ConnectInfo(self.peer));
        request
            .extensions_mut()
            .insert(Arc::clone(&self.shared.limits.bodies));
        let answer = hyper::service::Service::call(&self.app, request);
        let shared = Arc::clone(&self.shared);
        async move {
            let mut response = match answer.await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            drop(progress);
            if shared.drain.is_cancelled() {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(response)
        }
        .boxed()
    }
}

/// The answer to a request that arrives while the listener drains.
fn draining() -> Response {
    let mut response = crate::sources::route::problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "Service Unavailable",
        "gridflow is shutting down; send the request again",
        json!({}),
    );
    let headers = response.headers_mut();
    headers.insert(
        header::RETRY_AFTER,
        HeaderValue::from(DRAIN_RETRY_AFTER_SECS),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A request in progress, from its headers to its answer.
struct InProgress {
    shared: Arc<Shared>,
    state: Arc<ConnState>,
}

impl InProgress {
    fn enter(shared: &Arc<Shared>, state: &Arc<ConnState>) -> InProgress {
        shared.in_flight.fetch_add(1, Ordering::SeqCst);
        state.active.fetch_add(1, Ordering::SeqCst);
        state.head_started.store(NONE, Ordering::SeqCst);
        InProgress {
            shared: Arc::clone(shared),
            state: Arc::clone(state),
        }
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.state.touch();
        self.state.head_started.store(NONE, Ordering::SeqCst);
        self.state.active.fetch_sub(1, Ordering::SeqCst);
        if self.shared.in_flight.fetch_sub(1, Ordering::SeqCst) == 1
            && self.shared.drain.is_cancelled()
        {
            self.shared.settled.notify_waiters();
        }
    }
}

/// No request head being read.
const NONE: u64 = u64::MAX;

/// What the watchdog knows of one connection; times in ms since its opening.
struct ConnState {
    opened: Instant,
    /// The last byte read or written.
    last_activity: AtomicU64,
    /// The first byte of the request head being read, or [`NONE`].
    head_started: AtomicU64,
    /// Requests in progress (headers read, answer not yet produced).
    active: AtomicUsize,
}

impl ConnState {
    fn new() -> ConnState {
        ConnState {
            opened: Instant::now(),
            last_activity: AtomicU64::new(0),
            // A new connection owes its first request's headers from the start.
            head_started: AtomicU64::new(0),
            active: AtomicUsize::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.opened.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.last_activity.store(self.now(), Ordering::SeqCst);
    }

    /// The connection owes its first request's headers from now (after the TLS handshake).
    fn restart(&self) {
        let now = self.now();
        self.last_activity.store(now, Ordering::SeqCst);
        self.head_started.store(now, Ordering::SeqCst);
    }

    fn read(&self) {
        let now = self.now();
        self.last_activity.store(now, Ordering::SeqCst);
        if self.active.load(Ordering::SeqCst) == 0 {
            let _ =
                self.head_started
                    .compare_exchange(NONE, now, Ordering::SeqCst, Ordering::SeqCst);
        }
    }

    /// The timeout that ends the connection now, if any: `header` while a request head is
    /// owed, `idle` while nothing is in progress.
    fn expired(&self, limits: &IngressLimits) -> Option<&'static str> {
        if self.active.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let now = self.now();
        let head = self.head_started.load(Ordering::SeqCst);
        if head != NONE {
            return (now.saturating_sub(head) >= limits.header_read_timeout.as_millis() as u64)
                .then_some("header");
        }
        let last = self.last_activity.load(Ordering::SeqCst);
        (now.saturating_sub(last) >= limits.idle_timeout.as_millis() as u64).then_some("idle")
    }
}

/// The connection's socket, reporting the bytes it moves to the watchdog.
struct Activity<S> {
    inner: S,
    state: Arc<ConnState>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Activity<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.read();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Activity<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.state.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.state.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(header_ms: u64, idle_ms: u64) -> IngressLimits {
        IngressLimits {
            header_read_timeout: Duration::from_millis(header_ms),
            tls_handshake_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_millis(idle_ms),
            max_connections: 1,
            bodies: IngressBodies::new(Duration::from_secs(1), 1),
        }
    }

    #[test]
    fn a_new_connection_owes_its_headers_and_a_served_one_may_idle() {
        let state = ConnState::new();
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(state.expired(&limits(20, 1_000)), Some("header"));
        // A request in progress is never cut by the watchdog.
        state.active.fetch_add(1, Ordering::SeqCst);
        state.head_started.store(NONE, Ordering::SeqCst);
        assert_eq!(state.expired(&limits(20, 20)), None);
        // Answered: idle from then on; a new byte starts a new head.
        state.active.fetch_sub(1, Ordering::SeqCst);
        state.touch();
        assert_eq!(state.expired(&limits(20, 1_000)), None);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(state.expired(&limits(1_000, 20)), Some("idle"));
        state.read();
        assert_eq!(state.expired(&limits(20, 1_000)), None);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(state.expired(&limits(20, 1_000)), Some("header"));
    }
}
