//! The OpenAI-compatible HTTP client behind [`Provider`].
//!
//! Why it is shaped this way: a metered run must end in bounded time and must never be brought
//! down by what a remote server sends. So one [`Provider::complete`] or [`Provider::stream`] call
//! has one deadline (`timeout_seconds`, every attempt and back-off included), retries only what a
//! second try can fix (HTTP 429, 5xx, transport errors), reads at most `response_bytes_max` bytes
//! of an answer (streamed bytes included), and turns every unexpected answer into a
//! [`ProviderError`] — never a panic.
//!
//! A stream adds two rules. Between two chunks at most `stream_idle_timeout_seconds` may pass
//! ([`ProviderError::Idle`]), so a stalled stream is noticed long before the deadline. And once a
//! text delta has been handed to the caller, nothing is retried: the user has read it, a second
//! try would write a different answer under it, so any later failure is final
//! ([`ProviderError::Interrupted`]). The `text/event-stream` framing is parsed by
//! `eventsource-stream`; what this module adds is the chunk protocol ([`StreamAssembly`]). The API key only
//! ever goes into the `Authorization` header (marked sensitive) and is redacted from `Debug`, so
//! it cannot reach a log line.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use eventsource_stream::{EventStreamError, Eventsource};
use futures::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

use super::{ChatRequest, ChatResponse, Message, Provider, ProviderError, ToolCall, Usage};
use pricing::Tier;

pub const ENV_BASE_URL: &str = "CREDITGRAPH_LLM_BASE_URL";
pub const ENV_API_KEY: &str = "CREDITGRAPH_LLM_API_KEY";
pub const ENV_MODEL_FLASH: &str = "CREDITGRAPH_LLM_MODEL_FLASH";
pub const ENV_MODEL_SONNET: &str = "CREDITGRAPH_LLM_MODEL_SONNET";
pub const ENV_MODEL_OPUS: &str = "CREDITGRAPH_LLM_MODEL_OPUS";
pub const ENV_TIMEOUT_SECONDS: &str = "CREDITGRAPH_LLM_TIMEOUT_SECONDS";
pub const ENV_STREAM_IDLE_TIMEOUT_SECONDS: &str = "CREDITGRAPH_LLM_STREAM_IDLE_TIMEOUT_SECONDS";
pub const ENV_STREAM_BYTES_MAX: &str = "CREDITGRAPH_LLM_STREAM_BYTES_MAX";

pub const TIMEOUT_SECONDS_DEFAULT: u64 = 60;
pub const CONNECT_TIMEOUT_SECONDS_DEFAULT: u64 = 5;
pub const RETRIES_MAX_DEFAULT: u32 = 2;
pub const RETRY_BACKOFF_MS_DEFAULT: u64 = 200;
pub const RESPONSE_BYTES_MAX_DEFAULT: usize = 1024 * 1024;
pub const STREAM_IDLE_TIMEOUT_SECONDS_DEFAULT: u64 = 30;
/// A streamed answer's bytes on the wire: its SSE framing and each chunk's JSON weigh about 60
/// bytes per token of text, so 32 MiB holds an answer of some 500,000 tokens, beyond any
/// model's output limit, while still bounding a provider that never stops.
pub const STREAM_BYTES_MAX_DEFAULT: usize = 32 * 1024 * 1024;
/// The bound of `timeout_seconds`, so that a deadline can always be computed.
pub const TIMEOUT_SECONDS_MAX: u64 = 3600;
/// The longest `Retry-After` honoured; a longer one is cut to this.
pub const RETRY_AFTER_SECONDS_MAX: u64 = 5;
/// The bound of one back-off wait before jitter (the deadline bounds the sum anyway).
const RETRY_BACKOFF_MS_MAX: u64 = 30_000;
/// How much of an error answer is read, to be logged.
const ERROR_BODY_LOG_BYTES_MAX: usize = 512;
/// How long reading an error answer for the log may take.
const ERROR_BODY_READ_MS_MAX: u64 = 1000;
/// The tool calls one streamed answer may assemble: a chunk naming a higher `index` is malformed
/// (the bound keeps a hostile index from allocating).
const STREAM_TOOL_CALLS_MAX: usize = 64;
/// How much of an `error` a provider sends mid-stream is kept in [`ProviderError::Interrupted`].
const STREAM_ERROR_DETAIL_CHARS_MAX: usize = 200;

/// The provider's model name for each price tier of the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenAiModels {
    pub flash: String,
    pub sonnet: String,
    pub opus: String,
}

impl OpenAiModels {
    pub fn name(&self, tier: Tier) -> &str {
        match tier {
            Tier::Flash => &self.flash,
            Tier::Sonnet => &self.sonnet,
            Tier::Opus => &self.opus,
        }
    }
}

impl Default for OpenAiModels {
    fn default() -> OpenAiModels {
        OpenAiModels { flash: "flash".to_owned(), sonnet: "sonnet".to_owned(), opus: "opus".to_owned() }
    }
}

/// Where the provider is and how patiently to talk to it.
///
/// `timeout_seconds` bounds one whole `complete` or `stream` call: every attempt, every back-off
/// and every `Retry-After` wait. A wait that would pass the deadline is not taken; the last error
/// is returned instead.
#[derive(Clone, PartialEq, Eq)]
pub struct OpenAiConfig {
    /// Up to, not including, `/chat/completions` (e.g. `https://api.openai.com/v1`).
    pub base_url: String,
    /// Sent as `Authorization: Bearer …`; never logged, redacted from `Debug`.
    pub api_key: Option<String>,
    pub models: OpenAiModels,
    pub timeout_seconds: u64,
    pub connect_timeout_seconds: u64,
    /// Retries after the first attempt, so at most `retries_max + 1` requests per call.
    pub retries_max: u32,
    /// The first back-off; doubled each retry, with jitter (a wait is in [b/2, b]).
    pub retry_backoff_ms: u64,
    /// Bounds the bytes of one attempt's answer (not streamed).
    pub response_bytes_max: usize,
    /// Bounds the bytes of one attempt's streamed answer: every byte received (the SSE framing
    /// and the chunks' JSON, not only the text), so far more than `response_bytes_max`.
    pub stream_bytes_max: usize,
    /// The longest a stream may go without a chunk (counted from the answer's headers; SSE
    /// comments such as keep-alives are not chunks). Does not apply to `complete`.
    pub stream_idle_timeout_seconds: u64,
}

