-- Rollouts: a candidate stepped through a plan of canary shares by the monitor's controller.
-- At most one active (running or paused) rollout per model.
CREATE TABLE rollouts (
    rollout_id        text PRIMARY KEY,       -- UUIDv7: sorts by creation
    model_name        text NOT NULL,
    primary_version   text NOT NULL,          -- rolled back to
    candidate_version text NOT NULL,
    plan              text NOT NULL,          -- JSON array of {share, min_duration_s, min_requests}
    step              integer NOT NULL,
    state             text NOT NULL CHECK (state IN ('running', 'paused', 'promoted', 'rolled_back', 'aborted')),
    step_started_at   timestamptz NOT NULL,
    created_by        text NOT NULL,
    updated_at        timestamptz NOT NULL,
    history           text NOT NULL DEFAULT '[]' -- JSON array of analyses and decisions
);
CREATE UNIQUE INDEX rollouts_one_active ON rollouts (model_name) WHERE state IN ('running', 'paused');
GRANT SELECT ON rollouts TO vigil_analyst;
