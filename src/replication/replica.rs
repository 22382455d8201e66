//! The replica: openraft's state machine for one group, wrapped around a
//! [`pkd_raft::Machine`].
//!
//! Raft hands the replica committed entries; the replica applies each entry's commands in
//! order to the machine, answers the proposer with the machine's responses, and publishes
//! every effect, tagged with the group and the log index that produced it, on a broadcast
//! channel for the sinks and the gateway. A restart restores the stored snapshot and raft
//! replays the log after it, so the effects of replayed entries are published again: every
//! consumer must be idempotent (see `pkd_raft::effect`).
//!
//! Snapshots hold the last applied log id, the membership and the machine's own snapshot
//! bytes, and are saved through the group's [`SnapshotStore`].
//!
//! Local reads go through a [`ReplicaHandle`], which shares the machine with the replica.

use std::io;
use std::sync::{Arc, RwLock, RwLockReadGuard};

use futures_util::{Stream, StreamExt};
use pkd_raft::{Effect, Machine, Response};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use super::consensus::{
    EntryPayload, EntryResponder, GroupId, LogId, OptionalSend, Payload, RaftOf, RaftSnapshotBuilder, RaftStateMachine,
    Snapshot, SnapshotMeta, SnapshotStore, StoredMembership, TypeConfig,
};

/// One group's raft instance, driving its [`Replica`].
pub type Raft = RaftOf<Replica>;

/// One effect of a committed command, with where it came from. The pair (group, index)
/// identifies the entry: an effect seen again with the same pair is a replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaggedEffect {
    pub group: GroupId,
    /// The log index of the entry whose command produced the effect.
    pub index: u64,
    pub effect: Effect,
}

/// Room for one group's own effects; a subscriber further behind loses the oldest.
const GROUP_EFFECT_CAPACITY: usize = 16_384;

/// The state of one group's replica: what a snapshot holds.
#[derive(Clone, Debug)]
pub struct ReplicaState {
    pub machine: Machine,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// The encoding of a snapshot's data.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// [`Machine::snapshot`] bytes.
    machine: Vec<u8>,
}

impl ReplicaState {
    fn encode(&self) -> io::Result<Vec<u8>> {
        let data = SnapshotData {
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            machine: self.machine.snapshot(),
        };
        postcard::to_allocvec(&data).map_err(io::Error::other)
    }

    fn decode(bytes: &[u8]) -> io::Result<ReplicaState> {
        let invalid = |error: String| io::Error::new(io::ErrorKind::InvalidData, error);
        let data: SnapshotData = postcard::from_bytes(bytes)
            .map_err(|error| invalid(format!("replica snapshot does not decode: {error}")))?;
        let machine = Machine::restore(&data.machine).map_err(|error| invalid(format!("machine snapshot: {error}")))?;
        Ok(ReplicaState { machine, last_applied: data.last_applied, membership: data.membership })
    }
}

/// A read handle on a group's replica, cheap to clone.
#[derive(Clone, Debug)]
pub struct ReplicaHandle {
    group: GroupId,
    state: Arc<RwLock<ReplicaState>>,
    applied: watch::Receiver<Option<u64>>,
    group_effects: broadcast::Sender<TaggedEffect>,
}

impl ReplicaHandle {
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// Runs `read` on the machine as it stands now (the last applied entry).
    pub fn read<T>(&self, read: impl FnOnce(&Machine) -> T) -> T {
        read(&self.lock().machine)
    }

    /// The index of the last applied entry.
    pub fn last_applied_index(&self) -> Option<u64> {
        self.lock().last_applied.map(|log_id| log_id.index)
    }

    /// A watch on the last applied index: it changes after every applied entry, so
    /// timers and hand-overs can look at the state again.
    pub fn applied(&self) -> watch::Receiver<Option<u64>> {
        self.applied.clone()
    }

    /// Every effect this group applies from now on (the node's own channel carries every
    /// group's).
    pub fn subscribe_effects(&self) -> broadcast::Receiver<TaggedEffect> {
        self.group_effects.subscribe()
    }

