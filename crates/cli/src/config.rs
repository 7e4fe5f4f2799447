//! Command line and environment, parsed once into typed settings.
//!
//! Every flag that configures data access or the listener also reads a `CREDITGRAPH_*`
//! environment variable, so a service manager can configure the process without arguments.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use server::{ApiConfig, Role};

#[derive(Debug, Parser)]
#[command(name = "creditgraph", version, about = "Prepaid credits ledger: HTTP service and operator commands")]
pub struct Cli {
    #[command(subcommand)]
    pub command: CommandLine,
}

#[derive(Debug, Subcommand)]
pub enum CommandLine {
    /// Run the HTTP API (and the expiry sweeper) until SIGINT or SIGTERM.
    Serve(ServeArgs),
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
}

/// Where the ledger lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(PathBuf),
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
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                bail!("database URL {url:?} names no file: use sqlite:PATH");
            }
            return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
        }
        bail!("unsupported database URL {url:?}: use sqlite:PATH, postgres://… or postgresql://…")
    }

    /// For logs: never the PostgreSQL URL itself, which may carry a password.
    pub fn describe(&self) -> String {
        match self {
            DatabaseUrl::Sqlite(path) => format!("sqlite:{}", path.display()),
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
    pub sweep_interval: Duration,
    /// Longest wait for requests in flight once shutdown starts.
    pub shutdown_grace: Duration,
}

impl Settings {
    pub fn from_args(args: &ServeArgs) -> anyhow::Result<Settings> {
        let tokens = parse_tokens(args.tokens.as_deref().unwrap_or(""))?;
        if args.hold_ttl_seconds_max == 0 {
            bail!("--hold-ttl-seconds-max must be at least 1");
        }
        let defaults = ApiConfig::default();
        let api = ApiConfig {
            tokens,
            hold_ttl_seconds_max: args.hold_ttl_seconds_max,
            hold_ttl_seconds_default: defaults.hold_ttl_seconds_default.min(args.hold_ttl_seconds_max),
            refund_grant_ttl_seconds: args.refund_grant_ttl_seconds,
            ..defaults
        };
        let catalog = match &args.catalog {
            Some(path) => engine::catalog::Catalog::load(path).map_err(|error| anyhow::anyhow!("{error}"))?,
            None => engine::catalog::Catalog::builtin(),
        };
        let llm = engine::provider::openai::OpenAiConfig::from_env()
            .map_err(|error| anyhow::anyhow!("LLM provider configuration: {error}"))?;
        let runs = RunSettings {
            catalog,
            llm,
            hold_ttl_seconds: args.run_hold_ttl_seconds.clamp(1, args.hold_ttl_seconds_max),
            runs_active_max: args.runs_active_max.max(1),
            jobs: engine::jobs::JobsConfig::default(),
        };
        Ok(Settings {
            runs,
            listen: args.listen.clone(),
            database: DatabaseUrl::parse(&args.database.database)?,
            api,
            sweep_interval: Duration::from_secs(args.sweep_interval_seconds.max(1)),
            shutdown_grace: Duration::from_secs(args.shutdown_grace_seconds),
        })
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
    fn database_urls_pick_the_backend() {
        assert_eq!(
            DatabaseUrl::parse("sqlite:creditgraph.db").ok(),
            Some(DatabaseUrl::Sqlite("creditgraph.db".into()))
        );
        assert_eq!(DatabaseUrl::parse("sqlite:///tmp/a.db").ok(), Some(DatabaseUrl::Sqlite("/tmp/a.db".into())));
        assert_eq!(DatabaseUrl::parse("sqlite://a.db").ok(), Some(DatabaseUrl::Sqlite("a.db".into())));
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
}

/// Settings of metered runs.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub catalog: engine::catalog::Catalog,
    /// `None` when `CREDITGRAPH_LLM_BASE_URL` is unset: `/v1/solve` answers 503, estimates work.
    pub llm: Option<engine::provider::openai::OpenAiConfig>,
    pub hold_ttl_seconds: u64,
    pub runs_active_max: usize,
    /// Video jobs: leases, attempts, stuck thresholds, in-process workers.
    pub jobs: engine::jobs::JobsConfig,
}
