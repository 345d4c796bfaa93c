-- Review panels: an item may need several people deciding it independently (e.g. three doctors
-- for a screening case). Each reviewer decides an item at most once; the item is decided, and
-- labelled, when the decisions required are in and one answer has a strict majority (a tie asks
-- one more reviewer). Claims are per reviewer: an item admits as many live claims as decisions
-- still missing.
ALTER TABLE review_items ADD COLUMN reviews_required smallint NOT NULL DEFAULT 1
    CHECK (reviews_required >= 1);

CREATE TABLE review_decisions (
    prediction_id  uuid NOT NULL REFERENCES review_items (prediction_id),
    reviewer       text NOT NULL,
    decision       text NOT NULL,
    decided_at     timestamptz NOT NULL,
    PRIMARY KEY (prediction_id, reviewer)
);
CREATE INDEX review_decisions_time ON review_decisions (decided_at);

CREATE TABLE review_claims (
    prediction_id  uuid NOT NULL REFERENCES review_items (prediction_id),
    reviewer       text NOT NULL,
    claimed_until  timestamptz NOT NULL,
    PRIMARY KEY (prediction_id, reviewer)
);

-- Claims and decisions made before panels existed, carried over.
INSERT INTO review_claims (prediction_id, reviewer, claimed_until)
    SELECT prediction_id, claimed_by, claimed_until FROM review_items
    WHERE claimed_by IS NOT NULL AND claimed_until IS NOT NULL AND decided_at IS NULL;
INSERT INTO review_decisions (prediction_id, reviewer, decision, decided_at)
    SELECT prediction_id, decided_by, decision, decided_at FROM review_items
    WHERE decided_at IS NOT NULL AND decided_by IS NOT NULL AND decision IS NOT NULL;
