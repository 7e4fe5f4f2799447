//! The buildable application: bind, open the store, wire the router, the sweepers and the
//! in-process video workers.
//!
//! `Application::build` does everything that can fail at start-up and returns an application
//! bound to its port (tests bind port 0 and ask [`Application::port`]); `run_until_stopped`
//! serves until the token is cancelled, then stops the sweepers and the workers (which hand
//! their leases back) and only then closes the store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use store::{Clock, LedgerStore};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use engine::run::{Engine, EngineConfig};
use engine::sandbox::bwrap::Bubblewrap;
use engine::sandbox::local::LocalPython;
use engine::sandbox::{CodeExecutor, ExecLimits};
use jobs::worker::{spawn_stuck_sweeper, spawn_workers};
use jobs::JobService;

use crate::config::{resolve_listen, EdgeSettings, RendererSettings, SandboxSettings, Settings};
use crate::database::OpenStore;
use server::edge::tls::TlsFiles;
use server::edge::EdgeConfig;

pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    router: axum::Router,
    /// Connection limits (the cap fitted to the open-file limit) and TLS.
    edge: EdgeConfig,
    store: OpenStore,
    engine: Arc<Engine>,
    /// What in-process workers render video jobs with (`CREDITGRAPH_RENDERER_*`).
    renderer: Arc<dyn jobs::render::Renderer>,
    sweep_interval: Duration,
    shutdown_grace: Duration,
    /// This instance's webhook dispatcher, started with the server.
    webhooks: webhooks::dispatcher::Dispatcher,
}

impl Application {
    /// Checks the auth policy, binds the listener, opens the store. Refuses to listen on a
    /// non-loopback address without tokens: an open ledger on a network is never a default; nor
    /// with `--sandbox=none`, which is no boundary for model-written code.
    pub async fn build(settings: Settings, clock: Arc<dyn Clock>) -> anyhow::Result<Application> {
        Application::build_with(settings, clock, None).await
    }

    /// [`Application::build`] with another `code_execute` sandbox (a remote one, or a test's
    /// fault injector) instead of the local Python one.
    pub async fn build_with(
        settings: Settings,
        clock: Arc<dyn Clock>,
        executor: Option<Arc<dyn engine::sandbox::CodeExecutor>>,
    ) -> anyhow::Result<Application> {
        let addresses = resolve_listen(&settings.listen).await?;
        let loopback = addresses.iter().all(|address| address.ip().is_loopback());
        if settings.api.tokens.is_empty() {
            if !loopback {
                bail!(
                    "refusing to listen on {} without tokens: set CREDITGRAPH_TOKENS (or --tokens) to \
                     role:token pairs such as admin:SECRET,service:SECRET, or listen on a loopback address",
                    settings.listen
                );
            }
            tracing::warn!(listen = %settings.listen, "no tokens configured: authentication is OFF (loopback only)");
        }
        if settings.runs.sandbox == SandboxSettings::None && executor.is_none() {
            if !loopback {
                bail!(
                    "refusing to listen on {} with --sandbox=none: model-written code would run unisolated; use \
                     --sandbox=bwrap (the default), or listen on a loopback address for development",
                    settings.listen
                );
            }
            tracing::warn!("--sandbox=none: code_execute runs model-written code WITHOUT isolation (development only)");
        }
        let edge = build_edge(&settings.edge)?;
        if edge.tls.is_none() && !loopback && !settings.api.tokens.is_empty() {
            tracing::warn!(
                listen = %settings.listen,
                "serving plain HTTP beyond loopback: bearer tokens cross the network in the clear unless a TLS proxy \
                 terminates in front (else use --tls-cert and --tls-key)"
            );
        }
        if settings.api.test_clock.is_some() {
            if !loopback {
                bail!(
                    "refusing to listen on {} with --test-clock: anyone with an admin token could move the \
                     ledger's time; listen on a loopback address",
                    settings.listen
                );
            }
            tracing::warn!("--test-clock: POST /v1/test-clock/advance moves this server's time (tests and demos only)");
        }
        let renderer_settings = RendererSettings::from_env()?;
        let renderer = renderer_settings.build(settings.runs.jobs.artifact_bytes_max)?;
        let listener =
            TcpListener::bind(&addresses[..]).await.with_context(|| format!("cannot listen on {}", settings.listen))?;
        let local_addr = listener.local_addr().context("cannot read the bound address")?;
        let store = OpenStore::open(&settings.database, Arc::clone(&clock)).await?;
        let engine = build_engine(&settings, &store, Arc::clone(&clock), executor)?;
        let worker_api = settings.api.worker_token.is_some();
        if settings.api.webhooks_reach == webhooks::destination::Reach::AllowPrivate {
            tracing::warn!("--webhooks-allow-private: webhook URLs may reach loopback and private addresses");
        }
        let webhooks = build_dispatcher(&settings, &store, Arc::clone(&clock), &engine.config().instance_id);
        let mut settings = settings;
        // The LLM gateway forwards to the same OpenAI-compatible provider as the run engine.
        settings.api.gateway_upstream = settings.runs.llm.as_ref().map(|llm| server::GatewayUpstream {
            base_url: llm.base_url.clone(),
            api_key: llm.api_key.clone(),
            timeout_seconds: llm.timeout_seconds,
        });
        let router = server::router_with_engine(store.ledger(), clock, settings.api, Some(Arc::clone(&engine)));
        tracing::info!(
            workers_in_process = settings.runs.jobs.workers_in_process,
            renderer = renderer_settings.describe(),
            worker_api,
            "video jobs"
        );
        tracing::info!(
            address = %local_addr,
            tls = edge.tls.is_some(),
            database = %settings.database.describe(),
            backend = store.ledger().backend(),
            "creditgraph listening"
        );
        Ok(Application {
            listener,
            local_addr,
            router,
            edge,
            store,
            engine,
            renderer,
            sweep_interval: settings.sweep_interval,
            shutdown_grace: settings.shutdown_grace,
            webhooks,
        })
    }

    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The store the application serves (tests use it to look behind the API).
    pub fn store(&self) -> Arc<dyn LedgerStore> {
        self.store.ledger()
    }

