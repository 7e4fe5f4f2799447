//! The stored form of a frame: what the store keeps of it, so any instance can rebuild the
//! frame and render it exactly as the run's own instance would.
//!
//! A frame is kept as JSON text (`{"step_idx":…,"node":…,"event":{"type":…,"payload":…}}`);
//! amounts are decimal text as in the run document, ids and names their own text. The derives on
//! [`Event`] and its payloads exist for this form only: the wire shape is the server's DTOs'.

use std::sync::Arc;

use ledger::HoldId;
use serde::{Deserialize, Serialize};
use store::{RunId, StoredFrame, ThreadId};

use super::{
    CreditReserved, CreditSettled, Event, EventKind, Frame, NodeResult, PageStart, RunError, SolveProgress, Token,
    ToolResult, ToolStart,
};
use store::JobRecord;

/// Every node a frame can name (`Frame::node` is a `&'static str`); a stored name outside this
/// list reads back as no node.
const NODES: [&str; 9] =
    ["explain", "general", "general_chat", "math_task", "pdf", "planner", "settler", "solve", "video"];

#[derive(Serialize, Deserialize)]
struct Stored {
    step_idx: Option<usize>,
    node: Option<String>,
    event: StoredEvent,
}

/// [`Event`]'s stored form: the same variants, a job as the store's own job text.
#[derive(Serialize, Deserialize)]
#[serde(tag = "type", content = "payload", rename_all = "snake_case")]
enum StoredEvent {
    PageStart(PageStart),
    SolveProgress(SolveProgress),
    Token(Token),
    ToolStart(ToolStart),
    ToolResult(ToolResult),
    NodeResult(NodeResult),
    CreditReserved(CreditReserved),
    CreditSettled(CreditSettled),
    JobProgress(JobText),
    JobFinished(JobText),
    Error(RunError),
    Done,
}

/// A job record as the store's job text ([`store::codec::encode_job`]).
struct JobText(Box<JobRecord>);

impl Serialize for JobText {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&store::codec::encode_job(&self.0))
    }
}

impl<'de> Deserialize<'de> for JobText {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<JobText, D::Error> {
        let text = String::deserialize(deserializer)?;
        store::codec::decode_job(&text).map(|job| JobText(Box::new(job))).map_err(serde::de::Error::custom)
    }
}

impl From<Event> for StoredEvent {
    fn from(event: Event) -> StoredEvent {
        match event {
            Event::PageStart(payload) => StoredEvent::PageStart(payload),
            Event::SolveProgress(payload) => StoredEvent::SolveProgress(payload),
            Event::Token(payload) => StoredEvent::Token(payload),
            Event::ToolStart(payload) => StoredEvent::ToolStart(payload),
            Event::ToolResult(payload) => StoredEvent::ToolResult(payload),
            Event::NodeResult(payload) => StoredEvent::NodeResult(payload),
            Event::CreditReserved(payload) => StoredEvent::CreditReserved(payload),
            Event::CreditSettled(payload) => StoredEvent::CreditSettled(payload),
            Event::JobProgress(job) => StoredEvent::JobProgress(JobText(job)),
            Event::JobFinished(job) => StoredEvent::JobFinished(JobText(job)),
            Event::Error(payload) => StoredEvent::Error(payload),
            Event::Done => StoredEvent::Done,
        }
    }
}

impl From<StoredEvent> for Event {
    fn from(event: StoredEvent) -> Event {
        match event {
            StoredEvent::PageStart(payload) => Event::PageStart(payload),
            StoredEvent::SolveProgress(payload) => Event::SolveProgress(payload),
            StoredEvent::Token(payload) => Event::Token(payload),
            StoredEvent::ToolStart(payload) => Event::ToolStart(payload),
            StoredEvent::ToolResult(payload) => Event::ToolResult(payload),
            StoredEvent::NodeResult(payload) => Event::NodeResult(payload),
            StoredEvent::CreditReserved(payload) => Event::CreditReserved(payload),
            StoredEvent::CreditSettled(payload) => Event::CreditSettled(payload),
            StoredEvent::JobProgress(JobText(job)) => Event::JobProgress(job),
            StoredEvent::JobFinished(JobText(job)) => Event::JobFinished(job),
            StoredEvent::Error(payload) => Event::Error(payload),
            StoredEvent::Done => Event::Done,
        }
    }
}

/// A frame as the store keeps it.
pub fn encode(run_id: &RunId, frame: &Frame) -> StoredFrame {
    let event = StoredEvent::from((*frame.event).clone());
    let stored = Stored { step_idx: frame.step_idx, node: frame.node.map(str::to_owned), event };
    StoredFrame {
        run_id: run_id.clone(),
        seq: frame.seq,
        kind: frame.kind.as_str().to_owned(),
        at: frame.ts,
        data: serde_json::to_string(&stored).expect("a frame always serializes"),
    }
}

