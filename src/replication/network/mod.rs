//! The network between pkd nodes: one TCP connection per pair of nodes, carrying the raft
//! messages of every group, forwarded proposals, group changes and read indexes.
//!
//! - [`handshake`]: how a connection opens (HMAC over fresh nonces, small frames only).
//! - [`wire`]: what travels on it afterwards, and the typed reasons a request got no reply.
//! - [`link`]: one connection, multiplexed (many requests in flight, both ways).
//! - [`raft`]: openraft's side: each group's RPCs, snapshots in pieces.
//! - `faults` (feature `fault-injection` only): a rules table that drops or delays the
//!   requests and replies of chosen node pairs and groups, for the in-process fault tests.
//!
//! Of two nodes, the one with the smaller id dials the other, and dials again with backoff
//! whenever the connection drops; the other only accepts. A node bound to one address
//! dials from that address, so its peers see it come from where they reach it. A node that no group counts as a
//! member any more (it was removed) is no longer dialed, and its connections are refused.

#[cfg(feature = "fault-injection")]
pub mod faults;
mod handshake;
mod link;
mod raft;
mod wire;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use pkd_raft::{Action, Response};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use handshake::MAX_HANDSHAKE_FRAME;
pub use raft::{GroupNetwork, MAX_SNAPSHOT, PeerClient, SNAPSHOT_CHUNK};
pub use wire::{GroupChange, MAX_FRAME, Unanswered};

use super::consensus::{self, GroupId, NodeId, RpcError, Snapshot, rpc_failed, rpc_unreachable};
use super::error::{ChangeRefused, ProposalRefused, ProposeError, ReadIndexFailure};
use super::replica::Raft;
use crate::retry::Backoff;
use link::Link;
use wire::{RaftRequest, Reply, Request};

/// How long a forwarded proposal may take.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a forwarded group change may take (adding a learner waits for it to catch up).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// The first and the longest wait before dialing a peer again.
const MIN_REDIAL: Duration = Duration::from_millis(50);
const MAX_REDIAL: Duration = Duration::from_secs(2);

/// A connection on which a request timed out and nothing at all has come for this long is
/// dropped and dialed again: the peer vanished without closing it. A peer that is only slow
/// (a long fsync, an overloaded machine) keeps its connection, and with it the answers to
/// the requests still in flight on it.
const SILENCE_BEFORE_CLOSING: Duration = Duration::from_secs(2);

/// Handshakes under way at once; connections past it are closed at once. Peers are few,
/// so only a flood of strangers meets this bound.
pub const MAX_HANDSHAKES: usize = 32;

/// One authenticated connection's stream: plain TCP, or TLS over it.
pub(crate) enum NodeStream {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::TlsStream<tokio::net::TcpStream>>),
}

/// TLS on every node-to-node link: each node serves its certificate and checks its
/// peer's against the cluster's CA. The HMAC handshake runs inside, so a peer proves it
/// holds the cluster secret as well.
#[derive(Clone, Debug)]
pub struct NetworkTls {
    /// This node's certificate, reloaded when its files change.
    pub server: Arc<crate::tls::Reloading>,
    /// Trusts the cluster's CA.
    pub client: Arc<rustls::ClientConfig>,
}

/// The settings of the network.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// This node's id.
    pub node_id: NodeId,
    /// The cluster's name: nodes of different clusters refuse each other.
    pub cluster: String,
    /// The cluster's shared secret.
    pub secret: Vec<u8>,
    /// Every node's address ("host:port"), this one included.
    pub peers: BTreeMap<NodeId, String>,
    /// The size of the pieces snapshots are sent in ([`SNAPSHOT_CHUNK`] unless a test wants
    /// many pieces).
    pub snapshot_chunk: usize,
    /// TLS on the links; plain TCP without.
    pub tls: Option<NetworkTls>,
    /// Faults injected on this node's requests and their replies (shared by every node of
    /// an in-process test cluster); none by default.
    #[cfg(feature = "fault-injection")]
    pub link_faults: Option<faults::LinkFaults>,
}

