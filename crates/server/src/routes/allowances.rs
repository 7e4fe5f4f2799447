//! Allowances (credits granted again every day, week or month) and plans (named sets of them).
//!
//! Every change goes through the ledger as one command on the account (create, end, subscribe),
//! so it is idempotent, serialised with the account's other commands, and the current period's
//! credits are granted in the same transaction.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use ledger::{AllowanceId, Command, Outcome, PlanId};
use store::allowances::AllowanceSpec;
use store::plans::{Plan, PlanAllowance, PlanPut, PLAN_ALLOWANCES_MAX, PLAN_NAME_BYTES_MAX};

use crate::dto::{
    AllowanceRequest, AllowanceResponse, AllowancesResponse, PlanRequest, PlanResponse, PlansResponse, Problem,
    SubscribeRequest, SubscriptionResponse,
};
use crate::error::ApiError;
use crate::extract::{ApiPath, IdempotencyKey, JsonBody, RequireAdmin, RequireService};
use crate::routes::{bodiless_fingerprint, json};
use crate::state::{unexpected_outcome, AppState};
use crate::wire::allowances::{allowance_response, parse_rollover, parse_schedule, plan_response};
use crate::wire::{self, parse_id, parse_positive_amount, parse_time};

/// Priority of an allowance's grants when the request names none: the grants' default.
const ALLOWANCE_PRIORITY_DEFAULT: i32 = 100;
/// Most plans `GET /v1/plans` lists.
const PLANS_LIST_MAX: u32 = 1_000;

/// A new allowance id: `al_` and a UUID v7 without dashes (short, because each period grant's id
/// is derived from it).
fn new_allowance_id() -> AllowanceId {
    AllowanceId::parse(&format!("al_{}", uuid::Uuid::now_v7().simple())).expect("a UUID is a valid id")
}

fn allowances_of(outcome: &[ledger::Allowance], state: &AppState) -> Vec<AllowanceResponse> {
    let now = state.clock.now();
    outcome.iter().map(|allowance| allowance_response(allowance, now)).collect()
}

