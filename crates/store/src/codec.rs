//! Text forms of values that stores keep in a single column: a pending hold's allocations, the
//! recorded result of an idempotent request, and a whole video job ([`encode_job`]).
//!
//! The ledger crate has no serde on purpose; this module is the one place that writes its values
//! as JSON for storage, so both adapters store byte-identical records.

use ledger::{
    AccountId, Allocation, Allowance, AllowanceId, Amount, Balances, Grant, GrantId, GrantKind, Hold, HoldId,
    HoldState, Outcome, PlanId, Reference, Rejection, Rollover, Timestamp,
};
use serde_json::{json, Map, Value};

use crate::ids::{ArtifactId, JobId, RunId, ThreadId};
use crate::jobs::{JobRecord, JobStatus};
use crate::StoreError;

/// A stored value that does not decode: [`StoreError::corrupt`] with the wording every adapter
/// uses for it (`what` names the value).
pub fn undecodable(what: &str) -> StoreError {
    StoreError::corrupt(format!("undecodable stored {what}"))
}

pub fn encode_allocations(allocations: &[Allocation]) -> String {
    let list: Vec<Value> = allocations
        .iter()
        .map(|allocation| json!([allocation.grant_id.as_str(), allocation.amount.micros()]))
        .collect();
    Value::Array(list).to_string()
}

pub fn decode_allocations(text: &str) -> Result<Vec<Allocation>, StoreError> {
    let value: Value = serde_json::from_str(text).map_err(|error| undecodable("allocations").with_source(error))?;
    let list = value.as_array().ok_or_else(|| undecodable("allocations"))?;
    list.iter()
        .map(|item| {
            let grant_id = item.get(0).and_then(Value::as_str).and_then(|id| GrantId::parse(id).ok());
            let micros = item.get(1).and_then(Value::as_u64);
            match (grant_id, micros) {
                (Some(grant_id), Some(micros)) => Ok(Allocation { grant_id, amount: Amount::from_micros(micros) }),
                _ => Err(undecodable("allocation")),
            }
        })
        .collect()
}

fn opt_ts(at: Option<Timestamp>) -> Value {
    at.map_or(Value::Null, |at| json!(at.micros()))
}

fn opt_ref(reference: Option<&Reference>) -> Value {
    reference.map_or(Value::Null, |reference| json!(reference.as_str()))
}

fn encode_grant(grant: &Grant) -> Value {
    json!({
        "grant_id": grant.grant_id.as_str(),
        "account_id": grant.account_id.as_str(),
        "kind": grant.kind.as_str(),
        "amount": grant.amount.micros(),
        "free": grant.free.micros(),
        "pinned": grant.pinned.micros(),
        "priority": grant.priority,
        "expires_at": opt_ts(grant.expires_at),
        "created_at": grant.created_at.micros(),
        "reference": opt_ref(grant.reference.as_ref()),
        "metadata": grant.metadata,
        "live": grant.live,
        "voided_at": opt_ts(grant.voided_at),
    })
}

fn encode_hold(hold: &Hold) -> Value {
    json!({
        "hold_id": hold.hold_id.as_str(),
        "account_id": hold.account_id.as_str(),
        "amount": hold.amount.micros(),
        "captured": hold.captured.micros(),
        "remaining": hold.remaining.micros(),
        "refunded": hold.refunded.micros(),
        "state": hold.state.as_str(),
        "expires_at": hold.expires_at.micros(),
        "created_at": hold.created_at.micros(),
        "reference": opt_ref(hold.reference.as_ref()),
        "metadata": hold.metadata,
        "allocations": encode_allocations(&hold.allocations),
    })
}

