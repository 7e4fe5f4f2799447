//! Crash recovery and hold upkeep: why a credit cannot stay reserved for a run nobody runs.
//!
//! A process killed with `kill -9` leaves its runs `running` and their holds pending; without
//! this module only the hold TTL (20 minutes by default) would give the credits back. Instead,
//! every instance holds a lease in the store ([`RunStore::renew_instance`]), and any live
//! instance's sweep ([`Engine::recover_once`]) releases the holds of the running runs whose
//! instance has no live lease and marks those runs `interrupted` — at the next start at once
//! (instance ids are new per process, so a dead process's runs have a lapsed lease or none).
//! The same sweep retries releases that failed earlier (`hold_resolution` still pending on a
//! terminal run), so a release error is never dropped. Finally, a live run's hold is extended
//! before it expires, so a long run keeps its reservation and the TTL stays a last resort.

use std::sync::Arc;
use std::time::Duration;

use ledger::{HoldId, Timestamp};
use store::{RunEventsWrite, RunRecord, RunSignal, RunState, StoreError};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use super::credits::{Credits, Released};
use super::data::{ErrorData, RunData, RunErrorCode};
use super::Engine;
use crate::events::{stored, ErrorCode, Event, Frame, RunError};

/// What recovery did, by `action` (`hold_released`: a dead run's hold given back;
/// `run_interrupted`: a run of a dead instance ended as interrupted).
pub const RECOVERY_ACTIONS: &str = "creditgraph_recovery_actions_total";

/// A dead instance's lease row is forgotten this long after it lapsed (once it has no running
/// run left); long enough that a paused instance cannot come back to a deleted row unnoticed.
const INSTANCE_FORGET_SECONDS: u64 = 3600;
/// Frames one retention sweep deletes at most.
pub const RUN_EVENTS_FORGET_MAX: u32 = 10_000;
/// Cancel requests one look reads at most.
const CANCEL_REQUESTS_MAX: u32 = 256;

/// What one [`Engine::recover_once`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Running runs of dead instances marked `interrupted`.
    pub interrupted: u32,
    /// Holds released now (the rest needed no release: already released, captured, expired, or
    /// never taken).
    pub released: u32,
    /// Releases that failed; their runs keep `hold_resolved == false` and are retried next time.
    pub release_failures: u32,
    /// Lease rows of long-dead instances removed.
    pub instances_forgotten: u32,
}

impl Engine {
    fn credits(&self) -> Credits {
        Credits {
            store: self.ledger.clone(),
            retries_max: self.config.ledger_retries_max,
            backoff_ms: self.config.ledger_backoff_ms,
        }
    }

    /// Releases a run's hold with the run's release key. `Ok(true)`: nothing is reserved any
    /// more; `Ok(false)`: the release failed (logged with the hold id).
    /// The run's hold when its settler's final capture committed (state `captured`).
    async fn settled_hold(&self, run: &RunRecord) -> Option<ledger::Hold> {
        let hold_id = match &run.hold_id {
            Some(hold_id) => hold_id.clone(),
            None => HoldId::parse(&format!("hold-{}", run.run_id)).ok()?,
        };
        match self.ledger.hold(&hold_id).await {
            Ok(Some(hold)) if hold.state == ledger::HoldState::Captured => Some(hold),
            Ok(_) => None,
            Err(error) => {
                tracing::warn!(run_id = %run.run_id, %error, "recovery could not read the hold; assuming unsettled");
                None
            }
        }
    }

    async fn release_for_recovery(&self, run: &RunRecord, report: &mut RecoveryReport) -> bool {
        // The hold id is derived from the run id, so a hold taken but not yet recorded on the
        // run (the process died in between) is released too; an unknown one is "not found".
        let hold_id = match &run.hold_id {
            Some(hold_id) => hold_id.clone(),
            None => match HoldId::parse(&format!("hold-{}", run.run_id)) {
                Ok(hold_id) => hold_id,
                Err(_) => return true,
            },
        };
        let key = format!("{}:release", run.run_id);
        match self.credits().release(&key, &hold_id).await {
            Ok(Released::Now) => {
                report.released += 1;
                metrics::counter!(RECOVERY_ACTIONS, "action" => "hold_released").increment(1);
                tracing::info!(run_id = %run.run_id, hold_id = %hold_id, "recovery released a hold");
                true
            }
            Ok(Released::AlreadyDone(how)) => {
                tracing::debug!(run_id = %run.run_id, hold_id = %hold_id, how, "recovery: hold needs no release");
                true
            }
            Err(error) => {
                report.release_failures += 1;
                tracing::error!(run_id = %run.run_id, hold_id = %hold_id, %error, "recovery could not release a hold");
                false
            }
        }
    }

