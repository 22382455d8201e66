//! What a run measured: latency histograms (HdrHistogram, microseconds), counts by
//! outcome, and one row per second for the progress line and the CSV.
//!
//! Operations meant to go out before the end of the warm-up are shown in the progress
//! lines but left out of the summary. Workers record with [`Recorder::begin`] and
//! [`Recorder::finish`]; the reporter calls [`Recorder::tick`] once a second.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

use super::schedule::Tickets;

/// The largest latency a histogram holds (longer ones are recorded as this): one hour.
const HIGHEST_MICROS: u64 = 3_600_000_000;

/// A histogram of microseconds, 1 µs to one hour, three significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIGHEST_MICROS, 3).expect("fixed, valid bounds")
}

/// Records `latency` into `histogram`, clamped to its range.
pub fn record_latency(histogram: &mut Histogram<u64>, latency: Duration) {
    let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).clamp(1, HIGHEST_MICROS);
    let _ = histogram.record(micros);
}

/// How one operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered with success; `items` is how many units of work it carried (gifts).
    Ok { items: u64 },
    /// Failed with `code` (a reply code, or a transport failure such as `timeout`); of
    /// its items, `items_ok` still succeeded (a batch whose gifts fail one by one).
    Failed { code: String, items: u64, items_ok: u64 },
}

/// One second of the run, as the progress line shows it and the CSV keeps it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SecondRow {
    /// Seconds since the load started (the end of this second).
    pub second: u64,
    /// `warmup` or `measure`.
    pub phase: &'static str,
    pub ok: u64,
    pub errors: u64,
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub in_flight: u64,
    pub backlog: u64,
}

/// The totals of the measured part of the run.
#[derive(Clone, Debug)]
pub struct Totals {
    pub primary: Histogram<u64>,
    pub others: BTreeMap<String, Histogram<u64>>,
    pub ok: u64,
    pub errors: u64,
    pub errors_by_code: BTreeMap<String, u64>,
    pub items_ok: u64,
    pub items_failed: u64,
    /// When the last measured operation finished.
    pub last_finish: Option<Instant>,
}

struct Second {
    histogram: Histogram<u64>,
    ok: u64,
    errors: u64,
}

struct State {
    totals: Totals,
    second: Second,
    rows: Vec<SecondRow>,
}

/// Shared by every worker of a run.
pub struct Recorder {
    measure_from: Instant,
    started: AtomicU64,
    finished: AtomicU64,
    state: Mutex<State>,
}

impl Recorder {
    /// A recorder whose summary counts operations meant to go out at `measure_from` or
    /// later.
    pub fn new(measure_from: Instant) -> Recorder {
        let totals = Totals {
            primary: new_histogram(),
            others: BTreeMap::new(),
            ok: 0,
            errors: 0,
            errors_by_code: BTreeMap::new(),
            items_ok: 0,
            items_failed: 0,
            last_finish: None,
        };
        Recorder {
            measure_from,
            started: AtomicU64::new(0),
            finished: AtomicU64::new(0),
            state: Mutex::new(State {
                totals,
                second: Second { histogram: new_histogram(), ok: 0, errors: 0 },
                rows: Vec::new(),
            }),
        }
    }

