//! Newtypes for the identifiers and times the core deals in.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

id_type!(
    /// An app user: an anchor (streamer) or a viewer.
    UserId
);
id_type!(
    /// A live room. In the app an anchor's room usually has the anchor's id, but the
    /// engine never assumes so.
    RoomId
);
id_type!(
    /// A PK, allocated by the lobby in log order, starting at 1.
    PkId
);
id_type!(
    /// The gift service's id for one gift (its transaction id). A retried gift carries
    /// the same id and is counted once.
    GiftId
);

/// Milliseconds since the Unix epoch, as stamped on a command by the leader that
/// proposed it. The core has no clock of its own: time only enters through the log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TimestampMs(pub i64);

impl TimestampMs {
    /// `self + ms`, saturating instead of overflowing.
    pub fn plus(self, ms: i64) -> TimestampMs {
        TimestampMs(self.0.saturating_add(ms))
    }

    /// Milliseconds from `earlier` to `self`, saturating.
    pub fn since(self, earlier: TimestampMs) -> i64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl fmt::Display for TimestampMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Which arena group hosts a PK: a stable mix of the id, so that consecutive ids spread
/// evenly, and the same id always lands on the same group for a given group count.
pub fn arena_for(pk: PkId, arena_count: u32) -> u32 {
    assert!(arena_count > 0, "a cluster has at least one arena group");
    // splitmix64 finaliser: a fixed, well-mixed permutation of u64.
    let mut z = pk.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z % u64::from(arena_count)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arena_routing_is_stable_and_spreads() {
        // Stable: a fixed id maps to a fixed group (a change here would strand running PKs
        // after an upgrade).
        assert_eq!(arena_for(PkId(1), 4), arena_for(PkId(1), 4));
        let mut counts = [0u32; 4];
        for id in 1..=40_000 {
            counts[arena_for(PkId(id), 4) as usize] += 1;
        }
        for count in counts {
            assert!((9_000..11_000).contains(&count), "uneven spread: {counts:?}");
        }
    }

    #[test]
    fn time_arithmetic_saturates() {
        assert_eq!(TimestampMs(i64::MAX - 1).plus(10), TimestampMs(i64::MAX));
        assert_eq!(TimestampMs(5).since(TimestampMs(2)), 3);
    }
}
