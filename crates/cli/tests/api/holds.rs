//! The hold lifecycle: reserve, read, capture (partial, final, overage), release, extend, expire.

use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn a_hold_reads_back_with_every_field() {
    let app = spawn_app().await;
    app.fund("alice", "10").await;
    let body = json!({
        "account_id": "alice", "amount": "2.5", "ttl_seconds": 60,
        "reference": "run-7", "metadata": { "model": "m1" }
    });
    let reply = app.post("/v1/holds", body).await;
    let hold = reply.assert_status(201).clone();
    let hold_id = hold["hold_id"].as_str().expect("id").to_owned();
    assert_eq!(
        hold,
        json!({
            "hold_id": hold_id, "account_id": "alice", "amount": "2.5", "captured": "0", "remaining": "2.5",
            "state": "pending", "expires_at": "2027-01-15T08:01:00Z", "created_at": "2027-01-15T08:00:00Z",
            "reference": "run-7", "metadata": { "model": "m1" }
        })
    );
    assert_eq!(app.get_hold(&hold_id).await.assert_status(200), &hold);
    let default_ttl = app.hold("alice", "1").await;
    assert_eq!(default_ttl.str("expires_at"), "2027-01-15T08:20:00Z");
    app.get_hold("nope").await.assert_problem(404, "hold_not_found");
    app.hold("nobody", "1").await.assert_problem(404, "account_not_found");
}

#[tokio::test]
async fn captures_partial_final_and_beyond_the_hold() {
    let app = spawn_app().await;
    app.fund("alice", "20").await;
    let hold_id = app.hold_id("alice", "10").await;
    let reply = app.capture(&hold_id, json!({ "amount": "4", "final": false })).await;
    let hold = reply.assert_status(200);
    assert_eq!((hold["captured"].as_str(), hold["remaining"].as_str()), (Some("4"), Some("6")));
    assert_eq!(hold["state"], "pending");

    let reply = app.capture(&hold_id, json!({ "amount": "7", "final": false })).await;
    reply.assert_problem(409, "amount_exceeds_hold");
    assert_eq!((reply.str("requested"), reply.str("remaining")), ("7", "6"));

    // The excess comes from available with overage if_available.
    let reply = app.capture(&hold_id, json!({ "amount": "8", "overage": "if_available" })).await;
    let hold = reply.assert_status(200);
    assert_eq!((hold["captured"].as_str(), hold["remaining"].as_str()), (Some("12"), Some("0")));
    assert_eq!(hold["state"], "captured");
    assert_eq!(app.figures("alice").await, ("8".into(), "0".into(), "8".into()));

    let reply = app.capture(&hold_id, json!({ "amount": "1" })).await;
    reply.assert_problem(409, "hold_not_pending");
    assert_eq!(reply.str("state"), "captured");
    app.capture("nope", json!({ "amount": "1" })).await.assert_problem(404, "hold_not_found");
    app.assert_verified().await;
}

#[tokio::test]
async fn overage_fails_with_402_when_available_is_short() {
    let app = spawn_app().await;
    app.fund("alice", "10").await;
    let hold_id = app.hold_id("alice", "8").await;
    let reply = app.capture(&hold_id, json!({ "amount": "11", "overage": "if_available" })).await;
    reply.assert_problem(402, "insufficient_credits");
    assert_eq!((reply.str("required"), reply.str("available")), ("3", "2"));
    assert_eq!(app.get_hold(&hold_id).await.str("state"), "pending");
}

#[tokio::test]
async fn a_final_capture_of_zero_releases_everything() {
    let app = spawn_app().await;
    app.fund("alice", "10").await;
    let hold_id = app.hold_id("alice", "5").await;
    app.capture(&hold_id, json!({ "amount": "0", "final": false })).await.assert_problem(422, "invalid_amount");
    let reply = app.capture(&hold_id, json!({ "amount": "0" })).await;
    assert_eq!(reply.assert_status(200)["state"], "captured");
    assert_eq!(app.figures("alice").await, ("10".into(), "0".into(), "10".into()));
}

