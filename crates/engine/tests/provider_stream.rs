//! `Provider::stream` of the OpenAI-compatible client against the fake provider, over real
//! loopback HTTP, and the fake's streaming script.
//!
//! Why over a socket: what can break in a stream is the exchange itself — chunks arriving one by
//! one, a connection that dies half-way, a server that stalls, a client that walks away — and
//! only a real exchange has those.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use engine::provider::openai::{OpenAiConfig, OpenAiProvider};
use engine::provider::{ChatRequest, ChatResponse, Message, Provider, ProviderError, Purpose, ToolCall, Usage};
use engine::testing::{fake_usage, FakeChunk, FakeProvider, FakeReply, Gate};
use pricing::Tier;
use serde_json::{json, Value};
use tokio::sync::mpsc;

fn request(purpose: Purpose) -> ChatRequest {
    ChatRequest {
        purpose,
        tier: Tier::Sonnet,
        messages: vec![Message::system(format!("{} You explain.", purpose.tag())), Message::user("Why is 2 + 2 = 4?")],
        tools: Vec::new(),
        response_format: None,
    }
}

fn provider_with(fake: &FakeProvider, change: impl FnOnce(&mut OpenAiConfig)) -> OpenAiProvider {
    let mut config = fake.config();
    change(&mut config);
    OpenAiProvider::new(config).unwrap()
}

/// Runs one streamed call to its end: the outcome and every delta sent, in order.
async fn stream(provider: &impl Provider, request: ChatRequest) -> (Result<ChatResponse, ProviderError>, Vec<String>) {
    let (sender, mut receiver) = mpsc::unbounded_channel();
    let outcome = provider.stream(request, sender).await;
    let mut deltas = Vec::new();
    while let Ok(delta) = receiver.try_recv() {
        deltas.push(delta);
    }
    (outcome, deltas)
}

/// A finish chunk as OpenAI sends it, for scripts that end without `[DONE]`.
fn finish_event() -> FakeChunk {
    FakeChunk::Raw(
        "data: {\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n"
            .to_owned(),
    )
}

#[tokio::test]
async fn text_streams_in_deltas_whose_concatenation_is_the_answer() {
    let fake = FakeProvider::start().await;
    let text = "Two and two make four: héllo wörld ✓ done.";
    fake.on(Purpose::Explain, FakeReply::text(text));

    let (outcome, deltas) = stream(&fake.provider(), request(Purpose::Explain)).await;

    let response = outcome.unwrap();
    assert_eq!(response.content.as_deref(), Some(text));
    assert_eq!(deltas.concat(), text);
    assert_eq!(deltas.len(), text.split_inclusive(' ').count(), "one delta per chunk: {deltas:?}");
    assert!(deltas.iter().all(|delta| !delta.is_empty()));
    assert_eq!(response.tool_calls, Vec::new());
    let recorded = fake.recorded();
    assert_eq!(recorded.len(), 1);
    assert!(recorded[0].streams());
    assert_eq!(recorded[0].body["stream_options"], json!({"include_usage": true}));
    assert_eq!(recorded[0].model(), Some("fake-sonnet"));
    assert_eq!(response.usage, Some(fake_usage(recorded[0].body_bytes, text.chars().count())));
    assert!(fake.streams_dropped().is_empty(), "a stream read to its end is not a drop");
}

