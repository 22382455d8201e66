//! The timers a state machine has armed, in due order.

use crate::ids::TimestampMs;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Each timer is armed at most once; arming it again moves it. `T` is the machine's own
/// timer type ([`LobbyTimer`](crate::LobbyTimer) or [`ArenaTimer`](crate::ArenaTimer)),
/// so a machine cannot arm the other kind's timers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deadlines<T: Ord> {
    by_time: BTreeSet<(TimestampMs, T)>,
    by_timer: BTreeMap<T, TimestampMs>,
}

impl<T: Ord> Default for Deadlines<T> {
    fn default() -> Self {
        Deadlines { by_time: BTreeSet::new(), by_timer: BTreeMap::new() }
    }
}

impl<T: Ord + Copy> Deadlines<T> {
    pub fn arm(&mut self, at: TimestampMs, timer: T) {
        if let Some(old) = self.by_timer.insert(timer, at) {
            self.by_time.remove(&(old, timer));
        }
        self.by_time.insert((at, timer));
    }

    pub fn disarm(&mut self, timer: T) {
        if let Some(at) = self.by_timer.remove(&timer) {
            self.by_time.remove(&(at, timer));
        }
    }

    /// Disarms `timer` if it is due at `now`; says whether it was.
    pub fn take_due(&mut self, timer: T, now: TimestampMs) -> bool {
        match self.by_timer.get(&timer) {
            Some(at) if *at <= now => {
                self.disarm(timer);
                true
            }
            _ => false,
        }
    }

    pub fn next(&self) -> Option<TimestampMs> {
        self.by_time.first().map(|(at, _)| *at)
    }

    pub fn due(&self, now: TimestampMs) -> impl Iterator<Item = T> + '_ {
        self.by_time.iter().take_while(move |(at, _)| *at <= now).map(|(_, timer)| *timer)
    }

    pub fn when(&self, timer: T) -> Option<TimestampMs> {
        self.by_timer.get(&timer).copied()
    }
}
