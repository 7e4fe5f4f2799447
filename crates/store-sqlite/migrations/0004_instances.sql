-- Instance leases: each server process renews its row while it runs; the runs of an instance
-- without a live lease are recovered (their holds released, the runs marked interrupted).
-- Times are microseconds since the Unix epoch (UTC).

CREATE TABLE instances (
    instance_id TEXT PRIMARY KEY,
    lease_until BIGINT NOT NULL,
    started_at BIGINT NOT NULL
);
CREATE INDEX instances_by_lease ON instances (lease_until);
