-- A request's records share its trace id: the primary's answer and each shadow's. Agreement
-- between them joins on it.
CREATE INDEX predictions_trace ON predictions (trace_id) WHERE trace_id <> '';
