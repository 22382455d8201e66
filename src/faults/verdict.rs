//! A checker's finding ([`Verdict`]), shared by every checker of a fault run.

use serde::Serialize;

/// Violations listed in full per checker; more are counted only.
pub const MAX_EVIDENCE: usize = 50;

/// One checker's finding.
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub name: &'static str,
    pub claim: &'static str,
    pub passed: bool,
    /// How many things it checked (gifts, PKs, anchors...).
    pub checked: u64,
    pub violations: u64,
    /// The first violations, each with its evidence.
    pub evidence: Vec<String>,
    /// Facts worth knowing that are not violations.
    pub notes: Vec<String>,
    /// Why the checker did not run (the run lacked what it checks): such a verdict is
    /// neither a pass (`passed` is false) nor a violation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_run: Option<String>,
}

impl Verdict {
    pub(super) fn new(name: &'static str, claim: &'static str) -> Verdict {
        Verdict {
            name,
            claim,
            passed: true,
            checked: 0,
            violations: 0,
            evidence: Vec::new(),
            notes: Vec::new(),
            not_run: None,
        }
    }

    /// A checker that does not apply to this run, and why.
    pub(super) fn not_run(name: &'static str, claim: &'static str, why: &str) -> Verdict {
        Verdict { passed: false, not_run: Some(why.to_owned()), ..Verdict::new(name, claim) }
    }

    /// Found a violation (a checker that did not run found none).
    pub fn failed(&self) -> bool {
        !self.passed && self.not_run.is_none()
    }

    pub(super) fn violation(&mut self, evidence: String) {
        self.passed = false;
        self.violations += 1;
        if self.evidence.len() < MAX_EVIDENCE {
            self.evidence.push(evidence);
        }
    }
}
