//! `gridflow run`: the server process.
//!
//! It starts the Kafka clients (or the embedded development broker), the engine and its
//! reloads, the ingress and admin listeners; it serves until SIGTERM or SIGINT; then it stops
//! in order, draining what is in flight:
//!
//! 1. not ready any more (`/health/ready`), no more reloads;
//! 2. the ingress stops accepting and finishes the requests it has (their pipelines still run);
//! 3. the pipelines drain and stop;
//! 4. the admin listener stops, then the watchers; traces are flushed; the embedded broker
//!    stops last (its clients are gone).
//!
//! A second SIGTERM/SIGINT does not wait for the drain: the process exits at once (code 130).
//! SIGHUP reloads the pipelines, from the start of the process on.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::config::pipeline::{load_all, pipeline_paths};
use crate::config::{interpolate, RuntimeConfig};
use crate::contracts::Contracts;
use crate::engine::reload::{self, Action, ReloadHandle, Reloader};
use crate::engine::{Engine, EngineContext};
use crate::kafka::{EmbeddedBroker, KafkaSettings, Producers};
use crate::listener::{self, IngressLimits};
use crate::sources::HttpRoutes;
use crate::telemetry::Tracing;

/// What `gridflow run` is given: the runtime configuration file and the command line's
/// overrides of its values.
#[derive(Debug, Clone)]
pub struct Options {
    /// Runtime configuration file; when it is the default `gridflow.toml`, a missing file
    /// means the defaults.
    pub config: PathBuf,
    /// Pipelines directory (overrides `[paths] pipelines`).
    pub pipelines: Option<PathBuf>,
    /// HTTP ingress address (overrides `[http] listen`).
    pub http_addr: Option<SocketAddr>,
    /// Admin address (overrides `[admin] listen`).
    pub admin_addr: Option<SocketAddr>,
    /// Kafka bootstrap servers (overrides `[kafka] brokers`); empty: the embedded
    /// development broker.
    pub brokers: Option<String>,
}

/// Runs the server on a multi-thread runtime until a signal stops it. Success once stopped
/// cleanly; failure (logged) when it could not start.
pub fn run(options: Options) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "Gridflow stopped.");
            ExitCode::FAILURE
        }
    }
}

/// Starts everything, serves until SIGTERM or SIGINT, and stops gracefully.
pub async fn serve(options: Options) -> anyhow::Result<()> {
    // Registered first: a SIGHUP during start-up must reload, not end the process.
    let hangup = hangup_signal();
    let config = load_config(&options)?;
    let server = Server::start(config, &options.config, hangup).await?;

    wait_for_signal().await;
    tracing::info!("Shutting down; a second signal forces the exit.");
    // A second SIGTERM/SIGINT does not wait for the drain: what is in flight is not settled
    // (Kafka offsets not committed: consumed again after the restart; HTTP callers get no
    // answer and send again).
    tokio::spawn(async {
        wait_for_signal().await;
        tracing::error!("Second signal: exiting now, without waiting for in-flight messages.");
        std::process::exit(130);
    });
    server.stop().await;
    tracing::info!("Gridflow stopped cleanly.");
    Ok(())
}

/// The runtime configuration with the command line's overrides.
fn load_config(options: &Options) -> anyhow::Result<RuntimeConfig> {
    let explicit = options.config != Path::new("gridflow.toml");
    let mut config = RuntimeConfig::load(&options.config, explicit).map_err(|diagnostics| {
        for d in &diagnostics {
            eprintln!("{d}");
        }
        anyhow::anyhow!("invalid runtime configuration {}", options.config.display())
    })?;
    if let Some(dir) = &options.pipelines {
        config.paths.pipelines = dir.clone();
    }
    if let Some(addr) = options.http_addr {
        config.http.listen = addr;
    }
    if let Some(addr) = options.admin_addr {
        config.admin.listen = addr;
    }
    if let Some(brokers) = &options.brokers {
        config.kafka.brokers = brokers.clone();
    }
    Ok(config)
}

/// The running server: what [`Server::stop`] stops, in order.
struct Server {
    /// Its `loaded` flag is `/health/ready`.
    admin_state: AdminState,
    reloads: Reloads,
    stop_ingress: CancellationToken,
    http_server: JoinHandle<()>,
    /// Stops the admin listener and the watchers.
    shutdown: CancellationToken,
    admin_server: JoinHandle<()>,
    broker_watch: JoinHandle<()>,
    kafka_watches: KafkaWatches,
    traces: Option<Tracing>,
    /// Lives as long as the server: the whole run.
    embedded: Option<EmbeddedBroker>,
}

