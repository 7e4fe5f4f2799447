//! Health, readiness, the OpenAPI document, unknown routes and methods.

use reqwest::Method;

use crate::helpers::{spawn_app, Body};

#[tokio::test]
async fn health_readiness_and_openapi_need_no_token() {
    let app = spawn_app().await;
    for path in ["/healthz", "/readyz"] {
        let reply = app.request(Method::GET, path, None, None, Body::None).await;
        assert_eq!(reply.assert_status(200)["status"], "ok");
    }
    let reply = app.request(Method::GET, "/v1/openapi.json", None, None, Body::None).await;
    let document = reply.assert_status(200);
    assert!(document["openapi"].as_str().is_some_and(|version| version.starts_with("3.")));
    let paths = document["paths"].as_object().expect("paths");
    for path in [
        "/v1/accounts/{account_id}/grants",
        "/v1/accounts/{account_id}",
        "/v1/accounts/{account_id}/entries",
        "/v1/accounts/{account_id}/debits",
        "/v1/accounts/{account_id}/refunds",
        "/v1/holds",
        "/v1/holds/{hold_id}",
        "/v1/holds/{hold_id}/capture",
        "/v1/holds/{hold_id}/release",
        "/v1/holds/{hold_id}/extend",
    ] {
        assert!(paths.contains_key(path), "OpenAPI lacks {path}");
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems() {
    let app = spawn_app().await;
    app.get("/v1/nothing-here").await.assert_problem(404, "not_found");
    app.get("/").await.assert_problem(404, "not_found");
    let reply = app.request(Method::DELETE, "/v1/holds/h1", None, None, Body::None).await;
    reply.assert_problem(405, "method_not_allowed");
    app.request(Method::GET, "/v1/holds", None, None, Body::None).await.assert_problem(405, "method_not_allowed");
}

#[tokio::test]
async fn the_server_stops_gracefully() {
    let app = spawn_app().await;
    app.fund("alice", "5").await;
    app.stop().await;
}
