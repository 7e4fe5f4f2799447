//! Allowances as the stores see them: the schedule's stored text, and the step every decision
//! and every read takes before the ledger — setting each allowance's `due` period at `now`.
//!
//! The ledger grants a period lazily and exactly (see `ledger::Allowance`) but has no calendar;
//! this module is the one place that asks `calendar` which period contains an instant and names
//! its grant: id `<allowance_id>.<start µs>`, reference `<allowance_id>:<start in RFC 3339, local
//! offset>`. Both are functions of the allowance and the period only, so every instance (and
//! every read, before anything is written) computes the same ones, and the reference's
//! uniqueness among an account's allowance grants backs the allowance's own `granted_period`.

use std::borrow::Cow;

use calendar::{CalendarError, Period, Schedule};
use ledger::{AccountState, Allowance, AllowancePeriod, Command, GrantId, PeriodGrant, Reference, Timestamp};
use serde_json::{json, Value};

use crate::codec::undecodable;
use crate::StoreError;

/// A validated schedule: a period in an IANA zone, optionally anchored. Stored as JSON text in
/// `Allowance::schedule` (`{"period":"day","time_zone":"Asia/Seoul","anchor_micros":null}`).
#[derive(Clone, Debug)]
pub struct AllowanceSchedule {
    schedule: Schedule,
    anchor_micros: Option<i64>,
}

impl AllowanceSchedule {
    pub fn new(
        period: Period,
        time_zone: &str,
        anchor_micros: Option<i64>,
    ) -> Result<AllowanceSchedule, CalendarError> {
        Ok(AllowanceSchedule { schedule: Schedule::new(period, time_zone, anchor_micros)?, anchor_micros })
    }

    pub fn period(&self) -> Period {
        self.schedule.period()
    }

    /// The zone's canonical IANA name.
    pub fn time_zone(&self) -> &str {
        self.schedule.time_zone_name()
    }

    pub fn anchor_micros(&self) -> Option<i64> {
        self.anchor_micros
    }

    pub fn calendar(&self) -> &Schedule {
        &self.schedule
    }

    /// The text kept in `Allowance::schedule`.
    pub fn to_text(&self) -> String {
        json!({"period": self.period().as_str(), "time_zone": self.time_zone(), "anchor_micros": self.anchor_micros})
            .to_string()
    }

    /// Reads what [`AllowanceSchedule::to_text`] wrote.
    pub fn parse_text(text: &str) -> Result<AllowanceSchedule, StoreError> {
        let value: Value = serde_json::from_str(text).map_err(|error| undecodable("schedule").with_source(error))?;
        let period = value.get("period").and_then(Value::as_str).and_then(|text| Period::parse(text).ok());
        let time_zone = value.get("time_zone").and_then(Value::as_str);
        let anchor = match value.get("anchor_micros") {
            None | Some(Value::Null) => Some(None),
            Some(other) => other.as_i64().map(Some),
        };
        match (period, time_zone, anchor) {
            (Some(period), Some(time_zone), Some(anchor)) => AllowanceSchedule::new(period, time_zone, anchor)
                .map_err(|error| undecodable("schedule").with_source(error)),
            _ => Err(undecodable("schedule")),
        }
    }
}

/// The period of `allowance` at `now` with its grant's id and reference, or `None` outside the
/// allowance's life (`starts_at..ends_at`) or when its schedule cannot name one (text that was
/// validated when written always can, up to the calendar's year-9998 limit).
pub fn due_period(allowance: &Allowance, now: Timestamp) -> Option<AllowancePeriod> {
    if now < allowance.starts_at || allowance.has_ended_at(now) {
        return None;
    }
    // The common case needs no calendar: the period granted last ends at `next_due_at`, so
    // while `now` is before it, that period is current and there is nothing to name.
    if let (Some(start), Some(end)) = (allowance.granted_period, allowance.next_due_at) {
        if start <= now && now < end {
            return Some(AllowancePeriod { start, end, grant: None });
        }
    }
    let schedule = AllowanceSchedule::parse_text(&allowance.schedule).ok()?;
    let span = schedule.calendar().period_at(now.micros()).ok()?;
    let start = Timestamp::from_micros(span.start_micros);
    let end = Timestamp::from_micros(span.end_micros);
    if allowance.granted_period.is_some_and(|granted| granted >= start) {
        return Some(AllowancePeriod { start, end, grant: None });
    }
    Some(AllowancePeriod { start, end, grant: Some(period_grant(allowance, &schedule, start)?) })
}

/// The id and reference of the grant of `allowance`'s period starting at `start`.
fn period_grant(allowance: &Allowance, schedule: &AllowanceSchedule, start: Timestamp) -> Option<PeriodGrant> {
    let start_text = schedule.calendar().local_rfc3339(start.micros()).ok()?;
    let grant_id = GrantId::parse(&format!("{}.{}", allowance.allowance_id, start.micros())).ok()?;
    let reference = Reference::parse(&format!("{}:{start_text}", allowance.allowance_id)).ok()?;
    Some(PeriodGrant { grant_id, reference })
}

/// The grant reference of `allowance`'s period at `now` (for display), whether granted or not.
pub fn period_reference(allowance: &Allowance, now: Timestamp) -> Option<Reference> {
    let due = due_period(allowance, now)?;
    let schedule = AllowanceSchedule::parse_text(&allowance.schedule).ok()?;
    period_grant(allowance, &schedule, due.start).map(|grant| grant.reference)
}

/// Sets every loaded allowance's `due` period for a decision or a read at `now`: the step
/// before `ledger::execute_in_place`, `ledger::advance` and `ledger::view`.
pub fn schedule_at(state: &mut AccountState, now: Timestamp) {
    for allowance in &mut state.allowances {
        allowance.due = due_period(allowance, now);
    }
}

/// The command with the `due` periods of the allowances it brings set for `now` (borrowed
/// unchanged when it brings none).
pub fn schedule_command(command: &Command, now: Timestamp) -> Cow<'_, Command> {
    if command.new_allowances().is_empty() {
        return Cow::Borrowed(command);
    }
    let mut command = command.clone();
    for allowance in command.new_allowances_mut() {
        allowance.due = due_period(allowance, now);
    }
    Cow::Owned(command)
}

/// What a caller chooses of a new allowance; [`AllowanceSpec::into_allowance`] makes the record a
/// [`Command::CreateAllowance`] or [`Command::SubscribePlan`] carries (the ledger sets the rest).
#[derive(Clone, Debug)]
pub struct AllowanceSpec {
    pub allowance_id: ledger::AllowanceId,
    pub account_id: ledger::AccountId,
    pub amount: ledger::Amount,
    pub priority: i32,
    pub rollover: ledger::Rollover,
    pub schedule: AllowanceSchedule,
    pub starts_at: Timestamp,
    pub ends_at: Option<Timestamp>,
    pub reference: Option<Reference>,
    pub plan_id: Option<ledger::PlanId>,
}

impl AllowanceSpec {
    pub fn into_allowance(self) -> Allowance {
        Allowance {
            allowance_id: self.allowance_id,
            account_id: self.account_id,
            amount: self.amount,
            priority: self.priority,
            rollover: self.rollover,
            schedule: self.schedule.to_text(),
            starts_at: self.starts_at,
            ends_at: self.ends_at,
            reference: self.reference,
            plan_id: self.plan_id,
            // The ledger's to set when it adds the allowance.
            created_at: self.starts_at,
            granted_period: None,
            next_due_at: None,
            due: None,
        }
    }
}
