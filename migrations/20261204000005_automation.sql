-- Degrees of automation, per model in its deployment: who decides each item. `human_only`: a
-- person, the model is not consulted; `shadow`: a person, the model predicts and is logged;
-- `assist`: a person, shown the model's answer; `partial`: the model where confident, a person
-- in the review band; `full`: the model. The band overrides the model card's thresholds.
ALTER TABLE deployments ADD COLUMN policy text NOT NULL DEFAULT 'partial'
    CHECK (policy IN ('human_only', 'shadow', 'assist', 'partial', 'full'));
ALTER TABLE deployments ADD COLUMN accept_below double precision
    CHECK (accept_below >= 0 AND accept_below <= 1);
ALTER TABLE deployments ADD COLUMN reject_at double precision
    CHECK (reject_at >= 0 AND reject_at <= 1);

-- The human review queue: items a person decides, each once. A reviewer claims the oldest
-- open item with a lease; the decision becomes a ground-truth label in the same transaction.
CREATE TABLE review_items (
    prediction_id  uuid PRIMARY KEY,
    created_at     timestamptz NOT NULL,
    model_name     text NOT NULL,
    model_version  text NOT NULL,
    variant        smallint NOT NULL,
    station_id     text NOT NULL DEFAULT '',
    part_id        text NOT NULL DEFAULT '',
    policy         text NOT NULL,
    reason         text NOT NULL DEFAULT '',
    suggestion     text,                 -- the model's label, when the reviewer may see it
    score          real,
    content_type   text NOT NULL DEFAULT '',
    input          bytea,
    claimed_by     text,
    claimed_until  timestamptz,
    decided_by     text,
    decision       text,
    decided_at     timestamptz
);
CREATE INDEX review_items_open ON review_items (created_at) WHERE decided_at IS NULL;
