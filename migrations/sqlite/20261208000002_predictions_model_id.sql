-- A model's rows in id order, for keyset pages (`ORDER BY prediction_id LIMIT n` with a model
-- named): without it SQLite reads the model's whole window through predictions_model_time and
-- sorts it for every page, so a dataset export's time grew with the square of its rows.
CREATE INDEX predictions_model_id ON predictions (model_name, prediction_id);