impl Server {
    /// Starts the Kafka side, binds the listeners, starts the engine and loads the pipelines,
    /// then serves the ingress and admin listeners.
    async fn start(
        mut config: RuntimeConfig,
        config_file: &Path,
        hangup: Hangup,
    ) -> anyhow::Result<Server> {
        let metrics = install_metrics();
        let (embedded, kafka) = start_kafka(&mut config)?;

        let shutdown = CancellationToken::new();
        let routes = Arc::new(HttpRoutes::default());
        let mut admin_state = admin_state(&config, metrics)?;
        let broker_watch =
            admin_state.watch_broker(kafka.clone(), Duration::from_secs(5), shutdown.clone());
        let (http, admin) = bind_listeners(&config, &admin_state).await?;

        let producers = kafka.producers()?;
        let kafka_watches = KafkaWatches::spawn(&kafka, &producers, &shutdown);
        let (contracts, contract_errors) = Contracts::load(&config.paths.contracts);
        for e in &contract_errors {
            tracing::error!(path = %e.path.display(), error = %e.message, "Contract rejected.");
        }
        let traces = config.traces.start().map_err(|e| anyhow::anyhow!(e))?;
        if traces.is_some() {
            tracing::info!(endpoint = %config.traces.otlp_endpoint, "Traces exported over OTLP.");
        }
        let engine = Engine::new(EngineContext {
            tracer: traces.as_ref().map(|t| t.tracer()),
            contracts: Arc::new(contracts),
            kafka: kafka.clone(),
            producers: producers.clone(),
            routes: Arc::clone(&routes),
            dead_letters_dir: config.paths.dead_letters.clone(),
            limits: config.engine.clone(),
        });
        let (reloads, started, failed) =
            Reloads::start(engine, &config, config_file, hangup).await?;
        admin_state.reload = Some(reloads.handle.clone());
        admin_state.routes = Some(Arc::clone(&routes));
        admin_state.producers = Some(producers);
        admin_state.loaded.store(true, Ordering::SeqCst);

        let stop_ingress = CancellationToken::new();
        let http_server = serve_ingress(http, &config, &routes, &stop_ingress)?;
        // The admin listener is held to the ingress' header, idle and connection limits: a
        // client of the port open to probes cannot hold a connection (nor the stop) for ever.
        let admin_server = tokio::spawn(listener::serve_admin(
            admin,
            admin::router(admin_state.clone()),
            IngressLimits::from_config(&config.http),
            shutdown.clone(),
            Duration::from_millis(config.engine.drain_timeout_ms),
        ));
        tracing::info!(pipelines = started, failed, "Gridflow started.");
        Ok(Server {
            admin_state,
            reloads,
            stop_ingress,
            http_server,
            shutdown,
            admin_server,
            broker_watch,
            kafka_watches,
            traces,
            embedded,
        })
    }

    /// Not ready any more; no more reloads; the ingress stops accepting and finishes the
    /// requests it has (their pipelines still run); then the pipelines drain; then the admin
    /// listener and the watchers stop.
    async fn stop(self) {
        self.admin_state.loaded.store(false, Ordering::SeqCst);
        self.reloads.hangups.abort();
        self.reloads.stop.cancel();
        self.stop_ingress.cancel();
        let _ = self.http_server.await;
        match self.reloads.task.await {
            Ok(mut engine) => {
                engine.shutdown().await;
                // Clients first, then the embedded broker they talk to.
                drop(engine);
            }
            Err(e) => {
                tracing::error!(error = %e, "The reload task failed; pipelines stop with the process.")
            }
        }
        self.shutdown.cancel();
        let _ = self.admin_server.await;
        let _ = self.broker_watch.await;
        self.kafka_watches.join().await;
        if let Some(traces) = self.traces {
            let _ = tokio::task::spawn_blocking(move || traces.shutdown()).await;
        }
        drop(self.reloads.watcher);
        drop(self.embedded);
    }
}

/// The Prometheus recorder, or none (logged) when it cannot be installed.
fn install_metrics() -> Option<PrometheusHandle> {
    match crate::metrics::install() {
        Ok(handle) => Some(handle),
        Err(e) => {
            tracing::warn!(error = %e, "Metrics disabled.");
            None
        }
    }
}

/// The admin listener's state before the pipelines are loaded: the metrics and the guard of
/// its mutating requests (`[admin] token_file` or `GRIDFLOW_ADMIN_TOKEN`).
fn admin_state(
    config: &RuntimeConfig,
    metrics: Option<PrometheusHandle>,
) -> anyhow::Result<AdminState> {
    let guard = admin::AdminGuard::new(config.admin.token_file.as_deref(), |name| {
        std::env::var(name).ok()
    })
    .map_err(|e| anyhow::anyhow!(e))?;
    Ok(AdminState {
        metrics,
        guard: Arc::new(guard),
        ..AdminState::default()
    })
}

