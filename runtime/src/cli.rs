//! The `gridflow` command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::pipeline::{load_all, pipeline_paths};
use crate::config::{interpolate, Diagnostic, RuntimeConfig};
use crate::contracts::Contracts;
use crate::engine::Engine;

/// gridflow: declarative pipelines for real-time energy data exchange on Kafka.
#[derive(Debug, Parser)]
#[command(name = "gridflow", version, about, propagate_version = true)]
pub struct Cli {
    /// Log format; default `json` when stderr is not a terminal, `pretty` otherwise.
    #[arg(long, value_enum, global = true)]
    log_format: Option<crate::logging::LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every pipeline of the pipelines directory.
    Run(RunArgs),
    /// Check pipeline files; prints every error as `path:line:col: error: message`.
    Validate(ValidateArgs),
    /// Event contracts and the topic catalog.
    #[command(subcommand)]
    Contracts(ContractsCommand),
    /// Re-inject dead letters, with their original bytes, into a topic or a pipeline.
    Replay(ReplayArgs),
    /// Kafka topics of the catalog (`contracts/topics.toml`).
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Run pipeline tests (`*.test.toml`: inputs and expected outputs), without Kafka and
    /// without network; prints one line per case and exits 1 on a failure, 2 on a test file
    /// that cannot be loaded.
    Test(TestArgs),
    /// Print the JSON Schema (draft 2020-12) of a file format, for editors (see docs/editor.md).
    Schema(crate::schema::SchemaArgs),
    /// The pipelines of a running gridflow, through its admin API: list them, pause
    /// (freeze) or resume one.
    #[command(subcommand)]
    Pipelines(PipelinesCommand),
}

#[derive(Debug, Subcommand)]
enum PipelinesCommand {
    /// List the pipelines with their state, version and pause (`GET /admin/pipelines`).
    List(AdminArgs),
    /// Freeze a pipeline: its source takes no input until it is resumed (Kafka: partitions
    /// paused, the consumer group kept; HTTP/SOAP: `503` with `Retry-After`; file: no file
    /// picked). Inputs already taken in finish. Idempotent; kept across reloads, not across a
    /// restart of gridflow.
    Pause(PipelineArgs),
    /// Resume a paused pipeline. Idempotent.
    Resume(PipelineArgs),
}

#[derive(Debug, clap::Args)]
struct PipelineArgs {
    /// The pipeline's name (its `name`, as `gridflow pipelines list` shows it).
    name: String,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Debug, clap::Args)]
struct AdminArgs {
    /// Base URL of gridflow's admin listener (default: `[admin] listen` of the runtime
    /// configuration, `0.0.0.0` read as `127.0.0.1`).
    #[arg(long, env = "GRIDFLOW_ADMIN")]
    admin_url: Option<String>,
    /// Runtime configuration file (admin address, `[admin] token_file`). The token is
    /// `GRIDFLOW_ADMIN_TOKEN` when set, else the content of `token_file`.
    #[arg(long, default_value = "gridflow.toml")]
    config: PathBuf,
}

#[derive(Debug, clap::Args)]
struct TestArgs {
    /// Test files, or directories whose `*.test.toml` files are run (default: `tests/` of
    /// the pipelines directory, `pipelines/tests`).
    paths: Vec<PathBuf>,
    /// Contracts directory, for `validate` steps (overrides `[paths] contracts`).
    #[arg(long)]
    contracts: Option<PathBuf>,
    /// Runtime configuration file (for the default directories).
    #[arg(long, default_value = "gridflow.toml")]
    config: PathBuf,
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Create the catalog's topics and their dead-letter topics, or bring them up to date
    /// (partitions added, retention changed); idempotent. `--dry-run` prints the plan only.
    Apply(TopicsApplyArgs),
}

