//! Conformance checks of the event outbox, run on every backend: each change writes its events
//! in its own transaction (a rejected command writes none), in journal order with their
//! payloads; and a reader paging with `after` while commands commit concurrently reads every
//! event exactly once.

use std::collections::BTreeSet;

use ledger::{Command, GrantId, Outcome, Rejection};
use serde_json::Value;

use super::{account, cr, new_id, Harness};
use crate::events::StoredEvent;
use crate::Request;

pub(crate) async fn all_events(h: &Harness, after: u128) -> Vec<StoredEvent> {
    h.store.events(after, crate::events::EVENTS_PAGE_MAX).await.expect("store answers")
}

/// Every event, once at least `expected` are readable (on PostgreSQL an event is readable once
/// every older transaction of the cluster has ended; other tests' transactions count too).
async fn readable_events(h: &Harness, expected: usize) -> Vec<StoredEvent> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let events = all_events(h, 0).await;
        if events.len() >= expected || std::time::Instant::now() > deadline {
            return events;
        }
        tokio::task::yield_now().await;
    }
}

fn types(events: &[StoredEvent]) -> Vec<&'static str> {
    events.iter().map(|event| event.event.event_type.as_str()).collect()
}

fn data(event: &StoredEvent) -> Value {
    serde_json::from_str(&event.event.data).expect("a JSON payload")
}

/// Grants, holds, captures (a final one with its released remainder is one event), releases,
/// expiries, refunds and depletion, in journal order, with their payloads; a rejected command
/// writes no event.
pub async fn events_follow_each_change_in_order(h: Harness) {
    h.grant_with("u", "10", 100, Some(3_600), Some("welcome")).await.unwrap();
    let first = h.hold("u", "4", 60).await.unwrap();
    h.capture(&first.hold_id, "3", true).await.unwrap();
    let second = h.hold("u", "2", 60).await.unwrap();
    h.release(&second.hold_id).await.unwrap();
    assert!(matches!(h.hold("u", "100", 60).await, Err(Rejection::InsufficientCredits { .. })));
    let third = h.hold("u", "7", 30).await.unwrap();
    h.clock.advance_seconds(30);
    h.store.sweep(100).await.unwrap();
    let refund = Command::Refund {
        account_id: account("u"),
        grant_id: GrantId::parse(&format!("r{}", new_id())).unwrap(),
        amount: cr("1"),
        reference: ledger::Reference::parse("r1").unwrap(),
        hold_id: Some(first.hold_id.clone()),
        priority: 0,
        expires_at: None,
    };
    h.run(refund).await.unwrap();
    let debit = Command::Debit { account_id: account("u"), amount: cr("8"), reference: None };
    h.run(debit).await.unwrap();
    let events = readable_events(&h, 10).await;
    assert_eq!(
        types(&events),
        [
            "grant.created",
            "hold.created",
            "hold.captured",
            "hold.created",
            "hold.released",
            "hold.created",
            "balance.depleted",
            "hold.expired",
            "refund.created",
            "balance.depleted",
        ]
    );
    let grant = data(&events[0]);
    assert_eq!((grant["amount"].as_str(), grant["reference"].as_str()), (Some("10"), Some("welcome")));
    assert!(grant["expires_at"].as_str().is_some_and(|at| at.ends_with('Z')), "{grant}");
    let captured = data(&events[2]);
    assert_eq!(captured["hold_id"].as_str(), Some(first.hold_id.as_str()));
    assert_eq!((captured["amount"].as_str(), captured["released"].as_str()), (Some("3"), Some("1")));
    assert_eq!((captured["final"].as_bool(), captured["available"].as_str()), (Some(true), Some("7")));
    assert_eq!(data(&events[7])["hold_id"].as_str(), Some(third.hold_id.as_str()));
    assert!(events.windows(2).all(|pair| pair[0].position < pair[1].position && pair[0].seq != pair[1].seq));
    assert!(events.iter().all(|event| event.event.account_id == account("u")));
    assert_eq!(all_events(&h, events[4].position).await.len(), events.len() - 5, "paging after a position");
    h.assert_verified().await;
}

