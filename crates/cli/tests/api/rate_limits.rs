//! Rate limits over real sockets: a token or an account past its budget gets `429 rate_limited`
//! with `Retry-After`, the refused request applied nothing (a retry under its key applies once),
//! and the routes that settle or cancel are never limited. The app's clock is manual and the
//! limiter reads it, so nothing refills unless a test moves the clock: no test sleeps.

use reqwest::Method;
use serde_json::{json, Value};
use server::RateQuota;

use crate::helpers::{spawn_app, spawn_app_with, Body, TestApp, ADMIN_TOKEN, SERVICE_TOKEN};

fn quota(text: &str) -> Option<RateQuota> {
    Some(text.parse().expect("valid quota"))
}

/// A `POST /v1/holds` with a token and an optional key: (status, Retry-After, body).
async fn hold_as(app: &TestApp, token: Option<&str>, key: Option<&str>, account: &str) -> (u16, Option<String>, Value) {
    let mut request = app.client.post(format!("{}/v1/holds", app.address));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.json(&json!({ "account_id": account, "amount": "1" })).send().await.expect("request sent");
    let status = response.status().as_u16();
    let retry_after =
        response.headers().get("retry-after").map(|value| value.to_str().expect("ASCII header").to_owned());
    let body = response.json().await.unwrap_or(Value::Null);
    (status, retry_after, body)
}

#[track_caller]
fn assert_rate_limited(reply: &(u16, Option<String>, Value), limit: &str, retry_after_seconds: u64) {
    let (status, retry_after, body) = reply;
    assert_eq!((*status, body["code"].as_str()), (429, Some("rate_limited")), "{body:#?}");
    assert_eq!(retry_after.as_deref(), Some(retry_after_seconds.to_string().as_str()), "{body:#?}");
    assert_eq!(body["retry_after_seconds"], json!(retry_after_seconds));
    assert_eq!((body["status"].as_u64(), body["limit"].as_str()), (Some(429), Some(limit)));
}

#[tokio::test]
async fn a_token_past_its_limit_is_refused_without_applying_anything() {
    // 2 a minute: one request back every 30 s, and the clock moves only when told.
    let app = spawn_app_with(|settings| settings.api.rate_limits.per_token = quota("2/min:2")).await;
    app.fund("alice", "10").await;
    let first = hold_as(&app, Some(SERVICE_TOKEN), None, "alice").await;
    let second = hold_as(&app, Some(SERVICE_TOKEN), None, "alice").await;
    assert_eq!((first.0, second.0), (201, 201));
    let refused = hold_as(&app, Some(SERVICE_TOKEN), Some("third"), "alice").await;
    assert_rate_limited(&refused, "token", 30);
    assert_eq!(app.figures("alice").await, ("10".into(), "2".into(), "8".into()), "the refused hold held nothing");

    // Settling is never limited, however spent the token is; reads are not limited either.
    let release = format!("/v1/holds/{}/release", first.2["hold_id"].as_str().expect("hold id"));
    app.request(Method::POST, &release, Some(SERVICE_TOKEN), None, Body::None).await.assert_status(200);
    let capture = format!("/v1/holds/{}/capture", second.2["hold_id"].as_str().expect("hold id"));
    let body = Body::Json(json!({ "amount": "1" }));
    app.request(Method::POST, &capture, Some(SERVICE_TOKEN), None, body).await.assert_status(200);
    let cancel = app.request(Method::POST, "/v1/runs/run-nope/cancel", Some(SERVICE_TOKEN), None, Body::None).await;
    assert_eq!(cancel.body["code"], "run_not_found", "cancels are not limited: {cancel:#?}");
    let estimate = json!({ "steps": ["solve"], "model": "flash", "explanation_mode": "brief" });
    let estimate = app.request(Method::POST, "/v1/estimate", Some(SERVICE_TOKEN), None, Body::Json(estimate)).await;
    estimate.assert_status(200);
    // Another token has a budget of its own (the admin token spent one on the grant).
    assert_eq!(hold_as(&app, Some(ADMIN_TOKEN), None, "alice").await.0, 201);
    assert_rate_limited(&hold_as(&app, Some(ADMIN_TOKEN), None, "alice").await, "token", 30);
    assert_rate_limited(&hold_as(&app, Some(SERVICE_TOKEN), Some("third"), "alice").await, "token", 30);

    // A minute later the retry under the same key applies, and its replay applies nothing more.
    app.clock.advance_seconds(60);
    let retried = hold_as(&app, Some(SERVICE_TOKEN), Some("third"), "alice").await;
    let replayed = hold_as(&app, Some(SERVICE_TOKEN), Some("third"), "alice").await;
    assert_eq!((retried.0, replayed.0), (201, 201), "{retried:#?} {replayed:#?}");
    assert_eq!(retried.2["hold_id"], replayed.2["hold_id"]);
    assert_eq!(app.figures("alice").await, ("9".into(), "2".into(), "7".into()), "one capture, two pending holds");
    app.assert_verified().await;
}

