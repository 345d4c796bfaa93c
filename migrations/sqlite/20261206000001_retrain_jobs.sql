-- Retraining jobs (see the Postgres migration).
CREATE TABLE retrain_jobs (
    job_id            TEXT PRIMARY KEY,
    model_name        TEXT NOT NULL,
    state             TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    trigger           TEXT NOT NULL,
    requested_by      TEXT NOT NULL,
    dataset           TEXT NOT NULL DEFAULT '',
    rollout           BOOLEAN NOT NULL,
    created_at        TEXT NOT NULL,
    started_at        TEXT,
    finished_at       TEXT,
    progress          REAL NOT NULL DEFAULT 0,
    step              TEXT NOT NULL DEFAULT '',
    log               TEXT NOT NULL DEFAULT '',
    cancel_requested  BOOLEAN NOT NULL DEFAULT 0,
    candidate_version TEXT,
    error             TEXT NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX retrain_jobs_one_active ON retrain_jobs (model_name) WHERE state IN ('queued', 'running');
CREATE INDEX retrain_jobs_by_model ON retrain_jobs (model_name, created_at);
