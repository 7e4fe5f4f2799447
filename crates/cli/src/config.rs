//! Command line and environment, parsed once into typed settings.
//!
//! Every flag that configures data access or the listener also reads a `CREDITGRAPH_*`
//! environment variable, so a service manager can configure the process without arguments.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::builder::TypedValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};
use engine::sandbox::bwrap::{BubblewrapSettings, PYTHON_DEFAULT};
use pricing::catalog::{CatalogError, CATALOG_BYTES_MAX};
use pricing::Catalog;
use server::{ApiConfig, RateLimits, RateQuota, Role, RATE_LIMIT_ACCOUNTS_MAX_DEFAULT};
use store_sqlite::Synchronous;

#[derive(Debug, Parser)]
#[command(name = "creditgraph", version, about = "Prepaid credits ledger: HTTP service and operator commands")]
pub struct Cli {
    #[command(subcommand)]
    pub command: CommandLine,
    /// How log lines are written to stderr: `text` for people, `json` (one object per line, the
    /// request's span fields included) for a log pipeline.
    #[arg(long, global = true, env = "CREDITGRAPH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// See [`Cli::log_format`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum CommandLine {
    /// Run the HTTP API (and the expiry sweeper) until SIGINT or SIGTERM.
    Serve(Box<ServeArgs>),
    /// Apply the embedded migrations and exit.
    Migrate(DatabaseArgs),
    /// Recompute every account from its journal; exit status 0 only when nothing disagrees.
    Verify(DatabaseArgs),
    /// Add credits to an account (creating it).
    Grant(GrantArgs),
    /// Show an account's balance, held and available credits and its grants.
    Balance(AccountArgs),
    /// List an account's active holds.
    Holds(AccountArgs),
    /// Record due expiries in the journal and forget old idempotency keys, once.
    Sweep(DatabaseArgs),
    /// Render video jobs for a server over its worker API until SIGINT or SIGTERM.
    Worker(WorkerArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// `sqlite:PATH`, `postgres://…` / `postgresql://…`, or `memory:` (volatile, for trials).
    #[arg(long, env = "CREDITGRAPH_DATABASE", default_value = "sqlite:creditgraph.db")]
    pub database: String,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on, `HOST:PORT`.
    #[arg(long, env = "CREDITGRAPH_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Bearer tokens as comma-separated `role:token` pairs (`admin:…,service:…`). Without any,
    /// only a loopback listener is allowed, and authentication is off.
    #[arg(long, env = "CREDITGRAPH_TOKENS", hide_env_values = true)]
    pub tokens: Option<String>,
    /// Longest time to live a hold may ask for.
    #[arg(long, env = "CREDITGRAPH_HOLD_TTL_SECONDS_MAX", default_value_t = 86_400)]
    pub hold_ttl_seconds_max: u64,
    /// Lifetime of the grant a refund creates; never expires when absent.
    #[arg(long, env = "CREDITGRAPH_REFUND_GRANT_TTL_SECONDS")]
    pub refund_grant_ttl_seconds: Option<u64>,
    /// How often the sweeper records due expiries.
    #[arg(long, env = "CREDITGRAPH_SWEEP_INTERVAL_SECONDS", default_value_t = 5)]
    pub sweep_interval_seconds: u64,
    /// How long a shutdown waits for requests in flight before dropping their connections.
    #[arg(long, env = "CREDITGRAPH_SHUTDOWN_GRACE_SECONDS", default_value_t = 30)]
    pub shutdown_grace_seconds: u64,
    /// A pricing catalog (TOML) replacing the built-in one.
    #[arg(long, env = "CREDITGRAPH_CATALOG")]
    pub catalog: Option<PathBuf>,
    /// Default time to live of a turn's hold.
    #[arg(long, env = "CREDITGRAPH_RUN_HOLD_TTL_SECONDS", default_value_t = 1200)]
    pub run_hold_ttl_seconds: u64,
    /// Most turns running at once on this process.
    #[arg(long, env = "CREDITGRAPH_RUNS_ACTIVE_MAX", default_value_t = 64)]
    pub runs_active_max: usize,
    /// How long this process's instance lease lasts without renewal; after a crash, its runs are
    /// recovered (holds released, runs marked interrupted) once it lapses.
    #[arg(long, env = "CREDITGRAPH_INSTANCE_LEASE_SECONDS", default_value_t = 15)]
    pub instance_lease_seconds: u64,
    /// Cancel a run (and release its hold) when its `/v1/solve` client disconnects mid-run;
    /// by default the run goes on, settles, and the client can resume the stream.
    #[arg(long, env = "CREDITGRAPH_CANCEL_ON_DISCONNECT")]
    pub cancel_on_disconnect: bool,
    /// How long a finished run's events stay in the store for `GET /v1/runs/{id}/events`
    /// (then `410 run_events_expired`; the run itself stays readable).
    #[arg(long, env = "CREDITGRAPH_RUN_EVENTS_RETENTION_SECONDS", default_value_t = 7 * 24 * 3600)]
    pub run_events_retention_seconds: u64,
    /// How long run event frames gather before one store write (batched: no commit per token).
    #[arg(long, env = "CREDITGRAPH_RUN_EVENTS_FLUSH_MS", default_value_t = 25,
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub run_events_flush_ms: u64,
    /// Streamed answer text gathers into one `token` frame for at most this long…
    #[arg(long, env = "CREDITGRAPH_TOKEN_COALESCE_MS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub token_coalesce_ms: u64,
    /// …or until this many bytes have gathered, whichever comes first.
    #[arg(long, env = "CREDITGRAPH_TOKEN_COALESCE_BYTES", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub token_coalesce_bytes: u64,
    /// The token `creditgraph worker` processes present on `/v1/worker/…`. Without it the worker
    /// API is off (in-process workers need none).
    #[arg(long, env = "CREDITGRAPH_WORKER_TOKEN", hide_env_values = true)]
    pub worker_token: Option<String>,
    /// Video workers inside this process (0: only `creditgraph worker` processes render).
    #[arg(long, env = "CREDITGRAPH_WORKERS_IN_PROCESS", default_value_t = 2)]
    pub workers_in_process: usize,
    /// How often stuck video jobs are looked for.
    #[arg(long, env = "CREDITGRAPH_JOB_SWEEP_INTERVAL_SECONDS", default_value_t = 10)]
    pub job_sweep_interval_seconds: u64,
    /// A worker's lease on a video job; a worker silent for this long loses the job.
    #[arg(long, env = "CREDITGRAPH_JOB_LEASE_SECONDS", default_value_t = 30)]
    pub job_lease_seconds: u64,
    /// How often in-process workers renew their lease (less than the lease).
    #[arg(long, env = "CREDITGRAPH_JOB_HEARTBEAT_SECONDS", default_value_t = 5)]
    pub job_heartbeat_seconds: u64,
    /// How `code_execute` isolates model-written code: `bwrap` (bubblewrap; a security boundary)
    /// or `none` (a plain child process, NOT a boundary: for development, loopback only).
    #[arg(long, env = "CREDITGRAPH_SANDBOX", value_enum, default_value_t = SandboxKind::Bwrap)]
    pub sandbox: SandboxKind,
    /// The Python interpreter the `bwrap` sandbox runs (absolute; readable by uid 65534).
    #[arg(long, env = "CREDITGRAPH_SANDBOX_PYTHON", default_value = PYTHON_DEFAULT)]
    pub sandbox_python: PathBuf,
    /// Rate limit per bearer token on the routes that start spending (holds, grants, debits,
    /// refunds, solves), `REQUESTS/UNIT[:BURST]` with UNIT `s`, `min` or `h` (`50/s`,
    /// `600/min:100`); off when absent. Settling, releasing and cancelling are never limited.
    #[arg(long, env = "CREDITGRAPH_RATE_LIMIT_PER_TOKEN")]
    pub rate_limit_per_token: Option<RateQuota>,
    /// Rate limit per account on the same routes, in the same form; off when absent.
    #[arg(long, env = "CREDITGRAPH_RATE_LIMIT_PER_ACCOUNT")]
    pub rate_limit_per_account: Option<RateQuota>,
    /// Most accounts the per-account limit tracks at once (past it, it forgets them all).
    #[arg(long, env = "CREDITGRAPH_RATE_LIMIT_ACCOUNTS_MAX", default_value_t = RATE_LIMIT_ACCOUNTS_MAX_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000).map(|value| value as usize))]
    pub rate_limit_accounts_max: usize,
    /// Run on a test clock that `POST /v1/test-clock/advance` moves forward (tests and demos;
    /// refused unless every listen address is loopback).
    #[arg(long, env = "CREDITGRAPH_TEST_CLOCK")]
    pub test_clock: bool,
    /// Let webhook URLs resolve to loopback and private addresses (tests, or receivers on the
    /// same network). Off: a webhook URL cannot be used to reach internal services.
    #[arg(long, env = "CREDITGRAPH_WEBHOOKS_ALLOW_PRIVATE")]
    pub webhooks_allow_private: bool,
    /// How often the webhook dispatcher looks for new events when it found none.
    #[arg(long, env = "CREDITGRAPH_WEBHOOKS_POLL_MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub webhooks_poll_ms: u64,
    /// The first retry's delay after a failed webhook delivery (then doubling, with jitter, up
    /// to 6 hours; a delivery is retried for 3 days).
    #[arg(long, env = "CREDITGRAPH_WEBHOOKS_RETRY_INITIAL_SECONDS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub webhooks_retry_initial_seconds: u64,
    #[command(flatten)]
    pub edge: EdgeArgs,
}

/// How this instance's webhook dispatcher runs (its reach is `ApiConfig::webhooks_reach`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookSettings {
    pub poll_interval: Duration,
    pub retry_delay_initial: Duration,
}

