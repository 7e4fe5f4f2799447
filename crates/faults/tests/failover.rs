//! The database failover test, in CI: a PostgreSQL primary and its synchronous standby on
//! loopback, `creditgraph serve` on both through a multi-host URL, holds and captures with
//! Idempotency-Keys, `kill -9` of the primary mid-load, promotion of the standby. Nothing
//! acknowledged may be lost, retried operations must apply exactly once, `/readyz` must say 503
//! during the outage and 200 after, and `creditgraph verify` must be clean (see
//! `faults::failover`). PostgreSQL's binaries come from `CREDITGRAPH_TEST_PG_BIN`, which
//! `scripts/test.sh` exports; without it the test fails, never skips.

mod common;

use common::server_binary;
use faults::cluster::Cluster;
use faults::failover::{self, FailoverSettings};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_the_synchronous_standby_loses_no_acknowledged_operation() {
    let pg_bin = Cluster::pg_bin_from_env().expect("PostgreSQL's binaries");
    let settings = FailoverSettings::new(server_binary(), pg_bin);
    let report = failover::run(&settings).await.expect("the scenario runs");
    println!("{report}");
    assert_eq!(report.violations, Vec::<String>::new(), "{report}");
    assert_eq!(report.lost, 0, "{report}");
    assert_eq!(report.acknowledged, report.operations, "every operation ends acknowledged: {report}");
    assert!(report.acknowledged_before_kill > 0, "the kill came mid-load: {report}");
    assert!(report.acknowledged_before_kill < report.operations, "the kill came mid-load: {report}");
    assert!(report.unavailable_attempts > 0, "clients saw the outage and retried: {report}");
    assert!(report.readyz_samples.get(&503).copied().unwrap_or(0) >= 3, "/readyz said 503 in the outage: {report}");
    assert!(!report.readyz_samples.contains_key(&200), "/readyz never said 200 before the promotion: {report}");
}