/// Encodes an allowance as the SQL adapters' `data` column holds it (every field but `due`,
/// which is never stored).
pub fn encode_allowance(allowance: &Allowance) -> Value {
    let cap = match allowance.rollover {
        Rollover::Cap(cap) => json!(cap.micros()),
        Rollover::None | Rollover::Keep => Value::Null,
    };
    json!({
        "allowance_id": allowance.allowance_id.as_str(),
        "account_id": allowance.account_id.as_str(),
        "amount": allowance.amount.micros(),
        "priority": allowance.priority,
        "rollover": allowance.rollover.kind_str(),
        "rollover_cap": cap,
        "schedule": allowance.schedule,
        "starts_at": allowance.starts_at.micros(),
        "ends_at": opt_ts(allowance.ends_at),
        "reference": opt_ref(allowance.reference.as_ref()),
        "plan_id": opt_text(allowance.plan_id.as_ref().map(PlanId::as_str)),
        "created_at": allowance.created_at.micros(),
        "granted_period": opt_ts(allowance.granted_period),
        "next_due_at": opt_ts(allowance.next_due_at),
    })
}

/// Decodes what [`encode_allowance`] wrote, as text.
pub fn decode_allowance_text(text: &str) -> Result<Allowance, StoreError> {
    let value: Value = serde_json::from_str(text).map_err(|error| undecodable("allowance").with_source(error))?;
    decode_allowance(&Fields(value.as_object().ok_or_else(|| undecodable("allowance"))?))
}

fn decode_allowance(fields: &Fields<'_>) -> Result<Allowance, StoreError> {
    let rollover = match fields.str("rollover")? {
        "none" => Rollover::None,
        "keep" => Rollover::Keep,
        "cap" => Rollover::Cap(fields.amount("rollover_cap")?),
        _ => return Err(undecodable("rollover")),
    };
    // Not parsed here: it is read on every load, and needed only when a period is to be
    // computed (`allowances::due_period`), which a schedule validated when written never fails.
    let schedule = fields.str("schedule")?.to_owned();
    Ok(Allowance {
        allowance_id: AllowanceId::parse(fields.str("allowance_id")?).map_err(|_| undecodable("allowance_id"))?,
        account_id: AccountId::parse(fields.str("account_id")?).map_err(|_| undecodable("account_id"))?,
        amount: fields.amount("amount")?,
        priority: i32::try_from(fields.i64("priority")?).map_err(|_| undecodable("priority"))?,
        rollover,
        schedule,
        starts_at: fields.ts("starts_at")?,
        ends_at: fields.opt_ts("ends_at")?,
        reference: fields.opt_ref("reference")?,
        plan_id: match fields.opt_str("plan_id")? {
            None => None,
            Some(text) => Some(PlanId::parse(text).map_err(|_| undecodable("plan_id"))?),
        },
        created_at: fields.ts("created_at")?,
        granted_period: fields.opt_ts("granted_period")?,
        next_due_at: fields.opt_ts("next_due_at")?,
        due: None,
    })
}

fn decode_allowances(fields: &Fields<'_>, name: &str) -> Result<Vec<Allowance>, StoreError> {
    let list = fields.value(name)?.as_array().ok_or_else(|| undecodable(name))?;
    list.iter().map(|item| decode_allowance(&Fields(item.as_object().ok_or_else(|| undecodable(name))?))).collect()
}

fn encode_allowances(allowances: &[Allowance]) -> Value {
    Value::Array(allowances.iter().map(encode_allowance).collect())
}