impl Default for WebhookSettings {
    fn default() -> WebhookSettings {
        WebhookSettings { poll_interval: Duration::from_millis(500), retry_delay_initial: Duration::from_secs(5) }
    }
}

/// The limits of the HTTP edge, and TLS.
#[derive(Debug, Clone, Args)]
pub struct EdgeArgs {
    /// A request's headers must arrive within this time of its first byte (else the connection
    /// is closed); also bounds a TLS handshake.
    #[arg(long, env = "CREDITGRAPH_HEADER_READ_TIMEOUT_SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_read_timeout_seconds: u64,
    /// A keep-alive connection with no request for this long is closed. Keep it above the idle
    /// timeout of a load balancer in front (60 s on common ones).
    #[arg(long, env = "CREDITGRAPH_IDLE_TIMEOUT_SECONDS", default_value_t = 75,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub idle_timeout_seconds: u64,
    /// A write to a client that does not read (a dead SSE client included) may stay blocked
    /// this long before the connection is closed.
    #[arg(long, env = "CREDITGRAPH_WRITE_TIMEOUT_SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub write_timeout_seconds: u64,
    /// A request's whole body must arrive within this time of its headers (else `408`).
    #[arg(long, env = "CREDITGRAPH_REQUEST_BODY_TIMEOUT_SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub request_body_timeout_seconds: u64,
    /// A handler of a route that does not stream must answer within this time (else
    /// `504 handler_timeout`; retry with the same Idempotency-Key).
    #[arg(long, env = "CREDITGRAPH_HANDLER_TIMEOUT_SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub handler_timeout_seconds: u64,
    /// Most connections open at once (lowered to fit the open-file limit); past it, new
    /// connections wait in the kernel's backlog.
    #[arg(long, env = "CREDITGRAPH_CONNECTIONS_MAX", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub connections_max: u64,
    /// Most requests inside handlers at once; past it, `503 overloaded` with `Retry-After`.
    #[arg(long, env = "CREDITGRAPH_REQUESTS_IN_FLIGHT_MAX", default_value_t = 1024,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub requests_in_flight_max: u64,
    /// A PEM certificate chain: serve HTTPS (with --tls-key). Reloaded on SIGHUP.
    #[arg(long, env = "CREDITGRAPH_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert. Reloaded on SIGHUP.
    #[arg(long, env = "CREDITGRAPH_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

/// The HTTP edge a server runs with (see `server::edge`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeSettings {
    pub limits: server::edge::watch::ConnectionLimits,
    /// Before it is fitted to the open-file limit at start-up.
    pub connections_max: usize,
    /// Certificate chain and key (PEM) when serving HTTPS.
    pub tls: Option<TlsPaths>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for EdgeSettings {
    /// `server::edge`'s defaults, plain HTTP.
    fn default() -> EdgeSettings {
        let defaults = server::edge::EdgeConfig::default();
        EdgeSettings { limits: defaults.limits, connections_max: defaults.connections_max, tls: None }
    }
}

impl EdgeSettings {
    fn from_args(args: &EdgeArgs) -> EdgeSettings {
        EdgeSettings {
            limits: server::edge::watch::ConnectionLimits {
                header_read_timeout: Duration::from_secs(args.header_read_timeout_seconds),
                idle_timeout: Duration::from_secs(args.idle_timeout_seconds),
                write_timeout: Duration::from_secs(args.write_timeout_seconds),
            },
            connections_max: usize::try_from(args.connections_max).unwrap_or(usize::MAX),
            tls: match (&args.tls_cert, &args.tls_key) {
                (Some(cert), Some(key)) => Some(TlsPaths { cert: cert.clone(), key: key.clone() }),
                _ => None,
            },
        }
    }
}

/// The `--sandbox` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SandboxKind {
    /// bubblewrap behind prlimit and setpriv: namespaces, uid 65534, hard limits.
    Bwrap,
    /// The local Python sandbox: limits only, no boundary. Development only, loopback only.
    None,
}

