//! The checkers: pure functions of a run's history and of the settled history the nodes
//! answer at the end. Each gives a [`Verdict`]: what it claims, how much it looked at,
//! and the evidence of every violation.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::history::{
    DigestSample, FaultEvent, GiftOp, InvitationOp, Ledgers, NodeHistory, Outcome, SettledRecord, StateSeen,
    reader_name,
};
use super::services::{CacheSnapshot, SqlSnapshot};
use super::sink_checkers;
pub use super::verdict::{MAX_EVIDENCE, Verdict};
use crate::bench::pks::{InvitationAction, StateSource};

/// What bounds the checks.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Bounds {
    /// A PK must end at most this long after its `endTime`, or after the end of a
    /// whole-cluster outage its `endTime` fell in.
    pub end_late_ms: i64,
    /// The most a node's clock was set off (the `skew` nemesis), in ms. A leader whose
    /// clock runs ahead ends a battle that much early in the clients' time, and PKs of two
    /// arenas may seem to overlap by as much: both are allowed up to this.
    pub skew_ms: i64,
}

/// Everything the checkers read.
pub struct Facts<'a> {
    pub gifts: &'a [GiftOp],
    pub states: &'a [StateSeen],
    /// The invitations the anchors answered.
    pub invitations: &'a [InvitationOp],
    pub faults: &'a [FaultEvent],
    /// Each node's settled history, by node id.
    pub settled: &'a BTreeMap<u64, NodeHistory>,
    /// The gift ledgers of the settled PKs, as one node answers them.
    pub ledgers: &'a Ledgers,
    pub bounds: Bounds,
    /// Every state digest sampled, during the run and once it was quiet.
    pub digests: &'a [DigestSample],
    /// The nodes that are members at the end (the membership nemeses change them).
    pub members: &'a BTreeSet<u64>,
    /// Progress is required from here on (the last fault's end, wall clock ms).
    pub liveness_from_ms: i64,
    /// The results database, read directly after the wind-down (runs with --mysql-url).
    pub sql: Option<&'a SqlSnapshot>,
    /// The Redis cache, read directly after the wind-down (runs with --redis-url).
    pub cache: Option<&'a CacheSnapshot>,
}

/// Every checker, in report order.
pub fn check_all(facts: &Facts) -> Vec<Verdict> {
    let reference = reference_records(facts.settled);
    vec![
        gifts_counted_once(facts.gifts, &reference),
        ledgers_match_senders(facts.gifts, facts.ledgers),
        one_pk_at_a_time(facts.states, &reference, facts.bounds.skew_ms),
        one_accept_per_invitation(facts.invitations, facts.states, &reference, facts.bounds.skew_ms),
        pks_end_once_in_time(facts.states, &reference, facts.faults, facts.bounds),
        replicas_agree(facts.settled),
        replicas_identical(facts.digests, facts.members),
        pushes_never_go_back(facts.states, facts.bounds.skew_ms),
        progress_after_faults(facts.gifts, facts.states, facts.liveness_from_ms),
        match facts.sql {
            Some(sql) => sink_checkers::sql_matches_engine(facts.states, facts.settled, sql),
            None => Verdict::not_run(sink_checkers::SQL_NAME, sink_checkers::SQL_CLAIM, "no --mysql-url"),
        },
        match facts.cache {
            Some(cache) => sink_checkers::redis_converges(&reference, cache),
            None => Verdict::not_run(sink_checkers::REDIS_NAME, sink_checkers::REDIS_CLAIM, "no --redis-url"),
        },
    ]
}

/// Every (anchor, PK) record of the [`reference_node`], one per pair.
pub fn reference_records(settled: &BTreeMap<u64, NodeHistory>) -> Vec<SettledRecord> {
    let Some(node) = reference_node(settled) else { return Vec::new() };
    settled[&node].values().flatten().cloned().collect()
}

/// The node whose settled history the checkers read: the one with the most records (a
/// node that joined during the run may lack the oldest), the smallest id among equals.
/// `None` if no node answered a record.
pub fn reference_node(settled: &BTreeMap<u64, NodeHistory>) -> Option<u64> {
    let size = |history: &NodeHistory| history.values().map(Vec::len).sum::<usize>();
    settled
        .iter()
        .filter(|(_, history)| size(history) > 0)
        .max_by(|(one, first), (other, second)| size(first).cmp(&size(second)).then(other.cmp(one)))
        .map(|(&node, _)| node)
}

/// (a) Each side's settled beans lie between the sum of its acknowledged gifts and that
/// sum plus its unknown gifts; a PK with an acknowledged gift has a settled record.
pub fn gifts_counted_once(gifts: &[GiftOp], records: &[SettledRecord]) -> Verdict {
    let mut verdict = Verdict::new(
        "gifts_counted_once",
        "every acknowledged gift counted exactly once, every unknown one at most once: \
         per PK side, acknowledged <= settled <= acknowledged + unknown",
    );
    // (pk, receiver) → (acknowledged beans, unknown beans, gifts)
    let mut sides: BTreeMap<(u64, u64), (i64, i64, u64)> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for gift in gifts {
        if !ids.insert(gift.id) {
            verdict.notes.push(format!("gift id {} was recorded twice in the history", gift.id));
        }
        let side = sides.entry((gift.pk, gift.receiver)).or_default();
        side.2 += 1;
        match gift.outcome {
            Outcome::Ok => side.0 += gift.beans,
            Outcome::Unknown => side.1 += gift.beans,
            Outcome::Refused => {}
        }
    }
    let settled: BTreeMap<(u64, u64), &SettledRecord> =
        records.iter().map(|record| ((record.pk_id, record.anchor), record)).collect();
    let unknown: u64 = gifts.iter().filter(|gift| gift.outcome == Outcome::Unknown).count() as u64;
    verdict.notes.push(format!(
        "{} gifts: {} acknowledged, {} refused, {unknown} unknown",
        gifts.len(),
        gifts.iter().filter(|gift| gift.outcome == Outcome::Ok).count(),
        gifts.iter().filter(|gift| gift.outcome == Outcome::Refused).count(),
    ));
    for (&(pk, receiver), &(acknowledged, maybe, count)) in &sides {
        verdict.checked += 1;
        let Some(record) = settled.get(&(pk, receiver)) else {
            if acknowledged > 0 {
                verdict.violation(format!(
                    "PK {pk}, anchor {receiver}: {acknowledged} beans acknowledged in {count} gifts, but no settled record"
                ));
            }
            continue;
        };
        if record.status != 2 && record.status != 3 {
            verdict.violation(format!("PK {pk}: still status {} at the end of the run", record.status));
            continue;
        }
        let final_beans = record.gifts;
        if final_beans < acknowledged {
            verdict.violation(format!(
                "PK {pk}, anchor {receiver}: settled {final_beans} beans < {acknowledged} acknowledged (an acknowledged gift lost)"
            ));
        } else if final_beans > acknowledged + maybe {
            verdict.violation(format!(
                "PK {pk}, anchor {receiver}: settled {final_beans} beans > {acknowledged} acknowledged + {maybe} unknown \
                 (a gift counted twice, or one never sent)"
            ));
        }
    }
    // A settled side with beans and no gift sent at all.
    for record in records {
        if record.gifts > 0 && !sides.contains_key(&(record.pk_id, record.anchor)) {
            verdict.checked += 1;
            verdict.violation(format!(
                "PK {}, anchor {}: settled {} beans, but no gift was sent to this side",
                record.pk_id, record.anchor, record.gifts
            ));
        }
    }
    verdict
}

