-- Who changed what in the registry and the deployments, when, from what, to what, and why.
CREATE TABLE audit_events (
    id          uuid PRIMARY KEY,           -- UUIDv7: id order is time order
    time        timestamptz NOT NULL,
    actor       text NOT NULL,
    action      text NOT NULL,              -- register, promote, archive, ...
    subject     text NOT NULL,              -- <model>/<version>
    from_state  text NOT NULL DEFAULT '',
    to_state    text NOT NULL DEFAULT '',
    reason      text NOT NULL DEFAULT ''
);
CREATE INDEX audit_events_time ON audit_events (time);