/// Most worker loops one process runs.
pub const WORKERS_MAX: usize = 64;

#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// The server's base URL, e.g. `http://10.0.0.5:8080`.
    #[arg(long, env = "CREDITGRAPH_SERVER_URL")]
    pub server: String,
    /// The server's worker token (its CREDITGRAPH_WORKER_TOKEN); prefer the environment, which
    /// other users of the machine cannot read in the process list.
    #[arg(long, env = "CREDITGRAPH_WORKER_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Jobs rendered at once by this process.
    #[arg(long, env = "CREDITGRAPH_WORKERS", default_value_t = 1)]
    pub workers: usize,
    /// How often a worker renews its lease; keep it well under the server's --job-lease-seconds.
    #[arg(long, env = "CREDITGRAPH_JOB_HEARTBEAT_SECONDS", default_value_t = 5)]
    pub heartbeat_seconds: u64,
    /// Longest wait between claims while no job is due.
    #[arg(long, default_value_t = 1000)]
    pub idle_poll_ms: u64,
    /// Deadline of each call to the server (a finish uploads the artifact).
    #[arg(long, default_value_t = 120)]
    pub request_timeout_seconds: u64,
}

#[derive(Debug, Clone, Args)]
pub struct GrantArgs {
    pub account: String,
    /// Credits, a decimal such as 17 or 0.5.
    pub amount: String,
    /// Spend order: lower is spent first.
    #[arg(long, default_value_t = 100, allow_negative_numbers = true)]
    pub priority: i32,
    /// When the unspent remainder expires (RFC 3339).
    #[arg(long)]
    pub expires_at: Option<String>,
    /// Unique per account: repeating it returns the first grant.
    #[arg(long)]
    pub reference: Option<String>,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Clone, Args)]
pub struct AccountArgs {
    pub account: String,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub server: ServerArgs,
}

/// Where a read command asks instead of opening the database: a running server's API, so it
/// works while that server holds the SQLite file (or from another machine).
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// A running server's base URL (`http://127.0.0.1:8080`); the database is not opened then.
    #[arg(long, env = "CREDITGRAPH_SERVER")]
    pub server: Option<String>,
    /// The bearer token for `--server` (a service or admin token).
    #[arg(long, env = "CREDITGRAPH_TOKEN", requires = "server")]
    pub token: Option<String>,
}

