//! The run engine's ledger calls: each with an idempotency key derived from the run, and bounded
//! retries on store errors, so a retried call can never apply twice.

use std::sync::Arc;
use std::time::Duration;

use ledger::{Amount, Command, Hold, HoldId, HoldState, Outcome, Overage, Rejection};
use store::{Executed, LedgerStore, Request, StoreError};

/// How a release ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Released {
    /// The hold went back to available now.
    Now,
    /// Nothing was reserved any more: already released, captured, expired, or unknown.
    AlreadyDone(&'static str),
}

/// The capture [`Credits::capture`] sends.
pub(crate) fn capture_command(hold_id: &HoldId, amount: Amount, is_final: bool) -> Command {
    Command::Capture { hold_id: hold_id.clone(), amount, is_final, overage: Overage::Reject }
}

/// `command` under `key`, fingerprinted as every ledger call of the engine fingerprints it: the
/// same command under the same key replays, whichever way it was sent (a settle written with its
/// run's end, or sent alone after that write was refused).
pub(crate) fn keyed(command: Command, key: &str) -> Request {
    let fingerprint = format!("{command:?}");
    Request::with_key(command, key, &fingerprint)
}

#[derive(Clone)]
pub(crate) struct Credits {
    pub store: Arc<dyn LedgerStore>,
    pub retries_max: u32,
    pub backoff_ms: u64,
}

impl Credits {
    /// Sends one command with its key, retrying on store errors (the key makes retries safe),
    /// and takes its answer through `shape`, the typed view of the one outcome this command
    /// gives. Another outcome (a record of another command under this key) is corrupt data.
    async fn send<T>(
        &self,
        command: Command,
        key: &str,
        shape: fn(Outcome) -> Result<T, Box<Outcome>>,
    ) -> Result<Result<T, Rejection>, StoreError> {
        let mut attempt = 0;
        loop {
            let request = keyed(command.clone(), key);
            match self.store.execute(request).await {
                Ok(Executed::Fresh(result) | Executed::Replayed(result)) => {
                    return match result.map(shape) {
                        Ok(Ok(answer)) => Ok(Ok(answer)),
                        Ok(Err(other)) => Err(StoreError::corrupt(format!(
                            "the {} under key {key} answered {other:?}",
                            command.name()
                        ))),
                        Err(rejection) => Ok(Err(rejection)),
                    };
                }
                Ok(Executed::Conflict) => {
                    return Err(StoreError::corrupt(format!("idempotency key {key} used by another request")))
                }
                Err(error @ StoreError::Corrupt { .. }) => return Err(error),
                Err(error) if attempt >= self.retries_max => return Err(error),
                Err(error) => {
                    attempt += 1;
                    tracing::warn!(key, attempt, %error, "ledger call failed; retrying");
                    tokio::time::sleep(Duration::from_millis(self.backoff_ms << attempt.min(6))).await;
                }
            }
        }
    }

    /// Sends a `Command::Hold` built by the caller.
    pub async fn hold(&self, key: &str, command: Command) -> Result<Result<Hold, Rejection>, StoreError> {
        assert!(matches!(command, Command::Hold { .. }), "Credits::hold takes a hold command");
        self.send(command, key, Outcome::into_held).await
    }

    pub async fn capture(
        &self,
        key: &str,
        hold_id: &HoldId,
        amount: Amount,
        is_final: bool,
    ) -> Result<Result<Hold, Rejection>, StoreError> {
        self.send(capture_command(hold_id, amount, is_final), key, Outcome::into_captured).await
    }

    /// Moves a pending hold's expiry to `ttl_seconds` from now (the key names the extension, so
    /// a retried one never applies twice).
    pub async fn extend(
        &self,
        key: &str,
        hold_id: &HoldId,
        ttl_seconds: u64,
    ) -> Result<Result<Hold, Rejection>, StoreError> {
        let command = Command::Extend { hold_id: hold_id.clone(), ttl_seconds };
        self.send(command, key, Outcome::into_extended).await
    }

    /// Releases a hold. Only "released now", "already released", "not found" and the states in
    /// which nothing is reserved any more count as done; store errors are retried, then returned
    /// (the caller logs them with the hold id; the hold's TTL remains the safety net).
    pub async fn release(&self, key: &str, hold_id: &HoldId) -> Result<Released, StoreError> {
        match self.send(Command::Release { hold_id: hold_id.clone() }, key, Outcome::into_released).await? {
            Ok((_, true)) => Ok(Released::Now),
            Ok((_, false)) => Ok(Released::AlreadyDone("released")),
            Err(Rejection::HoldNotFound) => Ok(Released::AlreadyDone("not found")),
            Err(Rejection::HoldNotPending { state: HoldState::Captured }) => Ok(Released::AlreadyDone("captured")),
            Err(Rejection::HoldNotPending { state: HoldState::Expired }) => Ok(Released::AlreadyDone("expired")),
            Err(rejection) => Err(StoreError::corrupt(format!("release of {hold_id} refused: {rejection}"))),
        }
    }
}
