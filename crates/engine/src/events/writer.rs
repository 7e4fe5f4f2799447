//! The engine's one event writer: it carries the frames of every live run on this instance into
//! the store, many frames per store write, so no token frame waits for (or pays for) a durable
//! commit of its own.
//!
//! Channels hand their frames over ([`EventWriter::push`]) and their evictions
//! ([`EventWriter::evict`]: a frame not written yet is simply dropped, a written one is deleted in
//! a later write). The writer task waits for the first pending frame, lets more gather for
//! `flush_ms`, and writes them all in one [`RunStore::write_run_events`]. A run's final frame
//! goes another way ([`EventWriter::finish`]): it is written, with every frame still pending and
//! the run's terminal record, in one write the run waits for, so a reader that sees the run
//! ended finds its `done` or `error` stored. A run that settles its hold with its end
//! ([`EventWriter::finish_settled`]) has that write carry the settlement too
//! ([`RunStore::write_run_end`]); when the ledger refuses it, nothing of that write is stored, the
//! other runs' frames go back to pending and the run hears why.
//!
//! A failed write is retried with a growing pause; its frames stay pending meanwhile (bounded:
//! each run's channel keeps at most its `frames_max`, and evicting a pending frame removes it).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::FutureExt;
use store::{RunEndWritten, RunEventsWrite, RunId, RunRecord, RunSettle, RunStore, StoreError, StoredFrame};
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

/// Frames one write carries at most; more pending start the write at once.
pub const WRITE_FRAMES_MAX: usize = 2048;
/// The first and the longest pause after a failed write.
const RETRY_PAUSE_MIN_MS: u64 = 50;
const RETRY_PAUSE_MAX_MS: u64 = 2_000;

/// A run's last write: its final frames and terminal record, its settlement if it carries one,
/// and whoever waits for it.
struct Final {
    frames: Vec<StoredFrame>,
    run: RunRecord,
    settle: Option<RunSettle>,
    done: oneshot::Sender<Result<Ended, StoreError>>,
}

/// What a final write answers: whether the run existed, or, with a settlement, what the store did.
enum Ended {
    Plain(bool),
    Settled(RunEndWritten),
}

#[derive(Default)]
struct Pending {
    frames: VecDeque<StoredFrame>,
    evicted: Vec<(RunId, u64)>,
    finals: VecDeque<Final>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.frames.is_empty() && self.evicted.is_empty() && self.finals.is_empty()
    }
}

/// Frames on their way to the store. One per engine, shared by every channel of its runs.
pub struct EventWriter {
    runs: Arc<dyn RunStore>,
    flush: Duration,
    pending: Mutex<Pending>,
    wake: Notify,
    /// A run waits for its final write: the gathering pause ends at once.
    urgent: Notify,
}

impl EventWriter {
    /// A writer and its task (spawned on the current runtime), which runs until `stop` is
    /// cancelled and then writes what is still pending (one more attempt) before it ends.
    pub fn spawn(runs: Arc<dyn RunStore>, flush_ms: u64, stop: CancellationToken) -> Arc<EventWriter> {
        let writer = Arc::new(EventWriter {
            runs,
            flush: Duration::from_millis(flush_ms),
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            urgent: Notify::new(),
        });
        tokio::spawn(Arc::clone(&writer).run(stop));
        writer
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().expect("event writer lock poisoned")
    }

    /// Queues a frame for the next write.
    pub fn push(&self, frame: StoredFrame) {
        self.pending().frames.push_back(frame);
        self.wake.notify_one();
    }

    /// A frame its channel evicted: dropped if not written yet, else deleted in a later write.
    pub fn evict(&self, run_id: &RunId, seq: u64) {
        let mut pending = self.pending();
        match pending.frames.iter().position(|frame| frame.seq == seq && &frame.run_id == run_id) {
            Some(index) => {
                pending.frames.remove(index);
            }
            None => pending.evicted.push((run_id.clone(), seq)),
        }
    }

    /// Writes `frames` and the run's terminal record `run` together with every frame pending
    /// before them, and returns once that write committed (true) or found no such run (false).
    pub async fn finish(&self, run: RunRecord, frames: Vec<StoredFrame>) -> Result<bool, StoreError> {
        match self.send_final(run, frames, None).await? {
            Ended::Plain(written) => Ok(written),
            Ended::Settled(_) => unreachable!("a final without a settlement is answered plainly"),
        }
    }

