//! Disk faults for fault tests, compiled in only with the `fault-injection` feature: a
//! slow `fdatasync` and a failing one (what a full or broken disk gives), for every store
//! of the process, or for the store in one directory (several nodes of an in-process test
//! cluster, each with a disk of its own). Without the feature the flush path has no hook
//! at all.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

static FLUSH_DELAY_MS: AtomicU64 = AtomicU64::new(0);
static FLUSH_FAILS: AtomicBool = AtomicBool::new(false);
/// The faults of the stores in one directory: (added delay, failing), on top of the
/// process-wide ones.
static DIRECTORY_FAULTS: Mutex<BTreeMap<PathBuf, (Duration, bool)>> = Mutex::new(BTreeMap::new());

fn directory_faults() -> std::sync::MutexGuard<'static, BTreeMap<PathBuf, (Duration, bool)>> {
    DIRECTORY_FAULTS.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Every flush of the store opened in `directory` (as the path it was opened with) takes
/// `delay` longer, and fails if `fails`; `(Duration::ZERO, false)` removes its faults.
pub fn set_directory_faults(directory: &Path, delay: Duration, fails: bool) {
    let mut faults = directory_faults();
    if delay.is_zero() && !fails {
        faults.remove(directory);
    } else {
        faults.insert(directory.to_path_buf(), (delay, fails));
    }
}

/// Every flush from now on takes `delay` longer (zero: as long as the disk takes).
pub fn set_flush_delay(delay: Duration) {
    FLUSH_DELAY_MS.store(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), Ordering::Relaxed);
}

/// Every flush from now on fails as a full disk does (or stops failing).
pub fn set_flush_fails(fails: bool) {
    FLUSH_FAILS.store(fails, Ordering::Relaxed);
}

/// The faults in force: the added flush delay and whether flushes fail.
pub fn disk_faults() -> (Duration, bool) {
    (Duration::from_millis(FLUSH_DELAY_MS.load(Ordering::Relaxed)), FLUSH_FAILS.load(Ordering::Relaxed))
}

/// Called by the flush thread of the store in `directory` (none for a temporary store)
/// before each flush: waits out the delay, then fails the flush if told to.
pub(crate) fn before_flush(directory: Option<&Path>) -> io::Result<()> {
    let (mut delay, mut fails) = disk_faults();
    if let Some((more, failing)) = directory.and_then(|directory| directory_faults().get(directory).copied()) {
        delay += more;
        fails |= failing;
    }
    if !delay.is_zero() {
        std::thread::sleep(delay);
    }
    if fails {
        return Err(io::Error::new(io::ErrorKind::StorageFull, "injected disk fault: no space left on device"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Store;

    #[tokio::test]
    async fn a_directory_fault_fails_the_flushes_of_that_store_only() {
        let (broken, sound) = (tempfile::TempDir::new().unwrap(), tempfile::TempDir::new().unwrap());
        let (failing, passing) = (Store::open(broken.path()).unwrap(), Store::open(sound.path()).unwrap());
        set_directory_faults(broken.path(), Duration::ZERO, true);
        assert!(failing.flush().await.is_err(), "the broken disk's flush failed");
        assert!(passing.flush().await.is_ok(), "another store's disk is sound");
        set_directory_faults(broken.path(), Duration::ZERO, false);
        assert!(failing.flush().await.is_ok(), "mended");
        assert!(directory_faults().is_empty(), "a mended directory leaves no entry");
    }
}
