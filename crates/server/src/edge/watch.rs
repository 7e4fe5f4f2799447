//! What one connection is doing, seen from outside hyper, and when it must be closed.
//!
//! hyper has one timer for a connection that waits for request headers, and it starts it as
//! soon as the connection waits, so with it alone an idle keep-alive connection and a client
//! trickling its headers get the same limit. Behind a load balancer those must differ (the
//! balancer keeps idle connections open for a minute and expects the backend to keep them
//! longer, while half-sent headers are an attack), and nothing in hyper notices a client that
//! stops reading its response. So every connection carries a [`Watch`]: its socket wrapper
//! ([`Watched`]) marks bytes read and writes that block, its service marks requests that start
//! and responses that end, and a watchdog task asks [`judge`] — a pure function, tested alone —
//! whether the connection must go.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An instant that has not happened, in [`Watch`]'s milliseconds-since-birth slots.
const NEVER: u64 = u64::MAX;

/// The time limits of a connection, each measured from the event that starts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// From the first byte of a request to its last header byte.
    pub header_read_timeout: Duration,
    /// From the end of a response (or from the accept) to the first byte of the next request.
    pub idle_timeout: Duration,
    /// How long one write to the client may stay blocked (the client does not read).
    pub write_timeout: Duration,
}

impl ConnectionLimits {
    /// How often the watchdog looks: often enough to close within a quarter of the shortest
    /// limit, never more than 20 times a second.
    pub fn tick(&self) -> Duration {
        let shortest = self.header_read_timeout.min(self.idle_timeout).min(self.write_timeout);
        (shortest / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }
}

/// Why the watchdog closed a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    /// A request's headers did not arrive in time.
    HeaderTimeout,
    /// No request came in time after the last response.
    Idle,
    /// The client has not taken the response's bytes in time.
    WriteStalled,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Keep => "keep",
            Verdict::HeaderTimeout => "header_read_timeout",
            Verdict::Idle => "idle_timeout",
            Verdict::WriteStalled => "write_timeout",
        }
    }
}

/// A connection's state at one instant, all times in milliseconds since its accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Requests handed to the service whose responses have not ended.
    pub requests_in_flight: u32,
    /// When the first byte of a request not yet handed to the service arrived, if one did.
    pub head_started_ms: Option<u64>,
    /// When the connection last became idle: the accept, or the end of the last response.
    pub idle_since_ms: u64,
    /// Since when a write has been blocked, if one is.
    pub write_blocked_since_ms: Option<u64>,
}

