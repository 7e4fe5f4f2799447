//! `GET /v1/events` over HTTP on both stores: each change's events in order with their payloads,
//! nothing for a refused command, paging by cursor, and an allowance period's grant as
//! `allowance.granted`.

use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_postgres, TestApp};

fn types(page: &Value) -> Vec<&str> {
    page["events"].as_array().expect("events").iter().filter_map(|event| event["type"].as_str()).collect()
}

/// The events after `after` once `count` of them are readable (on PostgreSQL an event is
/// readable once every older transaction of the cluster ended).
pub(crate) async fn events_after(app: &TestApp, after: &str, count: usize) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let page = app.get(&format!("/v1/events?limit=1000&after={after}")).await;
        let page = page.assert_status(200).clone();
        if types(&page).len() >= count || std::time::Instant::now() > deadline {
            return page;
        }
        tokio::task::yield_now().await;
    }
}

async fn events_of_changes(app: TestApp) {
    let start = app.get("/v1/events").await.assert_status(200)["next"].as_str().expect("next").to_owned();
    app.fund("eve", "10").await;
    let hold = app.hold_id("eve", "6").await;
    app.capture(&hold, json!({"amount": "2", "final": true})).await.assert_status(200);
    app.hold("eve", "50").await.assert_problem(402, "insufficient_credits");
    app.debit("eve", json!({"amount": "8"})).await.assert_status(201);
    let page = events_after(&app, &start, 4).await;
    assert_eq!(types(&page), ["grant.created", "hold.created", "hold.captured", "balance.depleted"], "{page}");
    let captured = &page["events"][2];
    assert!(captured["id"].as_str().is_some_and(|id| id.starts_with("evt_")), "{captured}");
    assert_eq!(captured["account_id"], "eve");
    assert_eq!(captured["data"]["hold_id"], hold.as_str());
    assert_eq!((&captured["data"]["amount"], &captured["data"]["released"]), (&json!("2"), &json!("4")));
    assert_eq!(captured["data"]["available"], "8");
    // Paging: after the second event come the last two.
    let cursor = page["events"][1]["cursor"].as_str().expect("a cursor");
    assert_eq!(types(&events_after(&app, cursor, 2).await), ["hold.captured", "balance.depleted"]);
    let next = page["next"].as_str().expect("next");
    assert_eq!(types(&app.get(&format!("/v1/events?after={next}")).await.body), Vec::<&str>::new());

    app.post("/v1/accounts/ada/allowances", json!({"amount": "3", "period": "week", "timezone": "Europe/Paris"}))
        .await
        .assert_status(201);
    let page = events_after(&app, next, 1).await;
    assert_eq!(types(&page), ["allowance.granted"], "{page}");
    assert!(page["events"][0]["data"]["reference"].as_str().is_some_and(|reference| reference.starts_with("al_")));

    // A low-balance threshold: one balance.low per crossing.
    let next = page["next"].as_str().expect("next").to_owned();
    let set = app.post("/v1/accounts/ada/low-balance-threshold", json!({"threshold": "2"})).await;
    assert_eq!(set.assert_status(200)["low_balance_threshold"], "2");
    assert_eq!(app.account("ada").await.body["low_balance_threshold"], "2");
    app.debit("ada", json!({"amount": "2"})).await.assert_status(201);
    let page = events_after(&app, &next, 1).await;
    assert_eq!(types(&page), ["balance.low"], "{page}");
    app.post("/v1/accounts/ghost/low-balance-threshold", json!({"threshold": null}))
        .await
        .assert_problem(404, "account_not_found");

    app.get("/v1/events?after=evt_1").await.assert_problem(422, "invalid_request");
    app.get("/v1/events?limit=0").await.assert_problem(422, "invalid_request");
}

#[tokio::test]
async fn events_follow_each_change_on_sqlite() {
    events_of_changes(spawn_app().await).await;
}

#[tokio::test]
async fn events_follow_each_change_on_postgres() {
    events_of_changes(spawn_app_postgres().await).await;
}
