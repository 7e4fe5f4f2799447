//! The storage port for metered runs: threads, runs (one per turn), their event streams and
//! artifacts.
//!
//! A run's details (plan, credit log, answer, costs) are a JSON document owned by the run engine;
//! the store only indexes what it must query on (account, thread, state, owning instance, whether
//! its hold still needs a release, whether a cancel was asked for) and enforces one rule itself:
//! a thread has at most one running run, so two turns of one thread can never hold credits at the
//! same time.
//!
//! A run's event frames are stored too (encoded by the engine, kept as text), so any server
//! process, including one started after the run's own died, can replay and follow a run. Writes
//! of frames are batched by the engine; [`RunStore::run_signals`] tells followers and owners when
//! to look again (PostgreSQL: `LISTEN/NOTIFY`; the single-process stores: in process).

use async_trait::async_trait;
use ledger::{AccountId, Amount, HoldId, HoldState, Outcome, Timestamp};
use tokio::sync::broadcast;

pub use crate::ids::{ArtifactId, RunId, ThreadId};
use crate::keys::{KeyUse, KeyedRun, RecordedResponse};
use crate::{Executed, Idempotency, Request, StoreError};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunState {
    Running,
    Succeeded,
    Failed,
    Canceled,
    /// Its server process died or stopped before the run finished; its hold was released.
    Interrupted,
}

impl RunState {
    pub const ALL: [RunState; 5] =
        [RunState::Running, RunState::Succeeded, RunState::Failed, RunState::Canceled, RunState::Interrupted];

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Canceled => "canceled",
            RunState::Interrupted => "interrupted",
        }
    }

    pub fn parse(text: &str) -> Option<RunState> {
        RunState::ALL.into_iter().find(|state| state.as_str() == text)
    }

    pub fn is_terminal(self) -> bool {
        self != RunState::Running
    }
}

/// Whether a run's hold still needs care. A typed column (not text in the run document), indexed
/// where it matters: recovery finds the terminal runs whose release failed without reading any
/// finished run that needs nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HoldResolution {
    /// No hold is recorded on the run: nothing to resolve.
    None,
    /// Its hold is taken and neither captured nor released yet. On a terminal run this is a
    /// release that failed, which recovery retries ([`RunStore::unresolved_runs`]).
    Pending,
    /// Its hold was captured or released: it needs no more care.
    Resolved,
}

impl HoldResolution {
    pub const ALL: [HoldResolution; 3] = [HoldResolution::None, HoldResolution::Pending, HoldResolution::Resolved];

    pub fn as_str(self) -> &'static str {
        match self {
            HoldResolution::None => "none",
            HoldResolution::Pending => "pending",
            HoldResolution::Resolved => "resolved",
        }
    }

    pub fn parse(text: &str) -> Option<HoldResolution> {
        HoldResolution::ALL.into_iter().find(|resolution| resolution.as_str() == text)
    }
}

/// One turn of a thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunRecord {
    pub run_id: RunId,
    pub account_id: AccountId,
    pub thread_id: ThreadId,
    /// 0 for a thread's first turn; assigned by [`RunStore::create_run`].
    pub turn_index: u32,
    pub state: RunState,
    /// The server process that executes the run (for crash recovery).
    pub instance_id: String,
    /// The turn's hold, once taken.
    pub hold_id: Option<HoldId>,
    /// Whether that hold still needs a capture or a release (written by the engine with the
    /// document it derives from).
    pub hold_resolution: HoldResolution,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// The engine's JSON document (plan, credit log, costs, answer, error).
    pub data: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifact {
    pub artifact_id: ArtifactId,
    pub account_id: AccountId,
    pub run_id: RunId,
    pub content_type: String,
    pub bytes: Vec<u8>,
    pub created_at: Timestamp,
}

/// A server process's claim to be alive: it renews `lease_until` while it runs. A run whose
/// instance has no lease, or a lapsed one, belongs to a dead process and is recovered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceLease {
    pub instance_id: String,
    pub lease_until: Timestamp,
    /// When the instance first took its lease (kept by renewals).
    pub started_at: Timestamp,
}

