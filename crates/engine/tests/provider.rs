//! The OpenAI-compatible client against the fake provider, over real loopback HTTP.
//!
//! Why over a socket: the wire format, the headers, the timeouts and the retry loop are what can
//! break between the engine and a real provider, and only a real exchange exercises them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use engine::provider::openai::{OpenAiConfig, OpenAiConfigError, OpenAiProvider};
use engine::provider::{
    ChatRequest, ChatResponse, JsonSchemaFormat, Message, Provider, ProviderError, Purpose, ToolCall, ToolSpec,
};
use engine::testing::{FakeProvider, FakeReply, FAKE_API_KEY};
use pricing::Tier;
use serde_json::{json, Value};

fn request(purpose: Purpose, tier: Tier) -> ChatRequest {
    ChatRequest {
        purpose,
        tier,
        messages: vec![Message::system(format!("{} You help.", purpose.tag())), Message::user("What is 2 + 2?")],
        tools: Vec::new(),
        response_format: None,
    }
}

fn solver_request(tier: Tier) -> ChatRequest {
    let mut request = request(Purpose::Solver, tier);
    request.messages.push(Message::assistant(
        Some("Let me compute.".to_owned()),
        vec![ToolCall {
            id: "call_a".to_owned(),
            name: "code_execute".to_owned(),
            arguments: "{\"code\":\"print(4)\"}".to_owned(),
        }],
    ));
    request.messages.push(Message::tool("call_a", "4"));
    request.tools = vec![
        ToolSpec {
            name: "code_generate".to_owned(),
            description: "Write Python for a task.".to_owned(),
            parameters: json!({"type": "object", "properties": {"task": {"type": "string"}}, "required": ["task"]}),
        },
        ToolSpec {
            name: "code_execute".to_owned(),
            description: "Run Python.".to_owned(),
            parameters: json!({"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}),
        },
    ];
    request
}

fn router_request() -> ChatRequest {
    let mut request = request(Purpose::Router, Tier::Flash);
    request.response_format = Some(JsonSchemaFormat {
        name: "route".to_owned(),
        schema: json!({"type": "object", "properties": {"route": {"enum": ["general_chat", "math_task"]}}}),
    });
    request
}

fn text(content: &str) -> ChatResponse {
    ChatResponse { content: Some(content.to_owned()), tool_calls: Vec::new(), usage: None }
}

/// The answer without its usage: these tests are about content and calls (the fake's usage is
/// tested in `provider_stream.rs`).
fn answer(response: ChatResponse) -> ChatResponse {
    ChatResponse { usage: None, ..response }
}

fn provider_with(fake: &FakeProvider, change: impl FnOnce(&mut OpenAiConfig)) -> OpenAiProvider {
    let mut config = fake.config();
    change(&mut config);
    OpenAiProvider::new(config).unwrap()
}

#[tokio::test]
async fn solver_request_has_the_protocol_shape() {
    let fake = FakeProvider::start().await;
    fake.on(Purpose::Solver, FakeReply::text("4"));
    let request = solver_request(Tier::Sonnet);

    let response = fake.provider().complete(request).await.unwrap();

    assert_eq!(answer(response), text("4"));
    let recorded = fake.recorded();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].purpose, Some(Purpose::Solver));
    assert_eq!(recorded[0].header("authorization"), Some(format!("Bearer {FAKE_API_KEY}").as_str()));
    assert_eq!(recorded[0].header("content-type"), Some("application/json"));
    assert_eq!(
        recorded[0].body,
        json!({
            "model": "fake-sonnet",
            "messages": [
                {"role": "system", "content": "[creditgraph:solver] You help."},
                {"role": "user", "content": "What is 2 + 2?"},
                {"role": "assistant", "content": "Let me compute.", "tool_calls": [
                    {"id": "call_a", "type": "function", "function": {"name": "code_execute", "arguments": "{\"code\":\"print(4)\"}"}},
                ]},
                {"role": "tool", "content": "4", "tool_call_id": "call_a"},
            ],
            "tools": [
                {"type": "function", "function": {"name": "code_generate", "description": "Write Python for a task.",
                    "parameters": {"type": "object", "properties": {"task": {"type": "string"}}, "required": ["task"]}}},
                {"type": "function", "function": {"name": "code_execute", "description": "Run Python.",
                    "parameters": {"type": "object", "properties": {"code": {"type": "string"}}, "required": ["code"]}}},
            ],
        })
    );
    assert_eq!(fake.requests(), vec![recorded[0].body.clone()]);
}

