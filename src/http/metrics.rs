//! `GET /metrics`: the node's counters in Prometheus' text format.

use std::sync::Arc;

use axum::extract::State;

use crate::replication::node::Node;
use crate::sinks::SinkMetrics;

/// What `/metrics` reads.
#[derive(Clone)]
pub struct MetricsState {
    pub node: Node,
    pub sinks: Arc<SinkMetrics>,
}

/// `GET /metrics`.
pub async fn render(State(state): State<MetricsState>) -> String {
    let mut text = state.sinks.snapshot().to_prometheus();
    text.push_str(&storage_metrics(state.node.flush_totals()));
    text
}

/// The database's flush counters in Prometheus text format.
fn storage_metrics(totals: pkd_storage::FlushTotals) -> String {
    format!(
        "# HELP pkd_storage_flushes_total Disk flushes (fsyncs) of the node's database.\n\
         # TYPE pkd_storage_flushes_total counter\n\
         pkd_storage_flushes_total {}\n\
         # HELP pkd_storage_flush_seconds_total Time spent in those flushes.\n\
         # TYPE pkd_storage_flush_seconds_total counter\n\
         pkd_storage_flush_seconds_total {}\n",
        totals.count,
        totals.busy.as_secs_f64()
    )
}