#[tokio::test]
async fn deltas_arrive_before_the_provider_has_finished() {
    let fake = FakeProvider::start().await;
    let last_chunk = Gate::new();
    fake.on(
        Purpose::Solver,
        FakeReply::Chunks(vec![
            FakeChunk::text("The answer "),
            FakeChunk::text("is "),
            FakeChunk::Gate(last_chunk.clone()),
            FakeChunk::text("4."),
            FakeChunk::Usage { prompt_tokens: 30, completion_tokens: 4 },
        ]),
    );
    let provider = fake.provider();
    let (sender, mut receiver) = mpsc::unbounded_channel();
    let call = tokio::spawn(async move { provider.stream(request(Purpose::Solver), sender).await });

    assert_eq!(receiver.recv().await.as_deref(), Some("The answer "));
    assert_eq!(receiver.recv().await.as_deref(), Some("is "));
    assert!(!last_chunk.is_open());
    assert!(!call.is_finished(), "the call waits for the rest of the answer");

    last_chunk.open();
    let response = call.await.unwrap().unwrap();
    assert_eq!(receiver.recv().await.as_deref(), Some("4."));
    assert_eq!(receiver.recv().await, None, "the call is over: the sender is gone");
    assert_eq!(
        response,
        ChatResponse {
            content: Some("The answer is 4.".to_owned()),
            tool_calls: Vec::new(),
            usage: Some(Usage { prompt_tokens: 30, completion_tokens: 4 }),
        }
    );
}

#[tokio::test]
async fn usage_the_provider_does_not_send_is_unknown() {
    let fake = FakeProvider::start().await;
    let provider = fake.provider();
    fake.on_each(
        Purpose::Explain,
        [
            FakeReply::text("no usage streamed").without_usage(),
            FakeReply::Chunks(vec![FakeChunk::text("no usage chunk")]),
            FakeReply::text("no usage at all").without_usage(),
            FakeReply::text("usage"),
        ],
    );

    let (first, _) = stream(&provider, request(Purpose::Explain)).await;
    let (second, _) = stream(&provider, request(Purpose::Explain)).await;
    let third = provider.complete(request(Purpose::Explain)).await;
    let fourth = provider.complete(request(Purpose::Explain)).await;

    let first = first.unwrap();
    assert_eq!((first.content.as_deref(), first.usage), (Some("no usage streamed"), None));
    let second = second.unwrap();
    assert_eq!((second.content.as_deref(), second.usage), (Some("no usage chunk"), None));
    let third = third.unwrap();
    assert_eq!((third.content.as_deref(), third.usage), (Some("no usage at all"), None));
    let recorded = fake.recorded();
    assert_eq!(fourth.unwrap().usage, Some(fake_usage(recorded[3].body_bytes, "usage".len())));
    assert_eq!(recorded.iter().map(|request| request.streams()).collect::<Vec<_>>(), [true, true, false, false]);
}

#[tokio::test]
async fn tool_calls_stream_and_are_assembled() {
    let fake = FakeProvider::start().await;
    fake.on(
        Purpose::Solver,
        FakeReply::ToolCalls(vec![
            ("code_execute".to_owned(), json!({"code": "print(2 + 2)"}).to_string()),
            ("code_generate".to_owned(), json!({"task": "add ✓"}).to_string()),
        ]),
    );

    let (outcome, deltas) = stream(&fake.provider(), request(Purpose::Solver)).await;

    let response = outcome.unwrap();
    assert_eq!(deltas, Vec::<String>::new(), "tool calls are no text for the user");
    assert_eq!(response.content, None);
    assert_eq!(
        response.tool_calls,
        vec![
            ToolCall {
                id: "call_1_0".to_owned(),
                name: "code_execute".to_owned(),
                arguments: json!({"code": "print(2 + 2)"}).to_string(),
            },
            ToolCall {
                id: "call_1_1".to_owned(),
                name: "code_generate".to_owned(),
                arguments: json!({"task": "add ✓"}).to_string(),
            },
        ]
    );
    let chars = ["code_execute", "code_generate"].iter().map(|name| name.len()).sum::<usize>()
        + json!({"code": "print(2 + 2)"}).to_string().chars().count()
        + json!({"task": "add ✓"}).to_string().chars().count();
    assert_eq!(response.usage, Some(fake_usage(fake.recorded()[0].body_bytes, chars)));
}

