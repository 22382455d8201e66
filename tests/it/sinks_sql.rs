//! The SQL results store against a real MariaDB/MySQL and SQLite.
//!
//! MySQL: each test creates its own database `pkd_test_<pid>_<n>_<nanos>` on
//! `PKD_TEST_MYSQL_URL` (default `mysql://root@127.0.0.1:3306`) and drops it at the
//! end. SQLite: a file in a temporary directory.

use pkd::sinks::{Dialect, ResultsStore};
use pkd::sinks::{LedgerGift, LedgerTotal, Mismatch};
use pkd_raft::effect::{AbnormalEnd, CountedGift, GifterTotal, PkStatus, SettledPk, SettledSide, SideView};
use pkd_raft::{GiftId, PkId, PkView, RoomId, TimestampMs, UserId};
use sqlx::Row;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};

// ---- fixtures -------------------------------------------------------------------

const START: i64 = 1_625_811_819_212; // 2021-07-09 06:23:39.212 UTC
const SOURCE: u64 = 2_099_955;
const TARGET: u64 = 2_099_934;
const FAN_A: u64 = 2_100_216;
const FAN_B: u64 = 2_100_300;

fn gifter(sender: u64, beans: i64, times: u32, rank: u32) -> GifterTotal {
    GifterTotal { sender: UserId(sender), beans, times, rank }
}

/// A counted gift, `after` ms into the PK.
fn counted(id: u64, sender: u64, beans: i64, at: i64) -> CountedGift {
    CountedGift { id: GiftId(id), sender: UserId(sender), beans, at: TimestampMs(at) }
}

fn side(anchor: u64, room: u64, audience: u32, gifters: Vec<GifterTotal>, gifts: Vec<CountedGift>) -> SettledSide {
    SettledSide {
        anchor: UserId(anchor),
        room: RoomId(room),
        beans: gifters.iter().map(|g| g.beans).sum(),
        audience,
        gifters,
        gifts,
    }
}

/// A PK won by the source: FAN_A gave 1000 to the source; FAN_B gave 500 to the
/// source and 800 to the target (one `t_pk_gift` row: 1300 beans, 3 times, rank 1).
/// The ledger holds those six gifts, ids 901 to 906.
fn finished(pk: u64, start: i64) -> SettledPk {
    let battle_end = start + 301_500;
    let source_gifts = vec![
        counted(901, FAN_A, 300, start + 2_000),
        counted(902, FAN_B, 500, start + 2_500),
        counted(904, FAN_A, 300, start + 60_000),
        counted(906, FAN_A, 400, start + 300_999),
    ];
    let target_gifts = vec![counted(903, FAN_B, 300, start + 3_000), counted(905, FAN_B, 500, start + 70_000)];
    SettledPk {
        pk: PkId(pk),
        status: PkStatus::Done,
        abnormal: None,
        interfered: true,
        start_time: TimestampMs(start),
        battle_end: TimestampMs(battle_end),
        end_time: TimestampMs(battle_end + 7),
        duration_ms: 301_507,
        source: side(SOURCE, SOURCE, 12, vec![gifter(FAN_A, 1000, 3, 1), gifter(FAN_B, 500, 1, 2)], source_gifts),
        target: side(TARGET, 3_099_934, 7, vec![gifter(FAN_B, 800, 2, 1)], target_gifts),
        winner: UserId(SOURCE),
    }
}

/// Equal beans: a draw; the target had no gifts at all.
fn draw(pk: u64) -> SettledPk {
    let mut settled = finished(pk, START);
    settled.interfered = false;
    settled.source = side(SOURCE, SOURCE, 3, vec![], vec![]);
    settled.target = side(TARGET, 3_099_934, 0, vec![], vec![]);
    settled.winner = UserId(0);
    settled
}

/// The target's anchor left mid-battle: status 3, no winner.
fn abnormal(pk: u64) -> SettledPk {
    let mut settled = finished(pk, START);
    settled.status = PkStatus::Error;
    settled.abnormal = Some(AbnormalEnd::AnchorLeft { anchor: UserId(TARGET) });
    settled.end_time = TimestampMs(START + 120_000);
    settled.duration_ms = 120_000;
    settled.winner = UserId(0);
    settled
}

