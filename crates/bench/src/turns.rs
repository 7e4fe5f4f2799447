//! Issue 7, target 7: what the credit wiring of a solve turn costs. "A solve turn with an instant
//! scripted provider: the credit wiring (estimate, hold, metering, settle) adds ≤ 1 ms p99 against
//! the same turn with the ledger switched off."
//!
//! Two engines run the same turns against the same scripted provider ([`FakeProvider`], replies
//! without delay) and the same durable SQLite run store:
//!
//! - **ledger on**: the ledger is that same [`SqliteStore`] (durable, `synchronous=FULL`), so the
//!   turn reads the balance, takes its hold and captures the metered cost for real;
//! - **ledger off**: the ledger is [`NullLedger`], which answers every command at once with a
//!   plausible outcome and stores and checks nothing. The turn still computes its estimate and
//!   meters its calls (that code is the same), but no ledger round trip, transaction or fsync
//!   happens. This is what "the ledger switched off" means here: the difference between the two
//!   is what keeping real credits costs a turn.
//!
//! A turn is router → planner (`solve` only, easy, brief: no code execution, so no Python) →
//! one solver call that answers → settle; three loopback HTTP calls to the provider either way.
//! Its time runs from [`Engine::start_solve`] until its event stream ends, which happens after the
//! run is recorded as succeeded. Both engines persist every frame of the turn in the run store,
//! as a server does (the engine's batched event writer; the final frames in the write that ends
//! the run), and each turn checks afterwards that all its frames were stored. On and off turns alternate (the order flips every turn) so both
//! see the same machine noise. Afterwards the SQLite ledger must verify clean and the account
//! must have lost exactly what the "on" turns settled, so the "on" figures really are charged
//! turns.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use engine::events::{Event, EventKind};
use engine::provider::Purpose;
use engine::run::{Engine, EngineConfig, NoExecutor, SolveRequest};
use engine::testing::{FakeProvider, FakeReply};
use futures::StreamExt;
use ledger::{
    AccountId, AccountState, Amount, Balances, Command, Entry, Grant, GrantId, GrantKind, Hold, HoldId, HoldState,
    Outcome, Rejection,
};
use pricing::catalog::Catalog;
use serde::Serialize;
use store::runs::RUN_EVENTS_PAGE_MAX;
use store::{
    AccountView, Clock, Executed, LedgerStore, Request, RunStore, StoreError, SweepReport, SystemClock, VerifyReport,
};
use store_sqlite::{SqliteOptions, SqliteStore, Synchronous};

use crate::measure::{Latencies, LatencySummary};

/// Turns per engine run first and not recorded: connection pools, SQLite page cache and the
/// allocator settle before anything is measured.
pub const WARM_UP_TURNS: usize = 20;
/// Credits granted to the benchmark account: far more than any run of turns spends.
const GRANT_CREDITS: u64 = 1_000_000;
/// The balance [`NullLedger`] reports, so the turn's "can it pay for routing" check passes.
const NULL_LEDGER_BALANCE_CREDITS: u64 = GRANT_CREDITS;
/// Bound on one turn, so a stuck engine fails the measurement instead of hanging it.
const TURN_SECONDS_MAX: u64 = 30;
/// How long the engines get to finish their tasks at the end.
const SHUTDOWN_SECONDS_MAX: u64 = 10;
const ACCOUNT: &str = "bench-turns";

/// The result of [`measure_turn_overhead`].
#[derive(Clone, Debug, Serialize)]
pub struct TurnOverhead {
    /// Measured turns per engine (warm-up not included).
    pub turns: usize,
    /// Turns whose ledger is the durable SQLite store.
    pub ledger_on: LatencySummary,
    /// The same turns with [`NullLedger`].
    pub ledger_off: LatencySummary,
    /// `ledger_on.p50 − ledger_off.p50`; negative when noise outweighs the difference.
    pub added_p50_micros: i64,
    /// `ledger_on.p99 − ledger_off.p99`: the figure target 7 bounds by 1 ms.
    pub added_p99_micros: i64,
    /// Credits the ledger-on turns settled (warm-up included), canonical decimal text; the
    /// account's balance dropped by exactly this.
    pub settled_credits: String,
}

