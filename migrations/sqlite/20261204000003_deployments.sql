-- What each model serves (see the Postgres migration).
CREATE TABLE deployments (
    model_name        TEXT PRIMARY KEY,
    deployment_id     TEXT NOT NULL,
    primary_version   TEXT NOT NULL,
    candidate_version TEXT,
    mode              TEXT NOT NULL CHECK (mode IN ('single', 'shadow', 'canary')),
    share             REAL NOT NULL DEFAULT 0 CHECK (share >= 0 AND share <= 1),
    updated_by        TEXT NOT NULL,
    updated_at        TEXT NOT NULL
);
