//! The protocol every ledger backend follows to apply a [`Request`], written once so that the
//! backends keep only their I/O (how rows are read and written, transactions, pipelining, the
//! SQLite writer thread and its cache, the PostgreSQL batcher).
//!
//! 1. **Idempotency first.** A request whose key has a record is answered from it ([`replay`]):
//!    the first result again, or a conflict when the fingerprint differs. Nothing else happens.
//! 2. **Assemble the state.** [`needs`] is the one place that says what deciding a command needs
//!    read: the account (named, or through a hold), its base state ([`PendingHolds`]), and the
//!    hold and the grant the command names. The backend reads them its own way and adds the
//!    named records with [`include_hold`] and [`include_grant`].
//! 3. **Decide.** A [`Decider`] decides the commands of one account in arrival order on one
//!    evolving state, merging what they change. A rejection leaves the state as it was
//!    ([`ledger::execute_in_place`]), so nothing is copied per command and a rejected command
//!    never costs the next one its state.
//! 4. **Persist.** [`Decider::finish`] gives the [`Writes`]: exactly which account row, grants,
//!    holds, journal entries and idempotency records to write, and ([`Writes::into_cached`]) the
//!    only state a backend may keep between transactions.
//!
//! Architecture invariant: a backend writes what [`Writes`] lists and nothing else, all of it or
//! none of it, in one transaction with the reads of step 2 taken under the account's lock; and
//! it keeps no account state but what [`Writes::into_cached`] returns, dropped whenever that
//! transaction does not commit.
//!
//! Everything here is pure and synchronous, so the async PostgreSQL store uses the pieces around
//! its pipelined reads and writes, while backends that read synchronously (the SQLite writer
//! thread, the memory store) run steps 1–3 whole through [`decide`] and a [`Reads`].

use ledger::{
    AccountId, AccountState, Allowance, Amount, Changes, Command, Entry, Grant, GrantKind, Hold, HoldId, Outcome,
    Reference, Rejection, Target, Timestamp, Totals,
};

use crate::{codec, Executed, Idempotency, Request, StoreError};

/// Step 1: the answer to a request whose key was recorded with `fingerprint` and the encoded
/// `result`: the same request replays the result, another one is a conflict.
pub fn replay(idempotency: &Idempotency, fingerprint: &str, result: &str) -> Result<Executed, StoreError> {
    if fingerprint != idempotency.fingerprint {
        return Ok(Executed::Conflict);
    }
    Ok(Executed::Replayed(codec::decode_result(result)?))
}

/// Which of an account's pending holds its base state carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PendingHolds {
    /// The pending holds due at this time (`expires_at <= at`): what the ledger expires before
    /// deciding. The others are in the account's `held` and their grants' `pinned`, so they are
    /// never read (a backend finds the due ones through an index on pending holds by account and
    /// expiry), and a command costs the same at one pending hold or a hundred thousand.
    DueAt(Timestamp),
}

impl PendingHolds {
    /// Whether a pending hold expiring at `expires_at` belongs in the state.
    pub fn includes(self, expires_at: Timestamp) -> bool {
        match self {
            PendingHolds::DueAt(at) => expires_at <= at,
        }
    }
}

/// What deciding one command needs read, after its idempotency key: see [`needs`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Needs<'a> {
    /// The account the command acts on, named or through a hold (whose account never changes).
    pub target: Target<'a>,
    /// The account's base state: its row, every live grant, and these pending holds.
    pub pending_holds: PendingHolds,
    /// The hold the command names, in whatever state (added only if it is the account's).
    pub hold: Option<&'a HoldId>,
    /// The grant of this kind with this reference, if the account has one.
    pub grant: Option<(GrantKind, &'a Reference)>,
}

/// What deciding `command` at `now` needs read: the one place that says it. Of the pending
/// holds, only those due at `now` (the ledger expires them first) and the one the command names.
pub fn needs(command: &Command, now: Timestamp) -> Needs<'_> {
    Needs {
        target: command.target(),
        pending_holds: PendingHolds::DueAt(now),
        hold: command.hold_to_load(),
        grant: command.grant_reference_to_load(),
    }
}

