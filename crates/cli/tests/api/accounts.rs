//! Grants, account reads, the journal, debits and refunds.

use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn a_grant_creates_the_account_and_reads_back() {
    let app = spawn_app().await;
    let body = json!({
        "amount": "17.500",
        "priority": 5,
        "expires_at": "2030-01-31T12:00:00+01:00",
        "reference": "invoice 42",
        "metadata": { "source": "test" }
    });
    let reply = app.grant("alice", body).await;
    let grant = reply.assert_status(201);
    assert_eq!(grant["amount"], "17.5");
    assert_eq!(grant["remaining"], "17.5");
    assert_eq!(grant["kind"], "grant");
    assert_eq!(grant["priority"], 5);
    assert_eq!(grant["expires_at"], "2030-01-31T11:00:00Z");
    assert_eq!(grant["created_at"], "2027-01-15T08:00:00Z");
    assert_eq!(grant["reference"], "invoice 42");
    assert_eq!(grant["metadata"], json!({ "source": "test" }));
    let grant_id = grant["grant_id"].as_str().expect("grant id");
    assert_eq!(grant_id.len(), 36, "a UUID");

    let account = app.account("alice").await;
    let account = account.assert_status(200);
    assert_eq!((account["balance"].as_str(), account["held"].as_str()), (Some("17.5"), Some("0")));
    assert_eq!(account["available"], "17.5");
    assert_eq!(account["grants"][0]["grant_id"], grant_id);

    // The same reference returns the first grant (200) and adds nothing.
    let again = app.grant("alice", json!({ "amount": "99", "reference": "invoice 42" })).await;
    assert_eq!(again.assert_status(200)["grant_id"], grant_id);
    assert_eq!(app.figures("alice").await.0, "17.5");
    app.assert_verified().await;
}

#[tokio::test]
async fn a_json_number_amount_is_read_from_its_literal_text() {
    let app = spawn_app().await;
    let reply = app.grant("alice", json!({ "amount": 0.000125 })).await;
    assert_eq!(reply.assert_status(201)["amount"], "0.000125");
    let reply = app.grant("alice", json!({ "amount": 3 })).await;
    assert_eq!(reply.assert_status(201)["amount"], "3");
    assert_eq!(app.figures("alice").await.0, "3.000125");
}

#[tokio::test]
async fn grants_are_listed_in_spend_order_with_pinned_credits() {
    let app = spawn_app().await;
    app.grant("alice", json!({ "amount": "5", "priority": 200 })).await.assert_status(201);
    app.grant("alice", json!({ "amount": "3", "priority": 10 })).await.assert_status(201);
    app.hold_id("alice", "4").await;
    let reply = app.account("alice").await;
    let account = reply.assert_status(200);
    let grants = account["grants"].as_array().expect("grants");
    // Priority 10 is spent first: the hold pins all 3 of it and 1 of the other; both still count.
    let summary: Vec<(&str, i64)> =
        grants.iter().map(|g| (g["remaining"].as_str().expect("str"), g["priority"].as_i64().expect("int"))).collect();
    assert_eq!(summary, vec![("3", 10), ("5", 200)]);
    assert_eq!((account["balance"].as_str(), account["held"].as_str()), (Some("8"), Some("4")));
    assert_eq!(account["available"], "4");
}

#[tokio::test]
async fn spent_grants_leave_the_listing() {
    let app = spawn_app().await;
    app.grant("alice", json!({ "amount": "2", "priority": 1 })).await.assert_status(201);
    app.fund("alice", "5").await;
    app.debit("alice", json!({ "amount": "2" })).await.assert_status(201);
    let reply = app.account("alice").await;
    let grants = reply.body["grants"].as_array().expect("grants").clone();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0]["remaining"], "5");
}

#[tokio::test]
async fn the_journal_pages_with_a_cursor() {
    let app = spawn_app().await;
    app.fund("alice", "10").await;
    let hold_id = app.hold_id("alice", "4").await;
    app.capture(&hold_id, json!({ "amount": "3" })).await.assert_status(200);
    app.debit("alice", json!({ "amount": "1", "reference": "d1" })).await.assert_status(201);
    // grant, hold, capture, release (final capture returns 1), debit
    let first = app.entries("alice", "?limit=2").await;
    let page = first.assert_status(200);
    let kinds: Vec<&str> =
        page["entries"].as_array().expect("list").iter().map(|e| e["kind"].as_str().expect("kind")).collect();
    assert_eq!(kinds, vec!["grant", "hold"]);
    let entry = &page["entries"][1];
    assert_eq!(entry["amount"], "4");
    assert_eq!(entry["hold_id"], hold_id.as_str());
    assert_eq!((entry["balance_after"].as_str(), entry["held_after"].as_str()), (Some("10"), Some("4")));
    assert_eq!(entry["at"], "2027-01-15T08:00:00Z");
    let next = page["next"].as_str().expect("a next cursor").to_owned();

    let second = app.entries("alice", &format!("?limit=2&after={next}")).await;
    let page = second.assert_status(200);
    let kinds: Vec<&str> =
        page["entries"].as_array().expect("list").iter().map(|e| e["kind"].as_str().expect("kind")).collect();
    assert_eq!(kinds, vec!["capture", "release"]);
    let next = page["next"].as_str().expect("a next cursor").to_owned();

    let last = app.entries("alice", &format!("?limit=2&after={next}")).await;
    let page = last.assert_status(200);
    assert_eq!(page["entries"][0]["kind"], "debit");
    assert_eq!(page["entries"][0]["reference"], "d1");
    assert_eq!(page["entries"][0]["balance_after"], "6");
    assert!(page["next"].is_null());

    let all = app.entries("alice", "").await;
    assert_eq!(all.assert_status(200)["entries"].as_array().map(Vec::len), Some(5));
    app.entries("nobody", "").await.assert_problem(404, "account_not_found");
}

