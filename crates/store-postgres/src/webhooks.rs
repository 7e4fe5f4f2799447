//! Webhook endpoints and deliveries (`store::webhooks`) in PostgreSQL. Several instances run a
//! dispatcher each: a claim takes due rows `FOR UPDATE SKIP LOCKED`, so two claims never take
//! one delivery; a fan-out moves the endpoint's position by compare-and-set in the transaction
//! that records its deliveries. Every write is one transaction, retried on deadlocks by the
//! caller (a replay locks the endpoint then deliveries, a finish a delivery then the endpoint).

use deadpool_postgres::GenericClient;
use deadpool_postgres::Object;
use ledger::{AccountId, Timestamp};
use store::codec::undecodable;
use store::events::{EventType, NewEvent, StoredEvent};
use store::webhooks::{
    decode_event_types, encode_event_types, error_text, ClaimedDelivery, DeliveryClaim, DeliveryFinish,
    DeliveryOutcome, Disabled, DisabledReason, Endpoint, EndpointChange, FanOut, Finished, PreviousSecret, CLAIM_MAX,
    ENDPOINTS_MAX, REPLAY_MAX,
};
use store::{EndpointId, StoreError};
use tokio_postgres::{IsolationLevel, Row};

use crate::error::Failure;

const ENDPOINT_COLUMNS: &str = "endpoint_id, url, event_types, description, secret, previous_secret, \
     previous_secret_until, created_at, disabled_at, disabled_reason, failing_since, position_txid, position_seq";

/// A position is (txid << 64) | seq, as `LedgerStore::events` pages the outbox.
fn split(position: u128) -> (i64, i64) {
    let txid = i64::try_from(position >> 64).unwrap_or(i64::MAX);
    let seq = i64::try_from(position & u128::from(u64::MAX)).unwrap_or(i64::MAX);
    (txid, seq)
}

fn joined(txid: i64, seq: i64) -> Result<u128, StoreError> {
    let txid = u64::try_from(txid).map_err(|_| undecodable("endpoint position"))?;
    let seq = u64::try_from(seq).map_err(|_| undecodable("endpoint position"))?;
    Ok((u128::from(txid) << 64) | u128::from(seq))
}

fn endpoint_row(row: &Row) -> Result<Endpoint, StoreError> {
    let text = |index: usize| row.try_get::<_, String>(index).map_err(|_| undecodable("webhook endpoint"));
    let time = |index: usize| {
        row.try_get::<_, Option<i64>>(index)
            .map(|micros| micros.map(Timestamp::from_micros))
            .map_err(|_| undecodable("webhook endpoint time"))
    };
    let optional = |index: usize| row.try_get::<_, Option<String>>(index).map_err(|_| undecodable("webhook endpoint"));
    let disabled = match (time(8)?, optional(9)?) {
        (Some(at), Some(reason)) => {
            Some(Disabled { at, reason: DisabledReason::parse(&reason).ok_or_else(|| undecodable("disabled reason"))? })
        }
        _ => None,
    };
    let previous_secret = match (optional(5)?, time(6)?) {
        (Some(secret), Some(until)) => Some(PreviousSecret { secret, until }),
        _ => None,
    };
    let position = |index: usize| row.try_get::<_, i64>(index).map_err(|_| undecodable("endpoint position"));
    Ok(Endpoint {
        endpoint_id: EndpointId::parse(&text(0)?).map_err(|_| undecodable("endpoint id"))?,
        url: text(1)?,
        event_types: decode_event_types(&text(2)?)?,
        description: optional(3)?,
        secret: text(4)?,
        previous_secret,
        created_at: time(7)?.ok_or_else(|| undecodable("endpoint created_at"))?,
        disabled,
        failing_since: time(10)?,
        position: joined(position(11)?, position(12)?)?,
    })
}

pub(crate) async fn endpoints(client: &Object) -> Result<Vec<Endpoint>, Failure> {
    let sql = format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY endpoint_id LIMIT $1");
    let statement = client.prepare_cached(&sql).await?;
    let rows = client.query(&statement, &[&(ENDPOINTS_MAX as i64)]).await?;
    Ok(rows.iter().map(endpoint_row).collect::<Result<_, _>>()?)
}

