//! The monitor's own Prometheus metrics.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use vigil_store::monitoring::{AlertRow, Delivery};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    state: String,
    severity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabels {
    table: String,
}

/// Counters and gauges of rollup upkeep, alarms and webhooks.
#[derive(Clone, Default)]
pub struct MonitorMetrics {
    pub rollup_records: Counter,
    /// How far rollups trail the prediction log: 0 when caught up.
    pub rollup_lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    alerts: Family<AlertLabels, Gauge>,
    webhooks: Family<OutcomeLabels, Counter>,
    /// 1 while this monitor holds the alerting lease (evaluates alarms and notifies).
    pub alerting_leader: Gauge,
    /// Completed alarm evaluation rounds (every rule, every model).
    pub alert_evaluations: Counter,
    /// Calls refused for their token, on both ports.
    pub auth: vigil_security::auth::AuthMetrics,
    retention: Family<TableLabels, Counter>,
}

impl MonitorMetrics {
    /// Registers every metric in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self { auth: vigil_security::auth::AuthMetrics::register(registry), ..Self::default() };
        registry.register(
            "vigil_monitor_rollup_records",
            "Predictions summarised into rollups",
            m.rollup_records.clone(),
        );
        registry.register(
            "vigil_monitor_rollup_lag_seconds",
            "Age of the predictions waiting to be summarised into rollups (0 when caught up)",
            m.rollup_lag_seconds.clone(),
        );
        registry.register("vigil_monitor_alerts", "Alarms by state and severity", m.alerts.clone());
        registry.register(
            "vigil_monitor_alerting_leader",
            "1 while this monitor evaluates alarms and sends notifications (one monitor per database does)",
            m.alerting_leader.clone(),
        );
        registry.register(
            "vigil_monitor_alert_evaluations",
            "Completed alarm evaluation rounds",
            m.alert_evaluations.clone(),
        );
        registry.register(
            "vigil_monitor_webhook_deliveries",
            "Webhook delivery attempts by outcome",
            m.webhooks.clone(),
        );
        registry.register(
            "vigil_monitor_retention_deleted",
            "Rows deleted by retention, by table",
            m.retention.clone(),
        );
        m
    }

    /// Sets the alarm gauges from the stored states.
    pub fn set_alert_states(&self, rows: &[AlertRow]) {
        self.alerts.clear();
        for r in rows {
            self.alerts.get_or_create(&AlertLabels { state: r.state.clone(), severity: r.severity.clone() }).inc();
        }
    }

    /// Counts one webhook delivery attempt by outcome: delivered, failed (retried), abandoned.
    /// Counts rows retention deleted from `table`.
    pub fn retention_deleted(&self, table: &str, rows: u64) {
        self.retention.get_or_create(&TableLabels { table: table.to_string() }).inc_by(rows);
    }

    pub fn webhook(&self, outcome: &Delivery) {
        let outcome = match outcome {
            Delivery::Delivered => "delivered",
            Delivery::Failed(_) => "failed",
            Delivery::Abandoned(_) => "abandoned",
        }
        .to_string();
        self.webhooks.get_or_create(&OutcomeLabels { outcome }).inc();
    }
}

/// A registry with the process metrics and the monitor's own.
pub fn registry() -> (Arc<Registry>, MonitorMetrics) {
    build_registry(None)
}

/// [`registry`] with the gRPC APIs' admission too (calls and bytes in flight).
pub fn registry_with(admission: &vigil_serving::admission::AdmissionLayer) -> (Arc<Registry>, MonitorMetrics) {
    build_registry(Some(admission))
}

fn build_registry(admission: Option<&vigil_serving::admission::AdmissionLayer>) -> (Arc<Registry>, MonitorMetrics) {
    let mut r = vigil_telemetry::registry();
    let m = MonitorMetrics::register(&mut r);
    if let Some(admission) = admission {
        vigil_serving::metrics::register_admission(&mut r, admission);
    }
    (Arc::new(r), m)
}
