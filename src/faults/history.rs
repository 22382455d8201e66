//! What a fault run records: every gift with each attempt's answer and its outcome,
//! every PK state the anchors read, every fault the nemesis caused, and the settled
//! history each node answers at the end. Times are wall clock ms (the clock of a PK's
//! `startTime` and `endTime`; the nodes run on this machine).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use pkd_cluster::api::StateDigests;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bench::pks::{InvitationAnswer, Reader, StateSource};

/// What one attempt to deliver a gift got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "answer", content = "detail")]
pub enum Answer {
    /// `000000`: counted (or already counted: a retry).
    Counted,
    /// A refusal that says the gift was not applied (a domain code).
    Refused(String),
    /// No answer, or one that does not say (a timeout, a dropped connection, `900008`:
    /// the node could not tell whether its proposal was applied).
    Indeterminate(String),
}

/// A gift's outcome over all its attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// An attempt was acknowledged: the gift must count exactly once.
    Ok,
    /// Every attempt was refused: the gift must not count.
    Refused,
    /// Neither: the gift may count at most once.
    Unknown,
}

/// The outcome of a gift from its attempts' answers. A refusal after an attempt that may
/// have been applied proves nothing (the PK may have ended in between).
pub fn outcome_of(answers: &[Answer]) -> Outcome {
    if answers.contains(&Answer::Counted) {
        Outcome::Ok
    } else if !answers.is_empty() && answers.iter().all(|answer| matches!(answer, Answer::Refused(_))) {
        Outcome::Refused
    } else {
        Outcome::Unknown
    }
}

/// One attempt of one gift.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    pub node: u64,
    pub sent_ms: i64,
    #[serde(flatten)]
    pub answer: Answer,
}

/// One gift, from its first send to its last answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GiftOp {
    /// The request it went out in (a batch's gifts share it).
    pub request: u64,
    /// Gifts in that request (1: the single-gift body).
    pub batch: usize,
    pub id: u64,
    pub pk: u64,
    pub receiver: u64,
    pub sender: u64,
    pub beans: i64,
    pub invoked_ms: i64,
    pub completed_ms: i64,
    pub attempts: Vec<Attempt>,
    pub outcome: Outcome,
}

/// The first viewer's user id (`pkd faults --viewers`: consecutive from it); anchors'
/// ids are below it.
pub const FIRST_VIEWER: u64 = 4_000_001;

/// "anchor 3000002" or "viewer 4000001".
pub fn reader_name(user: u64) -> String {
    if user >= FIRST_VIEWER { format!("viewer {user}") } else { format!("anchor {user}") }
}

/// A PK state an anchor or a viewer read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateSeen {
    /// Who read it: an anchor, or a viewer (ids from [`FIRST_VIEWER`] on).
    #[serde(alias = "anchor")]
    pub user: u64,
    /// The reader's connection it came over (1 for the first; 0 in histories from
    /// before connections were told apart).
    #[serde(default)]
    pub connection: u64,
    /// The node that connection went to (0 if unknown).
    #[serde(default)]
    pub node: u64,
    pub source: StateSource,
    pub at_ms: i64,
    pub pk: u64,
    /// 0 opening, 1 battle, 2 over, 3 ended abnormally.
    pub status: u64,
    pub start_ms: i64,
    pub end_ms: i64,
    pub source_user: u64,
    pub target_user: u64,
    pub source_gifts: i64,
    pub target_gifts: i64,
    pub winner: Option<u64>,
}

impl StateSeen {
    /// Reads a push 10's `content` (or a room entry's PK state); `None` if a field is
    /// missing.
    pub fn read(reader: Reader, content: &Value) -> Option<StateSeen> {
        Some(StateSeen {
            user: reader.user,
            connection: reader.connection,
            node: reader.node,
            source: reader.source,
            at_ms: reader.at_ms,
            pk: content["pkId"].as_u64()?,
            status: content["status"].as_u64()?,
            start_ms: content["startTime"].as_i64()?,
            end_ms: content["endTime"].as_i64()?,
            source_user: content["sourceUser"].as_u64()?,
            target_user: content["targetUser"].as_u64()?,
            source_gifts: content["sourceGifts"].as_i64().unwrap_or(0),
            target_gifts: content["targetGifts"].as_i64().unwrap_or(0),
            winner: content["winner"].as_u64(),
        })
    }
}