    /// One recovery sweep, bounded by `recovery_runs_max` runs of each kind:
    /// 1. every running run whose instance is not this one and has no live lease (none, or
    ///    lapsed): its hold is released (key `<run_id>:release`), then the run is marked
    ///    `interrupted` with `error.code == "interrupted"` and `hold_resolved` as the release
    ///    left it (false when it failed, so step 2 retries it);
    /// 2. every terminal run whose data says `hold_resolved == false`: the release is retried;
    /// 3. lease rows of instances dead for an hour with no running run are removed.
    ///
    /// A second call right after changes nothing.
    pub async fn recover_once(&self) -> Result<RecoveryReport, StoreError> {
        let mut report = RecoveryReport::default();
        let limit = self.config.recovery_runs_max;
        let now = self.now();
        let orphaned = self.runs.orphaned_runs(&self.config.instance_id, now, limit).await?;
        for run in orphaned {
            let mut data = RunData::from_text(&run.data).unwrap_or_else(|| {
                tracing::error!(run_id = %run.run_id, "undecodable run data; recovery rewrites it");
                RunData::default()
            });
            if !data.hold_resolved {
                data.hold_resolved = self.release_for_recovery(&run, &mut report).await;
            }
            // A process that died after its settler's final capture committed, but before the
            // run record said so, finished the turn: record it as settled, not interrupted.
            let settled = self.settled_hold(&run).await;
            let state = match settled {
                Some(hold) => {
                    // The synchronous cost is what the hold captured less the run's video jobs,
                    // whose prices were captured with them.
                    let mut job_prices = ledger::Amount::ZERO;
                    if let Some(jobs) = &self.jobs {
                        if let Ok(list) = jobs.thread_jobs(&run.thread_id, 100).await {
                            let prices = list.iter().filter(|job| job.run_id == run.run_id).map(|job| job.price);
                            job_prices = ledger::Amount::sum(prices);
                        }
                    }
                    data.actual = Some(hold.captured.saturating_sub(job_prices));
                    data.captured = Some(hold.captured);
                    data.reserved = Some(hold.amount);
                    data.refunded = Some(hold.amount.saturating_sub(hold.captured));
                    data.hold_resolved = true;
                    RunState::Succeeded
                }
                None => {
                    data.error = Some(ErrorData {
                        code: RunErrorCode::Interrupted,
                        message: "the server running this run stopped before it finished".to_owned(),
                    });
                    RunState::Interrupted
                }
            };
            let hold_resolution = data.hold_resolution(run.hold_id.as_ref());
            let updated =
                RunRecord { state, updated_at: self.now(), data: data.to_text(), hold_resolution, ..run.clone() };
            let last = match state {
                RunState::Succeeded => Event::Done,
                _ => Event::Error(RunError {
                    code: ErrorCode::Interrupted,
                    message: "the server running this run stopped before it finished".to_owned(),
                    shortfall: None,
                }),
            };
            if self.end_recovered_run(updated, last).await? {
                report.interrupted += 1;
                metrics::counter!(RECOVERY_ACTIONS, "action" => "run_interrupted").increment(1);
                tracing::warn!(run_id = %run.run_id, instance_id = %run.instance_id, "run of a dead instance interrupted");
            }
        }
        for run in self.runs.unresolved_runs(limit).await? {
            let Some(mut data) = RunData::from_text(&run.data) else {
                tracing::error!(run_id = %run.run_id, "undecodable run data; its hold is left to the TTL");
                continue;
            };
            if data.hold_resolved {
                continue;
            }
            // On failure the run is still touched (updated_at), so the next sweep starts with the
            // other unresolved runs instead of retrying this one first forever.
            data.hold_resolved = self.release_for_recovery(&run, &mut report).await;
            let hold_resolution = data.hold_resolution(run.hold_id.as_ref());
            let updated = RunRecord { updated_at: self.now(), data: data.to_text(), hold_resolution, ..run };
            self.runs.update_run(&updated).await?;
        }
        self.forget_dead_instances(now, &mut report).await?;
        Ok(report)
    }

