//! Turning SIGINT/SIGTERM into the cancellation of one root token that every task watches.

use tokio_util::sync::CancellationToken;

/// Cancels `token` on the first SIGINT or SIGTERM (or when `token` is cancelled otherwise).
pub fn cancel_on_signal(token: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::select! {
            signal = wait_for_signal() => {
                tracing::info!(signal, "shutting down");
                token.cancel();
            }
            () = token.cancelled() => {}
        }
    })
}

#[cfg(unix)]
async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(terminate) => terminate,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops the server");
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "SIGINT"
}
