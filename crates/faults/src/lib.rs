//! The fault-injection suite: proof, under injected faults, that every credit ends captured or
//! released and that the ledger says what the clients were told.
//!
//! Why a separate driver instead of more tests in `crates/cli/tests`: the faults worth injecting
//! — `kill -9` at a random moment, a provider that errors or hangs, a client that leaves, a
//! cancel racing the settlement, a response lost with its request applied — interact, and only
//! many randomized rounds against the real binary on both stores find the interleavings that a
//! hand-written test does not think of. The driver keeps its own record of what it did and
//! checks the ledger against it after each round (see [`check`]).
//!
//! One round, per store:
//! 1. start `creditgraph serve` (instance lease 2 s, one in-process video worker, a renderer
//!    script that fails some renders, the driver's [`engine::testing::FakeProvider`] as LLM);
//! 2. grant credits to a few accounts; start solve runs (`[solve]`, `[solve, pdf]`,
//!    `[solve, video]`) with scripted replies (fast, slow, 500 bursts, timeouts) whose clients
//!    read, leave early or cancel, and raw ledger operations (holds, captures, releases,
//!    debits) with random Idempotency-Key replays;
//! 3. at a random moment `kill -9` the server (or, in the long form sometimes, SIGTERM it);
//! 4. restart it, replay every operation whose response was lost, wait (bounded) until no run
//!    is `running` and no run's hold is pending;
//! 5. check balances against the driver's records, refunds at most once per reference, then
//!    stop the server and run `creditgraph verify`.

pub mod api;
pub mod check;
pub mod cluster;
pub mod failover;
pub mod server;
pub mod workload;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use engine::testing::FakeProvider;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use server::{ServerProcess, ServerSpec};
use workload::{bump, Counters, LedgerOp, Load, ThreadSeen};

/// The stores the suite runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    Sqlite,
    Postgres,
}

impl Store {
    pub fn name(self) -> &'static str {
        match self {
            Store::Sqlite => "sqlite",
            Store::Postgres => "postgres",
        }
    }
}

/// Operations sent all at once just before each fault.
const BURST_OPS: usize = 8;

/// What to run.
#[derive(Clone, Debug)]
pub struct Settings {
    pub stores: Vec<Store>,
    pub rounds: u32,
    pub seed: u64,
    /// The `creditgraph` binary under test.
    pub server_binary: PathBuf,
    pub load: Load,
    /// Percent of rounds ending with SIGTERM (graceful shutdown mid-load) instead of `kill -9`.
    pub sigterm_percent: u32,
    /// A shell command that restarts the PostgreSQL server (e.g. `pg_ctl restart`); without it
    /// the database-restart fault is skipped and the summary says so.
    pub postgres_restart_command: Option<String>,
    /// Percent of PostgreSQL rounds that restart the database server (with the command above).
    pub postgres_restart_percent: u32,
}

impl Settings {
    /// CI: both stores, a few rounds, `kill -9` every round.
    pub fn short(server_binary: PathBuf) -> Settings {
        Settings {
            stores: vec![Store::Sqlite, Store::Postgres],
            rounds: 3,
            seed: rand::random(),
            server_binary,
            load: Load { runs_per_round: 6, ledger_tasks: 3, ops_per_task: 8, kill_ms_max: 2500 },
            sigterm_percent: 0,
            postgres_restart_command: None,
            postgres_restart_percent: 0,
        }
    }

    /// At least 20 `kill -9` per store (24 rounds, a few of them SIGTERM instead).
    pub fn long(server_binary: PathBuf) -> Settings {
        Settings {
            rounds: 26,
            load: Load { runs_per_round: 10, ledger_tasks: 4, ops_per_task: 12, kill_ms_max: 4000 },
            sigterm_percent: 10,
            postgres_restart_percent: 25,
            ..Settings::short(server_binary)
        }
    }
}

/// What happened on one store.
#[derive(Debug, Default)]
pub struct StoreReport {
    pub store: &'static str,
    pub rounds: u32,
    pub faults: Counters,
    pub runs: Counters,
    pub ledger: Counters,
    pub violations: Vec<String>,
    pub notes: Vec<String>,
    pub elapsed: Duration,
    pub log_path: PathBuf,
}