/// Why a stored frame could not be read back.
#[derive(Debug, thiserror::Error)]
#[error("stored frame {seq} of run {run_id} is unreadable: {detail}")]
pub struct Undecodable {
    pub run_id: RunId,
    pub seq: u64,
    pub detail: String,
}

/// Rebuilds the frame [`encode`] stored; `thread_id` makes its SSE id.
pub fn decode(thread_id: &ThreadId, stored: &StoredFrame) -> Result<Frame, Undecodable> {
    let undecodable = |detail: String| Undecodable { run_id: stored.run_id.clone(), seq: stored.seq, detail };
    let Stored { step_idx, node, event } =
        serde_json::from_str(&stored.data).map_err(|error| undecodable(error.to_string()))?;
    let event = Event::from(event);
    let kind = event.kind();
    if EventKind::parse(&stored.kind) != Some(kind) {
        return Err(undecodable(format!("kind {} does not match its event {}", stored.kind, kind.as_str())));
    }
    let node = node.and_then(|node| NODES.into_iter().find(|known| *known == node));
    Ok(Frame {
        seq: stored.seq,
        kind,
        id: format!("{thread_id}:{}", stored.seq),
        ts: stored.at,
        step_idx,
        node,
        event: Arc::new(event),
    })
}

/// A hold id as its text.
pub(crate) mod hold_id_text {
    use super::*;

    pub fn serialize<S: serde::Serializer>(hold_id: &HoldId, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(hold_id.as_str())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<HoldId, D::Error> {
        let text = String::deserialize(deserializer)?;
        HoldId::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A job status as its text.
pub(crate) mod job_status_text {
    use serde::Deserialize;
    use store::JobStatus;

    pub fn serialize<S: serde::Serializer>(status: &JobStatus, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(status.as_str())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<JobStatus, D::Error> {
        let text = String::deserialize(deserializer)?;
        JobStatus::parse(&text).ok_or_else(|| serde::de::Error::custom(format!("unknown job status {text}")))
    }
}

#[cfg(test)]
mod tests {
    use ledger::{Amount, Timestamp};
    use store::JobStatus;

    use super::super::*;
    use super::*;

    fn frame(seq: u64, step_idx: Option<usize>, node: Option<&'static str>, event: Event) -> Frame {
        let ts = Timestamp::from_micros(1_800_000_000_000_000 + i64::try_from(seq).expect("small"));
        Frame { seq, kind: event.kind(), id: format!("t:{seq}"), ts, step_idx, node, event: Arc::new(event) }
    }

    #[test]
    fn every_kind_of_frame_reads_back_as_it_was() {
        let hold_id = HoldId::parse("hold-1").expect("valid");
        let job = store::conformance::jobs::queued_job("job-1", "t", Timestamp::from_micros(7));
        let events = [
            Event::Token(Token::text("ü", false)),
            Event::Token(Token::attachment(Attachment::Video {
                job_id: job.job_id.clone(),
                status: JobStatus::Queued,
            })),
            Event::CreditReserved(CreditReserved {
                hold_id: hold_id.clone(),
                amount: Amount::from_micros(1_500_001),
                breakdown: Vec::new(),
            }),
            Event::CreditSettled(CreditSettled {
                hold_id,
                actual: Amount::from_credits(1),
                reserved: Amount::from_credits(3),
                captured: Amount::from_credits(1),
                refunded: Amount::from_credits(2),
                log: Vec::new(),
            }),
            Event::job(JobRecord { status: JobStatus::Running, ..job.clone() }),
            Event::Error(RunError {
                code: ErrorCode::CreditExhausted,
                message: "m".to_owned(),
                shortfall: Some(Shortfall { required: Amount::from_credits(2), available: Amount::ZERO }),
            }),
            Event::Done,
        ];
        let thread_id = ThreadId::parse("t").expect("valid");
        let run_id = RunId::parse("r").expect("valid");
        for (seq, event) in events.into_iter().enumerate() {
            let original = frame(seq as u64, Some(seq), Some("solve"), event);
            let stored = encode(&run_id, &original);
            assert_eq!(stored.kind, original.kind.as_str());
            assert_eq!(decode(&thread_id, &stored).expect("reads back"), original);
        }
    }

    #[test]
    fn a_damaged_or_mislabelled_frame_is_refused() {
        let thread_id = ThreadId::parse("t").expect("valid");
        let run_id = RunId::parse("r").expect("valid");
        let mut stored = encode(&run_id, &frame(0, None, None, Event::Done));
        stored.kind = "token".to_owned();
        assert!(decode(&thread_id, &stored).is_err(), "the kind column must match the event");
        stored.data = "{".to_owned();
        assert!(decode(&thread_id, &stored).is_err());
    }
}
