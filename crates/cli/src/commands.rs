//! The operator commands: each opens the store, does one thing, prints JSON (API shapes) or a
//! report on stdout, and closes the store. And `worker`, which has no store: it renders video
//! jobs for a server over the worker API.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context};
use ledger::{AccountId, Amount, Command, GrantId, Outcome};
use serde_json::Value;
use store::{Clock, Executed, LedgerStore, Request, SweepReport, SystemClock};

use jobs::remote::HttpWorkerBackend;
use jobs::worker::{run_worker, WorkerBackend};
use tokio_util::sync::CancellationToken;

use crate::config::{
    parse_worker_token, AccountArgs, DatabaseArgs, DatabaseUrl, GrantArgs, RendererSettings, ServerArgs, WorkerArgs,
    WORKERS_MAX,
};
use crate::database::{self, OpenStore};

/// Sweep calls one `creditgraph sweep` makes at most when every call comes back full.
const SWEEP_ROUNDS_MAX: u32 = 10_000;

fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value).context("cannot render JSON")?);
    Ok(())
}

/// Opens the store, runs `work`, closes the store whatever `work` returned.
async fn with_store<T>(
    args: &DatabaseArgs,
    work: impl AsyncFnOnce(Arc<dyn LedgerStore>) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let url = DatabaseUrl::parse(&args.database)?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = OpenStore::open(&url, clock).await?;
    let result = work(store.ledger()).await;
    store.close().await;
    result
}

fn account_id(text: &str) -> anyhow::Result<AccountId> {
    AccountId::parse(text).map_err(|error| anyhow!("{error}"))
}

pub async fn migrate(args: &DatabaseArgs) -> anyhow::Result<ExitCode> {
    let url = DatabaseUrl::parse(&args.database)?;
    database::migrate(&url).await?;
    println!("migrated {}", url.describe());
    Ok(ExitCode::SUCCESS)
}

pub async fn verify(args: &DatabaseArgs) -> anyhow::Result<ExitCode> {
    let report = with_store(args, async |store| Ok(store.verify().await?)).await?;
    println!("accounts: {}", report.accounts);
    println!("entries: {}", report.entries);
    println!("holds: {}", report.holds);
    println!("violations: {}", report.violations.len());
    for violation in &report.violations {
        println!("- {violation}");
    }
    if report.violations.is_empty() {
        println!("clean: every account agrees with its journal");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("NOT clean: the stored state disagrees with the journal");
        Ok(ExitCode::FAILURE)
    }
}

pub async fn grant(args: &GrantArgs) -> anyhow::Result<ExitCode> {
    let account_id = account_id(&args.account)?;
    let amount = Amount::parse_positive(&args.amount).map_err(|error| anyhow!("amount: {error}"))?;
    let expires_at =
        args.expires_at.as_deref().map(|text| server::wire::parse_time("--expires-at", text)).transpose()?;
    let reference = server::wire::parse_reference(args.reference.as_deref())?;
    let grant_id = GrantId::parse(&uuid::Uuid::now_v7().to_string()).expect("a UUID is a valid id");
    let command = Command::Grant {
        account_id,
        grant_id,
        amount,
        priority: args.priority,
        expires_at,
        reference,
        metadata: "{}".to_owned(),
    };
    let executed = with_store(&args.database, async |store| Ok(store.execute(Request::new(command)).await?)).await?;
    match executed {
        Executed::Fresh(Ok(Outcome::Granted { grant, .. }))
        | Executed::Replayed(Ok(Outcome::Granted { grant, .. })) => {
            print_json(&server::wire::grant_response(&grant, grant.free))?;
            Ok(ExitCode::SUCCESS)
        }
        Executed::Fresh(Err(rejection)) | Executed::Replayed(Err(rejection)) => {
            bail!("{}: {rejection}", rejection.code())
        }
        other => bail!("unexpected store answer {other:?}"),
    }
}

/// How long a read command waits for a server's answer.
const SERVER_READ_SECONDS: u64 = 30;
/// Pages of holds `holds --server` reads at most (1,000 holds each).
const SERVER_HOLD_PAGES_MAX: usize = 1_000;

/// GET `path` from the server `--server` names: the JSON body of a 200, else an error naming the
/// problem's code and detail (what the API answered), or the status.
async fn server_get(server: &ServerArgs, path: &str) -> anyhow::Result<Value> {
    let base = server.server.as_deref().expect("called only with --server").trim_end_matches('/');
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(SERVER_READ_SECONDS))
        .build()
        .context("cannot build an HTTP client")?;
    let mut request = client.get(format!("{base}{path}"));
    if let Some(token) = &server.token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.with_context(|| format!("cannot reach {base}"))?;
    let status = response.status();
    let body: Value = response.json().await.with_context(|| format!("{base}{path} answered {status} without JSON"))?;
    if !status.is_success() {
        let code = body["code"].as_str().unwrap_or("error");
        let detail = body["detail"].as_str().unwrap_or_default();
        bail!("{code}: {detail} ({status} from {base}{path})");
    }
    Ok(body)
}

