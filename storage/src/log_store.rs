//! [`LogStore`]: one raft group's log, vote, committed log id and purge mark, in sled.

use std::fmt;
use std::fmt::Debug;
use std::io;
use std::marker::PhantomData;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;

use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::RaftTypeConfig;
use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use openraft::type_config::alias::LogIdOf;
use openraft::type_config::alias::VoteOf;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::Error;
use crate::GroupId;
use crate::Store;
use crate::codec;
use crate::keys;
use crate::store::Urgency;

/// The raft log of one group, stored in the group's own tree of the node's shared database
/// (see the [`keys`](crate::keys) module for the layout).
///
/// It implements openraft's `RaftLogStorage` and, as its own log reader, `RaftLogReader`.
/// Handles are cheap to clone and all see the same data.
///
/// # Durability promise
///
/// - `append` makes the entries readable before it returns and signals its `IOFlushed` callback
///   only after a flush that covers them has reached the disk (see [`Store`] for how flushes are
///   shared between groups). With [`LogStore::set_urgent`]`(false)` that flush may come up to
///   [`DEFERRED_FLUSH_WAIT`](crate::DEFERRED_FLUSH_WAIT) later; the promise is the same.
/// - `save_vote` and `truncate_after` return only after a flush.
/// - `save_committed` and `purge` are not flushed on their own; the next flush of any group
///   carries them. Losing them in a crash is harmless: the committed id is only a hint that may
///   lag, and a purge that did not happen leaves entries that a snapshot already covers.
/// - A purge removes entries and moves the purge mark in one atomic batch, and truncation removes
///   a suffix in one atomic batch. An append inserts its entries one by one in index order, so
///   a crash keeps a prefix of them. The log never has a hole.
pub struct LogStore<C> {
    store: Store,
    group: GroupId,
    tree: sled::Tree,
    /// Whether appends ask for a flush at once (see [`LogStore::set_urgent`]); shared by
    /// every handle on this group's log.
    urgent: Arc<AtomicBool>,
    _config: PhantomData<fn() -> C>,
}

impl<C> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            store: self.store.clone(),
            group: self.group,
            tree: self.tree.clone(),
            urgent: Arc::clone(&self.urgent),
            _config: PhantomData,
        }
    }
}

impl<C> Debug for LogStore<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStore").field("group", &self.group).finish_non_exhaustive()
    }
}