#[tokio::test]
async fn router_request_asks_for_a_strict_json_schema() {
    let fake = FakeProvider::start().await;
    fake.on(Purpose::Router, FakeReply::route(false));

    let response = fake.provider().complete(router_request()).await.unwrap();

    let route: Value = serde_json::from_str(response.content.as_deref().unwrap()).unwrap();
    assert_eq!(route, json!({"route": "math_task"}));
    let body = &fake.requests()[0];
    assert_eq!(body["model"], "fake-flash");
    assert_eq!(
        body["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "route", "strict": true,
            "schema": {"type": "object", "properties": {"route": {"enum": ["general_chat", "math_task"]}}}}})
    );
    assert!(body.get("tools").is_none(), "no tools offered means no tools field: {body}");
}

#[tokio::test]
async fn each_tier_uses_its_model_name() {
    let fake = FakeProvider::start().await;
    fake.on_default(Purpose::Explain, FakeReply::text("because"));
    let provider = fake.provider();
    for tier in Tier::ALL {
        provider.complete(request(Purpose::Explain, tier)).await.unwrap();
    }
    let models: Vec<_> = fake.recorded().iter().map(|request| request.model().unwrap_or("").to_owned()).collect();
    assert_eq!(models, ["fake-flash", "fake-sonnet", "fake-opus"]);
}

#[tokio::test]
async fn no_api_key_sends_no_authorization_header() {
    let fake = FakeProvider::start().await;
    fake.on(Purpose::GeneralChat, FakeReply::text("hello"));
    let provider = provider_with(&fake, |config| config.api_key = None);

    assert_eq!(answer(provider.complete(request(Purpose::GeneralChat, Tier::Flash)).await.unwrap()), text("hello"));
    assert_eq!(fake.recorded()[0].header("authorization"), None);
}

#[tokio::test]
async fn trailing_slash_on_the_base_url_is_handled() {
    let fake = FakeProvider::start().await;
    fake.on(Purpose::GeneralChat, FakeReply::text("hello"));
    let provider = provider_with(&fake, |config| config.base_url.push('/'));

    assert_eq!(provider.endpoint(), format!("{}/chat/completions", fake.base_url()));
    assert_eq!(answer(provider.complete(request(Purpose::GeneralChat, Tier::Flash)).await.unwrap()), text("hello"));
}

#[tokio::test]
async fn tool_calls_are_parsed_with_raw_arguments() {
    let fake = FakeProvider::start().await;
    fake.on(
        Purpose::Solver,
        FakeReply::ToolCalls(vec![
            ("code_generate".to_owned(), json!({"task": "add"}).to_string()),
            ("code_execute".to_owned(), "{\"code\": ".to_owned()),
        ]),
    );
    fake.on(Purpose::Solver, FakeReply::execute("print(2 + 2)"));

    let provider = fake.provider();
    let first = provider.complete(solver_request(Tier::Opus)).await.unwrap();
    let second = provider.complete(solver_request(Tier::Opus)).await.unwrap();

    assert_eq!(first.content, None);
    assert_eq!(
        first.tool_calls,
        vec![
            ToolCall {
                id: "call_1_0".to_owned(),
                name: "code_generate".to_owned(),
                arguments: "{\"task\":\"add\"}".to_owned()
            },
            ToolCall {
                id: "call_1_1".to_owned(),
                name: "code_execute".to_owned(),
                arguments: "{\"code\": ".to_owned()
            },
        ]
    );
    assert_eq!(second.tool_calls.len(), 1);
    assert_eq!(second.tool_calls[0].name, "code_execute");
    let arguments: Value = serde_json::from_str(&second.tool_calls[0].arguments).unwrap();
    assert_eq!(arguments, json!({"code": "print(2 + 2)"}));
}

