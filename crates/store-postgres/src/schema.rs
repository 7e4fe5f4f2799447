//! Embedded migrations, applied at start-up under a transaction-scoped advisory lock.
//!
//! Several server processes may start against one database at the same moment; the advisory
//! lock makes them apply the migrations one after the other, so the second finds them done.
//! Versions are recorded in `schema_migrations`; a database migrated by a newer build (a
//! version this build does not know) refuses to start rather than guess.

use store::StoreError;
use tokio_postgres::Client;

/// Key of the advisory lock that serialises migrations ("creditgr" in ASCII).
const MIGRATION_LOCK_KEY: i64 = 0x6372_6564_6974_6772;

/// One schema step. Versions are dense, starting at 1, and never edited once released.
struct Migration {
    version: i32,
    sql: &'static str,
}

/// The schema shared in meaning with the SQLite adapter: amounts are BIGINT micro-credits, times
/// BIGINT microseconds since the Unix epoch (UTC). CHECK constraints restate the ledger's
/// invariants so a bug cannot write a negative figure unnoticed.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        sql: r#"
CREATE TABLE accounts (
    account_id TEXT PRIMARY KEY,
    created_at BIGINT NOT NULL,
    spent BIGINT NOT NULL CHECK (spent >= 0),
    refunded BIGINT NOT NULL CHECK (refunded >= 0)
);

CREATE TABLE grants (
    grant_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (account_id),
    kind TEXT NOT NULL CHECK (kind IN ('grant', 'refund')),
    amount BIGINT NOT NULL CHECK (amount >= 0),
    free BIGINT NOT NULL CHECK (free >= 0 AND free <= amount),
    priority INTEGER NOT NULL,
    expires_at BIGINT,
    created_at BIGINT NOT NULL,
    reference TEXT,
    metadata TEXT NOT NULL,
    live BOOLEAN NOT NULL,
    UNIQUE (account_id, kind, reference)
);
CREATE INDEX grants_live ON grants (account_id) WHERE live;
-- The sweeper's question: which live grants have a free part past its expiry?
CREATE INDEX grants_live_expiry ON grants (expires_at) WHERE live AND expires_at IS NOT NULL;

CREATE TABLE holds (
    hold_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (account_id),
    amount BIGINT NOT NULL CHECK (amount >= 0),
    captured BIGINT NOT NULL CHECK (captured >= 0),
    remaining BIGINT NOT NULL CHECK (remaining >= 0 AND remaining <= amount),
    refunded BIGINT NOT NULL CHECK (refunded >= 0 AND refunded <= captured),
    state TEXT NOT NULL CHECK (state IN ('pending', 'captured', 'released', 'expired')),
    expires_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    reference TEXT,
    metadata TEXT NOT NULL,
    allocations TEXT NOT NULL
);
CREATE INDEX holds_pending ON holds (account_id) WHERE state = 'pending';
CREATE INDEX holds_pending_expiry ON holds (expires_at) WHERE state = 'pending';

CREATE TABLE entries (
    seq BIGSERIAL PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (account_id),
    kind TEXT NOT NULL,
    amount BIGINT NOT NULL CHECK (amount >= 0),
    hold_id TEXT,
    grant_id TEXT,
    reference TEXT,
    balance_after BIGINT NOT NULL CHECK (balance_after >= 0),
    held_after BIGINT NOT NULL CHECK (held_after >= 0 AND held_after <= balance_after),
    at BIGINT NOT NULL,
    idempotency_key TEXT
);
CREATE INDEX entries_account_seq ON entries (account_id, seq);

