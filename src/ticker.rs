//! The leader's duties in each group: firing timers and handing PKs over between groups.
//!
//! Time enters the machines only through the log, so a timer falls due when the group's
//! leader sees `next_deadline()` pass on its own clock and proposes `Fire` for it. Only
//! the leader does this; a duplicate or late `Fire` is a no-op in the machine, so a
//! leadership change that makes two nodes fire the same timer is harmless.
//!
//! The hand-over pump carries the machines' outboxes to the other groups: the lobby's
//! leader creates each ordered PK on its arena and then confirms it to the lobby; each
//! arena's leader releases a settled PK's rooms in the lobby and then confirms that to
//! itself. Every step is idempotent, and an item stays in its outbox until confirmed, so a
//! failed delivery is simply tried again, with backoff.
//!
//! In a cluster, the balancer spreads leadership: a leader that is not the group's
//! preferred node hands leadership to it while that node is connected.

use std::sync::Arc;
use std::time::Duration;

use pkd_raft::{Action, PkId, PkOrder, Response};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::consensus::{GroupId, NodeId, ServerWatch};
use crate::group::{ProposeError, is_leader_in};
use crate::node::{LOBBY, Shared, wall_clock};
use crate::retry::Backoff;

/// The first wait after a failed proposal; it doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How long a new leader waits before handing leadership to the group's preferred node.
const BALANCE_DELAY: Duration = Duration::from_millis(500);
/// How long before trying again if the preferred node did not take over.
const BALANCE_RETRY: Duration = Duration::from_secs(2);

/// How long to sleep when no timer is armed (a state change wakes the ticker anyway).
const IDLE: Duration = Duration::from_secs(3_600);

/// Starts the timer loop and the hand-over pump of `group`. They run until `stop` turns
/// true (or the task is aborted), acting only while this node leads the group.
pub(crate) fn spawn_leader_duties(
    shared: Arc<Shared>,
    group: GroupId,
    stop: watch::Receiver<bool>,
) -> Vec<JoinHandle<()>> {
    let ticker = tokio::spawn(until_stopped(stop.clone(), run_ticker(Arc::clone(&shared), group)));
    let pump = tokio::spawn(until_stopped(stop.clone(), run_pump(Arc::clone(&shared), group)));
    let balancer = tokio::spawn(until_stopped(stop, run_balancer(shared, group)));
    vec![ticker, pump, balancer]
}

async fn until_stopped(mut stop: watch::Receiver<bool>, duty: impl Future<Output = ()>) {
    tokio::select! {
        _ = stop.wait_for(|stopped| *stopped) => {}
        () = duty => {}
    }
}

/// Waits until this node leads the group; `false` if raft stopped first.
async fn wait_for_leadership(metrics: &mut ServerWatch, node: NodeId) -> bool {
    loop {
        if metrics.read(|metrics| is_leader_in(metrics, node)) {
            return true;
        }
        if !metrics.changed().await {
            return false;
        }
    }
}

fn still_leader(metrics: &ServerWatch, node: NodeId) -> bool {
    metrics.read(|metrics| is_leader_in(metrics, node))
}

/// What one step of a leader's duty did.
enum Step {
    /// Work was done: step again at once.
    Worked,
    /// The work failed (and was logged): step again after a growing wait.
    Failed,
    /// Nothing to do: step again once the replica applies an entry, leadership changes, or
    /// (if given) this long has passed.
    Idle(Option<Duration>),
}

/// Runs `step` over and over while this node leads `group_id`: paused while another node
/// leads, ended when raft stops. `name` is for the log.
async fn run_while_leading<F, Fut>(shared: Arc<Shared>, group_id: GroupId, name: &str, mut step: F)
where
    F: FnMut(Arc<Shared>, GroupId) -> Fut,
    Fut: Future<Output = Step>,
{
    let Ok(group) = shared.group(group_id) else {
        return;
    };
    let node = shared.id;
    // Leadership only: the full metrics change with every entry.
    let mut metrics = ServerWatch::new(group.raft());
    let mut applied = group.replica().applied();
    while wait_for_leadership(&mut metrics, node).await {
        tracing::info!(group = %group_id, "leading: {name} running");
        let mut backoff = Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
        while still_leader(&metrics, node) {
            applied.borrow_and_update();
            match step(Arc::clone(&shared), group_id).await {
                Step::Worked => backoff.reset(),
                Step::Failed => tokio::time::sleep(backoff.next_wait()).await,
                Step::Idle(wait) => {
                    let running = tokio::select! {
                        () = tokio::time::sleep(wait.unwrap_or(IDLE)) => true,
                        changed = applied.changed() => changed.is_ok(),
                        running = metrics.changed() => running,
                    };
                    if !running {
                        return;
                    }
                }
            }
        }
        tracing::info!(group = %group_id, "no longer leading: {name} paused");
    }
}

