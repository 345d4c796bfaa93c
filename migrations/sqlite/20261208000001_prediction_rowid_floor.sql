-- SQLite gives a new row the largest rowid in the table plus one, so the rowids of deleted
-- newest rows would come back, at or below the rollup cursor, where rollups never read them.
-- Deleting predictions first raises this floor to the largest rowid; new rows are numbered
-- above it, so a rowid is never handed out twice.
CREATE TABLE prediction_rowid_floor (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    floor INTEGER NOT NULL
);
INSERT INTO prediction_rowid_floor (id, floor) SELECT 1, coalesce(max(rowid), 0) FROM predictions;
