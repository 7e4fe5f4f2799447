-- Issue 15: webhook endpoints and their deliveries (store::webhooks). An endpoint keeps the
-- outbox seq it has been fanned out to; a delivery is one (endpoint, event), claimed with a
-- lease by moving its next attempt to the lease's end.
CREATE TABLE webhook_endpoints (
    endpoint_id TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    event_types TEXT NOT NULL,
    description TEXT,
    secret TEXT NOT NULL,
    previous_secret TEXT,
    previous_secret_until INTEGER,
    created_at INTEGER NOT NULL,
    disabled_at INTEGER,
    disabled_reason TEXT CHECK (disabled_reason IN ('admin', 'failing')),
    failing_since INTEGER,
    position INTEGER NOT NULL CHECK (position >= 0),
    CHECK ((disabled_at IS NULL) = (disabled_reason IS NULL))
);

CREATE TABLE webhook_deliveries (
    endpoint_id TEXT NOT NULL REFERENCES webhook_endpoints (endpoint_id),
    event_seq INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts INTEGER NOT NULL CHECK (attempts >= 0),
    next_attempt_at INTEGER NOT NULL,
    lease_owner TEXT,
    last_error TEXT,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (endpoint_id, event_seq)
);
-- The claim's scan: pending deliveries by due time.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at, endpoint_id, event_seq)
    WHERE state = 'pending';
-- Retention forgets deliveries with their events.
CREATE INDEX webhook_deliveries_by_age ON webhook_deliveries (created_at);
