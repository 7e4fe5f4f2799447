//! Differential test: random operation sequences (with clock jumps and repeated idempotency
//! keys) applied to a store and to [`super::model`]; every answer and every balance must agree,
//! and `verify` must stay clean.
//!
//! Cases come from proptest strategies with a fixed seed, run without shrinking (the store is
//! async); a failure prints the whole sequence. `CREDITGRAPH_DIFFERENTIAL_CASES` raises the case
//! count for longer local runs.

use ledger::{AccountId, Amount, Command, GrantId, HoldId, Outcome, Overage, Reference, Rejection};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use super::model::{Account, Answer};
use super::Harness;
use crate::{Executed, Request};

const CENT_MICROS: u64 = 10_000;
const CASES_DEFAULT: u32 = 48;
const OPS_MAX: usize = 40;

#[derive(Clone, Debug)]
enum Op {
    Grant {
        cents: u64,
        priority: i32,
        expires_in_seconds: Option<u64>,
        reference: Option<u8>,
    },
    Hold {
        cents: u64,
        ttl_seconds: u64,
    },
    Capture {
        hold: usize,
        cents: u64,
        is_final: bool,
        overage: bool,
    },
    Release {
        hold: usize,
    },
    Extend {
        hold: usize,
        ttl_seconds: u64,
    },
    Debit {
        cents: u64,
    },
    Refund {
        cents: u64,
        reference: u8,
        hold: Option<usize>,
    },
    /// Void the grant at this index (modulo) of those made so far.
    Void {
        grant: usize,
    },
    Advance {
        seconds: i64,
    },
    Sweep,
    /// Re-send the keyed operation `index` (modulo), unchanged or with a different body.
    Replay {
        index: usize,
        same: bool,
    },
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1..2_000_u64, 0..3_i32, proptest::option::of(1..400_u64), proptest::option::of(0..3_u8)).prop_map(
            |(cents, priority, expires_in_seconds, reference)| Op::Grant { cents, priority, expires_in_seconds, reference }
        ),
        4 => (1..1_500_u64, 1..300_u64).prop_map(|(cents, ttl_seconds)| Op::Hold { cents, ttl_seconds }),
        4 => (0..16_usize, 0..1_500_u64, any::<bool>(), any::<bool>())
            .prop_map(|(hold, cents, is_final, overage)| Op::Capture { hold, cents, is_final, overage }),
        2 => (0..16_usize).prop_map(|hold| Op::Release { hold }),
        1 => (0..16_usize, 1..300_u64).prop_map(|(hold, ttl_seconds)| Op::Extend { hold, ttl_seconds }),
        2 => (1..800_u64).prop_map(|cents| Op::Debit { cents }),
        2 => (1..800_u64, 0..4_u8, proptest::option::of(0..16_usize))
            .prop_map(|(cents, reference, hold)| Op::Refund { cents, reference, hold }),
        1 => (0..8_usize).prop_map(|grant| Op::Void { grant }),
        3 => (0..250_i64).prop_map(|seconds| Op::Advance { seconds }),
        1 => Just(Op::Sweep),
        2 => (0..64_usize, any::<bool>()).prop_map(|(index, same)| Op::Replay { index, same }),
    ]
}

fn answer_of(result: &Result<Outcome, Rejection>) -> Answer {
    match result {
        Ok(Outcome::Granted { grant, created } | Outcome::Refunded { grant, created }) => {
            Answer::Grant(grant.amount.micros(), *created)
        }
        Ok(
            Outcome::Held { hold }
            | Outcome::Captured { hold }
            | Outcome::Released { hold, .. }
            | Outcome::Extended { hold },
        ) => Answer::Hold(hold.state.as_str(), hold.captured.micros(), hold.remaining.micros()),
        Ok(Outcome::GrantVoided { voided, .. }) => Answer::Voided(voided.micros()),
        Ok(
            Outcome::Debited { .. }
            | Outcome::Swept { .. }
            | Outcome::AllowanceCreated { .. }
            | Outcome::AllowancesEnded { .. }
            | Outcome::PlanSubscribed { .. }
            | Outcome::LowBalanceThresholdSet { .. },
        ) => Answer::Done,
        Err(rejection) => Answer::Rejected(rejection.code()),
    }
}