    /// The run engine (tests use it to look behind the API).
    pub fn engine(&self) -> Arc<Engine> {
        Arc::clone(&self.engine)
    }

    /// Serves until `shutdown` is cancelled (while it serves, an upkeep task keeps this instance's
    /// lease, recovers the runs of dead instances and extends long runs' holds): stops accepting,
    /// cancels runs in flight (each
    /// releases its hold) and ends their streams, stops the in-process video workers (each hands
    /// its lease back, so its job is queued again without a refund), lets requests finish (for at
    /// most the grace period), stops the sweepers, then closes the store.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let Application {
            listener,
            router,
            edge,
            store,
            engine,
            renderer,
            sweep_interval,
            shutdown_grace,
            webhooks,
            ..
        } = self;
        let tls_reloads =
            edge.tls.as_ref().map(|files| reload_tls_on_hangup(Arc::clone(files), shutdown.child_token()));
        let job_tasks = start_job_tasks(&engine, renderer, &shutdown.child_token());
        // Instance lease, crash recovery of dead instances' runs, hold extension of live ones.
        let upkeep = engine.start_background();
        let runs_stopped = {
            let engine = Arc::clone(&engine);
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                if !engine.shutdown(shutdown_grace).await {
                    tracing::warn!(grace = ?shutdown_grace, "runs still going after the grace period");
                }
            })
        };
        let sweeper = server::spawn_sweeper(store.ledger(), sweep_interval, shutdown.child_token());
        // Stopped at once on shutdown: a delivery cut short is sent again once its claim ends.
        let dispatcher = webhooks.spawn(shutdown.child_token());
        let serving = server::edge::serve(listener, router, edge, shutdown.child_token());
        let grace_over = async {
            shutdown.cancelled().await;
            tokio::time::sleep(shutdown_grace).await;
        };
        let served = tokio::select! {
            served = serving => served,
            () = grace_over => {
                tracing::warn!(grace = ?shutdown_grace, "requests still in flight after the grace period; dropping them");
                Ok(())
            }
        };
        shutdown.cancel();
        if runs_stopped.await.is_err() {
            tracing::error!("the run shutdown task ended abnormally");
        }
        // Runs have ended: the upkeep task drops this instance's lease and stops.
        let upkeep_abort = upkeep.abort_handle();
        if tokio::time::timeout(shutdown_grace, upkeep).await.is_err() {
            tracing::warn!("the upkeep task did not stop in time; its lease will lapse");
            upkeep_abort.abort();
        }
        if sweeper.await.is_err() {
            tracing::error!("the sweeper task ended abnormally");
        }
        if dispatcher.await.is_err() {
            tracing::error!("the webhook dispatcher ended abnormally");
        }
        stop_job_tasks(job_tasks).await;
        if let Some(reloads) = tls_reloads {
            reloads.abort();
        }
        store.close().await;
        tracing::info!("stopped");
        served.context("the HTTP server failed")
    }
}