    /// Records a recovered run's end together with its final frame (after the frames its dead
    /// instance stored), so its followers on every instance end with `done` or `error` as for
    /// any run. False when the run is gone.
    async fn end_recovered_run(&self, run: RunRecord, event: Event) -> Result<bool, StoreError> {
        let seq = self.runs.last_run_event_seq(&run.run_id).await?.map_or(0, |last| last + 1);
        let frame = Frame {
            seq,
            kind: event.kind(),
            id: format!("{}:{seq}", run.thread_id),
            ts: self.now(),
            step_idx: None,
            node: None,
            event: Arc::new(event),
        };
        let frames = vec![stored::encode(&run.run_id, &frame)];
        self.runs.write_run_events(&RunEventsWrite { frames, evicted: Vec::new(), run: Some(run) }).await
    }

    /// Deletes the frames of runs that ended more than `run_events_retention_seconds` ago (at
    /// most [`RUN_EVENTS_FORGET_MAX`] per call); returns how many.
    pub async fn forget_run_events_once(&self) -> Result<u64, StoreError> {
        let retention =
            i64::try_from(self.config.run_events_retention_seconds.saturating_mul(1_000_000)).unwrap_or(i64::MAX);
        self.runs.forget_run_events(self.now().plus_micros(-retention), RUN_EVENTS_FORGET_MAX).await
    }

    /// Cancels this instance's runs whose cancel was requested on another instance: at once on
    /// a signal, and every `run_poll_ms` from the store in case a signal was missed. Ends when
    /// the engine stops (its runs are all canceled then).
    async fn watch_cancels(self: Arc<Self>) {
        let mut signals = self.runs.run_signals().await;
        let poll = Duration::from_millis(self.config.run_poll_ms.max(1));
        let stopping = self.stopping.clone();
        loop {
            let look = tokio::select! {
                () = stopping.cancelled() => return,
                () = tokio::time::sleep(poll) => true,
                signal = signals.recv() => match signal {
                    Ok(RunSignal::Cancel(run_id)) => {
                        if self.cancel(&run_id) {
                            tracing::info!(%run_id, "run canceled at another instance's request");
                        }
                        false
                    }
                    Ok(RunSignal::Events(_)) => false,
                    Ok(RunSignal::Resync) | Err(RecvError::Lagged(_)) => true,
                    Err(RecvError::Closed) => {
                        signals = self.runs.run_signals().await;
                        true
                    }
                },
            };
            if look && self.running_count() > 0 {
                match self.runs.cancel_requests(&self.config.instance_id, CANCEL_REQUESTS_MAX).await {
                    Ok(requested) => {
                        for run_id in requested {
                            if self.cancel(&run_id) {
                                tracing::info!(%run_id, "run canceled at another instance's request");
                            }
                        }
                    }
                    Err(error) => tracing::warn!(%error, "could not read cancel requests"),
                }
            }
        }
    }

    async fn forget_dead_instances(&self, now: Timestamp, report: &mut RecoveryReport) -> Result<(), StoreError> {
        let long_ago = now.plus_micros(-i64::try_from(INSTANCE_FORGET_SECONDS * 1_000_000).unwrap_or(i64::MAX));
        for lease in self.runs.lapsed_instances(long_ago, self.config.recovery_runs_max).await? {
            if lease.instance_id == self.config.instance_id {
                continue;
            }
            let running = self.runs.runs_in_state(RunState::Running, Some(&lease.instance_id), 1).await?;
            if running.is_empty() && self.runs.drop_instance(&lease.instance_id).await? {
                report.instances_forgotten += 1;
            }
        }
        Ok(())
    }

    /// Takes or renews this instance's lease for `instance_lease_seconds`.
    pub async fn renew_lease(&self) -> Result<(), StoreError> {
        let now = self.now();
        self.runs
            .renew_instance(&self.config.instance_id, now, now.plus_seconds(self.config.instance_lease_seconds))
            .await
    }