#[tokio::test]
async fn server_error_then_success_is_retried() {
    let fake = FakeProvider::start().await;
    fake.on(Purpose::Planner, FakeReply::Status(500));
    fake.on(Purpose::Planner, FakeReply::plan(&["solve", "pdf"], "easy", "full", false));

    let response = fake.provider().complete(request(Purpose::Planner, Tier::Flash)).await.unwrap();

    let plan: Value = serde_json::from_str(response.content.as_deref().unwrap()).unwrap();
    assert_eq!(
        plan,
        json!({"steps": ["solve", "pdf"], "difficulty": "easy", "explanation_mode": "full", "use_page": false})
    );
    assert_eq!(fake.count(Purpose::Planner), 2);
    let bodies = fake.requests();
    assert_eq!(bodies[0], bodies[1], "a retry sends the same request");
}

#[tokio::test]
async fn too_many_requests_is_retried() {
    let fake = FakeProvider::start().await;
    fake.on(Purpose::CodeGenerate, FakeReply::Status(429));
    fake.on(Purpose::CodeGenerate, FakeReply::code_generate("print(1)"));

    let response = fake.provider().complete(request(Purpose::CodeGenerate, Tier::Flash)).await.unwrap();

    assert!(response.content.unwrap().contains("```python\nprint(1)\n```"));
    assert_eq!(fake.count(Purpose::CodeGenerate), 2);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let fake = FakeProvider::start().await;
    fake.on(Purpose::GeneralChat, FakeReply::status_retry_after(429, 1));
    fake.on(Purpose::GeneralChat, FakeReply::text("hello"));

    let started = Instant::now();
    let response = fake.provider().complete(request(Purpose::GeneralChat, Tier::Flash)).await.unwrap();

    assert_eq!(answer(response), text("hello"));
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_secs(1), "retried after {elapsed:?}, before Retry-After");
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    assert_eq!(fake.count(Purpose::GeneralChat), 2);
}

#[tokio::test]
async fn a_retry_after_past_the_deadline_gives_up_at_once() {
    let fake = FakeProvider::start().await;
    fake.on(Purpose::GeneralChat, FakeReply::status_retry_after(503, 3));
    fake.on(Purpose::GeneralChat, FakeReply::text("too late"));
    let provider = provider_with(&fake, |config| config.timeout_seconds = 1);

    let started = Instant::now();
    let error = provider.complete(request(Purpose::GeneralChat, Tier::Flash)).await.unwrap_err();

    assert_eq!(error, ProviderError::Status { status: 503 });
    assert!(started.elapsed() < Duration::from_millis(900), "waited {:?}", started.elapsed());
    assert_eq!(fake.count(Purpose::GeneralChat), 1);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let fake = FakeProvider::start().await;
    let provider = fake.provider();
    for status in [400, 401, 404, 422] {
        fake.on(Purpose::Explain, FakeReply::Status(status));
        fake.on(Purpose::Explain, FakeReply::text("only a wrong retry would get this"));
        let before = fake.count(Purpose::Explain);

        let error = provider.complete(request(Purpose::Explain, Tier::Flash)).await.unwrap_err();

        assert_eq!(error, ProviderError::Status { status });
        assert_eq!(fake.count(Purpose::Explain), before + 1, "{status} was retried");
        assert_eq!(fake.pending(Purpose::Explain), 1);
        provider.complete(request(Purpose::Explain, Tier::Flash)).await.unwrap();
    }
}

