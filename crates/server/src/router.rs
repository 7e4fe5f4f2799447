//! The route table and the layers every request passes through.
//!
//! Outermost is `observe` (the request id, the request's log line and metrics), then panic
//! catching, so even a bug answers with a problem+json 500 instead of a dropped connection; then the request limits of `crate::limits` (body
//! deadline, in-flight cap, handler deadline per route); then the body size limit that
//! extractors enforce.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::Method;
use axum::middleware::from_fn_with_state;
use axum::routing::{delete, get, post, MethodRouter};
use axum::Router;
use engine::run::Engine;
use store::{Clock, LedgerStore};
use tower_http::catch_panic::CatchPanicLayer;

use crate::config::ApiConfig;
use crate::console;
use crate::error::panic_response;
use crate::limits::{self, RequestLimits};
use crate::observe;
use crate::routes::{
    accounts, allowances, api_keys, gateway, health, holds, jobs, ledger_events, method_not_allowed, not_found,
    operator, prometheus, runs, test_clock, webhooks, worker,
};
use crate::state::AppState;

/// The ledger API over one store (no metered runs).
pub fn router(store: Arc<dyn LedgerStore>, clock: Arc<dyn Clock>, config: ApiConfig) -> Router {
    router_with_engine(store, clock, config, None)
}

/// Whether a route's handler answers under the handler deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timing {
    /// Answers whole: its handler must answer within `handler_timeout_seconds`.
    Handler,
    /// Streams (an SSE response, an artifact upload read by the handler): exempt from the
    /// handler deadline, bounded instead by the run's own limits, SSE heartbeats, the
    /// connection's write timeout and the body deadline.
    Streams,
}

