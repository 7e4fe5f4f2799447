//! Allowances and plans at the edge: their request fields parsed into the ledger's and the
//! calendar's types, their records rendered for the wire.

use axum::http::StatusCode;
use calendar::{CalendarError, Period};
use ledger::{Allowance, Rollover, Timestamp};
use serde_json::value::RawValue;
use store::allowances::{due_period, period_reference, AllowanceSchedule};
use store::plans::{Plan, PlanAllowance};

use crate::dto::{AllowanceResponse, PeriodResponse, PlanAllowanceResponse, PlanResponse};
use crate::error::ApiError;
use crate::wire::{format_time, parse_amount, parse_time};

/// A calendar error as a 422 with the calendar's own stable code (`unknown_time_zone`,
/// `unknown_period`, `anchor_out_of_range`, `instant_out_of_range`).
fn calendar_error(error: &CalendarError) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, error.code(), error.to_string())
}

/// `period`, `timezone` and `anchor` as a schedule the calendar accepts.
pub fn parse_schedule(period: &str, timezone: &str, anchor: Option<&str>) -> Result<AllowanceSchedule, ApiError> {
    let period = Period::parse(period).map_err(|error| calendar_error(&error))?;
    let anchor = anchor.map(|text| parse_time("anchor", text)).transpose()?;
    AllowanceSchedule::new(period, timezone, anchor.map(Timestamp::micros)).map_err(|error| calendar_error(&error))
}

/// `rollover` (none | keep | cap, default none) and `rollover_cap` (only with cap).
pub fn parse_rollover(rollover: Option<&str>, cap: Option<&RawValue>) -> Result<Rollover, ApiError> {
    match (rollover.unwrap_or("none"), cap) {
        ("none", None) => Ok(Rollover::None),
        ("keep", None) => Ok(Rollover::Keep),
        ("cap", Some(cap)) => Ok(Rollover::Cap(parse_amount("rollover_cap", cap)?)),
        ("cap", None) => Err(ApiError::invalid_request("rollover_cap: required with rollover \"cap\"")),
        ("none" | "keep", Some(_)) => Err(ApiError::invalid_request("rollover_cap: only with rollover \"cap\"")),
        (other, _) => Err(ApiError::invalid_request(format!(
            "rollover: expected \"none\", \"keep\" or \"cap\", got {:?}",
            other.chars().take(32).collect::<String>()
        ))),
    }
}

fn rollover_parts(rollover: Rollover) -> (String, Option<String>) {
    let cap = match rollover {
        Rollover::Cap(cap) => Some(cap.to_string()),
        Rollover::None | Rollover::Keep => None,
    };
    (rollover.kind_str().to_owned(), cap)
}

/// An allowance as it reads at `now`.
pub fn allowance_response(allowance: &Allowance, now: Timestamp) -> AllowanceResponse {
    let schedule = AllowanceSchedule::parse_text(&allowance.schedule).ok();
    let due = due_period(allowance, now);
    let (rollover, rollover_cap) = rollover_parts(allowance.rollover);
    AllowanceResponse {
        allowance_id: allowance.allowance_id.to_string(),
        account_id: allowance.account_id.to_string(),
        amount: allowance.amount.to_string(),
        period: schedule.as_ref().map_or_else(String::new, |schedule| schedule.period().as_str().to_owned()),
        timezone: schedule.as_ref().map_or_else(String::new, |schedule| schedule.time_zone().to_owned()),
        anchor: schedule
            .as_ref()
            .and_then(AllowanceSchedule::anchor_micros)
            .map(|micros| format_time(Timestamp::from_micros(micros))),
        rollover,
        rollover_cap,
        priority: allowance.priority,
        starts_at: format_time(allowance.starts_at),
        ends_at: allowance.ends_at.map(format_time),
        reference: allowance.reference.as_ref().map(ToString::to_string),
        plan_id: allowance.plan_id.as_ref().map(ToString::to_string),
        created_at: format_time(allowance.created_at),
        current_period: due
            .as_ref()
            .map(|due| PeriodResponse { start: format_time(due.start), end: format_time(due.end) }),
        current_grant_reference: due
            .and_then(|_| period_reference(allowance, now))
            .map(|reference| reference.to_string()),
    }
}

pub fn plan_response(plan: &Plan) -> PlanResponse {
    PlanResponse {
        plan_id: plan.plan_id.to_string(),
        name: plan.name.clone(),
        allowances: plan.allowances.iter().map(plan_allowance_response).collect(),
        created_at: format_time(plan.created_at),
    }
}

fn plan_allowance_response(allowance: &PlanAllowance) -> PlanAllowanceResponse {
    let (rollover, rollover_cap) = rollover_parts(allowance.rollover);
    PlanAllowanceResponse {
        amount: allowance.amount.to_string(),
        period: allowance.schedule.period().as_str().to_owned(),
        timezone: allowance.schedule.time_zone().to_owned(),
        anchor: allowance.schedule.anchor_micros().map(|micros| format_time(Timestamp::from_micros(micros))),
        rollover,
        rollover_cap,
        priority: allowance.priority,
    }
}
