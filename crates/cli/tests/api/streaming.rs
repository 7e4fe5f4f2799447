//! The answer streams as the model writes it, over real sockets with a scripted streaming
//! provider: deltas reach the client while the provider still holds its last chunk, their
//! concatenation is the answer the run stores, coalescing bounds the frames of a 20,000-token
//! answer, a provider that breaks off mid-stream and a cancel mid-stream each release the hold
//! (the cancel drops the request to the provider), resuming with `Last-Event-ID` mid-answer
//! yields exactly the missing deltas, and the credit log records each call's tokens (unknown
//! when the provider reports none).

use std::time::{Duration, Instant};

use engine::provider::Purpose;
use engine::testing::{FakeChunk, FakeProvider, FakeReply, Gate};
use serde_json::{json, Value};

use crate::helpers::{spawn_app_with_provider, TestApp};
use crate::sse::{EventStream, Frame};

/// A `solve`-only, brief turn (no explanation) whose solver streams `chunks`.
async fn app_streaming(chunks: Vec<FakeChunk>) -> (TestApp, FakeProvider) {
    let (app, fake) = spawn_app_with_provider(false, |_| {}).await;
    app.fund("sam", "100").await;
    fake.on(Purpose::Router, FakeReply::route(false));
    fake.on(Purpose::Planner, FakeReply::plan(&["solve"], "easy", "brief", false).without_usage());
    fake.on(Purpose::Solver, FakeReply::Chunks(chunks));
    (app, fake)
}

fn answer_tokens(frames: &[Frame]) -> Vec<&Frame> {
    frames.iter().filter(|frame| frame.event == "token" && frame.data["node"] == "solve").collect()
}

fn joined(tokens: &[&Frame]) -> String {
    tokens.iter().map(|frame| frame.payload()["delta"].as_str().expect("a delta")).collect()
}

/// Reads frames until the answer tokens so far concatenate to `text`; the frames read.
async fn until_answer(stream: &mut EventStream, text: &str) -> Vec<Frame> {
    let mut frames = Vec::new();
    loop {
        let frame = stream.next().await.unwrap_or_else(|| panic!("the stream ended before {text:?}: {frames:#?}"));
        frames.push(frame);
        let so_far = joined(&answer_tokens(&frames));
        if so_far == text {
            return frames;
        }
        assert!(text.starts_with(&so_far), "{so_far:?} is not a prefix of {text:?}");
    }
}

