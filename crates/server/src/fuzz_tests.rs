//! Property-based fuzzing of request decoding: random bodies to every POST route, random path
//! segments and query strings to every GET route, all through the real [`router_with_engine`]
//! over a [`MemoryStore`] (with an engine and a job service, so no route is cut short by a
//! missing service). Why: the edge is where untrusted bytes meet the code; a 500, a panic (the
//! catch-panic layer turns it into a 500), a hang or a non-problem 4xx there is a bug, and a
//! ledger left inconsistent by any sequence of rejected or accepted requests is a worse one.
//!
//! The seed is fixed and the number of cases bounded, so CI sees the same inputs every run and
//! the whole module stays within a few seconds. A failing case is shrunk and printed by proptest.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use axum::Router;
use engine::run::{Engine, EngineConfig, NoExecutor, NoProvider};
use http_body_util::BodyExt;
use jobs::{JobService, JobsConfig};
use pricing::catalog::Catalog;
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
use serde_json::{json, Map, Value};
use store::memory::MemoryStore;
use store::{Clock, LedgerStore, ManualClock};
use tower::ServiceExt;

use crate::config::ApiConfig;
use crate::router::router_with_engine;

const WORKER_TOKEN: &str = "fuzz-worker-token";
/// One request may take this long; longer is a hang.
const REQUEST_SECONDS_MAX: u64 = 10;
/// A body this close to the limit exercises the largest accepted request.
const NEAR_LIMIT_BYTES: usize = 60 * 1024;

fn runner(cases: u32, seed: u64) -> TestRunner {
    TestRunner::new(Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        // Shrinking replays requests against a store earlier cases changed; a few hundred
        // steps are enough to get a readable case.
        max_shrink_iters: 256,
        ..Config::default()
    })
}

/// The app under test and ids of records that exist, so fuzzed requests also reach handlers'
/// paths past "not found".
struct Fixture {
    app: Router,
    store: Arc<MemoryStore>,
    ids: Vec<String>,
}

async fn fixture() -> Fixture {
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::starting_now());
    let store = Arc::new(MemoryStore::new(Arc::clone(&clock), 86_400));
    let jobs = JobService::new(store.clone(), store.clone(), Arc::clone(&clock), JobsConfig::default());
    let engine = Engine::with_jobs(
        EngineConfig { ledger_backoff_ms: 1, ..EngineConfig::default() },
        store.clone(),
        store.clone(),
        Arc::new(NoProvider),
        Arc::new(NoExecutor),
        Arc::new(Catalog::builtin()),
        Arc::clone(&clock),
        Some(jobs),
    );
    let config = ApiConfig { worker_token: Some(WORKER_TOKEN.to_owned()), ..ApiConfig::default() };
    let app = router_with_engine(store.clone(), clock, config, Some(engine));
    let mut ids = vec!["alice".to_owned(), "bob".to_owned()];
    let grant = send(&app, post("/v1/accounts/alice/grants", &json!({"amount": "100"}))).await;
    assert_eq!(grant.0, StatusCode::CREATED, "{grant:?}");
    let hold = send(&app, post("/v1/holds", &json!({"account_id": "alice", "amount": "10"}))).await;
    assert_eq!(hold.0, StatusCode::CREATED, "{hold:?}");
    ids.push(hold.1["hold_id"].as_str().expect("hold id").to_owned());
    Fixture { app, store, ids }
}

