//! The workloads of issue 6: who is picked (uniform, Zipf, one hot account) and what is done
//! (hold lifecycles, read-heavy mixes, replayed keys, near-empty accounts).
//!
//! A workload decides; the drivers ([`crate::inprocess`], [`crate::http`]) execute. Every random
//! choice comes from a seeded generator, so a run is repeatable up to the scheduler's order.

use rand::Rng;
use serde::Serialize;

/// Credits granted to an ordinary account: far more than any run spends.
pub const GRANT_CREDITS: u64 = 1_000_000;
/// Credits granted to a near-empty account: two holds of [`HOLD_CREDITS_NEAR_EMPTY`] fit, a third
/// is refused until one ends, so rejections happen all the time.
pub const GRANT_CREDITS_NEAR_EMPTY: u64 = 5;
pub const HOLD_CREDITS: u64 = 2;
pub const HOLD_CREDITS_NEAR_EMPTY: u64 = 2;
/// What a capture charges of a [`HOLD_CREDITS`] hold (the rest returns to the account).
pub const CAPTURE_CREDITS: u64 = 1;
/// Time to live of a hold that will be captured or released.
pub const HOLD_TTL_SECONDS: u64 = 1_200;
/// Time to live of a hold left to expire: short, so its credits come back during the run.
pub const HOLD_TTL_SECONDS_EXPIRING: u64 = 1;

/// How the account of each operation is picked.
#[derive(Clone, Debug, Serialize)]
pub enum Distribution {
    /// Every account equally likely.
    Uniform { accounts: usize },
    /// Account `k` (1-based) with probability proportional to `1 / k^s`.
    Zipf { accounts: usize, exponent_milli: u32 },
    /// Always the same account.
    Hot,
}

impl Distribution {
    pub fn accounts(&self) -> usize {
        match self {
            Distribution::Uniform { accounts } | Distribution::Zipf { accounts, .. } => *accounts,
            Distribution::Hot => 1,
        }
    }

    pub fn label(&self) -> String {
        match self {
            Distribution::Uniform { accounts } => format!("uniform over {accounts}"),
            Distribution::Zipf { accounts, exponent_milli } => {
                format!("Zipf s={}.{:03} over {accounts}", exponent_milli / 1000, exponent_milli % 1000)
            }
            Distribution::Hot => "one hot account".to_owned(),
        }
    }

    pub fn picker(&self) -> Picker {
        match self {
            Distribution::Uniform { accounts } => Picker::Uniform(*accounts),
            Distribution::Hot => Picker::Uniform(1),
            Distribution::Zipf { accounts, exponent_milli } => {
                // The cumulative weights, normalised; sampling is a binary search. f64 is fine
                // here: it chooses accounts, it never touches an amount.
                let exponent = f64::from(*exponent_milli) / 1000.0;
                let mut cumulative = Vec::with_capacity(*accounts);
                let mut total = 0.0;
                for rank in 1..=*accounts {
                    total += 1.0 / (rank as f64).powf(exponent);
                    cumulative.push(total);
                }
                for weight in &mut cumulative {
                    *weight /= total;
                }
                Picker::Cumulative(cumulative.into())
            }
        }
    }
}

/// Picks account indexes for one [`Distribution`]; cheap to clone (shared table).
#[derive(Clone)]
pub enum Picker {
    Uniform(usize),
    Cumulative(std::sync::Arc<[f64]>),
}

impl Picker {
    pub fn pick(&self, rng: &mut impl Rng) -> usize {
        match self {
            Picker::Uniform(accounts) => rng.random_range(0..*accounts),
            Picker::Cumulative(cumulative) => {
                let point: f64 = rng.random();
                cumulative.partition_point(|&weight| weight < point).min(cumulative.len() - 1)
            }
        }
    }
}

/// What one simulated caller does each time round its loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Mix {
    /// Hold, then capture (final, part of the hold).
    HoldCapture,
    /// Hold, then capture 60 %, release 30 %, leave it to expire 10 %.
    Lifecycle,
    /// A balance read 95 % of the time, a hold + capture 5 %.
    ReadHeavy,
}

/// The next step of a caller, decided before it acts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Read,
    /// A hold and what follows it.
    Hold(Ending),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    Capture,
    Release,
    Expire,
}

impl Mix {
    pub fn label(self) -> &'static str {
        match self {
            Mix::HoldCapture => "hold + capture",
            Mix::Lifecycle => "lifecycle 60/30/10",
            Mix::ReadHeavy => "95 % reads / 5 % holds",
        }
    }

    pub fn step(self, rng: &mut impl Rng) -> Step {
        let roll = rng.random_range(0..100_u32);
        match self {
            Mix::HoldCapture => Step::Hold(Ending::Capture),
            Mix::Lifecycle if roll < 60 => Step::Hold(Ending::Capture),
            Mix::Lifecycle if roll < 90 => Step::Hold(Ending::Release),
            Mix::Lifecycle => Step::Hold(Ending::Expire),
            Mix::ReadHeavy if roll < 95 => Step::Read,
            Mix::ReadHeavy => Step::Hold(Ending::Capture),
        }
    }
}

/// One named workload.
#[derive(Clone, Debug, Serialize)]
pub struct Workload {
    pub name: &'static str,
    pub distribution: Distribution,
    pub mix: Mix,
    /// Share of mutations sent a second time with the same idempotency key (a client retry).
    pub replay_percent: u32,
    /// Accounts get [`GRANT_CREDITS_NEAR_EMPTY`], so holds are refused often.
    pub near_empty: bool,
    /// Recurring allowances per account (creditgraph's stores only): each decision and read
    /// loads them and computes their current period. Zero credits each, so the balances the
    /// conservation check expects are unchanged.
    pub allowances: usize,
}

