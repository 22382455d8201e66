//! The network between pkd nodes: one TCP connection per pair of nodes, carrying the raft
//! messages of every group and forwarded proposals, as length-prefixed postcard frames.
//!
//! # Connections
//!
//! Of two nodes, the one with the smaller id dials the other, and redials with backoff
//! whenever the connection drops; the other only accepts. Either side sends requests on the
//! connection and answers the other's; each request carries an id that its response
//! repeats, so many requests are in flight at once.
//!
//! # Authentication
//!
//! Every node of a cluster holds the same secret. The dialer sends a random nonce, the
//! acceptor answers with its own nonce and an HMAC-SHA256 over both nonces, and the dialer
//! proves itself the same way; nobody sends the secret, and a replayed handshake fails
//! because the other side's nonce is new. Until both proofs check out, nothing else is read.
//!
//! # Frames
//!
//! A frame is a big-endian `u32` length and that many bytes of postcard. A length above
//! [`MAX_FRAME`] closes the connection; a frame that does not decode closes it too.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use hmac::{Hmac, KeyInit, Mac};
use pkd_raft::{Action, Response};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::consensus::{
    AppendRequest, AppendResponse, BasicNode, GroupId, NodeId, OptionalSend, RPCOption, Raft, RaftNetworkFactory,
    RaftNetworkV2, ReadIndexFailure, ReplicationClosed, RpcError, Snapshot, SnapshotMeta, SnapshotResponse,
    StreamingError, TransferLeaderRequest, TransferLeaderResponse, Vote, VoteRequest, VoteResponse, rpc_failed,
    rpc_unreachable, streaming_error,
};

/// The largest frame accepted: room for a full append (openraft sends up to 300 entries of
/// up to 256 commands) many times over; snapshots travel in pieces.
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// Snapshots travel in pieces of this size, so that a large one does not hold up the
/// heartbeats of the other groups sharing the connection.
pub const SNAPSHOT_CHUNK: usize = 1024 * 1024;

/// The largest snapshot a node accepts.
pub const MAX_SNAPSHOT: u64 = 4 * 1024 * 1024 * 1024;

/// A snapshot being received is dropped if no piece of it came for this long.
const SNAPSHOT_IDLE: Duration = Duration::from_secs(60);

/// How long a handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// The read buffer of a connection.
const READ_BUFFER: usize = 64 * 1024;

/// Frames waiting to be written on one connection.
const OUTGOING_CAPACITY: usize = 1_024;

const MIN_REDIAL: Duration = Duration::from_millis(50);
const MAX_REDIAL: Duration = Duration::from_secs(2);

/// A connection on which a request timed out and nothing at all has come for this long is
/// dropped and dialed again: the peer vanished without closing it. A peer that is only slow
/// (a long fsync, an overloaded machine) keeps its connection, and with it the answers to
/// the requests still in flight on it.
const SILENCE_BEFORE_CLOSING: Duration = Duration::from_secs(2);

/// How long a forwarded proposal may take.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);

type HmacSha256 = Hmac<Sha256>;
type Nonce = [u8; 32];

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
        NetworkConfig { node_id, cluster: cluster.into(), secret: secret.into(), peers, snapshot_chunk: SNAPSHOT_CHUNK }
    }
}

/// What one node asks another.
#[derive(Debug, Serialize, Deserialize)]
enum Request {
    Append(AppendRequest),
    Vote(VoteRequest),
    PreVote(VoteRequest),
    /// One piece of a snapshot on its way, at `offset` in it (pieces come in order, each
    /// after the previous one was acknowledged, so other groups' frames pass in between).
    SnapshotChunk {
        transfer: u64,
        offset: u64,
        bytes: Vec<u8>,
    },
    /// Install the snapshot whose pieces came under `transfer`.
    Snapshot {
        vote: Vote,
        meta: SnapshotMeta,
        transfer: u64,
    },
    TransferLeader(TransferLeaderRequest),
    /// Proposals for a group this node leads, from a node that does not, gathered while
    /// the previous ones were in flight.
    Propose(Vec<Action>),
    /// A membership or leadership change for a group this node leads.
    Change(GroupChange),
    /// The read index of a group this node leads, for a linearizable read elsewhere.
    ReadIndex,
}