/// The whole suite's outcome.
#[derive(Debug, Default)]
pub struct Report {
    pub seed: u64,
    pub stores: Vec<StoreReport>,
}

impl Report {
    pub fn violations(&self) -> usize {
        self.stores.iter().map(|store| store.violations.len()).sum()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "fault-injection summary (seed {})", self.seed)?;
        for store in &self.stores {
            writeln!(f, "\n== {} : {} rounds in {:.0?}", store.store, store.rounds, store.elapsed)?;
            for (title, counters) in [("faults", &store.faults), ("runs", &store.runs), ("ledger", &store.ledger)] {
                for (name, count) in counters {
                    writeln!(f, "  {title:<7} {name:<36} {count:>6}")?;
                }
            }
            writeln!(f, "  {:<44} {:>6}", "VIOLATIONS", store.violations.len())?;
            for violation in &store.violations {
                writeln!(f, "    ! {violation}")?;
            }
            for note in &store.notes {
                writeln!(f, "  note: {note}")?;
            }
            if !store.violations.is_empty() {
                writeln!(f, "  server log: {}", store.log_path.display())?;
            }
        }
        writeln!(f, "\ntotal violations: {}", self.violations())
    }
}

/// `creditgraph` next to this executable: `target/<profile>/creditgraph` for the binary
/// `target/<profile>/creditgraph-faults` and for a test in `target/<profile>/deps/`.
pub fn default_server_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("the executable has a folder")?.to_path_buf();
    if dir.file_name().is_some_and(|name| name == "deps") {
        dir.pop();
    }
    let binary = dir.join("creditgraph");
    anyhow::ensure!(
        binary.is_file(),
        "{} is missing: build it first with `cargo build -p cli -p faults` (same profile), or pass --server-binary",
        binary.display()
    );
    Ok(binary)
}

/// A renderer that fails some renders: permanently (refunded), transiently (retried) or not.
const RENDERER_SCRIPT: &str = r#"#!/bin/sh
cat >/dev/null
roll=$(od -An -N1 -tu1 /dev/urandom | tr -d ' ')
if [ "$roll" -lt 40 ]; then echo "error_code render_failed" >&2; exit 1; fi
if [ "$roll" -lt 90 ]; then exit 75; fi
printf 'not really a video'
"#;

pub(crate) fn write_renderer(dir: &Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("renderer.sh");
    std::fs::write(&path, RENDERER_SCRIPT)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path.display().to_string())
}

/// Runs the suite. `Err` only when the driver itself cannot go on (the binary is missing, a
/// server does not start); what the checks find goes into the report's violations.
pub async fn run(settings: &Settings) -> anyhow::Result<Report> {
    let mut report = Report { seed: settings.seed, stores: Vec::new() };
    for (index, store) in settings.stores.iter().enumerate() {
        let seed = settings.seed.wrapping_add(index as u64 * 1_000_003);
        report.stores.push(run_store(settings, *store, seed).await?);
    }
    Ok(report)
}

/// Everything the driver knows about one store across rounds.
struct StoreState {
    client: reqwest::Client,
    spec: ServerSpec,
    fake: FakeProvider,
    accounts: Vec<String>,
    ops: Vec<LedgerOp>,
    threads: Vec<ThreadSeen>,
    report: StoreReport,
}

