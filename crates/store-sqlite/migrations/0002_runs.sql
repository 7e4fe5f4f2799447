-- Threads, their runs (one per turn) and the runs' artifacts: the run engine's records, shared in
-- meaning with the PostgreSQL adapter. Times are microseconds since the Unix epoch (UTC).

CREATE TABLE threads (
    thread_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE runs (
    run_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    thread_id TEXT NOT NULL REFERENCES threads (thread_id),
    turn_index INTEGER NOT NULL CHECK (turn_index >= 0),
    state TEXT NOT NULL CHECK (state IN ('running', 'succeeded', 'failed', 'canceled', 'interrupted')),
    instance_id TEXT NOT NULL,
    hold_id TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    -- The engine's JSON document, stored as the exact text it wrote.
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
    bytes BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