/// An invitation (push 12) an anchor answered, and the reply it got.
pub type InvitationOp = InvitationAnswer;

/// One fault the nemesis caused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultEvent {
    /// The nemesis (`kill`, `kill-leader`, `pause`, `pause-leader`, `transfer`,
    /// `restart-all`, a network one: `partition-leader`, `partition-half`, `bridge`,
    /// `drop-one-way`, `delay`, `blackhole`, a membership one: `add-node`, `remove-node`,
    /// or a service cut: `mysql-cut`, `redis-cut`).
    pub kind: String,
    /// The node it hit (for a transfer: the leader it moved from; for a partition: the
    /// node cut off from the others, if one was; for `add-node` the node added, for
    /// `remove-node` the node removed).
    pub node: Option<u64>,
    /// The group whose leader was chosen, for the leader nemeses and transfers.
    pub group: Option<u64>,
    /// A transfer's new leader.
    pub to: Option<u64>,
    /// A clock skew's offset, or a slow disk's added flush time, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_ms: Option<i64>,
    /// A network fault's links: `{1} | {2,3}` (two sides cut off from each other), `1 -> 2`
    /// (one way cut), `1 <-> 2` (both ways), `1 <-> 2 +120ms` (delayed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub links: Option<String>,
    /// A membership fault's changes and the voters after them: `+4 → {1,2,3,4}`, `-2 +2
    /// → {1,2,3,4}` (node 2 removed, then back on an empty data directory), `+4 -1 →
    /// {2,3,4}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<String>,
    /// The node a membership fault added on an empty data directory: its results store
    /// holds only what settled once it was a voter (the `replicas_agree` checker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined: Option<u64>,
    pub started_ms: i64,
    /// When the fault was over (the node restarted or resumed, the transfer answered).
    pub healed_ms: i64,
    pub error: Option<String>,
}

impl FaultEvent {
    /// A fault of `kind` begun at `started_ms`, nothing else known of it yet.
    pub fn begun(kind: &str, started_ms: i64) -> FaultEvent {
        FaultEvent {
            kind: kind.to_owned(),
            node: None,
            group: None,
            to: None,
            amount_ms: None,
            links: None,
            members: None,
            joined: None,
            started_ms,
            healed_ms: started_ms,
            error: None,
        }
    }
}

/// One node's digest of one group's state, as `GET /admin/digest` answered it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestSample {
    pub node: u64,
    pub group: u64,
    pub applied_index: u64,
    pub sha256: String,
    pub at_ms: i64,
}

/// One PK in an anchor's settled history (`GET /api/anchors/{id}/pks`), the fields the
/// checkers read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SettledRecord {
    pub pk_id: u64,
    /// 1 running, 2 over, 3 ended abnormally, 4 after-battle stage.
    pub status: i64,
    pub start_time: Option<i64>,
    pub end_time: Option<i64>,
    pub anchor: u64,
    /// The anchor's side's beans.
    pub gifts: i64,
    pub competitor: u64,
    pub competitor_gifts: i64,
    pub winner: u64,
}

/// Each node's answer: anchor → its records, newest first.
pub type NodeHistory = BTreeMap<u64, Vec<SettledRecord>>;

/// One gift of a settled PK's ledger (`GET /api/pks/{id}/gifts`), the fields the
/// checkers read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerRecord {
    pub gift_id: u64,
    pub sender: u64,
    pub receiver: u64,
    pub beans: i64,
}

/// PK → its ledger, by gift id.
pub type Ledgers = BTreeMap<u64, Vec<LedgerRecord>>;

/// A history line of `history.jsonl`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Line {
    Gift(GiftOp),
    State(StateSeen),
    Fault(FaultEvent),
    Digest(DigestSample),
    Invitation(InvitationOp),
}