/// Encodes the result of a command, as recorded for idempotent replay.
pub fn encode_result(result: &Result<Outcome, Rejection>) -> String {
    let value = match result {
        Ok(Outcome::Granted { grant, created }) => {
            json!({"ok": "granted", "grant": encode_grant(grant), "created": created})
        }
        Ok(Outcome::Held { hold }) => json!({"ok": "held", "hold": encode_hold(hold)}),
        Ok(Outcome::Captured { hold }) => json!({"ok": "captured", "hold": encode_hold(hold)}),
        Ok(Outcome::Released { hold, changed }) => {
            json!({"ok": "released", "hold": encode_hold(hold), "changed": changed})
        }
        Ok(Outcome::Extended { hold }) => json!({"ok": "extended", "hold": encode_hold(hold)}),
        Ok(Outcome::Debited { account_id, amount, balances }) => json!({
            "ok": "debited",
            "account_id": account_id.as_str(),
            "amount": amount.micros(),
            "balance": balances.balance.micros(),
            "held": balances.held.micros(),
            "available": balances.available.micros(),
        }),
        Ok(Outcome::Refunded { grant, created }) => {
            json!({"ok": "refunded", "grant": encode_grant(grant), "created": created})
        }
        Ok(Outcome::Swept { entries }) => json!({"ok": "swept", "entries": entries}),
        Ok(Outcome::AllowanceCreated { allowance }) => {
            json!({"ok": "allowance_created", "allowance": encode_allowance(allowance)})
        }
        Ok(Outcome::AllowancesEnded { allowances, changed }) => {
            json!({"ok": "allowances_ended", "allowances": encode_allowances(allowances), "changed": changed})
        }
        Ok(Outcome::LowBalanceThresholdSet { account_id, threshold, balances }) => json!({
            "ok": "low_balance_threshold_set",
            "account_id": account_id.as_str(),
            "threshold": threshold.map_or(Value::Null, |threshold| json!(threshold.micros())),
            "balance": balances.balance.micros(),
            "held": balances.held.micros(),
            "available": balances.available.micros(),
        }),
        Ok(Outcome::GrantVoided { grant, voided }) => {
            json!({"ok": "grant_voided", "grant": encode_grant(grant), "voided": voided.micros()})
        }
        Ok(Outcome::PlanSubscribed { plan_id, allowances, ended }) => json!({
            "ok": "plan_subscribed",
            "plan_id": plan_id.as_str(),
            "allowances": encode_allowances(allowances),
            "ended": encode_allowances(ended),
        }),
        Err(rejection) => encode_rejection(rejection),
    };
    value.to_string()
}

fn encode_rejection(rejection: &Rejection) -> Value {
    match rejection {
        Rejection::InsufficientCredits { required, available } => {
            json!({"err": "insufficient_credits", "required": required.micros(), "available": available.micros()})
        }
        Rejection::AccountNotFound => json!({"err": "account_not_found"}),
        Rejection::HoldNotFound => json!({"err": "hold_not_found"}),
        Rejection::HoldNotPending { state } => json!({"err": "hold_not_pending", "state": state.as_str()}),
        Rejection::HoldExpired => json!({"err": "hold_expired"}),
        Rejection::AmountExceedsHold { requested, remaining } => {
            json!({"err": "amount_exceeds_hold", "requested": requested.micros(), "remaining": remaining.micros()})
        }
        Rejection::RefundExceedsCharges { requested, refundable } => {
            json!({"err": "refund_exceeds_charges", "requested": requested.micros(), "refundable": refundable.micros()})
        }
        Rejection::BalanceLimit => json!({"err": "balance_limit"}),
        Rejection::ExpiryNotInFuture => json!({"err": "expiry_not_in_future"}),
        Rejection::AllowanceLimit => json!({"err": "allowance_limit"}),
        Rejection::AllowanceNotFound => json!({"err": "allowance_not_found"}),
        Rejection::GrantNotFound => json!({"err": "grant_not_found"}),
        Rejection::GrantCreditsHeld { held } => json!({"err": "grant_credits_held", "held": held.micros()}),
    }
}

struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn value(&self, name: &str) -> Result<&Value, StoreError> {
        self.0.get(name).ok_or_else(|| undecodable(name))
    }
    fn u64(&self, name: &str) -> Result<u64, StoreError> {
        self.value(name)?.as_u64().ok_or_else(|| undecodable(name))
    }
    fn i64(&self, name: &str) -> Result<i64, StoreError> {
        self.value(name)?.as_i64().ok_or_else(|| undecodable(name))
    }
    fn amount(&self, name: &str) -> Result<Amount, StoreError> {
        self.u64(name).map(Amount::from_micros)
    }
    /// An amount added after records were first written: absent in older records, zero there.
    fn amount_or_zero(&self, name: &str) -> Result<Amount, StoreError> {
        match self.0.get(name) {
            None => Ok(Amount::ZERO),
            Some(_) => self.amount(name),
        }
    }
    fn str(&self, name: &str) -> Result<&str, StoreError> {
        self.value(name)?.as_str().ok_or_else(|| undecodable(name))
    }
    fn bool(&self, name: &str) -> Result<bool, StoreError> {
        self.value(name)?.as_bool().ok_or_else(|| undecodable(name))
    }
    fn ts(&self, name: &str) -> Result<Timestamp, StoreError> {
        self.i64(name).map(Timestamp::from_micros)
    }
    fn opt_ts(&self, name: &str) -> Result<Option<Timestamp>, StoreError> {
        match self.value(name)? {
            Value::Null => Ok(None),
            other => other.as_i64().map(|micros| Some(Timestamp::from_micros(micros))).ok_or_else(|| undecodable(name)),
        }
    }
    fn opt_ref(&self, name: &str) -> Result<Option<Reference>, StoreError> {
        match self.value(name)? {
            Value::Null => Ok(None),
            other => {
                other.as_str().and_then(|text| Reference::parse(text).ok()).map(Some).ok_or_else(|| undecodable(name))
            }
        }
    }
    fn opt_str(&self, name: &str) -> Result<Option<&str>, StoreError> {
        match self.value(name)? {
            Value::Null => Ok(None),
            other => other.as_str().map(Some).ok_or_else(|| undecodable(name)),
        }
    }
    fn object(&self, name: &str) -> Result<Fields<'_>, StoreError> {
        self.value(name)?.as_object().map(Fields).ok_or_else(|| undecodable(name))
    }
}

fn decode_grant(fields: &Fields<'_>) -> Result<Grant, StoreError> {
    Ok(Grant {
        grant_id: GrantId::parse(fields.str("grant_id")?).map_err(|_| undecodable("grant_id"))?,
        account_id: AccountId::parse(fields.str("account_id")?).map_err(|_| undecodable("account_id"))?,
        kind: GrantKind::parse(fields.str("kind")?).ok_or_else(|| undecodable("kind"))?,
        amount: fields.amount("amount")?,
        free: fields.amount("free")?,
        // Recorded results from before grants kept `pinned` (issue 16) have none.
        pinned: fields.amount_or_zero("pinned")?,
        priority: i32::try_from(fields.i64("priority")?).map_err(|_| undecodable("priority"))?,
        expires_at: fields.opt_ts("expires_at")?,
        created_at: fields.ts("created_at")?,
        reference: fields.opt_ref("reference")?,
        metadata: fields.str("metadata")?.to_owned(),
        live: fields.bool("live")?,
        // Recorded results from before grants could be voided (issue 14) have none.
        voided_at: match fields.0.get("voided_at") {
            None => None,
            Some(_) => fields.opt_ts("voided_at")?,
        },
    })
}

fn decode_hold(fields: &Fields<'_>) -> Result<Hold, StoreError> {
    Ok(Hold {
        hold_id: HoldId::parse(fields.str("hold_id")?).map_err(|_| undecodable("hold_id"))?,
        account_id: AccountId::parse(fields.str("account_id")?).map_err(|_| undecodable("account_id"))?,
        amount: fields.amount("amount")?,
        captured: fields.amount("captured")?,
        remaining: fields.amount("remaining")?,
        refunded: fields.amount("refunded")?,
        state: HoldState::parse(fields.str("state")?).ok_or_else(|| undecodable("state"))?,
        expires_at: fields.ts("expires_at")?,
        created_at: fields.ts("created_at")?,
        reference: fields.opt_ref("reference")?,
        metadata: fields.str("metadata")?.to_owned(),
        allocations: decode_allocations(fields.str("allocations")?)?,
    })
}