fn view_of(settled: &SettledPk) -> PkView {
    let side_view = |side: &SettledSide| SideView {
        anchor: side.anchor,
        room: side.room,
        beans: 0,
        online: true,
        audience: 2,
        top_gifters: vec![],
    };
    PkView {
        pk: settled.pk,
        status: PkStatus::Opening,
        interfered: settled.interfered,
        start_time: settled.start_time,
        end_time: settled.battle_end,
        source: side_view(&settled.source),
        target: side_view(&settled.target),
        winner: None,
    }
}

// ---- backends -------------------------------------------------------------------

type Rows = Vec<Vec<Option<String>>>;

/// A row as text, `NULL` for SQL NULL.
fn row(values: &[&str]) -> Vec<Option<String>> {
    values.iter().map(|v| (*v != "NULL").then(|| (*v).to_owned())).collect()
}

const T_PK_COLUMNS: &[&str] = &[
    "id",
    "type",
    "status",
    "sequel_type",
    "sequel_content",
    "interfered",
    "start_time",
    "end_time",
    "duration",
    "source_user",
    "source_toom",
    "source_gifts",
    "source_audience",
    "target_user",
    "target_room",
    "target_gifts",
    "target_audience",
    "winner",
    "extend",
    "create_time",
    "update_time",
    "deleted",
    "version",
    "project_code",
    "tenant_code",
];

const T_PK_GIFT_COLUMNS: &[&str] = &[
    "id",
    "pk_id",
    "sender",
    "gift_beans",
    "gift_times",
    "rank",
    "extend",
    "create_time",
    "update_time",
    "deleted",
    "version",
    "project_code",
    "tenant_code",
];

const T_PK_ANCHOR_COLUMNS: &[&str] = &[
    "id",
    "pk_id",
    "duration",
    "user_id",
    "gifts",
    "audience",
    "most_present_audience",
    "competitor",
    "competitor_gifts",
    "competitor_audience",
    "result",
    "extend",
    "create_time",
    "update_time",
    "deleted",
    "version",
    "project_code",
    "tenant_code",
];

/// Every column of a table's rows for one PK, as text, in `id` order.
async fn dump(store: &ResultsStore, table: &str, pk: u64) -> anyhow::Result<Rows> {
    let (columns, pk_column) = match table {
        "t_pk" => (T_PK_COLUMNS, "id"),
        "t_pk_gift" => (T_PK_GIFT_COLUMNS, "pk_id"),
        _ => (T_PK_ANCHOR_COLUMNS, "pk_id"),
    };
    let text = match store.dialect() {
        Dialect::MySql => "CHAR",
        Dialect::Sqlite => "TEXT",
    };
    let select = columns.iter().map(|c| format!("CAST(`{c}` AS {text})")).collect::<Vec<_>>().join(", ");
    let sql = format!("SELECT {select} FROM {table} WHERE `{pk_column}` = ? ORDER BY id");
    let rows = sqlx::query(&sql).bind(pk as i64).fetch_all(store.pool()).await?;
    let mut out = Vec::new();
    for r in rows {
        let mut values = Vec::new();
        for i in 0..columns.len() {
            values.push(r.try_get::<Option<String>, _>(i)?);
        }
        out.push(values);
    }
    Ok(out)
}

async fn dump_all(store: &ResultsStore, pk: u64) -> anyhow::Result<[Rows; 3]> {
    Ok([dump(store, "t_pk", pk).await?, dump(store, "t_pk_gift", pk).await?, dump(store, "t_pk_anchor", pk).await?])
}

/// Each mismatch as (table, key, column, expected, found).
type Found<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, Option<&'a str>);

fn found(mismatches: &[Mismatch]) -> Vec<Found<'_>> {
    mismatches.iter().map(|m| (m.table, m.key.as_str(), m.column, m.expected.as_deref(), m.found.as_deref())).collect()
}

async fn execute(store: &ResultsStore, sql: &str) -> anyhow::Result<()> {
    sqlx::query(sql).execute(store.pool()).await?;
    Ok(())
}

static DATABASES: AtomicU32 = AtomicU32::new(0);

