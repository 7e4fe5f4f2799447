//! Test doubles for the engine's ports, starting with a fake LLM provider.
//!
//! Why a real server rather than a mock of the [`Provider`](crate::provider::Provider) trait:
//! the engine's tests then exercise the same HTTP client, wire format, timeouts and retries that
//! production uses, and a script that speaks the protocol documents it. [`FakeProvider`] is an
//! OpenAI-compatible `POST /chat/completions` on `127.0.0.1`, which records every request and
//! answers from a per-purpose script. A purpose with nothing scripted is answered with HTTP 500
//! naming it, so a test that forgot a reply fails loudly instead of hanging.
//!
//! It is compiled into the library behind the `testing` feature (not `#[cfg(test)]`), so that
//! integration tests, other crates' tests and the benchmark and fault-injection harnesses can use
//! it, while the production binary carries neither it nor its HTTP server (`axum`). [`Gate`]
//! lets a test hold a scripted reply until it says so.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::provider::openai::{OpenAiConfig, OpenAiModels, OpenAiProvider};
use crate::provider::Purpose;

/// The API key in [`FakeProvider::config`]; requests carry `Authorization: Bearer FAKE_API_KEY`.
pub const FAKE_API_KEY: &str = "creditgraph-fake-key";
/// The largest request body the fake accepts.
pub const FAKE_REQUEST_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The model names of [`FakeProvider::config`], distinct per tier so tests can see the mapping.
pub fn fake_models() -> OpenAiModels {
    OpenAiModels { flash: "fake-flash".to_owned(), sonnet: "fake-sonnet".to_owned(), opus: "fake-opus".to_owned() }
}

/// What the fake answers to one request.
#[derive(Clone, Debug, PartialEq)]
pub enum FakeReply {
    /// A completion whose assistant content is this text.
    Text(String),
    /// A completion whose assistant content is this JSON as text (router and planner answers).
    Json(Value),
    /// A completion with these tool calls `(name, raw arguments text)`, no content; the call ids
    /// are generated (`call_<request>_<index>`). The arguments are sent as given, even malformed.
    ToolCalls(Vec<(String, String)>),
    /// This HTTP status with an OpenAI-style JSON error body.
    Status(u16),
    /// The inner reply, after this delay (for timeouts and cancellation).
    Delay(Duration, Box<FakeReply>),
    /// A 200 answer with exactly this body, which need not be JSON.
    Raw(String),
    /// No answer at all; the client's timeout must fire.
    Hang,
    /// The inner reply with these extra response headers (e.g. `Retry-After`).
    WithHeaders(Vec<(String, String)>, Box<FakeReply>),
    /// The inner reply once the gate is open: the test decides when the call returns.
    Gated(Gate, Box<FakeReply>),
}

/// A gate that scripted replies (and other test doubles) wait at until the test opens it: how a
/// test holds a run at an exact point, and lets it go on, without sleeping. Clones share the
/// gate; once open it stays open.
#[derive(Clone, Debug, Default)]
pub struct Gate {
    open: CancellationToken,
    /// Who this gate is, for `PartialEq` (clones are the same gate).
    identity: Arc<()>,
}

impl Gate {
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Lets every waiter through, now and later.
    pub fn open(&self) {
        self.open.cancel();
    }

    pub fn is_open(&self) -> bool {
        self.open.is_cancelled()
    }

    /// Returns once the gate is open.
    pub async fn passed(&self) {
        self.open.cancelled().await;
    }
}

impl PartialEq for Gate {
    fn eq(&self, other: &Gate) -> bool {
        Arc::ptr_eq(&self.identity, &other.identity)
    }
}

impl FakeReply {
    pub fn text(text: impl Into<String>) -> FakeReply {
        FakeReply::Text(text.into())
    }

    /// The router's answer: `{"route": "general_chat"}` when `general`, else `"math_task"`.
    pub fn route(general: bool) -> FakeReply {
        FakeReply::Json(json!({"route": if general { "general_chat" } else { "math_task" }}))
    }

