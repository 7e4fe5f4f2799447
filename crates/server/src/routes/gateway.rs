//! `POST /v1/chat/completions`: the metered LLM gateway (issue 13), OpenAI-compatible, so the
//! official SDKs work against it unchanged. This slice serves non-streaming calls:
//!
//! 1. The caller's gateway key (`Authorization: Bearer cg_…`) names the account that pays.
//! 2. The call's worst case is held before anything is forwarded: the input bound
//!    (`gateway::bound`, no tokenizer) at the model's input price plus the output cap (the
//!    request's `max_completion_tokens` / `max_tokens`, or the catalog's default) at its output
//!    price. Short of credits: `402 insufficient_credits`, nothing forwarded.
//! 3. The request goes upstream with its output cap forced to what is held, so usage above the
//!    hold is impossible by construction.
//! 4. The upstream's `usage` is captured (`final`; the rest goes back). An answer without usage
//!    is settled at the worst case (the upstream did produce an answer); an upstream error, a
//!    timeout or an answer that is not JSON releases the hold.
//!
//! Steps 3 and 4 run in a task of their own, so a client that disconnects mid-call never strands
//! the hold: the call is settled or released whatever the client does.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ledger::{Amount, Command, HoldId, Outcome, Overage, Rejection};
use pricing::catalog::TokenPrices;
use serde_json::{json, Value};
use store::api_keys::ApiKey;
use store::Request;

use crate::dto::{OpenAiError, OpenAiErrorResponse};
use crate::routes::api_keys::{key_hash, KEY_PREFIX};
use crate::routes::new_hold_id;
use crate::state::AppState;

/// The largest request body: an agent's context is larger than the API's other bodies.
pub const REQUEST_BYTES_MAX: usize = 1024 * 1024;
/// The most bytes of an upstream answer read.
pub const UPSTREAM_ANSWER_BYTES_MAX: usize = 16 * 1024 * 1024;
/// How long a call's hold lives beyond the upstream timeout: it is settled long before.
const HOLD_MARGIN_SECONDS: u64 = 60;

/// Where the gateway forwards: the configured OpenAI-compatible upstream.
#[derive(Clone, Debug)]
pub struct GatewayUpstream {
    /// Up to, not including, `/chat/completions`.
    pub base_url: String,
    /// Sent as `Authorization: Bearer …`.
    pub api_key: Option<String>,
    pub timeout_seconds: u64,
}

/// An error in OpenAI's shape.
#[derive(Debug)]
pub struct GatewayError {
    status: StatusCode,
    body: OpenAiError,
}

impl GatewayError {
    fn new(status: StatusCode, error_type: &str, code: &str, message: impl Into<String>) -> GatewayError {
        GatewayError {
            status,
            body: OpenAiError {
                message: message.into(),
                error_type: error_type.to_owned(),
                param: None,
                code: code.to_owned(),
                required: None,
                available: None,
            },
        }
    }

    fn invalid(code: &str, message: impl Into<String>) -> GatewayError {
        GatewayError::new(StatusCode::BAD_REQUEST, "invalid_request_error", code, message)
    }

    fn unauthorized(message: &str) -> GatewayError {
        GatewayError::new(StatusCode::UNAUTHORIZED, "authentication_error", "invalid_api_key", message)
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(OpenAiErrorResponse { error: self.body })).into_response()
    }
}

