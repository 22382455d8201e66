//! `pkd backup` and `pkd restore`: every group's state from a running node into one file,
//! and a new cluster's data directories seeded from it.
//!
//! A backup reads the lobby first, then each arena, each after a linearizable read (so it
//! holds everything acknowledged before the backup started), and makes the reads one
//! consistent cut with `pkd_raft::cut` (a PK matched while the arenas were being read is
//! left out; rooms an arena released meanwhile are released). The file is the magic
//! `PKDBAK`, a format number, the postcard encoding of [`Backup`] and a CRC-32 of
//! everything before it.
//!
//! A restore writes, into an empty data directory, one snapshot per group at the log
//! index it was read at, whose membership is the new cluster's members: each node of the
//! new cluster is seeded with the same file and members and then started with
//! `pkd serve` as usual (see the README's "Backup and restore"). The lobby's PK ids skip
//! ahead ([`DEFAULT_PK_ID_GAP`]) so that a cluster restored from an older backup does not
//! give out again the ids of PKs the old cluster created after it. Leader placements and
//! drain marks, which name the old cluster's nodes, are cleared.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::vote::RaftLeaderId;
use pkd_raft::{Arena, Lobby, MachineKind, StateMachine, arena_for};
use pkd_storage::Store;
use serde::{Deserialize, Serialize};

use crate::replication::consensus::{BasicNode, LogId, NodeId, SnapshotMeta, StoredMembership, TypeConfig};
use crate::replication::node::Consistency;
use crate::replication::node::Node;
use crate::replication::replica;
use crate::topology::Topology;

/// The first bytes of a backup file.
const MAGIC: &[u8; 6] = b"PKDBAK";
/// The version of the file's layout this build writes and reads.
pub const BACKUP_FORMAT: u16 = 1;
/// How far the restored lobby's PK ids skip ahead of the backup's last one.
pub const DEFAULT_PK_ID_GAP: u64 = 1_000_000;

/// What a backup file holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backup {
    /// When the backup started, in milliseconds since the Unix epoch.
    pub taken_at_ms: i64,
    /// The node that took it.
    pub node: NodeId,
    pub arenas: u32,
    /// The lobby, then the arenas in group order.
    pub groups: Vec<GroupBackup>,
    /// PKs left out because they were matched while the arenas were read.
    pub left_out: Vec<u64>,
    /// PKs whose rooms were released because their arena released them meanwhile.
    pub released: Vec<u64>,
}

/// One group's machine, as of a committed log index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupBackup {
    pub group: u64,
    /// The log index the group was read at.
    pub index: u64,
    /// The machine's snapshot bytes (`pkd_raft::StateMachine::snapshot`).
    pub machine: Vec<u8>,
}

/// Why a backup or a restore failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("group {group} could not be read: {message}")]
    Read { group: u64, message: String },
    #[error("not a pkd backup file (no PKDBAK header)")]
    NotABackup,
    #[error("backup format {0} is not known to this version (it reads format {BACKUP_FORMAT})")]
    UnknownFormat(u16),
    #[error("the backup file is damaged: {0}")]
    Damaged(String),
    #[error("{0}")]
    Invalid(String),
    #[error("storage: {0}")]
    Storage(String),
}

