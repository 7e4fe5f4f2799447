-- Async video jobs (store::JobStore), shared in meaning with the PostgreSQL adapter. `data` is the
-- whole record as store::codec::encode_job writes it; the other columns copy the fields that
-- queries filter on, always written from the same record in the same statement. Times are
-- microseconds since the Unix epoch (UTC).

CREATE TABLE jobs (
    job_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    retry_source_job_id TEXT,
    lease_expires_at INTEGER,
    heartbeat_at INTEGER,
    run_after INTEGER NOT NULL,
    attempts INTEGER NOT NULL CHECK (attempts >= 0),
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    version INTEGER NOT NULL CHECK (version >= 1),
    data TEXT NOT NULL
);
-- A job is retried at most once: this index, not a check in code, is what enforces it.
CREATE UNIQUE INDEX jobs_one_retry_per_source ON jobs (retry_source_job_id) WHERE retry_source_job_id IS NOT NULL;
-- Claims: due queued jobs, and running jobs whose lease expired.
CREATE INDEX jobs_claim_queued ON jobs (status, run_after);
CREATE INDEX jobs_claim_lease ON jobs (status, lease_expires_at);
-- A thread's jobs, oldest first.
CREATE INDEX jobs_by_thread ON jobs (thread_id, created_at);