#[tokio::test]
async fn json_streams_as_text() {
    let fake = FakeProvider::start().await;
    fake.on(Purpose::Router, FakeReply::route(true));

    let (outcome, deltas) = stream(&fake.provider(), request(Purpose::Router)).await;

    let content = outcome.unwrap().content.unwrap();
    assert_eq!(serde_json::from_str::<Value>(&content).unwrap(), json!({"route": "general_chat"}));
    assert_eq!(deltas.len(), 2);
    assert_eq!(deltas.concat(), content);
}

#[tokio::test]
async fn a_stream_broken_after_a_delta_is_interrupted_and_not_retried() {
    let fake = FakeProvider::start().await;
    fake.on_each(
        Purpose::Explain,
        [
            FakeReply::Chunks(vec![FakeChunk::text("Half an "), FakeChunk::Break]),
            FakeReply::text("a retry must not write this"),
        ],
    );

    let (outcome, deltas) = stream(&fake.provider(), request(Purpose::Explain)).await;

    assert!(matches!(&outcome, Err(ProviderError::Interrupted { .. })), "{outcome:?}");
    assert_eq!(deltas, ["Half an "]);
    assert_eq!(fake.count(Purpose::Explain), 1, "the user read a delta: no retry");
    assert_eq!(fake.pending(Purpose::Explain), 1);
}

#[tokio::test]
async fn a_stream_broken_before_any_delta_is_retried() {
    let fake = FakeProvider::start().await;
    fake.on_each(
        Purpose::Explain,
        [FakeReply::Chunks(vec![FakeChunk::Break]), FakeReply::Chunks(vec![FakeChunk::text("whole")])],
    );

    let (outcome, deltas) = stream(&fake.provider(), request(Purpose::Explain)).await;

    assert_eq!(outcome.unwrap().content.as_deref(), Some("whole"));
    assert_eq!(deltas, ["whole"]);
    assert_eq!(fake.count(Purpose::Explain), 2);
}

#[tokio::test]
async fn a_503_before_the_first_byte_is_retried() {
    let fake = FakeProvider::start().await;
    fake.on_each(Purpose::Explain, [FakeReply::Status(503), FakeReply::text("second try")]);

    let (outcome, deltas) = stream(&fake.provider(), request(Purpose::Explain)).await;

    assert_eq!(outcome.unwrap().content.as_deref(), Some("second try"));
    assert_eq!(deltas.concat(), "second try");
    assert_eq!(fake.count(Purpose::Explain), 2);
    assert!(fake.recorded().iter().all(|request| request.streams()));
}

#[tokio::test]
async fn a_status_that_cannot_improve_is_not_retried() {
    let fake = FakeProvider::start().await;
    fake.on_each(Purpose::Explain, [FakeReply::Status(400), FakeReply::text("never")]);

    let (outcome, deltas) = stream(&fake.provider(), request(Purpose::Explain)).await;

    assert_eq!(outcome.unwrap_err(), ProviderError::Status { status: 400 });
    assert_eq!(deltas, Vec::<String>::new());
    assert_eq!(fake.count(Purpose::Explain), 1);
}

#[tokio::test]
async fn a_stream_that_ends_without_done_or_finish_is_interrupted() {
    let fake = FakeProvider::start().await;
    fake.on_each(
        Purpose::Explain,
        [
            FakeReply::Chunks(vec![FakeChunk::text("cut "), FakeChunk::End]),
            FakeReply::Chunks(vec![FakeChunk::text("finished"), finish_event(), FakeChunk::End]),
        ],
    );
    let provider = fake.provider();

    let (cut, deltas) = stream(&provider, request(Purpose::Explain)).await;
    let (finished, _) = stream(&provider, request(Purpose::Explain)).await;

    assert!(matches!(&cut, Err(ProviderError::Interrupted { detail }) if detail.contains("[DONE]")), "{cut:?}");
    assert_eq!(deltas, ["cut "]);
    assert_eq!(finished.unwrap().content.as_deref(), Some("finished"), "a finish_reason completes the answer");
    assert_eq!(fake.count(Purpose::Explain), 2, "the cut stream was not retried");
}

