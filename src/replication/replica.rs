//! The replica: openraft's state machine for one group, wrapped around the group's
//! machine from the core, a [`Lobby`] or an [`Arena`].
//!
//! Raft hands the replica committed entries; the replica applies each entry's commands in
//! order to the machine, answers the proposer with the machine's responses, and publishes
//! every effect, tagged with the group and the log index that produced it, on the node's
//! broadcast channel and the group's own. A restart restores the stored snapshot and raft
//! replays the log after it, so the effects of replayed entries are published again: every
//! consumer must be idempotent (see `pkd_raft::effect`).
//!
//! Snapshots hold the last applied log id, the membership and the machine's own snapshot
//! bytes, and are saved through the group's [`SnapshotStore`]. A snapshot of the other kind
//! of machine is refused, so a group's machine keeps its kind for life.
//!
//! Reads go through a [`ReplicaHandle`], typed by the machine's kind, which shares the
//! machine with the replica.

use std::io;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use futures_util::{Stream, StreamExt};
use pkd_raft::{Arena, Config, Effect, Lobby, Response, SingleKind};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{broadcast, watch};

use super::consensus::{
    EntryPayload, EntryResponder, GroupId, LogId, OptionalSend, Payload, RaftOf, RaftSnapshotBuilder, RaftStateMachine,
    Snapshot, SnapshotMeta, SnapshotStore, StoredMembership, TypeConfig,
};

/// One group's raft instance, driving its [`Replica`].
pub type Raft = RaftOf<Replica>;

/// Room for one group's own effects; a subscriber further behind loses the oldest.
const GROUP_EFFECT_CAPACITY: usize = 16_384;

/// One effect of a committed command, with where it came from. The pair (group, index)
/// identifies the entry: an effect seen again with the same pair is a replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaggedEffect {
    pub group: GroupId,
    /// The log index of the entry whose command produced the effect.
    pub index: u64,
    pub effect: Effect,
}

/// The state of one group's replica: what a snapshot holds.
#[derive(Clone, Debug)]
pub(crate) struct ReplicaState<M> {
    machine: M,
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

/// The encoding of a snapshot's data.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    /// The machine's snapshot bytes.
    machine: Vec<u8>,
}

impl<M: SingleKind> ReplicaState<M> {
    fn encode(&self) -> io::Result<Vec<u8>> {
        let data = SnapshotData {
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            machine: self.machine.snapshot(),
        };
        postcard::to_allocvec(&data).map_err(io::Error::other)
    }

    fn decode(bytes: &[u8]) -> io::Result<ReplicaState<M>> {
        let invalid = |error: String| io::Error::new(io::ErrorKind::InvalidData, error);
        let data: SnapshotData = postcard::from_bytes(bytes)
            .map_err(|error| invalid(format!("replica snapshot does not decode: {error}")))?;
        let machine = M::restore(&data.machine).map_err(|error| invalid(format!("machine snapshot: {error}")))?;
        Ok(ReplicaState { machine, last_applied: data.last_applied, membership: data.membership })
    }

    /// Applies one entry; returns the responses, and appends the effects to `effects`.
    fn apply_entry(&mut self, log_id: LogId, payload: Payload, effects: &mut Vec<Effect>) -> Vec<Response> {
        self.last_applied = Some(log_id);
        match payload {
            EntryPayload::Blank => Vec::new(),
            EntryPayload::Normal(batch) => batch
                .0
                .iter()
                .map(|command| {
                    // A node broken on purpose (`diverge`) applies some commands otherwise.
                    #[cfg(feature = "fault-injection")]
                    let command = &*crate::fault_hooks::applied(command);
                    self.machine.apply(command, effects)
                })
                .collect(),
            EntryPayload::Membership(membership) => {
                self.membership = StoredMembership::new(Some(log_id), membership);
                Vec::new()
            }
        }
    }
}

