-- Review panels (see the Postgres migration).
ALTER TABLE review_items ADD COLUMN reviews_required INTEGER NOT NULL DEFAULT 1 CHECK (reviews_required >= 1);

CREATE TABLE review_decisions (
    prediction_id  BLOB NOT NULL REFERENCES review_items (prediction_id),
    reviewer       TEXT NOT NULL,
    decision       TEXT NOT NULL,
    decided_at     TEXT NOT NULL,
    PRIMARY KEY (prediction_id, reviewer)
);
CREATE INDEX review_decisions_time ON review_decisions (decided_at);

CREATE TABLE review_claims (
    prediction_id  BLOB NOT NULL REFERENCES review_items (prediction_id),
    reviewer       TEXT NOT NULL,
    claimed_until  TEXT NOT NULL,
    PRIMARY KEY (prediction_id, reviewer)
);

INSERT INTO review_claims (prediction_id, reviewer, claimed_until)
    SELECT prediction_id, claimed_by, claimed_until FROM review_items
    WHERE claimed_by IS NOT NULL AND claimed_until IS NOT NULL AND decided_at IS NULL;
INSERT INTO review_decisions (prediction_id, reviewer, decision, decided_at)
    SELECT prediction_id, decided_by, decision, decided_at FROM review_items
    WHERE decided_at IS NOT NULL AND decided_by IS NOT NULL AND decision IS NOT NULL;