/// (a') From the ledgers of the settled PKs: each sender's beans to each side lie between
/// its acknowledged gifts and those plus its unknown ones; no refused gift and no gift
/// never sent is in a ledger.
pub fn ledgers_match_senders(gifts: &[GiftOp], ledgers: &Ledgers) -> Verdict {
    let mut verdict = Verdict::new(
        "ledgers_match_senders",
        "per PK side and sender, from the gift ledger: acknowledged <= ledger <= acknowledged + unknown; \
         no refused or unsent gift in a ledger",
    );
    let sent: BTreeMap<u64, &GiftOp> = gifts.iter().map(|gift| (gift.id, gift)).collect();
    // (pk, receiver, sender) → (acknowledged beans, unknown beans, ledger beans)
    let mut senders: BTreeMap<(u64, u64, u64), (i64, i64, i64)> = BTreeMap::new();
    for gift in gifts.iter().filter(|gift| ledgers.contains_key(&gift.pk)) {
        let totals = senders.entry((gift.pk, gift.receiver, gift.sender)).or_default();
        match gift.outcome {
            Outcome::Ok => totals.0 += gift.beans,
            Outcome::Unknown => totals.1 += gift.beans,
            Outcome::Refused => {}
        }
    }
    for (&pk, ledger) in ledgers {
        for entry in ledger {
            match sent.get(&entry.gift_id) {
                Some(gift) if gift.outcome == Outcome::Refused => verdict.violation(format!(
                    "PK {pk}: gift {} was refused, but its ledger counts it ({} beans)",
                    entry.gift_id, entry.beans
                )),
                Some(gift) if (gift.pk, gift.receiver, gift.sender) != (pk, entry.receiver, entry.sender) => verdict
                    .violation(format!(
                        "PK {pk}: gift {} went from {} to {} in PK {}, but its ledger has it from {} to {}",
                        entry.gift_id, gift.sender, gift.receiver, gift.pk, entry.sender, entry.receiver
                    )),
                Some(_) => {}
                None => verdict.violation(format!("PK {pk}: gift {} in the ledger was never sent", entry.gift_id)),
            }
            senders.entry((pk, entry.receiver, entry.sender)).or_default().2 += entry.beans;
        }
    }
    verdict.notes.push(format!(
        "{} ledgers, {} gifts in them",
        ledgers.len(),
        ledgers.values().map(Vec::len).sum::<usize>()
    ));
    for (&(pk, receiver, sender), &(acknowledged, maybe, counted)) in &senders {
        verdict.checked += 1;
        if counted < acknowledged {
            verdict.violation(format!(
                "PK {pk}, anchor {receiver}, sender {sender}: ledger {counted} beans < {acknowledged} acknowledged"
            ));
        } else if counted > acknowledged + maybe {
            verdict.violation(format!(
                "PK {pk}, anchor {receiver}, sender {sender}: ledger {counted} beans > {acknowledged} acknowledged + \
                 {maybe} unknown"
            ));
        }
    }
    verdict
}

/// (b) No anchor is in two PKs at overlapping times, from the settled records and from
/// the states the anchors read.
pub fn one_pk_at_a_time(states: &[StateSeen], records: &[SettledRecord], skew_ms: i64) -> Verdict {
    let mut verdict = Verdict::new("one_pk_at_a_time", "no anchor in two PKs at overlapping times");
    // anchor → pk → (start, end)
    let mut spans: BTreeMap<u64, BTreeMap<u64, (i64, i64)>> = BTreeMap::new();
    for record in records {
        if let (Some(start), Some(end)) = (record.start_time, record.end_time) {
            spans.entry(record.anchor).or_default().insert(record.pk_id, (start, end));
        }
    }
    for state in states {
        for anchor in [state.source_user, state.target_user] {
            spans.entry(anchor).or_default().entry(state.pk).or_insert((state.start_ms, state.end_ms));
        }
    }
    for (anchor, pks) in &spans {
        verdict.checked += 1;
        let mut ordered: Vec<(u64, i64, i64)> = pks.iter().map(|(&pk, &(start, end))| (pk, start, end)).collect();
        ordered.sort_by_key(|&(pk, start, _)| (start, pk));
        for pair in ordered.windows(2) {
            let ((first, first_start, first_end), (second, second_start, _)) = (pair[0], pair[1]);
            if second_start + skew_ms < first_end {
                verdict.violation(format!(
                    "anchor {anchor}: PK {first} ran {first_start}..{first_end} and PK {second} started at {second_start}"
                ));
            }
        }
    }
    verdict
}

/// What an accept's reply says about it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AcceptFate {
    /// `902004`: it won the invitation; the PK starts.
    Won,
    /// `902003`: someone else took the inviter (another accept or a match).
    Taken,
    /// Another refusal (expired, withdrawn, busy...): no PK, nothing more to check.
    Refused,
    /// No reply (`timeout`, `disconnected`, `error`) or `900008`: it may have won.
    Unknown,
}

fn accept_fate(code: &str) -> AcceptFate {
    match code {
        "902004" => AcceptFate::Won,
        "902003" => AcceptFate::Taken,
        "timeout" | "disconnected" | "error" | pkd_cluster::app::UNAVAILABLE => AcceptFate::Unknown,
        _ => AcceptFate::Refused,
    }
}

/// A PK as the checker of invitations sees it: its two anchors, when it was first seen,
/// and when it was first seen over.
#[derive(Clone, Copy, Debug)]
struct PkSighting {
    pair: (u64, u64),
    first_ms: i64,
    over_ms: i64,
    /// Times from a settled record (the nodes' clocks), not from the anchors' reads.
    settled_only: bool,
}

fn unordered(first: u64, second: u64) -> (u64, u64) {
    (first.min(second), first.max(second))
}

