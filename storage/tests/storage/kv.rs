//! A small key-value state machine used only by these tests. It keeps its state in memory and
//! persists snapshots through `pkd_storage::SnapshotStore`, the way pkd's replica adapter does.

use std::collections::BTreeMap;
use std::fmt;
use std::io;

use futures_util::Stream;
use futures_util::StreamExt;
use openraft::EntryPayload;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;
use openraft::type_config::alias::LogIdOf;
use openraft::type_config::alias::SnapshotMetaOf;
use openraft::type_config::alias::SnapshotOf;
use openraft::type_config::alias::StoredMembershipOf;
use pkd_storage::SnapshotStore;
use serde::Deserialize;
use serde::Serialize;

/// Sets `key` to `value`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Put {
    pub key: String,
    pub value: String,
}

impl fmt::Display for Put {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "put {}={}", self.key, self.value)
    }
}

/// The value `key` had before the put, if any.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Previous(pub Option<String>);

openraft::declare_raft_types!(
    /// Type config of the test key-value groups.
    pub KvConfig:
        D = Put,
        R = Previous,
);

/// Everything the state machine knows; also exactly what a snapshot holds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct KvState {
    pub last_applied: Option<LogIdOf<KvConfig>>,
    pub last_membership: StoredMembershipOf<KvConfig>,
    pub data: BTreeMap<String, String>,
}

/// The test state machine of one group.
pub struct KvStateMachine {
    pub state: KvState,
    snapshots: SnapshotStore<KvConfig>,
}

impl KvStateMachine {
    /// A state machine restored from the group's stored snapshot, or empty if there is none.
    pub fn open(snapshots: SnapshotStore<KvConfig>) -> io::Result<KvStateMachine> {
        let state = match snapshots.load()? {
            Some(snapshot) => decode_state(&snapshot.snapshot)?,
            None => KvState::default(),
        };
        Ok(KvStateMachine { state, snapshots })
    }
}

fn decode_state(bytes: &[u8]) -> io::Result<KvState> {
    postcard::from_bytes(bytes).map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))
}

/// Builds a snapshot of the state as it was when the builder was made.
pub struct KvSnapshotBuilder {
    state: KvState,
    snapshots: SnapshotStore<KvConfig>,
}

impl RaftSnapshotBuilder<KvConfig> for KvSnapshotBuilder {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> io::Result<SnapshotOf<KvConfig, Vec<u8>>> {
        let data = postcard::to_allocvec(&self.state).map_err(io::Error::other)?;
        let meta = SnapshotMetaOf::<KvConfig> {
            last_log_id: self.state.last_applied,
            last_membership: self.state.last_membership.clone(),
        };
        self.snapshots.save(&meta, &data).await?;
        Ok(SnapshotOf::<KvConfig, Vec<u8>> { meta, snapshot: data })
    }
}

impl RaftStateMachine<KvConfig> for KvStateMachine {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = KvSnapshotBuilder;

    async fn applied_state(&mut self) -> io::Result<(Option<LogIdOf<KvConfig>>, StoredMembershipOf<KvConfig>)> {
        Ok((self.state.last_applied, self.state.last_membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<KvConfig>>> + Unpin + OptionalSend,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            self.state.last_applied = Some(entry.log_id);
            let response = match entry.payload {
                EntryPayload::Blank => Previous(None),
                EntryPayload::Normal(put) => Previous(self.state.data.insert(put.key, put.value)),
                EntryPayload::Membership(membership) => {
                    self.state.last_membership = StoredMembershipOf::<KvConfig>::new(Some(entry.log_id), membership);
                    Previous(None)
                }
            };
            if let Some(responder) = responder {
                responder.send(response);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> KvSnapshotBuilder {
        KvSnapshotBuilder { state: self.state.clone(), snapshots: self.snapshots.clone() }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMetaOf<KvConfig>, snapshot: Vec<u8>) -> io::Result<()> {
        let state = decode_state(&snapshot)?;
        self.snapshots.save(meta, &snapshot).await?;
        self.state = state;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<SnapshotOf<KvConfig, Vec<u8>>>> {
        Ok(self.snapshots.load()?)
    }
}
