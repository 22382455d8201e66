//! The operators' audit log: who did what to the cluster, when, and how it went.
//!
//! The admin API records every action an operator takes (a leadership transfer, a drain,
//! a config change, an aborted PK, a membership change) with `LobbyAction::RecordAudit`.
//! The lobby keeps the last [`AUDIT_CAPACITY`] entries, replicated like the rest of its
//! state, so the log outlives the node that took the action and every node shows the same
//! entries. It is bounded twice: in entries, and in the length of each text field
//! ([`AuditRecord::bounded`] cuts longer texts at a character boundary, the same way on
//! every replica). A record carries an id the shell picks at random, so that sending it
//! again after an unknown outcome (the leader changed meanwhile) records it once.

use crate::ids::TimestampMs;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// How many entries the lobby keeps; the oldest goes when a new one comes.
pub const AUDIT_CAPACITY: usize = 1_000;
/// The longest `who`, in bytes.
pub const MAX_WHO_BYTES: usize = 64;
/// The longest `what` or `outcome`, in bytes.
pub const MAX_TEXT_BYTES: usize = 512;

/// What an operator did, as the admin API describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Picked at random by the shell; a record whose id the log holds already is not
    /// recorded again.
    pub id: u64,
    /// The operator's name as the console gives it, or how the request came
    /// ("admin API").
    pub who: String,
    /// The action, e.g. "transfer leadership of group 2 to node 3".
    pub what: String,
    /// How it went: "done", or the error.
    pub outcome: String,
}

impl AuditRecord {
    /// The record with each text cut to its bound.
    pub fn bounded(&self) -> AuditRecord {
        AuditRecord {
            id: self.id,
            who: cut(&self.who, MAX_WHO_BYTES),
            what: cut(&self.what, MAX_TEXT_BYTES),
            outcome: cut(&self.outcome, MAX_TEXT_BYTES),
        }
    }
}

/// One entry of the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Counts from 1 over the life of the cluster; a reader asks for the entries after
    /// the last one it saw.
    pub seq: u64,
    /// The record's id.
    pub id: u64,
    /// The lobby's time when the entry was recorded (the proposing leader's clock).
    pub at: TimestampMs,
    pub who: String,
    pub what: String,
    pub outcome: String,
}

/// The last [`AUDIT_CAPACITY`] entries, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditLog {
    last_seq: u64,
    entries: VecDeque<AuditEntry>,
}

impl AuditLog {
    /// Appends `record` (cut to its bounds) at `at`, dropping the oldest entry when full.
    /// Returns the new entry's `seq`, or `None` if the log holds a record with its id.
    pub(crate) fn record(&mut self, at: TimestampMs, record: &AuditRecord) -> Option<u64> {
        if self.entries.iter().any(|entry| entry.id == record.id) {
            return None;
        }
        let record = record.bounded();
        self.last_seq += 1;
        if self.entries.len() == AUDIT_CAPACITY {
            self.entries.pop_front();
        }
        self.entries.push_back(AuditEntry {
            seq: self.last_seq,
            id: record.id,
            at,
            who: record.who,
            what: record.what,
            outcome: record.outcome,
        });
        Some(self.last_seq)
    }

    /// The entries held, oldest first.
    pub fn entries(&self) -> impl DoubleEndedIterator<Item = &AuditEntry> + ExactSizeIterator {
        self.entries.iter()
    }

    /// The entries recorded after entry `seq`, oldest first.
    pub fn after(&self, seq: u64) -> impl Iterator<Item = &AuditEntry> {
        self.entries.iter().filter(move |entry| entry.seq > seq)
    }

    /// The `seq` of the last entry ever recorded (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn check(&self) -> Result<(), String> {
        if self.entries.len() > AUDIT_CAPACITY {
            return Err(format!("{} audit entries, over the bound of {AUDIT_CAPACITY}", self.entries.len()));
        }
        let mut previous = 0;
        for entry in &self.entries {
            if entry.seq <= previous || entry.seq > self.last_seq {
                return Err(format!(
                    "audit entry {} out of order (after {previous}, last {})",
                    entry.seq, self.last_seq
                ));
            }
            previous = entry.seq;
        }
        Ok(())
    }
}

/// `text` cut to at most `bytes` bytes, at a character boundary.
fn cut(text: &str, bytes: usize) -> String {
    if text.len() <= bytes {
        return text.to_owned();
    }
    let mut end = bytes;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, what: &str) -> AuditRecord {
        AuditRecord { id, who: "ops".into(), what: what.into(), outcome: "done".into() }
    }

    #[test]
    fn the_log_keeps_the_last_entries_in_order() {
        let mut log = AuditLog::default();
        for i in 0..AUDIT_CAPACITY + 5 {
            log.record(TimestampMs(i as i64), &record(i as u64, &format!("action {i}")));
        }
        assert_eq!(log.len(), AUDIT_CAPACITY);
        assert_eq!(log.last_seq(), (AUDIT_CAPACITY + 5) as u64);
        assert_eq!(log.entries().next().map(|entry| entry.seq), Some(6));
        assert_eq!(
            log.after(log.last_seq() - 2).map(|entry| entry.what.as_str()).collect::<Vec<_>>(),
            ["action 1003", "action 1004"]
        );
        log.check().unwrap();
    }

    #[test]
    fn a_record_sent_again_is_recorded_once() {
        let mut log = AuditLog::default();
        assert_eq!(log.record(TimestampMs(1), &record(7, "drain node 2")), Some(1));
        assert_eq!(log.record(TimestampMs(2), &record(7, "drain node 2")), None);
        assert_eq!(log.record(TimestampMs(3), &record(8, "drain node 3")), Some(2));
        assert_eq!(log.len(), 2);
    }

    #[test]
    fn long_texts_are_cut_at_a_character_boundary() {
        let mut log = AuditLog::default();
        let who = "é".repeat(40); // 80 bytes
        log.record(TimestampMs(1), &AuditRecord { id: 1, who, what: "x".repeat(600), outcome: String::new() });
        let entry = log.entries().next().unwrap();
        assert_eq!(entry.who, "é".repeat(32));
        assert_eq!(entry.what.len(), MAX_TEXT_BYTES);
    }
}
