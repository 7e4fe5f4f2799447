//! Webhook endpoints (admin): create (the signing secret is shown once), list, read, disable,
//! enable, rotate the secret, replay. Delivery itself is the dispatcher's (`crates/webhooks`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use store::events::EventType;
use store::webhooks::{Endpoint, EndpointChange, DESCRIPTION_BYTES_MAX, ENDPOINTS_MAX};
use store::EndpointId;
use webhooks::destination::{Destination, DestinationError};
use webhooks::signature::SigningSecret;

use crate::dto::{
    Problem, WebhookEndpointRequest, WebhookEndpointResponse, WebhookEndpointsResponse, WebhookReplayRequest,
    WebhookReplayResponse,
};
use crate::error::ApiError;
use crate::extract::{ApiPath, IdempotencyKey, JsonBody, RequireAdmin};
use crate::routes::{json, respond_once};
use crate::state::AppState;
use crate::wire::{parse_id, parse_time};

fn endpoint_response(endpoint: &Endpoint, secret: Option<String>) -> WebhookEndpointResponse {
    let time = store::events::rfc3339;
    WebhookEndpointResponse {
        endpoint_id: endpoint.endpoint_id.to_string(),
        url: endpoint.url.clone(),
        events: endpoint.event_types.iter().map(|event_type| event_type.as_str().to_owned()).collect(),
        description: endpoint.description.clone(),
        created_at: time(endpoint.created_at),
        disabled_at: endpoint.disabled.map(|disabled| time(disabled.at)),
        disabled_reason: endpoint.disabled.map(|disabled| disabled.reason.as_str().to_owned()),
        failing_since: endpoint.failing_since.map(time),
        secret,
    }
}

fn endpoint_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "webhook_endpoint_not_found", "no such webhook endpoint")
}

/// The event types a request names: each known, at least one; kept in catalogue order, once.
fn parse_event_types(names: &[String]) -> Result<Vec<EventType>, ApiError> {
    if names.is_empty() {
        return Err(ApiError::invalid_request("events: name at least one event type"));
    }
    let mut wanted = Vec::new();
    for name in names {
        let event_type = EventType::parse(name).ok_or_else(|| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_event_type",
                format!("events: no event type {name:?}"),
            )
        })?;
        wanted.push(event_type);
    }
    Ok(EventType::ALL.into_iter().filter(|event_type| wanted.contains(event_type)).collect())
}

/// The URL, checked as the dispatcher will check it before every delivery.
async fn check_destination(state: &AppState, url: &str) -> Result<Destination, ApiError> {
    let destination = Destination::parse(url).map_err(|error| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_webhook_url", format!("url: {error}"))
    })?;
    match destination.resolve(state.config.webhooks_reach).await {
        Ok(_) => Ok(destination),
        Err(error @ (DestinationError::NotPublic(_) | DestinationError::Unresolved(_))) => {
            Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "webhook_destination_refused", format!("url: {error}")))
        }
        Err(error @ DestinationError::Malformed(_)) => {
            Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_webhook_url", format!("url: {error}")))
        }
    }
}

/// Create a webhook endpoint. The answer carries its signing secret (`whsec_…`), the only time
/// it is shown. The endpoint receives the events of changes that commit after it exists.
#[utoipa::path(
    post, path = "/v1/webhook-endpoints", tag = "webhooks",
    request_body = WebhookEndpointRequest,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses(
        (status = 201, body = WebhookEndpointResponse),
        (status = 409, description = "webhook_endpoint_limit (100 endpoints), idempotency_conflict", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_webhook_url, webhook_destination_refused, unknown_event_type, invalid_request", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn create_endpoint(
    State(state): State<AppState>,
    _auth: RequireAdmin,
    key: IdempotencyKey,
    body: JsonBody<WebhookEndpointRequest>,
) -> Result<Response, ApiError> {
    let request = &body.value;
    let event_types = parse_event_types(&request.events)?;
    if request.description.as_ref().is_some_and(|text| text.len() > DESCRIPTION_BYTES_MAX) {
        return Err(ApiError::invalid_request(format!("description: at most {DESCRIPTION_BYTES_MAX} bytes")));
    }
    let destination = check_destination(&state, &request.url).await?;
    let create = || async {
        if state.store.webhook_endpoints().await?.len() >= ENDPOINTS_MAX {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "webhook_endpoint_limit",
                format!("at most {ENDPOINTS_MAX} webhook endpoints (disabled ones included)"),
            ));
        }
        let secret = SigningSecret::generate().reveal();
        let endpoint = Endpoint {
            endpoint_id: EndpointId::generate(),
            url: destination.url().to_string(),
            event_types,
            description: request.description.clone(),
            secret: secret.clone(),
            previous_secret: None,
            created_at: state.clock.now(),
            disabled: None,
            failing_since: None,
            position: 0,
        };
        let created = state.store.create_webhook_endpoint(&endpoint).await?;
        let body =
            serde_json::to_string(&endpoint_response(&created, Some(secret))).map_err(|_| ApiError::internal())?;
        Ok((StatusCode::CREATED, body))
    };
    match &state.engine {
        Some(engine) => {
            let fingerprint = body.fingerprint(None)?;
            respond_once(engine.run_store().as_ref(), &key, fingerprint, create).await
        }
        None => {
            let (status, body) = create().await?;
            Ok((status, [(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response())
        }
    }
}

/// Every webhook endpoint, in id order (secrets are never listed).
#[utoipa::path(
    get, path = "/v1/webhook-endpoints", tag = "webhooks",
    responses((status = 200, body = WebhookEndpointsResponse)),
    security(("bearer" = []))
)]
pub async fn list_endpoints(State(state): State<AppState>, _auth: RequireAdmin) -> Result<Response, ApiError> {
    let endpoints = state.store.webhook_endpoints().await?;
    let endpoints = endpoints.iter().map(|endpoint| endpoint_response(endpoint, None)).collect();
    Ok(json(StatusCode::OK, WebhookEndpointsResponse { endpoints }))
}

