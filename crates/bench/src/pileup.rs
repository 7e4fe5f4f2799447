//! The "pile-up" workload (issue 16, target 1): does an account's cost grow with its pending
//! holds? One account, in-process on creditgraph's stores:
//!
//! 1. hold+capture cycles on the account with no pending hold (the reference), and reads of it;
//! 2. pending holds piled onto it (long TTL, never captured) up to `pending_max`, with hold
//!    throughput and p99 reported per window of `window` pending holds;
//! 3. the same hold+capture cycles and reads on the account now carrying `pending_max` pending
//!    holds.
//!
//! Then the store's `verify` (which checks the kept `held` and `pinned` against every hold). The
//! target: cycles within 1.5× of the reference in throughput and p99, and the account read's p50
//! at most 1 ms, on both stores.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use ledger::{AccountId, Amount, Command, GrantId, HoldId, Outcome, Overage};
use serde::Serialize;
use store::{Executed, LedgerStore, Request};

use crate::measure::{Latencies, LatencySummary};
use crate::stores::StoreKind;

/// The account the pile grows on.
const PILE_ACCOUNT: &str = "pile-up";
/// Credits granted to it: room for every pending hold and every cycle.
const PILE_GRANT_CREDITS: u64 = 100_000_000;
/// TTL of the piled holds: they stay pending for the whole run.
const PILE_TTL_SECONDS: u64 = 86_400;
/// TTL of the cycles' holds (captured at once).
const CYCLE_TTL_SECONDS: u64 = 600;

/// How big a pile, measured how.
#[derive(Clone, Debug)]
pub struct PileUpRun {
    /// Pending holds piled onto the account (100,000 in a full run).
    pub pending_max: u64,
    /// Pending holds per reported window (10,000 in a full run).
    pub window: u64,
    pub callers: usize,
    /// How long each phase of hold+capture cycles runs.
    pub cycle_duration: Duration,
    /// Account reads per read phase (sequential).
    pub reads: usize,
}

/// Piling holds: one window of `window` pending holds.
#[derive(Clone, Debug, Serialize)]
pub struct PileWindow {
    /// Pending holds on the account at the end of this window.
    pub pending_after: u64,
    pub holds_per_second: f64,
    pub hold: LatencySummary,
}

/// Hold+capture cycles on the account: cycles per second and the latency of each request.
#[derive(Clone, Debug, Serialize)]
pub struct Cycles {
    /// Pending holds on the account while these cycles ran.
    pub pending: u64,
    pub cycles_per_second: f64,
    /// Every hold and every capture request.
    pub requests: LatencySummary,
    /// `store.account()` on the account, sequential.
    pub read: LatencySummary,
}

#[derive(Clone, Debug, Serialize)]
pub struct PileUp {
    pub store: StoreKind,
    pub empty: Cycles,
    pub windows: Vec<PileWindow>,
    pub piled: Cycles,
    /// Requests that got no ledger answer or an answer this workload never expects.
    pub errors: u64,
    /// `verify` findings after the run.
    pub violations: u64,
}

impl PileUp {
    /// Throughput with the pile over throughput without (1.0: no change).
    pub fn throughput_ratio(&self) -> f64 {
        if self.empty.cycles_per_second > 0.0 {
            self.piled.cycles_per_second / self.empty.cycles_per_second
        } else {
            0.0
        }
    }

    /// p99 with the pile over p99 without (1.0: no change).
    pub fn p99_ratio(&self) -> f64 {
        self.piled.requests.p99_micros as f64 / self.empty.requests.p99_micros.max(1) as f64
    }

    /// Issue 16's target 1 on this store.
    pub fn met(&self) -> bool {
        self.throughput_ratio() >= 1.0 / 1.5
            && self.p99_ratio() <= 1.5
            && self.empty.read.p50_micros <= 1_000
            && self.piled.read.p50_micros <= 1_000
            && self.errors == 0
            && self.violations == 0
    }
}

fn account() -> AccountId {
    AccountId::parse(PILE_ACCOUNT).expect("a constant valid id")
}

/// Hold ids: unique within the process, and every run has a fresh store.
static NEXT_HOLD: AtomicU64 = AtomicU64::new(0);

