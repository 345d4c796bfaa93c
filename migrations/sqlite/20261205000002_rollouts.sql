-- Rollouts (see the Postgres migration).
CREATE TABLE rollouts (
    rollout_id        TEXT PRIMARY KEY,
    model_name        TEXT NOT NULL,
    primary_version   TEXT NOT NULL,
    candidate_version TEXT NOT NULL,
    plan              TEXT NOT NULL,
    step              INTEGER NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('running', 'paused', 'promoted', 'rolled_back', 'aborted')),
    step_started_at   TEXT NOT NULL,
    created_by        TEXT NOT NULL,
    updated_at        TEXT NOT NULL,
    history           TEXT NOT NULL DEFAULT '[]'
);
CREATE UNIQUE INDEX rollouts_one_active ON rollouts (model_name) WHERE state IN ('running', 'paused');
