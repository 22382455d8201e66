//! The push cadence a viewer should see (`docs/protocol.md` §7, "A PK's life"): after a
//! change, at most one state push per cool-down (1 s); at least one every period (5 s)
//! while the PK runs. Every push counts for both rules; the pushes that mark a
//! transition (the PK's end, and the first push a viewer sees) may come sooner.
//!
//! The checker reads the pushes' `version` (the node's clock when it rendered them), so
//! the client's own scheduling does not blur the spacing it measures.

/// The rules, and how much slack a measurement gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CadenceRules {
    /// Two pushes closer than this (less `early_slack_ms`) break the cool-down.
    pub cooldown_ms: i64,
    /// Two pushes further apart than this (plus `late_slack_ms`) break the period.
    pub period_ms: i64,
    pub early_slack_ms: i64,
    pub late_slack_ms: i64,
}

impl Default for CadenceRules {
    fn default() -> Self {
        CadenceRules { cooldown_ms: 1_000, period_ms: 5_000, early_slack_ms: 20, late_slack_ms: 500 }
    }
}

/// What broke a rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Two pushes `spacing_ms` apart, closer than the cool-down.
    TooFrequent { spacing_ms: i64 },
    /// No push for `gap_ms`, longer than the period.
    TooSparse { gap_ms: i64 },
}

/// Checks the state pushes of one PK as one viewer receives them.
#[derive(Clone, Debug)]
pub struct CadenceChecker {
    rules: CadenceRules,
    /// The `version` of the last push, while the PK runs.
    last_ms: Option<i64>,
    ended: bool,
    pub pushes: u64,
    pub too_frequent: u64,
    pub too_sparse: u64,
    pub shortest_spacing_ms: Option<i64>,
    pub longest_gap_ms: Option<i64>,
}

impl CadenceChecker {
    pub fn new(rules: CadenceRules) -> CadenceChecker {
        CadenceChecker {
            rules,
            last_ms: None,
            ended: false,
            pushes: 0,
            too_frequent: 0,
            too_sparse: 0,
            shortest_spacing_ms: None,
            longest_gap_ms: None,
        }
    }

    /// A state push rendered at `version_ms` with `status` (0 opening, 1 battle, 2 over,
    /// 3 ended abnormally). Returns the rule it broke, if any.
    pub fn observe(&mut self, version_ms: i64, status: u64) -> Option<Violation> {
        if self.ended {
            // The end is pushed when the battle ends and again when the PK settles.
            return None;
        }
        self.pushes += 1;
        let ends = status >= 2;
        self.ended = ends;
        let last = self.last_ms.replace(version_ms)?;
        let spacing = version_ms - last;
        self.longest_gap_ms = Some(self.longest_gap_ms.map_or(spacing, |longest| longest.max(spacing)));
        if spacing > self.rules.period_ms + self.rules.late_slack_ms {
            self.too_sparse += 1;
            return Some(Violation::TooSparse { gap_ms: spacing });
        }
        if ends {
            return None;
        }
        self.shortest_spacing_ms = Some(self.shortest_spacing_ms.map_or(spacing, |shortest| shortest.min(spacing)));
        if spacing < self.rules.cooldown_ms - self.rules.early_slack_ms {
            self.too_frequent += 1;
            return Some(Violation::TooFrequent { spacing_ms: spacing });
        }
        None
    }

    /// The run is over at `now_ms`: a PK still running whose last push is older than the
    /// period broke it.
    pub fn finish(&mut self, now_ms: i64) -> Option<Violation> {
        let last = self.last_ms.filter(|_| !self.ended)?;
        let gap = now_ms - last;
        if gap > self.rules.period_ms + self.rules.late_slack_ms {
            self.too_sparse += 1;
            self.ended = true;
            return Some(Violation::TooSparse { gap_ms: gap });
        }
        None
    }

    pub fn violations(&self) -> u64 {
        self.too_frequent + self.too_sparse
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checker() -> CadenceChecker {
        CadenceChecker::new(CadenceRules::default())
    }

    #[test]
    fn a_push_per_second_under_changes_and_one_per_period_when_quiet_is_fine() {
        let mut cadence = checker();
        for version in [0, 1_000, 2_000, 3_001, 8_001, 13_000, 14_000] {
            assert_eq!(cadence.observe(version, 1), None, "at {version}");
        }
        assert_eq!(cadence.violations(), 0);
        assert_eq!(cadence.shortest_spacing_ms, Some(1_000));
        assert_eq!(cadence.longest_gap_ms, Some(5_000));
        assert_eq!(cadence.pushes, 7);
    }

    #[test]
    fn pushes_closer_than_the_cooldown_or_further_apart_than_the_period_are_counted() {
        let mut cadence = checker();
        cadence.observe(0, 0);
        assert_eq!(cadence.observe(400, 1), Some(Violation::TooFrequent { spacing_ms: 400 }));
        assert_eq!(cadence.observe(1_390, 1), None, "within the slack of the cool-down");
        assert_eq!(cadence.observe(7_000, 1), Some(Violation::TooSparse { gap_ms: 5_610 }));
        assert_eq!((cadence.too_frequent, cadence.too_sparse), (1, 1));
    }

    #[test]
    fn the_end_may_follow_a_change_at_once_and_nothing_counts_after_it() {
        let mut cadence = checker();
        cadence.observe(0, 1);
        assert_eq!(cadence.observe(100, 2), None, "the end is a transition");
        assert_eq!(cadence.observe(150, 2), None, "the settlement repeats the end");
        assert_eq!(cadence.finish(60_000), None, "an ended PK owes no more pushes");
        assert_eq!(cadence.violations(), 0);
    }

    #[test]
    fn a_running_pk_silent_at_the_end_of_the_run_broke_the_period() {
        let mut cadence = checker();
        cadence.observe(0, 1);
        assert_eq!(cadence.finish(4_000), None);
        assert_eq!(cadence.finish(6_000), Some(Violation::TooSparse { gap_ms: 6_000 }));
        assert_eq!(cadence.finish(9_000), None, "counted once");
        assert_eq!(cadence.too_sparse, 1);
    }
}
