//! Webhook endpoints and deliveries (`store::webhooks`) in SQLite. Writes run on the writer
//! thread (one writer: a claim needs no `SKIP LOCKED`), reads on the readers.

use ledger::Timestamp;
use rusqlite::{params, Connection, OptionalExtension, Row};
use store::events::{EventType, NewEvent, StoredEvent};
use store::webhooks::{
    decode_event_types, encode_event_types, error_text, ClaimedDelivery, DeliveryClaim, DeliveryFinish,
    DeliveryOutcome, Disabled, DisabledReason, Endpoint, EndpointChange, FanOut, Finished, PreviousSecret, CLAIM_MAX,
    ENDPOINTS_MAX, REPLAY_MAX,
};
use store::{codec, EndpointId, StoreError};

use crate::rows::sql_error;

/// A webhook write for the writer thread, and its answer.
#[derive(Debug)]
pub(crate) enum WebhookWork {
    Create(Box<Endpoint>),
    Change(EndpointId, EndpointChange, Timestamp),
    FanOut(FanOut),
    Claim(DeliveryClaim),
    Finish(Vec<DeliveryFinish>),
    Replay { endpoint_id: EndpointId, since: Timestamp, now: Timestamp },
}

#[derive(Debug)]
pub(crate) enum WebhookAnswer {
    Endpoint(Box<Endpoint>),
    MaybeEndpoint(Option<Box<Endpoint>>),
    FannedOut(bool),
    Claimed(Vec<ClaimedDelivery>),
    Finished(Vec<Finished>),
    Replayed(Option<u64>),
}

impl WebhookAnswer {
    /// An answer of another kind than the work asked for: a bug in this module.
    pub(crate) fn mismatch() -> StoreError {
        StoreError::corrupt("the writer answered a webhook call with another kind of answer")
    }
}

/// Performs one webhook write inside the writer's transaction.
pub(crate) fn perform(conn: &Connection, work: &WebhookWork) -> Result<WebhookAnswer, StoreError> {
    match work {
        WebhookWork::Create(endpoint) => {
            create(conn, endpoint).map(|endpoint| WebhookAnswer::Endpoint(Box::new(endpoint)))
        }
        WebhookWork::Change(endpoint_id, change, now) => change_endpoint(conn, endpoint_id, change, *now)
            .map(|endpoint| WebhookAnswer::MaybeEndpoint(endpoint.map(Box::new))),
        WebhookWork::FanOut(fan_out) => fan_out_events(conn, fan_out).map(WebhookAnswer::FannedOut),
        WebhookWork::Claim(claim) => claim_deliveries(conn, claim).map(WebhookAnswer::Claimed),
        WebhookWork::Finish(finishes) => finishes
            .iter()
            .map(|finish| finish_delivery(conn, finish))
            .collect::<Result<_, _>>()
            .map(WebhookAnswer::Finished),
        WebhookWork::Replay { endpoint_id, since, now } => {
            replay(conn, endpoint_id, *since, *now).map(WebhookAnswer::Replayed)
        }
    }
}

const ENDPOINT_COLUMNS: &str = "endpoint_id, url, event_types, description, secret, previous_secret, \
     previous_secret_until, created_at, disabled_at, disabled_reason, failing_since, position";

fn endpoint_row(row: &Row<'_>) -> rusqlite::Result<Result<Endpoint, StoreError>> {
    let text = |index: usize| row.get::<_, String>(index);
    let time = |index: usize| row.get::<_, Option<i64>>(index).map(|micros| micros.map(Timestamp::from_micros));
    let (endpoint_id, event_types, reason): (String, String, Option<String>) = (text(0)?, text(2)?, row.get(9)?);
    let previous: (Option<String>, Option<Timestamp>) = (row.get(5)?, time(6)?);
    let (disabled_at, failing_since, position) = (time(8)?, time(10)?, row.get::<_, i64>(11)?);
    let (url, description, secret, created_at) = (text(1)?, row.get(3)?, text(4)?, row.get::<_, i64>(7)?);
    Ok((|| {
        let disabled = match (disabled_at, reason) {
            (Some(at), Some(reason)) => Some(Disabled {
                at,
                reason: DisabledReason::parse(&reason).ok_or_else(|| codec::undecodable("disabled reason"))?,
            }),
            _ => None,
        };
        Ok(Endpoint {
            endpoint_id: EndpointId::parse(&endpoint_id).map_err(|_| codec::undecodable("endpoint id"))?,
            url,
            event_types: decode_event_types(&event_types)?,
            description,
            secret,
            previous_secret: match previous {
                (Some(secret), Some(until)) => Some(PreviousSecret { secret, until }),
                _ => None,
            },
            created_at: Timestamp::from_micros(created_at),
            disabled,
            failing_since,
            position: u128::try_from(position).map_err(|_| codec::undecodable("endpoint position"))?,
        })
    })())
}