#[tokio::test]
async fn a_malformed_chunk_is_interrupted_and_not_retried() {
    let fake = FakeProvider::start().await;
    fake.on_each(
        Purpose::Explain,
        [
            FakeReply::Chunks(vec![FakeChunk::text("fine "), FakeChunk::Raw("data: {\"choices\": [\n\n".to_owned())]),
            FakeReply::Chunks(vec![FakeChunk::Raw("data: not json\n\n".to_owned())]),
            FakeReply::Chunks(vec![FakeChunk::Raw("data: {\"error\": {\"message\": \"overloaded\"}}\n\n".to_owned())]),
            FakeReply::text("never"),
        ],
    );
    let provider = fake.provider();

    for expected in ["not the expected JSON", "not the expected JSON", "overloaded"] {
        let (outcome, _) = stream(&provider, request(Purpose::Explain)).await;
        assert!(
            matches!(&outcome, Err(ProviderError::Interrupted { detail }) if detail.contains(expected)),
            "{outcome:?}"
        );
    }
    assert_eq!(fake.count(Purpose::Explain), 3);
}

#[tokio::test]
async fn the_idle_timeout_fires_between_chunks() {
    let fake = FakeProvider::start().await;
    // Keep-alive comments flow during the delay: they are not chunks.
    fake.on(
        Purpose::Explain,
        FakeReply::Chunks(vec![FakeChunk::text("a "), FakeChunk::Delay(Duration::from_secs(4)), FakeChunk::text("b")]),
    );
    let provider = provider_with(&fake, |config| config.stream_idle_timeout_seconds = 1);

    let started = Instant::now();
    let (outcome, deltas) = stream(&provider, request(Purpose::Explain)).await;

    assert_eq!(outcome.unwrap_err(), ProviderError::Idle { seconds: 1 });
    assert!(started.elapsed() >= Duration::from_secs(1), "fired after {:?}", started.elapsed());
    assert_eq!(deltas, ["a "]);
    assert_eq!(fake.count(Purpose::Explain), 1);
}

#[tokio::test]
async fn the_deadline_holds_over_a_stream_that_keeps_coming() {
    let fake = FakeProvider::start().await;
    let mut chunks = Vec::new();
    for _ in 0..30 {
        chunks.push(FakeChunk::text("more "));
        chunks.push(FakeChunk::Delay(Duration::from_millis(100)));
    }
    fake.on(Purpose::Explain, FakeReply::Chunks(chunks));
    let provider = provider_with(&fake, |config| config.timeout_seconds = 1);

    let (outcome, deltas) = stream(&provider, request(Purpose::Explain)).await;

    assert_eq!(outcome.unwrap_err(), ProviderError::Timeout { seconds: 1 });
    assert!((1..30).contains(&deltas.len()), "{} deltas", deltas.len());
}

#[tokio::test]
async fn the_size_cap_counts_every_streamed_byte() {
    let fake = FakeProvider::start().await;
    // 100 words of 2 bytes: 200 bytes of text, but each word is a chunk of about 150 bytes.
    fake.on_each(Purpose::Explain, [FakeReply::text("ok"), FakeReply::text("w ".repeat(100))]);
    let provider = provider_with(&fake, |config| config.stream_bytes_max = 2048);

    let (within, _) = stream(&provider, request(Purpose::Explain)).await;
    let (over, deltas) = stream(&provider, request(Purpose::Explain)).await;

    assert_eq!(within.unwrap().content.as_deref(), Some("ok"));
    assert!(matches!(&over, Err(ProviderError::Malformed { detail }) if detail.contains("2048 bytes")), "{over:?}");
    assert!(!deltas.is_empty() && deltas.len() < 100, "{} deltas before the cap", deltas.len());
    assert_eq!(fake.count(Purpose::Explain), 2);
}

