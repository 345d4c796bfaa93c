-- Capture rates raised by alarm rules with the `capture` action while they fire: the servers
-- capture at least the highest rate of a model's rows.
CREATE TABLE capture_boosts (
    model_name text NOT NULL,
    rule       text NOT NULL,
    rate       double precision NOT NULL CHECK (rate > 0 AND rate <= 1),
    since      timestamptz NOT NULL,
    PRIMARY KEY (model_name, rule)
);
GRANT SELECT ON capture_boosts TO vigil_analyst;