/// Every PK, from the anchors' reads (the driver's clock: first read, first read of its
/// end, else its `endTime`) or, for one no anchor read, from its settled record.
fn pk_sightings(states: &[StateSeen], records: &[SettledRecord]) -> BTreeMap<u64, PkSighting> {
    let mut sightings: BTreeMap<u64, PkSighting> = BTreeMap::new();
    let mut ends: BTreeMap<u64, i64> = BTreeMap::new();
    for state in states {
        let sighting = sightings.entry(state.pk).or_insert(PkSighting {
            pair: unordered(state.source_user, state.target_user),
            first_ms: state.at_ms,
            over_ms: state.end_ms,
            settled_only: false,
        });
        sighting.first_ms = sighting.first_ms.min(state.at_ms);
        if state.status >= 2 {
            let end = ends.entry(state.pk).or_insert(state.at_ms);
            *end = (*end).min(state.at_ms);
        }
    }
    for (pk, end) in ends {
        if let Some(sighting) = sightings.get_mut(&pk) {
            sighting.over_ms = end;
        }
    }
    for record in records {
        if let (Some(start), Some(end)) = (record.start_time, record.end_time) {
            sightings.entry(record.pk_id).or_insert(PkSighting {
                pair: unordered(record.anchor, record.competitor),
                first_ms: start,
                over_ms: end,
                settled_only: true,
            });
        }
    }
    sightings
}

/// (b') Of one inviter's invitations in one matching round, at most one accept wins
/// (`902004`), and the reply tells the truth: a won accept is followed by a PK of the
/// inviter and the invitee, one answered `902003` is not.
///
/// Rounds: an inviter's invitations are cut into rounds by the ends of its PKs (the
/// first read of each end, or its `endTime` if none was read). An inviter invites only
/// while it waits in the queue and a won accept takes it out for a PK, so two accepts
/// that both won in earnest are separated by that PK's end, which the inviter read
/// before it started matching again (and only then could it invite again). A round may
/// hold several batches (a batch all refused, a batch lapsed, a stop and a new start):
/// still at most one of them can win, as the inviter leaves the queue with the win.
/// "Followed by a PK" means a PK of the pair first read after the invitation arrived and
/// before the round's end (a PK only the settled records know: its start, give or take
/// the clock skew). An accept with no reply counts as a win if such a PK follows.
pub fn one_accept_per_invitation(
    invitations: &[InvitationOp],
    states: &[StateSeen],
    records: &[SettledRecord],
    skew_ms: i64,
) -> Verdict {
    let mut verdict = Verdict::new(
        "one_accept_per_invitation",
        "of an inviter's matching round at most one accept wins (902004), followed by its PK; one taken (902003) \
         gets no PK",
    );
    if invitations.is_empty() {
        return Verdict { not_run: Some("no invitation was answered".to_owned()), passed: false, ..verdict };
    }
    let sightings = pk_sightings(states, records);
    // inviter → the ends of its PKs, in order.
    let mut round_ends: BTreeMap<u64, Vec<i64>> = BTreeMap::new();
    for sighting in sightings.values() {
        for anchor in [sighting.pair.0, sighting.pair.1] {
            round_ends.entry(anchor).or_default().push(sighting.over_ms);
        }
    }
    for ends in round_ends.values_mut() {
        ends.sort_unstable();
    }
    // (inviter, round) → the invitees whose accept won, or had no reply and got the PK.
    let mut winners: BTreeMap<(u64, usize), Vec<(u64, &str)>> = BTreeMap::new();
    let (mut accepts, mut refusals, mut won, mut taken, mut unknown) = (0, 0, 0, 0, 0);
    for op in invitations {
        verdict.checked += 1;
        if op.action == InvitationAction::Refuse {
            refusals += 1;
            continue;
        }
        accepts += 1;
        let ends = round_ends.get(&op.inviter).map(Vec::as_slice).unwrap_or_default();
        let round = ends.partition_point(|&end| end < op.received_ms);
        let round_end = ends.get(round).copied().unwrap_or(i64::MAX);
        let pair = unordered(op.inviter, op.invitee);
        let pk = sightings.iter().find(|(_, sighting)| {
            let slack = if sighting.settled_only { skew_ms } else { 0 };
            sighting.pair == pair
                && sighting.first_ms + slack >= op.received_ms
                && sighting.first_ms - slack <= round_end
        });
        let fate = accept_fate(&op.code);
        match (fate, pk) {
            (AcceptFate::Won, None) => verdict.violation(format!(
                "inviter {}: invitee {} accepted the invitation received at {} and was answered 902004 at {}, but \
                 no PK of the two followed",
                op.inviter, op.invitee, op.received_ms, op.answered_ms
            )),
            (AcceptFate::Taken, Some((pk, _))) => verdict.violation(format!(
                "inviter {}: invitee {} accepted the invitation received at {} and was answered 902003 at {}, yet \
                 PK {pk} of the two followed",
                op.inviter, op.invitee, op.received_ms, op.answered_ms
            )),
            _ => {}
        }
        match fate {
            AcceptFate::Won => won += 1,
            AcceptFate::Taken => taken += 1,
            AcceptFate::Unknown => unknown += 1,
            AcceptFate::Refused => {}
        }
        if fate == AcceptFate::Won || (fate == AcceptFate::Unknown && pk.is_some()) {
            winners.entry((op.inviter, round)).or_default().push((op.invitee, op.code.as_str()));
        }
    }
    for ((inviter, round), invitees) in &winners {
        if invitees.len() > 1 {
            let listed: Vec<String> = invitees.iter().map(|(invitee, code)| format!("{invitee} ({code})")).collect();
            verdict.violation(format!(
                "inviter {inviter}: {} accepts won its matching round {round}: {}",
                invitees.len(),
                listed.join(", ")
            ));
        }
    }
    verdict.notes.push(format!(
        "{} invitations answered: {refusals} refused, {accepts} accepted ({won} won, {taken} taken by someone \
         else, {unknown} without a reply)",
        invitations.len()
    ));
    verdict
}

