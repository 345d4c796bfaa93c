-- See the Postgres migration.
CREATE INDEX rollups_resolution_window ON rollups (resolution_s, window_start);