/// Decodes what [`encode_result`] wrote.
pub fn decode_result(text: &str) -> Result<Result<Outcome, Rejection>, StoreError> {
    let value: Value = serde_json::from_str(text).map_err(|error| undecodable("result").with_source(error))?;
    let fields = Fields(value.as_object().ok_or_else(|| undecodable("result"))?);
    if let Some(kind) = fields.0.get("ok").and_then(Value::as_str) {
        let outcome = match kind {
            "granted" => {
                Outcome::Granted { grant: decode_grant(&fields.object("grant")?)?, created: fields.bool("created")? }
            }
            "held" => Outcome::Held { hold: decode_hold(&fields.object("hold")?)? },
            "captured" => Outcome::Captured { hold: decode_hold(&fields.object("hold")?)? },
            "released" => {
                Outcome::Released { hold: decode_hold(&fields.object("hold")?)?, changed: fields.bool("changed")? }
            }
            "extended" => Outcome::Extended { hold: decode_hold(&fields.object("hold")?)? },
            "debited" => Outcome::Debited {
                account_id: AccountId::parse(fields.str("account_id")?).map_err(|_| undecodable("account_id"))?,
                amount: fields.amount("amount")?,
                balances: Balances {
                    balance: fields.amount("balance")?,
                    held: fields.amount("held")?,
                    available: fields.amount("available")?,
                },
            },
            "refunded" => {
                Outcome::Refunded { grant: decode_grant(&fields.object("grant")?)?, created: fields.bool("created")? }
            }
            "swept" => Outcome::Swept { entries: usize::try_from(fields.u64("entries")?).unwrap_or(usize::MAX) },
            "allowance_created" => {
                Outcome::AllowanceCreated { allowance: Box::new(decode_allowance(&fields.object("allowance")?)?) }
            }
            "allowances_ended" => Outcome::AllowancesEnded {
                allowances: decode_allowances(&fields, "allowances")?,
                changed: fields.bool("changed")?,
            },
            "low_balance_threshold_set" => Outcome::LowBalanceThresholdSet {
                account_id: AccountId::parse(fields.str("account_id")?).map_err(|_| undecodable("account_id"))?,
                threshold: match fields.value("threshold")? {
                    Value::Null => None,
                    _ => Some(fields.amount("threshold")?),
                },
                balances: Balances {
                    balance: fields.amount("balance")?,
                    held: fields.amount("held")?,
                    available: fields.amount("available")?,
                },
            },
            "grant_voided" => Outcome::GrantVoided {
                grant: decode_grant(&fields.object("grant")?)?,
                voided: fields.amount("voided")?,
            },
            "plan_subscribed" => Outcome::PlanSubscribed {
                plan_id: PlanId::parse(fields.str("plan_id")?).map_err(|_| undecodable("plan_id"))?,
                allowances: decode_allowances(&fields, "allowances")?,
                ended: decode_allowances(&fields, "ended")?,
            },
            _ => return Err(undecodable("result kind")),
        };
        return Ok(Ok(outcome));
    }
    let rejection = match fields.str("err")? {
        "insufficient_credits" => Rejection::InsufficientCredits {
            required: fields.amount("required")?,
            available: fields.amount("available")?,
        },
        "account_not_found" => Rejection::AccountNotFound,
        "hold_not_found" => Rejection::HoldNotFound,
        "hold_not_pending" => Rejection::HoldNotPending {
            state: HoldState::parse(fields.str("state")?).ok_or_else(|| undecodable("state"))?,
        },
        "hold_expired" => Rejection::HoldExpired,
        "amount_exceeds_hold" => Rejection::AmountExceedsHold {
            requested: fields.amount("requested")?,
            remaining: fields.amount("remaining")?,
        },
        "refund_exceeds_charges" => Rejection::RefundExceedsCharges {
            requested: fields.amount("requested")?,
            refundable: fields.amount("refundable")?,
        },
        "balance_limit" => Rejection::BalanceLimit,
        "expiry_not_in_future" => Rejection::ExpiryNotInFuture,
        "allowance_limit" => Rejection::AllowanceLimit,
        "allowance_not_found" => Rejection::AllowanceNotFound,
        "grant_not_found" => Rejection::GrantNotFound,
        "grant_credits_held" => Rejection::GrantCreditsHeld { held: fields.amount("held")? },
        _ => return Err(undecodable("rejection kind")),
    };
    Ok(Err(rejection))
}

