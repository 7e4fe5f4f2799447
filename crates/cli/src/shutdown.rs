//! Turning SIGINT/SIGTERM into the cancellation of one root token that every task watches.

use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGINT or SIGTERM (or when `token` is cancelled otherwise).
///
/// The handlers are installed before this returns (not later, inside the task), so a signal that
/// arrives at any moment after the call — during start-up included — is never the default
/// "terminate at once".
pub fn cancel_on_signal(token: CancellationToken) -> tokio::task::JoinHandle<()> {
    let signals = Signals::install();
    tokio::spawn(async move {
        tokio::select! {
            signal = signals.wait() => {
                tracing::info!(signal, "shutting down");
                token.cancel();
            }
            () = token.cancelled() => {}
        }
    })
}

/// Signal listeners, registered at construction.
struct Signals {
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    #[cfg(unix)]
    fn install() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        let terminate = signal(SignalKind::terminate())
            .inspect_err(|error| tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops the server"))
            .ok();
        let interrupt = signal(SignalKind::interrupt())
            .inspect_err(|error| tracing::warn!(%error, "cannot listen for SIGINT"))
            .ok();
        Signals { terminate, interrupt }
    }

    #[cfg(unix)]
    async fn wait(mut self) -> &'static str {
        async fn next(signal: Option<&mut tokio::signal::unix::Signal>) {
            match signal {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            () = next(self.interrupt.as_mut()) => "SIGINT",
            () = next(self.terminate.as_mut()) => "SIGTERM",
        }
    }

    #[cfg(not(unix))]
    fn install() -> Signals {
        Signals {}
    }

    #[cfg(not(unix))]
    async fn wait(self) -> &'static str {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}