    /// The planner's answer.
    pub fn plan(steps: &[&str], difficulty: &str, explanation_mode: &str, use_page: bool) -> FakeReply {
        FakeReply::Json(json!({
            "steps": steps,
            "difficulty": difficulty,
            "explanation_mode": explanation_mode,
            "use_page": use_page,
        }))
    }

    /// A `code_generate` answer: the code in a fenced ```python block, with a line of prose.
    pub fn code_generate(code: &str) -> FakeReply {
        FakeReply::Text(format!("Here is the code:\n\n```python\n{code}\n```\n"))
    }

    /// A solver turn asking to run `code`: one `code_execute {"code": …}` tool call.
    pub fn execute(code: &str) -> FakeReply {
        FakeReply::ToolCalls(vec![("code_execute".to_owned(), json!({"code": code}).to_string())])
    }

    /// A solver turn asking for code: one `code_generate {"task": …}` tool call.
    pub fn generate(task: &str) -> FakeReply {
        FakeReply::ToolCalls(vec![("code_generate".to_owned(), json!({"task": task}).to_string())])
    }

    /// One tool call with these raw arguments (which may be malformed on purpose).
    pub fn tool_call(name: &str, arguments: &str) -> FakeReply {
        FakeReply::ToolCalls(vec![(name.to_owned(), arguments.to_owned())])
    }

    /// An error status with `Retry-After: seconds`.
    pub fn status_retry_after(status: u16, seconds: u64) -> FakeReply {
        FakeReply::Status(status).with_header("retry-after", &seconds.to_string())
    }

    /// This reply, after `delay`.
    pub fn after(self, delay: Duration) -> FakeReply {
        FakeReply::Delay(delay, Box::new(self))
    }

    /// This reply once `gate` is open.
    pub fn gated(self, gate: &Gate) -> FakeReply {
        FakeReply::Gated(gate.clone(), Box::new(self))
    }

    /// This reply with one more response header.
    pub fn with_header(self, name: &str, value: &str) -> FakeReply {
        FakeReply::WithHeaders(vec![(name.to_owned(), value.to_owned())], Box::new(self))
    }
}

/// One request the fake received.
#[derive(Clone, Debug, PartialEq)]
pub struct FakeRequest {
    /// From the tag opening the first system message; `None` when there is none (answered 400).
    pub purpose: Option<Purpose>,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    /// The parsed body; a body that is not JSON is kept as a JSON string of its text.
    pub body: Value,
}

impl FakeRequest {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(key, _)| *key == name).map(|(_, value)| value.as_str())
    }

    pub fn model(&self) -> Option<&str> {
        self.body.get("model").and_then(Value::as_str)
    }

    pub fn messages(&self) -> &[Value] {
        self.body.get("messages").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The names of the offered tools, in order.
    pub fn tool_names(&self) -> Vec<&str> {
        let tools = self.body.get("tools").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
        tools.iter().filter_map(|tool| tool.pointer("/function/name").and_then(Value::as_str)).collect()
    }

    /// `response_format.json_schema.name`, when the request asks for JSON output.
    pub fn schema_name(&self) -> Option<&str> {
        self.body.pointer("/response_format/json_schema/name").and_then(Value::as_str)
    }
}

#[derive(Default)]
struct Script {
    queued: HashMap<Purpose, VecDeque<FakeReply>>,
    defaults: HashMap<Purpose, FakeReply>,
    received: Vec<FakeRequest>,
}

impl Script {
    fn next_reply(&mut self, purpose: Purpose) -> Option<FakeReply> {
        let queued = self.queued.get_mut(&purpose).and_then(VecDeque::pop_front);
        queued.or_else(|| self.defaults.get(&purpose).cloned())
    }
}

type SharedScript = Arc<Mutex<Script>>;

/// A panic in a test thread must not turn every later look at the script into another panic.
fn lock(script: &SharedScript) -> MutexGuard<'_, Script> {
    script.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Stops accepting connections when the last clone of the [`FakeProvider`] is dropped.
