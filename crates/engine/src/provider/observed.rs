//! A [`Provider`] that counts and times every call of the one it wraps, by model tier: what an
//! operator watches to see a provider slow down or fail before users say so.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;

use super::{ChatRequest, ChatResponse, Provider, ProviderError};

/// Calls by `tier` and `outcome` (`ok`, `timeout`, `status`, `malformed`, `unreachable`,
/// `interrupted`, `idle`).
pub const PROVIDER_CALLS: &str = "creditgraph_provider_calls_total";
/// A call's time to its whole answer (or failure), by `tier`.
pub const PROVIDER_SECONDS: &str = "creditgraph_provider_call_seconds";

pub struct Observed {
    inner: Arc<dyn Provider>,
}

impl Observed {
    pub fn wrap(inner: Arc<dyn Provider>) -> Arc<dyn Provider> {
        Arc::new(Observed { inner })
    }
}

fn outcome(result: &Result<ChatResponse, ProviderError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(ProviderError::Timeout { .. }) => "timeout",
        Err(ProviderError::Status { .. }) => "status",
        Err(ProviderError::Malformed { .. }) => "malformed",
        Err(ProviderError::Unreachable { .. }) => "unreachable",
        Err(ProviderError::Interrupted { .. }) => "interrupted",
        Err(ProviderError::Idle { .. }) => "idle",
    }
}

fn record(tier: &'static str, started: Instant, result: &Result<ChatResponse, ProviderError>) {
    metrics::counter!(PROVIDER_CALLS, "tier" => tier, "outcome" => outcome(result)).increment(1);
    metrics::histogram!(PROVIDER_SECONDS, "tier" => tier).record(started.elapsed().as_secs_f64());
}

#[async_trait]
impl Provider for Observed {
    async fn complete(&self, request: ChatRequest) -> Result<ChatResponse, ProviderError> {
        let (tier, started) = (request.tier.as_str(), Instant::now());
        let result = self.inner.complete(request).await;
        record(tier, started, &result);
        result
    }

    async fn stream(
        &self,
        request: ChatRequest,
        deltas: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Result<ChatResponse, ProviderError> {
        let (tier, started) = (request.tier.as_str(), Instant::now());
        let result = self.inner.stream(request, deltas).await;
        record(tier, started, &result);
        result
    }
}