/// The embedded development broker when no brokers are configured (with the topics of the
/// pipelines), and the settings every Kafka client uses.
fn start_kafka(
    config: &mut RuntimeConfig,
) -> anyhow::Result<(Option<EmbeddedBroker>, KafkaSettings)> {
    let mut embedded = None;
    if config.kafka.brokers.trim().is_empty() {
        let broker = EmbeddedBroker::start()?;
        config.kafka.brokers = broker.bootstrap_servers();
        tracing::warn!(brokers = %config.kafka.brokers, "No Kafka brokers configured: using the embedded mock broker. It is for development only: it keeps nothing across a restart, and at most 5 MiB per partition (older records are dropped).");
        embedded = Some(broker);
    }
    let kafka = config.kafka_settings().map_err(|e| anyhow::anyhow!(e))?;

    let paths = pipeline_paths(&config.paths.pipelines).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the pipelines directory {}: {e}",
            config.paths.pipelines.display()
        )
    })?;
    // Errors are reported by the first reload; here only the topics are wanted.
    let (files, _) = load_all(&paths, &interpolate::from_env);

    if let Some(broker) = &embedded {
        let mut topics: Vec<String> = files
            .iter()
            .flat_map(|file| Engine::topics_of(file, &config.paths.dead_letters))
            .collect();
        topics.sort();
        topics.dedup();
        for topic in topics {
            broker.create_topic(&topic, i32::from(config.kafka.embedded_partitions.max(1)))?;
        }
    }
    Ok((embedded, kafka))
}

/// Binds the ingress and the admin listener.
async fn bind_listeners(
    config: &RuntimeConfig,
    admin_state: &AdminState,
) -> anyhow::Result<(TcpListener, TcpListener)> {
    let http = TcpListener::bind(config.http.listen).await?;
    tracing::info!(addr = %http.local_addr()?, "HTTP listener started.");
    let admin = TcpListener::bind(config.admin.listen).await?;
    tracing::info!(addr = %admin.local_addr()?, "Admin listener started.");
    if !admin_state.guard.has_token() && !admin.local_addr()?.ip().is_loopback() {
        tracing::warn!(addr = %admin.local_addr()?, "No admin token ([admin] token_file or GRIDFLOW_ADMIN_TOKEN): POST /admin/reload and other mutating admin requests are answered only to loopback clients.");
    }
    Ok((http, admin))
}

/// Serves the ingress listener (with TLS when `[http.tls]` says so) until `stop`.
fn serve_ingress(
    http: TcpListener,
    config: &RuntimeConfig,
    routes: &Arc<HttpRoutes>,
    stop: &CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    let tls = match &config.http.tls {
        Some(tls) => {
            let (acceptor, access) = crate::tls::acceptor_with_access(tls)
                .map_err(|e| anyhow::anyhow!("[http.tls]: {e}"))?;
            // The client CA and the subjects file are re-read: a revoked partner is refused
            // on its next request, without a restart.
            tokio::spawn(
                Arc::clone(&access).watch(crate::tls::ACCESS_CHECK_INTERVAL, stop.clone()),
            );
            Some(listener::Tls { acceptor, access })
        }
        None => None,
    };
    Ok(tokio::spawn(listener::serve(
        http,
        tls,
        crate::sources::route::router(Arc::clone(routes)),
        IngressLimits::from_config(&config.http),
        stop.clone(),
        Duration::from_millis(config.engine.drain_timeout_ms),
    )))
}

/// The engine's reload task, what triggers it (the pipelines directory watched, SIGHUP) and
/// how to stop them.
struct Reloads {
    handle: ReloadHandle,
    /// Returns the engine once stopped.
    task: JoinHandle<Engine>,
    stop: CancellationToken,
    hangups: JoinHandle<()>,
    watcher: Option<notify::RecommendedWatcher>,
}

impl Reloads {
    /// Starts the reload task and loads the pipelines once ("start"). Returns the pipelines
    /// started and failed.
    async fn start(
        engine: Engine,
        config: &RuntimeConfig,
        config_file: &Path,
        hangup: Hangup,
    ) -> anyhow::Result<(Reloads, usize, usize)> {
        let config_file = config_file.exists().then(|| config_file.to_path_buf());
        let reloader = Reloader::new(engine, config.paths.pipelines.clone(), config_file.clone());
        let stop = CancellationToken::new();
        let (handle, task) = reload::spawn(reloader, stop.clone());
        // Watch before the first load, so that no edit falls between the two.
        let watcher = match reload::watch(
            &config.paths.pipelines,
            config_file.as_deref(),
            handle.clone(),
            Duration::from_millis(200),
        ) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "Pipelines directory not watched; reload with SIGHUP or POST /admin/reload.");
                None
            }
        };
        let hangups = tokio::spawn(reload_on_sighup(hangup, handle.clone()));
        let first = handle
            .reload("start")
            .await
            .ok_or_else(|| anyhow::anyhow!("the reload task stopped during start-up"))?;
        let count = |action: Action| {
            first
                .pipelines
                .iter()
                .filter(|p| p.action == action)
                .count()
        };
        let (started, failed) = (count(Action::Started), count(Action::Failed));
        let reloads = Reloads {
            handle,
            task,
            stop,
            hangups,
            watcher,
        };
        Ok((reloads, started, failed))
    }
}

