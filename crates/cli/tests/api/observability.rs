//! The operator's view of a real `creditgraph serve` process: `GET /metrics` after a known
//! sequence of operations, parsed by Prometheus's own text parser (`prometheus_client`, from
//! PyPI), on both stores; request ids echoed in headers and problem bodies; one JSON log line per
//! request carrying the id and the ids its path names.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::ServerProcess;

const ADMIN: &str = "admin-token";
const SERVICE: &str = "service-token";

/// One parsed sample.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The exposition's samples, as `prometheus_client`'s parser reads them.
async fn parse(text: &str) -> Vec<Sample> {
    use tokio::io::AsyncWriteExt;
    let python = std::env::var("CREDITGRAPH_TEST_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api/support/parse_metrics.py");
    let mut child = tokio::process::Command::new(&python)
        .arg(script)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python starts");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(text.as_bytes()).await.expect("exposition written");
    drop(stdin);
    let output = child.wait_with_output().await.expect("parser ends");
    assert!(
        output.status.success(),
        "the Prometheus parser refused the exposition (is prometheus-client installed?): {output:?}"
    );
    let samples: Vec<Value> = serde_json::from_slice(&output.stdout).expect("JSON");
    samples
        .into_iter()
        .map(|sample| Sample {
            name: sample["name"].as_str().expect("name").to_owned(),
            labels: serde_json::from_value(sample["labels"].clone()).expect("labels"),
            value: sample["value"].as_f64().expect("value"),
        })
        .collect()
}

/// The value of the one sample named `name` whose labels include `labels`; 0 when none is (a
/// counter not yet incremented has no series).
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<&Sample> = samples
        .iter()
        .filter(|sample| sample.name == name)
        .filter(|sample| labels.iter().all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(*value)))
        .collect();
    assert!(matching.len() <= 1, "{name} {labels:?} matches several series: {matching:?}");
    matching.first().map_or(0.0, |sample| sample.value)
}

