-- The ledger's tables, shared in meaning with the PostgreSQL adapter.
-- Amounts are micro-credits, times are microseconds since the Unix epoch (UTC), both INTEGER.

CREATE TABLE accounts (
    account_id TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    spent INTEGER NOT NULL CHECK (spent >= 0),
    refunded INTEGER NOT NULL CHECK (refunded >= 0)
);

CREATE TABLE grants (
    grant_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('grant', 'refund')),
    amount INTEGER NOT NULL CHECK (amount >= 0),
    free INTEGER NOT NULL CHECK (free >= 0 AND free <= amount),
    priority INTEGER NOT NULL,
    expires_at INTEGER,
    created_at INTEGER NOT NULL,
    reference TEXT,
    metadata TEXT NOT NULL,
    live INTEGER NOT NULL CHECK (live IN (0, 1)),
    UNIQUE (account_id, kind, reference)
);
CREATE INDEX grants_live_by_account ON grants (account_id) WHERE live = 1;
-- The sweeper's question: which accounts have free credits that reached their expiry?
CREATE INDEX grants_live_by_expiry ON grants (expires_at) WHERE live = 1 AND expires_at IS NOT NULL;

CREATE TABLE holds (
    hold_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    amount INTEGER NOT NULL CHECK (amount >= 0),
    captured INTEGER NOT NULL CHECK (captured >= 0),
    remaining INTEGER NOT NULL CHECK (remaining >= 0 AND remaining <= amount),
    refunded INTEGER NOT NULL CHECK (refunded >= 0),
    state TEXT NOT NULL CHECK (state IN ('pending', 'captured', 'released', 'expired')),
    expires_at INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    reference TEXT,
    metadata TEXT NOT NULL,
    allocations TEXT NOT NULL
);
CREATE INDEX holds_pending_by_account ON holds (account_id) WHERE state = 'pending';
CREATE INDEX holds_pending_by_expiry ON holds (expires_at) WHERE state = 'pending';

-- Append-only: rows are inserted, never updated or deleted. seq is the rowid.
CREATE TABLE entries (
    seq INTEGER PRIMARY KEY,
    account_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    amount INTEGER NOT NULL CHECK (amount >= 0),
    hold_id TEXT,
    grant_id TEXT,
    reference TEXT,
    balance_after INTEGER NOT NULL CHECK (balance_after >= 0),
    held_after INTEGER NOT NULL CHECK (held_after >= 0),
    at INTEGER NOT NULL,
    idempotency_key TEXT
);
CREATE INDEX entries_by_account ON entries (account_id, seq);

CREATE TABLE idempotency (
    key TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    result TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX idempotency_by_age ON idempotency (created_at);