impl Workload {
    pub fn label(&self) -> String {
        let mut label = format!("{}, {}", self.distribution.label(), self.mix.label());
        if self.replay_percent > 0 {
            label.push_str(&format!(", {} % replayed keys", self.replay_percent));
        }
        if self.near_empty {
            label.push_str(", near-empty accounts");
        }
        if self.allowances > 0 {
            label.push_str(&format!(", {} monthly allowances per account", self.allowances));
        }
        label
    }

    pub fn grant_credits(&self) -> u64 {
        if self.near_empty {
            GRANT_CREDITS_NEAR_EMPTY
        } else {
            GRANT_CREDITS
        }
    }

    pub fn hold_credits(&self) -> u64 {
        if self.near_empty {
            HOLD_CREDITS_NEAR_EMPTY
        } else {
            HOLD_CREDITS
        }
    }
}

/// The in-process workload table of issue 6, over `accounts` accounts (10,000 in the full run).
pub fn in_process_workloads(accounts: usize) -> Vec<Workload> {
    let uniform = Distribution::Uniform { accounts };
    let zipf = Distribution::Zipf { accounts, exponent_milli: 1000 };
    vec![
        Workload {
            name: "uniform",
            distribution: uniform.clone(),
            mix: Mix::HoldCapture,
            replay_percent: 0,
            near_empty: false,
            allowances: 0,
        },
        Workload {
            name: "zipf",
            distribution: zipf.clone(),
            mix: Mix::HoldCapture,
            replay_percent: 0,
            near_empty: false,
            allowances: 0,
        },
        Workload {
            name: "hot",
            distribution: Distribution::Hot,
            mix: Mix::HoldCapture,
            replay_percent: 0,
            near_empty: false,
            allowances: 0,
        },
        Workload {
            name: "lifecycle",
            distribution: zipf.clone(),
            mix: Mix::Lifecycle,
            replay_percent: 0,
            near_empty: false,
            allowances: 0,
        },
        Workload {
            name: "read-heavy",
            distribution: zipf.clone(),
            mix: Mix::ReadHeavy,
            replay_percent: 0,
            near_empty: false,
            allowances: 0,
        },
        Workload {
            name: "replays",
            distribution: zipf,
            mix: Mix::HoldCapture,
            replay_percent: 5,
            near_empty: false,
            allowances: 0,
        },
        Workload {
            name: "allowances",
            distribution: uniform.clone(),
            mix: Mix::HoldCapture,
            replay_percent: 0,
            near_empty: false,
            allowances: ledger::ALLOWANCES_ACTIVE_MAX,
        },
        Workload {
            name: "near-empty",
            distribution: uniform.min_accounts(100),
            mix: Mix::Lifecycle,
            replay_percent: 0,
            near_empty: true,
            allowances: 0,
        },
    ]
}

impl Distribution {
    /// The same kind of distribution over at most `accounts` accounts.
    fn min_accounts(self, accounts: usize) -> Distribution {
        match self {
            Distribution::Uniform { accounts: all } => Distribution::Uniform { accounts: all.min(accounts) },
            Distribution::Zipf { accounts: all, exponent_milli } => {
                Distribution::Zipf { accounts: all.min(accounts), exponent_milli }
            }
            Distribution::Hot => Distribution::Hot,
        }
    }
}

pub fn account_name(index: usize) -> String {
    format!("bench-{index:07}")
}

pub fn account_id(index: usize) -> anyhow::Result<ledger::AccountId> {
    ledger::AccountId::parse(&account_name(index)).map_err(|error| anyhow::anyhow!("account id: {error:?}"))
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::{Distribution, Mix, Step};

    #[test]
    fn zipf_favours_the_first_accounts_as_one_over_rank() {
        let picker = Distribution::Zipf { accounts: 1000, exponent_milli: 1000 }.picker();
        let mut rng = StdRng::seed_from_u64(7);
        let mut counts = vec![0_u32; 1000];
        for _ in 0..200_000 {
            counts[picker.pick(&mut rng)] += 1;
        }
        // P(rank 1) = 1 / H(1000) ≈ 0.1336; rank 2 is half of that.
        assert!((25_000..28_500).contains(&counts[0]), "rank 1 drew {}", counts[0]);
        let ratio = f64::from(counts[0]) / f64::from(counts[1]);
        assert!((1.8..2.2).contains(&ratio), "rank 1 / rank 2 = {ratio}");
        assert!(counts[999] < 100, "the last rank drew {}", counts[999]);
    }

    #[test]
    fn the_lifecycle_mix_is_sixty_thirty_ten() {
        let mut rng = StdRng::seed_from_u64(9);
        let mut counts = [0_u32; 3];
        for _ in 0..100_000 {
            match Mix::Lifecycle.step(&mut rng) {
                Step::Hold(super::Ending::Capture) => counts[0] += 1,
                Step::Hold(super::Ending::Release) => counts[1] += 1,
                Step::Hold(super::Ending::Expire) => counts[2] += 1,
                Step::Read => panic!("the lifecycle mix never reads"),
            }
        }
        assert!((59_000..61_000).contains(&counts[0]), "{counts:?}");
        assert!((29_000..31_000).contains(&counts[1]), "{counts:?}");
        assert!((9_400..10_600).contains(&counts[2]), "{counts:?}");
    }
}