fn hold_command(ttl_seconds: u64) -> Command {
    let number = NEXT_HOLD.fetch_add(1, Ordering::Relaxed);
    Command::Hold {
        account_id: account(),
        hold_id: HoldId::parse(&format!("pile-{number:012}")).expect("a valid id"),
        amount: Amount::from_credits(1),
        ttl_seconds,
        reference: None,
        metadata: "{}".to_owned(),
    }
}

/// A fresh hold, timed; `None` when the store did not hold (counted as an error).
async fn hold(store: &dyn LedgerStore, ttl_seconds: u64, latencies: &mut Latencies) -> Option<HoldId> {
    let started = Instant::now();
    let executed = store.execute(Request::new(hold_command(ttl_seconds))).await;
    latencies.record(started.elapsed());
    match executed {
        Ok(Executed::Fresh(Ok(Outcome::Held { hold }))) => Some(hold.hold_id),
        _ => None,
    }
}

/// Runs the three phases on an open store; `verify` at the end.
pub async fn run(
    kind: StoreKind,
    store: Arc<dyn LedgerStore>,
    place: &crate::stores::Place,
    settings: &PileUpRun,
) -> anyhow::Result<PileUp> {
    let grant = Command::Grant {
        account_id: account(),
        grant_id: GrantId::parse("pile-up-grant").expect("a constant valid id"),
        amount: Amount::from_credits(PILE_GRANT_CREDITS),
        priority: 100,
        expires_at: None,
        reference: None,
        metadata: "{}".to_owned(),
    };
    match store.execute(Request::new(grant)).await.context("granting the pile-up account")? {
        Executed::Fresh(Ok(_)) => {}
        other => anyhow::bail!("the pile-up grant was not applied: {other:?}"),
    }
    let errors = Arc::new(AtomicU64::new(0));
    // Each measurement on statistics as autovacuum would have them by then (see `analyze`).
    crate::stores::analyze(place).await?;
    let empty = cycles(&store, settings, 0, &errors).await;
    let windows = pile(&store, settings, &errors).await;
    crate::stores::analyze(place).await?;
    let piled = cycles(&store, settings, settings.pending_max, &errors).await;
    let report = store.verify().await.context("verify after the pile-up")?;
    for violation in report.violations.iter().take(10) {
        eprintln!("bench: pile-up violation: {violation}");
    }
    let held = store.account(&account()).await?.context("the pile-up account exists")?.balances.held;
    if held != Amount::from_credits(settings.pending_max) {
        eprintln!("bench: pile-up: {held} credits held, {} holds piled", settings.pending_max);
        errors.fetch_add(1, Ordering::Relaxed);
    }
    Ok(PileUp {
        store: kind,
        empty,
        windows,
        piled,
        errors: errors.load(Ordering::Relaxed),
        violations: report.violations.len() as u64,
    })
}

