//! The services a fault run may give its nodes: a MySQL results database
//! (`--mysql-url`) and a Redis read cache (`--redis-url`). Each node reaches them through
//! a [`ServiceLink`] the run owns, which the `mysql-cut` and `redis-cut` nemeses cut; the
//! run reads them directly, past the links, for the checkers ([`SqlSnapshot`],
//! [`CacheSnapshot`]).
//!
//! - MySQL: the run creates a database of its own on the server,
//!   `pkd_faults_<seed>_<unix time>`, and drops it at the end unless a checker found a
//!   violation (the report then names it).
//! - Redis: pkd's keys are the source's names, with no prefix, so the run takes the
//!   database the URL names (`redis://host:port/9`) and empties it (`FLUSHDB`) at its
//!   start. A URL without a database index is refused: the run never empties a database
//!   it was not given.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::{Context, bail};
use pkd_cluster::ServiceLink;
use redis::aio::MultiplexedConnection;
use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Row};

/// A service URL in parts: `scheme://[userinfo@]host[:port][/path][?query]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceUrl {
    pub scheme: String,
    pub userinfo: Option<String>,
    pub host: String,
    pub port: u16,
    /// Without its leading `/`; empty if none.
    pub path: String,
    pub query: Option<String>,
}

impl ServiceUrl {
    /// Splits `url`, taking `default_port` if it names none.
    pub fn parse(url: &str, default_port: u16) -> anyhow::Result<ServiceUrl> {
        let (scheme, rest) = url.split_once("://").with_context(|| format!("{url:?} is not a URL"))?;
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query.to_owned())),
            None => (rest, None),
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, host_port) = match authority.rsplit_once('@') {
            Some((userinfo, host_port)) => (Some(userinfo.to_owned()), host_port),
            None => (None, authority),
        };
        let (host, port) = match host_port.rsplit_once(':') {
            Some((host, port)) => (host, port.parse().with_context(|| format!("the port of {host_port:?}"))?),
            None => (host_port, default_port),
        };
        if host.is_empty() {
            bail!("{scheme}:// URL without a host");
        }
        Ok(ServiceUrl {
            scheme: scheme.to_owned(),
            userinfo,
            host: host.to_owned(),
            port,
            path: path.to_owned(),
            query,
        })
    }

    /// The same URL to another address and path.
    pub fn to(&self, address: &str, path: &str) -> String {
        let userinfo = self.userinfo.as_ref().map(|userinfo| format!("{userinfo}@")).unwrap_or_default();
        let query = self.query.as_ref().map(|query| format!("?{query}")).unwrap_or_default();
        format!("{}://{userinfo}{address}/{path}{query}", self.scheme)
    }

    /// The service's socket address.
    async fn resolve(&self) -> anyhow::Result<SocketAddr> {
        tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .with_context(|| format!("resolving {}", self.host))?
            .next()
            .with_context(|| format!("{} has no address", self.host))
    }
}

/// The run's MySQL database.
pub struct MysqlService {
    /// The URL given (used to create and drop the database).
    given: String,
    pub database: String,
    /// What the nodes get: the database, through the link.
    pub node_url: String,
    /// The database, directly.
    pub direct_url: String,
    pub link: ServiceLink,
}

/// The run's Redis database.
pub struct RedisService {
    pub database: u32,
    pub node_url: String,
    pub direct_url: String,
    pub link: ServiceLink,
}

/// What the nodes depend on besides each other.
#[derive(Default)]
pub struct Services {
    pub mysql: Option<MysqlService>,
    pub redis: Option<RedisService>,
}