fn opt_text(text: Option<&str>) -> Value {
    text.map_or(Value::Null, |text| json!(text))
}

/// Encodes every field of a job, as the `data` column of both SQL adapters holds it. The columns
/// beside it are copies of fields queries filter on, always written from the same record.
pub fn encode_job(job: &JobRecord) -> String {
    json!({
        "job_id": job.job_id.as_str(),
        "account_id": job.account_id.as_str(),
        "thread_id": job.thread_id.as_str(),
        "run_id": job.run_id.as_str(),
        "hold_id": job.hold_id.as_str(),
        "price": job.price.micros(),
        "status": job.status.as_str(),
        "stage": job.stage,
        "progress_percent": job.progress_percent,
        "input": job.input,
        "lease_holder": opt_text(job.lease_holder.as_deref()),
        "lease_expires_at": opt_ts(job.lease_expires_at),
        "heartbeat_at": opt_ts(job.heartbeat_at),
        "cancel_requested": job.cancel_requested,
        "retry_source_job_id": opt_text(job.retry_source_job_id.as_ref().map(JobId::as_str)),
        "attempts": job.attempts,
        "run_after": job.run_after.micros(),
        "error_stage": opt_text(job.error_stage.as_deref()),
        "error_code": opt_text(job.error_code.as_deref()),
        "error_detail": opt_text(job.error_detail.as_deref()),
        "refund_applied_at": opt_ts(job.refund_applied_at),
        "artifact_id": opt_text(job.artifact_id.as_ref().map(ArtifactId::as_str)),
        "created_at": job.created_at.micros(),
        "updated_at": job.updated_at.micros(),
        "started_at": opt_ts(job.started_at),
        "finished_at": opt_ts(job.finished_at),
        "version": job.version,
    })
    .to_string()
}

/// Decodes what [`encode_job`] wrote.
pub fn decode_job(text: &str) -> Result<JobRecord, StoreError> {
    let value: Value = serde_json::from_str(text).map_err(|error| undecodable("job").with_source(error))?;
    let fields = Fields(value.as_object().ok_or_else(|| undecodable("job"))?);
    let owned = |name: &str| fields.str(name).map(str::to_owned);
    let opt_owned = |name: &str| fields.opt_str(name).map(|text| text.map(str::to_owned));
    Ok(JobRecord {
        job_id: JobId::parse(fields.str("job_id")?).map_err(|_| undecodable("job job_id"))?,
        account_id: AccountId::parse(fields.str("account_id")?).map_err(|_| undecodable("job account_id"))?,
        thread_id: ThreadId::parse(fields.str("thread_id")?).map_err(|_| undecodable("job thread_id"))?,
        run_id: RunId::parse(fields.str("run_id")?).map_err(|_| undecodable("job run_id"))?,
        hold_id: HoldId::parse(fields.str("hold_id")?).map_err(|_| undecodable("job hold_id"))?,
        price: fields.amount("price")?,
        status: JobStatus::parse(fields.str("status")?).ok_or_else(|| undecodable("job status"))?,
        stage: owned("stage")?,
        progress_percent: u8::try_from(fields.u64("progress_percent")?).map_err(|_| undecodable("progress_percent"))?,
        input: owned("input")?,
        lease_holder: opt_owned("lease_holder")?,
        lease_expires_at: fields.opt_ts("lease_expires_at")?,
        heartbeat_at: fields.opt_ts("heartbeat_at")?,
        cancel_requested: fields.bool("cancel_requested")?,
        retry_source_job_id: fields
            .opt_str("retry_source_job_id")?
            .map(|text| JobId::parse(text).map_err(|_| undecodable("job retry_source_job_id")))
            .transpose()?,
        attempts: u32::try_from(fields.u64("attempts")?).map_err(|_| undecodable("attempts"))?,
        run_after: fields.ts("run_after")?,
        error_stage: opt_owned("error_stage")?,
        error_code: opt_owned("error_code")?,
        error_detail: opt_owned("error_detail")?,
        refund_applied_at: fields.opt_ts("refund_applied_at")?,
        artifact_id: fields
            .opt_str("artifact_id")?
            .map(|text| ArtifactId::parse(text).map_err(|_| undecodable("job artifact_id")))
            .transpose()?,
        created_at: fields.ts("created_at")?,
        updated_at: fields.ts("updated_at")?,
        started_at: fields.opt_ts("started_at")?,
        finished_at: fields.opt_ts("finished_at")?,
        version: fields.u64("version")?,
    })
}

