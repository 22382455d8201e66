//! openraft's side of the network: each group's raft talks to a peer through the node
//! pair's one connection. Snapshots travel in pieces, each acknowledged before the next,
//! so that a large one does not hold up the heartbeats of the other groups.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::wire::{MAX_FRAME, RaftRequest, Reply, Request, Unanswered};
use super::{Network, lock};
use crate::replication::consensus::{
    AppendRequest, AppendResponse, BasicNode, GroupId, NodeId, OptionalSend, RPCOption, RaftNetworkFactory,
    RaftNetworkV2, ReplicationClosed, RpcError, Snapshot, SnapshotResponse, StreamingError, TransferLeaderRequest,
    TransferLeaderResponse, TypeConfig, Vote, VoteRequest, VoteResponse, rpc_failed, streaming_error,
};

/// Snapshots travel in pieces of this size by default.
pub const SNAPSHOT_CHUNK: usize = 1024 * 1024;

/// The largest snapshot a node accepts.
pub const MAX_SNAPSHOT: u64 = 4 * 1024 * 1024 * 1024;

/// A snapshot being received is dropped if no piece of it came for this long.
const SNAPSHOT_IDLE: Duration = Duration::from_secs(60);

/// The snapshots being received, by transfer id: the bytes so far and when the last piece
/// came.
#[derive(Default)]
pub(super) struct Transfers {
    receiving: Mutex<HashMap<u64, (Vec<u8>, Instant)>>,
}

impl Transfers {
    /// Adds one piece to a snapshot being received. Pieces must come in order; a transfer
    /// idle for [`SNAPSHOT_IDLE`] is dropped.
    pub(super) fn receive(&self, transfer: u64, offset: u64, bytes: Vec<u8>) -> Result<(), Unanswered> {
        let mut transfers = lock(&self.receiving);
        transfers.retain(|_, (_, last)| last.elapsed() < SNAPSHOT_IDLE);
        let (data, last) = transfers.entry(transfer).or_insert_with(|| (Vec::new(), Instant::now()));
        let held = data.len() as u64;
        if held != offset {
            transfers.remove(&transfer);
            return Err(Unanswered::PieceOutOfOrder { offset, held });
        }
        if offset + bytes.len() as u64 > MAX_SNAPSHOT {
            transfers.remove(&transfer);
            return Err(Unanswered::SnapshotTooLarge(MAX_SNAPSHOT));
        }
        data.extend_from_slice(&bytes);
        *last = Instant::now();
        Ok(())
    }

    /// The whole snapshot of `transfer`, once its last piece came.
    pub(super) fn take(&self, transfer: u64) -> Result<Vec<u8>, Unanswered> {
        lock(&self.receiving).remove(&transfer).map(|(data, _)| data).ok_or(Unanswered::NoSuchTransfer(transfer))
    }

    #[cfg(test)]
    fn held(&self, transfer: u64) -> Option<Vec<u8>> {
        lock(&self.receiving).get(&transfer).map(|(data, _)| data.clone())
    }
}

/// The raft network of one group: requests to a peer go over the node pair's connection.
#[derive(Clone)]
pub struct GroupNetwork {
    pub(super) network: Network,
    pub(super) group: GroupId,
}

/// The client for one peer in one group.
pub struct PeerClient {
    network: Network,
    group: GroupId,
    peer: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetwork {
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

impl PeerClient {
    async fn call(&self, request: Request, ttl: Duration) -> Result<Reply, RpcError> {
        self.network.call(self.peer, self.group, request, ttl).await
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = Vec<u8>;

    async fn append_entries(&mut self, rpc: AppendRequest, option: RPCOption) -> Result<AppendResponse, RpcError> {
        match self.call(Request::Raft(RaftRequest::Append(rpc)), option.hard_ttl()).await? {
            Reply::Append(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest, option: RPCOption) -> Result<VoteResponse, RpcError> {
        match self.call(Request::Raft(RaftRequest::Vote(rpc)), option.hard_ttl()).await? {
            Reply::Vote(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }

    async fn pre_vote(&mut self, rpc: VoteRequest, option: RPCOption) -> Result<VoteResponse, RpcError> {
        match self.call(Request::Raft(RaftRequest::PreVote(rpc)), option.hard_ttl()).await? {
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
        let chunk = network.config().snapshot_chunk.clamp(1, MAX_FRAME / 2);
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
            network
                .call(peer, group, Request::Raft(RaftRequest::Snapshot { vote, meta: snapshot.meta, transfer }), left)
                .await
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
        match self.call(Request::Raft(RaftRequest::TransferLeader(request)), option.hard_ttl()).await? {
            Reply::TransferLeader(response) => Ok(response),
            other => Err(unexpected(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_pieces_are_put_together_in_order_only() {
        let transfers = Transfers::default();
        transfers.receive(7, 0, vec![1, 2, 3]).unwrap();
        transfers.receive(7, 3, vec![4]).unwrap();
        assert_eq!(transfers.held(7), Some(vec![1, 2, 3, 4]));
        // A piece out of order drops the transfer: the sender starts again.
        let error = transfers.receive(7, 9, vec![5]).unwrap_err();
        assert_eq!(error, Unanswered::PieceOutOfOrder { offset: 9, held: 4 });
        assert!(transfers.held(7).is_none());
        transfers.receive(8, 0, Vec::new()).unwrap();
        assert_eq!(transfers.take(8), Ok(Vec::new()));
        assert_eq!(transfers.take(8), Err(Unanswered::NoSuchTransfer(8)));
    }
}
