//! Read connections: a small bounded pool used from `spawn_blocking`.
//!
//! In WAL mode a reader sees the last committed snapshot and neither blocks nor waits for the
//! writer, so reads never queue behind a group commit. A semaphore bounds how many reads run at
//! once to the number of connections; a connection lost to a panic is reopened on demand.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::Connection;
use store::StoreError;
use tokio::sync::Semaphore;

use crate::schema;

pub(crate) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
    closed: AtomicBool,
}

fn closed_error() -> StoreError {
    StoreError::unavailable("the SQLite store is closed")
}

impl Readers {
    /// Opens `count` (at least one) connections now, so a bad path fails at start-up.
    pub(crate) fn open(path: PathBuf, count: usize) -> Result<Readers, StoreError> {
        let count = count.max(1);
        let idle = (0..count).map(|_| schema::open_reader(&path)).collect::<Result<Vec<_>, _>>()?;
        Ok(Readers { path, idle: Mutex::new(idle), permits: Semaphore::new(count), closed: AtomicBool::new(false) })
    }

    /// Runs `read` on a pooled connection off the async threads.
    pub(crate) async fn run<T, F>(self: &Arc<Self>, read: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        if self.closed.load(Ordering::Acquire) {
            return Err(closed_error());
        }
        let _permit = self.permits.acquire().await.map_err(|_| closed_error())?;
        let readers = Arc::clone(self);
        let task = tokio::task::spawn_blocking(move || {
            let pooled = readers.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
            let conn = match pooled {
                Some(conn) => conn,
                None => schema::open_reader(&readers.path)
                    .map_err(|error| StoreError::unavailable(error.to_string()).with_source(error))?,
            };
            let result = read(&conn);
            if !readers.closed.load(Ordering::Acquire) {
                readers.idle.lock().unwrap_or_else(PoisonError::into_inner).push(conn);
            }
            result
        });
        task.await
            .map_err(|error| StoreError::unavailable(format!("SQLite read task failed: {error}")).with_source(error))?
    }

    /// Refuses new reads and closes idle connections; reads in flight finish normally.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.permits.close();
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).clear();
    }
}
