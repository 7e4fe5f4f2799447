//! What the stores tell the process's metrics recorder (the `metrics` facade: a no-op until a
//! recorder is installed, as `creditgraph serve` does). Every backend reports the same names,
//! and only what committed: a batch rolled back or run again reports nothing twice.
//!
//! Credits are counted in micro-credits, so the counters are integers and exact (a dashboard
//! divides by 10^6); they are for watching, never for money (the journal is the record).

use std::time::Duration;

use ledger::EntryKind;

use crate::protocol::Writes;
use crate::Executed;

/// Ledger commands answered: `command` (grant, hold, capture, …) and `outcome` (`applied`,
/// `replayed`, `idempotency_conflict`, or the rejection's code).
pub const LEDGER_COMMANDS: &str = "creditgraph_ledger_commands_total";
/// Micro-credits moved by committed journal entries, by `kind` (grant, hold, capture, release,
/// expire, refund, debit, grant_expired, void).
pub const CREDITS: &str = "creditgraph_credits_micros_total";
/// Commands (or jobs) per committed group-commit batch, by `store`.
pub const BATCH_SIZE: &str = "creditgraph_store_batch_size";
/// Time to commit one batch (the durable sync included), by `store`. PostgreSQL sends a batch's
/// COMMIT with its write statement: there it is that last round trip, the write included.
pub const COMMIT_SECONDS: &str = "creditgraph_store_commit_seconds";

/// Counts one answered ledger command (`command` is [`ledger::Command::name`]). Called once per request after its answer is final
/// (committed, or decided without a write).
pub fn command(command: &'static str, executed: &Executed) {
    let outcome = match executed {
        Executed::Fresh(Ok(_)) => "applied",
        Executed::Replayed(_) => "replayed",
        Executed::Fresh(Err(rejection)) => rejection.code(),
        Executed::Conflict => "idempotency_conflict",
    };
    metrics::counter!(LEDGER_COMMANDS, "command" => command, "outcome" => outcome).increment(1);
}

/// One committed batch's size (commands or jobs in it).
pub fn batch_size(store: &'static str, size: usize) {
    metrics::histogram!(BATCH_SIZE, "store" => store).record(size as f64);
}

/// How long one commit took (the durable sync included).
pub fn commit_time(store: &'static str, commit: Duration) {
    metrics::histogram!(COMMIT_SECONDS, "store" => store).record(commit.as_secs_f64());
}

/// The credits a batch's journal entries move, kept until the batch commits.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Credits {
    /// Micro-credits per [`EntryKind`], in the order of [`EntryKind::ALL`].
    micros: [u128; EntryKind::ALL.len()],
}

impl Credits {
    /// Adds the entries `writes` will append.
    pub fn add(&mut self, writes: &Writes) {
        for entry in writes.entries() {
            let index = EntryKind::ALL.iter().position(|kind| *kind == entry.kind).expect("every kind is listed");
            self.micros[index] += u128::from(entry.amount.micros());
        }
    }

    /// Merges another batch's credits into these.
    pub fn merge(&mut self, other: Credits) {
        for (mine, theirs) in self.micros.iter_mut().zip(other.micros) {
            *mine += theirs;
        }
    }

    /// Reports the credits (the batch committed) and starts again from zero.
    pub fn committed(&mut self) {
        for (kind, micros) in EntryKind::ALL.iter().zip(self.micros) {
            // Extends move nothing; a kind that moved nothing is not worth a series.
            if micros > 0 {
                let micros = u64::try_from(micros).unwrap_or(u64::MAX);
                metrics::counter!(CREDITS, "kind" => kind.as_str()).increment(micros);
            }
        }
        *self = Credits::default();
    }
}
