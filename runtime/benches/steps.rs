//! Cost of each step kind on realistic inputs, and of the shipped ENTSO-E program.
//!
//! `cargo bench --bench steps` runs one group per step kind. Every step is built from its
//! `[[steps]]` TOML (as a pipeline file declares it) and run through [`Program::run`], the call
//! the engine makes for each input (panic guard, `meta()` scope, step metrics included, with
//! gridflow's Prometheus recorder installed as `gridflow run` installs it); `map` is also run
//! through the bare [`Step`] trait, to show what the engine adds. Nothing is delivered:
//! `Program::run` returns the messages with their sink.
//!
//! Inputs are in `benches/fixtures/` (see its PROVENANCE.md): the ENTSO-E documents of the
//! project's samples and a 1 KB raw smart-meter record; the pipelines and contracts are the
//! repository's own (`pipelines/`, `contracts/`).
//!
//! Throughput: `Bytes` (input XML bytes) for `xml_to_json` and the whole ENTSO-E program
//! (which also reports documents/s in its own group), `Bytes` of produced XML for
//! `json_to_xml`, `Elements` (input messages) elsewhere, except `split`, whose `Elements` are
//! the messages it produces (96 per input).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use gridflow::contracts::Contracts;
use gridflow::engine::dead_letter::envelope_headers;
use gridflow::engine::program::Program;
use gridflow::error::{ErrorCode, Failure};
use gridflow::message::{ContentType, Item, Meta, Origin, Payload};
use gridflow::sinks::{SinkConfig, SinkContext};
use gridflow::steps::{StepConfig, StepContext, Transform};
use gridflow::telemetry::Trace;
use serde_json::Value;

/// The allocator the `gridflow` binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture(name: &str) -> Bytes {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("benches/fixtures")
        .join(name);
    Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// The `[[steps]]` of a TOML text (a pipeline file or a fragment).
fn steps_of(text: &str) -> Vec<StepConfig> {
    gridflow::steps::parse_steps_text(text).unwrap_or_else(|e| panic!("{e:?}"))
}

fn pipeline_steps(name: &str) -> Vec<StepConfig> {
    let path = repo().join("pipelines").join(format!("{name}.toml"));
    steps_of(&std::fs::read_to_string(&path).unwrap())
}

fn context() -> StepContext {
    let (contracts, errors) = Contracts::load(&repo().join("contracts"));
    assert!(errors.is_empty(), "contracts/ does not load");
    StepContext {
        contracts: Some(Arc::new(contracts)),
        upstream: None,
    }
}