pub(crate) fn endpoints(conn: &Connection) -> Result<Vec<Endpoint>, StoreError> {
    let sql = format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints ORDER BY endpoint_id LIMIT ?1");
    let mut statement = conn.prepare_cached(&sql).map_err(sql_error)?;
    let rows = statement.query_map([ENDPOINTS_MAX as i64], endpoint_row).map_err(sql_error)?;
    rows.map(|row| row.map_err(sql_error)?).collect()
}

fn endpoint(conn: &Connection, endpoint_id: &EndpointId) -> Result<Option<Endpoint>, StoreError> {
    let sql = format!("SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE endpoint_id = ?1");
    let mut statement = conn.prepare_cached(&sql).map_err(sql_error)?;
    statement.query_row([endpoint_id.as_str()], endpoint_row).optional().map_err(sql_error)?.transpose()
}

/// Writes every column of an endpoint (insert or replace).
fn put(conn: &Connection, endpoint: &Endpoint) -> Result<(), StoreError> {
    let sql = format!(
        "INSERT OR REPLACE INTO webhook_endpoints ({ENDPOINT_COLUMNS}) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
    );
    let mut statement = conn.prepare_cached(&sql).map_err(sql_error)?;
    let position =
        i64::try_from(endpoint.position).map_err(|_| StoreError::corrupt("an endpoint position beyond i64"))?;
    statement
        .execute(params![
            endpoint.endpoint_id.as_str(),
            endpoint.url,
            encode_event_types(&endpoint.event_types),
            endpoint.description,
            endpoint.secret,
            endpoint.previous_secret.as_ref().map(|previous| previous.secret.as_str()),
            endpoint.previous_secret.as_ref().map(|previous| previous.until.micros()),
            endpoint.created_at.micros(),
            endpoint.disabled.map(|disabled| disabled.at.micros()),
            endpoint.disabled.map(|disabled| disabled.reason.as_str()),
            endpoint.failing_since.map(Timestamp::micros),
            position,
        ])
        .map_err(sql_error)?;
    Ok(())
}

/// A new endpoint starts after the outbox's last event (AUTOINCREMENT: the last seq handed out,
/// even when retention emptied the table).
fn create(conn: &Connection, endpoint: &Endpoint) -> Result<Endpoint, StoreError> {
    let last: Option<i64> = conn
        .query_row("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'", [], |row| row.get(0))
        .optional()
        .map_err(sql_error)?;
    let position = u128::try_from(last.unwrap_or(0)).map_err(|_| codec::undecodable("outbox seq"))?;
    let endpoint = Endpoint { position, ..endpoint.clone() };
    put(conn, &endpoint)?;
    Ok(endpoint)
}

fn change_endpoint(
    conn: &Connection,
    endpoint_id: &EndpointId,
    change: &EndpointChange,
    now: Timestamp,
) -> Result<Option<Endpoint>, StoreError> {
    let Some(current) = endpoint(conn, endpoint_id)? else { return Ok(None) };
    let changed = current.changed(change, now);
    put(conn, &changed)?;
    Ok(Some(changed))
}