/// (c) Every PK seen ends, once: a settled record of status 2 (over) or 3 (abnormal); a
/// normal end never before its `endTime` and within the bound after it; every end the
/// anchors read agrees with the record.
pub fn pks_end_once_in_time(
    states: &[StateSeen],
    records: &[SettledRecord],
    faults: &[FaultEvent],
    bounds: Bounds,
) -> Verdict {
    let mut verdict = Verdict::new(
        "pks_end_once_in_time",
        "every PK ends once, a normal end never before its endTime and within the bound after it",
    );
    // pk → (start, end) as the anchors read it; a change is a violation.
    let mut schedule: BTreeMap<u64, (i64, i64)> = BTreeMap::new();
    for state in states {
        let seen = *schedule.entry(state.pk).or_insert((state.start_ms, state.end_ms));
        if seen != (state.start_ms, state.end_ms) {
            verdict.violation(format!(
                "PK {}: read with start..end {}..{} and {}..{}",
                state.pk, seen.0, seen.1, state.start_ms, state.end_ms
            ));
        }
    }
    let mut settled: BTreeMap<u64, &SettledRecord> = BTreeMap::new();
    for record in records {
        settled.entry(record.pk_id).or_insert(record);
    }
    let pks: BTreeSet<u64> = schedule.keys().chain(settled.keys()).copied().collect();
    let mut abnormal = 0;
    let mut latest_ms = 0;
    for pk in pks {
        verdict.checked += 1;
        let Some(record) = settled.get(&pk) else {
            verdict.violation(format!("PK {pk}: the anchors saw it, but it has no settled record"));
            continue;
        };
        let Some(ended) = record.end_time else {
            verdict.violation(format!("PK {pk}: settled without an end time (status {})", record.status));
            continue;
        };
        let scheduled_end = schedule.get(&pk).map(|&(_, end)| end);
        match (record.status, scheduled_end) {
            (2, Some(end)) => {
                if ended < end {
                    verdict
                        .violation(format!("PK {pk}: ended at {ended}, {} ms before its endTime {end}", end - ended));
                }
                let allowed = end.max(outage_covering(faults, end)) + bounds.end_late_ms;
                if ended > allowed {
                    verdict.violation(format!(
                        "PK {pk}: ended at {ended}, {} ms after its endTime {end} (bound {} ms)",
                        ended - end,
                        bounds.end_late_ms
                    ));
                }
                latest_ms = latest_ms.max(ended - end);
            }
            (3, _) => abnormal += 1,
            (2, None) => {}
            (status, _) => verdict.violation(format!("PK {pk}: status {status} at the end of the run")),
        }
        for state in states.iter().filter(|state| state.pk == pk && state.status >= 2) {
            let (side_source, side_target) = sides_of(records, pk, state.source_user, state.target_user);
            let status_differs = i64::try_from(state.status).unwrap_or(0) != record.status;
            let totals_differ = side_source.is_some_and(|beans| beans != state.source_gifts)
                || side_target.is_some_and(|beans| beans != state.target_gifts);
            if status_differs || totals_differ {
                verdict.violation(format!(
                    "PK {pk}: {} read an end (status {}, {}:{} beans) unlike the settled one (status {}, {:?}:{:?})",
                    reader_name(state.user),
                    state.status,
                    state.source_gifts,
                    state.target_gifts,
                    record.status,
                    side_source,
                    side_target
                ));
            }
            if state.source == StateSource::Push && state.status == 2 && state.at_ms + bounds.skew_ms < state.end_ms {
                verdict.violation(format!(
                    "PK {pk}: {} read its end at {}, before its endTime {}",
                    reader_name(state.user),
                    state.at_ms,
                    state.end_ms
                ));
            }
        }
    }
    verdict.notes.push(format!("{abnormal} PKs ended abnormally; the latest normal end came {latest_ms} ms late"));
    verdict
}

/// The end of a whole-cluster outage (`restart-all`) that `at_ms` fell in, or 0.
fn outage_covering(faults: &[FaultEvent], at_ms: i64) -> i64 {
    faults
        .iter()
        .filter(|fault| fault.kind == "restart-all" && fault.started_ms <= at_ms && at_ms <= fault.healed_ms)
        .map(|fault| fault.healed_ms)
        .max()
        .unwrap_or(0)
}

/// The settled beans of `pk`'s source and target sides.
fn sides_of(records: &[SettledRecord], pk: u64, source: u64, target: u64) -> (Option<i64>, Option<i64>) {
    let side = |anchor: u64| {
        records.iter().find(|record| record.pk_id == pk && record.anchor == anchor).map(|record| record.gifts)
    };
    (side(source), side(target))
}

/// (d) Every node answers the same settled history for every anchor: a node that joined
/// during the run on an empty data directory too, since it copies the results settled
/// before it joined from a member (`duties/backfill.rs`).
pub fn replicas_agree(settled: &BTreeMap<u64, NodeHistory>) -> Verdict {
    let mut verdict = Verdict::new("replicas_agree", "every node answers the same settled history");
    let first_node = reference_node(settled).or_else(|| settled.keys().next().copied());
    let Some((first_node, first)) = first_node.and_then(|node| settled.get(&node).map(|history| (node, history)))
    else {
        verdict.violation("no node answered the history API".to_owned());
        return verdict;
    };
    let anchors: BTreeSet<u64> = settled.values().flat_map(|history| history.keys().copied()).collect();
    for anchor in anchors {
        verdict.checked += 1;
        let expected = first.get(&anchor);
        for (&node, history) in settled.iter().filter(|(node, _)| **node != first_node) {
            let found = history.get(&anchor);
            if found == expected {
                continue;
            }
            let describe = |records: Option<&Vec<SettledRecord>>| match records {
                None => "no answer".to_owned(),
                Some(records) => {
                    let pks: Vec<String> = records
                        .iter()
                        .map(|record| {
                            format!(
                                "{}(status {}, {}:{})",
                                record.pk_id, record.status, record.gifts, record.competitor_gifts
                            )
                        })
                        .collect();
                    pks.join(" ")
                }
            };
            verdict.violation(format!(
                "anchor {anchor}: node {first_node} answers [{}], node {node} answers [{}]",
                describe(expected),
                describe(found)
            ));
        }
    }
    verdict
}

/// (e) Replicas of a group that applied the same entries hold the same state: every
/// digest sampled at one (group, applied index) is the same, whichever node gave it.
/// Each group must have been compared on every one of `members` (the nodes that are
/// members at the end) at least once (the final samples, taken once the cluster is quiet,
/// are for that). A node sampled while it was a member, and removed since, is compared
/// with the others at the indexes it was caught at, and counts for no group's
/// completeness.
pub fn replicas_identical(samples: &[DigestSample], members: &BTreeSet<u64>) -> Verdict {
    let mut verdict = Verdict::new(
        "replicas_identical",
        "every replica's state is identical at the same applied index (state digests)",
    );
    // (group, index) → digest → the nodes that gave it
    let mut seen: BTreeMap<(u64, u64), BTreeMap<&str, BTreeSet<u64>>> = BTreeMap::new();
    for sample in samples {
        seen.entry((sample.group, sample.applied_index))
            .or_default()
            .entry(sample.sha256.as_str())
            .or_default()
            .insert(sample.node);
    }
    let mut fully_compared: BTreeSet<u64> = BTreeSet::new();
    let groups: BTreeSet<u64> = samples.iter().map(|sample| sample.group).collect();
    for (&(group, index), digests) in &seen {
        let nodes_here: BTreeSet<u64> = digests.values().flatten().copied().collect();
        if nodes_here.len() < 2 {
            continue;
        }
        verdict.checked += 1;
        if digests.len() > 1 {
            let by_digest: Vec<String> = digests
                .iter()
                .map(|(digest, nodes)| format!("nodes {nodes:?}: {}", &digest[..digest.len().min(16)]))
                .collect();
            verdict.violation(format!("group {group} at index {index}: {}", by_digest.join("; ")));
        } else if members.is_subset(&nodes_here) {
            fully_compared.insert(group);
        }
    }
    for group in groups.difference(&fully_compared) {
        let ids: Vec<String> = members.iter().map(u64::to_string).collect();
        verdict.violation(format!(
            "group {group} was never seen at one index on all {} nodes ({})",
            members.len(),
            ids.join(", ")
        ));
    }
    if samples.is_empty() {
        verdict.violation("no node answered GET /admin/digest".to_owned());
    }
    verdict.notes.push(format!(
        "{} digests sampled; {} (group, index) pairs seen on two nodes or more",
        samples.len(),
        verdict.checked
    ));
    verdict
}