/// Runs `check` on a fresh MySQL database, dropped afterwards even if the check
/// panics (it runs on its own task).
async fn on_mysql<F, Fut>(check: F)
where
    F: FnOnce(ResultsStore) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    sqlx::any::install_default_drivers();
    let server = std::env::var("PKD_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned());
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let database = format!("pkd_test_{}_{}_{nanos}", std::process::id(), DATABASES.fetch_add(1, Ordering::Relaxed));
    let admin = sqlx::AnyPool::connect(&format!("{server}/test"))
        .await
        .expect("MariaDB on 127.0.0.1:3306 (PKD_TEST_MYSQL_URL)");
    sqlx::query(&format!("CREATE DATABASE {database}")).execute(&admin).await.expect("create the test database");
    let outcome = match ResultsStore::connect(&format!("{server}/{database}")).await {
        Ok(store) => {
            let outcome = tokio::spawn(check(store.clone())).await;
            store.close().await;
            outcome
        }
        Err(error) => Ok(Err(error.into())),
    };
    sqlx::query(&format!("DROP DATABASE {database}")).execute(&admin).await.expect("drop the test database");
    match outcome {
        Ok(result) => result.expect("the check on MySQL"),
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}

async fn on_sqlite<F, Fut>(check: F)
where
    F: FnOnce(ResultsStore) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("results.db").display());
    let store = ResultsStore::connect(&url).await.expect("open SQLite");
    let result = check(store.clone()).await;
    store.close().await;
    result.expect("the check on SQLite");
}

/// Runs a check on both backends, as two tests.
macro_rules! on_both {
    ($check:ident) => {
        mod $check {
            #[tokio::test]
            async fn mysql() {
                super::on_mysql(super::$check).await;
            }

            #[tokio::test]
            async fn sqlite() {
                super::on_sqlite(super::$check).await;
            }
        }
    };
}

// ---- checks ---------------------------------------------------------------------

on_both!(finished_pk_rows);
async fn finished_pk_rows(store: ResultsStore) -> anyhow::Result<()> {
    let settled = finished(7, START);
    store.record_settled(&settled).await?;
    let [pk, gifts, anchors] = dump_all(&store, 7).await?;
    assert_eq!(
        pk,
        vec![row(&[
            "7",
            "1",
            "2",
            "0",
            "NULL",
            "1",
            "2021-07-09 06:23:39.212",
            "2021-07-09 06:28:40.719",
            "301507",
            "2099955",
            "2099955",
            "1500",
            "12",
            "2099934",
            "3099934",
            "800",
            "7",
            "2099955",
            "NULL",
            "2021-07-09 06:23:39",
            "2021-07-09 06:28:40",
            "0",
            "0",
            "NULL",
            "NULL",
        ])]
    );
    let gift = |id: &str, sender: &str, beans: &str, times: &str, rank: &str| {
        row(&[
            id,
            "7",
            sender,
            beans,
            times,
            rank,
            "NULL",
            "2021-07-09 06:23:39",
            "2021-07-09 06:28:40",
            "0",
            "0",
            "NULL",
            "NULL",
        ])
    };
    assert_eq!(
        gifts,
        vec![
            gift("1", "2100216", "1000", "3", "1"),
            // FAN_B gave to both sides: one row, sums, the better rank.
            gift("2", "2100300", "1300", "3", "1"),
        ]
    );
    let anchor = |id: &str, user: &str, gifts: &str, audience: &str, most: &str, other: &[&str]| {
        let mut values = vec![id, "7", "301507", user, gifts, audience, most];
        values.extend_from_slice(other);
        values.extend_from_slice(&["NULL", "2021-07-09 06:23:39", "2021-07-09 06:28:40", "0", "0", "NULL", "NULL"]);
        row(&values)
    };
    assert_eq!(
        anchors,
        vec![
            anchor("1", "2099955", "1500", "12", "2100216", &["2099934", "800", "7", "1"]),
            anchor("2", "2099934", "800", "7", "2100300", &["2099955", "1500", "12", "2"]),
        ]
    );
    assert_eq!(store.verify_settled(&settled).await?, vec![]);

    // The same result again (a replayed effect), alone and in a batch: same rows.
    store.record_settled(&settled).await?;
    store.record_settled_batch(&[settled.clone(), settled.clone()]).await?;
    assert_eq!(dump_all(&store, 7).await?, [pk, gifts, anchors]);
    Ok(())
}

