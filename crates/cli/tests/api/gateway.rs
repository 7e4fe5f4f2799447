//! The LLM gateway over HTTP, driven by the official `openai` Python SDK
//! (`support/openai_calls.py`) against a scripted upstream that reports usage: each call charged
//! its exact token arithmetic, 50 concurrent calls on an account that affords 20 worst cases
//! never overspending, keys created, listed and revoked, and the errors in OpenAI's shape.

use std::process::Stdio;
use std::time::Duration;

use engine::provider::Purpose;
use engine::testing::{FakeProvider, FakeReply, Gate};
use ledger::Amount;
use serde_json::{json, Value};
use store::Clock;

use crate::helpers::{spawn_app_with_provider, TestApp};

const MODEL: &str = "gpt-4o-mini";

fn messages() -> Value {
    // The fake upstream picks its reply by the purpose tag opening the system message.
    json!([
        {"role": "system", "content": "[creditgraph:general_chat] You answer in one word."},
        {"role": "user", "content": "What is 2 + 2?"},
    ])
}

fn prices() -> pricing::catalog::TokenPrices {
    *pricing::catalog::Catalog::builtin().gateway_model(MODEL).expect("the built-in catalog serves the model")
}

/// The worst case the gateway holds for one call of [`messages`] with this output cap.
fn worst_case(max_tokens: u64) -> Amount {
    let bound = gateway::bound::input_tokens_max(&json!({"messages": messages()})).expect("a bound");
    prices().cost(bound, max_tokens).expect("in range")
}

async fn new_key(app: &TestApp, account: &str) -> String {
    let created = app.post(&format!("/v1/accounts/{account}/keys"), json!({"name": "agent"})).await;
    created.assert_status(201)["key"].as_str().expect("the key, once").to_owned()
}

/// Runs the SDK script with `calls` concurrent calls; its results once it ends.
fn sdk_calls(app: &TestApp, key: &str, calls: usize, max_tokens: u64, stream: bool) -> tokio::process::Child {
    sdk_calls_with(app, key, calls, max_tokens, stream, json!({}))
}

/// [`sdk_calls`] with extra request headers.
fn sdk_calls_with(
    app: &TestApp,
    key: &str,
    calls: usize,
    max_tokens: u64,
    stream: bool,
    headers: Value,
) -> tokio::process::Child {
    let python = std::env::var("CREDITGRAPH_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api/support/openai_calls.py");
    let plan = json!({
        "base_url": format!("{}/v1", app.address),
        "api_key": key,
        "model": MODEL,
        "calls": calls,
        "max_tokens": max_tokens,
        "messages": messages(),
        "stream": stream,
        "headers": headers,
    });
    tokio::process::Command::new(&python)
        .arg(script)
        .arg(plan.to_string())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|error| panic!("{python} starts: {error}"))
}

