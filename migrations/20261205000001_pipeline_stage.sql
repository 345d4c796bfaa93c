-- The step of a multi-model pipeline a record is ("vad", "asr", "search" for voice search);
-- a query's stages share its trace id.
ALTER TABLE predictions ADD COLUMN stage text NOT NULL DEFAULT '';
