//! Conformance checks of recurring allowances, run on every backend: the period appears at its
//! local midnight without any sweeper, expires at the next, is granted once however many
//! commands race for it, rolls over by its rule, ends at its period's end, and plans switch.
//! [`allowances_against_model`] is the property test: random clock moves, debits, holds and
//! reads against a model that walks the calendar period by period.

use std::sync::Arc;

use calendar::Period;
use ledger::{
    AllowanceId, Amount, Command, EntryKind, Outcome, PlanId, Rejection, Rollover, Timestamp, ALLOWANCES_ACTIVE_MAX,
};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngSeed, TestRunner};

use super::{account, balances, cr, new_id, Harness};
use crate::allowances::{AllowanceSchedule, AllowanceSpec};
use crate::{Executed, Request};

/// `text` (RFC 3339) as a ledger timestamp.
fn at(text: &str) -> Timestamp {
    let micros = text.parse::<jiff::Timestamp>().expect("an RFC 3339 instant").as_microsecond();
    Timestamp::from_micros(micros)
}

/// A new allowance of `credits` per `period` in `zone` for account `u`, starting now.
fn spec(h: &Harness, period: Period, zone: &str, credits: &str, rollover: Rollover) -> AllowanceSpec {
    AllowanceSpec {
        allowance_id: AllowanceId::parse(&format!("al{}", new_id())).expect("valid id"),
        account_id: account("u"),
        amount: cr(credits),
        priority: 0,
        rollover,
        schedule: AllowanceSchedule::new(period, zone, None).expect("valid schedule"),
        starts_at: h.clock_now(),
        ends_at: None,
        reference: None,
        plan_id: None,
    }
}

async fn create(h: &Harness, spec: AllowanceSpec) -> Result<ledger::Allowance, Rejection> {
    match h.run(Command::CreateAllowance { allowance: spec.into_allowance() }).await? {
        Outcome::AllowanceCreated { allowance } => Ok(*allowance),
        other => panic!("{other:?}"),
    }
}

/// The account's journal entries of `kind`.
async fn entries_of(h: &Harness, kind: EntryKind) -> Vec<ledger::Entry> {
    let entries = h.store.entries(&account("u"), 0, 1_000).await.expect("store answers");
    entries.into_iter().filter(|entry| entry.kind == kind).collect()
}

/// A daily allowance in Asia/Seoul: granted at once for the current day, visible to a hold at
/// 00:00:00.000 local without any sweep, the day's remainder expiring at the next 00:00, and
/// the sweeper journaling what reads already showed.
pub async fn allowances_daily_seoul_midnight(h: Harness) {
    // 23:00 in Seoul on 1 December 2026.
    h.clock.set(at("2026-12-01T14:00:00Z"));
    let allowance = create(&h, spec(&h, Period::Day, "Asia/Seoul", "10", Rollover::None)).await.unwrap();
    assert_eq!(allowance.granted_period, Some(at("2026-11-30T15:00:00Z")), "today's period, granted at once");
    assert_eq!(allowance.next_due_at, Some(at("2026-12-01T15:00:00Z")));
    let hold = h.hold("u", "4", 7_200).await.unwrap();
    assert_eq!(h.balances("u").await, balances("10", "4", "6"));

    // One microsecond before midnight: still the 1st.
    h.clock.set(at("2026-12-01T14:59:59.999999Z"));
    assert_eq!(h.balances("u").await, balances("10", "4", "6"));
    // 00:00:00.000 on the 2nd: yesterday's free 6 expired, today's 10 arrived, nothing swept.
    h.clock.set(at("2026-12-01T15:00:00Z"));
    assert_eq!(h.balances("u").await, balances("14", "4", "10"));
    let grants = entries_of(&h, EntryKind::Grant).await;
    assert_eq!(grants.len(), 1, "a read writes nothing");
    // A hold at that instant sees the new day's credits.
    h.hold("u", "10", 60).await.unwrap();
    let grants = entries_of(&h, EntryKind::Grant).await;
    assert_eq!(grants.len(), 2, "the hold's decision wrote the new period's grant");
    let reference = grants[1].reference.as_ref().map(|reference| reference.as_str().to_owned());
    assert_eq!(reference, Some(format!("{}:2026-12-02T00:00:00+09:00", allowance.allowance_id)));
    assert_eq!(grants[1].at, at("2026-12-01T15:00:00Z"));
    // The first hold's 4 came from yesterday's grant: capturing 1 leaves 3 that expire.
    h.capture(&hold.hold_id, "1", true).await.unwrap();
    assert_eq!(h.balances("u").await, balances("10", "10", "0"));

    // A day later nobody decided anything: reads show the 3rd's credits, the sweeper writes them.
    h.clock.set(at("2026-12-02T15:00:00Z"));
    assert_eq!(h.balances("u").await, balances("10", "0", "10"));
    let report = h.store.sweep(100).await.unwrap();
    assert!(report.entries >= 2, "the sweep wrote the hold's expiry and the period's grant: {report:?}");
    assert_eq!(entries_of(&h, EntryKind::Grant).await.len(), 3);
    assert_eq!(h.store.sweep(100).await.unwrap().entries, 0, "nothing is due twice");
    assert_eq!(h.balances("u").await, balances("10", "0", "10"));
    h.assert_verified().await;
}

