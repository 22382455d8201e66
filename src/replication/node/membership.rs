//! Membership and leadership changes (the admin API's operations), made at each group's
//! leader: here if this node leads the group, sent over the node network otherwise; and the
//! task that follows each group's membership as it changes.

use std::collections::BTreeMap;
use std::time::Duration;

use pkd_raft::{Action, LeaderPlacement, Response, StateMachine};
use pkd_storage::pacing::urgent_appends;

use super::{Node, NodeError};
use crate::replication::consensus::{self, BasicNode, GroupId, LogStore, NodeId, ServerWatch};
use crate::replication::error::{ChangeRefused, ProposeError};
use crate::replication::network::{GroupChange, Network};
use crate::replication::replica::Raft;
use crate::retry::{Attempt, patiently};

/// How long a group change keeps being retried while the group has no leader or its
/// leader changes.
const CHANGE_PATIENCE: Duration = Duration::from_secs(20);

/// The pause between attempts of an admin operation while its group's leader moves.
const CHANGE_PAUSE: Duration = Duration::from_millis(200);

/// How often a drain looks again at the groups this node still leads.
const DRAIN_RECHECK: Duration = Duration::from_millis(100);

/// How often [`follow_membership`] looks again at the connections when nothing else changed.
const PACE_RECHECK: Duration = Duration::from_millis(200);

/// Why an admin operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("this node runs alone: membership changes need a cluster (--peers)")]
    NotClustered,
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("no group {0} on this node")]
    UnknownGroup(GroupId),
    #[error("group {group}: {message}")]
    Failed { group: GroupId, message: String },
}

impl Node {
    /// Makes `members` (id → cluster address) the voters of every group of a fresh
    /// cluster. Groups initialized before are left as they are.
    pub async fn initialize_cluster(&self, members: &BTreeMap<NodeId, String>) -> Result<Vec<u64>, AdminError> {
        let network = self.network().ok_or(AdminError::NotClustered)?;
        if !members.contains_key(&self.id()) {
            return Err(AdminError::Invalid(format!("the members must include this node ({})", self.id())));
        }
        for (&id, address) in members {
            network.add_peer(id, address.clone());
        }
        let nodes: BTreeMap<NodeId, BasicNode> =
            members.iter().map(|(&id, address)| (id, BasicNode::new(address.clone()))).collect();
        for group in self.groups() {
            initialize(group.id(), &nodes, group.raft())
                .await
                .map_err(|error| AdminError::Failed { group: group.id(), message: error.to_string() })?;
        }
        Ok(self.group_ids())
    }

    /// Adds `node`, reachable at cluster address `address`, to every group as a learner;
    /// returns once it has caught up with every group.
    pub async fn add_learner(&self, node: NodeId, address: &str) -> Result<Vec<u64>, AdminError> {
        if address.is_empty() {
            return Err(AdminError::Invalid("the learner's address is empty".to_owned()));
        }
        self.change_every_group(GroupChange::AddLearner { node, address: address.to_owned() }).await
    }

    /// Makes learner `node` a voter in every group.
    pub async fn promote(&self, node: NodeId) -> Result<Vec<u64>, AdminError> {
        self.change_every_group(GroupChange::Promote { node }).await
    }

    /// Takes `node` out of every group.
    pub async fn remove(&self, node: NodeId) -> Result<Vec<u64>, AdminError> {
        self.change_every_group(GroupChange::Remove { node }).await
    }

    /// Places `group`'s leadership on `to`, for good: the placement is replicated, so the
    /// leader balancer keeps the group there (and brings it back after a failure) until the
    /// operator places it elsewhere or clears the placement ([`Node::clear_placements`]).
    /// Then asks the group's leader, wherever it is, to hand leadership to `to`.
    pub async fn transfer_leader(&self, group: GroupId, to: NodeId) -> Result<(), AdminError> {
        let voters = self.group(group).map_err(|_| AdminError::UnknownGroup(group))?.metrics().read(consensus::voters);
        if !voters.contains(&to) {
            return Err(AdminError::Invalid(format!("node {to} is not a voter of group {group}")));
        }
        self.propose_patiently(group, Action::PlaceLeader { node: Some(to) }).await?;
        if self.leader(group) == Some(to) {
            return Ok(());
        }
        self.change(group, GroupChange::TransferLeader { to }).await
    }

