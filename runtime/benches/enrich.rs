//! Enrichment overhead per message: the same pipeline program (`map`, then `enrich`) run on
//! one message, against a real HTTP upstream on 127.0.0.1, compared with the `map` alone.
//!
//! `cargo bench --bench enrich` prints, per case, the time one message takes through the
//! program: `baseline` (no enrich), `warm_cache` (every answer from the cache),
//! `upstream_0ms` (a call per message, the upstream answers at once) and `upstream_5ms` (a
//! call per message, the upstream answers after 5 ms). The overhead of enrichment is the
//! difference with `baseline`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::Path;
use axum::routing::get;
use axum::Router;
use criterion::{criterion_group, criterion_main, Criterion};
use gridflow::engine::program::Program;
use gridflow::message::{ContentType, Item, Meta, Origin, Payload};
use gridflow::sinks::{SinkConfig, SinkContext};
use gridflow::steps::{StepConfig, StepContext};
use gridflow::telemetry::Trace;
use serde_json::json;

async fn upstream() -> String {
    let app = Router::new()
        .route(
            "/now/{id}",
            get(|Path(id): Path<String>| async move {
                axum::Json(json!({"id": id, "region": "north"}))
            }),
        )
        .route(
            "/slow/{id}",
            get(|Path(id): Path<String>| async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                axum::Json(json!({"id": id, "region": "north"}))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn program(steps: &str) -> Program {
    let steps: Vec<StepConfig> =
        gridflow::steps::parse_steps_text(steps).unwrap_or_else(|e| panic!("{e:?}"));
    let sink: SinkConfig = gridflow::sinks::parse_sink_text("kind = 'stdout'").unwrap();
    Program::build(
        "bench",
        &steps,
        &sink,
        &StepContext::default(),
        &SinkContext {
            pipeline: Arc::from("bench"),
            version: Arc::from("0"),
            producer: None,
            dry: false,
        },
    )
    .map_err(|(at, e)| format!("{at}: {e}"))
    .unwrap()
}

fn meta() -> Arc<Meta> {
    Arc::new(Meta {
        original: bytes::Bytes::new(),
        correlation_id: "bench".into(),
        content_type: ContentType::Json,
        origin: Origin::Http { path: "/b".into() },
        key: None,
        headers: Vec::new(),
        request_headers: Vec::new(),
        received_at: Instant::now(),
        reply: None,
    })
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let base = rt.block_on(upstream());
    let map = "[[steps]]\nkind = 'map'\nexpression = '{meter: meter, value: value, at: at}'\n";
    let enrich = |path: &str, cache: bool| {
        format!(
            "{map}[[steps]]\nkind = 'enrich'\nurl = '{base}/{path}/{{meter}}'\ntarget = 'asset'\n{}",
            if cache { "[steps.cache]\nttl_ms = 600000\n" } else { "" }
        )
    };
    let cases = [
        ("baseline", program(map)),
        ("warm_cache", program(&enrich("now", true))),
        ("upstream_0ms", program(&enrich("now", false))),
        ("upstream_5ms", program(&enrich("slow", false))),
    ];
    let meta = meta();
    let message =
        json!({"meter": "m-42", "value": 1.5, "at": "2026-11-25T10:00:00Z", "extra": "x"});
    let mut group = c.benchmark_group("enrich");
    for (name, program) in &cases {
        let item = Item::new(Payload::Json(message.clone()));
        // Warm the cache (and the connection pool).
        rt.block_on(program.run(item.clone(), &meta, &Trace::default()))
            .unwrap();
        group.bench_function(*name, |b| {
            b.to_async(&rt).iter(|| async {
                program
                    .run(item.clone(), &meta, &Trace::default())
                    .await
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
