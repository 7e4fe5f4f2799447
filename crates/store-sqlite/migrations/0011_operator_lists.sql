-- Issue 14: the operator's lists. An account's runs and jobs, newest first
-- (RunStore::account_runs, JobStore::account_jobs).
CREATE INDEX runs_by_account ON runs (account_id, created_at, run_id);
CREATE INDEX jobs_by_account ON jobs (account_id, created_at, job_id);
