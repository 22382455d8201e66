//! The results store: the source's `t_pk`, `t_pk_gift` and `t_pk_anchor` tables, and
//! pkd's gift ledger `t_pk_gift_ledger`, in MySQL (the app's database) or SQLite (the
//! embedded default).
//!
//! Every write is an idempotent upsert keyed by the unique keys of the migrations
//! (`t_pk.id` = the engine's PK id, `t_pk_gift (pk_id, sender)`,
//! `t_pk_anchor (pk_id, user_id)`, `t_pk_gift_ledger (pk_id, gift_id)`), and every
//! value written comes from the engine's data, never from a wall clock, so writing the
//! same PK twice leaves the same rows.
//!
//! Queries are plain runtime queries with binds over sqlx's `Any` driver; the only SQL
//! that differs between the two dialects is the upsert clause and the casts used to
//! read columns back. Time columns are written as UTC text
//! (`YYYY-MM-DD HH:MM:SS.sss`), which both databases store as given.

use pkd_raft::effect::{CountedGift, GifterTotal, PkStatus, SettledPk, SettledSide};
use pkd_raft::{PkId, PkView, RoomId, TimestampMs, UserId};
use serde::{Deserialize, Serialize};
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::{AnyConnection, AnyPool, Row};
use std::collections::{BTreeMap, BTreeSet};

/// The most rows in one multi-row upsert (far below both databases' bind limits).
const ROWS_PER_STATEMENT: usize = 500;

/// How long a query waits for a connection before failing (the database may be down:
/// the caller retries with its own backoff).
const ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

static MYSQL_MIGRATIONS: Migrator = sqlx::migrate!("migrations/mysql");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");

/// Why a results-store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL scheme in {0:?}: expected mysql://... or sqlite://...")]
    UnsupportedUrl(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// An id does not fit its column (user and room ids are `INT(11)` in the source's
    /// schema, PK ids `BIGINT`).
    #[error("{what} {value} does not fit its column")]
    OutOfRange { what: &'static str, value: u64 },
    /// A stored time column could not be read back.
    #[error("unreadable time {0:?} in the results tables")]
    BadTime(String),
    /// Rows another node exported that do not fit this store's tables.
    #[error("rows from a peer refused: {0}")]
    BadExport(String),
    /// An operation only a node's own store (SQLite) has.
    #[error("{0} needs the embedded store (SQLite)")]
    EmbeddedOnly(&'static str),
}

type Result<T> = std::result::Result<T, StoreError>;

/// Which SQL dialect the store speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    MySql,
    Sqlite,
}

/// One difference between the stored rows of a PK and the engine's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Mismatch {
    pub table: &'static str,
    /// The row's key, e.g. `pk_id=7 sender=42`.
    pub key: String,
    /// The column, or `*` for a missing or unexpected row.
    pub column: &'static str,
    /// The value the engine expects (`None`: NULL, or no row at all).
    pub expected: Option<String>,
    /// The value found (`None`: NULL, or no row at all).
    pub found: Option<String>,
}

/// One PK in an anchor's history (the source's "in-app PK records"), from the
/// anchor's point of view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PkRecord {
    pub pk_id: u64,
    /// `t_pk.status`: 1 running, 2 ended, 3 ended abnormally, 4 after-battle stage.
    pub status: i64,
    /// Made through an invitation.
    pub interfered: bool,
    /// Unix ms.
    pub start_time: Option<i64>,
    /// Unix ms.
    pub end_time: Option<i64>,
    pub duration_ms: i64,
    pub anchor: u64,
    pub room: u64,
    pub gifts: i64,
    pub audience: i64,
    /// The viewer who gave this anchor the most, if anyone gave.
    pub most_present_audience: Option<u64>,
    pub competitor: u64,
    pub competitor_room: u64,
    pub competitor_gifts: i64,
    pub competitor_audience: i64,
    /// 0 draw (or abnormal end), 1 win, 2 loss.
    pub result: i64,
    /// The winner's id, 0 for a draw or an abnormal end.
    pub winner: u64,
}

/// One gift of a PK's ledger, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerGift {
    pub gift_id: u64,
    pub sender: u64,
    /// The anchor who received it.
    pub receiver: u64,
    pub beans: i64,
    /// When the engine counted it, Unix ms.
    pub at: i64,
}

/// One receiver's part of a PK's ledger: how many gifts, how many beans.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerTotal {
    pub receiver: u64,
    pub gifts: i64,
    pub beans: i64,
}

/// A column value, as bound on write and as compared (in text form) on verify.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Value {
    Int(Option<i64>),
    Text(Option<String>),
}

impl Value {
    fn int(value: i64) -> Value {
        Value::Int(Some(value))
    }

    fn text(value: String) -> Value {
        Value::Text(Some(value))
    }

    fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(value) => *value,
            Value::Text(_) => None,
        }
    }

    /// How MySQL's `CAST(.. AS CHAR)` and SQLite's `CAST(.. AS TEXT)` print it.
    fn as_text(&self) -> Option<String> {
        match self {
            Value::Int(value) => value.map(|v| v.to_string()),
            Value::Text(value) => value.clone(),
        }
    }
}

/// A table's upsert shape: its columns in bind order, its unique key, and the
/// columns written only when the row is created (kept on later writes, not verified).
struct Table {
    name: &'static str,
    columns: &'static [&'static str],
    key: &'static [&'static str],
    insert_only: &'static [&'static str],
}

const T_PK: Table = Table {
    name: "t_pk",
    columns: &[
        "id",
        "type",
        "status",
        "sequel_type",
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
        "create_time",
        "update_time",
    ],
    key: &["id"],
    insert_only: &["create_time"],
};

