//! Bearer tokens and roles: 401 without a valid token, 403 for a service token on admin routes.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with, Body, ADMIN_TOKEN, SERVICE_TOKEN};

#[tokio::test]
async fn missing_or_unknown_tokens_are_401() {
    let app = spawn_app().await;
    let reply = app.request(Method::GET, "/v1/accounts/alice", None, None, Body::None).await;
    reply.assert_problem(401, "unauthorized");
    let reply = app.request(Method::GET, "/v1/accounts/alice", Some("nope"), None, Body::None).await;
    reply.assert_problem(401, "unauthorized");
    let raw = app
        .client
        .get(format!("{}/v1/accounts/alice", app.address))
        .header("Authorization", format!("Basic {ADMIN_TOKEN}"))
        .send()
        .await
        .expect("sent");
    assert_eq!(raw.status().as_u16(), 401);
    assert_eq!(raw.headers().get("www-authenticate").and_then(|v| v.to_str().ok()), Some("Bearer"));
    // Auth is checked before the body: a bad body without a token is still 401.
    let reply =
        app.request(Method::POST, "/v1/holds", None, None, Body::Raw(Some("application/json"), b"{".to_vec())).await;
    reply.assert_problem(401, "unauthorized");
}

#[tokio::test]
async fn service_tokens_cannot_add_credits() {
    let app = spawn_app().await;
    app.fund("alice", "10").await;
    let grant = json!({ "amount": "5" });
    let reply =
        app.request(Method::POST, "/v1/accounts/alice/grants", Some(SERVICE_TOKEN), None, Body::Json(grant)).await;
    reply.assert_problem(403, "forbidden");
    let refund = json!({ "amount": "1", "reference": "r" });
    let reply =
        app.request(Method::POST, "/v1/accounts/alice/refunds", Some(SERVICE_TOKEN), None, Body::Json(refund)).await;
    reply.assert_problem(403, "forbidden");

    // Everything else is open to the service role.
    let reply = app.request(Method::GET, "/v1/accounts/alice", Some(SERVICE_TOKEN), None, Body::None).await;
    reply.assert_status(200);
    let hold = json!({ "account_id": "alice", "amount": "2" });
    let reply = app.request(Method::POST, "/v1/holds", Some(SERVICE_TOKEN), None, Body::Json(hold)).await;
    reply.assert_status(201);
    let debit = json!({ "amount": "1" });
    let reply =
        app.request(Method::POST, "/v1/accounts/alice/debits", Some(SERVICE_TOKEN), None, Body::Json(debit)).await;
    reply.assert_status(201);
}

#[tokio::test]
async fn no_tokens_on_loopback_turns_auth_off() {
    let app = spawn_app_with(|settings| settings.api.tokens.clear()).await;
    let grant = json!({ "amount": "5" });
    let reply = app.request(Method::POST, "/v1/accounts/alice/grants", None, None, Body::Json(grant)).await;
    reply.assert_status(201);
}