impl NetworkConfig {
    /// The settings of node `node_id` in the cluster `cluster` of `peers`, snapshots in
    /// pieces of [`SNAPSHOT_CHUNK`].
    pub fn new(
        node_id: NodeId,
        cluster: impl Into<String>,
        secret: impl Into<Vec<u8>>,
        peers: BTreeMap<NodeId, String>,
    ) -> NetworkConfig {
        NetworkConfig {
            node_id,
            cluster: cluster.into(),
            secret: secret.into(),
            peers,
            snapshot_chunk: SNAPSHOT_CHUNK,
            tls: None,
            #[cfg(feature = "fault-injection")]
            link_faults: None,
        }
    }
}

/// Proposals arriving from other nodes are handed to this; one result per proposal.
pub(crate) type ProposeHandler =
    Arc<dyn Fn(GroupId, Vec<Action>) -> BoxFuture<'static, Vec<Result<Response, ProposalRefused>>> + Send + Sync>;

/// Group changes arriving from other nodes are handed to this.
pub(crate) type ChangeHandler =
    Arc<dyn Fn(GroupId, GroupChange) -> BoxFuture<'static, Result<(), ChangeRefused>> + Send + Sync>;

/// Inquiries arriving from other nodes are handed to this; its bytes are the answer.
pub(crate) type InquiryHandler = Arc<dyn Fn(Vec<u8>) -> BoxFuture<'static, Vec<u8>> + Send + Sync>;

/// The node's side of the network: its connections, and the local groups that answer
/// requests. Cheap to clone.
#[derive(Clone)]
pub struct Network {
    inner: Arc<Inner>,
}