fn program(steps: &[StepConfig], ctx: &StepContext) -> Program {
    // The sink is built but never called: `Program::run` only says where messages go.
    let sink: SinkConfig = gridflow::sinks::parse_sink_text("kind = 'stdout'").unwrap();
    Program::build(
        "bench",
        steps,
        &sink,
        ctx,
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

fn meta(original: Bytes, content_type: ContentType, origin: Origin) -> Arc<Meta> {
    Arc::new(Meta {
        original,
        correlation_id: "0192f3a4-bench-7c1e-9d3f-6a8b0c2e4d6f".into(),
        content_type,
        origin,
        key: None,
        headers: Vec::new(),
        request_headers: Vec::new(),
        received_at: Instant::now(),
        reply: None,
    })
}

fn kafka_origin() -> Origin {
    Origin::Kafka {
        topic: "energy.meter.reading.raw.v1".into(),
        partition: 2,
        offset: 1_234_567,
    }
}

fn http_origin() -> Origin {
    Origin::Http {
        path: "/ingest/entsoe/actual-load".into(),
    }
}

/// Runs one input through `program`; the number of messages it produced.
fn run_once(
    rt: &tokio::runtime::Runtime,
    program: &Program,
    item: Item,
    meta: &Arc<Meta>,
) -> usize {
    let outcome = rt
        .block_on(program.run(item, meta, &Trace::default()))
        .map_err(|f| format!("{}: {}", f.step, f.message))
        .unwrap();
    outcome.deliveries.len()
}

/// The messages `steps` make of `input` (to get a realistic intermediate message).
fn messages_after(
    rt: &tokio::runtime::Runtime,
    steps: &[StepConfig],
    ctx: &StepContext,
    input: Payload,
    meta: &Arc<Meta>,
) -> Vec<Value> {
    let outcome = rt
        .block_on(program(steps, ctx).run(Item::new(input), meta, &Trace::default()))
        .map_err(|f| format!("{}: {}", f.step, f.message))
        .unwrap();
    outcome
        .deliveries
        .into_iter()
        .map(|(_, item)| item.payload.into_json().unwrap())
        .collect()
}

/// Benchmarks `steps` as a program on `input` in `group`, checking first that it produces
/// `expect` messages.
fn bench_program(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    name: &str,
    program: &Program,
    input: &Payload,
    meta: &Arc<Meta>,
    expect: usize,
) {
    let item = Item::new(input.clone());
    assert_eq!(run_once(rt, program, item.clone(), meta), expect, "{name}");
    group.bench_function(name, |b| {
        b.iter(|| run_once(rt, program, item.clone(), meta))
    });
}

fn bench(c: &mut Criterion) {
    gridflow::metrics::install().expect("metrics recorder");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ctx = context();
    let entsoe = pipeline_steps("entsoe-actual-load");
    let meter = pipeline_steps("meter-readings");
    let arrays = "arrays = ['TimeSeries', 'Period', 'Point']\n";

    // xml_to_json, in MB/s of input XML.
    let xml_to_json = program(
        &steps_of(&format!("[[steps]]\nkind = 'xml_to_json'\n{arrays}")),
        &ctx,
    );
    let mut group = c.benchmark_group("xml_to_json");
    for doc in [
        "A65-actual-total-load-BE.xml",
        "A75-generation-per-type-NL.xml",
        "A44-day-ahead-prices-FR.xml",
    ] {
        let bytes = fixture(doc);
        let meta = meta(bytes.clone(), ContentType::Xml, http_origin());
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        bench_program(
            &mut group,
            &rt,
            doc.trim_end_matches(".xml"),
            &xml_to_json,
            &Payload::Bytes(bytes),
            &meta,
            1,
        );
    }
    group.finish();

    // map on a 1 KB raw meter reading (bytes, as a Kafka or file source hands them over),
    // with the meter-readings pipeline's expression.
    let reading = fixture("meter-reading-1k.json");
    let reading = reading.slice(..reading.len() - 1); // without the newline
    let reading_meta = meta(reading.clone(), ContentType::Json, kafka_origin());
    let map_config = meter[0].clone();
    assert_eq!(map_config.kind(), "map");
    let map = program(std::slice::from_ref(&map_config), &ctx);
    let parsed: Value = serde_json::from_slice(&reading).unwrap();
    let mut group = c.benchmark_group("map");
    group.throughput(Throughput::Elements(1));
    bench_program(
        &mut group,
        &rt,
        "program_1k_bytes",
        &map,
        &Payload::Bytes(reading.clone()),
        &reading_meta,
        1,
    );
    bench_program(
        &mut group,
        &rt,
        "program_1k_parsed",
        &map,
        &Payload::Json(parsed.clone()),
        &reading_meta,
        1,
    );
    // The bare step (its transform), without the engine's guard, scope and metrics.
    let StepConfig::Map(bare) = &map_config else {
        panic!("the meter-readings flow starts with a map step")
    };
    let step = bare.compile().unwrap();
    group.bench_function("step_1k_bytes", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(1);
            step.process(Payload::Bytes(reading.clone()), &mut out)
                .unwrap();
            out
        })
    });
    group.bench_function("step_1k_parsed", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(1);
            step.process(Payload::Json(parsed.clone()), &mut out)
                .unwrap();
            out
        })
    });
    // What is around the expression: parsing the bytes, cloning the parsed value (what the
    // step gets), writing the result as the sink does.
    group.bench_function("parse_1k_only", |b| {
        b.iter(|| serde_json::from_slice::<Value>(&reading).unwrap())
    });
    let mapped = messages_after(
        &rt,
        &meter[..1],
        &ctx,
        Payload::Bytes(reading.clone()),
        &reading_meta,
    )
    .pop()
    .unwrap();
    group.bench_function("serialize_output_only", |b| {
        b.iter(|| Payload::Json(mapped.clone()).to_bytes())
    });
    // The Kafka sink's `key = "meter_id"` on the step's output.
    let key = gridflow::jmes::Expr::compile("meter_id").unwrap();
    let output = Payload::Json(mapped.clone());
    group.bench_function("sink_key_of_output", |b| {
        b.iter(|| key.search_payload(&output).unwrap())
    });
    group.finish();

    // The whole meter-readings program (map, filter, validate) per 1 KB record.
    let mut group = c.benchmark_group("program_meter_readings");
    group.throughput(Throughput::Elements(1));
    bench_program(
        &mut group,
        &rt,
        "1k_record",
        &program(&meter, &ctx),
        &Payload::Bytes(reading.clone()),
        &reading_meta,
        1,
    );
    group.finish();

    // The ENTSO-E document as JSON, and its intermediate messages.
    let a65 = fixture("A65-actual-total-load-BE.xml");
    let a65_meta = meta(a65.clone(), ContentType::Xml, http_origin());
    let after = |n: usize| {
        messages_after(
            &rt,
            &entsoe[..n],
            &ctx,
            Payload::Bytes(a65.clone()),
            &a65_meta,
        )
    };
    let document = after(1).pop().unwrap();
    let periods = after(5);
    assert_eq!(periods.len(), 1, "one period in A65");
    let points = after(6);
    assert_eq!(points.len(), 96);
    let events = after(8);
    assert_eq!(events.len(), 96);

    // split: the flow's last split, one Period of 96 points to 96 messages (with its merge).
    assert_eq!(entsoe[5].kind(), "split");
    let mut group = c.benchmark_group("split");
    group.throughput(Throughput::Elements(96));
    bench_program(
        &mut group,
        &rt,
        "period_96_points",
        &program(&entsoe[5..6], &ctx),
        &Payload::Json(periods[0].clone()),
        &a65_meta,
        96,
    );
    group.finish();

    // json_to_xml: the A65 document back to XML, in MB/s of XML produced.
    let json_to_xml = program(&steps_of("[[steps]]\nkind = 'json_to_xml'\n"), &ctx);
    let xml_len = match rt
        .block_on(json_to_xml.run(
            Item::new(Payload::Json(document.clone())),
            &a65_meta,
            &Trace::default(),
        ))
        .ok()
        .and_then(|o| o.deliveries.into_iter().next())
        .map(|(_, i)| i.payload)
    {
        Some(Payload::Bytes(b)) => b.len(),
        other => panic!("json_to_xml gave {other:?}"),
    };
    let mut group = c.benchmark_group("json_to_xml");
    group.throughput(Throughput::Bytes(xml_len as u64));
    bench_program(
        &mut group,
        &rt,
        "A65_document",
        &json_to_xml,
        &Payload::Json(document.clone()),
        &a65_meta,
        1,
    );
    let event_xml = program(
        &steps_of("[[steps]]\nkind = 'json_to_xml'\nroot = 'LoadPoint'\n"),
        &ctx,
    );
    let event_len = serde_json::to_vec(&events[0]).unwrap().len();
    group.throughput(Throughput::Bytes(event_len as u64));
    bench_program(
        &mut group,
        &rt,
        "load_event_json_bytes",
        &event_xml,
        &Payload::Json(events[0].clone()),
        &a65_meta,
        1,
    );
    group.finish();

    // filter: the flow's document filter (on the parsed document) and the meter-readings one.
    let mut group = c.benchmark_group("filter");
    group.throughput(Throughput::Elements(1));
    assert_eq!(entsoe[1].kind(), "filter");
    bench_program(
        &mut group,
        &rt,
        "entsoe_type_on_document",
        &program(&entsoe[1..2], &ctx),
        &Payload::Json(document.clone()),
        &a65_meta,
        1,
    );
    assert_eq!(meter[1].kind(), "filter");
    bench_program(
        &mut group,
        &rt,
        "value_not_null_on_reading",
        &program(&meter[1..2], &ctx),
        &Payload::Json(mapped.clone()),
        &reading_meta,
        1,
    );
    group.finish();

    // validate: against contracts/load-actual@1 and contracts/meter-reading@1.
    let mut group = c.benchmark_group("validate");
    group.throughput(Throughput::Elements(1));
    assert_eq!(entsoe[7].kind(), "validate");
    bench_program(
        &mut group,
        &rt,
        "load_actual_event",
        &program(&entsoe[7..8], &ctx),
        &Payload::Json(events[0].clone()),
        &a65_meta,
        1,
    );
    assert_eq!(meter[2].kind(), "validate");
    bench_program(
        &mut group,
        &rt,
        "meter_reading",
        &program(&meter[2..3], &ctx),
        &Payload::Json(mapped.clone()),
        &reading_meta,
        1,
    );
    group.finish();

    // set and rename on the normalised reading (the examples of docs/reference/steps/{set,rename}.md).
    let set = steps_of(
        r#"
[[steps]]
kind = "set"
key = "meter_id"
[steps.fields]
"site.feeder" = "feeder"
received_via = "meta().source.kind"
[steps.headers]
meter-id = "meter_id"
reading-quality = "quality"
"#,
    );
    let rename = steps_of(
        r#"
[[steps]]
kind = "rename"
[steps.fields]
value = "reading.value"
unit = "reading.unit"
[steps.headers]
meter-id = "x-meter-id"
"#,
    );
    let mut group = c.benchmark_group("fields");
    group.throughput(Throughput::Elements(1));
    bench_program(
        &mut group,
        &rt,
        "set_fields_headers_key",
        &program(&set, &ctx),
        &Payload::Json(mapped.clone()),
        &reading_meta,
        1,
    );
    bench_program(
        &mut group,
        &rt,
        "rename_fields_headers",
        &program(&rename, &ctx),
        &Payload::Json(mapped.clone()),
        &reading_meta,
        1,
    );
    group.finish();

    // The dead-letter envelope: the gridflow.* headers of a failed input.
    let failure = {
        let mut f = Failure::new(
            "steps[2].validate",
            ErrorCode::ContractViolation,
            "the message does not conform to meter-reading@1: /value: \"0.412\" is not of type \"number\"",
        );
        f.attempts = 1;
        f
    };
    let mut group = c.benchmark_group("dead_letter");
    group.throughput(Throughput::Elements(1));
    for (name, origin) in [
        ("envelope_headers_kafka", kafka_origin()),
        ("envelope_headers_http", http_origin()),
    ] {
        let meta = meta(reading.clone(), ContentType::Json, origin);
        group.bench_with_input(BenchmarkId::from_parameter(name), &meta, |b, meta| {
            b.iter(|| envelope_headers("meter-readings", "3f2a9c1b", meta, &failure))
        });
    }
    group.finish();

    // The whole shipped entsoe-actual-load program: one A65 document to 96 validated events.
    let whole = program(&entsoe, &ctx);
    let mut group = c.benchmark_group("program_entsoe_actual_load");
    group.throughput(Throughput::Bytes(a65.len() as u64));
    bench_program(
        &mut group,
        &rt,
        "A65_document_bytes",
        &whole,
        &Payload::Bytes(a65.clone()),
        &a65_meta,
        96,
    );
    group.throughput(Throughput::Elements(96));
    bench_program(
        &mut group,
        &rt,
        "A65_document_events",
        &whole,
        &Payload::Bytes(a65.clone()),
        &a65_meta,
        96,
    );
    group.finish();
    // Per-step share of the ENTSO-E program: the program cut after each step, from bytes.
    let mut group = c.benchmark_group("program_entsoe_prefix");
    group.throughput(Throughput::Elements(1));
    for n in 1..=entsoe.len() {
        let name = format!("{n}_steps_to_{}", entsoe[n - 1].kind());
        let expect = if n >= 6 { 96 } else { 1 };
        bench_program(
            &mut group,
            &rt,
            &name,
            &program(&entsoe[..n], &ctx),
            &Payload::Bytes(a65.clone()),
            &a65_meta,
            expect,
        );
    }
    group.finish();
    let _ = points;
}

criterion_group!(benches, bench);
criterion_main!(benches);
