//! An independent reference model of the ledger, for differential testing.
//!
//! It is deliberately written apart from the `ledger` crate: plain integers, grants and holds
//! in vectors, expiry applied by brute force before every step. If the model and a store ever
//! disagree, one of them has a bug.

use std::collections::HashMap;

/// What the model answers for one operation: a success with the figures that matter, or the
/// rejection's stable code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A hold after the operation: (state, captured µcr, remaining µcr).
    Hold(&'static str, u64, u64),
    /// A grant or refund: (amount µcr, created now).
    Grant(u64, bool),
    /// A debit or sweep.
    Done,
    /// A void: what it took back (µcr).
    Voided(u64),
    Rejected(&'static str),
}

#[derive(Clone, Debug)]
struct Grant {
    key: String,
    free: u64,
    priority: i32,
    expires_at: Option<i64>,
    order: u64,
    amount: u64,
    voided: bool,
}

#[derive(Clone, Debug)]
struct Hold {
    captured: u64,
    remaining: u64,
    refunded: u64,
    state: &'static str,
    expires_at: i64,
    /// (grant index, µcr) reserved.
    pins: Vec<(usize, u64)>,
}

#[derive(Clone, Debug, Default)]
pub struct Account {
    grants: Vec<Grant>,
    holds: HashMap<String, Hold>,
    spent: u64,
    refunded: u64,
    grant_refs: HashMap<String, usize>,
    refund_refs: HashMap<String, usize>,
    next_order: u64,
}

fn expired(expires_at: Option<i64>, at: i64) -> bool {
    expires_at.is_some_and(|expires_at| expires_at <= at)
}

impl Account {
    /// Applies every expiry due at `now`.
    fn settle(&mut self, now: i64) {
        let mut due: Vec<String> = self
            .holds
            .iter()
            .filter(|(_, hold)| hold.state == "pending" && hold.expires_at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        due.sort_by_key(|id| (self.holds[id].expires_at, id.clone()));
        for id in due {
            let hold = self.holds.get_mut(&id).expect("due hold exists");
            hold.state = "expired";
            hold.remaining = 0;
            let at = hold.expires_at;
            for (index, amount) in std::mem::take(&mut hold.pins) {
                if !expired(self.grants[index].expires_at, at) {
                    self.grants[index].free += amount;
                }
            }
        }
        for grant in &mut self.grants {
            if expired(grant.expires_at, now) {
                grant.free = 0;
            }
        }
    }

    fn available(&self) -> u64 {
        self.grants.iter().map(|grant| grant.free).sum()
    }

    /// (balance, held, available) at `now`.
    pub fn balances(&mut self, now: i64) -> (u64, u64, u64) {
        self.settle(now);
        let held: u64 = self.holds.values().filter(|hold| hold.state == "pending").map(|hold| hold.remaining).sum();
        let available = self.available();
        (available + held, held, available)
    }

    fn spend_order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.grants.len()).collect();
        order.sort_by_key(|&index| {
            let grant = &self.grants[index];
            (grant.priority, grant.expires_at.unwrap_or(i64::MAX), grant.order)
        });
        order
    }

    fn take(&mut self, mut amount: u64) -> Vec<(usize, u64)> {
        let mut pins = Vec::new();
        for index in self.spend_order() {
            let take = self.grants[index].free.min(amount);
            if take > 0 {
                self.grants[index].free -= take;
                amount -= take;
                pins.push((index, take));
            }
        }
        assert_eq!(amount, 0, "model took beyond available");
        pins
    }

    /// The id the differential test gave the model's grant at `index` (modulo; `None`: none yet).
    pub fn grant_id(&self, index: usize, refund_prefix: &str, grant_prefix: &str) -> Option<String> {
        if self.grants.is_empty() {
            return None;
        }
        let grant = &self.grants[index % self.grants.len()];
        let prefix = if self.refund_refs.values().any(|&at| at == index % self.grants.len()) {
            refund_prefix
        } else {
            grant_prefix
        };
        Some(format!("{prefix}{}", grant.key))
    }

    /// Voids the grant at `index` (modulo): refused while pending holds pin any of it, and a
    /// grant with nothing free or pinned (spent, expired, voided) is not found.
    pub fn void(&mut self, now: i64, index: usize) -> Answer {
        self.settle(now);
        let index = index % self.grants.len();
        let pinned: u64 = self
            .holds
            .values()
            .filter(|hold| hold.state == "pending")
            .flat_map(|hold| hold.pins.iter())
            .filter(|(grant, _)| *grant == index)
            .map(|(_, amount)| amount)
            .sum();
        let grant = &mut self.grants[index];
        if grant.voided || (grant.free == 0 && pinned == 0) {
            return Answer::Rejected("grant_not_found");
        }
        if pinned > 0 {
            return Answer::Rejected("grant_credits_held");
        }
        grant.voided = true;
        Answer::Voided(std::mem::take(&mut grant.free))
    }

    fn hold_answer(hold: &Hold) -> Answer {
        Answer::Hold(hold.state, hold.captured, hold.remaining)
    }

    pub fn grant(
        &mut self,
        now: i64,
        key: &str,
        amount: u64,
        priority: i32,
        expires_at: Option<i64>,
        reference: Option<&str>,
    ) -> Answer {
        self.settle(now);
        if let Some(index) = reference.and_then(|reference| self.grant_refs.get(reference)) {
            return Answer::Grant(self.grants[*index].amount, false);
        }
        self.next_order += 1;
        self.grants.push(Grant {
            key: key.to_owned(),
            free: amount,
            priority,
            expires_at,
            order: self.next_order,
            amount,
            voided: false,
        });
        if let Some(reference) = reference {
            self.grant_refs.insert(reference.to_owned(), self.grants.len() - 1);
        }
        Answer::Grant(amount, true)
    }

    pub fn hold(&mut self, now: i64, id: &str, amount: u64, ttl_seconds: i64) -> Answer {
        self.settle(now);
        if self.available() < amount {
            return Answer::Rejected("insufficient_credits");
        }
        let pins = self.take(amount);
        let hold = Hold {
            captured: 0,
            remaining: amount,
            refunded: 0,
            state: "pending",
            expires_at: now + ttl_seconds * 1_000_000,
            pins,
        };
        let answer = Account::hold_answer(&hold);
        self.holds.insert(id.to_owned(), hold);
        answer
    }

    fn pending_hold(&mut self, id: &str, expired_code: &'static str) -> Result<&mut Hold, Answer> {
        let hold = self.holds.get_mut(id).ok_or(Answer::Rejected("hold_not_found"))?;
        match hold.state {
            "pending" => Ok(hold),
            "expired" => Err(Answer::Rejected(expired_code)),
            _ => Err(Answer::Rejected("hold_not_pending")),
        }
    }

    fn unpin(&mut self, pins: Vec<(usize, u64)>, now: i64) {
        for (index, amount) in pins {
            if !expired(self.grants[index].expires_at, now) {
                self.grants[index].free += amount;
            }
        }
    }

    pub fn capture(&mut self, now: i64, id: &str, amount: u64, is_final: bool, overage: bool) -> Answer {
        self.settle(now);
        let available = self.available();
        let hold = match self.pending_hold(id, "hold_expired") {
            Ok(hold) => hold,
            Err(answer) => return answer,
        };
        let from_hold = amount.min(hold.remaining);
        let excess = amount - from_hold;
        if excess > 0 && !overage {
            return Answer::Rejected("amount_exceeds_hold");
        }
        if excess > 0 && available < excess {
            return Answer::Rejected("insufficient_credits");
        }
        // Consume pins in the grants' spend order.
        let mut pins = std::mem::take(&mut hold.pins);
        let grants = &self.grants;
        pins.sort_by_key(|(index, _)| {
            let grant = &grants[*index];
            (grant.priority, grant.expires_at.unwrap_or(i64::MAX), grant.order)
        });
        let mut left = from_hold;
        for pin in &mut pins {
            let take = pin.1.min(left);
            pin.1 -= take;
            left -= take;
        }
        pins.retain(|pin| pin.1 > 0);
        let hold = self.holds.get_mut(id).expect("hold exists");
        hold.captured += amount;
        hold.remaining -= from_hold;
        let to_unpin = if is_final {
            hold.state = "captured";
            hold.remaining = 0;
            pins
        } else {
            hold.pins = pins;
            Vec::new()
        };
        let answer = Account::hold_answer(hold);
        self.unpin(to_unpin, now);
        if excess > 0 {
            self.take(excess);
        }
        self.spent += amount;
        answer
    }

    pub fn release(&mut self, now: i64, id: &str) -> Answer {
        self.settle(now);
        if self.holds.get(id).is_some_and(|hold| hold.state == "released") {
            return Account::hold_answer(&self.holds[id]);
        }
        let hold = match self.pending_hold(id, "hold_not_pending") {
            Ok(hold) => hold,
            Err(answer) => return answer,
        };
        hold.state = "released";
        hold.remaining = 0;
        let pins = std::mem::take(&mut hold.pins);
        let answer = Account::hold_answer(hold);
        self.unpin(pins, now);
        answer
    }

    pub fn extend(&mut self, now: i64, id: &str, ttl_seconds: i64) -> Answer {
        self.settle(now);
        match self.pending_hold(id, "hold_expired") {
            Ok(hold) => {
                hold.expires_at = now + ttl_seconds * 1_000_000;
                Account::hold_answer(hold)
            }
            Err(answer) => answer,
        }
    }

    pub fn debit(&mut self, now: i64, amount: u64) -> Answer {
        self.settle(now);
        if self.available() < amount {
            return Answer::Rejected("insufficient_credits");
        }
        self.take(amount);
        self.spent += amount;
        Answer::Done
    }

    pub fn refund(&mut self, now: i64, key: &str, amount: u64, reference: &str, hold: Option<&str>) -> Answer {
        self.settle(now);
        if let Some(index) = self.refund_refs.get(reference) {
            return Answer::Grant(self.grants[*index].amount, false);
        }
        let refundable = match hold {
            Some(id) => match self.holds.get(id) {
                Some(hold) => (hold.captured - hold.refunded).min(self.spent - self.refunded),
                None => return Answer::Rejected("hold_not_found"),
            },
            None => self.spent - self.refunded,
        };
        if amount > refundable {
            return Answer::Rejected("refund_exceeds_charges");
        }
        if let Some(id) = hold {
            self.holds.get_mut(id).expect("checked above").refunded += amount;
        }
        self.refunded += amount;
        self.next_order += 1;
        self.grants.push(Grant {
            key: key.to_owned(),
            free: amount,
            priority: 100,
            expires_at: None,
            order: self.next_order,
            amount,
            voided: false,
        });
        self.refund_refs.insert(reference.to_owned(), self.grants.len() - 1);
        Answer::Grant(amount, true)
    }

    /// The state of a hold as it reads at `now`.
    pub fn hold_state(&mut self, now: i64, id: &str) -> Option<Answer> {
        self.settle(now);
        self.holds.get(id).map(Account::hold_answer)
    }

    /// Keys of grants, for debugging a disagreement.
    pub fn grant_keys(&self) -> Vec<&str> {
        self.grants.iter().map(|grant| grant.key.as_str()).collect()
    }
}