#[tokio::test]
async fn an_account_past_its_limit_is_refused_and_other_accounts_are_not() {
    let app = spawn_app_with(|settings| settings.api.rate_limits.per_account = quota("2/h:2")).await;
    app.fund("alice", "10").await;
    app.fund("bob", "10").await;
    let hold_id = app.hold_id("alice", "1").await;
    // Alice spent her two (a grant, a hold) on any route and with any token.
    assert_rate_limited(&hold_as(&app, Some(SERVICE_TOKEN), None, "alice").await, "account", 1800);
    let debit = app.debit("alice", json!({ "amount": "1" })).await;
    debit.assert_problem(429, "rate_limited");
    app.refund("alice", json!({ "amount": "1", "reference": "r1" })).await.assert_problem(429, "rate_limited");
    let solve = app.post("/v1/solve", json!({ "account_id": "alice", "problem": "1+1" })).await;
    solve.assert_problem(429, "rate_limited");
    // Bob is untouched; a solve for a fresh account passes the limiter (and finds no provider).
    assert_eq!(hold_as(&app, Some(SERVICE_TOKEN), None, "bob").await.0, 201);
    app.post("/v1/solve", json!({ "account_id": "carol", "problem": "1+1" }))
        .await
        .assert_problem(503, "solve_unavailable");
    // Alice can still give her hold back and extend another.
    app.extend(&hold_id, 60).await.assert_status(200);
    app.release(&hold_id).await.assert_status(200);
    assert_eq!(app.figures("alice").await, ("10".into(), "0".into(), "10".into()), "nothing refused was applied");
    app.assert_verified().await;
}

#[tokio::test]
async fn a_burst_past_the_limit_applies_exactly_the_admitted_requests() {
    let app = spawn_app_with(|settings| settings.api.rate_limits.per_token = quota("5/h:5")).await;
    app.fund("alice", "100").await;
    let requests = (0..20).map(|_| hold_as(&app, Some(SERVICE_TOKEN), None, "alice"));
    let replies = futures::future::join_all(requests).await;
    let admitted = replies.iter().filter(|reply| reply.0 == 201).count();
    for reply in replies.iter().filter(|reply| reply.0 != 201) {
        assert_rate_limited(reply, "token", 720);
    }
    assert_eq!(admitted, 5, "{replies:#?}");
    assert_eq!(app.figures("alice").await, ("100".into(), "5".into(), "95".into()));
    app.assert_verified().await;
}

#[tokio::test]
async fn without_authentication_every_caller_shares_one_budget() {
    let app = spawn_app_with(|settings| {
        settings.api.tokens.clear();
        settings.api.rate_limits.per_token = quota("1/s:2");
    })
    .await;
    app.fund("alice", "10").await;
    assert_eq!(hold_as(&app, None, None, "alice").await.0, 201);
    assert_rate_limited(&hold_as(&app, None, None, "alice").await, "token", 1);
}

#[tokio::test]
async fn without_limits_a_burst_is_not_refused() {
    let app = spawn_app().await;
    app.fund("alice", "100").await;
    let requests = (0..40).map(|_| hold_as(&app, Some(SERVICE_TOKEN), None, "alice"));
    let statuses: Vec<u16> = futures::future::join_all(requests).await.into_iter().map(|reply| reply.0).collect();
    assert_eq!(statuses, vec![201; 40]);
    assert_eq!(app.figures("alice").await, ("100".into(), "40".into(), "60".into()));
}
