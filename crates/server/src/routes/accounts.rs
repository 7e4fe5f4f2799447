//! Account routes: grants, balance, journal, debits and refunds.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use ledger::{Command, Outcome};

use crate::dto::{
    AccountResponse, DebitRequest, DebitResponse, EntriesQuery, EntriesResponse, GrantRequest, GrantResponse,
    HoldStateQuery, HoldsQuery, HoldsResponse, LowBalanceThresholdRequest, LowBalanceThresholdResponse, Problem,
    RefundRequest,
};
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery, IdempotencyKey, JsonBody, RequireAdmin, RequireService};
use crate::routes::{created_or_ok, json, new_grant_id};
use crate::state::{unexpected_outcome, AppState};
use crate::wire;

/// Priority of a grant whose request names none: the contract's default.
const GRANT_PRIORITY_DEFAULT: i32 = 100;
/// Page size of the holds list when the request names none.
const HOLDS_LIMIT_DEFAULT: u32 = 100;

/// Add credits to an account (creating it on its first grant).
#[utoipa::path(
    post, path = "/v1/accounts/{account_id}/grants", tag = "accounts",
    params(("account_id" = String, Path, description = "1-128 characters of [A-Za-z0-9._-]"),
           ("Idempotency-Key" = Option<String>, Header)),
    request_body = GrantRequest,
    responses(
        (status = 201, description = "granted", body = GrantResponse),
        (status = 200, description = "the reference was used before: the first grant", body = GrantResponse),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 403, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "idempotency_conflict", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_amount, invalid_request", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "rate_limited (the token's or the account's rate limit; see Retry-After)", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "whole seconds until a request would be admitted"))),
    ),
    security(("bearer" = []))
)]
pub async fn create_grant(
    State(state): State<AppState>,
    auth: RequireAdmin,
    ApiPath(account_id): ApiPath<String>,
    key: IdempotencyKey,
    body: JsonBody<GrantRequest>,
) -> Result<Response, ApiError> {
    let account_id = wire::parse_account_id(&account_id)?;
    let request = &body.value;
    let amount = wire::parse_positive_amount("amount", &request.amount)?;
    let expires_at = request.expires_at.as_deref().map(|text| wire::parse_time("expires_at", text)).transpose()?;
    let reference = wire::parse_reference(request.reference.as_deref())?;
    let metadata = wire::metadata_text(request.metadata.as_ref(), state.config.metadata_bytes_max)?;
    state.rate_limiter.check(auth.caller(), Some(&account_id))?;
    let command = Command::Grant {
        account_id,
        grant_id: new_grant_id(),
        amount,
        priority: request.priority.unwrap_or(GRANT_PRIORITY_DEFAULT),
        expires_at,
        reference,
        metadata,
    };
    match state.execute(command, &key, || body.fingerprint(Some(amount))).await? {
        // `remaining` here is the grant's free part: the outcome does not say what pending holds
        // pinned, and a replay must render exactly like the first response.
        Ok(Outcome::Granted { grant, created }) => {
            Ok(json(created_or_ok(created), wire::grant_response(&grant, grant.free)))
        }
        Ok(other) => Err(unexpected_outcome("grant", &other)),
        Err(rejection) => Err(rejection.into()),
    }
}