impl OpenAiConfig {
    /// The defaults, pointing at `base_url`, without an API key.
    pub fn new(base_url: impl Into<String>) -> OpenAiConfig {
        OpenAiConfig {
            base_url: base_url.into(),
            api_key: None,
            models: OpenAiModels::default(),
            timeout_seconds: TIMEOUT_SECONDS_DEFAULT,
            connect_timeout_seconds: CONNECT_TIMEOUT_SECONDS_DEFAULT,
            retries_max: RETRIES_MAX_DEFAULT,
            retry_backoff_ms: RETRY_BACKOFF_MS_DEFAULT,
            response_bytes_max: RESPONSE_BYTES_MAX_DEFAULT,
            stream_bytes_max: STREAM_BYTES_MAX_DEFAULT,
            stream_idle_timeout_seconds: STREAM_IDLE_TIMEOUT_SECONDS_DEFAULT,
        }
    }

    /// Reads `CREDITGRAPH_LLM_*` from the process environment; `Ok(None)` when
    /// `CREDITGRAPH_LLM_BASE_URL` is unset or empty (no provider configured).
    pub fn from_env() -> Result<Option<OpenAiConfig>, OpenAiConfigError> {
        let names = [
            ENV_BASE_URL,
            ENV_API_KEY,
            ENV_MODEL_FLASH,
            ENV_MODEL_SONNET,
            ENV_MODEL_OPUS,
            ENV_TIMEOUT_SECONDS,
            ENV_STREAM_IDLE_TIMEOUT_SECONDS,
            ENV_STREAM_BYTES_MAX,
        ];
        for name in names {
            if let Err(std::env::VarError::NotUnicode(_)) = std::env::var(name) {
                return Err(OpenAiConfigError { variable: name, detail: "is not valid UTF-8".to_owned() });
            }
        }
        OpenAiConfig::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`OpenAiConfig::from_env`] over any source of variables (tests pass a map, so they never
    /// change the process environment). Values are trimmed; an empty value counts as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Option<OpenAiConfig>, OpenAiConfigError> {
        let read = |name: &str| lookup(name).map(|value| value.trim().to_owned()).filter(|value| !value.is_empty());
        let Some(base_url) = read(ENV_BASE_URL) else {
            return Ok(None);
        };
        parse_base_url(&base_url).map_err(|detail| OpenAiConfigError { variable: ENV_BASE_URL, detail })?;
        let mut config = OpenAiConfig::new(base_url);
        config.api_key = read(ENV_API_KEY);
        if let Some(name) = read(ENV_MODEL_FLASH) {
            config.models.flash = name;
        }
        if let Some(name) = read(ENV_MODEL_SONNET) {
            config.models.sonnet = name;
        }
        if let Some(name) = read(ENV_MODEL_OPUS) {
            config.models.opus = name;
        }
        if let Some(text) = read(ENV_TIMEOUT_SECONDS) {
            config.timeout_seconds = parse_seconds(ENV_TIMEOUT_SECONDS, &text)?;
        }
        if let Some(text) = read(ENV_STREAM_IDLE_TIMEOUT_SECONDS) {
            config.stream_idle_timeout_seconds = parse_seconds(ENV_STREAM_IDLE_TIMEOUT_SECONDS, &text)?;
        }
        if let Some(text) = read(ENV_STREAM_BYTES_MAX) {
            config.stream_bytes_max =
                text.parse().ok().filter(|bytes| *bytes > 0).ok_or_else(|| OpenAiConfigError {
                    variable: ENV_STREAM_BYTES_MAX,
                    detail: "must be a whole number of bytes, at least 1".to_owned(),
                })?;
        }
        Ok(Some(config))
    }

    fn validate(&self) -> Result<Url, String> {
        let endpoint = endpoint_of(&self.base_url)?;
        if !(1..=TIMEOUT_SECONDS_MAX).contains(&self.timeout_seconds) {
            return Err(format!("timeout_seconds must be in 1..={TIMEOUT_SECONDS_MAX}"));
        }
        if !(1..=TIMEOUT_SECONDS_MAX).contains(&self.connect_timeout_seconds) {
            return Err(format!("connect_timeout_seconds must be in 1..={TIMEOUT_SECONDS_MAX}"));
        }
        if !(1..=TIMEOUT_SECONDS_MAX).contains(&self.stream_idle_timeout_seconds) {
            return Err(format!("stream_idle_timeout_seconds must be in 1..={TIMEOUT_SECONDS_MAX}"));
        }
        if self.response_bytes_max == 0 {
            return Err("response_bytes_max must be positive".to_owned());
        }
        if self.stream_bytes_max == 0 {
            return Err("stream_bytes_max must be positive".to_owned());
        }
        for tier in Tier::ALL {
            if self.models.name(tier).trim().is_empty() {
                return Err(format!("the model name of tier {} is empty", tier.as_str()));
            }
        }
        Ok(endpoint)
    }
}

impl fmt::Debug for OpenAiConfig {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("OpenAiConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("models", &self.models)
            .field("timeout_seconds", &self.timeout_seconds)
            .field("connect_timeout_seconds", &self.connect_timeout_seconds)
            .field("retries_max", &self.retries_max)
            .field("retry_backoff_ms", &self.retry_backoff_ms)
            .field("response_bytes_max", &self.response_bytes_max)
            .field("stream_bytes_max", &self.stream_bytes_max)
            .field("stream_idle_timeout_seconds", &self.stream_idle_timeout_seconds)
            .finish()
    }
}

/// A `CREDITGRAPH_LLM_*` variable that cannot be used; start-up stops and names it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {detail}")]
pub struct OpenAiConfigError {
    pub variable: &'static str,
    pub detail: String,
}

/// A whole number of seconds in `1..=TIMEOUT_SECONDS_MAX`, read from `variable`.
fn parse_seconds(variable: &'static str, text: &str) -> Result<u64, OpenAiConfigError> {
    match text.parse::<u64>() {
        Ok(seconds) if (1..=TIMEOUT_SECONDS_MAX).contains(&seconds) => Ok(seconds),
        _ => Err(OpenAiConfigError {
            variable,
            detail: format!("{text:?} is not a whole number of seconds in 1..={TIMEOUT_SECONDS_MAX}"),
        }),
    }
}

fn parse_base_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|error| format!("{text:?} is not a URL: {error}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{text:?} is not an http or https URL"));
    }
    if url.host_str().is_none_or(str::is_empty) || url.cannot_be_a_base() {
        return Err(format!("{text:?} has no host"));
    }
    if url.fragment().is_some() {
        return Err(format!("{text:?} has a fragment"));
    }
    Ok(url)
}

/// `{base_url}/chat/completions`, with or without a trailing slash on the base; a query string
/// of the base (some gateways want one) is kept.
fn endpoint_of(base_url: &str) -> Result<Url, String> {
    let mut url = parse_base_url(base_url)?;
    let path = format!("{}/chat/completions", url.path().trim_end_matches('/'));
    url.set_path(&path);
    Ok(url)
}

