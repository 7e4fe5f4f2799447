//! Idempotency keys: replays render exactly like the first response, conflicts are 409, and
//! concurrent requests with one key apply once.

use serde_json::json;

use crate::helpers::{spawn_app, TestApp};

pub async fn replays_are_identical(app: &TestApp) {
    app.fund("alice", "10").await;
    let body = json!({ "account_id": "alice", "amount": "4" });
    let first = app.post_with_key("/v1/holds", "hold-key-1", body.clone()).await;
    first.assert_status(201);
    let second = app.post_with_key("/v1/holds", "hold-key-1", body).await;
    assert_eq!((second.status, &second.text), (first.status, &first.text));
    // The same amount written another way is the same request.
    let third = app.post_with_key("/v1/holds", "hold-key-1", json!({ "account_id": "alice", "amount": 4.0 })).await;
    assert_eq!((third.status, &third.text), (first.status, &first.text));
    assert_eq!(app.figures("alice").await, ("10".into(), "4".into(), "6".into()));

    let different = app.post_with_key("/v1/holds", "hold-key-1", json!({ "account_id": "alice", "amount": "5" })).await;
    different.assert_problem(409, "idempotency_conflict");
    let elsewhere = app.post_with_key("/v1/accounts/alice/debits", "hold-key-1", json!({ "amount": "4" })).await;
    elsewhere.assert_problem(409, "idempotency_conflict");
    app.assert_verified().await;
}

pub async fn concurrent_requests_with_one_key_apply_once(app: &TestApp) {
    app.fund("alice", "100").await;
    let requests =
        (0..16).map(|_| app.post_with_key("/v1/accounts/alice/debits", "debit-key", json!({ "amount": "1" })));
    let replies = futures::future::join_all(requests).await;
    for reply in &replies {
        assert_eq!((reply.status, &reply.text), (replies[0].status, &replies[0].text));
    }
    assert_eq!(replies[0].status, 201, "{:#?}", replies[0]);
    assert_eq!(app.figures("alice").await.0, "99");
    let entries = app.entries("alice", "").await;
    let debits = entries.body["entries"].as_array().expect("entries").iter().filter(|e| e["kind"] == "debit").count();
    assert_eq!(debits, 1);
    assert_eq!(entries.body["entries"][1]["idempotency_key"], "debit-key");
    app.assert_verified().await;
}

#[tokio::test]
async fn a_replay_returns_the_first_response() {
    replays_are_identical(&spawn_app().await).await;
}

#[tokio::test]
async fn a_402_replays_as_402() {
    let app = spawn_app().await;
    app.fund("alice", "5").await;
    let body = json!({ "account_id": "alice", "amount": "8" });
    let first = app.post_with_key("/v1/holds", "k402", body.clone()).await;
    first.assert_problem(402, "insufficient_credits");
    app.fund("alice", "5").await;
    let second = app.post_with_key("/v1/holds", "k402", body).await;
    // The same problem; only `request_id` is the retry's own (it names this request's log line).
    let without_id = |body: &serde_json::Value| {
        let mut body = body.clone();
        body.as_object_mut().expect("a problem object").remove("request_id");
        body
    };
    assert_eq!((second.status, without_id(&second.body)), (402, without_id(&first.body)));
    assert_ne!(second.body["request_id"], first.body["request_id"]);
    assert_eq!(app.figures("alice").await, ("10".into(), "0".into(), "10".into()));
}

#[tokio::test]
async fn every_post_replays_identically() {
    let app = spawn_app().await;
    let grant = json!({ "amount": "10", "metadata": { "b": 1, "a": [true] } });
    let first = app.post_with_key("/v1/accounts/alice/grants", "g", grant.clone()).await;
    first.assert_status(201);
    let replay = app.post_with_key("/v1/accounts/alice/grants", "g", grant).await;
    assert_eq!((replay.status, &replay.text), (201, &first.text));
    let hold_id = app.hold_id("alice", "5").await;
    let posts = [
        (format!("/v1/holds/{hold_id}/extend"), json!({ "ttl_seconds": 30 })),
        (format!("/v1/holds/{hold_id}/capture"), json!({ "amount": "1", "final": false })),
        (format!("/v1/holds/{hold_id}/release"), json!({})),
        ("/v1/accounts/alice/debits".to_owned(), json!({ "amount": "1" })),
        ("/v1/accounts/alice/refunds".to_owned(), json!({ "amount": "1", "reference": "r" })),
    ];
    for (index, (path, body)) in posts.into_iter().enumerate() {
        let key = format!("key-{index}");
        let first = app.post_with_key(&path, &key, body.clone()).await;
        assert!(first.status < 300, "{path}: {first:#?}");
        app.clock.advance_seconds(1);
        let replay = app.post_with_key(&path, &key, body).await;
        assert_eq!((replay.status, &replay.text), (first.status, &first.text), "{path}");
    }
    // grant 10, capture 1, debit 1, refund 1
    assert_eq!(app.figures("alice").await, ("9".into(), "0".into(), "9".into()));
    app.assert_verified().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_requests_with_one_key_apply_once() {
    concurrent_requests_with_one_key_apply_once(&spawn_app().await).await;
}
