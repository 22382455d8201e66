//! [`SnapshotStore`]: one raft group's latest snapshot, saved atomically in sled.

use std::fmt;
use std::marker::PhantomData;

use openraft::RaftTypeConfig;
use openraft::type_config::alias::SnapshotMetaOf;
use openraft::type_config::alias::SnapshotOf;

use crate::Error;
use crate::GroupId;
use crate::Store;
use crate::codec;
use crate::keys;

/// Version byte at the start of every stored snapshot value.
const FORMAT_VERSION: u8 = 1;

/// Bytes before the metadata: the version and the metadata length as a big-endian `u32`.
const HEADER_LEN: usize = 5;

/// Keeps the latest snapshot of one raft group: openraft's snapshot metadata (last included log
/// id and membership) together with the state machine's bytes.
///
/// This is a helper for the group's state machine, which owns the snapshot data format:
/// its snapshot builder calls [`save`](Self::save) after building, `install_snapshot` calls it
/// with a snapshot received from the leader, and `get_current_snapshot` and startup recovery call
/// [`load`](Self::load).
///
/// # Layout and atomicity
///
/// The snapshot is one value under one key of the group's snapshot tree: a format-version byte,
/// the length of the postcard-encoded metadata as a big-endian `u32`, the metadata, then the
/// data. Writing a single key is atomic in sled, so a reader (or a restart) sees either the old
/// snapshot or the new one, never metadata from one with data from the other.
///
/// [`save`](Self::save) returns only after the snapshot has been flushed to disk, so openraft may
/// purge the log up to the snapshot as soon as it returns.
pub struct SnapshotStore<C> {
    store: Store,
    group: GroupId,
    tree: sled::Tree,
    _config: PhantomData<fn() -> C>,
}

impl<C> Clone for SnapshotStore<C> {
    fn clone(&self) -> Self {
        SnapshotStore { store: self.store.clone(), group: self.group, tree: self.tree.clone(), _config: PhantomData }
    }
}

impl<C> fmt::Debug for SnapshotStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotStore").field("group", &self.group).finish_non_exhaustive()
    }
}

impl<C> SnapshotStore<C>
where
    C: RaftTypeConfig,
{
    pub(crate) fn new(store: Store, group: GroupId, tree: sled::Tree) -> Self {
        SnapshotStore { store, group, tree, _config: PhantomData }
    }

    /// The raft group this snapshot store belongs to.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// Replaces the stored snapshot with `meta` and `data`, and returns once it is on disk.
    pub async fn save(&self, meta: &SnapshotMetaOf<C>, data: &[u8]) -> Result<(), Error> {
        let meta_bytes = codec::encode(meta, "snapshot meta", self.group)?;
        let meta_len = u32::try_from(meta_bytes.len()).map_err(|_| Error::Corrupt {
            what: "snapshot meta",
            group: self.group,
            detail: format!("metadata of {} bytes does not fit the header", meta_bytes.len()),
        })?;
        let mut value = Vec::with_capacity(HEADER_LEN + meta_bytes.len() + data.len());
        value.push(FORMAT_VERSION);
        value.extend_from_slice(&meta_len.to_be_bytes());
        value.extend_from_slice(&meta_bytes);
        value.extend_from_slice(data);
        self.tree.insert(keys::CURRENT_SNAPSHOT, value)?;
        self.store.flush().await
    }

    /// The stored snapshot, if there is one.
    pub fn load(&self) -> Result<Option<SnapshotOf<C, Vec<u8>>>, Error> {
        let Some(value) = self.tree.get(keys::CURRENT_SNAPSHOT)? else {
            return Ok(None);
        };
        let (meta, data_start) = self.split(&value)?;
        Ok(Some(SnapshotOf::<C, Vec<u8>> { meta, snapshot: value[data_start..].to_vec() }))
    }

    /// The metadata of the stored snapshot, without copying its data.
    pub fn load_meta(&self) -> Result<Option<SnapshotMetaOf<C>>, Error> {
        let Some(value) = self.tree.get(keys::CURRENT_SNAPSHOT)? else {
            return Ok(None);
        };
        self.split(&value).map(|(meta, _)| Some(meta))
    }

    /// Decodes the metadata of a stored value and returns it with the offset of the data.
    fn split(&self, value: &[u8]) -> Result<(SnapshotMetaOf<C>, usize), Error> {
        let corrupt = |detail: String| Error::Corrupt { what: "snapshot", group: self.group, detail };
        let Some((&version, rest)) = value.split_first() else {
            return Err(corrupt("empty value".to_owned()));
        };
        if version != FORMAT_VERSION {
            return Err(corrupt(format!("unknown format version {version}")));
        }
        let Some((length_bytes, rest)) = rest.split_first_chunk::<4>() else {
            return Err(corrupt("header cut short".to_owned()));
        };
        let meta_len = u32::from_be_bytes(*length_bytes) as usize;
        let Some(meta_bytes) = rest.get(..meta_len) else {
            return Err(corrupt(format!("metadata of {meta_len} bytes announced, only {} present", rest.len())));
        };
        let meta = codec::decode(meta_bytes, "snapshot meta", self.group)?;
        Ok((meta, HEADER_LEN + meta_len))
    }
}