    pub fn measure_from(&self) -> Instant {
        self.measure_from
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An operation goes out now.
    pub fn begin(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    /// The operation meant to go out at `intended` ended with `outcome`; its latency runs
    /// from `intended` to now.
    pub fn finish(&self, intended: Instant, outcome: Outcome) {
        let now = Instant::now();
        self.finished.fetch_add(1, Ordering::Relaxed);
        let latency = now.saturating_duration_since(intended);
        let measured = intended >= self.measure_from;
        let mut state = self.state();
        match &outcome {
            Outcome::Ok { .. } => {
                state.second.ok += 1;
                record_latency(&mut state.second.histogram, latency);
            }
            Outcome::Failed { .. } => state.second.errors += 1,
        }
        if !measured {
            return;
        }
        let totals = &mut state.totals;
        totals.last_finish = Some(now);
        match outcome {
            Outcome::Ok { items } => {
                totals.ok += 1;
                totals.items_ok += items;
                record_latency(&mut totals.primary, latency);
            }
            Outcome::Failed { code, items, items_ok } => {
                totals.errors += 1;
                totals.items_ok += items_ok;
                totals.items_failed += items.saturating_sub(items_ok);
                *totals.errors_by_code.entry(code).or_default() += 1;
            }
        }
    }

    /// A latency of another kind (`delivery`, `created`, ...) for something meant to
    /// happen at `intended`; kept if that is within the measured part of the run.
    pub fn record_other(&self, name: &str, intended: Instant, latency: Duration) {
        if intended < self.measure_from {
            return;
        }
        let mut state = self.state();
        let histogram = state.totals.others.entry(name.to_owned()).or_insert_with(new_histogram);
        record_latency(histogram, latency);
    }

    /// Makes sure a named histogram exists (empty if nothing is recorded into it), so that
    /// the summary shows it with a count of 0 rather than leaving it out.
    pub fn declare_other(&self, name: &str) {
        self.state().totals.others.entry(name.to_owned()).or_insert_with(new_histogram);
    }

    /// An error that is not an operation's outcome (a gift never delivered, a push
    /// missing), counted by `code` in the measured part of the run.
    pub fn count_error(&self, code: &str) {
        let mut state = self.state();
        *state.totals.errors_by_code.entry(code.to_owned()).or_default() += 1;
    }

    pub fn in_flight(&self) -> u64 {
        self.started.load(Ordering::Relaxed).saturating_sub(self.finished.load(Ordering::Relaxed))
    }

    pub fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// Closes the current second (the `second`-th since the load started), keeps its row
    /// and returns it.
    pub fn tick(&self, second: u64, now: Instant, tickets: &Tickets) -> SecondRow {
        let in_flight = self.in_flight();
        let backlog = tickets.backlog(now, self.started());
        let mut state = self.state();
        let current = std::mem::replace(&mut state.second, Second { histogram: new_histogram(), ok: 0, errors: 0 });
        let quantile = |q: f64| (!current.histogram.is_empty()).then(|| current.histogram.value_at_quantile(q));
        let row = SecondRow {
            second,
            phase: if now <= self.measure_from { "warmup" } else { "measure" },
            ok: current.ok,
            errors: current.errors,
            p50_us: quantile(0.5),
            p99_us: quantile(0.99),
            in_flight,
            backlog,
        };
        state.rows.push(row.clone());
        row
    }

    /// The measured totals so far.
    pub fn totals(&self) -> Totals {
        self.state().totals.clone()
    }

    /// Every second's row so far.
    pub fn rows(&self) -> Vec<SecondRow> {
        self.state().rows.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::schedule::LoadMode;

    #[tokio::test(start_paused = true)]
    async fn warmup_operations_show_in_the_seconds_but_not_in_the_totals() {
        let start = Instant::now();
        let recorder = Recorder::new(start + Duration::from_secs(1));
        let tickets = Tickets::new(LoadMode::Closed { clients: 1 }, start, start + Duration::from_secs(3));
        recorder.begin();
        tokio::time::sleep(Duration::from_millis(2)).await;
        recorder.finish(start, Outcome::Ok { items: 1 });
        let warmup = recorder.tick(1, Instant::now(), &tickets);
        assert_eq!((warmup.phase, warmup.ok), ("warmup", 1));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let intended = Instant::now();
        for _ in 0..3 {
            recorder.begin();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        recorder.finish(intended, Outcome::Ok { items: 10 });
        recorder.finish(intended, Outcome::Failed { code: "905041".into(), items: 10, items_ok: 4 });
        assert_eq!(recorder.in_flight(), 1);
        let row = recorder.tick(2, Instant::now(), &tickets);
        assert_eq!((row.phase, row.ok, row.errors, row.in_flight), ("measure", 1, 1, 1));
        assert_eq!(row.p50_us, Some(new_histogram().highest_equivalent(5_000)));
        let totals = recorder.totals();
        assert_eq!((totals.ok, totals.errors, totals.items_ok, totals.items_failed), (1, 1, 14, 6));
        assert_eq!(totals.errors_by_code.get("905041"), Some(&1));
        assert_eq!(totals.primary.len(), 1);
        assert_eq!(recorder.rows().len(), 2);
    }
}
