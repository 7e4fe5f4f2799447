//! Bad input of every kind is a 422 (or 413) problem, never a 500 or a dropped connection.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{spawn_app, Body, ADMIN_TOKEN};

#[tokio::test]
async fn bad_amounts_are_invalid_amount() {
    let app = spawn_app().await;
    app.fund("alice", "10").await;
    let bad = [
        json!("-1"),
        json!(-1),
        json!("NaN"),
        json!("1e3"),
        json!("0.0000001"),
        json!("1000000000000.000001"),
        json!("1000000000001"),
        json!(""),
        json!(" 1"),
        json!("0"),
        json!(null),
        json!(true),
        json!({ "value": 1 }),
        json!(["1"]),
    ];
    for amount in bad {
        let reply = app.grant("alice", json!({ "amount": amount })).await;
        assert_eq!((reply.status, reply.body["code"].as_str()), (422, Some("invalid_amount")), "{amount}: {reply:#?}");
    }
    // Number literals that are not plain decimals, sent as raw text (serde_json would not write them).
    for literal in ["1e3", "1E3", "-1", "1.0000001", "10000000000000", "1.5e0"] {
        let body = format!(r#"{{"amount": {literal}}}"#).into_bytes();
        let reply = app
            .request(
                Method::POST,
                "/v1/accounts/alice/debits",
                Some(ADMIN_TOKEN),
                None,
                Body::Raw(Some("application/json"), body),
            )
            .await;
        reply.assert_problem(422, "invalid_amount");
    }
    // NaN is not JSON at all.
    let body = br#"{"amount": NaN}"#.to_vec();
    let reply = app
        .request(
            Method::POST,
            "/v1/accounts/alice/debits",
            Some(ADMIN_TOKEN),
            None,
            Body::Raw(Some("application/json"), body),
        )
        .await;
    reply.assert_problem(422, "invalid_request");
    // A balance may not pass 10^12 credits.
    let reply = app.grant("alice", json!({ "amount": "1000000000000" })).await;
    reply.assert_problem(422, "invalid_amount");
    assert_eq!(app.figures("alice").await.0, "10");
}

#[tokio::test]
async fn malformed_bodies_are_invalid_request() {
    let app = spawn_app().await;
    app.fund("alice", "10").await;
    let cases: Vec<(&str, Option<&'static str>, &[u8])> = vec![
        ("truncated JSON", Some("application/json"), br#"{"amount": "1""#),
        ("not JSON", Some("application/json"), b"amount=1"),
        ("an array", Some("application/json"), br#"["1"]"#),
        ("a string", Some("application/json"), br#""1""#),
        ("unknown field", Some("application/json"), br#"{"amount": "1", "amount_usd": 3}"#),
        ("duplicate field", Some("application/json"), br#"{"amount": "1", "amount": "2"}"#),
        ("missing amount", Some("application/json"), br#"{"reference": "x"}"#),
        ("wrong content type", Some("text/plain"), br#"{"amount": "1"}"#),
        ("no content type", None, br#"{"amount": "1"}"#),
        ("not UTF-8", Some("application/json"), b"{\"amount\": \"\xff\"}"),
        ("reference with a newline", Some("application/json"), br#"{"amount": "1", "reference": "a\nb"}"#),
        ("reference a number", Some("application/json"), br#"{"amount": "1", "reference": 7}"#),
    ];
    for (name, content_type, body) in cases {
        let reply = app
            .request(
                Method::POST,
                "/v1/accounts/alice/debits",
                Some(ADMIN_TOKEN),
                None,
                Body::Raw(content_type, body.to_vec()),
            )
            .await;
        assert_eq!((reply.status, reply.body["code"].as_str()), (422, Some("invalid_request")), "{name}: {reply:#?}");
        assert_eq!(reply.content_type, "application/problem+json", "{name}");
    }
    // `application/problem+json`-style suffixes and charset parameters are JSON too.
    let reply = app
        .request(
            Method::POST,
            "/v1/accounts/alice/debits",
            Some(ADMIN_TOKEN),
            None,
            Body::Raw(Some("application/json; charset=utf-8"), br#"{"amount": "1"}"#.to_vec()),
        )
        .await;
    reply.assert_status(201);
}

#[tokio::test]
async fn bad_ids_are_invalid_request() {
    let app = spawn_app().await;
    app.fund("alice", "10").await;
    app.grant("a:b", json!({ "amount": "1" })).await.assert_problem(422, "invalid_request");
    app.account("a:b").await.assert_problem(422, "invalid_request");
    app.account("%C3%BC").await.assert_problem(422, "invalid_request");
    app.account(&"a".repeat(129)).await.assert_problem(422, "invalid_request");
    app.entries("a:b", "").await.assert_problem(422, "invalid_request");
    app.hold("a:b", "1").await.assert_problem(422, "invalid_request");
    app.hold("", "1").await.assert_problem(422, "invalid_request");
    app.get_hold("h:1").await.assert_problem(422, "invalid_request");
    app.capture("h:1", json!({ "amount": "1" })).await.assert_problem(422, "invalid_request");
    app.refund("alice", json!({ "amount": "1", "reference": "r", "hold_id": "h:1" }))
        .await
        .assert_problem(422, "invalid_request");
    app.refund("alice", json!({ "amount": "1", "reference": "" })).await.assert_problem(422, "invalid_request");
}

#[tokio::test]
async fn bad_ttls_times_metadata_and_queries_are_invalid_request() {
    let app = spawn_app().await;
    app.fund("alice", "10").await;
    for ttl in [json!(0), json!(86_401), json!(-5), json!(1.5), json!("60"), json!(u64::MAX)] {
        let reply = app.post("/v1/holds", json!({ "account_id": "alice", "amount": "1", "ttl_seconds": ttl })).await;
        assert_eq!((reply.status, reply.body["code"].as_str()), (422, Some("invalid_request")), "{ttl}: {reply:#?}");
    }
    let hold_id = app.hold_id("alice", "1").await;
    app.extend(&hold_id, 0).await.assert_problem(422, "invalid_request");
    app.extend(&hold_id, 86_401).await.assert_problem(422, "invalid_request");
    app.post(&format!("/v1/holds/{hold_id}/extend"), json!({})).await.assert_problem(422, "invalid_request");
    app.capture(&hold_id, json!({ "amount": "1", "overage": "sometimes" }))
        .await
        .assert_problem(422, "invalid_request");
    app.post(&format!("/v1/holds/{hold_id}/release"), json!({ "why": "x" }))
        .await
        .assert_problem(422, "invalid_request");

    for expires_at in [json!("tomorrow"), json!("2030-01-01"), json!(1_900_000_000), json!("2020-01-01T00:00:00Z")] {
        let reply = app.grant("alice", json!({ "amount": "1", "expires_at": expires_at })).await;
        assert_eq!((reply.status, reply.body["code"].as_str()), (422, Some("invalid_request")), "{expires_at}");
    }
    app.grant("alice", json!({ "amount": "1", "priority": 1.5 })).await.assert_problem(422, "invalid_request");
    app.grant("alice", json!({ "amount": "1", "priority": 3_000_000_000_u64 }))
        .await
        .assert_problem(422, "invalid_request");

    for metadata in [json!([1]), json!("text"), json!({ "blob": "x".repeat(5000) })] {
        let reply = app.grant("alice", json!({ "amount": "1", "metadata": metadata })).await;
        reply.assert_problem(422, "invalid_request");
    }
    for query in ["?limit=0", "?limit=1001", "?limit=x", "?after=x", "?after=-1", "?page=2"] {
        let reply = app.entries("alice", query).await;
        assert_eq!((reply.status, reply.body["code"].as_str()), (422, Some("invalid_request")), "{query}");
    }
    assert_eq!(app.figures("alice").await, ("10".into(), "1".into(), "9".into()));
}

#[tokio::test]
async fn a_huge_body_is_413_and_bad_keys_are_422() {
    let app = spawn_app().await;
    app.fund("alice", "10").await;
    let huge = format!(r#"{{"amount": "1", "reference": "{}"}}"#, "x".repeat(100 * 1024)).into_bytes();
    let reply = app
        .request(
            Method::POST,
            "/v1/accounts/alice/debits",
            Some(ADMIN_TOKEN),
            None,
            Body::Raw(Some("application/json"), huge),
        )
        .await;
    reply.assert_problem(413, "payload_too_large");

    for key in ["x".repeat(256), "has space".to_owned(), String::new()] {
        let reply = app
            .request(
                Method::POST,
                "/v1/accounts/alice/debits",
                Some(ADMIN_TOKEN),
                Some(&key),
                Body::Json(json!({ "amount": "1" })),
            )
            .await;
        assert_eq!((reply.status, reply.body["code"].as_str()), (422, Some("invalid_request")), "{key:?}");
    }
    let reply = app.post_with_key("/v1/accounts/alice/debits", &"k".repeat(255), json!({ "amount": "1" })).await;
    reply.assert_status(201);
    assert_eq!(app.figures("alice").await.0, "9");
}