/// Whether a connection in state `snapshot` at `now_ms` must be closed, and why. A request in
/// flight is the request layers' business (body and handler deadlines), except a blocked
/// write; a connection without one is either reading headers or idle.
pub fn judge(snapshot: &Snapshot, now_ms: u64, limits: &ConnectionLimits) -> Verdict {
    let past = |since_ms: u64, limit: Duration| now_ms.saturating_sub(since_ms) >= millis(limit);
    if let Some(since_ms) = snapshot.write_blocked_since_ms {
        if past(since_ms, limits.write_timeout) {
            return Verdict::WriteStalled;
        }
    }
    if snapshot.requests_in_flight > 0 {
        return Verdict::Keep;
    }
    match snapshot.head_started_ms {
        Some(since_ms) if past(since_ms, limits.header_read_timeout) => Verdict::HeaderTimeout,
        Some(_) => Verdict::Keep,
        None if past(snapshot.idle_since_ms, limits.idle_timeout) => Verdict::Idle,
        None => Verdict::Keep,
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The shared record of one connection: written by its socket and its service, read by its
/// watchdog. Relaxed atomics suffice: each slot is one independent fact, and a verdict that
/// reads a fact a moment late only closes a moment late.
#[derive(Debug)]
pub struct Watch {
    born: Instant,
    requests_in_flight: AtomicU32,
    head_started_ms: AtomicU64,
    idle_since_ms: AtomicU64,
    write_blocked_since_ms: AtomicU64,
}

impl Watch {
    pub fn new() -> Arc<Watch> {
        Arc::new(Watch {
            born: Instant::now(),
            requests_in_flight: AtomicU32::new(0),
            head_started_ms: AtomicU64::new(NEVER),
            idle_since_ms: AtomicU64::new(0),
            write_blocked_since_ms: AtomicU64::new(NEVER),
        })
    }

    pub fn now_ms(&self) -> u64 {
        millis(self.born.elapsed())
    }

    pub fn snapshot(&self) -> Snapshot {
        let slot = |value: u64| (value != NEVER).then_some(value);
        Snapshot {
            requests_in_flight: self.requests_in_flight.load(Ordering::Relaxed),
            head_started_ms: slot(self.head_started_ms.load(Ordering::Relaxed)),
            idle_since_ms: self.idle_since_ms.load(Ordering::Relaxed),
            write_blocked_since_ms: slot(self.write_blocked_since_ms.load(Ordering::Relaxed)),
        }
    }

    /// Bytes arrived: between requests, they are the start of the next request's headers.
    fn bytes_read(&self) {
        if self.requests_in_flight.load(Ordering::Relaxed) == 0 {
            let now_ms = self.now_ms();
            let _ = self.head_started_ms.compare_exchange(NEVER, now_ms, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn write_blocked(&self) {
        let now_ms = self.now_ms();
        let _ = self.write_blocked_since_ms.compare_exchange(NEVER, now_ms, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn write_progressed(&self) {
        self.write_blocked_since_ms.store(NEVER, Ordering::Relaxed);
    }

    /// hyper has read a request's headers and hands it to the service; the returned guard
    /// ends the request when the response's body is done (or dropped).
    pub fn request_started(self: &Arc<Watch>) -> RequestGuard {
        self.requests_in_flight.fetch_add(1, Ordering::Relaxed);
        self.head_started_ms.store(NEVER, Ordering::Relaxed);
        RequestGuard { watch: Arc::clone(self) }
    }
}

/// One request in flight on a watched connection; dropping it ends the request.
#[derive(Debug)]
pub struct RequestGuard {
    watch: Arc<Watch>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let before = self.watch.requests_in_flight.fetch_sub(1, Ordering::Relaxed);
        debug_assert!(before > 0, "a request ended that never started");
        if before == 1 {
            self.watch.idle_since_ms.store(self.watch.now_ms(), Ordering::Relaxed);
        }
    }
}

pin_project_lite::pin_project! {
    /// A socket (plain or TLS) that reports reads and blocked writes to its [`Watch`].
    pub struct Watched<S> {
        #[pin]
        inner: S,
        watch: Arc<Watch>,
    }
}

impl<S> Watched<S> {
    pub fn new(inner: S, watch: Arc<Watch>) -> Watched<S> {
        Watched { inner, watch }
    }
}

impl<S: AsyncRead> AsyncRead for Watched<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let polled = this.inner.poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.watch.bytes_read();
        }
        polled
    }
}

impl<S: AsyncWrite> AsyncWrite for Watched<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write(cx, data);
        match polled {
            Poll::Pending => this.watch.write_blocked(),
            Poll::Ready(_) => this.watch.write_progressed(),
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let polled = this.inner.poll_write_vectored(cx, bufs);
        match polled {
            Poll::Pending => this.watch.write_blocked(),
            Poll::Ready(_) => this.watch.write_progressed(),
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let polled = this.inner.poll_flush(cx);
        match polled {
            Poll::Pending => this.watch.write_blocked(),
            Poll::Ready(_) => this.watch.write_progressed(),
        }
        polled
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: ConnectionLimits = ConnectionLimits {
        header_read_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        write_timeout: Duration::from_secs(30),
    };

    fn idle(since_ms: u64) -> Snapshot {
        Snapshot { requests_in_flight: 0, head_started_ms: None, idle_since_ms: since_ms, write_blocked_since_ms: None }
    }

    #[test]
    fn each_limit_closes_its_own_case() {
        assert_eq!(judge(&idle(0), 59_999, &LIMITS), Verdict::Keep);
        assert_eq!(judge(&idle(0), 60_000, &LIMITS), Verdict::Idle);
        let heading = Snapshot { head_started_ms: Some(5_000), ..idle(0) };
        assert_eq!(judge(&heading, 14_999, &LIMITS), Verdict::Keep);
        assert_eq!(judge(&heading, 15_000, &LIMITS), Verdict::HeaderTimeout);
        let busy = Snapshot { requests_in_flight: 1, ..heading };
        assert_eq!(judge(&busy, 1_000_000, &LIMITS), Verdict::Keep, "a request in flight is the layers' business");
        let stalled = Snapshot { write_blocked_since_ms: Some(1_000), ..busy };
        assert_eq!(judge(&stalled, 30_999, &LIMITS), Verdict::Keep);
        assert_eq!(judge(&stalled, 31_000, &LIMITS), Verdict::WriteStalled);
    }

    proptest! {
        /// Against the model "close exactly when one applicable limit has run out": a verdict
        /// never closes early, and never keeps a connection past every applicable limit.
        #[test]
        fn the_verdict_matches_the_model(
            in_flight in 0u32..3,
            head in proptest::option::of(0u64..100_000),
            idle_since in 0u64..100_000,
            blocked in proptest::option::of(0u64..100_000),
            now in 0u64..200_000,
        ) {
            let snapshot = Snapshot {
                requests_in_flight: in_flight,
                head_started_ms: head,
                idle_since_ms: idle_since,
                write_blocked_since_ms: blocked,
            };
            let expired = |since: Option<u64>, limit: Duration| {
                since.is_some_and(|since| now.saturating_sub(since) >= millis(limit))
            };
            let expected = if expired(blocked, LIMITS.write_timeout) {
                Verdict::WriteStalled
            } else if in_flight > 0 {
                Verdict::Keep
            } else if head.is_some() {
                if expired(head, LIMITS.header_read_timeout) { Verdict::HeaderTimeout } else { Verdict::Keep }
            } else if expired(Some(idle_since), LIMITS.idle_timeout) {
                Verdict::Idle
            } else {
                Verdict::Keep
            };
            prop_assert_eq!(judge(&snapshot, now, &LIMITS), expected);
        }
    }

    #[test]
    fn a_request_resets_the_header_clock_and_its_end_starts_the_idle_clock() {
        let watch = Watch::new();
        watch.bytes_read();
        assert!(watch.snapshot().head_started_ms.is_some());
        let guard = watch.request_started();
        assert_eq!(watch.snapshot().head_started_ms, None);
        watch.bytes_read();
        assert_eq!(watch.snapshot().head_started_ms, None, "bytes during a request are its body");
        assert_eq!(watch.snapshot().requests_in_flight, 1);
        drop(guard);
        assert_eq!(watch.snapshot().requests_in_flight, 0);
        watch.write_blocked();
        assert!(watch.snapshot().write_blocked_since_ms.is_some());
        watch.write_progressed();
        assert_eq!(watch.snapshot().write_blocked_since_ms, None);
    }

    #[test]
    fn the_tick_is_a_quarter_of_the_shortest_limit_within_bounds() {
        assert_eq!(LIMITS.tick(), Duration::from_secs(1));
        let short = ConnectionLimits { header_read_timeout: Duration::from_millis(400), ..LIMITS };
        assert_eq!(short.tick(), Duration::from_millis(100));
        let tiny = ConnectionLimits { header_read_timeout: Duration::from_millis(1), ..LIMITS };
        assert_eq!(tiny.tick(), Duration::from_millis(50));
    }
}