#[derive(Debug, clap::Args)]
struct TopicsApplyArgs {
    /// The catalog (default: `topics.toml` in the contracts directory of `[paths]`).
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// Runtime configuration file (brokers, Kafka properties, contracts directory).
    #[arg(long, default_value = "gridflow.toml")]
    config: PathBuf,
    /// Kafka bootstrap servers (overrides `[kafka] brokers`).
    #[arg(long, env = "KAFKA_BROKERS")]
    brokers: Option<String>,
    /// Replication factor of the topics created; -1: the broker's default
    /// (`default.replication.factor`).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    replication_factor: i32,
    /// Print what would change; change nothing.
    #[arg(long)]
    dry_run: bool,
}

#[derive(Debug, clap::Args)]
struct ReplayArgs {
    /// The dead-letter topic to read.
    #[arg(long)]
    from: String,
    /// Send to this topic (default: the topic each record was consumed from, its
    /// `gridflow.source.topic`).
    #[arg(long, conflicts_with = "to_pipeline")]
    to: Option<String>,
    /// Send to this pipeline: its source topic (Kafka source) or its HTTP endpoint (POST).
    #[arg(long)]
    to_pipeline: Option<String>,
    /// JMESPath condition on each dead letter: `error.code == 'mapping_error'`,
    /// `pipeline == 'meter-readings'`, `body.meter_id == 'M-1'`, `headers.\"x-region\"`.
    #[arg(long = "where")]
    filter: Option<String>,
    /// Only dead letters written at or after this time (RFC 3339, or an age: 30m, 2h, 7d).
    #[arg(long)]
    since: Option<String>,
    /// Only dead letters written before this time (RFC 3339, or an age).
    #[arg(long)]
    until: Option<String>,
    /// At most this many records per second (between 0.01 and 1000000).
    #[arg(long, value_parser = crate::replay::parse_rate)]
    rate: Option<f64>,
    /// The longest the replay waits for anything, in seconds (default 30): broker metadata,
    /// committed offsets, topic creation, journal reads, produce acknowledgements, records of
    /// the dead-letter topic, each HTTP request. Past it the replay stops with an error that
    /// says what it waited for; nothing unsent is committed.
    #[arg(long, default_value_t = crate::replay::DEFAULT_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    timeout: u64,
    /// Print what would be sent; send and commit nothing.
    #[arg(long)]
    dry_run: bool,
    /// Consumer group of the replay (default `gridflow-replay.<from>.<hash of the selection>`):
    /// the same command run again resumes where it stopped; records it read and left out are
    /// not read again by it.
    #[arg(long)]
    group: Option<String>,
    /// Base URL of gridflow's HTTP listener, for `--to-pipeline` with an HTTP source (default
    /// from `[http] listen`).
    #[arg(long)]
    http_url: Option<String>,
    /// Runtime configuration file (brokers, Kafka properties, pipelines directory).
    #[arg(long, default_value = "gridflow.toml")]
    config: PathBuf,
    /// Kafka bootstrap servers (overrides `[kafka] brokers`).
    #[arg(long, env = "KAFKA_BROKERS")]
    brokers: Option<String>,
}

#[derive(Debug, Subcommand)]
enum ContractsCommand {
    /// Check the contracts: schemas compile, examples validate, every contract a pipeline or
    /// the catalog names exists, every topic follows `<domain>.<entity>.<event>.v<major>`.
    Check(ValidateArgs),
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Runtime configuration file.
    #[arg(long, default_value = "gridflow.toml")]
    config: PathBuf,
    /// Pipelines directory (overrides `[paths] pipelines`).
    #[arg(long)]
    pipelines: Option<PathBuf>,
    /// HTTP ingress address (overrides `[http] listen`).
    #[arg(long)]
    http_addr: Option<SocketAddr>,
    /// Admin address (overrides `[admin] listen`).
    #[arg(long)]
    admin_addr: Option<SocketAddr>,
    /// Kafka bootstrap servers (overrides `[kafka] brokers`); empty: the embedded
    /// development broker.
    #[arg(long, env = "KAFKA_BROKERS")]
    brokers: Option<String>,
}