/// Every route: its method, its path, its handler and its [`Timing`]. The router is built from this table
/// alone, and the tests hold the OpenAPI document (and the fuzzers' route lists) against it, so
/// a route cannot be added without being documented and fuzzed.
fn routes() -> Vec<(Method, &'static str, MethodRouter<AppState>, Timing)> {
    vec![
        (Method::GET, "/v1/accounts", get(operator::list_accounts), Timing::Handler),
        (Method::GET, "/v1/accounts/{account_id}", get(accounts::get_account), Timing::Handler),
        (Method::GET, "/v1/accounts/{account_id}/grants", get(operator::list_grants), Timing::Handler),
        (Method::POST, "/v1/grants/{grant_id}/void", post(operator::void_grant), Timing::Handler),
        (Method::GET, "/v1/accounts/{account_id}/runs", get(operator::account_runs), Timing::Handler),
        (Method::GET, "/v1/accounts/{account_id}/jobs", get(operator::account_jobs), Timing::Handler),
        (Method::GET, "/v1/overview", get(operator::overview), Timing::Handler),
        (Method::POST, "/v1/accounts/{account_id}/grants", post(accounts::create_grant), Timing::Handler),
        (Method::GET, "/v1/accounts/{account_id}/entries", get(accounts::list_entries), Timing::Handler),
        (Method::GET, "/v1/accounts/{account_id}/holds", get(accounts::list_holds), Timing::Handler),
        (Method::POST, "/v1/accounts/{account_id}/debits", post(accounts::create_debit), Timing::Handler),
        (Method::POST, "/v1/accounts/{account_id}/refunds", post(accounts::create_refund), Timing::Handler),
        (
            Method::POST,
            "/v1/accounts/{account_id}/low-balance-threshold",
            post(accounts::set_low_balance_threshold),
            Timing::Handler,
        ),
        (Method::POST, "/v1/accounts/{account_id}/allowances", post(allowances::create_allowance), Timing::Handler),
        (Method::GET, "/v1/accounts/{account_id}/allowances", get(allowances::list_allowances), Timing::Handler),
        (
            Method::DELETE,
            "/v1/accounts/{account_id}/allowances/{allowance_id}",
            delete(allowances::end_allowance),
            Timing::Handler,
        ),
        (Method::POST, "/v1/accounts/{account_id}/plan", post(allowances::subscribe_plan), Timing::Handler),
        (Method::POST, "/v1/plans", post(allowances::create_plan), Timing::Handler),
        (Method::GET, "/v1/plans", get(allowances::list_plans), Timing::Handler),
        (Method::GET, "/v1/plans/{plan_id}", get(allowances::get_plan), Timing::Handler),
        (Method::GET, "/v1/events", get(ledger_events::list_events), Timing::Handler),
        (Method::POST, "/v1/accounts/{account_id}/keys", post(api_keys::create_key), Timing::Handler),
        (Method::GET, "/v1/accounts/{account_id}/keys", get(api_keys::list_keys), Timing::Handler),
        (Method::DELETE, "/v1/accounts/{account_id}/keys/{key_id}", delete(api_keys::revoke_key), Timing::Handler),
        (Method::GET, "/v1/models", get(gateway::list_models), Timing::Handler),
        (Method::GET, "/v1/accounts/{account_id}/usage", get(api_keys::usage), Timing::Handler),
        // Bounded by the upstream timeout instead of the handler deadline (a completion takes long).
        (
            Method::POST,
            "/v1/chat/completions",
            post(gateway::chat_completions).layer(DefaultBodyLimit::max(gateway::REQUEST_BYTES_MAX)),
            Timing::Streams,
        ),
        (Method::POST, "/v1/webhook-endpoints", post(webhooks::create_endpoint), Timing::Handler),
        (Method::GET, "/v1/webhook-endpoints", get(webhooks::list_endpoints), Timing::Handler),
        (Method::GET, "/v1/webhook-endpoints/{endpoint_id}", get(webhooks::get_endpoint), Timing::Handler),
        (
            Method::POST,
            "/v1/webhook-endpoints/{endpoint_id}/disable",
            post(webhooks::disable_endpoint),
            Timing::Handler,
        ),
        (Method::POST, "/v1/webhook-endpoints/{endpoint_id}/enable", post(webhooks::enable_endpoint), Timing::Handler),
        (
            Method::POST,
            "/v1/webhook-endpoints/{endpoint_id}/rotate-secret",
            post(webhooks::rotate_secret),
            Timing::Handler,
        ),
        (Method::POST, "/v1/webhook-endpoints/{endpoint_id}/replay", post(webhooks::replay), Timing::Handler),
        (Method::POST, "/v1/holds", post(holds::create_hold), Timing::Handler),
        (Method::GET, "/v1/holds/{hold_id}", get(holds::get_hold), Timing::Handler),
        (Method::POST, "/v1/holds/{hold_id}/capture", post(holds::capture), Timing::Handler),
        (Method::POST, "/v1/holds/{hold_id}/release", post(holds::release), Timing::Handler),
        (Method::POST, "/v1/holds/{hold_id}/extend", post(holds::extend), Timing::Handler),
        (Method::POST, "/v1/estimate", post(runs::estimate), Timing::Handler),
        (Method::POST, "/v1/solve", post(runs::solve), Timing::Streams),
        (Method::GET, "/v1/runs/{run_id}", get(runs::get_run), Timing::Handler),
        (Method::GET, "/v1/runs/{run_id}/events", get(runs::run_events), Timing::Streams),
        (Method::POST, "/v1/runs/{run_id}/cancel", post(runs::cancel_run), Timing::Handler),
        (Method::GET, "/v1/artifacts/{artifact_id}", get(runs::get_artifact), Timing::Handler),
        (Method::GET, "/v1/threads/{thread_id}", get(runs::get_thread), Timing::Handler),
        (Method::GET, "/v1/threads/{thread_id}/jobs", get(jobs::thread_jobs), Timing::Handler),
        (Method::GET, "/v1/jobs/{job_id}", get(jobs::get_job), Timing::Handler),
        (Method::POST, "/v1/jobs/{job_id}/cancel", post(jobs::cancel_job), Timing::Handler),
        (Method::POST, "/v1/worker/claim", post(worker::claim), Timing::Handler),
        (Method::POST, "/v1/worker/jobs/{job_id}/heartbeat", post(worker::heartbeat), Timing::Handler),
        (Method::POST, "/v1/worker/jobs/{job_id}/finish", post(worker::finish), Timing::Streams),
        (Method::GET, "/v1/test-clock", get(test_clock::get_test_clock), Timing::Handler),
        (Method::POST, "/v1/test-clock/advance", post(test_clock::advance_test_clock), Timing::Handler),
        (Method::GET, "/v1/openapi.json", get(health::openapi), Timing::Handler),
        (Method::GET, "/metrics", get(prometheus::metrics), Timing::Handler),
        (Method::GET, "/healthz", get(health::healthz), Timing::Handler),
        (Method::GET, "/readyz", get(health::readyz), Timing::Handler),
    ]
}

/// Every route of [`router`] as (method, path), paths as the OpenAPI document writes them.
pub fn route_table() -> Vec<(Method, &'static str)> {
    routes().into_iter().map(|(method, path, _, _)| (method, path)).collect()
}

/// The whole HTTP API: the ledger, and metered runs when an engine is given.
pub fn router_with_engine(
    store: Arc<dyn LedgerStore>,
    clock: Arc<dyn Clock>,
    config: ApiConfig,
    engine: Option<Arc<Engine>>,
) -> Router {
    build(store, clock, config, engine, Limits::On)
}