/// One frame of a run's event stream, as stored: the engine's encoding of the frame, and what a
/// reader needs without decoding it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredFrame {
    pub run_id: RunId,
    /// The frame's place in its run's stream (0, 1, 2, …; evicted frames leave gaps).
    pub seq: u64,
    /// The event type (`token`, `done`, …).
    pub kind: String,
    /// When the engine emitted it.
    pub at: Timestamp,
    /// The engine's encoding of the frame, kept as the exact text it wrote.
    pub data: String,
}

/// One write of the run event writer: new frames, frames evicted from their run's bounded
/// stream, and optionally a run's final record. All of it or nothing; a frame already stored
/// (the same run and seq: a write retried after an unknown outcome) is left as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunEventsWrite {
    pub frames: Vec<StoredFrame>,
    pub evicted: Vec<(RunId, u64)>,
    /// A run's record written in the same transaction (as [`RunStore::update_run`] writes it):
    /// a run's last frames and its terminal state become visible together, so a reader that sees
    /// the run ended finds its `done` or `error` stored.
    pub run: Option<RunRecord>,
}

impl RunEventsWrite {
    /// The runs it adds frames to, each once, in the order they first appear (whom to signal).
    pub fn runs_with_frames(&self) -> Vec<RunId> {
        let mut runs: Vec<RunId> = Vec::new();
        for frame in &self.frames {
            if runs.last() != Some(&frame.run_id) && !runs.contains(&frame.run_id) {
                runs.push(frame.run_id.clone());
            }
        }
        runs
    }
}

/// A run's settlement, decided in the same transaction as the write that ends the run
/// ([`RunStore::write_run_end`]): the ledger request that resolves the run's hold (a capture or a
/// release, with its idempotency key, so a retried or replayed settle never applies twice), and
/// the hold as the run's record and frames (built before the write) say it is afterwards.
#[derive(Clone, Debug)]
pub struct RunSettle {
    pub request: Request,
    pub expected: SettledHold,
}

/// The part of a hold a run's end reports: what the ledger must answer for the end to be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettledHold {
    pub hold_id: HoldId,
    pub state: HoldState,
    pub amount: Amount,
    pub captured: Amount,
}

impl SettledHold {
    /// Whether `outcome` (a capture's or a release's) leaves the hold as expected.
    pub fn matches(&self, outcome: &Outcome) -> bool {
        let hold = match outcome {
            Outcome::Captured { hold } | Outcome::Released { hold, .. } => hold,
            _ => return false,
        };
        hold.hold_id == self.hold_id
            && hold.state == self.state
            && hold.amount == self.amount
            && hold.captured == self.captured
    }
}

/// What [`RunStore::write_run_end`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunEndWritten {
    /// The settlement, the run's record and the frames committed together; the ledger's outcome
    /// (a replayed key gives the first one).
    Written(Outcome),
    /// The write's run does not exist: nothing was written.
    NoSuchRun,
    /// The ledger answered otherwise than expected (a rejection, a conflicting key, another
    /// hold): nothing was written, not even the rejection (the key stays unused).
    Refused(Executed),
}

/// The terminal run a [`RunStore::write_run_end`] ends: every backend refuses the same caller
/// bugs the same way ([`StoreError::Corrupt`]).
pub fn ending_run(write: &RunEventsWrite) -> Result<&RunRecord, StoreError> {
    match &write.run {
        Some(run) if run.state.is_terminal() => Ok(run),
        Some(run) => {
            Err(StoreError::corrupt(format!("run {} is settled with a write that leaves it running", run.run_id)))
        }
        None => Err(StoreError::corrupt("a settle is written with the run it ends")),
    }
}

/// Most frames [`RunStore::run_events`] returns at once.
pub const RUN_EVENTS_PAGE_MAX: u32 = 1024;

/// What [`RunStore::run_signals`] announces: a hint to look at the store again, never the data
/// itself. Signals can be missed (a lost connection, a slow receiver); readers poll as well.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunSignal {
    /// New frames of this run were stored.
    Events(RunId),
    /// A cancel of this run was requested ([`RunStore::request_cancel`]).
    Cancel(RunId),
    /// Signals may have been missed (the listening connection was lost and is back): look at
    /// everything again.
    Resync,
}

