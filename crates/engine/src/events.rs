//! The per-run event buffer behind the SSE stream.
//!
//! A run emits frames into one bounded buffer; any number of readers follow it with their own
//! cursor, so a slow or absent client never slows the run down, and a reconnecting client
//! replays from `Last-Event-ID`. When the buffer is full the oldest *ordinary* frame is evicted:
//! `error`, `credit_settled` and `done` are never dropped, because a client must always learn how
//! its credits ended.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use futures::Stream;
use ledger::Timestamp;
use serde_json::{json, Value};
use store::{Clock, RunId, ThreadId};
use tokio::sync::watch;

/// RFC 3339 UTC, with fractional seconds only when there are some.
fn format_time(at: Timestamp) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(at.micros()) * 1000)
        .ok()
        .and_then(|moment| moment.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

/// Default number of frames one run keeps.
pub const FRAMES_MAX_DEFAULT: usize = 256;

/// Every event type the stream can carry. Closed set: a type not listed here cannot be emitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    PageStart,
    SolveProgress,
    Token,
    ToolStart,
    ToolResult,
    NodeResult,
    CreditReserved,
    CreditSettled,
    JobProgress,
    JobFinished,
    Error,
    Done,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::PageStart => "page_start",
            EventKind::SolveProgress => "solve_progress",
            EventKind::Token => "token",
            EventKind::ToolStart => "tool_start",
            EventKind::ToolResult => "tool_result",
            EventKind::NodeResult => "node_result",
            EventKind::CreditReserved => "credit_reserved",
            EventKind::CreditSettled => "credit_settled",
            EventKind::JobProgress => "job_progress",
            EventKind::JobFinished => "job_finished",
            EventKind::Error => "error",
            EventKind::Done => "done",
        }
    }

    /// Frames a client must never miss.
    pub fn is_critical(self) -> bool {
        matches!(self, EventKind::Error | EventKind::CreditSettled | EventKind::Done)
    }
}

/// The `code` of an `error` event. Closed set, so every code a run can emit is one the event
/// schema accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InternalError,
    ToolError,
    ModelError,
    CreditExhausted,
    Timeout,
    InvalidInput,
    Canceled,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 7] = [
        ErrorCode::InternalError,
        ErrorCode::ToolError,
        ErrorCode::ModelError,
        ErrorCode::CreditExhausted,
        ErrorCode::Timeout,
        ErrorCode::InvalidInput,
        ErrorCode::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InternalError => "internal_error",
            ErrorCode::ToolError => "tool_error",
            ErrorCode::ModelError => "model_error",
            ErrorCode::CreditExhausted => "credit_exhausted",
            ErrorCode::Timeout => "timeout",
            ErrorCode::InvalidInput => "invalid_input",
            ErrorCode::Canceled => "canceled",
        }
    }
}

/// One SSE frame, ready to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub seq: u64,
    pub kind: EventKind,
    /// `<thread_id>:<seq>`, the SSE `id`.
    pub id: String,
    /// The JSON envelope `{type, thread_id, run_id, seq, ts, step_idx, node, payload}`.
    pub data: String,
}

struct Buffer {
    frames: VecDeque<Frame>,
    next_seq: u64,
    closed: bool,
    dropped: u64,
}

/// The event buffer of one run.
pub struct EventChannel {
    thread_id: ThreadId,
    run_id: RunId,
    frames_max: usize,
    /// The engine's clock: every frame's `ts`.
    clock: Arc<dyn Clock>,
    buffer: Mutex<Buffer>,
    /// The last seq emitted plus one, or `u64::MAX` once closed; readers wait on it.
    signal: watch::Sender<u64>,
}

impl EventChannel {
    pub fn new(thread_id: &ThreadId, run_id: &RunId, frames_max: usize, clock: Arc<dyn Clock>) -> Arc<EventChannel> {
        assert!(frames_max >= 8, "the buffer must hold the critical frames and some more");
        let (signal, _) = watch::channel(0);
        Arc::new(EventChannel {
            thread_id: thread_id.clone(),
            run_id: run_id.clone(),
            frames_max,
            clock,
            buffer: Mutex::new(Buffer { frames: VecDeque::new(), next_seq: 0, closed: false, dropped: 0 }),
            signal,
        })
    }

    pub fn thread_id(&self) -> &ThreadId {
        &self.thread_id
    }

    pub fn run_id(&self) -> &RunId {
        &self.run_id
    }

    /// Appends a frame; returns its seq, or `None` once the channel is closed.
    pub fn emit(&self, kind: EventKind, step_idx: Option<usize>, node: Option<&str>, payload: Value) -> Option<u64> {
        let mut buffer = self.buffer.lock().expect("event buffer lock poisoned");
        if buffer.closed {
            return None;
        }
        let seq = buffer.next_seq;
        buffer.next_seq += 1;
        let ts = format_time(self.clock.now());
        let envelope = json!({
            "type": kind.as_str(),
            "thread_id": self.thread_id,
            "run_id": self.run_id,
            "seq": seq,
            "ts": ts,
            "step_idx": step_idx,
            "node": node,
            "payload": payload,
        });
        let frame = Frame { seq, kind, id: format!("{}:{seq}", self.thread_id), data: envelope.to_string() };
        if buffer.frames.len() >= self.frames_max {
            match buffer.frames.iter().position(|frame| !frame.kind.is_critical()) {
                Some(oldest_ordinary) => {
                    buffer.frames.remove(oldest_ordinary);
                    buffer.dropped += 1;
                }
                None => unreachable!("a run emits only a few critical frames"),
            }
        }
        buffer.frames.push_back(frame);
        drop(buffer);
        self.signal.send_replace(seq + 1);
        Some(seq)
    }