/// The ledger API without the request limits of `crate::limits` (body and handler deadlines,
/// in-flight cap): what a plain axum server would be. Only for the benchmark, which measures
/// what the limits cost beside it; never serve it.
pub fn router_without_limits(store: Arc<dyn LedgerStore>, clock: Arc<dyn Clock>, config: ApiConfig) -> Router {
    build(store, clock, config, None, Limits::Off)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Limits {
    On,
    Off,
}

fn build(
    store: Arc<dyn LedgerStore>,
    clock: Arc<dyn Clock>,
    config: ApiConfig,
    engine: Option<Arc<Engine>>,
    with_limits: Limits,
) -> Router {
    // Installs the process's metrics recorder before anything records (the facade drops what
    // is recorded without one).
    observe::metrics_handle();
    let body_bytes_max = config.request_body_bytes_max;
    let limits = Arc::new(RequestLimits::new(
        Duration::from_secs(config.request_body_timeout_seconds),
        Duration::from_secs(config.handler_timeout_seconds),
        config.requests_in_flight_max,
        body_bytes_max,
    ));
    let mut state = AppState::new(store, clock, config);
    state.catalog = engine.as_ref().map(|engine| engine.shared_catalog());
    state.engine = engine;
    // One entry per (method, path); axum merges the methods of a path given twice.
    let router = routes().into_iter().fold(Router::new(), |router, (_, path, handler, timing)| {
        let handler = match (timing, with_limits) {
            (Timing::Handler, Limits::On) => {
                handler.layer(from_fn_with_state(Arc::clone(&limits), limits::handler_deadline))
            }
            (Timing::Streams, _) | (_, Limits::Off) => handler,
        };
        router.route(path, handler)
    });
    let router = router
        .merge(console::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_bytes_max));
    // Outermost first: panics, tracing, the body deadline (so a slow body never holds an
    // in-flight slot), the in-flight cap, then routing and the per-route handler deadline.
    let router = match with_limits {
        Limits::On => router
            .layer(from_fn_with_state(Arc::clone(&limits), limits::in_flight_cap))
            .layer(from_fn_with_state(limits, limits::body_deadline)),
        Limits::Off => router,
    };
    // The request's id, log line and metrics wrap everything, panics' 500s included.
    router
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(axum::middleware::from_fn(observe::observe_request))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use ledger::{AccountId, Entry, Hold, HoldId};
    use store::{AccountView, Executed, ManualClock, StoreError, SweepReport, VerifyReport};
    use tower::ServiceExt;

    /// A store that fails every call in one chosen way.
    struct BrokenStore {
        panics: bool,
    }

    impl BrokenStore {
        fn fail<T>(&self) -> Result<T, StoreError> {
            assert!(!self.panics, "broken store panics on purpose");
            Err(StoreError::unavailable("test"))
        }
    }

    #[async_trait]
    impl LedgerStore for BrokenStore {
        async fn execute(&self, _request: store::Request) -> Result<Executed, StoreError> {
            self.fail()
        }
        async fn account(&self, _account_id: &AccountId) -> Result<Option<AccountView>, StoreError> {
            self.fail()
        }
        async fn hold(&self, _hold_id: &HoldId) -> Result<Option<Hold>, StoreError> {
            self.fail()
        }
        async fn pending_holds(&self, _account_id: &AccountId) -> Result<Vec<Hold>, StoreError> {
            self.fail()
        }
        async fn holds(
            &self,
            _account_id: &AccountId,
            _state: ledger::HoldState,
            _after: Option<&HoldId>,
            _limit: u32,
        ) -> Result<Vec<Hold>, StoreError> {
            self.fail()
        }
        async fn entries(&self, _account_id: &AccountId, _after: u64, _limit: u32) -> Result<Vec<Entry>, StoreError> {
            self.fail()
        }
        async fn sweep(&self, _accounts_max: u32) -> Result<SweepReport, StoreError> {
            self.fail()
        }
        async fn verify(&self) -> Result<VerifyReport, StoreError> {
            self.fail()
        }
        fn backend(&self) -> &'static str {
            "broken"
        }
    }

    async fn call(panics: bool, path: &str) -> (StatusCode, String, serde_json::Value) {
        let clock = Arc::new(ManualClock::starting_now());
        let app = router(Arc::new(BrokenStore { panics }), clock, ApiConfig::default());
        let request = Request::get(path).body(Body::empty()).expect("valid request");
        let response = app.oneshot(request).await.expect("infallible service");
        let status = response.status();
        let content_type =
            response.headers().get("content-type").and_then(|value| value.to_str().ok()).unwrap_or_default().to_owned();
        let bytes = response.into_body().collect().await.expect("body").to_bytes();
        (status, content_type, serde_json::from_slice(&bytes).expect("JSON body"))
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_problem_json() {
        let (status, content_type, body) = call(true, "/v1/accounts/alice").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(content_type, "application/problem+json");
        assert_eq!(body["code"], "internal_error");
    }

    #[tokio::test]
    async fn an_unavailable_store_answers_503() {
        let (status, _, body) = call(false, "/v1/holds/h1").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["code"], "store_unavailable");
        let (status, _, body) = call(false, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["code"], "store_unavailable");
        let (status, _, body) = call(false, "/healthz").await;
        assert_eq!((status, body["status"].as_str()), (StatusCode::OK, Some("ok")));
    }

    #[tokio::test]
    async fn the_openapi_document_lists_every_route() {
        let (status, _, body) = call(false, "/v1/openapi.json").await;
        assert_eq!(status, StatusCode::OK);
        let paths = body["paths"].as_object().expect("paths object");
        let table = route_table();
        for (method, path) in &table {
            let operation =
                &paths.get(*path).unwrap_or_else(|| panic!("{path} missing"))[method.as_str().to_lowercase()];
            assert!(operation.is_object(), "{method} {path} missing");
        }
        let mut documented = 0;
        for (path, item) in paths {
            for method in item.as_object().expect("path item").keys() {
                let known = table.iter().any(|(m, p)| *p == path && m.as_str().eq_ignore_ascii_case(method));
                assert!(known, "the document lists {method} {path}, which the router does not serve");
                documented += 1;
            }
        }
        assert_eq!(documented, table.len(), "one operation per route");
        assert!(body["components"]["schemas"]["HoldResponse"].is_object());
    }

    /// The routes that check the rate limits, and only those, document `429 rate_limited`.
    #[tokio::test]
    async fn the_rate_limited_routes_document_their_429() {
        let (_, _, body) = call(false, "/v1/openapi.json").await;
        for (method, path) in route_table() {
            let operation = &body["paths"][path][method.as_str().to_lowercase()];
            let limited = crate::rate_limit::RATE_LIMITED_ROUTES.contains(&(method.as_str(), path));
            let documented = &operation["responses"]["429"];
            assert_eq!(documented.is_object(), limited, "{method} {path}: {documented}");
            if limited {
                assert!(documented["headers"]["Retry-After"].is_object(), "{method} {path}: {documented}");
            }
        }
    }

    /// Every request and response body of the job, worker and run routes has a schema (no bare
    /// `Object`), and every event payload is described.
    #[tokio::test]
    async fn job_worker_and_event_bodies_have_schemas() {
        let (_, _, body) = call(false, "/v1/openapi.json").await;
        let schemas = body["components"]["schemas"].as_object().expect("schemas");
        for name in [
            "RunEvent",
            "RunEventType",
            "RunEventPayload",
            "PageStartPayload",
            "SolveProgressPayload",
            "TokenPayload",
            "ToolStartPayload",
            "ToolResultPayload",
            "NodeResultPayload",
            "CreditReservedPayload",
            "CreditSettledPayload",
            "ErrorPayload",
            "DonePayload",
            "JobResponse",
            "ThreadJobsResponse",
            "WorkerJobResponse",
            "ClaimRequest",
            "HeartbeatRequest",
            "HeartbeatResponse",
            "FinishRequest",
            "JobErrorCode",
            "RunDetails",
        ] {
            assert!(schemas.contains_key(name), "no schema {name}");
        }
        let paths = body["paths"].as_object().expect("paths");
        let mut checked = 0;
        for (path, item) in paths.iter().filter(|(path, _)| path.contains("/jobs") || path.starts_with("/v1/worker")) {
            for (method, operation) in item.as_object().expect("path item") {
                // An inline `Object` body is `{"type":"object"}`; a described one is a `$ref`.
                let text = serde_json::to_string(operation).expect("JSON");
                assert!(!text.contains(r#""type":"object""#), "{method} {path} has an untyped body: {text}");
                assert!(text.contains("#/components/schemas/"), "{method} {path} has no described body: {text}");
                checked += 1;
            }
        }
        assert_eq!(checked, 7, "the job and worker routes");
        let event = &schemas["RunEventPayload"];
        let variants = event["oneOf"].as_array().expect("the payload is one of the payload schemas");
        assert_eq!(variants.len(), 11, "{event}");
    }
}