impl From<RunArgs> for crate::server::Options {
    fn from(args: RunArgs) -> Self {
        crate::server::Options {
            config: args.config,
            pipelines: args.pipelines,
            http_addr: args.http_addr,
            admin_addr: args.admin_addr,
            brokers: args.brokers,
        }
    }
}

#[derive(Debug, clap::Args)]
struct ValidateArgs {
    /// Files or directories to check (default: the pipelines directory).
    paths: Vec<PathBuf>,
    /// Runtime configuration file (for the default pipelines directory).
    #[arg(long, default_value = "gridflow.toml")]
    config: PathBuf,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::logging::init(cli.log_format);
    match cli.command {
        Command::Validate(args) => validate(args),
        Command::Contracts(ContractsCommand::Check(args)) => contracts_check(args),
        Command::Replay(args) => replay(args),
        Command::Topics(TopicsCommand::Apply(args)) => topics_apply(args),
        Command::Test(args) => test(args),
        Command::Run(args) => crate::server::run(args.into()),
        Command::Schema(args) => crate::schema::run(args),
        Command::Pipelines(command) => pipelines(command),
    }
}

/// Where the admin API of the running gridflow is, and the token its mutating requests need.
fn admin_target(args: &AdminArgs) -> Result<(String, Option<String>), String> {
    let config = RuntimeConfig::load(&args.config, false).map_err(|d| {
        d.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    let base = match &args.admin_url {
        Some(url) => url.trim_end_matches('/').to_string(),
        None => {
            let mut addr = config.admin.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}")
        }
    };
    let token = match std::env::var(crate::admin::ADMIN_TOKEN_ENV) {
        Ok(token) if !token.trim().is_empty() => Some(token.trim().to_string()),
        _ => match config
            .admin
            .token_file
            .filter(|p| !p.as_os_str().is_empty())
        {
            Some(path) => Some(
                std::fs::read_to_string(&path)
                    .map_err(|e| {
                        format!("cannot read the admin token file {}: {e}", path.display())
                    })?
                    .trim()
                    .to_string(),
            ),
            None => None,
        },
    };
    Ok((base, token))
}

/// `gridflow pipelines list|pause|resume`: one request to the admin API; prints its answer in
/// a line per pipeline, exits 1 when it was refused or failed.
fn pipelines(command: PipelinesCommand) -> ExitCode {
    let (args, request) = match &command {
        PipelinesCommand::List(args) => (args, None),
        PipelinesCommand::Pause(p) => (&p.admin, Some((p.name.as_str(), "pause"))),
        PipelinesCommand::Resume(p) => (&p.admin, Some((p.name.as_str(), "resume"))),
    };
    let Some(runtime) = current_thread_runtime() else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(admin_request(args, request)) {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Sends the request (`None`: the list; `Some((name, "pause"|"resume"))`) and words its answer.
async fn admin_request(
    args: &AdminArgs,
    request: Option<(&str, &str)>,
) -> Result<Vec<String>, String> {
    let (base, token) = admin_target(args)?;
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())?;
    let builder = match request {
        None => client.get(format!("{base}/admin/pipelines")),
        Some((name, action)) => {
            let name: String =
                percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC)
                    .to_string();
            let builder = client.post(format!("{base}/admin/pipelines/{name}/{action}"));
            match &token {
                Some(token) => builder.bearer_auth(token),
                None => builder,
            }
        }
    };
    let response = builder
        .send()
        .await
        .map_err(|e| format!("cannot reach gridflow's admin API at {base}: {e}"))?;
    let status = response.status();
    let body: serde_json::Value = response
        .json()
        .await
        .map_err(|e| format!("{base} answered {status} without a JSON body: {e}"))?;
    if !status.is_success() {
        let detail = body["detail"].as_str().unwrap_or("");
        let hint = match status.as_u16() {
            401 | 403 => {
                " (give the admin token: GRIDFLOW_ADMIN_TOKEN, or [admin] token_file of --config)"
            }
            _ => "",
        };
        return Err(format!("{base} answered {status}: {detail}{hint}"));
    }
    Ok(match request {
        Some((name, _)) => {
            let since = body["paused_since"].as_str().unwrap_or("");
            let changed = body["changed"].as_bool().unwrap_or(false);
            vec![match (body["paused"].as_bool().unwrap_or(false), changed) {
                (true, true) => format!("pipeline {name} paused (since {since})"),
                (true, false) => format!("pipeline {name} already paused (since {since})"),
                (false, true) => format!("pipeline {name} resumed"),
                (false, false) => format!("pipeline {name} already running (not paused)"),
            }]
        }
        None => body["pipelines"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let paused = match p["paused_since"].as_str() {
                    Some(since) => format!("paused since {since}"),
                    None => "-".to_string(),
                };
                format!(
                    "{}\t{}\t{}\t{}",
                    p["name"].as_str().unwrap_or("?"),
                    p["state"].as_str().unwrap_or("?"),
                    paused,
                    p["version"].as_str().map_or("-", |v| &v[..v.len().min(12)]),
                )
            })
            .collect(),
    })
}

