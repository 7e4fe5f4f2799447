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
//!
//! Streams: a request with `"stream": true` is answered `text/event-stream` in OpenAI's chunk
//! format (see [`FakeReply`] for how each reply is cut into chunks), ending with a usage chunk
//! and `data: [DONE]`. [`FakeReply::Chunks`] scripts a stream piece by piece, and can hold it at a
//! [`Gate`] mid-answer. While a stream waits, the fake sends an SSE comment (`: keep-alive`)
//! every [`FAKE_KEEP_ALIVE_INTERVAL_MS`] ms: a write to a connection the client closed fails, so
//! the fake notices a dropped request within a few of those intervals at worst (hyper usually
//! sees the connection close at once, and also while a scripted wait holds the headers back),
//! records the instant ([`FakeProvider::streams_dropped`]) and a test can await it
//! ([`FakeProvider::stream_dropped`]).
//!
//! Usage: every answer reports `usage` by one deterministic rule, [`fake_usage`], unless the
//! script says otherwise ([`FakeReply::NoUsage`], or a [`FakeReply::Chunks`] without a
//! [`FakeChunk::Usage`]).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::provider::openai::{OpenAiConfig, OpenAiModels, OpenAiProvider};
use crate::provider::{Purpose, Usage};

/// The API key in [`FakeProvider::config`]; requests carry `Authorization: Bearer FAKE_API_KEY`.
pub const FAKE_API_KEY: &str = "creditgraph-fake-key";
/// The largest request body the fake accepts.
pub const FAKE_REQUEST_BYTES_MAX: usize = 16 * 1024 * 1024;
/// How often a waiting stream sends `: keep-alive` (how soon a dropped request is noticed).
pub const FAKE_KEEP_ALIVE_INTERVAL_MS: u64 = 10;
/// Stream pieces buffered between the script and the connection.
const STREAM_BUFFER_PIECES: usize = 16;

/// The usage every fake answer reports (unless scripted otherwise): `prompt_tokens` = the request
/// body's bytes / 4 and `completion_tokens` = the answer's characters / 4 (its text; for tool
/// calls, their names and arguments), both rounded up. Not a tokenizer: a rule a test can
/// recompute ([`FakeRequest::body_bytes`]).
pub fn fake_usage(request_body_bytes: usize, completion_chars: usize) -> Usage {
    let tokens = |count: usize| u64::try_from(count.div_ceil(4)).expect("a usize fits in a u64");
    Usage { prompt_tokens: tokens(request_body_bytes), completion_tokens: tokens(completion_chars) }
}

/// The model names of [`FakeProvider::config`], distinct per tier so tests can see the mapping.
pub fn fake_models() -> OpenAiModels {
    OpenAiModels { flash: "fake-flash".to_owned(), sonnet: "fake-sonnet".to_owned(), opus: "fake-opus".to_owned() }
}

/// What the fake answers to one request.
///
/// Streamed (the request says `"stream": true`), the answers are cut into chunks: `Text` one
/// chunk per word (after a role-only first chunk), `Json` its text in two halves, `ToolCalls`
/// each call's name with the first half of its arguments and then the second half; then a
/// `finish_reason` chunk, the usage chunk (`choices: []`) and `data: [DONE]`.
#[derive(Clone, Debug, PartialEq)]
pub enum FakeReply {
    /// A completion whose assistant content is this text.
    Text(String),
    /// A completion whose assistant content is this JSON as text (router and planner answers).
    Json(Value),
    /// A completion with these tool calls `(name, raw arguments text)`, no content; the call ids
    /// are generated (`call_<request>_<index>`). The arguments are sent as given, even malformed.
    ToolCalls(Vec<(String, String)>),
    /// A stream scripted piece by piece (the headers go out at once, the pieces in order).
    /// Unless it breaks or ends early, a `finish_reason: "stop"` chunk comes before the first
    /// usage chunk (or last), then `[DONE]`. Usage is sent only where a [`FakeChunk::Usage`] is.
    /// Asked without `"stream": true`, the same script answers one completion: the gates and
    /// delays are waited out, the texts joined, the usage taken from the `Usage` piece (none
    /// without one), `Raw` pieces left out; `Break` closes the connection mid-body.
    Chunks(Vec<FakeChunk>),
    /// The inner reply without `usage` (streamed: without the usage chunk): unknown usage.
    NoUsage(Box<FakeReply>),
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

/// One piece of a scripted stream ([`FakeReply::Chunks`]).
#[derive(Clone, Debug, PartialEq)]
pub enum FakeChunk {
    /// A chunk whose delta carries this text.
    Text(String),
    /// Waits until the gate is open before sending what follows: how a test holds the rest of
    /// an answer back (keep-alive comments go out meanwhile).
    Gate(Gate),
    /// Waits this long before sending what follows (keep-alive comments go out meanwhile).
    Delay(Duration),
    /// The usage chunk: `choices: []` and these counts.
    Usage { prompt_tokens: u64, completion_tokens: u64 },
    /// These bytes as they are, e.g. `"data: {not json\n\n"` or a chunk of another shape.
    Raw(String),
    /// Ends the body abruptly here: the connection is closed mid-body, no `[DONE]`.
    Break,
    /// Ends the body cleanly here, without a `finish_reason` or `[DONE]` (a stream cut short).
    End,
}

impl FakeChunk {
    pub fn text(text: impl Into<String>) -> FakeChunk {
        FakeChunk::Text(text.into())
    }
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

