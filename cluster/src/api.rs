//! The admin API's requests and responses (JSON). Every route needs
//! `Authorization: Bearer <admin token>`.
//!
//! | route | body | answer |
//! |---|---|---|
//! | `GET /admin/status` | | [`NodeStatus`] |
//! | `GET /admin/digest` | | [`StateDigests`] |
//! | `GET`, `POST /admin/faults` (fault-injection builds only) | [`FaultSettings`] | [`FaultSettings`] |
//! | `GET /admin/cluster` | | [`ClusterStatus`] |
//! | `POST /admin/groups/{id}/transfer-leader` | [`TransferLeaderRequest`] | [`LeaderReply`] |
//! | `POST /admin/balance` | | [`MembershipReply`] |
//! | `POST /admin/drain` | [`NodeRequest`] (any node's id) | [`NodeRequest`] |
//! | `POST /admin/init` | [`InitRequest`] | [`MembershipReply`] |
//! | `POST /admin/learners` | [`AddLearnerRequest`] | [`MembershipReply`] |
//! | `POST /admin/promote` | [`NodeRequest`] | [`MembershipReply`] |
//! | `POST /admin/remove` | [`NodeRequest`] | [`MembershipReply`] |
//! | `POST /admin/config` | [`ConfigRequest`] | [`ConfigReply`] |
//! | `GET /admin/config` | | [`ConfigRows`] |
//! | `POST /admin/config/check` | [`ConfigRequest`] | [`ConfigCheck`] |
//! | `GET /admin/pks` | | [`PkList`] |
//! | `GET /admin/pks/{id}` | | [`PkEntry`] |
//! | `POST /admin/pks/{id}/abort` | | [`AbortReply`] |
//! | `GET /admin/lobby` | | [`LobbyView`] |
//! | `GET /admin/audit?after=SEQ` | | [`AuditList`] |
//! | `GET /admin/events` | | Server-Sent Events: `cluster`, `pks`, `lobby`, `audit` |
//!
//! A request that changes something may name its operator in an `X-Pkd-Operator` header
//! (up to 64 printable characters); the audit log records it as the action's `who`.
//!
//! A refused or failed request answers with a 4xx or 5xx status and an [`ErrorReply`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A node's id in the cluster.
pub type NodeId = u64;

/// Which kind of raft group: the one lobby (group 0) or an arena (groups 1..=N).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupKind {
    Lobby,
    Arena,
}

/// How far one member's log is behind the leader's (known only on the leader).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberLag {
    pub node: NodeId,
    /// The last log index the leader knows the member holds.
    pub matched: Option<u64>,
    /// Entries the member is missing: the leader's last log index minus `matched`.
    pub lag: u64,
}

/// One raft group as the answering node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    pub id: u64,
    pub kind: GroupKind,
    /// The node's role in the group: leader, follower, candidate, learner or shutdown.
    pub state: String,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub committed: Option<u64>,
    pub applied: Option<u64>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// Per-member replication lag; empty unless the answering node leads the group.
    pub replication: Vec<MemberLag>,
}

/// `GET /admin/status`: the answering node and every group it hosts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: NodeId,
    pub groups: Vec<GroupStatus>,
    /// The nodes this node has a live connection to, in increasing id order.
    #[serde(default)]
    pub connected: Vec<NodeId>,
}

impl NodeStatus {
    /// The group with id `id`, if the node hosts it.
    pub fn group(&self, id: u64) -> Option<&GroupStatus> {
        self.groups.iter().find(|group| group.id == id)
    }
}

/// One group's replicated state, digested: two replicas at the same applied entry must
/// show the same digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupDigest {
    pub group: u64,
    /// The index of the last entry the replica applied (`None` before the first).
    pub applied_index: Option<u64>,
    /// SHA-256 (hex) of the replica's state as a snapshot holds it: the machine, the
    /// membership and the last applied log id (term included).
    pub sha256: String,
}

/// `GET /admin/digest`: every group this node hosts, each digested at one instant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateDigests {
    pub node: NodeId,
    pub groups: Vec<GroupDigest>,
}

