-- Records a logger could not decode, with the reason, where no dead-letter topic exists (the
-- embedded default's in-process bus). The Kafka logger sends them to vigil.deadletter.v1.
CREATE TABLE dead_letters (
    id       uuid PRIMARY KEY,
    time     timestamptz NOT NULL,
    topic    text NOT NULL,
    source   text NOT NULL,
    reason   text NOT NULL,
    key      bytea,
    payload  bytea
);
CREATE INDEX dead_letters_time ON dead_letters (time);
