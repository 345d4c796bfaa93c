-- Monitoring: rollups of the prediction log, and alarms with their history.

-- The id of the transaction that inserted each prediction: rollup upkeep reads rows whose
-- transaction is older than every running one, so a row is rolled up exactly once even when
-- loggers commit out of order.
ALTER TABLE predictions ADD COLUMN ingest_xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX predictions_ingest_xid ON predictions (ingest_xid);
CREATE INDEX labels_time ON labels (time);
CREATE INDEX feedback_time ON feedback (time);

-- One mergeable summary (vigil.v1.RollupWindow, protobuf) per model, version, variant and window.
CREATE TABLE rollups (
    model_name    text NOT NULL,
    model_version text NOT NULL,
    variant       smallint NOT NULL,
    resolution_s  integer NOT NULL,
    window_start  timestamptz NOT NULL,
    body          bytea NOT NULL,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model_name, resolution_s, window_start, model_version, variant)
);

-- How far upkeep has read the prediction log (a transaction id; rows below it are rolled up).
CREATE TABLE rollup_cursor (
    name   text PRIMARY KEY,
    cursor bigint NOT NULL
);

-- The current state of every alarm (rule x model).
CREATE TABLE alerts (
    alert_key   text PRIMARY KEY,
    rule        text NOT NULL,
    model_name  text NOT NULL,
    metric      text NOT NULL,
    severity    text NOT NULL,
    state       text NOT NULL,          -- inactive, pending, firing, resolved
    value       double precision,
    threshold   double precision NOT NULL,
    since       timestamptz NOT NULL,
    message     text NOT NULL DEFAULT '',
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Every transition, kept; notifications are sent from here until acknowledged.
CREATE TABLE alert_events (
    event_id    bigserial PRIMARY KEY,
    alert_key   text NOT NULL,
    rule        text NOT NULL,
    model_name  text NOT NULL,
    metric      text NOT NULL,
    severity    text NOT NULL,
    state       text NOT NULL,
    value       double precision,
    threshold   double precision NOT NULL,
    time        timestamptz NOT NULL,
    message     text NOT NULL DEFAULT '',
    notify      boolean NOT NULL,
    notified_at timestamptz,
    attempts    integer NOT NULL DEFAULT 0,
    last_error  text NOT NULL DEFAULT ''
);
CREATE INDEX alert_events_unsent ON alert_events (event_id) WHERE notify AND notified_at IS NULL;

GRANT SELECT ON rollups, alerts, alert_events TO vigil_analyst;
