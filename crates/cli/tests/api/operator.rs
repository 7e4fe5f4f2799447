//! The operator's lists over HTTP: accounts by prefix page by page (admin only), an account's
//! runs and video jobs newest first with cursors that cannot be forged into another account's,
//! and the overview's per-day sums; on both stores.

use std::collections::BTreeSet;

use engine::provider::Purpose;
use engine::testing::FakeReply;
use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_postgres, spawn_app_with_provider, Body, TestApp, SERVICE_TOKEN};

/// Every page of `path` (a list answering `{<field>: [...], next}`), following `next`.
async fn all_pages(app: &TestApp, path: &str, field: &str) -> Vec<Vec<Value>> {
    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let separator = if path.contains('?') { '&' } else { '?' };
        let url = match &after {
            Some(after) => format!("{path}{separator}after={after}"),
            None => path.to_owned(),
        };
        let reply = app.get(&url).await;
        let body = reply.assert_status(200);
        pages.push(body[field].as_array().expect("a list").clone());
        match body["next"].as_str() {
            Some(next) => after = Some(next.to_owned()),
            None => return pages,
        }
        assert!(pages.len() < 20, "pages never end: {pages:?}");
    }
}

async fn accounts_are_listed_by_prefix_page_by_page(app: TestApp) {
    for (account, amount) in [("acme-3", "3"), ("acme-1", "1"), ("acme-10", "10"), ("acme-2", "2"), ("zeta", "9")] {
        app.fund(account, amount).await;
    }
    let hold = app.hold_id("acme-2", "0.5").await;
    let pages = all_pages(&app, "/v1/accounts?prefix=acme-&limit=2", "accounts").await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 2]);
    let listed: Vec<(&str, &str, &str, &str)> = pages
        .iter()
        .flatten()
        .map(|account| {
            let field = |name: &str| account[name].as_str().expect("a string");
            (field("account_id"), field("balance"), field("held"), field("available"))
        })
        .collect();
    assert_eq!(
        listed,
        vec![
            ("acme-1", "1", "0", "1"),
            ("acme-10", "10", "0", "10"),
            ("acme-2", "2", "0.5", "1.5"),
            ("acme-3", "3", "0", "3"),
        ]
    );
    assert!(!hold.is_empty());
    let everyone = app.get("/v1/accounts").await;
    let ids: BTreeSet<&str> = everyone.assert_status(200)["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["account_id"].as_str().unwrap())
        .collect();
    assert!(ids.contains("zeta") && ids.len() == 5, "{ids:?}");

    // Admin only; bad input is a clear 422.
    let as_service = app.request(Method::GET, "/v1/accounts", Some(SERVICE_TOKEN), None, Body::None).await;
    as_service.assert_problem(403, "forbidden");
    app.get("/v1/accounts?after=not%20an%20id").await.assert_problem(422, "invalid_request");
    app.get("/v1/accounts?prefix=%3Cscript%3E").await.assert_problem(422, "invalid_request");
    app.get("/v1/accounts?limit=0").await.assert_problem(422, "invalid_request");
    app.get("/v1/accounts?limit=1001").await.assert_problem(422, "invalid_request");
    app.get("/v1/accounts?page=2").await.assert_problem(422, "invalid_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_are_listed_by_prefix_page_by_page_on_sqlite() {
    accounts_are_listed_by_prefix_page_by_page(spawn_app().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_are_listed_by_prefix_page_by_page_on_postgres() {
    accounts_are_listed_by_prefix_page_by_page(spawn_app_postgres().await).await;
}

async fn runs_and_jobs_are_listed_newest_first(postgres: bool) {
    let (app, fake) = spawn_app_with_provider(postgres, |settings| settings.runs.jobs.workers_in_process = 0).await;
    app.fund("carol", "100").await;
    app.fund("dan", "100").await;
    let mut run_ids = Vec::new();
    for thread in ["t1", "t2", "t3"] {
        fake.on(Purpose::Router, FakeReply::route(true));
        fake.on(Purpose::GeneralChat, FakeReply::text("hello"));
        let stream = app.solve(json!({"account_id": "carol", "problem": "hi", "thread_id": thread})).await;
        run_ids.push(stream.run_id.clone());
        stream.collect().await;
    }
    fake.on(Purpose::Router, FakeReply::route(true));
    fake.on(Purpose::GeneralChat, FakeReply::text("hello"));
    let other = app.solve(json!({"account_id": "dan", "problem": "hi", "thread_id": "d1"})).await;
    let other_run = other.run_id.clone();
    other.collect().await;

    let pages = all_pages(&app, "/v1/accounts/carol/runs?limit=2", "runs").await;
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 1]);
    let listed: Vec<&str> = pages.iter().flatten().map(|run| run["run_id"].as_str().unwrap()).collect();
    let newest_first: Vec<&str> = run_ids.iter().rev().map(String::as_str).collect();
    assert_eq!(listed, newest_first);
    let first = &pages[0][0];
    assert_eq!(first["details"]["reserved"], "1.5", "{first}");
    let log: Vec<(&str, &str)> = first["details"]["log"]
        .as_array()
        .expect("the credit log comes with the run")
        .iter()
        .map(|line| (line["node"].as_str().unwrap(), line["cost"].as_str().unwrap()))
        .collect();
    assert_eq!(log, vec![("router", "1"), ("general", "0.5")], "{first}");
    // A cursor is a run of this account: another account's run is refused, not followed.
    let forged = app.get(&format!("/v1/accounts/carol/runs?after={other_run}")).await;
    forged.assert_problem(422, "invalid_request");
    app.get("/v1/accounts/carol/runs?after=run-unknown").await.assert_problem(422, "invalid_request");

    // A video turn queues a job (no worker runs it here).
    let (_, job_id) = crate::jobs::video_turn(&app, &fake, "carol", "t-video").await;
    let jobs = app.get("/v1/accounts/carol/jobs").await;
    let listed = jobs.assert_status(200)["jobs"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!((listed[0]["job_id"].as_str(), listed[0]["status"].as_str()), (Some(job_id.as_str()), Some("queued")));
    let none = app.get("/v1/accounts/dan/jobs").await;
    assert_eq!(none.assert_status(200)["jobs"], json!([]));
    app.get(&format!("/v1/accounts/dan/jobs?after={job_id}")).await.assert_problem(422, "invalid_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_and_jobs_are_listed_newest_first_on_sqlite() {
    runs_and_jobs_are_listed_newest_first(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_and_jobs_are_listed_newest_first_on_postgres() {
    runs_and_jobs_are_listed_newest_first(true).await;
}

/// The overview sums the journal per UTC day of the window and counts what is held now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_sums_each_day_and_counts_pending_holds() {
    let app = spawn_app().await;
    app.fund("ov-1", "10").await;
    let hold = app.hold_id("ov-1", "4").await;
    app.capture(&hold, json!({"amount": "3", "final": true})).await.assert_status(200);
    app.hold_id("ov-1", "2").await;
    app.clock.advance_seconds(86_400);
    app.fund("ov-2", "5").await;
    app.debit("ov-2", json!({"amount": "1"})).await.assert_status(201);

    let reply = app.get("/v1/overview?days=3").await;
    let body = reply.assert_status(200);
    assert_eq!(body["pending_holds"], 1, "{body}");
    assert_eq!(body["held"], "2", "{body}");
    let days = body["days"].as_array().expect("days");
    assert_eq!(days.len(), 3, "{body}");
    let figures = |day: &Value| {
        let field = |name: &str| day[name].as_str().expect("a string").to_owned();
        (field("granted"), field("captured"), field("refunded"))
    };
    assert_eq!(figures(&days[0]), ("0".to_owned(), "0".to_owned(), "0".to_owned()));
    assert_eq!(figures(&days[1]), ("10".to_owned(), "3".to_owned(), "0".to_owned()));
    assert_eq!(figures(&days[2]), ("5".to_owned(), "1".to_owned(), "0".to_owned()));
    // 1_800_000_000 s is 2027-01-15; the clock moved one day.
    assert_eq!(days[2]["day"], "2027-01-16", "{body}");
    let as_service = app.request(Method::GET, "/v1/overview", Some(SERVICE_TOKEN), None, Body::None).await;
    as_service.assert_problem(403, "forbidden");
    app.get("/v1/overview?days=91").await.assert_problem(422, "invalid_request");
}

/// A mistaken grant is voided once (admin, journalled, an event), never while a hold reserves
/// its credits; grants list by state; the journal filters by kind, time and reference.
async fn a_grant_is_voided_and_the_lists_show_it(app: TestApp) {
    let mistaken = app.grant("vo", json!({"amount": "40", "reference": "typo: 400 meant 4", "priority": 10})).await;
    let mistaken = mistaken.assert_status(201)["grant_id"].as_str().unwrap().to_owned();
    app.grant("vo", json!({"amount": "4", "reference": "the right one", "priority": 20})).await.assert_status(201);
    let hold = app.hold_id("vo", "30").await;
    let void = |key: &'static str| {
        let path = format!("/v1/grants/{mistaken}/void");
        let app = &app;
        async move {
            app.request(Method::POST, &path, Some(crate::helpers::ADMIN_TOKEN), Some(key), Body::Json(json!({}))).await
        }
    };
    let refused = void("void-1").await;
    refused.assert_problem(409, "grant_credits_held");
    assert_eq!(refused.body["held"], "30", "{:?}", refused.body);
    app.release(&hold).await.assert_status(200);
    let voided = void("void-2").await;
    let body = voided.assert_status(200).clone();
    assert_eq!(body["voided"], "40", "{body}");
    assert!(body["grant"]["voided_at"].is_string(), "{body}");
    assert_eq!(void("void-2").await.body, body, "a retry with the same key replays the void");
    void("void-3").await.assert_problem(409, "grant_not_voidable");
    assert_eq!(app.figures("vo").await, ("4".to_owned(), "0".to_owned(), "4".to_owned()));
    app.post("/v1/grants/no-such-grant/void", json!({})).await.assert_problem(404, "grant_not_found");
    let as_service = app
        .request(Method::POST, &format!("/v1/grants/{mistaken}/void"), Some(SERVICE_TOKEN), None, Body::Json(json!({})))
        .await;
    as_service.assert_problem(403, "forbidden");

    let listed = |state: &str| {
        let path = format!("/v1/accounts/vo/grants?state={state}");
        let app = &app;
        async move {
            let reply = app.get(&path).await;
            let grants = reply.assert_status(200)["grants"].as_array().unwrap().clone();
            grants.iter().map(|grant| grant["reference"].as_str().unwrap().to_owned()).collect::<Vec<_>>()
        }
    };
    assert_eq!(listed("voided").await, vec!["typo: 400 meant 4"]);
    assert_eq!(listed("active").await, vec!["the right one"]);
    assert!(listed("expired").await.is_empty());
    app.get("/v1/accounts/vo/grants?state=gone").await.assert_problem(422, "invalid_request");
    app.get("/v1/accounts/nobody/grants").await.assert_problem(404, "account_not_found");

    // The journal: the void is one entry of kind `void`, found by kind and by time window.
    let voids = app.entries("vo", "?kind=void").await;
    let voids = voids.assert_status(200)["entries"].as_array().unwrap().clone();
    assert_eq!(voids.len(), 1, "{voids:?}");
    assert_eq!((voids[0]["amount"].as_str(), voids[0]["grant_id"].as_str()), (Some("40"), Some(mistaken.as_str())));
    let by_reference = app.entries("vo", "?reference=the%20right%20one").await;
    assert_eq!(by_reference.assert_status(200)["entries"].as_array().unwrap().len(), 1);
    let later = app.entries("vo", "?from=2100-01-01T00:00:00Z").await;
    assert_eq!(later.assert_status(200)["entries"], json!([]));
    app.entries("vo", "?kind=teleport").await.assert_problem(422, "invalid_request");
    app.entries("vo", "?from=yesterday").await.assert_problem(422, "invalid_request");
    // Two grants, the hold made and released, the void.
    let events = crate::ledger_events::events_after(&app, "0", 5).await;
    let types: Vec<&str> =
        events["events"].as_array().unwrap().iter().map(|event| event["type"].as_str().unwrap()).collect();
    assert_eq!(types.iter().filter(|kind| **kind == "grant.voided").count(), 1, "{types:?}");
    app.assert_verified().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_is_voided_and_the_lists_show_it_on_sqlite() {
    a_grant_is_voided_and_the_lists_show_it(spawn_app().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_is_voided_and_the_lists_show_it_on_postgres() {
    a_grant_is_voided_and_the_lists_show_it(spawn_app_postgres().await).await;
}
