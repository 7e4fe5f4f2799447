//! A database failover under load: proof that no acknowledged operation is lost when the
//! PostgreSQL primary dies and its synchronous standby is promoted, that the service follows
//! the promotion through its multi-host URL, and that clients retrying with their
//! Idempotency-Keys end with every operation applied exactly once.
//!
//! The scenario, on a [`Cluster`] (primary + synchronous standby on loopback):
//! 1. `creditgraph serve` with `postgres://primary,standby/db?target_session_attrs=read-write`;
//! 2. grants, then clients that each take holds and capture them (final), every request with an
//!    Idempotency-Key and retried with the same key until it gets a definite answer (2xx or
//!    4xx; a 503 or a lost response says nothing for certain);
//! 3. once a share of the operations is acknowledged, `kill -9` of the primary;
//! 4. `/readyz` sampled from then on: 503 (problem+json, `store_unavailable`) until the standby
//!    is promoted, 200 after;
//! 5. the checks: every acknowledged operation replays to its first answer, every hold has one
//!    hold entry and one capture entry in the journal, every balance is grants minus captures,
//!    nothing is held, and `creditgraph verify` is clean.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use engine::testing::FakeProvider;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::api::{self, amount_text, field_micros, Reply};
use crate::cluster::{Cluster, Side};
use crate::server::{self, ServerProcess, ServerSpec};

/// The database the service uses on the pair.
const DATABASE: &str = "creditgraph";
/// How long one client operation may keep retrying before it counts as never answered.
const OPERATION_SECONDS_MAX: u64 = 60;
/// A client's pause between two attempts of one operation (its retry policy; the scenario
/// itself waits on events).
const RETRY_PAUSE_MILLIS: u64 = 25;
/// Bound on `/readyz` turning 503 after the kill, and 200 after the promotion.
const READINESS_SECONDS_MAX: u64 = 30;
/// Consecutive 503 samples of `/readyz` required before the standby is promoted.
const OUTAGE_SAMPLES_MIN: usize = 3;
/// Credits granted to each account, in micro-credits: more than every hold can take.
const GRANT_MICROS: i64 = 10_000 * 1_000_000;

/// What to run.
#[derive(Clone, Debug)]
pub struct FailoverSettings {
    /// The `creditgraph` binary under test.
    pub server_binary: PathBuf,
    /// PostgreSQL's server binaries folder (`initdb`, `pg_ctl`, `pg_basebackup`, `psql`).
    pub pg_bin: PathBuf,
    pub seed: u64,
    pub accounts: usize,
    pub clients: usize,
    /// Hold-then-capture pairs each client performs.
    pub pairs_per_client: usize,
    /// Percent of all operations acknowledged before the primary is killed.
    pub kill_at_percent: usize,
}

impl FailoverSettings {
    pub fn new(server_binary: PathBuf, pg_bin: PathBuf) -> FailoverSettings {
        FailoverSettings {
            server_binary,
            pg_bin,
            seed: rand::random(),
            accounts: 4,
            clients: 8,
            pairs_per_client: 20,
            kill_at_percent: 35,
        }
    }

    fn operations(&self) -> usize {
        self.clients * self.pairs_per_client * 2
    }
}

/// What happened, with the numbers the README and the report quote.
#[derive(Debug, Default)]
pub struct FailoverReport {
    pub seed: u64,
    /// Holds and captures sent (grants not counted).
    pub operations: usize,
    /// Operations answered 2xx (each after however many attempts).
    pub acknowledged: usize,
    /// Of those, acknowledged before the kill.
    pub acknowledged_before_kill: usize,
    /// Acknowledged operations missing or changed after the failover (must be 0).
    pub lost: usize,
    /// Attempts answered 503 or with no answer (retried with the same key).
    pub unavailable_attempts: usize,
    /// `/readyz` samples between the kill and the first 200, by status.
    pub readyz_samples: BTreeMap<u16, usize>,
    /// From the kill to the first 503 of `/readyz`.
    pub kill_to_unready: Duration,
    /// From the kill to the first 200 of `/readyz` (the 503 window).
    pub kill_to_ready: Duration,
    /// From `pg_ctl promote` returning to the first 200 of `/readyz`.
    pub promote_to_ready: Duration,
    pub elapsed: Duration,
    pub violations: Vec<String>,
    pub log_path: PathBuf,
}