/// The answer to a [`Request`], in the same variant.
#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Append(AppendResponse),
    Vote(VoteResponse),
    Snapshot(SnapshotResponse),
    ChunkReceived,
    TransferLeader(TransferLeaderResponse),
    /// One result per proposal, in order.
    Proposed(Vec<Result<Response, String>>),
    Changed(Result<(), ChangeFailure>),
    ReadIndex(Result<u64, ReadIndexFailure>),
}

/// A change to one group that only its leader can make (the admin API's operations).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupChange {
    /// Add a node, reachable at `address`, as a learner; done once it has caught up.
    AddLearner { node: NodeId, address: String },
    /// Make a learner a voter.
    Promote { node: NodeId },
    /// Take a node out of the group.
    Remove { node: NodeId },
    /// Hand leadership to a voter.
    TransferLeader { to: NodeId },
}

/// Why a [`GroupChange`] was not made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ChangeFailure {
    /// The change may succeed if sent again (to the new leader, once one is known).
    pub retry: bool,
    pub message: String,
}

#[derive(Debug, Serialize, Deserialize)]
enum Frame {
    Request { id: u64, group: u64, request: Request },
    Response { id: u64, reply: Result<Reply, String> },
}

#[derive(Debug, Serialize, Deserialize)]
enum Handshake {
    Hello { cluster: String, node: NodeId, nonce: Nonce },
    Welcome { node: NodeId, nonce: Nonce, proof: Vec<u8> },
    Proof { proof: Vec<u8> },
}

/// Proposals arriving from other nodes are handed to this; one result per proposal.
pub(crate) type ProposeHandler =
    Arc<dyn Fn(GroupId, Vec<Action>) -> BoxFuture<'static, Vec<Result<Response, String>>> + Send + Sync>;

/// Group changes arriving from other nodes are handed to this.
pub(crate) type ChangeHandler =
    Arc<dyn Fn(GroupId, GroupChange) -> BoxFuture<'static, Result<(), ChangeFailure>> + Send + Sync>;

/// How long a forwarded group change may take (adding a learner waits for it to catch up).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);

/// The node's side of the network: its connections, and the local groups that answer
/// requests. Cheap to clone.
#[derive(Clone)]
pub struct Network {
    inner: Arc<Inner>,
}

