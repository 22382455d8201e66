//! What nodes say to each other once they have shaken hands: requests, their replies, and
//! why a request got no reply, each a postcard value in one length-prefixed frame.
//!
//! A frame is a big-endian `u32` length and that many bytes (tokio_util's
//! `LengthDelimitedCodec` with its defaults). A length above [`MAX_FRAME`] closes the
//! connection; so does a frame that does not decode.

use bytes::Bytes;
use pkd_raft::{Action, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::io;
use tokio_util::codec::LengthDelimitedCodec;

use super::super::consensus::{
    AppendRequest, AppendResponse, NodeId, SnapshotMeta, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, Vote, VoteRequest, VoteResponse,
};
use super::super::error::{ChangeRefused, ProposalRefused, ReadIndexFailure};

/// The largest frame accepted from an authenticated peer: room for a full append
/// (openraft sends up to 300 entries of up to 256 commands) many times over; snapshots
/// travel in pieces.
pub const MAX_FRAME: usize = 64 * 1024 * 1024;

/// What one node asks another, for one of its groups.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Request {
    /// For the group's raft itself.
    Raft(RaftRequest),
    /// One piece of a snapshot on its way, at `offset` in it (pieces come in order, each
    /// after the previous one was acknowledged, so other groups' frames pass in between).
    SnapshotChunk { transfer: u64, offset: u64, bytes: Vec<u8> },
    /// Proposals for a group the asked node leads, from a node that does not, gathered
    /// while the previous ones were in flight.
    Propose(Vec<Action>),
    /// A membership or leadership change for a group the asked node leads.
    Change(GroupChange),
    /// A question for the asked node itself rather than for one of its groups (the admin
    /// console's view of the whole cluster). The bytes are the shell's own (JSON); this
    /// layer only carries them to the handler the shell registered.
    Inquiry(Vec<u8>),
}

/// What the asked node's raft of the group answers.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum RaftRequest {
    Append(AppendRequest),
    Vote(VoteRequest),
    PreVote(VoteRequest),
    /// Install the snapshot whose pieces came under `transfer`.
    Snapshot {
        vote: Vote,
        meta: SnapshotMeta,
        transfer: u64,
    },
    TransferLeader(TransferLeaderRequest),
    /// The read index of a group the asked node leads, for a linearizable read elsewhere.
    ReadIndex,
}

/// The answer to a [`Request`], in the matching variant.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Reply {
    Append(AppendResponse),
    Vote(VoteResponse),
    Snapshot(SnapshotResponse),
    ChunkReceived,
    TransferLeader(TransferLeaderResponse),
    /// One result per proposal, in order.
    Proposed(Vec<Result<Response, ProposalRefused>>),
    Changed(Result<(), ChangeRefused>),
    ReadIndex(Result<u64, ReadIndexFailure>),
    /// The handler's answer to an inquiry.
    Inquiry(Vec<u8>),
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

/// Why the asked node gave no reply to a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Unanswered {
    #[error("no group {0} there")]
    NoSuchGroup(u64),
    #[error("it is still starting")]
    Starting,
    #[error("it is stopping")]
    Stopping,
    #[error("its raft has stopped")]
    RaftStopped,
    #[error("its raft failed (see its log)")]
    RaftFailed,
    #[error("snapshot piece at {offset}, but {held} bytes came before it")]
    PieceOutOfOrder { offset: u64, held: u64 },
    #[error("snapshot over {0} bytes")]
    SnapshotTooLarge(u64),
    #[error("no snapshot transfer {0} under way")]
    NoSuchTransfer(u64),
}

/// One frame on an authenticated connection.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Frame {
    Request { id: u64, group: u64, request: Request },
    Response { id: u64, reply: Result<Reply, Unanswered> },
}

/// The codec of node-to-node frames, refusing lengths over `max_frame`.
pub(super) fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder().max_frame_length(max_frame).new_codec()
}

pub(super) fn encode<T: Serialize>(value: &T) -> io::Result<Bytes> {
    postcard::to_allocvec(value).map(Bytes::from).map_err(io::Error::other)
}

pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    postcard::from_bytes(bytes).map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))
}