impl std::fmt::Display for FailoverReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "failover summary (seed {}) in {:.1?}", self.seed, self.elapsed)?;
        writeln!(f, "  operations (holds + captures)       {:>6}", self.operations)?;
        writeln!(f, "  acknowledged                        {:>6}", self.acknowledged)?;
        writeln!(f, "  acknowledged before the kill        {:>6}", self.acknowledged_before_kill)?;
        writeln!(f, "  acknowledged then lost              {:>6}", self.lost)?;
        writeln!(f, "  attempts answered 503 or lost       {:>6}", self.unavailable_attempts)?;
        writeln!(f, "  /readyz samples in the outage       {:?}", self.readyz_samples)?;
        writeln!(f, "  kill -> /readyz 503                 {:.0?}", self.kill_to_unready)?;
        writeln!(f, "  kill -> /readyz 200 (503 window)    {:.0?}", self.kill_to_ready)?;
        writeln!(f, "  promote -> /readyz 200              {:.0?}", self.promote_to_ready)?;
        writeln!(f, "  VIOLATIONS                          {:>6}", self.violations.len())?;
        for violation in &self.violations {
            writeln!(f, "    ! {violation}")?;
        }
        if !self.violations.is_empty() {
            writeln!(f, "  server log: {}", self.log_path.display())?;
        }
        Ok(())
    }
}

/// One hold or capture, as its client saw it.
#[derive(Clone, Debug)]
struct Operation {
    account: String,
    key: String,
    path: String,
    body: Value,
    /// The last answer: definite unless the operation ran out of time.
    reply: Reply,
    acknowledged_at: Option<Instant>,
}

impl Operation {
    fn acknowledged(&self) -> bool {
        matches!(self.reply, Reply::Answered { status, .. } if (200..300).contains(&status))
    }
}

/// One hold and its capture.
#[derive(Clone, Debug)]
struct Pair {
    account: String,
    hold: Operation,
    hold_id: Option<String>,
    captured_micros: i64,
    capture: Option<Operation>,
}

/// Shared by the clients and the scenario.
struct Progress {
    acknowledged: watch::Sender<usize>,
    unavailable: AtomicUsize,
}

/// Sends `operation` until it gets a definite answer, with the same key every time.
async fn send_until_definite(
    client: &reqwest::Client,
    base: &str,
    mut operation: Operation,
    progress: &Progress,
) -> Operation {
    let deadline = Instant::now() + Duration::from_secs(OPERATION_SECONDS_MAX);
    loop {
        operation.reply = api::post(client, base, &operation.path, Some(&operation.key), &operation.body).await;
        if operation.reply.is_definite() {
            if operation.acknowledged() {
                operation.acknowledged_at = Some(Instant::now());
                progress.acknowledged.send_modify(|count| *count += 1);
            }
            return operation;
        }
        progress.unavailable.fetch_add(1, Ordering::Relaxed);
        if Instant::now() >= deadline {
            return operation;
        }
        // The client's retry pause: without it a client spins on 503s while the database is away.
        tokio::time::sleep(Duration::from_millis(RETRY_PAUSE_MILLIS)).await;
    }
}