/// Balance, held and available credits of an account, with its grants that still have credits.
#[utoipa::path(
    get, path = "/v1/accounts/{account_id}", tag = "accounts",
    params(("account_id" = String, Path)),
    responses(
        (status = 200, body = AccountResponse),
        (status = 404, description = "account_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_amount, invalid_request", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_account(
    State(state): State<AppState>,
    _auth: RequireService,
    ApiPath(account_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let account_id = wire::parse_account_id(&account_id)?;
    let view = state.store.account(&account_id).await?.ok_or_else(ApiError::account_not_found)?;
    let body = wire::account_response(&view);
    Ok(json(StatusCode::OK, body))
}

/// A list route's `limit`: the default (never above the maximum) when absent, else 1..=max.
pub(crate) fn page_limit(limit: Option<u32>, default: u32, limit_max: u32) -> Result<u32, ApiError> {
    let limit = limit.unwrap_or(default.min(limit_max));
    if !(1..=limit_max).contains(&limit) {
        return Err(ApiError::invalid_request(format!("limit: must be between 1 and {limit_max}")));
    }
    Ok(limit)
}

/// The account's journal, oldest first, one page at a time; optionally only the entries of one
/// kind, in a time window or with one reference.
#[utoipa::path(
    get, path = "/v1/accounts/{account_id}/entries", tag = "accounts",
    params(("account_id" = String, Path), EntriesQuery),
    responses(
        (status = 200, body = EntriesResponse),
        (status = 404, description = "account_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_amount, invalid_request", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list_entries(
    State(state): State<AppState>,
    _auth: RequireService,
    ApiPath(account_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<EntriesQuery>,
) -> Result<Response, ApiError> {
    let account_id = wire::parse_account_id(&account_id)?;
    let limit_max = state.config.entries_limit_max;
    let limit = page_limit(query.limit, state.config.entries_limit_default, limit_max)?;
    let after_seq = match query.after.as_deref() {
        None => 0,
        Some(cursor) => {
            cursor.parse::<u64>().map_err(|_| ApiError::invalid_request("after: not a cursor this API returned"))?
        }
    };
    let filter = store::EntryFilter {
        kind: query
            .kind
            .as_deref()
            .map(|kind| {
                ledger::EntryKind::parse(kind)
                    .ok_or_else(|| ApiError::invalid_request(format!("kind: no entry kind {kind:?}")))
            })
            .transpose()?,
        from: query.from.as_deref().map(|text| wire::parse_time("from", text)).transpose()?,
        to: query.to.as_deref().map(|text| wire::parse_time("to", text)).transpose()?,
        reference: wire::parse_reference(query.reference.as_deref())?,
    };
    // One extra entry tells whether another page follows, without an empty last page.
    let fetch = limit.saturating_add(1);
    let mut entries = if filter == store::EntryFilter::default() {
        state.store.entries(&account_id, after_seq, fetch).await?
    } else {
        state.store.filtered_entries(&account_id, &filter, after_seq, fetch).await?
    };
    if entries.is_empty() && state.store.account(&account_id).await?.is_none() {
        return Err(ApiError::account_not_found());
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let next = if entries.len() > limit {
        entries.truncate(limit);
        entries.last().map(|entry| entry.seq.to_string())
    } else {
        None
    };
    let body = EntriesResponse { entries: entries.iter().map(wire::entry_response).collect(), next };
    Ok(json(StatusCode::OK, body))
}

/// The account's holds in one state, as they read now, in hold-id order, one page at a time. The
/// account view carries no holds; this is where an account's pending holds are read.
#[utoipa::path(
    get, path = "/v1/accounts/{account_id}/holds", tag = "accounts",
    params(("account_id" = String, Path), HoldsQuery),
    responses(
        (status = 200, body = HoldsResponse),
        (status = 404, description = "account_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list_holds(
    State(state): State<AppState>,
    _auth: RequireService,
    ApiPath(account_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<HoldsQuery>,
) -> Result<Response, ApiError> {
    let account_id = wire::parse_account_id(&account_id)?;
    let limit_max = store::HOLDS_PAGE_MAX;
    let limit = page_limit(query.limit, HOLDS_LIMIT_DEFAULT, limit_max)?;
    let after = match query.after.as_deref() {
        None => None,
        Some(cursor) => Some(
            ledger::HoldId::parse(cursor)
                .map_err(|_| ApiError::invalid_request("after: not a cursor this API returned"))?,
        ),
    };
    let hold_state = match query.state.unwrap_or_default() {
        HoldStateQuery::Pending => ledger::HoldState::Pending,
        HoldStateQuery::Captured => ledger::HoldState::Captured,
        HoldStateQuery::Released => ledger::HoldState::Released,
        HoldStateQuery::Expired => ledger::HoldState::Expired,
    };
    // One extra hold tells whether another page follows (the store caps a page at `limit_max`,
    // so a full page of `limit_max` says so by itself).
    let fetch = limit.saturating_add(1).min(limit_max);
    let mut holds = state.store.holds(&account_id, hold_state, after.as_ref(), fetch).await?;
    if holds.is_empty() && state.store.account(&account_id).await?.is_none() {
        return Err(ApiError::account_not_found());
    }
    // At the largest page size no extra hold was asked for: a full page then offers a cursor,
    // and the page after it may be empty.
    let more = holds.len() > limit as usize || (fetch == limit && holds.len() == limit as usize);
    holds.truncate(limit as usize);
    let next = if more { holds.last().map(|hold| hold.hold_id.to_string()) } else { None };
    let body = HoldsResponse { holds: holds.iter().map(wire::hold_response).collect(), next };
    Ok(json(StatusCode::OK, body))
}

/// Charge credits without a prior hold, all or nothing.
#[utoipa::path(
    post, path = "/v1/accounts/{account_id}/debits", tag = "accounts",
    params(("account_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body = DebitRequest,
    responses(
        (status = 201, body = DebitResponse),
        (status = 402, description = "insufficient_credits", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "account_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "idempotency_conflict", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_amount, invalid_request", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "rate_limited (the token's or the account's rate limit; see Retry-After)", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "whole seconds until a request would be admitted"))),
    ),
    security(("bearer" = []))
)]
pub async fn create_debit(
    State(state): State<AppState>,
    auth: RequireService,
    ApiPath(account_id): ApiPath<String>,
    key: IdempotencyKey,
    body: JsonBody<DebitRequest>,
) -> Result<Response, ApiError> {
    let account_id = wire::parse_account_id(&account_id)?;
    let amount = wire::parse_positive_amount("amount", &body.value.amount)?;
    let reference = wire::parse_reference(body.value.reference.as_deref())?;
    state.rate_limiter.check(auth.caller(), Some(&account_id))?;
    let command = Command::Debit { account_id, amount, reference: reference.clone() };
    match state.execute(command, &key, || body.fingerprint(Some(amount))).await? {
        Ok(Outcome::Debited { account_id, amount, balances }) => {
            let body = DebitResponse {
                account_id: account_id.to_string(),
                amount: amount.to_string(),
                reference: reference.map(|reference| reference.to_string()),
                balance: balances.balance.to_string(),
                held: balances.held.to_string(),
                available: balances.available.to_string(),
            };
            Ok(json(StatusCode::CREATED, body))
        }
        Ok(other) => Err(unexpected_outcome("debit", &other)),
        Err(rejection) => Err(rejection.into()),
    }
}

/// Give credits back for an earlier charge, at most once per reference.
#[utoipa::path(
    post, path = "/v1/accounts/{account_id}/refunds", tag = "accounts",
    params(("account_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body = RefundRequest,
    responses(
        (status = 201, description = "refunded: a grant of kind refund", body = GrantResponse),
        (status = 200, description = "the reference was used before: the first refund", body = GrantResponse),
        (status = 404, description = "account_not_found, hold_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "refund_exceeds_charges, idempotency_conflict", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_amount, invalid_request", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "rate_limited (the token's or the account's rate limit; see Retry-After)", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "whole seconds until a request would be admitted"))),
    ),
    security(("bearer" = []))
)]
pub async fn create_refund(
    State(state): State<AppState>,
    auth: RequireAdmin,
    ApiPath(account_id): ApiPath<String>,
    key: IdempotencyKey,
    body: JsonBody<RefundRequest>,
) -> Result<Response, ApiError> {
    let account_id = wire::parse_account_id(&account_id)?;
    let request = &body.value;
    let amount = wire::parse_positive_amount("amount", &request.amount)?;
    let reference = wire::parse_reference(Some(&request.reference))?
        .ok_or_else(|| ApiError::invalid_request("reference: required"))?;
    let hold_id = request.hold_id.as_deref().map(wire::parse_hold_id).transpose()?;
    state.rate_limiter.check(auth.caller(), Some(&account_id))?;
    let expires_at =
        state.config.refund_grant_ttl_seconds.map(|ttl_seconds| state.clock.now().plus_seconds(ttl_seconds));
    let command = Command::Refund {
        account_id,
        grant_id: new_grant_id(),
        amount,
        reference,
        hold_id,
        priority: state.config.refund_grant_priority,
        expires_at,
    };
    match state.execute(command, &key, || body.fingerprint(Some(amount))).await? {
        Ok(Outcome::Refunded { grant, created }) => {
            Ok(json(created_or_ok(created), wire::grant_response(&grant, grant.free)))
        }
        Ok(other) => Err(unexpected_outcome("refund", &other)),
        Err(rejection) => Err(rejection.into()),
    }
}

/// Set (or clear, with `null`) the account's low-balance threshold: a `balance.low` event is
/// written each time a change takes its available credits from at or above it to below it.
#[utoipa::path(
    post, path = "/v1/accounts/{account_id}/low-balance-threshold", tag = "accounts",
    params(("account_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body = LowBalanceThresholdRequest,
    responses(
        (status = 200, body = LowBalanceThresholdResponse),
        (status = 404, description = "account_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_amount, invalid_request", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn set_low_balance_threshold(
    State(state): State<AppState>,
    _auth: RequireAdmin,
    ApiPath(account_id): ApiPath<String>,
    key: IdempotencyKey,
    body: JsonBody<LowBalanceThresholdRequest>,
) -> Result<Response, ApiError> {
    let account_id = wire::parse_account_id(&account_id)?;
    let threshold = body.value.threshold.as_deref().map(|raw| wire::parse_amount("threshold", raw)).transpose()?;
    let command = Command::SetLowBalanceThreshold { account_id, threshold };
    match state.execute(command, &key, || body.fingerprint(None)).await? {
        Ok(Outcome::LowBalanceThresholdSet { account_id, threshold, balances }) => Ok(json(
            StatusCode::OK,
            LowBalanceThresholdResponse {
                account_id: account_id.to_string(),
                low_balance_threshold: threshold.map(|threshold| threshold.to_string()),
                balance: balances.balance.to_string(),
                held: balances.held.to_string(),
                available: balances.available.to_string(),
            },
        )),
        Ok(other) => Err(unexpected_outcome("set_low_balance_threshold", &other)),
        Err(rejection) => Err(rejection.into()),
    }
}