/// Where the ledger lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// `sqlite:PATH[?synchronous=full|normal]`: when a commit is on disk (see
    /// [`store_sqlite::Synchronous`]; `full` unless the URL says otherwise).
    Sqlite {
        path: PathBuf,
        synchronous: Synchronous,
    },
    Postgres(String),
    /// In-process and volatile: for trials and tests.
    Memory,
}

impl DatabaseUrl {
    pub fn parse(url: &str) -> anyhow::Result<DatabaseUrl> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgres(url.to_owned()));
        }
        if url == "memory:" {
            return Ok(DatabaseUrl::Memory);
        }
        if let Some(rest) = url.strip_prefix("sqlite:") {
            // `sqlite://relative.db` and `sqlite:///absolute.db` as sqlx writes them, and the
            // short `sqlite:PATH`.
            let rest = rest.strip_prefix("//").unwrap_or(rest);
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            if path.is_empty() {
                bail!("database URL {url:?} names no file: use sqlite:PATH");
            }
            let mut synchronous = Synchronous::Full;
            for parameter in query.split('&').filter(|parameter| !parameter.is_empty()) {
                synchronous = match parameter {
                    "synchronous=full" => Synchronous::Full,
                    "synchronous=normal" => Synchronous::Normal,
                    _ => bail!(
                        "database URL {url:?}: unknown parameter {parameter:?} (SQLite takes synchronous=full or \
                         synchronous=normal)"
                    ),
                };
            }
            return Ok(DatabaseUrl::Sqlite { path: PathBuf::from(path), synchronous });
        }
        bail!("unsupported database URL {url:?}: use sqlite:PATH, postgres://… or postgresql://…")
    }

    /// A SQLite file with the default (`full`) durability.
    pub fn sqlite(path: impl Into<PathBuf>) -> DatabaseUrl {
        DatabaseUrl::Sqlite { path: path.into(), synchronous: Synchronous::Full }
    }

    /// For logs: never the PostgreSQL URL itself, which may carry a password.
    pub fn describe(&self) -> String {
        match self {
            DatabaseUrl::Sqlite { path, synchronous: Synchronous::Full } => format!("sqlite:{}", path.display()),
            DatabaseUrl::Sqlite { path, synchronous } => {
                format!("sqlite:{}?synchronous={}", path.display(), synchronous.pragma().to_lowercase())
            }
            DatabaseUrl::Postgres(_) => "postgres".to_owned(),
            DatabaseUrl::Memory => "memory:".to_owned(),
        }
    }
}

/// Parses `role:token` pairs separated by commas; blanks around entries are ignored.
pub fn parse_tokens(text: &str) -> anyhow::Result<Vec<(String, Role)>> {
    let mut tokens = Vec::new();
    for (index, entry) in text.split(',').map(str::trim).enumerate() {
        if entry.is_empty() {
            continue;
        }
        let (role, token) =
            entry.split_once(':').with_context(|| format!("token entry {}: expected role:token", index + 1))?;
        let role = Role::parse(role.trim())
            .with_context(|| format!("token entry {}: role must be admin or service", index + 1))?;
        if token.is_empty() || token.bytes().any(|byte| byte.is_ascii_whitespace() || byte.is_ascii_control()) {
            bail!("token entry {}: the token must be non-empty without blanks", index + 1);
        }
        tokens.push((token.to_owned(), role));
    }
    Ok(tokens)
}

/// Everything `serve` needs, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `HOST:PORT` (port 0 picks a free port).
    pub listen: String,
    /// Metered runs: catalog, LLM provider (from `CREDITGRAPH_LLM_*`), engine limits.
    pub runs: RunSettings,
    pub database: DatabaseUrl,
    pub api: ApiConfig,
    /// Connection limits and TLS.
    pub edge: EdgeSettings,
    pub sweep_interval: Duration,
    /// Longest wait for requests in flight once shutdown starts.
    pub shutdown_grace: Duration,
    pub webhooks: WebhookSettings,
}