impl Services {
    /// Prepares the services given: a fresh MySQL database named after `seed` and
    /// `unix_seconds`, an emptied Redis database, and a link in front of each.
    pub async fn open(
        mysql: Option<&str>,
        redis: Option<&str>,
        seed: u64,
        unix_seconds: i64,
    ) -> anyhow::Result<Services> {
        let mut services = Services::default();
        if let Some(given) = mysql {
            let url = ServiceUrl::parse(given, 3306)?;
            if url.scheme != "mysql" {
                bail!("--mysql-url takes a mysql:// URL, not {}://", url.scheme);
            }
            let database = format!("pkd_faults_{seed}_{unix_seconds}");
            let admin = admin_pool(given).await?;
            sqlx::query(&format!("CREATE DATABASE {database}"))
                .execute(&admin)
                .await
                .with_context(|| format!("creating the database {database}"))?;
            admin.close().await;
            let upstream = url.resolve().await?;
            let link = ServiceLink::start(loopback_any(), upstream).await.context("the MySQL link")?;
            services.mysql = Some(MysqlService {
                given: given.to_owned(),
                node_url: url.to(&link.address().to_string(), &database),
                direct_url: url.to(&upstream.to_string(), &database),
                database,
                link,
            });
        }
        if let Some(given) = redis
            && let Err(error) = services.open_redis(given).await
        {
            // The database made for this run is of no use now.
            let _ = services.drop_database().await;
            return Err(error);
        }
        Ok(services)
    }

    /// Empties the Redis database `given` names and puts a link in front of it.
    async fn open_redis(&mut self, given: &str) -> anyhow::Result<()> {
        let url = ServiceUrl::parse(given, 6379)?;
        let database: u32 = match url.path.trim_matches('/') {
            "" => bail!(
                "--redis-url must name a database the run may empty, e.g. redis://127.0.0.1:6379/9 \
                 (pkd's cache keys have no prefix: the run flushes that database at its start)"
            ),
            index => index.parse().with_context(|| format!("the Redis database {index:?}"))?,
        };
        let upstream = url.resolve().await?;
        let direct_url = url.to(&upstream.to_string(), &database.to_string());
        let mut connection = redis_connection(&direct_url).await?;
        let _: () = redis::cmd("FLUSHDB").query_async(&mut connection).await.context("emptying the Redis database")?;
        let link = ServiceLink::start(loopback_any(), upstream).await.context("the Redis link")?;
        self.redis = Some(RedisService {
            database,
            node_url: url.to(&link.address().to_string(), &database.to_string()),
            direct_url,
            link,
        });
        Ok(())
    }

    /// The `pkd serve` arguments that point a node at the services, through their links.
    pub fn node_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(mysql) = &self.mysql {
            args.extend(["--mysql-url".to_owned(), mysql.node_url.clone()]);
        }
        if let Some(redis) = &self.redis {
            args.extend(["--redis-url".to_owned(), redis.node_url.clone()]);
        }
        args
    }

    /// The nodes' link to the MySQL server, if the run has one.
    pub fn mysql_link(&self) -> Option<&ServiceLink> {
        self.mysql.as_ref().map(|mysql| &mysql.link)
    }

    /// The nodes' link to Redis, if the run has one.
    pub fn redis_link(&self) -> Option<&ServiceLink> {
        self.redis.as_ref().map(|redis| &redis.link)
    }

    /// Restores every link (a run never ends with one cut).
    pub fn restore_all(&self) {
        for link in [self.mysql_link(), self.redis_link()].into_iter().flatten() {
            link.restore();
        }
    }

    /// Drops the run's MySQL database.
    pub async fn drop_database(&self) -> anyhow::Result<()> {
        let Some(mysql) = &self.mysql else { return Ok(()) };
        let admin = admin_pool(&mysql.given).await?;
        sqlx::query(&format!("DROP DATABASE {}", mysql.database))
            .execute(&admin)
            .await
            .with_context(|| format!("dropping the database {}", mysql.database))?;
        admin.close().await;
        Ok(())
    }
}

/// 127.0.0.1, any port: the links listen where the nodes are.
fn loopback_any() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn admin_pool(url: &str) -> anyhow::Result<AnyPool> {
    sqlx::any::install_default_drivers();
    AnyPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(url)
        .await
        .context("connecting to the MySQL server of --mysql-url")
}

async fn redis_connection(url: &str) -> anyhow::Result<MultiplexedConnection> {
    let client = redis::Client::open(url).context("the Redis URL")?;
    client.get_multiplexed_async_connection().await.context("connecting to the Redis of --redis-url")
}

// ---- what the results tables hold -----------------------------------------------------

/// A `t_pk` row, the columns the checkers read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqlPk {
    pub id: u64,
    pub status: i64,
    pub source_user: u64,
    pub source_gifts: i64,
    pub target_user: u64,
    pub target_gifts: i64,
    pub winner: u64,
}