/// One client: holds, each captured (final) right after.
async fn drive_client(
    client: reqwest::Client,
    base: String,
    accounts: Vec<String>,
    prefix: String,
    pairs: usize,
    seed: u64,
    progress: Arc<Progress>,
) -> Vec<Pair> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut done = Vec::new();
    for index in 0..pairs {
        let account = accounts[rng.random_range(0..accounts.len())].clone();
        let key = format!("{prefix}-{index}");
        // Whole and fractional amounts, so that exactness is exercised too.
        let amount = rng.random_range(1..40) * 250_000;
        let hold = Operation {
            account: account.clone(),
            key: format!("{key}-hold"),
            path: "/v1/holds".to_owned(),
            body: json!({"account_id": account, "amount": amount_text(amount), "reference": key}),
            reply: Reply::Lost("not sent".to_owned()),
            acknowledged_at: None,
        };
        let hold = send_until_definite(&client, &base, hold, &progress).await;
        let hold_id = match &hold.reply {
            Reply::Answered { status: 201, body } => body.get("hold_id").and_then(Value::as_str).map(str::to_owned),
            _ => None,
        };
        let mut pair = Pair { account: account.clone(), hold, hold_id, captured_micros: 0, capture: None };
        if let Some(hold_id) = &pair.hold_id {
            let captured = rng.random_range(1..=amount / 250_000) * 250_000;
            let capture = Operation {
                account: account.clone(),
                key: format!("{key}-capture"),
                path: format!("/v1/holds/{hold_id}/capture"),
                body: json!({"amount": amount_text(captured), "final": true}),
                reply: Reply::Lost("not sent".to_owned()),
                acknowledged_at: None,
            };
            pair.captured_micros = captured;
            pair.capture = Some(send_until_definite(&client, &base, capture, &progress).await);
        }
        done.push(pair);
    }
    done
}

/// `/readyz` once: its status, and the problem code of a 503.
async fn readyz(client: &reqwest::Client, base: &str) -> (u16, Option<String>, Option<String>) {
    let sent = client.get(format!("{base}/readyz")).timeout(Duration::from_secs(5)).send().await;
    let Ok(response) = sent else { return (0, None, None) };
    let status = response.status().as_u16();
    let content_type = response.headers().get("content-type").and_then(|value| value.to_str().ok()).map(str::to_owned);
    let body: Value = response.json().await.unwrap_or(Value::Null);
    (status, content_type, body.get("code").and_then(Value::as_str).map(str::to_owned))
}