/// Periods missed while nobody looked are not granted afterwards: only the current one.
pub async fn allowances_grant_only_the_current_period(h: Harness) {
    h.clock.set(at("2026-01-10T12:00:00Z"));
    create(&h, spec(&h, Period::Day, "UTC", "5", Rollover::Keep)).await.unwrap();
    h.clock.set(at("2026-01-20T12:00:00Z"));
    h.hold("u", "1", 60).await.unwrap();
    assert_eq!(entries_of(&h, EntryKind::Grant).await.len(), 2, "the 10th and the 20th, nothing between");
    assert_eq!(h.balances("u").await, balances("10", "1", "9"));
    h.assert_verified().await;
}

/// Many commands at the boundary, concurrently: the period is granted exactly once.
pub async fn allowances_granted_once_under_concurrency(h: Harness) {
    h.clock.set(at("2026-03-01T23:00:00Z"));
    create(&h, spec(&h, Period::Day, "UTC", "100", Rollover::None)).await.unwrap();
    h.clock.set(at("2026-03-02T00:00:00Z"));
    let store = &h.store;
    let holds = (0..16).map(|index| {
        let command = h.hold_command("u", "1", 60);
        async move { store.execute(Request::with_key(command, &format!("k{index}"), "f")).await }
    });
    for executed in futures::future::join_all(holds).await {
        assert!(matches!(executed, Ok(Executed::Fresh(Ok(Outcome::Held { .. })))), "{executed:?}");
    }
    assert_eq!(entries_of(&h, EntryKind::Grant).await.len(), 2);
    assert_eq!(h.balances("u").await, balances("100", "16", "84"));
    h.assert_verified().await;
}

/// Rollover `keep` adds up; `cap` keeps at most the cap of earlier periods when a period starts.
pub async fn allowances_rollover_rules(h: Harness) {
    h.clock.set(at("2026-05-01T00:00:00Z"));
    create(&h, spec(&h, Period::Day, "UTC", "10", Rollover::Keep)).await.unwrap();
    let mut capped = spec(&h, Period::Day, "UTC", "10", Rollover::Cap(cr("4")));
    capped.account_id = account("u");
    capped.priority = -1;
    create(&h, capped).await.unwrap();
    assert_eq!(h.balances("u").await.available, cr("20"));
    h.clock.set(at("2026-05-02T00:00:00Z"));
    // keep: 10 + 10; cap: 4 of yesterday's 10 + 10.
    assert_eq!(h.balances("u").await.available, cr("34"));
    h.hold("u", "1", 60).await.unwrap();
    let expired = entries_of(&h, EntryKind::GrantExpired).await;
    assert_eq!(expired.iter().map(|entry| entry.amount).collect::<Vec<_>>(), [cr("6")]);
    assert_eq!(h.balances("u").await, balances("34", "1", "33"));
    h.assert_verified().await;
}