/// Give an account credits every day, week or month (creating the account if needed).
#[utoipa::path(
    post, path = "/v1/accounts/{account_id}/allowances", tag = "allowances",
    params(("account_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body = AllowanceRequest,
    responses(
        (status = 201, description = "created; the current period granted at once if it started", body = AllowanceResponse),
        (status = 409, description = "allowance_limit (at most 16 that have not ended), idempotency_conflict", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_amount, invalid_request, unknown_period, unknown_time_zone, anchor_out_of_range", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn create_allowance(
    State(state): State<AppState>,
    _auth: RequireAdmin,
    ApiPath(account_id): ApiPath<String>,
    key: IdempotencyKey,
    body: JsonBody<AllowanceRequest>,
) -> Result<Response, ApiError> {
    let account_id = wire::parse_account_id(&account_id)?;
    let request = &body.value;
    let amount = parse_positive_amount("amount", &request.amount)?;
    let schedule = parse_schedule(&request.period, &request.timezone, request.anchor.as_deref())?;
    let rollover = parse_rollover(request.rollover.as_deref(), request.rollover_cap.as_deref())?;
    let now = state.clock.now();
    let starts_at = request.starts_at.as_deref().map(|text| parse_time("starts_at", text)).transpose()?.unwrap_or(now);
    let ends_at = request.ends_at.as_deref().map(|text| parse_time("ends_at", text)).transpose()?;
    if ends_at.is_some_and(|ends_at| ends_at <= starts_at.max(now)) {
        return Err(ApiError::invalid_request("ends_at: must be after starts_at and in the future"));
    }
    let spec = AllowanceSpec {
        allowance_id: new_allowance_id(),
        account_id,
        amount,
        priority: request.priority.unwrap_or(ALLOWANCE_PRIORITY_DEFAULT),
        rollover,
        schedule,
        starts_at,
        ends_at,
        reference: wire::parse_reference(request.reference.as_deref())?,
        plan_id: None,
    };
    let command = Command::CreateAllowance { allowance: spec.into_allowance() };
    match state.execute(command, &key, || body.fingerprint(Some(amount))).await? {
        Ok(Outcome::AllowanceCreated { allowance }) => {
            Ok(json(StatusCode::CREATED, allowance_response(&allowance, state.clock.now())))
        }
        Ok(other) => Err(unexpected_outcome("create_allowance", &other)),
        Err(rejection) => Err(rejection.into()),
    }
}

/// The account's allowances that have not ended, with the period each is in now.
#[utoipa::path(
    get, path = "/v1/accounts/{account_id}/allowances", tag = "allowances",
    params(("account_id" = String, Path)),
    responses(
        (status = 200, body = AllowancesResponse),
        (status = 404, description = "account_not_found", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list_allowances(
    State(state): State<AppState>,
    _auth: RequireService,
    ApiPath(account_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let account_id = wire::parse_account_id(&account_id)?;
    let view = state.store.account(&account_id).await?.ok_or_else(ApiError::account_not_found)?;
    Ok(json(StatusCode::OK, AllowancesResponse { allowances: allowances_of(&view.state.allowances, &state) }))
}

/// End an allowance at the end of its current period: that period's credits stay, no later
/// period is granted. Ending it again changes nothing.
#[utoipa::path(
    delete, path = "/v1/accounts/{account_id}/allowances/{allowance_id}", tag = "allowances",
    params(("account_id" = String, Path), ("allowance_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses(
        (status = 200, body = AllowanceResponse),
        (status = 404, description = "allowance_not_found (none that has not ended), account_not_found", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn end_allowance(
    State(state): State<AppState>,
    _auth: RequireAdmin,
    ApiPath((account_id, allowance_id)): ApiPath<(String, String)>,
    key: IdempotencyKey,
) -> Result<Response, ApiError> {
    let path = format!("/v1/accounts/{account_id}/allowances/{allowance_id}");
    let account_id = wire::parse_account_id(&account_id)?;
    let allowance_id = parse_id("allowance_id", &allowance_id, AllowanceId::parse)?;
    let command = Command::EndAllowances { account_id, allowances: vec![allowance_id], plan: false };
    let fingerprint = || Ok(bodiless_fingerprint("DELETE", &path, ""));
    match state.execute(command, &key, fingerprint).await? {
        Ok(Outcome::AllowancesEnded { allowances, .. }) => match allowances.first() {
            Some(allowance) => Ok(json(StatusCode::OK, allowance_response(allowance, state.clock.now()))),
            None => Err(ApiError::internal()),
        },
        Ok(other) => Err(unexpected_outcome("end_allowances", &other)),
        Err(rejection) => Err(rejection.into()),
    }
}

/// Define a plan: a named set of allowances accounts subscribe to. Plans never change; the same
/// id again answers with the plan as first defined (200), or `plan_exists` if it differs.
#[utoipa::path(
    post, path = "/v1/plans", tag = "allowances",
    request_body = PlanRequest,
    responses(
        (status = 201, body = PlanResponse),
        (status = 200, description = "the same plan was defined before", body = PlanResponse),
        (status = 409, description = "plan_exists (another definition under this id)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "invalid_amount, invalid_request, unknown_period, unknown_time_zone, anchor_out_of_range", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn create_plan(
    State(state): State<AppState>,
    _auth: RequireAdmin,
    body: JsonBody<PlanRequest>,
) -> Result<Response, ApiError> {
    let request = &body.value;
    let plan_id = parse_id("plan_id", &request.plan_id, PlanId::parse)?;
    if request.name.is_empty() || request.name.len() > PLAN_NAME_BYTES_MAX {
        return Err(ApiError::invalid_request(format!("name: 1 to {PLAN_NAME_BYTES_MAX} bytes")));
    }
    if request.allowances.is_empty() || request.allowances.len() > PLAN_ALLOWANCES_MAX {
        return Err(ApiError::invalid_request(format!("allowances: 1 to {PLAN_ALLOWANCES_MAX} of them")));
    }
    let allowances = request
        .allowances
        .iter()
        .map(|allowance| {
            Ok(PlanAllowance {
                amount: parse_positive_amount("amount", &allowance.amount)?,
                priority: allowance.priority.unwrap_or(ALLOWANCE_PRIORITY_DEFAULT),
                rollover: parse_rollover(allowance.rollover.as_deref(), allowance.rollover_cap.as_deref())?,
                schedule: parse_schedule(&allowance.period, &allowance.timezone, allowance.anchor.as_deref())?,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    let plan = Plan { plan_id, name: request.name.clone(), allowances, created_at: state.clock.now() };
    match state.store.put_plan(&plan).await? {
        PlanPut::Created(plan) => Ok(json(StatusCode::CREATED, plan_response(&plan))),
        PlanPut::Exists(existing) if existing.same_definition(&plan) => {
            Ok(json(StatusCode::OK, plan_response(&existing)))
        }
        PlanPut::Exists(_) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "plan_exists",
            "a different plan has this id (plans never change: define a new id)",
        )),
    }
}

/// Every plan, in id order.
#[utoipa::path(
    get, path = "/v1/plans", tag = "allowances",
    responses((status = 200, body = PlansResponse)),
    security(("bearer" = []))
)]
pub async fn list_plans(State(state): State<AppState>, _auth: RequireService) -> Result<Response, ApiError> {
    let plans = state.store.plans(PLANS_LIST_MAX).await?;
    Ok(json(StatusCode::OK, PlansResponse { plans: plans.iter().map(plan_response).collect() }))
}

fn plan_not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "plan_not_found", "no such plan")
}

/// One plan.
#[utoipa::path(
    get, path = "/v1/plans/{plan_id}", tag = "allowances",
    params(("plan_id" = String, Path)),
    responses(
        (status = 200, body = PlanResponse),
        (status = 404, description = "plan_not_found", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_plan(
    State(state): State<AppState>,
    _auth: RequireService,
    ApiPath(plan_id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let plan_id = parse_id("plan_id", &plan_id, PlanId::parse)?;
    let plan = state.store.plan(&plan_id).await?.ok_or_else(plan_not_found)?;
    Ok(json(StatusCode::OK, plan_response(&plan)))
}

/// Subscribe an account to a plan, or switch it: the current plan's allowances end at their
/// current period's end (credits already granted stay; no proration), the new plan's start now
/// (their current period granted at once). Subscribing to the plan in force changes nothing.
#[utoipa::path(
    post, path = "/v1/accounts/{account_id}/plan", tag = "allowances",
    params(("account_id" = String, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body = SubscribeRequest,
    responses(
        (status = 200, body = SubscriptionResponse),
        (status = 404, description = "plan_not_found", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "allowance_limit, idempotency_conflict", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn subscribe_plan(
    State(state): State<AppState>,
    _auth: RequireAdmin,
    ApiPath(account_id): ApiPath<String>,
    key: IdempotencyKey,
    body: JsonBody<SubscribeRequest>,
) -> Result<Response, ApiError> {
    let account_id = wire::parse_account_id(&account_id)?;
    let plan_id = parse_id("plan_id", &body.value.plan_id, PlanId::parse)?;
    let plan = state.store.plan(&plan_id).await?.ok_or_else(plan_not_found)?;
    let allowances = plan.allowances_for(&account_id, state.clock.now(), new_allowance_id);
    let command = Command::SubscribePlan { account_id: account_id.clone(), plan_id, allowances };
    match state.execute(command, &key, || body.fingerprint(None)).await? {
        Ok(Outcome::PlanSubscribed { plan_id, allowances, ended }) => Ok(json(
            StatusCode::OK,
            SubscriptionResponse {
                account_id: account_id.to_string(),
                plan_id: plan_id.to_string(),
                allowances: allowances_of(&allowances, &state),
                ended: allowances_of(&ended, &state),
            },
        )),
        Ok(other) => Err(unexpected_outcome("subscribe_plan", &other)),
        Err(rejection) => Err(rejection.into()),
    }
}