const T_PK_GIFT: Table = Table {
    name: "t_pk_gift",
    columns: &["pk_id", "sender", "gift_beans", "gift_times", "rank", "create_time", "update_time"],
    key: &["pk_id", "sender"],
    insert_only: &["create_time"],
};

const T_PK_ANCHOR: Table = Table {
    name: "t_pk_anchor",
    columns: &[
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
        "create_time",
        "update_time",
    ],
    key: &["pk_id", "user_id"],
    insert_only: &["create_time"],
};

const T_PK_GIFT_LEDGER: Table = Table {
    name: "t_pk_gift_ledger",
    columns: &["pk_id", "gift_id", "sender", "receiver", "beans", "gift_time", "create_time"],
    key: &["pk_id", "gift_id"],
    insert_only: &["create_time"],
};

/// The results tables, in the order a settled PK's rows are copied: each with the column
/// naming its PK.
const SETTLED_TABLES: [(&Table, &str); 4] =
    [(&T_PK, "id"), (&T_PK_ANCHOR, "pk_id"), (&T_PK_GIFT, "pk_id"), (&T_PK_GIFT_LEDGER, "pk_id")];

/// How many rows an export page holds at most (a page holds at least one PK, whatever
/// its ledger's length).
const EXPORT_ROWS: usize = 20_000;

/// A page of settled PKs' rows, as one node's store exports them for another's (a node
/// that joined a running cluster copies the results settled before it joined).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettledExport {
    pub pks: Vec<ExportedPk>,
    /// The last PK id of the page, to ask the next page after; `None`: the last page.
    pub next: Option<u64>,
}

/// One settled PK's rows in every results table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedPk {
    pub pk: u64,
    /// (table, rows): each row's columns in the table's column order, as the database
    /// prints them (`NULL` as `None`).
    pub tables: Vec<(String, Vec<Vec<Option<String>>>)>,
}

/// When an upsert may update an existing row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Guard {
    /// Always: the write is the PK's final result.
    None,
    /// Only while the PK's `t_pk` row is still at status 1 (or absent).
    WhileRunning,
}

/// The results tables of the source design, in MySQL or SQLite.
#[derive(Clone, Debug)]
pub struct ResultsStore {
    pool: AnyPool,
    dialect: Dialect,
}

