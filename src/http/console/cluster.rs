//! The whole cluster from any node: each node reports on itself, and the node an operator
//! asks gathers the reports of every member over the cluster's authenticated network.
//!
//! The questions one node puts to another are `crate::inquiry`'s. A node that does not
//! answer within [`PEER_WAIT`] is marked unreachable, with the reason.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use pkd_cluster::api::{ClusterNode, ClusterStatus, GatewayFigures, NodeId, NodeReport, SinkFigures};
use tokio_util::sync::CancellationToken;

use crate::gateway::Gateway;
use crate::inquiry::{Answer, Question};
use crate::sinks::{ResultsSlot, SinkMetrics};

/// How long the asking node waits for each peer's answer.
pub const PEER_WAIT: Duration = Duration::from_secs(2);

/// This node's account of itself.
pub fn report(gateway: &Gateway, sinks: &SinkMetrics) -> NodeReport {
    let node = gateway.node();
    let totals = crate::telemetry::event_totals();
    let counters = sinks.snapshot();
    let pks_running: usize = node.arenas().iter().map(|arena| arena.read(|arena| arena.running().count())).sum();
    let me = std::process::id();
    NodeReport {
        status: node.status(),
        at_ms: crate::clock::now_ms(),
        draining: gateway.is_draining(),
        pks_running: pks_running as u64,
        matching: node.lobby().read(|lobby| lobby.waiting_anchors().count()) as u64,
        gateway: GatewayFigures {
            connections: gateway.hub().session_count() as u64,
            pushes: totals.pushes,
            slow_drops: totals.slow_drops,
            gifts: totals.gifts_counted,
            commands: totals.commands,
            refused: totals.connections_refused,
        },
        sinks: SinkFigures {
            results_written: counters.results_written,
            results_repaired: counters.results_repaired,
            results_errors: counters.results_errors,
            results_lag_ms: counters.result_lag_last_ms,
            results_lag_max_ms: counters.result_lag_max_ms,
            cache_changes: counters.cache_changes,
            cache_rebuilds: counters.cache_rebuilds,
            cache_errors: counters.cache_errors,
        },
        cpu_seconds: crate::procfs::cpu_seconds(me).unwrap_or(0.0),
        memory_bytes: crate::procfs::resident_bytes(me).map_or(0, |(resident, _)| resident),
    }
}

/// Makes this node answer its peers' questions: its report, a drain (`drain` is the
/// token `POST /admin/drain` cancels), and pages of its settled results (from `results`,
/// once connected). Does nothing on a node without a cluster.
pub fn answer_peers(gateway: Arc<Gateway>, sinks: Arc<SinkMetrics>, results: ResultsSlot, drain: CancellationToken) {
    let Some(network) = gateway.node().network().cloned() else { return };
    network.set_inquiry_handler(Arc::new(move |question: Vec<u8>| {
        let (gateway, sinks, results, drain) = (gateway.clone(), sinks.clone(), results.clone(), drain.clone());
        Box::pin(async move {
            let answer = match serde_json::from_slice::<Question>(&question) {
                Ok(Question::Report) => Answer::Report(Box::new(report(&gateway, &sinks))),
                Ok(Question::Drain) => {
                    tracing::info!("drain asked by a peer (an operator's request through its admin API)");
                    drain.cancel();
                    Answer::Draining
                }
                Ok(Question::SettledResults { after, limit }) => settled_results(&results, after, limit).await,
                Err(error) => Answer::Unknown(error.to_string()),
            };
            serde_json::to_vec(&answer).unwrap_or_default()
        })
    }));
}

/// A page of this node's settled results, for a peer that lacks them.
async fn settled_results(results: &ResultsSlot, after: u64, limit: u32) -> Answer {
    let Some(store) = results.get() else { return Answer::Refused("no results store connected yet".to_owned()) };
    let complete = match store.mark(crate::duties::backfill::COMPLETE).await {
        Ok(mark) => mark.is_some(),
        Err(error) => return Answer::Refused(error.to_string()),
    };
    match store.export_settled(after, limit.min(crate::duties::backfill::PAGE_PKS)).await {
        Ok(page) => Answer::SettledResults { complete, page },
        Err(error) => Answer::Refused(error.to_string()),
    }
}

/// Asks `peer` a question over the cluster's network.
async fn ask(gateway: &Gateway, peer: NodeId, question: &Question) -> Result<Answer, String> {
    let network = gateway.node().network().ok_or_else(|| "this node runs alone".to_owned())?;
    crate::inquiry::ask(network, peer, question, PEER_WAIT).await
}

/// Every member's report: this node's own, and each peer's as it answers within
/// [`PEER_WAIT`] (asked all at once).
pub async fn gather(gateway: &Gateway, sinks: &SinkMetrics) -> ClusterStatus {
    let mine = report(gateway, sinks);
    let me = mine.status.node;
    let mut members: BTreeSet<NodeId> = mine.status.connected.iter().copied().collect();
    for group in &mine.status.groups {
        members.extend(group.voters.iter().chain(&group.learners));
    }
    members.remove(&me);
    let asked = members.into_iter().map(|peer| async move {
        match ask(gateway, peer, &Question::Report).await {
            Ok(Answer::Report(report)) => {
                ClusterNode { node: peer, reachable: true, error: None, report: Some(*report) }
            }
            Ok(other) => {
                let error = Some(format!("unexpected answer {other:?}"));
                ClusterNode { node: peer, reachable: false, error, report: None }
            }
            Err(error) => ClusterNode { node: peer, reachable: false, error: Some(error), report: None },
        }
    });
    let mut nodes = join_all(asked).await;
    nodes.push(ClusterNode { node: me, reachable: true, error: None, report: Some(mine) });
    nodes.sort_by_key(|node| node.node);
    ClusterStatus { asked: me, at_ms: crate::clock::now_ms(), nodes }
}

/// Asks node `peer` to drain and stop.
pub async fn drain_peer(gateway: &Gateway, peer: NodeId) -> Result<(), String> {
    match ask(gateway, peer, &Question::Drain).await? {
        Answer::Draining => Ok(()),
        other => Err(format!("node {peer} answered {other:?}")),
    }
}
