//! The in-process driver: many concurrent callers on one store's API, closed loop (each caller
//! sends its next operation when the previous one answered), for a fixed time.
//!
//! After the run it checks the ledger: the store's own `verify`, and conservation from the
//! outside — the sum of every account's balance must equal what was granted minus what the
//! driver saw captured (holds count in the balance until they end; expired holds return).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use ledger::{AccountId, Amount, Command, GrantId, HoldId, Outcome, Overage, Rejection};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use store::{Executed, LedgerStore, Request};

use crate::measure::{machine_cpu_busy, Latencies, LatencySummary};
use crate::stores::{Opened, StoreCounters, StoreKind};
use crate::workload::{
    account_id, account_name, Ending, Picker, Step, Workload, CAPTURE_CREDITS, HOLD_TTL_SECONDS,
    HOLD_TTL_SECONDS_EXPIRING,
};

/// Concurrent grant tasks while seeding accounts.
const SEED_CONCURRENCY: usize = 64;

#[derive(Clone, Debug)]
pub struct InProcessRun {
    pub callers: usize,
    /// How long the measured phase lasts.
    pub duration: Duration,
    /// How long the unmeasured warm-up before it lasts (see [`warm_up`]).
    pub warm_up: Duration,
    pub seed: u64,
}

/// What the warm-up left in the store, which the measured run's conservation check counts.
#[derive(Clone, Copy, Debug, Default)]
pub struct WarmedUp {
    tally: Tally,
}