impl Needs<'_> {
    /// The named records `state` does not hold yet: what a backend that already has the account's
    /// state (from its cache) still has to read.
    pub fn missing_from(self, state: &AccountState) -> Self {
        let has_grant = |(kind, reference): &(GrantKind, &Reference)| {
            state.grants.iter().any(|grant| grant.kind == *kind && grant.reference.as_ref() == Some(*reference))
        };
        Needs {
            hold: self.hold.filter(|hold_id| state.hold(hold_id).is_none()),
            grant: self.grant.filter(|named| !has_grant(named)),
            ..self
        }
    }
}

/// Adds a hold a command names, as the backend read it. A hold of another account is left out:
/// the ledger then answers `hold_not_found`, after checking what comes first (a refund's
/// reference), exactly as for a hold that does not exist. A hold already there stays as it is.
pub fn include_hold(state: &mut AccountState, hold: Hold) {
    if hold.account_id == state.account_id && state.hold(&hold.hold_id).is_none() {
        state.holds.push(hold);
    }
}

/// Adds the grant a command names by reference, as the backend read it among the account's
/// grants. A grant already there stays as it is.
pub fn include_grant(state: &mut AccountState, grant: Grant) {
    assert_eq!(grant.account_id, state.account_id, "a grant read by reference is one of the account's");
    if state.grant(&grant.grant_id).is_none() {
        state.grants.push(grant);
    }
}

/// The reads of step 2 for a backend that reads synchronously, in the account's transaction.
pub trait Reads {
    /// The fingerprint and encoded result recorded under an idempotency key.
    fn recorded(&mut self, key: &str) -> Result<Option<(String, String)>, StoreError>;

    /// The account a hold belongs to, `None` when there is no such hold.
    fn hold_account(&mut self, hold_id: &HoldId) -> Result<Option<AccountId>, StoreError>;

    /// The account's base state (row with its `held`, live grants, the `pending_holds`), `None`
    /// when it does not exist.
    fn account(
        &mut self,
        account_id: &AccountId,
        pending_holds: PendingHolds,
    ) -> Result<Option<AccountState>, StoreError>;

    /// A hold in whatever state (of any account: [`include_hold`] sorts that out).
    fn hold(&mut self, hold_id: &HoldId) -> Result<Option<Hold>, StoreError>;

    /// The account's grant of `kind` with `reference`, live or not.
    fn grant_by_reference(
        &mut self,
        account_id: &AccountId,
        kind: GrantKind,
        reference: &Reference,
    ) -> Result<Option<Grant>, StoreError>;
}

/// What [`decide`] made of one request.
#[derive(Debug)]
pub enum Decided {
    /// Answered from its key's record (a replay or a conflict): nothing to write.
    Answered(Executed),
    /// Decided now: the result, and what to write for it (its idempotency record included).
    Fresh(Result<Outcome, Rejection>, Box<Writes>),
}

/// Steps 1–3 for one request, reading through `reads`: replay, or assemble the account's state
/// and decide. Writes nothing; the caller persists [`Decided::Fresh`]'s writes (or drops them,
/// with everything else its transaction did).
pub fn decide(reads: &mut impl Reads, request: &Request, now: Timestamp) -> Result<Decided, StoreError> {
    if let Some(idempotency) = &request.idempotency {
        if let Some((fingerprint, result)) = reads.recorded(&idempotency.key)? {
            return Ok(Decided::Answered(replay(idempotency, &fingerprint, &result)?));
        }
    }
    let mut decider = assemble(reads, &request.command, now)?;
    let result = decider.decide(request, now);
    Ok(Decided::Fresh(result, Box::new(decider.finish())))
}

