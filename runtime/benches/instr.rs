//! Instructions per message, for callgrind: `instr <case> <n>` runs one case `n` times
//! (`instr` alone, as `cargo bench` runs it, every case 1,000 times).
//!
//! Time on a shared machine is noise; instruction counts are not. Run a case under callgrind
//! twice, with two values of `n`, and divide the difference of the totals by the difference of
//! the `n`s: what is left is the cost of one message, without the set-up (contracts loaded,
//! steps built). BENCHMARKS.md gives the commands and the figures.
//!
//! Cases (each ends with the bytes the sink would write, as a Kafka or file sink takes them):
//!
//! - `map_1k_bytes`: the meter-readings `map` on the 1 KB raw record (as a Kafka source hands
//!   it over).
//! - `passthrough_bytes`: the meter-readings `filter` and `validate` on a normalised reading
//!   received as raw bytes: a message no step changes.
//! - `http_contract`: an HTTP request body checked against `meter-reading@1` by the source
//!   (`[source] contract`), then written by the sink.
//! - `set_one_field`: a `set` of one field on a normalised reading received as raw bytes.
//! - `entsoe_a65`: the steps of `pipelines/entsoe-actual-load.toml` on the A65 document (one
//!   input, 96 events: its `split`s and `timeseries` copy objects of the document).
//! - `map_interpreted_bytes`: a `map` on the 1 KB raw record whose expression the JMESPath
//!   interpreter runs (a filter, `sort_by` and a projection, `merge`, `reverse`): what copying
//!   objects of the input in their order costs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use gridflow::contracts::Contracts;
use gridflow::engine::program::Program;
use gridflow::message::{ContentType, Item, Meta, Origin, Payload};
use gridflow::sinks::{SinkConfig, SinkContext};
use gridflow::steps::{StepConfig, StepContext};
use gridflow::telemetry::Trace;

/// The allocator the `gridflow` binary uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A normalised meter reading (the output of the meter-readings `map`), keys not sorted.
const READING: &str = r#"{"meter_id":"FR-PRM-09182736450012","measured_at":"2026-01-14T00:45:00Z","value":1.148,"unit":"kWh","quality":"A","substation":"SUB-NORD-07","feeder":"F-12"}"#;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn steps_of(text: &str) -> Vec<StepConfig> {
    gridflow::steps::parse_steps_text(text).unwrap_or_else(|e| panic!("{e:?}"))
}

fn program(steps: &[StepConfig], ctx: &StepContext) -> Program {
    let sink: SinkConfig = gridflow::sinks::parse_sink_text("kind = 'stdout'").unwrap();
    Program::build(
        "instr",
        steps,
        &sink,
        ctx,
        &SinkContext {
            pipeline: Arc::from("instr"),
            version: Arc::from("0"),
            producer: None,
            dry: false,
        },
    )
    .map_err(|(at, e)| format!("{at}: {e}"))
    .unwrap()
}

fn meta(original: Bytes, origin: Origin) -> Arc<Meta> {
    Arc::new(Meta {
        original,
        correlation_id: "0192f3a4-bench-7c1e-9d3f-6a8b0c2e4d6f".into(),
        content_type: ContentType::Json,
        origin,
        key: None,
        headers: Vec::new(),
        request_headers: Vec::new(),
        received_at: Instant::now(),
        reply: None,
    })
}

/// Runs `input` through `program` and writes what comes out as the sink would; the number
/// of bytes written.
fn run_once(
    rt: &tokio::runtime::Runtime,
    program: &Program,
    input: Payload,
    meta: &Arc<Meta>,
) -> usize {
    let outcome = rt
        .block_on(program.run(Item::new(input), meta, &Trace::default()))
        .map_err(|f| format!("{}: {}", f.step, f.message))
        .unwrap();
    outcome
        .deliveries
        .iter()
        .map(|(_, item)| item.payload.to_bytes().len())
        .sum()
}

/// Every case, in the order `instr` without a case (as `cargo bench` runs it) runs them.
const CASES: [&str; 6] = [
    "map_1k_bytes",
    "passthrough_bytes",
    "http_contract",
    "set_one_field",
    "entsoe_a65",
    "map_interpreted_bytes",
];

/// The expression of `map_interpreted_bytes`.
const INTERPRETED: &str = "{id: meter_id, hp: registers[?name == 'HP'] | [0], \
    sorted: sort_by(registers, &name)[*].obis, site: merge(site, {meter: meter_id}), \
    tags: reverse(tags)}";

