//! Conformance checks of gateway keys (`crate::api_keys`), run on every backend: found by hash,
//! listed per account, revoked once, limited per account, never another account's.

use ledger::Amount;

use super::{account, new_id, Harness};
use crate::api_keys::{ApiKey, ApiKeyCreated, CallSettlement, GatewayCall, KEYS_PER_ACCOUNT_MAX};
use crate::ApiKeyId;

fn key(h: &Harness, account_id: &str, hash: &str) -> ApiKey {
    ApiKey {
        key_id: ApiKeyId::generate(),
        account_id: account(account_id),
        name: Some("agent".to_owned()),
        hash: hash.to_owned(),
        prefix: "cg_abcdef".to_owned(),
        daily_limit: Some(Amount::parse("2.5").expect("an amount")),
        models: vec!["gpt-4o-mini".to_owned(), "gpt-4o".to_owned()],
        created_at: h.clock_now(),
        revoked_at: None,
    }
}

/// A key reads back whole by its hash and in its account's list; revocation is kept once and
/// only by its own account; an account holds at most `KEYS_PER_ACCOUNT_MAX`.
pub async fn api_keys_are_found_by_hash_and_revoked_once(h: Harness) {
    let (owner, other) = (format!("k-{}", new_id()), format!("o-{}", new_id()));
    let hash = format!("{:0>64}", new_id());
    let first = key(&h, &owner, &hash);
    assert_eq!(h.store.create_api_key(&first).await.unwrap(), ApiKeyCreated::Created(first.clone()));
    let plain =
        ApiKey { name: None, daily_limit: None, models: Vec::new(), ..key(&h, &owner, &format!("{:1>64}", new_id())) };
    h.store.create_api_key(&plain).await.unwrap();
    assert_eq!(h.store.api_key_by_hash(&hash).await.unwrap(), Some(first.clone()), "read back whole");
    assert_eq!(h.store.api_key_by_hash(&"f".repeat(64)).await.unwrap(), None);
    assert_eq!(h.store.api_keys(&account(&owner)).await.unwrap(), [first.clone(), plain.clone()], "oldest first");
    assert_eq!(h.store.api_keys(&account(&other)).await.unwrap(), []);

    let now = h.clock_now();
    assert_eq!(h.store.revoke_api_key(&account(&other), &first.key_id, now).await.unwrap(), None, "not its key");
    let revoked = h.store.revoke_api_key(&account(&owner), &first.key_id, now).await.unwrap();
    assert_eq!(revoked.as_ref().and_then(|key| key.revoked_at), Some(now));
    h.clock.advance_seconds(60);
    let again = h.store.revoke_api_key(&account(&owner), &first.key_id, h.clock_now()).await.unwrap();
    assert_eq!(again.and_then(|key| key.revoked_at), Some(now), "the first revocation stays");
    assert_eq!(h.store.api_key_by_hash(&hash).await.unwrap().and_then(|key| key.revoked_at), Some(now));

    for index in 2..KEYS_PER_ACCOUNT_MAX {
        let more = key(&h, &owner, &format!("{index:0>64}{}", new_id()));
        assert!(matches!(h.store.create_api_key(&more).await.unwrap(), ApiKeyCreated::Created(_)));
    }
    let over = key(&h, &owner, &format!("{:2>64}", new_id()));
    assert_eq!(h.store.create_api_key(&over).await.unwrap(), ApiKeyCreated::Limit);
    let elsewhere = key(&h, &other, &format!("{:3>64}", new_id()));
    assert!(matches!(h.store.create_api_key(&elsewhere).await.unwrap(), ApiKeyCreated::Created(_)));
}

fn call(account_id: &str, key_id: &ApiKeyId, model: &str, cost: &str, at: ledger::Timestamp) -> GatewayCall {
    GatewayCall {
        account_id: account(account_id),
        key_id: key_id.clone(),
        hold_id: ledger::HoldId::parse(&new_id()).expect("an id"),
        model: model.to_owned(),
        catalog_version: "sha256:0".to_owned(),
        prompt_tokens: Some(10),
        completion_tokens: Some(5),
        cost: Amount::parse(cost).expect("an amount"),
        worst_case: Amount::from_credits(1),
        settlement: CallSettlement::Usage,
        upstream_status: 200,
        latency_ms: 3,
        at,
    }
}

/// Calls are summed by UTC day and model within `[from, to)`, per account; a key's spending is
/// summed since a time; a released call counts its tokens and no cost.
pub async fn api_keys_calls_are_summed_by_day_and_model(h: Harness) {
    let name = format!("u-{}", new_id());
    let key_id = ApiKeyId::generate();
    let other_key = ApiKeyId::generate();
    let day = |text: &str| {
        let instant: jiff::Timestamp = text.parse().expect("an RFC 3339 time");
        ledger::Timestamp::from_micros(instant.as_microsecond())
    };
    let calls = [
        call(&name, &key_id, "m-a", "0.5", day("2026-12-01T10:00:00Z")),
        call(&name, &key_id, "m-a", "0.25", day("2026-12-01T23:59:59Z")),
        call(&name, &other_key, "m-b", "1", day("2026-12-01T12:00:00Z")),
        call(&name, &key_id, "m-a", "2", day("2026-12-02T00:00:00Z")),
        GatewayCall {
            settlement: CallSettlement::Released,
            cost: Amount::ZERO,
            ..call(&name, &key_id, "m-a", "0", day("2026-12-02T01:00:00Z"))
        },
        call("someone-else", &key_id, "m-a", "7", day("2026-12-01T10:00:00Z")),
    ];
    for call in &calls {
        h.store.record_gateway_call(call).await.expect("store answers");
    }
    let usage =
        h.store.gateway_usage(&account(&name), day("2026-12-01T00:00:00Z"), day("2026-12-03T00:00:00Z")).await.unwrap();
    let summary: Vec<(&str, &str, u64, u64, String)> = usage
        .iter()
        .map(|row| (row.day.as_str(), row.model.as_str(), row.calls, row.prompt_tokens, row.cost.to_string()))
        .collect();
    assert_eq!(
        summary,
        [
            ("2026-12-01", "m-a", 2, 20, "0.75".to_owned()),
            ("2026-12-01", "m-b", 1, 10, "1".to_owned()),
            ("2026-12-02", "m-a", 2, 20, "2".to_owned()),
        ]
    );
    let first_day =
        h.store.gateway_usage(&account(&name), day("2026-12-01T00:00:00Z"), day("2026-12-02T00:00:00Z")).await.unwrap();
    assert_eq!(first_day.len(), 2, "`to` is exclusive");
    assert_eq!(h.store.key_spent_since(&key_id, day("2026-12-02T00:00:00Z")).await.unwrap(), Amount::from_credits(2));
    assert_eq!(
        h.store.key_spent_since(&key_id, day("2026-12-01T00:00:00Z")).await.unwrap(),
        Amount::parse("9.75").unwrap()
    );
}
