//! Copies committed WAL pages back into the database file on a thread of its own.
//!
//! A checkpoint writes every page the WAL holds to its place in the database file, then fsyncs
//! the file: on a large ledger that is megabytes of random writes. Run by the writer thread (as
//! SQLite's automatic checkpoint does), it stalls every caller waiting on the writer for as long
//! — hundreds of milliseconds with a million accounts. Here a `PASSIVE` checkpoint runs every
//! [`CHECKPOINT_INTERVAL_MILLISECONDS`] on its own connection, concurrently with the writer's
//! commits (WAL mode allows that). The writer keeps its own automatic checkpoint as the backstop:
//! when it fires, the pages left to copy are the few committed since this thread's last pass, and
//! the next write transaction can restart the WAL from its beginning, which bounds its size.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use crate::writer::Counters;
use crate::{schema, Synchronous};

/// Pause between two passive checkpoints.
pub(crate) const CHECKPOINT_INTERVAL_MILLISECONDS: u64 = 100;

/// Runs until `stop` is dropped or sends; then returns, closing its connection.
/// Each pass is timed in `counters` (with the frames it copied), so slow commits can be matched
/// against the passes they overlapped.
pub(crate) fn run(path: PathBuf, synchronous: Synchronous, stop: Receiver<()>, counters: &Counters) {
    let conn = match schema::open_checkpointer(&path, synchronous) {
        Ok(conn) => conn,
        Err(error) => {
            // The writer's automatic checkpoint still runs: slower, never wrong.
            tracing::warn!(%error, "no background checkpointer; the writer checkpoints alone");
            return;
        }
    };
    // SQLite reports the frames checkpointed in the current WAL so far (it restarts from 0 when
    // the WAL does): this pass copied the growth since the last pass.
    let mut checkpointed_before: u64 = 0;
    // A message or a dropped sender stops it; a timeout is the next pass.
    while let Err(RecvTimeoutError::Timeout) =
        stop.recv_timeout(Duration::from_millis(CHECKPOINT_INTERVAL_MILLISECONDS))
    {
        // (busy, WAL frames, frames checkpointed); busy only means another checkpoint ran.
        let checkpoint = counters.time_checkpoint(|| {
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get::<_, i64>(2)?))
            })
        });
        match checkpoint {
            Ok((_, _, checkpointed)) => {
                let checkpointed = u64::try_from(checkpointed).unwrap_or(0);
                let copied = checkpointed.checked_sub(checkpointed_before).unwrap_or(checkpointed);
                counters.checkpoint_frames.fetch_add(copied, Ordering::Relaxed);
                checkpointed_before = checkpointed;
            }
            Err(error) => tracing::warn!(%error, "background checkpoint failed; retrying"),
        }
    }
    if let Err((_, error)) = conn.close() {
        tracing::warn!(%error, "closing the checkpoint connection failed");
    }
}
