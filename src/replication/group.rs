//! One raft group hosted by this node: its raft instance, its replica and its proposal
//! queue.
//!
//! Proposals go through a small queue task: it takes whatever proposals are waiting, puts
//! them in one raft entry (a [`Batch`]), writes it, and hands each proposer its own
//! response. While one entry is being committed (and flushed to disk) the next proposals
//! gather, so under load each flush carries many commands.
//!
//! On a node that does not lead the group, the queue task forwards what gathered to the
//! leader in one message, and the leader queues it as one run of proposals: a forwarded
//! gift costs a share of one round trip, not a round trip of its own.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use pkd_raft::{Action, Command, Response};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::consensus::{
    Batch, GroupId, Membership, MetricsWatch, NodeId, ServerState, WriteError, WriteFailure, classify_write_error,
};
use super::error::ProposeError;
use super::network::Network;
use super::replica::{Raft, TaggedEffect};
use crate::clock::wall_clock;

/// At most this many commands in one raft entry.
pub const MAX_BATCH: usize = 256;

/// Runs of proposals waiting for the queue task; a full queue makes proposers wait.
const QUEUE_CAPACITY: usize = 4_096;

/// Where a proposal may be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// At the group's leader, wherever it is: forwarded if this node does not lead.
    AnyLeader,
    /// Only here, only while this node leads (a timer of this leader, or a proposal another
    /// node forwarded, which is never forwarded twice).
    HereOnly,
}

/// An action waiting for its entry. It is stamped with the leader's clock when the entry is
/// cut, so that a forwarded proposal carries the time of the node that orders it.
struct Proposal {
    action: Action,
    route: Route,
    reply: oneshot::Sender<Result<Response, ProposeError>>,
}

/// A raft group on this node.
pub struct Group {
    id: GroupId,
    node: NodeId,
    raft: Raft,
    /// The replica's last applied index.
    applied: watch::Receiver<Option<u64>>,
    /// The group's own effects.
    effects: broadcast::Sender<TaggedEffect>,
    /// Runs of proposals: a run is cut into entries as a whole (unless it is larger than
    /// an entry), never mixed with proposals that came after it.
    queue: mpsc::Sender<Vec<Proposal>>,
    /// The queue task, taken when the group shuts down.
    batcher: Mutex<Option<JoinHandle<()>>>,
}

impl Group {
    /// Wraps a running raft instance and starts its proposal queue task. `applied` and
    /// `effects` come from the group's replica.
    pub fn new(
        id: GroupId,
        node: NodeId,
        raft: Raft,
        (applied, effects): (watch::Receiver<Option<u64>>, broadcast::Sender<TaggedEffect>),
        network: Option<Network>,
        in_flight: usize,
    ) -> Group {
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let writer = Writer { group: id, node, raft: raft.clone(), network };
        let batcher = tokio::spawn(run_batcher(writer, receiver, in_flight.max(1)));
        Group { id, node, raft, applied, effects, queue, batcher: Mutex::new(Some(batcher)) }
    }

