//! The node-wide [`Store`]: one sled database shared by every raft group of the node, plus the
//! flush thread that makes writes durable.
//!
//! # Durability and group commit
//!
//! sled writes go to an in-memory log that sled syncs to disk in the background every few
//! hundred milliseconds. That is not good enough for raft: a node must not acknowledge a log
//! entry or a vote that a crash could take back. So every write that raft needs to be durable
//! asks the store's flush thread for a flush, and the caller is told only after that flush
//! (sled's `flush`, which writes the dirty buffers, then an `fdatasync`) has returned.
//!
//! The flush thread takes every request that is waiting when it wakes up and answers all of them
//! with one flush. A sled flush covers every write made to the database before it starts, in any
//! tree, so when many groups append at the same time one flush completes all of them (group
//! commit), and the cost of durability does not grow with the number of groups. A request may
//! also say it can wait (`Urgency::Soon`): it is then held until another request needs a
//! flush, or until it has waited [`DEFERRED_FLUSH_WAIT`].
//!
//! sled's own flush writes its buffers with `sync_file_range` on Linux: the data reaches the
//! device, but neither the device's write cache nor the file's size and block map are made
//! durable, so a power cut could still take back the end of the log. After every sled flush
//! the flush thread therefore calls `fdatasync` on sled's log file too (through a handle of
//! its own: a sync covers the file, not one descriptor). Values too large for sled's log (a
//! snapshot, a large tree page) go to separate "blob" files that sled never syncs: the flush
//! thread syncs each new one, and their folder, before it answers.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt;
use std::fs::File;
use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;
use std::time::Instant;

use openraft::RaftTypeConfig;

use crate::Error;
use crate::LogStore;
use crate::SnapshotStore;
use crate::keys;

/// Identifies one raft group (the lobby or one arena) inside the node's shared database.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(pub u64);

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl From<u64> for GroupId {
    fn from(id: u64) -> GroupId {
        GroupId(id)
    }
}

/// How long [`Store::open`] waits for the file lock of a database that was just closed.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);

const LOCK_RETRY_INTERVAL: Duration = Duration::from_millis(10);

/// Whether sled failed to open because another handle still holds the database's file lock.
/// sled reports this only as an `Other` I/O error with this message.
fn is_lock_conflict(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::Other && error.to_string().contains("could not acquire lock")
}

/// What the flush thread calls once the flush covering a request has finished.
pub(crate) type FlushDone = Box<dyn FnOnce(io::Result<()>) + Send + 'static>;

/// How soon a write must reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Urgency {
    /// Flush at once: somebody waits for it (a leader's own entries, a follower whose
    /// acknowledgement the leader needs for its majority, a vote).
    Now,
    /// The next flush may carry it, whoever asks for that one, but no later than
    /// [`DEFERRED_FLUSH_WAIT`] from now: a follower whose acknowledgement the leader does
    /// not need for its majority. It still acknowledges nothing before the flush.
    Soon,
}

/// The longest a write that may wait (an append of a log with `set_urgent(false)`) waits
/// for a flush to share.
pub const DEFERRED_FLUSH_WAIT: Duration = Duration::from_millis(2);

struct FlushRequest {
    done: FlushDone,
    urgency: Urgency,
}

/// The node's sled database, shared by all raft groups of the node.
///
/// Cheap to clone: clones share the database and the flush thread. The database is closed (and
/// its file lock released) once the last `Store`, [`LogStore`] and [`SnapshotStore`] made from
/// it are dropped.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    /// Requests for the flush thread; `None` only while dropping.
    flush_requests: Option<mpsc::Sender<FlushRequest>>,
    flush_thread: Option<thread::JoinHandle<()>>,
    flushes: Arc<FlushStats>,
}

/// What the flush thread has done so far.
#[derive(Default)]
struct FlushStats {
    count: AtomicU64,
    nanos: AtomicU64,
    blobs: AtomicU64,
}

/// How many flushes the flush thread has done and how long they took in all.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlushTotals {
    pub count: u64,
    pub busy: Duration,
    /// Blob files (sled's files for values too large for its log) synced.
    pub blobs_synced: u64,
}