/// A `t_pk_anchor` row, the columns the checkers read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqlAnchor {
    pub pk: u64,
    pub user: u64,
    pub gifts: i64,
    pub competitor: u64,
    pub competitor_gifts: i64,
    /// 0 draw or abnormal end, 1 win, 2 loss.
    pub result: i64,
}

/// The results tables as the run read them directly.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SqlSnapshot {
    pub pks: Vec<SqlPk>,
    pub anchors: Vec<SqlAnchor>,
    /// `t_pk_gift`: PK → the sum of `gift_beans` over its senders.
    pub gift_beans: BTreeMap<u64, i64>,
    /// `t_pk_gift_ledger`: (PK, receiver) → (gifts, beans).
    pub ledger: BTreeMap<(u64, u64), (i64, i64)>,
    /// Gift ids in more than one row of the ledger, with how many.
    pub ledger_duplicates: BTreeMap<u64, i64>,
}

impl SqlSnapshot {
    /// Reads the tables of `url` (a MySQL database).
    pub async fn read(url: &str) -> anyhow::Result<SqlSnapshot> {
        let pool = admin_pool(url).await?;
        let snapshot = SqlSnapshot::read_from(&pool).await;
        pool.close().await;
        snapshot
    }

    async fn read_from(pool: &AnyPool) -> anyhow::Result<SqlSnapshot> {
        // Every column read as a signed integer, whatever its SQL type.
        let select = |columns: &[&str], rest: &str| {
            let columns: Vec<String> = columns.iter().map(|column| format!("CAST({column} AS SIGNED)")).collect();
            format!("SELECT {} FROM {rest}", columns.join(", "))
        };
        let id = |row: &sqlx::any::AnyRow, index: usize| -> anyhow::Result<u64> {
            Ok(u64::try_from(row.try_get::<Option<i64>, _>(index)?.unwrap_or(0)).unwrap_or(0))
        };
        let value = |row: &sqlx::any::AnyRow, index: usize| -> anyhow::Result<i64> {
            Ok(row.try_get::<Option<i64>, _>(index)?.unwrap_or(0))
        };
        let mut snapshot = SqlSnapshot::default();
        let sql =
            select(&["id", "status", "source_user", "source_gifts", "target_user", "target_gifts", "winner"], "t_pk");
        for row in sqlx::query(&sql).fetch_all(pool).await.context("reading t_pk")? {
            snapshot.pks.push(SqlPk {
                id: id(&row, 0)?,
                status: value(&row, 1)?,
                source_user: id(&row, 2)?,
                source_gifts: value(&row, 3)?,
                target_user: id(&row, 4)?,
                target_gifts: value(&row, 5)?,
                winner: id(&row, 6)?,
            });
        }
        let sql = select(&["pk_id", "user_id", "gifts", "competitor", "competitor_gifts", "result"], "t_pk_anchor");
        for row in sqlx::query(&sql).fetch_all(pool).await.context("reading t_pk_anchor")? {
            snapshot.anchors.push(SqlAnchor {
                pk: id(&row, 0)?,
                user: id(&row, 1)?,
                gifts: value(&row, 2)?,
                competitor: id(&row, 3)?,
                competitor_gifts: value(&row, 4)?,
                result: value(&row, 5)?,
            });
        }
        let sql = select(&["pk_id", "SUM(gift_beans)"], "t_pk_gift GROUP BY pk_id");
        for row in sqlx::query(&sql).fetch_all(pool).await.context("reading t_pk_gift")? {
            snapshot.gift_beans.insert(id(&row, 0)?, value(&row, 1)?);
        }
        let sql = select(&["pk_id", "receiver", "COUNT(*)", "SUM(beans)"], "t_pk_gift_ledger GROUP BY pk_id, receiver");
        for row in sqlx::query(&sql).fetch_all(pool).await.context("reading t_pk_gift_ledger")? {
            snapshot.ledger.insert((id(&row, 0)?, id(&row, 1)?), (value(&row, 2)?, value(&row, 3)?));
        }
        let sql = select(&["gift_id", "COUNT(*)"], "t_pk_gift_ledger GROUP BY gift_id HAVING COUNT(*) > 1");
        for row in sqlx::query(&sql).fetch_all(pool).await.context("reading t_pk_gift_ledger")? {
            snapshot.ledger_duplicates.insert(id(&row, 0)?, value(&row, 1)?);
        }
        Ok(snapshot)
    }
}

