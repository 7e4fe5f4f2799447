//! A few end-to-end runs on PostgreSQL (the test cluster `scripts/test.sh` starts; without it
//! these fail, by design, rather than skip).

use crate::helpers::spawn_app_postgres;
use crate::{idempotency, scenarios};

#[tokio::test]
async fn postgres_partial_then_final_capture() {
    scenarios::partial_then_final_capture(&spawn_app_postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_holds_never_overdraw() {
    scenarios::concurrent_holds_never_overdraw(&spawn_app_postgres().await).await;
}

#[tokio::test]
async fn postgres_expired_hold_counts_zero() {
    scenarios::an_expired_hold_counts_zero(&spawn_app_postgres().await).await;
}

#[tokio::test]
async fn postgres_refund_by_reference_applies_once() {
    scenarios::a_refund_by_reference_applies_once(&spawn_app_postgres().await).await;
}

#[tokio::test]
async fn postgres_replays_are_identical() {
    idempotency::replays_are_identical(&spawn_app_postgres().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_requests_with_one_key_apply_once() {
    idempotency::concurrent_requests_with_one_key_apply_once(&spawn_app_postgres().await).await;
}