/// Ending an allowance keeps the current period's credits and grants nothing after; a second
/// end changes nothing; an ended allowance cannot be ended again.
pub async fn allowances_end_at_the_period_end(h: Harness) {
    h.clock.set(at("2026-02-10T08:00:00Z"));
    let allowance = create(&h, spec(&h, Period::Month, "Europe/Berlin", "30", Rollover::None)).await.unwrap();
    let end = Command::EndAllowances {
        account_id: account("u"),
        allowances: vec![allowance.allowance_id.clone()],
        plan: false,
    };
    let Outcome::AllowancesEnded { allowances, changed } = h.run(end.clone()).await.unwrap() else { panic!() };
    assert!(changed);
    assert_eq!(allowances[0].ends_at, Some(at("2026-02-28T23:00:00Z")), "March 1st, 00:00 in Berlin");
    let Outcome::AllowancesEnded { changed, .. } = h.run(end.clone()).await.unwrap() else { panic!() };
    assert!(!changed);
    assert_eq!(h.balances("u").await.available, cr("30"));
    h.clock.set(at("2026-03-15T00:00:00Z"));
    assert_eq!(h.balances("u").await.available, cr("0"), "February's expired, no March");
    assert_eq!(h.run(end).await, Err(Rejection::AllowanceNotFound));
    assert!(h.store.account(&account("u")).await.unwrap().unwrap().state.allowances.is_empty());
    h.assert_verified().await;
}

/// At most [`ALLOWANCES_ACTIVE_MAX`] allowances that have not ended.
pub async fn allowances_are_limited(h: Harness) {
    for _ in 0..ALLOWANCES_ACTIVE_MAX {
        create(&h, spec(&h, Period::Week, "UTC", "1", Rollover::None)).await.unwrap();
    }
    let refused = create(&h, spec(&h, Period::Week, "UTC", "1", Rollover::None)).await;
    assert_eq!(refused, Err(Rejection::AllowanceLimit));
    let view = h.store.account(&account("u")).await.unwrap().unwrap();
    assert_eq!(view.state.allowances.len(), ALLOWANCES_ACTIVE_MAX);
    h.assert_verified().await;
}

/// Subscribing to a plan creates its allowances; switching ends them at their period's end and
/// starts the new plan's at once; subscribing again to the current plan changes nothing.
pub async fn allowances_plans_switch(h: Harness) {
    h.clock.set(at("2026-06-15T00:00:00Z"));
    let plan = |h: &Harness, plan_id: &str, credits: &str| {
        let mut allowance = spec(h, Period::Month, "UTC", credits, Rollover::None);
        allowance.plan_id = Some(PlanId::parse(plan_id).expect("valid"));
        Command::SubscribePlan {
            account_id: account("u"),
            plan_id: PlanId::parse(plan_id).expect("valid"),
            allowances: vec![allowance.into_allowance()],
        }
    };
    let Outcome::PlanSubscribed { allowances, ended, .. } = h.run(plan(&h, "basic", "100")).await.unwrap() else {
        panic!()
    };
    assert_eq!((allowances.len(), ended.len()), (1, 0));
    let Outcome::PlanSubscribed { allowances: again, ended, .. } = h.run(plan(&h, "basic", "100")).await.unwrap()
    else {
        panic!()
    };
    assert_eq!((again[0].allowance_id.clone(), ended.len()), (allowances[0].allowance_id.clone(), 0));
    let Outcome::PlanSubscribed { ended, .. } = h.run(plan(&h, "pro", "500")).await.unwrap() else { panic!() };
    assert_eq!(ended[0].ends_at, Some(at("2026-07-01T00:00:00Z")));
    assert_eq!(h.balances("u").await.available, cr("600"), "June keeps basic's credits and gets pro's");
    h.clock.set(at("2026-07-01T00:00:00Z"));
    assert_eq!(h.balances("u").await.available, cr("500"), "July: pro only");
    h.assert_verified().await;
}

