//! The fault-injection suite's short form, in CI: both stores, `kill -9` every round, zero
//! violations. It runs through the library's entry point so that `scripts/test.sh` (and so
//! `.ci/run`) runs it with no extra wiring; PostgreSQL rounds need the cluster that script starts,
//! and fail (never skip) without it.

mod common;

use common::server_binary;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_short_form_finds_no_violation_on_either_store() {
    let settings = faults::Settings::short(server_binary());
    let report = faults::run(&settings).await.expect("the driver runs");
    println!("{report}");
    assert_eq!(report.stores.len(), 2, "both stores ran");
    for store in &report.stores {
        assert_eq!(store.rounds, settings.rounds, "{report}");
        assert!(store.faults.get("kill -9").copied().unwrap_or(0) >= u64::from(settings.rounds), "{report}");
    }
    assert_eq!(report.violations(), 0, "{report}");
}