impl<C> LogStore<C>
where
    C: RaftTypeConfig,
{
    pub(crate) fn new(store: Store, group: GroupId, tree: sled::Tree) -> Self {
        LogStore { store, group, tree, urgent: Arc::new(AtomicBool::new(true)), _config: PhantomData }
    }

    /// Whether appended entries are flushed at once (the default) or may wait up to
    /// [`DEFERRED_FLUSH_WAIT`](crate::DEFERRED_FLUSH_WAIT) to share a flush with other
    /// writes. Either way an append is acknowledged only once it is on disk; deferring
    /// suits a follower whose acknowledgement its leader does not need for a majority.
    /// Votes, truncations and snapshots are always flushed at once.
    pub fn set_urgent(&self, urgent: bool) {
        self.urgent.store(urgent, Ordering::Relaxed);
    }

    /// Whether appends are flushed at once (see [`LogStore::set_urgent`]).
    pub fn is_urgent(&self) -> bool {
        self.urgent.load(Ordering::Relaxed)
    }

    /// The raft group this log belongs to.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// The node-wide store this log lives in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn read_value<T: DeserializeOwned>(&self, key: &[u8], what: &'static str) -> Result<Option<T>, Error> {
        match self.tree.get(key)? {
            Some(bytes) => codec::decode(&bytes, what, self.group).map(Some),
            None => Ok(None),
        }
    }

    fn write_value<T: Serialize>(&self, key: &[u8], value: &T, what: &'static str) -> Result<(), Error> {
        let bytes = codec::encode(value, what, self.group)?;
        self.tree.insert(key, bytes)?;
        Ok(())
    }

    /// Decodes one stored entry and checks that it sits under the key of its own index.
    fn decode_entry(&self, key: &[u8], bytes: &[u8]) -> Result<C::Entry, Error> {
        let entry: C::Entry = codec::decode(bytes, "log entry", self.group)?;
        let stored_at = keys::entry_index(key);
        let (_, index) = entry.log_id_parts();
        if stored_at != Some(index) {
            return Err(Error::Corrupt {
                what: "log entry",
                group: self.group,
                detail: format!("entry with index {index} stored under key {key:?}"),
            });
        }
        Ok(entry)
    }

    /// The entries whose indexes fall in `range`, in index order.
    fn read_entries<R: RangeBounds<u64>>(&self, range: R) -> Result<Vec<C::Entry>, Error> {
        let start = match range.start_bound() {
            Bound::Included(&index) => index,
            Bound::Excluded(&index) => match index.checked_add(1) {
                Some(next) => next,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&index) => index,
            Bound::Excluded(&index) => match index.checked_sub(1) {
                Some(previous) => previous,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => u64::MAX,
        };
        if start > end {
            return Ok(Vec::new());
        }
        self.tree
            .range(keys::entry(start)..=keys::entry(end))
            .map(|item| {
                let (key, bytes) = item?;
                self.decode_entry(&key, &bytes)
            })
            .collect()
    }

    /// The id of the last entry present in the log, ignoring the purge mark.
    fn last_entry_log_id(&self) -> Result<Option<LogIdOf<C>>, Error> {
        let last = self.tree.range(keys::entry(0)..=keys::entry(u64::MAX)).next_back();
        match last {
            Some(item) => {
                let (key, bytes) = item?;
                Ok(Some(self.decode_entry(&key, &bytes)?.log_id()))
            }
            None => Ok(None),
        }
    }

    fn read_purged(&self) -> Result<Option<LogIdOf<C>>, Error> {
        self.read_value(keys::PURGED, "last purged log id")
    }

    /// Waits for a flush that covers every write made so far.
    async fn flush(&self) -> Result<(), Error> {
        self.store.flush().await
    }

    /// Removes the entries with index `from` and above, in one atomic batch.
    fn remove_from(&self, from: u64) -> Result<(), Error> {
        let mut batch = sled::Batch::default();
        for item in self.tree.range(keys::entry(from)..=keys::entry(u64::MAX)) {
            let (key, _) = item?;
            batch.remove(key);
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }
}

impl<C> RaftLogReader<C> for LogStore<C>
where
    C: RaftTypeConfig,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, io::Error> {
        Ok(self.read_entries(range)?)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<C>>, io::Error> {
        Ok(self.read_value(keys::VOTE, "vote")?)
    }
}

impl<C> RaftLogStorage<C> for LogStore<C>
where
    C: RaftTypeConfig,
{
    type LogReader = LogStore<C>;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let last_purged_log_id = self.read_purged()?;
        let last_log_id = match self.last_entry_log_id()? {
            Some(last) => Some(last),
            None => last_purged_log_id.clone(),
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<C>) -> Result<(), io::Error> {
        self.write_value(keys::VOTE, vote, "vote")?;
        self.flush().await?;
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        match committed {
            Some(log_id) => self.write_value(keys::COMMITTED, &log_id, "committed log id")?,
            None => {
                self.tree.remove(keys::COMMITTED).map_err(Error::from)?;
            }
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, io::Error> {
        Ok(self.read_value(keys::COMMITTED, "committed log id")?)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // One insert per entry, in index order, not one sled batch: sled writes out its
        // buffer twice for every batch (to frame it on disk), which costs more than the
        // fsync. Without a batch, a crash may keep only the first entries of an append; that
        // is still a log without holes, and none of them was acknowledged.
        for entry in entries {
            let (_, index) = entry.log_id_parts();
            let bytes = codec::encode(&entry, "log entry", self.group)?;
            self.tree.insert(keys::entry(index), bytes).map_err(Error::from)?;
        }
        // The entries are readable now; the callback waits for the disk.
        let urgency = if self.urgent.load(Ordering::Relaxed) { Urgency::Now } else { Urgency::Soon };
        self.store.request_flush(Box::new(move |result| callback.io_completed(result)), urgency)?;
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let from = match last_log_id {
            Some(log_id) => match log_id.index.checked_add(1) {
                Some(next) => next,
                None => return Ok(()),
            },
            None => 0,
        };
        self.remove_from(from)?;
        self.flush().await?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogIdOf<C>) -> Result<(), io::Error> {
        if let Some(purged) = self.read_purged()?
            && purged >= log_id
        {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        batch.insert(keys::PURGED, codec::encode(&log_id, "last purged log id", self.group)?);
        for item in self.tree.range(keys::entry(0)..=keys::entry(log_id.index)) {
            let (key, _) = item.map_err(Error::from)?;
            batch.remove(key);
        }
        self.tree.apply_batch(batch).map_err(Error::from)?;
        Ok(())
    }
}
