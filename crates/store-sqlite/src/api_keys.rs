//! Gateway keys (`store::api_keys`) in SQLite: writes on the writer thread, reads on the readers.

use ledger::{AccountId, Amount, Timestamp};
use rusqlite::{params, Connection, OptionalExtension, Row};
use store::api_keys::{decode_models, encode_models, ApiKey, ApiKeyCreated, KEYS_PER_ACCOUNT_MAX};
use store::{codec, ApiKeyId, StoreError};

use crate::rows::sql_error;

/// A key write for the writer thread, and its answer.
#[derive(Debug)]
pub(crate) enum ApiKeyWork {
    Create(ApiKey),
    Revoke { account_id: AccountId, key_id: ApiKeyId, now: Timestamp },
}

#[derive(Debug)]
pub(crate) enum ApiKeyAnswer {
    Created(ApiKeyCreated),
    Revoked(Option<ApiKey>),
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