/// What a run records, shared by its tasks.
#[derive(Default)]
pub struct History {
    gifts: Mutex<Vec<GiftOp>>,
    states: Mutex<Vec<StateSeen>>,
    faults: Mutex<Vec<FaultEvent>>,
    digests: Mutex<Vec<DigestSample>>,
    invitations: Mutex<Vec<InvitationOp>>,
}

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One round of digests: per group, how many nodes gave one and the distinct applied
/// indexes they gave.
#[derive(Debug, Default)]
pub struct DigestRound(BTreeMap<u64, (usize, BTreeSet<u64>)>);

impl DigestRound {
    /// The groups every one of `nodes` nodes gave a digest of, all at one applied index.
    pub fn caught_on(&self, nodes: usize) -> impl Iterator<Item = u64> + '_ {
        self.0.iter().filter(move |(_, (answered, indexes))| *answered == nodes && indexes.len() == 1).map(|(&g, _)| g)
    }
}

impl History {
    pub fn gift(&self, op: GiftOp) {
        locked(&self.gifts).push(op);
    }

    pub fn state(&self, state: StateSeen) {
        locked(&self.states).push(state);
    }

    pub fn fault(&self, event: FaultEvent) {
        locked(&self.faults).push(event);
    }

    pub fn digest(&self, sample: DigestSample) {
        locked(&self.digests).push(sample);
    }

    /// Records one round of every node's digests, taken at `at_ms`.
    pub fn digest_round(&self, answers: impl IntoIterator<Item = StateDigests>, at_ms: i64) -> DigestRound {
        let mut round = DigestRound::default();
        for answer in answers {
            for group in answer.groups {
                let index = group.applied_index.unwrap_or(0);
                let entry = round.0.entry(group.group).or_default();
                entry.0 += 1;
                entry.1.insert(index);
                self.digest(DigestSample {
                    node: answer.node,
                    group: group.group,
                    applied_index: index,
                    sha256: group.sha256,
                    at_ms,
                });
            }
        }
        round
    }

    pub fn invitation(&self, op: InvitationOp) {
        locked(&self.invitations).push(op);
    }

    pub fn invitations(&self) -> Vec<InvitationOp> {
        locked(&self.invitations).clone()
    }

    pub fn digests(&self) -> Vec<DigestSample> {
        locked(&self.digests).clone()
    }

    pub fn gifts(&self) -> Vec<GiftOp> {
        locked(&self.gifts).clone()
    }

    pub fn states(&self) -> Vec<StateSeen> {
        locked(&self.states).clone()
    }

    pub fn faults(&self) -> Vec<FaultEvent> {
        locked(&self.faults).clone()
    }

    /// Every line, in the order of its time (invocation, arrival, start; an invitation's
    /// arrival).
    pub fn lines(&self) -> Vec<Line> {
        let mut lines: Vec<(i64, Line)> = Vec::new();
        lines.extend(self.gifts().into_iter().map(|gift| (gift.invoked_ms, Line::Gift(gift))));
        lines.extend(self.states().into_iter().map(|state| (state.at_ms, Line::State(state))));
        lines.extend(self.faults().into_iter().map(|fault| (fault.started_ms, Line::Fault(fault))));
        lines.extend(self.digests().into_iter().map(|sample| (sample.at_ms, Line::Digest(sample))));
        lines.extend(self.invitations().into_iter().map(|op| (op.received_ms, Line::Invitation(op))));
        lines.sort_by_key(|(at, _)| *at);
        lines.into_iter().map(|(_, line)| line).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gift_is_ok_once_acknowledged_refused_only_if_every_attempt_was() {
        let refused = || Answer::Refused("905047".into());
        let lost = || Answer::Indeterminate("timeout".into());
        assert_eq!(outcome_of(&[lost(), Answer::Counted]), Outcome::Ok);
        assert_eq!(outcome_of(&[refused()]), Outcome::Refused);
        assert_eq!(outcome_of(&[lost(), refused()]), Outcome::Unknown, "the first try may have counted");
        assert_eq!(outcome_of(&[lost()]), Outcome::Unknown);
        assert_eq!(outcome_of(&[]), Outcome::Unknown);
    }
}