struct Inner {
    config: NetworkConfig,
    /// The address connections to peers are made from: the listener's, unless it is a
    /// wildcard.
    source: Option<IpAddr>,
    /// The connection to each peer, when there is one.
    links: Mutex<HashMap<NodeId, watch::Sender<Option<Arc<Link>>>>>,
    /// Local raft groups, registered as they start.
    groups: Mutex<BTreeMap<u64, Raft>>,
    proposals: OnceLock<ProposeHandler>,
    changes: OnceLock<ChangeHandler>,
    inquiries: OnceLock<InquiryHandler>,
    /// The peers this node dials (those with larger ids), as they become known, with the
    /// task that dials each.
    dialing: Mutex<BTreeMap<NodeId, (String, tokio::task::AbortHandle)>>,
    /// Each local group's members, as its membership log says.
    members: Mutex<BTreeMap<u64, BTreeSet<NodeId>>>,
    /// Snapshots being received.
    transfers: raft::Transfers,
    /// Nodes removed from every group: their connections are refused until a group counts
    /// them again.
    removed: Mutex<BTreeSet<NodeId>>,
    /// Cancelled by `shutdown`: no new dialing from then on, every connection ends.
    stopping: CancellationToken,
    tasks: TaskTracker,
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Network {
    /// Starts accepting connections on `listener` and dialing every peer with a larger id.
    pub fn start(config: NetworkConfig, listener: TcpListener) -> Network {
        let source = listener.local_addr().ok().map(|address| address.ip()).filter(|ip| !ip.is_unspecified());
        let network = Network::new(config, source);
        if let Some(tls) = &network.inner.config.tls {
            tls.server.watch(&network.inner.tasks, network.inner.stopping.clone());
        }
        network.inner.tasks.spawn(accept_loop(network.clone(), listener));
        for (&peer, address) in &network.inner.config.peers {
            network.add_peer(peer, address.clone());
        }
        network
    }

    /// A network with no connections and no tasks yet.
    fn new(config: NetworkConfig, source: Option<IpAddr>) -> Network {
        Network {
            inner: Arc::new(Inner {
                config,
                source,
                links: Mutex::new(HashMap::new()),
                groups: Mutex::new(BTreeMap::new()),
                proposals: OnceLock::new(),
                changes: OnceLock::new(),
                inquiries: OnceLock::new(),
                dialing: Mutex::new(BTreeMap::new()),
                members: Mutex::new(BTreeMap::new()),
                transfers: raft::Transfers::default(),
                removed: Mutex::new(BTreeSet::new()),
                stopping: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.config.node_id
    }

    fn config(&self) -> &NetworkConfig {
        &self.inner.config
    }

    fn tasks(&self) -> &TaskTracker {
        &self.inner.tasks
    }

    fn stopping(&self) -> &CancellationToken {
        &self.inner.stopping
    }

    /// Makes `peer` known at `address` (from the configuration, or from a group's
    /// membership as nodes join): the smaller id of a pair dials the larger, so this node
    /// starts dialing `peer` if its id is larger and it is not dialed yet.
    pub fn add_peer(&self, peer: NodeId, address: String) {
        if peer <= self.node_id() || address.is_empty() {
            return;
        }
        let mut dialing = lock(&self.inner.dialing);
        if dialing.contains_key(&peer) || self.inner.stopping.is_cancelled() {
            return;
        }
        tracing::info!(peer, %address, "dialing a new peer");
        let task = self.inner.tasks.spawn(dial_loop(self.clone(), peer, address.clone()));
        dialing.insert(peer, (address, task.abort_handle()));
    }

    /// Records `group`'s members (id → address): new peers are dialed, and a peer that no
    /// group counts among its members any more (a removed node) is dropped: its connection
    /// closed, no longer dialed. While any group's membership is not known yet, nobody is
    /// dropped.
    pub fn set_members(&self, group: GroupId, members: &[(NodeId, String)]) {
        for (id, address) in members {
            lock(&self.inner.removed).remove(id);
            self.add_peer(*id, address.clone());
        }
        let forgotten: Vec<NodeId> = {
            let mut known = lock(&self.inner.members);
            known.insert(group.0, members.iter().map(|(id, _)| *id).collect());
            let registered: Vec<u64> = lock(&self.inner.groups).keys().copied().collect();
            let all_known = registered.iter().all(|g| known.get(g).is_some_and(|set| !set.is_empty()));
            if !all_known {
                return;
            }
            let mut dialing = lock(&self.inner.dialing);
            let peers: BTreeSet<NodeId> =
                dialing.keys().copied().chain(lock(&self.inner.links).keys().copied()).collect();
            peers
                .into_iter()
                .filter(|peer| *peer != self.node_id() && !known.values().any(|set| set.contains(peer)))
                .inspect(|peer| {
                    if let Some((_, task)) = dialing.remove(peer) {
                        task.abort();
                    }
                })
                .collect()
        };
        for peer in forgotten {
            lock(&self.inner.removed).insert(peer);
            if let Some(link) = self.set_link(peer, None) {
                tracing::info!(peer, "the node is no longer a member of any group: connection closed");
                link.close();
            }
        }
    }

    /// The peers with a live connection, in increasing id order.
    pub fn connected_peers(&self) -> Vec<NodeId> {
        let mut peers: Vec<NodeId> =
            lock(&self.inner.links).iter().filter(|(_, link)| link.borrow().is_some()).map(|(id, _)| *id).collect();
        peers.sort_unstable();
        peers
    }

    /// Whether a connection to `peer` is up.
    pub fn is_connected(&self, peer: NodeId) -> bool {
        self.link(peer).is_some()
    }

    /// Makes `raft` answer the requests for `group`.
    pub fn register_group(&self, group: GroupId, raft: Raft) {
        lock(&self.inner.groups).insert(group.0, raft);
    }

    /// Makes `handler` take the proposals other nodes forward to this one.
    pub(crate) fn set_propose_handler(&self, handler: ProposeHandler) {
        let _ = self.inner.proposals.set(handler);
    }

    /// Makes `handler` take the group changes other nodes forward to this one.
    pub(crate) fn set_change_handler(&self, handler: ChangeHandler) {
        let _ = self.inner.changes.set(handler);
    }

    /// Makes `handler` answer the inquiries of other nodes (see [`Network::inquire`]).
    /// The first handler set stays.
    pub(crate) fn set_inquiry_handler(&self, handler: InquiryHandler) {
        let _ = self.inner.inquiries.set(handler);
    }

    /// Sends `question` to `peer`'s inquiry handler and waits for its answer, for at most
    /// `ttl`. Fails at once without a connection to the peer.
    pub async fn inquire(&self, peer: NodeId, question: Vec<u8>, ttl: Duration) -> Result<Vec<u8>, RpcError> {
        // The group is not read for an inquiry: the lobby's id stands in.
        match self.call(peer, GroupId(0), Request::Inquiry(question), ttl).await {
            Ok(Reply::Inquiry(answer)) => Ok(answer),
            Ok(other) => Err(rpc_failed(format!("unexpected reply to an inquiry: {other:?}"))),
            Err(error) => Err(error),
        }
    }

    /// The raft network of one group, for `Raft::new`.
    pub fn for_group(&self, group: GroupId) -> GroupNetwork {
        GroupNetwork { network: self.clone(), group }
    }

    /// Forwards proposals to `leader`, which leads `group`: one result per proposal.
    pub async fn forward(
        &self,
        leader: NodeId,
        group: GroupId,
        actions: Vec<Action>,
    ) -> Vec<Result<Response, ProposeError>> {
        let count = actions.len();
        let failed = |message: String| {
            (0..count).map(|_| Err(ProposeError::Forward { group, leader, message: message.clone() })).collect()
        };
        match self.call(leader, group, Request::Propose(actions), PROPOSE_TIMEOUT).await {
            Ok(Reply::Proposed(results)) if results.len() == count => {
                results.into_iter().map(|result| result.map_err(|refused| refused.into_error(group, leader))).collect()
            }
            Ok(Reply::Proposed(results)) => {
                failed(format!("the leader answered {} of {count} proposals", results.len()))
            }
            Ok(other) => failed(format!("unexpected reply to a proposal: {other:?}")),
            Err(error) => failed(error.to_string()),
        }
    }

    /// Sends a group change to `leader`, which leads `group`. `Err(None)`: the leader could
    /// not be asked (worth trying again).
    pub async fn change(
        &self,
        leader: NodeId,
        group: GroupId,
        change: GroupChange,
    ) -> Result<(), Result<ChangeRefused, RpcError>> {
        match self.call(leader, group, Request::Change(change), CHANGE_TIMEOUT).await {
            Ok(Reply::Changed(result)) => result.map_err(Ok),
            Ok(other) => Err(Err(rpc_failed(format!("unexpected reply to a change: {other:?}")))),
            Err(error) => Err(Err(error)),
        }
    }

    /// Asks `leader` for `group`'s read index (see [`consensus::read_index`]).
    pub async fn read_index(&self, leader: NodeId, group: GroupId) -> Result<u64, Result<ReadIndexFailure, RpcError>> {
        match self.call(leader, group, Request::Raft(RaftRequest::ReadIndex), PROPOSE_TIMEOUT).await {
            Ok(Reply::ReadIndex(result)) => result.map_err(Ok),
            Ok(other) => Err(Err(rpc_failed(format!("unexpected reply to a read index: {other:?}")))),
            Err(error) => Err(Err(error)),
        }
    }

    /// Closes every connection, stops dialing and accepting, and waits for every task of
    /// the network to end.
    pub async fn shutdown(&self) {
        {
            // Under the dialing lock, so that no dial loop starts after this.
            let _dialing = lock(&self.inner.dialing);
            self.inner.stopping.cancel();
        }
        let links: Vec<_> = lock(&self.inner.links).values().filter_map(|link| link.send_replace(None)).collect();
        for link in links {
            link.close();
        }
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
        lock(&self.inner.groups).clear();
    }

    fn link(&self, peer: NodeId) -> Option<Arc<Link>> {
        lock(&self.inner.links).get(&peer).and_then(|link| link.borrow().clone())
    }

    fn set_link(&self, peer: NodeId, link: Option<Arc<Link>>) -> Option<Arc<Link>> {
        let mut links = lock(&self.inner.links);
        let slot = links.entry(peer).or_insert_with(|| watch::channel(None).0);
        slot.send_replace(link)
    }

    /// Forgets `link` as `peer`'s connection, unless a newer one has replaced it.
    fn unset_link(&self, peer: NodeId, link: &Arc<Link>) {
        let mut links = lock(&self.inner.links);
        if let Some(slot) = links.get_mut(&peer) {
            slot.send_if_modified(|current| {
                if current.as_ref().is_some_and(|now| Arc::ptr_eq(now, link)) {
                    *current = None;
                    true
                } else {
                    false
                }
            });
        }
    }

    /// The fault rules this node's requests go through, if any (fault-injection builds).
    #[cfg(feature = "fault-injection")]
    pub fn link_faults(&self) -> Option<&faults::LinkFaults> {
        self.inner.config.link_faults.as_ref()
    }

    /// Sends `request` to `peer` and waits for its reply, for at most `ttl`: through the
    /// injected link faults, if there are any.
    async fn call(&self, peer: NodeId, group: GroupId, request: Request, ttl: Duration) -> Result<Reply, RpcError> {
        #[cfg(feature = "fault-injection")]
        if let Some(faults) = &self.inner.config.link_faults {
            let me = self.node_id();
            let started = tokio::time::Instant::now();
            if !faults.pass(me, peer, group, ttl).await {
                return Err(rpc_unreachable(format!("injected fault: the link to node {peer} is cut")));
            }
            let reply = self.send(peer, group, request, ttl.saturating_sub(started.elapsed())).await;
            if !faults.pass(peer, me, group, ttl.saturating_sub(started.elapsed())).await {
                return Err(rpc_failed(format!("injected fault: node {peer}'s reply was lost")));
            }
            return reply;
        }
        self.send(peer, group, request, ttl).await
    }

    /// Sends `request` to `peer` over the connection and waits for its reply, for at most
    /// `ttl`.
    async fn send(&self, peer: NodeId, group: GroupId, request: Request, ttl: Duration) -> Result<Reply, RpcError> {
        let Some(link) = self.link(peer) else {
            return Err(rpc_unreachable(format!("no connection to node {peer}")));
        };
        match tokio::time::timeout(ttl, link.call(group, request)).await {
            Ok(result) => result,
            Err(_) => {
                // A peer that vanished without closing the connection leaves reads hanging
                // forever: once it has been silent for long, drop the connection so that it
                // is dialed again.
                if link.silent_for() >= SILENCE_BEFORE_CLOSING {
                    tracing::warn!(peer, "peer silent; closing the connection");
                    link.close();
                }
                Err(rpc_failed(format!("node {peer} did not answer within {ttl:?}")))
            }
        }
    }

    /// Answers one request from a peer with the local group. A request still under way
    /// when the network stops is given up: a forwarded proposal may wait for a commit that
    /// needs the very links being closed, and [`Network::shutdown`] waits for every task.
    async fn answer(&self, group: u64, request: Request) -> Result<Reply, Unanswered> {
        if self.inner.stopping.is_cancelled() {
            return Err(Unanswered::Stopping);
        }
        tokio::select! {
            reply = self.answer_here(group, request) => reply,
            () = self.inner.stopping.cancelled() => Err(Unanswered::Stopping),
        }
    }

    async fn answer_here(&self, group: u64, request: Request) -> Result<Reply, Unanswered> {
        match request {
            Request::Raft(request) => {
                let raft = lock(&self.inner.groups).get(&group).cloned().ok_or(Unanswered::NoSuchGroup(group))?;
                self.answer_raft(&raft, request).await
            }
            Request::SnapshotChunk { transfer, offset, bytes } => {
                self.inner.transfers.receive(transfer, offset, bytes).map(|()| Reply::ChunkReceived)
            }
            Request::Propose(actions) => {
                let handler = self.inner.proposals.get().ok_or(Unanswered::Starting)?;
                Ok(Reply::Proposed(handler(GroupId(group), actions).await))
            }
            Request::Change(change) => {
                let handler = self.inner.changes.get().ok_or(Unanswered::Starting)?;
                Ok(Reply::Changed(handler(GroupId(group), change).await))
            }
            Request::Inquiry(question) => {
                let handler = self.inner.inquiries.get().ok_or(Unanswered::Starting)?;
                Ok(Reply::Inquiry(handler(question).await))
            }
        }
    }

    async fn answer_raft(&self, raft: &Raft, request: RaftRequest) -> Result<Reply, Unanswered> {
        let result = match request {
            RaftRequest::Append(rpc) => raft.append_entries(rpc).await.map(Reply::Append).map_err(consensus::fatal_of),
            RaftRequest::Vote(rpc) => raft.vote(rpc).await.map(Reply::Vote).map_err(consensus::fatal_of),
            RaftRequest::PreVote(rpc) => raft.pre_vote(rpc).await.map(Reply::Vote).map_err(consensus::fatal_of),
            RaftRequest::Snapshot { vote, meta, transfer } => {
                let data = self.inner.transfers.take(transfer)?;
                raft.install_full_snapshot(vote, Snapshot { meta, snapshot: data }).await.map(Reply::Snapshot)
            }
            RaftRequest::TransferLeader(rpc) => raft.handle_transfer_leader(rpc).await.map(Reply::TransferLeader),
            RaftRequest::ReadIndex => Ok(Reply::ReadIndex(consensus::read_index(raft).await)),
        };
        result.map_err(|fatal| {
            if consensus::is_stopped(&fatal) {
                Unanswered::RaftStopped
            } else {
                tracing::warn!(error = %fatal, "a peer's raft request failed here");
                Unanswered::RaftFailed
            }
        })
    }
}

async fn accept_loop(network: Network, listener: TcpListener) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = network.stopping().cancelled() => return,
        };
        match accepted {
            Ok((stream, address)) => {
                let Ok(permit) = Arc::clone(&handshakes).try_acquire_owned() else {
                    tracing::debug!(%address, "too many handshakes under way: connection closed");
                    continue;
                };
                let accepting = network.clone();
                network.tasks().spawn(async move {
                    let shaken = handshake::accept(accepting.config(), stream).await;
                    drop(permit);
                    match shaken {
                        Ok((peer, _)) if lock(&accepting.inner.removed).contains(&peer) => {
                            tracing::debug!(peer, %address, "refused a node removed from every group");
                        }
                        Ok((peer, stream)) => {
                            tracing::info!(peer, %address, "peer connected");
                            link::run(accepting, peer, stream).await;
                        }
                        Err(error) => {
                            tracing::warn!(%address, %error, "refused a connection");
                        }
                    }
                });
            }
            Err(error) => {
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(MIN_REDIAL).await;
            }
        }
    }
}

async fn dial_loop(network: Network, peer: NodeId, address: String) {
    let mut backoff = Backoff::new(MIN_REDIAL, MAX_REDIAL);
    while !network.stopping().is_cancelled() {
        match handshake::dial(network.config(), &address, network.inner.source).await {
            Ok((node, stream)) if node == peer => {
                tracing::info!(peer, %address, "connected to peer");
                backoff.reset();
                link::run(network.clone(), peer, stream).await;
                tracing::info!(peer, "connection to peer closed");
            }
            Ok((node, _)) => {
                tracing::warn!(peer, node, %address, "the address answers as another node");
            }
            Err(error) => {
                tracing::debug!(peer, %address, %error, "dialing failed");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(backoff.next_wait()) => {}
            () = network.stopping().cancelled() => return,
        }
    }
}