/// What one step of the property test does.
#[derive(Clone, Debug)]
enum Step {
    /// Moves the clock forward.
    Advance { minutes: u32 },
    /// Debits this many credits (refused beyond what is available).
    Debit { credits: u64 },
    /// Holds and at once captures this many credits.
    Spend { credits: u64 },
    /// Reads the account.
    Read,
    /// Runs the sweeper.
    Sweep,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (1..3_000_u32).prop_map(|minutes| Step::Advance { minutes }),
        3 => (1..8_u64).prop_map(|credits| Step::Debit { credits }),
        2 => (1..8_u64).prop_map(|credits| Step::Spend { credits }),
        2 => Just(Step::Read),
        1 => Just(Step::Sweep),
    ]
}

/// The model: walks the schedule period by period. A period is journaled by the first write
/// (or sweep) in it; a read shows it before that. Periods nobody wrote in are never granted
/// afterwards: the next write grants only its own period, rolled over from the last one written.
struct Model {
    schedule: AllowanceSchedule,
    rollover: Rollover,
    amount: u64,
    /// The period containing the last step's instant.
    span: calendar::Span,
    /// The last period written, and the allowance's free credits as then written.
    written_span: calendar::Span,
    written_free: u64,
    /// Periods written so far: grant entries in the journal.
    journaled: usize,
}

impl Model {
    /// Moves to `now`, walking the calendar one period at a time.
    fn at(&mut self, now: i64) {
        while !self.span.contains(now) {
            self.span = self.schedule.calendar().next(self.span).expect("in range");
        }
    }

    /// The free credits a read or a decision sees now.
    fn free(&self) -> u64 {
        if self.span == self.written_span {
            return self.written_free;
        }
        let kept = match self.rollover {
            Rollover::None => 0,
            Rollover::Keep => self.written_free,
            Rollover::Cap(cap) => self.written_free.min(cap.micros() / 1_000_000),
        };
        kept + self.amount
    }

    /// A write in the current period that spent `spent`.
    fn write(&mut self, spent: u64) {
        let free = self.free() - spent;
        if self.span != self.written_span {
            self.journaled += 1;
        }
        self.written_span = self.span;
        self.written_free = free;
    }
}