    /// Drains this node before it stops: marks it draining in every group (so that no
    /// balancer gives it a group again), then hands every group it leads to the group's
    /// preferred node among the others. Returns once it leads nothing, or after `wait`
    /// (then with the groups it still leads: raft elects another leader once it is gone).
    pub async fn drain(&self, wait: Duration) -> Vec<GroupId> {
        let me = self.id();
        if self.network().is_none() {
            return Vec::new();
        }
        for group in self.groups() {
            if let Err(error) = self.propose_patiently(group.id(), Action::Drain { node: me, draining: true }).await {
                tracing::warn!(%error, "could not mark this node draining");
            }
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let led: Vec<GroupId> =
                self.groups().iter().filter(|group| group.is_leader()).map(|group| group.id()).collect();
            if led.is_empty() || tokio::time::Instant::now() >= deadline {
                return led;
            }
            for &group in &led {
                let Ok(local) = self.group(group) else { continue };
                let voters = local.metrics().read(consensus::voters);
                let placement = self.placement_of(group);
                let target = crate::topology::preferred_leader(group, &voters, &placement).filter(|&target| {
                    target != me && self.network().is_some_and(|network| network.is_connected(target))
                });
                if let Some(target) = target
                    && let Err(error) = local.transfer_leadership(target).await
                {
                    tracing::warn!(%group, %error, "handing leadership off failed");
                }
            }
            tokio::time::sleep(DRAIN_RECHECK).await;
        }
    }

    /// Takes part again after a drain (a restarted node clears its own mark).
    pub async fn undrain(&self) -> Result<(), AdminError> {
        let me = self.id();
        for group in self.groups() {
            let draining = self.placement_of(group.id()).draining.contains(&me);
            if draining {
                self.propose_patiently(group.id(), Action::Drain { node: me, draining: false }).await?;
            }
        }
        Ok(())
    }

    /// Where the operator wants `group`'s leadership, as this node's replica says.
    fn placement_of(&self, group: GroupId) -> LeaderPlacement {
        match self.arena(group) {
            Some(arena) => arena.read(|arena| arena.placement().clone()),
            None => self.lobby().read(|lobby| lobby.placement().clone()),
        }
    }

    /// Clears every group's leader placement: leaders are spread again by the balancer's
    /// rule.
    pub async fn clear_placements(&self) -> Result<Vec<u64>, AdminError> {
        for group in self.groups() {
            self.propose_patiently(group.id(), Action::PlaceLeader { node: None }).await?;
        }
        Ok(self.group_ids())
    }

    /// Proposes the `t_config` row `key` = `value` to every group. Refused without effect
    /// when the value does not parse.
    pub async fn set_config(&self, key: &str, value: &str) -> Result<Vec<u64>, AdminError> {
        pkd_raft::Config::default().with(key, value).map_err(|error| AdminError::Invalid(error.to_string()))?;
        for group in self.groups() {
            let action = Action::SetConfig { key: key.to_owned(), value: value.to_owned() };
            self.propose_patiently(group.id(), action).await?;
        }
        Ok(self.group_ids())
    }

    /// Proposes `action`, which must be idempotent, to `group` until it is applied: a
    /// proposal whose leader was unreachable or changed is simply sent again.
    async fn propose_patiently(&self, group: GroupId, action: Action) -> Result<(), AdminError> {
        let action = &action;
        let proposed = patiently(CHANGE_PATIENCE, CHANGE_PAUSE, || async move {
            match self.propose(group, action.clone()).await {
                Ok(Response::Rejected(reason)) => Err(Attempt::ForGood(format!("refused: {reason:?}"))),
                Ok(_) => Ok(()),
                Err(error) if error.is_transient() => Err(Attempt::Again(error.to_string())),
                Err(error) => Err(Attempt::ForGood(error.to_string())),
            }
        });
        proposed.await.map_err(|message| AdminError::Failed { group, message })
    }

    fn group_ids(&self) -> Vec<u64> {
        self.groups().iter().map(|group| group.id().0).collect()
    }

    async fn change_every_group(&self, change: GroupChange) -> Result<Vec<u64>, AdminError> {
        for group in self.groups() {
            self.change(group.id(), change.clone()).await?;
        }
        Ok(self.group_ids())
    }