struct Inner {
    config: NetworkConfig,
    /// The connection to each peer, when there is one.
    links: Mutex<HashMap<NodeId, watch::Sender<Option<Arc<Link>>>>>,
    /// Local raft groups, registered as they start.
    groups: Mutex<BTreeMap<u64, Raft>>,
    proposals: OnceLock<ProposeHandler>,
    changes: OnceLock<ChangeHandler>,
    /// The peers this node dials (those with larger ids), as they become known, with the
    /// task that dials each.
    dialing: Mutex<BTreeMap<NodeId, (String, tokio::task::AbortHandle)>>,
    /// Each local group's members, as its membership log says.
    members: Mutex<BTreeMap<u64, BTreeSet<NodeId>>>,
    /// Snapshots being received, by transfer id: the bytes so far and when the last piece
    /// came.
    transfers: Mutex<HashMap<u64, (Vec<u8>, Instant)>>,
    /// Nodes removed from every group: their connections are refused until a group counts
    /// them again.
    removed: Mutex<BTreeSet<NodeId>>,
    /// Set by `shutdown`: no new dialing from then on.
    stopped: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Network {
    /// Starts accepting connections on `listener` and dialing every peer with a larger id.
    pub fn start(config: NetworkConfig, listener: TcpListener) -> Network {
        let network = Network::new(config);
        lock(&network.inner.tasks).push(tokio::spawn(accept_loop(network.clone(), listener)));
        for (&peer, address) in &network.inner.config.peers {
            network.add_peer(peer, address.clone());
        }
        network
    }

    /// Makes `peer` known at `address` (from the configuration, or from a group's
    /// membership as nodes join): the smaller id of a pair dials the larger, so this node
    /// starts dialing `peer` if its id is larger and it is not dialed yet.
    pub fn add_peer(&self, peer: NodeId, address: String) {
        if peer <= self.node_id() || address.is_empty() {
            return;
        }
        let mut dialing = lock(&self.inner.dialing);
        if dialing.contains_key(&peer) || self.inner.stopped.load(Ordering::SeqCst) {
            return;
        }
        tracing::info!(peer, %address, "dialing a new peer");
        let task = tokio::spawn(dial_loop(self.clone(), peer, address.clone()));
        dialing.insert(peer, (address, task.abort_handle()));
        lock(&self.inner.tasks).push(task);
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

    /// A network with no connections and no tasks yet.
    fn new(config: NetworkConfig) -> Network {
        Network {
            inner: Arc::new(Inner {
                config,
                links: Mutex::new(HashMap::new()),
                groups: Mutex::new(BTreeMap::new()),
                proposals: OnceLock::new(),
                changes: OnceLock::new(),
                dialing: Mutex::new(BTreeMap::new()),
                members: Mutex::new(BTreeMap::new()),
                removed: Mutex::new(BTreeSet::new()),
                transfers: Mutex::new(HashMap::new()),
                stopped: AtomicBool::new(false),
                tasks: Mutex::new(Vec::new()),
            }),
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.inner.config.node_id
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

    /// Sends a group change to `leader`, which leads `group`.
    pub async fn change(&self, leader: NodeId, group: GroupId, change: GroupChange) -> Result<(), ChangeFailure> {
        let reply = self
            .call(leader, group, Request::Change(change), CHANGE_TIMEOUT)
            .await
            .map_err(|error| ChangeFailure { retry: true, message: error.to_string() })?;
        match reply {
            Reply::Changed(result) => result,
            other => Err(ChangeFailure { retry: false, message: format!("unexpected reply to a change: {other:?}") }),
        }
    }

    /// The raft network of one group, for `Raft::new`.
    pub fn for_group(&self, group: GroupId) -> GroupNetwork {
        GroupNetwork { network: self.clone(), group }
    }

    /// Forwards proposals to `leader`, which leads `group`: one result per proposal, or
    /// why none got through.
    pub async fn forward(
        &self,
        leader: NodeId,
        group: GroupId,
        actions: Vec<Action>,
    ) -> Result<Vec<Result<Response, String>>, String> {
        let reply = self
            .call(leader, group, Request::Propose(actions), PROPOSE_TIMEOUT)
            .await
            .map_err(|error| error.to_string())?;
        match reply {
            Reply::Proposed(response) => Ok(response),
            other => Err(format!("unexpected reply to a proposal: {other:?}")),
        }
    }

    /// Asks `leader` for `group`'s read index (see [`crate::consensus::read_index`]).
    pub async fn read_index(&self, leader: NodeId, group: GroupId) -> Result<u64, ReadIndexFailure> {
        let reply = self
            .call(leader, group, Request::ReadIndex, PROPOSE_TIMEOUT)
            .await
            .map_err(|error| ReadIndexFailure::Unavailable(error.to_string()))?;
        match reply {
            Reply::ReadIndex(result) => result,
            other => Err(ReadIndexFailure::Unavailable(format!("unexpected reply to a read index: {other:?}"))),
        }
    }

    /// Whether a connection to `peer` is up.
    pub fn is_connected(&self, peer: NodeId) -> bool {
        self.link(peer).is_some()
    }

    /// Closes every connection and stops dialing and accepting.
    pub async fn shutdown(&self) {
        {
            // Under the dialing lock, so that no dial loop starts after the tasks are taken.
            let _dialing = lock(&self.inner.dialing);
            self.inner.stopped.store(true, Ordering::SeqCst);
        }
        let tasks: Vec<_> = lock(&self.inner.tasks).drain(..).collect();
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        let links: Vec<_> = lock(&self.inner.links).values().filter_map(|link| link.send_replace(None)).collect();
        for link in links {
            link.close();
        }
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

    /// Sends `request` to `peer` and waits for its reply, for at most `ttl`.
    async fn call(&self, peer: NodeId, group: GroupId, request: Request, ttl: Duration) -> Result<Reply, RpcError> {
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

    /// Adds one piece to a snapshot being received. Pieces must come in order; a transfer
    /// idle for [`SNAPSHOT_IDLE`] is dropped.
    fn receive_chunk(&self, transfer: u64, offset: u64, bytes: Vec<u8>) -> Result<(), String> {
        let mut transfers = lock(&self.inner.transfers);
        transfers.retain(|_, (_, last)| last.elapsed() < SNAPSHOT_IDLE);
        let (data, last) = transfers.entry(transfer).or_insert_with(|| (Vec::new(), Instant::now()));
        if data.len() as u64 != offset {
            let held = data.len();
            transfers.remove(&transfer);
            return Err(format!("snapshot piece at {offset}, but {held} bytes came before it"));
        }
        if offset + bytes.len() as u64 > MAX_SNAPSHOT {
            transfers.remove(&transfer);
            return Err(format!("snapshot over {MAX_SNAPSHOT} bytes"));
        }
        data.extend_from_slice(&bytes);
        *last = Instant::now();
        Ok(())
    }

    /// Answers one request from a peer with the local group.
    async fn answer(&self, group: u64, request: Request) -> Result<Reply, String> {
        if let Request::Propose(actions) = request {
            let Some(handler) = self.inner.proposals.get() else {
                return Err("this node takes no proposals yet".to_owned());
            };
            return Ok(Reply::Proposed(handler(GroupId(group), actions).await));
        }
        if let Request::Change(change) = request {
            let Some(handler) = self.inner.changes.get() else {
                return Err("this node takes no group changes yet".to_owned());
            };
            return Ok(Reply::Changed(handler(GroupId(group), change).await));
        }
        let raft = lock(&self.inner.groups).get(&group).cloned();
        let Some(raft) = raft else {
            return Err(format!("no group {group} on node {}", self.node_id()));
        };
        let failed = |error: &dyn std::fmt::Display| error.to_string();
        match request {
            Request::Append(rpc) => raft.append_entries(rpc).await.map(Reply::Append).map_err(|e| failed(&e)),
            Request::Vote(rpc) => raft.vote(rpc).await.map(Reply::Vote).map_err(|e| failed(&e)),
            Request::PreVote(rpc) => raft.pre_vote(rpc).await.map(Reply::Vote).map_err(|e| failed(&e)),
            Request::SnapshotChunk { transfer, offset, bytes } => {
                self.receive_chunk(transfer, offset, bytes).map(|()| Reply::ChunkReceived)
            }
            Request::Snapshot { vote, meta, transfer } => {
                let Some((data, _)) = lock(&self.inner.transfers).remove(&transfer) else {
                    return Err(format!("no snapshot transfer {transfer} under way"));
                };
                raft.install_full_snapshot(vote, Snapshot { meta, snapshot: data })
                    .await
                    .map(Reply::Snapshot)
                    .map_err(|e| failed(&e))
            }
            Request::TransferLeader(rpc) => {
                raft.handle_transfer_leader(rpc).await.map(Reply::TransferLeader).map_err(|e| failed(&e))
            }
            Request::ReadIndex => Ok(Reply::ReadIndex(crate::consensus::read_index(&raft).await)),
            Request::Propose(_) | Request::Change(_) => Err("handled above".to_owned()),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One live connection to a peer.
struct Link {
    peer: NodeId,
    outgoing: mpsc::Sender<Frame>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Result<Reply, String>>>>,
    next_id: AtomicU64,
    /// When the connection was made, and how long after that its last frame came (ms).
    opened: Instant,
    last_heard: AtomicU64,
    /// Dropping it (or sending) ends the connection's tasks.
    closed: watch::Sender<bool>,
}

impl Link {
    async fn call(&self, group: GroupId, request: Request) -> Result<Reply, RpcError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = oneshot::channel();
        lock(&self.pending).insert(id, reply);
        // Forgets the request if the caller gives up (a timeout drops this future), so
        // that unanswered requests do not pile up on a long-lived connection.
        let _forget = Forget { link: self, id };
        let frame = Frame::Request { id, group: group.0, request };
        let lost = || rpc_unreachable(format!("connection to node {} lost", self.peer));
        if self.outgoing.send(frame).await.is_err() {
            return Err(lost());
        }
        let result = answer.await;
        match result {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(remote)) => Err(rpc_failed(format!("node {}: {remote}", self.peer))),
            Err(_) => Err(lost()),
        }
    }

    /// Notes that a frame came from the peer.
    fn heard(&self) {
        let since_opened = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_heard.store(since_opened, Ordering::Relaxed);
    }

    /// How long since the peer's last frame (or since the connection was made).
    fn silent_for(&self) -> Duration {
        self.opened.elapsed().saturating_sub(Duration::from_millis(self.last_heard.load(Ordering::Relaxed)))
    }

    fn close(&self) {
        let _ = self.closed.send(true);
        lock(&self.pending).clear();
    }
}

/// Removes a request from its link's pending table when dropped.
struct Forget<'a> {
    link: &'a Link,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(&self.link.pending).remove(&self.id);
    }
}

async fn accept_loop(network: Network, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, address)) => {
                let network = network.clone();
                tokio::spawn(async move {
                    match accept_handshake(&network, stream).await {
                        Ok((peer, _)) if lock(&network.inner.removed).contains(&peer) => {
                            tracing::debug!(peer, %address, "refused a node removed from every group");
                        }
                        Ok((peer, stream)) => {
                            tracing::info!(peer, %address, "peer connected");
                            run_connection(network, peer, stream).await;
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
    let mut backoff = MIN_REDIAL;
    loop {
        match dial(&network, &address).await {
            Ok((node, stream)) if node == peer => {
                tracing::info!(peer, %address, "connected to peer");
                backoff = MIN_REDIAL;
                run_connection(network.clone(), peer, stream).await;
                tracing::info!(peer, "connection to peer closed");
            }
            Ok((node, _)) => {
                tracing::warn!(peer, node, %address, "the address answers as another node");
            }
            Err(error) => {
                tracing::debug!(peer, %address, %error, "dialing failed");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_REDIAL);
    }
}

async fn dial(network: &Network, address: &str) -> io::Result<(NodeId, TcpStream)> {
    let mut stream = TcpStream::connect(address).await?;
    stream.set_nodelay(true)?;
    let peer = tokio::time::timeout(HANDSHAKE_TIMEOUT, dial_handshake(network, &mut stream))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"))??;
    Ok((peer, stream))
}

fn nonce() -> io::Result<Nonce> {
    let mut nonce = [0; 32];
    getrandom::fill(&mut nonce).map_err(|error| io::Error::other(error.to_string()))?;
    Ok(nonce)
}

/// HMAC over the role and both nonces: the two sides' proofs differ, and both are new
/// for every connection.
fn proof(secret: &[u8], role: &[u8], dialer: &Nonce, acceptor: &Nonce) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC accepts keys of any length");
    mac.update(role);
    mac.update(dialer);
    mac.update(acceptor);
    mac
}

fn refused(message: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, message.into())
}

async fn dial_handshake(network: &Network, stream: &mut TcpStream) -> io::Result<NodeId> {
    let config = &network.inner.config;
    let mine = nonce()?;
    let hello = Handshake::Hello { cluster: config.cluster.clone(), node: config.node_id, nonce: mine };
    write_frame(stream, &hello).await?;
    stream.flush().await?;
    let Handshake::Welcome { node, nonce, proof: acceptor_proof } = read_frame(stream).await? else {
        return Err(refused("expected a welcome"));
    };
    proof(&config.secret, b"acceptor", &mine, &nonce)
        .verify_slice(&acceptor_proof)
        .map_err(|_| refused("the peer does not know the cluster secret"))?;
    let answer =
        Handshake::Proof { proof: proof(&config.secret, b"dialer", &mine, &nonce).finalize().into_bytes().to_vec() };
    write_frame(stream, &answer).await?;
    stream.flush().await?;
    Ok(node)
}

async fn accept_handshake(network: &Network, mut stream: TcpStream) -> io::Result<(NodeId, TcpStream)> {
    stream.set_nodelay(true)?;
    let peer = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let config = &network.inner.config;
        let Handshake::Hello { cluster, node, nonce: theirs } = read_frame(&mut stream).await? else {
            return Err(refused("expected a hello"));
        };
        if cluster != config.cluster {
            return Err(refused(format!("peer is in cluster {cluster:?}")));
        }
        if node >= config.node_id {
            return Err(refused(format!("node {node} must wait for node {} to dial it", config.node_id)));
        }
        let mine = nonce()?;
        let welcome = Handshake::Welcome {
            node: config.node_id,
            nonce: mine,
            proof: proof(&config.secret, b"acceptor", &theirs, &mine).finalize().into_bytes().to_vec(),
        };
        write_frame(&mut stream, &welcome).await?;
        stream.flush().await?;
        let Handshake::Proof { proof: dialer_proof } = read_frame(&mut stream).await? else {
            return Err(refused("expected a proof"));
        };
        proof(&config.secret, b"dialer", &theirs, &mine)
            .verify_slice(&dialer_proof)
            .map_err(|_| refused("the peer does not know the cluster secret"))?;
        Ok(node)
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"))??;
    Ok((peer, stream))
}

/// Serves one authenticated connection until it drops.
async fn run_connection(network: Network, peer: NodeId, stream: TcpStream) {
    let (reader, writer) = stream.into_split();
    let (outgoing, queue) = mpsc::channel(OUTGOING_CAPACITY);
    let (closed, mut closing) = watch::channel(false);
    let link = Arc::new(Link {
        peer,
        outgoing,
        pending: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(0),
        opened: Instant::now(),
        last_heard: AtomicU64::new(0),
        closed,
    });
    if let Some(old) = network.set_link(peer, Some(Arc::clone(&link))) {
        old.close();
    }
    let writing = tokio::spawn(write_loop(writer, queue));
    tokio::select! {
        result = read_loop(&network, &link, reader) => {
            if let Err(error) = result {
                tracing::debug!(peer, %error, "connection read failed");
            }
        }
        _ = closing.wait_for(|closed| *closed) => {}
    }
    writing.abort();
    link.close();
    // Unregister only if a newer connection has not replaced this one.
    let mut links = lock(&network.inner.links);
    if let Some(slot) = links.get_mut(&peer) {
        slot.send_if_modified(|current| {
            if current.as_ref().is_some_and(|now| Arc::ptr_eq(now, &link)) {
                *current = None;
                true
            } else {
                false
            }
        });
    }
}

async fn read_loop(network: &Network, link: &Arc<Link>, reader: tokio::net::tcp::OwnedReadHalf) -> io::Result<()> {
    // Buffered: one read takes in every frame that has arrived, not two reads per frame.
    let mut reader = BufReader::with_capacity(READ_BUFFER, reader);
    loop {
        let frame = read_frame::<Frame>(&mut reader).await?;
        link.heard();
        match frame {
            Frame::Request { id, group, request } => {
                let network = network.clone();
                let outgoing = link.outgoing.clone();
                tokio::spawn(async move {
                    let reply = network.answer(group, request).await;
                    let _ = outgoing.send(Frame::Response { id, reply }).await;
                });
            }
            Frame::Response { id, reply } => {
                if let Some(waiting) = lock(&link.pending).remove(&id) {
                    let _ = waiting.send(reply);
                }
            }
        }
    }
}

async fn write_loop(writer: tokio::net::tcp::OwnedWriteHalf, mut queue: mpsc::Receiver<Frame>) {
    let mut writer = BufWriter::new(writer);
    while let Some(frame) = queue.recv().await {
        let mut result = write_frame(&mut writer, &frame).await;
        // Write whatever else is waiting before one flush.
        while result.is_ok() {
            match queue.try_recv() {
                Ok(frame) => result = write_frame(&mut writer, &frame).await,
                Err(_) => break,
            }
        }
        if let Err(error) = result.and(writer.flush().await) {
            tracing::debug!(%error, "connection write failed");
            return;
        }
    }
}

async fn write_frame<W, T>(writer: &mut W, value: &T) -> io::Result<()>
where
    W: AsyncWriteExt + Unpin,
    T: Serialize,
{
    let bytes = postcard::to_allocvec(value).map_err(io::Error::other)?;
    if bytes.len() > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("frame of {} bytes is over the limit", bytes.len()),
        ));
    }
    let length = u32::try_from(bytes.len()).map_err(io::Error::other)?;
    writer.write_all(&length.to_be_bytes()).await?;
    writer.write_all(&bytes).await
}

async fn read_frame<T>(reader: &mut (impl AsyncReadExt + Unpin)) -> io::Result<T>
where
    T: for<'de> Deserialize<'de>,
{
    let length = reader.read_u32().await? as usize;
    if length > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {length} bytes announced, over the limit"),
        ));
    }
    let mut bytes = vec![0; length];
    reader.read_exact(&mut bytes).await?;
    postcard::from_bytes(&bytes).map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))
}

