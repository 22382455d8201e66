//! The checkers of what leaves the cluster: the results database and the Redis read
//! cache, each read directly by the run once the nodes have settled. Pure functions, like
//! the others ([`super::checkers`]); they run only when the run had the service
//! (`--mysql-url`, `--redis-url`).

use std::collections::{BTreeMap, BTreeSet};

use super::history::{NodeHistory, SettledRecord, StateSeen};
use super::services::{CacheSnapshot, SqlPk, SqlSnapshot};
use super::verdict::Verdict;
use crate::sinks::redis_cache::ENDED_TTL_SECONDS;

pub const SQL_NAME: &str = "sql_matches_engine";
pub const SQL_CLAIM: &str = "the results tables hold every PK the engine settled, once, with its totals and winner: \
     t_pk, t_pk_anchor, t_pk_gift and t_pk_gift_ledger agree with the ends the anchors read and with every node's \
     history";
pub const REDIS_NAME: &str = "redis_converges";
pub const REDIS_CLAIM: &str = "after the last fault, the Redis cache shows the engine's state: pkr holds the rooms \
     the lobby holds, and each settled PK's pk_ and pkg_ keys its final status, totals and winner";

/// A settled PK as the engine tells it: (status, anchor → beans, winner).
type Told = (i64, BTreeMap<u64, i64>, u64);

/// The ends the anchors read (push 10 or a room entry with status 2 or 3): the engine's
/// own word on a PK's result. The latest read of each PK.
fn ends_read(states: &[StateSeen]) -> BTreeMap<u64, (u64, Told)> {
    let mut ends = BTreeMap::new();
    for state in states.iter().filter(|state| state.status >= 2) {
        let sides = BTreeMap::from([(state.source_user, state.source_gifts), (state.target_user, state.target_gifts)]);
        let told = (i64::try_from(state.status).unwrap_or(0), sides, state.winner.unwrap_or(0));
        ends.insert(state.pk, (state.user, told));
    }
    ends
}

/// What a `t_pk` row says, in the same shape.
fn told_by_row(row: &SqlPk) -> Told {
    (row.status, BTreeMap::from([(row.source_user, row.source_gifts), (row.target_user, row.target_gifts)]), row.winner)
}

fn describe(told: &Told) -> String {
    let sides: Vec<String> = told.1.iter().map(|(anchor, beans)| format!("{anchor}: {beans}")).collect();
    format!("status {}, {}, winner {}", told.0, sides.join(", "), told.2)
}

/// The `t_pk_anchor.result` of `user` in a PK of `status` won by `winner`.
fn result_of(status: i64, winner: u64, user: u64) -> i64 {
    match (status, winner) {
        (3, _) | (_, 0) => 0,
        (_, winner) if winner == user => 1,
        _ => 2,
    }
}

