//! gridflow: a declarative pipeline runtime for real-time data exchange in the energy sector.
//!
//! Integrators describe each flow in a TOML file (a source, ordered steps, a sink and an error
//! policy); gridflow runs it against Kafka, with one retry policy and one dead-letter route for
//! every pipeline.
//!
//! # Layout
//!
//! Seven layers. A module imports modules of its own layer or of a lower one, never of a
//! higher one, and the modules of one layer import each other without a cycle (a submodule
//! may use its enclosing module). `tests/layering.rs` keeps it so: it reads every file of
//! `src`, and checks this list against its layer table. A submodule listed on its own has its
//! own layer (`config::pipeline` is above the components it reads, `config::document` below
//! them); one not listed is in the layer of its enclosing module.
//!
//! ## Layer 0, ground: imports nothing of the crate
//!
//! - [`error`]: errors as data: per-message failures, transient sink faults, fatal faults.
//! - [`xml`]: the XML ⇄ JSON convention of `xml_to_json` and `json_to_xml`.
//! - [`secrets`]: Kafka secrets from files, re-read when they change, never shown.
//! - [`logging`]: the log subscriber, its style, and a throttle for repeated warnings.
//! - [`contracts`]: event contracts (JSON Schema) and the topic catalog.
//! - [`retry`]: the retry policy (backoff with jitter); the engine builds it from
//!   `[on_error]` ([`engine::retry_policy`]).
//! - [`config::diagnostic`], [`config::interpolate`]: diagnostics with file, line and column;
//!   `${VAR}` interpolation.
//!
//! ## Layer 1, core: the message and what every component reads it with
//!
//! - [`ack`]: end-to-end acknowledgement: when is an input finished?
//! - [`message`]: the envelope that travels through a pipeline.
//! - [`metrics`]: metrics as named events.
//! - [`jmes`]: JMESPath compiled once, evaluated per message.
//! - [`telemetry`]: OpenTelemetry traces (OTLP), a span per input and per step.
//! - [`kafka`]: client settings shared by the Kafka source, sink and dead-letter writer, the
//!   topic checks and the embedded development broker.
//! - `config::document`: a TOML document parsed with positions, checked section by section.
//!
//! ## Layer 2, components: one module per kind, one registry per family
//!
//! - [`sources`], [`steps`], [`sinks`]: where inputs come from, what is done to them, where
//!   they go. A kind is one module whose config implements its family's trait
//!   ([`sources::SourceKind`], [`steps::StepKind`], [`sinks::SinkKind`]: name, example,
//!   parse, check, build), listed once in its family's registry macro in `mod.rs`. Steps run
//!   through one trait, [`steps::Step`] (a synchronous [`steps::Transform`] or a future;
//!   blocks hold steps), so the engine knows no kind by name.
//! - [`sources::route`]: what the `http` and `soap` sources share: their config, the HTTP
//!   listener's route table and router, admission, the request contract, problem answers.
//! - [`sources::http`], [`sources::soap`]: the two sources of the HTTP listener; each imports
//!   `sources::route`, neither the other.
//! - [`tls`]: TLS and client certificates (mTLS) on the ingress listener.
//!
//! ## Layer 3, configuration: the files that assemble components
//!
//! - [`config::pipeline`]: the pipeline file model, one TOML file per flow.
//! - [`config`]: the runtime file `gridflow.toml` and the loading of pipeline files.
//!
//! ## Layer 4, engine: pipelines built and run
//!
//! - [`engine`]: builds pipelines from their configs, runs them (source → steps → sink),
//!   retries transient faults and routes failed inputs to the dead-letter destination
//!   ([`engine::dead_letter`]); reloads them when their files change.
//!
//! ## Layer 5, processes: what a command runs
//!
//! - [`server`]: `gridflow run`: starts and stops the listeners and the engine, signals,
//!   graceful shutdown.
//! - [`listener`]: the ingress listener (plain or TLS): one accept loop and one connection
//!   path with its limits (header, body, handshake and idle timeouts, connections, body
//!   budget) and its drain.
//! - [`admin`]: the admin HTTP listener (`/health/live`, `/health/ready`, `/metrics`,
//!   `/admin/pipelines`, reload, pause and resume of a pipeline).
//! - [`replay`]: `gridflow replay`, dead letters re-injected (exactly-once to a topic).
//! - [`topics`]: `gridflow topics apply`, the topic catalog applied through the admin API.
//! - [`pipeline_test`]: `gridflow test`, pipeline tests as TOML files (an input, recorded
//!   `enrich` answers, the expected outcome) run through the built program, without Kafka or
//!   network.
//!
//! ## Layer 6, command line
//!
//! - [`cli`]: the `gridflow` command line (clap): parses the arguments and calls the command:
//!   `run` ([`server`]), `validate`, `contracts check`, `replay`, `test`, `topics apply`,
//!   `schema`, `pipelines list|pause|resume` (through the admin API of a running gridflow).
//! - [`schema`]: `gridflow schema`, the JSON Schemas of the files (from the config types and
//!   the three registries) and the reference's key tables written from them.

pub mod ack;
pub mod admin;
pub mod cli;
pub mod config;
pub mod contracts;
pub mod engine;
pub mod error;
pub mod jmes;
pub mod kafka;
pub mod listener;
pub mod logging;
pub mod message;
pub mod metrics;
pub mod pipeline_test;
pub mod replay;
pub mod retry;
pub mod schema;
pub mod secrets;
pub mod server;
pub mod sinks;
pub mod sources;
pub mod steps;
pub mod telemetry;
pub mod tls;
pub mod topics;
pub mod xml;