impl Backup {
    /// Reads every group of the cluster through `node`: the lobby, then the arenas.
    pub async fn take(node: &Node, now_ms: i64) -> Result<Backup, BackupError> {
        let topology = node.topology();
        let read_failed = |group: u64| {
            move |error: crate::replication::error::ProposeError| BackupError::Read {
                group,
                message: error.to_string(),
            }
        };
        let lobby_group = node.lobby().group().0;
        node.read_lobby(Consistency::Linearizable, |_| ()).await.map_err(read_failed(lobby_group))?;
        let (lobby, lobby_index) = node.lobby().read_at(Lobby::clone);
        let mut arenas = Vec::new();
        let mut indexes = Vec::new();
        for group in topology.arenas() {
            node.read_arena(group, Consistency::Linearizable, |_| ()).await.map_err(read_failed(group.0))?;
            let replica =
                node.arena(group).ok_or(BackupError::Read { group: group.0, message: "not hosted".into() })?;
            let (arena, index) = replica.read_at(Arena::clone);
            arenas.push(arena);
            indexes.push(index);
        }
        let mut lobby = lobby;
        let arena_count = topology.arena_count();
        let repairs = pkd_raft::cut::make_consistent(&mut lobby, &mut arenas, |pk| arena_for(pk, arena_count) as usize);
        let mut groups = vec![GroupBackup { group: lobby_group, index: lobby_index, machine: lobby.snapshot() }];
        for ((group, arena), index) in topology.arenas().zip(&arenas).zip(indexes) {
            groups.push(GroupBackup { group: group.0, index, machine: arena.snapshot() });
        }
        Ok(Backup {
            taken_at_ms: now_ms,
            node: node.id(),
            arenas: arena_count,
            groups,
            left_out: repairs.forgotten.iter().map(|pk| pk.0).collect(),
            released: repairs.released.iter().map(|pk| pk.0).collect(),
        })
    }

    /// The file's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&BACKUP_FORMAT.to_be_bytes());
        let bytes = postcard::to_extend(self, bytes).expect("a backup always encodes into a Vec");
        let mut bytes = bytes;
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_be_bytes());
        bytes
    }

    /// Reads a file's bytes, checking its header, checksum and every machine in it.
    pub fn decode(bytes: &[u8]) -> Result<Backup, BackupError> {
        let header = MAGIC.len() + 2;
        if bytes.len() < header + 4 || &bytes[..MAGIC.len()] != MAGIC {
            return Err(BackupError::NotABackup);
        }
        let format = u16::from_be_bytes([bytes[MAGIC.len()], bytes[MAGIC.len() + 1]]);
        if format != BACKUP_FORMAT {
            return Err(BackupError::UnknownFormat(format));
        }
        let (body, crc) = bytes.split_at(bytes.len() - 4);
        let expected = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32fast::hash(body) != expected {
            return Err(BackupError::Damaged("the checksum does not match".into()));
        }
        let backup: Backup =
            postcard::from_bytes(&body[header..]).map_err(|error| BackupError::Damaged(error.to_string()))?;
        backup.check()?;
        Ok(backup)
    }

    /// Checks the groups are the lobby and `arenas` arenas, each decoding as its kind.
    fn check(&self) -> Result<(), BackupError> {
        let topology = Topology::new(self.arenas)
            .ok_or_else(|| BackupError::Invalid("a backup needs at least one arena".into()))?;
        let expected: Vec<u64> = topology.groups().map(|group| group.0).collect();
        let found: Vec<u64> = self.groups.iter().map(|group| group.group).collect();
        if expected != found {
            return Err(BackupError::Invalid(format!("groups {found:?}, expected {expected:?}")));
        }
        for group in &self.groups {
            let decoded = match topology.kind(group.group.into()) {
                Some(MachineKind::Lobby) => Lobby::restore(&group.machine).map(|_| ()),
                _ => Arena::restore(&group.machine).map(|_| ()),
            };
            decoded.map_err(|error| BackupError::Damaged(format!("group {}: {error}", group.group)))?;
        }
        Ok(())
    }

    /// A one-paragraph description: when, from which node, each group's index, the PKs
    /// running and the anchors matching.
    pub fn describe(&self) -> String {
        let mut out =
            format!("backup taken at {} ms by node {}: {} arenas\n", self.taken_at_ms, self.node, self.arenas);
        for group in &self.groups {
            let detail = if let Ok(lobby) = Lobby::restore(&group.machine) {
                format!(
                    "lobby: {} PKs held, {} anchors matching, last PK id {}",
                    lobby.held_pks().count(),
                    lobby.waiting_anchors().count(),
                    lobby.last_pk()
                )
            } else if let Ok(arena) = Arena::restore(&group.machine) {
                format!(
                    "arena: {} PKs running, {} settled awaiting hand-over",
                    arena.running().count(),
                    arena.summary().outbox.len()
                )
            } else {
                "unreadable".to_owned()
            };
            out.push_str(&format!("  group {} at index {}: {detail}\n", group.group, group.index));
        }
        if !self.left_out.is_empty() || !self.released.is_empty() {
            out.push_str(&format!(
                "  cut: left out PKs {:?} (matched while the arenas were read); released rooms of {:?}\n",
                self.left_out, self.released
            ));
        }
        out
    }
}