impl Settings {
    pub fn from_args(args: &ServeArgs) -> anyhow::Result<Settings> {
        let tokens = parse_tokens(args.tokens.as_deref().unwrap_or(""))?;
        let worker_token = args.worker_token.as_deref().map(parse_worker_token).transpose()?;
        if args.hold_ttl_seconds_max == 0 {
            bail!("--hold-ttl-seconds-max must be at least 1");
        }
        let defaults = ApiConfig::default();
        let api = ApiConfig {
            tokens,
            hold_ttl_seconds_max: args.hold_ttl_seconds_max,
            hold_ttl_seconds_default: defaults.hold_ttl_seconds_default.min(args.hold_ttl_seconds_max),
            refund_grant_ttl_seconds: args.refund_grant_ttl_seconds,
            worker_token,
            request_body_timeout_seconds: args.edge.request_body_timeout_seconds,
            handler_timeout_seconds: args.edge.handler_timeout_seconds,
            requests_in_flight_max: usize::try_from(args.edge.requests_in_flight_max).unwrap_or(usize::MAX),
            rate_limits: RateLimits {
                per_token: args.rate_limit_per_token,
                per_account: args.rate_limit_per_account,
                accounts_max: args.rate_limit_accounts_max,
            },
            webhooks_reach: if args.webhooks_allow_private {
                webhooks::destination::Reach::AllowPrivate
            } else {
                webhooks::destination::Reach::PublicOnly
            },
            ..defaults
        };
        let catalog = match &args.catalog {
            Some(path) => load_catalog(path).map_err(|error| anyhow::anyhow!("{error}"))?,
            None => Catalog::builtin(),
        };
        let llm = engine::provider::openai::OpenAiConfig::from_env()
            .map_err(|error| anyhow::anyhow!("LLM provider configuration: {error}"))?;
        let runs = RunSettings {
            catalog,
            llm,
            hold_ttl_seconds: args.run_hold_ttl_seconds.clamp(1, args.hold_ttl_seconds_max),
            runs_active_max: args.runs_active_max.max(1),
            instance_lease_seconds: args.instance_lease_seconds.clamp(2, 3600),
            cancel_on_disconnect: args.cancel_on_disconnect,
            run_events_retention_seconds: args.run_events_retention_seconds,
            run_events_flush_ms: args.run_events_flush_ms,
            coalesce: engine::run::stream::Coalesce {
                interval: Duration::from_millis(args.token_coalesce_ms),
                bytes_max: usize::try_from(args.token_coalesce_bytes).unwrap_or(usize::MAX),
            },
            jobs: jobs_config(args)?,
            sandbox: match args.sandbox {
                SandboxKind::Bwrap => {
                    SandboxSettings::Bubblewrap(BubblewrapSettings::with_python(&args.sandbox_python))
                }
                SandboxKind::None => SandboxSettings::None,
            },
        };
        Ok(Settings {
            runs,
            listen: args.listen.clone(),
            database: DatabaseUrl::parse(&args.database.database)?,
            api,
            edge: EdgeSettings::from_args(&args.edge),
            sweep_interval: Duration::from_secs(args.sweep_interval_seconds.max(1)),
            shutdown_grace: Duration::from_secs(args.shutdown_grace_seconds),
            webhooks: WebhookSettings {
                poll_interval: Duration::from_millis(args.webhooks_poll_ms),
                retry_delay_initial: Duration::from_secs(args.webhooks_retry_initial_seconds),
            },
        })
    }
}

/// Reads and validates a catalog file; `origin` in errors is the path as given. (The file is read
/// here, at the composition root: the `pricing` crate does no I/O.)
pub fn load_catalog(path: &Path) -> Result<Catalog, CatalogError> {
    let origin = path.display().to_string();
    let unreadable = |message: String| CatalogError { origin: origin.clone(), line: None, key: String::new(), message };
    let file = std::fs::File::open(path).map_err(|error| unreadable(format!("cannot open the catalog: {error}")))?;
    let mut bytes = Vec::new();
    // One byte more than the bound tells "at the bound" from "over it" without reading it all.
    file.take(CATALOG_BYTES_MAX as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| unreadable(format!("cannot read the catalog: {error}")))?;
    let text = String::from_utf8(bytes).map_err(|_| unreadable("the catalog is not UTF-8 text".to_owned()))?;
    Catalog::parse(&text, &origin)
}

/// The worker token: non-empty, without blanks or control characters.
pub fn parse_worker_token(token: &str) -> anyhow::Result<String> {
    if token.is_empty() || token.bytes().any(|byte| byte.is_ascii_whitespace() || byte.is_ascii_control()) {
        bail!("the worker token must be non-empty without blanks");
    }
    Ok(token.to_owned())
}

/// The job system's settings from `serve`'s flags (the rest keep their defaults).
fn jobs_config(args: &ServeArgs) -> anyhow::Result<jobs::JobsConfig> {
    if args.job_heartbeat_seconds == 0 || args.job_heartbeat_seconds >= args.job_lease_seconds {
        bail!(
            "--job-heartbeat-seconds ({}) must be at least 1 and less than --job-lease-seconds ({})",
            args.job_heartbeat_seconds,
            args.job_lease_seconds
        );
    }
    if args.workers_in_process > WORKERS_MAX {
        bail!("--workers-in-process: at most {WORKERS_MAX}");
    }
    Ok(jobs::JobsConfig {
        lease_seconds: args.job_lease_seconds,
        heartbeat_seconds: args.job_heartbeat_seconds,
        workers_in_process: args.workers_in_process,
        stuck_sweep_interval_seconds: args.job_sweep_interval_seconds.max(1),
        ..jobs::JobsConfig::default()
    })
}

/// Which renderer makes video artifacts, from the environment: `CREDITGRAPH_RENDERER_COMMAND`
/// (a program and its arguments, split on whitespace, no shell) or `CREDITGRAPH_RENDERER_URL`,
/// else the built-in SVG storyboard. `CREDITGRAPH_RENDERER_CONTENT_TYPE` types a command's output
/// (default `video/mp4`); `CREDITGRAPH_RENDERER_TIMEOUT_SECONDS` bounds one render (default 600).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RendererSettings {
    Builtin,
    Command { command_line: String, content_type: String, timeout_seconds: u64 },
    Http { url: String, timeout_seconds: u64 },
}

/// A render's deadline when `CREDITGRAPH_RENDERER_TIMEOUT_SECONDS` is not set.
pub const RENDER_TIMEOUT_SECONDS_DEFAULT: u64 = 600;