/// Signals kept for a receiver that has not read them yet; past it the receiver is told it lagged
/// (and should treat that as [`RunSignal::Resync`]).
pub const RUN_SIGNALS_CAPACITY: usize = 1024;

/// Why a run could not be created. When several apply, the first listed here is the answer, so
/// every backend refuses the same request the same way.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CreateRunRefusal {
    /// The thread exists and belongs to another account.
    ThreadOfAnotherAccount,
    /// The thread already has a running run.
    ThreadBusy { run_id: RunId },
    /// A run with this id exists.
    DuplicateRunId,
    /// The idempotency key was used before: by a solve with the same fingerprint, which started
    /// this run ([`KeyedRun::Started`]), or by another request ([`KeyedRun::Conflict`]).
    KeyUsed(KeyedRun),
}

/// The largest page of [`RunStore::account_runs`].
pub const RUNS_PAGE_MAX: u32 = 1_000;

#[async_trait]
pub trait RunStore: Send + Sync + 'static {
    /// Inserts a run in state `Running`, creating its thread on first use, and assigns
    /// `turn_index` (previous turns of the thread + 1). Returns the stored record.
    async fn create_run(&self, run: &RunRecord) -> Result<Result<RunRecord, CreateRunRefusal>, StoreError> {
        self.create_run_once(run, None).await
    }

    /// [`RunStore::create_run`], recording `idempotency` (when given) in the same transaction:
    /// the key is checked first (so a replay finds its run even while that run keeps its thread
    /// busy), and a refused run records nothing. Keys share one space with the ledger's and the
    /// recorded responses' ([`crate::keys`]).
    async fn create_run_once(
        &self,
        run: &RunRecord,
        idempotency: Option<&Idempotency>,
    ) -> Result<Result<RunRecord, CreateRunRefusal>, StoreError>;

    /// What the key of a solve names: `None` when unused, else the run a solve with this
    /// fingerprint started, or a conflict.
    async fn keyed_run(&self, idempotency: &Idempotency) -> Result<Option<KeyedRun>, StoreError>;

    /// Overwrites `state`, `hold_id`, `hold_resolution`, `updated_at` and `data` of an existing
    /// run (its id, account, thread, turn and instance never change, and neither does a requested
    /// cancel). Returns false when the run does not exist.
    /// Making a run `Running` while another run of its thread is running is refused with
    /// [`StoreError::Corrupt`] (only [`RunStore::create_run`] starts runs; this is a caller bug).
    async fn update_run(&self, run: &RunRecord) -> Result<bool, StoreError>;

    async fn run(&self, run_id: &RunId) -> Result<Option<RunRecord>, StoreError>;

    /// The thread's owner, or `None` for an unknown thread.
    async fn thread_account(&self, thread_id: &ThreadId) -> Result<Option<AccountId>, StoreError>;

    /// The thread's runs in turn order, at most `limit`, starting after `after_turn` (exclusive;
    /// `None` from the first).
    async fn thread_runs(
        &self,
        thread_id: &ThreadId,
        after_turn: Option<u32>,
        limit: u32,
    ) -> Result<Vec<RunRecord>, StoreError>;

    /// Runs in `state`, optionally only those of one instance, oldest first, at most `limit`.
    /// An account's runs, newest first (`created_at`, then run id, both descending), at most
    /// `limit` (≤ [`RUNS_PAGE_MAX`]); only those older than `before` (a run's `created_at` and id)
    /// when given.
    async fn account_runs(
        &self,
        account_id: &AccountId,
        before: Option<(Timestamp, &RunId)>,
        limit: u32,
    ) -> Result<Vec<RunRecord>, StoreError>;

    async fn runs_in_state(
        &self,
        state: RunState,
        instance_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<RunRecord>, StoreError>;

    /// Terminal runs whose hold is still [`HoldResolution::Pending`] (a release that failed),
    /// least recently updated first, at most `limit`; read through an index on exactly those.
    async fn unresolved_runs(&self, limit: u32) -> Result<Vec<RunRecord>, StoreError>;

    /// Running runs whose instance is not `except_instance_id` and has no lease or a lease with
    /// `lease_until <= now`, oldest first, at most `limit`: the runs of dead processes.
    async fn orphaned_runs(
        &self,
        except_instance_id: &str,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<RunRecord>, StoreError>;

    /// Takes or renews the instance's lease until `lease_until` (an upsert; `started_at` is `now`
    /// on the first call and kept by later ones).
    async fn renew_instance(&self, instance_id: &str, now: Timestamp, lease_until: Timestamp)
        -> Result<(), StoreError>;

    /// Removes the instance's lease (a clean stop, or a dead instance with nothing left to
    /// recover). Returns false when it had none.
    async fn drop_instance(&self, instance_id: &str) -> Result<bool, StoreError>;

    /// Instances whose lease has lapsed (`lease_until <= now`), earliest lapse first, at most
    /// `limit`.
    async fn lapsed_instances(&self, now: Timestamp, limit: u32) -> Result<Vec<InstanceLease>, StoreError>;

    /// Stores an artifact (ids are unique; a second put of the same id is an error,
    /// [`StoreError::Corrupt`], and leaves the first one as it was).
    async fn put_artifact(&self, artifact: &Artifact) -> Result<(), StoreError>;

    async fn artifact(&self, artifact_id: &ArtifactId) -> Result<Option<Artifact>, StoreError>;

    /// Applies `write` in one transaction and signals [`RunSignal::Events`] for each run with new
    /// frames once it committed. Returns false, having written nothing, when `write.run` names a
    /// run that does not exist; making a run `Running` that way is refused as in
    /// [`RunStore::update_run`].
    async fn write_run_events(&self, write: &RunEventsWrite) -> Result<bool, StoreError>;

    /// [`RunStore::write_run_events`] ending a run (`write.run` must be terminal) together with
    /// its settlement, in one transaction: the ledger request is decided there, and the write
    /// commits only when its answer is `settle.expected`; otherwise nothing is written, and the
    /// answer says why. So a turn's settle and its end are one commit, and a hold resolves with
    /// its run's end or not at all.
    async fn write_run_end(&self, write: &RunEventsWrite, settle: &RunSettle) -> Result<RunEndWritten, StoreError>;

    /// The run's stored frames with `seq > after` (all when `None`), in seq order, at most
    /// `limit` (capped at [`RUN_EVENTS_PAGE_MAX`]).
    async fn run_events(&self, run_id: &RunId, after: Option<u64>, limit: u32) -> Result<Vec<StoredFrame>, StoreError>;

    /// The highest seq stored for the run, if any.
    async fn last_run_event_seq(&self, run_id: &RunId) -> Result<Option<u64>, StoreError>;

    /// Deletes the frames of terminal runs last updated before `ended_before`, at most `limit`
    /// frames; returns how many. Running runs keep theirs whatever their age.
    async fn forget_run_events(&self, ended_before: Timestamp, limit: u32) -> Result<u64, StoreError>;

    /// Records that the run should stop (kept until it ends; the first request's time stays) and
    /// signals [`RunSignal::Cancel`] once committed. False when no such run is running.
    async fn request_cancel(&self, run_id: &RunId, at: Timestamp) -> Result<bool, StoreError>;

    /// Running runs of `instance_id` with a requested cancel, oldest first, at most `limit`: what
    /// the owner polls in case a signal was missed.
    async fn cancel_requests(&self, instance_id: &str, limit: u32) -> Result<Vec<RunId>, StoreError>;

    /// What the key holds, if anything, as a response route sees it ([`crate::keys`]).
    async fn recorded_response(&self, key: &str) -> Result<Option<KeyUse>, StoreError>;

    /// Records `response` under `key` unless the key is taken, and returns what the key holds
    /// now: this response, or whatever was there first.
    async fn record_response(&self, key: &str, response: &RecordedResponse) -> Result<KeyUse, StoreError>;

    /// Hints that runs changed ([`RunSignal`]), from every process on the store, from the moment
    /// this returns: a store that listens over a connection (PostgreSQL) returns once it listens,
    /// or, when it cannot connect, at once (the caller polls anyway, and [`RunSignal::Resync`]
    /// follows when listening starts).
    async fn run_signals(&self) -> broadcast::Receiver<RunSignal>;
}