fn print_diagnostics(diagnostics: &[Diagnostic]) {
    for d in diagnostics {
        eprintln!("{d}");
    }
}

fn validate(args: ValidateArgs) -> ExitCode {
    let mut paths = Vec::new();
    let mut diagnostics = Vec::new();
    let inputs = if args.paths.is_empty() {
        match RuntimeConfig::load(&args.config, false) {
            Ok(c) => vec![c.paths.pipelines],
            Err(d) => {
                print_diagnostics(&d);
                return ExitCode::FAILURE;
            }
        }
    } else {
        args.paths
    };
    for input in inputs {
        if input.is_dir() {
            match pipeline_paths(&input) {
                Ok(mut p) => paths.append(&mut p),
                Err(e) => diagnostics.push(io_diagnostic(&input, e)),
            }
        } else {
            paths.push(input);
        }
    }
    let (files, mut found) = load_all(&paths, &interpolate::from_env);
    diagnostics.append(&mut found);
    print_diagnostics(&diagnostics);
    if diagnostics.is_empty() {
        println!("{} pipeline file(s) OK.", files.len());
        ExitCode::SUCCESS
    } else {
        eprintln!("{} error(s) in {} file(s).", diagnostics.len(), paths.len());
        ExitCode::FAILURE
    }
}

fn test(args: TestArgs) -> ExitCode {
    use crate::pipeline_test;
    let config = match RuntimeConfig::load(&args.config, false) {
        Ok(c) => c,
        Err(d) => {
            print_diagnostics(&d);
            return ExitCode::from(2);
        }
    };
    let inputs = if args.paths.is_empty() {
        vec![config.paths.pipelines.join("tests")]
    } else {
        args.paths
    };
    let contracts_dir = args.contracts.unwrap_or(config.paths.contracts);
    let (contracts, errors) = Contracts::load(&contracts_dir);
    for e in &errors {
        eprintln!(
            "warning: {}: contract not loaded: {}",
            e.path.display(),
            e.message
        );
    }
    let contracts = Arc::new(contracts);
    // One thread is enough: a case is one input; recorded answers come at once.
    let Some(runtime) = current_thread_runtime() else {
        return ExitCode::FAILURE;
    };
    let (paths, mut diagnostics) = pipeline_test::test_paths(&inputs);
    let (mut passed, mut failed, mut unloadable) = (0, 0, 0);
    for path in &paths {
        let file = match pipeline_test::load(path, &contracts) {
            Ok(file) => file,
            Err(mut d) => {
                unloadable += 1;
                diagnostics.append(&mut d);
                continue;
            }
        };
        let results: Vec<_> = file
            .cases
            .iter()
            .map(|case| runtime.block_on(pipeline_test::run_case(&file, case, &contracts)))
            .collect();
        passed += results.iter().filter(|r| r.passed()).count();
        failed += results.iter().filter(|r| !r.passed()).count();
        print!(
            "{}",
            pipeline_test::Report {
                path,
                results: &results
            }
        );
    }
    print_diagnostics(&diagnostics);
    let not_loaded = if diagnostics.is_empty() {
        String::new()
    } else {
        format!(
            "; {} error(s), {unloadable} test file(s) not loaded",
            diagnostics.len()
        )
    };
    println!("{passed} passed, {failed} failed{not_loaded}");
    if !diagnostics.is_empty() {
        ExitCode::from(2)
    } else if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// A single-threaded async runtime for a command; `None` (said on stderr) when it cannot start.
fn current_thread_runtime() -> Option<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| eprintln!("error: cannot start the async runtime: {e}"))
        .ok()
}