/// "The ledger switched off": accepts every command at once and answers a plausible outcome
/// (a hold of the amount asked, a capture of the amount asked, a release that changed
/// something), reads the same large balance for every account, and stores or checks nothing.
/// A turn over it does the same work as over a real ledger except the ledger round trips.
pub struct NullLedger {
    clock: Arc<dyn Clock>,
    account_id: AccountId,
}

impl NullLedger {
    /// `account_id` is what outcomes that only name a hold (captures, releases) report.
    pub fn new(account_id: AccountId, clock: Arc<dyn Clock>) -> NullLedger {
        NullLedger { clock, account_id }
    }

    fn hold(&self, hold_id: HoldId, amount: Amount, captured: Amount, state: HoldState) -> Hold {
        let now = self.clock.now();
        let remaining = if state == HoldState::Pending { amount } else { Amount::ZERO };
        Hold {
            hold_id,
            account_id: self.account_id.clone(),
            amount,
            captured,
            remaining,
            refunded: Amount::ZERO,
            state,
            expires_at: now,
            created_at: now,
            reference: None,
            metadata: String::new(),
            allocations: Vec::new(),
        }
    }

    fn balances() -> Balances {
        let balance = Amount::from_credits(NULL_LEDGER_BALANCE_CREDITS);
        Balances { balance, held: Amount::ZERO, available: balance }
    }

    fn answer(&self, command: Command) -> Result<Outcome, Rejection> {
        let now = self.clock.now();
        Ok(match command {
            Command::Hold { account_id, hold_id, amount, ttl_seconds, reference, metadata } => {
                let mut hold = self.hold(hold_id, amount, Amount::ZERO, HoldState::Pending);
                hold.account_id = account_id;
                hold.expires_at = now.plus_seconds(ttl_seconds);
                hold.reference = reference;
                hold.metadata = metadata;
                Outcome::Held { hold }
            }
            Command::Capture { hold_id, amount, .. } => {
                Outcome::Captured { hold: self.hold(hold_id, amount, amount, HoldState::Captured) }
            }
            Command::Release { hold_id } => Outcome::Released {
                hold: self.hold(hold_id, Amount::ZERO, Amount::ZERO, HoldState::Released),
                changed: true,
            },
            Command::Extend { hold_id, ttl_seconds } => {
                let mut hold = self.hold(hold_id, Amount::ZERO, Amount::ZERO, HoldState::Pending);
                hold.expires_at = now.plus_seconds(ttl_seconds);
                Outcome::Extended { hold }
            }
            Command::Debit { account_id, amount, .. } => {
                Outcome::Debited { account_id, amount, balances: NullLedger::balances() }
            }
            Command::Grant { account_id, grant_id, amount, priority, expires_at, reference, metadata } => {
                let grant = Grant {
                    grant_id,
                    account_id,
                    kind: GrantKind::Grant,
                    amount,
                    free: amount,
                    pinned: Amount::ZERO,
                    priority,
                    expires_at,
                    created_at: now,
                    reference,
                    metadata,
                    live: true,
                    voided_at: None,
                };
                Outcome::Granted { grant, created: true }
            }
            Command::Refund { account_id, grant_id, amount, reference, priority, expires_at, .. } => {
                let grant = Grant {
                    grant_id,
                    account_id,
                    kind: GrantKind::Refund,
                    amount,
                    free: amount,
                    pinned: Amount::ZERO,
                    priority,
                    expires_at,
                    created_at: now,
                    reference: Some(reference),
                    metadata: String::new(),
                    live: true,
                    voided_at: None,
                };
                Outcome::Refunded { grant, created: true }
            }
            Command::Sweep { .. } => Outcome::Swept { entries: 0 },
            Command::CreateAllowance { .. }
            | Command::EndAllowances { .. }
            | Command::SubscribePlan { .. }
            | Command::SetLowBalanceThreshold { .. }
            | Command::VoidGrant { .. } => {
                unreachable!("a turn never manages allowances, thresholds or grants")
            }
        })
    }
}

#[async_trait]
impl LedgerStore for NullLedger {
    async fn execute(&self, request: Request) -> Result<Executed, StoreError> {
        Ok(Executed::Fresh(self.answer(request.command)))
    }

    async fn account(&self, account_id: &AccountId) -> Result<Option<AccountView>, StoreError> {
        let state = AccountState::new(account_id.clone(), self.clock.now());
        Ok(Some(AccountView { state, balances: NullLedger::balances() }))
    }