/// The endpoint, locked for the transaction.
async fn locked_endpoint(client: &impl GenericClient, endpoint_id: &EndpointId) -> Result<Option<Endpoint>, Failure> {
    let sql = format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE endpoint_id = $1 FOR UPDATE");
    let row = client.query_opt(&sql, &[&endpoint_id.as_str()]).await?;
    Ok(row.as_ref().map(endpoint_row).transpose()?)
}

/// Writes every mutable column of an endpoint (its row exists and is locked).
async fn put(client: &impl GenericClient, endpoint: &Endpoint) -> Result<(), Failure> {
    client
        .execute(
            "UPDATE webhook_endpoints SET secret = $2, previous_secret = $3, previous_secret_until = $4, \
                 disabled_at = $5, disabled_reason = $6, failing_since = $7 WHERE endpoint_id = $1",
            &[
                &endpoint.endpoint_id.as_str(),
                &endpoint.secret,
                &endpoint.previous_secret.as_ref().map(|previous| previous.secret.as_str()),
                &endpoint.previous_secret.as_ref().map(|previous| previous.until.micros()),
                &endpoint.disabled.map(|disabled| disabled.at.micros()),
                &endpoint.disabled.map(|disabled| disabled.reason.as_str()),
                &endpoint.failing_since.map(Timestamp::micros),
            ],
        )
        .await?;
    Ok(())
}

/// A new endpoint starts at the position of the newest committed event: it receives the events
/// of changes that commit after it (a change committing at the same moment may fall either way).
pub(crate) async fn create(client: &Object, endpoint: &Endpoint) -> Result<Endpoint, Failure> {
    let sql = format!(
        "INSERT INTO webhook_endpoints ({ENDPOINT_COLUMNS}) \
         SELECT $1, $2, $3, $4, $5, NULL, NULL, $6, NULL, NULL, NULL, COALESCE(last.txid, 0), COALESCE(last.seq, 0) \
         FROM (SELECT 1) one LEFT JOIN LATERAL \
             (SELECT txid, seq FROM outbox ORDER BY txid DESC, seq DESC LIMIT 1) last ON true \
         RETURNING position_txid, position_seq"
    );
    let statement = client.prepare_cached(&sql).await?;
    let row = client
        .query_one(
            &statement,
            &[
                &endpoint.endpoint_id.as_str(),
                &endpoint.url,
                &encode_event_types(&endpoint.event_types),
                &endpoint.description,
                &endpoint.secret,
                &endpoint.created_at.micros(),
            ],
        )
        .await?;
    let position = joined(row.try_get(0)?, row.try_get(1)?)?;
    Ok(Endpoint { position, previous_secret: None, disabled: None, failing_since: None, ..endpoint.clone() })
}

pub(crate) async fn change(
    client: &mut Object,
    endpoint_id: &EndpointId,
    change: &EndpointChange,
    now: Timestamp,
) -> Result<Option<Endpoint>, Failure> {
    let transaction = client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start().await?;
    let Some(current) = locked_endpoint(&transaction, endpoint_id).await? else { return Ok(None) };
    let changed = current.changed(change, now);
    put(&transaction, &changed).await?;
    transaction.commit().await?;
    Ok(Some(changed))
}

pub(crate) async fn fan_out(client: &mut Object, fan_out: &FanOut) -> Result<bool, Failure> {
    let ((from_txid, from_seq), (to_txid, to_seq)) = (split(fan_out.from), split(fan_out.to));
    let transaction = client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start().await?;
    let moved = transaction
        .execute(
            "UPDATE webhook_endpoints SET position_txid = $4, position_seq = $5 \
             WHERE endpoint_id = $1 AND position_txid = $2 AND position_seq = $3",
            &[&fan_out.endpoint_id.as_str(), &from_txid, &from_seq, &to_txid, &to_seq],
        )
        .await?;
    if moved == 0 {
        return Ok(false);
    }
    let seqs: Vec<i64> = fan_out.event_seqs.iter().map(|seq| i64::try_from(*seq).unwrap_or(i64::MAX)).collect();
    transaction
        .execute(
            "INSERT INTO webhook_deliveries (endpoint_id, event_seq, state, attempts, next_attempt_at, created_at) \
             SELECT $1, seq, 'pending', 0, $3, $3 FROM unnest($2::BIGINT[]) AS seq ON CONFLICT DO NOTHING",
            &[&fan_out.endpoint_id.as_str(), &seqs, &fan_out.now.micros()],
        )
        .await?;
    transaction.commit().await?;
    Ok(true)
}