fn topics_apply(args: TopicsApplyArgs) -> ExitCode {
    let fail = |e: String| {
        eprintln!("error: {e}");
        ExitCode::FAILURE
    };
    let mut config = match RuntimeConfig::load(&args.config, false) {
        Ok(c) => c,
        Err(d) => {
            print_diagnostics(&d);
            return ExitCode::FAILURE;
        }
    };
    if let Some(brokers) = args.brokers {
        config.kafka.brokers = brokers;
    }
    if config.kafka.brokers.trim().is_empty() {
        return fail("no Kafka brokers: give --brokers, KAFKA_BROKERS or [kafka] brokers".into());
    }
    let path = args
        .catalog
        .unwrap_or_else(|| config.paths.contracts.join("topics.toml"));
    let catalog = match crate::contracts::TopicCatalog::load(&path) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let settings = match config.kafka_settings() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let Some(runtime) = current_thread_runtime() else {
        return ExitCode::FAILURE;
    };
    let options = crate::topics::ApplyOptions {
        replication_factor: args.replication_factor,
        dry_run: args.dry_run,
    };
    let mut out = std::io::stdout();
    match runtime.block_on(crate::topics::apply(
        &settings, &catalog, &options, &mut out,
    )) {
        Err(e) => fail(e),
        Ok(s) => {
            let note = if args.dry_run {
                " (dry run: nothing changed)"
            } else if s.conflicts > 0 {
                " (nothing changed: resolve the conflicts first)"
            } else {
                ""
            };
            println!(
                "{}: {} created, {} updated, {} unchanged, {} conflicts{note}",
                path.display(),
                s.created,
                s.updated,
                s.unchanged,
                s.conflicts
            );
            if s.configs_unknown {
                eprintln!("warning: the broker did not describe the topics' settings; their retention was not compared");
            }
            if s.conflicts > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}

fn replay(args: ReplayArgs) -> ExitCode {
    match replay_options(&args) {
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
        Ok((settings, options)) => {
            let mut out = std::io::stdout();
            let result = crate::replay::replay(&settings, &options, &mut out);
            let dry = if options.dry_run {
                " (dry run: nothing sent, nothing committed)"
            } else {
                ""
            };
            let summary = match &result {
                Ok(s) | Err((_, s)) => s,
            };
            let already = if summary.already_sent > 0 {
                format!(", already sent {}", summary.already_sent)
            } else {
                String::new()
            };
            println!(
                "{}: read {}, matched {}, {} {}, skipped {} (where {}, time {}, no target {}), refused {}{already}{dry}",
                options.from,
                summary.read,
                summary.matched,
                if options.dry_run { "would send" } else { "sent" },
                summary.sent,
                summary.skipped_filter + summary.skipped_time + summary.skipped_no_target,
                summary.skipped_filter,
                summary.skipped_time,
                summary.skipped_no_target,
                summary.refused,
            );
            match result {
                Ok(_) => ExitCode::SUCCESS,
                Err((e, _)) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// `gridflow-replay.<from>.<8 hex>`: one group per dead-letter topic and selection (`--to`,
/// `--to-pipeline`, `--where`, `--since`, `--until` as written), so that running the same
/// command again resumes it, and another selection starts from the beginning.
fn default_replay_group(args: &ReplayArgs) -> String {
    let selection = format!(
        "{:?}|{:?}|{:?}|{:?}|{:?}",
        args.to, args.to_pipeline, args.filter, args.since, args.until
    );
    let digest = crate::config::pipeline::version_of(selection.as_bytes());
    format!("gridflow-replay.{}.{}", args.from, &digest[..8])
}

/// The Kafka settings and replay options `args` give.
fn replay_options(
    args: &ReplayArgs,
) -> Result<(crate::kafka::KafkaSettings, crate::replay::Options), String> {
    use crate::replay::{parse_time, Options, Target};
    let mut config = RuntimeConfig::load(&args.config, false).map_err(|d| {
        d.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    })?;
    if let Some(brokers) = &args.brokers {
        config.kafka.brokers = brokers.clone();
    }
    if config.kafka.brokers.trim().is_empty() {
        return Err("no Kafka brokers: give --brokers, KAFKA_BROKERS or [kafka] brokers".into());
    }
    let target = match (&args.to, &args.to_pipeline) {
        (Some(topic), _) => Target::Topic(topic.clone()),
        (None, None) => Target::SourceTopic,
        (None, Some(name)) => {
            let paths = pipeline_paths(&config.paths.pipelines)
                .map_err(|e| format!("cannot read {}: {e}", config.paths.pipelines.display()))?;
            let (files, _) = load_all(&paths, &interpolate::from_env);
            let file = files
                .iter()
                .find(|f| f.config.name == *name)
                .ok_or_else(|| {
                    format!(
                        "no valid pipeline named `{name}` in {}",
                        config.paths.pipelines.display()
                    )
                })?;
            if let Some(topic) = file.config.source.topics().first() {
                Target::Topic(topic.clone())
            } else if let Some(http) = file.config.source.http() {
                let base = match &args.http_url {
                    Some(url) => url.trim_end_matches('/').to_string(),
                    None => {
                        let mut addr = config.http.listen;
                        if addr.ip().is_unspecified() {
                            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                        }
                        format!("http://{addr}")
                    }
                };
                Target::Http(format!("{base}{}", http.path))
            } else {
                return Err(format!(
                    "pipeline `{name}` has a `{}` source: replay to a Kafka or HTTP pipeline, or give --to",
                    file.config.source.kind()
                ));
            }
        }
    };
    let filter = args
        .filter
        .as_deref()
        .map(crate::jmes::Expr::compile)
        .transpose()
        .map_err(|e| format!("--where: {e}"))?;
    Ok((
        config.kafka_settings()?,
        Options {
            group: args
                .group
                .clone()
                .unwrap_or_else(|| default_replay_group(args)),
            from: args.from.clone(),
            target,
            filter,
            since: args.since.as_deref().map(parse_time).transpose()?,
            until: args.until.as_deref().map(parse_time).transpose()?,
            rate: args.rate,
            dry_run: args.dry_run,
            timeout: std::time::Duration::from_secs(args.timeout),
        },
    ))
}

fn contracts_check(args: ValidateArgs) -> ExitCode {
    let config = match RuntimeConfig::load(&args.config, false) {
        Ok(c) => c,
        Err(d) => {
            print_diagnostics(&d);
            return ExitCode::FAILURE;
        }
    };
    let dir = &config.paths.contracts;
    let mut problems = Vec::new();
    let (contracts, errors) = Contracts::load(dir);
    problems.extend(errors.iter().map(ToString::to_string));
    for contract in contracts.all() {
        let Ok(examples) = std::fs::read_dir(contract.dir.join("examples")) else {
            problems.push(format!(
                "{}: no examples/ directory",
                contract.dir.display()
            ));
            continue;
        };
        let mut examples: Vec<PathBuf> = examples.flatten().map(|e| e.path()).collect();
        examples.sort();
        for example in examples
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
        {
            let document = std::fs::read(example)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    serde_json::from_slice::<serde_json::Value>(&b).map_err(|e| e.to_string())
                });
            match document {
                Err(e) => problems.push(format!("{}: not JSON: {e}", example.display())),
                Ok(document) => {
                    if let Err(violations) = contract.validate(&document) {
                        for v in violations {
                            problems.push(format!(
                                "{}: {} at `{}`: {}",
                                example.display(),
                                contract.reference,
                                v.pointer,
                                v.message
                            ));
                        }
                    }
                }
            }
        }
    }
    // Each new version stays compatible with the one before.
    for (old, new) in crate::contracts::consecutive_versions(&contracts) {
        for change in crate::contracts::breaking_changes(&old.schema, &new.schema) {
            problems.push(format!(
                "{}: {} is not backward compatible with {}: {change}",
                new.dir.join("schema.json").display(),
                new.reference,
                old.reference
            ));
        }
    }
    // The catalog.
    let catalog_path = dir.join("topics.toml");
    let mut topics: Vec<(String, String)> = Vec::new();
    match crate::contracts::TopicCatalog::load(&catalog_path) {
        Ok(catalog) => {
            // What `topics apply` would refuse (a bad retention, a topic twice).
            if let Err(e) = crate::topics::desired(&catalog) {
                problems.push(format!("{}: {e}", catalog_path.display()));
            }
            for t in catalog.topics {
                let at = format!("{} (topic `{}`)", catalog_path.display(), t.name);
                topics.push((t.name.clone(), at.clone()));
                if let Some(dlq) = &t.dead_letter {
                    topics.push((dlq.clone(), at.clone()));
                }
                if let Some(reference) = &t.contract {
                    if contracts.get(reference).is_none() {
                        problems.push(format!("{at}: unknown contract `{reference}`"));
                    }
                }
            }
        }
        Err(e) => problems.push(e),
    }
    // The pipelines.
    let pipelines_dir = args
        .paths
        .first()
        .cloned()
        .unwrap_or(config.paths.pipelines.clone());
    let paths = pipeline_paths(&pipelines_dir).unwrap_or_default();
    let (files, diagnostics) = load_all(&paths, &interpolate::from_env);
    problems.extend(diagnostics.iter().map(ToString::to_string));
    for file in &files {
        let at = file.path.display().to_string();
        for step in file
            .config
            .steps
            .iter()
            .flat_map(crate::steps::StepConfig::all)
        {
            if let crate::steps::StepConfig::Validate(v) = step {
                if contracts.get(&v.contract).is_none() {
                    problems.push(format!("{at}: unknown contract `{}`", v.contract));
                }
            }
        }
        for topic in Engine::topics_of(file, &config.paths.dead_letters) {
            topics.push((topic, at.clone()));
        }
    }
    for (topic, at) in topics {
        if !crate::contracts::conventional_topic(&topic) {
            problems.push(format!(
                "{at}: topic `{topic}` does not follow <domain>.<entity>.<event>.v<major>[.<env>] (dead letters: <topic>.dlq)"
            ));
        }
    }
    for p in &problems {
        eprintln!("error: {p}");
    }
    if problems.is_empty() {
        println!("{} contract(s) OK.", contracts.all().count());
        ExitCode::SUCCESS
    } else {
        eprintln!("{} problem(s).", problems.len());
        ExitCode::FAILURE
    }
}

fn io_diagnostic(path: &Path, e: std::io::Error) -> Diagnostic {
    Diagnostic {
        path: path.to_path_buf(),
        line: 1,
        column: 1,
        message: format!("cannot read: {e}"),
        hint: None,
    }
}