#[tokio::test]
async fn retries_are_bounded() {
    let fake = FakeProvider::start().await;
    fake.on_default(Purpose::Solver, FakeReply::Status(503));

    let error = fake.provider().complete(solver_request(Tier::Flash)).await.unwrap_err();
    assert_eq!(error, ProviderError::Status { status: 503 });
    assert_eq!(fake.count(Purpose::Solver), 3, "one attempt and retries_max = 2 retries");

    let provider = provider_with(&fake, |config| config.retries_max = 0);
    let error = provider.complete(solver_request(Tier::Flash)).await.unwrap_err();
    assert_eq!(error, ProviderError::Status { status: 503 });
    assert_eq!(fake.count(Purpose::Solver), 4);

    let provider = provider_with(&fake, |config| config.retries_max = 5);
    provider.complete(solver_request(Tier::Flash)).await.unwrap_err();
    assert_eq!(fake.count(Purpose::Solver), 10);
}

#[tokio::test]
async fn hang_times_out_within_the_deadline() {
    let fake = FakeProvider::start().await;
    fake.on_default(Purpose::Solver, FakeReply::Hang);
    let provider = provider_with(&fake, |config| config.timeout_seconds = 1);

    let started = Instant::now();
    let error = provider.complete(solver_request(Tier::Flash)).await.unwrap_err();

    assert_eq!(error, ProviderError::Timeout { seconds: 1 });
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(950), "timed out early, after {elapsed:?}");
    assert!(elapsed < Duration::from_millis(1500), "timed out late, after {elapsed:?}");
    assert_eq!(fake.count(Purpose::Solver), 1, "the deadline covers the whole call");
}

#[tokio::test]
async fn the_deadline_covers_retries() {
    let fake = FakeProvider::start().await;
    fake.on(Purpose::Solver, FakeReply::Status(500).after(Duration::from_millis(700)));
    fake.on(Purpose::Solver, FakeReply::text("late").after(Duration::from_millis(700)));
    let provider = provider_with(&fake, |config| config.timeout_seconds = 1);

    let started = Instant::now();
    let error = provider.complete(solver_request(Tier::Flash)).await.unwrap_err();

    assert_eq!(error, ProviderError::Timeout { seconds: 1 });
    assert!(started.elapsed() < Duration::from_millis(1500), "took {:?}", started.elapsed());
    assert_eq!(fake.count(Purpose::Solver), 2);
}