/// The results tables against the engine: every PK the anchors saw or a node answers has
/// one `t_pk` row, settled; its status, totals and winner are those of the end an anchor
/// read and of every node's answer; its two `t_pk_anchor` rows, its `t_pk_gift` total and
/// its ledger per receiver agree with it; no gift is in two ledger rows.
pub fn sql_matches_engine(states: &[StateSeen], settled: &BTreeMap<u64, NodeHistory>, sql: &SqlSnapshot) -> Verdict {
    let mut verdict = Verdict::new(SQL_NAME, SQL_CLAIM);
    let ends = ends_read(states);
    let mut engine: BTreeSet<u64> = states.iter().map(|state| state.pk).collect();
    engine.extend(settled.values().flat_map(|history| history.values().flatten().map(|record| record.pk_id)));
    let mut rows: BTreeMap<u64, Vec<&SqlPk>> = BTreeMap::new();
    for row in &sql.pks {
        rows.entry(row.id).or_default().push(row);
    }
    let mut anchors: BTreeMap<u64, Vec<_>> = BTreeMap::new();
    for row in &sql.anchors {
        anchors.entry(row.pk).or_default().push(row);
    }
    for &pk in &engine {
        verdict.checked += 1;
        let row = match rows.get(&pk).map(Vec::as_slice) {
            None | Some([]) => {
                verdict.violation(format!("PK {pk}: the engine ran it, but t_pk has no row for it"));
                continue;
            }
            Some([row]) => *row,
            Some(many) => {
                verdict.violation(format!("PK {pk}: {} rows in t_pk", many.len()));
                continue;
            }
        };
        if row.status != 2 && row.status != 3 {
            let read =
                ends.get(&pk).map(|(anchor, _)| format!(", and anchor {anchor} read its end")).unwrap_or_default();
            verdict.violation(format!(
                "PK {pk}: t_pk holds status {} after the wind-down (the engine ended it{read})",
                row.status
            ));
            continue;
        }
        let stored = told_by_row(row);
        if let Some((anchor, told)) = ends.get(&pk)
            && *told != stored
        {
            verdict.violation(format!(
                "PK {pk}: anchor {anchor} read its end as {}, t_pk holds {}",
                describe(told),
                describe(&stored)
            ));
        }
        for (node, history) in settled {
            for record in history.values().flatten().filter(|record| record.pk_id == pk) {
                let stored_side = (row.status, stored.1.get(&record.anchor).copied(), row.winner);
                let other = stored.1.iter().find(|(anchor, _)| **anchor != record.anchor).map(|(_, beans)| *beans);
                if record_told(record) != stored_side || other != Some(record.competitor_gifts) {
                    verdict.violation(format!(
                        "PK {pk}: node {node} answers anchor {}'s record as status {}, {}:{} beans, winner {}; t_pk holds {}",
                        record.anchor,
                        record.status,
                        record.gifts,
                        record.competitor_gifts,
                        record.winner,
                        describe(&stored)
                    ));
                }
            }
        }
        let sides = [
            (row.source_user, row.source_gifts, row.target_user, row.target_gifts),
            (row.target_user, row.target_gifts, row.source_user, row.source_gifts),
        ];
        let found = anchors.get(&pk).cloned().unwrap_or_default();
        if found.len() != 2 {
            verdict.violation(format!("PK {pk}: {} rows in t_pk_anchor, not 2", found.len()));
        }
        for (user, beans, competitor, competitor_beans) in sides {
            let Some(anchor_row) = found.iter().find(|anchor_row| anchor_row.user == user) else {
                verdict.violation(format!("PK {pk}: no t_pk_anchor row for anchor {user}"));
                continue;
            };
            let result = result_of(row.status, row.winner, user);
            if (anchor_row.gifts, anchor_row.competitor, anchor_row.competitor_gifts, anchor_row.result)
                != (beans, competitor, competitor_beans, result)
            {
                verdict.violation(format!(
                    "PK {pk}: t_pk_anchor of {user} holds {} beans against {} of {}, result {}; t_pk says {beans} against \
                     {competitor_beans} of {competitor}, result {result}",
                    anchor_row.gifts, anchor_row.competitor_gifts, anchor_row.competitor, anchor_row.result
                ));
            }
            let (gifts, ledger_beans) = sql.ledger.get(&(pk, user)).copied().unwrap_or((0, 0));
            if ledger_beans != beans || (beans > 0) != (gifts > 0) {
                verdict.violation(format!(
                    "PK {pk}: the ledger holds {gifts} gifts, {ledger_beans} beans for anchor {user}; t_pk says {beans} beans"
                ));
            }
        }
        let senders = sql.gift_beans.get(&pk).copied().unwrap_or(0);
        if senders != row.source_gifts + row.target_gifts {
            verdict.violation(format!(
                "PK {pk}: t_pk_gift sums to {senders} beans; t_pk says {} + {}",
                row.source_gifts, row.target_gifts
            ));
        }
    }
    for (gift, count) in &sql.ledger_duplicates {
        verdict.violation(format!("gift {gift}: in {count} rows of t_pk_gift_ledger (counted in more than one PK)"));
    }
    let settled_rows = sql.pks.iter().filter(|row| row.status == 2 || row.status == 3).count();
    verdict.notes.push(format!(
        "{} rows in t_pk ({settled_rows} settled), {} of them PKs the engine ran; {} ends read by the anchors compared",
        sql.pks.len(),
        sql.pks.iter().filter(|row| engine.contains(&row.id)).count(),
        ends.keys().filter(|pk| rows.contains_key(pk)).count()
    ));
    verdict
}

/// A node's record of one anchor in the shape of a `t_pk` row's side: (status, beans,
/// winner).
fn record_told(record: &SettledRecord) -> (i64, Option<i64>, u64) {
    (record.status, Some(record.gifts), record.winner)
}

/// How long after its end a settled PK's keys may still be missed: they expire
/// `ENDED_TTL_SECONDS` after the end; a margin for the clocks.
const EXPIRY_MARGIN_MS: i64 = 10_000;