struct Case<'a> {
    h: &'a Harness,
    name: String,
    account_id: AccountId,
    model: Account,
    holds: Vec<String>,
    /// (command, key, fingerprint, first answer) of every keyed operation.
    keyed: Vec<(Command, String, String, Answer)>,
    log: Vec<String>,
}

impl Case<'_> {
    fn now(&self) -> i64 {
        self.h.clock_now().micros()
    }

    fn pick_hold(&self, index: usize) -> String {
        if self.holds.is_empty() {
            return format!("{}-nohold", self.name);
        }
        self.holds[index % self.holds.len()].clone()
    }

    /// Turns an operation into a command and the model's answer to it.
    fn prepare(&mut self, step: usize, op: &Op) -> Option<(Command, Answer)> {
        let now = self.now();
        let key = format!("{}-{step}", self.name);
        let account_id = self.account_id.clone();
        let (command, answer) = match op {
            Op::Grant { cents, priority, expires_in_seconds, reference } => {
                let reference = reference.map(|reference| format!("grant-{reference}"));
                let expires_at = expires_in_seconds.map(|seconds| now + i64::try_from(seconds).unwrap() * 1_000_000);
                let answer =
                    self.model.grant(now, &key, cents * CENT_MICROS, *priority, expires_at, reference.as_deref());
                let command = Command::Grant {
                    account_id,
                    grant_id: GrantId::parse(&format!("g{key}")).unwrap(),
                    amount: Amount::from_micros(cents * CENT_MICROS),
                    priority: *priority,
                    expires_at: expires_at.map(ledger::Timestamp::from_micros),
                    reference: reference.map(|reference| Reference::parse(&reference).unwrap()),
                    metadata: "{}".to_owned(),
                };
                (command, answer)
            }
            Op::Hold { cents, ttl_seconds } => {
                let hold_id = format!("h{key}");
                let answer = self.model.hold(now, &hold_id, cents * CENT_MICROS, i64::try_from(*ttl_seconds).unwrap());
                self.holds.push(hold_id.clone());
                let command = Command::Hold {
                    account_id,
                    hold_id: HoldId::parse(&hold_id).unwrap(),
                    amount: Amount::from_micros(cents * CENT_MICROS),
                    ttl_seconds: *ttl_seconds,
                    reference: None,
                    metadata: "{}".to_owned(),
                };
                (command, answer)
            }
            Op::Capture { hold, cents, is_final, overage } => {
                let hold_id = self.pick_hold(*hold);
                let answer = self.model.capture(now, &hold_id, cents * CENT_MICROS, *is_final, *overage);
                let command = Command::Capture {
                    hold_id: HoldId::parse(&hold_id).unwrap(),
                    amount: Amount::from_micros(cents * CENT_MICROS),
                    is_final: *is_final,
                    overage: if *overage { Overage::IfAvailable } else { Overage::Reject },
                };
                (command, answer)
            }
            Op::Release { hold } => {
                let hold_id = self.pick_hold(*hold);
                let answer = self.model.release(now, &hold_id);
                (Command::Release { hold_id: HoldId::parse(&hold_id).unwrap() }, answer)
            }
            Op::Extend { hold, ttl_seconds } => {
                let hold_id = self.pick_hold(*hold);
                let answer = self.model.extend(now, &hold_id, i64::try_from(*ttl_seconds).unwrap());
                (Command::Extend { hold_id: HoldId::parse(&hold_id).unwrap(), ttl_seconds: *ttl_seconds }, answer)
            }
            Op::Debit { cents } => {
                let answer = self.model.debit(now, cents * CENT_MICROS);
                (
                    Command::Debit { account_id, amount: Amount::from_micros(cents * CENT_MICROS), reference: None },
                    answer,
                )
            }
            Op::Refund { cents, reference, hold } => {
                let hold_id = hold.map(|hold| self.pick_hold(hold));
                let reference = format!("refund-{reference}");
                let answer = self.model.refund(now, &key, cents * CENT_MICROS, &reference, hold_id.as_deref());
                let command = Command::Refund {
                    account_id,
                    grant_id: GrantId::parse(&format!("r{key}")).unwrap(),
                    amount: Amount::from_micros(cents * CENT_MICROS),
                    reference: Reference::parse(&reference).unwrap(),
                    hold_id: hold_id.map(|hold_id| HoldId::parse(&hold_id).unwrap()),
                    priority: 100,
                    expires_at: None,
                };
                (command, answer)
            }
            Op::Void { grant } => {
                let grant_id = self.model.grant_id(*grant, "r", "g")?;
                let answer = self.model.void(now, *grant);
                (Command::VoidGrant { account_id, grant_id: GrantId::parse(&grant_id).unwrap() }, answer)
            }
            Op::Advance { .. } | Op::Sweep | Op::Replay { .. } => return None,
        };
        Some((command, answer))
    }

    fn fail(&self, what: String) -> ! {
        panic!("differential case {} disagrees: {what}\nsequence:\n{}", self.name, self.log.join("\n"));
    }

    async fn step(&mut self, step: usize, op: &Op) {
        self.log.push(format!("{step}: {op:?}"));
        match op {
            Op::Advance { seconds } => self.h.clock.advance_seconds(*seconds),
            Op::Sweep => {
                self.h.store.sweep(1_000).await.expect("store answers");
            }
            Op::Replay { index, same } => {
                if self.keyed.is_empty() {
                    return;
                }
                let (command, key, fingerprint, answer) = self.keyed[index % self.keyed.len()].clone();
                let fingerprint = if *same { fingerprint } else { format!("{fingerprint}-other") };
                let executed = self.h.store.execute(Request::with_key(command, &key, &fingerprint)).await.unwrap();
                match (same, &executed) {
                    (true, Executed::Replayed(result)) if answer_of(result) == answer => {}
                    (false, Executed::Conflict) => {}
                    _ => self
                        .fail(format!("replay of {key} (same body: {same}) gave {executed:?}, first was {answer:?}")),
                }
            }
            _ => {
                // A void before any grant has nothing to name.
                let Some((command, expected)) = self.prepare(step, op) else { return };
                let key = format!("{}-{step}", self.name);
                let fingerprint = format!("{command:?}");
                let request = Request::with_key(command.clone(), &key, &fingerprint);
                let executed = self.h.store.execute(request).await.expect("store answers");
                let Executed::Fresh(result) = &executed else { self.fail(format!("step {step}: {executed:?}")) };
                let actual = answer_of(result);
                if actual != expected {
                    self.fail(format!("step {step}: store {actual:?}, model {expected:?} ({result:?})"));
                }
                self.keyed.push((command, key, fingerprint, actual));
            }
        }
        self.compare_balances(step).await;
    }

    async fn compare_balances(&mut self, step: usize) {
        let now = self.now();
        let (balance, held, available) = self.model.balances(now);
        let view = self.h.store.account(&self.account_id).await.expect("store answers");
        let figures = view.map(|view| view.balances).unwrap_or_default();
        let actual = (figures.balance.micros(), figures.held.micros(), figures.available.micros());
        if actual != (balance, held, available) {
            self.fail(format!(
                "after step {step}: store (balance, held, available) {actual:?}, model {:?}",
                (balance, held, available)
            ));
        }
    }

    async fn compare_holds(&mut self) {
        let now = self.now();
        for hold_id in self.holds.clone() {
            let expected = self.model.hold_state(now, &hold_id);
            let actual = self.h.store.hold(&HoldId::parse(&hold_id).unwrap()).await.expect("store answers");
            let actual =
                actual.map(|hold| Answer::Hold(hold.state.as_str(), hold.captured.micros(), hold.remaining.micros()));
            if actual != expected {
                self.fail(format!("hold {hold_id}: store {actual:?}, model {expected:?}"));
            }
        }
    }
}

pub async fn differential_against_model(h: Harness) {
    let cases = std::env::var("CREDITGRAPH_DIFFERENTIAL_CASES")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(CASES_DEFAULT);
    let config = Config { cases, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let strategy = proptest::collection::vec(op_strategy(), 1..OPS_MAX);
    for case_index in 0..cases {
        let ops = strategy.new_tree(&mut runner).expect("strategy yields a case").current();
        let name = format!("c{case_index}");
        let mut case = Case {
            h: &h,
            account_id: AccountId::parse(&format!("acct-{name}")).unwrap(),
            name,
            model: Account::default(),
            holds: Vec::new(),
            keyed: Vec::new(),
            log: Vec::new(),
        };
        let opening = Op::Grant { cents: 1_000, priority: 100, expires_in_seconds: None, reference: None };
        case.step(0, &opening).await;
        for (index, op) in ops.iter().enumerate() {
            case.step(index + 1, op).await;
        }
        case.compare_holds().await;
    }
    h.assert_verified().await;
}