/// Runs the scenario. `Err` only when the scenario itself cannot go on (a server does not
/// start, the database cannot be set up); what the checks find goes into the violations.
pub async fn run(settings: &FailoverSettings) -> anyhow::Result<FailoverReport> {
    let started = Instant::now();
    let mut report = FailoverReport { seed: settings.seed, operations: settings.operations(), ..Default::default() };
    let pg_bin = settings.pg_bin.clone();
    let cluster = tokio::task::spawn_blocking(move || Cluster::start(&pg_bin, DATABASE)).await??;
    let cluster = Arc::new(cluster);
    let url = cluster.multi_host_url(DATABASE);

    let fake = FakeProvider::start().await;
    crate::workload::script_defaults(&fake);
    let dir = tempfile::Builder::new().prefix("creditgraph-failover-").tempdir()?;
    report.log_path = std::env::temp_dir().join(format!("creditgraph-failover-{:x}.log", settings.seed));
    let spec = ServerSpec {
        binary: settings.server_binary.clone(),
        database: url.clone(),
        llm_base_url: fake.base_url(),
        renderer_command: crate::write_renderer(dir.path())?,
        log_path: report.log_path.clone(),
    };
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build()?;
    let mut server = ServerProcess::start(&spec, &client).await?;
    let base = server.base.clone();

    let accounts: Vec<String> = (0..settings.accounts).map(|index| format!("acct-{index}")).collect();
    let (acknowledged, mut acknowledged_seen) = watch::channel(0_usize);
    let progress = Arc::new(Progress { acknowledged, unavailable: AtomicUsize::new(0) });
    for account in &accounts {
        let grant = Operation {
            account: account.clone(),
            key: format!("grant-{account}"),
            path: format!("/v1/accounts/{account}/grants"),
            body: json!({"amount": amount_text(GRANT_MICROS), "reference": format!("grant-{account}")}),
            reply: Reply::Lost("not sent".to_owned()),
            acknowledged_at: None,
        };
        let grant = send_until_definite(&client, &base, grant, &progress).await;
        anyhow::ensure!(grant.acknowledged(), "granting {account}: {:?}", grant.reply);
    }
    progress.acknowledged.send_replace(0);
    progress.unavailable.store(0, Ordering::Relaxed);

    let mut rng = StdRng::seed_from_u64(settings.seed);
    let clients: Vec<_> = (0..settings.clients)
        .map(|index| {
            tokio::spawn(drive_client(
                client.clone(),
                base.clone(),
                accounts.clone(),
                format!("c{index}"),
                settings.pairs_per_client,
                rng.random(),
                progress.clone(),
            ))
        })
        .collect();

    // The kill, once a share of the operations is acknowledged: mid-load, whatever the speed.
    let kill_at = (settings.operations() * settings.kill_at_percent / 100).max(1);
    acknowledged_seen.wait_for(|count| *count >= kill_at).await.context("the clients stopped early")?;
    let killer = cluster.clone();
    tokio::task::spawn_blocking(move || killer.kill_primary()).await??;
    let killed_at = Instant::now();
    let unavailable_at_kill = progress.unavailable.load(Ordering::Relaxed);

    // No primary: /readyz must turn 503 and stay so until the promotion.
    let mut consecutive = 0;
    let deadline = killed_at + Duration::from_secs(READINESS_SECONDS_MAX);
    while consecutive < OUTAGE_SAMPLES_MIN || progress.unavailable.load(Ordering::Relaxed) == unavailable_at_kill {
        anyhow::ensure!(
            Instant::now() < deadline,
            "no outage seen within {READINESS_SECONDS_MAX} s of the kill ({consecutive} consecutive 503s)"
        );
        let (status, content_type, code) = readyz(&client, &base).await;
        *report.readyz_samples.entry(status).or_default() += 1;
        match status {
            503 => {
                if consecutive == 0 && report.kill_to_unready.is_zero() {
                    report.kill_to_unready = killed_at.elapsed();
                }
                consecutive += 1;
                if content_type.as_deref() != Some("application/problem+json")
                    || code.as_deref() != Some("store_unavailable")
                {
                    report
                        .violations
                        .push(format!("/readyz 503 without the problem: content-type {content_type:?}, code {code:?}"));
                }
            }
            // The primary's port refuses connections: nothing may say the store takes writes.
            200 => report.violations.push(format!("/readyz answered 200 {:.0?} after the kill", killed_at.elapsed())),
            _ => consecutive = 0,
        }
    }

    let promoter = cluster.clone();
    tokio::task::spawn_blocking(move || promoter.promote_standby()).await??;
    let promoted_at = Instant::now();
    let deadline = promoted_at + Duration::from_secs(READINESS_SECONDS_MAX);
    loop {
        let (status, _, _) = readyz(&client, &base).await;
        if status == 200 {
            report.kill_to_ready = killed_at.elapsed();
            report.promote_to_ready = promoted_at.elapsed();
            break;
        }
        *report.readyz_samples.entry(status).or_default() += 1;
        anyhow::ensure!(
            Instant::now() < deadline,
            "/readyz is still {status} {READINESS_SECONDS_MAX} s after the promotion (standby log: {})",
            cluster.log_tail(Side::Standby)
        );
    }

    let mut pairs = Vec::new();
    for task in clients {
        pairs.extend(task.await.context("a client task panicked")?);
    }
    report.unavailable_attempts = progress.unavailable.load(Ordering::Relaxed);
    check(&client, &base, &accounts, &pairs, killed_at, &mut report).await?;

    if !server.terminate().await? {
        report.violations.push("the server did not stop cleanly on SIGTERM".to_owned());
    }
    if let Some(output) = server::verify(&spec.binary, &url)? {
        report.violations.push(format!("creditgraph verify failed after the failover: {output}"));
    }
    drop(cluster);
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Every acknowledged operation present and unchanged, each hold applied and captured once,
/// balances equal to grants minus captures.
async fn check(
    client: &reqwest::Client,
    base: &str,
    accounts: &[String],
    pairs: &[Pair],
    killed_at: Instant,
    report: &mut FailoverReport,
) -> anyhow::Result<()> {
    let operations = pairs.iter().flat_map(|pair| std::iter::once(&pair.hold).chain(pair.capture.as_ref()));
    for operation in operations {
        if !operation.reply.is_definite() {
            report.violations.push(format!("{} never got a definite answer: {:?}", operation.key, operation.reply));
            continue;
        }
        if !operation.acknowledged() {
            report.violations.push(format!("{} was refused: {:?}", operation.key, operation.reply));
            continue;
        }
        report.acknowledged += 1;
        if operation.acknowledged_at.is_some_and(|at| at < killed_at) {
            report.acknowledged_before_kill += 1;
        }
        // The key's record survived: the replay answers the first answer, byte for byte.
        let again = api::post(client, base, &operation.path, Some(&operation.key), &operation.body).await;
        if again != operation.reply {
            report.lost += 1;
            report.violations.push(format!(
                "{} ({}) replays as {again:?}, first {:?}",
                operation.key, operation.account, operation.reply
            ));
        }
    }

    let mut captured_by_account: BTreeMap<&str, i64> = BTreeMap::new();
    let mut holds_by_account: BTreeMap<&str, Vec<&Pair>> = BTreeMap::new();
    for pair in pairs {
        if pair.capture.as_ref().is_some_and(Operation::acknowledged) {
            *captured_by_account.entry(pair.account.as_str()).or_default() += pair.captured_micros;
        }
        holds_by_account.entry(pair.account.as_str()).or_default().push(pair);
    }
    for account in accounts {
        let mut hold_entries: BTreeMap<String, usize> = BTreeMap::new();
        let mut capture_entries: BTreeMap<String, usize> = BTreeMap::new();
        for entry in crate::check::entries(client, base, account).await? {
            let hold_id = entry.get("hold_id").and_then(Value::as_str).unwrap_or("").to_owned();
            match entry.get("kind").and_then(Value::as_str) {
                Some("hold") => *hold_entries.entry(hold_id).or_default() += 1,
                Some("capture") => *capture_entries.entry(hold_id).or_default() += 1,
                _ => {}
            }
        }
        let pairs = holds_by_account.get(account.as_str()).map(Vec::as_slice).unwrap_or_default();
        for pair in pairs {
            let Some(hold_id) = &pair.hold_id else { continue };
            let holds = hold_entries.get(hold_id).copied().unwrap_or(0);
            let captures = capture_entries.get(hold_id).copied().unwrap_or(0);
            if (holds, captures) != (1, 1) {
                report.violations.push(format!(
                    "{account}: hold {hold_id} has {holds} hold and {captures} capture entries, not one of each"
                ));
            }
            let hold = api::get_ok(client, base, &format!("/v1/holds/{hold_id}")).await?;
            let state = hold.as_ref().and_then(|hold| hold.get("state")).and_then(Value::as_str);
            let captured = hold.as_ref().and_then(|hold| field_micros(hold, "captured"));
            if state != Some("captured") || captured != Some(pair.captured_micros) {
                report.violations.push(format!(
                    "{account}: hold {hold_id} is {state:?} with {captured:?} captured, expected captured {}",
                    pair.captured_micros
                ));
            }
        }
        let view = api::get_ok(client, base, &format!("/v1/accounts/{account}")).await?.unwrap_or(Value::Null);
        let expected = GRANT_MICROS - captured_by_account.get(account.as_str()).copied().unwrap_or(0);
        let (balance, held, available) =
            (field_micros(&view, "balance"), field_micros(&view, "held"), field_micros(&view, "available"));
        if (balance, held, available) != (Some(expected), Some(0), Some(expected)) {
            report.violations.push(format!(
                "{account}: balance {balance:?}, held {held:?}, available {available:?}; expected {expected}, 0, {expected}"
            ));
        }
    }
    Ok(())
}