/// Where a PK state stands in its course: opening, battle, then over (status 2 or 3).
fn course(status: u64) -> u64 {
    status.min(2)
}

/// How `later` went back from `earlier`, both of one PK: `None` if it did not.
fn went_back(earlier: &StateSeen, later: &StateSeen) -> Option<String> {
    if course(later.status) < course(earlier.status) || (earlier.status >= 2 && later.status != earlier.status) {
        return Some(format!("status {} then {}", earlier.status, later.status));
    }
    if later.source_gifts < earlier.source_gifts || later.target_gifts < earlier.target_gifts {
        return Some(format!(
            "scores {}:{} then {}:{}",
            earlier.source_gifts, earlier.target_gifts, later.source_gifts, later.target_gifts
        ));
    }
    if earlier.winner.is_some() && later.winner != earlier.winner {
        return Some(format!("winner {:?} then {:?}", earlier.winner, later.winner));
    }
    None
}

/// (g) What one client reads of a PK over one connection (pushes 10 and the room entry's
/// reply) never goes back: its status only moves on (opening, battle, over), its scores
/// never fall, its winner never changes. Under an injected clock skew a node's clock set
/// back may show a battle as opening again: noted, not a violation. States read over a
/// later connection, perhaps from a node further behind, are compared too and their
/// regressions noted.
pub fn pushes_never_go_back(states: &[StateSeen], skew_ms: i64) -> Verdict {
    let mut verdict = Verdict::new(
        "pushes_never_go_back",
        "over one connection, a PK's status only moves on, its scores never fall, its winner never changes",
    );
    // (user, connection, pk) → the latest state read; (user, pk) → the same, over any
    // connection.
    let mut latest: BTreeMap<(u64, u64, u64), &StateSeen> = BTreeMap::new();
    let mut latest_any: BTreeMap<(u64, u64), &StateSeen> = BTreeMap::new();
    let (mut skewed, mut across) = (0, Vec::new());
    for state in states {
        verdict.checked += 1;
        if let Some(earlier) = latest.insert((state.user, state.connection, state.pk), state)
            && let Some(how) = went_back(earlier, state)
        {
            let back_to_opening = earlier.status == 1 && state.status == 0;
            if back_to_opening && skew_ms > 0 {
                skewed += 1;
            } else {
                verdict.violation(format!(
                    "{} (connection {} to node {}), PK {}: {how}, read at {} and {}",
                    reader_name(state.user),
                    state.connection,
                    state.node,
                    state.pk,
                    earlier.at_ms,
                    state.at_ms
                ));
            }
        }
        if let Some(earlier) = latest_any.insert((state.user, state.pk), state)
            && earlier.connection != state.connection
            && let Some(how) = went_back(earlier, state)
        {
            across.push(format!(
                "{}, PK {}: {how}, read from node {} then, after a reconnection, node {}",
                reader_name(state.user),
                state.pk,
                earlier.node,
                state.node
            ));
        }
    }
    if skewed > 0 {
        verdict.notes.push(format!("{skewed} battles shown as opening again by a node whose clock was set back"));
    }
    if !across.is_empty() {
        verdict.notes.push(format!("{} states went back across a reconnection to another node", across.len()));
        verdict.notes.extend(across.into_iter().take(MAX_EVIDENCE));
    }
    verdict
}

/// Liveness: after the last fault, a gift is acknowledged and a new PK starts.
pub fn progress_after_faults(gifts: &[GiftOp], states: &[StateSeen], from_ms: i64) -> Verdict {
    let mut verdict =
        Verdict::new("progress_after_faults", "after the last fault, new gifts are acknowledged and a new PK forms");
    verdict.checked = 2;
    let acknowledged = gifts.iter().filter(|gift| gift.outcome == Outcome::Ok && gift.invoked_ms >= from_ms).count();
    let new_pks: BTreeSet<u64> =
        states.iter().filter(|state| state.start_ms >= from_ms).map(|state| state.pk).collect();
    if acknowledged == 0 {
        verdict.violation(format!("no gift sent after {from_ms} (the last fault's end) was acknowledged"));
    }
    if new_pks.is_empty() {
        verdict.violation(format!("no PK started after {from_ms} (the last fault's end)"));
    }
    verdict
        .notes
        .push(format!("after the last fault: {acknowledged} gifts acknowledged, {} PKs started", new_pks.len()));
    verdict
}

#[cfg(test)]
mod tests {
    use super::super::history::{Answer, Attempt, LedgerRecord};
    use super::*;

    const A: u64 = 11;
    const B: u64 = 12;
    const C: u64 = 13;

    fn gift(id: u64, pk: u64, receiver: u64, beans: i64, outcome: Outcome) -> GiftOp {
        let answer = match outcome {
            Outcome::Ok => Answer::Counted,
            Outcome::Refused => Answer::Refused("905047".into()),
            Outcome::Unknown => Answer::Indeterminate("timeout".into()),
        };
        GiftOp {
            request: id,
            batch: 1,
            id,
            pk,
            receiver,
            sender: 900,
            beans,
            invoked_ms: 1_000 + id as i64,
            completed_ms: 1_010 + id as i64,
            attempts: vec![Attempt { node: 1, sent_ms: 1_000, answer }],
            outcome,
        }
    }

    fn record(pk: u64, anchor: u64, competitor: u64, gifts: i64, span: (i64, i64), status: i64) -> SettledRecord {
        SettledRecord {
            pk_id: pk,
            status,
            start_time: Some(span.0),
            end_time: Some(span.1),
            anchor,
            gifts,
            competitor,
            competitor_gifts: 0,
            winner: 0,
        }
    }