/// The [`Provider`] over an OpenAI-compatible `POST {base}/chat/completions`. Cheap to clone
/// (the connection pool is shared).
#[derive(Clone)]
pub struct OpenAiProvider {
    client: reqwest::Client,
    endpoint: Url,
    authorization: Option<HeaderValue>,
    config: OpenAiConfig,
}

impl fmt::Debug for OpenAiProvider {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("OpenAiProvider")
            .field("endpoint", &self.endpoint.as_str())
            .field("config", &self.config)
            .finish()
    }
}

impl OpenAiProvider {
    /// Checks the configuration and builds the HTTP client. An invalid configuration is reported
    /// as [`ProviderError::Unreachable`] whose detail says what is wrong (never the key).
    pub fn new(config: OpenAiConfig) -> Result<OpenAiProvider, ProviderError> {
        let invalid =
            |detail: String| ProviderError::Unreachable { detail: format!("invalid configuration: {detail}") };
        let endpoint = config.validate().map_err(invalid)?;
        let authorization = match &config.api_key {
            None => None,
            Some(key) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {key}"))
                    .map_err(|_| invalid("the API key holds characters a header cannot carry".to_owned()))?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(config.connect_timeout_seconds))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("creditgraph/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|error| invalid(format!("cannot build the HTTP client: {}", error_chain(error))))?;
        Ok(OpenAiProvider { client, endpoint, authorization, config })
    }

    pub fn config(&self) -> &OpenAiConfig {
        &self.config
    }

    /// The URL every request is POSTed to.
    pub fn endpoint(&self) -> &str {
        self.endpoint.as_str()
    }

    /// The POST of one attempt, with its headers.
    fn post(&self, body: &[u8]) -> reqwest::RequestBuilder {
        let mut builder =
            self.client.post(self.endpoint.clone()).header(CONTENT_TYPE, "application/json").body(body.to_vec());
        if let Some(authorization) = &self.authorization {
            builder = builder.header(AUTHORIZATION, authorization.clone());
        }
        builder
    }

    /// One request and its answer, classified for the retry loop.
    async fn attempt(&self, body: &[u8]) -> Result<ChatResponse, Failure> {
        let mut response = self.post(body).send().await.map_err(transport_failure)?;
        if !response.status().is_success() {
            return Err(status_failure(&mut response).await);
        }
        let bytes = read_bounded(&mut response, self.config.response_bytes_max).await?;
        parse_response(&bytes).map_err(Failure::Final)
    }

    /// One streamed request: each text delta goes to `deltas` as it is parsed, and `delivered`
    /// turns true before the first one is sent (from then on the call must not be retried).
    ///
    /// A server that ignores `stream: true` and answers one JSON completion is taken whole: its
    /// content is one delta.
    ///
    /// What may be retried (and is, while nothing was delivered): a 429 or 5xx, a transport
    /// failure, a stream that ends before `[DONE]` or a finish. What is final: any other status,
    /// a malformed chunk, an error the server reports in the stream, the size cap, the idle
    /// timeout.
    async fn stream_attempt(
        &self,
        body: &[u8],
        deltas: &UnboundedSender<String>,
        delivered: &AtomicBool,
    ) -> Result<ChatResponse, Failure> {
        let mut response = self.post(body).send().await.map_err(transport_failure)?;
        if !response.status().is_success() {
            return Err(status_failure(&mut response).await);
        }
        let deliver = |text: String| {
            delivered.store(true, Ordering::Relaxed);
            // The receiver may be gone (the run stopped listening); the call still ends as it would.
            let _ = deltas.send(text);
        };
        if !is_event_stream(response.headers()) {
            let answer = parse_response(&read_bounded(&mut response, self.config.response_bytes_max).await?)
                .map_err(Failure::Final)?;
            if let Some(content) = answer.content.as_ref().filter(|content| !content.is_empty()) {
                deliver(content.clone());
            }
            return Ok(answer);
        }
        let bytes_max = self.config.stream_bytes_max;
        let mut received_bytes: usize = 0;
        let mut events = response
            .bytes_stream()
            .map(move |chunk| {
                let chunk = chunk.map_err(BodyError::Transport)?;
                received_bytes = received_bytes.saturating_add(chunk.len());
                if received_bytes > bytes_max {
                    return Err(BodyError::TooLarge);
                }
                Ok(chunk)
            })
            .eventsource();
        let idle_seconds = self.config.stream_idle_timeout_seconds;
        let mut assembly = StreamAssembly::default();
        loop {
            let Ok(next) = tokio::time::timeout(Duration::from_secs(idle_seconds), events.next()).await else {
                return Err(Failure::Final(ProviderError::Idle { seconds: idle_seconds }));
            };
            let event = match next {
                Some(Ok(event)) => event,
                Some(Err(EventStreamError::Transport(BodyError::TooLarge))) => {
                    return Err(Failure::Final(too_large(bytes_max)));
                }
                Some(Err(EventStreamError::Transport(BodyError::Transport(error)))) => {
                    let error = interrupted(format!("the connection failed: {}", error_chain(error)));
                    return Err(Failure::Retry { error, retry_after: None });
                }
                Some(Err(EventStreamError::Utf8(_))) => {
                    return Err(Failure::Final(interrupted("the stream is not UTF-8")));
                }
                Some(Err(EventStreamError::Parser(error))) => {
                    return Err(Failure::Final(interrupted(format!(
                        "the stream is not an event stream: {:?}",
                        error.code
                    ))));
                }
                None if assembly.finished() => return assembly.finish().map_err(Failure::Final),
                None => {
                    let error = interrupted("the stream ended before [DONE] or a finish_reason");
                    return Err(Failure::Retry { error, retry_after: None });
                }
            };
            match assembly.push(&event.event, &event.data).map_err(Failure::Final)? {
                Step::Text(text) => deliver(text),
                Step::Quiet => {}
                Step::Done => return assembly.finish().map_err(Failure::Final),
            }
        }
    }

    /// Runs attempts until one succeeds, fails for good, `may_retry` says no more, the retries are
    /// used up or the deadline would pass. Every attempt runs under the one deadline.
    async fn with_retries<Attempt>(
        &self,
        request: &ChatRequest,
        model: &str,
        may_retry: impl Fn() -> bool,
        mut attempt: impl FnMut() -> Attempt,
    ) -> Result<ChatResponse, ProviderError>
    where
        Attempt: Future<Output = Result<ChatResponse, Failure>>,
    {
        let purpose = request.purpose.as_str();
        let deadline = Instant::now() + Duration::from_secs(self.config.timeout_seconds);
        let mut retry: u32 = 0;
        loop {
            let outcome = match tokio::time::timeout_at(deadline, attempt()).await {
                Ok(outcome) => outcome,
                Err(_elapsed) => {
                    tracing::warn!(purpose, model, retry, "the provider timed out");
                    return Err(ProviderError::Timeout { seconds: self.config.timeout_seconds });
                }
            };
            let (error, retry_after) = match outcome {
                Ok(response) => return Ok(response),
                Err(Failure::Final(error)) => {
                    tracing::warn!(purpose, model, %error, "the provider call failed");
                    return Err(error);
                }
                Err(Failure::Retry { error, .. }) if !may_retry() => {
                    tracing::warn!(purpose, model, %error, "the provider call failed after its answer had begun");
                    return Err(error);
                }
                Err(Failure::Retry { error, retry_after }) => (error, retry_after),
            };
            let wait = retry_after.unwrap_or_else(|| self.backoff(retry));
            if retry >= self.config.retries_max || Instant::now() + wait >= deadline {
                tracing::warn!(purpose, model, retry, %error, "the provider call failed");
                return Err(error);
            }
            tracing::info!(
                purpose,
                model,
                retry,
                wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                %error,
                "retrying the provider call"
            );
            tokio::time::sleep(wait).await;
            retry += 1;
        }
    }

    /// The wait before retry number `retry + 1`: `retry_backoff_ms × 2^retry`, capped, with jitter
    /// so that many runs failing together do not retry together.
    fn backoff(&self, retry: u32) -> Duration {
        let factor = 1_u64.checked_shl(retry).unwrap_or(u64::MAX);
        let base_ms = self.config.retry_backoff_ms.saturating_mul(factor).min(RETRY_BACKOFF_MS_MAX);
        let half_ms = base_ms / 2;
        let spread_ms = base_ms - half_ms;
        Duration::from_millis(half_ms + random_u64() % (spread_ms + 1))
    }
}

#[async_trait]
impl Provider for OpenAiProvider {
    async fn complete(&self, request: ChatRequest) -> Result<ChatResponse, ProviderError> {
        let model = self.config.models.name(request.tier);
        let body = encode_request(&request, model, false)?;
        self.with_retries(&request, model, || true, || self.attempt(&body)).await
    }

