//! The sink drivers on a running node: settled results into SQLite and into a real
//! MariaDB behind a proxy that the tests cut and heal, and the Redis read cache (database
//! 9, like `sinks_redis.rs`; the tests of this binary that use it take turns) flushed
//! under a running PK or unreachable altogether.

mod engine;

use engine::{eventually, start_match};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pkd::consensus::GroupId;
use pkd::sinks::{CacheDriverConfig, ResultsDriverConfig, ResultsStore, Sinks, SinksConfig};
use pkd::{LOBBY, Node, NodeConfig};
use pkd_raft::{Action, Effect, Gift, GiftId, PkId, Response, SettledPk, UserId};
use sqlx::Row;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

type TestResult = anyhow::Result<()>;

static DATABASE_9: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
static DATABASES: AtomicU32 = AtomicU32::new(0);

fn redis_url() -> String {
    std::env::var("PKD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/9".to_owned())
}

fn mysql_server() -> String {
    std::env::var("PKD_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned())
}

// ---- the engine -----------------------------------------------------------------

/// A single node with two arenas, short PKs (opening 200 ms, battle `battle_ms`), and a
/// record of every result it settled.
struct Engine {
    node: Arc<Node>,
    settled: Arc<Mutex<BTreeMap<PkId, SettledPk>>>,
    next_gift: u64,
    _dir: TempDir,
}

impl Engine {
    async fn start(battle_ms: u64) -> anyhow::Result<Engine> {
        Engine::start_with(battle_ms, 2).await
    }

    async fn start_with(battle_ms: u64, arena_count: u32) -> anyhow::Result<Engine> {
        let dir = TempDir::new()?;
        let node = Arc::new(Node::start(NodeConfig { arena_count, ..NodeConfig::single(dir.path()) }).await?);
        for group in 0..=u64::from(arena_count) {
            let action = Action::SetConfig { key: "pk_duration".into(), value: format!("200,{battle_ms},0,600000") };
            anyhow::ensure!(node.propose(GroupId(group), action).await? == Response::Done);
        }
        let settled = Arc::new(Mutex::new(BTreeMap::new()));
        let mut effects = node.subscribe_effects();
        let record = settled.clone();
        tokio::spawn(async move {
            while let Ok(tagged) = effects.recv().await {
                if let Effect::PkSettled(result) = tagged.effect
                    && let Ok(mut settled) = record.lock()
                {
                    settled.insert(result.pk, *result);
                }
            }
        });
        Ok(Engine { node, settled, next_gift: 1, _dir: dir })
    }

    fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Matches anchors `first`, `first + 1`, ... in pairs: one PK per pair.
    async fn start_pks(&self, first: u64, count: u64) -> anyhow::Result<Vec<PkId>> {
        let mut pks = Vec::new();
        for pair in 0..count {
            let (a, b) = (first + 2 * pair, first + 2 * pair + 1);
            anyhow::ensure!(self.node.propose(LOBBY, start_match(a)).await? == Response::Waiting);
            match self.node.propose(LOBBY, start_match(b)).await? {
                Response::Matched { pk, .. } => pks.push(pk),
                other => anyhow::bail!("expected a match, got {other:?}"),
            }
        }
        for pk in &pks {
            eventually(Duration::from_secs(5), "the PK reaches its arena", || self.running(*pk)).await;
        }
        Ok(pks)
    }

    /// Gives `rounds` gifts from three senders to each anchor of each PK (once their
    /// battle has begun).
    async fn gifts(&mut self, pks: &[PkId], rounds: u64) -> TestResult {
        tokio::time::sleep(Duration::from_millis(250)).await;
        for round in 0..rounds {
            for pk in pks {
                let anchors = self.anchors(*pk).ok_or_else(|| anyhow::anyhow!("{pk} is not running"))?;
                for (side, anchor) in anchors.into_iter().enumerate() {
                    let sender = UserId(9_000 + (round % 3) + 10 * side as u64);
                    let gift = Gift {
                        id: GiftId(self.next_gift),
                        pk: *pk,
                        receiver: anchor,
                        sender,
                        beans: 10 + (round as i64 * 7 + side as i64 * 3) % 50,
                        profile: None,
                    };
                    self.next_gift += 1;
                    let response = self.node.propose(self.node.arena_of(*pk), Action::Gift(gift)).await?;
                    anyhow::ensure!(matches!(response, Response::GiftCounted { .. }), "gift: {response:?}");
                }
            }
        }
        Ok(())
    }

    fn running(&self, pk: PkId) -> bool {
        self.anchors(pk).is_some()
    }

    fn anchors(&self, pk: PkId) -> Option<[UserId; 2]> {
        self.node.replica(self.node.arena_of(pk))?.read(|machine| {
            let view = machine.as_arena()?.view(pk)?;
            Some([view.source.anchor, view.target.anchor])
        })
    }

    fn settled(&self) -> BTreeMap<PkId, SettledPk> {
        self.settled.lock().map(|settled| settled.clone()).unwrap_or_default()
    }

    /// Settled PKs still waiting in the arenas' outboxes for the results sink.
    fn pending_results(&self) -> usize {
        (1..=u64::from(self.node.arena_count()))
            .filter_map(|arena| self.node.replica(GroupId(arena)))
            .map(|replica| {
                replica.read(|machine| machine.as_arena().map_or(0, |arena| arena.pending_results().count()))
            })
            .sum()
    }

    async fn wait_settled(&self, pks: &[PkId], limit: Duration) -> TestResult {
        eventually(limit, "the PKs settle", || {
            let settled = self.settled();
            pks.iter().all(|pk| settled.contains_key(pk))
        })
        .await;
        Ok(())
    }
}

fn quick_results() -> ResultsDriverConfig {
    ResultsDriverConfig {
        gifts_every: Duration::from_millis(300),
        max_backoff: Duration::from_millis(500),
        operation_timeout: Duration::from_secs(5),
        ..ResultsDriverConfig::default()
    }
}

/// Checks that the results tables hold exactly the engine's results: every settled PK
/// verifies, and there are no other rows.
async fn assert_exactly(store: &ResultsStore, settled: &BTreeMap<PkId, SettledPk>) -> TestResult {
    for result in settled.values() {
        let mismatches = store.verify_settled(result).await?;
        anyhow::ensure!(mismatches.is_empty(), "{}: {mismatches:?}", result.pk);
    }
    let count = |table: &'static str| async move {
        let row = sqlx::query(&format!("SELECT CAST(COUNT(*) AS SIGNED) FROM {table}")).fetch_one(store.pool()).await?;
        anyhow::Ok(row.try_get::<i64, _>(0)?)
    };
    let senders: usize = settled
        .values()
        .map(|r| {
            let mut ids: Vec<UserId> = r.source.gifters.iter().chain(&r.target.gifters).map(|g| g.sender).collect();
            ids.sort();
            ids.dedup();
            ids.len()
        })
        .sum();
    anyhow::ensure!(count("t_pk").await? == settled.len() as i64, "t_pk rows");
    anyhow::ensure!(count("t_pk_anchor").await? == 2 * settled.len() as i64, "t_pk_anchor rows");
    anyhow::ensure!(count("t_pk_gift").await? == senders as i64, "t_pk_gift rows");
    Ok(())
}

