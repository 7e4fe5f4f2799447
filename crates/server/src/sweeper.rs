//! The background task that records due expiries in the journal and forgets old idempotency
//! keys. Reads are exact without it (expiry is computed on read); it keeps the journal and the
//! stored state close to the truth and the idempotency table bounded.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use store::LedgerStore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Accounts one sweep call handles.
pub const SWEEP_ACCOUNTS_MAX: u32 = 1000;
/// Sweep calls per tick when every call comes back full, so a backlog drains without one tick
/// running unbounded.
pub const SWEEP_BATCHES_PER_TICK_MAX: u32 = 100;

/// Accounts the sweeper brought up to date (expiries recorded, allowances granted).
pub const SWEEP_ACCOUNTS: &str = "creditgraph_sweeper_accounts_total";
/// Journal entries the sweeper wrote (expiries, allowance grants).
pub const SWEEP_ENTRIES: &str = "creditgraph_sweeper_entries_total";
/// Sweep passes that failed (the store answered an error; retried at the next tick).
pub const SWEEP_FAILURES: &str = "creditgraph_sweeper_failures_total";

/// Sweeps every `interval` until `cancel` fires. Store errors and even panics are logged and the
/// loop goes on at the next tick.
pub fn spawn_sweeper(store: Arc<dyn LedgerStore>, interval: Duration, cancel: CancellationToken) -> JoinHandle<()> {
    let interval = interval.max(Duration::from_millis(1));
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = ticker.tick() => {}
            }
            for _ in 0..SWEEP_BATCHES_PER_TICK_MAX {
                if cancel.is_cancelled() {
                    break;
                }
                match AssertUnwindSafe(store.sweep(SWEEP_ACCOUNTS_MAX)).catch_unwind().await {
                    Ok(Ok(report)) => {
                        if report.entries > 0 || report.idempotency_keys_deleted > 0 {
                            tracing::debug!(?report, "swept");
                        }
                        metrics::counter!(SWEEP_ACCOUNTS).increment(report.accounts);
                        metrics::counter!(SWEEP_ENTRIES).increment(report.entries);
                        if report.accounts < u64::from(SWEEP_ACCOUNTS_MAX) {
                            break;
                        }
                    }
                    Ok(Err(error)) => {
                        metrics::counter!(SWEEP_FAILURES).increment(1);
                        tracing::warn!(%error, "sweep failed; retrying at the next tick");
                        break;
                    }
                    Err(_) => {
                        tracing::error!("sweep panicked; retrying at the next tick");
                        break;
                    }
                }
            }
        }
        tracing::debug!("sweeper stopped");
    })
}