    fn seen(user: u64, pk: u64, status: u64, span: (i64, i64), at_ms: i64) -> StateSeen {
        StateSeen {
            user,
            connection: 1,
            node: 1,
            source: StateSource::Push,
            at_ms,
            pk,
            status,
            start_ms: span.0,
            end_ms: span.1,
            source_user: A,
            target_user: B,
            source_gifts: 0,
            target_gifts: 0,
            winner: None,
        }
    }

    #[test]
    fn sides_within_acknowledged_and_unknown_pass() {
        let gifts =
            [gift(1, 7, A, 5, Outcome::Ok), gift(2, 7, A, 3, Outcome::Unknown), gift(3, 7, B, 4, Outcome::Refused)];
        for settled_a in [5, 8] {
            let records = [record(7, A, B, settled_a, (0, 5_000), 2), record(7, B, A, 0, (0, 5_000), 2)];
            let verdict = gifts_counted_once(&gifts, &records);
            assert!(verdict.passed, "{settled_a}: {verdict:#?}");
            assert_eq!(verdict.checked, 2);
        }
    }

    #[test]
    fn a_double_counted_gift_is_a_violation() {
        let gifts = [gift(1, 7, A, 5, Outcome::Ok), gift(2, 7, A, 3, Outcome::Ok)];
        // Gift 2 counted twice: 5 + 3 + 3.
        let records = [record(7, A, B, 11, (0, 5_000), 2), record(7, B, A, 0, (0, 5_000), 2)];
        let verdict = gifts_counted_once(&gifts, &records);
        assert!(!verdict.passed);
        assert_eq!(verdict.violations, 1);
        assert!(verdict.evidence[0].contains("settled 11 beans > 8 acknowledged"), "{:?}", verdict.evidence);
    }

    #[test]
    fn a_lost_acknowledged_gift_and_beans_from_nowhere_are_violations() {
        let gifts = [gift(1, 7, A, 5, Outcome::Ok), gift(2, 8, A, 2, Outcome::Ok)];
        let records = [record(7, A, B, 4, (0, 5_000), 2), record(7, B, A, 9, (0, 5_000), 2)];
        let verdict = gifts_counted_once(&gifts, &records);
        assert_eq!(verdict.violations, 3, "{:#?}", verdict.evidence);
        assert!(verdict.evidence.iter().any(|line| line.contains("acknowledged gift lost")));
        assert!(verdict.evidence.iter().any(|line| line.contains("PK 8") && line.contains("no settled record")));
        assert!(verdict.evidence.iter().any(|line| line.contains("no gift was sent")));
    }

    fn entry(gift_id: u64, sender: u64, receiver: u64, beans: i64) -> LedgerRecord {
        LedgerRecord { gift_id, sender, receiver, beans }
    }

    #[test]
    fn ledgers_within_each_senders_acknowledged_and_unknown_pass() {
        let gifts = [
            gift(1, 7, A, 5, Outcome::Ok),
            gift(2, 7, A, 3, Outcome::Unknown),
            gift(3, 7, B, 4, Outcome::Refused),
            GiftOp { sender: 901, ..gift(4, 7, B, 6, Outcome::Ok) },
        ];
        for with_unknown in [false, true] {
            let mut ledger = vec![entry(1, 900, A, 5), entry(4, 901, B, 6)];
            if with_unknown {
                ledger.push(entry(2, 900, A, 3));
            }
            let verdict = ledgers_match_senders(&gifts, &Ledgers::from([(7, ledger)]));
            assert!(verdict.passed, "{with_unknown}: {verdict:#?}");
            // Senders to sides: 900 to A and to B (refused only), 901 to B.
            assert_eq!(verdict.checked, 3);
        }
    }

    #[test]
    fn a_ledger_missing_a_gift_or_holding_a_refused_or_unsent_one_is_a_violation() {
        let gifts = [
            gift(1, 7, A, 5, Outcome::Ok),
            gift(2, 7, A, 3, Outcome::Ok),
            gift(3, 7, B, 4, Outcome::Refused),
            gift(4, 7, B, 6, Outcome::Ok),
        ];
        // Gift 2 lost, refused gift 3 counted, gift 9 never sent, gift 4 credited to the
        // wrong sender.
        let ledger = vec![entry(1, 900, A, 5), entry(3, 900, B, 4), entry(4, 902, B, 6), entry(9, 900, A, 1)];
        let verdict = ledgers_match_senders(&gifts, &Ledgers::from([(7, ledger)]));
        let has = |text: &str| verdict.evidence.iter().any(|line| line.contains(text));
        assert!(has("gift 3 was refused"), "{:#?}", verdict.evidence);
        assert!(has("gift 9 in the ledger was never sent"), "{:#?}", verdict.evidence);
        assert!(has("gift 4 went from 900 to 12 in PK 7, but its ledger has it from 902"), "{:#?}", verdict.evidence);
        assert!(has("anchor 11, sender 900: ledger 6 beans < 8 acknowledged"), "{:#?}", verdict.evidence);
        assert!(has("anchor 12, sender 900: ledger 4 beans < 6 acknowledged"), "{:#?}", verdict.evidence);
        assert!(has("anchor 12, sender 902: ledger 6 beans > 0 acknowledged"), "{:#?}", verdict.evidence);
        // A PK without a ledger is not this checker's business.
        assert!(ledgers_match_senders(&gifts, &Ledgers::new()).passed);
    }

    #[test]
    fn an_anchor_in_two_overlapping_pks_is_a_violation() {
        let records = [record(7, A, B, 0, (0, 5_000), 2), record(8, A, C, 0, (6_000, 11_000), 2)];
        assert!(one_pk_at_a_time(&[], &records, 0).passed, "back to back is fine");
        // PK 9 puts A with C while PK 7 still runs, as the pushes show it.
        let states = [seen(C, 9, 1, (4_000, 9_000), 4_100)];
        let states = [StateSeen { source_user: A, target_user: C, ..states[0].clone() }];
        let verdict = one_pk_at_a_time(&states, &records, 0);
        assert!(!verdict.passed);
        assert!(
            verdict.evidence[0].contains("anchor 11: PK 7 ran 0..5000 and PK 9 started at 4000"),
            "{:?}",
            verdict.evidence
        );
    }

