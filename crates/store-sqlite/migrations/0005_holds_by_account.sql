-- Every hold of an account, whatever its state: `verify` reads them per account. Without it each
-- account's read was a scan of the whole holds table (quadratic over a large ledger: a million
-- accounts did not verify in hours). Pending holds keep their own partial index for the writer.
CREATE INDEX IF NOT EXISTS holds_by_account ON holds (account_id, created_at);