/// The sweeper's command for one account, through `reads`: what to write for the expiries due
/// at `now` (`entries().len()` of them; none when a command recorded them first). A sweep has no
/// key and targets an account that exists, so the ledger never refuses it.
pub fn sweep(reads: &mut impl Reads, account_id: &AccountId, now: Timestamp) -> Result<Writes, StoreError> {
    let request = Request::new(Command::Sweep { account_id: account_id.clone() });
    let mut decider = assemble(reads, &request.command, now)?;
    match decider.decide(&request, now) {
        Ok(_) => Ok(decider.finish()),
        Err(rejection) => {
            Err(StoreError::corrupt(format!("the sweep of account {account_id} was refused: {rejection}")))
        }
    }
}

/// Step 2 through `reads`: a [`Decider`] on the state `command` needs.
fn assemble(reads: &mut impl Reads, command: &Command, now: Timestamp) -> Result<Decider, StoreError> {
    let needs = needs(command, now);
    let account_id = match needs.target {
        Target::Account(account_id) => account_id.clone(),
        Target::Hold(hold_id) => match reads.hold_account(hold_id)? {
            Some(account_id) => account_id,
            None => return Ok(Decider::hold_not_found()),
        },
    };
    let Some(mut state) = reads.account(&account_id, needs.pending_holds)? else {
        return Ok(Decider::new(None));
    };
    let missing = needs.missing_from(&state);
    if let Some(hold_id) = missing.hold {
        if let Some(hold) = reads.hold(hold_id)? {
            include_hold(&mut state, hold);
        }
    }
    if let Some((kind, reference)) = missing.grant {
        if let Some(grant) = reads.grant_by_reference(&account_id, kind, reference)? {
            include_grant(&mut state, grant);
        }
    }
    Ok(Decider::new(Some(state)))
}

/// Whose state a [`Decider`] decides on.
#[derive(Debug)]
enum Account {
    /// The hold the commands name does not exist, and so neither does an account for them.
    HoldNotFound,
    /// The account's state; `None` while the account does not exist (a grant creates it).
    Known(Option<AccountState>),
}

/// Step 3: decides fresh requests of one account in arrival order, each on the state the one
/// before it left, and merges what they change.
#[derive(Debug)]
pub struct Decider {
    account: Account,
    /// The row as loaded: totals, held and the low-balance threshold.
    row_before: Option<(Totals, Amount, Option<Amount>)>,
    changes: Changes,
    records: Vec<Record>,
}

impl Decider {
    /// On the account's assembled state (`None`: the account does not exist yet).
    pub fn new(state: Option<AccountState>) -> Decider {
        let row_before = state.as_ref().map(|state| (state.totals, state.held, state.low_balance_threshold));
        Decider { account: Account::Known(state), row_before, changes: Changes::default(), records: Vec::new() }
    }

    /// For commands naming a hold that does not exist: each is rejected with `hold_not_found`
    /// (and the rejection recorded on its key like any other).
    pub fn hold_not_found() -> Decider {
        Decider { account: Account::HoldNotFound, row_before: None, changes: Changes::default(), records: Vec::new() }
    }

    /// Decides one request whose key has no record, at `now`; with a key, its result is recorded
    /// for replay. The command must concern this account.
    pub fn decide(&mut self, request: &Request, now: Timestamp) -> Result<Outcome, Rejection> {
        let key = request.idempotency.as_ref().map(|idempotency| idempotency.key.as_str());
        let result = match &mut self.account {
            Account::HoldNotFound => Err(Rejection::HoldNotFound),
            Account::Known(state) => {
                if let (Some(state), Target::Account(account_id)) = (state.as_ref(), request.command.target()) {
                    assert_eq!(account_id, &state.account_id, "a decider decides one account's commands");
                }
                // The calendar's step (the ledger has none): every allowance the decision sees,
                // the account's and the command's own, gets its period at `now`.
                if let Some(state) = state.as_mut() {
                    // An ended allowance does nothing more; a backend's kept state drops it here
                    // (unless this batch changed it and must still write it).
                    let changed = &self.changes.allowances;
                    state
                        .allowances
                        .retain(|allowance| !allowance.has_ended_at(now) || changed.contains(&allowance.allowance_id));
                    crate::allowances::schedule_at(state, now);
                }
                let command = crate::allowances::schedule_command(&request.command, now);
                ledger::execute_in_place(state, &command, now, key).map(|(outcome, changes)| {
                    merge(&mut self.changes, changes);
                    outcome
                })
            }
        };
        if let Some(idempotency) = &request.idempotency {
            self.records.push(Record {
                key: idempotency.key.clone(),
                fingerprint: idempotency.fingerprint.clone(),
                result: codec::encode_result(&result),
            });
        }
        result
    }

