-- The model registry: every registered version of every model, its artifact digest, what it
-- was trained on, its evaluation metrics, and its stage. One production version per model.
CREATE TABLE model_versions (
    model_name       text NOT NULL,
    version          text NOT NULL,
    artifact_sha256  text NOT NULL,            -- hex sha256 of model.onnx
    artifact_uri     text NOT NULL,            -- where the artifact was registered from
    training_data    text NOT NULL DEFAULT '',
    metrics          jsonb NOT NULL DEFAULT '{}',
    stage            text NOT NULL DEFAULT 'candidate'
                     CHECK (stage IN ('candidate', 'staging', 'production', 'archived')),
    registered_by    text NOT NULL,
    registered_at    timestamptz NOT NULL,
    stage_changed_at timestamptz NOT NULL,
    PRIMARY KEY (model_name, version)
);
CREATE UNIQUE INDEX model_versions_one_production ON model_versions (model_name) WHERE stage = 'production';
