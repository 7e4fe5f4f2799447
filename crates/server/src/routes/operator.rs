//! The operator's lists: accounts by id prefix, an account's runs and video jobs newest first,
//! and the overview (what is held now, what the journal moved per day). Cursors are ids this API
//! returned; one that does not name a record of the account is refused (`422`), never guessed.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use ledger::{Amount, EntryKind};
use store::{JobId, RunId};

use crate::dto::operator::{
    AccountJobsResponse, AccountRunsResponse, AccountsQuery, AccountsResponse, GrantStateQuery, GrantsQuery,
    GrantsResponse, NewestFirstQuery, OverviewDay, OverviewQuery, OverviewResponse, VoidGrantRequest,
    VoidGrantResponse,
};
use crate::dto::Problem;
use crate::error::ApiError;
use crate::extract::{ApiPath, ApiQuery, IdempotencyKey, JsonBody, RequireAdmin, RequireService};
use crate::routes::accounts::page_limit;
use crate::routes::{jobs, json, runs};
use crate::state::AppState;
use crate::wire;

const ACCOUNTS_LIMIT_DEFAULT: u32 = 50;
const NEWEST_FIRST_LIMIT_DEFAULT: u32 = 20;
const GRANTS_LIMIT_DEFAULT: u32 = 100;
const OVERVIEW_DAYS_DEFAULT: u32 = 30;
/// The longest overview window: the overview reads every journal entry of it.
const OVERVIEW_DAYS_MAX: u32 = 90;

/// How many records to ask the store for: one more than `limit` tells whether a page follows (a
/// store caps a page at `limit_max`, so a full page of `limit_max` says so by itself).
fn fetch_size(limit: u32, limit_max: u32) -> u32 {
    limit.saturating_add(1).min(limit_max)
}

/// Cuts what the store answered to `limit`; true when another page may follow (at the largest
/// page size no extra record was asked for: a full page then offers a cursor, and the page after
/// it may be empty).
fn one_page<T>(records: &mut Vec<T>, limit: u32, fetch: u32) -> bool {
    let more = records.len() > limit as usize || (fetch == limit && records.len() == limit as usize);
    records.truncate(limit as usize);
    more
}

fn bad_cursor() -> ApiError {
    ApiError::invalid_request("after: not a cursor this API returned")
}