/// `/admin/faults`, in builds with the `fault-injection` feature only (for fault tests):
/// the faults injected on the answering node. In a request, an absent field is left as
/// it is; the answer has every field.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultSettings {
    /// Added to the node's wall clock, in ms (clock skew).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_offset_ms: Option<i64>,
    /// Added to every flush of the node's log and snapshots, in ms (a slow disk).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush_delay_ms: Option<u64>,
    /// Every flush fails, as on a full disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush_fails: Option<bool>,
    /// The broken behaviours the node was started with (`PKD_FAULT_BREAK`); read-only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub breaks: Vec<String>,
}

/// The header naming the operator of a request, for the audit log.
pub const OPERATOR_HEADER: &str = "x-pkd-operator";

/// `GET /admin/cluster`: every node's own report, gathered by the answering node over
/// the cluster's network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node that answered.
    pub asked: NodeId,
    /// Its clock when it answered, in ms since the epoch.
    pub at_ms: i64,
    /// Every node that a group counts as a voter or learner, or that the answering node is
    /// connected to, in id order.
    pub nodes: Vec<ClusterNode>,
}

impl ClusterStatus {
    /// Node `id`'s entry.
    pub fn node(&self, id: NodeId) -> Option<&ClusterNode> {
        self.nodes.iter().find(|node| node.node == id)
    }

    /// The reports of the nodes that answered.
    pub fn reports(&self) -> impl Iterator<Item = &NodeReport> {
        self.nodes.iter().filter_map(|node| node.report.as_ref())
    }

    /// Group `group`'s leader, as the reachable nodes see it: the one a node names as
    /// itself (the leader's own word), else the one most of them name.
    pub fn leader(&self, group: u64) -> Option<NodeId> {
        let views: Vec<(NodeId, Option<NodeId>)> = self
            .reports()
            .filter_map(|report| Some((report.status.node, report.status.group(group)?.leader)))
            .collect();
        if let Some((me, _)) = views.iter().find(|(me, leader)| *leader == Some(*me)) {
            return Some(*me);
        }
        let mut counts: BTreeMap<NodeId, usize> = BTreeMap::new();
        for leader in views.iter().filter_map(|(_, leader)| *leader) {
            *counts.entry(leader).or_default() += 1;
        }
        counts.into_iter().max_by_key(|(_, count)| *count).map(|(leader, _)| leader)
    }
}

/// One node in [`ClusterStatus`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClusterNode {
    pub node: NodeId,
    /// It answered in time.
    pub reachable: bool,
    /// Why it did not answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What it said of itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<NodeReport>,
}

/// A node's account of itself: its view of the groups, its gateway and its sinks.
/// Counters count from the node's start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    pub status: NodeStatus,
    /// The node's clock, in ms since the epoch.
    pub at_ms: i64,
    /// It is draining: it takes no new connections and is about to stop.
    pub draining: bool,
    /// PKs running in its replicas.
    pub pks_running: u64,
    /// Anchors matching in its lobby replica.
    pub matching: u64,
    pub gateway: GatewayFigures,
    pub sinks: SinkFigures,
    /// CPU time of the process, in seconds.
    pub cpu_seconds: f64,
    /// Resident memory of the process, in bytes.
    pub memory_bytes: u64,
}

/// A node's WebSocket gateway and gift API (the counters `/metrics` exports).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayFigures {
    /// WebSocket sessions open now.
    pub connections: u64,
    /// Push frames handed to sessions.
    pub pushes: u64,
    /// Sessions dropped for taking their pushes too slowly.
    pub slow_drops: u64,
    /// Gifts counted through this node's gift API.
    pub gifts: u64,
    /// WebSocket commands answered.
    pub commands: u64,
    /// WebSocket upgrades refused (a user's cap, draining).
    pub refused: u64,
}

/// A node's results store and read cache (the counters `/metrics` exports).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkFigures {
    pub results_written: u64,
    pub results_repaired: u64,
    pub results_errors: u64,
    /// Settlement to stored, for the last PK stored, in ms.
    pub results_lag_ms: u64,
    /// The worst such delay seen.
    pub results_lag_max_ms: u64,
    pub cache_changes: u64,
    pub cache_rebuilds: u64,
    pub cache_errors: u64,
}

