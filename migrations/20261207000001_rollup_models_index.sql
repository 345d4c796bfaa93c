-- Which models have rollups lately, read from the coarsest resolution's recent windows instead
-- of a scan of the whole table (every alarm round and dashboard load asks).
CREATE INDEX rollups_resolution_window ON rollups (resolution_s, window_start);