async fn run_store(settings: &Settings, store: Store, seed: u64) -> anyhow::Result<StoreReport> {
    let started = Instant::now();
    let dir = tempfile::Builder::new().prefix("creditgraph-faults-").tempdir()?;
    let database = match store {
        Store::Sqlite => format!("sqlite:{}", dir.path().join("ledger.db").display()),
        Store::Postgres => {
            anyhow::ensure!(
                std::env::var(store_postgres::testing::TEST_URL_VARIABLE).is_ok_and(|url| !url.is_empty()),
                "the PostgreSQL rounds need {}: run under `scripts/test.sh` (its nextest run includes the \
                 short form), or set it to an admin URL of a throw-away cluster",
                store_postgres::testing::TEST_URL_VARIABLE
            );
            store_postgres::testing::fresh_database().await
        }
    };
    let fake = FakeProvider::start().await;
    workload::script_defaults(&fake);
    let log_path = std::env::temp_dir().join(format!("creditgraph-faults-{}-{seed:x}.log", store.name()));
    let spec = ServerSpec {
        binary: settings.server_binary.clone(),
        database: database.clone(),
        llm_base_url: fake.base_url(),
        renderer_command: write_renderer(dir.path())?,
        log_path: log_path.clone(),
    };
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
    let mut state = StoreState {
        client,
        spec,
        fake,
        accounts: (0..3).map(|index| format!("acct-{index}")).collect(),
        ops: Vec::new(),
        threads: Vec::new(),
        report: StoreReport { store: store.name(), log_path, ..StoreReport::default() },
    };
    if store == Store::Postgres && settings.postgres_restart_command.is_none() {
        state.report.notes.push(
            "PostgreSQL restart not injected: scripts/test.sh does not export its cluster's data folder; \
             pass --postgres-restart-command to inject it"
                .to_owned(),
        );
    }
    let mut rng = StdRng::seed_from_u64(seed);
    for round in 0..settings.rounds {
        round_once(settings, store, &mut state, round, &mut rng).await.with_context(|| {
            format!("{} round {round} (server log {})", store.name(), state.report.log_path.display())
        })?;
        state.report.rounds += 1;
    }
    state.report.elapsed = started.elapsed();
    let ledger = &mut state.report.ledger;
    for op in &state.ops {
        let kind = match op.kind {
            workload::OpKind::Grant(_) => "grant",
            workload::OpKind::Debit(_) => "debit",
            workload::OpKind::Hold(_) => "hold",
            workload::OpKind::Capture(_) => "capture",
            workload::OpKind::Release => "release",
        };
        let outcome = match op.reply.status() {
            Some(status) if (200..300).contains(&status) => "ok",
            Some(_) => "refused",
            None => "unknown",
        };
        bump(ledger, leak_pair(kind, outcome), 1);
    }
    Ok(state.report)
}

fn leak_pair(kind: &str, outcome: &str) -> &'static str {
    Box::leak(format!("{kind} {outcome}").into_boxed_str())
}

