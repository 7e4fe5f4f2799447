//! The HTTP edge: accepting connections and keeping each of them bounded in number and time.
//!
//! `axum::serve` has no header-read timeout, no connection cap and no TLS, so one laptop
//! holding a thousand half-sent requests could exhaust the server's file descriptors and stop
//! it answering anyone. [`serve`] does what `axum::serve` does (an HTTP/1.1 hyper connection
//! per accepted socket, graceful shutdown) and adds:
//!
//! - **a connection cap** ([`EdgeConfig::connections_max`], kept below the open-file limit by
//!   [`connections_max_within`]): at the cap the loop stops accepting, so new clients wait in
//!   the kernel's backlog until a slot frees. Chosen over accept-and-close: a legitimate client
//!   queued behind stalled ones is served as soon as the header timeout frees a slot, instead of
//!   being refused while the attack lasts.
//! - **a watchdog per connection** ([`watch`]): header-read, idle keep-alive and write-stall
//!   timeouts, each its own setting.
//! - **TLS** ([`tls`]): rustls over the same loop, its handshake bounded by the header timeout,
//!   its certificate reloadable while serving.
//!
//! Request-level limits (body deadline, in-flight cap, handler deadline) are router layers
//! (`crate::limits`), so they hold however the router is served.

pub mod tls;
pub mod watch;

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use self::tls::TlsFiles;
use self::watch::{judge, ConnectionLimits, RequestGuard, Verdict, Watch, Watched};

/// File descriptors kept free of client connections for everything else the process opens:
/// the store's files and pool, provider and renderer connections, sandbox pipes, logs.
pub const FDS_RESERVED: u64 = 256;

/// The fewest connections a server accepts however low its open-file limit.
pub const CONNECTIONS_MIN: usize = 16;

/// How long the accept loop pauses after an error that is not one connection's (such as
/// `EMFILE`), so it does not spin while the process is out of descriptors.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(250);

/// How the edge serves connections.
#[derive(Clone, Debug)]
pub struct EdgeConfig {
    pub limits: ConnectionLimits,
    /// Most connections open at once; past it, new ones wait in the kernel's backlog.
    pub connections_max: usize,
    /// TLS termination; `None` serves plain HTTP.
    pub tls: Option<Arc<TlsFiles>>,
}

impl Default for EdgeConfig {
    fn default() -> EdgeConfig {
        EdgeConfig {
            limits: ConnectionLimits {
                header_read_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(75),
                write_timeout: Duration::from_secs(60),
            },
            connections_max: 10_000,
            tls: None,
        }
    }
}

/// The process's open-file limits before and after [`raise_open_files_limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFiles {
    pub soft_before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, as Go's runtime and nginx do: the common
/// default soft limit of 1,024 is far below what a server with keep-alive clients needs, and
/// the hard limit is what the operator actually allowed.
pub fn raise_open_files_limit() -> io::Result<OpenFiles> {
    let (soft_before, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    let soft = rlimit::increase_nofile_limit(hard)?;
    Ok(OpenFiles { soft_before, soft, hard })
}

/// The configured connection cap, lowered so that connections can never take the descriptors
/// the rest of the process needs ([`FDS_RESERVED`]); the limit never lowers it below
/// [`CONNECTIONS_MIN`].
pub fn connections_max_within(configured: usize, open_files_soft: u64) -> usize {
    let room = usize::try_from(open_files_soft.saturating_sub(FDS_RESERVED)).unwrap_or(usize::MAX);
    configured.min(room.max(CONNECTIONS_MIN))
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets every connection
/// finish its requests in flight (idle ones close at once) and returns when all have closed.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: EdgeConfig,
    shutdown: CancellationToken,
) -> io::Result<()> {
    assert!(config.connections_max > 0, "a server that accepts no connection serves nothing");
    let acceptor = match &config.tls {
        Some(files) => Some(TlsAcceptor::from(files.server_config().map_err(io::Error::other)?)),
        None => None,
    };
    let slots = Arc::new(Semaphore::new(config.connections_max));
    let connections = TaskTracker::new();
    loop {
        // A slot first, then the accept: at the cap, clients wait in the backlog.
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot.expect("the slot semaphore is never closed"),
            () = shutdown.cancelled() => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(error) if is_one_connections_error(&error) => continue,
            Err(error) => {
                tracing::warn!(%error, "cannot accept a connection; pausing the accept loop");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        // Responses are written whole; Nagle's algorithm would only delay their last segment.
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let acceptor = acceptor.clone();
        let limits = config.limits;
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            serve_socket(stream, router, acceptor, limits, shutdown).await;
            drop(slot);
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Errors that end one connection attempt, not the listener (Linux reports a peer's early
/// reset at accept).
fn is_one_connections_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

async fn serve_socket(
    stream: TcpStream,
    router: Router,
    acceptor: Option<TlsAcceptor>,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) {
    let watch = Watch::new();
    let socket = Watched::new(stream, Arc::clone(&watch));
    match acceptor {
        None => serve_http(socket, watch, router, limits, shutdown).await,
        Some(acceptor) => {
            // A handshake is bounded like headers: a client that starts one and stalls is the
            // same attack one layer down.
            match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(socket)).await {
                Ok(Ok(tls)) => serve_http(tls, watch, router, limits, shutdown).await,
                Ok(Err(error)) => tracing::debug!(%error, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake timed out"),
            }
        }
    }
}

/// One HTTP/1.1 connection, watched until it ends, its watchdog closes it, or shutdown asks it
/// to finish.
async fn serve_http<S>(
    socket: S,
    watch: Arc<Watch>,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let watch = Arc::clone(&watch);
        hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let guard = watch.request_started();
            let router = router.clone();
            async move {
                let response = router.oneshot(request.map(Body::new)).await?;
                Ok::<_, Infallible>(response.map(|body| Body::new(Guarded { body, _guard: guard })))
            }
        })
    };
    // No hyper timer: the watchdog owns every connection-level deadline.
    let connection = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(socket), service);
    tokio::pin!(connection);
    let mut tick = tokio::time::interval(limits.tick());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut finishing = false;
    loop {
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(error) = ended {
                    tracing::debug!(%error, "connection ended with an error");
                }
                return;
            }
            () = shutdown.cancelled(), if !finishing => {
                connection.as_mut().graceful_shutdown();
                finishing = true;
            }
            _ = tick.tick() => {
                let verdict = judge(&watch.snapshot(), watch.now_ms(), &limits);
                if verdict != Verdict::Keep {
                    // Dropping the connection closes the socket.
                    tracing::debug!(reason = verdict.as_str(), "closing a connection");
                    return;
                }
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that ends its request on the connection's [`Watch`] when it is done.
    struct Guarded {
        #[pin]
        body: Body,
        _guard: RequestGuard,
    }
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_stays_below_the_open_file_limit() {
        assert_eq!(connections_max_within(10_000, 1_048_576), 10_000);
        assert_eq!(connections_max_within(10_000, 1_024), 768);
        assert_eq!(connections_max_within(10_000, 100), CONNECTIONS_MIN);
        assert_eq!(connections_max_within(5, 1_024), 5, "a lower setting stands");
    }

    #[test]
    fn raising_the_open_file_limit_reaches_the_hard_limit() {
        let files = raise_open_files_limit().expect("getrlimit and setrlimit work here");
        assert!(files.soft_before <= files.soft);
        assert_eq!(files.soft, files.hard, "Linux allows the soft limit up to the hard one");
        let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE).expect("getrlimit");
        assert_eq!((soft, hard), (files.soft, files.hard));
    }
}