    async fn stream(
        &self,
        request: ChatRequest,
        deltas: UnboundedSender<String>,
    ) -> Result<ChatResponse, ProviderError> {
        let model = self.config.models.name(request.tier);
        let body = encode_request(&request, model, true)?;
        let delivered = AtomicBool::new(false);
        let may_retry = || !delivered.load(Ordering::Relaxed);
        self.with_retries(&request, model, may_retry, || self.stream_attempt(&body, &deltas, &delivered)).await
    }
}

/// An answer's status other than 2xx: 429 and 5xx may be retried (after `Retry-After`, when
/// given), any other is final. The start of the body is logged at debug level.
async fn status_failure(response: &mut reqwest::Response) -> Failure {
    let status = response.status();
    let retry_after = retry_after_of(response.headers());
    let snippet = read_error_snippet(response).await;
    let error = ProviderError::Status { status: status.as_u16() };
    tracing::debug!(status = status.as_u16(), body = %snippet, "the provider answered an error");
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        Failure::Retry { error, retry_after }
    } else {
        Failure::Final(error)
    }
}

/// Whether the answer says `Content-Type: text/event-stream` (parameters and case aside).
fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media_type| media_type.trim().eq_ignore_ascii_case("text/event-stream"))
}

/// Why the bytes of a stream stopped coming.
#[derive(Debug)]
enum BodyError {
    Transport(reqwest::Error),
    /// More than `response_bytes_max` bytes arrived.
    TooLarge,
}

fn too_large(bytes_max: usize) -> ProviderError {
    ProviderError::Malformed { detail: format!("the answer is larger than {bytes_max} bytes") }
}

fn interrupted(detail: impl Into<String>) -> ProviderError {
    ProviderError::Interrupted { detail: detail.into() }
}

/// How one attempt failed: for good, or in a way another attempt may fix.
enum Failure {
    Final(ProviderError),
    Retry { error: ProviderError, retry_after: Option<Duration> },
}

/// A transport error (connect, reset, connect timeout) is worth retrying; a request that could
/// not even be built is not.
fn transport_failure(error: reqwest::Error) -> Failure {
    let builder = error.is_builder();
    let error = ProviderError::Unreachable { detail: error_chain(error) };
    if builder {
        Failure::Final(error)
    } else {
        Failure::Retry { error, retry_after: None }
    }
}

/// The error and its sources in one line, without the URL (a base URL may carry credentials).
fn error_chain(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut detail = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        detail.push_str(": ");
        detail.push_str(&cause.to_string());
        source = cause.source();
    }
    detail
}

async fn read_bounded(response: &mut reqwest::Response, bytes_max: usize) -> Result<Vec<u8>, Failure> {
    let capacity = response.content_length().and_then(|length| usize::try_from(length).ok()).unwrap_or(0);
    let mut bytes = Vec::with_capacity(capacity.min(bytes_max));
    while let Some(chunk) = response.chunk().await.map_err(transport_failure)? {
        if chunk.len() > bytes_max - bytes.len() {
            return Err(Failure::Final(too_large(bytes_max)));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// The start of an error answer, for the log; whatever cannot be read in time is left out.
async fn read_error_snippet(response: &mut reqwest::Response) -> String {
    let mut bytes = Vec::new();
    let read = async {
        while bytes.len() < ERROR_BODY_LOG_BYTES_MAX {
            match response.chunk().await {
                Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
                Ok(None) | Err(_) => break,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(ERROR_BODY_READ_MS_MAX), read).await;
    bytes.truncate(ERROR_BODY_LOG_BYTES_MAX);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `Retry-After` in seconds, capped; the HTTP-date form is not honoured (back-off applies).
fn retry_after_of(headers: &HeaderMap) -> Option<Duration> {
    let seconds = headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse::<u64>().ok()?;
    Some(Duration::from_secs(seconds.min(RETRY_AFTER_SECONDS_MAX)))
}

fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_u64(0);
    hasher.finish()
}

#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    response_format: Option<WireResponseFormat<'a>>,
    /// `true` for [`Provider::stream`], absent otherwise.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_options: Option<WireStreamOptions>,
}

/// `stream_options: {include_usage: true}`: the last chunk then carries the call's usage.
#[derive(Serialize)]
struct WireStreamOptions {
    include_usage: bool,
}

#[derive(Serialize)]
struct WireMessage<'a> {
    role: &'static str,
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tool_calls: Vec<WireToolCall<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
}

#[derive(Serialize)]
struct WireToolCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunctionCall<'a>,
}

#[derive(Serialize)]
struct WireFunctionCall<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Serialize)]
struct WireTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunction<'a>,
}