/// The raft network of one group: requests to a peer go over the node pair's connection.
#[derive(Clone)]
pub struct GroupNetwork {
    network: Network,
    group: GroupId,
}

/// The client for one peer in one group.
pub struct PeerClient {
    network: Network,
    group: GroupId,
    peer: NodeId,
}

impl RaftNetworkFactory<crate::consensus::TypeConfig> for GroupNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        // A member added at run time is learned here, on the leader that replicates to it.
        self.network.add_peer(target, node.addr.clone());
        PeerClient { network: self.network.clone(), group: self.group, peer: target }
    }
}

fn unexpected(reply: Reply) -> RpcError {
    rpc_failed(format!("unexpected reply {reply:?}"))
}

impl RaftNetworkV2<crate::consensus::TypeConfig> for PeerClient {
    type SnapshotData = Vec<u8>;

    async fn append_entries(&mut self, rpc: AppendRequest, option: RPCOption) -> Result<AppendResponse, RpcError> {
        let reply = self.network.call(self.peer, self.group, Request::Append(rpc), option.hard_ttl()).await?;
        match reply {
            Reply::Append(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest, option: RPCOption) -> Result<VoteResponse, RpcError> {
        let reply = self.network.call(self.peer, self.group, Request::Vote(rpc), option.hard_ttl()).await?;
        match reply {
            Reply::Vote(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }

    async fn pre_vote(&mut self, rpc: VoteRequest, option: RPCOption) -> Result<VoteResponse, RpcError> {
        let reply = self.network.call(self.peer, self.group, Request::PreVote(rpc), option.hard_ttl()).await?;
        match reply {
            Reply::Vote(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse, StreamingError> {
        let network = self.network.clone();
        let (peer, group) = (self.peer, self.group);
        let chunk = network.inner.config.snapshot_chunk.clamp(1, MAX_FRAME / 2);
        let send = async move {
            let deadline = tokio::time::Instant::now() + option.hard_ttl();
            let mut transfer = [0; 8];
            getrandom::fill(&mut transfer).map_err(|error| rpc_failed(error.to_string()))?;
            let transfer = u64::from_le_bytes(transfer);
            let data = snapshot.snapshot;
            // Even an empty snapshot sends one piece, which opens the transfer.
            let mut offset = 0;
            loop {
                let end = (offset + chunk).min(data.len());
                let request =
                    Request::SnapshotChunk { transfer, offset: offset as u64, bytes: data[offset..end].to_vec() };
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match network.call(peer, group, request, left).await? {
                    Reply::ChunkReceived => {}
                    other => return Err(unexpected(other)),
                }
                offset = end;
                if offset >= data.len() {
                    break;
                }
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            network.call(peer, group, Request::Snapshot { vote, meta: snapshot.meta, transfer }, left).await
        };
        let reply = tokio::select! {
            reply = send => reply.map_err(streaming_error)?,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        match reply {
            Reply::Snapshot(response) => Ok(response),
            other => Err(streaming_error(unexpected(other))),
        }
    }

    async fn transfer_leader(
        &mut self,
        request: TransferLeaderRequest,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse, RpcError> {
        let reply =
            self.network.call(self.peer, self.group, Request::TransferLeader(request), option.hard_ttl()).await?;
        match reply {
            Reply::TransferLeader(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(node_id: NodeId, secret: &[u8]) -> NetworkConfig {
        NetworkConfig::new(node_id, "test", secret, BTreeMap::new())
    }

    async fn pair(
        dialer_secret: &[u8],
        acceptor_secret: &[u8],
    ) -> io::Result<(io::Result<NodeId>, io::Result<NodeId>)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let acceptor = Network::new(config(2, acceptor_secret));
        let dialer = Network::new(config(1, dialer_secret));
        let accepting = tokio::spawn(async move {
            let (stream, _) = listener.accept().await?;
            accept_handshake(&acceptor, stream).await.map(|(peer, _)| peer)
        });
        let dialed = dial(&dialer, &address.to_string()).await.map(|(peer, _)| peer);
        let accepted = accepting.await.map_err(io::Error::other)?;
        Ok((dialed, accepted))
    }

    #[tokio::test]
    async fn a_connection_is_silent_from_its_last_frame_on() {
        let (outgoing, _queue) = mpsc::channel(1);
        let link = Link {
            peer: 2,
            outgoing,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            opened: Instant::now(),
            last_heard: AtomicU64::new(0),
            closed: watch::channel(false).0,
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(link.silent_for() >= Duration::from_millis(200), "silent since it was opened");
        link.heard();
        assert!(link.silent_for() < Duration::from_millis(200), "a frame ends the silence");
    }

    #[tokio::test]
    async fn snapshot_pieces_are_put_together_in_order_only() {
        let network = Network::new(config(1, b"secret"));
        network.receive_chunk(7, 0, vec![1, 2, 3]).unwrap();
        network.receive_chunk(7, 3, vec![4]).unwrap();
        assert_eq!(lock(&network.inner.transfers).get(&7).map(|(data, _)| data.clone()), Some(vec![1, 2, 3, 4]));
        // A piece out of order drops the transfer: the sender starts again.
        let error = network.receive_chunk(7, 9, vec![5]).unwrap_err();
        assert!(error.contains("at 9, but 4 bytes came before it"), "{error}");
        assert!(lock(&network.inner.transfers).get(&7).is_none());
        network.receive_chunk(8, 0, Vec::new()).unwrap();
        assert_eq!(lock(&network.inner.transfers).get(&8).map(|(data, _)| data.len()), Some(0));
    }

    #[tokio::test]
    async fn nodes_with_the_same_secret_shake_hands() -> io::Result<()> {
        let (dialed, accepted) = pair(b"s3cret", b"s3cret").await?;
        assert_eq!(dialed?, 2);
        assert_eq!(accepted?, 1);
        Ok(())
    }

    #[tokio::test]
    async fn a_wrong_secret_is_refused_on_both_sides() -> io::Result<()> {
        let (dialed, accepted) = pair(b"guess", b"s3cret").await?;
        assert_eq!(dialed.map_err(|error| error.kind()), Err(io::ErrorKind::PermissionDenied));
        assert!(accepted.is_err());
        Ok(())
    }

    #[tokio::test]
    async fn oversized_frames_are_refused() {
        let mut bytes: &[u8] = &(u32::MAX).to_be_bytes();
        let result = read_frame::<Frame>(&mut bytes).await;
        assert_eq!(result.map_err(|error| error.kind()).err(), Some(io::ErrorKind::InvalidData));
    }
}