/// A GET on `address`, returning the status code and the JSON body.
async fn http_get(address: SocketAddr, path: &str) -> anyhow::Result<(u16, serde_json::Value)> {
    let mut stream = TcpStream::connect(address).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response.split_once("\r\n\r\n").ok_or_else(|| anyhow::anyhow!("no body: {response}"))?;
    let status = head.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    Ok((status, serde_json::from_str(body)?))
}

// ---- (a) SQLite ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_pks_reach_sqlite_and_leave_the_outbox() -> TestResult {
    let mut engine = Engine::start(1_200).await?;
    let path = engine.data_dir().join("results.sqlite");
    let config = SinksConfig {
        results_url: Some(format!("sqlite://{}?mode=rwc", path.display())),
        results: quick_results(),
        ..SinksConfig::default()
    };
    let sinks = Sinks::start(engine.node.clone(), config);
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let api = pkd::sinks::http::router(engine.node.clone(), sinks.results());
    tokio::spawn(async move { axum::serve(listener, api).await });

    let pks = engine.start_pks(100, 3).await?;
    let (status, rooms) = http_get(address, "/api/rooms-in-pk").await?;
    assert_eq!(status, 200);
    assert_eq!(rooms["rooms"].as_array().map(Vec::len), Some(6), "{rooms}");
    engine.gifts(&pks, 6).await?;

    // Running PKs get their t_pk row (status 1) and their gifters' totals.
    let store = eventually_store(&sinks).await?;
    eventually(Duration::from_secs(5), "the started rows and gift totals", || {
        let counters = sinks.metrics().snapshot();
        counters.started_written >= 3 && counters.gift_totals_written >= 3
    })
    .await;

    engine.wait_settled(&pks, Duration::from_secs(10)).await?;
    eventually(Duration::from_secs(10), "the outbox drains", || engine.pending_results() == 0).await;
    assert_exactly(&store, &engine.settled()).await?;
    assert_eq!(sinks.metrics().snapshot().results_confirmed, 3);

    let (status, history) = http_get(address, "/api/anchors/100/pks?page=1&size=20").await?;
    assert_eq!(status, 200);
    let records = history["records"].as_array().cloned().unwrap_or_default();
    assert_eq!(records.len(), 1, "{history}");
    assert_eq!(records[0]["pkId"], serde_json::json!(pks[0].0));
    assert_eq!(records[0]["competitor"], serde_json::json!(101));
    let (status, _) = http_get(address, "/api/rooms-in-pk").await?;
    assert_eq!(status, 200);
    sinks.shutdown().await;
    Ok(())
}

