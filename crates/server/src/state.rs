//! What every handler shares: the store, the clock, the configuration, the token table and the
//! rate limiters.

use std::sync::Arc;

use ledger::{Command, Outcome, Rejection};
use pricing::SharedCatalog;
use sha2::{Digest, Sha256};
use store::{Clock, Executed, LedgerStore, Request};

use crate::config::{ApiConfig, Role};
use crate::error::ApiError;
use crate::extract::IdempotencyKey;
use crate::rate_limit::RateLimiter;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn LedgerStore>,
    pub clock: Arc<dyn Clock>,
    pub config: Arc<ApiConfig>,
    /// SHA-256 of each token with its role: comparing digests in constant time leaks neither
    /// the tokens' contents nor their lengths.
    pub token_digests: Arc<[([u8; 32], Role)]>,
    /// The run engine, when this server runs metered solves.
    pub engine: Option<Arc<engine::run::Engine>>,
    /// The pricing catalog in force (the engine's), for estimates; `None` without an engine.
    pub catalog: Option<Arc<SharedCatalog>>,
    /// SHA-256 of the worker token (compared in constant time); `None`: the worker API is off.
    pub worker_token_digest: Option<[u8; 32]>,
    /// The optional per-token and per-account limits of the routes that start spending.
    pub rate_limiter: Arc<RateLimiter>,
    /// The LLM gateway's client to its upstream (connections reused across calls).
    pub gateway_client: reqwest::Client,
    /// The worst cases of this process's gateway calls in flight on each run hold they draw from
    /// (`X-Creditgraph-Hold`), so concurrent calls never together exceed what the hold has left.
    pub gateway_draws: Arc<std::sync::Mutex<std::collections::HashMap<ledger::HoldId, ledger::Amount>>>,
}

pub fn token_digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl AppState {
    pub fn new(store: Arc<dyn LedgerStore>, clock: Arc<dyn Clock>, config: ApiConfig) -> AppState {
        let token_digests = config.tokens.iter().map(|(token, role)| (token_digest(token.as_bytes()), *role)).collect();
        let worker_token_digest = config.worker_token.as_ref().map(|token| token_digest(token.as_bytes()));
        let rate_limiter = Arc::new(RateLimiter::new(&config.rate_limits, Arc::clone(&clock)));
        AppState {
            store,
            clock,
            config: Arc::new(config),
            token_digests,
            engine: None,
            catalog: None,
            worker_token_digest,
            rate_limiter,
            gateway_client: reqwest::Client::new(),
            gateway_draws: Arc::default(),
        }
    }

    /// Runs one ledger command, idempotently when the request carried a key. The fingerprint is
    /// computed only when needed. A replay yields the first result, which renders exactly as the
    /// first response did.
    pub async fn execute(
        &self,
        command: Command,
        key: &IdempotencyKey,
        fingerprint: impl FnOnce() -> Result<String, ApiError>,
    ) -> Result<Result<Outcome, Rejection>, ApiError> {
        let request = match key.as_str() {
            Some(key) => Request::with_key(command, key, &fingerprint()?),
            None => Request::new(command),
        };
        match self.store.execute(request).await? {
            Executed::Fresh(result) | Executed::Replayed(result) => Ok(result),
            Executed::Conflict => Err(ApiError::idempotency_conflict()),
        }
    }
}

/// An outcome of a different kind than the command asked for: a store bug, answered with 500.
pub fn unexpected_outcome(command: &str, outcome: &Outcome) -> ApiError {
    tracing::error!(command, ?outcome, "store returned an outcome of another command");
    ApiError::internal()
}