    /// Ends the stream: readers finish once they have read every frame.
    pub fn close(&self) {
        let mut buffer = self.buffer.lock().expect("event buffer lock poisoned");
        buffer.closed = true;
        drop(buffer);
        self.signal.send_replace(u64::MAX);
    }

    pub fn is_closed(&self) -> bool {
        self.buffer.lock().expect("event buffer lock poisoned").closed
    }

    /// Ordinary frames evicted so far because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.buffer.lock().expect("event buffer lock poisoned").dropped
    }

    /// Frames with `seq > after` that are still buffered, and whether the channel is closed.
    pub fn frames_after(&self, after: Option<u64>) -> (Vec<Frame>, bool) {
        let buffer = self.buffer.lock().expect("event buffer lock poisoned");
        let frames =
            buffer.frames.iter().filter(|frame| after.is_none_or(|after| frame.seq > after)).cloned().collect();
        (frames, buffer.closed)
    }

    /// Follows the run from just after `after` (a `Last-Event-ID` seq) until it closes.
    pub fn follow(self: &Arc<Self>, after: Option<u64>) -> impl Stream<Item = Frame> + Send + 'static {
        let channel = self.clone();
        let receiver = self.signal.subscribe();
        futures::stream::unfold((channel, receiver, after, VecDeque::new()), |state| async move {
            let (channel, mut receiver, mut cursor, mut pending) = state;
            loop {
                if let Some(frame) = pending.pop_front() {
                    let frame: Frame = frame;
                    cursor = Some(frame.seq);
                    return Some((frame, (channel, receiver, cursor, pending)));
                }
                let (frames, closed) = channel.frames_after(cursor);
                if !frames.is_empty() {
                    pending.extend(frames);
                    continue;
                }
                if closed {
                    return None;
                }
                // Wakes on every emit and on close; a sender gone means the run is gone.
                if receiver.changed().await.is_err() {
                    return None;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn channel(frames_max: usize) -> Arc<EventChannel> {
        let clock = Arc::new(store::ManualClock::new(Timestamp::from_micros(1_800_000_000_250_000)));
        EventChannel::new(&ThreadId::parse("t").unwrap(), &RunId::parse("r").unwrap(), frames_max, clock)
    }

    #[tokio::test]
    async fn readers_see_every_frame_in_order_and_end_at_close() {
        let channel = channel(16);
        let reader = tokio::spawn(channel.follow(None).map(|frame| frame.seq).collect::<Vec<_>>());
        for _ in 0..5 {
            channel.emit(EventKind::Token, Some(0), Some("solve"), json!({"delta": "x"}));
        }
        channel.emit(EventKind::Done, None, None, json!({"final": true}));
        channel.close();
        assert_eq!(reader.await.unwrap(), vec![0, 1, 2, 3, 4, 5]);
        let (frames, closed) = channel.frames_after(Some(3));
        assert!(closed);
        assert_eq!(frames.iter().map(|frame| frame.id.as_str()).collect::<Vec<_>>(), ["t:4", "t:5"]);
        let envelope: Value = serde_json::from_str(&frames[1].data).unwrap();
        assert_eq!(
            (envelope["type"].as_str(), envelope["run_id"].as_str(), envelope["seq"].as_u64()),
            (Some("done"), Some("r"), Some(5))
        );
        assert_eq!(envelope["ts"], "2027-01-15T08:00:00.25Z", "the time is the engine's clock's");
    }

    /// Every code a job or a run can end with goes over the stream and reads back as a member of
    /// its closed set (the original crashed a live stream on a code its schema did not allow).
    #[tokio::test]
    async fn every_error_code_travels_over_the_stream() {
        let channel = channel(64);
        let reader = tokio::spawn(channel.follow(None).collect::<Vec<_>>());
        for code in jobs::JobErrorCode::ALL {
            channel.emit(
                EventKind::JobFinished,
                None,
                Some("video"),
                json!({"status": "failed", "error_code": code.as_str()}),
            );
        }
        for code in ErrorCode::ALL {
            channel.emit(
                EventKind::Error,
                None,
                None,
                json!({"code": code.as_str(), "message": "m", "recoverable": false}),
            );
        }
        channel.close();
        let frames = reader.await.unwrap();
        assert_eq!(frames.len(), jobs::JobErrorCode::ALL.len() + ErrorCode::ALL.len());
        for frame in frames {
            let envelope: Value = serde_json::from_str(&frame.data).unwrap();
            let payload = &envelope["payload"];
            match frame.kind {
                EventKind::JobFinished => {
                    let code = payload["error_code"].as_str().unwrap();
                    assert_eq!(jobs::JobErrorCode::parse(code).map(|code| code.as_str()), Some(code));
                }
                EventKind::Error => {
                    let code = payload["code"].as_str().unwrap();
                    assert!(ErrorCode::ALL.iter().any(|known| known.as_str() == code), "{code}");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_full_buffer_drops_ordinary_frames_but_never_critical_ones() {
        let channel = channel(8);
        channel.emit(EventKind::CreditSettled, None, None, json!({}));
        for _ in 0..20 {
            channel.emit(EventKind::Token, None, None, json!({}));
        }
        channel.emit(EventKind::Error, None, None, json!({}));
        channel.close();
        let (frames, _) = channel.frames_after(None);
        assert_eq!(frames.len(), 8);
        assert_eq!(frames[0].kind, EventKind::CreditSettled);
        assert_eq!(frames.last().unwrap().kind, EventKind::Error);
        assert_eq!(channel.dropped(), 14);
        assert!(channel.emit(EventKind::Token, None, None, json!({})).is_none(), "closed channels take nothing");
    }
}