async fn run_details(app: &TestApp, run_id: &str) -> Value {
    let run = app.get(&format!("/v1/runs/{run_id}")).await;
    run.assert_status(200).clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deltas_reach_the_client_before_the_provider_finishes_and_concatenate_to_the_stored_answer() {
    let last_chunk = Gate::new();
    let (app, fake) = app_streaming(vec![
        FakeChunk::text("The answer "),
        FakeChunk::text("is "),
        FakeChunk::Gate(last_chunk.clone()),
        FakeChunk::text("4."),
        FakeChunk::Usage { prompt_tokens: 31, completion_tokens: 5 },
    ])
    .await;
    let mut stream = app.solve(json!({"account_id": "sam", "problem": "What is 2 + 2?"})).await;
    let run_id = stream.run_id.clone();
    let mut frames = until_answer(&mut stream, "The answer is ").await;
    assert!(!last_chunk.is_open(), "the deltas arrived while the provider held its last chunk");
    assert!(answer_tokens(&frames).iter().all(|frame| frame.payload()["final"] == false));
    last_chunk.open();
    frames.extend(stream.collect().await);
    assert_eq!(frames.last().expect("frames").event, "done");

    let tokens = answer_tokens(&frames);
    assert_eq!(joined(&tokens), "The answer is 4.");
    let finals: Vec<bool> = tokens.iter().map(|frame| frame.payload()["final"] == true).collect();
    assert_eq!(finals.iter().filter(|is_final| **is_final).count(), 1, "{finals:?}");
    assert_eq!(finals.last(), Some(&true), "the last piece is the final one");
    let run = run_details(&app, &run_id).await;
    assert_eq!(run["details"]["answer"], "The answer is 4.", "{run}");
    assert_eq!(
        fake.requests().iter().filter(|request| request["stream"] == true).count(),
        1,
        "only the solver streamed"
    );

    // Tokens per call: reported by the streamed solver call, unknown for the planner (its
    // provider sent no usage), never zero.
    let settled = frames.iter().find(|frame| frame.event == "credit_settled").expect("settled").payload().clone();
    let log = settled["log"].as_array().expect("a log");
    let tokens_of = |action: &str| log.iter().find(|entry| entry["action"] == action).expect(action)["tokens"].clone();
    assert_eq!(tokens_of("llm_call_verify"), json!({"reported": true, "prompt_tokens": 31, "completion_tokens": 5}));
    assert_eq!(tokens_of("planner"), json!({"reported": false}));
    assert_eq!(tokens_of("router")["reported"], true);
    app.assert_verified().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalescing_bounds_the_frames_of_a_20000_token_answer() {
    const TOKENS: usize = 20_000;
    let chunks: Vec<FakeChunk> = (0..TOKENS).map(|index| FakeChunk::text(format!("t{} ", index % 10))).collect();
    let answer: String = (0..TOKENS).map(|index| format!("t{} ", index % 10)).collect();
    let (app, _fake) = app_streaming(chunks).await;
    let started = Instant::now();
    let stream = app.solve(json!({"account_id": "sam", "problem": "Count."})).await;
    let run_id = stream.run_id.clone();
    let frames = stream.collect().await;
    let elapsed = started.elapsed();
    assert_eq!(frames.last().expect("frames").event, "done", "{:#?}", &frames[frames.len().saturating_sub(3)..]);
    let tokens = answer_tokens(&frames);
    assert_eq!(joined(&tokens), answer);
    // One frame per 256 bytes, plus at most one per 30 ms of streaming, plus the final one.
    let bound = answer.len() / 256 + usize::try_from(elapsed.as_millis() / 30).expect("small") + 2;
    assert!(
        tokens.len() <= bound,
        "{} token frames for {} bytes in {elapsed:?} (bound {bound})",
        tokens.len(),
        answer.len()
    );
    assert!(tokens.len() < TOKENS / 10, "{} frames: not coalesced", tokens.len());
    assert_eq!(run_details(&app, &run_id).await["details"]["answer"], answer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_breaks_off_mid_stream_is_a_model_error_and_releases_the_hold() {
    let (app, fake) = app_streaming(vec![FakeChunk::text("The answer is "), FakeChunk::Break]).await;
    let stream = app.solve(json!({"account_id": "sam", "problem": "p"})).await;
    let run_id = stream.run_id.clone();
    let frames = stream.collect().await;
    let last = frames.last().expect("frames");
    assert_eq!(last.event, "error", "{frames:#?}");
    assert_eq!(last.payload()["code"], "model_error");
    assert!(last.payload()["recoverable"].is_boolean(), "{last:?}");
    assert_eq!(joined(&answer_tokens(&frames)), "The answer is ", "what the user saw");
    assert!(answer_tokens(&frames).iter().all(|frame| frame.payload()["final"] == false), "never a finished answer");
    let solver_calls = fake.requests().iter().filter(|request| request["stream"] == true).count();
    assert_eq!(solver_calls, 1, "a stream that broke after it started is not retried");
    // A failed turn charges nothing: the hold is released whole.
    assert_eq!(app.figures("sam").await, ("100".to_owned(), "0".to_owned(), "100".to_owned()));
    let run = run_details(&app, &run_id).await;
    assert_eq!(run["state"], "failed", "{run}");
    assert!(run["details"]["answer"].is_null(), "a partial answer is not stored as an answer: {run}");
    app.assert_verified().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_mid_stream_drops_the_provider_request_and_releases_the_hold() {
    let never = Gate::new();
    let (app, fake) = app_streaming(vec![FakeChunk::text("Thinking "), FakeChunk::Gate(never.clone())]).await;
    let mut stream = app.solve(json!({"account_id": "sam", "problem": "p"})).await;
    let run_id = stream.run_id.clone();
    let mut frames = until_answer(&mut stream, "Thinking ").await;
    let dropped = fake.stream_dropped();
    let cancel = app.post(&format!("/v1/runs/{run_id}/cancel"), json!({})).await;
    cancel.assert_status(202);
    tokio::time::timeout(Duration::from_secs(10), dropped).await.expect("the request to the provider was dropped");
    assert!(!never.is_open());
    frames.extend(stream.collect().await);
    let last = frames.last().expect("frames");
    assert_eq!((last.event.as_str(), last.payload()["code"].as_str()), ("error", Some("canceled")), "{last:?}");
    assert_eq!(app.figures("sam").await, ("100".to_owned(), "0".to_owned(), "100".to_owned()), "nothing charged");
    assert_eq!(run_details(&app, &run_id).await["state"], "canceled");
    app.assert_verified().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_mid_answer_yields_exactly_the_missing_deltas() {
    let rest = Gate::new();
    let (app, _fake) = app_streaming(vec![
        FakeChunk::text("One, "),
        FakeChunk::Delay(Duration::from_millis(40)),
        FakeChunk::text("two, "),
        FakeChunk::Gate(rest.clone()),
        FakeChunk::text("three, "),
        FakeChunk::Delay(Duration::from_millis(40)),
        FakeChunk::text("four."),
    ])
    .await;
    let mut stream = app.solve(json!({"account_id": "sam", "problem": "Count to four."})).await;
    let run_id = stream.run_id.clone();
    let seen = until_answer(&mut stream, "One, two, ").await;
    drop(stream);
    let last_id = seen.last().expect("frames").id.clone();
    rest.open();
    let resumed = app.resume(&run_id, Some(&last_id)).await.collect().await;
    let first_seq = seen.last().expect("frames").data["seq"].as_u64().expect("seq");
    assert_eq!(resumed.first().expect("resumed frames").data["seq"], json!(first_seq + 1), "no frame twice, none lost");
    let mut all = seen.clone();
    all.extend(resumed);
    for (index, frame) in all.iter().enumerate() {
        assert_eq!(frame.data["seq"], json!(index), "seq without gaps");
    }
    assert_eq!(joined(&answer_tokens(&all)), "One, two, three, four.");
    assert_eq!(run_details(&app, &run_id).await["details"]["answer"], "One, two, three, four.");
}
