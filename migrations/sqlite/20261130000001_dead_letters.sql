-- Records a logger could not decode, with the reason (the embedded default's dead letters).
CREATE TABLE dead_letters (
    id       BLOB PRIMARY KEY,
    time     TEXT NOT NULL,
    topic    TEXT NOT NULL,
    source   TEXT NOT NULL,
    reason   TEXT NOT NULL,
    key      BLOB,
    payload  BLOB
);
CREATE INDEX dead_letters_time ON dead_letters (time);
