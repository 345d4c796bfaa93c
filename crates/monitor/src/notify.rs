//! Webhook notifications of alarm transitions: JSON POSTs sent in order from the stored history,
//! retried with backoff until acknowledged (2xx), so a failing or hanging receiver delays
//! notifications and never blocks evaluation. A notification still refused after
//! `max_attempts` is given up (logged, counted, kept in the history with its error), so that
//! one the receiver will never take does not hold back the later ones.

use std::time::Duration;

use vigil_store::MonitorStore;
use vigil_store::monitoring::{AlertEvent, Delivery};

use crate::telemetry::MonitorMetrics;

/// The JSON body of one notification.
pub fn payload(e: &AlertEvent) -> serde_json::Value {
    serde_json::json!({
        "event_id": e.event_id,
        "alert": e.alert_key,
        "rule": e.rule,
        "model": e.model_name,
        "state": e.state,
        "severity": e.severity,
        "value": e.value,
        "threshold": e.threshold,
        "time": e.time.to_rfc3339(),
        "message": e.message,
    })
}

/// Delivery settings.
#[derive(Debug, Clone)]
pub struct Webhook {
    pub url: String,
    pub timeout: Duration,
    pub max_backoff: Duration,
    /// Attempts per notification before it is given up.
    pub max_attempts: u32,
}

/// Sends unsent notifications until `shutdown` fires, while `leading` (this monitor holds the
/// alerting lease: one notifier per database, so nothing is sent twice).
pub async fn run<S: MonitorStore>(
    store: S,
    hook: Webhook,
    metrics: MonitorMetrics,
    leading: tokio::sync::watch::Receiver<bool>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let client = match reqwest::Client::builder().timeout(hook.timeout).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook client; notifications are off");
            return;
        }
    };
    let mut backoff = Duration::from_millis(500);
    loop {
        let mut wait = Duration::from_millis(500);
        let events = if *leading.borrow() { store.unsent_alert_events(100).await } else { Ok(Vec::new()) };
        match events {
            Ok(events) => {
                for e in events {
                    let attempt = e.attempts + 1;
                    let outcome = match deliver(&client, &hook.url, &e).await {
                        Ok(()) => Delivery::Delivered,
                        Err(err) if attempt >= hook.max_attempts as i32 => {
                            tracing::error!(event = e.event_id, alert = %e.alert_key, attempt, error = %err,
                                "webhook refused this notification {attempt} times: giving it up (it stays in the alarm history)");
                            Delivery::Abandoned(format!("given up after {attempt} attempts: {err}"))
                        }
                        Err(err) => {
                            tracing::warn!(event = e.event_id, attempt, error = %err, "webhook delivery failed; will retry");
                            Delivery::Failed(err)
                        }
                    };
                    metrics.webhook(&outcome);
                    let failed = matches!(outcome, Delivery::Failed(_));
                    if let Err(db) = store.mark_alert_event(e.event_id, outcome).await {
                        tracing::warn!(error = %db, "cannot record a webhook delivery");
                    }
                    if failed {
                        // Keep order: retry this event before any later one.
                        wait = backoff;
                        backoff = (backoff * 2).min(hook.max_backoff);
                        break;
                    }
                    backoff = Duration::from_millis(500);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read alarm events to notify"),
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Posts one event; the error names the receiver by its scheme, host and port only: a webhook's
/// path and query often hold its secret (Slack, Teams, PagerDuty), and errors are logged and
/// kept in the alarm history.
async fn deliver(client: &reqwest::Client, url: &str, e: &AlertEvent) -> Result<(), String> {
    let receiver = reqwest::Url::parse(url).map_or_else(
        |_| "the webhook".to_string(),
        |u| {
            format!(
                "{}://{}{}",
                u.scheme(),
                u.host_str().unwrap_or(""),
                u.port().map(|p| format!(":{p}")).unwrap_or_default()
            )
        },
    );
    let response = client.post(url).json(&payload(e)).send().await.map_err(|err| {
        if err.is_timeout() {
            format!("no answer from {receiver} in time")
        } else {
            format!("{receiver}: {}", err.without_url())
        }
    })?;
    let status = response.status();
    if status.is_success() { Ok(()) } else { Err(format!("{receiver} answered {status}")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> AlertEvent {
        AlertEvent {
            event_id: 1,
            alert_key: "r/m".into(),
            rule: "r".into(),
            model_name: "m".into(),
            severity: "warning".into(),
            state: "firing".into(),
            value: Some(1.0),
            threshold: 0.5,
            time: chrono::Utc::now(),
            message: "r firing".into(),
            attempts: 0,
        }
    }

    #[tokio::test]
    async fn a_failed_delivery_names_the_receiver_without_its_secret_path() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/services/T0/B0/SECRET", axum::routing::post(|| async { axum::http::StatusCode::BAD_GATEWAY }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = reqwest::Client::new();
        let refused = deliver(&client, &format!("http://{addr}/services/T0/B0/SECRET?token=SECRET"), &event()).await;
        assert_eq!(refused, Err(format!("http://127.0.0.1:{} answered 502 Bad Gateway", addr.port())));
        // Nothing listening: the connection error, its URL left out.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let unreachable = deliver(&client, &format!("http://{closed}/services/SECRET"), &event()).await.unwrap_err();
        assert!(unreachable.starts_with(&format!("http://127.0.0.1:{}: ", closed.port())), "{unreachable}");
        assert!(!unreachable.contains("SECRET"), "{unreachable}");
    }
}
