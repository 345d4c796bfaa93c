-- Retraining jobs: run by the monitor holding the alerting lease, at most one active (queued or
-- running) per model. A job running when its monitor stopped is marked failed at the next start.
CREATE TABLE retrain_jobs (
    job_id            text PRIMARY KEY,        -- UUIDv7: sorts by creation
    model_name        text NOT NULL,
    state             text NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    trigger           text NOT NULL,           -- 'manual', or 'alarm <rule>'
    requested_by      text NOT NULL,
    dataset           text NOT NULL DEFAULT '', -- a dataset directory; '' exports one when the job runs
    rollout           boolean NOT NULL,        -- roll the candidate out when the job succeeds
    created_at        timestamptz NOT NULL,
    started_at        timestamptz,
    finished_at       timestamptz,
    progress          double precision NOT NULL DEFAULT 0, -- 0..1
    step              text NOT NULL DEFAULT '', -- what the job is doing
    log               text NOT NULL DEFAULT '', -- the recipe's output (its tail)
    cancel_requested  boolean NOT NULL DEFAULT false,
    candidate_version text,                    -- the version registered
    error             text NOT NULL DEFAULT ''
);
CREATE UNIQUE INDEX retrain_jobs_one_active ON retrain_jobs (model_name) WHERE state IN ('queued', 'running');
CREATE INDEX retrain_jobs_by_model ON retrain_jobs (model_name, created_at);
GRANT SELECT ON retrain_jobs TO vigil_analyst;