struct Server {
    script: SharedScript,
    address: SocketAddr,
    task: tokio::task::AbortHandle,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A scripted OpenAI-compatible provider on loopback. Clones share the server and the script.
#[derive(Clone)]
pub struct FakeProvider {
    server: Arc<Server>,
}

impl std::fmt::Debug for FakeProvider {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("FakeProvider").field("address", &self.server.address).finish_non_exhaustive()
    }
}

impl FakeProvider {
    /// Binds `127.0.0.1:0` and serves on the current tokio runtime.
    pub async fn start() -> FakeProvider {
        let script = SharedScript::default();
        let router = Router::new()
            .route("/chat/completions", post(chat_completions))
            .layer(DefaultBodyLimit::max(FAKE_REQUEST_BYTES_MAX))
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("the fake provider binds a loopback port");
        let address = listener.local_addr().expect("a bound listener has an address");
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                eprintln!("the fake provider stopped: {error}");
            }
        });
        FakeProvider { server: Arc::new(Server { script, address, task: task.abort_handle() }) }
    }

    /// `http://127.0.0.1:PORT`; the client appends `/chat/completions`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.server.address)
    }

    /// A client configuration pointing here: [`FAKE_API_KEY`], [`fake_models`], a 5 s timeout,
    /// 2 retries with a 10 ms back-off.
    pub fn config(&self) -> OpenAiConfig {
        let mut config = OpenAiConfig::new(self.base_url());
        config.api_key = Some(FAKE_API_KEY.to_owned());
        config.models = fake_models();
        config.timeout_seconds = 5;
        config.connect_timeout_seconds = 1;
        config.retries_max = 2;
        config.retry_backoff_ms = 10;
        config
    }

    /// An [`OpenAiProvider`] built from [`FakeProvider::config`].
    pub fn provider(&self) -> OpenAiProvider {
        OpenAiProvider::new(self.config()).expect("the fake provider's configuration is valid")
    }

    /// Queues `reply` for a later request of `purpose` (first in, first out per purpose).
    pub fn on(&self, purpose: Purpose, reply: FakeReply) {
        lock(&self.server.script).queued.entry(purpose).or_default().push_back(reply);
    }

    /// Queues several replies for `purpose`, in order.
    pub fn on_each(&self, purpose: Purpose, replies: impl IntoIterator<Item = FakeReply>) {
        lock(&self.server.script).queued.entry(purpose).or_default().extend(replies);
    }

    /// The reply for `purpose` whenever its queue is empty (replaces an earlier default).
    pub fn on_default(&self, purpose: Purpose, reply: FakeReply) {
        lock(&self.server.script).defaults.insert(purpose, reply);
    }

    /// How many queued replies for `purpose` have not been used yet.
    pub fn pending(&self, purpose: Purpose) -> usize {
        lock(&self.server.script).queued.get(&purpose).map_or(0, VecDeque::len)
    }

    /// Every request body received, in order (including those answered with an error).
    pub fn requests(&self) -> Vec<Value> {
        lock(&self.server.script).received.iter().map(|request| request.body.clone()).collect()
    }

    /// Every request received, with its purpose and headers, in order.
    pub fn recorded(&self) -> Vec<FakeRequest> {
        lock(&self.server.script).received.clone()
    }

    /// The requests of one purpose, in order.
    pub fn recorded_for(&self, purpose: Purpose) -> Vec<FakeRequest> {
        let script = lock(&self.server.script);
        script.received.iter().filter(|request| request.purpose == Some(purpose)).cloned().collect()
    }

    /// How many requests of `purpose` were received (answered or not).
    pub fn count(&self, purpose: Purpose) -> usize {
        lock(&self.server.script).received.iter().filter(|request| request.purpose == Some(purpose)).count()
    }
}