/// The members of the restored cluster: node id to node-to-node address (empty for a
/// node running alone).
pub type Members = BTreeMap<NodeId, String>;

/// Seeds the empty data directory `data_dir` of node `node` of a new cluster of `members`
/// with `backup`; the lobby's PK ids skip `pk_id_gap` ahead.
pub async fn restore(
    backup: &Backup,
    data_dir: &Path,
    node: NodeId,
    members: &Members,
    pk_id_gap: u64,
) -> Result<(), BackupError> {
    if !members.contains_key(&node) {
        return Err(BackupError::Invalid(format!("node {node} is not among the members {:?}", members.keys())));
    }
    if data_dir.exists() && std::fs::read_dir(data_dir).map(|mut entries| entries.next().is_some()).unwrap_or(true) {
        return Err(BackupError::Invalid(format!(
            "{} is not empty: a restore seeds a new node's data directory",
            data_dir.display()
        )));
    }
    let topology = Topology::new(backup.arenas).ok_or_else(|| BackupError::Invalid("no arenas".into()))?;
    let storage = |error: pkd_storage::Error| BackupError::Storage(error.to_string());
    let store = Store::open(data_dir).map_err(storage)?;
    let voters: BTreeSet<NodeId> = members.keys().copied().collect();
    let nodes: BTreeMap<NodeId, BasicNode> =
        members.iter().map(|(id, address)| (*id, BasicNode::new(address.clone()))).collect();
    let first = *voters.first().expect("members holds node");
    for group in &backup.groups {
        let id = group.group.into();
        let machine = match topology.kind(id) {
            Some(MachineKind::Lobby) => {
                let mut lobby = Lobby::restore(&group.machine).map_err(|e| BackupError::Damaged(e.to_string()))?;
                pkd_raft::cut::skip_pk_ids(&mut lobby, pk_id_gap);
                pkd_raft::cut::clear_placement(&mut lobby);
                lobby.snapshot()
            }
            _ => {
                let mut arena = Arena::restore(&group.machine).map_err(|e| BackupError::Damaged(e.to_string()))?;
                pkd_raft::cut::clear_placement(&mut arena);
                arena.snapshot()
            }
        };
        // Term 0, which no election of the new cluster uses: its first leader's entries
        // come after the seeded ones.
        let leader = <<TypeConfig as openraft::RaftTypeConfig>::LeaderId as RaftLeaderId>::new(0, first);
        let log_id = LogId::new(leader.to_committed(), group.index);
        let membership = openraft::Membership::new(vec![voters.clone()], nodes.clone())
            .map_err(|error| BackupError::Invalid(error.to_string()))?;
        let membership = StoredMembership::new(Some(log_id), membership);
        let data = replica::seed_snapshot(Some(log_id), membership.clone(), machine)
            .map_err(|error| BackupError::Storage(error.to_string()))?;
        let meta = SnapshotMeta { last_log_id: Some(log_id), last_membership: membership };
        store.log_store::<TypeConfig>(id).map_err(storage)?;
        store.snapshot_store::<TypeConfig>(id).map_err(storage)?.save(&meta, &data).await.map_err(storage)?;
    }
    store.flush().await.map_err(storage)?;
    Ok(())
}