    #[test]
    fn an_early_a_late_and_a_missing_end_are_violations() {
        let on_time = [record(7, A, B, 0, (0, 5_200), 2)];
        let states = [seen(A, 7, 1, (0, 5_000), 100)];
        let bounds = Bounds { end_late_ms: 6_000, skew_ms: 0 };
        assert!(pks_end_once_in_time(&states, &on_time, &[], bounds).passed);

        let early = [record(7, A, B, 0, (0, 4_900), 2)];
        let verdict = pks_end_once_in_time(&states, &early, &[], bounds);
        assert!(!verdict.passed);
        assert!(verdict.evidence[0].contains("100 ms before its endTime"), "{:?}", verdict.evidence);

        let late = [record(7, A, B, 0, (0, 12_000), 2)];
        let verdict = pks_end_once_in_time(&states, &late, &[], bounds);
        assert!(verdict.evidence[0].contains("7000 ms after"), "{:?}", verdict.evidence);
        // The same lateness is allowed when the whole cluster was down at the end time.
        let outage = FaultEvent { healed_ms: 7_000, ..FaultEvent::begun("restart-all", 4_000) };
        assert!(pks_end_once_in_time(&states, &late, &[outage], bounds).passed);

        let verdict = pks_end_once_in_time(&states, &[], &[], bounds);
        assert!(verdict.evidence[0].contains("no settled record"), "{:?}", verdict.evidence);
    }

    #[test]
    fn an_end_read_early_or_unlike_the_settled_one_is_a_violation() {
        let records = [record(7, A, B, 3, (0, 5_100), 2), record(7, B, A, 0, (0, 5_100), 2)];
        let bounds = Bounds { end_late_ms: 6_000, skew_ms: 0 };
        let early_push = seen(A, 7, 2, (0, 5_000), 4_990);
        let verdict = pks_end_once_in_time(&[StateSeen { source_gifts: 3, ..early_push }], &records, &[], bounds);
        assert_eq!(verdict.violations, 1, "{:?}", verdict.evidence);
        assert!(verdict.evidence[0].contains("before its endTime"));
        // Within a clock skew the run injected, the same early read is allowed.
        let skewed = Bounds { skew_ms: 20, ..bounds };
        let verdict = pks_end_once_in_time(&[StateSeen { source_gifts: 3, ..early_push }], &records, &[], skewed);
        assert!(verdict.passed, "{:?}", verdict.evidence);
        let other_total = seen(A, 7, 2, (0, 5_000), 5_050);
        let verdict = pks_end_once_in_time(&[other_total], &records, &[], bounds);
        assert!(verdict.evidence[0].contains("unlike the settled one"), "{:?}", verdict.evidence);
    }

    #[test]
    fn nodes_answering_differently_is_a_violation() {
        let history = |gifts: i64| -> NodeHistory { [(A, vec![record(7, A, B, gifts, (0, 5_000), 2)])].into() };
        let same: BTreeMap<u64, NodeHistory> = [(1, history(4)), (2, history(4))].into();
        assert!(replicas_agree(&same).passed);
        let differ: BTreeMap<u64, NodeHistory> = [(1, history(4)), (2, history(4)), (3, history(5))].into();
        let verdict = replicas_agree(&differ);
        assert_eq!(verdict.violations, 1);
        assert!(verdict.evidence[0].contains("node 3 answers [7(status 2, 5:0)]"), "{:?}", verdict.evidence);
    }

    #[test]
    fn a_node_lacking_the_pks_settled_before_it_joined_is_a_violation() {
        let (old, new) = (record(7, A, B, 4, (0, 5_000), 2), record(9, A, B, 6, (6_000, 11_000), 2));
        let full: NodeHistory = [(A, vec![new.clone(), old])].into();
        let recent: NodeHistory = [(A, vec![new])].into();
        let settled: BTreeMap<u64, NodeHistory> = [(1, full.clone()), (4, recent.clone())].into();
        let verdict = replicas_agree(&settled);
        assert_eq!(verdict.violations, 1, "{:?}", verdict.evidence);
        assert!(verdict.evidence[0].contains("node 4 answers [9(status 2, 6:0)]"), "{:?}", verdict.evidence);
        // The history is read from the node that has the most, whatever its id.
        let settled: BTreeMap<u64, NodeHistory> = [(1, recent), (2, full)].into();
        assert_eq!(reference_node(&settled), Some(2));
        assert!(!replicas_agree(&settled).passed);
    }

    #[test]
    fn no_progress_after_the_last_fault_is_a_violation() {
        let gifts = [gift(1, 7, A, 1, Outcome::Ok)];
        let states = [seen(A, 7, 1, (900, 5_000), 1_000)];
        assert!(progress_after_faults(&gifts, &states, 500).passed);
        let verdict = progress_after_faults(&gifts, &states, 2_000);
        assert_eq!(verdict.violations, 2, "{:?}", verdict.evidence);
    }

    #[test]
    fn replicas_differing_at_one_index_is_a_violation() {
        let sample = |node: u64, group: u64, index: u64, digest: &str| DigestSample {
            node,
            group,
            applied_index: index,
            sha256: digest.repeat(64 / digest.len()),
            at_ms: 0,
        };
        // Different indexes never compare; one index on all three nodes, equal, passes.
        let agreeing = [
            sample(1, 0, 10, "a"),
            sample(2, 0, 11, "b"),
            sample(1, 0, 12, "c"),
            sample(2, 0, 12, "c"),
            sample(3, 0, 12, "c"),
        ];
        let three = BTreeSet::from([1, 2, 3]);
        let verdict = replicas_identical(&agreeing, &three);
        assert!(verdict.passed, "{:?}", verdict.evidence);
        assert_eq!(verdict.checked, 1);
        // Node 3 at index 12 with another state.
        let mut diverged = agreeing.to_vec();
        diverged[4] = sample(3, 0, 12, "d");
        let verdict = replicas_identical(&diverged, &three);
        assert!(!verdict.passed);
        assert!(verdict.evidence[0].starts_with("group 0 at index 12: nodes {1, 2}: cccc"), "{:?}", verdict.evidence);
        // Never compared on every node: no evidence of agreement is a violation too.
        let verdict = replicas_identical(&agreeing[..4], &three);
        assert_eq!(verdict.evidence, vec!["group 0 was never seen at one index on all 3 nodes (1, 2, 3)".to_owned()]);
        assert!(!replicas_identical(&[], &three).passed);

        // Node 2 removed and node 4 added: all three members must be caught at one index;
        // node 2's samples from when it was a member are still compared.
        let changed = BTreeSet::from([1, 3, 4]);
        let verdict = replicas_identical(&agreeing, &changed);
        assert_eq!(verdict.evidence, vec!["group 0 was never seen at one index on all 3 nodes (1, 3, 4)".to_owned()]);
        let mut later = agreeing.to_vec();
        later.extend([sample(1, 0, 20, "e"), sample(3, 0, 20, "e"), sample(4, 0, 20, "e")]);
        assert!(replicas_identical(&later, &changed).passed);
        later.push(sample(4, 0, 12, "f"));
        let verdict = replicas_identical(&later, &changed);
        assert!(
            verdict.evidence[0].starts_with("group 0 at index 12: nodes {1, 2, 3}: cccc"),
            "{:?}",
            verdict.evidence
        );
    }