    /// Step 4: what to write for every request decided.
    pub fn finish(self) -> Writes {
        let state = match self.account {
            Account::Known(state) => state,
            Account::HoldNotFound => None,
        };
        assert!(self.changes.is_empty() || state.is_some(), "the ledger changed an account it did not return");
        let account_row = match &state {
            _ if self.changes.is_empty() => AccountRow::Unchanged,
            _ if self.changes.account_created => AccountRow::Insert,
            Some(state) if Some((state.totals, state.held, state.low_balance_threshold)) != self.row_before => {
                AccountRow::Update
            }
            _ => AccountRow::Unchanged,
        };
        Writes { state, account_row, changes: self.changes, records: self.records }
    }
}

/// Adds one command's changes to the batch's: each grant and hold once (written at its final
/// state), the entries in order.
fn merge(into: &mut Changes, changes: Changes) {
    into.account_created |= changes.account_created;
    for grant_id in changes.grants {
        if !into.grants.contains(&grant_id) {
            into.grants.push(grant_id);
        }
    }
    for hold_id in changes.holds {
        if !into.holds.contains(&hold_id) {
            into.holds.push(hold_id);
        }
    }
    for allowance_id in changes.allowances {
        if !into.allowances.contains(&allowance_id) {
            into.allowances.push(allowance_id);
        }
    }
    into.entries.extend(changes.entries);
    into.settings |= changes.settings;
}

/// What happens to the account row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountRow {
    /// Its totals and held did not move: left alone (an extend, a grant, a rejection).
    Unchanged,
    /// The account was created: insert it, with the final totals and held.
    Insert,
    /// Its totals, held or threshold moved: update them.
    Update,
}

/// An idempotency record to write: a key, the fingerprint of the request that used it and its
/// encoded result ([`codec::encode_result`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub key: String,
    pub fingerprint: String,
    pub result: String,
}

/// Step 4, the persist contract: exactly what a backend writes for the requests a [`Decider`]
/// decided, in one transaction.
#[derive(Debug)]
pub struct Writes {
    state: Option<AccountState>,
    account_row: AccountRow,
    changes: Changes,
    records: Vec<Record>,
}

impl Writes {
    /// The account as decided, which the row, grants and holds are written from; `None` when
    /// it does not exist.
    pub fn state(&self) -> Option<&AccountState> {
        self.state.as_ref()
    }

    pub fn account_row(&self) -> AccountRow {
        self.account_row
    }

