-- Where a prediction's raw input was captured for retraining: its object key in the capture
-- store (`<model>/<sha256>`), or '' when it was not.
ALTER TABLE predictions ADD COLUMN capture text NOT NULL DEFAULT '';