fn main() {
    // `cargo bench` passes `--bench`: flags are not cases.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let n = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(1000);
    match args.first() {
        Some(case) => run_case(case, n),
        None => CASES.iter().for_each(|case| run_case(case, n)),
    }
}

/// Runs `case` `n` times.
fn run_case(case: &str, n: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (contracts, errors) = Contracts::load(&repo().join("contracts"));
    assert!(errors.is_empty(), "contracts/ does not load");
    let contracts = Arc::new(contracts);
    let ctx = StepContext {
        contracts: Some(Arc::clone(&contracts)),
        upstream: None,
    };
    let meter =
        steps_of(&std::fs::read_to_string(repo().join("pipelines/meter-readings.toml")).unwrap());
    let kafka = Origin::Kafka {
        topic: "energy.meter.reading.raw.v1".into(),
        partition: 2,
        offset: 1_234_567,
    };
    let reading = Bytes::from_static(READING.as_bytes());
    let mut written = 0;
    match case {
        "map_1k_bytes" => {
            let raw = std::fs::read(repo().join("runtime/benches/fixtures/meter-reading-1k.json"))
                .unwrap();
            let raw = Bytes::from(raw).slice(..);
            let raw = raw.slice(..raw.len() - 1);
            let meta = meta(raw.clone(), kafka);
            let map = program(&meter[..1], &ctx);
            for _ in 0..n {
                written += run_once(&rt, &map, Payload::Bytes(raw.clone()), &meta);
            }
        }
        "map_interpreted_bytes" => {
            let raw = std::fs::read(repo().join("runtime/benches/fixtures/meter-reading-1k.json"))
                .unwrap();
            let raw = Bytes::from(raw).slice(..);
            let raw = raw.slice(..raw.len() - 1);
            let meta = meta(raw.clone(), kafka);
            let map = program(
                &steps_of(&format!(
                    "[[steps]]\nkind = 'map'\nexpression = \"{INTERPRETED}\"\n"
                )),
                &ctx,
            );
            for _ in 0..n {
                written += run_once(&rt, &map, Payload::Bytes(raw.clone()), &meta);
            }
        }
        "passthrough_bytes" => {
            let meta = meta(reading.clone(), kafka);
            let steps = program(&meter[1..3], &ctx);
            for _ in 0..n {
                written += run_once(&rt, &steps, Payload::Bytes(reading.clone()), &meta);
            }
        }
        "http_contract" => {
            let config = gridflow::sources::route::HttpSourceConfig {
                path: "/ingest/readings".into(),
                max_body_bytes: 1 << 20,
                retry_after_secs: 1,
                auth: None,
                quota: None,
                contract: Some("meter-reading@1".into()),
                reply: Default::default(),
                operations: Vec::new(),
                wsdl: None,
            };
            let contract = contracts.get("meter-reading@1").unwrap();
            let mut headers = axum::http::HeaderMap::new();
            headers.insert("content-type", "application/json".parse().unwrap());
            let none = program(&[], &ctx);
            for _ in 0..n {
                let (meta, payload) = gridflow::sources::http::request_input(
                    &config,
                    Some(&contract),
                    "/ingest/readings",
                    &headers,
                    reading.clone(),
                    "0192f3a4-bench-7c1e-9d3f-6a8b0c2e4d6f",
                );
                written += run_once(&rt, &none, payload.unwrap(), &meta);
            }
        }
        "set_one_field" => {
            let meta = meta(reading.clone(), kafka);
            let set = program(
                &steps_of("[[steps]]\nkind = 'set'\n[steps.fields]\nunit = \"'Wh'\"\n"),
                &ctx,
            );
            for _ in 0..n {
                written += run_once(&rt, &set, Payload::Bytes(reading.clone()), &meta);
            }
        }
        "entsoe_a65" => {
            let document = Bytes::from(
                std::fs::read(repo().join("pipelines/tests/fixtures/A65-actual-total-load-BE.xml"))
                    .unwrap(),
            );
            let http = Origin::Http {
                path: "/ingest/entsoe/actual-load".into(),
            };
            let meta = meta(document.clone(), http);
            let steps = steps_of(
                &std::fs::read_to_string(repo().join("pipelines/entsoe-actual-load.toml")).unwrap(),
            );
            let a65 = program(&steps, &ctx);
            for _ in 0..n {
                written += run_once(&rt, &a65, Payload::Bytes(document.clone()), &meta);
            }
        }
        other => panic!("unknown case `{other}`: {}", CASES.join(", ")),
    }
    println!("{case}: {n} runs, {written} bytes written");
}