async fn eventually_store(sinks: &Sinks) -> anyhow::Result<ResultsStore> {
    let slot = sinks.results();
    eventually(Duration::from_secs(10), "the results store connects", || slot.get().is_some()).await;
    slot.get().cloned().ok_or_else(|| anyhow::anyhow!("no store"))
}

// ---- (b) MySQL behind a proxy ------------------------------------------------------

/// A TCP proxy to MySQL whose link can be cut (open connections dropped, new ones
/// refused) and healed.
struct Proxy {
    address: SocketAddr,
    cut: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0u64);
        let (is_cut, cuts) = (cut.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if is_cut.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cuts = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        Ok(Proxy { address, cut, generation })
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.generation.send_modify(|generation| *generation += 1);
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// A fresh MySQL database, dropped by [`TestDatabase::drop_database`].
struct TestDatabase {
    admin: sqlx::AnyPool,
    name: String,
}

impl TestDatabase {
    async fn create() -> anyhow::Result<TestDatabase> {
        sqlx::any::install_default_drivers();
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let name = format!("pkd_drv_{}_{}_{nanos}", std::process::id(), DATABASES.fetch_add(1, Ordering::Relaxed));
        let admin = sqlx::AnyPool::connect(&format!("{}/test", mysql_server())).await?;
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await?;
        Ok(TestDatabase { admin, name })
    }

    async fn drop_database(self) {
        let _ = sqlx::query(&format!("DROP DATABASE {}", self.name)).execute(&self.admin).await;
    }

    /// Runs `body` on a fresh database (given its name) and drops the database, whatever
    /// the outcome.
    async fn around<F, Fut>(body: F) -> TestResult
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = TestResult>,
    {
        let database = TestDatabase::create().await?;
        let outcome = body(database.name.clone()).await;
        database.drop_database().await;
        outcome
    }
}

fn upstream_of(server: &str) -> anyhow::Result<SocketAddr> {
    let host = server.rsplit('@').next().unwrap_or(server).trim_start_matches("mysql://");
    Ok(host.trim_end_matches('/').parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_holds_exactly_the_results_after_the_link_is_cut_and_healed() -> TestResult {
    TestDatabase::around(|name| async move { mysql_cut_and_heal(&name).await }).await
}

async fn mysql_cut_and_heal(database: &str) -> TestResult {
    let server = mysql_server();
    let proxy = Proxy::start(upstream_of(&server)?).await?;
    let credentials = server.trim_start_matches("mysql://").rsplit_once('@').map_or("", |(user, _)| user).to_owned();
    let url = format!("mysql://{credentials}@{}/{database}", proxy.address);
    let mut engine = Engine::start(1_500).await?;
    let config = SinksConfig { results_url: Some(url), results: quick_results(), ..SinksConfig::default() };
    let sinks = Sinks::start(engine.node.clone(), config);
    let store = eventually_store(&sinks).await?;

    let first = engine.start_pks(200, 2).await?;
    engine.gifts(&first, 4).await?;
    engine.wait_settled(&first, Duration::from_secs(10)).await?;
    eventually(Duration::from_secs(10), "the first results are stored", || engine.pending_results() == 0).await;

    // Cut the link while PKs run; they settle meanwhile and wait in the outbox.
    let second = engine.start_pks(300, 3).await?;
    engine.gifts(&second, 3).await?;
    proxy.cut();
    engine.gifts(&second, 3).await?;
    engine.wait_settled(&second, Duration::from_secs(10)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(engine.pending_results(), 3, "the outbox keeps what could not be stored");
    assert!(sinks.metrics().snapshot().results_errors > 0);

    proxy.heal();
    eventually(Duration::from_secs(20), "the outbox drains after the link heals", || engine.pending_results() == 0)
        .await;
    // Read through a direct connection: the rows are there, once each.
    let direct = ResultsStore::connect(&format!("{server}/{database}")).await?;
    let settled = engine.settled();
    assert_eq!(settled.len(), 5);
    assert_exactly(&direct, &settled).await?;
    direct.close().await;
    drop(store);
    sinks.shutdown().await;
    Ok(())
}

// ---- (c), (d) Redis ----------------------------------------------------------------------

async fn redis_raw() -> anyhow::Result<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open(redis_url())?.get_multiplexed_async_connection().await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_cache_comes_back_from_the_replicas() -> TestResult {
    let _turn = DATABASE_9.lock().await;
    let mut raw = redis_raw().await?;
    let _: () = redis::cmd("FLUSHDB").query_async(&mut raw).await?;
    let mut engine = Engine::start(8_000).await?;
    let config = SinksConfig {
        redis_url: Some(redis_url()),
        cache: CacheDriverConfig { refresh_every: Duration::from_secs(1), ..CacheDriverConfig::default() },
        ..SinksConfig::default()
    };
    let sinks = Sinks::start(engine.node.clone(), config);
    let pks = engine.start_pks(400, 2).await?;
    engine.gifts(&pks, 5).await?;
    let pk = pks[0];
    let key = format!("pk_{pk}");
    let anchors = engine.anchors(pk).ok_or_else(|| anyhow::anyhow!("not running"))?;

    let expected = |engine: &Engine| {
        engine.node.replica(engine.node.arena_of(pk)).and_then(|replica| {
            replica.read(|machine| {
                let arena = machine.as_arena()?;
                Some((arena.view(pk)?, arena.gifters(pk, anchors[0])))
            })
        })
    };
    for flush in [false, true] {
        if flush {
            let _: () = redis::cmd("FLUSHDB").query_async(&mut raw).await?;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let (view, gifters) = expected(&engine).ok_or_else(|| anyhow::anyhow!("not running"))?;
            let hash: BTreeMap<String, String> = redis::cmd("HGETALL").arg(&key).query_async(&mut raw).await?;
            let zset: Vec<(u64, i64)> = redis::cmd("ZRANGE")
                .arg(format!("pkg_{pk}_{}", anchors[0]))
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .query_async(&mut raw)
                .await?;
            let rooms: BTreeMap<u64, u64> = redis::cmd("HGETALL").arg("pkr").query_async(&mut raw).await?;
            let mut zset = zset;
            zset.sort();
            let good = hash.get("sourceGifts") == Some(&view.source.beans.to_string())
                && hash.get("targetGifts") == Some(&view.target.beans.to_string())
                && zset == gifters.iter().map(|(sender, beans)| (sender.0, *beans)).collect::<Vec<_>>()
                && rooms.len() == 4
                && rooms.get(&(anchors[0].0 + 1000)) == Some(&pk.0);
            if good {
                break;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the cache does not match (flushed: {flush}): {hash:?} {zset:?} {rooms:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let kinds: Vec<String> = {
            let mut kinds = Vec::new();
            for key in [key.clone(), format!("pkg_{pk}_{}", anchors[0]), "pkr".to_owned()] {
                kinds.push(redis::cmd("TYPE").arg(key).query_async(&mut raw).await?);
            }
            kinds
        };
        assert_eq!(kinds, ["hash", "zset", "hash"]);
        let ttl: i64 = redis::cmd("TTL").arg("pkr").query_async(&mut raw).await?;
        assert!(ttl > 0, "pkr has an expiry");
    }
    // Gifts after the rebuild keep flowing into the cache.
    engine.gifts(&pks[..1], 1).await?;
    let counters = sinks.metrics().snapshot();
    assert!(counters.cache_rebuilds >= 2, "{counters:?}");
    assert_eq!(counters.cache_errors, 0);
    sinks.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_stops_nothing() -> TestResult {
    let mut engine = Engine::start(1_000).await?;
    let config = SinksConfig {
        redis_url: Some("redis://127.0.0.1:1/9".to_owned()),
        cache: CacheDriverConfig { max_backoff: Duration::from_millis(200), ..CacheDriverConfig::default() },
        ..SinksConfig::default()
    };
    let sinks = Sinks::start(engine.node.clone(), config);
    let pks = engine.start_pks(500, 2).await?;
    engine.gifts(&pks, 5).await?;
    engine.wait_settled(&pks, Duration::from_secs(10)).await?;
    let settled = engine.settled();
    assert!(settled.values().all(|result| result.source.beans > 0 && result.target.beans > 0));
    eventually(Duration::from_secs(5), "errors are counted", || sinks.metrics().snapshot().cache_errors >= 2).await;
    sinks.shutdown().await;
    Ok(())
}

// ---- measurement (run by hand) -----------------------------------------------------------

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|n| n.parse().ok()).unwrap_or(default)
}

/// Settled PKs per second the results sink stores into MySQL: `PKD_BENCH_PKS` PKs
/// (default 600) with a few gifts each, settling within about a second of each other.
/// Run by hand:
/// `PKD_BENCH_PKS=600 cargo test --release -p pkd --test sinks_driver measure -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand"]
async fn measure_results_sink_throughput_into_mysql() -> TestResult {
    TestDatabase::around(|name| async move { measure_throughput(&name).await }).await
}

async fn measure_throughput(database: &str) -> TestResult {
    let count = env_number("PKD_BENCH_PKS", 600);
    let mut engine = Engine::start_with(8_000, 4).await?;
    let config = SinksConfig {
        results_url: Some(format!("{}/{database}", mysql_server())),
        results: ResultsDriverConfig::default(),
        ..SinksConfig::default()
    };
    let sinks = Sinks::start(engine.node.clone(), config);
    let store = eventually_store(&sinks).await?;
    let pks = engine.start_pks(10_000, count).await?;
    engine.gifts(&pks, 1).await?;
    // The first settlement, then the drained outbox.
    eventually(Duration::from_secs(30), "a first PK settles", || !engine.settled().is_empty()).await;
    let first_settled = std::time::Instant::now();
    engine.wait_settled(&pks, Duration::from_secs(60)).await?;
    let all_settled = first_settled.elapsed().as_secs_f64();
    eventually(Duration::from_secs(300), "the outbox drains", || engine.pending_results() == 0).await;
    let drained = first_settled.elapsed().as_secs_f64();
    let counters = sinks.metrics().snapshot();
    println!(
        "{count} PKs settled over {all_settled:.2} s; stored, verified and confirmed {drained:.2} s after the \
         first settled: {:.0} settled PKs/s; lag behind the engine: max {} ms; repairs {}",
        count as f64 / drained.max(0.001),
        counters.result_lag_max_ms,
        counters.results_repaired,
    );
    assert_exactly(&store, &engine.settled()).await?;
    sinks.shutdown().await;
    Ok(())
}

/// The results sink's lag behind the engine while gifts pour in: waves of
/// `PKD_BENCH_WAVE` PKs (default 100) start every second for `PKD_BENCH_WAVES` s
/// (default 8), each battling 4 s, while `PKD_BENCH_PROPOSERS` tasks (default 128) send
/// gifts to the PKs in battle. Run by hand:
/// `cargo test --release -p pkd --test sinks_driver lag -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run by hand"]
async fn measure_results_sink_lag_under_gifts() -> TestResult {
    TestDatabase::around(|name| async move { measure_lag(&name).await }).await
}

/// A PK and its two anchors.
type Pair = (PkId, [UserId; 2]);

async fn measure_lag(database: &str) -> TestResult {
    let per_wave = env_number("PKD_BENCH_WAVE", 100);
    let waves = env_number("PKD_BENCH_WAVES", 8);
    let proposers = env_number("PKD_BENCH_PROPOSERS", 128);
    let battle = Duration::from_millis(4_000);
    let engine = Engine::start_with(battle.as_millis() as u64, 4).await?;
    let config = SinksConfig { results_url: Some(format!("{}/{database}", mysql_server())), ..SinksConfig::default() };
    let sinks = Sinks::start(engine.node.clone(), config);
    let store = eventually_store(&sinks).await?;

    let active: Arc<Mutex<Vec<Pair>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let counted = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for proposer in 0..proposers {
        let (node, active, stop, counted) = (engine.node.clone(), active.clone(), stop.clone(), counted.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let pick = active.lock().ok().and_then(|active| {
                    (!active.is_empty()).then(|| active[((n * 7919 + proposer) % active.len() as u64) as usize])
                });
                let Some((pk, sides)) = pick else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let gift = Gift {
                    id: GiftId(1 + n * proposers + proposer),
                    pk,
                    receiver: sides[(n % 2) as usize],
                    sender: UserId(50_000 + (n * 31 + proposer) % 200),
                    beans: 1 + (n % 9) as i64,
                    profile: None,
                };
                n += 1;
                if let Ok(Response::GiftCounted { .. }) = node.propose(node.arena_of(pk), Action::Gift(gift)).await {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let began = std::time::Instant::now();
    let mut all = Vec::new();
    let mut running: std::collections::VecDeque<(std::time::Instant, Vec<Pair>)> = Default::default();
    for wave in 0..waves {
        let wave_start = std::time::Instant::now();
        let pks = engine.start_pks(100_000 + wave * 10_000, per_wave).await?;
        all.extend(pks.iter().copied());
        tokio::time::sleep(Duration::from_millis(250)).await;
        let sides: Vec<Pair> = pks.iter().filter_map(|pk| Some((*pk, engine.anchors(*pk)?))).collect();
        running.push_back((std::time::Instant::now(), sides));
        while running.front().is_some_and(|(at, _)| at.elapsed() > battle - Duration::from_millis(600)) {
            running.pop_front();
        }
        if let Ok(mut active) = active.lock() {
            *active = running.iter().flat_map(|(_, wave)| wave.iter().copied()).collect();
        }
        tokio::time::sleep(Duration::from_secs(1).saturating_sub(wave_start.elapsed())).await;
    }
    tokio::time::sleep(battle - Duration::from_millis(1_000)).await;
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        let _ = task.await;
    }
    let seconds = began.elapsed().as_secs_f64();
    let gifts = counted.load(Ordering::Relaxed);
    let during = sinks.metrics().snapshot();
    engine.wait_settled(&all, Duration::from_secs(60)).await?;
    eventually(Duration::from_secs(300), "the outbox drains", || engine.pending_results() == 0).await;
    let counters = sinks.metrics().snapshot();
    println!(
        "{} PKs in {waves} waves, {gifts} gifts counted in {seconds:.1} s: {:.0} gifts/s; while gifting: {} results \
         stored, lag max {} ms; overall lag max {} ms, gift-total writes {}",
        all.len(),
        gifts as f64 / seconds,
        during.results_written,
        during.result_lag_max_ms,
        counters.result_lag_max_ms,
        counters.gift_totals_written,
    );
    assert_exactly(&store, &engine.settled()).await?;
    sinks.shutdown().await;
    Ok(())
}

// ---- (e) three nodes: the arena leader stops while results are written ----------------

/// Three nodes on localhost, each with its own sink drivers over the same database.
struct ClusterWithSinks {
    nodes: Vec<Option<(Arc<Node>, Sinks)>>,
    _dirs: Vec<TempDir>,
}

impl ClusterWithSinks {
    async fn start(results_url: &str) -> anyhow::Result<ClusterWithSinks> {
        let dirs: Vec<TempDir> = (0..3).map(|_| TempDir::new()).collect::<Result<_, _>>()?;
        let configs = dirs
            .iter()
            .map(|dir| NodeConfig { arena_count: 2, snapshot_every: 1_000, ..NodeConfig::single(dir.path()) })
            .collect();
        let mut nodes = Vec::new();
        for started in pkd::node::start_loopback_cluster(configs, "sinks", b"sinks secret", |_| {}).await? {
            let node = Arc::new(started.node);
            let config = SinksConfig {
                results_url: Some(results_url.to_owned()),
                results: quick_results(),
                ..SinksConfig::default()
            };
            let sinks = Sinks::start(node.clone(), config);
            nodes.push(Some((node, sinks)));
        }
        Ok(ClusterWithSinks { nodes, _dirs: dirs })
    }

    fn node(&self, id: u64) -> anyhow::Result<&Arc<Node>> {
        self.nodes
            .get(id as usize - 1)
            .and_then(Option::as_ref)
            .map(|(node, _)| node)
            .ok_or_else(|| anyhow::anyhow!("node {id} is not running"))
    }

    fn sinks(&self, id: u64) -> Option<&Sinks> {
        self.nodes.get(id as usize - 1).and_then(Option::as_ref).map(|(_, sinks)| sinks)
    }

    fn running(&self) -> impl Iterator<Item = &Arc<Node>> {
        self.nodes.iter().flatten().map(|(node, _)| node)
    }

    async fn stop(&mut self, id: u64) {
        if let Some((node, sinks)) = self.nodes[id as usize - 1].take() {
            sinks.shutdown().await;
            let mut node = node;
            for _ in 0..100 {
                match Arc::try_unwrap(node) {
                    Ok(owned) => return owned.shutdown().await,
                    Err(shared) => node = shared,
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("node {id} still shared");
        }
    }

    async fn shutdown(mut self) {
        for id in 1..=3 {
            self.stop(id).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_arena_leader_resumes_the_results_exactly() -> TestResult {
    TestDatabase::around(|name| async move { new_leader_resumes(&name).await }).await
}

async fn new_leader_resumes(database: &str) -> TestResult {
    let url = format!("{}/{database}", mysql_server());
    let mut cluster = ClusterWithSinks::start(&url).await?;
    for (group, wanted) in [(0, 1), (1, 2), (2, 3)] {
        eventually(Duration::from_secs(10), "leaders spread over the nodes", || {
            cluster.running().all(|node| node.leader(GroupId(group)) == Some(wanted))
        })
        .await;
    }
    let first = cluster.node(1)?.clone();
    for group in 0..=2u64 {
        let action = Action::SetConfig { key: "pk_duration".into(), value: "200,8000,0,600000".into() };
        anyhow::ensure!(first.propose(GroupId(group), action).await? == Response::Done);
    }
    let settled: Arc<Mutex<BTreeMap<PkId, SettledPk>>> = Arc::default();
    let mut effects = first.subscribe_effects();
    let record = settled.clone();
    tokio::spawn(async move {
        while let Ok(tagged) = effects.recv().await {
            if let Effect::PkSettled(result) = tagged.effect
                && let Ok(mut settled) = record.lock()
            {
                settled.insert(result.pk, *result);
            }
        }
    });

    let mut pks = Vec::new();
    for pair in 0..12u64 {
        let (a, b) = (700 + 2 * pair, 701 + 2 * pair);
        anyhow::ensure!(first.propose(LOBBY, start_match(a)).await? == Response::Waiting);
        match first.propose(LOBBY, start_match(b)).await? {
            Response::Matched { pk, .. } => pks.push((pk, [UserId(a), UserId(b)])),
            other => anyhow::bail!("expected a match, got {other:?}"),
        }
    }
    for (pk, _) in &pks {
        let arena = first.arena_of(*pk);
        eventually(Duration::from_secs(5), "the PK reaches its arena", || {
            first.replica(arena).is_some_and(|replica| {
                replica.read(|machine| machine.as_arena().is_some_and(|arena| arena.view(*pk).is_some()))
            })
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(250)).await;
    let mut gift_id = 1;
    let gifting = std::time::Instant::now();
    for round in 0..3u64 {
        for (pk, anchors) in &pks {
            for (side, anchor) in anchors.iter().enumerate() {
                let gift = Gift {
                    id: GiftId(gift_id),
                    pk: *pk,
                    receiver: *anchor,
                    sender: UserId(9_100 + round + 10 * side as u64),
                    beans: 5 + round as i64,
                    profile: None,
                };
                gift_id += 1;
                // A gift may be retried: its id makes it count once.
                let mut attempts = 0;
                let response = loop {
                    match first.propose(first.arena_of(*pk), Action::Gift(gift.clone())).await {
                        Ok(response) => break response,
                        Err(error) if attempts < 20 => {
                            attempts += 1;
                            eprintln!("gift retried: {error}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(error) => return Err(error.into()),
                    }
                };
                anyhow::ensure!(
                    matches!(response, Response::GiftCounted { .. }),
                    "gift: {response:?} after {:?}",
                    gifting.elapsed()
                );
            }
        }
    }

    // Stop an arena leader as soon as its driver has written results.
    let mut victim = None;
    eventually(Duration::from_secs(10), "an arena leader writes results", || {
        victim = [2u64, 3]
            .into_iter()
            .find(|id| cluster.sinks(*id).is_some_and(|sinks| sinks.metrics().snapshot().results_written > 0));
        victim.is_some()
    })
    .await;
    let victim = victim.ok_or_else(|| anyhow::anyhow!("no victim"))?;
    cluster.stop(victim).await;

    let all: Vec<PkId> = pks.iter().map(|(pk, _)| *pk).collect();
    let pending = |cluster: &ClusterWithSinks| -> usize {
        cluster
            .running()
            .map(|node| {
                (1..=2u64)
                    .filter_map(|arena| node.replica(GroupId(arena)))
                    .map(|replica| {
                        replica.read(|machine| machine.as_arena().map_or(0, |arena| arena.pending_results().count()))
                    })
                    .sum::<usize>()
            })
            .max()
            .unwrap_or(0)
    };
    eventually(Duration::from_secs(20), "every PK settles and every outbox drains", || {
        let settled = settled.lock().map(|s| s.clone()).unwrap_or_default();
        all.iter().all(|pk| settled.contains_key(pk)) && pending(&cluster) == 0
    })
    .await;
    let direct = ResultsStore::connect(&url).await?;
    let settled = settled.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(settled.len(), 12);
    assert_exactly(&direct, &settled).await?;
    direct.close().await;
    drop(first);
    cluster.shutdown().await;
    Ok(())
}
