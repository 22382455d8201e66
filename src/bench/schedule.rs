//! When operations go out: the open-loop schedule and the tickets workers take.
//!
//! Open loop (`--rate R`): operation `k` is due at `start + k / R`, whatever happened to
//! the ones before it. A worker takes the next ticket, waits for its due time and sends;
//! when every worker is busy the due tickets wait (the backlog), and their latency is
//! still measured from the due time. A server that stalls for a second therefore shows
//! a second of latency on every operation due in that second, not on one: this is how
//! the harness avoids coordinated omission.
//!
//! Closed loop (`--clients N`): each of N workers sends its next operation as soon as
//! the previous one is answered, and latency is measured from the send. Its throughput
//! is what N patient clients get; its latencies say nothing of a stall's other victims.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How load is generated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LoadMode {
    /// `rate` operations per second over `connections` workers.
    Open { rate: f64, connections: usize },
    /// `clients` workers, each waiting for its answer before the next operation.
    Closed { clients: usize },
}

impl LoadMode {
    /// How many workers (connections) run the operations.
    pub fn workers(&self) -> usize {
        match *self {
            LoadMode::Open { connections, .. } => connections.max(1),
            LoadMode::Closed { clients } => clients.max(1),
        }
    }
}

/// The open-loop schedule: operation `k` is due `k / rate` seconds after the start.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OpenLoopSchedule {
    rate: f64,
}

impl OpenLoopSchedule {
    /// A schedule of `rate` operations per second (more than 0).
    pub fn new(rate: f64) -> OpenLoopSchedule {
        OpenLoopSchedule { rate: rate.max(f64::MIN_POSITIVE) }
    }

    /// How long after the start operation `k` is due.
    pub fn offset(&self, k: u64) -> Duration {
        Duration::from_secs_f64(k as f64 / self.rate)
    }

    /// How many operations are due `elapsed` after the start (those with `offset(k) <=
    /// elapsed`).
    pub fn due_by(&self, elapsed: Duration) -> u64 {
        (elapsed.as_secs_f64() * self.rate).floor() as u64 + 1
    }
}

/// One operation to run: its index and when it was meant to go out.
#[derive(Clone, Copy, Debug)]
pub struct Ticket {
    pub index: u64,
    pub intended: Instant,
}

/// Hands out tickets to the workers until the end of the run.
pub struct Tickets {
    mode: LoadMode,
    schedule: Option<OpenLoopSchedule>,
    start: Instant,
    end: Instant,
    next: AtomicU64,
    stopped: AtomicBool,
}

impl Tickets {
    /// Tickets from `start` (when the first operation is due) until `end`.
    pub fn new(mode: LoadMode, start: Instant, end: Instant) -> Tickets {
        let schedule = match mode {
            LoadMode::Open { rate, .. } => Some(OpenLoopSchedule::new(rate)),
            LoadMode::Closed { .. } => None,
        };
        Tickets { mode, schedule, start, end, next: AtomicU64::new(0), stopped: AtomicBool::new(false) }
    }

    pub fn mode(&self) -> LoadMode {
        self.mode
    }

    pub fn start(&self) -> Instant {
        self.start
    }

    pub fn end(&self) -> Instant {
        self.end
    }

    /// The next ticket, once it is due; `None` when the run is over.
    pub async fn next(&self) -> Option<Ticket> {
        if self.stopped.load(Ordering::Relaxed) {
            return None;
        }
        match self.schedule {
            Some(schedule) => {
                let index = self.next.fetch_add(1, Ordering::Relaxed);
                let intended = self.start + schedule.offset(index);
                if intended >= self.end {
                    return None;
                }
                tokio::time::sleep_until(intended).await;
                (!self.stopped.load(Ordering::Relaxed)).then_some(Ticket { index, intended })
            }
            None => {
                let now = Instant::now();
                if now < self.start {
                    tokio::time::sleep_until(self.start).await;
                }
                let now = Instant::now();
                if now >= self.end {
                    return None;
                }
                Some(Ticket { index: self.next.fetch_add(1, Ordering::Relaxed), intended: now })
            }
        }
    }

    /// Operations due by now that no worker has taken yet (open loop only).
    pub fn backlog(&self, now: Instant, started: u64) -> u64 {
        match self.schedule {
            Some(schedule) if now >= self.start => {
                let due = schedule.due_by(now.min(self.end).duration_since(self.start));
                due.saturating_sub(started)
            }
            _ => 0,
        }
    }

    /// Ends the run early: workers get no more tickets.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_loop_schedule_spaces_operations_evenly_from_the_start() {
        let schedule = OpenLoopSchedule::new(1000.0);
        assert_eq!(schedule.offset(0), Duration::ZERO);
        assert_eq!(schedule.offset(1), Duration::from_millis(1));
        assert_eq!(schedule.offset(2500), Duration::from_millis(2500));
        assert_eq!(schedule.due_by(Duration::ZERO), 1);
        assert_eq!(schedule.due_by(Duration::from_micros(999)), 1);
        assert_eq!(schedule.due_by(Duration::from_millis(1)), 2);
        assert_eq!(schedule.due_by(Duration::from_secs(1)), 1001);
        let slow = OpenLoopSchedule::new(0.5);
        assert_eq!(slow.offset(3), Duration::from_secs(6));
        assert_eq!(slow.due_by(Duration::from_secs(5)), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_tickets_keep_their_due_times_however_late_they_are_taken() {
        let start = Instant::now();
        let tickets =
            Tickets::new(LoadMode::Open { rate: 100.0, connections: 1 }, start, start + Duration::from_millis(100));
        let first = tickets.next().await.unwrap();
        assert_eq!((first.index, first.intended), (0, start));
        // A stall of 55 ms: the tickets due meanwhile are late, and say so.
        tokio::time::sleep(Duration::from_millis(55)).await;
        assert_eq!(tickets.backlog(Instant::now(), 1), 5, "operations 1 to 5 are due and waiting");
        let late = tickets.next().await.unwrap();
        assert_eq!(late.intended, start + Duration::from_millis(10));
        assert!(Instant::now() >= late.intended + Duration::from_millis(45));
        let mut taken = 2;
        while tickets.next().await.is_some() {
            taken += 1;
        }
        assert_eq!(taken, 10, "10 operations fit in 100 ms at 100/s");
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_tickets_go_out_at_once_until_the_end_or_a_stop() {
        let start = Instant::now();
        let tickets = Tickets::new(LoadMode::Closed { clients: 4 }, start, start + Duration::from_secs(1));
        let ticket = tickets.next().await.unwrap();
        assert_eq!(ticket.intended, Instant::now());
        assert_eq!(tickets.backlog(Instant::now(), 0), 0);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(tickets.next().await.unwrap().index, 1);
        tickets.stop();
        assert!(tickets.next().await.is_none());
    }
}