fn post(path: &str, body: &Value) -> Request<Body> {
    Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("valid request")
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, Value) {
    let response = app.clone().oneshot(request).await.expect("infallible service");
    let status = response.status();
    let bytes = response.into_body().collect().await.expect("body").to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// Sends one request and checks what every answer must satisfy: no 5xx, no hang, and every
/// 4xx a complete problem+json whose `status` is the HTTP status.
async fn check(app: &Router, request: Request<Body>) -> Result<(StatusCode, Value), TestCaseError> {
    let what = format!("{} {}", request.method(), request.uri());
    let limit = Duration::from_secs(REQUEST_SECONDS_MAX);
    let response = tokio::time::timeout(limit, app.clone().oneshot(request))
        .await
        .map_err(|_| TestCaseError::fail(format!("{what}: no answer within {REQUEST_SECONDS_MAX} s")))?
        .expect("infallible service");
    let status = response.status();
    let content_type =
        response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    if status.is_success() && content_type.starts_with("text/event-stream") {
        // A live stream never ends on its own; its head is all there is to check.
        return Ok((status, Value::Null));
    }
    let bytes = tokio::time::timeout(limit, response.into_body().collect())
        .await
        .map_err(|_| TestCaseError::fail(format!("{what}: the body did not end within {REQUEST_SECONDS_MAX} s")))?
        .map_err(|error| TestCaseError::fail(format!("{what}: the body broke off: {error}")))?
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(2000)]).into_owned();
    prop_assert!(!status.is_server_error(), "{what}: {status} {text}");
    let openai_compatible = ["/v1/chat/completions", "/v1/models"].iter().any(|path| what.contains(path));
    if status.is_client_error() && openai_compatible {
        // The OpenAI-compatible routes answer errors in OpenAI's shape, as its SDKs expect.
        let error: Value = serde_json::from_slice(&bytes)
            .map_err(|error| TestCaseError::fail(format!("{what}: error is not JSON ({error}): {text}")))?;
        for member in ["message", "type", "code"] {
            prop_assert!(error["error"][member].is_string(), "{}: no string `error.{}` in {}", what, member, text);
        }
        return Ok((status, error));
    }
    if status.is_client_error() {
        prop_assert_eq!(&content_type, crate::PROBLEM_CONTENT_TYPE, "{}: {} {}", what, status, text);
        let problem: Value = serde_json::from_slice(&bytes)
            .map_err(|error| TestCaseError::fail(format!("{what}: problem is not JSON ({error}): {text}")))?;
        for member in ["type", "title", "detail", "code"] {
            prop_assert!(problem[member].is_string(), "{}: no string `{}` in {}", what, member, text);
        }
        prop_assert!(!problem["title"].as_str().unwrap_or("").is_empty(), "{what}: empty title: {text}");
        prop_assert_eq!(problem["status"].as_u64(), Some(u64::from(status.as_u16())), "{}: {}", what, text);
        return Ok((status, problem));
    }
    Ok((status, Value::Null))
}

/// Every byte outside the unreserved set as `%XX`, so any text becomes a valid path segment.
fn percent_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for &byte in bytes {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A path segment, already encoded: existing ids, valid-looking ids, ids one past the length
/// limit, huge ones, arbitrary bytes (invalid UTF-8 included) and `.`/`..`.
fn segment(ids: Vec<String>) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(ids),
        2 => "[A-Za-z0-9._-]{1,24}",
        1 => Just("a".repeat(129)),
        1 => (200usize..20_000).prop_map(|length| "x".repeat(length)),
        2 => vec(any::<u8>(), 0..48).prop_map(|bytes| percent_encode(&bytes)),
        2 => "\\PC{1,24}".prop_map(|text| percent_encode(text.as_bytes())),
        1 => prop::sample::select(vec![".", "..", "%", "%zz", "%FF%FE", "%00", "+", "run-", "job-"])
            .prop_map(str::to_owned),
    ]
}

/// A query string without the `?`: known and unknown keys, odd values, repeated keys.
fn query(ids: Vec<String>) -> impl Strategy<Value = Option<String>> {
    let key = prop_oneof![
        prop::sample::select(vec!["account_id", "limit", "after", "state"]).prop_map(str::to_owned),
        "\\PC{0,8}".prop_map(|text| percent_encode(text.as_bytes())),
    ];
    let value = prop_oneof![
        segment(ids),
        any::<i64>().prop_map(|number| number.to_string()),
        any::<u64>().prop_map(|number| number.to_string()),
        Just("99999999999999999999999".to_owned()),
    ];
    prop_oneof![
        1 => Just(None),
        4 => vec((key, value), 0..4).prop_map(|pairs| {
            Some(pairs.iter().map(|(key, value)| format!("{key}={value}")).collect::<Vec<_>>().join("&"))
        }),
        1 => vec(any::<u8>(), 0..32).prop_map(|bytes| Some(percent_encode(&bytes))),
    ]
}