#[cfg(test)]
mod tests {
    use ledger::{AccountId, Amount, HoldId, Timestamp};

    use super::{decode_job, encode_job};
    use crate::ids::{JobId, RunId, ThreadId};
    use crate::jobs::{JobRecord, JobStatus};
    use crate::StoreError;

    fn job() -> JobRecord {
        let at = Timestamp::from_micros(1_700_000_000_123_456);
        JobRecord {
            job_id: JobId::parse("j1").expect("valid id"),
            account_id: AccountId::parse("u").expect("valid id"),
            thread_id: ThreadId::parse("t").expect("valid id"),
            run_id: RunId::parse("r").expect("valid id"),
            hold_id: HoldId::parse("h").expect("valid id"),
            price: Amount::from_micros(10_000_001),
            status: JobStatus::Canceled,
            stage: "compose".to_owned(),
            progress_percent: 255,
            input: "{\"a\":\"é\\n\"}".to_owned(),
            lease_holder: Some("w".to_owned()),
            lease_expires_at: Some(at.plus_micros(-1)),
            heartbeat_at: None,
            cancel_requested: true,
            retry_source_job_id: None,
            attempts: u32::MAX,
            run_after: Timestamp::from_micros(-5),
            error_stage: None,
            error_code: Some("canceled".to_owned()),
            error_detail: Some(String::new()),
            refund_applied_at: Some(at),
            artifact_id: None,
            created_at: at,
            updated_at: at,
            started_at: None,
            finished_at: Some(at),
            version: i64::MAX as u64,
        }
    }

    #[test]
    fn a_job_round_trips_through_its_text() {
        let job = job();
        let text = encode_job(&job);
        assert_eq!(decode_job(&text).expect("decodes"), job);
        // The same record always encodes to the same text (both SQL stores keep identical bytes).
        assert_eq!(encode_job(&decode_job(&text).expect("decodes")), text);
    }

    #[test]
    fn damaged_job_text_is_undecodable() {
        let text = encode_job(&job());
        let damaged = [
            text.replace("\"status\":\"canceled\"", "\"status\":\"paused\""),
            text.replace("\"progress_percent\":255", "\"progress_percent\":256"),
            text.replace("\"hold_id\":\"h\"", "\"hold_id\":\"\""),
            text.replace("\"heartbeat_at\":null,", ""),
            "[]".to_owned(),
            "{".to_owned(),
        ];
        for text in damaged {
            assert!(matches!(decode_job(&text), Err(StoreError::Corrupt { .. })), "{text}");
        }
    }
}