/// The timer loop of one group.
async fn run_ticker(shared: Arc<Shared>, group_id: GroupId) {
    run_while_leading(shared, group_id, "timer loop", |shared, group_id| async move {
        let Ok(group) = shared.group(group_id) else { return Step::Idle(None) };
        // The log's time may be ahead of this node's clock (a previous leader's clock ran
        // fast): what the machine already considers due fires now, not once this clock
        // catches up.
        let (now, due, next) = group.replica().read(|machine| {
            let now = wall_clock().max(machine.now());
            (now, machine.due_timers(now), machine.next_deadline())
        });
        if due.is_empty() {
            // One millisecond more: the deadline is due at, not before, its time.
            return Step::Idle(next.map(|deadline| duration_ms(deadline.since(now) + 1)));
        }
        match fire_all(&shared, group_id, due).await {
            Ok(()) => Step::Worked,
            Err(error) => {
                tracing::debug!(group = %group_id, %error, "firing timers failed; retrying");
                Step::Failed
            }
        }
    })
    .await
}

async fn fire_all(shared: &Shared, group: GroupId, timers: Vec<pkd_raft::Timer>) -> Result<(), ProposeError> {
    for timer in timers {
        let response = shared.propose_here(group, Action::Fire(timer)).await?;
        tracing::debug!(%group, ?timer, ?response, "timer fired");
    }
    Ok(())
}

fn duration_ms(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// What a group's outbox holds for other groups.
enum Outbox {
    /// The lobby's PKs to create on their arenas.
    Orders(Vec<PkOrder>),
    /// An arena's settled PKs whose rooms the lobby must release.
    Releases(Vec<PkId>),
}

impl Outbox {
    fn is_empty(&self) -> bool {
        match self {
            Outbox::Orders(orders) => orders.is_empty(),
            Outbox::Releases(pks) => pks.is_empty(),
        }
    }
}

/// The hand-over pump of one group.
async fn run_pump(shared: Arc<Shared>, group_id: GroupId) {
    run_while_leading(shared, group_id, "hand-over pump", |shared, group_id| async move {
        let Ok(group) = shared.group(group_id) else { return Step::Idle(None) };
        let outbox = group.replica().read(|machine| match machine.as_lobby() {
            Some(lobby) => Outbox::Orders(lobby.pending_orders().cloned().collect()),
            None => {
                Outbox::Releases(machine.as_arena().map(|arena| arena.pending_releases().collect()).unwrap_or_default())
            }
        });
        if outbox.is_empty() {
            return Step::Idle(None);
        }
        match deliver(&shared, group_id, outbox).await {
            Ok(()) => Step::Worked,
            Err(error) => {
                tracing::warn!(group = %group_id, %error, "hand-over failed; retrying");
                Step::Failed
            }
        }
    })
    .await
}

/// Delivers every item of `outbox` and confirms it to its group.
async fn deliver(shared: &Shared, from: GroupId, outbox: Outbox) -> Result<(), ProposeError> {
    match outbox {
        Outbox::Orders(orders) => {
            for order in orders {
                let pk = order.pk;
                let arena = shared.arena_of(pk);
                let created = shared.propose(arena, Action::CreatePk(order)).await?;
                if let Response::Rejected(reason) = &created {
                    // The arena refuses for good (e.g. a misrouted order): confirming keeps
                    // the outbox from retrying forever; the lobby's abandon timer frees
                    // the rooms.
                    tracing::error!(%pk, %arena, ?reason, "arena refused a PK order");
                }
                shared.propose(from, Action::ConfirmPkCreated { pk }).await?;
                tracing::debug!(%pk, %arena, "PK handed over to its arena");
            }
        }
        Outbox::Releases(pks) => {
            for pk in pks {
                let released = shared.propose(LOBBY, Action::ReleaseRooms { pk }).await?;
                if let Response::Rejected(reason) = &released {
                    tracing::error!(%pk, ?reason, "lobby refused to release a PK's rooms");
                }
                shared.propose(from, Action::ConfirmRoomsReleased { pk }).await?;
                tracing::debug!(%pk, "PK's rooms released in the lobby");
            }
        }
    }
    Ok(())
}

/// The balancer of one group: while this node leads the group but another node is the
/// group's preferred leader and is connected, hand leadership over to it. The preferred
/// leader is worked out from the membership in force each time, so the balance follows
/// nodes joining and leaving (and a cluster formed through the admin API's `init`).
async fn run_balancer(shared: Arc<Shared>, group_id: GroupId) {
    let (Ok(group), Some(network)) = (shared.group(group_id), shared.network.as_ref()) else {
        return;
    };
    let node = shared.id;
    let mut metrics = ServerWatch::new(group.raft());
    while wait_for_leadership(&mut metrics, node).await {
        tokio::time::sleep(BALANCE_DELAY).await;
        let preferred = shared.preferred_leader(group_id).filter(|&preferred| preferred != node);
        if let Some(preferred) = preferred
            && still_leader(&metrics, node)
            && network.is_connected(preferred)
        {
            tracing::info!(group = %group_id, to = preferred, "handing leadership to the preferred node");
            if let Err(error) = group.transfer_leadership(preferred).await {
                tracing::warn!(group = %group_id, %error, "leadership transfer failed");
            }
        }
        tokio::time::sleep(BALANCE_RETRY).await;
    }
}