/// The cache against the engine: `pkr` holds exactly the rooms each node's lobby holds;
/// each settled PK (not yet expired) has its `pk_` hash, with its final status, totals and
/// winner, and a `pkg_` set per side with gifts, summing to that side's beans.
pub fn redis_converges(records: &[SettledRecord], cache: &CacheSnapshot) -> Verdict {
    let mut verdict = Verdict::new(REDIS_NAME, REDIS_CLAIM);
    verdict.checked += 1;
    if cache.engine_rooms.is_empty() {
        verdict.violation("no node answered GET /api/rooms-in-pk".to_owned());
    }
    for (node, rooms) in &cache.engine_rooms {
        if *rooms != cache.rooms {
            verdict.violation(format!("pkr holds {:?}, node {node}'s lobby holds {rooms:?}", cache.rooms));
        }
    }
    // pk → its settled records (one per anchor).
    let mut pks: BTreeMap<u64, Vec<&SettledRecord>> = BTreeMap::new();
    for record in records.iter().filter(|record| record.status == 2 || record.status == 3) {
        pks.entry(record.pk_id).or_default().push(record);
    }
    let mut expired = 0;
    for (pk, sides) in &pks {
        let ended = sides.iter().filter_map(|record| record.end_time).max().unwrap_or(i64::MAX);
        if ended.saturating_add(ENDED_TTL_SECONDS * 1_000 - EXPIRY_MARGIN_MS) < cache.read_at_ms {
            expired += 1;
            continue;
        }
        verdict.checked += 1;
        let Some(fields) = cache.pks.get(pk) else {
            verdict.violation(format!("PK {pk}: settled, but the cache has no pk_{pk}"));
            continue;
        };
        let field = |name: &str| fields.get(name).and_then(|value| value.parse::<i64>().ok());
        let status = field("status").unwrap_or(-1);
        let record = sides[0];
        if status != record.status {
            verdict.violation(format!(
                "PK {pk}: the cache shows status {status} (version {}), the engine settled it with status {}",
                fields.get("version").map_or("?", String::as_str),
                record.status
            ));
            continue;
        }
        let winner = field("winner").unwrap_or(0);
        if winner != i64::try_from(record.winner).unwrap_or(-1) {
            verdict.violation(format!("PK {pk}: the cache shows winner {winner}, the engine's is {}", record.winner));
        }
        for prefix in ["source", "target"] {
            let (Some(anchor), Some(beans)) = (field(&format!("{prefix}User")), field(&format!("{prefix}Gifts")))
            else {
                verdict.violation(format!("PK {pk}: pk_{pk} has no {prefix}User or {prefix}Gifts"));
                continue;
            };
            let anchor = u64::try_from(anchor).unwrap_or(0);
            let Some(settled) = sides.iter().find(|record| record.anchor == anchor) else {
                verdict.violation(format!("PK {pk}: the cache shows anchor {anchor}, who has no settled record of it"));
                continue;
            };
            if beans != settled.gifts {
                verdict.violation(format!(
                    "PK {pk}: the cache shows {beans} beans for anchor {anchor}, the engine settled {}",
                    settled.gifts
                ));
            }
            let gifters = cache.gifters.get(&(*pk, anchor)).copied().unwrap_or(0);
            if gifters != settled.gifts {
                verdict.violation(format!(
                    "PK {pk}: pkg_{pk}_{anchor} sums to {gifters} beans, the engine settled {}",
                    settled.gifts
                ));
            }
        }
    }
    verdict.notes.push(format!(
        "{} settled PKs; {expired} ended long enough ago for their keys to have expired; {} pk_ keys, {} rooms in pkr",
        pks.len(),
        cache.pks.len(),
        cache.rooms.len()
    ));
    verdict
}

#[cfg(test)]
mod tests {
    use super::super::services::SqlAnchor;
    use super::*;
    use crate::bench::pks::StateSource;

    const A: u64 = 11;
    const B: u64 = 12;

    fn record(pk: u64, anchor: u64, gifts: i64, competitor: u64, competitor_gifts: i64, winner: u64) -> SettledRecord {
        SettledRecord {
            pk_id: pk,
            status: 2,
            start_time: Some(0),
            end_time: Some(5_000),
            anchor,
            gifts,
            competitor,
            competitor_gifts,
            winner,
        }
    }

    /// PK 7: A 5 beans, B 3, A won; PK 8: no gifts, a draw.
    fn engine() -> BTreeMap<u64, NodeHistory> {
        let history: NodeHistory = [
            (A, vec![record(8, A, 0, B, 0, 0), record(7, A, 5, B, 3, A)]),
            (B, vec![record(8, B, 0, A, 0, 0), record(7, B, 3, A, 5, A)]),
        ]
        .into();
        [(1, history.clone()), (2, history)].into()
    }