    async fn hold(&self, _hold_id: &HoldId) -> Result<Option<Hold>, StoreError> {
        Ok(None)
    }

    async fn pending_holds(&self, _account_id: &AccountId) -> Result<Vec<Hold>, StoreError> {
        Ok(Vec::new())
    }

    async fn holds(
        &self,
        _account_id: &AccountId,
        _state: ledger::HoldState,
        _after: Option<&HoldId>,
        _limit: u32,
    ) -> Result<Vec<Hold>, StoreError> {
        Ok(Vec::new())
    }

    async fn entries(&self, _account_id: &AccountId, _after_seq: u64, _limit: u32) -> Result<Vec<Entry>, StoreError> {
        Ok(Vec::new())
    }

    async fn sweep(&self, _accounts_max: u32) -> Result<SweepReport, StoreError> {
        Ok(SweepReport::default())
    }

    async fn verify(&self) -> Result<VerifyReport, StoreError> {
        Ok(VerifyReport::default())
    }

    fn backend(&self) -> &'static str {
        "null"
    }
}

fn anyhow_of(error: impl std::fmt::Debug) -> anyhow::Error {
    anyhow::anyhow!("{error:?}")
}

/// Runs one turn to the end of its event stream: its wall time and the credits it settled.
async fn one_turn(engine: &Arc<Engine>, account_id: &AccountId) -> anyhow::Result<(Duration, Amount)> {
    let request = SolveRequest {
        account_id: account_id.clone(),
        problem: "What is 2 + 2?".to_owned(),
        thread_id: None,
        action: None,
        retry_source_job_id: None,
    };
    let started = Instant::now();
    let run = engine.start_solve(request).await.map_err(|error| anyhow::anyhow!("start_solve: {error}"))?;
    let frames: Vec<_> =
        tokio::time::timeout(Duration::from_secs(TURN_SECONDS_MAX), run.channel.follow(None).collect())
            .await
            .with_context(|| format!("turn {} did not end within {TURN_SECONDS_MAX} s", run.run_id))?;
    let elapsed = started.elapsed();
    let last = frames.last().with_context(|| format!("turn {} emitted nothing", run.run_id))?;
    anyhow::ensure!(last.kind == EventKind::Done, "turn {} ended with {:?}", run.run_id, last.event);
    // Every frame was stored (by the engine's batched writer), `done` with the run's end.
    let stored = engine.run_store().run_events(&run.run_id, None, RUN_EVENTS_PAGE_MAX).await?;
    anyhow::ensure!(
        stored.len() == frames.len() && stored.last().is_some_and(|frame| frame.kind == "done"),
        "turn {}: {} frames streamed, {} stored",
        run.run_id,
        frames.len(),
        stored.len()
    );
    let captured = frames
        .iter()
        .find_map(|frame| match frame.event.as_ref() {
            Event::CreditSettled(settled) => Some(settled.captured),
            _ => None,
        })
        .with_context(|| format!("turn {} settled nothing", run.run_id))?;
    Ok((elapsed, captured))
}

/// A provider that answers every turn at once: route "math_task", plan `solve` only (easy, brief,
/// no page), and a solver answer without tool calls.
async fn instant_provider() -> FakeProvider {
    let fake = FakeProvider::start().await;
    fake.on_default(Purpose::Router, FakeReply::route(false));
    fake.on_default(Purpose::Planner, FakeReply::plan(&["solve"], "easy", "brief", false));
    fake.on_default(Purpose::Solver, FakeReply::text("4"));
    fake
}

/// An engine over `ledger` and `runs`; `one_store` when they are the same store, so the settle is
/// written with the run's end (as a server does), else sent to the ledger on its own.
pub(crate) fn engine_over(
    ledger: Arc<dyn LedgerStore>,
    runs: Arc<dyn RunStore>,
    one_store: bool,
    fake: &FakeProvider,
    clock: Arc<dyn Clock>,
) -> Arc<Engine> {
    Engine::new(
        EngineConfig { settle_with_end: one_store, ..EngineConfig::default() },
        ledger,
        runs,
        Arc::new(fake.provider()),
        Arc::new(NoExecutor),
        Arc::new(Catalog::builtin()),
        clock,
    )
}