impl ResultsStore {
    /// Connects to `mysql://user:password@host:port/database` or
    /// `sqlite://path?mode=rwc` and brings the schema up to date (the migrations are
    /// embedded in the binary).
    ///
    /// SQLite gets a single connection: its writers are serialised anyway, and an
    /// in-memory URL then keeps one database for the store's lifetime.
    pub async fn connect(url: &str) -> Result<ResultsStore> {
        sqlx::any::install_default_drivers();
        let (dialect, max_connections) = if url.starts_with("mysql://") {
            (Dialect::MySql, 5)
        } else if url.starts_with("sqlite:") {
            (Dialect::Sqlite, 1)
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await?;
        match dialect {
            Dialect::MySql => MYSQL_MIGRATIONS.run(&pool).await?,
            Dialect::Sqlite => SQLITE_MIGRATIONS.run(&pool).await?,
        }
        Ok(ResultsStore { pool, dialect })
    }

    /// The connection pool, for tools and tests that need raw SQL.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Closes the pool's connections.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Writes the `t_pk` row of a PK that has just started (status 1, no end time),
    /// from its first state. An existing row is only updated while it is still at
    /// status 1: a late or replayed start never undoes a settled result (the check
    /// is part of the upsert statement, so it holds against concurrent writers).
    pub async fn record_started(&self, view: &PkView) -> Result<()> {
        let row = started_row(view)?;
        let mut conn = self.pool.acquire().await?;
        self.upsert(&mut conn, &T_PK, &row, Guard::WhileRunning).await
    }

    /// Writes the running totals of a PK's gifters (`t_pk_gift`), as of `at`.
    ///
    /// `t_pk_gift` has one row per `(pk_id, sender)`, as in the source, but the engine
    /// counts a sender per side: a sender who gave to both anchors gets one row with
    /// the sum of beans and times and the better (lower) of the two ranks.
    ///
    /// Returns `false`, writing nothing, if the PK has already settled: its rows then
    /// hold the final totals and ranks (existing rows are also guarded in the upsert
    /// statement itself, against a settlement committed in between).
    pub async fn record_gifts(
        &self,
        pk: PkId,
        at: TimestampMs,
        source: &[GifterTotal],
        target: &[GifterTotal],
    ) -> Result<bool> {
        let rows = gift_rows(pk, source, target, at, at)?;
        let mut tx = self.pool.begin().await?;
        let sql = format!("SELECT {} FROM t_pk WHERE id = ?", self.cast_int("status"));
        let status = sqlx::query(&sql)
            .bind(pk_column(pk)?)
            .fetch_optional(&mut *tx)
            .await?
            .map(|row| row.try_get::<Option<i64>, _>(0))
            .transpose()?
            .flatten();
        let running = matches!(status, None | Some(1));
        if running {
            self.upsert_many(&mut tx, &T_PK_GIFT, &rows, Guard::WhileRunning).await?;
        }
        tx.commit().await?;
        Ok(running)
    }

    /// Writes a settled PK in one transaction: the final `t_pk` row, one `t_pk_gift`
    /// row per sender with the final ranks, the two `t_pk_anchor` rows, and one
    /// `t_pk_gift_ledger` row per counted gift. Gift, anchor and ledger rows of that PK
    /// that the result does not contain are deleted, so the tables then hold exactly the
    /// engine's result.
    pub async fn record_settled(&self, settled: &SettledPk) -> Result<()> {
        self.record_settled_batch(std::slice::from_ref(settled)).await
    }

    /// [`ResultsStore::record_settled`] for several PKs, in one transaction.
    pub async fn record_settled_batch(&self, settled: &[SettledPk]) -> Result<()> {
        let rows = settled.iter().map(SettledRows::new).collect::<Result<Vec<_>>>()?;
        let mut tx = self.pool.begin().await?;
        for pk_rows in &rows {
            self.write_settled(&mut tx, pk_rows).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Reads a settled PK's rows back and lists every difference from the engine's
    /// result: the source's end-of-PK consistency check. `create_time` is not
    /// compared (it records when a row was first written). The ledger, which may hold
    /// many rows, is compared by its count and beans per receiver.
    pub async fn verify_settled(&self, settled: &SettledPk) -> Result<Vec<Mismatch>> {
        let expected = SettledRows::new(settled)?;
        let mut conn = self.pool.acquire().await?;
        let mut mismatches = Vec::new();
        let pk = expected.pk;
        self.compare_table(&mut conn, &T_PK, "id", pk, std::slice::from_ref(&expected.pk_row), &mut mismatches).await?;
        self.compare_table(&mut conn, &T_PK_GIFT, "pk_id", pk, &expected.gift_rows, &mut mismatches).await?;
        self.compare_table(&mut conn, &T_PK_ANCHOR, "pk_id", pk, &expected.anchor_rows, &mut mismatches).await?;
        let found = self.ledger_totals_on(&mut conn, pk).await?;
        compare_ledger(pk, &expected.ledger_totals(), &found, &mut mismatches);
        Ok(mismatches)
    }

    /// One page of a PK's gift ledger: the gifts whose id is above `after`, by id, at
    /// most `limit` of them. Only settled PKs have a ledger here.
    pub async fn ledger(&self, pk: PkId, after: u64, limit: u32) -> Result<Vec<LedgerGift>> {
        let pk = pk_column(pk)?;
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let int = |column: &str| self.cast_int(column);
        let sql = format!(
            "SELECT {gift}, {sender}, {receiver}, {beans}, {time} FROM t_pk_gift_ledger \
             WHERE pk_id = ? AND gift_id > ? ORDER BY gift_id LIMIT ?",
            gift = int("gift_id"),
            sender = int("sender"),
            receiver = int("receiver"),
            beans = int("beans"),
            time = self.cast_text("gift_time"),
        );
        let rows = sqlx::query(&sql).bind(pk).bind(after).bind(i64::from(limit)).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|row| {
                let id = |i: usize| -> Result<u64> { Ok(u64::try_from(row.try_get::<i64, _>(i)?).unwrap_or(0)) };
                let text: String = row.try_get(4)?;
                let at = parse_datetime(&text).ok_or(StoreError::BadTime(text))?;
                Ok(LedgerGift { gift_id: id(0)?, sender: id(1)?, receiver: id(2)?, beans: row.try_get(3)?, at })
            })
            .collect()
    }

    /// A PK's ledger summed per receiver, in receiver order.
    pub async fn ledger_totals(&self, pk: PkId) -> Result<Vec<LedgerTotal>> {
        let pk = pk_column(pk)?;
        let mut conn = self.pool.acquire().await?;
        let totals = self.ledger_totals_on(&mut conn, pk).await?;
        Ok(totals
            .into_iter()
            .map(|(receiver, (gifts, beans))| LedgerTotal {
                receiver: u64::try_from(receiver).unwrap_or(0),
                gifts,
                beans,
            })
            .collect())
    }

    async fn ledger_totals_on(&self, conn: &mut AnyConnection, pk: i64) -> Result<BTreeMap<i64, (i64, i64)>> {
        let sql = format!(
            "SELECT {}, {}, {} FROM t_pk_gift_ledger WHERE pk_id = ? GROUP BY receiver",
            self.cast_int("receiver"),
            self.cast_int("COUNT(*)"),
            self.cast_int("SUM(beans)"),
        );
        let rows = sqlx::query(&sql).bind(pk).fetch_all(&mut *conn).await?;
        rows.iter()
            .map(|row| Ok((row.try_get::<i64, _>(0)?, (row.try_get::<i64, _>(1)?, row.try_get::<i64, _>(2)?))))
            .collect()
    }

    /// Verifies a settled PK and, if anything differs, rewrites it. Returns how many
    /// differences were found (0: nothing was written).
    pub async fn repair(&self, settled: &SettledPk) -> Result<usize> {
        let mismatches = self.verify_settled(settled).await?;
        if !mismatches.is_empty() {
            self.record_settled(settled).await?;
        }
        Ok(mismatches.len())
    }

    /// An anchor's PKs, newest first: page `page` (counting from 1; 0 is read as 1)
    /// of `page_size` records. Only settled PKs have `t_pk_anchor` rows, so only they
    /// appear.
    pub async fn history(&self, anchor: UserId, page: u32, page_size: u32) -> Result<Vec<PkRecord>> {
        let anchor_id = int_id("user id", anchor.0)?;
        let offset = i64::from(page.max(1) - 1) * i64::from(page_size);
        let int = |column: &str| self.cast_int(column);
        let sql = format!(
            "SELECT {pk}, {status}, {interfered}, {start}, {end}, {duration}, {user}, \
             {room}, {gifts}, {audience}, {most}, {competitor}, {competitor_room}, \
             {competitor_gifts}, {competitor_audience}, {result}, {winner} \
             FROM t_pk_anchor a JOIN t_pk p ON p.id = a.pk_id \
             WHERE a.user_id = ? AND a.deleted = 0 AND p.deleted = 0 \
             ORDER BY a.create_time DESC, a.pk_id DESC LIMIT ? OFFSET ?",
            pk = int("a.pk_id"),
            status = int("p.status"),
            interfered = int("p.interfered"),
            start = self.cast_text("p.start_time"),
            end = self.cast_text("p.end_time"),
            duration = int("a.duration"),
            user = int("a.user_id"),
            room = int("CASE WHEN p.source_user = a.user_id THEN p.source_toom ELSE p.target_room END"),
            gifts = int("a.gifts"),
            audience = int("a.audience"),
            most = int("a.most_present_audience"),
            competitor = int("a.competitor"),
            competitor_room = int("CASE WHEN p.source_user = a.user_id THEN p.target_room ELSE p.source_toom END"),
            competitor_gifts = int("a.competitor_gifts"),
            competitor_audience = int("a.competitor_audience"),
            result = int("a.result"),
            winner = int("p.winner"),
        );
        let rows =
            sqlx::query(&sql).bind(anchor_id).bind(i64::from(page_size)).bind(offset).fetch_all(&self.pool).await?;
        rows.iter().map(pk_record).collect()
    }

    /// The rows of settled PKs (status 2 or 3) with an id above `after`, by id, up to
    /// `limit` PKs (fewer if their ledgers are long).
    pub async fn export_settled(&self, after: u64, limit: u32) -> Result<SettledExport> {
        let after = i64::try_from(after).unwrap_or(i64::MAX);
        let sql = format!(
            "SELECT {} FROM t_pk WHERE id > ? AND status IN (2, 3) AND deleted = 0 ORDER BY id LIMIT ?",
            self.cast_int("id")
        );
        let mut conn = self.pool.acquire().await?;
        let ids: Vec<i64> = sqlx::query(&sql)
            .bind(after)
            .bind(i64::from(limit.max(1)))
            .fetch_all(&mut *conn)
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<std::result::Result<_, _>>()?;
        let mut page = SettledExport::default();
        let mut rows_in_page = 0;
        for &id in &ids {
            let mut tables = Vec::with_capacity(SETTLED_TABLES.len());
            for (table, pk_column) in SETTLED_TABLES {
                let select =
                    table.columns.iter().map(|c| self.cast_text(&format!("`{c}`"))).collect::<Vec<_>>().join(", ");
                let sql = format!("SELECT {select} FROM {} WHERE `{pk_column}` = ?", table.name);
                let found = sqlx::query(&sql).bind(id).fetch_all(&mut *conn).await?;
                let rows = found
                    .iter()
                    .map(|row| (0..table.columns.len()).map(|i| row.try_get::<Option<String>, _>(i)).collect())
                    .collect::<std::result::Result<Vec<Vec<Option<String>>>, _>>()?;
                rows_in_page += rows.len();
                tables.push((table.name.to_owned(), rows));
            }
            page.pks.push(ExportedPk { pk: u64::try_from(id).unwrap_or(0), tables });
            if rows_in_page >= EXPORT_ROWS {
                break;
            }
        }
        let full = page.pks.len() < ids.len() || ids.len() >= limit.max(1) as usize;
        page.next = page.pks.last().filter(|_| full).map(|last| last.pk);
        Ok(page)
    }

    /// Writes the PKs of a page another node's store exported, each in one transaction,
    /// except those this store already holds settled (its own writes, from its own
    /// replica, stand). Returns how many PKs were written.
    pub async fn import_settled(&self, page: &SettledExport) -> Result<usize> {
        let mut written = 0;
        for exported in &page.pks {
            let pk = pk_column(PkId(exported.pk))?;
            let checked = checked_export(exported, pk)?;
            let mut tx = self.pool.begin().await?;
            let sql = format!("SELECT {} FROM t_pk WHERE id = ?", self.cast_int("status"));
            let status: Option<i64> =
                sqlx::query(&sql).bind(pk).fetch_optional(&mut *tx).await?.map(|row| row.try_get(0)).transpose()?;
            if status.is_some_and(|status| status != 1) {
                continue;
            }
            for (table, rows) in checked {
                self.upsert_many(&mut tx, table, &rows, Guard::None).await?;
            }
            tx.commit().await?;
            written += 1;
        }
        Ok(written)
    }

    /// A mark of this node's own store (`pkd_store_marks`), if set.
    pub async fn mark(&self, name: &str) -> Result<Option<String>> {
        if self.dialect != Dialect::Sqlite {
            return Err(StoreError::EmbeddedOnly("a store mark"));
        }
        let row = sqlx::query("SELECT `value` FROM pkd_store_marks WHERE `name` = ?")
            .bind(name.to_owned())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|row| row.try_get(0)).transpose()?)
    }

