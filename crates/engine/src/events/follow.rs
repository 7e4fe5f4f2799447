//! Following a run from any instance: the run's own channel when it runs (or ran) here, else its
//! frames in the store, replayed after a `Last-Event-ID` and followed live while the run goes on
//! elsewhere.
//!
//! A store follower reads the frames after its cursor, and when there are none waits for a
//! [`RunSignal::Events`] of its run (PostgreSQL: `NOTIFY` sent by the writer's transaction) or a
//! short poll, whichever comes first: signals are hints and can be lost. It ends after the run's
//! `done` or `error`, or once the run's record says it ended and one more read found nothing
//! (a run's final frames are written in the transaction that ends it, so that read sees them;
//! a run interrupted by its instance's death gets its `error` frame from recovery).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use store::runs::RUN_EVENTS_PAGE_MAX;
use store::{RunId, RunRecord, RunSignal, RunStore, StoreError, ThreadId};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;

use super::{stored, Frame};
use crate::run::Engine;

/// Why a run's events cannot be followed.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The run ended and its frames are gone (past the retention, or never stored).
    #[error("the run's events are no longer kept")]
    Expired,
    /// The cursor is past the run's last frame.
    #[error("Last-Event-ID {after} is beyond the run's last event")]
    BeyondEnd { after: u64 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Engine {
    /// The frames of `run` after `after` (all when `None`), ending with its `done` or `error`:
    /// from this instance's channel while the run goes on here, else from the store (an ended
    /// run always, so every instance answers the same, retention included).
    pub async fn follow(
        self: &Arc<Self>,
        run: &RunRecord,
        after: Option<u64>,
    ) -> Result<BoxStream<'static, Frame>, FollowError> {
        if !run.state.is_terminal() {
            if let Some(channel) = self.channel(&run.run_id) {
                return Ok(channel.follow(after).boxed());
            }
        }
        // Subscribed before the first read, so a signal sent after it is never missed.
        let signals = self.runs.run_signals().await;
        if run.state.is_terminal() {
            match self.runs.last_run_event_seq(&run.run_id).await? {
                None => return Err(FollowError::Expired),
                Some(last) if after.is_some_and(|after| after > last) => {
                    return Err(FollowError::BeyondEnd { after: after.unwrap_or_default() })
                }
                Some(_) => {}
            }
        }
        let follower = Follower {
            runs: Arc::clone(&self.runs),
            run_id: run.run_id.clone(),
            thread_id: run.thread_id.clone(),
            cursor: after,
            pending: VecDeque::new(),
            ended: false,
            run_ended: run.state.is_terminal(),
            signals,
            poll: Duration::from_millis(self.config.run_poll_ms.max(1)),
        };
        Ok(futures::stream::unfold(follower, |mut follower| async move {
            let frame = follower.next().await?;
            Some((frame, follower))
        })
        .boxed())
    }
}

struct Follower {
    runs: Arc<dyn RunStore>,
    run_id: RunId,
    thread_id: ThreadId,
    cursor: Option<u64>,
    pending: VecDeque<Frame>,
    /// The final frame was handed out.
    ended: bool,
    /// The run's record said it ended before the last read.
    run_ended: bool,
    signals: broadcast::Receiver<RunSignal>,
    poll: Duration,
}

impl Follower {
    async fn next(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.pending.pop_front() {
                self.cursor = Some(frame.seq);
                self.ended = frame.kind.is_terminal();
                return Some(frame);
            }
            if self.ended {
                return None;
            }
            let run_ended = self.run_ended;
            match self.runs.run_events(&self.run_id, self.cursor, RUN_EVENTS_PAGE_MAX).await {
                Ok(page) if !page.is_empty() => {
                    for stored in &page {
                        match stored::decode(&self.thread_id, stored) {
                            Ok(frame) => self.pending.push_back(frame),
                            Err(error) => {
                                tracing::error!(%error, "skipping an unreadable stored frame");
                                self.cursor = Some(stored.seq);
                            }
                        }
                    }
                    continue;
                }
                Ok(_) if run_ended => return None,
                Ok(_) => {}
                Err(error) => tracing::warn!(run_id = %self.run_id, %error, "run events not read; retrying"),
            }
            match self.runs.run(&self.run_id).await {
                Ok(Some(run)) if run.state.is_terminal() => {
                    // One more read: the run's last frames were written with its end.
                    self.run_ended = true;
                    continue;
                }
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(error) => tracing::warn!(run_id = %self.run_id, %error, "run not read; retrying"),
            }
            self.wait().await;
        }
    }

    /// Until a signal about this run (or a hint that signals were missed), at most one poll.
    async fn wait(&mut self) {
        let deadline = tokio::time::sleep(self.poll);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => return,
                signal = self.signals.recv() => match signal {
                    Ok(RunSignal::Events(run_id)) if run_id == self.run_id => return,
                    Ok(RunSignal::Resync) | Err(RecvError::Lagged(_)) => return,
                    Ok(_) => {}
                    // No more signals: the poll alone, then.
                    Err(RecvError::Closed) => return deadline.await,
                },
            }
        }
    }
}