/// The bytes of a snapshot holding `machine` (a machine's own snapshot bytes) as of
/// `last_applied`, with `membership`: what a restore seeds a group with.
pub(crate) fn seed_snapshot(
    last_applied: Option<LogId>,
    membership: StoredMembership,
    machine: Vec<u8>,
) -> io::Result<Vec<u8>> {
    postcard::to_allocvec(&SnapshotData { last_applied, membership, machine }).map_err(io::Error::other)
}

fn read_lock<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    // A panic while applying poisons the lock; the state itself is still whole (the
    // machine never panics half-way on purpose), so reads carry on.
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write_lock<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A read handle on a group's replica, of a machine of kind `M`; cheap to clone.
#[derive(Debug)]
pub struct ReplicaHandle<M> {
    group: GroupId,
    state: Arc<RwLock<ReplicaState<M>>>,
    applied: watch::Receiver<Option<u64>>,
    group_effects: broadcast::Sender<TaggedEffect>,
}

impl<M> Clone for ReplicaHandle<M> {
    fn clone(&self) -> Self {
        ReplicaHandle {
            group: self.group,
            state: Arc::clone(&self.state),
            applied: self.applied.clone(),
            group_effects: self.group_effects.clone(),
        }
    }
}

impl<M: SingleKind> ReplicaHandle<M> {
    /// The replica's state as a snapshot would hold it (the machine, the membership, the
    /// last applied log id), digested with SHA-256, and that last applied log id: two
    /// replicas of a group at the same entry must give the same digest. Encodes the whole
    /// state under the read lock, so it is for checks, not for a hot path.
    pub fn digest(&self) -> io::Result<(Option<u64>, [u8; 32])> {
        let state = read_lock(&self.state);
        let bytes = state.encode()?;
        Ok((state.last_applied.map(|log_id| log_id.index), Sha256::digest(&bytes).into()))
    }
}

impl<M> ReplicaHandle<M> {
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// Runs `read` on the machine as it stands now (the last applied entry).
    pub fn read<T>(&self, read: impl FnOnce(&M) -> T) -> T {
        read(&read_lock(&self.state).machine)
    }

    /// Runs `read` on the machine as it stands now, and says at which log index.
    pub fn read_at<T>(&self, read: impl FnOnce(&M) -> T) -> (T, u64) {
        let state = read_lock(&self.state);
        (read(&state.machine), state.last_applied.map_or(0, |log_id| log_id.index))
    }

    /// The index of the last applied entry.
    pub fn last_applied_index(&self) -> Option<u64> {
        read_lock(&self.state).last_applied.map(|log_id| log_id.index)
    }

    /// A watch on the last applied index: it changes after every applied entry, so that
    /// duties can look at the state again.
    pub fn applied(&self) -> watch::Receiver<Option<u64>> {
        self.applied.clone()
    }

    /// Every effect this group applies from now on (the node's own channel carries every
    /// group's).
    pub fn subscribe_effects(&self) -> broadcast::Receiver<TaggedEffect> {
        self.group_effects.subscribe()
    }

    /// The sender of the group's own effects, for the group that owns the replica.
    pub(crate) fn effect_sender(&self) -> broadcast::Sender<TaggedEffect> {
        self.group_effects.clone()
    }
}

/// The machine behind a replica, of either kind.
pub(crate) enum Kind {
    Lobby(Arc<RwLock<ReplicaState<Lobby>>>),
    Arena(Arc<RwLock<ReplicaState<Arena>>>),
}

/// The kinds of machine a replica may hold.
pub(crate) trait Hosted: SingleKind + Send + Sync + 'static {
    fn wrap(state: Arc<RwLock<ReplicaState<Self>>>) -> Kind;
}

impl Hosted for Lobby {
    fn wrap(state: Arc<RwLock<ReplicaState<Lobby>>>) -> Kind {
        Kind::Lobby(state)
    }
}

impl Hosted for Arena {
    fn wrap(state: Arc<RwLock<ReplicaState<Arena>>>) -> Kind {
        Kind::Arena(state)
    }
}

