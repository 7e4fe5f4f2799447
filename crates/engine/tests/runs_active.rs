//! `runs_active_max` is exact: however many turns start at once, at most that many run, and a
//! finished run's place is free again. (It was checked, then awaited, then registered, so
//! concurrent starts could all pass the check.)

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use engine::provider::Purpose;
use engine::run::{EngineConfig, StartError};
use engine::testing::{FakeReply, Gate};
use futures::stream::{FuturesUnordered, StreamExt};
use support::{Options, TestEngine, WAIT_SECONDS_MAX};

const RUNS_ACTIVE_MAX: usize = 2;
const STARTS: usize = 8;

#[tokio::test(flavor = "current_thread")]
async fn concurrent_starts_beyond_the_limit_are_busy() {
    // Run creation waits at a gate, so every start that gets past the limit is inside the store
    // at once: a check-then-register limit would let all of them through.
    let create = Gate::new();
    let options = Options {
        config: EngineConfig { runs_active_max: RUNS_ACTIVE_MAX, ..Options::default().config },
        create_gate: Some(create.clone()),
        ..Options::default()
    };
    let s = TestEngine::start_with(options).await;
    s.fake.on_default(Purpose::Router, FakeReply::route(true));
    s.fake.on_default(Purpose::GeneralChat, FakeReply::text("hi"));

    let mut starts: FuturesUnordered<_> = (0..STARTS).map(|_| s.engine.start_solve(support::solve("hi"))).collect();
    let mut busy = 0;
    while busy < STARTS - RUNS_ACTIVE_MAX {
        let next = tokio::time::timeout(Duration::from_secs(WAIT_SECONDS_MAX), starts.next()).await;
        match next.expect("the starts beyond the limit are refused at once").expect("a start") {
            Err(StartError::Busy) => busy += 1,
            Err(other) => panic!("a start beyond the limit is busy, not {other:?}"),
            Ok(run) => panic!("run {} started although its creation was held", run.run_id),
        }
    }
    assert_eq!(s.runs.creates.load(Ordering::SeqCst), RUNS_ACTIVE_MAX, "only the admitted starts create a run");

    create.open();
    let mut started = Vec::new();
    while let Some(result) = starts.next().await {
        started.push(result.unwrap_or_else(|error| panic!("an admitted start starts: {error:?}")));
    }
    assert_eq!(started.len(), RUNS_ACTIVE_MAX);
    for run in &started {
        s.run_to_end(run).await;
    }
    // The finished runs gave their places back: a run's task frees its place in the same step
    // that closes its stream, so on this current-thread runtime it is free by now.
    assert_eq!(s.engine.running_count(), 0);
    let again = s.engine.start_solve(support::solve("again")).await;
    let again = again.unwrap_or_else(|error| panic!("a place is free again: {error:?}"));
    s.run_to_end(&again).await;
}
