//! Conformance checks of gateway keys (`crate::api_keys`), run on every backend: found by hash,
//! listed per account, revoked once, limited per account, never another account's.

use ledger::Amount;

use super::{account, new_id, Harness};
use crate::api_keys::{ApiKey, ApiKeyCreated, KEYS_PER_ACCOUNT_MAX};
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
