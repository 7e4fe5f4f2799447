//! Gateway keys (`store::api_keys`) in PostgreSQL. A create counts the account's keys under an
//! advisory transaction lock on the account, so two creates at once cannot both pass the limit.

use deadpool_postgres::Object;
use ledger::{AccountId, Amount, Timestamp};
use store::api_keys::{decode_models, encode_models, ApiKey, ApiKeyCreated, KEYS_PER_ACCOUNT_MAX};
use store::codec::undecodable;
use store::{ApiKeyId, StoreError};
use tokio_postgres::{IsolationLevel, Row};

use crate::error::Failure;

const COLUMNS: &str = "key_id, account_id, name, hash, prefix, daily_limit, models, created_at, revoked_at";

fn key_row(row: &Row) -> Result<ApiKey, StoreError> {
    let text = |index: usize| row.try_get::<_, String>(index).map_err(|_| undecodable("gateway key"));
    let daily_limit: Option<i64> = row.try_get(5).map_err(|_| undecodable("key daily limit"))?;
    Ok(ApiKey {
        key_id: ApiKeyId::parse(&text(0)?).map_err(|_| undecodable("key id"))?,
        account_id: AccountId::parse(&text(1)?).map_err(|_| undecodable("key account"))?,
        name: row.try_get(2).map_err(|_| undecodable("key name"))?,
        hash: text(3)?,
        prefix: text(4)?,
        daily_limit: daily_limit
            .map(|micros| u64::try_from(micros).map(Amount::from_micros))
            .transpose()
            .map_err(|_| undecodable("key daily limit"))?,
        models: decode_models(&text(6)?),
        created_at: Timestamp::from_micros(row.try_get(7).map_err(|_| undecodable("key created_at"))?),
        revoked_at: row
            .try_get::<_, Option<i64>>(8)
            .map_err(|_| undecodable("key revoked_at"))?
            .map(Timestamp::from_micros),
    })
}

pub(crate) async fn create(client: &mut Object, key: &ApiKey) -> Result<ApiKeyCreated, Failure> {
    let transaction = client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start().await?;
    transaction
        .execute("SELECT pg_advisory_xact_lock(hashtext('api_keys:' || $1))", &[&key.account_id.as_str()])
        .await?;
    let owned: i64 = transaction
        .query_one("SELECT count(*) FROM api_keys WHERE account_id = $1", &[&key.account_id.as_str()])
        .await?
        .try_get(0)?;
    if owned >= KEYS_PER_ACCOUNT_MAX as i64 {
        return Ok(ApiKeyCreated::Limit);
    }
    let daily_limit = key
        .daily_limit
        .map(|limit| i64::try_from(limit.micros()))
        .transpose()
        .map_err(|_| StoreError::corrupt("a daily limit beyond i64"))?;
    let sql = format!("INSERT INTO api_keys ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)");
    transaction
        .execute(
            &sql,
            &[
                &key.key_id.as_str(),
                &key.account_id.as_str(),
                &key.name,
                &key.hash,
                &key.prefix,
                &daily_limit,
                &encode_models(&key.models),
                &key.created_at.micros(),
                &key.revoked_at.map(Timestamp::micros),
            ],
        )
        .await?;
    transaction.commit().await?;
    Ok(ApiKeyCreated::Created(key.clone()))
}

pub(crate) async fn by_hash(client: &Object, hash: &str) -> Result<Option<ApiKey>, Failure> {
    let statement = client.prepare_cached(&format!("SELECT {COLUMNS} FROM api_keys WHERE hash = $1")).await?;
    let row = client.query_opt(&statement, &[&hash]).await?;
    Ok(row.as_ref().map(key_row).transpose()?)
}

pub(crate) async fn of_account(client: &Object, account_id: &AccountId) -> Result<Vec<ApiKey>, Failure> {
    let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE account_id = $1 ORDER BY created_at, key_id LIMIT $2");
    let rows = client.query(&sql, &[&account_id.as_str(), &(KEYS_PER_ACCOUNT_MAX as i64)]).await?;
    Ok(rows.iter().map(key_row).collect::<Result<_, _>>()?)
}

pub(crate) async fn revoke(
    client: &Object,
    account_id: &AccountId,
    key_id: &ApiKeyId,
    now: Timestamp,
) -> Result<Option<ApiKey>, Failure> {
    let sql = format!(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $3) WHERE account_id = $1 AND key_id = $2 RETURNING {COLUMNS}"
    );
    let row = client.query_opt(&sql, &[&account_id.as_str(), &key_id.as_str(), &now.micros()]).await?;
    Ok(row.as_ref().map(key_row).transpose()?)
}
