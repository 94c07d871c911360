//! HTTP body handling: any body, under any of the media types the ingress distinguishes,
//! POSTed through the real router to an `http` route (JSON contract on the way) and to a
//! `soap` route, gives an answer (2xx, 4xx or 5xx), never a panic.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use futures::future::BoxFuture;
use futures::FutureExt;
use gridflow::error::Failure;
use gridflow::message::Message;
use gridflow::sources::{Downstream, HttpRoutes, SourceConfig, SourceContext};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;

/// Takes every input in and acknowledges it at once.
struct Accept;

impl Downstream for Accept {
    fn push(&self, message: Message) -> BoxFuture<'_, ()> {
        async move { message.ack.delivered() }.boxed()
    }

    fn reject(&self, message: Message, _failure: Failure) -> BoxFuture<'_, ()> {
        async move { drop(message) }.boxed()
    }
}

struct Harness {
    runtime: tokio::runtime::Runtime,
    routes: Arc<HttpRoutes>,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let routes = Arc::new(HttpRoutes::default());
        let _context = runtime.enter();
        for source in [
            "kind = 'http'\npath = '/json'\nmax_body_bytes = 65536\nreply = 'mapped'\n",
            "kind = 'soap'\npath = '/soap'\nmax_body_bytes = 65536\n",
        ] {
            let config: SourceConfig = gridflow::sources::parse_source_text(source).unwrap();
            let ctx = SourceContext {
                pipeline: Arc::from("fuzz"),
                kafka: Default::default(),
                http_routes: Arc::clone(&routes),
                drain_timeout: Duration::from_secs(1),
                contracts: Default::default(),
                paused: Default::default(),
            };
            let built = config.build(&ctx).unwrap();
            let run = built.run(Arc::new(Accept), tokio_util::sync::CancellationToken::new());
            runtime.spawn(run);
        }
        // Let the sources take their routes.
        runtime.block_on(async { tokio::time::sleep(Duration::from_millis(10)).await });
        drop(_context);
        // The routes are live: a good JSON body is taken in (`204`: the test pipeline, which
        // acknowledges without producing anything, gives the mapped reply no message).
        let probe = Request::post("/json")
            .header("content-type", "application/json")
            .body(Body::from(r#"{"ok":true}"#))
            .unwrap();
        let answer = runtime
            .block_on(gridflow::sources::route::router(Arc::clone(&routes)).oneshot(probe))
            .unwrap();
        assert_eq!(answer.status().as_u16(), 204, "the fuzzed route is not live");
        Harness { runtime, routes }
    })
}

const MEDIA_TYPES: &[&str] = &[
    "application/json",
    "application/xml",
    "text/xml; charset=utf-8",
    "application/soap+xml; charset=utf-8; action=\"urn:op\"",
    "application/octet-stream",
];

fuzz_target!(|data: &[u8]| {
    let Some((selector, body)) = data.split_first() else {
        return;
    };
    let h = harness();
    let media = MEDIA_TYPES[*selector as usize % MEDIA_TYPES.len()];
    let path = if selector & 0x80 == 0 { "/json" } else { "/soap" };
    let request = Request::post(path)
        .header("content-type", media)
        .header("soapaction", "\"urn:op\"")
        .body(Body::from(body.to_vec()))
        .unwrap();
    let router = gridflow::sources::route::router(Arc::clone(&h.routes));
    let response = h.runtime.block_on(router.oneshot(request)).unwrap();
    assert!(
        response.status().as_u16() >= 200 && response.status().as_u16() < 600,
        "{}",
        response.status()
    );
});
