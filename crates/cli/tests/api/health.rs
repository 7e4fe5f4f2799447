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
    // Every route the server serves is documented, with its method; and nothing else is.
    let table = server::route_table();
    for (method, path) in &table {
        let operation = paths.get(*path).map(|item| &item[method.as_str().to_lowercase()]);
        assert!(operation.is_some_and(serde_json::Value::is_object), "OpenAPI lacks {method} {path}");
    }
    let operations: usize = paths.values().map(|item| item.as_object().map_or(0, serde_json::Map::len)).sum();
    assert_eq!(operations, table.len(), "the document lists operations the server does not serve");
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
