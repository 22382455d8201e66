//! The results a node's own store (SQLite) missed: those settled before it joined.
//!
//! With the embedded store every node writes each settled PK from its own replica, and a
//! settled PK leaves its arena's outbox once every voter has stored it. A node that
//! joins a running cluster (or comes back on an empty data directory) gets the arenas'
//! state from a snapshot, without the PKs settled and confirmed before it: its history
//! API would answer less than its peers'. So such a node, once it is a voter of every
//! arena (from then on no settled PK leaves an outbox without it) and a little after
//! (for confirmations already on their way), copies every settled PK's rows from a
//! member whose store is complete, page by page over the cluster's network, keeping the
//! PKs it already holds settled; then it marks its own store complete and answers
//! others' copies in turn.
//!
//! A founding node's store is complete from the start (it applies every entry), and so
//! is that of a node running alone. The mark is `pkd_store_marks.complete`. Nodes whose
//! stores predate the mark (an upgraded cluster) find no complete member: once each has
//! copied every other voter's whole store, the union, it marks its own.

use std::time::Duration;

use pkd_raft::TimestampMs;

use crate::inquiry::{Answer, Question};
use crate::replication::consensus;
use crate::replication::node::Node;
use crate::retry::Backoff;
use crate::sinks::{ResultsStore, SinkMetrics};

/// The name of the mark that says a store holds every settled PK of the cluster.
pub const COMPLETE: &str = "complete";
/// How many PKs one page holds at most.
pub const PAGE_PKS: u32 = 50;
/// How long the copy waits, once this node is a voter of every arena, for confirmations
/// proposed before by nodes that did not count it yet.
const SETTLE: Duration = Duration::from_secs(3);
/// How long a peer has to answer one page.
const PAGE_WAIT: Duration = Duration::from_secs(10);

/// Makes `store` complete: marks it at once on a founding node or one running alone;
/// otherwise copies what it lacks from a member, retrying until one serves the whole
/// copy (or the node stops).
pub async fn complete(node: Node, store: ResultsStore, metrics: std::sync::Arc<SinkMetrics>) {
    match store.mark(COMPLETE).await {
        Ok(Some(_)) => return,
        Ok(None) => {}
        Err(error) => {
            tracing::warn!(%error, "cannot read the results store's marks; no copy of earlier results");
            return;
        }
    }
    let Some(network) = node.network().cloned() else {
        mark(&store, "this node runs alone").await;
        return;
    };
    if node.founding() {
        mark(&store, "a founding member").await;
        return;
    }
    wait_for_votes(&node).await;
    tokio::time::sleep(SETTLE).await;
    let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
    loop {
        let voters = node.group(node.topology().lobby()).map(|lobby| lobby.metrics().read(consensus::voters));
        let peers: Vec<u64> = voters.unwrap_or_default().into_iter().filter(|&peer| peer != node.id()).collect();
        // Every peer's settled results are copied as they come (a copy keeps what this
        // store holds settled already): a complete member's store is enough. Failing
        // that, if every other voter served its whole store and none was complete (a
        // cluster whose nodes all predate the mark), the union of theirs is as complete
        // as the cluster's results are.
        let (mut incomplete, mut copied_from_incomplete, mut failed) = (Vec::new(), 0, false);
        for &peer in &peers {
            match copy_from(&network, &store, peer).await {
                Ok((copied, true)) => {
                    tracing::info!(peer, copied, "results settled before this node joined copied from a member");
                    mark(&store, &format!("copied from node {peer}")).await;
                    return;
                }
                Ok((copied, false)) => {
                    incomplete.push(peer);
                    copied_from_incomplete += copied;
                }
                Err(error) => {
                    failed = true;
                    SinkMetrics::add(&metrics.results_errors, 1);
                    tracing::warn!(peer, %error, "copying earlier results from a member failed; trying another");
                }
            }
        }
        if !peers.is_empty() && !failed {
            tracing::info!(
                ?incomplete,
                copied = copied_from_incomplete,
                "no member's results store was complete: the union of theirs copied"
            );
            mark(&store, &format!("copied from nodes {incomplete:?}, none complete")).await;
            return;
        }
        tokio::time::sleep(backoff.next_wait()).await;
    }
}

/// Waits until this node is a voter of every arena.
async fn wait_for_votes(node: &Node) {
    loop {
        let voting = node.arenas().iter().all(|arena| {
            node.group(arena.group())
                .map(|group| group.metrics().read(consensus::voters).contains(&node.id()))
                .unwrap_or(false)
        });
        if voting {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Copies every settled PK of `peer`'s store into `store`: how many were written, and
/// whether `peer`'s store is complete.
async fn copy_from(
    network: &crate::replication::network::Network,
    store: &ResultsStore,
    peer: u64,
) -> Result<(usize, bool), String> {
    let (mut after, mut copied) = (0, 0);
    loop {
        let question = Question::SettledResults { after, limit: PAGE_PKS };
        let (complete, page) = match crate::inquiry::ask(network, peer, &question, PAGE_WAIT).await? {
            Answer::SettledResults { complete, page } => (complete, page),
            Answer::Refused(why) => return Err(format!("node {peer} refused: {why}")),
            other => return Err(format!("node {peer} answered {other:?}")),
        };
        copied += store.import_settled(&page).await.map_err(|error| error.to_string())?;
        match page.next {
            Some(next) if next > after => after = next,
            _ => return Ok((copied, complete)),
        }
    }
}

async fn mark(store: &ResultsStore, why: &str) {
    if let Err(error) = store.set_mark(COMPLETE, why, TimestampMs(crate::clock::now_ms())).await {
        tracing::warn!(%error, "cannot mark the results store complete");
    }
}
