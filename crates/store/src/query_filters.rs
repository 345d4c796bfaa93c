//! The WHERE clauses of an analyst query, written once for every SQL dialect Vigil speaks.

/// Appends `AND ...` clauses for every set field of a [`crate::PredictionFilter`] to a
/// `QueryBuilder` whose `FROM` names the predictions table `p`; `$has_label` is the dialect's
/// condition for "this prediction has a label".
#[macro_export]
#[doc(hidden)]
macro_rules! push_filters {
    ($q:ident, $f:ident, $has_label:expr) => {{
        if let Some(v) = $f.since {
            $q.push(" AND p.time >= ").push_bind(v);
        }
        if let Some(v) = $f.until {
            $q.push(" AND p.time < ").push_bind(v);
        }
        if let Some(v) = &$f.model_name {
            $q.push(" AND p.model_name = ").push_bind(v.clone());
        }
        if let Some(v) = &$f.model_version {
            $q.push(" AND p.model_version = ").push_bind(v.clone());
        }
        if let Some(v) = $f.variant {
            $q.push(" AND p.variant = ").push_bind(v);
        }
        if let Some(v) = &$f.station_id {
            $q.push(" AND p.station_id = ").push_bind(v.clone());
        }
        if let Some(v) = $f.verdict {
            $q.push(" AND p.verdict = ").push_bind(v);
        }
        if let Some(v) = $f.decision {
            $q.push(" AND p.decision = ").push_bind(v);
        }
        if let Some(v) = $f.min_score {
            $q.push(" AND p.score >= ").push_bind(v);
        }
        if let Some(v) = $f.max_score {
            $q.push(" AND p.score <= ").push_bind(v);
        }
        match $f.has_label {
            Some(true) => {
                $q.push(" AND ").push($has_label);
            }
            Some(false) => {
                $q.push(" AND NOT (").push($has_label).push(")");
            }
            None => {}
        }
        if let Some(v) = $f.after {
            $q.push(" AND p.prediction_id > ").push_bind(v);
        }
    }};
}