/// The tasks that keep the Kafka clients well while the server runs.
struct KafkaWatches {
    /// Re-reads the secret files every second.
    secrets: JoinHandle<()>,
    /// Hands rotated SASL credentials to the shared producers.
    credentials: JoinHandle<()>,
    /// Replaces a producer that hit a fatal error.
    fatal: JoinHandle<()>,
}

impl KafkaWatches {
    /// Spawns them, until `shutdown`.
    fn spawn(
        kafka: &KafkaSettings,
        producers: &Producers,
        shutdown: &CancellationToken,
    ) -> KafkaWatches {
        // Secret files are re-read every second; rotated SASL credentials reach the shared
        // producers here and every Kafka source's consumer in the source.
        let secrets = tokio::spawn(
            kafka
                .secrets
                .clone()
                .watch(Duration::from_secs(1), shutdown.clone()),
        );
        let credentials = tokio::spawn(apply_new_credentials(
            kafka.clone(),
            producers.distinct(),
            shutdown.clone(),
        ));
        // A producer that hit a fatal error is replaced on its next use; this check replaces
        // an idle one too, so that it is ready (and its state true) before the next record.
        let fatal = {
            let (producers, stop) = (producers.clone(), shutdown.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                    producers.recover_if_fatal();
                }
            })
        };
        KafkaWatches {
            secrets,
            credentials,
            fatal,
        }
    }

    /// Waits for them to end (after `shutdown`).
    async fn join(self) {
        let _ = self.secrets.await;
        let _ = self.credentials.await;
        let _ = self.fatal.await;
    }
}

/// Sets the SASL credentials of `producers` each time the secret files change.
async fn apply_new_credentials(
    kafka: KafkaSettings,
    producers: Vec<crate::kafka::Producer>,
    stop: CancellationToken,
) {
    let Some(mut changes) = kafka.secrets.subscribe() else {
        return;
    };
    loop {
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = stop.cancelled() => return,
        }
        if let Some((user, password)) = kafka.sasl_credentials() {
            use rdkafka::producer::Producer;
            for producer in &producers {
                if let Err(e) = crate::secrets::set_sasl_credentials(
                    producer.current().client(),
                    &user,
                    &password,
                ) {
                    tracing::error!(error = %e, "New SASL credentials not applied to the producer.");
                }
            }
        }
    }
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

#[cfg(not(unix))]
fn hangup_signal() -> Hangup {}

/// Reloads the pipelines on every SIGHUP.
async fn reload_on_sighup(hangup: Hangup, reload: ReloadHandle) {
    #[cfg(unix)]
    {
        let Some(mut hangup) = hangup else {
            return;
        };
        while hangup.recv().await.is_some() {
            reload.trigger("SIGHUP");
        }
    }
    #[cfg(not(unix))]
    drop((hangup, reload));
}

/// Returns on SIGTERM or SIGINT (Ctrl-C).
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(config: PathBuf) -> Options {
        Options {
            config,
            pipelines: None,
            http_addr: None,
            admin_addr: None,
            brokers: None,
        }
    }

    #[test]
    fn the_command_line_overrides_the_runtime_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("g.toml");
        std::fs::write(
            &file,
            "[kafka]\nbrokers = 'file:9092'\n[http]\nlisten = '127.0.0.1:8081'\n[paths]\npipelines = 'from-file'\n",
        )
        .unwrap();
        let kept = load_config(&options(file.clone())).unwrap();
        assert_eq!(kept.kafka.brokers, "file:9092");
        assert_eq!(kept.http.listen.port(), 8081);
        assert_eq!(kept.paths.pipelines, Path::new("from-file"));

        let overridden = load_config(&Options {
            pipelines: Some("from-flag".into()),
            http_addr: Some("127.0.0.1:1".parse().unwrap()),
            admin_addr: Some("127.0.0.1:2".parse().unwrap()),
            brokers: Some(String::new()),
            ..options(file)
        })
        .unwrap();
        assert_eq!(overridden.paths.pipelines, Path::new("from-flag"));
        assert_eq!(overridden.http.listen.port(), 1);
        assert_eq!(overridden.admin.listen.port(), 2);
        assert_eq!(overridden.kafka.brokers, "", "empty: the embedded broker");
    }

    #[test]
    fn a_runtime_configuration_named_explicitly_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        let e = load_config(&options(missing)).unwrap_err();
        assert!(
            e.to_string().starts_with("invalid runtime configuration"),
            "{e}"
        );
    }
}