/// Random clock moves (across New York's DST changes), debits, spends, reads and sweeps on an
/// account with one daily allowance and nothing else, against [`Model`]: after every step the
/// available credits agree, and the journal holds one grant per period written in.
pub async fn allowances_against_model(h: Harness) {
    let mut runner = TestRunner::new(Config {
        cases: 12,
        rng_seed: RngSeed::Fixed(0x0A11_0CA7),
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = (
        prop_oneof![Just(Rollover::None), Just(Rollover::Keep), Just(Rollover::Cap(cr("7")))],
        proptest::collection::vec(step(), 1..40),
    );
    let cases: Vec<(Rollover, Vec<Step>)> =
        (0..12).map(|_| strategy.new_tree(&mut runner).expect("a case").current()).collect();
    for (case, (rollover, steps)) in cases.into_iter().enumerate() {
        let h = Harness { store: h.store.clone(), clock: Arc::clone(&h.clock) };
        // A fresh account per case, starting the Saturday before the March DST change.
        let name = format!("m{case}-{}", new_id());
        h.clock.set(at("2026-03-07T13:00:00Z"));
        let mut spec = spec(&h, Period::Day, "America/New_York", "10", rollover);
        spec.account_id = account(&name);
        let schedule = spec.schedule.clone();
        create(&h, spec).await.unwrap();
        let now = h.clock_now().micros();
        let span = schedule.calendar().period_at(now).expect("in range");
        let mut model =
            Model { schedule, rollover, amount: 10, span, written_span: span, written_free: 10, journaled: 1 };
        for step in &steps {
            let now = match step {
                Step::Advance { minutes } => {
                    h.clock.advance_seconds(i64::from(*minutes) * 60);
                    continue;
                }
                _ => h.clock_now().micros(),
            };
            // A read does not grant in the journal, but shows what a decision would grant; a
            // refused command writes nothing either.
            model.at(now);
            let free = model.free();
            match step {
                Step::Advance { .. } => unreachable!(),
                Step::Debit { credits } => {
                    let amount = Amount::from_credits(*credits);
                    let debit = Command::Debit { account_id: account(&name), amount, reference: None };
                    let result = h.run(debit).await;
                    if *credits <= free {
                        model.write(*credits);
                        assert!(result.is_ok(), "{steps:?}: {result:?}");
                    } else {
                        assert!(matches!(result, Err(Rejection::InsufficientCredits { .. })), "{steps:?}: {result:?}");
                    }
                }
                Step::Spend { credits } => {
                    let hold = h.hold(&name, &credits.to_string(), 60).await;
                    if *credits <= free {
                        let hold = hold.unwrap_or_else(|rejection| panic!("{steps:?}: {rejection:?}"));
                        h.capture(&hold.hold_id, &credits.to_string(), true).await.unwrap();
                        model.write(*credits);
                    } else {
                        assert!(matches!(hold, Err(Rejection::InsufficientCredits { .. })), "{steps:?}: {hold:?}");
                    }
                }
                Step::Read => {}
                Step::Sweep => {
                    h.store.sweep(1_000).await.unwrap();
                    model.write(0);
                }
            }
            let available = h.balances(&name).await.available;
            assert_eq!(available, Amount::from_credits(model.free()), "{steps:?} at {step:?}");
            let entries = h.store.entries(&account(&name), 0, 1_000).await.unwrap();
            let grants = entries.iter().filter(|entry| entry.kind == EntryKind::Grant).count();
            assert_eq!(grants, model.journaled, "{steps:?} at {step:?}");
        }
    }
    h.assert_verified().await;
}

/// Plans are written once: the same id again answers with the first, unchanged; they read back
/// by id and in id order.
pub async fn plans_are_written_once(h: Harness) {
    let plan = |plan_id: &str, credits: &str| crate::plans::Plan {
        plan_id: PlanId::parse(plan_id).expect("valid"),
        name: format!("{plan_id} plan"),
        allowances: vec![crate::plans::PlanAllowance {
            amount: cr(credits),
            priority: 5,
            rollover: Rollover::Cap(cr("3")),
            schedule: AllowanceSchedule::new(Period::Month, "Asia/Seoul", None).expect("valid"),
        }],
        created_at: h.clock_now(),
    };
    let created = h.store.put_plan(&plan("pro", "500")).await.unwrap();
    assert!(matches!(created, crate::plans::PlanPut::Created(_)), "{created:?}");
    let again = h.store.put_plan(&plan("pro", "900")).await.unwrap();
    let crate::plans::PlanPut::Exists(existing) = again else { panic!("{again:?}") };
    assert_eq!(existing.allowances[0].amount, cr("500"), "the first definition stands");
    assert!(existing.same_definition(&plan("pro", "500")) && !existing.same_definition(&plan("pro", "900")));
    h.store.put_plan(&plan("basic", "100")).await.unwrap();
    let read = h.store.plan(&PlanId::parse("pro").unwrap()).await.unwrap().expect("stored");
    assert_eq!((read.name.as_str(), read.allowances[0].rollover), ("pro plan", Rollover::Cap(cr("3"))));
    assert_eq!(read.allowances[0].schedule.time_zone(), "Asia/Seoul");
    let ids: Vec<String> = h.store.plans(10).await.unwrap().iter().map(|plan| plan.plan_id.to_string()).collect();
    assert_eq!(ids, ["basic", "pro"]);
    assert!(h.store.plan(&PlanId::parse("none").unwrap()).await.unwrap().is_none());
}