/// `GET /admin/config`: every `t_config` row as the answering node's lobby replica holds
/// it, in the row's own format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRows {
    pub rows: Vec<ConfigRequest>,
}

/// `POST /admin/config/check`: the value is valid (`valid`, and what the engine reads in
/// it), or why not. Nothing is set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigCheck {
    pub valid: bool,
    /// What the engine makes of the whole config with this value, or the refusal.
    pub message: String,
}

/// `GET /admin/pks`: every running PK in the answering node's replicas.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PkList {
    /// The node's clock when it rendered them, in ms.
    pub at_ms: i64,
    pub pks: Vec<PkEntry>,
}

/// One PK: its arena, the viewers of each side, and its state exactly as push 10 carries
/// it (`state`: `pkId`, `status`, `endTime`, `sourceGifts`, `sourceTopGifts`, ...).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PkEntry {
    pub arena: u64,
    /// Viewers in the source's and the target's room, over every node.
    pub viewers: [u32; 2],
    pub state: serde_json::Value,
}

/// `POST /admin/pks/{id}/abort`: the PK ended abnormally (status 3, no winner); both
/// rooms got its last push 10 and push 15.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortReply {
    pub pk: u64,
    pub arena: u64,
}

/// `GET /admin/lobby`: matchmaking as the answering node's lobby replica holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LobbyView {
    pub at_ms: i64,
    /// Anchors streaming now (the pool for invitations).
    pub live: u64,
    pub matching: Vec<MatchingEntry>,
    pub invitations: Vec<InvitationEntry>,
    pub cooldowns: Vec<CooldownEntry>,
    /// PKs whose rooms are held: (PK id, source anchor, target anchor).
    pub held: Vec<[u64; 3]>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MatchingEntry {
    pub anchor: u64,
    pub room: u64,
    pub country: String,
    /// When it started matching, in ms.
    pub since_ms: i64,
    /// Its current invitation batch (0: none sent yet).
    pub batch: u32,
    /// That batch's invitees.
    pub invitees: Vec<u64>,
    /// Those of them who refused.
    pub refused: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvitationEntry {
    pub inviter: u64,
    pub invitee: u64,
    pub batch: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CooldownEntry {
    pub anchor: u64,
    /// When it was last invited, in ms.
    pub invited_ms: i64,
    /// When its cool-down ends, in ms.
    pub until_ms: i64,
}

/// `GET /admin/audit`: the audit log, oldest first (the last 1,000 entries at most).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditList {
    pub entries: Vec<AuditItem>,
}

/// One action an operator took.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditItem {
    pub seq: u64,
    /// When, in ms since the epoch (the lobby leader's clock).
    pub at_ms: i64,
    pub who: String,
    pub what: String,
    pub outcome: String,
}

/// `POST /admin/groups/{id}/transfer-leader`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferLeaderRequest {
    pub to: NodeId,
}

/// The group's leader after a transfer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderReply {
    pub group: u64,
    pub leader: Option<NodeId>,
}

/// `POST /admin/init`: make these nodes (id → cluster address) the voters of every group
/// of a fresh cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitRequest {
    pub members: BTreeMap<NodeId, String>,
}

/// `POST /admin/learners`: add `node`, reachable at cluster address `addr`, to every group
/// as a learner. Returns once it has caught up with each group's log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddLearnerRequest {
    pub node: NodeId,
    pub addr: String,
}

/// `POST /admin/promote` (make a learner a voter in every group) and `POST /admin/remove`
/// (take the node out of every group).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRequest {
    pub node: NodeId,
}

/// The answer to a membership change: the groups it was applied to, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipReply {
    pub groups: Vec<u64>,
}

/// `POST /admin/config`: set a `t_config` row in every group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRequest {
    pub key: String,
    pub value: String,
}

/// The groups that applied the config row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigReply {
    pub groups: Vec<u64>,
}

/// The body of every refusal or failure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub error: String,
}
