//! `GET /v1/events`: the event outbox for clients that prefer pulling to webhooks.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use store::events::{StoredEvent, EVENTS_PAGE_MAX};

use crate::dto::{LedgerEventResponse, LedgerEventsQuery, LedgerEventsResponse, Problem};
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
        data: serde_json::from_str(&event.event.data).unwrap_or(serde_json::Value::Null),
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