#[derive(Serialize)]
struct WireFunction<'a> {
    name: &'a str,
    description: &'a str,
    parameters: &'a Value,
}

#[derive(Serialize)]
struct WireResponseFormat<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    json_schema: WireJsonSchema<'a>,
}

#[derive(Serialize)]
struct WireJsonSchema<'a> {
    name: &'a str,
    schema: &'a Value,
    strict: bool,
}

fn encode_message(message: &Message) -> WireMessage<'_> {
    WireMessage {
        role: message.role.as_str(),
        content: message.content.as_deref(),
        tool_calls: message
            .tool_calls
            .iter()
            .map(|call| WireToolCall {
                id: &call.id,
                kind: "function",
                function: WireFunctionCall { name: &call.name, arguments: &call.arguments },
            })
            .collect(),
        tool_call_id: message.tool_call_id.as_deref(),
    }
}

/// The JSON body of a request, in the wire form of the protocol; a streamed one adds
/// `"stream": true, "stream_options": {"include_usage": true}`.
fn encode_request(request: &ChatRequest, model: &str, stream: bool) -> Result<Vec<u8>, ProviderError> {
    let wire = WireRequest {
        model,
        messages: request.messages.iter().map(encode_message).collect(),
        tools: request
            .tools
            .iter()
            .map(|tool| WireTool {
                kind: "function",
                function: WireFunction {
                    name: &tool.name,
                    description: &tool.description,
                    parameters: &tool.parameters,
                },
            })
            .collect(),
        response_format: request.response_format.as_ref().map(|format| WireResponseFormat {
            kind: "json_schema",
            json_schema: WireJsonSchema { name: &format.name, schema: &format.schema, strict: true },
        }),
        stream,
        stream_options: stream.then_some(WireStreamOptions { include_usage: true }),
    };
    serde_json::to_vec(&wire)
        .map_err(|error| ProviderError::Malformed { detail: format!("the request cannot be encoded: {error}") })
}

#[derive(Deserialize)]
struct WireResponse {
    choices: Option<Vec<WireChoice>>,
    /// Kept as a value: a `usage` of an unexpected shape is unknown usage, not a bad answer.
    usage: Option<Value>,
}

#[derive(Deserialize)]
struct WireChoice {
    message: Option<WireAnswer>,
}

#[derive(Deserialize)]
struct WireAnswer {
    content: Option<Value>,
    tool_calls: Option<Vec<WireAnswerToolCall>>,
}

#[derive(Deserialize)]
struct WireAnswerToolCall {
    id: Option<String>,
    function: Option<WireAnswerFunction>,
}

#[derive(Deserialize)]
struct WireAnswerFunction {
    name: Option<String>,
    arguments: Option<Value>,
}

fn malformed(detail: impl Into<String>) -> ProviderError {
    ProviderError::Malformed { detail: detail.into() }
}

/// `choices[0].message.{content, tool_calls}` and `usage` of a 2xx answer.
///
/// Tolerated, because compatible servers differ: content as an array of text parts (joined),
/// a missing tool call id (one is made up from the call's position), arguments given as a JSON
/// value rather than text (re-encoded), a missing or odd `usage` (unknown usage). Arguments are
/// otherwise passed on raw: the engine answers bad ones to the model as a tool error.
fn parse_response(bytes: &[u8]) -> Result<ChatResponse, ProviderError> {
    let wire: WireResponse = serde_json::from_slice(bytes)
        .map_err(|error| malformed(format!("the answer is not the expected JSON: {error}")))?;
    let choice = wire.choices.and_then(|choices| choices.into_iter().next()).ok_or_else(|| malformed("no choices"))?;
    let answer = choice.message.ok_or_else(|| malformed("choices[0] has no message"))?;
    let content = text_of(answer.content).map_err(malformed)?;
    let mut tool_calls = Vec::new();
    for (index, call) in answer.tool_calls.unwrap_or_default().into_iter().enumerate() {
        let function = call.function.ok_or_else(|| malformed(format!("tool call {index} has no function")))?;
        let name = function
            .name
            .filter(|name| !name.is_empty())
            .ok_or_else(|| malformed(format!("tool call {index} has no function name")))?;
        let mut arguments = String::new();
        append_arguments(&mut arguments, function.arguments);
        tool_calls.push(ToolCall { id: call_id(call.id, index), name, arguments });
    }
    Ok(ChatResponse { content, tool_calls, usage: wire.usage.as_ref().and_then(usage_of) })
}

/// A message's or a delta's `content`: text, or a list of parts each with a `text`.
fn text_of(content: Option<Value>) -> Result<Option<String>, &'static str> {
    match content {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for part in parts {
                match part.get("text").and_then(Value::as_str) {
                    Some(piece) => text.push_str(piece),
                    None => return Err("a content part has no text"),
                }
            }
            Ok(Some(text))
        }
        Some(_) => Err("the message content is neither text nor a list of parts"),
    }
}

/// Tool call arguments as text: a string as is, any other JSON value re-encoded.
fn append_arguments(arguments: &mut String, value: Option<Value>) {
    match value {
        None | Some(Value::Null) => {}
        Some(Value::String(text)) => arguments.push_str(&text),
        Some(other) => arguments.push_str(&other.to_string()),
    }
}

/// The call's id, or one made up from its position when the server sent none.
fn call_id(id: Option<String>, index: usize) -> String {
    id.filter(|id| !id.is_empty()).unwrap_or_else(|| format!("call_{index}"))
}

/// `{prompt_tokens, completion_tokens}` as whole numbers, or `None`: a count that is missing or
/// not a whole number is unknown, never guessed (and never zero).
fn usage_of(usage: &Value) -> Option<Usage> {
    let prompt_tokens = usage.get("prompt_tokens").and_then(Value::as_u64);
    let completion_tokens = usage.get("completion_tokens").and_then(Value::as_u64);
    match (prompt_tokens, completion_tokens) {
        (Some(prompt_tokens), Some(completion_tokens)) => Some(Usage { prompt_tokens, completion_tokens }),
        _ => {
            tracing::debug!(%usage, "the provider's usage is incomplete; it is recorded as unknown");
            None
        }
    }
}

/// One `chat.completion.chunk`.
#[derive(Deserialize)]
struct WireChunk {
    choices: Option<Vec<WireChunkChoice>>,
    usage: Option<Value>,
    /// Some servers report a failure mid-stream as a chunk holding only an `error`.
    error: Option<Value>,
}