/// Runs `$body` with `$state` bound to the replica's state, whatever its kind.
macro_rules! with_state {
    ($kind:expr, $state:ident => $body:expr) => {
        match $kind {
            Kind::Lobby($state) => $body,
            Kind::Arena($state) => $body,
        }
    };
}

/// openraft's state machine for one group.
pub struct Replica {
    group: GroupId,
    kind: Kind,
    snapshots: SnapshotStore,
    /// Every group's effects, for the node.
    effects: broadcast::Sender<TaggedEffect>,
    /// This group's effects only.
    group_effects: broadcast::Sender<TaggedEffect>,
    applied: watch::Sender<Option<u64>>,
    /// Reused for each entry's effects.
    buffer: Vec<Effect>,
}

impl Replica {
    /// The replica of `group`, a machine of kind `M`, restored from its stored snapshot or
    /// fresh if the group has none. Also returns the read handle.
    pub(crate) fn open<M: Hosted>(
        group: GroupId,
        snapshots: SnapshotStore,
        effects: broadcast::Sender<TaggedEffect>,
    ) -> io::Result<(Replica, ReplicaHandle<M>)> {
        let state = match snapshots.load()? {
            Some(snapshot) => {
                let state = ReplicaState::<M>::decode(&snapshot.snapshot)?;
                tracing::info!(%group, last_applied = ?state.last_applied, "replica restored from snapshot");
                state
            }
            None => ReplicaState {
                machine: M::fresh(Config::default()),
                last_applied: None,
                membership: Default::default(),
            },
        };
        let (applied, applied_watch) = watch::channel(state.last_applied.map(|log_id| log_id.index));
        let state = Arc::new(RwLock::new(state));
        let (group_effects, _) = broadcast::channel(GROUP_EFFECT_CAPACITY);
        let handle = ReplicaHandle {
            group,
            state: Arc::clone(&state),
            applied: applied_watch,
            group_effects: group_effects.clone(),
        };
        let kind = M::wrap(state);
        Ok((Replica { group, kind, snapshots, effects, group_effects, applied, buffer: Vec::new() }, handle))
    }

    fn applied_index(&self) -> Option<u64> {
        with_state!(&self.kind, state => read_lock(state).last_applied.map(|log_id| log_id.index))
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
        Ok(with_state!(&self.kind, state => {
            let state = read_lock(state);
            (state.last_applied, state.membership.clone())
        }))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let log_id = entry.log_id;
            let buffer = &mut self.buffer;
            buffer.clear();
            let responses =
                with_state!(&self.kind, state => write_lock(state).apply_entry(log_id, entry.payload, buffer));
            let group_subscribed = self.group_effects.receiver_count() > 0;
            for effect in self.buffer.drain(..) {
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
        let (meta, data) = with_state!(&self.kind, state => {
            let state = read_lock(state);
            let meta = SnapshotMeta { last_log_id: state.last_applied, last_membership: state.membership.clone() };
            (meta, state.encode())
        });
        ReplicaSnapshotBuilder { group: self.group, meta, data: Some(data), snapshots: self.snapshots.clone() }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Vec<u8>) -> io::Result<()> {
        // Decoded as this replica's own kind: a snapshot of the other kind is refused.
        with_state!(&self.kind, state => {
            let installed = decode_like(state, &snapshot)?;
            self.snapshots.save(meta, &snapshot).await?;
            *write_lock(state) = installed;
        });
        self.applied.send_replace(self.applied_index());
        tracing::info!(group = %self.group, last_log_id = ?meta.last_log_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        Ok(self.snapshots.load()?)
    }
}

/// Decodes `bytes` as a state of the same kind as `_like`.
fn decode_like<M: SingleKind>(_like: &RwLock<ReplicaState<M>>, bytes: &[u8]) -> io::Result<ReplicaState<M>> {
    ReplicaState::<M>::decode(bytes)
}