pub async fn balance(args: &AccountArgs) -> anyhow::Result<ExitCode> {
    let account_id = account_id(&args.account)?;
    if args.server.server.is_some() {
        // The server renders the account exactly as this command does from the database.
        print_json(&server_get(&args.server, &format!("/v1/accounts/{account_id}")).await?)?;
        return Ok(ExitCode::SUCCESS);
    }
    let view = with_store(&args.database, async |store| Ok(store.account(&account_id).await?)).await?;
    let view = view.ok_or_else(|| anyhow!("account_not_found: no account {}", args.account))?;
    print_json(&server::wire::account_response(&view))?;
    Ok(ExitCode::SUCCESS)
}

pub async fn holds(args: &AccountArgs) -> anyhow::Result<ExitCode> {
    let account_id = account_id(&args.account)?;
    if args.server.server.is_some() {
        let mut holds = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..SERVER_HOLD_PAGES_MAX {
            let cursor = after.as_deref().map(|after| format!("&after={after}")).unwrap_or_default();
            let path = format!("/v1/accounts/{account_id}/holds?state=pending&limit=1000{cursor}");
            let page = server_get(&args.server, &path).await?;
            holds.extend(page["holds"].as_array().cloned().unwrap_or_default());
            match page["next"].as_str() {
                Some(next) => after = Some(next.to_owned()),
                None => break,
            }
        }
        print_json(&holds)?;
        return Ok(ExitCode::SUCCESS);
    }
    let holds = with_store(&args.database, async |store| Ok(store.pending_holds(&account_id).await?)).await?;
    let holds: Vec<_> = holds.iter().map(server::wire::hold_response).collect();
    print_json(&holds)?;
    Ok(ExitCode::SUCCESS)
}

pub async fn sweep(args: &DatabaseArgs) -> anyhow::Result<ExitCode> {
    let total = with_store(args, async |store| {
        let mut total = SweepReport::default();
        for _ in 0..SWEEP_ROUNDS_MAX {
            let report = store.sweep(server::SWEEP_ACCOUNTS_MAX).await?;
            total.accounts += report.accounts;
            total.entries += report.entries;
            total.idempotency_keys_deleted += report.idempotency_keys_deleted;
            if report.accounts < u64::from(server::SWEEP_ACCOUNTS_MAX) {
                break;
            }
        }
        Ok(total)
    })
    .await?;
    let mut report = serde_json::Map::new();
    report.insert("accounts".to_owned(), Value::from(total.accounts));
    report.insert("entries".to_owned(), Value::from(total.entries));
    report.insert("idempotency_keys_deleted".to_owned(), Value::from(total.idempotency_keys_deleted));
    print_json(&Value::Object(report))?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `--workers` worker loops against the server's worker API with the configured renderer
/// until SIGINT or SIGTERM; each loop then hands back the lease it holds.
pub async fn worker(args: &WorkerArgs) -> anyhow::Result<ExitCode> {
    if args.workers == 0 || args.workers > WORKERS_MAX {
        bail!("--workers: from 1 to {WORKERS_MAX}");
    }
    let token = parse_worker_token(&args.token).context("--token")?;
    let config = jobs::JobsConfig {
        heartbeat_seconds: args.heartbeat_seconds.max(1),
        idle_poll_ms: args.idle_poll_ms.max(10),
        ..jobs::JobsConfig::default()
    };
    let renderer_settings = RendererSettings::from_env()?;
    let renderer = renderer_settings.build(config.artifact_bytes_max)?;
    let backend = HttpWorkerBackend::new(&args.server, &token, args.request_timeout_seconds)
        .map_err(|error| anyhow!("--server: {error}"))?;
    let backend: Arc<dyn WorkerBackend> = Arc::new(backend);
    let shutdown = CancellationToken::new();
    let signals = crate::shutdown::cancel_on_signal(shutdown.clone());
    // Unique per process and readable in the job's lease holder.
    let prefix = format!("worker-{}-{}", std::process::id(), &uuid::Uuid::new_v4().simple().to_string()[..8]);
    tracing::info!(
        workers = args.workers,
        worker_prefix = prefix,
        renderer = renderer_settings.describe(),
        "creditgraph worker started"
    );
    let loops: Vec<_> = (1..=args.workers)
        .map(|number| {
            tokio::spawn(run_worker(
                Arc::clone(&backend),
                Arc::clone(&renderer),
                format!("{prefix}-w{number}"),
                config.clone(),
                shutdown.clone(),
            ))
        })
        .collect();
    let mut clean = true;
    for worker in loops {
        if worker.await.is_err() {
            tracing::error!("a worker loop ended abnormally");
            clean = false;
        }
    }
    shutdown.cancel();
    let _ = signals.await;
    tracing::info!("creditgraph worker stopped");
    Ok(if clean { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
