//! The engine measurements of issue 6 (targets 7 and 9) at small sizes: they run end to end and their results hold
//! together. No timing is asserted (timing belongs to the benchmark, not to tests).

mod support;

use bench::streams::measure_stream_memory;
use bench::turns::measure_turn_overhead;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_turn_is_measured_and_the_ledger_on_turns_are_charged() {
    let turns = 10;
    let overhead = measure_turn_overhead(turns).await.expect("the turns run");
    assert_eq!(overhead.turns, turns);
    assert_eq!(overhead.ledger_on.count, turns as u64, "{overhead:?}");
    assert_eq!(overhead.ledger_off.count, turns as u64, "{overhead:?}");
    assert!(overhead.ledger_on.p50_micros > 0 && overhead.ledger_off.p50_micros > 0, "{overhead:?}");
    let settled = ledger::Amount::parse(&overhead.settled_credits).expect("settled credits are an amount");
    assert!(!settled.is_zero(), "{overhead:?}");
    assert_eq!(
        overhead.added_p99_micros,
        overhead.ledger_on.p99_micros as i64 - overhead.ledger_off.p99_micros as i64,
        "{overhead:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stream_opens_and_receives_frames() {
    let binary = support::server_binary();
    let data = tempfile::tempdir().expect("a temporary folder");
    let streams = 50;
    let memory = measure_stream_memory(&binary, streams, data.path()).await.expect("the streams open");
    assert_eq!((memory.streams, memory.streams_with_data), (streams, streams), "{memory:?}");
    assert!(memory.rss_before_bytes > 0, "{memory:?}");
    assert!(memory.rss_after_bytes >= memory.rss_before_bytes, "{memory:?}");
    assert_eq!(
        memory.bytes_per_stream,
        (memory.rss_after_bytes - memory.rss_before_bytes) / streams as u64,
        "{memory:?}"
    );
}
