//! The per-run event buffer behind the SSE stream.
//!
//! A run emits frames into one bounded buffer; any number of readers follow it with their own
//! cursor, so a slow or absent client never slows the run down, and a reconnecting client
//! replays from `Last-Event-ID`. When the buffer is full the oldest *ordinary* frame is evicted:
//! `error`, `credit_settled` and `done` are never dropped, because a client must always learn how
//! its credits ended.
//!
//! Events are typed ([`Event`], one payload type per event type) and stay typed in the buffer;
//! the HTTP server renders each frame with its DTOs, so the wire shape of every payload is
//! defined once, next to its schema in the OpenAPI document.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use futures::Stream;
use ledger::{Amount, HoldId, Timestamp};
use pricing::{Difficulty, Line, Step, Tier};
use store::{ArtifactId, Clock, JobId, JobRecord, JobStatus, RunId, ThreadId};
use tokio::sync::watch;

use crate::run::data::{CreditEntry, RunErrorCode};

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
    pub const ALL: [EventKind; 12] = [
        EventKind::PageStart,
        EventKind::SolveProgress,
        EventKind::Token,
        EventKind::ToolStart,
        EventKind::ToolResult,
        EventKind::NodeResult,
        EventKind::CreditReserved,
        EventKind::CreditSettled,
        EventKind::JobProgress,
        EventKind::JobFinished,
        EventKind::Error,
        EventKind::Done,
    ];

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

impl From<ErrorCode> for RunErrorCode {
    fn from(code: ErrorCode) -> RunErrorCode {
        match code {
            ErrorCode::InternalError => RunErrorCode::InternalError,
            ErrorCode::ToolError => RunErrorCode::ToolError,
            ErrorCode::ModelError => RunErrorCode::ModelError,
            ErrorCode::CreditExhausted => RunErrorCode::CreditExhausted,
            ErrorCode::Timeout => RunErrorCode::Timeout,
            ErrorCode::InvalidInput => RunErrorCode::InvalidInput,
            ErrorCode::Canceled => RunErrorCode::Canceled,
        }
    }
}

/// What one event says. Closed set: its kind is [`Event::kind`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The planner chose a plan that shows a page (`use_page`).
    PageStart(PageStart),
    SolveProgress(SolveProgress),
    /// A piece of an answer; every token the engine sends is final.
    Token(Token),
    ToolStart(ToolStart),
    ToolResult(ToolResult),
    /// A step ended.
    NodeResult(NodeResult),
    /// The turn's hold was taken.
    CreditReserved(CreditReserved),
    /// The settler captured the turn's cost; the rest of the hold went back.
    CreditSettled(CreditSettled),
    /// A video job of this run changed (boxed: a job record is large).
    JobProgress(Box<JobRecord>),
    /// A video job of this run ended.
    JobFinished(Box<JobRecord>),
    /// The run failed; always the last event but for none.
    Error(RunError),
    /// The run succeeded.
    Done,
}

impl Event {
    pub fn kind(&self) -> EventKind {
        match self {
            Event::PageStart(_) => EventKind::PageStart,
            Event::SolveProgress(_) => EventKind::SolveProgress,
            Event::Token(_) => EventKind::Token,
            Event::ToolStart(_) => EventKind::ToolStart,
            Event::ToolResult(_) => EventKind::ToolResult,
            Event::NodeResult(_) => EventKind::NodeResult,
            Event::CreditReserved(_) => EventKind::CreditReserved,
            Event::CreditSettled(_) => EventKind::CreditSettled,
            Event::JobProgress(_) => EventKind::JobProgress,
            Event::JobFinished(_) => EventKind::JobFinished,
            Event::Error(_) => EventKind::Error,
            Event::Done => EventKind::Done,
        }
    }

    /// `job_progress` or `job_finished`, as the job's status says.
    pub fn job(job: JobRecord) -> Event {
        if job.status.is_terminal() {
            Event::JobFinished(Box::new(job))
        } else {
            Event::JobProgress(Box::new(job))
        }
    }
}

/// The plan a math turn follows, when it shows a page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageStart {
    pub steps: Vec<Step>,
    pub model: Tier,
    pub difficulty: Difficulty,
}

/// Which solver call a progress event reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SolvePhase {
    Verify,
    Summary,
    Explain,
}

impl SolvePhase {
    pub const ALL: [SolvePhase; 3] = [SolvePhase::Verify, SolvePhase::Summary, SolvePhase::Explain];

