//! The benchmark's smoke form, as CI runs it: every workload, store, baseline and HTTP section
//! for a few hundred milliseconds, against the test cluster. It proves the harness still runs
//! end to end, that every run's invariant checks pass, and that the report and chart are
//! written; it measures nothing.

mod support;

use std::process::Command;

#[test]
fn the_smoke_run_covers_every_section_and_writes_the_report() {
    let postgres_url = std::env::var(store_postgres::testing::TEST_URL_VARIABLE).unwrap_or_else(|_| {
        panic!(
            "{} is not set: run the tests with scripts/test.sh, which starts a PostgreSQL cluster",
            store_postgres::testing::TEST_URL_VARIABLE
        )
    });
    let out = tempfile::tempdir().expect("a temporary folder");
    let status = Command::new(env!("CARGO_BIN_EXE_creditgraph-bench"))
        .args(["run", "--smoke", "--postgres-url", &postgres_url, "--out-dir"])
        .arg(out.path())
        .arg("--server-binary")
        .arg(support::server_binary())
        .status()
        .expect("the harness starts");
    assert!(status.success(), "the smoke run failed: {status}");

    let markdown = std::fs::read_to_string(out.path().join("BENCHMARKS.md")).expect("BENCHMARKS.md written");
    assert!(markdown.contains("## Targets (issue 16)"), "{markdown}");
    assert!(markdown.contains("## Targets (issue 6, kept for comparison)"), "{markdown}");
    assert!(markdown.contains("Invariant violations over every run (verify + conservation): **0**"), "{markdown}");
    assert!(markdown.contains("## Time to the first token (issue 18)"), "{markdown}");
    assert!(markdown.contains("**The hardened edge (issue 19)**"), "{markdown}");
    let chart = std::fs::read_to_string(out.path().join("docs/benchmarks/chart.svg")).expect("chart written");
    assert!(chart.starts_with("<svg") && chart.contains("<rect"), "{chart}");

    let results: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("docs/benchmarks/results.json")).expect("results written"),
    )
    .expect("results are JSON");
    let in_process = results["results"]["in_process"].as_array().expect("in-process results");
    // Seven workloads on six stores, and the allowances workload on creditgraph's three.
    assert_eq!(in_process.len(), 7 * 6 + 3, "every workload on every store it runs on");
    for run in in_process {
        assert!(run["tally"]["holds"].as_u64().expect("holds") > 0, "every run holds something: {run}");
        assert_eq!(run["tally"]["unexpected"], 0, "{run}");
    }
    let near_empty_refusals: u64 = in_process
        .iter()
        .filter(|run| run["workload"] == "near-empty")
        .map(|run| run["tally"]["holds_refused"].as_u64().expect("refused"))
        .sum();
    assert!(near_empty_refusals > 0, "near-empty accounts must refuse some holds");
    let replays: u64 = in_process
        .iter()
        .filter(|run| run["workload"] == "replays")
        .map(|run| run["tally"]["replays"].as_u64().expect("replays"))
        .sum();
    assert!(replays > 0, "the replay workload must replay keys");
    assert!(markdown.contains("## Webhook delivery (issue 15)"), "{markdown}");
    assert!(markdown.contains("## The LLM gateway's overhead (issue 13)"), "{markdown}");
    assert!(results["results"]["gateway"].is_object(), "the gateway section ran");
    let webhooks = results["results"]["webhooks"].as_array().expect("webhook results");
    assert_eq!(webhooks.len(), 3, "the dispatcher on both stores and the hand-written relay: {webhooks:?}");
    for section in ["overhead", "hot_fixed_rate", "two_servers", "rate_searches", "scale"] {
        assert!(!results["results"][section].as_array().expect(section).is_empty(), "{section} ran");
    }
    for section in ["turns", "streams", "sandbox", "first_token"] {
        assert!(results["results"][section].is_object(), "{section} ran");
    }
    let targets = results["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 11, "targets 1-9 (target 9 in two parts) and the synchronous=NORMAL row");
    assert!(targets.iter().all(|target| target["met"].is_boolean()), "every target measured: {targets:?}");
    let targets_16 = results["targets_issue_16"].as_array().expect("issue 16 targets");
    let numbers: Vec<u64> = targets_16.iter().map(|target| target["number"].as_u64().expect("number")).collect();
    assert_eq!(numbers, (1..=7).collect::<Vec<u64>>(), "issue 16's targets 1-7, in order");
    assert!(targets_16.iter().all(|target| target["met"].is_boolean()), "every target measured: {targets_16:?}");
}