    fn end_read(pk: u64, source_gifts: i64, target_gifts: i64, winner: u64) -> StateSeen {
        StateSeen {
            user: A,
            source: StateSource::Push,
            connection: 1,
            node: 1,
            at_ms: 5_010,
            pk,
            status: 2,
            start_ms: 0,
            end_ms: 5_000,
            source_user: A,
            target_user: B,
            source_gifts,
            target_gifts,
            winner: Some(winner),
        }
    }

    fn sql_pk(id: u64, source_gifts: i64, target_gifts: i64, winner: u64) -> SqlPk {
        SqlPk { id, status: 2, source_user: A, source_gifts, target_user: B, target_gifts, winner }
    }

    fn sql_anchor(pk: u64, user: u64, gifts: i64, competitor: u64, competitor_gifts: i64, result: i64) -> SqlAnchor {
        SqlAnchor { pk, user, gifts, competitor, competitor_gifts, result }
    }

    /// The tables as a correct sink leaves them for [`engine`].
    fn tables() -> SqlSnapshot {
        SqlSnapshot {
            pks: vec![sql_pk(7, 5, 3, A), sql_pk(8, 0, 0, 0)],
            anchors: vec![
                sql_anchor(7, A, 5, B, 3, 1),
                sql_anchor(7, B, 3, A, 5, 2),
                sql_anchor(8, A, 0, B, 0, 0),
                sql_anchor(8, B, 0, A, 0, 0),
            ],
            gift_beans: [(7, 8)].into(),
            ledger: [((7, A), (2, 5)), ((7, B), (1, 3))].into(),
            ledger_duplicates: BTreeMap::new(),
        }
    }

    #[test]
    fn tables_holding_exactly_the_engines_results_pass() {
        let states = [end_read(7, 5, 3, A), end_read(8, 0, 0, 0)];
        let verdict = sql_matches_engine(&states, &engine(), &tables());
        assert!(verdict.passed, "{:#?}", verdict.evidence);
        assert_eq!(verdict.checked, 2);
    }

    #[test]
    fn a_result_left_unsettled_missing_or_written_twice_is_a_violation() {
        let states = [end_read(7, 5, 3, A)];
        // PK 7 left at status 1 (its end never written), PK 8 missing, PK 9 twice.
        let mut sql = tables();
        sql.pks = vec![SqlPk { status: 1, ..sql_pk(7, 5, 0, 0) }, sql_pk(9, 0, 0, 0), sql_pk(9, 0, 0, 0)];
        let mut settled = engine();
        for history in settled.values_mut() {
            history.get_mut(&A).unwrap().push(record(9, A, 0, B, 0, 0));
        }
        let verdict = sql_matches_engine(&states, &settled, &sql);
        let has = |text: &str| verdict.evidence.iter().any(|line| line.contains(text));
        assert!(has("PK 7: t_pk holds status 1 after the wind-down (the engine ended it, and anchor 11 read its end)"));
        assert!(has("PK 8: the engine ran it, but t_pk has no row for it"), "{:#?}", verdict.evidence);
        assert!(has("PK 9: 2 rows in t_pk"), "{:#?}", verdict.evidence);
        assert_eq!(verdict.violations, 3, "{:#?}", verdict.evidence);
    }

    #[test]
    fn totals_or_winners_unlike_the_engines_are_violations() {
        // The anchors read 6:3; t_pk holds 5:3 and the nodes answer 5:3 (the database and
        // every node agree, but not with what the engine told its clients).
        let states = [end_read(7, 6, 3, A)];
        let verdict = sql_matches_engine(&states, &engine(), &tables());
        assert_eq!(verdict.violations, 1, "{:#?}", verdict.evidence);
        assert!(verdict.evidence[0].contains("anchor 11 read its end as status 2, 11: 6, 12: 3, winner 11"));

        // The winner flipped in t_pk alone: the anchors' read, both nodes' answers and
        // both t_pk_anchor results disagree with it.
        let mut sql = tables();
        sql.pks[0].winner = B;
        let verdict = sql_matches_engine(&[end_read(7, 5, 3, A)], &engine(), &sql);
        assert!(verdict.evidence.iter().any(|line| line.contains("node 2 answers anchor 12's record")));
        assert!(
            verdict
                .evidence
                .iter()
                .any(|line| line.contains("t_pk_anchor of 11 holds 5 beans against 3 of 12, result 1"))
        );
        assert_eq!(verdict.violations, 1 + 4 + 2, "{:#?}", verdict.evidence);
    }