#[tokio::test]
async fn a_slow_answer_within_the_timeout_succeeds() {
    let fake = FakeProvider::start().await;
    fake.on(Purpose::Explain, FakeReply::text("slow").after(Duration::from_millis(300)));
    let started = Instant::now();
    let response = fake.provider().complete(request(Purpose::Explain, Tier::Flash)).await.unwrap();
    assert_eq!(answer(response), text("slow"));
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn malformed_answers_are_errors_not_retried() {
    let fake = FakeProvider::start().await;
    let bodies = [
        "not json",
        "",
        "{}",
        r#"{"choices": []}"#,
        r#"{"choices": [{"index": 0}]}"#,
        r#"{"choices": [{"message": {"content": 7}}]}"#,
        r#"{"choices": [{"message": {"tool_calls": [{"id": "x", "function": {"arguments": "{}"}}]}}]}"#,
        r#"{"error": {"message": "an error with status 200"}}"#,
    ];
    let provider = fake.provider();
    for body in bodies {
        fake.on(Purpose::Router, FakeReply::Raw(body.to_owned()));
        fake.on(Purpose::Router, FakeReply::route(true));
        let before = fake.count(Purpose::Router);
        let error = provider.complete(router_request()).await.unwrap_err();
        assert!(matches!(error, ProviderError::Malformed { .. }), "{body:?} gave {error:?}");
        assert_eq!(fake.count(Purpose::Router), before + 1, "{body:?} was retried");
        // The reply queued to catch a wrong retry is still there; use it up.
        provider.complete(router_request()).await.unwrap();
    }
}

#[tokio::test]
async fn an_answer_over_the_size_limit_is_malformed() {
    let fake = FakeProvider::start().await;
    let provider = provider_with(&fake, |config| config.response_bytes_max = 2048);
    fake.on(Purpose::Explain, FakeReply::text("x".repeat(1500)));
    fake.on(Purpose::Explain, FakeReply::text("x".repeat(2048)));

    let within = provider.complete(request(Purpose::Explain, Tier::Flash)).await.unwrap();
    assert_eq!(within.content.map(|content| content.len()), Some(1500));
    let error = provider.complete(request(Purpose::Explain, Tier::Flash)).await.unwrap_err();
    assert!(matches!(&error, ProviderError::Malformed { detail } if detail.contains("2048 bytes")), "{error:?}");
    assert_eq!(fake.count(Purpose::Explain), 2);
}

#[tokio::test]
async fn the_default_size_limit_is_one_mebibyte() {
    let fake = FakeProvider::start().await;
    fake.on(Purpose::Explain, FakeReply::text("y".repeat(1024 * 1024)));
    let error = fake.provider().complete(request(Purpose::Explain, Tier::Flash)).await.unwrap_err();
    assert!(matches!(error, ProviderError::Malformed { .. }), "{error:?}");
}

#[tokio::test]
async fn an_unreachable_provider_is_reported() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    drop(listener);
    let mut config = OpenAiConfig::new(format!("http://{address}"));
    config.retry_backoff_ms = 10;
    config.timeout_seconds = 5;

    let started = Instant::now();
    let error = OpenAiProvider::new(config).unwrap().complete(request(Purpose::Router, Tier::Flash)).await.unwrap_err();

    assert!(matches!(&error, ProviderError::Unreachable { .. }), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
}

/// Reads one HTTP/1.1 request (headers and a `Content-Length` body) from `stream`.
async fn read_http_request(stream: &mut tokio::net::TcpStream) {
    use tokio::io::AsyncReadExt;
    let mut buffer = Vec::new();
    let mut chunk = [0_u8; 4096];
    loop {
        let read = stream.read(&mut chunk).await.unwrap();
        assert!(read > 0, "the client closed the connection mid-request");
        buffer.extend_from_slice(&chunk[..read]);
        let text = String::from_utf8_lossy(&buffer).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|line| line.to_ascii_lowercase().strip_prefix("content-length:").map(|n| n.trim().to_owned()))
                .map_or(0, |n| n.parse::<usize>().unwrap());
            if buffer.len() >= end + 4 + length {
                return;
            }
        }
    }
}

#[tokio::test]
async fn a_dropped_connection_is_retried() {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut first, _) = listener.accept().await.unwrap();
        read_http_request(&mut first).await;
        drop(first);
        let (mut second, _) = listener.accept().await.unwrap();
        read_http_request(&mut second).await;
        let body = json!({"choices": [{"message": {"role": "assistant", "content": "second try"}}]}).to_string();
        let head =
            format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len());
        second.write_all(head.as_bytes()).await.unwrap();
        second.write_all(body.as_bytes()).await.unwrap();
        second.flush().await.unwrap();
    });
    let mut config = OpenAiConfig::new(format!("http://{address}"));
    config.retry_backoff_ms = 10;

    let response = OpenAiProvider::new(config).unwrap().complete(request(Purpose::Router, Tier::Flash)).await.unwrap();

    assert_eq!(answer(response), text("second try"));
    server.await.unwrap();
}