fn fan_out_events(conn: &Connection, fan_out: &FanOut) -> Result<bool, StoreError> {
    let (from, to) = match (i64::try_from(fan_out.from), i64::try_from(fan_out.to)) {
        (Ok(from), Ok(to)) => (from, to),
        _ => return Ok(false),
    };
    let moved = conn
        .prepare_cached("UPDATE webhook_endpoints SET position = ?3 WHERE endpoint_id = ?1 AND position = ?2")
        .map_err(sql_error)?
        .execute(params![fan_out.endpoint_id.as_str(), from, to])
        .map_err(sql_error)?;
    if moved == 0 {
        return Ok(false);
    }
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO webhook_deliveries (endpoint_id, event_seq, state, attempts, next_attempt_at, created_at) \
             VALUES (?1, ?2, 'pending', 0, ?3, ?3) ON CONFLICT DO NOTHING",
        )
        .map_err(sql_error)?;
    for seq in &fan_out.event_seqs {
        let seq = i64::try_from(*seq).map_err(|_| StoreError::corrupt("an event seq beyond i64"))?;
        insert.execute(params![fan_out.endpoint_id.as_str(), seq, fan_out.now.micros()]).map_err(sql_error)?;
    }
    Ok(true)
}

fn claim_deliveries(conn: &Connection, claim: &DeliveryClaim) -> Result<Vec<ClaimedDelivery>, StoreError> {
    // One writer: what the select finds due is still due when it is updated.
    let mut due = conn
        .prepare_cached(
            "SELECT d.endpoint_id, d.event_seq FROM webhook_deliveries d \
             JOIN outbox o ON o.seq = d.event_seq \
             WHERE d.state = 'pending' AND d.next_attempt_at <= ?1 \
                 AND d.endpoint_id IN (SELECT value FROM json_each(?3)) \
             ORDER BY d.next_attempt_at, d.endpoint_id, d.event_seq LIMIT ?2",
        )
        .map_err(sql_error)?;
    let limit = i64::from(claim.limit.min(CLAIM_MAX));
    let keys: Vec<(String, i64)> = due
        .query_map(params![claim.now.micros(), limit, endpoint_list(&claim.endpoints)], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })
        .map_err(sql_error)?
        .collect::<Result<_, _>>()
        .map_err(sql_error)?;
    let mut lease = conn
        .prepare_cached(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, next_attempt_at = ?3, lease_owner = ?4 \
             WHERE endpoint_id = ?1 AND event_seq = ?2 RETURNING attempts, created_at",
        )
        .map_err(sql_error)?;
    let mut claimed = Vec::with_capacity(keys.len());
    for (endpoint_id, seq) in keys {
        let (attempts, created_at): (i64, i64) = lease
            .query_row(params![endpoint_id, seq, claim.lease_until.micros(), claim.owner], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .map_err(sql_error)?;
        let event = event(conn, seq)?.ok_or_else(|| codec::undecodable("delivery without its event"))?;
        claimed.push(ClaimedDelivery {
            endpoint_id: EndpointId::parse(&endpoint_id).map_err(|_| codec::undecodable("endpoint id"))?,
            event,
            attempt: u32::try_from(attempts).map_err(|_| codec::undecodable("delivery attempts"))?,
            created_at: Timestamp::from_micros(created_at),
        });
    }
    Ok(claimed)
}

/// A JSON array of endpoint ids, for `json_each`.
fn endpoint_list(endpoints: &[EndpointId]) -> String {
    serde_json::Value::Array(endpoints.iter().map(|id| serde_json::Value::String(id.to_string())).collect()).to_string()
}

fn event(conn: &Connection, seq: i64) -> Result<Option<StoredEvent>, StoreError> {
    let mut statement = conn
        .prepare_cached("SELECT type, account_id, data, at, created_at FROM outbox WHERE seq = ?1")
        .map_err(sql_error)?;
    let row = statement
        .query_row([seq], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?, row.get(2)?, row.get(3)?, row.get(4)?))
        })
        .optional()
        .map_err(sql_error)?;
    let Some((event_type, account_id, data, at, created_at)) = row else { return Ok(None) };
    let event = NewEvent {
        event_type: EventType::parse(&event_type).ok_or_else(|| codec::undecodable("event type"))?,
        account_id: ledger::AccountId::parse(&account_id).map_err(|_| codec::undecodable("event account"))?,
        data,
        at: Timestamp::from_micros(at),
    };
    let seq = u64::try_from(seq).map_err(|_| codec::undecodable("event seq"))?;
    Ok(Some(StoredEvent { seq, position: u128::from(seq), event, created_at: Timestamp::from_micros(created_at) }))
}