    #[test]
    fn side_tables_unlike_t_pk_and_a_gift_in_two_ledgers_are_violations() {
        let mut sql = tables();
        sql.anchors.retain(|row| !(row.pk == 8 && row.user == B));
        sql.gift_beans.insert(7, 9);
        sql.ledger.insert((7, B), (1, 2));
        sql.ledger_duplicates.insert(44, 2);
        let verdict = sql_matches_engine(&[], &engine(), &sql);
        let has = |text: &str| verdict.evidence.iter().any(|line| line.contains(text));
        assert!(has("PK 8: 1 rows in t_pk_anchor, not 2"), "{:#?}", verdict.evidence);
        assert!(has("PK 8: no t_pk_anchor row for anchor 12"), "{:#?}", verdict.evidence);
        assert!(has("PK 7: t_pk_gift sums to 9 beans; t_pk says 5 + 3"), "{:#?}", verdict.evidence);
        assert!(
            has("PK 7: the ledger holds 1 gifts, 2 beans for anchor 12; t_pk says 3 beans"),
            "{:#?}",
            verdict.evidence
        );
        assert!(has("gift 44: in 2 rows"), "{:#?}", verdict.evidence);
        assert_eq!(verdict.violations, 5, "{:#?}", verdict.evidence);
    }

    fn pk_hash(
        pk: u64,
        status: i64,
        source_gifts: i64,
        target_gifts: i64,
        winner: Option<u64>,
    ) -> BTreeMap<String, String> {
        let mut fields: BTreeMap<String, String> = [
            ("pkId", pk.to_string()),
            ("status", status.to_string()),
            ("sourceUser", A.to_string()),
            ("sourceGifts", source_gifts.to_string()),
            ("targetUser", B.to_string()),
            ("targetGifts", target_gifts.to_string()),
            ("version", "40".to_owned()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
        if let Some(winner) = winner {
            fields.insert("winner".to_owned(), winner.to_string());
        }
        fields
    }

    fn converged() -> CacheSnapshot {
        CacheSnapshot {
            rooms: BTreeMap::new(),
            pks: [(7, pk_hash(7, 2, 5, 3, Some(A))), (8, pk_hash(8, 2, 0, 0, None))].into(),
            gifters: [((7, A), 5), ((7, B), 3)].into(),
            engine_rooms: [(1, BTreeMap::new()), (2, BTreeMap::new())].into(),
            read_at_ms: 30_000,
        }
    }

    fn records() -> Vec<SettledRecord> {
        engine()[&1].values().flatten().cloned().collect()
    }

    #[test]
    fn a_cache_showing_the_settled_results_and_the_lobbys_rooms_passes() {
        let verdict = redis_converges(&records(), &converged());
        assert!(verdict.passed, "{:#?}", verdict.evidence);
        assert_eq!(verdict.checked, 3);
        // Keys of PKs that ended long ago may have expired.
        let late = CacheSnapshot { pks: BTreeMap::new(), gifters: BTreeMap::new(), read_at_ms: 400_000, ..converged() };
        assert!(redis_converges(&records(), &late).passed);
    }

    #[test]
    fn a_stale_or_missing_pk_key_wrong_totals_and_stray_rooms_are_violations() {
        let mut cache = converged();
        // PK 7 still shown in its battle, PK 8 gone; a room the lobby released still tagged.
        cache.pks.insert(7, pk_hash(7, 1, 5, 2, None));
        cache.pks.remove(&8);
        cache.rooms.insert(A, 7);
        let verdict = redis_converges(&records(), &cache);
        let has = |text: &str| verdict.evidence.iter().any(|line| line.contains(text));
        assert!(has("PK 7: the cache shows status 1 (version 40), the engine settled it with status 2"));
        assert!(has("PK 8: settled, but the cache has no pk_8"), "{:#?}", verdict.evidence);
        assert!(has("pkr holds {11: 7}, node 1's lobby holds {}"), "{:#?}", verdict.evidence);
        assert_eq!(verdict.violations, 4, "{:#?}", verdict.evidence);

        let mut cache = converged();
        cache.pks.insert(7, pk_hash(7, 2, 5, 2, Some(B)));
        cache.gifters.insert((7, A), 4);
        cache.engine_rooms.clear();
        let verdict = redis_converges(&records(), &cache);
        let has = |text: &str| verdict.evidence.iter().any(|line| line.contains(text));
        assert!(has("PK 7: the cache shows winner 12, the engine's is 11"), "{:#?}", verdict.evidence);
        assert!(has("PK 7: the cache shows 2 beans for anchor 12, the engine settled 3"), "{:#?}", verdict.evidence);
        assert!(has("PK 7: pkg_7_11 sums to 4 beans, the engine settled 5"), "{:#?}", verdict.evidence);
        assert!(has("no node answered"), "{:#?}", verdict.evidence);
        assert_eq!(verdict.violations, 4, "{:#?}", verdict.evidence);
    }
}
