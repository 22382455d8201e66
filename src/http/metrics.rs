//! `GET /metrics` (admin listener): the node's metrics in Prometheus' text format
//! (`crate::telemetry` names them all).

use std::sync::Arc;

use axum::extract::State;

use crate::gateway::Gateway;
use crate::sinks::SinkMetrics;

/// What `/metrics` reads.
#[derive(Clone)]
pub struct MetricsState {
    pub gateway: Arc<Gateway>,
    pub sinks: Arc<SinkMetrics>,
}

/// `GET /metrics`.
pub async fn render(State(state): State<MetricsState>) -> String {
    crate::telemetry::render(&state.gateway, &state.sinks.snapshot())
}
