//! The conformance suite every [`LedgerStore`] backend runs.
//!
//! Each check is a plain `async fn` taking a fresh store and the [`ManualClock`] it reads. A
//! backend's test file defines `async fn new_store(clock: Arc<ManualClock>) -> Arc<dyn LedgerStore>`
//! (a fresh, empty, migrated store per call) and invokes [`crate::conformance_tests!`] once.

use std::sync::Arc;

use crate::{LedgerStore, ManualClock};

/// A fresh store and the clock it reads.
pub struct Harness {
    pub store: Arc<dyn LedgerStore>,
    pub clock: Arc<ManualClock>,
}

/// Expands to one `#[tokio::test]` per conformance check, each on a fresh store from `$factory`.
#[macro_export]
macro_rules! conformance_tests {
    ($factory:path) => {
        $crate::conformance_tests!(@tests $factory;);
    };
    (@tests $factory:path; $($name:ident)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() {
                let clock = ::std::sync::Arc::new($crate::ManualClock::starting_now());
                let store = $factory(clock.clone()).await;
                $crate::conformance::$name($crate::conformance::Harness { store, clock }).await;
            }
        )*
    };
}