    /// Makes `change` in `group` at its leader: here if this node leads it, over the
    /// network otherwise. While the group has no leader, or its leader moves, it tries
    /// again for a while.
    async fn change(&self, group: GroupId, change: GroupChange) -> Result<(), AdminError> {
        let local = self.group(group).map_err(|_| AdminError::UnknownGroup(group))?;
        let network = self.network().ok_or(AdminError::NotClustered)?;
        let change = &change;
        patiently(CHANGE_PATIENCE, CHANGE_PAUSE, || async move {
            let result = match local.leader() {
                Some(leader) if leader == self.id() => self.change_here(group, change.clone()).await,
                Some(leader) => match network.change(leader, group, change.clone()).await {
                    Ok(()) => Ok(()),
                    Err(Ok(refused)) => Err(refused),
                    Err(Err(unreachable)) => return Err(Attempt::Again(unreachable.to_string())),
                },
                None => Err(ChangeRefused::NoLeader),
            };
            result.map_err(|refused| {
                if refused.is_transient() {
                    Attempt::Again(refused.to_string())
                } else {
                    Attempt::ForGood(refused.to_string())
                }
            })
        })
        .await
        .map_err(|message| AdminError::Failed { group, message })
    }

    /// Makes `change` in `group`, which this node should lead.
    pub(super) async fn change_here(&self, group: GroupId, change: GroupChange) -> Result<(), ChangeRefused> {
        let local = self.group(group).map_err(|_| ChangeRefused::UnknownGroup)?;
        let raft = local.raft();
        let written = match change {
            GroupChange::AddLearner { node, address } => {
                if let Some(network) = self.network() {
                    network.add_peer(node, address.clone());
                }
                consensus::add_learner(raft, node, address).await
            }
            GroupChange::Promote { node } => consensus::promote(raft, node).await,
            GroupChange::Remove { node } => consensus::remove(raft, node).await,
            GroupChange::TransferLeader { to } => {
                if !local.is_leader() {
                    return Err(ChangeRefused::NotLeader { leader: local.leader() });
                }
                return local.transfer_leadership(to).await.map_err(|error| match error {
                    ProposeError::Stopped(_) => ChangeRefused::Stopped,
                    _ => ChangeRefused::Failed,
                });
            }
        };
        written.map_err(|error| consensus::classify_change_error(&error))
    }
}

/// Makes `members` the members of `group`, unless the group was initialized before.
pub(super) async fn initialize(
    group: GroupId,
    members: &BTreeMap<NodeId, BasicNode>,
    raft: &Raft,
) -> Result<(), NodeError> {
    let initialized =
        raft.is_initialized().await.map_err(|error| NodeError::Raft { group, message: error.to_string() })?;
    if initialized {
        return Ok(());
    }
    match raft.initialize(members.clone()).await {
        Ok(()) => {
            let members: Vec<NodeId> = members.keys().copied().collect();
            tracing::info!(%group, ?members, "group initialized");
            Ok(())
        }
        Err(error) if consensus::is_already_initialized(&error) => Ok(()),
        Err(error) => Err(NodeError::Raft { group, message: error.to_string() }),
    }
}

/// Follows one group's leader and membership as they change: tells the network about every
/// member (so that this node dials the members that joined after it started, and drops
/// removed ones), and keeps `log`'s flush urgency in step with this node's part in the
/// group (`pkd_storage::pacing`).
pub(super) async fn follow_membership(network: Network, group: GroupId, mut metrics: ServerWatch, log: LogStore) {
    let me = network.node_id();
    let mut seen = None;
    loop {
        let (membership, leader, voters) = metrics.read(|metrics| {
            let index = consensus::membership_index(metrics);
            let membership = (index != seen).then(|| (index, consensus::member_addresses(metrics)));
            (membership, metrics.current_leader, consensus::voters(metrics))
        });
        if let Some((index, members)) = membership {
            seen = index;
            network.set_members(group, &members);
        }
        let urgent = urgent_appends(me, leader, &voters, |peer| network.is_connected(peer));
        if urgent != log.is_urgent() {
            tracing::debug!(%group, urgent, "flush pacing changed");
            log.set_urgent(urgent);
        }
        tokio::select! {
            changed = metrics.changed() => if !changed { return },
            _ = tokio::time::sleep(PACE_RECHECK) => {}
        }
    }
}
