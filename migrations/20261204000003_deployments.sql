-- What each model serves: a primary version and optionally a candidate, in a mode. Servers follow
-- this table; every change is also an audit event.
CREATE TABLE deployments (
    model_name        text PRIMARY KEY,
    deployment_id     text NOT NULL,          -- new with every change; recorded with each prediction
    primary_version   text NOT NULL,
    candidate_version text,
    mode              text NOT NULL CHECK (mode IN ('single', 'shadow', 'canary')),
    share             double precision NOT NULL DEFAULT 0 CHECK (share >= 0 AND share <= 1),
    updated_by        text NOT NULL,
    updated_at        timestamptz NOT NULL
);