    /// This reply without usage (unknown usage), streamed or not.
    pub fn without_usage(self) -> FakeReply {
        FakeReply::NoUsage(Box::new(self))
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
    /// The body's length as received (what [`fake_usage`] counts).
    pub body_bytes: usize,
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

    /// Whether the request asked for a streamed answer (`"stream": true`).
    pub fn streams(&self) -> bool {
        self.body.get("stream").and_then(Value::as_bool) == Some(true)
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

/// What the server's handlers and the [`FakeProvider`] handles share.
struct Shared {
    script: Mutex<Script>,
    /// When each streamed answer was dropped by its client before it was finished, in order.
    dropped: watch::Sender<Vec<Instant>>,
}

type SharedScript = Arc<Shared>;

/// A panic in a test thread must not turn every later look at the script into another panic.
fn lock(shared: &Shared) -> MutexGuard<'_, Script> {
    shared.script.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
        let script = Arc::new(Shared { script: Mutex::default(), dropped: watch::Sender::new(Vec::new()) });
        let router = Router::new()
            .route("/chat/completions", post(chat_completions))
            .layer(DefaultBodyLimit::max(FAKE_REQUEST_BYTES_MAX))
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("the fake provider binds a loopback port");
        let address = listener.local_addr().expect("a bound listener has an address");
        // A streamed answer is many small writes: without TCP_NODELAY, Nagle's algorithm holds
        // each behind the client's delayed ACK (tens of milliseconds), which a real provider's
        // stream does not suffer and the time-to-first-token benchmark must not measure.
        let listener = axum::serve::ListenerExt::tap_io(listener, |stream: &mut tokio::net::TcpStream| {
            let _ = stream.set_nodelay(true);
        });
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

    /// When clients dropped streamed requests before their answer was finished, in order: a
    /// request that asked to stream counts from its arrival until its last piece was sent.
    pub fn streams_dropped(&self) -> Vec<Instant> {
        self.server.script.dropped.borrow().clone()
    }

    /// Resolves once a client has dropped a streamed request before its answer was finished, with
    /// the instant of the first such drop (at once when there was one already). A test asserts
    /// "the request to the provider was dropped within N ms of the cancel" by comparing it with
    /// the instant of its cancel.
    pub fn stream_dropped(&self) -> impl Future<Output = Instant> + Send + 'static {
        let shared = self.server.script.clone();
        async move {
            let mut dropped = shared.dropped.subscribe();
            let instants = dropped
                .wait_for(|instants| !instants.is_empty())
                .await
                .expect("the sender lives in `shared`, which this future holds");
            instants[0]
        }
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

async fn chat_completions(State(shared): State<SharedScript>, headers: HeaderMap, body: Bytes) -> Response {
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
        body_bytes: body.len(),
    };
    let streams = request.streams();
    let (reply, sequence) = {
        let mut script = lock(&shared);
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
    let Some(reply) = reply else {
        return error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the fake provider has no scripted reply for purpose {}", purpose.as_str()),
        );
    };
    // Armed from here: if this handler is dropped (the client went away during a scripted wait)
    // or the stream's body is dropped before its last piece, the drop is recorded.
    let mut watch = streams.then(|| DropWatch { shared: shared.clone(), armed: true });
    let answer = Answer { model, sequence, prompt_bytes: body.len(), usage: true };
    let response = render(reply, answer, &mut watch).await;
    if let Some(watch) = watch {
        watch.disarm();
    }
    response
}

/// Records the instant it is dropped while armed: a streamed answer its client did not wait for.
struct DropWatch {
    shared: SharedScript,
    armed: bool,
}

impl DropWatch {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for DropWatch {
    fn drop(&mut self) {
        if self.armed {
            let now = Instant::now();
            self.shared.dropped.send_modify(|instants| instants.push(now));
        }
    }
}

/// What every answer to one request shares.
struct Answer {
    model: String,
    /// The request's number, from 1: chunk and call ids are made from it.
    sequence: usize,
    prompt_bytes: usize,
    /// Whether the answer reports usage ([`FakeReply::NoUsage`] turns it off).
    usage: bool,
}

impl Answer {
    fn usage(&self, completion_chars: usize) -> Option<Usage> {
        self.usage.then(|| fake_usage(self.prompt_bytes, completion_chars))
    }
}

/// `watch` is `Some` when the request asked to stream; a streamed answer takes it along.
async fn render(mut reply: FakeReply, mut answer: Answer, watch: &mut Option<DropWatch>) -> Response {
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
            FakeReply::NoUsage(inner) => {
                answer.usage = false;
                *inner
            }
            FakeReply::Hang => std::future::pending::<FakeReply>().await,
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
            answer_reply @ (FakeReply::Text(_)
            | FakeReply::Json(_)
            | FakeReply::ToolCalls(_)
            | FakeReply::Chunks(_)) => match watch.take() {
                Some(watch) => break event_stream(stream_pieces(answer_reply, &answer), watch),
                None => break completion_of(answer_reply, &answer).await,
            },
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

/// One non-streamed answer: `Text`, `Json`, `ToolCalls` or `Chunks`.
async fn completion_of(reply: FakeReply, answer: &Answer) -> Response {
    match reply {
        FakeReply::Text(text) => completion(answer, json!(text), None, answer.usage(text.chars().count())),
        FakeReply::Json(value) => {
            let text = value.to_string();
            completion(answer, json!(text), None, answer.usage(text.chars().count()))
        }
        FakeReply::ToolCalls(calls) => {
            let chars = calls.iter().map(|(name, arguments)| name.chars().count() + arguments.chars().count()).sum();
            let calls = calls
                .into_iter()
                .enumerate()
                .map(|(index, (name, arguments))| {
                    json!({
                        "id": format!("call_{}_{index}", answer.sequence),
                        "type": "function",
                        "function": {"name": name, "arguments": arguments},
                    })
                })
                .collect();
            completion(answer, Value::Null, Some(calls), answer.usage(chars))
        }
        FakeReply::Chunks(chunks) => {
            let mut text = String::new();
            let mut usage = None;
            for chunk in chunks {
                match chunk {
                    FakeChunk::Text(piece) => text.push_str(&piece),
                    FakeChunk::Gate(gate) => gate.passed().await,
                    // The scripted delay itself: what such scripts test is the wait.
                    FakeChunk::Delay(delay) => tokio::time::sleep(delay).await,
                    FakeChunk::Usage { prompt_tokens, completion_tokens } => {
                        usage = Some(Usage { prompt_tokens, completion_tokens });
                    }
                    FakeChunk::Raw(_) => {}
                    FakeChunk::End => break,
                    FakeChunk::Break => {
                        let broken = futures::stream::once(async { Err::<Bytes, _>(std::io::Error::other("break")) });
                        return ([(axum::http::header::CONTENT_TYPE, "application/json")], Body::from_stream(broken))
                            .into_response();
                    }
                }
            }
            completion(answer, json!(text), None, usage.filter(|_| answer.usage))
        }
        other => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the fake provider cannot answer {other:?} as one completion"),
        ),
    }
}

fn completion(answer: &Answer, content: Value, tool_calls: Option<Vec<Value>>, usage: Option<Usage>) -> Response {
    let finish_reason = if tool_calls.is_some() { "tool_calls" } else { "stop" };
    let mut message = json!({"role": "assistant", "content": content});
    if let Some(calls) = tool_calls {
        message["tool_calls"] = Value::Array(calls);
    }
    let mut body = json!({
        "id": format!("chatcmpl-fake-{}", answer.sequence),
        "object": "chat.completion",
        "created": 0,
        "model": answer.model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
    });
    if let Some(usage) = usage {
        body["usage"] = usage_json(usage);
    }
    Json(body).into_response()
}

fn usage_json(usage: Usage) -> Value {
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens.saturating_add(usage.completion_tokens),
    })
}

/// What a streamed answer's body is made of, in order.
enum Piece {
    /// Bytes of the body (whole SSE events).
    Bytes(String),
    Gate(Gate),
    Delay(Duration),
    Break,
    End,
}

/// `data: <chunk>` with this delta and finish reason.
fn chunk_piece(answer: &Answer, delta: Value, finish_reason: Option<&str>) -> Piece {
    let chunk = json!({
        "id": format!("chatcmpl-fake-{}", answer.sequence),
        "object": "chat.completion.chunk",
        "created": 0,
        "model": answer.model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    });
    Piece::Bytes(format!("data: {chunk}\n\n"))
}

/// The last chunk of a stream asked with `include_usage`: no choices, the usage.
fn usage_piece(answer: &Answer, usage: Usage) -> Piece {
    let chunk = json!({
        "id": format!("chatcmpl-fake-{}", answer.sequence),
        "object": "chat.completion.chunk",
        "created": 0,
        "model": answer.model,
        "choices": [],
        "usage": usage_json(usage),
    });
    Piece::Bytes(format!("data: {chunk}\n\n"))
}

fn done_piece() -> Piece {
    Piece::Bytes("data: [DONE]\n\n".to_owned())
}

/// The text cut in two at a character boundary (the second half may be empty).
fn halves(text: &str) -> (&str, &str) {
    let middle = text.char_indices().nth(text.chars().count() / 2).map_or(text.len(), |(index, _)| index);
    text.split_at(middle)
}

/// A streamed answer of `Text`, `Json`, `ToolCalls` or `Chunks`, as pieces (see [`FakeReply`]).
fn stream_pieces(reply: FakeReply, answer: &Answer) -> Vec<Piece> {
    let text_pieces = |pieces: Vec<&str>, chars: usize| {
        let mut out = vec![chunk_piece(answer, json!({"role": "assistant", "content": ""}), None)];
        out.extend(pieces.into_iter().map(|piece| chunk_piece(answer, json!({"content": piece}), None)));
        out.push(chunk_piece(answer, json!({}), Some("stop")));
        out.extend(answer.usage(chars).map(|usage| usage_piece(answer, usage)));
        out.push(done_piece());
        out
    };
    match reply {
        FakeReply::Text(text) => text_pieces(text.split_inclusive(' ').collect(), text.chars().count()),
        FakeReply::Json(value) => {
            let text = value.to_string();
            let (first, second) = halves(&text);
            text_pieces(vec![first, second], text.chars().count())
        }
        FakeReply::ToolCalls(calls) => {
            let mut out = vec![chunk_piece(answer, json!({"role": "assistant", "content": null}), None)];
            let mut chars = 0;
            for (index, (name, arguments)) in calls.iter().enumerate() {
                chars += name.chars().count() + arguments.chars().count();
                let (first, second) = halves(arguments);
                let opening = json!({"tool_calls": [{
                    "index": index,
                    "id": format!("call_{}_{index}", answer.sequence),
                    "type": "function",
                    "function": {"name": name, "arguments": first},
                }]});
                out.push(chunk_piece(answer, opening, None));
                let rest = json!({"tool_calls": [{"index": index, "function": {"arguments": second}}]});
                out.push(chunk_piece(answer, rest, None));
            }
            out.push(chunk_piece(answer, json!({}), Some("tool_calls")));
            out.extend(answer.usage(chars).map(|usage| usage_piece(answer, usage)));
            out.push(done_piece());
            out
        }
        FakeReply::Chunks(chunks) => {
            let mut out = Vec::with_capacity(chunks.len() + 2);
            let mut finished = false;
            for chunk in chunks {
                match chunk {
                    FakeChunk::Text(text) => out.push(chunk_piece(answer, json!({"content": text}), None)),
                    FakeChunk::Gate(gate) => out.push(Piece::Gate(gate)),
                    FakeChunk::Delay(delay) => out.push(Piece::Delay(delay)),
                    FakeChunk::Usage { prompt_tokens, completion_tokens } => {
                        if !finished {
                            out.push(chunk_piece(answer, json!({}), Some("stop")));
                            finished = true;
                        }
                        if answer.usage {
                            out.push(usage_piece(answer, Usage { prompt_tokens, completion_tokens }));
                        }
                    }
                    FakeChunk::Raw(bytes) => out.push(Piece::Bytes(bytes)),
                    FakeChunk::Break => {
                        out.push(Piece::Break);
                        return out;
                    }
                    FakeChunk::End => {
                        out.push(Piece::End);
                        return out;
                    }
                }
            }
            if !finished {
                out.push(chunk_piece(answer, json!({}), Some("stop")));
            }
            out.push(done_piece());
            out
        }
        other => vec![Piece::Bytes(format!(": the fake provider cannot stream {other:?}\n\n")), Piece::Break],
    }
}

type BodyItem = Result<Bytes, std::io::Error>;

/// A `text/event-stream` answer whose body a task writes piece by piece; the task owns `watch`
/// and disarms it once the last piece is out (or the script ends the body on purpose).
fn event_stream(pieces: Vec<Piece>, watch: DropWatch) -> Response {
    let (sender, receiver) = mpsc::channel::<BodyItem>(STREAM_BUFFER_PIECES);
    let (hungry_sender, hungry) = watch::channel(0_usize);
    tokio::spawn(async move {
        let mut writer = BodyWriter { sender, sent: 0, hungry };
        if writer.send_pieces(pieces).await {
            watch.disarm();
        }
        // Otherwise `watch` is dropped armed here: the client dropped the stream.
    });
    // Each time hyper asks for the next item and none is waiting, it has taken (and will write
    // out before it asks again) every item so far: `hungry` says how many.
    let body =
        futures::stream::unfold((receiver, hungry_sender, 0_usize), |(mut receiver, hungry, taken)| async move {
            if receiver.is_empty() {
                hungry.send_replace(taken);
            }
            let item = receiver.recv().await?;
            Some((item, (receiver, hungry, taken + 1)))
        });
    let headers =
        [(axum::http::header::CONTENT_TYPE, "text/event-stream"), (axum::http::header::CACHE_CONTROL, "no-cache")];
    (headers, Body::from_stream(body)).into_response()
}

/// The writing end of a streamed answer's body.
struct BodyWriter {
    sender: mpsc::Sender<BodyItem>,
    /// Items sent so far.
    sent: usize,
    /// Items the body had taken when it last asked for more and found none.
    hungry: watch::Receiver<usize>,
}

impl BodyWriter {
    /// Sends the pieces; false as soon as the body is gone (the client dropped the request).
    async fn send_pieces(&mut self, pieces: Vec<Piece>) -> bool {
        for piece in pieces {
            let alive = match piece {
                Piece::Bytes(bytes) => self.send(Ok(Bytes::from(bytes))).await,
                Piece::Gate(gate) => self.keep_alive_until(gate.passed()).await,
                // The scripted delay itself: what such scripts test is the wait.
                Piece::Delay(delay) => self.keep_alive_until(tokio::time::sleep(delay)).await,
                Piece::Break => {
                    // An error from the body makes hyper close the connection mid-body, dropping
                    // what it has not written yet: first let it take and write out the rest.
                    let sent = self.sent;
                    if self.hungry.wait_for(|taken| *taken >= sent).await.is_err() {
                        return false;
                    }
                    let _ = self.send(Err(std::io::Error::other("the script breaks the stream here"))).await;
                    return true;
                }
                Piece::End => return true,
            };
            if !alive {
                return false;
            }
        }
        true
    }

    async fn send(&mut self, item: BodyItem) -> bool {
        let sent = self.sender.send(item).await.is_ok();
        self.sent += usize::from(sent);
        sent
    }

    /// Waits for `until`, sending `: keep-alive` every [`FAKE_KEEP_ALIVE_INTERVAL_MS`] meanwhile:
    /// a write to a closed connection fails, hyper then drops the body and the sender sees it
    /// closed. False when the body is gone.
    async fn keep_alive_until(&mut self, until: impl Future<Output = ()>) -> bool {
        let mut until = std::pin::pin!(until);
        let mut ticks = tokio::time::interval(Duration::from_millis(FAKE_KEEP_ALIVE_INTERVAL_MS));
        loop {
            tokio::select! {
                () = &mut until => return true,
                () = self.sender.closed() => return false,
                _ = ticks.tick() => match self.sender.try_send(Ok(Bytes::from_static(b": keep-alive\n\n"))) {
                    Ok(()) => self.sent += 1,
                    // A full buffer means the client is not reading yet; the next tick tries again.
                    Err(mpsc::error::TrySendError::Full(_)) => {}
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                },
            }
        }
    }
}
