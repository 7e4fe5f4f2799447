//! From a provider's text deltas to `token` frames, coalesced.
//!
//! A model writes a few characters per chunk; one frame per chunk would flood the run's event
//! bound (a 20,000-token answer is 20,000 chunks) and its store writes. So deltas gather and go
//! out as one frame when [`Coalesce::bytes_max`] have gathered or [`Coalesce::interval`] has
//! passed since the last frame, whichever comes first. The first delta of a text goes out at
//! once: the time to the first token is what a reader notices. Nothing ledger-related sits on
//! this path: the hold was taken before the step started, and frames are only published here
//! (stored by the batching writer, never awaited).

use std::time::Duration;

use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::time::Instant;

use crate::provider::{ChatRequest, ChatResponse, Provider, ProviderError};

/// How deltas gather into frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coalesce {
    /// At most one frame per this interval (unless `bytes_max` gathered first).
    pub interval: Duration,
    /// A frame goes out as soon as this many bytes have gathered.
    pub bytes_max: usize,
}

impl Default for Coalesce {
    fn default() -> Coalesce {
        Coalesce { interval: Duration::from_millis(30), bytes_max: 256 }
    }
}

/// One streamed call: its reply, and the text that gathered after the last frame (the caller
/// sends it with the text's final token, or as one more piece when more text follows).
pub struct Streamed {
    pub reply: Result<ChatResponse, ProviderError>,
    pub rest: String,
}

/// Calls the provider streaming, and hands `emit` each coalesced piece of text as it arrives.
/// Returns when the call has ended; dropping the future drops the provider's request.
pub async fn call(
    provider: &dyn Provider,
    request: ChatRequest,
    coalesce: Coalesce,
    emit: &(dyn Fn(String) + Sync),
) -> Streamed {
    let (deltas, received) = unbounded_channel();
    let streaming = provider.stream(request, deltas);
    let forwarding = forward(received, coalesce, emit);
    let (reply, rest) = tokio::join!(streaming, forwarding);
    Streamed { reply, rest }
}

/// Forwards gathered deltas to `emit` until the sender is dropped; returns what gathered after
/// the last piece it emitted.
async fn forward(
    mut received: UnboundedReceiver<String>,
    coalesce: Coalesce,
    emit: &(dyn Fn(String) + Sync),
) -> String {
    let mut gathered = String::new();
    // When the last piece went out; `None` until the first, which goes out at once.
    let mut last_sent: Option<Instant> = None;
    loop {
        let flush_at = last_sent.map(|sent| sent + coalesce.interval);
        let waiting = !gathered.is_empty();
        tokio::select! {
            delta = received.recv() => {
                let Some(delta) = delta else { return gathered };
                gathered.push_str(&delta);
                let due = last_sent.is_none_or(|sent| sent.elapsed() >= coalesce.interval);
                if !gathered.is_empty() && (due || gathered.len() >= coalesce.bytes_max) {
                    emit(std::mem::take(&mut gathered));
                    last_sent = Some(Instant::now());
                }
            }
            () = sleep_until(flush_at), if waiting => {
                emit(std::mem::take(&mut gathered));
                last_sent = Some(Instant::now());
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A sender that is never read: for callers that need no deltas.
pub fn discard() -> UnboundedSender<String> {
    unbounded_channel().0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Feeds `deltas` (each after its pause) into the forwarder on tokio's paused clock; the
    /// pieces emitted, with the virtual time of each.
    async fn run(deltas: Vec<(u64, String)>, coalesce: Coalesce) -> (Vec<(u64, String)>, String) {
        let start = Instant::now();
        let (sender, received) = unbounded_channel();
        let emitted = Mutex::new(Vec::new());
        let emit = |piece: String| {
            let at = u64::try_from(start.elapsed().as_millis()).expect("small");
            emitted.lock().expect("lock").push((at, piece));
        };
        let feeding = async move {
            for (pause_ms, delta) in deltas {
                // Virtual time (a paused clock): the gaps between deltas are the input under test.
                tokio::time::sleep(Duration::from_millis(pause_ms)).await;
                sender.send(delta).expect("the forwarder listens");
            }
        };
        let ((), rest) = tokio::join!(feeding, forward(received, coalesce, &emit));
        (emitted.into_inner().expect("lock"), rest)
    }

    fn owned(deltas: &[(u64, &str)]) -> Vec<(u64, String)> {
        deltas.iter().map(|(pause_ms, text)| (*pause_ms, (*text).to_owned())).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_delta_goes_out_at_once_then_pieces_gather_for_the_interval() {
        let (emitted, rest) =
            run(owned(&[(5, "a"), (1, "b"), (1, "c"), (70, "d"), (0, "e"), (5, "f")]), Coalesce::default()).await;
        // "a" at once; "bc" gathered and flushed 30 ms after "a"; "d" due at once (more than 30 ms
        // since the last piece); "e" and "f" gathered and still waiting when the sender is gone.
        assert_eq!(emitted, vec![(5, "a".to_owned()), (35, "bc".to_owned()), (77, "d".to_owned())]);
        assert_eq!(rest, "ef");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_piece_goes_out_before_the_interval() {
        let coalesce = Coalesce { interval: Duration::from_secs(10), bytes_max: 4 };
        let (emitted, rest) = run(owned(&[(0, "x"), (1, "yy"), (1, "zz"), (1, "w")]), coalesce).await;
        assert_eq!(emitted, vec![(0, "x".to_owned()), (2, "yyzz".to_owned())]);
        assert_eq!(rest, "w");
    }

    proptest::proptest! {
        /// Whatever the timing, nothing is lost or reordered, and no two pieces go out closer
        /// than the interval unless the later one is full.
        #[test]
        fn pieces_concatenate_to_the_text_within_the_bounds(
            deltas in proptest::collection::vec((0u64..50, "[a-zé]{0,12}"), 0..60),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().expect("runtime");
            let coalesce = Coalesce { interval: Duration::from_millis(30), bytes_max: 16 };
            let (emitted, rest) = runtime.block_on(run(deltas.clone(), coalesce));
            let text: String = deltas.iter().map(|(_, text)| text.as_str()).collect();
            let joined: String = emitted.iter().map(|(_, piece)| piece.as_str()).chain([rest.as_str()]).collect();
            proptest::prop_assert_eq!(joined, text);
            for pair in emitted.windows(2) {
                let gap_ms = pair[1].0 - pair[0].0;
                proptest::prop_assert!(gap_ms >= 30 || pair[1].1.len() >= 16, "{:?}", pair);
            }
            proptest::prop_assert!(emitted.iter().all(|(_, piece)| !piece.is_empty()));
        }
    }
}