impl Store {
    /// Opens (or creates) the database in the directory `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Store, Error> {
        Store::open_with_config(sled::Config::new().path(path))
    }

    /// Opens a database with a sled configuration of the caller's choosing, e.g. a temporary one
    /// for tests, or a different cache size.
    ///
    /// sled holds an exclusive lock on the database file. After the last handle of a database is
    /// dropped, sled's own background threads may keep the file open for a moment, so opening the
    /// same directory again in the same process (a restarted node in a test cluster) can find
    /// the lock still taken. Opening therefore retries for up to [`LOCK_WAIT`] before reporting
    /// the conflict; a database really held by another process still fails, only later.
    pub fn open_with_config(config: sled::Config) -> Result<Store, Error> {
        let deadline = Instant::now() + LOCK_WAIT;
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(error)) if is_lock_conflict(&error) && Instant::now() < deadline => {
                    thread::sleep(LOCK_RETRY_INTERVAL);
                }
                Err(error) => return Err(error.into()),
            }
        };
        // sled's log file, for the `fdatasync` after each sled flush. Its directory is synced
        // once here, so that a database created just now keeps its files after a power cut.
        // A temporary database is never synced.
        let disk = if config.temporary {
            None
        } else {
            let path = config.get_path();
            let file = File::open(path.join(SLED_LOG_FILE)).map_err(sled::Error::from)?;
            file.sync_all().map_err(sled::Error::from)?;
            sync_directory(&path).map_err(sled::Error::from)?;
            Some(Disk { path, log_file: file, synced_blobs: HashSet::new() })
        };
        let (sender, receiver) = mpsc::channel();
        let flushes = Arc::new(FlushStats::default());
        let flush_thread = thread::Builder::new()
            .name("pkd-storage-flush".to_owned())
            .spawn({
                let db = db.clone();
                let flushes = Arc::clone(&flushes);
                move || run_flush_thread(db, disk, receiver, flushes)
            })
            .map_err(|error| Error::Sled(error.into()))?;
        Ok(Store {
            inner: Arc::new(Inner { db, flush_requests: Some(sender), flush_thread: Some(flush_thread), flushes }),
        })
    }

    /// The log store of one raft group. Calling it again for the same group gives another
    /// handle on the same data.
    pub fn log_store<C>(&self, group: impl Into<GroupId>) -> Result<LogStore<C>, Error>
    where
        C: RaftTypeConfig,
    {
        let group = group.into();
        let tree = self.inner.db.open_tree(keys::log_tree_name(group))?;
        Ok(LogStore::new(self.clone(), group, tree))
    }

    /// The snapshot store of one raft group, for the group's state machine.
    pub fn snapshot_store<C>(&self, group: impl Into<GroupId>) -> Result<SnapshotStore<C>, Error>
    where
        C: RaftTypeConfig,
    {
        let group = group.into();
        let tree = self.inner.db.open_tree(keys::snapshot_tree_name(group))?;
        Ok(SnapshotStore::new(self.clone(), group, tree))
    }

    /// The groups that have a log tree in this database, in increasing order.
    pub fn groups(&self) -> Vec<GroupId> {
        let mut groups: Vec<GroupId> =
            self.inner.db.tree_names().iter().filter_map(|name| keys::group_of_log_tree(name)).collect();
        groups.sort();
        groups
    }

    /// Makes every write done so far, in every group, durable.
    pub async fn flush(&self) -> Result<(), Error> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        self.request_flush(
            Box::new(move |result| {
                let _ = sender.send(result);
            }),
            Urgency::Now,
        )?;
        match receiver.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(io_error)) => Err(Error::Sled(io_error.into())),
            Err(_) => Err(Error::FlusherStopped),
        }
    }

    /// How many flushes (fsyncs) the flush thread has done since the store was opened.
    /// With concurrent writers it is smaller than the number of flush requests.
    pub fn flush_count(&self) -> u64 {
        self.inner.flushes.count.load(Ordering::Relaxed)
    }

    /// Flushes done so far and the time spent in them (for metrics: their mean duration is
    /// the disk's share of every commit's latency).
    pub fn flush_totals(&self) -> FlushTotals {
        FlushTotals {
            count: self.inner.flushes.count.load(Ordering::Relaxed),
            busy: Duration::from_nanos(self.inner.flushes.nanos.load(Ordering::Relaxed)),
            blobs_synced: self.inner.flushes.blobs.load(Ordering::Relaxed),
        }
    }

    /// The underlying sled database, for inspection and tools.
    pub fn db(&self) -> &sled::Db {
        &self.inner.db
    }

    /// Queues `done` to run after a flush that covers every write made before this call: the
    /// next one, or for [`Urgency::Soon`] possibly a later one. If the flush thread is gone,
    /// `done` is not run and an error is returned.
    pub(crate) fn request_flush(&self, done: FlushDone, urgency: Urgency) -> Result<(), Error> {
        let Some(requests) = &self.inner.flush_requests else {
            return Err(Error::FlusherStopped);
        };
        requests.send(FlushRequest { done, urgency }).map_err(|_| Error::FlusherStopped)
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store").field("flush_count", &self.flush_count()).finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel lets the thread answer what is still queued and exit; joining it
        // makes sure its handle on the database is gone before ours, so the database is really
        // closed (and can be opened again) once the last `Store` is dropped.
        self.flush_requests.take();
        if let Some(thread) = self.flush_thread.take() {
            let _ = thread.join();
        }
    }
}

