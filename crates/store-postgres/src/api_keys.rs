//! Gateway keys (`store::api_keys`) in PostgreSQL. A create counts the account's keys under an
//! advisory transaction lock on the account, so two creates at once cannot both pass the limit.

use deadpool_postgres::Object;
use ledger::{AccountId, Amount, Timestamp};
use store::api_keys::{
    decode_models, encode_models, ApiKey, ApiKeyCreated, GatewayCall, UsageRow, KEYS_PER_ACCOUNT_MAX, USAGE_ROWS_MAX,
};
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

fn micros(amount: Amount) -> Result<i64, StoreError> {
    i64::try_from(amount.micros()).map_err(|_| StoreError::corrupt("an amount beyond i64"))
}

pub(crate) async fn record(client: &Object, call: &GatewayCall) -> Result<(), Failure> {
    let tokens = |count: Option<u64>| count.map(|count| i64::try_from(count).unwrap_or(i64::MAX));
    let statement = client
        .prepare_cached(
            "INSERT INTO gateway_calls (account_id, key_id, hold_id, model, catalog_version, prompt_tokens, \
                 completion_tokens, cost, worst_case, settlement, upstream_status, latency_ms, at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        )
        .await?;
    let (prompt, completion) = (tokens(call.prompt_tokens), tokens(call.completion_tokens));
    let (cost, worst_case) = (micros(call.cost)?, micros(call.worst_case)?);
    let (status, latency) = (i32::from(call.upstream_status), i64::try_from(call.latency_ms).unwrap_or(i64::MAX));
    let parameters: [&(dyn tokio_postgres::types::ToSql + Sync); 13] = [
        &call.account_id.as_str(),
        &call.key_id.as_str(),
        &call.hold_id.as_str(),
        &call.model,
        &call.catalog_version,
        &prompt,
        &completion,
        &cost,
        &worst_case,
        &call.settlement.as_str(),
        &status,
        &latency,
        &call.at.micros(),
    ];
    client.execute(&statement, &parameters).await?;
    Ok(())
}

pub(crate) async fn usage(
    client: &Object,
    account_id: &AccountId,
    from: Timestamp,
    to: Timestamp,
) -> Result<Vec<UsageRow>, Failure> {
    let statement = client
        .prepare_cached(
            "SELECT to_char(to_timestamp(at / 1000000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS day, model, count(*), \
                 coalesce(sum(prompt_tokens), 0)::BIGINT, coalesce(sum(completion_tokens), 0)::BIGINT, sum(cost)::BIGINT \
             FROM gateway_calls WHERE account_id = $1 AND at >= $2 AND at < $3 \
             GROUP BY day, model ORDER BY day, model LIMIT $4",
        )
        .await?;
    let rows = client
        .query(&statement, &[&account_id.as_str(), &from.micros(), &to.micros(), &i64::from(USAGE_ROWS_MAX)])
        .await?;
    let count = |value: i64| u64::try_from(value).map_err(|_| undecodable("usage"));
    let mut usage = Vec::with_capacity(rows.len());
    for row in &rows {
        usage.push(UsageRow {
            day: row.try_get(0)?,
            model: row.try_get(1)?,
            calls: count(row.try_get(2)?)?,
            prompt_tokens: count(row.try_get(3)?)?,
            completion_tokens: count(row.try_get(4)?)?,
            cost: Amount::from_micros(count(row.try_get(5)?)?),
        });
    }
    Ok(usage)
}

pub(crate) async fn spent_since(client: &Object, key_id: &ApiKeyId, since: Timestamp) -> Result<Amount, Failure> {
    let statement = client
        .prepare_cached("SELECT coalesce(sum(cost), 0)::BIGINT FROM gateway_calls WHERE key_id = $1 AND at >= $2")
        .await?;
    let spent: i64 = client.query_one(&statement, &[&key_id.as_str(), &since.micros()]).await?.try_get(0)?;
    Ok(u64::try_from(spent).map(Amount::from_micros).map_err(|_| undecodable("key spending"))?)
}