fn finish_delivery(conn: &Connection, finish: &DeliveryFinish) -> Result<Finished, StoreError> {
    let (state, next_attempt_at, error) = match &finish.outcome {
        DeliveryOutcome::Delivered => ("delivered", None, None),
        DeliveryOutcome::Retry { at, error } => ("pending", Some(at.micros()), Some(error_text(error))),
        DeliveryOutcome::GaveUp { error } => ("failed", None, Some(error_text(error))),
    };
    let seq = i64::try_from(finish.event_seq).map_err(|_| StoreError::corrupt("an event seq beyond i64"))?;
    let updated = conn
        .prepare_cached(
            "UPDATE webhook_deliveries SET state = ?5, next_attempt_at = COALESCE(?6, next_attempt_at), \
                 last_error = ?7, lease_owner = NULL \
             WHERE endpoint_id = ?1 AND event_seq = ?2 AND state = 'pending' AND lease_owner = ?3 AND attempts = ?4",
        )
        .map_err(sql_error)?
        .execute(params![
            finish.endpoint_id.as_str(),
            seq,
            finish.owner,
            i64::from(finish.attempt),
            state,
            next_attempt_at,
            error
        ])
        .map_err(sql_error)?;
    if updated == 0 {
        return Ok(Finished::LeaseLost);
    }
    let Some(current) = endpoint(conn, &finish.endpoint_id)? else { return Ok(Finished::LeaseLost) };
    let after = match finish.outcome {
        DeliveryOutcome::Delivered => Endpoint { failing_since: None, ..current.clone() },
        DeliveryOutcome::Retry { .. } | DeliveryOutcome::GaveUp { .. } => current.failed(finish.now),
    };
    if after != current {
        put(conn, &after)?;
    }
    Ok(Finished::Recorded { endpoint_disabled: current.disabled.is_none() && after.disabled.is_some() })
}

fn replay(
    conn: &Connection,
    endpoint_id: &EndpointId,
    since: Timestamp,
    now: Timestamp,
) -> Result<Option<u64>, StoreError> {
    let Some(current) = endpoint(conn, endpoint_id)? else { return Ok(None) };
    let position = i64::try_from(current.position).map_err(|_| codec::undecodable("endpoint position"))?;
    let mut select = conn
        .prepare_cached("SELECT seq, type FROM outbox WHERE seq <= ?1 AND created_at >= ?2 ORDER BY seq")
        .map_err(sql_error)?;
    let rows = select
        .query_map(params![position, since.micros()], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?)))
        .map_err(sql_error)?;
    let mut seqs = Vec::new();
    for row in rows {
        let (seq, event_type) = row.map_err(sql_error)?;
        if EventType::parse(&event_type).is_some_and(|event_type| current.wants(event_type)) {
            seqs.push(seq);
            if seqs.len() >= REPLAY_MAX as usize {
                break;
            }
        }
    }
    let mut upsert = conn
        .prepare_cached(
            "INSERT INTO webhook_deliveries (endpoint_id, event_seq, state, attempts, next_attempt_at, created_at) \
             VALUES (?1, ?2, 'pending', 0, ?3, ?3) \
             ON CONFLICT (endpoint_id, event_seq) DO UPDATE SET state = 'pending', attempts = 0, \
                 next_attempt_at = ?3, created_at = ?3, lease_owner = NULL, last_error = NULL",
        )
        .map_err(sql_error)?;
    for seq in &seqs {
        upsert.execute(params![endpoint_id.as_str(), seq, now.micros()]).map_err(sql_error)?;
    }
    Ok(Some(seqs.len() as u64))
}

/// Forgets deliveries recorded at or before `cutoff` (their events' retention ended).
pub(crate) fn delete_deliveries_before(conn: &Connection, cutoff: Timestamp) -> Result<u64, StoreError> {
    let mut statement =
        conn.prepare_cached("DELETE FROM webhook_deliveries WHERE created_at <= ?1").map_err(sql_error)?;
    Ok(statement.execute([cutoff.micros()]).map_err(sql_error)? as u64)
}
