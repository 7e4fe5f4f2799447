//! What the driver does to a server during a round: solve runs with scripted provider replies,
//! raw ledger operations with Idempotency-Key replays, client disconnects and cancels — and the
//! driver's own record of all of it, which the checks compare the ledger against.
//!
//! Why the driver keeps its own records: the checks must not trust the system under test to say
//! what it should contain. Every credit movement the driver caused is either known from a
//! response or, when the response was lost to a kill, learned by replaying its Idempotency-Key.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::provider::Purpose;
use engine::testing::{FakeProvider, FakeReply};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::api::{self, amount_text, Reply};

/// The kinds of raw ledger operations, with the credits they move when applied.
#[derive(Clone, Debug)]
pub enum OpKind {
    Grant(i64),
    Debit(i64),
    Hold(i64),
    Capture(i64),
    Release,
}

/// One raw ledger operation: enough to replay it exactly.
#[derive(Clone, Debug)]
pub struct LedgerOp {
    pub account: String,
    pub kind: OpKind,
    pub key: String,
    pub path: String,
    pub body: Value,
    pub reply: Reply,
}

impl LedgerOp {
    /// What this operation did to the account's balance, when its reply is definite.
    pub fn balance_effect_micros(&self) -> i64 {
        let applied = matches!(self.reply, Reply::Answered { status, .. } if (200..300).contains(&status));
        match (&self.kind, applied) {
            (OpKind::Grant(amount), true) => *amount,
            (OpKind::Debit(amount) | OpKind::Capture(amount), true) => -amount,
            _ => 0,
        }
    }
}

/// One solve the driver started, by the thread id it chose (so a run whose response was lost
/// can still be found), with what its stream showed.
#[derive(Clone, Debug)]
pub struct ThreadSeen {
    pub thread_id: String,
    pub account: String,
    pub run_id: Option<String>,
    /// `captured` of the `credit_settled` frame, when the client read it.
    pub settled_captured: Option<String>,
    /// `done`, or the `error` frame's code, when the client read the end.
    pub ending: Option<String>,
}

/// Counters by name, for the summary table.
pub type Counters = BTreeMap<&'static str, u64>;

pub fn bump(counters: &mut Counters, name: &'static str, by: u64) {
    *counters.entry(name).or_default() += by;
}

/// How many runs and raw operations a round drives.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub runs_per_round: usize,
    pub ledger_tasks: usize,
    pub ops_per_task: usize,
    /// The latest moment of the kill, from the start of the load.
    pub kill_ms_max: u64,
}

/// The plans the planner answers, one per solve, cycling at random.
const PLANS: [&[&str]; 3] = [&["solve"], &["solve", "pdf"], &["solve", "video"]];

/// Scripts the fake provider for one run: a plan, and a solver reply that is fast, slow, an
/// error burst (more 500s than the client retries) or slower than the client's timeout.
/// The queues are shared by concurrent runs, so this scripts the mix, not a particular run.
pub fn script_run(fake: &FakeProvider, rng: &mut StdRng, faults: &mut Counters) {
    let plan = PLANS[rng.random_range(0..PLANS.len())];
    fake.on(Purpose::Planner, FakeReply::plan(plan, "easy", "full", false));
    match rng.random_range(0..10) {
        0 | 1 => {
            fake.on_each(Purpose::Solver, (0..3).map(|_| FakeReply::Status(500)));
            bump(faults, "provider 500 (x3)", 1);
        }
        2 => {
            fake.on(Purpose::Solver, FakeReply::text("x = 4").after(Duration::from_secs(5)));
            bump(faults, "provider timeout", 1);
        }
        3..=5 => {
            let delay = Duration::from_millis(rng.random_range(300..2500));
            fake.on(Purpose::Solver, FakeReply::text("x = 4").after(delay));
            bump(faults, "slow provider reply", 1);
        }
        _ => fake.on(Purpose::Solver, FakeReply::text("x = 4")),
    }
}

/// The replies when nothing is queued: every run can finish.
pub fn script_defaults(fake: &FakeProvider) {
    fake.on_default(Purpose::Router, FakeReply::route(false));
    fake.on_default(Purpose::Planner, FakeReply::plan(&["solve"], "easy", "full", false));
    fake.on_default(Purpose::Solver, FakeReply::text("x = 4"));
    fake.on_default(Purpose::Explain, FakeReply::text("Two plus two is four."));
    fake.on_default(Purpose::CodeGenerate, FakeReply::code_generate("print(2 + 2)"));
    fake.on_default(Purpose::LimitSummary, FakeReply::text("The limit was reached."));
    fake.on_default(Purpose::GeneralChat, FakeReply::text("Hello."));
}