    pub fn as_str(self) -> &'static str {
        match self {
            SolvePhase::Verify => "verify",
            SolvePhase::Summary => "summary",
            SolvePhase::Explain => "explain",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SolveProgress {
    pub text: String,
    /// Solver model calls so far.
    pub iteration: u32,
    pub phase: SolvePhase,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub delta: String,
    /// What the token announces besides text.
    pub attachment: Option<Attachment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// The solution PDF, stored.
    Pdf { artifact_id: ArtifactId },
    /// The video job, created.
    Video { job_id: JobId, status: JobStatus },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolStart {
    pub name: String,
    pub tool_call_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolResult {
    pub name: String,
    pub tool_call_id: String,
    /// What the model was told, cut to a few kilobytes.
    pub output: String,
    pub success: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeResult {
    /// `None` when the step succeeded.
    pub error_code: Option<ErrorCode>,
    pub duration_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreditReserved {
    pub hold_id: HoldId,
    pub amount: Amount,
    pub breakdown: Vec<Line>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreditSettled {
    pub hold_id: HoldId,
    /// The synchronous cost (video excluded: its job was charged).
    pub actual: Amount,
    pub reserved: Amount,
    pub captured: Amount,
    pub refunded: Amount,
    pub log: Vec<CreditEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunError {
    pub code: ErrorCode,
    pub message: String,
    /// For `credit_exhausted`: what the turn needed and what was available.
    pub shortfall: Option<Shortfall>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shortfall {
    pub required: Amount,
    pub available: Amount,
}

/// One frame of a run's stream: an event with its place and time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub seq: u64,
    pub kind: EventKind,
    /// `<thread_id>:<seq>`, the SSE `id`.
    pub id: String,
    /// When it was emitted, by the engine's clock.
    pub ts: Timestamp,
    /// The planned step it belongs to, if any.
    pub step_idx: Option<usize>,
    /// The node that emitted it (`solve`, `pdf`, `video`, `planner`, `general`, `settler`), if any.
    pub node: Option<&'static str>,
    /// Shared: every reader of the frame gets it without a copy.
    pub event: Arc<Event>,
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
    pub fn emit(&self, step_idx: Option<usize>, node: Option<&'static str>, event: Event) -> Option<u64> {
        let ts = self.clock.now();
        let mut buffer = self.buffer.lock().expect("event buffer lock poisoned");
        if buffer.closed {
            return None;
        }
        let seq = buffer.next_seq;
        buffer.next_seq += 1;
        let kind = event.kind();
        let id = format!("{}:{seq}", self.thread_id);
        let frame = Frame { seq, kind, id, ts, step_idx, node, event: Arc::new(event) };
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
        let (thread_id, run_id) = (ThreadId::parse("t").expect("valid"), RunId::parse("r").expect("valid"));
        EventChannel::new(&thread_id, &run_id, frames_max, clock)
    }

    fn token() -> Event {
        Event::Token(Token { delta: "x".to_owned(), attachment: None })
    }

    #[tokio::test]
    async fn readers_see_every_frame_in_order_and_end_at_close() {
        let channel = channel(16);
        let reader = tokio::spawn(channel.follow(None).map(|frame| frame.seq).collect::<Vec<_>>());
        for _ in 0..5 {
            channel.emit(Some(0), Some("solve"), token());
        }
        channel.emit(None, None, Event::Done);
        channel.close();
        assert_eq!(reader.await.unwrap(), vec![0, 1, 2, 3, 4, 5]);
        let (frames, closed) = channel.frames_after(Some(3));
        assert!(closed);
        assert_eq!(frames.iter().map(|frame| frame.id.as_str()).collect::<Vec<_>>(), ["t:4", "t:5"]);
        assert_eq!((frames[1].kind, frames[1].event.as_ref(), frames[1].seq), (EventKind::Done, &Event::Done, 5));
        assert_eq!((frames[0].step_idx, frames[0].node), (Some(0), Some("solve")));
        assert_eq!(frames[1].ts, Timestamp::from_micros(1_800_000_000_250_000), "the time is the engine's clock's");
    }

    #[test]
    fn every_event_has_its_kind_and_codes_keep_their_names() {
        let job = |status| JobRecord {
            status,
            ..store::conformance::jobs::queued_job("job-1", "t", Timestamp::from_micros(0))
        };
        let events = [
            (Event::job(job(JobStatus::Running)), EventKind::JobProgress),
            (Event::job(job(JobStatus::Failed)), EventKind::JobFinished),
            (Event::Done, EventKind::Done),
        ];
        for (event, kind) in events {
            assert_eq!(event.kind(), kind);
        }
        for code in ErrorCode::ALL {
            assert_eq!(RunErrorCode::from(code).as_str(), code.as_str());
        }
    }

    #[tokio::test]
    async fn a_full_buffer_drops_ordinary_frames_but_never_critical_ones() {
        let channel = channel(8);
        let settled = CreditSettled {
            hold_id: HoldId::parse("h").expect("valid"),
            actual: Amount::ZERO,
            reserved: Amount::ZERO,
            captured: Amount::ZERO,
            refunded: Amount::ZERO,
            log: Vec::new(),
        };
        channel.emit(None, None, Event::CreditSettled(settled));
        for _ in 0..20 {
            channel.emit(None, None, token());
        }
        let error = RunError { code: ErrorCode::Canceled, message: "m".to_owned(), shortfall: None };
        channel.emit(None, None, Event::Error(error));
        channel.close();
        let (frames, _) = channel.frames_after(None);
        assert_eq!(frames.len(), 8);
        assert_eq!(frames[0].kind, EventKind::CreditSettled);
        assert_eq!(frames.last().unwrap().kind, EventKind::Error);
        assert_eq!(channel.dropped(), 14);
        assert!(channel.emit(None, None, token()).is_none(), "closed channels take nothing");
    }
}