/// One statement: due rows of the named endpoints are locked (skipping rows another claim
/// holds) walking the due index in order, leased and returned with their events.
pub(crate) async fn claim(client: &Object, claim: &DeliveryClaim) -> Result<Vec<ClaimedDelivery>, Failure> {
    let statement = client
        .prepare_cached(
            "WITH due AS ( \
                 SELECT d.endpoint_id, d.event_seq, d.next_attempt_at FROM webhook_deliveries d \
                 WHERE d.state = 'pending' AND d.next_attempt_at <= $1 AND d.endpoint_id = ANY($5) \
                     AND EXISTS (SELECT 1 FROM outbox o WHERE o.seq = d.event_seq) \
                 ORDER BY d.next_attempt_at, d.endpoint_id, d.event_seq LIMIT $4 \
                 FOR UPDATE OF d SKIP LOCKED), \
             leased AS ( \
                 UPDATE webhook_deliveries d SET attempts = d.attempts + 1, next_attempt_at = $2, lease_owner = $3 \
                 FROM due WHERE d.endpoint_id = due.endpoint_id AND d.event_seq = due.event_seq \
                 RETURNING d.endpoint_id, d.event_seq, d.attempts, d.created_at, due.next_attempt_at AS due_at) \
             SELECT l.endpoint_id, l.event_seq, l.attempts, l.created_at, \
                 o.txid, o.type, o.account_id, o.data, o.at, o.created_at \
             FROM leased l JOIN outbox o ON o.seq = l.event_seq \
             ORDER BY l.due_at, l.endpoint_id, l.event_seq",
        )
        .await?;
    let limit = i64::from(claim.limit.min(CLAIM_MAX));
    let endpoints: Vec<&str> = claim.endpoints.iter().map(EndpointId::as_str).collect();
    let parameters: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
        [&claim.now.micros(), &claim.lease_until.micros(), &claim.owner, &limit, &endpoints];
    let rows = client.query(&statement, &parameters).await?;
    rows.iter().map(claimed_row).collect::<Result<_, StoreError>>().map_err(Failure::from)
}

fn claimed_row(row: &Row) -> Result<ClaimedDelivery, StoreError> {
    let number =
        |index: usize, what: &str| -> Result<i64, StoreError> { row.try_get(index).map_err(|_| undecodable(what)) };
    let text =
        |index: usize, what: &str| -> Result<String, StoreError> { row.try_get(index).map_err(|_| undecodable(what)) };
    let seq = u64::try_from(number(1, "event seq")?).map_err(|_| undecodable("event seq"))?;
    let txid = u64::try_from(number(4, "event txid")?).map_err(|_| undecodable("event txid"))?;
    let event = NewEvent {
        event_type: EventType::parse(&text(5, "event type")?).ok_or_else(|| undecodable("event type"))?,
        account_id: AccountId::parse(&text(6, "event account")?).map_err(|_| undecodable("event account"))?,
        data: text(7, "event data")?,
        at: Timestamp::from_micros(number(8, "event at")?),
    };
    Ok(ClaimedDelivery {
        endpoint_id: EndpointId::parse(&text(0, "endpoint id")?).map_err(|_| undecodable("endpoint id"))?,
        event: StoredEvent {
            seq,
            position: (u128::from(txid) << 64) | u128::from(seq),
            event,
            created_at: Timestamp::from_micros(number(9, "event created_at")?),
        },
        attempt: u32::try_from(number(2, "delivery attempts")?).map_err(|_| undecodable("delivery attempts"))?,
        created_at: Timestamp::from_micros(number(3, "delivery created_at")?),
    })
}