/// The edge from its settings: raises the open-file limit (as far as the hard limit allows)
/// and fits the connection cap under it, and loads the TLS pair (a server never starts with a
/// certificate it cannot serve).
fn build_edge(settings: &EdgeSettings) -> anyhow::Result<EdgeConfig> {
    let open_files_soft = match server::edge::raise_open_files_limit() {
        Ok(files) => {
            tracing::info!(
                before = files.soft_before,
                now = files.soft,
                hard = files.hard,
                "open-file limit (RLIMIT_NOFILE)"
            );
            files.soft
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read or raise the open-file limit; assuming 1024");
            1024
        }
    };
    let connections_max = server::edge::connections_max_within(settings.connections_max, open_files_soft);
    if connections_max < settings.connections_max {
        tracing::warn!(
            configured = settings.connections_max,
            connections_max,
            open_files_soft,
            "the connection cap is lowered to fit the open-file limit"
        );
    }
    let tls = match &settings.tls {
        Some(paths) => Some(TlsFiles::load(&paths.cert, &paths.key).map_err(|error| anyhow::anyhow!("TLS: {error}"))?),
        None => None,
    };
    Ok(EdgeConfig { limits: settings.limits, connections_max, tls })
}

/// Reloads the TLS certificate and key from their files on every SIGHUP, as nginx does; a
/// failed reload keeps the pair in use and says why.
fn reload_tls_on_hangup(files: Arc<TlsFiles>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    #[cfg(unix)]
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .inspect_err(|error| tracing::warn!(%error, "cannot listen for SIGHUP: the TLS certificate will not reload"))
        .ok();
    tokio::spawn(async move {
        #[cfg(unix)]
        if let Some(mut hangups) = hangups {
            loop {
                tokio::select! {
                    received = hangups.recv() => {
                        if received.is_none() {
                            break;
                        }
                    }
                    () = stop.cancelled() => break,
                }
                match files.reload() {
                    Ok(()) => tracing::info!(cert = %files.cert_path().display(), "TLS certificate reloaded"),
                    Err(error) => {
                        tracing::error!(%error, "TLS certificate NOT reloaded; the previous one stays in use")
                    }
                }
            }
        }
        #[cfg(not(unix))]
        stop.cancelled().await;
    })
}

/// Longest wait for the in-process workers and the stuck sweep to stop. A worker stops at once
/// (its render is dropped) and hands its lease back with one store call, retried briefly.
const JOB_TASKS_STOP_SECONDS_MAX: u64 = 30;

/// The in-process video workers (`<instance>-w<N>`) and the periodic stuck-job sweep.
fn start_job_tasks(
    engine: &Engine,
    renderer: Arc<dyn jobs::render::Renderer>,
    stop: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let Some(jobs) = engine.jobs() else { return Vec::new() };
    let config = jobs.config();
    let mut tasks =
        spawn_workers(jobs, renderer, &engine.config().instance_id, config.workers_in_process, stop.clone());
    let interval = Duration::from_secs(config.stuck_sweep_interval_seconds.max(1));
    tasks.push(spawn_stuck_sweeper(Arc::clone(jobs), interval, stop.clone()));
    tasks
}