on_both!(draw_rows);
async fn draw_rows(store: ResultsStore) -> anyhow::Result<()> {
    let settled = draw(8);
    store.record_settled(&settled).await?;
    let [pk, gifts, anchors] = dump_all(&store, 8).await?;
    assert_eq!(
        pk,
        vec![row(&[
            "8",
            "1",
            "2",
            "0",
            "NULL",
            "0",
            "2021-07-09 06:23:39.212",
            "2021-07-09 06:28:40.719",
            "301507",
            "2099955",
            "2099955",
            "0",
            "3",
            "2099934",
            "3099934",
            "0",
            "0",
            "0",
            "NULL",
            "2021-07-09 06:23:39",
            "2021-07-09 06:28:40",
            "0",
            "0",
            "NULL",
            "NULL",
        ])]
    );
    assert_eq!(gifts, Rows::new());
    let tail = ["NULL", "2021-07-09 06:23:39", "2021-07-09 06:28:40", "0", "0", "NULL", "NULL"];
    let mut source = vec!["1", "8", "301507", "2099955", "0", "3", "NULL", "2099934", "0", "0", "0"];
    source.extend_from_slice(&tail);
    let mut target = vec!["2", "8", "301507", "2099934", "0", "0", "NULL", "2099955", "0", "3", "0"];
    target.extend_from_slice(&tail);
    assert_eq!(anchors, vec![row(&source), row(&target)]);
    assert_eq!(store.verify_settled(&settled).await?, vec![]);
    Ok(())
}

on_both!(abnormal_end_rows);
async fn abnormal_end_rows(store: ResultsStore) -> anyhow::Result<()> {
    let settled = abnormal(9);
    store.record_settled(&settled).await?;
    store.record_settled(&settled).await?;
    let [pk, gifts, anchors] = dump_all(&store, 9).await?;
    assert_eq!(
        pk,
        vec![row(&[
            "9",
            "1",
            "3",
            "0",
            "NULL",
            "1",
            "2021-07-09 06:23:39.212",
            "2021-07-09 06:25:39.212",
            "120000",
            "2099955",
            "2099955",
            "1500",
            "12",
            "2099934",
            "3099934",
            "800",
            "7",
            "0",
            "NULL",
            "2021-07-09 06:23:39",
            "2021-07-09 06:25:39",
            "0",
            "0",
            "NULL",
            "NULL",
        ])]
    );
    let tail = ["NULL", "2021-07-09 06:23:39", "2021-07-09 06:25:39", "0", "0", "NULL", "NULL"];
    let gift = |id: &str, sender: &str, beans: &str, times: &str| {
        let mut values = vec![id, "9", sender, beans, times, "1"];
        values.extend_from_slice(&tail);
        row(&values)
    };
    assert_eq!(gifts, vec![gift("1", "2100216", "1000", "3"), gift("2", "2100300", "1300", "3")]);
    // An abnormal end has no winner: both results are 0, whatever the beans.
    let mut source = vec!["1", "9", "120000", "2099955", "1500", "12", "2100216", "2099934", "800", "7", "0"];
    source.extend_from_slice(&tail);
    let mut target = vec!["2", "9", "120000", "2099934", "800", "7", "2100300", "2099955", "1500", "12", "0"];
    target.extend_from_slice(&tail);
    assert_eq!(anchors, vec![row(&source), row(&target)]);
    assert_eq!(store.verify_settled(&settled).await?, vec![]);
    Ok(())
}

