//! Plans: named sets of allowances an account subscribes to (`Command::SubscribePlan`).
//!
//! A plan is written once and never changed (a new price is a new plan id), so an account's
//! allowances always say which plan they came from and what it granted. Every store keeps plans
//! as one JSON document per plan ([`encode_plan`]).

use ledger::{AccountId, AllowanceId, Amount, PlanId, Reference, Rollover, Timestamp};
use serde_json::{json, Value};

use crate::allowances::{AllowanceSchedule, AllowanceSpec};
use crate::codec::undecodable;
use crate::StoreError;

/// Most allowances one plan has: a switch keeps the old plan's allowances until their period
/// ends, so two plans must fit under `ledger::ALLOWANCES_ACTIVE_MAX` together.
pub const PLAN_ALLOWANCES_MAX: usize = ledger::ALLOWANCES_ACTIVE_MAX / 2;

/// Longest plan name, in bytes.
pub const PLAN_NAME_BYTES_MAX: usize = 200;

/// One allowance of a plan, as every subscriber gets it.
#[derive(Clone, Debug)]
pub struct PlanAllowance {
    pub amount: Amount,
    pub priority: i32,
    pub rollover: Rollover,
    pub schedule: AllowanceSchedule,
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub plan_id: PlanId,
    pub name: String,
    pub allowances: Vec<PlanAllowance>,
    pub created_at: Timestamp,
}

impl Plan {
    /// Whether `other` defines the same plan (a repeated create answers with the first).
    pub fn same_definition(&self, other: &Plan) -> bool {
        encode_definition(self) == encode_definition(other)
    }

    /// The allowances an account subscribing at `now` gets, with ids from `new_id`.
    pub fn allowances_for(
        &self,
        account_id: &AccountId,
        now: Timestamp,
        mut new_id: impl FnMut() -> AllowanceId,
    ) -> Vec<ledger::Allowance> {
        self.allowances
            .iter()
            .map(|allowance| {
                AllowanceSpec {
                    allowance_id: new_id(),
                    account_id: account_id.clone(),
                    amount: allowance.amount,
                    priority: allowance.priority,
                    rollover: allowance.rollover,
                    schedule: allowance.schedule.clone(),
                    starts_at: now,
                    ends_at: None,
                    reference: Reference::parse(&format!("plan:{}", self.plan_id)).ok(),
                    plan_id: Some(self.plan_id.clone()),
                }
                .into_allowance()
            })
            .collect()
    }
}

/// What [`crate::LedgerStore::put_plan`] did.
#[derive(Clone, Debug)]
pub enum PlanPut {
    Created(Plan),
    /// A plan with this id existed: it, unchanged.
    Exists(Plan),
}

fn encode_definition(plan: &Plan) -> Value {
    let allowances: Vec<Value> = plan
        .allowances
        .iter()
        .map(|allowance| {
            let cap = match allowance.rollover {
                Rollover::Cap(cap) => json!(cap.micros()),
                Rollover::None | Rollover::Keep => Value::Null,
            };
            json!({
                "amount": allowance.amount.micros(),
                "priority": allowance.priority,
                "rollover": allowance.rollover.kind_str(),
                "rollover_cap": cap,
                "schedule": allowance.schedule.to_text(),
            })
        })
        .collect();
    json!({"plan_id": plan.plan_id.as_str(), "name": plan.name, "allowances": allowances})
}

/// The text every store keeps for a plan.
pub fn encode_plan(plan: &Plan) -> String {
    let mut value = encode_definition(plan);
    value["created_at"] = json!(plan.created_at.micros());
    value.to_string()
}

/// Reads what [`encode_plan`] wrote.
pub fn decode_plan(text: &str) -> Result<Plan, StoreError> {
    let value: Value = serde_json::from_str(text).map_err(|error| undecodable("plan").with_source(error))?;
    let text_of = |value: &Value, name: &str| value.get(name).and_then(Value::as_str).map(str::to_owned);
    let plan_id =
        text_of(&value, "plan_id").and_then(|id| PlanId::parse(&id).ok()).ok_or_else(|| undecodable("plan_id"))?;
    let name = text_of(&value, "name").ok_or_else(|| undecodable("plan name"))?;
    let created_at = value.get("created_at").and_then(Value::as_i64).ok_or_else(|| undecodable("plan created_at"))?;
    let list = value.get("allowances").and_then(Value::as_array).ok_or_else(|| undecodable("plan allowances"))?;
    let allowances = list
        .iter()
        .map(|item| {
            let micros = |name: &str| item.get(name).and_then(Value::as_u64).map(Amount::from_micros);
            let rollover = match text_of(item, "rollover").as_deref() {
                Some("none") => Rollover::None,
                Some("keep") => Rollover::Keep,
                Some("cap") => Rollover::Cap(micros("rollover_cap").ok_or_else(|| undecodable("rollover_cap"))?),
                _ => return Err(undecodable("rollover")),
            };
            let priority =
                item.get("priority").and_then(Value::as_i64).and_then(|priority| i32::try_from(priority).ok());
            Ok(PlanAllowance {
                amount: micros("amount").ok_or_else(|| undecodable("plan amount"))?,
                priority: priority.ok_or_else(|| undecodable("plan priority"))?,
                rollover,
                schedule: AllowanceSchedule::parse_text(&text_of(item, "schedule").unwrap_or_default())?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Plan { plan_id, name, allowances, created_at: Timestamp::from_micros(created_at) })
}