/// Accounts whose id starts with `prefix`, in id order (byte-wise), with their figures and live
/// grants, one page at a time (admin: it lists every account).
#[utoipa::path(
    get, path = "/v1/accounts", tag = "operator",
    params(AccountsQuery),
    responses(
        (status = 200, body = AccountsResponse),
        (status = 403, description = "forbidden (a service token)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list_accounts(
    State(state): State<AppState>,
    _auth: RequireAdmin,
    ApiQuery(query): ApiQuery<AccountsQuery>,
) -> Result<Response, ApiError> {
    let prefix = query.prefix.unwrap_or_default();
    if !prefix.is_empty() {
        // A prefix is the start of an id, so it obeys the id rule.
        wire::parse_id("prefix", &prefix, ledger::AccountId::parse)?;
    }
    let after =
        query.after.as_deref().map(|after| ledger::AccountId::parse(after).map_err(|_| bad_cursor())).transpose()?;
    let limit = page_limit(query.limit, ACCOUNTS_LIMIT_DEFAULT, store::ACCOUNTS_PAGE_MAX)?;
    let fetch = fetch_size(limit, store::ACCOUNTS_PAGE_MAX);
    let mut ids = state.store.account_ids(&prefix, after.as_ref(), fetch).await?;
    let more = one_page(&mut ids, limit, fetch);
    let mut accounts = Vec::with_capacity(ids.len());
    for account_id in &ids {
        // Every listed account exists (accounts are never deleted), so a missing view is damage.
        let view = state.store.account(account_id).await?.ok_or_else(ApiError::internal)?;
        accounts.push(wire::account_response(&view));
    }
    let next = if more { ids.last().map(ToString::to_string) } else { None };
    Ok(json(StatusCode::OK, AccountsResponse { accounts, next }))
}

/// The account's grants in one state (active, expired or voided) as they read now, in grant-id
/// order, one page at a time; `remaining` is what is left in each (free plus held).
#[utoipa::path(
    get, path = "/v1/accounts/{account_id}/grants", tag = "operator",
    params(("account_id" = String, Path), GrantsQuery),
    responses(
        (status = 200, body = GrantsResponse),
        (status = 404, description = "account_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list_grants(
    State(state): State<AppState>,
    _auth: RequireService,
    ApiPath(account_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<GrantsQuery>,
) -> Result<Response, ApiError> {
    let account_id = wire::parse_account_id(&account_id)?;
    let limit = page_limit(query.limit, GRANTS_LIMIT_DEFAULT, store::GRANTS_PAGE_MAX)?;
    let after =
        query.after.as_deref().map(|after| ledger::GrantId::parse(after).map_err(|_| bad_cursor())).transpose()?;
    let now = state.clock.now();
    let list_state = match query.state.unwrap_or_default() {
        GrantStateQuery::Active => store::GrantListState::Active(now),
        GrantStateQuery::Expired => store::GrantListState::Expired(now),
        GrantStateQuery::Voided => store::GrantListState::Voided,
    };
    let fetch = fetch_size(limit, store::GRANTS_PAGE_MAX);
    let mut grants = state.store.grants(&account_id, list_state, after.as_ref(), fetch).await?;
    if grants.is_empty() && state.store.account(&account_id).await?.is_none() {
        return Err(ApiError::account_not_found());
    }
    let more = one_page(&mut grants, limit, fetch);
    let next = if more { grants.last().map(|grant| grant.grant_id.to_string()) } else { None };
    // The stored grant's kept parts: an expired one's free part is taken at the next command or
    // sweep, so it may still show until then.
    let grants = grants.iter().map(|grant| wire::grant_response(grant, grant.free.plus(grant.pinned))).collect();
    Ok(json(StatusCode::OK, GrantsResponse { grants, next }))
}

/// Take back what is left of a grant given by mistake (admin): its free credits leave the
/// balance, journalled as a `void` entry (and a `grant.voided` event), and the grant is marked
/// voided. Refused while pending holds reserve any of its credits: release them first.
#[utoipa::path(
    post, path = "/v1/grants/{grant_id}/void", tag = "operator",
    params(("grant_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body = VoidGrantRequest,
    responses(
        (status = 200, body = VoidGrantResponse),
        (status = 404, description = "grant_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "grant_credits_held (with `held`), grant_not_voidable (spent, expired or voided already), idempotency_conflict", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn void_grant(
    State(state): State<AppState>,
    _auth: RequireAdmin,
    ApiPath(grant_id): ApiPath<String>,
    key: IdempotencyKey,
    body: JsonBody<VoidGrantRequest>,
) -> Result<Response, ApiError> {
    let grant_id = wire::parse_id("grant_id", &grant_id, ledger::GrantId::parse)?;
    // The grant names its account; the ledger then decides on that account's state. (A replay
    // under the same key answers from the record, whatever the grant is now.)
    let grant = state.store.grant(&grant_id).await?.ok_or_else(grant_not_found)?;
    let command = ledger::Command::VoidGrant { account_id: grant.account_id.clone(), grant_id };
    match state.execute(command, &key, || body.fingerprint(None)).await? {
        Ok(ledger::Outcome::GrantVoided { grant, voided }) => {
            let body =
                VoidGrantResponse { grant: wire::grant_response(&grant, Amount::ZERO), voided: voided.to_string() };
            Ok(json(StatusCode::OK, body))
        }
        Ok(other) => Err(crate::state::unexpected_outcome("void_grant", &other)),
        // The grant exists (read above) but holds nothing the ledger could take: spent,
        // expired or voided already. (The stored grant read before says when it was voided.)
        Err(ledger::Rejection::GrantNotFound) => Err(not_voidable(&grant)),
        Err(rejection) => Err(rejection.into()),
    }
}

fn grant_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "grant_not_found", "no such grant")
}

fn not_voidable(grant: &ledger::Grant) -> ApiError {
    let error = ApiError::new(
        StatusCode::CONFLICT,
        "grant_not_voidable",
        "the grant has nothing left to void (spent, expired or voided already)",
    );
    match grant.voided_at {
        Some(at) => error.with("voided_at", wire::format_time(at)),
        None => error,
    }
}

/// The account's metered runs, newest first, with their credit logs.
#[utoipa::path(
    get, path = "/v1/accounts/{account_id}/runs", tag = "operator",
    params(("account_id" = String, Path), NewestFirstQuery),
    responses(
        (status = 200, body = AccountRunsResponse),
        (status = 422, description = "invalid_request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "runs_unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn account_runs(
    State(state): State<AppState>,
    _auth: RequireService,
    ApiPath(account_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<NewestFirstQuery>,
) -> Result<Response, ApiError> {
    let account_id = wire::parse_account_id(&account_id)?;
    let limit = page_limit(query.limit, NEWEST_FIRST_LIMIT_DEFAULT, store::runs::RUNS_PAGE_MAX)?;
    let run_store = runs::engine(&state)?.run_store();
    let cursor = match query.after.as_deref() {
        None => None,
        Some(after) => {
            let run_id = RunId::parse(after).map_err(|_| bad_cursor())?;
            let run = run_store.run(&run_id).await?.filter(|run| run.account_id == account_id);
            Some(run.ok_or_else(bad_cursor)?)
        }
    };
    let before = cursor.as_ref().map(|run| (run.created_at, &run.run_id));
    let fetch = fetch_size(limit, store::runs::RUNS_PAGE_MAX);
    let mut page = run_store.account_runs(&account_id, before, fetch).await?;
    let more = one_page(&mut page, limit, fetch);
    let next = if more { page.last().map(|run| run.run_id.to_string()) } else { None };
    let runs = page.iter().map(wire::runs::run_response).collect();
    Ok(json(StatusCode::OK, AccountRunsResponse { runs, next }))
}

/// The account's video jobs, newest first, with their status and refunds.
#[utoipa::path(
    get, path = "/v1/accounts/{account_id}/jobs", tag = "operator",
    params(("account_id" = String, Path), NewestFirstQuery),
    responses(
        (status = 200, body = AccountJobsResponse),
        (status = 422, description = "invalid_request", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "jobs_unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn account_jobs(
    State(state): State<AppState>,
    _auth: RequireService,
    ApiPath(account_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<NewestFirstQuery>,
) -> Result<Response, ApiError> {
    let account_id = wire::parse_account_id(&account_id)?;
    let limit = page_limit(query.limit, NEWEST_FIRST_LIMIT_DEFAULT, store::jobs::JOBS_LIST_MAX)?;
    let service = jobs::jobs(&state)?;
    let cursor = match query.after.as_deref() {
        None => None,
        Some(after) => {
            let job_id = JobId::parse(after).map_err(|_| bad_cursor())?;
            let job = service.get(&job_id).await.map_err(jobs::job_error)?.filter(|job| job.account_id == account_id);
            Some(job.ok_or_else(bad_cursor)?)
        }
    };
    let before = cursor.as_ref().map(|job| (job.created_at, &job.job_id));
    let fetch = fetch_size(limit, store::jobs::JOBS_LIST_MAX);
    let mut page = service.account_jobs(&account_id, before, fetch).await.map_err(jobs::job_error)?;
    let more = one_page(&mut page, limit, fetch);
    let next = if more { page.last().map(|job| job.job_id.to_string()) } else { None };
    let jobs = page.iter().map(wire::jobs::job_response).collect();
    Ok(json(StatusCode::OK, AccountJobsResponse { jobs, next }))
}

/// The service at a glance (admin): pending holds and what they hold now, and per UTC day of the
/// window the credits granted, captured (captures and debits) and refunded.
#[utoipa::path(
    get, path = "/v1/overview", tag = "operator",
    params(OverviewQuery),
    responses(
        (status = 200, body = OverviewResponse),
        (status = 403, description = "forbidden (a service token)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_request", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn overview(
    State(state): State<AppState>,
    _auth: RequireAdmin,
    ApiQuery(query): ApiQuery<OverviewQuery>,
) -> Result<Response, ApiError> {
    let days = query.days.unwrap_or(OVERVIEW_DAYS_DEFAULT);
    if !(1..=OVERVIEW_DAYS_MAX).contains(&days) {
        return Err(ApiError::invalid_request(format!("days: must be between 1 and {OVERVIEW_DAYS_MAX}")));
    }
    let today = store::utc_day(state.clock.now());
    let first = today - i64::from(days) + 1;
    let from = ledger::Timestamp::from_micros(first * store::MICROS_PER_DAY);
    let to = ledger::Timestamp::from_micros((today + 1) * store::MICROS_PER_DAY);
    let (gauges, sums) = tokio::try_join!(state.store.gauges(), state.store.daily_credits(from, to))?;
    // (granted, captured, refunded) per day of the window, in micro-credits.
    let mut totals = vec![[0_u64; 3]; days as usize];
    for sum in sums {
        let Some(slot) = usize::try_from(sum.day - first).ok().and_then(|index| totals.get_mut(index)) else {
            continue;
        };
        let column = match sum.kind {
            EntryKind::Grant => 0,
            EntryKind::Capture | EntryKind::Debit => 1,
            EntryKind::Refund => 2,
            EntryKind::Hold
            | EntryKind::Release
            | EntryKind::Expire
            | EntryKind::Extend
            | EntryKind::GrantExpired
            | EntryKind::Void => continue,
        };
        slot[column] = slot[column].saturating_add(sum.amount.micros());
    }
    let days = totals
        .iter()
        .zip(first..)
        .map(|([granted, captured, refunded], day)| OverviewDay {
            day: day_text(day),
            granted: Amount::from_micros(*granted).to_string(),
            captured: Amount::from_micros(*captured).to_string(),
            refunded: Amount::from_micros(*refunded).to_string(),
        })
        .collect();
    let body = OverviewResponse { pending_holds: gauges.pending_holds, held: gauges.held.to_string(), days };
    Ok(json(StatusCode::OK, body))
}

/// `YYYY-MM-DD` of a UTC day (days since the Unix epoch).
fn day_text(day: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(day * 86_400).map_or_else(|_| day.to_string(), |at| at.date().to_string())
}

#[cfg(test)]
mod tests {
    use super::day_text;

    #[test]
    fn days_are_iso_dates() {
        assert_eq!(day_text(0), "1970-01-01");
        assert_eq!(day_text(20_789), "2026-12-02");
    }
}