#[tokio::test]
async fn dropping_the_stream_drops_the_request_at_once() {
    let fake = FakeProvider::start().await;
    let never = Gate::new();
    fake.on(
        Purpose::Explain,
        FakeReply::Chunks(vec![FakeChunk::text("Before "), FakeChunk::Gate(never.clone()), FakeChunk::text("after")]),
    );
    let provider = fake.provider();
    let (sender, mut receiver) = mpsc::unbounded_channel();
    let call = tokio::spawn(async move { provider.stream(request(Purpose::Explain), sender).await });
    assert_eq!(receiver.recv().await.as_deref(), Some("Before "));
    assert!(fake.streams_dropped().is_empty());

    let cancelled = Instant::now();
    call.abort();
    let dropped = tokio::time::timeout(Duration::from_secs(5), fake.stream_dropped()).await.unwrap();

    assert!(call.await.unwrap_err().is_cancelled());
    let after = dropped.saturating_duration_since(cancelled);
    assert!(after < Duration::from_millis(100), "the fake saw the drop {after:?} after the cancel");
    assert_eq!(fake.streams_dropped().len(), 1);
    assert!(!never.is_open());
}

#[tokio::test]
async fn dropping_the_stream_before_its_first_chunk_drops_the_request() {
    let fake = FakeProvider::start().await;
    let never = Gate::new();
    fake.on(Purpose::Explain, FakeReply::Chunks(vec![FakeChunk::Gate(never.clone()), FakeChunk::text("late")]));
    let provider = fake.provider();
    let (sender, _receiver) = mpsc::unbounded_channel();
    let call = tokio::spawn(async move { provider.stream(request(Purpose::Explain), sender).await });
    // The request is in when the fake recorded it; the headers go out at once.
    while fake.count(Purpose::Explain) == 0 {
        tokio::task::yield_now().await;
    }

    let cancelled = Instant::now();
    call.abort();
    let dropped = tokio::time::timeout(Duration::from_secs(5), fake.stream_dropped()).await.unwrap();

    let after = dropped.saturating_duration_since(cancelled);
    assert!(after < Duration::from_millis(100), "the fake saw the drop {after:?} after the cancel");
}

#[tokio::test]
async fn dropping_the_stream_while_the_fake_holds_its_headers_drops_the_request() {
    let fake = FakeProvider::start().await;
    let never = Gate::new();
    fake.on(Purpose::Explain, FakeReply::text("late").gated(&never));
    let provider = fake.provider();
    let (sender, _receiver) = mpsc::unbounded_channel();
    let call = tokio::spawn(async move { provider.stream(request(Purpose::Explain), sender).await });
    while fake.count(Purpose::Explain) == 0 {
        tokio::task::yield_now().await;
    }

    let cancelled = Instant::now();
    call.abort();
    let dropped = tokio::time::timeout(Duration::from_secs(5), fake.stream_dropped()).await.unwrap();

    let after = dropped.saturating_duration_since(cancelled);
    assert!(after < Duration::from_millis(100), "the fake saw the drop {after:?} after the cancel");
}

#[tokio::test]
async fn a_caller_that_stops_listening_still_gets_the_answer() {
    let fake = FakeProvider::start().await;
    fake.on(Purpose::Explain, FakeReply::text("nobody reads these deltas"));
    let (sender, receiver) = mpsc::unbounded_channel();
    drop(receiver);

    let response = fake.provider().stream(request(Purpose::Explain), sender).await.unwrap();

    assert_eq!(response.content.as_deref(), Some("nobody reads these deltas"));
}

