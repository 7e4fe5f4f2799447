//! Allowances and plans: recurring credits granted every day, week or month.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

/// `POST /v1/accounts/{account_id}/allowances`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AllowanceRequest {
    /// Credits granted each period: a decimal string.
    #[schema(value_type = String, example = "10")]
    pub amount: Box<RawValue>,
    /// day | week | month
    #[schema(example = "day")]
    pub period: String,
    /// An IANA time zone name; periods follow its local calendar (DST included).
    #[schema(example = "Asia/Seoul")]
    pub timezone: String,
    /// An RFC 3339 time whose local time of day (and weekday, or day of month) every period
    /// starts at. Default: 00:00; weeks on Monday; months on the 1st.
    pub anchor: Option<String>,
    /// none (default): unspent credits expire at the period's end · keep: they stay · cap: they
    /// stay up to `rollover_cap` in total (the excess expires when the next period starts).
    #[schema(example = "none")]
    pub rollover: Option<String>,
    /// With `rollover: cap`: the most earlier periods' credits kept, a decimal string.
    #[schema(value_type = Option<String>, example = "5")]
    pub rollover_cap: Option<Box<RawValue>>,
    /// Spend order of the period grants: lower is spent first. Default 100.
    pub priority: Option<i32>,
    /// No period is granted before this time (RFC 3339). Default: now, so the current period is
    /// granted at once.
    pub starts_at: Option<String>,
    /// No period starting at or after this time is granted (RFC 3339). Default: never.
    pub ends_at: Option<String>,
    /// A label kept with the allowance.
    pub reference: Option<String>,
}

/// A period of an allowance.
#[derive(Debug, Serialize, ToSchema)]
pub struct PeriodResponse {
    pub start: String,
    pub end: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AllowanceResponse {
    pub allowance_id: String,
    pub account_id: String,
    pub amount: String,
    /// day | week | month
    pub period: String,
    pub timezone: String,
    pub anchor: Option<String>,
    /// none | keep | cap
    pub rollover: String,
    pub rollover_cap: Option<String>,
    pub priority: i32,
    pub starts_at: String,
    /// When it ends (no period starting then or later is granted); set by a DELETE to the
    /// current period's end.
    pub ends_at: Option<String>,
    pub reference: Option<String>,
    /// The plan it came from.
    pub plan_id: Option<String>,
    pub created_at: String,
    /// The period containing now, if the allowance is in force.
    pub current_period: Option<PeriodResponse>,
    /// The grant reference of the current period: `<allowance_id>:<local period start>`.
    pub current_grant_reference: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AllowancesResponse {
    /// The allowances that have not ended, oldest first.
    pub allowances: Vec<AllowanceResponse>,
}

/// One allowance of `POST /v1/plans`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanAllowanceRequest {
    #[schema(value_type = String, example = "500")]
    pub amount: Box<RawValue>,
    /// day | week | month
    pub period: String,
    pub timezone: String,
    pub anchor: Option<String>,
    /// none (default): unspent credits expire at the period's end · keep: they stay · cap: they
    /// stay up to `rollover_cap` in total (the excess expires when the next period starts).
    #[schema(example = "none")]
    pub rollover: Option<String>,
    /// With `rollover: cap`: the most earlier periods' credits kept, a decimal string.
    #[schema(value_type = Option<String>, example = "5")]
    pub rollover_cap: Option<Box<RawValue>>,
    pub priority: Option<i32>,
}

/// `POST /v1/plans`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanRequest {
    /// 1-128 characters of [A-Za-z0-9._-]; plans never change, so a new price is a new id.
    #[schema(example = "pro-2026")]
    pub plan_id: String,
    pub name: String,
    /// 1 to 8 allowances.
    pub allowances: Vec<PlanAllowanceRequest>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PlanAllowanceResponse {
    pub amount: String,
    pub period: String,
    pub timezone: String,
    pub anchor: Option<String>,
    pub rollover: String,
    pub rollover_cap: Option<String>,
    pub priority: i32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PlanResponse {
    pub plan_id: String,
    pub name: String,
    pub allowances: Vec<PlanAllowanceResponse>,
    pub created_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PlansResponse {
    pub plans: Vec<PlanResponse>,
}

/// `POST /v1/accounts/{account_id}/plan`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscribeRequest {
    pub plan_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionResponse {
    pub account_id: String,
    pub plan_id: String,
    /// The plan's allowances on this account (granted for the current period at once).
    pub allowances: Vec<AllowanceResponse>,
    /// The previous plan's allowances, now ending at their current period's end.
    pub ended: Vec<AllowanceResponse>,
}
