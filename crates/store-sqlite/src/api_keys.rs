//! Gateway keys (`store::api_keys`) in SQLite: writes on the writer thread, reads on the readers.

use ledger::{AccountId, Amount, Timestamp};
use rusqlite::{params, Connection, OptionalExtension, Row};
use store::api_keys::{
    decode_models, encode_models, ApiKey, ApiKeyCreated, GatewayCall, UsageRow, KEYS_PER_ACCOUNT_MAX, USAGE_ROWS_MAX,
};
use store::{codec, ApiKeyId, StoreError};

use crate::rows::sql_error;

/// A key write for the writer thread, and its answer.
#[derive(Debug)]
pub(crate) enum ApiKeyWork {
    Create(ApiKey),
    Revoke { account_id: AccountId, key_id: ApiKeyId, now: Timestamp },
    Record(Box<GatewayCall>),
}

#[derive(Debug)]
pub(crate) enum ApiKeyAnswer {
    Created(ApiKeyCreated),
    Revoked(Option<ApiKey>),
    Recorded,
}

impl ApiKeyAnswer {
    /// An answer of another kind than the work asked for: a bug in this module.
    pub(crate) fn mismatch() -> StoreError {
        StoreError::corrupt("the writer answered a key call with another kind of answer")
    }
}

pub(crate) fn perform(conn: &Connection, work: &ApiKeyWork) -> Result<ApiKeyAnswer, StoreError> {
    match work {
        ApiKeyWork::Create(key) => create(conn, key).map(ApiKeyAnswer::Created),
        ApiKeyWork::Revoke { account_id, key_id, now } => {
            revoke(conn, account_id, key_id, *now).map(ApiKeyAnswer::Revoked)
        }
        ApiKeyWork::Record(call) => record(conn, call).map(|()| ApiKeyAnswer::Recorded),
    }
}

const COLUMNS: &str = "key_id, account_id, name, hash, prefix, daily_limit, models, created_at, revoked_at";

fn key_row(row: &Row<'_>) -> rusqlite::Result<Result<ApiKey, StoreError>> {
    let (key_id, account_id, name, hash, prefix): (String, String, Option<String>, String, String) =
        (row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?, row.get(4)?);
    let (daily_limit, models, created_at, revoked_at): (Option<i64>, String, i64, Option<i64>) =
        (row.get(5)?, row.get(6)?, row.get(7)?, row.get(8)?);
    Ok((|| {
        Ok(ApiKey {
            key_id: ApiKeyId::parse(&key_id).map_err(|_| codec::undecodable("key id"))?,
            account_id: AccountId::parse(&account_id).map_err(|_| codec::undecodable("key account"))?,
            name,
            hash,
            prefix,
            daily_limit: daily_limit
                .map(|micros| u64::try_from(micros).map(Amount::from_micros))
                .transpose()
                .map_err(|_| codec::undecodable("key daily limit"))?,
            models: decode_models(&models),
            created_at: Timestamp::from_micros(created_at),
            revoked_at: revoked_at.map(Timestamp::from_micros),
        })
    })())
}

fn create(conn: &Connection, key: &ApiKey) -> Result<ApiKeyCreated, StoreError> {
    let owned: i64 = conn
        .prepare_cached("SELECT count(*) FROM api_keys WHERE account_id = ?1")
        .map_err(sql_error)?
        .query_row([key.account_id.as_str()], |row| row.get(0))
        .map_err(sql_error)?;
    if owned >= KEYS_PER_ACCOUNT_MAX as i64 {
        return Ok(ApiKeyCreated::Limit);
    }
    let daily_limit = key
        .daily_limit
        .map(|limit| i64::try_from(limit.micros()))
        .transpose()
        .map_err(|_| StoreError::corrupt("a daily limit beyond i64"))?;
    let sql = format!("INSERT INTO api_keys ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)");
    conn.prepare_cached(&sql)
        .map_err(sql_error)?
        .execute(params![
            key.key_id.as_str(),
            key.account_id.as_str(),
            key.name,
            key.hash,
            key.prefix,
            daily_limit,
            encode_models(&key.models),
            key.created_at.micros(),
            key.revoked_at.map(Timestamp::micros),
        ])
        .map_err(sql_error)?;
    Ok(ApiKeyCreated::Created(key.clone()))
}