/// One transaction: every delivery's outcome (sent together, pipelined on the connection), then
/// each endpoint touched, in id order — an endpoint with a failure among them locked and folded
/// through the outcomes in order (`Endpoint::failed`, a success ending the failing run), one
/// with successes only cleared of a failing run if it had one (no lock otherwise, so concurrent
/// successes of one endpoint never queue on its row).
pub(crate) async fn finish(client: &mut Object, finishes: &[DeliveryFinish]) -> Result<Vec<Finished>, Failure> {
    let transaction = client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start().await?;
    let statement = transaction
        .prepare_cached(
            "UPDATE webhook_deliveries SET state = $5, next_attempt_at = COALESCE($6, next_attempt_at), \
                 last_error = $7, lease_owner = NULL \
             WHERE endpoint_id = $1 AND event_seq = $2 AND state = 'pending' AND lease_owner = $3 AND attempts = $4",
        )
        .await?;
    let updates = finishes.iter().map(|finish| {
        let statement = &statement;
        let transaction = &transaction;
        async move {
            let (state, next_attempt_at, error) = match &finish.outcome {
                DeliveryOutcome::Delivered => ("delivered", None, None),
                DeliveryOutcome::Retry { at, error } => ("pending", Some(at.micros()), Some(error_text(error))),
                DeliveryOutcome::GaveUp { error } => ("failed", None, Some(error_text(error))),
            };
            let seq = i64::try_from(finish.event_seq).map_err(|_| StoreError::corrupt("an event seq beyond i64"))?;
            let attempt = i64::from(finish.attempt);
            let parameters: [&(dyn tokio_postgres::types::ToSql + Sync); 7] =
                [&finish.endpoint_id.as_str(), &seq, &finish.owner, &attempt, &state, &next_attempt_at, &error];
            Ok::<bool, Failure>(transaction.execute(statement, &parameters).await? == 1)
        }
    });
    let recorded: Vec<bool> = futures::future::try_join_all(updates).await?;
    let mut finished: Vec<Finished> = recorded
        .iter()
        .map(|&ours| if ours { Finished::Recorded { endpoint_disabled: false } } else { Finished::LeaseLost })
        .collect();
    let mut endpoint_ids: Vec<&EndpointId> = finishes.iter().map(|finish| &finish.endpoint_id).collect();
    endpoint_ids.sort();
    endpoint_ids.dedup();
    for endpoint_id in endpoint_ids {
        let outcomes: Vec<usize> = (0..finishes.len())
            .filter(|&index| recorded[index] && &finishes[index].endpoint_id == endpoint_id)
            .collect();
        let failures = outcomes.iter().any(|&index| finishes[index].outcome != DeliveryOutcome::Delivered);
        if outcomes.is_empty() {
            continue;
        }
        if !failures {
            transaction
                .execute(
                    "UPDATE webhook_endpoints SET failing_since = NULL WHERE endpoint_id = $1 AND failing_since IS NOT NULL",
                    &[&endpoint_id.as_str()],
                )
                .await?;
            continue;
        }
        let Some(current) = locked_endpoint(&transaction, endpoint_id).await? else { continue };
        let mut after = current.clone();
        for &index in &outcomes {
            let was_enabled = after.disabled.is_none();
            after = match finishes[index].outcome {
                DeliveryOutcome::Delivered => Endpoint { failing_since: None, ..after },
                DeliveryOutcome::Retry { .. } | DeliveryOutcome::GaveUp { .. } => after.failed(finishes[index].now),
            };
            finished[index] = Finished::Recorded { endpoint_disabled: was_enabled && after.disabled.is_some() };
        }
        if after != current {
            put(&transaction, &after).await?;
        }
    }
    transaction.commit().await?;
    Ok(finished)
}

pub(crate) async fn replay(
    client: &mut Object,
    endpoint_id: &EndpointId,
    since: Timestamp,
    now: Timestamp,
) -> Result<Option<u64>, Failure> {
    let transaction = client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start().await?;
    let Some(current) = locked_endpoint(&transaction, endpoint_id).await? else { return Ok(None) };
    let (txid, seq) = split(current.position);
    let types: Vec<&str> = current.event_types.iter().map(|event_type| event_type.as_str()).collect();
    let replayed = transaction
        .execute(
            "INSERT INTO webhook_deliveries (endpoint_id, event_seq, state, attempts, next_attempt_at, created_at) \
             SELECT $1, seq, 'pending', 0, $6, $6 FROM outbox \
             WHERE (txid, seq) <= ($2, $3) AND created_at >= $4 AND type = ANY($5) \
             ORDER BY txid, seq LIMIT $7 \
             ON CONFLICT (endpoint_id, event_seq) DO UPDATE SET state = 'pending', attempts = 0, \
                 next_attempt_at = $6, created_at = $6, lease_owner = NULL, last_error = NULL",
            &[&endpoint_id.as_str(), &txid, &seq, &since.micros(), &types, &now.micros(), &i64::from(REPLAY_MAX)],
        )
        .await?;
    transaction.commit().await?;
    Ok(Some(replayed))
}
