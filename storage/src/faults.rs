//! Disk faults for fault tests, compiled in only with the `fault-injection` feature: a
//! slow `fdatasync` and a failing one (what a full or broken disk gives), for every store
//! of the process. Without the feature the flush path has no hook at all.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

static FLUSH_DELAY_MS: AtomicU64 = AtomicU64::new(0);
static FLUSH_FAILS: AtomicBool = AtomicBool::new(false);

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

/// Called by the flush thread before each flush: waits out the delay, then fails the
/// flush if told to.
pub(crate) fn before_flush() -> io::Result<()> {
    let (delay, fails) = disk_faults();
    if !delay.is_zero() {
        std::thread::sleep(delay);
    }
    if fails {
        return Err(io::Error::new(io::ErrorKind::StorageFull, "injected disk fault: no space left on device"));
    }
    Ok(())
}
