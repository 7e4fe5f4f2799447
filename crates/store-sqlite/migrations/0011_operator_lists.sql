-- Issue 14: the operator's lists. An account's runs and jobs, newest first
-- (RunStore::account_runs, JobStore::account_jobs), and its grants by id.
CREATE INDEX runs_by_account ON runs (account_id, created_at, run_id);
CREATE INDEX jobs_by_account ON jobs (account_id, created_at, job_id);
CREATE INDEX grants_by_account ON grants (account_id, grant_id);
-- A grant an operator voided (ledger::Command::VoidGrant): when; NULL for every other grant.
ALTER TABLE grants ADD COLUMN voided_at INTEGER;
