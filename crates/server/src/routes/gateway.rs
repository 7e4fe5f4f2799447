//! `POST /v1/chat/completions`: the metered LLM gateway (issue 13), OpenAI-compatible, so the
//! official SDKs work against it unchanged:
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
//!    timeout or an answer that is not JSON releases the hold. A streamed answer is relayed
//!    chunk by chunk and settled from its usage chunk (the gateway asks for one); a stream that
//!    ends without usage is settled at the worst case if it carried output, else released.
//!
//! Steps 3 and 4 run in a task of their own, so a client that disconnects mid-call never strands
//! the hold: the call is settled or released whatever the client does.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

use ledger::{Amount, Command, HoldId, HoldState, Outcome, Overage, Rejection};
use pricing::catalog::TokenPrices;
use serde_json::{json, Value};
use store::api_keys::{ApiKey, CallSettlement, GatewayCall};
use store::Request;

use crate::dto::{
    ChatCompletionRequest, ChatCompletionResponse, ModelEntry, ModelsResponse, OpenAiError, OpenAiErrorResponse,
};
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
    /// Boxed: errors travel in `Result`s on every path, and the body is large.
    body: Box<OpenAiError>,
}

impl GatewayError {
    fn new(status: StatusCode, error_type: &str, code: &str, message: impl Into<String>) -> GatewayError {
        GatewayError {
            status,
            body: Box::new(OpenAiError {
                message: message.into(),
                error_type: error_type.to_owned(),
                param: None,
                code: code.to_owned(),
                required: None,
                available: None,
                remaining: None,
            }),
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
        (self.status, axum::Json(OpenAiErrorResponse { error: *self.body })).into_response()
    }
}

impl From<store::StoreError> for GatewayError {
    fn from(error: store::StoreError) -> GatewayError {
        tracing::error!(%error, "the gateway's store call failed");
        GatewayError::new(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", "store_unavailable", "try again")
    }
}

/// Create a chat completion, metered: OpenAI's Chat Completions protocol (streamed or not),
/// authenticated with a gateway key; errors in OpenAI's shape.
#[utoipa::path(
    post, path = "/v1/chat/completions", tag = "gateway",
    request_body = ChatCompletionRequest,
    responses(
        (status = 200, description = "The upstream's completion, as it answered (or, with `stream: true`, its server-sent events)", body = ChatCompletionResponse),
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

/// The models the caller's gateway key may call, in OpenAI's list shape.
#[utoipa::path(
    get, path = "/v1/models", tag = "gateway",
    responses(
        (status = 200, body = ModelsResponse),
        (status = 401, body = OpenAiErrorResponse),
    ),
    security(("bearer" = []))
)]
pub async fn list_models(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let key = match authenticate(&state, &headers).await {
        Ok(key) => key,
        Err(error) => return error.into_response(),
    };
    let catalog = state.catalog.as_ref().map(|catalog| catalog.current());
    let data: Vec<ModelEntry> = catalog
        .iter()
        .flat_map(|catalog| catalog.gateway_models().map(|(name, _)| name.to_owned()).collect::<Vec<_>>())
        .filter(|name| key.allows_model(name))
        .map(|id| ModelEntry { id, object: "model".to_owned(), created: 0, owned_by: "creditgraph".to_owned() })
        .collect();
    axum::Json(ModelsResponse { object: "list".to_owned(), data }).into_response()
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

/// What a request asks for once checked: its model's prices, its output cap, its worst case and
/// whether the answer streams.
struct Priced {
    prices: TokenPrices,
    output_tokens_max: u64,
    worst_case: Amount,
    streams: bool,
}

fn price(request: &mut Value, prices: TokenPrices) -> Result<Priced, GatewayError> {
    if let Some(n) = request.get("n").filter(|n| !n.is_null()) {
        if n.as_u64() != Some(1) {
            let error = GatewayError::invalid("unsupported_parameter", "n: the gateway serves one completion per call");
            return Err(error);
        }
    }
    let streams = request.get("stream").and_then(Value::as_bool) == Some(true);
    if streams {
        // The usage chunk is what a streamed call is settled from.
        if let Some(object) = request.as_object_mut() {
            let options = object.entry("stream_options").or_insert_with(|| json!({}));
            if let Some(options) = options.as_object_mut() {
                options.insert("include_usage".to_owned(), json!(true));
            } else {
                *options = json!({"include_usage": true});
            }
        }
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
    Ok(Priced { prices, output_tokens_max, worst_case, streams })
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
    if let Some(limit) = key.daily_limit {
        // Calls in flight are not counted: concurrent calls can pass the limit by their worst cases.
        let (_, day_start) = store::api_keys::utc_day(state.clock.now());
        let spent = state.store.key_spent_since(&key.key_id, day_start).await?;
        let left = limit.checked_sub(spent).unwrap_or(Amount::ZERO);
        if priced.worst_case > left {
            let mut error = GatewayError::new(
                StatusCode::PAYMENT_REQUIRED,
                "insufficient_quota",
                "key_daily_limit",
                format!("this call may cost up to {} credits; the key has {left} left today (UTC)", priced.worst_case),
            );
            error.body.required = Some(priced.worst_case.to_string());
            error.body.remaining = Some(left.to_string());
            return Err(error);
        }
    }
    let payer = match headers.get(RUN_HOLD_HEADER) {
        None => take_own_hold(&state, &key, &model, catalog.version(), &upstream, &priced).await?,
        Some(value) => draw_from_run_hold(&state, &key, value, &priced).await?,
    };
    let payer = Payer {
        call: Some(CallInfo {
            key_id: key.key_id.clone(),
            account_id: key.account_id.clone(),
            model: model.clone(),
            catalog_version: catalog.version().to_owned(),
            worst_case: priced.worst_case,
            started: std::time::Instant::now(),
        }),
        ..payer
    };
    // Its own task: the call is settled or released even if this request's client goes away.
    let settle = tokio::spawn(forward_and_settle(state, upstream, request, payer, priced));
    settle.await.unwrap_or_else(|error| {
        tracing::error!(%error, "a gateway call's task failed");
        Err(GatewayError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal", "try again"))
    })
}

/// Holds a call's worst case on its own hold (settled `final`, released on failure).
async fn take_own_hold(
    state: &AppState,
    key: &ApiKey,
    model: &str,
    catalog_version: &str,
    upstream: &GatewayUpstream,
    priced: &Priced,
) -> Result<Payer, GatewayError> {
    let account_id = &key.account_id;
    let hold_id = new_hold_id();
    let metadata =
        json!({"gateway": {"model": model, "key_id": key.key_id.as_str(), "catalog_version": catalog_version}});
    let hold = Command::Hold {
        account_id: account_id.clone(),
        hold_id: hold_id.clone(),
        amount: priced.worst_case,
        ttl_seconds: upstream.timeout_seconds + HOLD_MARGIN_SECONDS,
        reference: None,
        metadata: metadata.to_string(),
    };
    match state.store.execute(Request::new(hold)).await? {
        store::Executed::Fresh(Ok(Outcome::Held { .. })) => {
            Ok(Payer { hold_id, own: true, _reservation: None, call: None })
        }
        store::Executed::Fresh(Err(Rejection::InsufficientCredits { required, available })) => {
            let mut error = GatewayError::new(
                StatusCode::PAYMENT_REQUIRED,
                "insufficient_quota",
                "insufficient_credits",
                format!("this call may cost up to {required} credits; the account has {available}"),
            );
            error.body.required = Some(required.to_string());
            error.body.available = Some(available.to_string());
            Err(error)
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
            Err(error)
        }
        other => {
            tracing::error!(?other, "the gateway's hold had an unexpected outcome");
            Err(GatewayError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal", "try again"))
        }
    }
}

/// Draws a call from a run's hold (`X-Creditgraph-Hold`, a pending hold of the key's account):
/// the call's worst case must fit in what the hold has left beside this process's calls in
/// flight on it; the call's cost is captured from it (partial, not final), and nothing is
/// released on failure (the hold stays the run's).
async fn draw_from_run_hold(
    state: &AppState,
    key: &ApiKey,
    value: &HeaderValue,
    priced: &Priced,
) -> Result<Payer, GatewayError> {
    let hold_id = value
        .to_str()
        .ok()
        .and_then(|text| HoldId::parse(text.trim()).ok())
        .ok_or_else(|| GatewayError::invalid("invalid_hold", format!("{RUN_HOLD_HEADER}: not a hold id")))?;
    let not_found =
        || GatewayError::new(StatusCode::NOT_FOUND, "invalid_request_error", "hold_not_found", "no such hold");
    let hold =
        state.store.hold(&hold_id).await?.filter(|hold| hold.account_id == key.account_id).ok_or_else(not_found)?;
    if hold.state != HoldState::Pending || !hold.is_active_at(state.clock.now()) {
        let message = format!("the hold is {}", hold.state.as_str());
        return Err(GatewayError::new(StatusCode::CONFLICT, "invalid_request_error", "hold_not_pending", message));
    }
    let mut draws = state.gateway_draws.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let in_flight = draws.get(&hold_id).copied().unwrap_or(Amount::ZERO);
    let remaining = hold.remaining.checked_sub(in_flight).unwrap_or(Amount::ZERO);
    if priced.worst_case > remaining {
        let mut error = GatewayError::new(
            StatusCode::PAYMENT_REQUIRED,
            "insufficient_quota",
            "insufficient_credits",
            format!("this call may cost up to {} credits; the hold has {remaining} left", priced.worst_case),
        );
        error.body.required = Some(priced.worst_case.to_string());
        error.body.remaining = Some(remaining.to_string());
        return Err(error);
    }
    draws.insert(hold_id.clone(), in_flight.plus(priced.worst_case));
    let reservation =
        Reservation { draws: Arc::clone(&state.gateway_draws), hold_id: hold_id.clone(), amount: priced.worst_case };
    Ok(Payer { hold_id, own: false, _reservation: Some(reservation), call: None })
}

/// A call's worst case counted against a run hold while the call is in flight; uncounted when
/// dropped (after the call settled).
struct Reservation {
    draws: Arc<std::sync::Mutex<std::collections::HashMap<HoldId, Amount>>>,
    hold_id: HoldId,
    amount: Amount,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut draws = self.draws.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(in_flight) = draws.get_mut(&self.hold_id) {
            *in_flight = in_flight.checked_sub(self.amount).unwrap_or(Amount::ZERO);
            if in_flight.is_zero() {
                draws.remove(&self.hold_id);
            }
        }
    }
}

/// Which hold pays for a call, and what the call is (for its record).
struct Payer {
    hold_id: HoldId,
    /// The call's own hold (captured `final`, released on failure), or a run's hold it draws
    /// from (captured partially; never released by the gateway).
    own: bool,
    _reservation: Option<Reservation>,
    call: Option<CallInfo>,
}

/// What a call's record says beside its settlement.
struct CallInfo {
    key_id: store::ApiKeyId,
    account_id: ledger::AccountId,
    model: String,
    catalog_version: String,
    worst_case: Amount,
    started: std::time::Instant,
}

/// How a call ends.
enum Settled {
    /// Charged the upstream's usage.
    Usage { prompt: u64, completion: u64, cost: Amount },
    /// Output without usage: charged the worst case.
    WorstCase,
    /// Nothing charged.
    Released,
}

impl Payer {
    /// Settles the call on its hold and records it (`upstream_status` 0: no answer).
    async fn settle(&self, state: &AppState, settled: Settled, upstream_status: u16) {
        let worst_case = self.call.as_ref().map_or(Amount::ZERO, |call| call.worst_case);
        let (settlement, cost, usage) = match settled {
            Settled::Usage { prompt, completion, cost } => (CallSettlement::Usage, cost, Some((prompt, completion))),
            Settled::WorstCase => (CallSettlement::WorstCase, worst_case, None),
            Settled::Released => (CallSettlement::Released, Amount::ZERO, None),
        };
        match settlement {
            CallSettlement::Released if self.own => release(state, &self.hold_id).await,
            CallSettlement::Released => {}
            CallSettlement::Usage | CallSettlement::WorstCase => capture(state, &self.hold_id, cost, self.own).await,
        }
        let Some(call) = &self.call else { return };
        let record = GatewayCall {
            account_id: call.account_id.clone(),
            key_id: call.key_id.clone(),
            hold_id: self.hold_id.clone(),
            model: call.model.clone(),
            catalog_version: call.catalog_version.clone(),
            prompt_tokens: usage.map(|(prompt, _)| prompt),
            completion_tokens: usage.map(|(_, completion)| completion),
            cost,
            worst_case,
            settlement,
            upstream_status,
            latency_ms: u64::try_from(call.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            at: state.clock.now(),
        };
        // Written after the answer, off its path (one commit less per call): the journal holds
        // the money; a record that fails, or is cut short by a crash, is logged, never retried.
        let store = Arc::clone(&state.store);
        tokio::spawn(async move {
            if let Err(error) = store.record_gateway_call(&record).await {
                tracing::error!(%error, hold = %record.hold_id, "a gateway call's record was not written");
            }
        });
    }
}

async fn forward_and_settle(
    state: AppState,
    upstream: GatewayUpstream,
    request: Value,
    payer: Payer,
    priced: Priced,
) -> Result<Response, GatewayError> {
    let url = format!("{}/chat/completions", upstream.base_url.trim_end_matches('/'));
    let mut call = state.gateway_client.post(url).timeout(Duration::from_secs(upstream.timeout_seconds)).json(&request);
    if let Some(api_key) = &upstream.api_key {
        call = call.bearer_auth(api_key);
    }
    let started = std::time::Instant::now();
    let response = match call.send().await {
        Ok(response) => response,
        Err(error) => {
            payer.settle(&state, Settled::Released, 0).await;
            let detail = format!("no answer: {error}");
            return Err(GatewayError::new(StatusCode::BAD_GATEWAY, "upstream_error", "upstream_unreachable", detail));
        }
    };
    if priced.streams && response.status().is_success() {
        return Ok(relay_stream(state, response, payer, priced));
    }
    let answered = read_capped(response).await;
    let (status, bytes) = match answered {
        Ok(answer) => answer,
        Err(detail) => {
            payer.settle(&state, Settled::Released, 0).await;
            let error = GatewayError::new(StatusCode::BAD_GATEWAY, "upstream_error", "upstream_unreachable", detail);
            return Err(error);
        }
    };
    if !status.is_success() {
        payer.settle(&state, Settled::Released, status.as_u16()).await;
        let detail = format!(
            "the upstream answered {}: {}",
            status.as_u16(),
            String::from_utf8_lossy(&bytes[..bytes.len().min(500)])
        );
        return Err(GatewayError::new(StatusCode::BAD_GATEWAY, "upstream_error", "upstream_error", detail));
    }
    let Ok(answer) = serde_json::from_slice::<Value>(&bytes) else {
        payer.settle(&state, Settled::Released, status.as_u16()).await;
        let error = GatewayError::new(StatusCode::BAD_GATEWAY, "upstream_error", "upstream_invalid_answer", "not JSON");
        return Err(error);
    };
    let usage = answer.get("usage");
    let tokens = |field: &str| usage.and_then(|usage| usage.get(field)).and_then(Value::as_u64);
    let settled = match (tokens("prompt_tokens"), tokens("completion_tokens")) {
        (Some(prompt), Some(completion)) => {
            Settled::Usage { prompt, completion, cost: usage_cost(&priced, prompt, completion) }
        }
        // A 2xx answer without usage: the upstream produced an answer of unknown size.
        _ => Settled::WorstCase,
    };
    let cost = match &settled {
        Settled::Usage { cost, .. } => *cost,
        Settled::WorstCase | Settled::Released => priced.worst_case,
    };
    payer.settle(&state, settled, status.as_u16()).await;
    tracing::debug!(hold = %payer.hold_id, latency_ms = started.elapsed().as_millis() as u64, "gateway call answered");
    let mut response = (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], bytes).into_response();
    if let Ok(value) = HeaderValue::from_str(payer.hold_id.as_str()) {
        response.headers_mut().insert("x-creditgraph-hold-id", value);
    }
    if let Ok(value) = HeaderValue::from_str(&cost.to_string()) {
        response.headers_mut().insert("x-creditgraph-cost", value);
    }
    Ok(response)
}

/// The header naming a run's hold a call draws from instead of holding its own.
pub const RUN_HOLD_HEADER: &str = "x-creditgraph-hold";
/// The most bytes of a streamed answer relayed; past it the stream is cut and settled.
pub const UPSTREAM_STREAM_BYTES_MAX: usize = 64 * 1024 * 1024;

/// What a streamed answer showed, read off its `data:` lines as they pass.
#[derive(Default)]
struct StreamTally {
    /// Unfinished line carried to the next chunk.
    partial: Vec<u8>,
    /// Whether any chunk carried output (content, a refusal, tool calls).
    produced: bool,
    /// The usage chunk's counts.
    usage: Option<(u64, u64)>,
}

impl StreamTally {
    fn read(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        while let Some(end) = self.partial.iter().position(|byte| *byte == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            let Some(data) = line.strip_prefix(b"data:") else { continue };
            let Ok(chunk) = serde_json::from_slice::<Value>(data.trim_ascii()) else { continue };
            if let Some(usage) = chunk.get("usage").filter(|usage| !usage.is_null()) {
                let tokens = |field: &str| usage.get(field).and_then(Value::as_u64);
                if let (Some(prompt), Some(completion)) = (tokens("prompt_tokens"), tokens("completion_tokens")) {
                    self.usage = Some((prompt, completion));
                }
            }
            let choices = chunk.get("choices").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
            self.produced |= choices.iter().any(|choice| {
                let delta = &choice["delta"];
                ["content", "refusal"].iter().any(|field| delta[field].as_str().is_some_and(|text| !text.is_empty()))
                    || delta["tool_calls"].as_array().is_some_and(|calls| !calls.is_empty())
            });
        }
    }
}

/// Relays a streamed answer chunk by chunk (nothing buffered but one line) and settles it when
/// it ends, in a task of its own: from the usage chunk; without one, at the worst case if any
/// output came, else released. A client that leaves does not stop the relay: the upstream is
/// read to its end (bounded by the forced output cap) so the call is settled from its usage.
fn relay_stream(state: AppState, response: reqwest::Response, payer: Payer, priced: Priced) -> Response {
    use futures::StreamExt;
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    let hold_id = payer.hold_id.clone();
    tokio::spawn(async move {
        let mut upstream = response.bytes_stream();
        let mut tally = StreamTally::default();
        let mut relayed = 0_usize;
        let mut client_gone = false;
        // The terminator (`data: [DONE]` and what follows) is held back until the call is
        // settled, so a client that read the whole stream finds its charge recorded.
        let mut held_back = Bytes::new();
        while let Some(chunk) = upstream.next().await {
            let Ok(mut chunk) = chunk else { break };
            relayed += chunk.len();
            if relayed > UPSTREAM_STREAM_BYTES_MAX {
                tracing::error!(hold = %payer.hold_id, "a streamed answer passed the size limit; cut");
                break;
            }
            tally.read(&chunk);
            if let Some(done) = find(&chunk, b"data: [DONE]").or_else(|| find(&chunk, b"data:[DONE]")) {
                held_back = chunk.split_off(done);
            }
            if !client_gone && !chunk.is_empty() && sender.send(Ok(chunk)).await.is_err() {
                client_gone = true;
            }
            if !held_back.is_empty() {
                break;
            }
        }
        drop(upstream);
        let settled = match tally.usage {
            Some((prompt, completion)) => {
                Settled::Usage { prompt, completion, cost: usage_cost(&priced, prompt, completion) }
            }
            None if tally.produced => Settled::WorstCase,
            None => Settled::Released,
        };
        payer.settle(&state, settled, StatusCode::OK.as_u16()).await;
        if !client_gone && !held_back.is_empty() {
            let _ = sender.send(Ok(held_back)).await;
        }
    });
    let stream = futures::stream::poll_fn(move |context| receiver.poll_recv(context));
    let mut response = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/event-stream"), (header::CACHE_CONTROL, "no-cache")],
        axum::body::Body::from_stream(stream),
    )
        .into_response();
    if let Ok(value) = HeaderValue::from_str(hold_id.as_str()) {
        response.headers_mut().insert("x-creditgraph-hold-id", value);
    }
    response
}

/// The cost of a call's reported usage, never above what was held: the input bound is an upper
/// bound by construction and the output cap is forced, so a larger count is an upstream's error,
/// logged, and the caller is charged what was held.
fn usage_cost(priced: &Priced, prompt: u64, completion: u64) -> Amount {
    if completion > priced.output_tokens_max {
        tracing::error!(completion, cap = priced.output_tokens_max, "the upstream answered beyond the forced cap");
    }
    let cost = priced.prices.cost(prompt, completion).unwrap_or(priced.worst_case);
    if cost > priced.worst_case {
        tracing::error!(prompt, completion, %cost, held = %priced.worst_case, "a call's usage exceeded its bound");
    }
    cost.min(priced.worst_case)
}

/// Where `needle` starts in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

async fn capture(state: &AppState, hold_id: &HoldId, cost: Amount, is_final: bool) {
    let capture = Command::Capture { hold_id: hold_id.clone(), amount: cost, is_final, overage: Overage::Reject };
    match state.store.execute(Request::new(capture)).await {
        Ok(store::Executed::Fresh(Ok(_))) => tracing::info!(hold = %hold_id, %cost, "gateway call settled"),
        other => tracing::error!(?other, hold = %hold_id, "a gateway call's capture failed"),
    }
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