async fn send(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = client.request(method, url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let reply = request.send().await.expect("request");
    let status = reply.status().as_u16();
    (status, reply.json().await.unwrap_or(Value::Null))
}

/// Grant 100; hold 30 and capture 10 of it (final: 20 released); hold 5 and release it; hold 7
/// left pending; a hold of 1,000 refused. Then every figure the scrape shows is known.
async fn metrics_count_a_known_sequence(database: &str) {
    let server = ServerProcess::start_with(database, &["--tokens", &format!("admin:{ADMIN},service:{SERVICE}")], &[]);
    let base = server.base.clone();
    let client = reqwest::Client::new();
    let post = |path: &str, token: &'static str, body: Value| {
        send(&client, reqwest::Method::POST, format!("{base}{path}"), token, Some(body))
    };
    assert_eq!(post("/v1/accounts/alice/grants", ADMIN, json!({"amount": "100"})).await.0, 201);
    let (status, first) = post("/v1/holds", SERVICE, json!({"account_id": "alice", "amount": "30"})).await;
    assert_eq!(status, 201);
    let first = first["hold_id"].as_str().expect("hold id").to_owned();
    let capture = json!({"amount": "10", "final": true});
    assert_eq!(post(&format!("/v1/holds/{first}/capture"), SERVICE, capture).await.0, 200);
    let (_, second) = post("/v1/holds", SERVICE, json!({"account_id": "alice", "amount": "5"})).await;
    let second = second["hold_id"].as_str().expect("hold id").to_owned();
    assert_eq!(post(&format!("/v1/holds/{second}/release"), SERVICE, json!({})).await.0, 200);
    assert_eq!(post("/v1/holds", SERVICE, json!({"account_id": "alice", "amount": "7"})).await.0, 201);
    assert_eq!(post("/v1/holds", SERVICE, json!({"account_id": "alice", "amount": "1000"})).await.0, 402);

    let scrape = |token: &'static str| client.get(format!("{base}/metrics")).bearer_auth(token).send();
    assert_eq!(
        scrape(SERVICE).await.expect("scrape").status(),
        403,
        "a service token may not read every account's figures"
    );
    assert_eq!(client.get(format!("{base}/metrics")).send().await.expect("scrape").status(), 401);
    let reply = scrape(ADMIN).await.expect("scrape");
    assert_eq!(reply.status(), 200);
    let content_type = reply.headers()["content-type"].to_str().expect("ascii").to_owned();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let samples = parse(&reply.text().await.expect("body")).await;

    let credits = |kind: &str| value(&samples, "creditgraph_credits_micros_total", &[("kind", kind)]);
    assert_eq!(credits("grant"), 100e6);
    assert_eq!(credits("hold"), 42e6);
    assert_eq!(credits("capture"), 10e6);
    assert_eq!(credits("release"), 25e6, "20 left over by the final capture, 5 released");
    let commands = |command: &str, outcome: &str| {
        value(&samples, "creditgraph_ledger_commands_total", &[("command", command), ("outcome", outcome)])
    };
    assert_eq!(commands("grant", "applied"), 1.0);
    assert_eq!(commands("hold", "applied"), 3.0);
    assert_eq!(commands("hold", "insufficient_credits"), 1.0);
    assert_eq!(commands("capture", "applied"), 1.0);
    assert_eq!(commands("release", "applied"), 1.0);
    let store = if database.starts_with("postgres") { "postgres" } else { "sqlite" };
    assert_eq!(value(&samples, "creditgraph_pending_holds", &[("store", store)]), 1.0);
    assert_eq!(value(&samples, "creditgraph_held_credits_micros", &[("store", store)]), 7e6);
    assert_eq!(value(&samples, "creditgraph_jobs", &[("store", store), ("status", "queued")]), 0.0);
    let requests = |route: &str, status: &str| {
        value(&samples, "creditgraph_http_requests_total", &[("method", "POST"), ("route", route), ("status", status)])
    };
    assert_eq!(requests("/v1/holds", "201"), 3.0);
    assert_eq!(requests("/v1/holds", "402"), 1.0);
    assert_eq!(requests("/v1/holds/{hold_id}/capture", "200"), 1.0);
    let scrapes = &[("method", "GET"), ("route", "/metrics"), ("status", "403")];
    assert_eq!(value(&samples, "creditgraph_http_requests_total", scrapes), 1.0);
    let held_requests = &[("method", "POST"), ("route", "/v1/holds")];
    assert_eq!(value(&samples, "creditgraph_http_request_duration_seconds_count", held_requests), 4.0);
    let le_inf = &[("method", "POST"), ("route", "/v1/holds"), ("le", "+Inf")];
    assert_eq!(value(&samples, "creditgraph_http_request_duration_seconds_bucket", le_inf), 4.0);
    // The six ledger writes commit in batches of their own or shared; the server's other writes
    // (its instance lease, the sweeper) add batches of their own.
    let batches = value(&samples, "creditgraph_store_batch_size_count", &[("store", store)]);
    assert!(batches >= 1.0, "the ledger's writes committed in batches: {batches}");
    assert!(value(&samples, "creditgraph_store_commit_seconds_count", &[("store", store)]) >= batches);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_sequence_on_sqlite() {
    let directory = tempfile::tempdir().expect("temp dir");
    let database = format!("sqlite:{}", directory.path().join("metrics.db").display());
    metrics_count_a_known_sequence(&database).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_sequence_on_postgres() {
    let database = store_postgres::testing::fresh_database().await;
    metrics_count_a_known_sequence(&database).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_has_an_id_in_its_headers_problems_and_json_log_line() {
    let directory = tempfile::tempdir().expect("temp dir");
    let database = format!("sqlite:{}", directory.path().join("logs.db").display());
    let mut server = ServerProcess::start_with(&database, &["--log-format", "json"], &[]);
    let client = reqwest::Client::new();

    // A client's id is kept and echoed, in the header and in the problem body.
    let reply = client
        .post(format!("{}/v1/holds", server.base))
        .header("x-request-id", "trace-me-42")
        .json(&json!({"account_id": "nobody", "amount": "1"}))
        .send()
        .await
        .expect("request");
    assert_eq!(reply.status(), 404);
    assert_eq!(reply.headers()["x-request-id"], "trace-me-42");
    let problem: Value = reply.json().await.expect("problem");
    assert_eq!(problem["code"], "account_not_found");
    assert_eq!(problem["request_id"], "trace-me-42");

    // One JSON line at info for it: method, route template, status, latency and the id.
    let line = server.wait_for_line("trace-me-42", Duration::from_secs(10));
    let logged: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("a JSON log line: {line}"));
    assert_eq!(logged["level"], "INFO", "{logged}");
    assert_eq!(logged["fields"]["method"], "POST", "{logged}");
    assert_eq!(logged["fields"]["route"], "/v1/holds", "{logged}");
    assert_eq!(logged["fields"]["status"], 404, "{logged}");
    assert!(logged["fields"]["latency_ms"].as_f64().is_some(), "{logged}");
    assert_eq!(logged["span"]["request_id"], "trace-me-42", "{logged}");

    // Without one (or with one that is not printable), a fresh id; the path's ids are logged.
    let reply = client
        .get(format!("{}/v1/accounts/carol", server.base))
        .header("x-request-id", "two words")
        .send()
        .await
        .expect("request");
    let id = reply.headers()["x-request-id"].to_str().expect("ascii").to_owned();
    assert_ne!(id, "two words");
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let line = server.wait_for_line(&id, Duration::from_secs(10));
    let logged: Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(logged["span"]["account_id"], "carol", "{logged}");
    assert_eq!(logged["fields"]["route"], "/v1/accounts/{account_id}", "{logged}");
}
