//! The admin test clock: `creditgraph serve --test-clock` (the real binary, loopback) moves its
//! time forward on `POST /v1/test-clock/advance`, and everything that reads time follows — a
//! hold's expiry is seen on the next read; without the flag the routes answer 404.

use serde_json::{json, Value};

use crate::helpers::{spawn_app, ServerProcess};

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advancing_the_test_clock_expires_a_hold_on_the_next_read() {
    let dir = tempfile::tempdir().expect("temporary folder");
    let database = format!("sqlite:{}", dir.path().join("creditgraph.db").display());
    let server = ServerProcess::start_with(&database, &["--test-clock", "--sandbox", "none"], &[]);
    let base = &server.base;
    let client = reqwest::Client::new();
    let (status, _) = send(client.post(format!("{base}/v1/accounts/tess/grants")).json(&json!({"amount": "10"}))).await;
    assert_eq!(status, 201);
    let (status, hold) = send(
        client.post(format!("{base}/v1/holds")).json(&json!({"account_id": "tess", "amount": "4", "ttl_seconds": 60})),
    )
    .await;
    assert_eq!(status, 201, "{hold}");
    let (status, clock) = send(client.get(format!("{base}/v1/test-clock"))).await;
    assert_eq!((status, clock["offset_seconds"].as_i64()), (200, Some(0)), "{clock}");

    let (status, clock) =
        send(client.post(format!("{base}/v1/test-clock/advance")).json(&json!({"seconds": 61}))).await;
    assert_eq!((status, clock["offset_seconds"].as_i64()), (200, Some(61)), "{clock}");
    let hold_id = hold["hold_id"].as_str().expect("a hold id");
    let (_, hold) = send(client.get(format!("{base}/v1/holds/{hold_id}"))).await;
    assert_eq!(hold["state"], "expired", "{hold}");
    let (_, account) = send(client.get(format!("{base}/v1/accounts/tess"))).await;
    assert_eq!((account["held"].as_str(), account["available"].as_str()), (Some("0"), Some("10")), "{account}");

    for seconds in [json!(0), json!(366 * 24 * 3600 + 1), json!(-5)] {
        let (status, problem) =
            send(client.post(format!("{base}/v1/test-clock/advance")).json(&json!({"seconds": seconds}))).await;
        assert_eq!((status, problem["code"].as_str()), (422, Some("invalid_request")), "{seconds}: {problem}");
    }
    let (_, clock) = send(client.get(format!("{base}/v1/test-clock"))).await;
    assert_eq!(clock["offset_seconds"], 61, "refused moves change nothing");
}

#[tokio::test]
async fn without_the_flag_the_test_clock_routes_answer_404() {
    let app = spawn_app().await;
    app.get("/v1/test-clock").await.assert_problem(404, "test_clock_disabled");
    app.post("/v1/test-clock/advance", json!({"seconds": 60})).await.assert_problem(404, "test_clock_disabled");
    // A service token may not move time even where a clock exists: the route needs admin.
    let reply = app
        .client
        .get(format!("{}/v1/test-clock", app.address))
        .bearer_auth(crate::helpers::SERVICE_TOKEN)
        .send()
        .await
        .expect("request");
    assert_eq!(reply.status(), 403);
}