fn parse_endpoint_id(text: &str) -> Result<EndpointId, ApiError> {
    parse_id("endpoint_id", text, EndpointId::parse)
}

/// One webhook endpoint.
#[utoipa::path(
    get, path = "/v1/webhook-endpoints/{endpoint_id}", tag = "webhooks",
    params(("endpoint_id" = String, Path)),
    responses(
        (status = 200, body = WebhookEndpointResponse),
        (status = 404, description = "webhook_endpoint_not_found", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_endpoint(
    State(state): State<AppState>,
    _auth: RequireAdmin,
    ApiPath(endpoint_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let endpoint_id = parse_endpoint_id(&endpoint_id)?;
    let endpoints = state.store.webhook_endpoints().await?;
    let endpoint =
        endpoints.iter().find(|endpoint| endpoint.endpoint_id == endpoint_id).ok_or_else(endpoint_not_found)?;
    Ok(json(StatusCode::OK, endpoint_response(endpoint, None)))
}

async fn change(state: &AppState, endpoint_id: &str, change: EndpointChange) -> Result<Endpoint, ApiError> {
    let endpoint_id = parse_endpoint_id(endpoint_id)?;
    let changed = state.store.change_webhook_endpoint(&endpoint_id, &change, state.clock.now()).await?;
    changed.ok_or_else(endpoint_not_found)
}

/// Stop deliveries to an endpoint; events keep being recorded for it and go out once it is
/// enabled again (within their 3-day window). Disabling it again changes nothing.
#[utoipa::path(
    post, path = "/v1/webhook-endpoints/{endpoint_id}/disable", tag = "webhooks",
    params(("endpoint_id" = String, Path)),
    responses(
        (status = 200, body = WebhookEndpointResponse),
        (status = 404, description = "webhook_endpoint_not_found", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn disable_endpoint(
    State(state): State<AppState>,
    _auth: RequireAdmin,
    ApiPath(endpoint_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let endpoint = change(&state, &endpoint_id, EndpointChange::Disable).await?;
    Ok(json(StatusCode::OK, endpoint_response(&endpoint, None)))
}

/// Resume deliveries to an endpoint (also one disabled for failing a day).
#[utoipa::path(
    post, path = "/v1/webhook-endpoints/{endpoint_id}/enable", tag = "webhooks",
    params(("endpoint_id" = String, Path)),
    responses(
        (status = 200, body = WebhookEndpointResponse),
        (status = 404, description = "webhook_endpoint_not_found", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn enable_endpoint(
    State(state): State<AppState>,
    _auth: RequireAdmin,
    ApiPath(endpoint_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let endpoint = change(&state, &endpoint_id, EndpointChange::Enable).await?;
    Ok(json(StatusCode::OK, endpoint_response(&endpoint, None)))
}

/// A new signing secret, shown once. For 24 hours deliveries carry signatures with both the new
/// and the previous secret, so receivers switch without losing any.
#[utoipa::path(
    post, path = "/v1/webhook-endpoints/{endpoint_id}/rotate-secret", tag = "webhooks",
    params(("endpoint_id" = String, Path)),
    responses(
        (status = 200, body = WebhookEndpointResponse),
        (status = 404, description = "webhook_endpoint_not_found", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn rotate_secret(
    State(state): State<AppState>,
    _auth: RequireAdmin,
    ApiPath(endpoint_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let secret = SigningSecret::generate().reveal();
    let endpoint = change(&state, &endpoint_id, EndpointChange::RotateSecret(secret.clone())).await?;
    Ok(json(StatusCode::OK, endpoint_response(&endpoint, Some(secret))))
}

/// Deliver again the events the endpoint wants that were written at or after `since` (and
/// before the endpoint's newest delivery), each as a new delivery with a new 3-day window —
/// delivered ones included. At most 10,000, the oldest first.
#[utoipa::path(
    post, path = "/v1/webhook-endpoints/{endpoint_id}/replay", tag = "webhooks",
    params(("endpoint_id" = String, Path)),
    request_body = WebhookReplayRequest,
    responses(
        (status = 200, body = WebhookReplayResponse),
        (status = 404, description = "webhook_endpoint_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn replay(
    State(state): State<AppState>,
    _auth: RequireAdmin,
    ApiPath(endpoint_id): ApiPath<String>,
    body: JsonBody<WebhookReplayRequest>,
) -> Result<Response, ApiError> {
    let endpoint_id = parse_endpoint_id(&endpoint_id)?;
    let since = parse_time("since", &body.value.since)?;
    let replayed = state.store.replay_webhook_events(&endpoint_id, since, state.clock.now()).await?;
    let replayed = replayed.ok_or_else(endpoint_not_found)?;
    Ok(json(StatusCode::OK, WebhookReplayResponse { replayed }))
}
