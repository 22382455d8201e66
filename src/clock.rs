//! The node's wall clock: the only source of the time a leader stamps on the commands it
//! writes (`Command::at`), and of "now" wherever the shell renders time for clients.
//!
//! The machines never read a clock: time enters them only through the log, and they keep
//! `now = max(now, at)`, so a leader whose clock lags cannot move time backwards.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pkd_raft::TimestampMs;

/// This node's clock, in milliseconds since the Unix epoch.
pub fn wall_clock() -> TimestampMs {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let ms = i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX);
    // Clock skew, in fault tests only.
    #[cfg(feature = "fault-injection")]
    let ms = ms.saturating_add(crate::fault_hooks::clock_offset_ms());
    TimestampMs(ms)
}

/// [`wall_clock`] as plain milliseconds.
pub fn now_ms() -> i64 {
    wall_clock().0
}