/// What the callers saw, summed.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Tally {
    pub holds: u64,
    pub holds_refused: u64,
    pub captures: u64,
    pub releases: u64,
    pub left_to_expire: u64,
    pub reads: u64,
    pub replays: u64,
    /// Store errors (unavailable, contention): requests that got no ledger answer.
    pub errors: u64,
    /// Answers the ledger should never give in this workload (conflicts, wrong outcomes).
    pub unexpected: u64,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.holds += other.holds;
        self.holds_refused += other.holds_refused;
        self.captures += other.captures;
        self.releases += other.releases;
        self.left_to_expire += other.left_to_expire;
        self.reads += other.reads;
        self.replays += other.replays;
        self.errors += other.errors;
        self.unexpected += other.unexpected;
    }

    /// Every store call made.
    pub fn operations(&self) -> u64 {
        self.holds + self.holds_refused + self.captures + self.releases + self.reads + self.replays + self.errors
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct InProcessResult {
    pub store: StoreKind,
    pub workload: String,
    pub workload_label: String,
    pub callers: usize,
    pub seconds: f64,
    pub tally: Tally,
    pub operations_per_second: f64,
    pub holds_per_second: f64,
    pub latency: LatencySummary,
    pub hold_latency: LatencySummary,
    pub counters: StoreCounters,
    /// Machine-wide busy CPU time per operation, microseconds.
    pub cpu_micros_per_operation: f64,
    /// Violations reported by `verify` plus a failed conservation check (0 is the only good value).
    pub violations: u64,
}

#[derive(Default)]
struct CallerOutput {
    tally: Tally,
    all: Latencies,
    holds: Latencies,
}

/// A monthly allowance of zero credits in UTC for account `index`: it costs each decision what
/// any allowance does (loaded, its period computed and named) and moves no credits.
fn zero_allowance(index: usize, allowance: usize) -> anyhow::Result<ledger::Allowance> {
    let schedule = store::allowances::AllowanceSchedule::new(calendar::Period::Month, "UTC", None)?;
    Ok(store::allowances::AllowanceSpec {
        allowance_id: ledger::AllowanceId::parse(&format!("al-{index}-{allowance}"))
            .map_err(|error| anyhow::anyhow!("{error:?}"))?,
        account_id: account_id(index)?,
        amount: Amount::ZERO,
        priority: 100,
        rollover: ledger::Rollover::None,
        schedule,
        starts_at: ledger::Timestamp::from_micros(0),
        ends_at: None,
        reference: None,
        plan_id: None,
    }
    .into_allowance())
}

/// Grants every account of `workload` its credits (and its allowances).
pub async fn seed(store: &Arc<dyn LedgerStore>, workload: &Workload) -> anyhow::Result<()> {
    let accounts = workload.distribution.accounts();
    let credits = workload.grant_credits();
    let allowances = workload.allowances;
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..SEED_CONCURRENCY.min(accounts))
        .map(|_| {
            let (store, next) = (store.clone(), next.clone());
            tokio::spawn(async move {
                loop {
                    let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if index >= accounts {
                        return anyhow::Ok(());
                    }
                    let grant = Command::Grant {
                        account_id: account_id(index)?,
                        grant_id: GrantId::parse(&format!("grant-{index}"))
                            .map_err(|error| anyhow::anyhow!("{error:?}"))?,
                        amount: Amount::from_credits(credits),
                        priority: 100,
                        expires_at: None,
                        reference: None,
                        metadata: "{}".to_owned(),
                    };
                    match store.execute(Request::new(grant)).await? {
                        Executed::Fresh(Ok(_)) => {}
                        other => anyhow::bail!("seeding grant {index}: {other:?}"),
                    }
                    for allowance in 0..allowances {
                        let create = Command::CreateAllowance { allowance: zero_allowance(index, allowance)? };
                        match store.execute(Request::new(create)).await? {
                            Executed::Fresh(Ok(_)) => {}
                            other => anyhow::bail!("seeding allowance {allowance} of {index}: {other:?}"),
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.context("seed task")??;
    }
    Ok(())
}

/// Runs the workload, unmeasured, for `settings.warm_up`: every store then has rows in each
/// table the workload writes (holds, keys, journal), as a deployment that has served for a while
/// has, before the caller refreshes the planner's statistics and measures. Without it the
/// statistics taken after seeding describe an empty `holds` table, and PostgreSQL keeps plans
/// made for that (sequential scans of a table growing by thousands of rows a second) for the
/// whole run, where a deployment's autovacuum would have re-analyzed within a minute.
pub async fn warm_up(opened: &Opened, workload: &Workload, settings: &InProcessRun) -> anyhow::Result<WarmedUp> {
    let store = opened.ledger();
    let driven = drive(&store, workload, settings, "w", settings.warm_up).await?;
    Ok(WarmedUp { tally: driven.tally })
}

pub async fn run(
    kind: StoreKind,
    opened: &Opened,
    workload: &Workload,
    settings: &InProcessRun,
    warmed: WarmedUp,
) -> anyhow::Result<InProcessResult> {
    // The caller has seeded the accounts ([`seed`]) and warmed the store up ([`warm_up`]).
    let store = opened.ledger();
    let counters_before = opened.counters();
    let cpu_before = machine_cpu_busy();
    let started = Instant::now();
    // What a server's sweeper does, for every store alike: expired holds return their credits
    // (creditgraph's stores also do so on read; the baselines only here).
    let stop_sweeping = tokio_util::sync::CancellationToken::new();
    let sweeper = server::spawn_sweeper(store.clone(), Duration::from_secs(1), stop_sweeping.clone());
    let driven = drive(&store, workload, settings, "m", settings.duration).await;
    let seconds = started.elapsed().as_secs_f64();
    let cpu = machine_cpu_busy().saturating_sub(cpu_before);
    let counters = opened.counters().since(counters_before);
    stop_sweeping.cancel();
    let _ = sweeper.await;
    let CallerOutput { tally, all, holds } = driven?;
    let mut applied = warmed.tally;
    applied.add(&tally);
    let violations = check(&store, workload, &applied).await?;
    let operations = tally.operations();
    Ok(InProcessResult {
        store: kind,
        workload: workload.name.to_owned(),
        workload_label: workload.label(),
        callers: settings.callers,
        seconds,
        tally,
        operations_per_second: operations as f64 / seconds,
        holds_per_second: tally.holds as f64 / seconds,
        latency: all.summary(),
        hold_latency: holds.summary(),
        counters,
        cpu_micros_per_operation: cpu.as_micros() as f64 / operations.max(1) as f64,
        violations,
    })
}

/// Runs `settings.callers` closed-loop callers for `duration`; `phase` keeps the hold ids and
/// idempotency keys of the warm-up and the measured run apart.
async fn drive(
    store: &Arc<dyn LedgerStore>,
    workload: &Workload,
    settings: &InProcessRun,
    phase: &'static str,
    duration: Duration,
) -> anyhow::Result<CallerOutput> {
    let picker = workload.distribution.picker();
    let deadline = Instant::now() + duration;
    let tasks: Vec<_> = (0..settings.callers)
        .map(|caller| {
            let (store, picker, workload) = (store.clone(), picker.clone(), workload.clone());
            let seed =
                settings.seed ^ (caller as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(phase.as_bytes()[0]);
            let caller = Caller { index: caller, phase, seed };
            tokio::spawn(async move { caller_loop(store, workload, picker, caller, deadline).await })
        })
        .collect();
    let mut output = CallerOutput::default();
    for task in tasks {
        let caller = task.await.context("caller task")?;
        output.tally.add(&caller.tally);
        output.all.merge(&caller.all);
        output.holds.merge(&caller.holds);
    }
    Ok(output)
}

/// `verify`'s violations, plus one if the balances do not add up to granted − captured.
async fn check(store: &Arc<dyn LedgerStore>, workload: &Workload, tally: &Tally) -> anyhow::Result<u64> {
    let report = store.verify().await.context("verify")?;
    for violation in report.violations.iter().take(5) {
        eprintln!("bench: verify reports {violation:?}");
    }
    let mut violations = report.violations.len() as u64;
    let accounts = workload.distribution.accounts();
    let mut balance_total = Amount::ZERO;
    for index in 0..accounts {
        let view = store.account(&account_id(index)?).await?.context("a seeded account")?;
        balance_total = balance_total.plus(view.balances.balance);
    }
    let granted = Amount::from_credits(workload.grant_credits() * accounts as u64);
    let captured = Amount::from_credits(CAPTURE_CREDITS * tally.captures);
    // A capture whose answer was lost (a store error) may have applied: then the sum cannot be
    // checked exactly, only bounded.
    let expected = granted.minus(captured);
    let conserved = if tally.errors == 0 { balance_total == expected } else { balance_total <= expected };
    if !conserved {
        eprintln!("bench: conservation fails: balances sum to {balance_total}, expected {expected} (granted {granted} − captured {captured})");
        violations += 1;
    }
    Ok(violations)
}

/// One caller of [`drive`]: its number, its phase's prefix for ids and keys, its random seed.
struct Caller {
    index: usize,
    phase: &'static str,
    seed: u64,
}

async fn caller_loop(
    store: Arc<dyn LedgerStore>,
    workload: Workload,
    picker: Picker,
    caller: Caller,
    deadline: Instant,
) -> CallerOutput {
    let Caller { index: caller, phase, seed } = caller;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut output = CallerOutput::default();
    let hold_credits = Amount::from_credits(workload.hold_credits());
    let mut sequence = 0_u64;
    while Instant::now() < deadline {
        let account_id = AccountId::parse(&account_name(picker.pick(&mut rng))).expect("valid account id");
        sequence += 1;
        match workload.mix.step(&mut rng) {
            Step::Read => {
                let started = Instant::now();
                let answer = store.account(&account_id).await;
                output.all.record(started.elapsed());
                match answer {
                    Ok(Some(_)) => output.tally.reads += 1,
                    Ok(None) => output.tally.unexpected += 1,
                    Err(_) => output.tally.errors += 1,
                }
            }
            Step::Hold(ending) => {
                let hold_id = HoldId::parse(&format!("h-{phase}{caller}-{sequence}")).expect("valid hold id");
                let ttl_seconds = if ending == Ending::Expire { HOLD_TTL_SECONDS_EXPIRING } else { HOLD_TTL_SECONDS };
                let hold = Command::Hold {
                    account_id,
                    hold_id: hold_id.clone(),
                    amount: hold_credits,
                    ttl_seconds,
                    reference: None,
                    metadata: "{}".to_owned(),
                };
                let key = format!("k-{phase}{caller}-{sequence}-hold");
                let request = Request::with_key(hold, &key, "bench");
                let started = Instant::now();
                let answer = store.execute(request.clone()).await;
                let elapsed = started.elapsed();
                output.all.record(elapsed);
                output.holds.record(elapsed);
                match answer {
                    Ok(Executed::Fresh(Ok(Outcome::Held { .. }))) => output.tally.holds += 1,
                    Ok(Executed::Fresh(Err(Rejection::InsufficientCredits { .. }))) => {
                        output.tally.holds_refused += 1;
                        continue;
                    }
                    Ok(_) => {
                        output.tally.unexpected += 1;
                        continue;
                    }
                    Err(_) => {
                        output.tally.errors += 1;
                        continue;
                    }
                }
                maybe_replay(&store, &request, &workload, &mut rng, &mut output).await;
                let settle = match ending {
                    Ending::Capture => Command::Capture {
                        hold_id,
                        amount: Amount::from_credits(CAPTURE_CREDITS),
                        is_final: true,
                        overage: Overage::Reject,
                    },
                    Ending::Release => Command::Release { hold_id },
                    Ending::Expire => {
                        output.tally.left_to_expire += 1;
                        continue;
                    }
                };
                let key = format!("k-{phase}{caller}-{sequence}-settle");
                let request = Request::with_key(settle, &key, "bench");
                let started = Instant::now();
                let answer = store.execute(request.clone()).await;
                output.all.record(started.elapsed());
                match (ending, answer) {
                    (Ending::Capture, Ok(Executed::Fresh(Ok(Outcome::Captured { .. })))) => output.tally.captures += 1,
                    (Ending::Release, Ok(Executed::Fresh(Ok(Outcome::Released { .. })))) => output.tally.releases += 1,
                    (_, Ok(_)) => output.tally.unexpected += 1,
                    (_, Err(_)) => output.tally.errors += 1,
                }
                maybe_replay(&store, &request, &workload, &mut rng, &mut output).await;
            }
        }
    }
    output
}

/// With the workload's probability, sends `request` again with the same key (a client that lost
/// the answer); it must replay, applying nothing.
async fn maybe_replay(
    store: &Arc<dyn LedgerStore>,
    request: &Request,
    workload: &Workload,
    rng: &mut StdRng,
    output: &mut CallerOutput,
) {
    if workload.replay_percent == 0 || rng.random_range(0..100) >= workload.replay_percent {
        return;
    }
    let started = Instant::now();
    let answer = store.execute(request.clone()).await;
    output.all.record(started.elapsed());
    match answer {
        Ok(Executed::Replayed(Ok(_))) => output.tally.replays += 1,
        Ok(_) => output.tally.unexpected += 1,
        Err(_) => output.tally.errors += 1,
    }
}
