//! The ledger scenarios, end to end over HTTP. Each runs on SQLite here and on
//! PostgreSQL in `postgres.rs`, through the same functions.

use serde_json::json;

use crate::helpers::{spawn_app, TestApp};

pub async fn partial_then_final_capture(app: &TestApp) {
    app.fund("alice", "20").await;
    let hold_id = app.hold_id("alice", "15").await;
    let reply = app.capture(&hold_id, json!({ "amount": "10", "final": false })).await;
    let hold = reply.assert_status(200);
    assert_eq!((hold["state"].as_str(), hold["remaining"].as_str()), (Some("pending"), Some("5")));
    assert_eq!(app.figures("alice").await, ("10".into(), "5".into(), "5".into()));

    let reply = app.capture(&hold_id, json!({ "amount": "3" })).await;
    let hold = reply.assert_status(200);
    assert_eq!((hold["state"].as_str(), hold["captured"].as_str()), (Some("captured"), Some("13")));
    assert_eq!(app.figures("alice").await, ("7".into(), "0".into(), "7".into()));
    app.assert_verified().await;
}

pub async fn concurrent_holds_never_overdraw(app: &TestApp) {
    app.fund("alice", "10").await;
    let (first, second) = tokio::join!(app.hold("alice", "7"), app.hold("alice", "7"));
    let mut statuses = [first.status, second.status];
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 402], "{first:#?} {second:#?}");
    let refused = if first.status == 402 { &first } else { &second };
    refused.assert_problem(402, "insufficient_credits");
    assert_eq!((refused.str("required"), refused.str("available")), ("7", "3"));
    assert_eq!(app.figures("alice").await, ("10".into(), "7".into(), "3".into()));
    app.assert_verified().await;
}

pub async fn an_expired_hold_counts_zero(app: &TestApp) {
    app.fund("alice", "10").await;
    let reply = app.post("/v1/holds", json!({ "account_id": "alice", "amount": "10", "ttl_seconds": 60 })).await;
    let hold_id = reply.str("hold_id").to_owned();
    app.hold("alice", "1").await.assert_problem(402, "insufficient_credits");
    app.clock.advance_seconds(60);
    assert_eq!(app.get_hold(&hold_id).await.str("state"), "expired");
    assert_eq!(app.figures("alice").await, ("10".into(), "0".into(), "10".into()));
    app.hold("alice", "10").await.assert_status(201);
    assert_eq!(app.figures("alice").await, ("10".into(), "10".into(), "0".into()));
    app.assert_verified().await;
}

pub async fn a_refund_by_reference_applies_once(app: &TestApp) {
    app.fund("alice", "10").await;
    app.debit("alice", json!({ "amount": "4" })).await.assert_status(201);
    let first = app.refund("alice", json!({ "amount": "2", "reference": "refund-1" })).await;
    let grant = first.assert_status(201).clone();
    let second = app.refund("alice", json!({ "amount": "2", "reference": "refund-1" })).await;
    assert_eq!(second.assert_status(200)["grant_id"], grant["grant_id"]);
    assert_eq!(app.figures("alice").await.0, "8");
    app.assert_verified().await;
}

#[tokio::test]
async fn balance_20_hold_15_capture_10_then_3() {
    partial_then_final_capture(&spawn_app().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_holds_of_7_on_10() {
    concurrent_holds_never_overdraw(&spawn_app().await).await;
}

#[tokio::test]
async fn expired_hold_then_full_balance_hold() {
    an_expired_hold_counts_zero(&spawn_app().await).await;
}

#[tokio::test]
async fn refund_by_reference_201_then_200() {
    a_refund_by_reference_applies_once(&spawn_app().await).await;
}

#[tokio::test]
async fn grants_expire_exactly_at_expires_at() {
    let app = spawn_app().await;
    app.fund("alice", "1").await;
    app.grant("alice", json!({ "amount": "5", "expires_at": "2027-01-15T08:01:00Z" })).await.assert_status(201);
    assert_eq!(app.figures("alice").await.0, "6");
    app.clock.advance_seconds(59);
    assert_eq!(app.figures("alice").await.0, "6");
    app.clock.advance_seconds(1);
    assert_eq!(app.figures("alice").await.0, "1");
    app.assert_verified().await;
}