/// Grants `credits` to `account_id` in `store` (creating the account).
pub(crate) async fn grant_credits(
    store: &dyn LedgerStore,
    account_id: &AccountId,
    grant_id: &str,
    credits: u64,
) -> anyhow::Result<()> {
    let grant = Command::Grant {
        account_id: account_id.clone(),
        grant_id: GrantId::parse(grant_id).map_err(anyhow_of)?,
        amount: Amount::from_credits(credits),
        priority: 100,
        expires_at: None,
        reference: None,
        metadata: "{}".to_owned(),
    };
    match store.execute(Request::new(grant)).await? {
        Executed::Fresh(Ok(_)) => Ok(()),
        other => anyhow::bail!("granting the benchmark account: {other:?}"),
    }
}

/// Runs `WARM_UP_TURNS` then `turns` measured turns on each engine, interleaved, and checks the
/// SQLite ledger afterwards (see the module documentation).
pub async fn measure_turn_overhead(turns: usize) -> anyhow::Result<TurnOverhead> {
    anyhow::ensure!(turns > 0, "measure at least one turn");
    let dir = tempfile::tempdir().context("a temporary folder for the run store")?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = Arc::new(open_store(dir.path(), clock.clone()).await?);
    let result = measure_on(store.clone(), clock, turns).await;
    store.close().await;
    result
}

pub(crate) async fn open_store(dir: &Path, clock: Arc<dyn Clock>) -> anyhow::Result<SqliteStore> {
    let options = SqliteOptions { synchronous: Synchronous::Full, ..SqliteOptions::default() };
    Ok(SqliteStore::open(&dir.join("turns.db"), clock, options).await?)
}

async fn measure_on(store: Arc<SqliteStore>, clock: Arc<dyn Clock>, turns: usize) -> anyhow::Result<TurnOverhead> {
    let account_id = AccountId::parse(ACCOUNT).map_err(anyhow_of)?;
    grant_credits(store.as_ref(), &account_id, "bench-turns-grant", GRANT_CREDITS).await?;
    let fake = instant_provider().await;
    let null_ledger = Arc::new(NullLedger::new(account_id.clone(), clock.clone()));
    let on = engine_over(store.clone(), store.clone(), true, &fake, clock.clone());
    let off = engine_over(null_ledger, store.clone(), false, &fake, clock);

    let (mut on_latencies, mut off_latencies) = (Latencies::new(), Latencies::new());
    let mut settled = Amount::ZERO;
    for index in 0..WARM_UP_TURNS + turns {
        let measured = index >= WARM_UP_TURNS;
        // Alternate which engine goes first, so neither always runs right after the other.
        let order = if index % 2 == 0 { [true, false] } else { [false, true] };
        for ledger_on in order {
            let engine = if ledger_on { &on } else { &off };
            let (elapsed, captured) = one_turn(engine, &account_id).await?;
            if ledger_on {
                settled = settled.plus(captured);
            }
            match (measured, ledger_on) {
                (true, true) => on_latencies.record(elapsed),
                (true, false) => off_latencies.record(elapsed),
                (false, _) => {}
            }
        }
    }
    for engine in [&on, &off] {
        anyhow::ensure!(
            engine.shutdown(Duration::from_secs(SHUTDOWN_SECONDS_MAX)).await,
            "an engine still had runs going at the end"
        );
    }

    let report = store.verify().await.context("verify")?;
    anyhow::ensure!(report.violations.is_empty(), "the ledger does not verify: {:?}", report.violations);
    let view = store.account(&account_id).await?.context("the benchmark account is gone")?;
    let expected = Amount::from_credits(GRANT_CREDITS).minus(settled);
    anyhow::ensure!(
        view.balances.balance == expected && view.balances.held == Amount::ZERO,
        "the account reads balance {} held {}, expected balance {expected} held 0 after settling {settled}",
        view.balances.balance,
        view.balances.held,
    );
    anyhow::ensure!(!settled.is_zero(), "the ledger-on turns charged nothing");

    let (ledger_on, ledger_off) = (on_latencies.summary(), off_latencies.summary());
    let difference = |on: u64, off: u64| i64::try_from(on).unwrap_or(i64::MAX) - i64::try_from(off).unwrap_or(i64::MAX);
    Ok(TurnOverhead {
        turns,
        ledger_on,
        ledger_off,
        added_p50_micros: difference(ledger_on.p50_micros, ledger_off.p50_micros),
        added_p99_micros: difference(ledger_on.p99_micros, ledger_off.p99_micros),
        settled_credits: settled.to_string(),
    })
}