#[tokio::test]
async fn the_api_key_never_appears_in_debug_output() {
    let fake = FakeProvider::start().await;
    let mut config = fake.config();
    config.api_key = Some("sk-very-secret-1234".to_owned());
    let provider = OpenAiProvider::new(config.clone()).unwrap();

    let config_debug = format!("{config:?} {config:#?}");
    let provider_debug = format!("{provider:?} {provider:#?}");
    for debug in [&config_debug, &provider_debug] {
        assert!(!debug.contains("very-secret"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
        assert!(debug.contains("fake-opus"), "the rest is still shown: {debug}");
    }
}

#[tokio::test]
async fn invalid_configurations_are_refused() {
    let fake = FakeProvider::start().await;
    type Change = fn(&mut OpenAiConfig);
    let cases: [(&str, Change); 8] = [
        ("not a url", |config| config.base_url = "localhost:8080".to_owned()),
        ("scheme", |config| config.base_url = "ftp://127.0.0.1/".to_owned()),
        ("timeout", |config| config.timeout_seconds = 0),
        ("timeout too long", |config| config.timeout_seconds = u64::MAX),
        ("connect timeout", |config| config.connect_timeout_seconds = 0),
        ("body limit", |config| config.response_bytes_max = 0),
        ("model", |config| config.models.opus = " ".to_owned()),
        ("key", |config| config.api_key = Some("line\nbreak-secret".to_owned())),
    ];
    for (name, change) in cases {
        let mut config = fake.config();
        change(&mut config);
        let error = OpenAiProvider::new(config).unwrap_err();
        assert!(matches!(&error, ProviderError::Unreachable { detail } if detail.starts_with("invalid configuration")));
        assert!(!error.to_string().contains("secret"), "{name}: {error}");
    }
    OpenAiProvider::new(fake.config()).unwrap();
}

fn lookup(variables: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let variables: HashMap<String, String> =
        variables.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect();
    move |name| variables.get(name).cloned()
}

#[test]
fn configuration_from_the_environment() {
    assert_eq!(OpenAiConfig::from_lookup(lookup(&[])), Ok(None));
    assert_eq!(OpenAiConfig::from_lookup(lookup(&[("CREDITGRAPH_LLM_BASE_URL", " ")])), Ok(None));

    let config =
        OpenAiConfig::from_lookup(lookup(&[("CREDITGRAPH_LLM_BASE_URL", "https://llm.example/v1")])).unwrap().unwrap();
    assert_eq!(config, OpenAiConfig::new("https://llm.example/v1"));
    assert_eq!(config.api_key, None);
    assert_eq!([config.models.flash.as_str(), &config.models.sonnet, &config.models.opus], ["flash", "sonnet", "opus"]);
    assert_eq!(
        (config.timeout_seconds, config.connect_timeout_seconds, config.retries_max, config.retry_backoff_ms),
        (60, 5, 2, 200)
    );
    assert_eq!(config.response_bytes_max, 1024 * 1024);

    let config = OpenAiConfig::from_lookup(lookup(&[
        ("CREDITGRAPH_LLM_BASE_URL", "http://127.0.0.1:11434/v1/"),
        ("CREDITGRAPH_LLM_API_KEY", "sk-1"),
        ("CREDITGRAPH_LLM_MODEL_FLASH", "small"),
        ("CREDITGRAPH_LLM_MODEL_SONNET", "medium"),
        ("CREDITGRAPH_LLM_MODEL_OPUS", "large"),
        ("CREDITGRAPH_LLM_TIMEOUT_SECONDS", "30"),
    ]))
    .unwrap()
    .unwrap();
    assert_eq!(config.base_url, "http://127.0.0.1:11434/v1/");
    assert_eq!(config.api_key.as_deref(), Some("sk-1"));
    assert_eq!(
        [config.models.flash.as_str(), &config.models.sonnet, &config.models.opus],
        ["small", "medium", "large"]
    );
    assert_eq!(config.timeout_seconds, 30);

    for bad in ["0", "-1", "ten", "1.5", "99999999999999999999"] {
        let error = OpenAiConfig::from_lookup(lookup(&[
            ("CREDITGRAPH_LLM_BASE_URL", "http://h"),
            ("CREDITGRAPH_LLM_TIMEOUT_SECONDS", bad),
        ]))
        .unwrap_err();
        assert_eq!(error.variable, "CREDITGRAPH_LLM_TIMEOUT_SECONDS", "{bad}");
    }
    let error: OpenAiConfigError =
        OpenAiConfig::from_lookup(lookup(&[("CREDITGRAPH_LLM_BASE_URL", "llm.example")])).unwrap_err();
    assert_eq!(error.variable, "CREDITGRAPH_LLM_BASE_URL");
    assert!(error.to_string().starts_with("CREDITGRAPH_LLM_BASE_URL: "), "{error}");
}

#[tokio::test]
async fn fake_answers_400_without_a_purpose_tag() {
    let fake = FakeProvider::start().await;
    fake.on_default(Purpose::Router, FakeReply::route(true));
    let mut untagged = router_request();
    untagged.messages[0] = Message::system("route this");

    let error = fake.provider().complete(untagged).await.unwrap_err();

    assert_eq!(error, ProviderError::Status { status: 400 });
    let recorded = fake.recorded();
    assert_eq!(recorded.len(), 1, "a 400 is not retried");
    assert_eq!(recorded[0].purpose, None);
    assert_eq!(fake.count(Purpose::Router), 0);
}

#[tokio::test]
async fn fake_answers_500_naming_an_unscripted_purpose() {
    let fake = FakeProvider::start().await;
    let body = json!({"model": "m", "messages": [{"role": "system", "content": "[creditgraph:limit_summary] sum up"}]});

    let response =
        reqwest::Client::new().post(format!("{}/chat/completions", fake.base_url())).json(&body).send().await.unwrap();

    assert_eq!(response.status().as_u16(), 500);
    let answer: Value = response.json().await.unwrap();
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("limit_summary"), "{message}");
    assert_eq!(fake.count(Purpose::LimitSummary), 1);
    assert_eq!(fake.requests(), vec![body]);

    let error = fake.provider().complete(request(Purpose::LimitSummary, Tier::Flash)).await.unwrap_err();
    assert_eq!(error, ProviderError::Status { status: 500 });
    assert_eq!(fake.count(Purpose::LimitSummary), 4, "the client retried the 500 twice");
}

#[tokio::test]
async fn fake_replies_are_fifo_per_purpose_then_default() {
    let fake = FakeProvider::start().await;
    fake.on(Purpose::Explain, FakeReply::text("explain 1"));
    fake.on(Purpose::GeneralChat, FakeReply::text("chat 1"));
    fake.on(Purpose::Explain, FakeReply::text("explain 2"));
    fake.on_default(Purpose::Explain, FakeReply::text("explain default"));
    assert_eq!(fake.pending(Purpose::Explain), 2);

    let provider = fake.provider();
    let mut answers = Vec::new();
    for purpose in [Purpose::Explain, Purpose::Explain, Purpose::GeneralChat, Purpose::Explain, Purpose::Explain] {
        let response = provider.complete(request(purpose, Tier::Flash)).await.unwrap();
        answers.push(response.content.unwrap());
    }

    assert_eq!(answers, ["explain 1", "explain 2", "chat 1", "explain default", "explain default"]);
    assert_eq!(fake.pending(Purpose::Explain), 0);
    assert_eq!((fake.count(Purpose::Explain), fake.count(Purpose::GeneralChat)), (4, 1));
    assert_eq!(fake.recorded_for(Purpose::GeneralChat).len(), 1);
    let clone = fake.clone();
    assert_eq!(clone.requests().len(), 5, "clones share the record");
}

#[test]
fn fake_reply_constructors_speak_the_protocol() {
    assert_eq!(FakeReply::route(true), FakeReply::Json(json!({"route": "general_chat"})));
    assert_eq!(FakeReply::route(false), FakeReply::Json(json!({"route": "math_task"})));
    assert_eq!(
        FakeReply::plan(&["solve", "video"], "hard", "brief", true),
        FakeReply::Json(
            json!({"steps": ["solve", "video"], "difficulty": "hard", "explanation_mode": "brief", "use_page": true})
        )
    );
    let FakeReply::Text(text) = FakeReply::code_generate("x = 1\nprint(x)") else { panic!("code_generate is text") };
    assert!(text.contains("```python\nx = 1\nprint(x)\n```"), "{text}");
    assert_eq!(
        FakeReply::execute("print(\"hi\")"),
        FakeReply::ToolCalls(vec![("code_execute".to_owned(), r#"{"code":"print(\"hi\")"}"#.to_owned())])
    );
    assert_eq!(
        FakeReply::generate("factor 12"),
        FakeReply::ToolCalls(vec![("code_generate".to_owned(), r#"{"task":"factor 12"}"#.to_owned())])
    );
}
