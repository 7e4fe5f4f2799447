//! The route table and the layers every request passes through.
//!
//! Outermost is panic catching, so even a bug answers with a problem+json 500 instead of a
//! dropped connection; then tracing; then the body limit that extractors enforce.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use engine::run::Engine;
use store::{Clock, LedgerStore};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::config::ApiConfig;
use crate::error::panic_response;
use crate::routes::{accounts, health, holds, jobs, method_not_allowed, not_found, runs, worker};
use crate::state::AppState;

/// The ledger API over one store (no metered runs).
pub fn router(store: Arc<dyn LedgerStore>, clock: Arc<dyn Clock>, config: ApiConfig) -> Router {
    router_with_engine(store, clock, config, None)
}

/// The whole HTTP API: the ledger, and metered runs when an engine is given.
pub fn router_with_engine(
    store: Arc<dyn LedgerStore>,
    clock: Arc<dyn Clock>,
    config: ApiConfig,
    engine: Option<Arc<Engine>>,
) -> Router {
    let body_bytes_max = config.request_body_bytes_max;
    let mut state = AppState::new(store, clock, config);
    state.catalog = engine.as_ref().map(|engine| engine.shared_catalog());
    state.engine = engine;
    Router::new()
        .route("/v1/accounts/{account_id}", get(accounts::get_account))
        .route("/v1/accounts/{account_id}/grants", post(accounts::create_grant))
        .route("/v1/accounts/{account_id}/entries", get(accounts::list_entries))
        .route("/v1/accounts/{account_id}/debits", post(accounts::create_debit))
        .route("/v1/accounts/{account_id}/refunds", post(accounts::create_refund))
        .route("/v1/holds", post(holds::create_hold))
        .route("/v1/holds/{hold_id}", get(holds::get_hold))
        .route("/v1/holds/{hold_id}/capture", post(holds::capture))
        .route("/v1/holds/{hold_id}/release", post(holds::release))
        .route("/v1/holds/{hold_id}/extend", post(holds::extend))
        .route("/v1/estimate", post(runs::estimate))
        .route("/v1/solve", post(runs::solve))
        .route("/v1/runs/{run_id}", get(runs::get_run))
        .route("/v1/runs/{run_id}/events", get(runs::run_events))
        .route("/v1/runs/{run_id}/cancel", post(runs::cancel_run))
        .route("/v1/artifacts/{artifact_id}", get(runs::get_artifact))
        .route("/v1/threads/{thread_id}", get(runs::get_thread))
        .route("/v1/threads/{thread_id}/jobs", get(jobs::thread_jobs))
        .route("/v1/jobs/{job_id}", get(jobs::get_job))
        .route("/v1/jobs/{job_id}/cancel", post(jobs::cancel_job))
        .route("/v1/worker/claim", post(worker::claim))
        .route("/v1/worker/jobs/{job_id}/heartbeat", post(worker::heartbeat))
        .route("/v1/worker/jobs/{job_id}/finish", post(worker::finish))
        .route("/v1/openapi.json", get(health::openapi))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_bytes_max))
        .layer(TraceLayer::new_for_http())
        .layer(CatchPanicLayer::custom(panic_response))
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
            Err(StoreError::Unavailable { detail: "test".to_owned() })
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
        for path in ["/v1/accounts/{account_id}/grants", "/v1/holds/{hold_id}/capture", "/readyz", "/v1/worker/claim"] {
            assert!(paths.contains_key(path), "{path} missing");
        }
        assert!(body["components"]["schemas"]["HoldResponse"].is_object());
    }
}