    pub fn id(&self) -> GroupId {
        self.id
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Runs of proposals waiting in the queue on this node.
    pub fn queue_depth(&self) -> usize {
        QUEUE_CAPACITY - self.queue.capacity()
    }

    /// A watch on the replica's last applied index.
    pub fn applied(&self) -> watch::Receiver<Option<u64>> {
        self.applied.clone()
    }

    /// Every effect this group applies from now on.
    pub fn subscribe_effects(&self) -> broadcast::Receiver<TaggedEffect> {
        self.effects.subscribe()
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
        known_leader(&self.raft)
    }

    /// Asks the group to hand leadership to `to` (only the leader acts on it). Returns at
    /// once; watch [`Group::leader`] for the change.
    pub async fn transfer_leadership(&self, to: NodeId) -> Result<(), ProposeError> {
        self.raft.trigger().transfer_leader(to).await.map_err(|_| ProposeError::Stopped(self.id))
    }

    /// Proposes `action` and waits for the machine's response. The leader stamps it with
    /// its clock when it cuts the entry.
    pub async fn propose(&self, action: Action, route: Route) -> Result<Response, ProposeError> {
        let (reply, response) = oneshot::channel();
        self.queue.send(vec![Proposal { action, route, reply }]).await.map_err(|_| ProposeError::Stopped(self.id))?;
        response.await.map_err(|_| ProposeError::Stopped(self.id))?
    }

    /// Proposes `actions` as one run (they go into the same entry unless it is full), only
    /// if this node leads the group; one result per action, in order.
    pub async fn propose_here(&self, actions: Vec<Action>) -> Vec<Result<Response, ProposeError>> {
        let (run, responses): (Vec<Proposal>, Vec<_>) = actions
            .into_iter()
            .map(|action| {
                let (reply, response) = oneshot::channel();
                (Proposal { action, route: Route::HereOnly, reply }, response)
            })
            .unzip();
        // One message for the whole run, so that the queue task cuts it into as few
        // entries as it can.
        if self.queue.send(run).await.is_err() {
            return responses.iter().map(|_| Err(ProposeError::Stopped(self.id))).collect();
        }
        let mut results = Vec::with_capacity(responses.len());
        for response in responses {
            results.push(response.await.unwrap_or(Err(ProposeError::Stopped(self.id))));
        }
        results
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

/// The leader of `raft`'s group as this node knows it.
fn known_leader(raft: &Raft) -> Option<NodeId> {
    MetricsWatch::new(raft).read(|metrics| metrics.current_leader)
}

/// Whether the metrics say `node` is the leader.
pub fn is_leader_in(metrics: &impl Membership, node: NodeId) -> bool {
    metrics.server_state() == ServerState::Leader && metrics.known_leader() == Some(node)
}

/// Raft entries (or, on a node that does not lead the group, forwarded batches) a group
/// has in flight from one node at once, by default. Each holds every proposal that was
/// waiting when it was cut, so while some commit the next fills. Too few starve the
/// leader: a forwarding node sends nothing while its batch is out, and the leader's
/// entries stay small. Too many cut the load into small entries, and the CPU an entry
/// costs on every node (its disk flush above all) is what bounds throughput. Four measured
/// best on three nodes sharing two cores (README, "Replication").
pub const DEFAULT_IN_FLIGHT: usize = 4;

/// How many times the queue task lets other tasks run while it waits for the proposers of
/// its last entry to come back (see `run_batcher`).
const LINGER_YIELDS: usize = 4;

/// What the queue task needs to write or forward a batch.
#[derive(Clone)]
struct Writer {
    group: GroupId,
    node: NodeId,
    raft: Raft,
    network: Option<Network>,
}

/// The queue task: cuts a batch from every proposal waiting (up to `MAX_BATCH`), and keeps
/// up to `in_flight` batches committing (or forwarded) at once.
async fn run_batcher(writer: Writer, mut queue: mpsc::Receiver<Vec<Proposal>>, in_flight: usize) {
    let permits = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Proposals taken from the queue and not yet cut into a batch (the rest of a run that
    // did not fit the last entry).
    let mut waiting: VecDeque<Proposal> = VecDeque::new();
    let mut last_cut = 0;
    loop {
        // A slot first, then the batch: while every slot is taken, proposals gather in the
        // queue, and the entry cut when one frees up carries all of them.
        let Ok(permit) = permits.clone().acquire_owned().await else { break };
        if waiting.is_empty() {
            match queue.recv().await {
                Some(run) => waiting.extend(run),
                None => break,
            }
        }
        take_ready(&mut queue, &mut waiting);
        // The proposers answered by the last entry are usually about to propose again (a
        // busy gift service keeps its connections full): when only a few of them are back,
        // let the runtime run the others first, so that they share this entry rather than
        // each waiting a whole commit for the next one. A lone proposer never waits.
        for _ in 0..LINGER_YIELDS {
            if waiting.len() * 2 >= last_cut || waiting.len() >= MAX_BATCH {
                break;
            }
            tokio::task::yield_now().await;
            take_ready(&mut queue, &mut waiting);
        }
        let batch: Vec<Proposal> = waiting.drain(..waiting.len().min(MAX_BATCH)).collect();
        last_cut = batch.len();
        if stopped.load(std::sync::atomic::Ordering::Acquire) {
            answer_all(batch.into_iter().map(|proposal| proposal.reply), ProposeError::Stopped(writer.group));
            queue.close();
            continue;
        }
        let writer = writer.clone();
        let stopped = stopped.clone();
        tokio::spawn(async move {
            writer.route(batch, &stopped).await;
            drop(permit);
        });
    }
}

/// Moves the runs already in the queue to `waiting`, while it holds less than an entry.
fn take_ready(queue: &mut mpsc::Receiver<Vec<Proposal>>, waiting: &mut VecDeque<Proposal>) {
    while waiting.len() < MAX_BATCH {
        match queue.try_recv() {
            Ok(run) => waiting.extend(run),
            Err(_) => break,
        }
    }
}

impl Writer {
    /// Writes `batch` here if this node leads the group, forwards what may be forwarded to
    /// the leader otherwise.
    async fn route(&self, batch: Vec<Proposal>, stopped: &std::sync::atomic::AtomicBool) {
        match (known_leader(&self.raft), &self.network) {
            (Some(leader), Some(_)) if leader != self.node => self.forward_or_refuse(leader, batch).await,
            _ => {
                if let Some(refused) = self.write(batch, stopped).await {
                    // This node lost the lead before the entry reached its log.
                    match refused.1 {
                        Some(leader) if leader != self.node && self.network.is_some() => {
                            self.forward_or_refuse(leader, refused.0).await
                        }
                        leader => answer_all(
                            refused.0.into_iter().map(|proposal| proposal.reply),
                            ProposeError::NotLeader { group: self.group, leader },
                        ),
                    }
                }
            }
        }
    }

    /// Writes `batch` as one raft entry and answers every proposer. If this node does not
    /// lead the group, nothing is answered: the batch comes back with the leader's id.
    async fn write(
        &self,
        batch: Vec<Proposal>,
        stopped: &std::sync::atomic::AtomicBool,
    ) -> Option<(Vec<Proposal>, Option<NodeId>)> {
        let group = self.group;
        let at = wall_clock();
        let count = batch.len();
        let commands = batch.iter().map(|proposal| Command { at, action: proposal.action.clone() }).collect();
        match self.raft.client_write(Batch(commands)).await {
            Ok(written) if written.data.len() == count => {
                for (proposal, response) in batch.into_iter().zip(written.data) {
                    let _ = proposal.reply.send(Ok(response));
                }
                None
            }
            Ok(written) => {
                tracing::error!(%group, sent = count, answered = written.data.len(), "a batch's responses do not match its commands");
                let message = "the replica answered a different number of commands".to_owned();
                answer_all(batch.into_iter().map(|proposal| proposal.reply), ProposeError::Raft { group, message });
                None
            }
            Err(error) => {
                let failure = propose_error(group, &error);
                match failure {
                    ProposeError::NotLeader { leader, .. } => return Some((batch, leader)),
                    ProposeError::Raft { .. } => tracing::warn!(%group, %error, "raft write failed"),
                    // Raft has stopped: whatever is still queued is answered the same way.
                    ProposeError::Stopped(_) => stopped.store(true, std::sync::atomic::Ordering::Release),
                    _ => {}
                }
                answer_all(batch.into_iter().map(|proposal| proposal.reply), failure);
                None
            }
        }
    }

    /// Sends the forwardable proposals of `batch` to `leader` in one message; refuses the
    /// others (they may only be written here).
    async fn forward_or_refuse(&self, leader: NodeId, batch: Vec<Proposal>) {
        let group = self.group;
        let (forwardable, here_only): (Vec<Proposal>, Vec<Proposal>) =
            batch.into_iter().partition(|proposal| proposal.route == Route::AnyLeader);
        answer_all(
            here_only.into_iter().map(|proposal| proposal.reply),
            ProposeError::NotLeader { group, leader: Some(leader) },
        );
        if forwardable.is_empty() {
            return;
        }
        let Some(network) = &self.network else { return };
        let (actions, replies): (Vec<Action>, Vec<_>) =
            forwardable.into_iter().map(|proposal| (proposal.action, proposal.reply)).unzip();
        for (reply, result) in replies.into_iter().zip(network.forward(leader, group, actions).await) {
            let _ = reply.send(result);
        }
    }
}

fn answer_all(replies: impl IntoIterator<Item = oneshot::Sender<Result<Response, ProposeError>>>, error: ProposeError) {
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