/// Field names every request type knows, so random objects often get past "unknown field".
const FIELDS: &[&str] = &[
    "amount",
    "account_id",
    "reference",
    "metadata",
    "expires_at",
    "priority",
    "ttl_seconds",
    "final",
    "overage",
    "hold_id",
    "steps",
    "model",
    "difficulty",
    "explanation_mode",
    "problem",
    "thread_id",
    "action",
    "retry_source_job_id",
    "worker_id",
    "stage",
    "progress",
    "outcome",
    "artifact_base64",
    "content_type",
    "transient",
    "error_code",
    "detail",
];

fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(FIELDS).prop_map(str::to_owned),
        1 => "\\PC{0,12}",
        1 => (1usize..4096).prop_map(|length| "k".repeat(length)),
    ]
}

fn text_value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "\\PC{0,16}",
        2 => "-?[0-9]{1,16}(\\.[0-9]{0,8})?",
        2 => prop::sample::select(vec![
            "alice", "17", "0", "0.000001", "1000000000000", "1000000000000.000001", "-1", "1e3", "NaN",
            "2030-01-31T12:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999999-23:59",
            "solve", "pdf", "video", "flash", "opus", "easy", "hard", "full", "brief", "video_retry",
            "if_available", "reject", "succeeded", "failed", "canceled", "rendering", "",
        ])
        .prop_map(str::to_owned),
        1 => (256usize..NEAR_LIMIT_BYTES).prop_map(|length| "s".repeat(length)),
        1 => "[\\u{0}-\\u{1f}\\u{7f}\\u{2028}]{1,4}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|number| serde_json::Number::from_f64(number).map_or(Value::Null, Value::Number)),
        text_value().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(field_name(), inner, 0..6).prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A POST route: its path (`{id}` is the fuzzed segment) and a body it accepts, which the
/// strategy mutates.
struct PostRoute {
    path: &'static str,
    template: fn() -> Value,
}

const POST_ROUTES: &[PostRoute] = &[
    PostRoute { path: "/v1/accounts/{id}/grants", template: || json!({"amount": "5", "reference": "g"}) },
    PostRoute { path: "/v1/accounts/{id}/debits", template: || json!({"amount": "1"}) },
    PostRoute { path: "/v1/accounts/{id}/refunds", template: || json!({"amount": "1", "reference": "r"}) },
    PostRoute { path: "/v1/grants/{id}/void", template: || json!({}) },
    PostRoute { path: "/v1/holds", template: || json!({"account_id": "alice", "amount": "1", "ttl_seconds": 60}) },
    PostRoute { path: "/v1/holds/{id}/capture", template: || json!({"amount": "1", "final": false}) },
    PostRoute { path: "/v1/holds/{id}/release", template: || json!({}) },
    PostRoute { path: "/v1/holds/{id}/extend", template: || json!({"ttl_seconds": 60}) },
    PostRoute {
        path: "/v1/estimate",
        template: || json!({"steps": ["solve", "pdf"], "model": "flash", "explanation_mode": "full"}),
    },
    PostRoute { path: "/v1/solve", template: || json!({"account_id": "alice", "problem": "2+2?"}) },
    PostRoute { path: "/v1/runs/{id}/cancel", template: || json!({}) },
    PostRoute { path: "/v1/jobs/{id}/cancel", template: || json!({}) },
    PostRoute { path: "/v1/worker/claim", template: || json!({"worker_id": "w1"}) },
    PostRoute { path: "/v1/test-clock/advance", template: || json!({"seconds": 60}) },
    PostRoute {
        path: "/v1/accounts/{id}/allowances",
        template: || json!({"amount": "2", "period": "day", "timezone": "Asia/Seoul", "rollover": "cap", "rollover_cap": "1"}),
    },
    PostRoute {
        path: "/v1/plans",
        template: || json!({"plan_id": "p1", "name": "P", "allowances": [{"amount": "1", "period": "month", "timezone": "UTC"}]}),
    },
    PostRoute { path: "/v1/accounts/{id}/plan", template: || json!({"plan_id": "p1"}) },
    PostRoute { path: "/v1/accounts/{id}/low-balance-threshold", template: || json!({"threshold": "5"}) },
    // An IP literal: the fuzzer never waits on DNS.
    PostRoute {
        path: "/v1/webhook-endpoints",
        template: || json!({"url": "https://93.184.215.14/hook", "events": ["hold.created"], "description": "d"}),
    },
    PostRoute {
        path: "/v1/accounts/{id}/keys",
        template: || json!({"name": "k", "daily_limit": "1", "models": ["gpt-4o-mini"]}),
    },
    PostRoute {
        path: "/v1/chat/completions",
        template: || json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}),
    },
    PostRoute { path: "/v1/webhook-endpoints/{id}/disable", template: || json!({}) },
    PostRoute { path: "/v1/webhook-endpoints/{id}/enable", template: || json!({}) },
    PostRoute { path: "/v1/webhook-endpoints/{id}/rotate-secret", template: || json!({}) },
    PostRoute { path: "/v1/webhook-endpoints/{id}/replay", template: || json!({"since": "2026-01-01T00:00:00Z"}) },
    PostRoute {
        path: "/v1/worker/jobs/{id}/heartbeat",
        template: || json!({"worker_id": "w1", "stage": "rendering", "progress": 50}),
    },
    PostRoute {
        path: "/v1/worker/jobs/{id}/finish",
        template: || json!({"worker_id": "w1", "outcome": "failed", "transient": true, "detail": "x"}),
    },
];