    /// Sets a mark of this node's own store, at `at`.
    pub async fn set_mark(&self, name: &str, value: &str, at: TimestampMs) -> Result<()> {
        if self.dialect != Dialect::Sqlite {
            return Err(StoreError::EmbeddedOnly("a store mark"));
        }
        sqlx::query(
            "INSERT INTO pkd_store_marks (`name`, `value`, `update_time`) VALUES (?, ?, ?) \
             ON CONFLICT (`name`) DO UPDATE SET `value` = excluded.`value`, `update_time` = excluded.`update_time`",
        )
        .bind(name.to_owned())
        .bind(value.to_owned())
        .bind(datetime_seconds(at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn write_settled(&self, conn: &mut AnyConnection, rows: &SettledRows) -> Result<()> {
        self.upsert(conn, &T_PK, &rows.pk_row, Guard::None).await?;
        self.upsert_many(conn, &T_PK_GIFT, &rows.gift_rows, Guard::None).await?;
        self.upsert_many(conn, &T_PK_ANCHOR, &rows.anchor_rows, Guard::None).await?;
        self.upsert_many(conn, &T_PK_GIFT_LEDGER, &rows.ledger_rows, Guard::None).await?;
        // Rows the result does not have (a sender counted by an earlier, wrong write;
        // a hand-made row): delete them so that the tables match the engine exactly.
        let pk = rows.pk;
        for (table, column, wanted) in
            [("t_pk_gift", "sender", &rows.senders), ("t_pk_anchor", "user_id", &rows.anchors)]
        {
            let sql = format!("SELECT {} FROM {table} WHERE pk_id = ?", self.cast_int(column));
            let found = sqlx::query(&sql).bind(pk).fetch_all(&mut *conn).await?;
            for row in found {
                let id: i64 = row.try_get(0)?;
                if !wanted.contains(&id) {
                    let sql = format!("DELETE FROM {table} WHERE pk_id = ? AND {column} = ?");
                    sqlx::query(&sql).bind(pk).bind(id).execute(&mut *conn).await?;
                }
            }
        }
        // Every gift of the ledger is in the table now: more rows than gifts means rows
        // of gifts the engine did not count, looked for only then (a ledger is long).
        let sql = format!("SELECT {} FROM t_pk_gift_ledger WHERE pk_id = ?", self.cast_int("COUNT(*)"));
        let stored: i64 = sqlx::query(&sql).bind(pk).fetch_one(&mut *conn).await?.try_get(0)?;
        if usize::try_from(stored).unwrap_or(usize::MAX) > rows.ledger_rows.len() {
            let wanted: BTreeSet<i64> = rows.ledger_rows.iter().filter_map(|row| row[1].as_int()).collect();
            let sql = format!("SELECT {} FROM t_pk_gift_ledger WHERE pk_id = ?", self.cast_int("gift_id"));
            for row in sqlx::query(&sql).bind(pk).fetch_all(&mut *conn).await? {
                let id: i64 = row.try_get(0)?;
                if !wanted.contains(&id) {
                    let sql = "DELETE FROM t_pk_gift_ledger WHERE pk_id = ? AND gift_id = ?";
                    sqlx::query(sql).bind(pk).bind(id).execute(&mut *conn).await?;
                }
            }
        }
        Ok(())
    }

    async fn upsert(&self, conn: &mut AnyConnection, table: &Table, row: &[Value], guard: Guard) -> Result<()> {
        self.upsert_many(conn, table, std::slice::from_ref(&row.to_vec()), guard).await
    }

    /// Upserts `rows` with multi-row statements of at most [`ROWS_PER_STATEMENT`] rows:
    /// one round trip per chunk instead of one per row.
    async fn upsert_many(
        &self,
        conn: &mut AnyConnection,
        table: &Table,
        rows: &[Vec<Value>],
        guard: Guard,
    ) -> Result<()> {
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            let sql = self.upsert_sql(table, guard, chunk.len());
            let mut query = sqlx::query(&sql);
            for value in chunk.iter().flatten() {
                query = match value {
                    Value::Int(value) => query.bind(*value),
                    Value::Text(value) => query.bind(value.clone()),
                };
            }
            query.execute(&mut *conn).await?;
        }
        Ok(())
    }

    /// `INSERT ... ON DUPLICATE KEY UPDATE` (MySQL) or `INSERT ... ON CONFLICT DO
    /// UPDATE` (SQLite) of every column, the key and insert-only columns excepted.
    fn upsert_sql(&self, table: &Table, guard: Guard, rows: usize) -> String {
        let columns = table.columns.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>();
        let placeholders = vec![format!("({})", vec!["?"; columns.len()].join(", ")); rows.max(1)].join(", ");
        let updated = table.columns.iter().filter(|c| !table.key.contains(c) && !table.insert_only.contains(c));
        // The status of the PK the row belongs to, as the existing row sees it.
        let pk_status = match (table.name, self.dialect) {
            ("t_pk", Dialect::MySql) => "`status`".to_owned(),
            ("t_pk", Dialect::Sqlite) => "t_pk.`status`".to_owned(),
            (name, _) => {
                format!("COALESCE((SELECT p.`status` FROM t_pk p WHERE p.id = {name}.`pk_id`), 1)")
            }
        };
        let tail = match self.dialect {
            Dialect::MySql => {
                let assignments = updated.map(|c| match guard {
                    Guard::None => format!("`{c}` = VALUES(`{c}`)"),
                    // `status` itself is never assigned under this guard (a start
                    // writes 1, running totals have no status), so every IF sees the
                    // existing row's status.
                    Guard::WhileRunning => {
                        format!("`{c}` = IF({pk_status} = 1, VALUES(`{c}`), `{c}`)")
                    }
                });
                format!("ON DUPLICATE KEY UPDATE {}", assignments.collect::<Vec<_>>().join(", "))
            }
            Dialect::Sqlite => {
                let key = table.key.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>();
                let assignments = updated.map(|c| format!("`{c}` = excluded.`{c}`"));
                let condition = match guard {
                    Guard::None => String::new(),
                    Guard::WhileRunning => format!(" WHERE {pk_status} = 1"),
                };
                format!(
                    "ON CONFLICT ({}) DO UPDATE SET {}{condition}",
                    key.join(", "),
                    assignments.collect::<Vec<_>>().join(", ")
                )
            }
        };
        format!("INSERT INTO {} ({}) VALUES {placeholders} {tail}", table.name, columns.join(", "))
    }

    /// Compares the rows of `table` whose `pk_column` is `pk` with `expected`,
    /// matching rows by the table's key.
    async fn compare_table(
        &self,
        conn: &mut AnyConnection,
        table: &Table,
        pk_column: &str,
        pk: i64,
        expected: &[Vec<Value>],
        mismatches: &mut Vec<Mismatch>,
    ) -> Result<()> {
        let compared: Vec<(usize, &'static str)> =
            table.columns.iter().copied().enumerate().filter(|(_, c)| !table.insert_only.contains(c)).collect();
        let select = compared.iter().map(|(_, c)| self.cast_text(&format!("`{c}`"))).collect::<Vec<_>>().join(", ");
        let sql = format!("SELECT {select} FROM {} WHERE `{pk_column}` = ?", table.name);
        let found = sqlx::query(&sql).bind(pk).fetch_all(&mut *conn).await?;

        let key_of = |values: &[Option<String>]| -> String {
            compared
                .iter()
                .zip(values)
                .filter(|((_, c), _)| table.key.contains(c))
                .map(|((_, c), v)| format!("{c}={}", v.as_deref().unwrap_or("NULL")))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut found_rows = BTreeMap::new();
        for row in &found {
            let values = (0..compared.len())
                .map(|i| row.try_get::<Option<String>, _>(i))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            found_rows.insert(key_of(&values), values);
        }
        for row in expected {
            let values: Vec<Option<String>> = compared.iter().map(|(i, _)| row[*i].as_text()).collect();
            let key = key_of(&values);
            match found_rows.remove(&key) {
                None => mismatches.push(Mismatch {
                    table: table.name,
                    key,
                    column: "*",
                    expected: Some("a row".to_owned()),
                    found: None,
                }),
                Some(stored) => {
                    for (((_, column), want), have) in compared.iter().zip(values).zip(stored) {
                        if want != have {
                            mismatches.push(Mismatch {
                                table: table.name,
                                key: key.clone(),
                                column,
                                expected: want,
                                found: have,
                            });
                        }
                    }
                }
            }
        }
        for key in found_rows.into_keys() {
            mismatches.push(Mismatch {
                table: table.name,
                key,
                column: "*",
                expected: None,
                found: Some("a row".to_owned()),
            });
        }
        Ok(())
    }

    fn cast_int(&self, expression: &str) -> String {
        match self.dialect {
            Dialect::MySql => format!("CAST({expression} AS SIGNED)"),
            Dialect::Sqlite => format!("CAST({expression} AS INTEGER)"),
        }
    }

    fn cast_text(&self, expression: &str) -> String {
        match self.dialect {
            Dialect::MySql => format!("CAST({expression} AS CHAR)"),
            Dialect::Sqlite => format!("CAST({expression} AS TEXT)"),
        }
    }
}

/// The rows a settled PK must have.
struct SettledRows {
    pk: i64,
    pk_row: Vec<Value>,
    gift_rows: Vec<Vec<Value>>,
    anchor_rows: Vec<Vec<Value>>,
    ledger_rows: Vec<Vec<Value>>,
    senders: BTreeSet<i64>,
    anchors: BTreeSet<i64>,
}

impl SettledRows {
    fn new(settled: &SettledPk) -> Result<SettledRows> {
        let pk = pk_column(settled.pk)?;
        let created = datetime_seconds(settled.start_time);
        let updated = datetime_seconds(settled.end_time);
        let duration = clamp_int(settled.duration_ms);
        let (source, target) = (&settled.source, &settled.target);
        let pk_row = vec![
            Value::int(pk),
            Value::int(1),
            Value::int(i64::from(settled.status.table_code())),
            Value::int(0),
            Value::int(i64::from(settled.interfered)),
            Value::text(datetime_millis(settled.start_time)),
            Value::text(datetime_millis(settled.end_time)),
            Value::int(duration),
            Value::int(int_id("user id", source.anchor.0)?),
            Value::int(room_id(source.room)?),
            Value::int(source.beans),
            Value::int(i64::from(source.audience)),
            Value::int(int_id("user id", target.anchor.0)?),
            Value::int(room_id(target.room)?),
            Value::int(target.beans),
            Value::int(i64::from(target.audience)),
            Value::int(int_id("user id", settled.winner.0)?),
            Value::text(created.clone()),
            Value::text(updated.clone()),
        ];
        let gift_rows = gift_rows(settled.pk, &source.gifters, &target.gifters, settled.start_time, settled.end_time)?;
        let senders = gift_rows
            .iter()
            .filter_map(|row| match row[1] {
                Value::Int(Some(sender)) => Some(sender),
                _ => None,
            })
            .collect();
        let normal = settled.status != PkStatus::Error;
        let anchor_row = |side: &SettledSide, other: &SettledSide| -> Result<Vec<Value>> {
            let result = if !normal || settled.winner == UserId(0) {
                0
            } else if settled.winner == side.anchor {
                1
            } else {
                2
            };
            let most_present =
                side.gifters.iter().find(|g| g.rank == 1).map(|g| int_id("user id", g.sender.0)).transpose()?;
            Ok(vec![
                Value::int(pk),
                Value::int(duration),
                Value::int(int_id("user id", side.anchor.0)?),
                Value::int(side.beans),
                Value::int(i64::from(side.audience)),
                Value::Int(most_present),
                Value::int(int_id("user id", other.anchor.0)?),
                Value::int(other.beans),
                Value::int(i64::from(other.audience)),
                Value::int(result),
                Value::text(created.clone()),
                Value::text(updated.clone()),
            ])
        };
        let anchor_rows = vec![anchor_row(source, target)?, anchor_row(target, source)?];
        let anchors =
            [source.anchor.0, target.anchor.0].into_iter().map(|id| int_id("user id", id)).collect::<Result<_>>()?;
        let mut ledger_rows = Vec::with_capacity(source.gifts.len() + target.gifts.len());
        for side in [source, target] {
            let receiver = big_id("user id", side.anchor.0)?;
            for gift in &side.gifts {
                ledger_rows.push(ledger_row(pk, receiver, gift, &updated)?);
            }
        }
        Ok(SettledRows { pk, pk_row, gift_rows, anchor_rows, ledger_rows, senders, anchors })
    }

    /// The ledger's gifts and beans per receiver (receivers without gifts left out).
    fn ledger_totals(&self) -> BTreeMap<i64, (i64, i64)> {
        let mut totals: BTreeMap<i64, (i64, i64)> = BTreeMap::new();
        for row in &self.ledger_rows {
            let (Some(receiver), Some(beans)) = (row[3].as_int(), row[4].as_int()) else { continue };
            let total = totals.entry(receiver).or_default();
            total.0 += 1;
            total.1 = total.1.saturating_add(beans);
        }
        totals
    }
}

/// A `t_pk_gift_ledger` row.
fn ledger_row(pk: i64, receiver: i64, gift: &CountedGift, settled_at: &str) -> Result<Vec<Value>> {
    Ok(vec![
        Value::int(pk),
        Value::int(big_id("gift id", gift.id.0)?),
        Value::int(big_id("user id", gift.sender.0)?),
        Value::int(receiver),
        Value::int(gift.beans),
        Value::text(datetime_millis(gift.at)),
        Value::text(settled_at.to_owned()),
    ])
}

/// Differences between a ledger's expected and stored totals per receiver.
fn compare_ledger(
    pk: i64,
    expected: &BTreeMap<i64, (i64, i64)>,
    found: &BTreeMap<i64, (i64, i64)>,
    mismatches: &mut Vec<Mismatch>,
) {
    let receivers: BTreeSet<i64> = expected.keys().chain(found.keys()).copied().collect();
    for receiver in receivers {
        let (want, have) = (expected.get(&receiver), found.get(&receiver));
        for (column, pick) in [("COUNT(*)", 0), ("SUM(beans)", 1)] {
            let value = |total: Option<&(i64, i64)>| total.map(|t| if pick == 0 { t.0 } else { t.1 }.to_string());
            if value(want) != value(have) {
                mismatches.push(Mismatch {
                    table: T_PK_GIFT_LEDGER.name,
                    key: format!("pk_id={pk} receiver={receiver}"),
                    column,
                    expected: value(want),
                    found: value(have),
                });
            }
        }
    }
}

/// The `t_pk` row of a PK that has just started.
fn started_row(view: &PkView) -> Result<Vec<Value>> {
    let created = datetime_seconds(view.start_time);
    Ok(vec![
        Value::int(pk_column(view.pk)?),
        Value::int(1),
        Value::int(1),
        Value::int(0),
        Value::int(i64::from(view.interfered)),
        Value::text(datetime_millis(view.start_time)),
        Value::Text(None),
        Value::int(0),
        Value::int(int_id("user id", view.source.anchor.0)?),
        Value::int(room_id(view.source.room)?),
        Value::int(view.source.beans),
        Value::int(i64::from(view.source.audience)),
        Value::int(int_id("user id", view.target.anchor.0)?),
        Value::int(room_id(view.target.room)?),
        Value::int(view.target.beans),
        Value::int(i64::from(view.target.audience)),
        Value::int(0),
        Value::text(created.clone()),
        Value::text(created),
    ])
}

/// `t_pk_gift` rows: one per sender, both sides merged (beans and times summed, the
/// better rank kept), in sender order.
fn gift_rows(
    pk: PkId,
    source: &[GifterTotal],
    target: &[GifterTotal],
    created: TimestampMs,
    updated: TimestampMs,
) -> Result<Vec<Vec<Value>>> {
    let pk = pk_column(pk)?;
    let mut merged: BTreeMap<UserId, (i64, u64, u32)> = BTreeMap::new();
    for gifter in source.iter().chain(target) {
        let entry = merged.entry(gifter.sender).or_insert((0, 0, u32::MAX));
        entry.0 = entry.0.saturating_add(gifter.beans);
        entry.1 += u64::from(gifter.times);
        entry.2 = entry.2.min(gifter.rank);
    }
    let (created, updated) = (datetime_seconds(created), datetime_seconds(updated));
    merged
        .into_iter()
        .map(|(sender, (beans, times, rank))| {
            Ok(vec![
                Value::int(pk),
                Value::int(int_id("user id", sender.0)?),
                Value::int(beans),
                Value::int(clamp_int(i64::try_from(times).unwrap_or(i64::MAX))),
                Value::int(clamp_int(i64::from(rank))),
                Value::text(created.clone()),
                Value::text(updated.clone()),
            ])
        })
        .collect()
}

fn pk_record(row: &sqlx::any::AnyRow) -> Result<PkRecord> {
    let int = |i: usize| -> Result<i64> { Ok(row.try_get::<Option<i64>, _>(i)?.unwrap_or(0)) };
    let id = |i: usize| -> Result<u64> { Ok(u64::try_from(int(i)?).unwrap_or(0)) };
    let time = |i: usize| -> Result<Option<i64>> {
        row.try_get::<Option<String>, _>(i)?
            .map(|text| parse_datetime(&text).ok_or(StoreError::BadTime(text)))
            .transpose()
    };
    Ok(PkRecord {
        pk_id: id(0)?,
        status: int(1)?,
        interfered: int(2)? != 0,
        start_time: time(3)?,
        end_time: time(4)?,
        duration_ms: int(5)?,
        anchor: id(6)?,
        room: id(7)?,
        gifts: int(8)?,
        audience: int(9)?,
        most_present_audience: row.try_get::<Option<i64>, _>(10)?.and_then(|v| u64::try_from(v).ok()),
        competitor: id(11)?,
        competitor_room: id(12)?,
        competitor_gifts: int(13)?,
        competitor_audience: int(14)?,
        result: int(15)?,
        winner: id(16)?,
    })
}

/// A PK id for a `BIGINT` column.
/// An exported PK's rows as this store's tables take them, each table known, each row
/// of the right width and of that PK.
/// Rows to write, each with its table.
type TableRows = (&'static Table, Vec<Vec<Value>>);

fn checked_export(exported: &ExportedPk, pk: i64) -> Result<Vec<TableRows>> {
    let refuse = |why: String| StoreError::BadExport(format!("PK {}: {why}", exported.pk));
    let mut checked = Vec::with_capacity(exported.tables.len());
    for (name, rows) in &exported.tables {
        let (table, pk_column) = SETTLED_TABLES
            .into_iter()
            .find(|(table, _)| table.name == name)
            .ok_or_else(|| refuse(format!("no table {name:?}")))?;
        let at = table.columns.iter().position(|c| *c == pk_column).unwrap_or(0);
        let mut values = Vec::with_capacity(rows.len());
        for row in rows {
            if row.len() != table.columns.len() {
                return Err(refuse(format!("a {name} row of {} columns, not {}", row.len(), table.columns.len())));
            }
            if row[at].as_deref() != Some(pk.to_string().as_str()) {
                return Err(refuse(format!("a {name} row of PK {:?}", row[at])));
            }
            values.push(row.iter().cloned().map(Value::Text).collect());
        }
        checked.push((table, values));
    }
    if !checked.iter().any(|(table, rows)| table.name == T_PK.name && rows.len() == 1) {
        return Err(refuse("no t_pk row".to_owned()));
    }
    Ok(checked)
}

fn pk_column(pk: PkId) -> Result<i64> {
    i64::try_from(pk.0).map_err(|_| StoreError::OutOfRange { what: "PK id", value: pk.0 })
}

/// A user or room id for the source's `INT(11)` columns.
fn int_id(what: &'static str, value: u64) -> Result<i64> {
    i32::try_from(value).map(i64::from).map_err(|_| StoreError::OutOfRange { what, value })
}

/// An id for a `BIGINT` column.
fn big_id(what: &'static str, value: u64) -> Result<i64> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { what, value })
}

fn room_id(room: RoomId) -> Result<i64> {
    int_id("room id", room.0)
}

/// Saturates a count to the `INT(11)` columns.
fn clamp_int(value: i64) -> i64 {
    value.clamp(i64::from(i32::MIN), i64::from(i32::MAX))
}

/// UTC `YYYY-MM-DD HH:MM:SS.sss` for a `DATETIME(3)` column.
pub(crate) fn datetime_millis(at: TimestampMs) -> String {
    let millis = at.0.rem_euclid(1000);
    format!("{}.{millis:03}", datetime_seconds(at))
}

/// UTC `YYYY-MM-DD HH:MM:SS` (milliseconds dropped) for a `DATETIME` column.
pub(crate) fn datetime_seconds(at: TimestampMs) -> String {
    let seconds = at.0.div_euclid(1000);
    let (days, second_of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

/// Unix ms from `YYYY-MM-DD HH:MM:SS[.fraction]` (UTC).
pub(crate) fn parse_datetime(text: &str) -> Option<i64> {
    let (date, time) = text.trim().split_once(' ')?;
    let mut date_parts = date.split('-').map(str::parse::<i64>);
    let (year, month, day) = (date_parts.next()?.ok()?, date_parts.next()?.ok()?, date_parts.next()?.ok()?);
    let (clock, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut clock_parts = clock.split(':').map(str::parse::<i64>);
    let (hour, minute, second) = (clock_parts.next()?.ok()?, clock_parts.next()?.ok()?, clock_parts.next()?.ok()?);
    let millis = if fraction.is_empty() { 0 } else { format!("{fraction:0<3}")[..3].parse::<i64>().ok()? };
    let days = days_from_civil(year, month, day);
    Some(((days * 86_400 + hour * 3600 + minute * 60 + second) * 1000) + millis)
}

/// Howard Hinnant's `civil_from_days`: (year, month, day) of a day count since
/// 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_index = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_round_trip() {
        for ms in [0, 1_625_811_819_212, 951_782_400_000, -1, 4_102_444_799_999] {
            let text = datetime_millis(TimestampMs(ms));
            assert_eq!(parse_datetime(&text), Some(ms), "{text}");
        }
        assert_eq!(datetime_millis(TimestampMs(1_625_811_819_212)), "2021-07-09 06:23:39.212");
        assert_eq!(datetime_seconds(TimestampMs(951_782_400_000)), "2000-02-29 00:00:00");
        assert_eq!(parse_datetime("2021-07-09 06:23:39"), Some(1_625_811_819_000));
        assert_eq!(parse_datetime("2021-07-09 06:23:39.212000"), Some(1_625_811_819_212));
    }

    #[test]
    fn ids_beyond_int_columns_are_refused() {
        assert!(int_id("user id", u64::from(u32::MAX)).is_err());
        assert_eq!(int_id("user id", 2_099_955).ok(), Some(2_099_955));
        assert!(pk_column(PkId(u64::MAX)).is_err());
    }
}
