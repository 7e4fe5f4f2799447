-- Issue 15: recurring allowances. A period's credits are a grant of kind 'allowance' (reference
-- `<allowance_id>:<period start>`, unique per account and kind like every grant reference).
-- SQLite cannot change a CHECK constraint in place, so the grants table is rebuilt with the new
-- kind allowed; its rows, columns (in their order) and indexes stay as they were.
CREATE TABLE grants_rebuilt (
    grant_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('grant', 'refund', 'allowance')),
    amount INTEGER NOT NULL CHECK (amount >= 0),
    free INTEGER NOT NULL CHECK (free >= 0 AND free <= amount),
    priority INTEGER NOT NULL,
    expires_at INTEGER,
    created_at INTEGER NOT NULL,
    reference TEXT,
    metadata TEXT NOT NULL,
    live INTEGER NOT NULL CHECK (live IN (0, 1)),
    pinned INTEGER NOT NULL DEFAULT 0 CHECK (pinned >= 0),
    UNIQUE (account_id, kind, reference)
);
INSERT INTO grants_rebuilt (grant_id, account_id, kind, amount, free, priority, expires_at, created_at, reference,
                            metadata, live, pinned)
    SELECT grant_id, account_id, kind, amount, free, priority, expires_at, created_at, reference, metadata, live, pinned
    FROM grants ORDER BY rowid;
DROP TABLE grants;
ALTER TABLE grants_rebuilt RENAME TO grants;
CREATE INDEX grants_live_by_account ON grants (account_id) WHERE live = 1;
CREATE INDEX grants_live_by_expiry ON grants (expires_at) WHERE live = 1 AND expires_at IS NOT NULL;

-- One row per allowance: `data` is the whole record (store::codec::encode_allowance); the other
-- columns are copies of the fields queries filter on, always written from the same record.
CREATE TABLE allowances (
    allowance_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    -- NULL: never ends. An allowance is loaded with its account until it has ended.
    ends_at INTEGER,
    -- The sweeper's question: which accounts have an allowance period to grant?
    next_due_at INTEGER,
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
-- (store::events). One writer commits in seq order, so readers page by seq. AUTOINCREMENT: a seq
-- is never used twice, even after retention emptied the table. No index on time: retention
-- deletes the oldest rows by seq.
CREATE TABLE outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    type TEXT NOT NULL,
    account_id TEXT NOT NULL,
    data TEXT NOT NULL,
    at INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);

-- Below this many available credits (micro-credits) the account is low: `balance.low` events.
ALTER TABLE accounts ADD COLUMN low_balance_threshold INTEGER CHECK (low_balance_threshold >= 0);