/// `settings.callers` callers doing hold+capture cycles for `settings.cycle_duration`, then the
/// reads.
async fn cycles(store: &Arc<dyn LedgerStore>, settings: &PileUpRun, pending: u64, errors: &Arc<AtomicU64>) -> Cycles {
    let deadline = Instant::now() + settings.cycle_duration;
    let started = Instant::now();
    let tasks: Vec<_> = (0..settings.callers)
        .map(|_| {
            let store = Arc::clone(store);
            let errors = Arc::clone(errors);
            tokio::spawn(async move {
                let mut latencies = Latencies::new();
                let mut done = 0_u64;
                while Instant::now() < deadline {
                    let Some(hold_id) = hold(store.as_ref(), CYCLE_TTL_SECONDS, &mut latencies).await else {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let capture = Command::Capture {
                        hold_id,
                        amount: Amount::from_credits(1),
                        is_final: true,
                        overage: Overage::Reject,
                    };
                    let started = Instant::now();
                    let executed = store.execute(Request::new(capture)).await;
                    latencies.record(started.elapsed());
                    match executed {
                        Ok(Executed::Fresh(Ok(Outcome::Captured { .. }))) => done += 1,
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                (latencies, done)
            })
        })
        .collect();
    let mut latencies = Latencies::new();
    let mut done = 0;
    for task in tasks {
        let (caller, cycles) = task.await.expect("a cycle caller does not panic");
        latencies.merge(&caller);
        done += cycles;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mut reads = Latencies::new();
    for _ in 0..settings.reads {
        let started = Instant::now();
        if !matches!(store.account(&account()).await, Ok(Some(_))) {
            errors.fetch_add(1, Ordering::Relaxed);
        }
        reads.record(started.elapsed());
    }
    let result = Cycles {
        pending,
        cycles_per_second: done as f64 / elapsed.max(f64::MIN_POSITIVE),
        requests: latencies.summary(),
        read: reads.summary(),
    };
    eprintln!(
        "bench: pile-up {pending:>7} pending: {:>7.0} hold+capture/s p50 {:>6} µs p99 {:>6} µs; account read p50 {:>6} µs p99 {:>6} µs",
        result.cycles_per_second,
        result.requests.p50_micros,
        result.requests.p99_micros,
        result.read.p50_micros,
        result.read.p99_micros,
    );
    result
}

/// Piles `settings.pending_max` pending holds onto the account, `settings.callers` at a time,
/// timing each window of `settings.window`.
async fn pile(store: &Arc<dyn LedgerStore>, settings: &PileUpRun, errors: &Arc<AtomicU64>) -> Vec<PileWindow> {
    let window = settings.window.max(1);
    let windows = usize::try_from(settings.pending_max.div_ceil(window)).expect("a window count fits usize");
    let next = Arc::new(AtomicU64::new(0));
    let placed = Arc::new(AtomicU64::new(0));
    // When each window's last hold was placed (holds complete out of order; close enough).
    let ends: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; windows]));
    let started = Instant::now();
    let tasks: Vec<_> = (0..settings.callers)
        .map(|_| {
            let (store, errors, next, placed, ends) =
                (Arc::clone(store), Arc::clone(errors), Arc::clone(&next), Arc::clone(&placed), Arc::clone(&ends));
            let pending_max = settings.pending_max;
            tokio::spawn(async move {
                let mut latencies: Vec<Latencies> = (0..windows).map(|_| Latencies::new()).collect();
                while next.fetch_add(1, Ordering::Relaxed) < pending_max {
                    let index = placed.load(Ordering::Relaxed) / window;
                    let slot = usize::try_from(index).unwrap_or(usize::MAX).min(windows - 1);
                    if hold(store.as_ref(), PILE_TTL_SECONDS, &mut latencies[slot]).await.is_none() {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let count = placed.fetch_add(1, Ordering::Relaxed) + 1;
                    if count % window == 0 || count == pending_max {
                        let ended = usize::try_from((count - 1) / window).unwrap_or(usize::MAX).min(windows - 1);
                        ends.lock().expect("the window clock is never poisoned")[ended] = Some(Instant::now());
                    }
                }
                latencies
            })
        })
        .collect();
    let mut merged: Vec<Latencies> = (0..windows).map(|_| Latencies::new()).collect();
    for task in tasks {
        let caller = task.await.expect("a piling caller does not panic");
        for (into, from) in merged.iter_mut().zip(&caller) {
            into.merge(from);
        }
    }
    let ends = ends.lock().expect("the window clock is never poisoned").clone();
    let mut previous = started;
    let mut result = Vec::with_capacity(windows);
    for (index, (latencies, end)) in merged.iter().zip(ends).enumerate() {
        let end = end.unwrap_or_else(Instant::now);
        let seconds = end.saturating_duration_since(previous).as_secs_f64();
        previous = end;
        let pending_after = ((index as u64 + 1) * window).min(settings.pending_max);
        let holds = pending_after - index as u64 * window;
        let point = PileWindow {
            pending_after,
            holds_per_second: holds as f64 / seconds.max(f64::MIN_POSITIVE),
            hold: latencies.summary(),
        };
        eprintln!(
            "bench: pile-up piling to {:>7}: {:>7.0} holds/s p99 {:>6} µs",
            point.pending_after, point.holds_per_second, point.hold.p99_micros
        );
        result.push(point);
    }
    result
}