    /// Every grant a command changed, once, as it finally stands: insert or update each.
    pub fn grants(&self) -> impl Iterator<Item = &Grant> + '_ {
        let state = self.state.as_ref();
        self.changes.grants.iter().map(move |grant_id| {
            state.and_then(|state| state.grant(grant_id)).expect("a changed grant is in the state")
        })
    }

    /// Every hold a command changed, once, as it finally stands: insert or update each.
    pub fn holds(&self) -> impl Iterator<Item = &Hold> + '_ {
        let state = self.state.as_ref();
        self.changes
            .holds
            .iter()
            .map(move |hold_id| state.and_then(|state| state.hold(hold_id)).expect("a changed hold is in the state"))
    }

    /// Every allowance a command changed (created, granted a period, ended), once, as it
    /// finally stands: insert or update each.
    pub fn allowances(&self) -> impl Iterator<Item = &Allowance> + '_ {
        let state = self.state.as_ref();
        self.changes.allowances.iter().map(move |allowance_id| {
            state.and_then(|state| state.allowance(allowance_id)).expect("a changed allowance is in the state")
        })
    }

    /// The journal entries in journal order: append each, with a `seq` above every earlier one.
    pub fn entries(&self) -> &[Entry] {
        &self.changes.entries
    }

    /// The events of these changes ([`crate::events::ledger_events`]), to write in the same
    /// transaction, in this order.
    pub fn events(&self) -> Vec<crate::events::NewEvent> {
        crate::events::ledger_events(self)
    }

    /// One record per decided request with a key, in the requests' order.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Whether the ledger changed anything (as opposed to recording results only).
    pub fn changed(&self) -> bool {
        !self.changes.is_empty()
    }

    /// Whether there is nothing at all to write (a transaction may then roll back).
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.records.is_empty()
    }

    /// The only state a backend may keep once these writes are committed: the account's row
    /// and live grants as now stored, no holds (`None` when the account does not exist). A
    /// command's due and named holds are read afresh for it, so what is kept stays small however
    /// many holds are pending.
    pub fn into_cached(self) -> Option<AccountState> {
        let mut state = self.state?;
        state.grants.retain(|grant| grant.live);
        state.holds.clear();
        Some(state)
    }
}

#[cfg(test)]
mod tests {
    use ledger::{AccountId, Amount, GrantId, HoldState, Overage};

    use super::*;

    fn account() -> AccountId {
        AccountId::parse("a").expect("valid id")
    }

    fn grant(id: &str, credits: u64) -> Command {
        Command::Grant {
            account_id: account(),
            grant_id: GrantId::parse(id).expect("valid id"),
            amount: Amount::from_credits(credits),
            priority: 0,
            expires_at: None,
            reference: None,
            metadata: "{}".to_owned(),
        }
    }

    fn hold(id: &str, credits: u64) -> Command {
        Command::Hold {
            account_id: account(),
            hold_id: HoldId::parse(id).expect("valid id"),
            amount: Amount::from_credits(credits),
            ttl_seconds: 60,
            reference: None,
            metadata: "{}".to_owned(),
        }
    }

    const NOW: Timestamp = Timestamp::from_micros(1_700_000_000_000_000);

    /// A batch: each command sees the one before it, a rejection in the middle changes nothing
    /// and is recorded, the writes list each record once at its final state, and the row is
    /// inserted for a new account.
    #[test]
    fn a_batch_decides_in_order_and_merges_its_writes() {
        let mut decider = Decider::new(None);
        let requests = [
            Request::new(grant("g1", 10)),
            Request::with_key(hold("h1", 4), "k1", "f1"),
            Request::with_key(hold("h2", 7), "k2", "f2"),
            Request::new(Command::Capture {
                hold_id: HoldId::parse("h1").expect("valid id"),
                amount: Amount::from_credits(4),
                is_final: true,
                overage: Overage::Reject,
            }),
        ];
        let results: Vec<_> = requests.iter().map(|request| decider.decide(request, NOW)).collect();
        assert!(matches!(results[1], Ok(Outcome::Held { .. })));
        let required = Amount::from_credits(7);
        let available = Amount::from_credits(6);
        assert_eq!(results[2], Err(Rejection::InsufficientCredits { required, available }));
        assert!(matches!(results[3], Ok(Outcome::Captured { .. })));

        let writes = decider.finish();
        assert_eq!(writes.account_row(), AccountRow::Insert);
        let grants: Vec<_> = writes.grants().map(|grant| (grant.grant_id.as_str(), grant.free)).collect();
        assert_eq!(grants, [("g1", Amount::from_credits(6))]);
        let holds: Vec<_> = writes.holds().map(|hold| (hold.hold_id.as_str(), hold.state)).collect();
        assert_eq!(holds, [("h1", HoldState::Captured)]);
        assert_eq!(writes.entries().len(), 3, "grant, hold, capture");
        let keys: Vec<_> = writes.records().iter().map(|record| record.key.as_str()).collect();
        assert_eq!(keys, ["k1", "k2"]);
        assert!(writes.records()[1].result.contains("insufficient_credits"));
        let cached = writes.into_cached().expect("the account exists");
        assert!(cached.holds.is_empty(), "no hold is kept");
        assert_eq!(cached.materialized().balance, Amount::from_credits(6));
    }