#[tokio::test]
async fn release_is_idempotent_and_refuses_resolved_holds() {
    let app = spawn_app().await;
    app.fund("alice", "10").await;
    let hold_id = app.hold_id("alice", "5").await;
    let reply = app.release(&hold_id).await;
    let hold = reply.assert_status(200).clone();
    assert_eq!((hold["state"].as_str(), hold["remaining"].as_str()), (Some("released"), Some("0")));
    assert_eq!(app.release(&hold_id).await.assert_status(200), &hold);
    // An explicit empty object is the same as no body.
    let reply = app.post(&format!("/v1/holds/{hold_id}/release"), json!({})).await;
    assert_eq!(reply.assert_status(200), &hold);
    assert_eq!(app.figures("alice").await, ("10".into(), "0".into(), "10".into()));

    let captured = app.hold_id("alice", "5").await;
    app.capture(&captured, json!({ "amount": "5" })).await.assert_status(200);
    let reply = app.release(&captured).await;
    reply.assert_problem(409, "hold_not_pending");
    assert_eq!(reply.str("state"), "captured");
    app.release("nope").await.assert_problem(404, "hold_not_found");
}

#[tokio::test]
async fn expiry_is_exact_on_read_and_extend_moves_it() {
    let app = spawn_app().await;
    app.fund("alice", "10").await;
    let short = app.post("/v1/holds", json!({ "account_id": "alice", "amount": "3", "ttl_seconds": 10 })).await;
    let short = short.str("hold_id").to_owned();
    let extended = app.post("/v1/holds", json!({ "account_id": "alice", "amount": "4", "ttl_seconds": 10 })).await;
    let extended = extended.str("hold_id").to_owned();

    app.clock.advance_seconds(5);
    let reply = app.extend(&extended, 100).await;
    assert_eq!(reply.assert_status(200)["expires_at"], "2027-01-15T08:01:45Z");

    app.clock.advance_seconds(5);
    let hold = app.get_hold(&short).await;
    assert_eq!((hold.str("state"), hold.str("remaining")), ("expired", "0"));
    assert_eq!(app.figures("alice").await, ("10".into(), "4".into(), "6".into()));
    app.capture(&short, json!({ "amount": "1" })).await.assert_problem(409, "hold_expired");
    let reply = app.release(&short).await;
    reply.assert_problem(409, "hold_not_pending");
    assert_eq!(reply.str("state"), "expired");
    app.extend(&short, 10).await.assert_problem(409, "hold_expired");

    app.release(&extended).await.assert_status(200);
    let reply = app.extend(&extended, 10).await;
    reply.assert_problem(409, "hold_not_pending");
    assert_eq!(reply.str("state"), "released");
    app.extend("nope", 10).await.assert_problem(404, "hold_not_found");
    app.assert_verified().await;
}

#[tokio::test]
async fn the_sweeper_journals_expiries() {
    let app =
        crate::helpers::spawn_app_with(|settings| settings.sweep_interval = std::time::Duration::from_millis(20)).await;
    app.fund("alice", "10").await;
    let reply = app.post("/v1/holds", json!({ "account_id": "alice", "amount": "3", "ttl_seconds": 10 })).await;
    let hold_id = reply.str("hold_id").to_owned();
    app.clock.advance_seconds(10);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let entries = app.entries("alice", "").await;
        let expired =
            entries.body["entries"].as_array().expect("entries").iter().find(|e| e["kind"] == "expire").cloned();
        if let Some(entry) = expired {
            assert_eq!((entry["hold_id"].as_str(), entry["amount"].as_str()), (Some(hold_id.as_str()), Some("3")));
            assert_eq!(entry["at"], "2027-01-15T08:00:10Z");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the sweeper recorded no expiry: {entries:#?}");
        // The sweeper runs on its own interval and announces nothing: poll the journal.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    app.assert_verified().await;
}
