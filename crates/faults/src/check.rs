//! The checks after each round: recovery finished, no run's hold left pending, every balance
//! equal to what the driver's records say it must be, and no refund applied twice.
//!
//! Why the balance is recomputed here rather than read from `creditgraph verify`: verify proves
//! the journal is self-consistent, not that it holds the right entries. A lost capture, a
//! release that also charged, or a refund paid twice are all consistent journals; only an
//! outside record of what should have happened catches them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::api::{self, amount_text, field_micros};
use crate::workload::{bump, Counters, LedgerOp, ThreadSeen};

/// How long recovery may take after a restart (the dead instance's lease is 2 s).
const RECOVERY_SECONDS_MAX: u64 = 60;
/// Pages of journal entries read per account at most.
const ENTRY_PAGES_MAX: usize = 1000;

/// A run as the server reports it, with its jobs.
#[derive(Debug)]
struct RunView {
    run: Value,
    jobs: Vec<Value>,
}

async fn thread_runs(client: &reqwest::Client, base: &str, seen: &ThreadSeen) -> anyhow::Result<Vec<RunView>> {
    let Some(thread) = api::get_ok(client, base, &format!("/v1/threads/{}", seen.thread_id)).await? else {
        return Ok(Vec::new());
    };
    let jobs_path = format!("/v1/threads/{}/jobs?account_id={}", seen.thread_id, seen.account);
    let jobs = api::get_ok(client, base, &jobs_path).await?.unwrap_or(Value::Null);
    let jobs: Vec<Value> = jobs.get("jobs").and_then(Value::as_array).cloned().unwrap_or_default();
    let turns = thread.get("turns").and_then(Value::as_array).cloned().unwrap_or_default();
    Ok(turns
        .into_iter()
        .map(|run| {
            let run_id = run.get("run_id").cloned().unwrap_or(Value::Null);
            let jobs = jobs.iter().filter(|job| job.get("run_id") == Some(&run_id)).cloned().collect();
            RunView { run, jobs }
        })
        .collect())
}

fn hold_id_of(run: &Value) -> String {
    match run.get("hold_id").and_then(Value::as_str) {
        Some(hold_id) => hold_id.to_owned(),
        // The engine derives the hold id from the run id, so a hold taken but not yet recorded
        // on the run is found too.
        None => format!("hold-{}", run.get("run_id").and_then(Value::as_str).unwrap_or("")),
    }
}