impl RendererSettings {
    pub fn from_env() -> anyhow::Result<RendererSettings> {
        RendererSettings::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`RendererSettings::from_env`] over any variable lookup (blank values count as unset).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<RendererSettings> {
        let get = |name: &str| lookup(name).map(|value| value.trim().to_owned()).filter(|value| !value.is_empty());
        let timeout_seconds = match get("CREDITGRAPH_RENDERER_TIMEOUT_SECONDS") {
            None => RENDER_TIMEOUT_SECONDS_DEFAULT,
            Some(text) => match text.parse::<u64>() {
                Ok(seconds) if seconds > 0 => seconds,
                _ => bail!("CREDITGRAPH_RENDERER_TIMEOUT_SECONDS must be a whole number of seconds, at least 1"),
            },
        };
        match (get("CREDITGRAPH_RENDERER_COMMAND"), get("CREDITGRAPH_RENDERER_URL")) {
            (Some(_), Some(_)) => bail!("set CREDITGRAPH_RENDERER_COMMAND or CREDITGRAPH_RENDERER_URL, not both"),
            (Some(command_line), None) => Ok(RendererSettings::Command {
                command_line,
                content_type: get("CREDITGRAPH_RENDERER_CONTENT_TYPE").unwrap_or_else(|| "video/mp4".to_owned()),
                timeout_seconds,
            }),
            (None, Some(url)) => Ok(RendererSettings::Http { url, timeout_seconds }),
            (None, None) => Ok(RendererSettings::Builtin),
        }
    }

    /// The renderer, refusing artifacts over `artifact_bytes_max`.
    pub fn build(&self, artifact_bytes_max: usize) -> anyhow::Result<std::sync::Arc<dyn jobs::render::Renderer>> {
        use jobs::render::{builtin::BuiltinRenderer, command::CommandRenderer, http::HttpRenderer};
        Ok(match self {
            RendererSettings::Builtin => std::sync::Arc::new(BuiltinRenderer),
            RendererSettings::Command { command_line, content_type, timeout_seconds } => std::sync::Arc::new(
                CommandRenderer::parse(command_line, content_type, *timeout_seconds, artifact_bytes_max)
                    .map_err(|error| anyhow::anyhow!("CREDITGRAPH_RENDERER_COMMAND: {error}"))?,
            ),
            RendererSettings::Http { url, timeout_seconds } => std::sync::Arc::new(
                HttpRenderer::new(url, *timeout_seconds, artifact_bytes_max)
                    .map_err(|error| anyhow::anyhow!("CREDITGRAPH_RENDERER_URL: {error}"))?,
            ),
        })
    }

    /// For logs: the kind and the program (never arguments or the URL's query, which may hold secrets).
    pub fn describe(&self) -> String {
        match self {
            RendererSettings::Builtin => "builtin SVG storyboard".to_owned(),
            RendererSettings::Command { command_line, .. } => {
                format!("command {}", command_line.split_whitespace().next().unwrap_or_default())
            }
            RendererSettings::Http { url, .. } => {
                let shown = url.split(['?', '#']).next().unwrap_or_default();
                format!("http {shown}")
            }
        }
    }
}