#[tokio::test]
async fn a_server_that_ignores_stream_is_taken_whole() {
    let fake = FakeProvider::start().await;
    let body = json!({
        "choices": [{"message": {"role": "assistant", "content": "all at once"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3},
    });
    fake.on(Purpose::Explain, FakeReply::Raw(body.to_string()));

    let (outcome, deltas) = stream(&fake.provider(), request(Purpose::Explain)).await;

    let response = outcome.unwrap();
    assert_eq!(deltas, ["all at once"]);
    assert_eq!(response.content.as_deref(), Some("all at once"));
    assert_eq!(response.usage, Some(Usage { prompt_tokens: 7, completion_tokens: 3 }));
}

#[tokio::test]
async fn the_fake_answers_a_chunk_script_asked_without_stream_as_one_completion() {
    let fake = FakeProvider::start().await;
    let gate = Gate::new();
    gate.open();
    fake.on_each(
        Purpose::Explain,
        [
            FakeReply::Chunks(vec![
                FakeChunk::text("one "),
                FakeChunk::Gate(gate),
                FakeChunk::text("two"),
                FakeChunk::Usage { prompt_tokens: 9, completion_tokens: 2 },
            ]),
            FakeReply::Chunks(vec![FakeChunk::text("cut"), FakeChunk::Break]),
        ],
    );
    let provider = provider_with(&fake, |config| config.retries_max = 0);

    let whole = provider.complete(request(Purpose::Explain)).await.unwrap();
    let broken = provider.complete(request(Purpose::Explain)).await.unwrap_err();

    assert_eq!(
        whole,
        ChatResponse {
            content: Some("one two".to_owned()),
            tool_calls: Vec::new(),
            usage: Some(Usage { prompt_tokens: 9, completion_tokens: 2 }),
        }
    );
    assert!(matches!(broken, ProviderError::Unreachable { .. }), "{broken:?}");
}

/// A provider that can only complete: the trait's default `stream`.
struct CompleteOnly {
    content: Option<String>,
}

#[async_trait]
impl Provider for CompleteOnly {
    async fn complete(&self, _request: ChatRequest) -> Result<ChatResponse, ProviderError> {
        Ok(ChatResponse { content: self.content.clone(), tool_calls: Vec::new(), usage: None })
    }
}

#[tokio::test]
async fn the_default_stream_sends_the_whole_answer_as_one_delta() {
    let (outcome, deltas) =
        stream(&CompleteOnly { content: Some("all of it".to_owned()) }, request(Purpose::Explain)).await;
    assert_eq!(outcome.unwrap().content.as_deref(), Some("all of it"));
    assert_eq!(deltas, ["all of it"]);

    let (outcome, deltas) = stream(&CompleteOnly { content: None }, request(Purpose::Explain)).await;
    assert_eq!(outcome.unwrap().content, None);
    assert_eq!(deltas, Vec::<String>::new());
}

fn lookup(variables: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let variables: HashMap<String, String> =
        variables.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect();
    move |name| variables.get(name).cloned()
}

#[tokio::test]
async fn the_stream_idle_timeout_is_configured_and_checked() {
    let base = ("CREDITGRAPH_LLM_BASE_URL", "http://127.0.0.1:9/v1");
    let config = OpenAiConfig::from_lookup(lookup(&[base])).unwrap().unwrap();
    assert_eq!(config.stream_idle_timeout_seconds, 30);
    let config = OpenAiConfig::from_lookup(lookup(&[base, ("CREDITGRAPH_LLM_STREAM_IDLE_TIMEOUT_SECONDS", " 7 ")]))
        .unwrap()
        .unwrap();
    assert_eq!(config.stream_idle_timeout_seconds, 7);
    for bad in ["0", "-1", "ten", "1.5", "3601"] {
        let error = OpenAiConfig::from_lookup(lookup(&[base, ("CREDITGRAPH_LLM_STREAM_IDLE_TIMEOUT_SECONDS", bad)]))
            .unwrap_err();
        assert_eq!(error.variable, "CREDITGRAPH_LLM_STREAM_IDLE_TIMEOUT_SECONDS", "{bad}");
    }
    assert!(format!("{config:?}").contains("stream_idle_timeout_seconds: 7"));

    let fake = FakeProvider::start().await;
    for seconds in [0, u64::MAX] {
        let error =
            OpenAiProvider::new(OpenAiConfig { stream_idle_timeout_seconds: seconds, ..fake.config() }).unwrap_err();
        assert!(
            matches!(&error, ProviderError::Unreachable { detail } if detail.contains("stream_idle_timeout_seconds")),
            "{error:?}"
        );
    }
}