on_both!(started_then_gifts_then_settled);
async fn started_then_gifts_then_settled(store: ResultsStore) -> anyhow::Result<()> {
    let settled = finished(10, START);
    let view = view_of(&settled);
    store.record_started(&view).await?;
    store.record_started(&view).await?;
    let [pk, gifts, anchors] = dump_all(&store, 10).await?;
    assert_eq!(
        pk,
        vec![row(&[
            "10",
            "1",
            "1",
            "0",
            "NULL",
            "1",
            "2021-07-09 06:23:39.212",
            "NULL",
            "0",
            "2099955",
            "2099955",
            "0",
            "2",
            "2099934",
            "3099934",
            "0",
            "2",
            "0",
            "NULL",
            "2021-07-09 06:23:39",
            "2021-07-09 06:23:39",
            "0",
            "0",
            "NULL",
            "NULL",
        ])]
    );
    assert!(gifts.is_empty() && anchors.is_empty());

    // Running totals while the PK runs: a first write, then newer totals.
    let written = store.record_gifts(PkId(10), TimestampMs(START + 30_000), &[gifter(FAN_A, 40, 1, 1)], &[]).await?;
    assert!(written);
    let at = TimestampMs(START + 60_000);
    let written = store.record_gifts(PkId(10), at, &[gifter(FAN_A, 100, 1, 1)], &[gifter(FAN_B, 50, 1, 1)]).await?;
    assert!(written);
    let gifts = dump(&store, "t_pk_gift", 10).await?;
    let gift = |id: &str, sender: &str, beans: &str, created: &str| {
        row(&[id, "10", sender, beans, "1", "1", "NULL", created, "2021-07-09 06:24:39", "0", "0", "NULL", "NULL"])
    };
    assert_eq!(
        gifts,
        vec![
            gift("1", "2100216", "100", "2021-07-09 06:24:09"),
            // SQLite spends an id on an upsert that updates; MariaDB reserves ids per
            // multi-row statement instead (the two rows went in one statement).
            gift(if store.dialect() == Dialect::Sqlite { "3" } else { "2" }, "2100300", "50", "2021-07-09 06:24:39"),
        ]
    );

    // Settled: final totals and ranks; create_time keeps the first write.
    store.record_settled(&settled).await?;
    let gifts = dump(&store, "t_pk_gift", 10).await?;
    assert_eq!(gifts[1][3].as_deref(), Some("1300"));
    assert_eq!(gifts[1][7].as_deref(), Some("2021-07-09 06:24:39"));
    assert_eq!(gifts[1][8].as_deref(), Some("2021-07-09 06:28:40"));
    assert_eq!(store.verify_settled(&settled).await?, vec![]);

    // A late start or late running totals do not undo the result.
    let before = dump_all(&store, 10).await?;
    store.record_started(&view).await?;
    let written = store.record_gifts(PkId(10), at, &[gifter(FAN_A, 100, 1, 1)], &[]).await?;
    assert!(!written);
    assert_eq!(dump_all(&store, 10).await?, before);
    Ok(())
}

on_both!(verify_and_repair);
async fn verify_and_repair(store: ResultsStore) -> anyhow::Result<()> {
    let settled = finished(11, START);
    store.record_settled(&settled).await?;
    let clean = dump_all(&store, 11).await?;

    execute(&store, "UPDATE t_pk SET winner = 2099934, source_gifts = 1 WHERE id = 11").await?;
    execute(&store, "UPDATE t_pk_gift SET gift_beans = 999 WHERE pk_id = 11 AND sender = 2100216").await?;
    execute(&store, "DELETE FROM t_pk_anchor WHERE pk_id = 11 AND user_id = 2099934").await?;
    execute(&store, "INSERT INTO t_pk_gift (pk_id, sender, gift_beans) VALUES (11, 5, 5)").await?;
    // Another PK's rows are not this PK's business.
    store.record_settled(&finished(12, START)).await?;

    let mismatches = store.verify_settled(&settled).await?;
    let found = found(&mismatches);
    assert_eq!(
        found,
        vec![
            ("t_pk", "id=11", "source_gifts", Some("1500"), Some("1")),
            ("t_pk", "id=11", "winner", Some("2099955"), Some("2099934")),
            ("t_pk_gift", "pk_id=11 sender=2100216", "gift_beans", Some("1000"), Some("999")),
            ("t_pk_gift", "pk_id=11 sender=5", "*", None, Some("a row")),
            ("t_pk_anchor", "pk_id=11 user_id=2099934", "*", Some("a row"), None),
        ]
    );

    assert_eq!(store.repair(&settled).await?, 5);
    assert_eq!(store.verify_settled(&settled).await?, vec![]);
    assert_eq!(store.repair(&settled).await?, 0);
    let [pk, gifts, anchors] = dump_all(&store, 11).await?;
    assert_eq!(pk, clean[0]);
    assert_eq!(gifts, clean[1]);
    // The re-created anchor row has a new id; every other column is as before.
    assert_eq!(anchors.len(), 2);
    assert_eq!(anchors[0], clean[2][0]);
    assert_eq!(anchors[1][1..], clean[2][1][1..]);
    Ok(())
}