CREATE TABLE idempotency (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    result TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX idempotency_created ON idempotency (created_at);
"#,
    },
    // Threads, their runs (one per turn) and the runs' artifacts: the run engine's records. A
    // thread may exist before its account has any credits, so no key points at `accounts`.
    Migration {
        version: 2,
        sql: r#"
CREATE TABLE threads (
    thread_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    thread_id TEXT NOT NULL REFERENCES threads (thread_id),
    turn_index BIGINT NOT NULL CHECK (turn_index >= 0),
    state TEXT NOT NULL CHECK (state IN ('running', 'succeeded', 'failed', 'canceled', 'interrupted')),
    instance_id TEXT NOT NULL,
    hold_id TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    -- The engine's JSON document, kept as the exact text it wrote (not jsonb, which rewrites it).
    data TEXT NOT NULL,
    UNIQUE (thread_id, turn_index)
);
-- At most one running run per thread: two turns of one thread never hold credits at once.
CREATE UNIQUE INDEX runs_one_running_per_thread ON runs (thread_id) WHERE state = 'running';
-- Crash recovery: the running runs (of one instance), oldest first.
CREATE INDEX runs_by_state ON runs (state, instance_id, created_at);

CREATE TABLE artifacts (
    artifact_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    content_type TEXT NOT NULL,
    bytes BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);
"#,
    },
    // Async video jobs. `data` is the whole record as `store::codec::encode_job` writes it; the
    // other columns copy the fields queries filter on, written from the same record by the same
    // statement. The constraint names are what the adapter maps to refusals (see `jobs`).
    Migration {
        version: 3,
        sql: r#"
CREATE TABLE jobs (
    job_id TEXT CONSTRAINT jobs_pkey PRIMARY KEY,
    account_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    retry_source_job_id TEXT,
    lease_expires_at BIGINT,
    heartbeat_at BIGINT,
    run_after BIGINT NOT NULL,
    attempts INTEGER NOT NULL CHECK (attempts >= 0),
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    version BIGINT NOT NULL CHECK (version >= 1),
    -- The exact text the codec wrote (not jsonb, which rewrites it).
    data TEXT NOT NULL
);
-- A job is retried at most once: this index, not a check in code, is what enforces it.
CREATE UNIQUE INDEX jobs_one_retry_per_source ON jobs (retry_source_job_id) WHERE retry_source_job_id IS NOT NULL;
-- Claims: due queued jobs, and running jobs whose lease expired.
CREATE INDEX jobs_claim_queued ON jobs (status, run_after);
CREATE INDEX jobs_claim_lease ON jobs (status, lease_expires_at);
-- A thread's jobs, oldest first.
CREATE INDEX jobs_by_thread ON jobs (thread_id, created_at);
"#,
    },
    Migration {
        version: 4,
        sql: r#"
-- Instance leases: each server process renews its row while it runs; the runs of an instance
-- without a live lease are recovered (holds released, runs marked interrupted).
CREATE TABLE instances (
    instance_id TEXT PRIMARY KEY,
    lease_until BIGINT NOT NULL,
    started_at BIGINT NOT NULL
);
CREATE INDEX instances_by_lease ON instances (lease_until);
"#,
    },
    Migration {
        version: 5,
        sql: r#"
-- Every hold of an account, whatever its state: `verify` reads them per account, which was a
-- scan of the whole holds table per account without it (quadratic over a large ledger).
CREATE INDEX IF NOT EXISTS holds_by_account ON holds (account_id, created_at);
"#,
    },
    // Run events in the store (any process replays and follows a run), cancel requests, and a
    // typed hold resolution.
    Migration {
        version: 6,
        sql: r#"
-- Whether a run's hold still needs care, as a typed column. Existing rows are read once from the
-- engine's document: the last time its `"hold_resolved":false` text is looked for.
ALTER TABLE runs ADD COLUMN hold_resolution TEXT NOT NULL DEFAULT 'none'
    CHECK (hold_resolution IN ('none', 'pending', 'resolved'));
UPDATE runs SET hold_resolution = CASE
    WHEN hold_id IS NULL THEN 'none'
    WHEN strpos(data, '"hold_resolved":false') > 0 THEN 'pending'
    ELSE 'resolved'
END;
-- Recovery reads exactly the terminal runs whose release failed, never a finished run.
CREATE INDEX runs_hold_pending ON runs (updated_at, run_id) WHERE hold_resolution = 'pending' AND state <> 'running';

-- A cancel asked for on any instance; the owner is told (NOTIFY) and looks for its running runs'
-- requests as well.
ALTER TABLE runs ADD COLUMN cancel_requested_at BIGINT;
CREATE INDEX runs_cancel_requested ON runs (instance_id, created_at)
    WHERE state = 'running' AND cancel_requested_at IS NOT NULL;

-- Each run's frames as the engine encoded them; bounded per run by the engine, which deletes the
-- frames it evicts. `at` serves the retention sweep.
CREATE TABLE run_events (
    run_id TEXT NOT NULL,
    seq BIGINT NOT NULL CHECK (seq >= 0),
    kind TEXT NOT NULL,
    at BIGINT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE INDEX run_events_by_time ON run_events (at);
"#,
    },
    // Issue 16: a command's cost no longer grows with the account's pending holds.
    Migration {
        version: 7,
        sql: r#"
-- The account keeps `held` (the remaining part of all its pending holds) and each grant keeps
-- `pinned` (what pending holds reserved from it), so a command loads only the pending holds due
-- to expire and the hold it names. Both are backfilled from the holds as they stand.
ALTER TABLE accounts ADD COLUMN held BIGINT NOT NULL DEFAULT 0 CHECK (held >= 0);
ALTER TABLE grants ADD COLUMN pinned BIGINT NOT NULL DEFAULT 0 CHECK (pinned >= 0);
UPDATE accounts SET held = pending.held
FROM (SELECT account_id, SUM(remaining)::BIGINT AS held FROM holds WHERE state = 'pending' GROUP BY account_id)
    AS pending
WHERE accounts.account_id = pending.account_id;
-- allocations is a JSON array of [grant_id, micro-credits] pairs.
UPDATE grants SET pinned = pins.pinned
FROM (
    SELECT holds.account_id, allocation->>0 AS grant_id, SUM((allocation->>1)::BIGINT)::BIGINT AS pinned
    FROM holds, jsonb_array_elements(holds.allocations::jsonb) AS allocation
    WHERE holds.state = 'pending'
    GROUP BY 1, 2
) AS pins
WHERE grants.account_id = pins.account_id AND grants.grant_id = pins.grant_id;

-- The due pending holds of one account, found without reading the others.
DROP INDEX holds_pending;
CREATE INDEX holds_pending_by_account_expiry ON holds (account_id, expires_at) WHERE state = 'pending';
-- The paged holds read: one account's holds in one state, in byte-wise hold-id order.
CREATE INDEX holds_by_account_state ON holds (account_id, state, hold_id COLLATE "C");
"#,
    },
    // Issue 15: recurring allowances.
    Migration {
        version: 8,
        sql: r#"
-- A period's credits are a grant of kind 'allowance' (reference `<allowance_id>:<period start>`,
-- unique per account and kind like every grant reference).
ALTER TABLE grants DROP CONSTRAINT grants_kind_check;
ALTER TABLE grants ADD CONSTRAINT grants_kind_check CHECK (kind IN ('grant', 'refund', 'allowance'));

-- One row per allowance: `data` is the whole record (store::codec::encode_allowance); the other
-- columns are copies of the fields queries filter on, always written from the same record.
CREATE TABLE allowances (
    allowance_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts (account_id),
    -- NULL: never ends. An allowance is loaded with its account until it has ended.
    ends_at BIGINT,
    -- The sweeper's question: which accounts have an allowance period to grant?
    next_due_at BIGINT,
    data TEXT NOT NULL
);
CREATE INDEX allowances_by_account ON allowances (account_id, ends_at);
CREATE INDEX allowances_due ON allowances (next_due_at) WHERE next_due_at IS NOT NULL;

-- Plans: named sets of allowances, written once (`data` is store::plans::encode_plan).
CREATE TABLE plans (
    plan_id TEXT PRIMARY KEY,
    data TEXT NOT NULL
);

-- The event outbox: written in the transaction of the change that causes each event
-- (store::events). Transactions commit in another order than they take seqs, so readers page by
-- (txid, seq) and only below the oldest transaction still running: a row that becomes visible
-- later always sorts after every row already read. No index on time: retention deletes the
-- oldest rows by seq.
CREATE TABLE outbox (
    seq BIGSERIAL PRIMARY KEY,
    txid BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    type TEXT NOT NULL,
    account_id TEXT NOT NULL,
    data TEXT NOT NULL,
    at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX outbox_by_position ON outbox (txid, seq);

-- Below this many available credits (micro-credits) the account is low: `balance.low` events.
ALTER TABLE accounts ADD COLUMN low_balance_threshold BIGINT CHECK (low_balance_threshold >= 0);
"#,
    },
    // Issue 15: webhook endpoints and their deliveries (store::webhooks).
    Migration {
        version: 9,
        sql: r#"
-- An endpoint keeps the outbox position it has been fanned out to: (txid, seq), as readers page.
CREATE TABLE webhook_endpoints (
    endpoint_id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    event_types TEXT NOT NULL,
    description TEXT,
    secret TEXT NOT NULL,
    previous_secret TEXT,
    previous_secret_until BIGINT,
    created_at BIGINT NOT NULL,
    disabled_at BIGINT,
    disabled_reason TEXT CHECK (disabled_reason IN ('admin', 'failing')),
    failing_since BIGINT,
    position_txid BIGINT NOT NULL CHECK (position_txid >= 0),
    position_seq BIGINT NOT NULL CHECK (position_seq >= 0),
    CHECK ((disabled_at IS NULL) = (disabled_reason IS NULL))
);

-- One delivery per (endpoint, event); a claim leases it by moving next_attempt_at to the
-- lease's end and counting the attempt.
CREATE TABLE webhook_deliveries (
    endpoint_id TEXT NOT NULL REFERENCES webhook_endpoints (endpoint_id),
    event_seq BIGINT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts BIGINT NOT NULL CHECK (attempts >= 0),
    next_attempt_at BIGINT NOT NULL,
    lease_owner TEXT,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (endpoint_id, event_seq)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at, endpoint_id, event_seq)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_by_age ON webhook_deliveries (created_at);
"#,
    },
    // Issue 13: the LLM gateway's per-account keys (store::api_keys), stored hashed.
    Migration {
        version: 10,
        sql: r#"
CREATE TABLE api_keys (
    key_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    name TEXT,
    hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    daily_limit BIGINT CHECK (daily_limit >= 0),
    models TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX api_keys_by_account ON api_keys (account_id, created_at);

-- Every settled gateway call (store::api_keys::GatewayCall): the journal holds its money, this
-- what it was. Summed by account and time (usage), and by key and time (daily limits).
CREATE TABLE gateway_calls (
    seq BIGSERIAL PRIMARY KEY,
    account_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    hold_id TEXT NOT NULL,
    model TEXT NOT NULL,
    catalog_version TEXT NOT NULL,
    prompt_tokens BIGINT,
    completion_tokens BIGINT,
    cost BIGINT NOT NULL CHECK (cost >= 0),
    worst_case BIGINT NOT NULL CHECK (worst_case >= 0),
    settlement TEXT NOT NULL CHECK (settlement IN ('usage', 'worst_case', 'released')),
    upstream_status INTEGER NOT NULL,
    latency_ms BIGINT NOT NULL,
    at BIGINT NOT NULL
);
CREATE INDEX gateway_calls_by_account ON gateway_calls (account_id, at);
CREATE INDEX gateway_calls_by_key ON gateway_calls (key_id, at);
"#,
    },
    // Issue 14: the operator's lists. An account's runs and jobs, newest first
    // (RunStore::account_runs, JobStore::account_jobs), its grants by id; voided grants. Ids
    // compare byte-wise.
    Migration {
        version: 11,
        sql: r#"
CREATE INDEX runs_by_account ON runs (account_id, created_at, run_id COLLATE "C");
CREATE INDEX jobs_by_account ON jobs (account_id, created_at, job_id COLLATE "C");
-- A grant voided by an operator (ledger::Command::VoidGrant); an account's grants by id.
ALTER TABLE grants ADD COLUMN voided_at BIGINT;
CREATE INDEX grants_by_account ON grants (account_id, grant_id COLLATE "C");
-- The operator's account search pages by id byte-wise (LedgerStore::account_ids); the primary
-- key's order is the database's collation.
CREATE INDEX accounts_by_id_bytes ON accounts (account_id COLLATE "C");
"#,
    },
    // Issue 16: fewer index entries written per command. Every command writes an idempotency
    // record, and a hold is written twice (created, then captured or released, which changes its
    // state and so is never a HOT update): each index on these tables is paid on every command.
    Migration {
        version: 12,
        sql: r#"
-- `verify` reads an account's holds through holds_by_account_state (account_id first) and sorts
-- them; nothing else used this one.
DROP INDEX IF EXISTS holds_by_account;
-- The sweeper deletes records older than the retention; they were inserted in time order, so a
-- block-range index finds them, for a fraction of a B-tree's cost per insert.
DROP INDEX IF EXISTS idempotency_created;
CREATE INDEX idempotency_created ON idempotency USING brin (created_at);
"#,
    },
    // Issue 16: a foreign key is checked row by row, by a query that locks the account row (FOR
    // KEY SHARE) — the row the batch already holds FOR UPDATE. Measured in-process (uniform,
    // 64 callers): the checks were 7 % of the server's statement time, and without them a
    // command costs 10 % less CPU (173–199 → 158–166 µs). These rows are written by one module
    // (`execute::write`), in the transaction that locked or inserted their account's row, and an
    // account row is never deleted; `verify` reports any row whose account is missing.
    Migration {
        version: 13,
        sql: r#"
ALTER TABLE entries DROP CONSTRAINT IF EXISTS entries_account_id_fkey;
ALTER TABLE holds DROP CONSTRAINT IF EXISTS holds_account_id_fkey;
ALTER TABLE grants DROP CONSTRAINT IF EXISTS grants_account_id_fkey;
"#,
    },
    // Issue 16: a batch writes with one statement and sends its COMMIT in the same burst
    // (`execute::write`), so the statement checks itself: a check that fails raises, the
    // transaction aborts, and the COMMIT is answered as a ROLLBACK.
    Migration {
        version: 14,
        sql: r#"
-- Raises `sqlstate` with `message` unless `ok`; returns `ok`.
CREATE OR REPLACE FUNCTION creditgraph_check(ok BOOLEAN, sqlstate TEXT, message TEXT) RETURNS BOOLEAN
LANGUAGE plpgsql AS $check$
BEGIN
    IF ok IS NOT TRUE THEN
        RAISE EXCEPTION USING ERRCODE = sqlstate, MESSAGE = message;
    END IF;
    RETURN ok;
END
$check$;
"#,
    },
];

/// The newest schema version this build knows.
pub(crate) fn latest_version() -> i32 {
    MIGRATIONS.last().map_or(0, |migration| migration.version)
}

fn startup(what: &str, error: tokio_postgres::Error) -> StoreError {
    StoreError::startup(format!("{what}: {error}")).with_source(error)
}

/// Applies every migration the database lacks, in one transaction holding the advisory lock.
/// Returns the versions it applied (empty when the schema was already current).
pub(crate) async fn migrate(client: &mut Client) -> Result<Vec<i32>, StoreError> {
    let transaction = client.transaction().await.map_err(|error| startup("cannot begin the migration", error))?;
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(|error| startup("cannot take the migration lock", error))?;
    transaction
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version INTEGER PRIMARY KEY,
                applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
            )",
        )
        .await
        .map_err(|error| startup("cannot create schema_migrations", error))?;
    let current: i32 = transaction
        .query_one("SELECT COALESCE(MAX(version), 0) FROM schema_migrations", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|error| startup("cannot read schema_migrations", error))?;
    if current > latest_version() {
        return Err(StoreError::startup(format!(
            "the database schema is at version {current}, newer than this build's {}; upgrade creditgraph",
            latest_version()
        )));
    }
    let mut applied = Vec::new();
    for migration in MIGRATIONS.iter().filter(|migration| migration.version > current) {
        transaction
            .batch_execute(migration.sql)
            .await
            .map_err(|error| startup(&format!("migration {} failed", migration.version), error))?;
        transaction
            .execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[&migration.version])
            .await
            .map_err(|error| startup(&format!("cannot record migration {}", migration.version), error))?;
        applied.push(migration.version);
    }
    transaction.commit().await.map_err(|error| startup("cannot commit the migration", error))?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::MIGRATIONS;

    #[test]
    fn versions_are_dense_from_one() {
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(usize::try_from(migration.version).ok(), Some(index + 1));
        }
    }
}
