-- Monitoring (embedded default): rollups and alarms, as in the Postgres schema. Rollup upkeep
-- reads predictions by rowid: SQLite commits one writer at a time, so rowids are in commit order.
CREATE INDEX labels_time ON labels (time);
CREATE INDEX feedback_time ON feedback (time);

CREATE TABLE rollups (
    model_name    TEXT NOT NULL,
    model_version TEXT NOT NULL,
    variant       INTEGER NOT NULL,
    resolution_s  INTEGER NOT NULL,
    window_start  TEXT NOT NULL,        -- RFC 3339, UTC
    body          BLOB NOT NULL,
    PRIMARY KEY (model_name, resolution_s, window_start, model_version, variant)
);

CREATE TABLE rollup_cursor (
    name   TEXT PRIMARY KEY,
    cursor INTEGER NOT NULL
);

CREATE TABLE alerts (
    alert_key   TEXT PRIMARY KEY,
    rule        TEXT NOT NULL,
    model_name  TEXT NOT NULL,
    metric      TEXT NOT NULL,
    severity    TEXT NOT NULL,
    state       TEXT NOT NULL,
    value       REAL,
    threshold   REAL NOT NULL,
    since       TEXT NOT NULL,
    message     TEXT NOT NULL DEFAULT ''
);

CREATE TABLE alert_events (
    event_id    INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_key   TEXT NOT NULL,
    rule        TEXT NOT NULL,
    model_name  TEXT NOT NULL,
    metric      TEXT NOT NULL,
    severity    TEXT NOT NULL,
    state       TEXT NOT NULL,
    value       REAL,
    threshold   REAL NOT NULL,
    time        TEXT NOT NULL,
    message     TEXT NOT NULL DEFAULT '',
    notify      INTEGER NOT NULL,
    notified_at TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT NOT NULL DEFAULT ''
);