async fn all_results(child: tokio::process::Child) -> Vec<Value> {
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("the SDK calls end")
        .expect("the script runs");
    assert!(output.status.success(), "the script failed (is the openai package installed?): {output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

async fn one_call_charges_its_tokens(postgres: bool) {
    let (app, fake): (TestApp, FakeProvider) = spawn_app_with_provider(postgres, |_| {}).await;
    fake.on_default(Purpose::GeneralChat, FakeReply::text("Four, which is the sum of two and two."));
    app.fund("gw", "100").await;
    let key = new_key(&app, "gw").await;
    let results = all_results(sdk_calls(&app, &key, 1, 50, false)).await;
    let call = &results[0];
    assert_eq!(call["ok"], true, "{call}");
    assert_eq!(call["content"], "Four, which is the sum of two and two.");
    let (prompt, completion) = (
        call["usage"]["prompt_tokens"].as_u64().expect("usage"),
        call["usage"]["completion_tokens"].as_u64().expect("usage"),
    );
    let cost = prices().cost(prompt, completion).expect("in range");
    assert!(cost < worst_case(50), "the real usage costs less than the held worst case");
    assert_eq!(call["cost"], cost.to_string(), "the exact token arithmetic, not capped at the hold");
    let expected = Amount::from_credits(100).checked_sub(cost).expect("affordable");
    assert_eq!(app.figures("gw").await, (expected.to_string(), "0".to_owned(), expected.to_string()));
    let hold = app.get_hold(call["hold_id"].as_str().expect("a hold id")).await;
    assert_eq!((hold.str("state"), hold.str("captured")), ("captured", cost.to_string().as_str()));
    // The upstream got the output cap the gateway held for.
    let forwarded = fake.requests().pop().expect("one request");
    assert_eq!(forwarded["max_tokens"], 50, "{forwarded}");
    // The call is recorded: usage by day and model, and by model.
    let today = store::api_keys::utc_day(app.clock.now()).0;
    let expected = json!([{"day": today, "model": MODEL, "calls": 1, "prompt_tokens": prompt,
        "completion_tokens": completion, "cost": cost.to_string()}]);
    assert_eq!(recorded_usage(&app, "gw", 1).await, expected);
    let by_model = app.get("/v1/accounts/gw/usage?group_by=model").await;
    assert_eq!(by_model.assert_status(200)["rows"][0].get("day"), None);
    app.get("/v1/accounts/gw/usage?group_by=week").await.assert_problem(422, "invalid_request");
    app.assert_verified().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sdk_call_is_charged_its_exact_tokens() {
    one_call_charges_its_tokens(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_one_sdk_call_is_charged_its_exact_tokens() {
    one_call_charges_its_tokens(true).await;
}

/// A streamed call through the SDK: the text arrives chunk by chunk, and the call is settled
/// from the usage chunk the gateway asked the upstream for — or, when the upstream sends none,
/// at the worst case if it produced output, and released if it produced none.
async fn streamed_calls_settle_by_the_rule(postgres: bool) {
    let (app, fake) = spawn_app_with_provider(postgres, |_| {}).await;
    app.fund("st", "100").await;
    let key = new_key(&app, "st").await;
    let settled = |call: &Value| {
        let hold_id = call["hold_id"].as_str().expect("a hold id").to_owned();
        let app = &app;
        async move {
            let hold = app.get_hold(&hold_id).await;
            (hold.str("state").to_owned(), hold.str("captured").to_owned())
        }
    };

    fake.on(Purpose::GeneralChat, FakeReply::text("Two and two make four."));
    let call = all_results(sdk_calls(&app, &key, 1, 50, true)).await.remove(0);
    assert_eq!((call["ok"].clone(), call["content"].clone()), (json!(true), json!("Two and two make four.")), "{call}");
    let usage = &call["usage"];
    let cost = prices()
        .cost(usage["prompt_tokens"].as_u64().expect("usage"), usage["completion_tokens"].as_u64().expect("usage"))
        .expect("in range");
    assert_eq!(settled(&call).await, ("captured".to_owned(), cost.to_string()));
    let forwarded = fake.requests().pop().expect("a request");
    assert_eq!(forwarded["stream_options"]["include_usage"], true, "{forwarded}");

    fake.on(Purpose::GeneralChat, FakeReply::text("Four.").without_usage());
    let call = all_results(sdk_calls(&app, &key, 1, 50, true)).await.remove(0);
    assert_eq!((call["content"].clone(), call["usage"].clone()), (json!("Four."), Value::Null), "{call}");
    assert_eq!(
        settled(&call).await,
        ("captured".to_owned(), worst_case(50).to_string()),
        "output, no usage: worst case"
    );

    fake.on(Purpose::GeneralChat, FakeReply::text("").without_usage());
    let call = all_results(sdk_calls(&app, &key, 1, 50, true)).await.remove(0);
    assert_eq!(settled(&call).await.0, "released", "no output, no usage: released");
    app.assert_verified().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_calls_are_settled_from_usage_or_by_the_rule() {
    streamed_calls_settle_by_the_rule(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_streamed_calls_are_settled_from_usage_or_by_the_rule() {
    streamed_calls_settle_by_the_rule(true).await;
}

/// 50 calls at once on an account that affords exactly 20 worst cases: the upstream holds every
/// answer until 20 holds are taken and 30 calls refused with `402 insufficient_credits`; then the
/// 20 are settled at their real cost, and nothing was overspent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_calls_never_overspend_twenty_worst_cases() {
    let (app, fake) = spawn_app_with_provider(false, |_| {}).await;
    let gate = Gate::new();
    fake.on_default(Purpose::GeneralChat, FakeReply::text("four").gated(&gate));
    let worst = worst_case(1_000);
    let funded = Amount::from_micros(worst.micros() * 20);
    app.grant("crowd", json!({"amount": funded.to_string()})).await.assert_status(201);
    let key = new_key(&app, "crowd").await;
    let mut calls = sdk_calls(&app, &key, 50, 1_000, false);
    // Each call's result is printed as it ends: the 30 refusals come while the 20 wait upstream.
    let stdout = calls.stdout.take().expect("stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let mut results: Vec<Value> = Vec::new();
    while results.len() < 30 {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("30 calls end while 20 wait")
            .expect("reads")
            .expect("the script prints a line per call");
        results.push(serde_json::from_str(&line).expect("a JSON line"));
    }
    assert_eq!(app.figures("crowd").await.1, funded.to_string(), "20 worst cases held meanwhile");
    gate.open();
    while let Some(line) = lines.next_line().await.expect("reads") {
        results.push(serde_json::from_str(&line).expect("a JSON line"));
    }
    assert!(calls.wait().await.expect("the script ends").success());
    let (ok, refused): (Vec<&Value>, Vec<&Value>) = results.iter().partition(|call| call["ok"] == true);
    assert_eq!((ok.len(), refused.len()), (20, 30), "{results:#?}");
    assert!(refused.iter().all(|call| call["status"] == 402 && call["code"] == "insufficient_credits"), "{refused:#?}");
    assert_eq!(refused[0]["required"], worst.to_string());
    let charged = ok.iter().map(|call| Amount::parse(call["cost"].as_str().expect("a cost")).expect("an amount"));
    let charged = Amount::sum(charged);
    let (balance, held, _) = app.figures("crowd").await;
    assert_eq!(held, "0");
    assert_eq!(balance, funded.checked_sub(charged).expect("never overspent").to_string());
    app.assert_verified().await;
}

/// LangChain's `ChatOpenAI` pointed at the gateway works unchanged, and its call is charged its
/// exact tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn langchain_chat_openai_works_through_the_gateway() {
    let (app, fake) = spawn_app_with_provider(false, |_| {}).await;
    fake.on_default(Purpose::GeneralChat, FakeReply::text("Four."));
    app.fund("lc", "100").await;
    let key = new_key(&app, "lc").await;
    let python = std::env::var("CREDITGRAPH_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api/support/langchain_call.py");
    let plan = json!({
        "base_url": format!("{}/v1", app.address), "api_key": key, "model": MODEL, "max_tokens": 50,
        "messages": messages(),
    });
    let output = tokio::process::Command::new(&python).arg(script).arg(plan.to_string()).output().await.expect("runs");
    assert!(output.status.success(), "LangChain's call failed (is langchain-openai installed?): {output:?}");
    let answer: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(answer["content"], "Four.");
    let cost = prices()
        .cost(answer["prompt_tokens"].as_u64().expect("usage"), answer["completion_tokens"].as_u64().expect("usage"))
        .expect("in range");
    let balance = Amount::from_credits(100).checked_sub(cost).expect("affordable");
    assert_eq!(app.figures("lc").await, (balance.to_string(), "0".to_owned(), balance.to_string()));
}

/// An upstream that answers a stream's head and then dies: the first connection after one
/// chunk of output, the next ones before any. (A raw socket: the fake provider always finishes.)
async fn dying_upstream() -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let address = listener.local_addr().expect("an address");
    tokio::spawn(async move {
        let mut connections = 0;
        while let Ok((mut socket, _)) = listener.accept().await {
            connections += 1;
            // The whole request first (head, then as many body bytes as it announces).
            let mut request = Vec::new();
            let mut buffer = [0u8; 8192];
            while let Ok(read) = socket.read(&mut buffer).await {
                request.extend_from_slice(&buffer[..read]);
                let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
                let Some(head_end) = text.find("\r\n\r\n") else { continue };
                let length = text
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .and_then(|value| value.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if read == 0 || request.len() >= head_end + 4 + length {
                    break;
                }
            }
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
            let _ = socket.write_all(head.as_bytes()).await;
            if connections == 1 {
                let data = "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n";
                let _ = socket.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes()).await;
            }
            let _ = socket.flush().await;
            drop(socket);
        }
    });
    format!("http://{address}")
}

/// A stream whose upstream dies: settled at the worst case when output had come, released when
/// none had — and the client's stream ends only once the call is settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_killed_mid_stream_settles_by_the_rule() {
    let upstream = dying_upstream().await;
    let app = crate::helpers::spawn_app_with(move |settings| {
        settings.runs.llm = Some(engine::provider::openai::OpenAiConfig::new(upstream));
    })
    .await;
    app.fund("cut", "10").await;
    let key = new_key(&app, "cut").await;
    let stream = |max_tokens: u64| {
        let request = app
            .client
            .post(format!("{}/v1/chat/completions", app.address))
            .bearer_auth(&key)
            .json(&json!({"model": MODEL, "messages": messages(), "max_tokens": max_tokens, "stream": true}));
        async move {
            let response = request.send().await.expect("answers");
            assert_eq!(response.status(), 200);
            let hold_id = response.headers()["x-creditgraph-hold-id"].to_str().expect("text").to_owned();
            let body = response.bytes().await.map(|bytes| String::from_utf8_lossy(&bytes).into_owned());
            (hold_id, body.unwrap_or_default())
        }
    };
    let (hold_id, body) = stream(40).await;
    assert!(body.contains("Hel"), "the output that came was relayed: {body}");
    let hold = app.get_hold(&hold_id).await;
    assert_eq!((hold.str("state"), hold.str("captured")), ("captured", worst_case(40).to_string().as_str()));
    let (hold_id, _) = stream(40).await;
    assert_eq!(app.get_hold(&hold_id).await.str("state"), "released", "no output: nothing charged");
    let balance = Amount::from_credits(10).checked_sub(worst_case(40)).expect("affordable");
    assert_eq!(app.figures("cut").await, (balance.to_string(), "0".to_owned(), balance.to_string()));
}

/// The account's usage rows once `calls` calls are recorded (each is written just after its
/// answer, off the answer's path).
async fn recorded_usage(app: &TestApp, account: &str, calls: u64) -> Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let usage = app.get(&format!("/v1/accounts/{account}/usage")).await;
        let rows = usage.assert_status(200)["rows"].clone();
        let recorded: u64 = rows.as_array().map_or(0, |rows| rows.iter().filter_map(|row| row["calls"].as_u64()).sum());
        if recorded >= calls {
            return rows;
        }
        assert!(std::time::Instant::now() < deadline, "only {recorded} of {calls} calls recorded");
        tokio::task::yield_now().await;
    }
}

/// Reads the script's result lines until `count` have come.
async fn first_results(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    count: usize,
) -> Vec<Value> {
    let mut results = Vec::new();
    while results.len() < count {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the calls end")
            .expect("reads")
            .expect("the script prints a line per call");
        results.push(serde_json::from_str(&line).expect("a JSON line"));
    }
    results
}

/// A run's hold drawn by 30 concurrent calls (`X-Creditgraph-Hold`) that affords 12 worst
/// cases: 18 are refused with what the hold has left, the 12 are captured from it (partial
/// captures), the hold never goes below zero and ends with exactly their captures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_hold_drawn_by_thirty_calls_never_goes_negative() {
    let (app, fake) = spawn_app_with_provider(false, |_| {}).await;
    let gate = Gate::new();
    fake.on_default(Purpose::GeneralChat, FakeReply::text("four").gated(&gate));
    app.fund("runner", "100").await;
    let worst = worst_case(1_000);
    let budget = Amount::from_micros(worst.micros() * 12);
    let hold =
        app.post("/v1/holds", json!({"account_id": "runner", "amount": budget.to_string(), "ttl_seconds": 600})).await;
    let hold_id = hold.assert_status(201)["hold_id"].as_str().expect("a hold id").to_owned();
    let key = new_key(&app, "runner").await;
    let mut calls = sdk_calls_with(&app, &key, 30, 1_000, false, json!({"X-Creditgraph-Hold": hold_id}));
    let stdout = calls.stdout.take().expect("stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let mut results = first_results(&mut lines, 18).await;
    gate.open();
    results.extend(first_results(&mut lines, 12).await);
    assert!(calls.wait().await.expect("the script ends").success());
    let (ok, refused): (Vec<&Value>, Vec<&Value>) = results.iter().partition(|call| call["ok"] == true);
    assert_eq!((ok.len(), refused.len()), (12, 18), "{results:#?}");
    assert!(refused.iter().all(|call| call["status"] == 402 && call["remaining"].is_string()), "{refused:#?}");
    assert!(ok.iter().all(|call| call["hold_id"] == hold_id.as_str()), "drawn from the run's hold");
    let charged =
        Amount::sum(ok.iter().map(|call| Amount::parse(call["cost"].as_str().expect("a cost")).expect("an amount")));
    let hold = app.get_hold(&hold_id).await;
    assert_eq!((hold.str("state"), hold.str("captured")), ("pending", charged.to_string().as_str()));
    assert_eq!(hold.str("remaining"), budget.checked_sub(charged).expect("never below zero").to_string());
    app.release(&hold_id).await.assert_status(200);
    let balance = Amount::from_credits(100).checked_sub(charged).expect("affordable");
    assert_eq!(app.figures("runner").await.0, balance.to_string());
    // Another account's hold, or a hold that is no longer pending, is refused.
    let other_key = new_key(&app, "someone-else").await;
    let stranger = sdk_calls_with(&app, &other_key, 1, 10, false, json!({"X-Creditgraph-Hold": hold_id}));
    let stranger = all_results(stranger).await;
    assert_eq!((stranger[0]["status"].clone(), stranger[0]["code"].clone()), (json!(404), json!("hold_not_found")));
    let ended = all_results(sdk_calls_with(&app, &key, 1, 10, false, json!({"X-Creditgraph-Hold": hold_id}))).await;
    assert_eq!((ended[0]["status"].clone(), ended[0]["code"].clone()), (json!(409), json!("hold_not_pending")));
    app.assert_verified().await;
}

/// Keys: created (shown once), listed without their text, revoked (then refused); errors in
/// OpenAI's shape for a missing key, an unknown model, a cap above the model's, and `n > 1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_errors() {
    let (app, fake) = spawn_app_with_provider(false, |_| {}).await;
    fake.on_default(Purpose::GeneralChat, FakeReply::text("four"));
    app.fund("kay", "10").await;
    let created = app.post("/v1/accounts/kay/keys", json!({"models": [MODEL], "daily_limit": "5"})).await;
    let created = created.assert_status(201).clone();
    let key = created["key"].as_str().expect("the key").to_owned();
    assert!(key.starts_with("cg_") && key.starts_with(created["prefix"].as_str().expect("a prefix")), "{created}");
    let listed = app.get("/v1/accounts/kay/keys").await;
    let listed = listed.assert_status(200)["keys"].clone();
    assert_eq!((listed[0]["key_id"].clone(), listed[0].get("key")), (created["key_id"].clone(), None));
    app.post("/v1/accounts/kay/keys", json!({"models": ["gpt-9"]})).await.assert_problem(422, "unknown_model");

    let chat = |bearer: String, body: Value| {
        let client = app.client.clone();
        let url = format!("{}/v1/chat/completions", app.address);
        async move {
            let response = client.post(url).bearer_auth(bearer).json(&body).send().await.expect("answers");
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.expect("JSON"))
        }
    };
    let body = |extra: Value| {
        let mut body = json!({"model": MODEL, "messages": messages()});
        body.as_object_mut().expect("an object").extend(extra.as_object().expect("an object").clone());
        body
    };
    let (status, answer) = chat(key.clone(), body(json!({}))).await;
    assert_eq!(status, 200, "{answer}");
    // The models this key may call, in OpenAI's list shape.
    let models = app.client.get(format!("{}/v1/models", app.address)).bearer_auth(&key).send().await.expect("answers");
    let models: Value = models.json().await.expect("JSON");
    assert_eq!(
        models["data"].as_array().map(|data| data.iter().map(|model| model["id"].clone()).collect::<Vec<_>>()),
        Some(vec![json!(MODEL)])
    );
    // A context larger than the API's other bodies (64 KiB) is served (up to 1 MiB).
    let long = json!([
        {"role": "system", "content": "[creditgraph:general_chat] Summarise."},
        {"role": "user", "content": "word ".repeat(40_000)},
    ]);
    let (status, answer) = chat(key.clone(), json!({"model": MODEL, "messages": long, "max_tokens": 10})).await;
    assert_eq!(status, 200, "{answer}");
    let (status, error) = chat("cg_nope".to_owned(), body(json!({}))).await;
    assert_eq!((status, &error["error"]["code"]), (401, &json!("invalid_api_key")), "{error}");
    let (status, error) = chat(key.clone(), body(json!({"model": "gpt-4o"}))).await;
    assert_eq!((status, &error["error"]["code"]), (403, &json!("model_not_allowed")), "{error}");
    let (status, error) = chat(key.clone(), body(json!({"model": "gpt-9"}))).await;
    assert_eq!((status, &error["error"]["code"]), (404, &json!("model_not_found")), "{error}");
    let (status, error) = chat(key.clone(), body(json!({"max_tokens": 1_000_000}))).await;
    assert_eq!((status, &error["error"]["code"]), (422, &json!("max_tokens_too_large")), "{error}");
    let (status, error) = chat(key.clone(), body(json!({"n": 2}))).await;
    assert_eq!((status, &error["error"]["code"]), (400, &json!("unsupported_parameter")), "{error}");
    let (status, error) = chat(key.clone(), json!({"model": MODEL})).await;
    assert_eq!((status, &error["error"]["code"]), (400, &json!("invalid_messages")), "{error}");
    assert_eq!(app.figures("kay").await.1, "0", "no hold left behind by a refused call");

    // A key's daily limit: the worst case must fit in what it has left today.
    let limited = app.post("/v1/accounts/kay/keys", json!({"daily_limit": "0.005"})).await;
    let limited = limited.assert_status(201)["key"].as_str().expect("a key").to_owned();
    let (status, answer) = chat(limited.clone(), body(json!({"max_tokens": 50}))).await;
    assert_eq!(status, 200, "{answer}");
    // The limit counts recorded calls (written just after each answer): wait for this one's.
    let calls_so_far = 3;
    recorded_usage(&app, "kay", calls_so_far).await;
    let (status, error) = chat(limited, body(json!({"max_tokens": 50}))).await;
    assert_eq!((status, &error["error"]["code"]), (402, &json!("key_daily_limit")), "{error}");
    assert!(error["error"]["remaining"].is_string(), "{error}");

    let key_id = created["key_id"].as_str().expect("an id");
    let revoked = app.request_delete(&format!("/v1/accounts/kay/keys/{key_id}")).await;
    assert!(revoked.assert_status(200)["revoked_at"].is_string());
    let (status, error) = chat(key, body(json!({}))).await;
    assert_eq!((status, &error["error"]["code"]), (401, &json!("invalid_api_key")), "{error}");
    app.request_delete("/v1/accounts/kay/keys/key-ghost").await.assert_problem(404, "api_key_not_found");
}
