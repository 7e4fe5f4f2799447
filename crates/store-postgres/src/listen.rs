//! `LISTEN` for the run signals of every process on the database: one dedicated connection per
//! process, opened on the first subscription, reconnecting with backoff.
//!
//! Why not short polling alone: a follower on another instance would then see a run's frames up
//! to a poll interval late, and a cancel would wait for the owner's next poll. `NOTIFY` is sent
//! inside the transaction that writes (delivered only if it commits, at commit), so a signal
//! never announces data that is not there yet. Signals are hints: a lost connection loses the
//! ones sent meanwhile, so readers poll as well, and [`RunSignal::Resync`] is sent every time
//! the listener (re)starts listening.
//!
//! The connection is built from the same parsed `tokio_postgres::Config` as the pool (so a
//! multi-host URL reaches whichever node takes writes; a standby refuses `LISTEN` and the
//! listener tries again), with TCP keepalives so a silently dead server is noticed.

use std::sync::Mutex;
use std::time::Duration;

use futures::future::poll_fn;
use rand::Rng;
use store::{RunId, RunSignal};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, NoTls};

/// The channel of [`RunSignal::Events`]: the payload is the run id.
pub(crate) const EVENTS_CHANNEL: &str = "creditgraph_run_events";
/// The channel of [`RunSignal::Cancel`]: the payload is the run id.
pub(crate) const CANCEL_CHANNEL: &str = "creditgraph_run_cancel";

/// First and longest wait between two connection attempts (doubling, jittered).
const RECONNECT_BACKOFF_MIN_MS: u64 = 100;
const RECONNECT_BACKOFF_MAX_MS: u64 = 5_000;
/// Idle time before the first TCP keepalive probe on the listening connection.
const KEEPALIVE_IDLE_SECONDS: u64 = 10;

pub(crate) struct Listener {
    config: tokio_postgres::Config,
    /// How long a first subscriber waits for the listener to listen.
    start_wait: Duration,
    signals: broadcast::Sender<RunSignal>,
    listening: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Listener {
    pub(crate) fn new(mut config: tokio_postgres::Config, start_wait: Duration) -> Listener {
        config.keepalives(true).keepalives_idle(Duration::from_secs(KEEPALIVE_IDLE_SECONDS));
        let (signals, _) = broadcast::channel(store::runs::RUN_SIGNALS_CAPACITY);
        let (listening, _) = watch::channel(false);
        Listener { config, start_wait, signals, listening, task: Mutex::new(None) }
    }

    /// A receiver of every signal from now on; starts the listener on first use and waits (at
    /// most `start_wait`) until it listens.
    pub(crate) async fn subscribe(&self) -> broadcast::Receiver<RunSignal> {
        let receiver = self.signals.subscribe();
        let mut listening = self.listening.subscribe();
        {
            let mut task = self.task.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if task.is_none() {
                let (config, signals, listening) = (self.config.clone(), self.signals.clone(), self.listening.clone());
                *task = Some(tokio::spawn(listen_forever(config, signals, listening)));
            }
        }
        if tokio::time::timeout(self.start_wait, listening.wait_for(|listening| *listening)).await.is_err() {
            tracing::warn!("run signals: not listening yet; followers and owners poll meanwhile");
        }
        receiver
    }

    /// Stops listening (the store is closing).
    pub(crate) fn stop(&self) {
        if let Some(task) = self.task.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            task.abort();
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn listen_forever(
    config: tokio_postgres::Config,
    signals: broadcast::Sender<RunSignal>,
    listening: watch::Sender<bool>,
) {
    let mut backoff_ms = RECONNECT_BACKOFF_MIN_MS;
    loop {
        match listen_once(&config, &signals, &listening).await {
            // It listened, then lost the connection: try again soon.
            Ok(()) => backoff_ms = RECONNECT_BACKOFF_MIN_MS,
            Err(error) => tracing::warn!(error = %crate::error::describe(&error), "run signals: cannot listen"),
        }
        listening.send_replace(false);
        let jittered = rand::rng().random_range(backoff_ms / 2..=backoff_ms);
        tokio::time::sleep(Duration::from_millis(jittered)).await;
        backoff_ms = (backoff_ms * 2).min(RECONNECT_BACKOFF_MAX_MS);
    }
}

/// Connects, listens, and forwards notifications until the connection ends. `Ok` when it ended
/// after listening.
async fn listen_once(
    config: &tokio_postgres::Config,
    signals: &broadcast::Sender<RunSignal>,
    listening: &watch::Sender<bool>,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let forwarding = signals.clone();
    // The connection is driven here; notifications arrive as its asynchronous messages.
    let driver = tokio::spawn(async move {
        loop {
            match poll_fn(|context| connection.poll_message(context)).await {
                Some(Ok(AsyncMessage::Notification(notification))) => {
                    if let Some(signal) = signal(notification.channel(), notification.payload()) {
                        // No receiver is not an error: nobody follows or owns a run right now.
                        let _ = forwarding.send(signal);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error),
                None => return Ok(()),
            }
        }
    });
    let listened = client.batch_execute(&format!("LISTEN {EVENTS_CHANNEL}; LISTEN {CANCEL_CHANNEL}")).await;
    if let Err(error) = listened {
        driver.abort();
        return Err(error);
    }
    listening.send_replace(true);
    // Whatever was sent while nobody listened is lost: readers look again.
    let _ = signals.send(RunSignal::Resync);
    tracing::debug!("run signals: listening");
    let ended = driver.await;
    drop(client);
    match ended {
        Ok(Ok(())) | Err(_) => Ok(()),
        Ok(Err(error)) => {
            tracing::warn!(error = %crate::error::describe(&error), "run signals: the listening connection ended");
            Ok(())
        }
    }
}

/// The signal a notification carries; `None` for a channel or payload this build does not know.
fn signal(channel: &str, payload: &str) -> Option<RunSignal> {
    let run_id = RunId::parse(payload).ok()?;
    match channel {
        EVENTS_CHANNEL => Some(RunSignal::Events(run_id)),
        CANCEL_CHANNEL => Some(RunSignal::Cancel(run_id)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_become_signals_and_strangers_are_ignored() {
        let run_id = RunId::parse("run-1").expect("valid");
        assert_eq!(signal(EVENTS_CHANNEL, "run-1"), Some(RunSignal::Events(run_id.clone())));
        assert_eq!(signal(CANCEL_CHANNEL, "run-1"), Some(RunSignal::Cancel(run_id)));
        assert_eq!(signal("other", "run-1"), None);
        assert_eq!(signal(EVENTS_CHANNEL, "not a run id"), None);
    }
}
