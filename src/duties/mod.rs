//! Work a node does for a group only while it leads that group, through one runner.
//!
//! A [`Duty`] is a small step function. The runner calls it over and over while this node
//! leads its group, waits between steps as the step asks ([`Step`]), backs off after
//! failures with one [`Backoff`], pauses while another node leads, and ends when the node
//! stops. No duty looks at leadership on its own.
//!
//! - [`timers`]: fire the timers the machine says are due (`Fire`, here only).
//! - [`handover`]: carry outboxes between groups (PK orders to arenas, room releases to
//!   the lobby), each item confirmed to its group once delivered.
//! - [`balancer`]: hand leadership to the group's preferred node, spreading leaders.
//! - [`results`] and [`cache`]: carry settled results into the SQL results store and
//!   changes into the Redis read cache; [`sinks`] connects those stores and starts them.
//!
//! Every duty's work is idempotent: a new leader may redo what the last one did just before
//! it lost the lead, and nothing goes wrong.

pub mod backfill;
pub mod balancer;
pub mod cache;
pub mod handover;
pub mod results;
pub mod sinks;
pub mod timers;

use std::time::Duration;
use tracing::Instrument;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::replication::consensus::{GroupId, ServerWatch};
use crate::replication::group::is_leader_in;
use crate::replication::node::Node;
use crate::retry::Backoff;

/// The first wait after a failed step; it doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(20);
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How long an idle duty sleeps when nothing else wakes it.
const IDLE: Duration = Duration::from_secs(3_600);

/// What one step of a duty did, and when to step again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Work was done: step again at once.
    Worked,
    /// The work failed (and was logged): step again after a growing wait.
    Failed,
    /// Nothing to do: step again once the replica applies an entry, leadership changes,
    /// or (if given) this long has passed.
    Idle(Option<Duration>),
    /// Nothing to do for this long (or until leadership changes); applied entries do not
    /// wake the duty.
    Sleep(Duration),
}

/// Work done for one group while this node leads it.
pub trait Duty: Send + 'static {
    /// The duty's name, for the log.
    fn name(&self) -> &'static str;

    /// This node has just become the group's leader: forget what an earlier leadership
    /// left behind.
    fn lead(&mut self) {}

    /// One step of the work.
    fn step(&mut self) -> impl Future<Output = Step> + Send;

    /// The waits after failed steps.
    fn backoff(&self) -> Backoff {
        Backoff::new(MIN_BACKOFF, MAX_BACKOFF)
    }
}

/// The duties running on a node. Dropping it leaves them running; [`Duties::stop`] ends
/// them.
pub struct Duties {
    node: Node,
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl Duties {
    /// No duty yet.
    pub fn new(node: &Node) -> Duties {
        Duties { node: node.clone(), tasks: TaskTracker::new(), stop: node.stopping().child_token() }
    }

    /// The engine's own duties on every group of `node`: timers, hand-overs and, in a
    /// cluster, leader balancing.
    pub fn start(node: &Node) -> Duties {
        let duties = Duties::new(node);
        let lobby = node.topology().lobby();
        duties.run(lobby, timers::Timers::new(node, node.lobby()));
        duties.run(lobby, handover::Orders::new(node));
        for replica in node.arenas() {
            duties.run(replica.group(), timers::Timers::new(node, replica));
            duties.run(replica.group(), handover::Releases::new(node, replica.group()));
        }
        if node.network().is_some() {
            duties.run(lobby, balancer::Balancer::new(node, node.lobby()));
            for replica in node.arenas() {
                duties.run(replica.group(), balancer::Balancer::new(node, replica));
            }
        }
        duties
    }

    /// Runs `duty` whenever this node leads `group`, until [`Duties::stop`].
    pub fn run<D: Duty>(&self, group: GroupId, duty: D) {
        let Ok(raft_group) = self.node.group(group) else {
            tracing::error!(%group, duty = duty.name(), "no such group: duty not started");
            return;
        };
        let leadership = ServerWatch::new(raft_group.raft());
        let applied = raft_group.applied();
        let node = self.node.id();
        let stop = self.stop.clone();
        let span = tracing::info_span!("duty", node, %group, duty = duty.name());
        self.tasks.spawn(
            async move {
                tokio::select! {
                    () = run_while_leading(node, group, leadership, applied, duty) => {}
                    () = stop.cancelled() => {}
                }
            }
            .instrument(span),
        );
    }

    /// Runs `duty` on this node whoever leads `group`, until [`Duties::stop`]: work every
    /// node does from its own replica (a results store of its own).
    pub fn run_everywhere<D: Duty>(&self, group: GroupId, duty: D) {
        let Ok(raft_group) = self.node.group(group) else {
            tracing::error!(%group, duty = duty.name(), "no such group: duty not started");
            return;
        };
        let applied = raft_group.applied();
        let stop = self.stop.clone();
        let span = tracing::info_span!("duty", node = self.node.id(), %group, duty = duty.name());
        self.tasks.spawn(
            async move {
                tokio::select! {
                    () = run_always(applied, duty) => {}
                    () = stop.cancelled() => {}
                }
            }
            .instrument(span),
        );
    }

    /// Runs `task` until [`Duties::stop`]: what prepares duties, such as connecting a
    /// store, ends with them.
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        let span = tracing::info_span!("node", node = self.node.id());
        self.tasks.spawn(
            async move {
                tokio::select! {
                    () = task => {}
                    () = stop.cancelled() => {}
                }
            }
            .instrument(span),
        );
    }