/// What a client does with its stream.
#[derive(Clone, Copy, Debug)]
pub enum Client {
    /// Reads to the end.
    Reads,
    /// Drops the response after this long.
    Leaves(Duration),
    /// Cancels the run after this long, then reads to the end.
    Cancels(Duration),
}

/// A server-sent events reader good enough for the frames the checks need.
#[derive(Default)]
struct Frames {
    buffer: String,
    settled_captured: Option<String>,
    ending: Option<String>,
}

impl Frames {
    fn feed(&mut self, chunk: &[u8]) {
        self.buffer.push_str(&String::from_utf8_lossy(chunk));
        while let Some(end) = self.buffer.find("\n\n") {
            let frame: String = self.buffer.drain(..end + 2).collect();
            let mut event = "";
            let mut data = Value::Null;
            for line in frame.lines() {
                if let Some(rest) = line.strip_prefix("event:") {
                    event = rest.trim();
                } else if let Some(rest) = line.strip_prefix("data:") {
                    data = serde_json::from_str(rest.trim()).unwrap_or(Value::Null);
                }
            }
            match event {
                "credit_settled" => {
                    self.settled_captured = data.pointer("/payload/captured").and_then(Value::as_str).map(str::to_owned)
                }
                "done" => self.ending = Some("done".to_owned()),
                "error" => {
                    let code = data.pointer("/payload/code").and_then(Value::as_str).unwrap_or("unknown");
                    self.ending = Some(code.to_owned());
                }
                _ => {}
            }
        }
    }
}

/// Starts one solve and plays the client's part.
pub async fn drive_run(
    client: reqwest::Client,
    base: String,
    account: String,
    thread_id: String,
    behaviour: Client,
) -> ThreadSeen {
    let mut seen = ThreadSeen {
        thread_id: thread_id.clone(),
        account: account.clone(),
        run_id: None,
        settled_captured: None,
        ending: None,
    };
    let body = json!({"account_id": account, "problem": "What is 2 + 2?", "thread_id": thread_id});
    let sent = client
        .post(format!("{base}/v1/solve"))
        .json(&body)
        .timeout(Duration::from_secs(api::REQUEST_SECONDS_MAX))
        .send()
        .await;
    let Ok(mut response) = sent else { return seen };
    seen.run_id = response.headers().get("x-run-id").and_then(|value| value.to_str().ok()).map(str::to_owned);
    if !response.status().is_success() {
        return seen;
    }
    let started = Instant::now();
    let mut frames = Frames::default();
    let mut canceled = false;
    loop {
        let wait = match behaviour {
            Client::Leaves(after) => match after.checked_sub(started.elapsed()) {
                Some(left) => left,
                None => break,
            },
            Client::Cancels(after) if !canceled => match after.checked_sub(started.elapsed()) {
                Some(left) => left,
                None => {
                    canceled = true;
                    if let Some(run_id) = &seen.run_id {
                        let _ = api::post(&client, &base, &format!("/v1/runs/{run_id}/cancel"), None, &json!({})).await;
                    }
                    continue;
                }
            },
            _ => Duration::from_secs(api::REQUEST_SECONDS_MAX),
        };
        match tokio::time::timeout(wait, response.chunk()).await {
            Ok(Ok(Some(chunk))) => frames.feed(&chunk),
            Ok(Ok(None) | Err(_)) => break,
            Err(_) => continue,
        }
    }
    seen.settled_captured = frames.settled_captured;
    seen.ending = frames.ending;
    seen
}

/// Sends one ledger operation, and with probability `replay_percent` sends it again with the
/// same Idempotency-Key: the second answer must be the first one, byte for byte.
pub async fn send_op(
    client: &reqwest::Client,
    base: &str,
    mut op: LedgerOp,
    rng: &mut StdRng,
    replay_percent: u32,
    faults: &mut Counters,
    violations: &mut Vec<String>,
) -> LedgerOp {
    op.reply = api::post(client, base, &op.path, Some(&op.key), &op.body).await;
    if op.reply.is_definite() && rng.random_range(0..100) < replay_percent {
        bump(faults, "idempotency replay", 1);
        let again = api::post(client, base, &op.path, Some(&op.key), &op.body).await;
        if again.is_definite() && again != op.reply {
            violations.push(format!("replay of {} answered {again:?}, first {:?}", op.key, op.reply));
        }
    }
    op
}