/// Waits (bounded) for the job tasks to stop; the store must still be open while they do.
async fn stop_job_tasks(tasks: Vec<tokio::task::JoinHandle<()>>) {
    let aborts: Vec<_> = tasks.iter().map(tokio::task::JoinHandle::abort_handle).collect();
    let all = async {
        for task in tasks {
            if task.await.is_err() {
                tracing::error!("a video worker or the stuck sweep ended abnormally");
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(JOB_TASKS_STOP_SECONDS_MAX), all).await.is_err() {
        tracing::warn!("video workers still busy after {JOB_TASKS_STOP_SECONDS_MAX} s; stopping them");
        aborts.iter().for_each(tokio::task::AbortHandle::abort);
    }
}

/// The run engine over the open store, with the configured provider and sandbox.
fn build_engine(
    settings: &Settings,
    store: &OpenStore,
    clock: Arc<dyn Clock>,
    executor: Option<Arc<dyn engine::sandbox::CodeExecutor>>,
) -> anyhow::Result<Arc<Engine>> {
    let runs = &settings.runs;
    let provider: Arc<dyn engine::provider::Provider> = match &runs.llm {
        Some(config) => Arc::new(
            engine::provider::openai::OpenAiProvider::new(config.clone())
                .map_err(|error| anyhow::anyhow!("LLM provider: {error}"))?,
        ),
        None => {
            tracing::warn!("CREDITGRAPH_LLM_BASE_URL is not set: /v1/solve is off (estimates still work)");
            Arc::new(engine::run::NoProvider)
        }
    };
    let executor = match executor {
        Some(executor) => executor,
        None => build_sandbox(&runs.sandbox),
    };
    let config = EngineConfig {
        hold_ttl_seconds: runs.hold_ttl_seconds,
        instance_lease_seconds: runs.instance_lease_seconds,
        cancel_on_disconnect: runs.cancel_on_disconnect,
        run_events_retention_seconds: runs.run_events_retention_seconds,
        run_events_flush_ms: runs.run_events_flush_ms,
        instance_renew_seconds: (runs.instance_lease_seconds / 3).max(1),
        recovery_interval_seconds: (runs.instance_lease_seconds / 3).max(1),
        runs_active_max: runs.runs_active_max,
        solve_enabled: runs.llm.is_some(),
        coalesce: runs.coalesce,
        ..EngineConfig::default()
    };
    tracing::info!(catalog = runs.catalog.origin(), version = runs.catalog.version(), "pricing catalog loaded");
    let jobs = JobService::new(store.jobs(), store.runs(), Arc::clone(&clock), runs.jobs.clone());
    Ok(Engine::with_jobs(
        config,
        store.ledger(),
        store.runs(),
        provider,
        executor,
        Arc::new(runs.catalog.clone()),
        clock,
        Some(jobs),
    ))
}

/// The configured `code_execute` sandbox. Never fails start-up: a sandbox that does not work
/// here is logged loudly and replaced by one that fails every call closed (`sandbox_unavailable`),
/// so the ledger and estimates keep working and code never runs unisolated.
fn build_sandbox(settings: &SandboxSettings) -> Arc<dyn CodeExecutor> {
    match settings {
        SandboxSettings::Bubblewrap(bubblewrap) => match Bubblewrap::detect(ExecLimits::default(), bubblewrap) {
            Ok(sandbox) => {
                tracing::info!(
                    python = %sandbox.python().display(),
                    runs_as_nobody = sandbox.drops_root(),
                    "code_execute sandbox: bubblewrap"
                );
                Arc::new(sandbox)
            }
            Err(error) => {
                tracing::warn!(
                    %error,
                    "code_execute sandbox UNAVAILABLE: every code_execute call will fail with sandbox_unavailable \
                     (install bubblewrap and util-linux, check --sandbox-python)"
                );
                Arc::new(engine::sandbox::Unavailable { reason: error.detail })
            }
        },
        SandboxSettings::None => match LocalPython::detect(ExecLimits::default()) {
            Ok(python) => Arc::new(python),
            Err(error) => {
                tracing::warn!(%error, "no Python sandbox: code_execute calls will answer a tool error");
                Arc::new(engine::run::NoExecutor)
            }
        },
    }
}

/// The webhook dispatcher of this instance: claims as the instance, renders each event exactly
/// as `GET /v1/events` lists it.
fn build_dispatcher(
    settings: &Settings,
    store: &OpenStore,
    clock: Arc<dyn Clock>,
    instance_id: &str,
) -> webhooks::dispatcher::Dispatcher {
    let mut config = webhooks::dispatcher::DispatcherConfig::new(instance_id, settings.api.webhooks_reach);
    config.poll_interval = settings.webhooks.poll_interval;
    config.retry_delay_initial = settings.webhooks.retry_delay_initial;
    let render: webhooks::dispatcher::RenderEvent = Arc::new(server::webhook_body);
    webhooks::dispatcher::Dispatcher::new(store.ledger(), clock, render, config)
}