    #[test]
    fn a_state_going_back_over_one_connection_is_caught() {
        let span = (1_000, 5_000);
        let scored = |status: u64, source: i64, target: i64, at_ms: i64| StateSeen {
            source_gifts: source,
            target_gifts: target,
            ..seen(A, 7, status, span, at_ms)
        };
        let onward = [scored(0, 0, 0, 1_100), scored(1, 5, 0, 2_000), scored(1, 5, 3, 3_000), scored(2, 5, 3, 5_100)];
        let verdict = pushes_never_go_back(&onward, 0);
        assert!(verdict.passed, "{:?}", verdict.evidence);
        assert_eq!(verdict.checked, 4);
        // A score falls, then the PK is over and shown in its battle again.
        let mut back = onward.to_vec();
        back.insert(3, scored(1, 4, 3, 3_500));
        back.push(scored(1, 5, 3, 5_200));
        let verdict = pushes_never_go_back(&back, 0);
        assert_eq!(verdict.violations, 2, "{:?}", verdict.evidence);
        assert!(verdict.evidence[0].contains("PK 7: scores 5:3 then 4:3"), "{:?}", verdict.evidence);
        assert!(verdict.evidence[1].contains("status 2 then 1"), "{:?}", verdict.evidence);
        // A winner that changes; an over PK shown ended abnormally.
        let won = |winner: Option<u64>, status: u64| StateSeen { winner, ..scored(status, 5, 3, 5_100) };
        let verdict = pushes_never_go_back(&[won(Some(A), 2), won(Some(B), 2), won(Some(B), 3)], 0);
        assert_eq!(verdict.violations, 2, "{:?}", verdict.evidence);
        // A battle shown as opening again: a violation unless a clock was skewed.
        let reopened = [scored(1, 0, 0, 1_500), scored(0, 0, 0, 1_600)];
        assert!(!pushes_never_go_back(&reopened, 0).passed);
        let verdict = pushes_never_go_back(&reopened, 800);
        assert!(verdict.passed && verdict.notes.len() == 1, "{:?}", verdict.notes);
        // Over a new connection (to another node), going back is noted only.
        let reconnected = [scored(1, 5, 3, 2_000), StateSeen { connection: 2, node: 2, ..scored(1, 4, 3, 2_500) }];
        let verdict = pushes_never_go_back(&reconnected, 0);
        assert!(verdict.passed, "{:?}", verdict.evidence);
        assert_eq!(verdict.notes[0], "1 states went back across a reconnection to another node");
    }

    const D: u64 = 14;

    fn invited(invitee: u64, received_ms: i64, action: InvitationAction, code: &str) -> InvitationOp {
        InvitationOp { invitee, inviter: A, received_ms, action, code: code.to_owned(), answered_ms: received_ms + 20 }
    }

    /// Inviter A's two rounds: B wins the first (PK 7, read by the anchors) over C, whose
    /// accept is taken; in the second C refuses and D wins (PK 8, only settled).
    fn two_rounds() -> (Vec<InvitationOp>, Vec<StateSeen>, Vec<SettledRecord>) {
        let invitations = vec![
            invited(B, 1_000, InvitationAction::Accept, "902004"),
            invited(C, 1_005, InvitationAction::Accept, "902003"),
            invited(C, 8_000, InvitationAction::Refuse, "000000"),
            invited(D, 9_000, InvitationAction::Accept, "902004"),
        ];
        let states = vec![seen(B, 7, 0, (1_040, 6_000), 1_100), seen(A, 7, 2, (1_040, 6_000), 6_010)];
        let records = vec![record(8, A, D, 0, (9_030, 14_000), 2), record(8, D, A, 0, (9_030, 14_000), 2)];
        (invitations, states, records)
    }

    #[test]
    fn one_winner_a_round_with_its_pk_passes() {
        let (mut invitations, states, records) = two_rounds();
        let verdict = one_accept_per_invitation(&invitations, &states, &records, 0);
        assert!(verdict.passed, "{verdict:#?}");
        assert_eq!(verdict.checked, 4);
        assert!(verdict.notes[0].contains("4 invitations answered: 1 refused, 3 accepted (2 won, 1 taken"));
        // An accept without a reply and without a PK may have lost: tolerated.
        invitations.push(invited(C, 1_010, InvitationAction::Accept, "timeout"));
        assert!(one_accept_per_invitation(&invitations, &states, &records, 0).passed);
        // No invitation answered: the checker does not run.
        let idle = one_accept_per_invitation(&[], &states, &records, 0);
        assert!(!idle.failed() && idle.not_run.is_some());
    }

    #[test]
    fn two_winners_in_one_round_are_a_violation() {
        let (mut invitations, states, records) = two_rounds();
        invitations[1].code = "902004".to_owned();
        let verdict = one_accept_per_invitation(&invitations, &states, &records, 0);
        let has = |text: &str| verdict.evidence.iter().any(|line| line.contains(text));
        assert!(has("inviter 11: 2 accepts won its matching round 0: 12 (902004), 13 (902004)"), "{verdict:#?}");
        assert!(has("invitee 13 accepted the invitation received at 1005 and was answered 902004"), "{verdict:#?}");
        // An accept without a reply that got its PK counts as a win too.
        let (mut invitations, mut states, records) = two_rounds();
        invitations[1].code = "timeout".to_owned();
        states.push(StateSeen { target_user: C, ..seen(C, 9, 0, (1_050, 6_000), 1_200) });
        let verdict = one_accept_per_invitation(&invitations, &states, &records, 0);
        assert!(verdict.evidence.iter().any(|line| line.contains("12 (902004), 13 (timeout)")), "{verdict:#?}");
    }

    #[test]
    fn a_winner_without_its_pk_or_a_taken_accept_with_one_is_a_violation() {
        let (invitations, states, _) = two_rounds();
        // PK 8 never happened.
        let verdict = one_accept_per_invitation(&invitations, &states, &[], 0);
        assert_eq!(verdict.violations, 1, "{verdict:#?}");
        assert!(verdict.evidence[0].contains("inviter 11: invitee 14 accepted the invitation received at 9000"));
        assert!(verdict.evidence[0].contains("no PK of the two followed"));
        // C was told 902003, yet A went into a PK with C in that round.
        let (invitations, mut states, records) = two_rounds();
        states[0].target_user = C;
        states[1].target_user = C;
        let verdict = one_accept_per_invitation(&invitations, &states, &records, 0);
        let has = |text: &str| verdict.evidence.iter().any(|line| line.contains(text));
        assert!(has("invitee 13 accepted the invitation received at 1005 and was answered 902003"), "{verdict:#?}");
        assert!(has("yet PK 7 of the two followed"), "{verdict:#?}");
        assert!(has("invitee 12 accepted the invitation received at 1000"), "{verdict:#?}");
    }
}
