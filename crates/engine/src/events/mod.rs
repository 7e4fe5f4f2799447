//! The per-run event buffer behind the SSE stream, and its way into the store.
//!
//! A run emits frames into one bounded buffer; any number of readers on this instance follow it
//! with their own cursor, so a slow or absent client never slows the run down, and a
//! reconnecting client replays from `Last-Event-ID`. When the buffer is full (too many frames,
//! or too many bytes of their stored form) the oldest *ordinary* frame is evicted:
//! `credit_reserved`, `credit_settled`, `error` and `done` are never dropped, because a client
//! must always learn how its credits were taken and how they ended.
//!
//! Every frame also goes to the store, so any instance can replay and follow the run
//! ([`writer`]: one writer per engine batches the frames of every live run, off the path of the
//! emitting run; [`stored`]: the frame's stored form). The buffer mirrors itself there: it hands
//! each frame to the writer once, and the frames it evicts after that are deleted in a later
//! write. A run's last frame is *sealed* first (kept from local readers), written together with
//! the run's terminal record, and only then published, so on every instance `done` or `error`
//! is seen only once the run's record says it ended.
//!
//! Events are typed ([`Event`], one payload type per event type) and stay typed in the buffer;
//! the HTTP server renders each frame with its DTOs, so the wire shape of every payload is
//! defined once, next to its schema in the OpenAPI document. Their serde derives are for the
//! stored form only.

pub mod follow;
pub mod stored;
pub mod writer;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures::Stream;
use ledger::{Amount, HoldId, Timestamp};
use pricing::{amount_text, Difficulty, Line, Step, Tier};
use serde::{Deserialize, Serialize};
use store::{ArtifactId, Clock, JobId, JobRecord, JobStatus, RunId, StoredFrame, ThreadId};
use tokio::sync::watch;

use crate::run::data::{CreditEntry, RunErrorCode};

/// Default number of frames one run keeps (in its buffer and in the store).
pub const FRAMES_MAX_DEFAULT: usize = 1024;
/// Default bound on the bytes of one run's frames, in their stored form.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 1 << 20;
/// The least a buffer may be bounded to: room for the critical frames and some more.
pub const FRAMES_MAX_MIN: usize = 8;

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

    pub fn parse(text: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|kind| kind.as_str() == text)
    }

    /// Frames a client must never miss: how its credits were taken and how they ended.
    pub fn is_critical(self) -> bool {
        matches!(self, EventKind::CreditReserved | EventKind::CreditSettled | EventKind::Error | EventKind::Done)
    }

    /// The frames a run ends with: exactly one of them, last.
    pub fn is_terminal(self) -> bool {
        matches!(self, EventKind::Error | EventKind::Done)
    }
}

/// The `code` of an `error` event. Closed set, so every code a run can emit is one the event
/// schema accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InternalError,
    ToolError,
    ModelError,
    CreditExhausted,
    Timeout,
    InvalidInput,
    Canceled,
    /// The instance running the run died; another one's recovery ended it.
    Interrupted,
    /// `code_execute` has no sandbox on this server (it failed its start-up probe): the code is
    /// never run unisolated, so the step fails.
    SandboxUnavailable,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::InternalError,
        ErrorCode::ToolError,
        ErrorCode::ModelError,
        ErrorCode::CreditExhausted,
        ErrorCode::Timeout,
        ErrorCode::InvalidInput,
        ErrorCode::Canceled,
        ErrorCode::Interrupted,
        ErrorCode::SandboxUnavailable,
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
            ErrorCode::Interrupted => "interrupted",
            ErrorCode::SandboxUnavailable => "sandbox_unavailable",
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
            ErrorCode::Interrupted => RunErrorCode::Interrupted,
            ErrorCode::SandboxUnavailable => RunErrorCode::SandboxUnavailable,
        }
    }
}

/// What one event says. Closed set: its kind is [`Event::kind`]; its stored form is
/// [`stored`]'s.
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageStart {
    pub steps: Vec<Step>,
    pub model: Tier,
    pub difficulty: Difficulty,
}

/// Which solver call a progress event reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SolveProgress {
    pub text: String,
    /// Solver model calls so far.
    pub iteration: u32,
    pub phase: SolvePhase,
}