#[derive(Deserialize)]
struct WireChunkChoice {
    delta: Option<WireDelta>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireDelta {
    content: Option<Value>,
    tool_calls: Option<Vec<WireDeltaToolCall>>,
}

#[derive(Deserialize)]
struct WireDeltaToolCall {
    index: Option<u64>,
    id: Option<String>,
    function: Option<WireAnswerFunction>,
}

/// What one event of a stream contributed.
#[derive(Debug, PartialEq, Eq)]
enum Step {
    /// A piece of the answer's text, never empty: it goes to the caller now.
    Text(String),
    /// Nothing to hand on (a role-only delta, a tool call piece, the usage, a finish_reason).
    Quiet,
    /// `data: [DONE]`: the answer is complete.
    Done,
}

/// A tool call as its deltas arrive.
#[derive(Debug, Default)]
struct PartialCall {
    id: Option<String>,
    name: String,
    arguments: String,
}

/// One streamed answer, put together event by event; pure, so the chunk protocol is tested
/// without a socket.
///
/// Invariant: `content` is the concatenation of every [`Step::Text`] returned so far, in order.
/// Tool calls are assembled by their `index` (the array position when a server sends none): the
/// first id and the first name win (some servers repeat them), arguments are appended. `usage`
/// is the last one a chunk carried.
#[derive(Debug, Default)]
struct StreamAssembly {
    content: String,
    calls: Vec<PartialCall>,
    usage: Option<Usage>,
    /// A chunk carried a `finish_reason`: the answer is complete even if `[DONE]` never comes.
    finished: bool,
}

impl StreamAssembly {
    /// Takes one event (its type and its data). A chunk that is not the expected JSON, or an
    /// error the server reports in the stream, is [`ProviderError::Interrupted`].
    fn push(&mut self, event_type: &str, data: &str) -> Result<Step, ProviderError> {
        if data.trim() == "[DONE]" {
            return Ok(Step::Done);
        }
        let chunk: WireChunk = serde_json::from_str(data)
            .map_err(|error| interrupted(format!("a chunk is not the expected JSON: {error}")))?;
        if let Some(error) = chunk.error.filter(|error| !error.is_null()) {
            return Err(interrupted(format!("the provider reported an error mid-stream: {}", error_message(&error))));
        }
        if event_type == "error" {
            return Err(interrupted("the provider sent an error event"));
        }
        if let Some(usage) = chunk.usage.as_ref().filter(|usage| !usage.is_null()) {
            self.usage = usage_of(usage);
        }
        let Some(choice) = chunk.choices.and_then(|choices| choices.into_iter().next()) else {
            return Ok(Step::Quiet);
        };
        if choice.finish_reason.is_some() {
            self.finished = true;
        }
        let Some(delta) = choice.delta else {
            return Ok(Step::Quiet);
        };
        for (position, call) in delta.tool_calls.unwrap_or_default().into_iter().enumerate() {
            let index = call.index.map_or(Ok(position), usize::try_from).unwrap_or(usize::MAX);
            if index >= STREAM_TOOL_CALLS_MAX {
                return Err(interrupted(format!("a tool call index is not below {STREAM_TOOL_CALLS_MAX}")));
            }
            if self.calls.len() <= index {
                self.calls.resize_with(index + 1, PartialCall::default);
            }
            let partial = &mut self.calls[index];
            if partial.id.is_none() {
                partial.id = call.id.filter(|id| !id.is_empty());
            }
            if let Some(function) = call.function {
                if partial.name.is_empty() {
                    partial.name = function.name.unwrap_or_default();
                }
                append_arguments(&mut partial.arguments, function.arguments);
            }
        }
        match text_of(delta.content).map_err(interrupted)? {
            Some(text) if !text.is_empty() => {
                self.content.push_str(&text);
                Ok(Step::Text(text))
            }
            _ => Ok(Step::Quiet),
        }
    }

    fn finished(&self) -> bool {
        self.finished
    }

