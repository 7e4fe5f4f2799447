//! Recurring allowances and plans over HTTP, on both stores: a daily allowance in Asia/Seoul
//! appears at 00:00 local and its remainder expires at the next 00:00, rollover rules, a month
//! anchored on the 31st and a New York DST day, ending at the period's end, plans switching, the
//! errors; and two `creditgraph serve --test-clock` processes on one PostgreSQL database reading
//! at the boundary grant the period once.

use futures::future::join_all;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_postgres, ServerProcess, TestApp};

/// `text` (RFC 3339) as the clock's time.
fn at(text: &str) -> ledger::Timestamp {
    server::wire::parse_time("at", text).expect("an RFC 3339 time")
}

fn grants_of_kind<'a>(account: &'a Value, kind: &str) -> Vec<&'a Value> {
    account["grants"].as_array().expect("grants").iter().filter(|grant| grant["kind"] == kind).collect()
}

async fn seoul_midnight(app: TestApp) {
    // 23:00 in Seoul on 1 December 2026.
    app.clock.set(at("2026-12-01T14:00:00Z"));
    let created = app
        .post(
            "/v1/accounts/mina/allowances",
            json!({"amount": "10", "period": "day", "timezone": "Asia/Seoul", "reference": "free-daily"}),
        )
        .await;
    let allowance = created.assert_status(201).clone();
    let id = allowance["allowance_id"].as_str().expect("an id").to_owned();
    assert_eq!(allowance["current_period"], json!({"start": "2026-11-30T15:00:00Z", "end": "2026-12-01T15:00:00Z"}));
    assert_eq!(allowance["current_grant_reference"], format!("{id}:2026-12-01T00:00:00+09:00"));
    assert_eq!(app.figures("mina").await, ("10".to_owned(), "0".to_owned(), "10".to_owned()));
    let hold = app.post("/v1/holds", json!({"account_id": "mina", "amount": "4", "ttl_seconds": 7200})).await;
    let hold = hold.assert_status(201)["hold_id"].as_str().expect("a hold id").to_owned();

    // 00:00:00.000 in Seoul: yesterday's 6 free expired, today's 10 are there, nothing swept.
    app.clock.set(at("2026-12-01T15:00:00Z"));
    let account = app.account("mina").await;
    let account = account.assert_status(200);
    assert_eq!(account["available"], "10", "{account}");
    let today = grants_of_kind(account, "allowance");
    let references: Vec<&str> = today.iter().filter_map(|grant| grant["reference"].as_str()).collect();
    assert!(references.contains(&format!("{id}:2026-12-02T00:00:00+09:00").as_str()), "{account}");
    // The new day's credits are there for a hold at that instant.
    app.hold("mina", "10").await.assert_status(201);
    app.release(&hold).await.assert_status(200);
    // Released into yesterday's grant, which has expired: nothing comes back.
    assert_eq!(app.figures("mina").await, ("10".to_owned(), "10".to_owned(), "0".to_owned()));
    let entries = app.entries("mina", "").await;
    let grants: Vec<&Value> = entries.assert_status(200)["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .filter(|entry| entry["kind"] == "grant")
        .collect();
    assert_eq!(grants.len(), 2, "one grant per day: {entries:?}", entries = entries.body);

    let listed = app.get("/v1/accounts/mina/allowances").await;
    assert_eq!(listed.assert_status(200)["allowances"][0]["allowance_id"], id.as_str());
    // Ending it keeps today's credits; tomorrow grants nothing.
    let ended = app.request_delete(&format!("/v1/accounts/mina/allowances/{id}")).await;
    assert_eq!(ended.assert_status(200)["ends_at"], "2026-12-02T15:00:00Z");
    app.clock.set(at("2026-12-02T15:00:00Z"));
    app.get("/v1/accounts/mina/allowances").await.assert_status(200);
    let listed = app.get("/v1/accounts/mina/allowances").await;
    assert_eq!(listed.body["allowances"], json!([]), "{}", listed.text);
    app.request_delete(&format!("/v1/accounts/mina/allowances/{id}")).await.assert_problem(404, "allowance_not_found");
    app.assert_verified().await;
}

#[tokio::test]
async fn a_daily_allowance_in_seoul_renews_at_local_midnight_on_sqlite() {
    seoul_midnight(spawn_app().await).await;
}

#[tokio::test]
async fn a_daily_allowance_in_seoul_renews_at_local_midnight_on_postgres() {
    seoul_midnight(spawn_app_postgres().await).await;
}

/// A month anchored on 31 January runs to the last day of February; a New York day around the
/// spring DST change lasts 23 hours; `cap` keeps at most the cap of earlier periods.
#[tokio::test]
async fn month_ends_dst_days_and_rollover_caps() {
    let app = spawn_app().await;
    app.clock.set(at("2028-02-15T12:00:00Z"));
    let monthly = app
        .post(
            "/v1/accounts/ny/allowances",
            json!({"amount": "30", "period": "month", "timezone": "America/New_York",
                   "anchor": "2028-01-31T00:00:00-05:00", "rollover": "keep"}),
        )
        .await;
    let monthly = monthly.assert_status(201);
    // 2028 is a leap year: the period anchored on the 31st starts on 31 Jan, then 29 Feb.
    assert_eq!(monthly["current_period"], json!({"start": "2028-01-31T05:00:00Z", "end": "2028-02-29T05:00:00Z"}));

    app.clock.set(at("2028-03-12T12:00:00Z"));
    let daily = app
        .post(
            "/v1/accounts/ny/allowances",
            json!({"amount": "5", "period": "day", "timezone": "America/New_York", "rollover": "cap", "rollover_cap": "2"}),
        )
        .await;
    let daily = daily.assert_status(201);
    // 12 March 2028: clocks spring forward at 02:00, so the day is 23 hours long.
    assert_eq!(daily["current_period"], json!({"start": "2028-03-12T05:00:00Z", "end": "2028-03-13T04:00:00Z"}));
    let available = app.figures("ny").await.2;
    assert_eq!(available, "65", "the periods from 31 January and 29 February, kept, and today's 5");
    app.clock.set(at("2028-03-13T04:00:00Z"));
    // The capped daily keeps 2 of yesterday's 5 and adds 5.
    assert_eq!(app.figures("ny").await.2, "67");
    app.assert_verified().await;
}

#[tokio::test]
async fn bad_allowances_are_refused_with_typed_problems() {
    let app = spawn_app().await;
    let base = json!({"amount": "1", "period": "day", "timezone": "Asia/Seoul"});
    let with = |field: &str, value: Value| {
        let mut body = base.clone();
        body[field] = value;
        body
    };
    let cases = [
        (with("timezone", json!("Mars/Olympus")), 422, "unknown_time_zone"),
        (with("period", json!("fortnight")), 422, "unknown_period"),
        (with("amount", json!("0")), 422, "invalid_amount"),
        (with("rollover", json!("cap")), 422, "invalid_request"),
        (with("rollover_cap", json!("3")), 422, "invalid_request"),
        (with("rollover", json!("forever")), 422, "invalid_request"),
        (with("anchor", json!("yesterday")), 422, "invalid_request"),
        (with("ends_at", json!("2000-01-01T00:00:00Z")), 422, "invalid_request"),
        (with("colour", json!("blue")), 422, "invalid_request"),
    ];
    for (body, status, code) in cases {
        app.post("/v1/accounts/bad/allowances", body.clone()).await.assert_problem(status, code);
    }
    assert_eq!(app.account("bad").await.status, 404, "nothing was created");
    for _ in 0..16 {
        app.post("/v1/accounts/many/allowances", base.clone()).await.assert_status(201);
    }
    let refused = app.post("/v1/accounts/many/allowances", base.clone()).await;
    refused.assert_problem(409, "allowance_limit");
    assert_eq!(refused.body["allowances_max"], 16);
    app.request_delete("/v1/accounts/many/allowances/al_nope").await.assert_problem(404, "allowance_not_found");
    app.assert_verified().await;
}

async fn plans(app: TestApp) {
    app.clock.set(at("2026-06-15T00:00:00Z"));
    let plan = |plan_id: &str, credits: &str| {
        json!({"plan_id": plan_id, "name": format!("{plan_id} plan"),
               "allowances": [{"amount": credits, "period": "month", "timezone": "UTC"}]})
    };
    app.post("/v1/plans", plan("basic", "100")).await.assert_status(201);
    app.post("/v1/plans", plan("basic", "100")).await.assert_status(200);
    app.post("/v1/plans", plan("basic", "999")).await.assert_problem(409, "plan_exists");
    app.post("/v1/plans", plan("pro", "500")).await.assert_status(201);
    let listed = app.get("/v1/plans").await;
    let ids: Vec<&str> = listed.assert_status(200)["plans"]
        .as_array()
        .expect("plans")
        .iter()
        .filter_map(|plan| plan["plan_id"].as_str())
        .collect();
    assert_eq!(ids, ["basic", "pro"]);
    assert_eq!(app.get("/v1/plans/pro").await.assert_status(200)["allowances"][0]["amount"], "500");
    app.get("/v1/plans/gold").await.assert_problem(404, "plan_not_found");

    let subscribed = app.post_with_key("/v1/accounts/lee/plan", "sub-1", json!({"plan_id": "basic"})).await;
    assert_eq!(subscribed.assert_status(200)["allowances"][0]["plan_id"], "basic");
    let replayed = app.post_with_key("/v1/accounts/lee/plan", "sub-1", json!({"plan_id": "basic"})).await;
    assert_eq!(replayed.body, subscribed.body, "a retried subscription answers the same");
    assert_eq!(app.figures("lee").await.2, "100");
    let switched = app.post("/v1/accounts/lee/plan", json!({"plan_id": "pro"})).await;
    let switched = switched.assert_status(200);
    assert_eq!(switched["ended"][0]["ends_at"], "2026-07-01T00:00:00Z", "{switched}");
    assert_eq!(app.figures("lee").await.2, "600", "June keeps basic's credits and gets pro's");
    app.clock.set(at("2026-07-01T00:00:00Z"));
    assert_eq!(app.figures("lee").await.2, "500", "July: pro only");
    app.post("/v1/accounts/lee/plan", json!({"plan_id": "gold"})).await.assert_problem(404, "plan_not_found");
    app.assert_verified().await;
}

#[tokio::test]
async fn plans_are_defined_once_and_switch_at_the_period_end_on_sqlite() {
    plans(spawn_app().await).await;
}

#[tokio::test]
async fn plans_are_defined_once_and_switch_at_the_period_end_on_postgres() {
    plans(spawn_app_postgres().await).await;
}

async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Two processes on one PostgreSQL database, each with its test clock moved past the next
/// Seoul midnight, answer concurrent holds and reads from both: the new day is granted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_server_processes_at_the_boundary_grant_the_period_once() {
    let database = store_postgres::testing::fresh_database().await;
    let args = ["--test-clock", "--sandbox", "none"];
    let servers = [ServerProcess::start_with(&database, &args, &[]), ServerProcess::start_with(&database, &args, &[])];
    let client = reqwest::Client::new();
    let (status, allowance) = send(
        client
            .post(format!("{}/v1/accounts/both/allowances", servers[0].base))
            .json(&json!({"amount": "100", "period": "day", "timezone": "Asia/Seoul"})),
    )
    .await;
    assert_eq!(status, 201, "{allowance}");
    // Seconds from now to two seconds past the next midnight in Seoul, on both clocks.
    let end = server::wire::parse_time("end", allowance["current_period"]["end"].as_str().expect("end")).expect("time");
    let (_, clock) = send(client.get(format!("{}/v1/test-clock", servers[0].base))).await;
    let now = server::wire::parse_time("now", clock["now"].as_str().expect("now")).expect("time");
    let seconds = (end.micros() - now.micros()) / 1_000_000 + 2;
    for server in &servers {
        let (status, clock) =
            send(client.post(format!("{}/v1/test-clock/advance", server.base)).json(&json!({"seconds": seconds})))
                .await;
        assert_eq!(status, 200, "{clock}");
    }
    let requests = (0..32).map(|index| {
        let base = servers[index % 2].base.clone();
        let client = client.clone();
        async move {
            if index % 4 == 3 {
                send(client.get(format!("{base}/v1/accounts/both"))).await
            } else {
                send(client.post(format!("{base}/v1/holds")).json(&json!({"account_id": "both", "amount": "1"}))).await
            }
        }
    });
    for (status, body) in join_all(requests).await {
        assert!(status == 201 || status == 200, "{status}: {body}");
    }
    let (_, entries) = send(client.get(format!("{}/v1/accounts/both/entries?limit=1000", servers[1].base))).await;
    let grants: Vec<&Value> =
        entries["entries"].as_array().expect("entries").iter().filter(|entry| entry["kind"] == "grant").collect();
    assert_eq!(grants.len(), 2, "the first day and the new one, once: {grants:#?}");
    let (_, account) = send(client.get(format!("{}/v1/accounts/both", servers[0].base))).await;
    assert_eq!(account["held"], "24", "{account}");
    assert_eq!(account["available"], "76", "yesterday's 100 expired, today's 100 less 24 held: {account}");
}