/// A body as bytes: a mutated template, a random object or value, raw bytes, deep nesting,
/// odd number literals, or a body near the size limit.
fn body(template: Value) -> impl Strategy<Value = Vec<u8>> {
    let object = template.as_object().cloned().unwrap_or_default();
    let mutated = vec((field_name(), prop::option::of(json_value())), 1..4).prop_map(move |changes| {
        let mut object = object.clone();
        for (field, value) in changes {
            match value {
                Some(value) => object.insert(field, value),
                None => object.remove(&field),
            };
        }
        Value::Object(object).to_string().into_bytes()
    });
    let number = "-?[0-9]{1,30}(\\.[0-9]{1,10})?([eE][+-]?[0-9]{1,4})?";
    prop_oneof![
        4 => mutated,
        2 => btree_map(field_name(), json_value(), 0..6)
            .prop_map(|map| Value::Object(map.into_iter().collect::<Map<_, _>>()).to_string().into_bytes()),
        1 => json_value().prop_map(|value| value.to_string().into_bytes()),
        1 => vec(any::<u8>(), 0..256),
        1 => (prop::sample::select(FIELDS), number)
            .prop_map(|(field, literal)| format!("{{\"account_id\":\"alice\",\"{field}\":{literal}}}").into_bytes()),
        1 => (1usize..5000, any::<bool>()).prop_map(|(depth, arrays)| {
            if arrays {
                format!("{{\"metadata\":{}{}}}", "[".repeat(depth), "]".repeat(depth)).into_bytes()
            } else {
                format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth)).into_bytes()
            }
        }),
        1 => (NEAR_LIMIT_BYTES..80 * 1024).prop_map(|length| {
            format!("{{\"account_id\":\"alice\",\"amount\":\"1\",\"problem\":\"{}\"}}", "p".repeat(length))
                .into_bytes()
        }),
    ]
}

fn content_type() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![
        6 => Just(Some("application/json")),
        1 => Just(Some("application/json; charset=utf-8")),
        1 => Just(Some("application/merge-patch+json")),
        1 => Just(Some("text/plain")),
        1 => Just(None),
    ]
}

fn fill(path: &str, segment: &str) -> String {
    path.replace("{id}", segment)
}

