-- The model registry (see the Postgres migration of the same name).
CREATE TABLE model_versions (
    model_name       TEXT NOT NULL,
    version          TEXT NOT NULL,
    artifact_sha256  TEXT NOT NULL,
    artifact_uri     TEXT NOT NULL,
    training_data    TEXT NOT NULL DEFAULT '',
    metrics          TEXT NOT NULL DEFAULT '{}',
    stage            TEXT NOT NULL DEFAULT 'candidate'
                     CHECK (stage IN ('candidate', 'staging', 'production', 'archived')),
    registered_by    TEXT NOT NULL,
    registered_at    TEXT NOT NULL,
    stage_changed_at TEXT NOT NULL,
    PRIMARY KEY (model_name, version)
);
CREATE UNIQUE INDEX model_versions_one_production ON model_versions (model_name) WHERE stage = 'production';
