//! Real HTTP targets on 127.0.0.1 for the sink, replay and shutdown tests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An HTTP sink target on `/hook` that answers `204` after `delay`, counting the requests it
/// got: the count and the URL.
pub async fn slow_target(delay: Duration) -> (Arc<AtomicUsize>, String) {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&seen);
    let app = Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let counter = Arc::clone(&counter);
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(delay).await;
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (seen, format!("http://{addr}/hook"))
}

/// Waits (up to 5 s) until `seen` counts `n` requests; panics when it does not.
pub async fn wait_for_count(seen: &AtomicUsize, n: usize) {
    for _ in 0..200 {
        if seen.load(Ordering::SeqCst) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the target never got the message");
}

/// A raw TCP target: reads each request's headers, counts it, then writes `answer` and
/// closes the connection (whether `answer` is a whole answer or not), or with `hang` holds
/// the connection and never answers. The base URL and the count.
pub async fn raw_target(answer: &'static [u8], hang: bool) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&count);
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                counted.fetch_add(1, Ordering::SeqCst);
                if hang {
                    tokio::time::sleep(Duration::from_secs(600)).await;
                    return;
                }
                let _ = socket.write_all(answer).await;
                let _ = socket.flush().await;
                drop(socket);
            });
        }
    });
    (format!("http://{addr}"), count)
}
