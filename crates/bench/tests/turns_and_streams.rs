//! The engine measurements of issue 7 at small sizes: they run end to end and their results hold
//! together. No timing is asserted (timing belongs to the benchmark, not to tests).

use std::path::PathBuf;
use std::process::Command;

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

/// The `creditgraph` binary of the profile this test was built with (`target/<profile>/`, the
/// parent of this test's `deps/` folder), built first when it is missing.
fn server_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps/<test>").to_owned();
    let binary = profile_dir.join("creditgraph");
    if !binary.is_file() {
        let profile = profile_dir.file_name().and_then(|name| name.to_str()).expect("a profile folder").to_owned();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let mut command = Command::new(cargo);
        command.args(["build", "-p", "cli", "--bin", "creditgraph"]);
        match profile.as_str() {
            "debug" => {}
            "release" => {
                command.arg("--release");
            }
            other => {
                command.args(["--profile", other]);
            }
        }
        let status = command.status().expect("cargo runs");
        assert!(status.success(), "cargo build -p cli failed: {status}");
    }
    assert!(binary.is_file(), "{} was not built", binary.display());
    binary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stream_opens_and_receives_frames() {
    let binary = server_binary();
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
