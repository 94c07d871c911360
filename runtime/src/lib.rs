//! gridflow: a declarative pipeline runtime for real-time data exchange in the energy sector.
//!
//! Integrators describe each flow in a TOML file (a source, ordered steps, a sink and an error
//! policy); gridflow runs it against Kafka, with one retry policy and one dead-letter route for
//! every pipeline.
//!
//! # Layout
//!
//! Layers only point down: nothing below imports anything above it.
//!
//! - [`cli`]: the `gridflow` command line (clap): `run`, `validate`, `contracts check`, `replay`,
//!   `test`, `topics apply`.
//! - [`topics`]: `gridflow topics apply`, the topic catalog applied through the admin API.
//! - [`replay`]: `gridflow replay`, dead letters re-injected (exactly-once to a topic).
//! - [`pipeline_test`]: `gridflow test`, pipeline tests as TOML files (an input, recorded
//!   `enrich` answers, the expected outcome) run through the built program, without Kafka or
//!   network.
//! - [`listener`]: the ingress listener (plain or TLS): one accept loop and one connection path
//!   with its limits (header, body, handshake and idle timeouts, connections, body budget) and
//!   its drain.
//! - [`admin`]: the admin HTTP listener (`/health/live`, `/health/ready`, `/metrics`).
//! - [`engine`]: builds pipelines from their configs, runs them (source → steps → sink), retries
//!   transient faults ([`engine::retry`]) and routes failed inputs to the dead-letter
//!   destination ([`engine::dead_letter`]).
//! - [`sources`], [`steps`], [`sinks`]: one module per component kind, each registered in the
//!   closed enum of its `mod.rs` (the only registry).
//! - [`message`]: the envelope that travels through a pipeline.
//! - [`ack`]: end-to-end acknowledgement: when is an input finished?
//! - [`error`]: errors as data: per-message failures, transient sink faults, fatal faults.
//! - [`kafka`]: client settings shared by the Kafka source, sink and dead-letter writer, the
//!   topic checks and the embedded development broker.
//! - [`jmes`]: JMESPath compiled once, evaluated per message.
//! - [`contracts`]: event contracts (JSON Schema) and the topic catalog.
//! - [`xml`]: the XML ⇄ JSON convention of `xml_to_json` and `json_to_xml`.
//! - [`metrics`]: metrics as named events.
//! - [`telemetry`]: OpenTelemetry traces (OTLP), a span per input and per step.
//! - [`logging`]: the log subscriber, its style, and a throttle for repeated warnings.
//! - [`secrets`]: Kafka secrets from files, re-read when they change, never shown.
//! - [`tls`]: TLS and client certificates (mTLS) on the ingress listener.
//! - [`schema`]: `gridflow schema`, the JSON Schemas of the files (from the config types) and
//!   the reference's key tables written from them.
//! - [`config`]: the file models (`gridflow.toml`, pipeline files), `${VAR}` interpolation and
//!   diagnostics with file, line and column.

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
pub mod sinks;
pub mod sources;
pub mod steps;
pub mod telemetry;
pub mod tls;
pub mod topics;
pub mod xml;
