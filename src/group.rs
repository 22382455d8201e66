//! One raft group hosted by this node: its raft instance, its replica and its proposal
//! queue.
//!
//! Proposals go through a small queue task: it takes whatever proposals are waiting, puts
//! them in one raft entry (a [`Batch`]), writes it, and hands each proposer its own
//! response. While one entry is being committed (and fsynced) the next proposals gather, so
//! under load each fsync carries many commands.

use std::sync::{Arc, Mutex};

use pkd_raft::{Action, Command, Response, TimestampMs};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::consensus::{
    Batch, GroupId, Metrics, MetricsWatch, NodeId, Raft, ServerState, WriteError, WriteFailure, classify_write_error,
};
use crate::replica::ReplicaHandle;

/// At most this many commands in one raft entry.
pub const MAX_BATCH: usize = 256;

/// Proposals waiting for the queue task; a full queue makes proposers wait.
const QUEUE_CAPACITY: usize = 4_096;

/// Why a proposal did not get a response from the machine.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("no group {0} on this node")]
    UnknownGroup(GroupId),
    #[error("this node is not the leader of group {group} (leader: {leader:?})")]
    NotLeader { group: GroupId, leader: Option<NodeId> },
    #[error("forwarding to node {leader}, the leader of group {group}, failed: {message}")]
    Forward { group: GroupId, leader: NodeId, message: String },
    #[error("group {0} changed leader while the command was in flight: it may or may not have been applied")]
    OutcomeUnknown(GroupId),
    #[error("group {0} is shutting down")]
    Stopped(GroupId),
    #[error("raft failed in group {group}: {message}")]
    Raft { group: GroupId, message: String },
}

/// A command waiting for its entry.
struct Proposal {
    command: Command,
    reply: oneshot::Sender<Result<Response, ProposeError>>,
}

/// A raft group on this node.
pub struct Group {
    id: GroupId,
    node: NodeId,
    raft: Raft,
    replica: ReplicaHandle,
    queue: mpsc::Sender<Proposal>,
    /// The queue task, taken when the group shuts down.
    batcher: Mutex<Option<JoinHandle<()>>>,
}

impl Group {
    /// Wraps a running raft instance and starts its proposal queue task.
    pub fn new(id: GroupId, node: NodeId, raft: Raft, replica: ReplicaHandle) -> Group {
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let batcher = tokio::spawn(run_batcher(id, raft.clone(), receiver));
        Group { id, node, raft, replica, queue, batcher: Mutex::new(Some(batcher)) }
    }

    pub fn id(&self) -> GroupId {
        self.id
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn replica(&self) -> &ReplicaHandle {
        &self.replica
    }

    /// A watch on this group's raft metrics.
    pub fn metrics(&self) -> MetricsWatch {
        MetricsWatch::new(&self.raft)
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Whether this node leads the group right now.
    pub fn is_leader(&self) -> bool {
        self.metrics().read(|metrics| is_leader_in(metrics, self.node))
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<NodeId> {
        self.metrics().read(|metrics| metrics.current_leader)
    }

    /// Asks the group to hand leadership to `to` (only the leader acts on it). Returns at
    /// once; watch [`Group::leader`] for the change.
    pub async fn transfer_leadership(&self, to: NodeId) -> Result<(), ProposeError> {
        self.raft.trigger().transfer_leader(to).await.map_err(|_| ProposeError::Stopped(self.id))
    }

    /// Proposes `action` stamped with time `at`, and waits for the machine's response.
    pub async fn propose_at(&self, at: TimestampMs, action: Action) -> Result<Response, ProposeError> {
        let (reply, response) = oneshot::channel();
        let proposal = Proposal { command: Command { at, action }, reply };
        self.queue.send(proposal).await.map_err(|_| ProposeError::Stopped(self.id))?;
        response.await.map_err(|_| ProposeError::Stopped(self.id))?
    }

    /// Stops the queue task and raft. Proposals still queued are answered `Stopped`.
    pub async fn shutdown(&self) {
        let batcher = self.batcher.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if let Some(batcher) = batcher {
            batcher.abort();
            let _ = batcher.await;
        }
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(group = %self.id, %error, "raft did not shut down cleanly");
        }
    }
}

/// Whether the metrics say `node` is the leader.
pub fn is_leader_in(metrics: &Metrics, node: NodeId) -> bool {
    metrics.state == ServerState::Leader && metrics.current_leader == Some(node)
}

/// Raft entries a group has in flight at once. Each entry holds every proposal that was
/// waiting when it was cut, so under load entries fill up while earlier ones commit.
pub const MAX_IN_FLIGHT: usize = 8;

/// The queue task: cuts an entry from every proposal waiting (up to `MAX_BATCH`), and
/// keeps up to `MAX_IN_FLIGHT` entries committing at once (a pipeline, so throughput is
/// not one commit latency per entry).
async fn run_batcher(group: GroupId, raft: Raft, mut queue: mpsc::Receiver<Proposal>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut waiting = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut waiting, MAX_BATCH).await > 0 {
        let (commands, replies): (Vec<Command>, Vec<_>) =
            waiting.drain(..).map(|proposal| (proposal.command, proposal.reply)).unzip();
        if stopped.load(std::sync::atomic::Ordering::Acquire) {
            answer_all(replies, ProposeError::Stopped(group));
            queue.close();
            continue;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else { break };
        let raft = raft.clone();
        let stopped = stopped.clone();
        tokio::spawn(async move {
            write_batch(group, &raft, commands, replies, &stopped).await;
            drop(permit);
        });
    }
}

async fn write_batch(
    group: GroupId,
    raft: &Raft,
    commands: Vec<Command>,
    replies: Vec<oneshot::Sender<Result<Response, ProposeError>>>,
    stopped: &std::sync::atomic::AtomicBool,
) {
    let count = commands.len();
    match raft.client_write(Batch(commands)).await {
        Ok(written) if written.data.len() == count => {
            for (reply, response) in replies.into_iter().zip(written.data) {
                let _ = reply.send(Ok(response));
            }
        }
        Ok(written) => {
            tracing::error!(%group, sent = count, answered = written.data.len(), "a batch's responses do not match its commands");
            let error =
                ProposeError::Raft { group, message: "the replica answered a different number of commands".to_owned() };
            answer_all(replies, error);
        }
        Err(error) => {
            let failure = propose_error(group, &error);
            if matches!(failure, ProposeError::Raft { .. }) {
                tracing::warn!(%group, %error, "raft write failed");
            }
            if failure == ProposeError::Stopped(group) {
                // Raft has stopped: whatever is still queued is answered the same way.
                stopped.store(true, std::sync::atomic::Ordering::Release);
            }
            answer_all(replies, failure);
        }
    }
}

fn answer_all(replies: Vec<oneshot::Sender<Result<Response, ProposeError>>>, error: ProposeError) {
    for reply in replies {
        let _ = reply.send(Err(error.clone()));
    }
}

fn propose_error(group: GroupId, error: &WriteError) -> ProposeError {
    match classify_write_error(error) {
        WriteFailure::NotLeader(leader) => ProposeError::NotLeader { group, leader },
        WriteFailure::OutcomeUnknown => ProposeError::OutcomeUnknown(group),
        WriteFailure::Stopped => ProposeError::Stopped(group),
        WriteFailure::Other(message) => ProposeError::Raft { group, message },
    }
}