/// The file in a sled directory that holds its log.
const SLED_LOG_FILE: &str = "db";

/// The folder in a sled directory that holds values too large for the log.
const SLED_BLOB_DIR: &str = "blobs";

fn sync_directory(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// What the flush thread syncs after sled's flush.
struct Disk {
    path: PathBuf,
    log_file: File,
    /// The blob files synced so far (sled never rewrites one: a new value gets a new file).
    synced_blobs: HashSet<OsString>,
}

impl Disk {
    /// `fdatasync` of the log file, then a sync of every blob file not synced yet; returns
    /// how many blob files it synced.
    fn sync(&mut self) -> io::Result<u64> {
        self.log_file.sync_data()?;
        let blobs = self.path.join(SLED_BLOB_DIR);
        let entries = match std::fs::read_dir(&blobs) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(error) => return Err(error),
        };
        let mut present = HashSet::new();
        let mut new = 0;
        for entry in entries {
            let name = entry?.file_name();
            if !self.synced_blobs.contains(&name) {
                match File::open(blobs.join(&name)) {
                    Ok(file) => file.sync_all()?,
                    // sled removes the blobs of replaced values as it goes.
                    Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                    Err(error) => return Err(error),
                }
                new += 1;
            }
            present.insert(name);
        }
        self.synced_blobs = present;
        if new > 0 {
            sync_directory(&blobs)?;
        }
        Ok(new)
    }
}

/// sled's flush, then the syncs sled leaves out (see the module documentation).
fn flush_durably(db: &sled::Db, disk: Option<&mut Disk>, stats: &FlushStats) -> io::Result<()> {
    #[cfg(feature = "fault-injection")]
    crate::faults::before_flush(disk.as_ref().map(|disk| disk.path.as_path()))?;
    db.flush().map_err(|error| io::Error::other(format!("sled flush failed: {error}")))?;
    if let Some(disk) = disk {
        let blobs = disk.sync().map_err(|error| io::Error::new(error.kind(), format!("sync failed: {error}")))?;
        stats.blobs.fetch_add(blobs, Ordering::Relaxed);
    }
    Ok(())
}

/// Body of the flush thread: wait for a request, take all the others already waiting, flush
/// once, answer them all. Requests that may wait ([`Urgency::Soon`]) are held until an urgent
/// one comes or the oldest of them has waited [`DEFERRED_FLUSH_WAIT`].
fn run_flush_thread(
    db: sled::Db,
    mut disk: Option<Disk>,
    requests: mpsc::Receiver<FlushRequest>,
    flushes: Arc<FlushStats>,
) {
    let mut waiting: Vec<FlushDone> = Vec::new();
    // When the oldest deferred request must be flushed, while one is held.
    let mut due: Option<Instant> = None;
    let mut open = true;
    while open {
        let first = match due {
            None => requests.recv().ok(),
            Some(due) => match requests.recv_timeout(due.saturating_duration_since(Instant::now())) {
                Ok(request) => Some(request),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    open = false;
                    None
                }
            },
        };
        if first.is_none() && due.is_none() {
            // The channel closed with nothing held: done.
            break;
        }
        let mut urgent = false;
        for request in first.into_iter().chain(requests.try_iter()) {
            match request.urgency {
                Urgency::Now => urgent = true,
                Urgency::Soon => {
                    due.get_or_insert_with(|| Instant::now() + DEFERRED_FLUSH_WAIT);
                }
            }
            waiting.push(request.done);
        }
        if open && !urgent && due.is_some_and(|due| Instant::now() < due) {
            continue;
        }
        due = None;
        let started = Instant::now();
        let result = flush_durably(&db, disk.as_mut(), &flushes);
        let nanos = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        flushes.nanos.fetch_add(nanos, Ordering::Relaxed);
        flushes.count.fetch_add(1, Ordering::Relaxed);
        for done in waiting.drain(..) {
            let outcome = match &result {
                Ok(()) => Ok(()),
                Err(error) => Err(io::Error::new(error.kind(), error.to_string())),
            };
            done(outcome);
        }
    }
}