/// Resolves `HOST:PORT` to the addresses it names, so the loopback check sees real addresses.
pub async fn resolve_listen(listen: &str) -> anyhow::Result<Vec<SocketAddr>> {
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host(listen)
        .await
        .with_context(|| format!("cannot resolve listen address {listen:?} (expected HOST:PORT)"))?
        .collect();
    if addresses.is_empty() {
        bail!("listen address {listen:?} resolves to nothing");
    }
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_catalog_reads_a_file_and_names_it_in_errors() {
        let default = Catalog::builtin_text();
        let replaced = |from: &str, to: &str| {
            assert!(default.contains(from), "{from:?} is not in the default catalog");
            default.replacen(from, to, 1)
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("prices.toml");
        std::fs::write(&path, replaced("opus = 8", "opus = 12")).expect("write");
        let catalog = load_catalog(&path).expect("loads");
        assert_eq!(catalog.model_call(pricing::Tier::Opus), ledger::Amount::from_credits(12));
        assert_eq!(catalog.origin(), path.display().to_string());

        std::fs::write(&path, replaced("opus = 8", "opus = \"x\"")).expect("write");
        let error = load_catalog(&path).expect_err("broken");
        assert!(error.to_string().starts_with(&format!("{}:", path.display())), "{error}");

        let missing = dir.path().join("absent.toml");
        let error = load_catalog(&missing).expect_err("absent");
        assert_eq!((error.line, error.origin.as_str()), (None, missing.display().to_string().as_str()));
        assert!(error.message.contains("cannot open"), "{error}");

        std::fs::write(&path, format!("{default}\n#{}\n", "x".repeat(CATALOG_BYTES_MAX))).expect("write");
        let error = load_catalog(&path).expect_err("too large");
        assert!(error.message.contains("larger than"), "{error}");
    }

    #[test]
    fn database_urls_pick_the_backend() {
        assert_eq!(DatabaseUrl::parse("sqlite:creditgraph.db").ok(), Some(DatabaseUrl::sqlite("creditgraph.db")));
        assert_eq!(DatabaseUrl::parse("sqlite:///tmp/a.db").ok(), Some(DatabaseUrl::sqlite("/tmp/a.db")));
        assert_eq!(DatabaseUrl::parse("sqlite://a.db").ok(), Some(DatabaseUrl::sqlite("a.db")));
        assert_eq!(
            DatabaseUrl::parse("sqlite:a.db?synchronous=normal").ok(),
            Some(DatabaseUrl::Sqlite { path: "a.db".into(), synchronous: Synchronous::Normal })
        );
        assert_eq!(DatabaseUrl::parse("sqlite:a.db?synchronous=full").ok(), Some(DatabaseUrl::sqlite("a.db")));
        assert_eq!(
            DatabaseUrl::parse("sqlite:a.db?synchronous=normal").map(|url| url.describe()).ok(),
            Some("sqlite:a.db?synchronous=normal".to_owned())
        );
        // `off` is for benchmarks only: a server never runs without syncing at checkpoints.
        assert!(DatabaseUrl::parse("sqlite:a.db?synchronous=off").is_err());
        assert!(DatabaseUrl::parse("sqlite:a.db?cache=shared").is_err());
        assert!(matches!(DatabaseUrl::parse("postgresql://u@h/db"), Ok(DatabaseUrl::Postgres(_))));
        assert!(matches!(DatabaseUrl::parse("postgres://u@h/db"), Ok(DatabaseUrl::Postgres(_))));
        assert_eq!(DatabaseUrl::parse("memory:").ok(), Some(DatabaseUrl::Memory));
        assert!(DatabaseUrl::parse("sqlite:").is_err());
        assert!(DatabaseUrl::parse("mysql://h/db").is_err());
    }

    #[test]
    fn tokens_are_role_token_pairs() {
        let tokens = parse_tokens(" admin:s3cret, service:a:b ,").expect("valid tokens");
        assert_eq!(tokens, vec![("s3cret".to_owned(), Role::Admin), ("a:b".to_owned(), Role::Service)]);
        assert!(parse_tokens("").expect("empty is fine").is_empty());
        assert!(parse_tokens("root:x").is_err());
        assert!(parse_tokens("admin").is_err());
        assert!(parse_tokens("admin:").is_err());
    }

    #[test]
    fn rate_limits_are_off_by_default_and_parsed_at_the_edge() {
        let serve = |extra: &[&str]| {
            let mut argv = vec!["creditgraph", "serve"];
            argv.extend_from_slice(extra);
            match Cli::try_parse_from(argv).map_err(|error| error.to_string())?.command {
                CommandLine::Serve(args) => Settings::from_args(&args).map_err(|error| error.to_string()),
                other => panic!("not serve: {other:?}"),
            }
        };
        let limits = serve(&[]).expect("valid").api.rate_limits;
        assert_eq!(limits, RateLimits::default());
        assert_eq!((limits.per_token, limits.per_account), (None, None));
        let limits = serve(&["--rate-limit-per-token", "50/s", "--rate-limit-per-account=600/min:100"])
            .expect("valid")
            .api
            .rate_limits;
        assert_eq!(limits.per_token, Some(RateQuota::new(50, server::RatePeriod::Second, 50).expect("valid")));
        assert_eq!(limits.per_account, Some(RateQuota::new(600, server::RatePeriod::Minute, 100).expect("valid")));
        assert_eq!(limits.accounts_max, RATE_LIMIT_ACCOUNTS_MAX_DEFAULT);
        let limits = serve(&["--rate-limit-accounts-max", "7"]).expect("valid").api.rate_limits;
        assert_eq!(limits.accounts_max, 7);
        for bad in [
            &["--rate-limit-per-token", "0/s"][..],
            &["--rate-limit-per-token", "50"],
            &["--rate-limit-per-account", "5/s:0"],
            &["--rate-limit-per-account", "lots"],
            &["--rate-limit-accounts-max", "0"],
        ] {
            let error = serve(bad).expect_err("refused");
            assert!(error.contains("--rate-limit-"), "{bad:?}: {error}");
        }
    }

    #[test]
    fn the_renderer_comes_from_the_environment() {
        let lookup = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(key, _)| *key == name).map(|(_, value)| (*value).to_owned())
        };
        assert_eq!(RendererSettings::from_lookup(lookup(&[])).ok(), Some(RendererSettings::Builtin));
        assert_eq!(
            RendererSettings::from_lookup(lookup(&[
                ("CREDITGRAPH_RENDERER_URL", " "),
                ("CREDITGRAPH_RENDERER_COMMAND", "")
            ]))
            .ok(),
            Some(RendererSettings::Builtin)
        );
        let command = RendererSettings::from_lookup(lookup(&[
            ("CREDITGRAPH_RENDERER_COMMAND", "/opt/render --fast"),
            ("CREDITGRAPH_RENDERER_TIMEOUT_SECONDS", "30"),
        ]))
        .expect("valid");
        assert_eq!(
            command,
            RendererSettings::Command {
                command_line: "/opt/render --fast".to_owned(),
                content_type: "video/mp4".to_owned(),
                timeout_seconds: 30
            }
        );
        assert_eq!(command.describe(), "command /opt/render");
        let http = RendererSettings::from_lookup(lookup(&[("CREDITGRAPH_RENDERER_URL", "http://r/render?key=s3cret")]))
            .expect("valid");
        assert_eq!(http.describe(), "http http://r/render");
        assert!(http.build(1024).is_ok());
        assert!(RendererSettings::from_lookup(lookup(&[
            ("CREDITGRAPH_RENDERER_URL", "http://r"),
            ("CREDITGRAPH_RENDERER_COMMAND", "render")
        ]))
        .is_err());
        assert!(RendererSettings::from_lookup(lookup(&[("CREDITGRAPH_RENDERER_TIMEOUT_SECONDS", "0")])).is_err());
        assert!(RendererSettings::Http { url: "ftp://r".to_owned(), timeout_seconds: 5 }.build(1).is_err());
    }

    #[test]
    fn edge_flags_are_checked() {
        let serve = |extra: &[&str]| {
            let mut argv = vec!["creditgraph", "serve"];
            argv.extend_from_slice(extra);
            let parsed = Cli::try_parse_from(argv).map_err(|error| anyhow::anyhow!("{error}"))?;
            match parsed.command {
                CommandLine::Serve(args) => Settings::from_args(&args),
                other => panic!("not serve: {other:?}"),
            }
        };
        let defaults = serve(&[]).expect("valid");
        assert_eq!(defaults.edge, EdgeSettings::default());
        assert_eq!(defaults.edge.limits.header_read_timeout, Duration::from_secs(10));
        assert_eq!((defaults.api.request_body_timeout_seconds, defaults.api.handler_timeout_seconds), (30, 30));
        assert_eq!(defaults.api.requests_in_flight_max, 1024);
        let settings = serve(&[
            "--header-read-timeout-seconds=2",
            "--idle-timeout-seconds=90",
            "--write-timeout-seconds=7",
            "--request-body-timeout-seconds=5",
            "--handler-timeout-seconds=6",
            "--connections-max=100",
            "--requests-in-flight-max=8",
            "--tls-cert=/etc/cg/cert.pem",
            "--tls-key=/etc/cg/key.pem",
        ])
        .expect("valid");
        assert_eq!(settings.edge.limits.header_read_timeout, Duration::from_secs(2));
        assert_eq!(settings.edge.limits.idle_timeout, Duration::from_secs(90));
        assert_eq!(settings.edge.limits.write_timeout, Duration::from_secs(7));
        assert_eq!((settings.api.request_body_timeout_seconds, settings.api.handler_timeout_seconds), (5, 6));
        assert_eq!((settings.edge.connections_max, settings.api.requests_in_flight_max), (100, 8));
        assert_eq!(
            settings.edge.tls,
            Some(TlsPaths { cert: "/etc/cg/cert.pem".into(), key: "/etc/cg/key.pem".into() })
        );
        for refused in [
            &["--header-read-timeout-seconds=0"][..],
            &["--connections-max=0"],
            &["--requests-in-flight-max=0"],
            &["--handler-timeout-seconds=0"],
            &["--tls-cert=/etc/cg/cert.pem"],
            &["--tls-key=/etc/cg/key.pem"],
        ] {
            assert!(serve(refused).is_err(), "{refused:?} was accepted");
        }
    }

    #[test]
    fn job_flags_are_checked() {
        let serve = |extra: &[&str]| {
            let mut argv = vec!["creditgraph", "serve"];
            argv.extend_from_slice(extra);
            match Cli::try_parse_from(argv).expect("parses").command {
                CommandLine::Serve(args) => Settings::from_args(&args),
                other => panic!("not serve: {other:?}"),
            }
        };
        let settings =
            serve(&["--job-lease-seconds", "4", "--job-heartbeat-seconds", "1", "--workers-in-process", "0"])
                .expect("valid");
        assert_eq!((settings.runs.jobs.lease_seconds, settings.runs.jobs.heartbeat_seconds), (4, 1));
        assert_eq!(settings.runs.jobs.workers_in_process, 0);
        assert!(serve(&["--job-lease-seconds", "4", "--job-heartbeat-seconds", "4"]).is_err());
        assert!(serve(&["--workers-in-process", "1000"]).is_err());
        assert!(serve(&["--worker-token", "has blank"]).is_err());
        assert_eq!(settings.runs.sandbox, SandboxSettings::Bubblewrap(BubblewrapSettings::default()), "the default");
        let settings = serve(&["--sandbox", "bwrap", "--sandbox-python", "/opt/py/bin/python3"]).expect("valid");
        assert_eq!(
            settings.runs.sandbox,
            SandboxSettings::Bubblewrap(BubblewrapSettings::with_python("/opt/py/bin/python3"))
        );
        assert_eq!(serve(&["--sandbox=none"]).expect("valid").runs.sandbox, SandboxSettings::None);
        assert!(Cli::try_parse_from(["creditgraph", "serve", "--sandbox=nsjail"]).is_err());
        assert_eq!(serve(&["--worker-token", "w0rker"]).expect("valid").api.worker_token.as_deref(), Some("w0rker"));
    }
}

