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