    /// The row is written only when it must be: not for a grant, but for a hold or a debit.
    #[test]
    fn the_account_row_is_updated_only_when_its_totals_or_held_move() {
        let mut decider = Decider::new(None);
        decider.decide(&Request::new(grant("g1", 10)), NOW).expect("granted");
        let state = decider.finish().into_cached();
        let mut decider = Decider::new(state.clone());
        decider.decide(&Request::new(grant("g2", 10)), NOW).expect("granted");
        assert_eq!(decider.finish().account_row(), AccountRow::Unchanged);
        // Since issue 16 the row keeps `held`: a hold moves it.
        let mut decider = Decider::new(state.clone());
        decider.decide(&Request::new(hold("h1", 4)), NOW).expect("held");
        assert_eq!(decider.finish().account_row(), AccountRow::Update);
        let mut decider = Decider::new(state);
        let debit = Command::Debit { account_id: account(), amount: Amount::from_credits(1), reference: None };
        decider.decide(&Request::new(debit), NOW).expect("debited");
        assert_eq!(decider.finish().account_row(), AccountRow::Update);
    }

    #[test]
    fn a_missing_hold_rejects_and_records_and_writes_nothing_else() {
        let mut decider = Decider::hold_not_found();
        let release = Command::Release { hold_id: HoldId::parse("nope").expect("valid id") };
        assert_eq!(decider.decide(&Request::with_key(release, "k", "f"), NOW), Err(Rejection::HoldNotFound));
        let writes = decider.finish();
        assert!(!writes.changed() && !writes.is_empty());
        assert_eq!(writes.records().len(), 1);
        assert!(writes.into_cached().is_none());
    }

    #[test]
    fn a_recorded_key_replays_or_conflicts() {
        let idempotency = Idempotency { key: "k".to_owned(), fingerprint: "f".to_owned() };
        let recorded = codec::encode_result(&Err(Rejection::HoldNotFound));
        let replayed = replay(&idempotency, "f", &recorded).expect("decodes");
        assert_eq!(replayed, Executed::Replayed(Err(Rejection::HoldNotFound)));
        assert_eq!(replay(&idempotency, "other", &recorded).expect("no decoding needed"), Executed::Conflict);
        assert!(matches!(replay(&idempotency, "f", "{"), Err(StoreError::Corrupt { .. })));
    }

    /// A hold of another account is not added; a named record already there is not read again.
    #[test]
    fn named_records_are_added_once_and_only_for_the_account() {
        let mut decider = Decider::new(None);
        decider.decide(&Request::new(grant("g1", 10)), NOW).expect("granted");
        decider.decide(&Request::new(hold("h1", 4)), NOW).expect("held");
        let writes = decider.finish();
        let h1 = writes.holds().next().expect("h1 was written").clone();
        let mut state = writes.into_cached().expect("exists");
        assert!(state.holds.is_empty(), "the cache keeps no hold");
        let mut stranger = h1.clone();
        stranger.hold_id = HoldId::parse("h2").expect("valid id");
        stranger.account_id = AccountId::parse("b").expect("valid id");
        include_hold(&mut state, h1.clone());
        include_hold(&mut state, h1);
        include_hold(&mut state, stranger);
        assert_eq!(state.holds.len(), 1);
        let release = Command::Release { hold_id: HoldId::parse("h1").expect("valid id") };
        assert_eq!(needs(&release, NOW).missing_from(&state).hold, None, "h1 is there");
        let release = Command::Release { hold_id: HoldId::parse("h2").expect("valid id") };
        assert!(needs(&release, NOW).missing_from(&state).hold.is_some(), "h2 is not");
    }
}