/// Settings of metered runs.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub catalog: Catalog,
    /// `None` when `CREDITGRAPH_LLM_BASE_URL` is unset: `/v1/solve` answers 503, estimates work.
    pub llm: Option<engine::provider::openai::OpenAiConfig>,
    pub hold_ttl_seconds: u64,
    pub runs_active_max: usize,
    pub instance_lease_seconds: u64,
    pub cancel_on_disconnect: bool,
    pub run_events_retention_seconds: u64,
    pub run_events_flush_ms: u64,
    /// How streamed answer text gathers into `token` frames.
    pub coalesce: engine::run::stream::Coalesce,
    /// Video jobs: leases, attempts, stuck thresholds, in-process workers.
    pub jobs: jobs::JobsConfig,
    /// Where `code_execute` runs model-written code.
    pub sandbox: SandboxSettings,
}

/// The `code_execute` sandbox a server builds (`--sandbox`, `--sandbox-python`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SandboxSettings {
    /// [`engine::sandbox::bwrap::Bubblewrap`]; when its start-up probe fails, every
    /// `code_execute` fails closed with `sandbox_unavailable`.
    Bubblewrap(BubblewrapSettings),
    /// [`engine::sandbox::local::LocalPython`], `python3` from `PATH`: NOT a boundary (the code
    /// can read what the service can); refused unless every listen address is loopback.
    None,
}