on_both!(history_pages_newest_first);
async fn history_pages_newest_first(store: ResultsStore) -> anyhow::Result<()> {
    // Three PKs of SOURCE, an hour apart, written out of order, and one of others.
    let hour = 3_600_000;
    let oldest = finished(21, START);
    let middle = draw_at(22, START + hour);
    let newest = finished(23, START + 2 * hour);
    let mut others = finished(24, START + 3 * hour);
    others.source.anchor = UserId(1);
    others.target.anchor = UserId(2);
    others.winner = UserId(1);
    store.record_settled_batch(&[newest.clone(), oldest.clone(), others]).await?;
    store.record_settled(&middle).await?;

    let ids = |records: &[pkd::sinks::PkRecord]| records.iter().map(|r| r.pk_id).collect::<Vec<_>>();
    let anchor = UserId(SOURCE);
    assert_eq!(ids(&store.history(anchor, 1, 2).await?), vec![23, 22]);
    assert_eq!(ids(&store.history(anchor, 2, 2).await?), vec![21]);
    assert_eq!(ids(&store.history(anchor, 3, 2).await?), Vec::<u64>::new());
    assert_eq!(ids(&store.history(anchor, 0, 10).await?), vec![23, 22, 21]);

    // The target's view of the newest PK.
    let records = store.history(UserId(TARGET), 1, 1).await?;
    let record = &records[0];
    assert_eq!(
        *record,
        pkd::sinks::PkRecord {
            pk_id: 23,
            status: 2,
            interfered: true,
            start_time: Some(START + 2 * hour),
            end_time: Some(START + 2 * hour + 301_507),
            duration_ms: 301_507,
            anchor: TARGET,
            room: 3_099_934,
            gifts: 800,
            audience: 7,
            most_present_audience: Some(FAN_B),
            competitor: SOURCE,
            competitor_room: SOURCE,
            competitor_gifts: 1500,
            competitor_audience: 12,
            result: 2,
            winner: SOURCE,
        }
    );
    let json = serde_json::to_value(record)?;
    assert_eq!(json["pkId"], 23);
    assert_eq!(json["mostPresentAudience"], FAN_B);
    assert_eq!(json["competitorGifts"], 1500);
    Ok(())
}

fn draw_at(pk: u64, start: i64) -> SettledPk {
    let mut settled = draw(pk);
    let shift = start - settled.start_time.0;
    settled.start_time = TimestampMs(start);
    settled.battle_end = settled.battle_end.plus(shift);
    settled.end_time = settled.end_time.plus(shift);
    settled
}

#[tokio::test]
async fn unsupported_urls_are_refused() {
    let error = ResultsStore::connect("postgres://localhost/x").await.err();
    assert!(matches!(error, Some(pkd::sinks::StoreError::UnsupportedUrl(_))));
}

/// Every column of a PK's ledger rows, as text, by gift id.
async fn dump_ledger(store: &ResultsStore, pk: u64) -> anyhow::Result<Rows> {
    let columns = ["pk_id", "gift_id", "sender", "receiver", "beans", "gift_time", "create_time"];
    let text = match store.dialect() {
        Dialect::MySql => "CHAR",
        Dialect::Sqlite => "TEXT",
    };
    let select = columns.iter().map(|c| format!("CAST(`{c}` AS {text})")).collect::<Vec<_>>().join(", ");
    let sql = format!("SELECT {select} FROM t_pk_gift_ledger WHERE pk_id = ? ORDER BY gift_id");
    let mut out = Vec::new();
    for r in sqlx::query(&sql).bind(pk as i64).fetch_all(store.pool()).await? {
        out.push((0..columns.len()).map(|i| r.try_get::<Option<String>, _>(i)).collect::<Result<Vec<_>, _>>()?);
    }
    Ok(out)
}

/// The ledger the store should hold for a settled PK, by gift id.
fn expected_ledger(settled: &SettledPk) -> Vec<LedgerGift> {
    let mut gifts: Vec<LedgerGift> = [&settled.source, &settled.target]
        .into_iter()
        .flat_map(|side| {
            side.gifts.iter().map(|gift| LedgerGift {
                gift_id: gift.id.0,
                sender: gift.sender.0,
                receiver: side.anchor.0,
                beans: gift.beans,
                at: gift.at.0,
            })
        })
        .collect();
    gifts.sort_by_key(|gift| gift.gift_id);
    gifts
}