/// One task's raw ledger operations: holds then a capture (partial or final) or a release, and
/// debits, on random accounts, until `down` says the server is going away.
#[allow(clippy::too_many_arguments)]
pub async fn drive_ledger(
    client: reqwest::Client,
    base: String,
    accounts: Vec<String>,
    key_prefix: String,
    ops: usize,
    pause_ms_max: u64,
    seed: u64,
    down: Arc<AtomicBool>,
) -> (Vec<LedgerOp>, Counters, Vec<String>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut done = Vec::new();
    let mut faults = Counters::new();
    let mut violations = Vec::new();
    for index in 0..ops {
        // Paced so that the operations span the moment of the kill.
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..=pause_ms_max))).await;
        if down.load(Ordering::SeqCst) {
            break;
        }
        let account = accounts[rng.random_range(0..accounts.len())].clone();
        let key = format!("{key_prefix}-{index}");
        // Whole and fractional amounts, so that exactness is exercised too.
        let amount = rng.random_range(1..40) * 250_000;
        let op = if rng.random_bool(0.3) {
            LedgerOp {
                account: account.clone(),
                kind: OpKind::Debit(amount),
                key: key.clone(),
                path: format!("/v1/accounts/{account}/debits"),
                body: json!({"amount": amount_text(amount), "reference": key}),
                reply: Reply::Lost("not sent".to_owned()),
            }
        } else {
            LedgerOp {
                account: account.clone(),
                kind: OpKind::Hold(amount),
                key: key.clone(),
                path: "/v1/holds".to_owned(),
                body: json!({"account_id": account, "amount": amount_text(amount), "reference": key}),
                reply: Reply::Lost("not sent".to_owned()),
            }
        };
        let op = send_op(&client, &base, op, &mut rng, 30, &mut faults, &mut violations).await;
        let hold_id = match (&op.kind, &op.reply) {
            (OpKind::Hold(_), Reply::Answered { status: 201, body }) => {
                body.get("hold_id").and_then(Value::as_str).map(str::to_owned)
            }
            _ => None,
        };
        done.push(op);
        let Some(hold_id) = hold_id else { continue };
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        if down.load(Ordering::SeqCst) {
            break;
        }
        let settle = if rng.random_bool(0.6) {
            let captured = rng.random_range(1..=amount / 250_000) * 250_000;
            let last = rng.random_bool(0.7);
            LedgerOp {
                account: account.clone(),
                kind: OpKind::Capture(captured),
                key: format!("{key}-capture"),
                path: format!("/v1/holds/{hold_id}/capture"),
                body: json!({"amount": amount_text(captured), "final": last}),
                reply: Reply::Lost("not sent".to_owned()),
            }
        } else {
            LedgerOp {
                account: account.clone(),
                kind: OpKind::Release,
                key: format!("{key}-release"),
                path: format!("/v1/holds/{hold_id}/release"),
                body: json!({}),
                reply: Reply::Lost("not sent".to_owned()),
            }
        };
        done.push(send_op(&client, &base, settle, &mut rng, 30, &mut faults, &mut violations).await);
    }
    (done, faults, violations)
}

/// A debit or a hold of `amount` micro-credits.
pub fn burst_op(account: String, key: String, amount: i64, debit: bool) -> LedgerOp {
    let (kind, path, body) = if debit {
        (
            OpKind::Debit(amount),
            format!("/v1/accounts/{account}/debits"),
            json!({"amount": amount_text(amount), "reference": key}),
        )
    } else {
        (
            OpKind::Hold(amount),
            "/v1/holds".to_owned(),
            json!({"account_id": account, "amount": amount_text(amount), "reference": key}),
        )
    };
    LedgerOp { account, kind, key, path, body, reply: Reply::Lost("not sent".to_owned()) }
}

/// Replays every operation whose outcome is unknown until it is known (bounded): the replay
/// returns the first result if the first attempt applied, and applies it now if it did not.
pub async fn resolve_lost(client: &reqwest::Client, base: &str, ops: &mut [LedgerOp], faults: &mut Counters) {
    for op in ops.iter_mut().filter(|op| !op.reply.is_definite()) {
        bump(faults, "lost response (replayed)", 1);
        for _ in 0..20 {
            op.reply = api::post(client, base, &op.path, Some(&op.key), &op.body).await;
            if op.reply.is_definite() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// How each run's client behaves: most read, some leave, some cancel.
pub fn pick_client(rng: &mut StdRng, faults: &mut Counters) -> Client {
    match rng.random_range(0..10) {
        0 | 1 => {
            bump(faults, "client disconnect", 1);
            Client::Leaves(Duration::from_millis(rng.random_range(50..1500)))
        }
        2 | 3 => {
            bump(faults, "cancel", 1);
            Client::Cancels(Duration::from_millis(rng.random_range(0..400)))
        }
        _ => Client::Reads,
    }
}