    /// [`EventWriter::finish`] with the run's settlement in the same write
    /// ([`RunStore::write_run_end`]), answering what the store did.
    pub async fn finish_settled(
        &self,
        run: RunRecord,
        frames: Vec<StoredFrame>,
        settle: RunSettle,
    ) -> Result<RunEndWritten, StoreError> {
        match self.send_final(run, frames, Some(settle)).await? {
            Ended::Settled(written) => Ok(written),
            Ended::Plain(_) => unreachable!("a final with a settlement is answered with what it did"),
        }
    }

    async fn send_final(
        &self,
        run: RunRecord,
        frames: Vec<StoredFrame>,
        settle: Option<RunSettle>,
    ) -> Result<Ended, StoreError> {
        let (done, answer) = oneshot::channel();
        self.pending().finals.push_back(Final { frames, run, settle, done });
        self.wake.notify_one();
        self.urgent.notify_one();
        answer.await.unwrap_or_else(|_| Err(StoreError::unavailable("the event writer stopped")))
    }

    async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut pause_ms = RETRY_PAUSE_MIN_MS;
        loop {
            if self.pending().is_empty() {
                tokio::select! {
                    () = self.wake.notified() => {}
                    () = stop.cancelled() => {}
                }
            }
            let stopping = stop.is_cancelled();
            // A wake-up left by a final that was written already must not cut this pause short
            // (the finals pending now are looked at just below).
            let _ = self.urgent.notified().now_or_never();
            // Let frames gather, unless a run waits for its final write or a write is full.
            let urgent = {
                let pending = self.pending();
                !pending.finals.is_empty() || pending.frames.len() >= WRITE_FRAMES_MAX
            };
            if !urgent && !stopping {
                tokio::select! {
                    () = tokio::time::sleep(self.flush) => {}
                    () = self.urgent.notified() => {}
                    () = stop.cancelled() => {}
                }
            }
            match self.write_once().await {
                Ok(()) => pause_ms = RETRY_PAUSE_MIN_MS,
                Err(error) => {
                    tracing::warn!(%error, pause_ms, "run events not written; retrying");
                    if stopping {
                        return;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(pause_ms)) => {}
                        () = stop.cancelled() => {}
                    }
                    pause_ms = (pause_ms * 2).min(RETRY_PAUSE_MAX_MS);
                }
            }
            if stopping && self.pending().is_empty() {
                return;
            }
        }
    }

    /// One store write: the pending frames (at most [`WRITE_FRAMES_MAX`]) and evictions, with
    /// the first waiting final, if any. On failure everything goes back, in order.
    async fn write_once(&self) -> Result<(), StoreError> {
        let (write, waiting) = {
            let mut pending = self.pending();
            let take = pending.frames.len().min(WRITE_FRAMES_MAX);
            let mut frames: Vec<StoredFrame> = pending.frames.drain(..take).collect();
            let evicted = std::mem::take(&mut pending.evicted);
            let waiting = if pending.frames.is_empty() { pending.finals.pop_front() } else { None };
            let run = waiting.as_ref().map(|last| {
                frames.extend(last.frames.iter().cloned());
                last.run.clone()
            });
            (RunEventsWrite { frames, evicted, run }, waiting)
        };
        if write.frames.is_empty() && write.evicted.is_empty() && write.run.is_none() {
            return Ok(());
        }
        let settle = waiting.as_ref().and_then(|last| last.settle.as_ref());
        let written = match settle {
            None => self.runs.write_run_events(&write).await.map(Ended::Plain),
            Some(settle) => self.runs.write_run_end(&write, settle).await.map(Ended::Settled),
        };
        // A refused settlement stored nothing: the frames of the other runs go back, and the run
        // is told (it settles another way and writes its end again).
        let refused = matches!(written, Ok(Ended::Settled(RunEndWritten::NoSuchRun | RunEndWritten::Refused(_))));
        match written {
            Ok(ended) => {
                if refused {
                    self.put_back(write, None, waiting.as_ref().map_or(0, |last| last.frames.len()));
                }
                if let Some(last) = waiting {
                    let _ = last.done.send(Ok(ended));
                }
                Ok(())
            }
            Err(error) => {
                let own_final = waiting.as_ref().map_or(0, |last| last.frames.len());
                self.put_back(write, waiting, own_final);
                Err(error)
            }
        }
    }

    /// Puts an unwritten write back in front of what is pending, in order: its frames but the
    /// last `final_frames` (the final's own, which travel with it), its evictions, its final.
    fn put_back(&self, write: RunEventsWrite, waiting: Option<Final>, final_frames: usize) {
        let mut pending = self.pending();
        let own = write.frames.len() - final_frames;
        for frame in write.frames.into_iter().take(own).rev() {
            pending.frames.push_front(frame);
        }
        pending.evicted.extend(write.evicted);
        if let Some(last) = waiting {
            pending.finals.push_front(last);
        }
    }
}