fn revoke(
    conn: &Connection,
    account_id: &AccountId,
    key_id: &ApiKeyId,
    now: Timestamp,
) -> Result<Option<ApiKey>, StoreError> {
    conn.prepare_cached(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?3) WHERE account_id = ?1 AND key_id = ?2",
    )
    .map_err(sql_error)?
    .execute(params![account_id.as_str(), key_id.as_str(), now.micros()])
    .map_err(sql_error)?;
    let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE account_id = ?1 AND key_id = ?2");
    let mut statement = conn.prepare_cached(&sql).map_err(sql_error)?;
    statement.query_row([account_id.as_str(), key_id.as_str()], key_row).optional().map_err(sql_error)?.transpose()
}

pub(crate) fn by_hash(conn: &Connection, hash: &str) -> Result<Option<ApiKey>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE hash = ?1");
    let mut statement = conn.prepare_cached(&sql).map_err(sql_error)?;
    statement.query_row([hash], key_row).optional().map_err(sql_error)?.transpose()
}

pub(crate) fn of_account(conn: &Connection, account_id: &AccountId) -> Result<Vec<ApiKey>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE account_id = ?1 ORDER BY created_at, key_id LIMIT ?2");
    let mut statement = conn.prepare_cached(&sql).map_err(sql_error)?;
    let rows =
        statement.query_map(params![account_id.as_str(), KEYS_PER_ACCOUNT_MAX as i64], key_row).map_err(sql_error)?;
    rows.map(|row| row.map_err(sql_error)?).collect()
}

fn micros(amount: Amount) -> Result<i64, StoreError> {
    i64::try_from(amount.micros()).map_err(|_| StoreError::corrupt("an amount beyond i64"))
}

fn record(conn: &Connection, call: &GatewayCall) -> Result<(), StoreError> {
    let tokens = |count: Option<u64>| count.map(|count| i64::try_from(count).unwrap_or(i64::MAX));
    conn.prepare_cached(
        "INSERT INTO gateway_calls (account_id, key_id, hold_id, model, catalog_version, prompt_tokens, \
             completion_tokens, cost, worst_case, settlement, upstream_status, latency_ms, at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )
    .map_err(sql_error)?
    .execute(params![
        call.account_id.as_str(),
        call.key_id.as_str(),
        call.hold_id.as_str(),
        call.model,
        call.catalog_version,
        tokens(call.prompt_tokens),
        tokens(call.completion_tokens),
        micros(call.cost)?,
        micros(call.worst_case)?,
        call.settlement.as_str(),
        i64::from(call.upstream_status),
        i64::try_from(call.latency_ms).unwrap_or(i64::MAX),
        call.at.micros(),
    ])
    .map_err(sql_error)?;
    Ok(())
}

pub(crate) fn usage(
    conn: &Connection,
    account_id: &AccountId,
    from: Timestamp,
    to: Timestamp,
) -> Result<Vec<UsageRow>, StoreError> {
    let mut statement = conn
        .prepare_cached(
            "SELECT date(at / 1000000, 'unixepoch') AS day, model, count(*), \
                 coalesce(sum(prompt_tokens), 0), coalesce(sum(completion_tokens), 0), sum(cost) \
             FROM gateway_calls WHERE account_id = ?1 AND at >= ?2 AND at < ?3 \
             GROUP BY day, model ORDER BY day, model LIMIT ?4",
        )
        .map_err(sql_error)?;
    let rows = statement
        .query_map(params![account_id.as_str(), from.micros(), to.micros(), i64::from(USAGE_ROWS_MAX)], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, i64>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, i64>(4)?,
                row.get::<_, i64>(5)?,
            ))
        })
        .map_err(sql_error)?;
    rows.map(|row| {
        let (day, model, calls, prompt, completion, cost) = row.map_err(sql_error)?;
        let count = |value: i64| u64::try_from(value).map_err(|_| codec::undecodable("usage"));
        Ok(UsageRow {
            model,
            day,
            calls: count(calls)?,
            prompt_tokens: count(prompt)?,
            completion_tokens: count(completion)?,
            cost: Amount::from_micros(count(cost)?),
        })
    })
    .collect()
}

pub(crate) fn spent_since(conn: &Connection, key_id: &ApiKeyId, since: Timestamp) -> Result<Amount, StoreError> {
    let spent: i64 = conn
        .prepare_cached("SELECT coalesce(sum(cost), 0) FROM gateway_calls WHERE key_id = ?1 AND at >= ?2")
        .map_err(sql_error)?
        .query_row(params![key_id.as_str(), since.micros()], |row| row.get(0))
        .map_err(sql_error)?;
    u64::try_from(spent).map(Amount::from_micros).map_err(|_| codec::undecodable("key spending"))
}