#[test]
fn random_bodies_to_every_post_route_never_answer_5xx_and_keep_the_ledger_consistent() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let fixture = runtime.block_on(fixture());
    let strategy = (0..POST_ROUTES.len())
        .prop_flat_map(|index| (Just(index), body((POST_ROUTES[index].template)())))
        .prop_flat_map(|(index, body)| {
            (Just(index), Just(body), segment(fixture.ids.clone()), query(fixture.ids.clone()))
        })
        .prop_flat_map(|parts| {
            (Just(parts), content_type(), prop::option::of("[!-~]{1,8}"), prop::sample::select(vec![true, true, false]))
        });
    let statuses = std::sync::Mutex::new(std::collections::BTreeMap::<u16, u32>::new());
    runner(4000, 0x00C0_FFEE)
        .run(&strategy, |((index, body, segment, query), content_type, key, worker_auth)| {
            let route = &POST_ROUTES[index];
            let mut uri = fill(route.path, &segment);
            if let Some(query) = query {
                uri = format!("{uri}?{query}");
            }
            let mut request = Request::post(uri.as_str());
            if let Some(content_type) = content_type {
                request = request.header(header::CONTENT_TYPE, content_type);
            }
            if let Some(key) = key {
                request = request.header("idempotency-key", key);
            }
            if worker_auth && route.path.starts_with("/v1/worker") {
                request = request.header(header::AUTHORIZATION, format!("Bearer {WORKER_TOKEN}"));
            }
            let Ok(request) = request.body(Body::from(body)) else {
                // A URI `http` refuses never reaches a server.
                return Ok(());
            };
            let (status, _) = runtime.block_on(check(&fixture.app, request))?;
            *statuses.lock().expect("statuses").entry(status.as_u16()).or_default() += 1;
            Ok(())
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
    // The fuzzer must get past decoding sometimes, or it tests only the first check.
    let statuses = statuses.into_inner().expect("statuses");
    let accepted: u32 = statuses.iter().filter(|(status, _)| **status < 300).map(|(_, count)| count).sum();
    assert!(accepted >= 20, "too few accepted requests: {statuses:?}");
    assert!(statuses.contains_key(&413) && statuses.contains_key(&422), "{statuses:?}");
    let report = runtime.block_on(fixture.store.verify()).expect("verify");
    assert!(report.violations.is_empty(), "{:?}", report.violations);
}

const GET_ROUTES: &[&str] = &[
    "/v1/accounts/{id}",
    "/v1/accounts/{id}/entries",
    "/v1/accounts/{id}/holds",
    "/v1/holds/{id}",
    "/v1/runs/{id}",
    "/v1/runs/{id}/events",
    "/v1/artifacts/{id}",
    "/v1/threads/{id}",
    "/v1/threads/{id}/jobs",
    "/v1/jobs/{id}",
    "/v1/test-clock",
    "/v1/accounts/{id}/allowances",
    "/v1/plans",
    "/v1/plans/{id}",
    "/v1/events",
    "/v1/webhook-endpoints",
    "/v1/webhook-endpoints/{id}",
    "/v1/accounts/{id}/keys",
    "/v1/models",
    "/v1/accounts/{id}/usage",
    "/v1/openapi.json",
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/accounts",
    "/v1/accounts/{id}/runs",
    "/v1/accounts/{id}/grants",
    "/v1/accounts/{id}/jobs",
    "/v1/overview",
    "/{id}",
    "/v1/{id}/{id}",
];

#[test]
fn random_paths_and_queries_to_every_get_route_never_answer_5xx() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let fixture = runtime.block_on(fixture());
    let strategy = (
        prop::sample::select(GET_ROUTES),
        segment(fixture.ids.clone()),
        query(fixture.ids.clone()),
        prop::option::of("\\PC{0,40}"),
    );
    runner(3000, 0x0BAD_F00D)
        .run(&strategy, |(path, segment, query, last_event_id)| {
            let mut uri = fill(path, &segment);
            if let Some(query) = query {
                uri = format!("{uri}?{query}");
            }
            let mut request = Request::get(uri.as_str());
            if let Some(last_event_id) = last_event_id {
                request = request.header("last-event-id", last_event_id);
            }
            let Ok(request) = request.body(Body::empty()) else { return Ok(()) };
            runtime.block_on(check(&fixture.app, request))?;
            Ok(())
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
    let report = runtime.block_on(fixture.store.verify()).expect("verify");
    assert!(report.violations.is_empty(), "{:?}", report.violations);
}

/// The fuzzers' route lists are every route of the router: a route added to the router and not
/// here fails this test instead of going unfuzzed.
#[test]
fn the_fuzzed_routes_are_every_route_of_the_router() {
    let fuzzable = |path: &str| {
        // The fuzzed segment is `{id}` whatever the parameter's name.
        let mut out = String::new();
        let mut rest = path;
        while let Some(start) = rest.find('{') {
            let end = rest[start..].find('}').map_or(rest.len(), |end| start + end + 1);
            out.push_str(&rest[..start]);
            out.push_str("{id}");
            rest = &rest[end..];
        }
        out.push_str(rest);
        out
    };
    let table = crate::router::route_table();
    let mut posts: Vec<String> = table
        .iter()
        .filter(|(method, _)| *method == axum::http::Method::POST)
        .map(|(_, path)| fuzzable(path))
        .collect();
    let mut fuzzed_posts: Vec<String> = POST_ROUTES.iter().map(|route| route.path.to_owned()).collect();
    posts.sort();
    fuzzed_posts.sort();
    assert_eq!(fuzzed_posts, posts, "POST_ROUTES must list every POST route");
    let gets = table.iter().filter(|(method, _)| *method == axum::http::Method::GET).map(|(_, path)| fuzzable(path));
    for path in gets {
        assert!(GET_ROUTES.contains(&path.as_str()), "GET_ROUTES must list {path}");
    }
    let deletes =
        table.iter().filter(|(method, _)| *method == axum::http::Method::DELETE).map(|(_, path)| fuzzable(path));
    for path in deletes {
        assert!(DELETE_ROUTES.contains(&path.as_str()), "DELETE_ROUTES must list {path}");
    }
    let methods = [axum::http::Method::GET, axum::http::Method::POST, axum::http::Method::DELETE];
    assert!(table.iter().all(|(method, _)| methods.contains(method)));
}

const DELETE_ROUTES: &[&str] = &["/v1/accounts/{id}/allowances/{id}", "/v1/accounts/{id}/keys/{id}"];

#[test]
fn random_segments_to_every_delete_route_never_answer_5xx() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let fixture = runtime.block_on(fixture());
    let strategy = (prop::sample::select(DELETE_ROUTES), segment(fixture.ids.clone()), prop::option::of("\\PC{0,40}"));
    runner(500, 0x0DE1_E7E5)
        .run(&strategy, |(path, segment, key)| {
            let mut request = Request::delete(fill(path, &segment).as_str());
            if let Some(key) = key {
                request = request.header("idempotency-key", key);
            }
            let Ok(request) = request.body(Body::empty()) else { return Ok(()) };
            runtime.block_on(check(&fixture.app, request))?;
            Ok(())
        })
        .unwrap_or_else(|failure| panic!("{failure}"));
    let report = runtime.block_on(fixture.store.verify()).expect("verify");
    assert!(report.violations.is_empty(), "{:?}", report.violations);
}

/// Sends `body` to `path` and expects a 4xx problem with this status and code.
async fn expect_problem(app: &Router, path: &str, body: Vec<u8>, status: StatusCode, code: &str) {
    let mut request = Request::post(path).header(header::CONTENT_TYPE, "application/json");
    if path.starts_with("/v1/worker") {
        request = request.header(header::AUTHORIZATION, format!("Bearer {WORKER_TOKEN}"));
    }
    let request = request.body(Body::from(body)).expect("valid request");
    let (answered, problem) = check(app, request).await.unwrap_or_else(|error| panic!("{path}: {error}"));
    assert_eq!((answered, problem["code"].as_str()), (status, Some(code)), "{path}: {problem}");
}

#[tokio::test]
async fn every_body_list_and_string_has_a_limit() {
    let fixture = fixture().await;
    let app = &fixture.app;
    let hold = &fixture.ids[2];
    // Bodies: one byte over the limit is 413 on every route that reads a JSON body.
    let over = ApiConfig::default().request_body_bytes_max + 1;
    // Routes without a body (cancels, an endpoint's disable, enable and rotation) read none;
    // a finish has its own, larger limit (below).
    // The chat completions route has its own, larger limit (below).
    let reads_body = |path: &str| {
        !["cancel", "finish", "/disable", "/enable", "/rotate-secret", "/chat/completions"]
            .iter()
            .any(|end| path.contains(end))
    };
    for route in POST_ROUTES.iter().filter(|route| reads_body(route.path)) {
        let padded = format!("{{\"pad\":\"{}\"}}", " ".repeat(over));
        let (status, body) = send(app, worker(post_raw(&fill(route.path, hold), padded.into_bytes()))).await;
        // The OpenAI-compatible route answers in OpenAI's shape (`error.code`).
        let code = body["code"].as_str().or_else(|| body["error"]["code"].as_str());
        assert_eq!((status, code), (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large")), "{}", route.path);
    }
    let chat_over = format!("{{\"pad\":\"{}\"}}", " ".repeat(crate::routes::gateway::REQUEST_BYTES_MAX));
    let (status, body) = send(app, post_raw("/v1/chat/completions", chat_over.into_bytes())).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large")));
    let finish_over = JobsConfig::default().artifact_bytes_max.div_ceil(3) * 4 + 64 * 1024 + 1;
    let (status, body) = send(app, worker(post_raw("/v1/worker/jobs/j/finish", vec![b' '; finish_over]))).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::PAYLOAD_TOO_LARGE, Some("payload_too_large")));

    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    let long = |length: usize| "a".repeat(length);
    let cases: Vec<(String, Value)> = vec![
        // Lists.
        ("/v1/estimate".into(), json!({"steps": vec!["pdf"; 9], "model": "flash", "explanation_mode": "full"})),
        // Strings.
        ("/v1/accounts/alice/grants".into(), json!({"amount": "1", "reference": long(256)})),
        ("/v1/accounts/alice/grants".into(), json!({"amount": "1", "metadata": {"k": long(4096)}})),
        ("/v1/accounts/alice/grants".into(), json!({"amount": "1", "expires_at": long(1000)})),
        (
            "/v1/webhook-endpoints".into(),
            json!({"url": "https://93.184.215.14/", "events": ["hold.created"], "description": long(501)}),
        ),
        (format!("/v1/accounts/{}/grants", long(129)), json!({"amount": "1"})),
        ("/v1/accounts/alice/debits".into(), json!({"amount": "1", "reference": long(256)})),
        ("/v1/accounts/alice/refunds".into(), json!({"amount": "1", "reference": long(256)})),
        ("/v1/accounts/alice/refunds".into(), json!({"amount": "1", "reference": "r", "hold_id": long(129)})),
        ("/v1/holds".into(), json!({"account_id": long(129), "amount": "1"})),
        ("/v1/holds".into(), json!({"account_id": "alice", "amount": "1", "reference": long(256)})),
        ("/v1/holds".into(), json!({"account_id": "alice", "amount": "1", "metadata": {"k": long(4096)}})),
        ("/v1/holds".into(), json!({"account_id": "alice", "amount": "1", "ttl_seconds": 86_401})),
        (format!("/v1/holds/{}/extend", long(129)), json!({"ttl_seconds": 1})),
        ("/v1/solve".into(), json!({"account_id": "alice", "problem": long(16 * 1024 + 1)})),
        ("/v1/solve".into(), json!({"account_id": "alice", "problem": "p", "thread_id": long(129)})),
        ("/v1/solve".into(), json!({"account_id": "alice", "problem": "p", "retry_source_job_id": long(129)})),
        ("/v1/worker/claim".into(), json!({"worker_id": long(129)})),
        ("/v1/worker/jobs/j/heartbeat".into(), json!({"worker_id": "w", "stage": long(33), "progress": 1})),
    ];
    for (path, body) in cases {
        expect_problem(app, &path, body.to_string().into_bytes(), unprocessable, "invalid_request").await;
    }
    // A key longer than the limit is refused before the body is looked at.
    let request = Request::post("/v1/holds")
        .header(header::CONTENT_TYPE, "application/json")
        .header("idempotency-key", long(256))
        .body(Body::from(json!({"account_id": "alice", "amount": "1"}).to_string()))
        .expect("valid request");
    assert_eq!(check(app, request).await.expect("a problem").0, unprocessable);
    let report = fixture.store.verify().await.expect("verify");
    assert!(report.violations.is_empty(), "{:?}", report.violations);
}

fn post_raw(path: &str, body: Vec<u8>) -> Request<Body> {
    Request::post(path).header(header::CONTENT_TYPE, "application/json").body(Body::from(body)).expect("valid request")
}

fn worker(mut request: Request<Body>) -> Request<Body> {
    let value = format!("Bearer {WORKER_TOKEN}").parse().expect("header value");
    request.headers_mut().insert(header::AUTHORIZATION, value);
    request
}