impl From<store::StoreError> for GatewayError {
    fn from(error: store::StoreError) -> GatewayError {
        tracing::error!(%error, "the gateway's store call failed");
        GatewayError::new(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", "store_unavailable", "try again")
    }
}

/// Create a chat completion, metered: OpenAI's Chat Completions protocol (non-streaming),
/// authenticated with a gateway key; errors in OpenAI's shape.
#[utoipa::path(
    post, path = "/v1/chat/completions", tag = "gateway",
    request_body(content = Object, description = "An OpenAI Chat Completions request"),
    responses(
        (status = 200, description = "The upstream's completion, as it answered"),
        (status = 400, body = OpenAiErrorResponse),
        (status = 401, body = OpenAiErrorResponse),
        (status = 402, description = "insufficient_credits: nothing was forwarded", body = OpenAiErrorResponse),
        (status = 403, body = OpenAiErrorResponse),
        (status = 404, description = "model_not_found", body = OpenAiErrorResponse),
        (status = 422, description = "max_tokens_too_large", body = OpenAiErrorResponse),
        (status = 502, description = "the upstream failed; the hold was released", body = OpenAiErrorResponse),
        (status = 503, description = "gateway_disabled (no upstream configured)", body = OpenAiErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn chat_completions(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(rejection) => {
            let status = rejection.status();
            let code = if status == StatusCode::PAYLOAD_TOO_LARGE { "payload_too_large" } else { "invalid_body" };
            return GatewayError::new(status, "invalid_request_error", code, rejection.body_text()).into_response();
        }
    };
    match complete(state, &headers, &body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<ApiKey, GatewayError> {
    let text = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| token.starts_with(KEY_PREFIX))
        .ok_or_else(|| GatewayError::unauthorized("an Authorization: Bearer cg_… gateway key is required"))?;
    let key = state.store.api_key_by_hash(&key_hash(text)).await?;
    match key {
        Some(key) if key.revoked_at.is_none() => Ok(key),
        Some(_) => Err(GatewayError::unauthorized("this key was revoked")),
        None => Err(GatewayError::unauthorized("unknown key")),
    }
}

/// What a request asks for once checked: its model's prices, its output cap and its worst case.
struct Priced {
    prices: TokenPrices,
    output_tokens_max: u64,
    worst_case: Amount,
}

fn price(request: &mut Value, prices: TokenPrices) -> Result<Priced, GatewayError> {
    if let Some(n) = request.get("n").filter(|n| !n.is_null()) {
        if n.as_u64() != Some(1) {
            let error = GatewayError::invalid("unsupported_parameter", "n: the gateway serves one completion per call");
            return Err(error);
        }
    }
    if request.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err(GatewayError::invalid("unsupported_parameter", "stream: streaming is not served yet"));
    }
    let asked = ["max_completion_tokens", "max_tokens"]
        .into_iter()
        .find_map(|field| request.get(field).filter(|value| !value.is_null()).map(|value| (field, value.clone())));
    let (field, output_tokens_max) = match asked {
        None => ("max_tokens", u64::from(prices.default_max_output_tokens)),
        Some((field, value)) => {
            let tokens = value
                .as_u64()
                .filter(|tokens| *tokens >= 1)
                .ok_or_else(|| GatewayError::invalid("invalid_value", format!("{field}: a positive integer")))?;
            if tokens > u64::from(prices.max_output_tokens) {
                return Err(GatewayError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_request_error",
                    "max_tokens_too_large",
                    format!("{field}: this model answers at most {} tokens", prices.max_output_tokens),
                ));
            }
            (field, tokens)
        }
    };
    // The cap forced upstream is the one held for.
    if let Some(object) = request.as_object_mut() {
        object.insert(field.to_owned(), json!(output_tokens_max));
    }
    let input_tokens_max = gateway::bound::input_tokens_max(request)
        .map_err(|error| GatewayError::invalid("invalid_messages", error.to_string()))?;
    let worst_case = prices
        .cost(input_tokens_max, output_tokens_max)
        .ok_or_else(|| GatewayError::invalid("request_too_large", "the call's worst case is beyond any account"))?;
    Ok(Priced { prices, output_tokens_max, worst_case })
}

async fn complete(state: AppState, headers: &HeaderMap, body: &[u8]) -> Result<Response, GatewayError> {
    let key = authenticate(&state, headers).await?;
    let upstream = state.config.gateway_upstream.clone().ok_or_else(|| {
        GatewayError::new(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", "gateway_disabled", "no upstream")
    })?;
    let mut request: Value = serde_json::from_slice(body)
        .map_err(|error| GatewayError::invalid("invalid_json", format!("the body is not JSON: {error}")))?;
    if !request.is_object() {
        return Err(GatewayError::invalid("invalid_json", "the body is a JSON object"));
    }
    let model = request.get("model").and_then(Value::as_str).unwrap_or_default().to_owned();
    let catalog = state.catalog.as_ref().map(|catalog| catalog.current()).ok_or_else(|| {
        GatewayError::new(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", "gateway_disabled", "no catalog")
    })?;
    let prices = *catalog.gateway_model(&model).ok_or_else(|| {
        GatewayError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "model_not_found",
            format!("the gateway serves no model {model:?}"),
        )
    })?;
    if !key.allows_model(&model) {
        let message = format!("this key may not call {model:?}");
        return Err(GatewayError::new(StatusCode::FORBIDDEN, "permission_error", "model_not_allowed", message));
    }
    let priced = price(&mut request, prices)?;
    let hold_id = new_hold_id();
    let metadata =
        json!({"gateway": {"model": model, "key_id": key.key_id.as_str(), "catalog_version": catalog.version()}});
    let hold = Command::Hold {
        account_id: key.account_id.clone(),
        hold_id: hold_id.clone(),
        amount: priced.worst_case,
        ttl_seconds: upstream.timeout_seconds + HOLD_MARGIN_SECONDS,
        reference: None,
        metadata: metadata.to_string(),
    };
    match state.store.execute(Request::new(hold)).await? {
        store::Executed::Fresh(Ok(Outcome::Held { .. })) => {}
        store::Executed::Fresh(Err(Rejection::InsufficientCredits { required, available })) => {
            let mut error = GatewayError::new(
                StatusCode::PAYMENT_REQUIRED,
                "insufficient_quota",
                "insufficient_credits",
                format!("this call may cost up to {required} credits; the account has {available}"),
            );
            error.body.required = Some(required.to_string());
            error.body.available = Some(available.to_string());
            return Err(error);
        }
        store::Executed::Fresh(Err(Rejection::AccountNotFound)) => {
            let mut error = GatewayError::new(
                StatusCode::PAYMENT_REQUIRED,
                "insufficient_quota",
                "insufficient_credits",
                "the account has no credits",
            );
            error.body.required = Some(priced.worst_case.to_string());
            error.body.available = Some(Amount::ZERO.to_string());
            return Err(error);
        }
        other => {
            tracing::error!(?other, "the gateway's hold had an unexpected outcome");
            return Err(GatewayError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal", "try again"));
        }
    }
    // Its own task: the call is settled or released even if this request's client goes away.
    let settle = tokio::spawn(forward_and_settle(state, upstream, request, hold_id, priced));
    settle.await.unwrap_or_else(|error| {
        tracing::error!(%error, "a gateway call's task failed");
        Err(GatewayError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal", "try again"))
    })
}

async fn forward_and_settle(
    state: AppState,
    upstream: GatewayUpstream,
    request: Value,
    hold_id: HoldId,
    priced: Priced,
) -> Result<Response, GatewayError> {
    let url = format!("{}/chat/completions", upstream.base_url.trim_end_matches('/'));
    let mut call = state.gateway_client.post(url).timeout(Duration::from_secs(upstream.timeout_seconds)).json(&request);
    if let Some(api_key) = &upstream.api_key {
        call = call.bearer_auth(api_key);
    }
    let started = std::time::Instant::now();
    let answered = match call.send().await {
        Ok(response) => read_capped(response).await,
        Err(error) => Err(format!("no answer: {error}")),
    };
    let (status, bytes) = match answered {
        Ok(answer) => answer,
        Err(detail) => {
            release(&state, &hold_id).await;
            let error = GatewayError::new(StatusCode::BAD_GATEWAY, "upstream_error", "upstream_unreachable", detail);
            return Err(error);
        }
    };
    if !status.is_success() {
        release(&state, &hold_id).await;
        let detail = format!(
            "the upstream answered {}: {}",
            status.as_u16(),
            String::from_utf8_lossy(&bytes[..bytes.len().min(500)])
        );
        return Err(GatewayError::new(StatusCode::BAD_GATEWAY, "upstream_error", "upstream_error", detail));
    }
    let Ok(answer) = serde_json::from_slice::<Value>(&bytes) else {
        release(&state, &hold_id).await;
        let error = GatewayError::new(StatusCode::BAD_GATEWAY, "upstream_error", "upstream_invalid_answer", "not JSON");
        return Err(error);
    };
    let usage = answer.get("usage");
    let tokens = |field: &str| usage.and_then(|usage| usage.get(field)).and_then(Value::as_u64);
    let cost = match (tokens("prompt_tokens"), tokens("completion_tokens")) {
        (Some(prompt), Some(completion)) => {
            if completion > priced.output_tokens_max {
                tracing::error!(
                    completion,
                    cap = priced.output_tokens_max,
                    "the upstream answered beyond the forced cap"
                );
            }
            let cost = priced.prices.cost(prompt, completion).unwrap_or(priced.worst_case);
            if cost > priced.worst_case {
                // The input bound is an upper bound by construction; if an upstream ever counts
                // more, the caller is charged what was held, never more.
                tracing::error!(prompt, completion, %cost, held = %priced.worst_case, "a call's usage exceeded its bound");
            }
            cost.min(priced.worst_case)
        }
        // A 2xx answer without usage: the upstream produced an answer of unknown size.
        _ => priced.worst_case,
    };
    let capture = Command::Capture { hold_id: hold_id.clone(), amount: cost, is_final: true, overage: Overage::Reject };
    match state.store.execute(Request::new(capture)).await {
        Ok(store::Executed::Fresh(Ok(_))) => {}
        other => tracing::error!(?other, hold = %hold_id, "a gateway call's capture failed"),
    }
    tracing::info!(hold = %hold_id, %cost, latency_ms = started.elapsed().as_millis() as u64, "gateway call settled");
    let mut response = (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], bytes).into_response();
    if let Ok(value) = HeaderValue::from_str(hold_id.as_str()) {
        response.headers_mut().insert("x-creditgraph-hold-id", value);
    }
    if let Ok(value) = HeaderValue::from_str(&cost.to_string()) {
        response.headers_mut().insert("x-creditgraph-cost", value);
    }
    Ok(response)
}

/// The answer's status and at most [`UPSTREAM_ANSWER_BYTES_MAX`] bytes of its body.
async fn read_capped(response: reqwest::Response) -> Result<(StatusCode, Vec<u8>), String> {
    use futures::StreamExt;
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| format!("the answer broke off: {error}"))?;
        if body.len() + chunk.len() > UPSTREAM_ANSWER_BYTES_MAX {
            return Err(format!("the answer is larger than {UPSTREAM_ANSWER_BYTES_MAX} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, body))
}

async fn release(state: &AppState, hold_id: &HoldId) {
    match state.store.execute(Request::new(Command::Release { hold_id: hold_id.clone() })).await {
        Ok(store::Executed::Fresh(Ok(_))) => {}
        other => {
            tracing::error!(?other, hold = %hold_id, "a gateway call's release failed; the hold expires on its own")
        }
    }
}
