-- Degrees of automation and the human review queue (see the Postgres migration).
ALTER TABLE deployments ADD COLUMN policy TEXT NOT NULL DEFAULT 'partial'
    CHECK (policy IN ('human_only', 'shadow', 'assist', 'partial', 'full'));
ALTER TABLE deployments ADD COLUMN accept_below REAL CHECK (accept_below >= 0 AND accept_below <= 1);
ALTER TABLE deployments ADD COLUMN reject_at REAL CHECK (reject_at >= 0 AND reject_at <= 1);

CREATE TABLE review_items (
    prediction_id  BLOB PRIMARY KEY,
    created_at     TEXT NOT NULL,
    model_name     TEXT NOT NULL,
    model_version  TEXT NOT NULL,
    variant        INTEGER NOT NULL,
    station_id     TEXT NOT NULL DEFAULT '',
    part_id        TEXT NOT NULL DEFAULT '',
    policy         TEXT NOT NULL,
    reason         TEXT NOT NULL DEFAULT '',
    suggestion     TEXT,
    score          REAL,
    content_type   TEXT NOT NULL DEFAULT '',
    input          BLOB,
    claimed_by     TEXT,
    claimed_until  TEXT,
    decided_by     TEXT,
    decision       TEXT,
    decided_at     TEXT
);
CREATE INDEX review_items_open ON review_items (created_at) WHERE decided_at IS NULL;