on_both!(ledger_rows_read_back_as_written);
async fn ledger_rows_read_back_as_written(store: ResultsStore) -> anyhow::Result<()> {
    let settled = finished(31, START);
    store.record_settled(&settled).await?;
    let rows = dump_ledger(&store, 31).await?;
    assert_eq!(rows.len(), 6);
    assert_eq!(
        rows[0],
        row(&["31", "901", "2100216", "2099955", "300", "2021-07-09 06:23:41.212", "2021-07-09 06:28:40"])
    );
    assert_eq!(
        rows[2],
        row(&["31", "903", "2100300", "2099934", "300", "2021-07-09 06:23:42.212", "2021-07-09 06:28:40"])
    );
    let expected = expected_ledger(&settled);
    assert_eq!(store.ledger(PkId(31), 0, 100).await?, expected);
    // Pages follow gift ids.
    assert_eq!(store.ledger(PkId(31), 0, 2).await?, expected[..2]);
    assert_eq!(store.ledger(PkId(31), 902, 3).await?, expected[2..5]);
    assert_eq!(store.ledger(PkId(31), 906, 3).await?, vec![]);
    assert_eq!(
        store.ledger_totals(PkId(31)).await?,
        vec![
            LedgerTotal { receiver: TARGET, gifts: 2, beans: 800 },
            LedgerTotal { receiver: SOURCE, gifts: 4, beans: 1500 },
        ]
    );
    // Written again, alone or in a batch: the same rows.
    store.record_settled(&settled).await?;
    store.record_settled_batch(&[finished(32, START), settled.clone()]).await?;
    assert_eq!(dump_ledger(&store, 31).await?, rows);
    assert_eq!(store.verify_settled(&settled).await?, vec![]);
    // A PK without gifts has an empty ledger; an unknown PK too.
    store.record_settled(&draw(33)).await?;
    assert_eq!(store.ledger(PkId(33), 0, 100).await?, vec![]);
    assert_eq!(store.ledger_totals(PkId(99)).await?, vec![]);
    Ok(())
}

on_both!(a_damaged_ledger_is_found_and_rewritten);
async fn a_damaged_ledger_is_found_and_rewritten(store: ResultsStore) -> anyhow::Result<()> {
    let settled = finished(41, START);
    store.record_settled(&settled).await?;
    store.record_settled(&finished(42, START)).await?;
    let clean = dump_ledger(&store, 41).await?;
    let other = dump_ledger(&store, 42).await?;

    execute(&store, "DELETE FROM t_pk_gift_ledger WHERE pk_id = 41 AND gift_id = 903").await?;
    execute(&store, "UPDATE t_pk_gift_ledger SET beans = 1 WHERE pk_id = 41 AND gift_id = 901").await?;
    execute(
        &store,
        "INSERT INTO t_pk_gift_ledger (pk_id, gift_id, sender, receiver, beans, gift_time) \
         VALUES (41, 77, 5, 2099934, 300, '2021-07-09 06:23:42.000')",
    )
    .await?;
    let mismatches = store.verify_settled(&settled).await?;
    let found = found(&mismatches);
    // The target's count and sum hold (a gift swapped for another of the same beans is
    // only found by a rewrite); the source's sum does not.
    assert_eq!(
        found,
        vec![("t_pk_gift_ledger", "pk_id=41 receiver=2099955", "SUM(beans)", Some("1500"), Some("1201"))]
    );
    assert_eq!(store.repair(&settled).await?, 1);
    // The rewrite restores the counted gifts and drops the one the engine never counted.
    assert_eq!(dump_ledger(&store, 41).await?, clean);
    assert_eq!(dump_ledger(&store, 42).await?, other);
    assert_eq!(store.verify_settled(&settled).await?, vec![]);

    // A missing gift shows in the counts.
    execute(&store, "DELETE FROM t_pk_gift_ledger WHERE pk_id = 41 AND gift_id = 905").await?;
    let mismatches = store.verify_settled(&settled).await?;
    assert_eq!(mismatches.len(), 2, "{mismatches:?}");
    assert_eq!(store.repair(&settled).await?, 2);
    assert_eq!(dump_ledger(&store, 41).await?, clean);
    Ok(())
}

