-- The prediction log: one row per PredictionRecord, idempotent on prediction_id.
CREATE TABLE predictions (
    prediction_id   uuid PRIMARY KEY,
    time            timestamptz NOT NULL,          -- response time at the server
    request_time    timestamptz,
    capture_time    timestamptz,
    trace_id        text NOT NULL DEFAULT '',
    server_id       text NOT NULL DEFAULT '',
    station_id      text NOT NULL DEFAULT '',
    device_id       text NOT NULL DEFAULT '',
    part_id         text NOT NULL DEFAULT '',
    request_id      text NOT NULL DEFAULT '',
    api             text NOT NULL DEFAULT '',
    model_name      text NOT NULL,
    model_version   text NOT NULL,
    variant         smallint NOT NULL DEFAULT 0,   -- vigil.v1.Variant
    deployment_id   text NOT NULL DEFAULT '',
    features        jsonb NOT NULL DEFAULT '{}',   -- {"brightness": 131.2, "x": null (missing)}
    output          jsonb NOT NULL DEFAULT '{}',   -- {"label": "defect", "scores": [0.97]}
    score           real,                          -- first score, for range queries
    output_null     boolean NOT NULL DEFAULT false,
    verdict         smallint NOT NULL DEFAULT 0,   -- vigil.v1.Verdict
    decision        smallint NOT NULL DEFAULT 0,   -- vigil.v1.Decision
    queue_time_us   bigint NOT NULL DEFAULT 0,
    compute_time_us bigint NOT NULL DEFAULT 0,
    status          smallint NOT NULL DEFAULT 0,   -- vigil.v1.RecordStatus
    error           text NOT NULL DEFAULT '',
    ingested_at     timestamptz NOT NULL DEFAULT now()
);

-- Time-range scans stay cheap at any size: BRIN on time (rows arrive in time order), btree for
-- the common filters.
CREATE INDEX predictions_time_brin ON predictions USING brin (time);
CREATE INDEX predictions_model_time ON predictions (model_name, model_version, time);
CREATE INDEX predictions_station_time ON predictions (station_id, time);

-- Ground truth that arrives later; the latest label per prediction wins.
CREATE TABLE labels (
    label_id      uuid PRIMARY KEY,
    prediction_id uuid NOT NULL,
    label         text NOT NULL,
    time          timestamptz NOT NULL,
    source        text NOT NULL DEFAULT '',
    ingested_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX labels_prediction ON labels (prediction_id, time DESC);

-- Behaviour after predictions (clicks, repeated searches, switches to typing).
CREATE TABLE feedback (
    event_id      uuid PRIMARY KEY,
    prediction_id uuid NOT NULL,
    kind          text NOT NULL,
    value         text NOT NULL DEFAULT '',
    session_id    text NOT NULL DEFAULT '',
    time          timestamptz NOT NULL,
    ingested_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX feedback_prediction ON feedback (prediction_id);

-- Analysts read, never write.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'vigil_analyst') THEN
        CREATE ROLE vigil_analyst NOLOGIN;
    END IF;
END
$$;
GRANT SELECT ON predictions, labels, feedback TO vigil_analyst;