// ---- what the cache holds ---------------------------------------------------------------

/// The Redis read cache as the run read it directly, and the rooms in a PK as each node's
/// lobby replica answers them (`GET /api/rooms-in-pk`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CacheSnapshot {
    /// `pkr`: room → PK.
    pub rooms: BTreeMap<u64, u64>,
    /// Every `pk_${pkId}` hash, by PK.
    pub pks: BTreeMap<u64, BTreeMap<String, String>>,
    /// Every `pkg_${pkId}_${anchorId}` sorted set's sum of scores, by (PK, anchor).
    pub gifters: BTreeMap<(u64, u64), i64>,
    /// Each node's rooms in a PK (room → PK); a node that did not answer is left out.
    pub engine_rooms: BTreeMap<u64, BTreeMap<u64, u64>>,
    /// When the cache was read (wall clock ms): an ended PK's keys expire
    /// `ENDED_TTL_SECONDS` after its end.
    pub read_at_ms: i64,
}

impl CacheSnapshot {
    /// Reads the cache at `url` (pkd's keys only).
    pub async fn read_cache(url: &str) -> anyhow::Result<CacheSnapshot> {
        let mut connection = redis_connection(url).await?;
        let mut snapshot = CacheSnapshot { read_at_ms: pkd_cluster::app::wall_clock_ms(), ..CacheSnapshot::default() };
        let rooms: BTreeMap<String, String> =
            redis::cmd("HGETALL").arg("pkr").query_async(&mut connection).await.context("reading pkr")?;
        snapshot.rooms = rooms.iter().filter_map(|(room, pk)| Some((room.parse().ok()?, pk.parse().ok()?))).collect();
        let keys: Vec<String> = redis::cmd("KEYS").arg("pk_*").query_async(&mut connection).await?;
        for key in keys {
            let Some(pk) = key.strip_prefix("pk_").and_then(|pk| pk.parse::<u64>().ok()) else { continue };
            let fields: BTreeMap<String, String> = redis::cmd("HGETALL").arg(&key).query_async(&mut connection).await?;
            if !fields.is_empty() {
                snapshot.pks.insert(pk, fields);
            }
        }
        let keys: Vec<String> = redis::cmd("KEYS").arg("pkg_*").query_async(&mut connection).await?;
        for key in keys {
            let Some((pk, anchor)) = key.strip_prefix("pkg_").and_then(|rest| rest.split_once('_')) else { continue };
            let (Ok(pk), Ok(anchor)) = (pk.parse::<u64>(), anchor.parse::<u64>()) else { continue };
            let scores: Vec<(String, f64)> =
                redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).arg("WITHSCORES").query_async(&mut connection).await?;
            snapshot.gifters.insert((pk, anchor), scores.iter().map(|(_, score)| *score as i64).sum());
        }
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_urls_split_and_point_elsewhere() {
        let url = ServiceUrl::parse("mysql://root:secret@db.example:3307/test?ssl-mode=disabled", 3306).unwrap();
        assert_eq!(url.userinfo.as_deref(), Some("root:secret"));
        assert_eq!((url.host.as_str(), url.port, url.path.as_str()), ("db.example", 3307, "test"));
        assert_eq!(
            url.to("127.0.0.1:4000", "pkd_faults_7_1"),
            "mysql://root:secret@127.0.0.1:4000/pkd_faults_7_1?ssl-mode=disabled"
        );
        let bare = ServiceUrl::parse("redis://127.0.0.1", 6379).unwrap();
        assert_eq!((bare.port, bare.path.as_str(), bare.userinfo.as_deref()), (6379, "", None));
        assert_eq!(bare.to("127.0.0.1:5000", "9"), "redis://127.0.0.1:5000/9");
        assert!(ServiceUrl::parse("127.0.0.1:3306", 3306).is_err());
        assert!(ServiceUrl::parse("mysql://root@:3306", 3306).is_err());
    }
}
