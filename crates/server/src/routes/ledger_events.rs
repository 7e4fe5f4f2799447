//! `GET /v1/events`: the event outbox for clients that prefer pulling to webhooks.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use store::events::{StoredEvent, EVENTS_PAGE_MAX};

use crate::dto::{LedgerEventData, LedgerEventResponse, LedgerEventsQuery, LedgerEventsResponse, Problem};
use crate::error::ApiError;
use crate::extract::{ApiQuery, RequireService};
use crate::routes::json;
use crate::state::AppState;

/// Page size when the request names none.
const EVENTS_LIMIT_DEFAULT: u32 = 100;

/// An event for the wire (and for webhook bodies).
pub fn event_response(event: &StoredEvent) -> LedgerEventResponse {
    LedgerEventResponse {
        id: event.event_id(),
        event_type: event.event.event_type.as_str().to_owned(),
        timestamp: store::events::rfc3339(event.event.at),
        account_id: event.event.account_id.to_string(),
        // The store wrote it from `store::events`; a payload that does not read keeps the
        // account and is logged, rather than failing the whole page.
        data: serde_json::from_str(&event.event.data).unwrap_or_else(|error| {
            tracing::error!(event = %event.event_id(), %error, "an event payload does not read");
            LedgerEventData { account_id: event.event.account_id.to_string(), ..LedgerEventData::default() }
        }),
        cursor: event.position.to_string(),
    }
}

/// The ledger's events in the order they became readable, one page at a time. Every event is
/// listed once; one appears only after the transaction that wrote it committed.
#[utoipa::path(
    get, path = "/v1/events", tag = "events",
    params(LedgerEventsQuery),
    responses(
        (status = 200, body = LedgerEventsResponse),
        (status = 422, description = "invalid_request", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list_events(
    State(state): State<AppState>,
    _auth: RequireService,
    ApiQuery(query): ApiQuery<LedgerEventsQuery>,
) -> Result<Response, ApiError> {
    let limit = query.limit.unwrap_or(EVENTS_LIMIT_DEFAULT);
    if !(1..=EVENTS_PAGE_MAX).contains(&limit) {
        return Err(ApiError::invalid_request(format!("limit: must be between 1 and {EVENTS_PAGE_MAX}")));
    }
    let after = match query.after.as_deref() {
        None => 0,
        Some(cursor) => {
            cursor.parse::<u128>().map_err(|_| ApiError::invalid_request("after: not a cursor this API returned"))?
        }
    };
    let events = state.store.events(after, limit).await?;
    let next = events.last().map_or(after, |event| event.position).to_string();
    Ok(json(StatusCode::OK, LedgerEventsResponse { events: events.iter().map(event_response).collect(), next }))
}

#[cfg(test)]
mod tests {
    use ledger::{AccountId, HoldId, Timestamp};
    use store::{HoldResolution, JobStatus, RunId, RunRecord, RunState, ThreadId};

    use super::*;

    fn stored(event: store::events::NewEvent) -> StoredEvent {
        StoredEvent { seq: 7, position: 7, created_at: event.at, event }
    }

    /// The run and job payloads read into the typed wire payload whole (the ledger's are read
    /// by the API tests).
    #[test]
    fn run_and_job_payloads_read_into_the_typed_data() {
        let now = Timestamp::from_micros(1_700_000_000_000_000);
        let run = RunRecord {
            run_id: RunId::parse("r1").expect("valid"),
            account_id: AccountId::parse("u").expect("valid"),
            thread_id: ThreadId::parse("t1").expect("valid"),
            turn_index: 0,
            state: RunState::Canceled,
            instance_id: "i".to_owned(),
            hold_id: Some(HoldId::parse("h1").expect("valid")),
            hold_resolution: HoldResolution::Resolved,
            created_at: now,
            updated_at: now,
            data: "{}".to_owned(),
        };
        let event = event_response(&stored(store::events::run_event(&run).expect("an ended run")));
        assert_eq!(event.event_type, "run.failed");
        assert_eq!((event.data.run_id.as_deref(), event.data.state.as_deref()), (Some("r1"), Some("canceled")));
        assert_eq!(event.data.hold_id.as_deref(), Some("h1"));

        let job = store::JobRecord {
            status: JobStatus::Failed,
            refund_applied_at: Some(now),
            error_code: Some("render_failed".to_owned()),
            ..store::conformance::jobs::queued_job("j1", "t1", now)
        };
        let event = event_response(&stored(store::events::job_event(&job).expect("an ended job")));
        assert_eq!(event.event_type, "job.failed");
        assert_eq!((event.data.job_id.as_deref(), event.data.refunded), (Some("j1"), Some(true)));
        assert_eq!(event.data.error_code.as_deref(), Some("render_failed"));
        assert_eq!(event.id, "evt_7");
    }
}
