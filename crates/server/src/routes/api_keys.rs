//! Gateway keys (admin): create one for an account (its text `cg_…` is shown once and stored
//! only as its SHA-256), list them, revoke one. The LLM gateway authenticates callers with them.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use ledger::Amount;
use sha2::{Digest, Sha256};
use store::api_keys::{ApiKey, ApiKeyCreated, KEYS_PER_ACCOUNT_MAX, KEY_MODELS_MAX, KEY_NAME_BYTES_MAX};
use store::ApiKeyId;

use crate::dto::{
    ApiKeyRequest, ApiKeyResponse, ApiKeysResponse, Problem, UsageQuery, UsageResponse, UsageRowResponse,
};
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery, JsonBody, RequireAdmin, RequireService};
use crate::routes::json;
use crate::state::AppState;
use crate::wire::{self, parse_id, parse_time};

/// The prefix of every key's text.
pub const KEY_PREFIX: &str = "cg_";
/// Characters of a key's text kept for display.
const DISPLAY_CHARS: usize = 9;

/// Hex SHA-256 of a key's text: what is stored and looked up.
pub fn key_hash(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// A new key's text: `cg_` and 64 hex digits of two random UUIDs (244 random bits).
fn new_key_text() -> String {
    format!("{KEY_PREFIX}{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple())
}

fn key_response(key: &ApiKey, text: Option<String>) -> ApiKeyResponse {
    ApiKeyResponse {
        key_id: key.key_id.to_string(),
        account_id: key.account_id.to_string(),
        name: key.name.clone(),
        prefix: key.prefix.clone(),
        daily_limit: key.daily_limit.map(|limit| limit.to_string()),
        models: key.models.clone(),
        created_at: store::events::rfc3339(key.created_at),
        revoked_at: key.revoked_at.map(store::events::rfc3339),
        key: text,
    }
}

/// Create a gateway key for an account. The answer carries the key (`cg_…`), the only time it
/// is shown.
#[utoipa::path(
    post, path = "/v1/accounts/{account_id}/keys", tag = "gateway",
    params(("account_id" = String, Path)),
    request_body = ApiKeyRequest,
    responses(
        (status = 201, body = ApiKeyResponse),
        (status = 409, description = "api_key_limit (100 keys per account)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request, invalid_amount, unknown_model", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn create_key(
    State(state): State<AppState>,
    _auth: RequireAdmin,
    ApiPath(account_id): ApiPath<String>,
    body: JsonBody<ApiKeyRequest>,
) -> Result<Response, ApiError> {
    let account_id = wire::parse_account_id(&account_id)?;
    let request = &body.value;
    if request.name.as_ref().is_some_and(|name| name.len() > KEY_NAME_BYTES_MAX) {
        return Err(ApiError::invalid_request(format!("name: at most {KEY_NAME_BYTES_MAX} bytes")));
    }
    let daily_limit = request
        .daily_limit
        .as_deref()
        .map(|text| Amount::parse(text).map_err(|error| ApiError::invalid_amount(format!("daily_limit: {error}"))))
        .transpose()?;
    let models = request.models.clone().unwrap_or_default();
    if models.len() > KEY_MODELS_MAX {
        return Err(ApiError::invalid_request(format!("models: at most {KEY_MODELS_MAX}")));
    }
    let catalog = state.catalog.as_ref().map(|catalog| catalog.current());
    if let Some(unknown) =
        models.iter().find(|model| catalog.as_ref().is_none_or(|catalog| catalog.gateway_model(model).is_none()))
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_model",
            format!("models: the gateway serves no model {unknown:?}"),
        ));
    }
    let text = new_key_text();
    let key = ApiKey {
        key_id: ApiKeyId::generate(),
        account_id,
        name: request.name.clone(),
        hash: key_hash(&text),
        prefix: text.chars().take(DISPLAY_CHARS).collect(),
        daily_limit,
        models,
        created_at: state.clock.now(),
        revoked_at: None,
    };
    match state.store.create_api_key(&key).await? {
        ApiKeyCreated::Created(key) => Ok(json(StatusCode::CREATED, key_response(&key, Some(text)))),
        ApiKeyCreated::Limit => Err(ApiError::new(
            StatusCode::CONFLICT,
            "api_key_limit",
            format!("an account has at most {KEYS_PER_ACCOUNT_MAX} keys (revoked ones included)"),
        )),
    }
}

/// An account's gateway keys, oldest first (never their text).
#[utoipa::path(
    get, path = "/v1/accounts/{account_id}/keys", tag = "gateway",
    params(("account_id" = String, Path)),
    responses((status = 200, body = ApiKeysResponse)),
    security(("bearer" = []))
)]
pub async fn list_keys(
    State(state): State<AppState>,
    _auth: RequireAdmin,
    ApiPath(account_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let account_id = wire::parse_account_id(&account_id)?;
    let keys = state.store.api_keys(&account_id).await?;
    Ok(json(StatusCode::OK, ApiKeysResponse { keys: keys.iter().map(|key| key_response(key, None)).collect() }))
}

/// Revoke a gateway key: it never authenticates again (revoking again changes nothing).
#[utoipa::path(
    delete, path = "/v1/accounts/{account_id}/keys/{key_id}", tag = "gateway",
    params(("account_id" = String, Path), ("key_id" = String, Path)),
    responses(
        (status = 200, body = ApiKeyResponse),
        (status = 404, description = "api_key_not_found", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn revoke_key(
    State(state): State<AppState>,
    _auth: RequireAdmin,
    ApiPath((account_id, key_id)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let account_id = wire::parse_account_id(&account_id)?;
    let key_id = parse_id("key_id", &key_id, ApiKeyId::parse)?;
    let revoked = state.store.revoke_api_key(&account_id, &key_id, state.clock.now()).await?;
    let key = revoked.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "api_key_not_found", "no such key"))?;
    Ok(json(StatusCode::OK, key_response(&key, None)))
}

/// The default span of a usage query.
const USAGE_DAYS_DEFAULT: u64 = 30;

/// An account's gateway calls at `from <= time < to`, summed by UTC day and model (or by one of
/// them): calls, tokens and credits charged.
#[utoipa::path(
    get, path = "/v1/accounts/{account_id}/usage", tag = "gateway",
    params(("account_id" = String, Path), UsageQuery),
    responses(
        (status = 200, body = UsageResponse),
        (status = 422, description = "invalid_request", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn usage(
    State(state): State<AppState>,
    _auth: RequireService,
    ApiPath(account_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<UsageQuery>,
) -> Result<Response, ApiError> {
    let account_id = wire::parse_account_id(&account_id)?;
    // Exclusive, so the default ends just after now: a call recorded this microsecond counts.
    let to = query
        .to
        .as_deref()
        .map(|text| parse_time("to", text))
        .transpose()?
        .unwrap_or_else(|| state.clock.now().plus_micros(1));
    let from = match query.from.as_deref() {
        Some(text) => parse_time("from", text)?,
        None => ledger::Timestamp::from_micros(
            to.micros().saturating_sub(i64::try_from(USAGE_DAYS_DEFAULT * 86_400 * 1_000_000).unwrap_or(i64::MAX)),
        ),
    };
    if from > to {
        return Err(ApiError::invalid_request("from: must not be after to"));
    }
    let (by_day, by_model) = match query.group_by.as_deref() {
        None => (true, true),
        Some("day") => (true, false),
        Some("model") => (false, true),
        Some(other) => return Err(ApiError::invalid_request(format!("group_by: `day` or `model`, not {other:?}"))),
    };
    let mut rows: std::collections::BTreeMap<(Option<String>, Option<String>), UsageRowResponse> = Default::default();
    for row in state.store.gateway_usage(&account_id, from, to).await? {
        let key = (by_day.then(|| row.day.clone()), by_model.then(|| row.model.clone()));
        let entry = rows.entry(key.clone()).or_insert_with(|| UsageRowResponse {
            day: key.0.clone(),
            model: key.1.clone(),
            calls: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            cost: "0".to_owned(),
        });
        entry.calls += row.calls;
        entry.prompt_tokens += row.prompt_tokens;
        entry.completion_tokens += row.completion_tokens;
        let sum = Amount::parse(&entry.cost).unwrap_or(Amount::ZERO).plus(row.cost);
        entry.cost = sum.to_string();
    }
    let response = UsageResponse {
        from: store::events::rfc3339(from),
        to: store::events::rfc3339(to),
        rows: rows.into_values().collect(),
    };
    Ok(json(StatusCode::OK, response))
}