/// The purpose tag opening the first system message, if any.
fn purpose_of(body: &Value) -> Option<Purpose> {
    let messages = body.get("messages")?.as_array()?;
    let system = messages.iter().find(|message| message.get("role").and_then(Value::as_str) == Some("system"))?;
    let content = system.get("content")?.as_str()?;
    Purpose::ALL.into_iter().find(|purpose| content.starts_with(&purpose.tag()))
}

fn error_response(status: StatusCode, message: String) -> Response {
    let body = json!({"error": {"message": message, "type": "fake_provider", "code": status.as_u16()}});
    (status, Json(body)).into_response()
}

async fn chat_completions(State(script): State<SharedScript>, headers: HeaderMap, body: Bytes) -> Response {
    let parsed = serde_json::from_slice::<Value>(&body).ok();
    let purpose = parsed.as_ref().and_then(purpose_of);
    let model = parsed.as_ref().and_then(|body| body.get("model")).and_then(Value::as_str).unwrap_or("").to_owned();
    let request = FakeRequest {
        purpose,
        headers: headers
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()))
            .collect(),
        body: parsed.unwrap_or_else(|| Value::String(String::from_utf8_lossy(&body).into_owned())),
    };
    let (reply, sequence) = {
        let mut script = lock(&script);
        script.received.push(request);
        let sequence = script.received.len();
        (purpose.and_then(|purpose| script.next_reply(purpose)), sequence)
    };
    let Some(purpose) = purpose else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "the first system message does not start with a [creditgraph:<purpose>] tag".to_owned(),
        );
    };
    match reply {
        Some(reply) => render(reply, &model, sequence).await,
        None => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the fake provider has no scripted reply for purpose {}", purpose.as_str()),
        ),
    }
}

async fn render(mut reply: FakeReply, model: &str, sequence: usize) -> Response {
    let mut extra_headers = Vec::new();
    let mut response = loop {
        reply = match reply {
            FakeReply::Delay(delay, inner) => {
                // The scripted delay itself: timeouts and cancellation are what such scripts test.
                tokio::time::sleep(delay).await;
                *inner
            }
            FakeReply::Gated(gate, inner) => {
                gate.passed().await;
                *inner
            }
            FakeReply::WithHeaders(headers, inner) => {
                extra_headers.extend(headers);
                *inner
            }
            FakeReply::Hang => std::future::pending::<FakeReply>().await,
            FakeReply::Text(text) => break completion(model, sequence, json!(text), None),
            FakeReply::Json(value) => break completion(model, sequence, json!(value.to_string()), None),
            FakeReply::ToolCalls(calls) => {
                let calls = calls
                    .into_iter()
                    .enumerate()
                    .map(|(index, (name, arguments))| {
                        json!({
                            "id": format!("call_{sequence}_{index}"),
                            "type": "function",
                            "function": {"name": name, "arguments": arguments},
                        })
                    })
                    .collect();
                break completion(model, sequence, Value::Null, Some(calls));
            }
            FakeReply::Status(status) => match StatusCode::from_u16(status) {
                Ok(code) => break error_response(code, format!("scripted status {status}")),
                Err(_) => {
                    break error_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("the script asks for status {status}, which HTTP does not have"),
                    )
                }
            },
            FakeReply::Raw(body) => {
                break ([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response()
            }
        };
    };
    for (name, value) in extra_headers {
        match (HeaderName::try_from(name.as_str()), HeaderValue::try_from(value.as_str())) {
            (Ok(name), Ok(value)) => {
                response.headers_mut().append(name, value);
            }
            _ => {
                return error_response(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the script asks for header {name:?}: {value:?}, which HTTP cannot carry"),
                )
            }
        }
    }
    response
}

fn completion(model: &str, sequence: usize, content: Value, tool_calls: Option<Vec<Value>>) -> Response {
    let finish_reason = if tool_calls.is_some() { "tool_calls" } else { "stop" };
    let mut message = json!({"role": "assistant", "content": content});
    if let Some(calls) = tool_calls {
        message["tool_calls"] = Value::Array(calls);
    }
    Json(json!({
        "id": format!("chatcmpl-fake-{sequence}"),
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }))
    .into_response()
}
