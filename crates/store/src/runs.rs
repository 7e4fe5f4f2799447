//! The storage port for metered runs: threads, runs (one per turn) and artifacts.
//!
//! A run's details (plan, credit log, answer, costs) are a JSON document owned by the run engine;
//! the store only indexes what it must query on (account, thread, state, owning instance) and
//! enforces one rule itself: a thread has at most one running run, so two turns of one thread
//! can never hold credits at the same time.

use async_trait::async_trait;
use ledger::{AccountId, HoldId, Timestamp};

pub use crate::ids::{ArtifactId, RunId, ThreadId};
use crate::StoreError;

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

/// The exact text the run engine's JSON document contains while a terminal run's hold still needs
/// a release (`serde_json` writes `"hold_resolved":false` with no spaces).
/// [`RunStore::unresolved_runs`] matches on it, so the store never parses the document.
pub const HOLD_UNRESOLVED_MARKER: &str = r#""hold_resolved":false"#;

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
}

#[async_trait]
pub trait RunStore: Send + Sync + 'static {
    /// Inserts a run in state `Running`, creating its thread on first use, and assigns
    /// `turn_index` (previous turns of the thread + 1). Returns the stored record.
    async fn create_run(&self, run: &RunRecord) -> Result<Result<RunRecord, CreateRunRefusal>, StoreError>;

    /// Overwrites `state`, `hold_id`, `updated_at` and `data` of an existing run (its id, account,
    /// thread, turn and instance never change). Returns false when the run does not exist.
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
    async fn runs_in_state(
        &self,
        state: RunState,
        instance_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<RunRecord>, StoreError>;

    /// Terminal runs with a `hold_id` whose data contains [`HOLD_UNRESOLVED_MARKER`] (a release
    /// that failed), least recently updated first, at most `limit`.
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
}