    /// Extends the pending hold of every live run of this instance that expires within
    /// `hold_extend_margin_seconds`, by `hold_ttl_seconds` from now (ledger `extend`, key
    /// `<run_id>:extend:<n>`). Returns how many holds were extended.
    pub async fn extend_holds_once(&self) -> u32 {
        let turns: Vec<_> = {
            let registry = self.registry.lock().expect("registry lock poisoned");
            registry.running.values().map(|live| live.turn.clone()).collect()
        };
        let due = self.now().plus_seconds(self.config.hold_extend_margin_seconds);
        let mut extended = 0;
        for turn in turns {
            let Some(hold) = turn.pending_hold() else { continue };
            if hold.expires_at > due {
                continue;
            }
            match turn.extend_hold(self.config.hold_ttl_seconds).await {
                Ok(true) => {
                    extended += 1;
                    tracing::info!(hold_id = %hold.hold_id, "extended the hold of a live run");
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::error!(hold_id = %hold.hold_id, %error, "could not extend the hold of a live run")
                }
            }
        }
        extended
    }

    /// Starts the instance's upkeep task (not on the run tracker, so `shutdown` does not wait for
    /// it): it takes the lease and recovers at once, then renews the lease every
    /// `instance_renew_seconds`, recovers every `recovery_interval_seconds` and extends due holds
    /// on each tick. When `stopping()` fires it keeps renewing until the live runs have ended,
    /// then drops the lease and returns — await the handle after [`Engine::shutdown`] and before
    /// the store closes.
    pub fn start_background(self: &Arc<Self>) -> JoinHandle<()> {
        let engine = self.clone();
        tokio::spawn(async move { engine.background().await })
    }

    async fn background(self: Arc<Self>) {
        tokio::spawn(self.clone().watch_cancels());
        let renew_every = Duration::from_secs(self.config.instance_renew_seconds.max(1));
        let recover_every = Duration::from_secs(self.config.recovery_interval_seconds.max(1));
        let tick = renew_every.min(recover_every);
        let stopping = self.stopping.clone();
        let mut last_renew: Option<tokio::time::Instant> = None;
        let mut last_recovery: Option<tokio::time::Instant> = None;
        while !stopping.is_cancelled() {
            let at = tokio::time::Instant::now();
            if last_renew.is_none_or(|last| at.duration_since(last) >= renew_every) {
                match self.renew_lease().await {
                    Ok(()) => last_renew = Some(at),
                    Err(error) => tracing::error!(%error, "could not renew the instance lease"),
                }
            }
            if last_recovery.is_none_or(|last| at.duration_since(last) >= recover_every) {
                last_recovery = Some(at);
                match self.recover_once().await {
                    Ok(report) if report != RecoveryReport::default() => tracing::info!(?report, "recovery sweep"),
                    Ok(_) => {}
                    Err(error) => tracing::error!(%error, "recovery sweep failed"),
                }
                match self.forget_run_events_once().await {
                    Ok(0) => {}
                    Ok(forgotten) => tracing::info!(forgotten, "run events past their retention forgotten"),
                    Err(error) => tracing::error!(%error, "run event retention sweep failed"),
                }
            }
            self.extend_holds_once().await;
            tokio::select! {
                () = stopping.cancelled() => {}
                () = tokio::time::sleep(tick) => {}
            }
        }
        // Runs still finishing (releasing their holds) stay covered by the lease, at most as
        // long as a turn may last (the supervisor ends every turn by then).
        let drained = self.tracker.wait();
        tokio::pin!(drained);
        let deadline = tokio::time::sleep(Duration::from_secs(self.config.turn_seconds_max));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut drained => break,
                () = &mut deadline => {
                    tracing::warn!("runs still going at the end of the turn limit; dropping the lease");
                    break;
                }
                () = tokio::time::sleep(renew_every) => {
                    if let Err(error) = self.renew_lease().await {
                        tracing::error!(%error, "could not renew the instance lease while stopping");
                    }
                }
            }
        }
        match self.runs.drop_instance(&self.config.instance_id).await {
            Ok(_) => tracing::info!(instance_id = %self.config.instance_id, "instance lease dropped"),
            Err(error) => tracing::error!(%error, "could not drop the instance lease; it lapses on its own"),
        }
    }
}
