//! Classification of driver and pool errors: which ones retry the transaction, which ones the
//! caller sees, and as what.
//!
//! Every error that says the server went away or stopped taking writes also marks the pool's
//! older connections stale (see [`connection`]), so a failover costs each of them no request.
//!
//! Only errors that PostgreSQL guarantees left nothing behind and that a fresh attempt can get
//! past are retried: serialization failures (40001), deadlocks (40P01) and unique violations
//! (23505, from two transactions creating the same account at once). Everything else is mapped
//! to a [`StoreError`] once, here, and never retried: a lost connection in the middle of a
//! COMMIT leaves the outcome unknown, and retrying it could apply a command twice.

use deadpool_postgres::PoolError;
use store::StoreError;
use tokio_postgres::error::SqlState;

use crate::connection;

/// Why a transaction attempt must be rolled back and run again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RetryCause {
    Serialization,
    Deadlock,
    /// A unique violation, or a racing creation of the same account noticed by this adapter.
    Race,
}

/// The failure of one transaction attempt.
#[derive(Debug)]
pub(crate) enum Failure {
    /// `source`: the driver's error, when the driver reported one.
    Retry {
        cause: RetryCause,
        detail: String,
        source: Option<tokio_postgres::Error>,
    },
    Store(StoreError),
}

impl Failure {
    /// A retry this adapter decided on itself (no driver error behind it).
    pub(crate) fn retry(cause: RetryCause, detail: impl Into<String>) -> Failure {
        Failure::Retry { cause, detail: detail.into(), source: None }
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Failure {
        Failure::Store(error)
    }
}

impl From<tokio_postgres::Error> for Failure {
    fn from(error: tokio_postgres::Error) -> Failure {
        if connection::server_lost(&error) {
            connection::mark_stale();
        }
        let detail = describe(&error);
        let Some(code) = error.code() else {
            return Failure::Store(StoreError::unavailable(detail).with_source(error));
        };
        let retry = match *code {
            SqlState::T_R_SERIALIZATION_FAILURE => Some(RetryCause::Serialization),
            SqlState::T_R_DEADLOCK_DETECTED => Some(RetryCause::Deadlock),
            SqlState::UNIQUE_VIOLATION => Some(RetryCause::Race),
            _ => None,
        };
        if let Some(cause) = retry {
            return Failure::Retry { cause, detail, source: Some(error) };
        }
        // Class 22 (data exception) and 23 (integrity constraint violation): the data broke a
        // rule of the schema, which the ledger never does on purpose.
        let mapped = if code.code().starts_with("22") || code.code().starts_with("23") {
            StoreError::corrupt(detail)
        } else {
            StoreError::unavailable(detail)
        };
        Failure::Store(mapped.with_source(error))
    }
}

impl From<PoolError> for Failure {
    fn from(error: PoolError) -> Failure {
        Failure::Store(pool_error(error))
    }
}

/// A driver error's text with its SQLSTATE and the server's message, which `Display` alone omits.
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({}): {}", error, db.code().code(), db.message()),
        None => match std::error::Error::source(error) {
            Some(source) => format!("{error}: {source}"),
            None => error.to_string(),
        },
    }
}

/// A failure to get a pooled connection: the database is down, unreachable, or the pool closed.
pub(crate) fn pool_error(error: PoolError) -> StoreError {
    let detail = match &error {
        PoolError::Backend(inner) => {
            if connection::server_lost(inner) {
                connection::mark_stale();
            }
            format!("cannot connect to PostgreSQL: {}", describe(inner))
        }
        PoolError::Closed => "the connection pool is closed".to_owned(),
        other => format!("cannot get a PostgreSQL connection: {other}"),
    };
    StoreError::unavailable(detail).with_source(error)
}

/// A driver error outside a retried transaction (reads, verify): never retried.
pub(crate) fn store_error(error: tokio_postgres::Error) -> StoreError {
    match Failure::from(error) {
        Failure::Store(error) => error,
        Failure::Retry { detail, source: Some(source), .. } => StoreError::unavailable(detail).with_source(source),
        Failure::Retry { detail, source: None, .. } => StoreError::unavailable(detail),
    }
}
