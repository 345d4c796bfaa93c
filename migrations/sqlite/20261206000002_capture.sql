-- Where a prediction's raw input was captured (see the Postgres migration).
ALTER TABLE predictions ADD COLUMN capture TEXT NOT NULL DEFAULT '';