/// A node that joined a running cluster copies the results settled before it joined from
/// a member's own store (SQLite): every row of every settled PK, PKs still running left
/// out, the copy's own settled PKs kept as it wrote them, and the pages chained by id.
#[tokio::test]
async fn a_members_settled_results_copy_into_a_joining_nodes_store() {
    on_sqlite(|member| async move {
        let dir = tempfile::tempdir()?;
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("joining.db").display());
        let joining = ResultsStore::connect(&url).await?;
        for pk in [3, 5, 8, 13] {
            member.record_settled(&finished(pk, START + pk as i64 * 1_000)).await?;
        }
        member.record_settled(&abnormal(21)).await?;
        member.record_settled(&draw(22)).await?;
        // Running on the member: not settled, not exported.
        member.record_started(&view_of(&finished(30, START))).await?;
        // The joining node settled PK 8 itself already (from its own replica), and has PK
        // 13 running: its own settled row stands, the running one is replaced.
        let mut own = finished(8, START + 8_000);
        own.source.audience = 99;
        joining.record_settled(&own).await?;
        joining.record_started(&view_of(&finished(13, START + 13_000))).await?;

        let first = member.export_settled(0, 4).await?;
        let ids: Vec<u64> = first.pks.iter().map(|pk| pk.pk).collect();
        assert_eq!(ids, [3, 5, 8, 13]);
        assert_eq!(first.next, Some(13));
        let tables: Vec<&str> = first.pks[0].tables.iter().map(|(table, _)| table.as_str()).collect();
        assert_eq!(tables, ["t_pk", "t_pk_anchor", "t_pk_gift", "t_pk_gift_ledger"]);
        let rows: Vec<usize> = first.pks[0].tables.iter().map(|(_, rows)| rows.len()).collect();
        assert_eq!(rows, [1, 2, 2, 6]);
        assert_eq!(joining.import_settled(&first).await?, 3, "PK 8 is kept as the joining node wrote it");
        let second = member.export_settled(13, 4).await?;
        assert_eq!(second.pks.iter().map(|pk| pk.pk).collect::<Vec<_>>(), [21, 22]);
        assert_eq!(second.next, None, "the last page");
        assert_eq!(joining.import_settled(&second).await?, 2);
        assert_eq!(joining.import_settled(&second).await?, 0, "a page copied again: settled here now, kept");

        // Every row alike but for `t_pk_gift.id` and `t_pk_anchor.id`, each store's own
        // row numbers.
        let without_row_ids = |[pk, gifts, anchors]: [Rows; 3]| {
            let strip = |rows: Rows| {
                let mut rows: Rows = rows.into_iter().map(|row| row[1..].to_vec()).collect();
                rows.sort();
                rows
            };
            (pk, strip(gifts), strip(anchors))
        };
        for pk in [3, 5, 13, 21, 22] {
            assert_eq!(
                without_row_ids(dump_all(&joining, pk).await?),
                without_row_ids(dump_all(&member, pk).await?),
                "PK {pk}"
            );
            assert_eq!(dump_ledger(&joining, pk).await?, dump_ledger(&member, pk).await?, "PK {pk}");
        }
        assert_ne!(dump(&joining, "t_pk", 8).await?, dump(&member, "t_pk", 8).await?);
        assert!(dump(&joining, "t_pk", 30).await?.is_empty());
        let without_8 = |records: Vec<pkd::sinks::PkRecord>| {
            records.into_iter().filter(|record| record.pk_id != 8).collect::<Vec<_>>()
        };
        let copied = without_8(joining.history(UserId(SOURCE), 1, 50).await?);
        assert_eq!(copied.len(), 5);
        assert_eq!(copied, without_8(member.history(UserId(SOURCE), 1, 50).await?));

        // Rows that do not fit are refused (a PK's rows naming another PK), and nothing of
        // their PK is written.
        let mut bad = member.export_settled(0, 1).await?;
        bad.pks[0].tables[0].1[0][0] = Some("40".to_owned());
        bad.pks[0].pk = 40;
        assert!(joining.import_settled(&bad).await.is_err());
        assert!(dump(&joining, "t_pk", 40).await?.is_empty());

        // The marks.
        assert_eq!(joining.mark("complete").await?, None);
        joining.set_mark("complete", "copied from node 2", TimestampMs(START)).await?;
        assert_eq!(joining.mark("complete").await?.as_deref(), Some("copied from node 2"));
        joining.close().await;
        Ok(())
    })
    .await;
}
