-- Run events in the store (any process replays and follows a run, also after a restart), cancel
-- requests, and a typed hold resolution. Times are microseconds since the Unix epoch (UTC).

-- Whether a run's hold still needs care, as a typed column. Existing rows are read once from the
-- engine's document: the last time its `"hold_resolved":false` text is looked for.
ALTER TABLE runs ADD COLUMN hold_resolution TEXT NOT NULL DEFAULT 'none'
    CHECK (hold_resolution IN ('none', 'pending', 'resolved'));
UPDATE runs SET hold_resolution = CASE
    WHEN hold_id IS NULL THEN 'none'
    WHEN instr(data, '"hold_resolved":false') > 0 THEN 'pending'
    ELSE 'resolved'
END;
-- Recovery reads exactly the terminal runs whose release failed, never a finished run.
CREATE INDEX runs_hold_pending ON runs (updated_at, run_id) WHERE hold_resolution = 'pending' AND state <> 'running';

-- A cancel asked for on any instance; the owner looks for its running runs' requests.
ALTER TABLE runs ADD COLUMN cancel_requested_at INTEGER;
CREATE INDEX runs_cancel_requested ON runs (instance_id, created_at)
    WHERE state = 'running' AND cancel_requested_at IS NOT NULL;

-- Each run's frames as the engine encoded them; bounded per run by the engine, which deletes the
-- frames it evicts. `at` serves the retention sweep.
CREATE TABLE run_events (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL CHECK (seq >= 0),
    kind TEXT NOT NULL,
    at INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE INDEX run_events_by_time ON run_events (at);
