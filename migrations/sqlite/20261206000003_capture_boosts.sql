-- Capture rates raised by firing alarm rules (see the Postgres migration).
CREATE TABLE capture_boosts (
    model_name TEXT NOT NULL,
    rule       TEXT NOT NULL,
    rate       REAL NOT NULL CHECK (rate > 0 AND rate <= 1),
    since      TEXT NOT NULL,
    PRIMARY KEY (model_name, rule)
);
