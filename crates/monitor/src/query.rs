//! `vigil.v1.PredictionLog/QueryPredictions`: filters, keyset pages and a hard page size.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use tonic::{Request, Response, Status};
use uuid::Uuid;
use vigil_proto::vigil::v1::prediction_log_server::PredictionLog;
use vigil_proto::vigil::v1::{LoggedPrediction, QueryPredictionsRequest, QueryPredictionsResponse};
use vigil_store::{MAX_QUERY_ROWS, PredictionFilter, PredictionStore, PredictionSummary};

/// Rows per page when the request says 0.
pub const DEFAULT_PAGE_SIZE: u32 = 100;

/// The query service over a store.
#[derive(Clone)]
pub struct PredictionLogService<S> {
    store: S,
}

impl<S: PredictionStore> PredictionLogService<S> {
    pub fn new(store: S) -> Self {
        Self { store }
    }
}

/// A request's timestamp field, checked (the error names the field).
pub(crate) fn time(t: &Option<prost_types::Timestamp>, field: &str) -> Result<Option<DateTime<Utc>>, Status> {
    t.as_ref()
        .map(|t| {
            DateTime::from_timestamp(t.seconds, t.nanos.clamp(0, 999_999_999) as u32)
                .ok_or_else(|| Status::invalid_argument(format!("{field} is out of range")))
        })
        .transpose()
}

/// Checks a request and turns it into a store filter; every error names the field.
pub fn filter(r: &QueryPredictionsRequest) -> Result<PredictionFilter, Status> {
    let limit = if r.page_size == 0 { DEFAULT_PAGE_SIZE } else { r.page_size };
    if limit > MAX_QUERY_ROWS {
        return Err(Status::invalid_argument(format!("page_size {limit} exceeds the limit {MAX_QUERY_ROWS}")));
    }
    if let (Some(lo), Some(hi)) = (r.min_score, r.max_score)
        && lo > hi
    {
        return Err(Status::invalid_argument(format!("min_score {lo} is above max_score {hi}")));
    }
    let after = if r.page_token.is_empty() {
        None
    } else {
        Some(
            Uuid::parse_str(&r.page_token)
                .map_err(|_| Status::invalid_argument("page_token is not one this service issued"))?,
        )
    };
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let enum_value = |v: i32| (v != 0).then_some(v as i16);
    Ok(PredictionFilter {
        since: time(&r.since, "since")?,
        until: time(&r.until, "until")?,
        model_name: non_empty(&r.model_name),
        model_version: non_empty(&r.model_version),
        variant: enum_value(r.variant),
        station_id: non_empty(&r.station_id),
        verdict: enum_value(r.verdict),
        decision: enum_value(r.decision),
        min_score: r.min_score,
        max_score: r.max_score,
        has_label: r.has_label,
        after,
        limit,
    })
}

fn logged(row: PredictionSummary) -> LoggedPrediction {
    let features: HashMap<String, f64> = row
        .features
        .as_object()
        .map(|o| o.iter().filter_map(|(k, v)| v.as_f64().map(|v| (k.clone(), v))).collect())
        .unwrap_or_default();
    LoggedPrediction {
        prediction_id: row.prediction_id.to_string(),
        time: Some(crate::api::timestamp(row.time)),
        station_id: row.station_id,
        model_name: row.model_name,
        model_version: row.model_version,
        score: row.score,
        verdict: row.verdict as i32,
        decision: row.decision as i32,
        status: row.status as i32,
        features,
        label: row.label.unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl<S: PredictionStore> PredictionLog for PredictionLogService<S> {
    async fn query_predictions(
        &self,
        request: Request<QueryPredictionsRequest>,
    ) -> Result<Response<QueryPredictionsResponse>, Status> {
        let filter = filter(request.get_ref())?;
        let rows = self.store.query_predictions(&filter).await.map_err(|e| {
            tracing::error!(error = %e, "prediction query failed");
            Status::unavailable(format!("the prediction log cannot be read now: {e}"))
        })?;
        let next_page_token = match rows.last() {
            Some(last) if rows.len() as u32 == filter.limit => last.prediction_id.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(QueryPredictionsResponse {
            predictions: rows.into_iter().map(logged).collect(),
            next_page_token,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_requests_name_the_field() {
        let r = QueryPredictionsRequest { page_size: 20_000, ..Default::default() };
        assert!(filter(&r).unwrap_err().message().contains("page_size 20000 exceeds the limit 10000"));
        let r = QueryPredictionsRequest { min_score: Some(0.9), max_score: Some(0.1), ..Default::default() };
        assert!(filter(&r).unwrap_err().message().contains("min_score"));
        let r = QueryPredictionsRequest { page_token: "x".into(), ..Default::default() };
        assert!(filter(&r).unwrap_err().message().contains("page_token"));
        let f = filter(&QueryPredictionsRequest::default()).unwrap();
        assert_eq!((f.limit, f.verdict, f.station_id), (DEFAULT_PAGE_SIZE, None, None));
    }
}