    fn lock(&self) -> RwLockReadGuard<'_, ReplicaState> {
        // A panic while applying poisons the lock; the state itself is still whole
        // (the machine never panics half-way on purpose), so reads carry on.
        self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// openraft's state machine for one group.
pub struct Replica {
    group: GroupId,
    state: Arc<RwLock<ReplicaState>>,
    snapshots: SnapshotStore,
    /// Every group's effects, for the node.
    effects: broadcast::Sender<TaggedEffect>,
    /// This group's effects only.
    group_effects: broadcast::Sender<TaggedEffect>,
    applied: watch::Sender<Option<u64>>,
    /// Reused for each command's effects.
    buffer: Vec<Effect>,
}

impl Replica {
    /// The replica of `group`, restored from its stored snapshot, or `fresh` if the group has
    /// none. Also returns the read handle.
    pub fn open(
        group: GroupId,
        snapshots: SnapshotStore,
        fresh: Machine,
        effects: broadcast::Sender<TaggedEffect>,
    ) -> io::Result<(Replica, ReplicaHandle)> {
        let state = match snapshots.load()? {
            Some(snapshot) => {
                let state = ReplicaState::decode(&snapshot.snapshot)?;
                tracing::info!(%group, last_applied = ?state.last_applied, "replica restored from snapshot");
                state
            }
            None => ReplicaState { machine: fresh, last_applied: None, membership: StoredMembership::default() },
        };
        let last_index = state.last_applied.map(|log_id| log_id.index);
        let (applied, applied_watch) = watch::channel(last_index);
        let state = Arc::new(RwLock::new(state));
        let (group_effects, _) = broadcast::channel(GROUP_EFFECT_CAPACITY);
        let handle = ReplicaHandle {
            group,
            state: Arc::clone(&state),
            applied: applied_watch,
            group_effects: group_effects.clone(),
        };
        let replica = Replica { group, state, snapshots, effects, group_effects, applied, buffer: Vec::new() };
        Ok((replica, handle))
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ReplicaState> {
        self.state.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read(&self) -> RwLockReadGuard<'_, ReplicaState> {
        self.state.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies one entry; returns the responses and the effects to publish.
    fn apply_entry(&mut self, log_id: LogId, payload: Payload) -> (Vec<Response>, Vec<Effect>) {
        let mut state = self.state.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        state.last_applied = Some(log_id);
        let mut effects = Vec::new();
        let responses = match payload {
            EntryPayload::Blank => Vec::new(),
            EntryPayload::Normal(batch) => {
                let mut responses = Vec::with_capacity(batch.0.len());
                for command in &batch.0 {
                    self.buffer.clear();
                    responses.push(state.machine.apply(command, &mut self.buffer));
                    effects.append(&mut self.buffer);
                }
                responses
            }
            EntryPayload::Membership(membership) => {
                state.membership = StoredMembership::new(Some(log_id), membership);
                Vec::new()
            }
        };
        (responses, effects)
    }
}

/// Builds a snapshot of the state as it was when the builder was made.
pub struct ReplicaSnapshotBuilder {
    group: GroupId,
    meta: SnapshotMeta,
    /// The encoded state, taken under the read lock when the builder was made.
    data: Option<io::Result<Vec<u8>>>,
    snapshots: SnapshotStore,
}

impl RaftSnapshotBuilder<TypeConfig> for ReplicaSnapshotBuilder {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let data = match self.data.take() {
            Some(data) => data?,
            None => return Err(io::Error::other("snapshot builder used twice")),
        };
        let meta = self.meta.clone();
        self.snapshots.save(&meta, &data).await?;
        tracing::debug!(group = %self.group, last_log_id = ?meta.last_log_id, bytes = data.len(), "snapshot built");
        Ok(Snapshot { meta, snapshot: data })
    }
}

impl RaftStateMachine<TypeConfig> for Replica {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = ReplicaSnapshotBuilder;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let state = self.read();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let log_id = entry.log_id;
            let (responses, effects) = self.apply_entry(log_id, entry.payload);
            let group_subscribed = self.group_effects.receiver_count() > 0;
            for effect in effects {
                let tagged = TaggedEffect { group: self.group, index: log_id.index, effect };
                // No subscriber is not an error: the sinks may not be running yet.
                if group_subscribed {
                    let _ = self.group_effects.send(tagged.clone());
                }
                let _ = self.effects.send(tagged);
            }
            self.applied.send_replace(Some(log_id.index));
            if let Some(responder) = responder {
                responder.send(responses);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> ReplicaSnapshotBuilder {
        let state = self.read();
        ReplicaSnapshotBuilder {
            group: self.group,
            meta: SnapshotMeta { last_log_id: state.last_applied, last_membership: state.membership.clone() },
            data: Some(state.encode()),
            snapshots: self.snapshots.clone(),
        }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Vec<u8>) -> io::Result<()> {
        let state = ReplicaState::decode(&snapshot)?;
        self.snapshots.save(meta, &snapshot).await?;
        let index = state.last_applied.map(|log_id| log_id.index);
        *self.write() = state;
        self.applied.send_replace(index);
        tracing::info!(group = %self.group, last_log_id = ?meta.last_log_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        Ok(self.snapshots.load()?)
    }
}
