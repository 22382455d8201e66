//! The timers a state machine has armed, in due order.

use crate::command::Timer;
use crate::ids::TimestampMs;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Each timer is armed at most once; arming it again moves it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deadlines {
    by_time: BTreeSet<(TimestampMs, Timer)>,
    by_timer: BTreeMap<Timer, TimestampMs>,
}

impl Deadlines {
    pub fn arm(&mut self, at: TimestampMs, timer: Timer) {
        if let Some(old) = self.by_timer.insert(timer, at) {
            self.by_time.remove(&(old, timer));
        }
        self.by_time.insert((at, timer));
    }

    pub fn disarm(&mut self, timer: Timer) {
        if let Some(at) = self.by_timer.remove(&timer) {
            self.by_time.remove(&(at, timer));
        }
    }

    /// Disarms `timer` if it is due at `now`; says whether it was.
    pub fn take_due(&mut self, timer: Timer, now: TimestampMs) -> bool {
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

    pub fn due(&self, now: TimestampMs) -> impl Iterator<Item = Timer> + '_ {
        self.by_time.iter().take_while(move |(at, _)| *at <= now).map(|(_, timer)| *timer)
    }

    pub fn when(&self, timer: Timer) -> Option<TimestampMs> {
        self.by_timer.get(&timer).copied()
    }
}
