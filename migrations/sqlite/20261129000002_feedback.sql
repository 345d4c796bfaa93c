-- Behaviour after predictions (clicks, repeated searches, switches to typing).
CREATE TABLE feedback (
    event_id      BLOB PRIMARY KEY,
    prediction_id BLOB NOT NULL,
    kind          TEXT NOT NULL,
    value         TEXT NOT NULL DEFAULT '',
    session_id    TEXT NOT NULL DEFAULT '',
    time          TEXT NOT NULL
);
CREATE INDEX feedback_prediction ON feedback (prediction_id);
