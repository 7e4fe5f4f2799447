//! The clock every store reads. Injected, so tests can move time without sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use ledger::Timestamp;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
}

/// Wall-clock time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let micros = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_micros());
        Timestamp::from_micros(i64::try_from(micros).unwrap_or(i64::MAX))
    }
}

/// Wall-clock time plus an offset an operator moves forward (`creditgraph serve --test-clock`,
/// `POST /v1/test-clock/advance`), like Stripe's test clocks: time keeps running, and a month of
/// expiries can be seen in seconds. Never moves backwards: a journal's times only grow.
#[derive(Debug, Default)]
pub struct TestClock {
    offset_micros: AtomicI64,
}

impl TestClock {
    pub fn new() -> TestClock {
        TestClock::default()
    }

    /// Moves the clock `seconds` forward; the new time.
    pub fn advance_seconds(&self, seconds: u64) -> Timestamp {
        let micros = i64::try_from(seconds).unwrap_or(i64::MAX).saturating_mul(1_000_000);
        self.offset_micros.fetch_add(micros, Ordering::SeqCst);
        self.now()
    }

    /// How far ahead of the wall clock this clock is.
    pub fn offset_seconds(&self) -> i64 {
        self.offset_micros.load(Ordering::SeqCst) / 1_000_000
    }
}

impl Clock for TestClock {
    fn now(&self) -> Timestamp {
        let offset = self.offset_micros.load(Ordering::SeqCst);
        Timestamp::from_micros(SystemClock.now().micros().saturating_add(offset))
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(start: Timestamp) -> ManualClock {
        ManualClock(AtomicI64::new(start.micros()))
    }

    /// Starts at the wall-clock time, rounded to a whole second.
    pub fn starting_now() -> ManualClock {
        let now = SystemClock.now().micros();
        ManualClock::new(Timestamp::from_micros(now - now % 1_000_000))
    }

    pub fn advance_seconds(&self, seconds: i64) {
        self.0.fetch_add(seconds * 1_000_000, Ordering::SeqCst);
    }

    pub fn set(&self, at: Timestamp) {
        self.0.store(at.micros(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp::from_micros(self.0.load(Ordering::SeqCst))
    }
}