    /// The answer: `None` content when no text came; every tool call must have a name.
    fn finish(self) -> Result<ChatResponse, ProviderError> {
        let mut tool_calls = Vec::with_capacity(self.calls.len());
        for (index, call) in self.calls.into_iter().enumerate() {
            if call.name.is_empty() {
                return Err(malformed(format!("tool call {index} has no function name")));
            }
            tool_calls.push(ToolCall { id: call_id(call.id, index), name: call.name, arguments: call.arguments });
        }
        let content = Some(self.content).filter(|content| !content.is_empty());
        Ok(ChatResponse { content, tool_calls, usage: self.usage })
    }
}

/// `error.message` (or the whole error) of an error chunk, cut short for the log and the detail.
fn error_message(error: &Value) -> String {
    let message = match error.get("message").and_then(Value::as_str) {
        Some(message) => message.to_owned(),
        None => error.to_string(),
    };
    message.chars().take(STREAM_ERROR_DETAIL_CHARS_MAX).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{JsonSchemaFormat, Purpose, ToolSpec};
    use serde_json::json;

    fn parse(value: Value) -> Result<ChatResponse, ProviderError> {
        parse_response(value.to_string().as_bytes())
    }

    #[test]
    fn parses_text_and_tool_calls() {
        let response = parse(json!({"choices": [{"message": {"content": "hi", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "code_execute", "arguments": "{\"code\""}},
            {"function": {"name": "code_generate", "arguments": {"task": "x"}}},
        ]}}]}))
        .unwrap();
        assert_eq!(response.content.as_deref(), Some("hi"));
        assert_eq!(
            response.tool_calls,
            vec![
                ToolCall { id: "a".into(), name: "code_execute".into(), arguments: "{\"code\"".into() },
                ToolCall { id: "call_1".into(), name: "code_generate".into(), arguments: "{\"task\":\"x\"}".into() },
            ]
        );
    }

    #[test]
    fn parses_content_parts_and_null_content() {
        let response =
            parse(json!({"choices": [{"message": {"content": [{"type": "text", "text": "a"}, {"text": "b"}]}}]}))
                .unwrap();
        assert_eq!(response.content.as_deref(), Some("ab"));
        let response = parse(json!({"choices": [{"message": {"content": null}}]})).unwrap();
        assert_eq!(response, ChatResponse { content: None, tool_calls: Vec::new(), usage: None });
    }

    #[test]
    fn rejects_malformed_answers() {
        let cases = [
            json!({}),
            json!({"choices": []}),
            json!({"choices": null}),
            json!({"choices": [{}]}),
            json!({"choices": [{"message": 5}]}),
            json!({"choices": [{"message": {"content": 5}}]}),
            json!({"choices": [{"message": {"content": [{"type": "image"}]}}]}),
            json!({"choices": [{"message": {"tool_calls": [{"id": "a"}]}}]}),
            json!({"choices": [{"message": {"tool_calls": [{"function": {"arguments": "{}"}}]}}]}),
            json!({"choices": [{"message": {"tool_calls": {"id": "a"}}}]}),
            json!([1, 2]),
            json!("text"),
        ];
        for case in cases {
            assert!(matches!(parse(case.clone()), Err(ProviderError::Malformed { .. })), "{case}");
        }
        for raw in ["", "not json", "{\"choices\": [", "\u{0}", "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["] {
            assert!(matches!(parse_response(raw.as_bytes()), Err(ProviderError::Malformed { .. })), "{raw:?}");
        }
        let deep = "[".repeat(100_000);
        assert!(matches!(parse_response(deep.as_bytes()), Err(ProviderError::Malformed { .. })));
    }

    #[test]
    fn encodes_the_protocol() {
        let request = ChatRequest {
            purpose: Purpose::Planner,
            tier: Tier::Flash,
            messages: vec![
                Message::system("[creditgraph:planner] plan"),
                Message::assistant(
                    None,
                    vec![ToolCall { id: "c1".into(), name: "code_execute".into(), arguments: "{}".into() }],
                ),
                Message::tool("c1", "4"),
            ],
            tools: vec![ToolSpec { name: "t".into(), description: "d".into(), parameters: json!({"type": "object"}) }],
            response_format: Some(JsonSchemaFormat { name: "plan".into(), schema: json!({"type": "object"}) }),
        };
        let body: Value = serde_json::from_slice(&encode_request(&request, "m", false).unwrap()).unwrap();
        assert_eq!(
            body,
            json!({
                "model": "m",
                "messages": [
                    {"role": "system", "content": "[creditgraph:planner] plan"},
                    {"role": "assistant", "content": null,
                     "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "code_execute", "arguments": "{}"}}]},
                    {"role": "tool", "content": "4", "tool_call_id": "c1"},
                ],
                "tools": [{"type": "function", "function": {"name": "t", "description": "d", "parameters": {"type": "object"}}}],
                "response_format": {"type": "json_schema", "json_schema": {"name": "plan", "schema": {"type": "object"}, "strict": true}},
            })
        );
    }

    #[test]
    fn parses_usage_and_treats_a_partial_one_as_unknown() {
        let usage =
            |value: Value| parse(json!({"choices": [{"message": {"content": "x"}}], "usage": value})).unwrap().usage;
        assert_eq!(
            usage(json!({"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15})),
            Some(Usage { prompt_tokens: 12, completion_tokens: 3 })
        );
        assert_eq!(
            usage(json!({"prompt_tokens": 0, "completion_tokens": 0})),
            Some(Usage { prompt_tokens: 0, completion_tokens: 0 })
        );
        for unknown in [
            json!(null),
            json!({}),
            json!({"prompt_tokens": 12}),
            json!({"prompt_tokens": -1, "completion_tokens": 3}),
            json!({"prompt_tokens": 1.5, "completion_tokens": 3}),
            json!({"prompt_tokens": "12", "completion_tokens": "3"}),
            json!("lots"),
        ] {
            assert_eq!(usage(unknown.clone()), None, "{unknown}");
        }
        assert_eq!(parse(json!({"choices": [{"message": {"content": "x"}}]})).unwrap().usage, None);
    }

    /// Feeds `data` events to an assembly: the steps and the answer.
    fn assemble(events: &[Value]) -> (Vec<Step>, Result<ChatResponse, ProviderError>) {
        let mut assembly = StreamAssembly::default();
        let mut steps = Vec::new();
        for event in events {
            match assembly.push("message", &event.to_string()) {
                Ok(step) => steps.push(step),
                Err(error) => return (steps, Err(error)),
            }
        }
        (steps, assembly.finish())
    }

    fn chunk(delta: Value, finish_reason: Value) -> Value {
        json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]})
    }

    #[test]
    fn assembles_text_deltas_and_usage() {
        let (steps, answer) = assemble(&[
            chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            chunk(json!({"content": "The answer "}), Value::Null),
            chunk(json!({"content": [{"type": "text", "text": "is "}, {"text": "4"}]}), Value::Null),
            chunk(json!({"content": null}), Value::Null),
            chunk(json!({}), json!("stop")),
            json!({"choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 4}}),
        ]);
        assert_eq!(
            steps,
            [
                Step::Quiet,
                Step::Text("The answer ".into()),
                Step::Text("is 4".into()),
                Step::Quiet,
                Step::Quiet,
                Step::Quiet
            ]
        );
        assert_eq!(
            answer.unwrap(),
            ChatResponse {
                content: Some("The answer is 4".into()),
                tool_calls: Vec::new(),
                usage: Some(Usage { prompt_tokens: 20, completion_tokens: 4 }),
            }
        );
        let mut assembly = StreamAssembly::default();
        assert_eq!(assembly.push("message", "[DONE]").unwrap(), Step::Done);
        assert_eq!(assembly.push("message", " [DONE]\n").unwrap(), Step::Done);
    }

    #[test]
    fn an_answer_without_usage_or_text_has_none() {
        let (_, answer) =
            assemble(&[chunk(json!({"role": "assistant"}), Value::Null), chunk(json!({}), json!("stop"))]);
        assert_eq!(answer.unwrap(), ChatResponse { content: None, tool_calls: Vec::new(), usage: None });
        let (_, answer) = assemble(&[
            chunk(json!({"content": "a"}), Value::Null),
            json!({"choices": [], "usage": null}),
            json!({"choices": [], "usage": {"completion_tokens": 1}}),
        ]);
        assert_eq!(answer.unwrap().usage, None, "a partial usage is unknown");
        let (_, answer) = assemble(&[
            json!({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}),
            json!({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}),
        ]);
        assert_eq!(
            answer.unwrap().usage,
            Some(Usage { prompt_tokens: 5, completion_tokens: 2 }),
            "the last one counts"
        );
    }

    #[test]
    fn assembles_tool_calls_across_chunks_by_index() {
        let (steps, answer) = assemble(&[
            chunk(json!({"role": "assistant", "content": null}), Value::Null),
            chunk(
                json!({"tool_calls": [{"index": 0, "id": "a", "type": "function", "function": {"name": "code_execute", "arguments": ""}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "code_generate", "arguments": "{\"task\""}}]}),
                Value::Null,
            ),
            chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"code\":"}}]}), Value::Null),
            chunk(
                json!({"tool_calls": [{"index": 1, "function": {"arguments": ":\"x\"}"}}, {"index": 0, "id": "ignored", "function": {"name": "ignored", "arguments": "\"1\"}"}}]}),
                Value::Null,
            ),
            chunk(
                json!({"tool_calls": [{"function": {"name": "code_execute", "arguments": {"code": "2"}}}]}),
                Value::Null,
            ),
            chunk(json!({}), json!("tool_calls")),
        ]);
        assert!(steps.iter().all(|step| *step == Step::Quiet), "{steps:?}");
        assert_eq!(
            answer.unwrap(),
            ChatResponse {
                content: None,
                tool_calls: vec![
                    ToolCall {
                        id: "a".into(),
                        name: "code_execute".into(),
                        arguments: "{\"code\":\"1\"}{\"code\":\"2\"}".into()
                    },
                    ToolCall { id: "b".into(), name: "code_generate".into(), arguments: "{\"task\":\"x\"}".into() },
                ],
                usage: None,
            }
        );
        let (_, answer) = assemble(&[chunk(json!({"tool_calls": [{"function": {"arguments": "{}"}}]}), Value::Null)]);
        assert_eq!(answer.unwrap_err(), malformed("tool call 0 has no function name"));
        let (_, answer) =
            assemble(&[chunk(json!({"tool_calls": [{"index": 2, "function": {"name": "t"}}]}), Value::Null)]);
        assert_eq!(
            answer.unwrap_err(),
            malformed("tool call 0 has no function name"),
            "a gap is a call without a name"
        );
    }

    #[test]
    fn the_finish_reason_marks_the_answer_complete() {
        let mut assembly = StreamAssembly::default();
        assembly.push("message", &chunk(json!({"content": "a"}), Value::Null).to_string()).unwrap();
        assert!(!assembly.finished());
        assembly.push("message", &chunk(json!({}), json!("length")).to_string()).unwrap();
        assert!(assembly.finished());
    }

    #[test]
    fn malformed_chunks_interrupt_the_stream() {
        let cases = [
            "",
            "not json",
            "{\"choices\": [",
            "[1, 2]",
            "{\"choices\": {}}",
            "{\"choices\": [{\"delta\": 5}]}",
            "{\"choices\": [{\"delta\": {\"content\": 5}}]}",
            "{\"choices\": [{\"delta\": {\"content\": [{\"type\": \"image\"}]}}]}",
            "{\"choices\": [{\"delta\": {\"tool_calls\": {\"index\": 0}}}]}",
            "{\"choices\": [{\"delta\": {\"tool_calls\": [{\"index\": 64}]}}]}",
            "{\"choices\": [{\"delta\": {\"tool_calls\": [{\"index\": 18446744073709551615}]}}]}",
            "{\"choices\": [{\"delta\": {\"tool_calls\": [{\"index\": -1}]}}]}",
            "{\"choices\": [{\"finish_reason\": 3}]}",
            "{\"error\": {\"message\": \"overloaded\", \"code\": 502}}",
        ];
        for case in cases {
            let mut assembly = StreamAssembly::default();
            let outcome = assembly.push("message", case);
            assert!(matches!(outcome, Err(ProviderError::Interrupted { .. })), "{case:?} gave {outcome:?}");
        }
        let mut assembly = StreamAssembly::default();
        let error = assembly.push("message", "{\"error\": {\"message\": \"overloaded\"}}").unwrap_err();
        assert_eq!(error, interrupted("the provider reported an error mid-stream: overloaded"));
        let error = assembly.push("error", "{\"choices\": []}").unwrap_err();
        assert_eq!(error, interrupted("the provider sent an error event"));
        let long = json!({"error": {"message": "x".repeat(10_000)}}).to_string();
        let Err(ProviderError::Interrupted { detail }) = assembly.push("message", &long) else {
            panic!("not interrupted")
        };
        assert!(detail.len() < 300, "{}", detail.len());
    }

    #[test]
    fn encodes_a_streamed_request() {
        let request = ChatRequest {
            purpose: Purpose::Explain,
            tier: Tier::Sonnet,
            messages: vec![Message::system("[creditgraph:explain] explain")],
            tools: Vec::new(),
            response_format: None,
        };
        let body: Value = serde_json::from_slice(&encode_request(&request, "m", true).unwrap()).unwrap();
        assert_eq!(
            body,
            json!({
                "model": "m",
                "messages": [{"role": "system", "content": "[creditgraph:explain] explain"}],
                "stream": true,
                "stream_options": {"include_usage": true},
            })
        );
    }

    #[test]
    fn recognises_an_event_stream() {
        let mut headers = HeaderMap::new();
        assert!(!is_event_stream(&headers));
        for (value, expected) in [
            ("text/event-stream", true),
            ("text/event-stream; charset=utf-8", true),
            ("Text/Event-Stream", true),
            ("application/json", false),
            ("text/event-streams", false),
        ] {
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(is_event_stream(&headers), expected, "{value}");
        }
    }

    #[test]
    fn endpoint_handles_trailing_slashes_and_queries() {
        assert_eq!(endpoint_of("http://h:1").unwrap().as_str(), "http://h:1/chat/completions");
        assert_eq!(endpoint_of("http://h:1/").unwrap().as_str(), "http://h:1/chat/completions");
        assert_eq!(endpoint_of("https://h/v1/").unwrap().as_str(), "https://h/v1/chat/completions");
        assert_eq!(endpoint_of("https://h/v1//").unwrap().as_str(), "https://h/v1/chat/completions");
        assert_eq!(endpoint_of("https://h/v1?x=1").unwrap().as_str(), "https://h/v1/chat/completions?x=1");
        for bad in ["", "h", "ftp://h/", "http://", "mailto:a@b", "http://h/#x", "data:text/plain,x"] {
            assert!(endpoint_of(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_never_overflows() {
        let mut config = OpenAiConfig::new("http://127.0.0.1:9");
        config.retry_backoff_ms = 200;
        let provider = OpenAiProvider::new(config.clone()).unwrap();
        for _ in 0..50 {
            let first = provider.backoff(0);
            assert!((Duration::from_millis(100)..=Duration::from_millis(200)).contains(&first), "{first:?}");
            let third = provider.backoff(2);
            assert!((Duration::from_millis(400)..=Duration::from_millis(800)).contains(&third), "{third:?}");
        }
        config.retry_backoff_ms = u64::MAX;
        let provider = OpenAiProvider::new(config).unwrap();
        for retry in [0, 1, 63, 64, 1000, u32::MAX] {
            assert!(provider.backoff(retry) <= Duration::from_millis(RETRY_BACKOFF_MS_MAX));
        }
    }

    #[test]
    fn retry_after_is_read_in_seconds_and_capped() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after_of(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("2"));
        assert_eq!(retry_after_of(&headers), Some(Duration::from_secs(2)));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("3600"));
        assert_eq!(retry_after_of(&headers), Some(Duration::from_secs(RETRY_AFTER_SECONDS_MAX)));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"));
        assert_eq!(retry_after_of(&headers), None);
        headers.insert(RETRY_AFTER, HeaderValue::from_static("-1"));
        assert_eq!(retry_after_of(&headers), None);
    }
}