/// An account's holds page by state with a cursor; the account view carries none of them; bad
/// input is problem+json.
#[tokio::test]
async fn the_holds_page_by_state_with_a_cursor() {
    let app = spawn_app().await;
    app.fund("alice", "10").await;
    let mut pending = Vec::new();
    for _ in 0..3 {
        pending.push(app.hold_id("alice", "1").await);
    }
    pending.sort();
    let captured = app.hold_id("alice", "2").await;
    app.capture(&captured, json!({ "amount": "2" })).await.assert_status(200);
    let ids = |page: &serde_json::Value| -> Vec<String> {
        page["holds"].as_array().expect("list").iter().map(|h| h["hold_id"].as_str().expect("id").to_owned()).collect()
    };

    let first = app.get("/v1/accounts/alice/holds?limit=2").await;
    let page = first.assert_status(200);
    assert_eq!(ids(page), pending[..2]);
    assert_eq!(page["holds"][0]["state"], "pending");
    let next = page["next"].as_str().expect("a next cursor").to_owned();
    assert_eq!(next, pending[1]);
    let last = app.get(&format!("/v1/accounts/alice/holds?state=pending&limit=2&after={next}")).await;
    let page = last.assert_status(200);
    assert_eq!(ids(page), pending[2..]);
    assert!(page["next"].is_null());

    let reply = app.get("/v1/accounts/alice/holds?state=captured").await;
    let page = reply.assert_status(200);
    assert_eq!(ids(page), [captured]);
    assert_eq!(page["holds"][0]["captured"], "2");
    let reply = app.get("/v1/accounts/alice/holds?state=released").await;
    assert_eq!(reply.assert_status(200)["holds"], json!([]));

    let view = app.account("alice").await;
    assert_eq!(view.body["held"], "3");
    assert!(view.body.get("holds").is_none(), "the account view lists no holds");

    app.get("/v1/accounts/nobody/holds").await.assert_problem(404, "account_not_found");
    app.get("/v1/accounts/alice/holds?state=done").await.assert_problem(422, "invalid_request");
    app.get("/v1/accounts/alice/holds?limit=0").await.assert_problem(422, "invalid_request");
    app.get("/v1/accounts/alice/holds?limit=1001").await.assert_problem(422, "invalid_request");
    app.get("/v1/accounts/alice/holds?after=not%20an%20id").await.assert_problem(422, "invalid_request");
    app.get("/v1/accounts/alice/holds?extra=1").await.assert_problem(422, "invalid_request");
}

#[tokio::test]
async fn a_debit_charges_available_credits_all_or_nothing() {
    let app = spawn_app().await;
    app.fund("alice", "10").await;
    app.hold_id("alice", "6").await;
    let reply = app.debit("alice", json!({ "amount": "3", "reference": "job-1" })).await;
    let body = reply.assert_status(201);
    assert_eq!(
        body,
        &json!({
            "account_id": "alice", "amount": "3", "reference": "job-1",
            "balance": "7", "held": "6", "available": "1"
        })
    );
    let reply = app.debit("alice", json!({ "amount": "2" })).await;
    reply.assert_problem(402, "insufficient_credits");
    assert_eq!((reply.str("required"), reply.str("available")), ("2", "1"));
    assert_eq!(app.figures("alice").await, ("7".into(), "6".into(), "1".into()));
    app.debit("nobody", json!({ "amount": "1" })).await.assert_problem(404, "account_not_found");
}

#[tokio::test]
async fn refunds_are_bounded_by_charges() {
    let app = spawn_app().await;
    app.fund("alice", "10").await;
    let hold_id = app.hold_id("alice", "5").await;
    app.capture(&hold_id, json!({ "amount": "4" })).await.assert_status(200);
    let reply = app.refund("alice", json!({ "amount": "5", "reference": "r1", "hold_id": hold_id })).await;
    reply.assert_problem(409, "refund_exceeds_charges");
    assert_eq!((reply.str("requested"), reply.str("refundable")), ("5", "4"));

    let reply = app.refund("alice", json!({ "amount": "3", "reference": "r1", "hold_id": hold_id })).await;
    let grant = reply.assert_status(201);
    assert_eq!((grant["kind"].as_str(), grant["amount"].as_str()), (Some("refund"), Some("3")));
    assert_eq!(grant["reference"], "r1");
    assert_eq!(app.figures("alice").await.0, "9");

    let reply = app.refund("alice", json!({ "amount": "2", "reference": "r2", "hold_id": hold_id })).await;
    assert_eq!(reply.str("refundable"), "1");
    app.refund("alice", json!({ "amount": "1", "reference": "r3", "hold_id": "nope" }))
        .await
        .assert_problem(404, "hold_not_found");
    app.refund("nobody", json!({ "amount": "1", "reference": "r" })).await.assert_problem(404, "account_not_found");
    app.assert_verified().await;
}