/// A piece of text the user reads as the model writes it, or an attachment (empty `delta`).
/// A text ends with one token whose `is_final` is set; the concatenated deltas of a node's
/// tokens are the text the run stores for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub delta: String,
    /// What the token announces besides text.
    pub attachment: Option<Attachment>,
    /// The last piece of its text. Frames stored before answers streamed held whole answers,
    /// so a missing flag reads as final.
    #[serde(default = "final_by_default")]
    pub is_final: bool,
}

fn final_by_default() -> bool {
    true
}

impl Token {
    pub fn text(delta: impl Into<String>, is_final: bool) -> Token {
        Token { delta: delta.into(), attachment: None, is_final }
    }

    pub fn attachment(attachment: Attachment) -> Token {
        Token { delta: String::new(), attachment: Some(attachment), is_final: true }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Attachment {
    /// The solution PDF, stored.
    Pdf { artifact_id: ArtifactId },
    /// The video job, created.
    Video {
        job_id: JobId,
        #[serde(with = "stored::job_status_text")]
        status: JobStatus,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolStart {
    pub name: String,
    pub tool_call_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolResult {
    pub name: String,
    pub tool_call_id: String,
    /// What the model was told, cut to a few kilobytes.
    pub output: String,
    pub success: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeResult {
    /// `None` when the step succeeded.
    pub error_code: Option<ErrorCode>,
    pub duration_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditReserved {
    #[serde(with = "stored::hold_id_text")]
    pub hold_id: HoldId,
    #[serde(with = "amount_text")]
    pub amount: Amount,
    pub breakdown: Vec<Line>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreditSettled {
    #[serde(with = "stored::hold_id_text")]
    pub hold_id: HoldId,
    /// The synchronous cost (video excluded: its job was charged).
    #[serde(with = "amount_text")]
    pub actual: Amount,
    #[serde(with = "amount_text")]
    pub reserved: Amount,
    #[serde(with = "amount_text")]
    pub captured: Amount,
    #[serde(with = "amount_text")]
    pub refunded: Amount,
    pub log: Vec<CreditEntry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunError {
    pub code: ErrorCode,
    pub message: String,
    /// For `credit_exhausted`: what the turn needed and what was available.
    pub shortfall: Option<Shortfall>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shortfall {
    #[serde(with = "amount_text")]
    pub required: Amount,
    #[serde(with = "amount_text")]
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
    /// Each frame with the size of its stored form.
    frames: VecDeque<(Frame, usize)>,
    /// The stored bytes of the frames kept.
    bytes: usize,
    next_seq: u64,
    /// No frame is emitted any more: the final one is sealed ([`EventChannel::seal`]).
    sealed: bool,
    closed: bool,
    dropped: u64,
}

/// The bounds of one run's buffer (and of its frames in the store). Units last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    pub frames_max: usize,
    /// The stored form's bytes, all frames together.
    pub bytes_max: usize,
}

impl Default for Bounds {
    fn default() -> Bounds {
        Bounds { frames_max: FRAMES_MAX_DEFAULT, bytes_max: FRAME_BYTES_MAX_DEFAULT }
    }
}

/// The event buffer of one run.
pub struct EventChannel {
    thread_id: ThreadId,
    run_id: RunId,
    bounds: Bounds,
    /// The engine's clock: every frame's `ts`.
    clock: Arc<dyn Clock>,
    /// Where frames go to be stored; `None` keeps them in this process only (engines built
    /// outside a runtime, unit tests).
    sink: Option<Arc<writer::EventWriter>>,
    buffer: Mutex<Buffer>,
    /// The last seq emitted plus one, or `u64::MAX` once closed; readers wait on it.
    signal: watch::Sender<u64>,
    /// Set once the final frame is published (for [`EventChannel::is_closed`] without the lock).
    closed: AtomicBool,
}

impl EventChannel {
    pub fn new(thread_id: &ThreadId, run_id: &RunId, frames_max: usize, clock: Arc<dyn Clock>) -> Arc<EventChannel> {
        let bounds = Bounds { frames_max, ..Bounds::default() };
        EventChannel::stored(thread_id, run_id, bounds, clock, None)
    }

    /// A channel whose frames also go to the store through `sink`.
    pub fn stored(
        thread_id: &ThreadId,
        run_id: &RunId,
        bounds: Bounds,
        clock: Arc<dyn Clock>,
        sink: Option<Arc<writer::EventWriter>>,
    ) -> Arc<EventChannel> {
        assert!(bounds.frames_max >= FRAMES_MAX_MIN, "the buffer must hold the critical frames and some more");
        let (signal, _) = watch::channel(0);
        Arc::new(EventChannel {
            thread_id: thread_id.clone(),
            run_id: run_id.clone(),
            bounds,
            clock,
            sink,
            buffer: Mutex::new(Buffer {
                frames: VecDeque::new(),
                bytes: 0,
                next_seq: 0,
                sealed: false,
                closed: false,
                dropped: 0,
            }),
            signal,
            closed: AtomicBool::new(false),
        })
    }

    pub fn thread_id(&self) -> &ThreadId {
        &self.thread_id
    }

    pub fn run_id(&self) -> &RunId {
        &self.run_id
    }

    fn buffer(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.buffer.lock().expect("event buffer lock poisoned")
    }

    /// A new frame with the next seq, or `None` once sealed.
    fn next_frame(
        &self,
        buffer: &mut Buffer,
        step_idx: Option<usize>,
        node: Option<&'static str>,
        event: Event,
    ) -> Option<Frame> {
        if buffer.sealed {
            return None;
        }
        let seq = buffer.next_seq;
        buffer.next_seq += 1;
        let kind = event.kind();
        let id = format!("{}:{seq}", self.thread_id);
        Some(Frame { seq, kind, id, ts: self.clock.now(), step_idx, node, event: Arc::new(event) })
    }

    /// Keeps `frame` (of `bytes` stored bytes), evicting the oldest ordinary frames while a bound
    /// is exceeded; returns the seqs evicted.
    fn keep(&self, buffer: &mut Buffer, frame: Frame, bytes: usize) -> Vec<u64> {
        let mut evicted = Vec::new();
        while buffer.frames.len() >= self.bounds.frames_max
            || (!buffer.frames.is_empty() && buffer.bytes + bytes > self.bounds.bytes_max)
        {
            let Some(oldest_ordinary) = buffer.frames.iter().position(|(frame, _)| !frame.kind.is_critical()) else {
                // Only critical frames left (a run emits a handful): keep them all.
                break;
            };
            let (gone, gone_bytes) = buffer.frames.remove(oldest_ordinary).expect("the position is in the buffer");
            buffer.bytes -= gone_bytes;
            buffer.dropped += 1;
            evicted.push(gone.seq);
        }
        buffer.bytes += bytes;
        buffer.frames.push_back((frame, bytes));
        evicted
    }

    /// Appends a frame; returns its seq, or `None` once the channel is sealed or closed.
    pub fn emit(&self, step_idx: Option<usize>, node: Option<&'static str>, event: Event) -> Option<u64> {
        let mut buffer = self.buffer();
        let frame = self.next_frame(&mut buffer, step_idx, node, event)?;
        let seq = frame.seq;
        let stored = stored::encode(&self.run_id, &frame);
        let evicted = self.keep(&mut buffer, frame, stored.data.len());
        if let Some(sink) = &self.sink {
            // Under the buffer's lock, so the writer sees this run's frames and evictions in order.
            for gone in evicted {
                sink.evict(&self.run_id, gone);
            }
            sink.push(stored);
        }
        drop(buffer);
        self.signal.send_replace(seq + 1);
        Some(seq)
    }

    /// Takes the run's final frame (`done` or `error`) out of the stream's order without
    /// publishing it: nothing more can be emitted, and local readers see it only once
    /// [`EventChannel::publish_final`] is called (after it is stored with the run's terminal
    /// record). `None` when already sealed.
    pub fn seal(&self, event: Event) -> Option<Frame> {
        debug_assert!(event.kind().is_terminal(), "only done or error ends a stream");
        let mut buffer = self.buffer();
        let frame = self.next_frame(&mut buffer, None, None, event)?;
        buffer.sealed = true;
        Some(frame)
    }

    /// [`EventChannel::seal`] with one more frame before the final one (a turn's
    /// `credit_settled`, written with the run's end and its settlement): both take their seqs
    /// now, in order, and are published together by [`EventChannel::publish_sealed`]. `None`
    /// when already sealed.
    pub fn seal_after(&self, node: Option<&'static str>, before: Event, last: Event) -> Option<[Frame; 2]> {
        debug_assert!(!before.kind().is_terminal() && last.kind().is_terminal(), "only the last frame ends a stream");
        let mut buffer = self.buffer();
        let first = self.next_frame(&mut buffer, None, node, before)?;
        let second = self.next_frame(&mut buffer, None, None, last).expect("not sealed: a frame was just emitted");
        buffer.sealed = true;
        Some([first, second])
    }

    /// Takes back frames sealed but never published nor stored (their write was refused): the
    /// stream is open again, and the next frame emitted takes `from`, the first of their seqs.
    pub fn unseal(&self, from: u64) {
        let mut buffer = self.buffer();
        assert!(buffer.sealed && !buffer.closed, "only a sealed, unpublished stream is unsealed");
        assert!(from <= buffer.next_seq, "seqs are taken back, never skipped");
        buffer.next_seq = from;
        buffer.sealed = false;
    }

    /// Publishes frames sealed by [`EventChannel::seal_after`] (once stored), in order, and
    /// closes the stream.
    pub fn publish_sealed(&self, frames: [Frame; 2]) {
        let [first, last] = frames;
        {
            let mut buffer = self.buffer();
            let bytes = stored::encode(&self.run_id, &first).data.len();
            let evicted = self.keep(&mut buffer, first, bytes);
            if let Some(sink) = &self.sink {
                for gone in evicted {
                    sink.evict(&self.run_id, gone);
                }
            }
        }
        self.publish_final(last);
    }

    /// The stored form of a frame of this run.
    pub fn stored_form(&self, frame: &Frame) -> StoredFrame {
        stored::encode(&self.run_id, frame)
    }

    /// Publishes the sealed final frame and closes the stream.
    pub fn publish_final(&self, frame: Frame) {
        let mut buffer = self.buffer();
        let bytes = stored::encode(&self.run_id, &frame).data.len();
        let evicted = self.keep(&mut buffer, frame, bytes);
        if let Some(sink) = &self.sink {
            for gone in evicted {
                sink.evict(&self.run_id, gone);
            }
        }
        drop(buffer);
        self.close();
    }

    /// Ends the stream: readers finish once they have read every frame.
    pub fn close(&self) {
        let mut buffer = self.buffer();
        buffer.sealed = true;
        buffer.closed = true;
        drop(buffer);
        self.closed.store(true, Ordering::Release);
        self.signal.send_replace(u64::MAX);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Ordinary frames evicted so far because the buffer was full.
    pub fn dropped(&self) -> u64 {
        self.buffer().dropped
    }

    /// Frames with `seq > after` that are still buffered, and whether the channel is closed.
    pub fn frames_after(&self, after: Option<u64>) -> (Vec<Frame>, bool) {
        let buffer = self.buffer();
        let frames = buffer
            .frames
            .iter()
            .filter(|(frame, _)| after.is_none_or(|after| frame.seq > after))
            .map(|(frame, _)| frame.clone())
            .collect();
        (frames, buffer.closed)
    }

    /// The seq the next frame would get (every seq below it was emitted or is sealed).
    pub fn next_seq(&self) -> u64 {
        self.buffer().next_seq
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
        Event::Token(Token::text("x", true))
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

    #[tokio::test]
    async fn a_buffer_bounded_in_bytes_drops_ordinary_frames_and_seals_its_final_one() {
        let clock = Arc::new(store::ManualClock::new(Timestamp::from_micros(1_800_000_000_250_000)));
        let (thread_id, run_id) = (ThreadId::parse("t").expect("valid"), RunId::parse("r").expect("valid"));
        let one_token = stored::encode(&run_id, &{
            let event = token();
            Frame {
                seq: 0,
                kind: event.kind(),
                id: "t:0".to_owned(),
                ts: clock.now(),
                step_idx: None,
                node: None,
                event: Arc::new(event),
            }
        })
        .data
        .len();
        let bounds = Bounds { frames_max: 1024, bytes_max: one_token * 3 };
        let channel = EventChannel::stored(&thread_id, &run_id, bounds, clock, None);
        for _ in 0..10 {
            channel.emit(None, None, token());
        }
        let (frames, _) = channel.frames_after(None);
        assert_eq!(frames.iter().map(|frame| frame.seq).collect::<Vec<_>>(), [7, 8, 9], "the newest that fit");
        let reader = tokio::spawn(channel.follow(Some(9)).map(|frame| frame.kind).collect::<Vec<_>>());
        let done = channel.seal(Event::Done).expect("not sealed yet");
        assert_eq!(done.seq, 10);
        assert!(channel.emit(None, None, token()).is_none(), "nothing after the final frame");
        assert!(channel.seal(Event::Done).is_none(), "one final frame");
        assert_eq!(channel.frames_after(Some(9)).0, Vec::new(), "sealed, not yet published");
        channel.publish_final(done);
        assert_eq!(reader.await.expect("reads"), [EventKind::Done]);
        assert!(channel.is_closed());
    }
}