    /// The node the duties run on.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Ends every duty and waits until each has let go of the node.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Waits until `node` leads the group; `false` if raft stopped first.
async fn wait_for_leadership(leadership: &mut ServerWatch, node: u64) -> bool {
    loop {
        if leadership.read(|metrics| is_leader_in(metrics, node)) {
            return true;
        }
        if !leadership.changed().await {
            return false;
        }
    }
}

/// Steps `duty` for as long as its group's replica applies entries.
async fn run_always<D: Duty>(mut applied: tokio::sync::watch::Receiver<Option<u64>>, mut duty: D) {
    duty.lead();
    let mut backoff = duty.backoff();
    loop {
        applied.borrow_and_update();
        let step = duty.step().await;
        if step != Step::Failed {
            backoff.reset();
        }
        let (wait, on_apply) = match step {
            Step::Worked => continue,
            Step::Failed => (backoff.next_wait(), false),
            Step::Idle(wait) => (wait.unwrap_or(IDLE), true),
            Step::Sleep(wait) => (wait, false),
        };
        let running = tokio::select! {
            () = tokio::time::sleep(wait) => true,
            changed = applied.changed(), if on_apply => changed.is_ok(),
        };
        if !running {
            return;
        }
    }
}

/// Steps `duty` while `node` leads `group`: paused while another node leads, ended when
/// raft stops.
async fn run_while_leading<D: Duty>(
    node: u64,
    group: GroupId,
    mut leadership: ServerWatch,
    mut applied: tokio::sync::watch::Receiver<Option<u64>>,
    mut duty: D,
) {
    while wait_for_leadership(&mut leadership, node).await {
        tracing::debug!(%group, duty = duty.name(), "leading: duty running");
        duty.lead();
        let mut backoff = duty.backoff();
        while leadership.read(|metrics| is_leader_in(metrics, node)) {
            applied.borrow_and_update();
            let step = duty.step().await;
            if step != Step::Failed {
                backoff.reset();
            }
            let (wait, on_apply) = match step {
                Step::Worked => continue,
                Step::Failed => (backoff.next_wait(), false),
                Step::Idle(wait) => (wait.unwrap_or(IDLE), true),
                Step::Sleep(wait) => (wait, false),
            };
            let running = tokio::select! {
                () = tokio::time::sleep(wait) => true,
                changed = applied.changed(), if on_apply => changed.is_ok(),
                running = leadership.changed() => running,
            };
            if !running {
                return;
            }
        }
        tracing::debug!(%group, duty = duty.name(), "no longer leading: duty paused");
    }
}
