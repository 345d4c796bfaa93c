-- The embedded default's prediction log (SQLite): the same rows as the Postgres schema.
CREATE TABLE predictions (
    prediction_id   BLOB PRIMARY KEY,      -- UUIDv7, 16 bytes: byte order is time order
    time            TEXT NOT NULL,         -- RFC 3339, UTC
    request_time    TEXT,
    capture_time    TEXT,
    trace_id        TEXT NOT NULL DEFAULT '',
    server_id       TEXT NOT NULL DEFAULT '',
    station_id      TEXT NOT NULL DEFAULT '',
    device_id       TEXT NOT NULL DEFAULT '',
    part_id         TEXT NOT NULL DEFAULT '',
    request_id      TEXT NOT NULL DEFAULT '',
    api             TEXT NOT NULL DEFAULT '',
    model_name      TEXT NOT NULL,
    model_version   TEXT NOT NULL,
    variant         INTEGER NOT NULL DEFAULT 0,
    deployment_id   TEXT NOT NULL DEFAULT '',
    features        TEXT NOT NULL DEFAULT '{}',
    output          TEXT NOT NULL DEFAULT '{}',
    score           REAL,
    output_null     INTEGER NOT NULL DEFAULT 0,
    verdict         INTEGER NOT NULL DEFAULT 0,
    decision        INTEGER NOT NULL DEFAULT 0,
    queue_time_us   INTEGER NOT NULL DEFAULT 0,
    compute_time_us INTEGER NOT NULL DEFAULT 0,
    status          INTEGER NOT NULL DEFAULT 0,
    error           TEXT NOT NULL DEFAULT ''
);
CREATE INDEX predictions_time ON predictions (time);
CREATE INDEX predictions_model_time ON predictions (model_name, model_version, time);
CREATE INDEX predictions_station_time ON predictions (station_id, time);

CREATE TABLE labels (
    label_id      BLOB PRIMARY KEY,
    prediction_id BLOB NOT NULL,
    label         TEXT NOT NULL,
    time          TEXT NOT NULL,
    source        TEXT NOT NULL DEFAULT ''
);
CREATE INDEX labels_prediction ON labels (prediction_id, time);
