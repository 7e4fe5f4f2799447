-- Issue 13: the LLM gateway's per-account keys (store::api_keys), stored as the SHA-256 of
-- their text; a revoked key keeps its row.
CREATE TABLE api_keys (
    key_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    name TEXT,
    hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    daily_limit INTEGER CHECK (daily_limit >= 0),
    models TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX api_keys_by_account ON api_keys (account_id, created_at);

-- Every settled gateway call (store::api_keys::GatewayCall): the journal holds its money, this
-- what it was. Summed by account and time (usage), and by key and time (daily limits).
CREATE TABLE gateway_calls (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    hold_id TEXT NOT NULL,
    model TEXT NOT NULL,
    catalog_version TEXT NOT NULL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    cost INTEGER NOT NULL CHECK (cost >= 0),
    worst_case INTEGER NOT NULL CHECK (worst_case >= 0),
    settlement TEXT NOT NULL CHECK (settlement IN ('usage', 'worst_case', 'released')),
    upstream_status INTEGER NOT NULL,
    latency_ms INTEGER NOT NULL,
    at INTEGER NOT NULL
);
CREATE INDEX gateway_calls_by_account ON gateway_calls (account_id, at);
CREATE INDEX gateway_calls_by_key ON gateway_calls (key_id, at);