/// Waits until none of `threads`' runs is `running` and none of their holds is pending.
/// `Err` with what is still open when the bound passes.
pub async fn wait_recovery(client: &reqwest::Client, base: &str, threads: &[ThreadSeen]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(RECOVERY_SECONDS_MAX);
    loop {
        let mut open = Vec::new();
        for seen in threads {
            for view in thread_runs(client, base, seen).await? {
                let run_id = view.run.get("run_id").and_then(Value::as_str).unwrap_or("?").to_owned();
                if view.run.get("state").and_then(Value::as_str) == Some("running") {
                    open.push(format!("{run_id} running"));
                    continue;
                }
                let hold = api::get_ok(client, base, &format!("/v1/holds/{}", hold_id_of(&view.run))).await?;
                if hold.as_ref().and_then(|hold| hold.get("state")).and_then(Value::as_str) == Some("pending") {
                    let state = view.run.get("state").and_then(Value::as_str).unwrap_or("?");
                    let error = view.run.pointer("/details/error/code").and_then(Value::as_str).unwrap_or("-");
                    let recorded = view.run.get("hold_id").and_then(Value::as_str).unwrap_or("none recorded");
                    open.push(format!(
                        "{run_id} ended {state} (error {error}, hold on the run: {recorded}) with its hold {} pending",
                        hold_id_of(&view.run)
                    ));
                }
            }
        }
        if open.is_empty() {
            return Ok(started.elapsed());
        }
        if Instant::now() >= deadline {
            anyhow::bail!("not recovered after {RECOVERY_SECONDS_MAX} s: {open:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What the runs of one account must have charged, from the server's run records.
#[derive(Debug, Default, PartialEq)]
struct RunCharges {
    /// Succeeded runs' `captured` plus the prices of video jobs of runs that did not succeed
    /// (a job's price is captured when it is created, whatever the turn does next).
    charged_micros: i64,
    /// Prices of refunded jobs (a refund grant each).
    refunded_micros: i64,
    refunded_jobs: BTreeSet<String>,
}

/// Everything the checks read about the runs; counts go to `runs`, problems to `violations`.
async fn run_charges(
    client: &reqwest::Client,
    base: &str,
    threads: &[ThreadSeen],
    runs: &mut Counters,
    violations: &mut Vec<String>,
) -> anyhow::Result<BTreeMap<String, RunCharges>> {
    let mut charges: BTreeMap<String, RunCharges> = BTreeMap::new();
    for seen in threads {
        let views = thread_runs(client, base, seen).await?;
        if views.is_empty() {
            bump(runs, "solve not started (no run)", 1);
        }
        for view in views {
            let entry = charges.entry(seen.account.clone()).or_default();
            let run_id = view.run.get("run_id").and_then(Value::as_str).unwrap_or("?").to_owned();
            let state = view.run.get("state").and_then(Value::as_str).unwrap_or("?").to_owned();
            bump(runs, leak(&format!("run {state}")), 1);
            let details = view.run.get("details").cloned().unwrap_or(Value::Null);
            let job_prices: i64 = view.jobs.iter().filter_map(|job| field_micros(job, "price")).sum();
            for job in &view.jobs {
                let status = job.get("status").and_then(Value::as_str).unwrap_or("?");
                bump(runs, leak(&format!("job {status}")), 1);
                if job.get("attempts").and_then(Value::as_u64).unwrap_or(0) > 1 {
                    bump(runs, "job retried after a failure", 1);
                }
                if job.get("refunded") == Some(&Value::Bool(true)) {
                    entry.refunded_micros += field_micros(job, "price").unwrap_or(0);
                    entry.refunded_jobs.insert(job.get("job_id").and_then(Value::as_str).unwrap_or("?").to_owned());
                }
            }
            let hold_path = format!("/v1/holds/{}", hold_id_of(&view.run));
            let hold = api::get_ok(client, base, &hold_path).await?;
            let hold_captured = hold.as_ref().and_then(|hold| field_micros(hold, "captured")).unwrap_or(0);
            if hold.is_some() {
                bump(runs, "run hold", 1);
            }
            if state == "succeeded" {
                let Some(captured) = field_micros(&details, "captured") else {
                    violations.push(format!("{run_id} succeeded without `captured`: {details}"));
                    continue;
                };
                entry.charged_micros += captured;
                let actual = field_micros(&details, "actual").unwrap_or(0);
                if captured != actual + job_prices || captured != hold_captured {
                    violations.push(format!(
                        "{run_id}: captured {} but actual {} + jobs {} and the hold captured {}",
                        amount_text(captured),
                        amount_text(actual),
                        amount_text(job_prices),
                        amount_text(hold_captured)
                    ));
                }
                if let Some(settled) = seen.settled_captured.as_deref().and_then(api::micros) {
                    if seen.run_id.as_deref() == Some(run_id.as_str()) && settled != captured {
                        violations.push(format!(
                            "{run_id}: the stream's credit_settled said {} but the run says {}",
                            amount_text(settled),
                            amount_text(captured)
                        ));
                    }
                }
            } else {
                // Nothing but the video jobs' prices may have been taken from a run that did not succeed.
                entry.charged_micros += job_prices;
                if hold_captured != job_prices {
                    violations.push(format!(
                        "{run_id} ended {state} but its hold captured {} (its jobs cost {})",
                        amount_text(hold_captured),
                        amount_text(job_prices)
                    ));
                }
            }
            if seen.run_id.as_deref() == Some(run_id.as_str()) {
                let expected = match seen.ending.as_deref() {
                    Some("done") => Some("succeeded"),
                    Some("canceled") => Some("canceled"),
                    Some("interrupted") => Some("interrupted"),
                    Some(_) => Some("failed"),
                    None => None,
                };
                if expected.is_some_and(|expected| expected != state) {
                    violations.push(format!("{run_id}: the stream ended {:?} but the run is {state}", seen.ending));
                }
            }
        }
    }
    Ok(charges)
}

/// Counter names are static; the few distinct state names are leaked once each.
fn leak(name: &str) -> &'static str {
    static NAMES: std::sync::Mutex<BTreeSet<&'static str>> = std::sync::Mutex::new(BTreeSet::new());
    let mut names = NAMES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(known) = names.get(name) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
    names.insert(leaked);
    leaked
}

/// Every journal entry of an account, in order.
pub(crate) async fn entries(client: &reqwest::Client, base: &str, account: &str) -> anyhow::Result<Vec<Value>> {
    let mut all = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..ENTRY_PAGES_MAX {
        let path = match &after {
            Some(after) => format!("/v1/accounts/{account}/entries?limit=100&after={after}"),
            None => format!("/v1/accounts/{account}/entries?limit=100"),
        };
        let page = api::get_ok(client, base, &path).await?.unwrap_or(Value::Null);
        all.extend(page.get("entries").and_then(Value::as_array).cloned().unwrap_or_default());
        match page.get("next").and_then(Value::as_str) {
            Some(next) => after = Some(next.to_owned()),
            None => return Ok(all),
        }
    }
    anyhow::bail!("{account} has more than {ENTRY_PAGES_MAX} pages of entries")
}

/// The balance check and the refund check, for every account.
pub async fn check_accounts(
    client: &reqwest::Client,
    base: &str,
    accounts: &[String],
    ops: &[LedgerOp],
    threads: &[ThreadSeen],
    runs: &mut Counters,
    violations: &mut Vec<String>,
) -> anyhow::Result<()> {
    // A video job may still end (and be refunded) while this reads; read the runs, the balances,
    // then the runs again, until both readings of the runs agree (bounded).
    let mut attempt = 0;
    let (charges, balances, run_violations) = loop {
        attempt += 1;
        let mut first_violations = Vec::new();
        let first = run_charges(client, base, threads, &mut Counters::new(), &mut first_violations).await?;
        let mut balances = BTreeMap::new();
        for account in accounts {
            let view = api::get_ok(client, base, &format!("/v1/accounts/{account}")).await?.unwrap_or(Value::Null);
            balances.insert(account.clone(), field_micros(&view, "balance").unwrap_or(0));
        }
        let mut again_violations = Vec::new();
        let mut counted = Counters::new();
        let again = run_charges(client, base, threads, &mut counted, &mut again_violations).await?;
        if first == again || attempt >= 10 {
            *runs = counted;
            break (again, balances, again_violations);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    violations.extend(run_violations);
    for account in accounts {
        let raw: i64 = ops.iter().filter(|op| &op.account == account).map(LedgerOp::balance_effect_micros).sum();
        let unknown = ops.iter().filter(|op| &op.account == account && !op.reply.is_definite()).count();
        if unknown > 0 {
            violations.push(format!("{account}: {unknown} operations whose outcome stayed unknown"));
        }
        let run = charges.get(account);
        let charged = run.map_or(0, |run| run.charged_micros);
        let refunded = run.map_or(0, |run| run.refunded_micros);
        let expected = raw - charged + refunded;
        let balance = balances.get(account).copied().unwrap_or(0);
        if balance != expected {
            violations.push(format!(
                "{account}: balance {} but the driver's records say {} (raw ledger {}, runs charged {}, jobs refunded {})",
                amount_text(balance),
                amount_text(expected),
                amount_text(raw),
                amount_text(charged),
                amount_text(refunded)
            ));
        }
        let mut refunds: BTreeMap<String, u32> = BTreeMap::new();
        for entry in entries(client, base, account).await? {
            if entry.get("kind").and_then(Value::as_str) == Some("refund") {
                let reference = entry.get("reference").and_then(Value::as_str).unwrap_or("").to_owned();
                *refunds.entry(reference).or_default() += 1;
            }
        }
        for (reference, count) in &refunds {
            if *count > 1 {
                violations.push(format!("{account}: refund {reference} applied {count} times"));
            }
        }
        for job_id in run.map(|run| &run.refunded_jobs).into_iter().flatten() {
            if !refunds.contains_key(&format!("{job_id}:refund")) {
                violations.push(format!("{account}: job {job_id} reads refunded but has no refund entry"));
            }
        }
        bump(runs, "refund entries", refunds.values().map(|count| u64::from(*count)).sum());
    }
    Ok(())
}