async fn round_once(
    settings: &Settings,
    store: Store,
    state: &mut StoreState,
    round: u32,
    rng: &mut StdRng,
) -> anyhow::Result<()> {
    let client = state.client.clone();
    let mut server = ServerProcess::start(&state.spec, &client).await?;
    let base = server.base.clone();
    let prefix = format!("{}-r{round}", store.name());

    // Grants first: the credits the round spends.
    for account in state.accounts.clone() {
        let amount = rng.random_range(60..160) * 1_000_000;
        let key = format!("{prefix}-grant-{account}");
        let op = LedgerOp {
            account: account.clone(),
            kind: workload::OpKind::Grant(amount),
            key: key.clone(),
            path: format!("/v1/accounts/{account}/grants"),
            body: json!({"amount": api::amount_text(amount), "reference": key}),
            reply: api::Reply::Lost("not sent".to_owned()),
        };
        let op = workload::send_op(&client, &base, op, rng, 50, &mut state.report.faults, &mut state.report.violations)
            .await;
        state.ops.push(op);
    }

    // The load, and the fault at a random moment within it.
    let down = Arc::new(AtomicBool::new(false));
    let kill_after = Duration::from_millis(rng.random_range(200..settings.load.kill_ms_max));
    let mut run_tasks = Vec::new();
    for index in 0..settings.load.runs_per_round {
        workload::script_run(&state.fake, rng, &mut state.report.faults);
        let behaviour = workload::pick_client(rng, &mut state.report.faults);
        let account = state.accounts[rng.random_range(0..state.accounts.len())].clone();
        let thread_id = format!("{prefix}-t{index}");
        let delay = Duration::from_millis(rng.random_range(0..kill_after.as_millis() as u64 + 1));
        let (client, base, down) = (client.clone(), base.clone(), down.clone());
        run_tasks.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            if down.load(Ordering::SeqCst) {
                // Never sent: no run can exist, but the thread is checked anyway.
                return ThreadSeen { thread_id, account, run_id: None, settled_captured: None, ending: None };
            }
            workload::drive_run(client, base, account, thread_id, behaviour).await
        }));
    }
    let mut ledger_tasks = Vec::new();
    for task in 0..settings.load.ledger_tasks {
        ledger_tasks.push(tokio::spawn(workload::drive_ledger(
            client.clone(),
            base.clone(),
            state.accounts.clone(),
            format!("{prefix}-l{task}"),
            settings.load.ops_per_task,
            2 * settings.load.kill_ms_max / settings.load.ops_per_task.max(1) as u64,
            rng.random(),
            down.clone(),
        )));
    }
    tokio::time::sleep(kill_after).await;
    // A burst of operations right before the fault, so that some are in flight when it lands:
    // their responses are lost and only a replay after the restart tells whether they applied.
    let mut burst = Vec::new();
    for index in 0..BURST_OPS {
        let account = state.accounts[rng.random_range(0..state.accounts.len())].clone();
        let op = workload::burst_op(
            account,
            format!("{prefix}-burst{index}"),
            rng.random_range(1..20) * 500_000,
            rng.random_bool(0.5),
        );
        let (client, base, seed) = (client.clone(), base.clone(), rng.random());
        burst.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(seed);
            workload::send_op(&client, &base, op, &mut rng, 0, &mut Counters::new(), &mut Vec::new()).await
        }));
    }
    tokio::time::sleep(Duration::from_millis(rng.random_range(0..15))).await;
    down.store(true, Ordering::SeqCst);
    if rng.random_range(0..100) < settings.sigterm_percent {
        bump(&mut state.report.faults, "SIGTERM mid-load", 1);
        if !server.terminate().await? {
            state.report.violations.push(format!("round {round}: SIGTERM did not end the server cleanly"));
        }
    } else {
        bump(&mut state.report.faults, "kill -9", 1);
        server.kill9();
    }
    for task in run_tasks {
        state.threads.push(task.await?);
    }
    let first_new_op = state.ops.len();
    for task in burst {
        state.ops.push(task.await?);
    }
    for task in ledger_tasks {
        let (ops, faults, violations) = task.await?;
        state.ops.extend(ops);
        for (name, count) in faults {
            bump(&mut state.report.faults, name, count);
        }
        state.report.violations.extend(violations);
    }

    // Restart, optionally lose the database connection too, learn the lost outcomes, recover.
    let mut server = ServerProcess::start(&state.spec, &client).await?;
    let base = server.base.clone();
    if store == Store::Postgres && rng.random_range(0..100) < settings.postgres_restart_percent {
        if let Some(command) = &settings.postgres_restart_command {
            let status = std::process::Command::new("sh").args(["-c", command]).status()?;
            anyhow::ensure!(status.success(), "the PostgreSQL restart command failed: {status}");
            bump(&mut state.report.faults, "PostgreSQL restart", 1);
        }
    }
    workload::resolve_lost(&client, &base, &mut state.ops[first_new_op..], &mut state.report.faults).await;
    let round_threads: Vec<ThreadSeen> =
        state.threads.iter().filter(|seen| seen.thread_id.starts_with(&format!("{prefix}-"))).cloned().collect();
    if let Err(error) = check::wait_recovery(&client, &base, &round_threads).await {
        state.report.violations.push(format!("round {round}: {error}"));
    }
    check::check_accounts(
        &client,
        &base,
        &state.accounts,
        &state.ops,
        &state.threads,
        &mut state.report.runs,
        &mut state.report.violations,
    )
    .await?;
    if !server.terminate().await? {
        state.report.violations.push(format!("round {round}: the server did not stop cleanly on SIGTERM"));
    }
    if let Some(output) = server::verify(&state.spec.binary, &state.spec.database)? {
        state.report.violations.push(format!("round {round}: creditgraph verify failed: {output}"));
    }
    Ok(())
}