/// Writers on many accounts commit concurrently while a reader pages with `after`: every event
/// is read exactly once, and the reader never sees one appear behind its position.
pub async fn events_are_read_once_under_concurrent_commits(h: Harness) {
    const ACCOUNTS: usize = 8;
    const HOLDS: usize = 24;
    for index in 0..ACCOUNTS {
        h.grant(&format!("c{index}"), "1000").await;
    }
    // The grants' events, once readable (see below), are where the reader starts.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut baseline = all_events(&h, 0).await;
    while baseline.len() < ACCOUNTS && std::time::Instant::now() < deadline {
        tokio::task::yield_now().await;
        baseline = all_events(&h, 0).await;
    }
    assert_eq!(baseline.len(), ACCOUNTS, "one grant.created per account");
    let start = baseline.last().map_or(0, |event| event.position);
    let writers = (0..ACCOUNTS).map(|index| {
        let store = h.store.clone();
        let commands: Vec<Command> = (0..HOLDS).map(|_| h.hold_command(&format!("c{index}"), "1", 600)).collect();
        tokio::spawn(async move {
            for command in commands {
                let executed = store.execute(Request::new(command)).await.expect("store answers");
                assert!(matches!(executed, crate::Executed::Fresh(Ok(Outcome::Held { .. }))), "{executed:?}");
            }
        })
    });
    let writers: Vec<_> = writers.collect();
    let mut seen = BTreeSet::new();
    let mut position = start;
    let read = |events: Vec<StoredEvent>, position: &mut u128, seen: &mut BTreeSet<u64>| {
        for event in events {
            assert!(event.position > *position, "an event appeared behind the reader's position");
            *position = event.position;
            assert!(seen.insert(event.seq), "event {} read twice", event.seq);
        }
    };
    while !writers.iter().all(tokio::task::JoinHandle::is_finished) {
        read(all_events(&h, position).await, &mut position, &mut seen);
        tokio::task::yield_now().await;
    }
    for writer in writers {
        writer.await.expect("the writer finished");
    }
    // Every writer has committed; an event becomes readable once every transaction older than
    // it has ended (on PostgreSQL other databases' transactions count too), so read until all
    // are there. A missed event never comes: the deadline fails the check.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while seen.len() < ACCOUNTS * HOLDS && std::time::Instant::now() < deadline {
        read(all_events(&h, position).await, &mut position, &mut seen);
        tokio::task::yield_now().await;
    }
    assert_eq!(seen.len(), ACCOUNTS * HOLDS, "every hold.created, once");
    assert!(all_events(&h, position).await.is_empty(), "nothing beyond them");
}

/// The events of `event_type` once `expected` of them are readable (on PostgreSQL an event is
/// readable once every older transaction of the cluster ended), read twice to see no more come.
pub async fn events_of_type(h: &Harness, event_type: crate::events::EventType, expected: usize) -> Vec<StoredEvent> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let of_type = |events: Vec<StoredEvent>| -> Vec<StoredEvent> {
        events.into_iter().filter(|event| event.event.event_type == event_type).collect()
    };
    loop {
        let events = of_type(all_events(h, 0).await);
        if events.len() >= expected || std::time::Instant::now() > deadline {
            return events;
        }
        tokio::task::yield_now().await;
    }
}

/// `balance.low` once per crossing of the account's threshold, re-armed by rising above it;
/// setting the threshold is kept on the account.
pub async fn events_balance_low_once_per_crossing(h: Harness) {
    h.grant("low", "10").await;
    let set = Command::SetLowBalanceThreshold { account_id: account("low"), threshold: Some(cr("5")) };
    assert!(matches!(h.run(set).await, Ok(Outcome::LowBalanceThresholdSet { .. })));
    let view = h.store.account(&account("low")).await.unwrap().expect("exists");
    assert_eq!(view.state.low_balance_threshold, Some(cr("5")));
    let first = h.hold("low", "6", 60).await.unwrap();
    h.release(&first.hold_id).await.unwrap();
    let second = h.hold("low", "7", 60).await.unwrap();
    let debit = Command::Debit { account_id: account("low"), amount: cr("3"), reference: None };
    h.run(debit).await.unwrap();
    h.capture(&second.hold_id, "7", true).await.unwrap();
    let low = events_of_type(&h, crate::events::EventType::BalanceLow, 2).await;
    assert_eq!(low.len(), 2, "the first hold and the second, not the debit below it: {low:?}");
    assert_eq!(data(&low[0])["available"], "4");
    assert_eq!(data(&low[0])["threshold"], "5");
    let depleted = events_of_type(&h, crate::events::EventType::BalanceDepleted, 1).await;
    assert_eq!(depleted.len(), 1);
    let unknown = Command::SetLowBalanceThreshold { account_id: account("nobody"), threshold: None };
    assert_eq!(h.run(unknown).await, Err(Rejection::AccountNotFound));
    h.assert_verified().await;
}

/// Events are kept [`crate::events::EVENTS_RETENTION_SECONDS`], then the sweeper forgets them
/// (the oldest first); a newer one stays.
pub async fn events_are_forgotten_after_retention(h: Harness) {
    h.grant("old", "1").await;
    let retention = i64::try_from(crate::events::EVENTS_RETENTION_SECONDS).expect("fits");
    h.clock.advance_seconds(retention - 60);
    h.grant("new", "1").await;
    assert_eq!(readable_events(&h, 2).await.len(), 2);
    h.clock.advance_seconds(61);
    h.store.sweep(100).await.unwrap();
    let kept = readable_events(&h, 1).await;
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(kept[0].event.account_id, account("new"));
}
