-- Issue 16: a command's cost no longer grows with the account's pending holds. The account keeps
-- `held` (the remaining part of all its pending holds) and each grant keeps `pinned` (what
-- pending holds reserved from it), so a command loads only the pending holds due to expire (by
-- the index below) and the hold it names. Both are backfilled from the holds as they stand.
ALTER TABLE accounts ADD COLUMN held INTEGER NOT NULL DEFAULT 0 CHECK (held >= 0);
ALTER TABLE grants ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0 CHECK (pinned >= 0);

UPDATE accounts SET held = (
    SELECT COALESCE(SUM(remaining), 0) FROM holds
    WHERE holds.account_id = accounts.account_id AND holds.state = 'pending'
);

-- allocations is a JSON array of [grant_id, micro-credits] pairs.
UPDATE grants SET pinned = (
    SELECT COALESCE(SUM(json_extract(allocation.value, '$[1]')), 0)
    FROM holds, json_each(holds.allocations) AS allocation
    WHERE holds.account_id = grants.account_id AND holds.state = 'pending'
      AND json_extract(allocation.value, '$[0]') = grants.grant_id
)
WHERE live = 1;

-- The due pending holds of one account, found without reading the others.
DROP INDEX holds_pending_by_account;
CREATE INDEX holds_pending_by_account_expiry ON holds (account_id, expires_at) WHERE state = 'pending';
-- The paged holds read: one account's holds in one state, in hold-id order.
CREATE INDEX holds_by_account_state ON holds (account_id, state, hold_id);
