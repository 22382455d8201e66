//! The sink duties on running nodes: settled results into SQLite, into a real MySQL behind
//! a proxy that the tests cut and heal, and resumed exactly by a new arena leader; the
//! Redis read cache (database 9, like `sinks_redis.rs`; the tests of this binary that use
//! it take turns) following gifts, keeping an ended PK's final state, coming back after a
//! flush, and unreachable altogether.

use crate::engine::{eventually, start_match};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pkd::clock::wall_clock;
use pkd::duties::Duties;
use pkd::duties::cache::CacheConfig;
use pkd::duties::results::ResultsConfig;
use pkd::duties::sinks::{Sinks, SinksConfig};
use pkd::replication::node::start_loopback_cluster;
use pkd::sinks::ResultsStore;
use pkd::sinks::redis_cache::{ENDED_TTL_SECONDS, LIVE_TTL_SECONDS, gifters_key, marker_key, pk_key};
use pkd::{GroupId, Node, NodeConfig};
use pkd_raft::{Action, ArenaAction, Effect, Gift, GiftId, PkId, Response, SettledPk, UserId};
use redis::aio::MultiplexedConnection;
use sqlx::Row;
use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

type TestResult = anyhow::Result<()>;

static DATABASES: AtomicU32 = AtomicU32::new(0);

fn redis_url() -> String {
    std::env::var("PKD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/9".to_owned())
}

fn mysql_server() -> String {
    std::env::var("PKD_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned())
}

// ---- the engine -----------------------------------------------------------------

/// Sets short PKs on every group of `node`: opening 200 ms, battle `battle_ms`, no
/// after-battle stage.
async fn set_timing(node: &Node, battle_ms: u64) -> TestResult {
    for group in node.topology().groups() {
        let action = Action::SetConfig { key: "pk_duration".into(), value: format!("200,{battle_ms},0,600000") };
        anyhow::ensure!(node.propose(group, action).await? == Response::Done, "pk_duration on {group}");
    }
    Ok(())
}

/// Every result `node` settles from now on (its `PkSettled` effects), by PK.
fn record_settled(node: &Node) -> Arc<Mutex<BTreeMap<PkId, SettledPk>>> {
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
    settled
}

/// Settled PKs still waiting in `node`'s arena outboxes for the results store.
fn pending_results(node: &Node) -> usize {
    node.arenas().iter().map(|arena| arena.read(|arena| arena.pending_results().count())).sum()
}

/// A single node with two arenas and the engine's duties (timers, hand-overs), short PKs,
/// and a record of every result it settled.
struct Engine {
    node: Node,
    duties: Duties,
    settled: Arc<Mutex<BTreeMap<PkId, SettledPk>>>,
    next_gift: u64,
    dir: TempDir,
}

impl Engine {
    async fn start(battle_ms: u64) -> anyhow::Result<Engine> {
        let dir = TempDir::new()?;
        let node = Node::start(NodeConfig { arena_count: 2, ..NodeConfig::single(dir.path()) }).await?;
        set_timing(&node, battle_ms).await?;
        let settled = record_settled(&node);
        let duties = Duties::start(&node);
        Ok(Engine { node, duties, settled, next_gift: 1, dir })
    }

    /// Stops the sinks, the duties and the node.
    async fn stop(self, sinks: Sinks) {
        sinks.shutdown().await;
        self.duties.stop().await;
        self.node.shutdown().await;
    }

    /// Matches anchors `first`, `first + 1`, ... in pairs: one PK per pair.
    async fn start_pks(&self, first: u64, count: u64) -> anyhow::Result<Vec<PkId>> {
        let mut pks = Vec::new();
        for pair in 0..count {
            let (a, b) = (first + 2 * pair, first + 2 * pair + 1);
            anyhow::ensure!(self.node.propose_lobby(start_match(a)).await? == Response::Waiting);
            match self.node.propose_lobby(start_match(b)).await? {
                Response::Matched { pk, .. } => pks.push(pk),
                other => anyhow::bail!("expected a match, got {other:?}"),
            }
        }
        for pk in &pks {
            eventually(Duration::from_secs(5), "the PK reaches its arena", || self.anchors(*pk).is_some()).await;
        }
        Ok(pks)
    }

    /// Waits until the battle of each of `pks` has begun: gifts count from then on.
    async fn wait_for_battle(&self, pks: &[PkId]) {
        eventually(Duration::from_secs(5), "the battles begin", || {
            let now = wall_clock();
            pks.iter()
                .all(|pk| self.node.arena_for(*pk).read(|arena| arena.battle_start(*pk)).is_some_and(|at| at <= now))
        })
        .await;
    }

    /// One gift, acknowledged: counted by the PK's arena.
    async fn gift(&mut self, pk: PkId, receiver: UserId, sender: UserId, beans: i64) -> TestResult {
        let gift = Gift { id: GiftId(self.next_gift), pk, receiver, sender, beans, profile: None };
        self.next_gift += 1;
        let response = self.node.propose_arena(self.node.arena_of(pk), ArenaAction::Gift(gift)).await?;
        anyhow::ensure!(matches!(response, Response::GiftCounted { duplicate: false, .. }), "gift: {response:?}");
        Ok(())
    }

    /// Gives `rounds` gifts from three senders to each anchor of each PK (once their
    /// battle has begun).
    async fn gifts(&mut self, pks: &[PkId], rounds: u64) -> TestResult {
        self.wait_for_battle(pks).await;
        for round in 0..rounds {
            for pk in pks {
                let anchors = self.anchors(*pk).ok_or_else(|| anyhow::anyhow!("{pk} is not running"))?;
                for (side, anchor) in (0u64..).zip(anchors) {
                    let sender = UserId(9_000 + (round % 3) + 10 * side);
                    self.gift(*pk, anchor, sender, 10 + (round as i64 * 7 + side as i64 * 3) % 50).await?;
                }
            }
        }
        Ok(())
    }

    /// The anchors of a running PK: source, target.
    fn anchors(&self, pk: PkId) -> Option<[UserId; 2]> {
        self.node.arena_for(pk).read(|arena| arena.view(pk).map(|view| [view.source.anchor, view.target.anchor]))
    }

    fn settled(&self) -> BTreeMap<PkId, SettledPk> {
        self.settled.lock().map(|settled| settled.clone()).unwrap_or_default()
    }

    fn pending_results(&self) -> usize {
        pending_results(&self.node)
    }

    async fn wait_settled(&self, pks: &[PkId], limit: Duration) {
        eventually(limit, "the PKs settle", || {
            let settled = self.settled();
            pks.iter().all(|pk| settled.contains_key(pk))
        })
        .await;
    }
}

fn quick_results() -> ResultsConfig {
    ResultsConfig {
        gifts_every: Duration::from_millis(300),
        max_backoff: Duration::from_millis(500),
        operation_timeout: Duration::from_secs(5),
        ..ResultsConfig::default()
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

async fn eventually_store(sinks: &Sinks) -> anyhow::Result<ResultsStore> {
    let slot = sinks.results();
    eventually(Duration::from_secs(10), "the results store connects", || slot.get().is_some()).await;
    slot.get().cloned().ok_or_else(|| anyhow::anyhow!("no store"))
}

// ---- SQLite --------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_pks_reach_sqlite_and_leave_the_outbox() -> TestResult {
    let mut engine = Engine::start(1_200).await?;
    let path = engine.dir.path().join("results.sqlite");
    let config = SinksConfig {
        results_url: Some(format!("sqlite://{}?mode=rwc", path.display())),
        results: quick_results(),
        ..SinksConfig::default()
    };
    let sinks = Sinks::start(&engine.node, config);
    let pks = engine.start_pks(100, 3).await?;
    engine.gifts(&pks, 6).await?;

    // Running PKs get their t_pk row (status 1) and their gifters' totals.
    let store = eventually_store(&sinks).await?;
    eventually(Duration::from_secs(5), "the started rows and gift totals", || {
        let counters = sinks.metrics().snapshot();
        counters.started_written >= 3 && counters.gift_totals_written >= 3
    })
    .await;

    engine.wait_settled(&pks, Duration::from_secs(10)).await;
    eventually(Duration::from_secs(10), "the outbox drains", || engine.pending_results() == 0).await;
    let settled = engine.settled();
    assert_exactly(&store, &settled).await?;
    assert_eq!(sinks.metrics().snapshot().results_confirmed, 3);

    // What the history API serves: anchor 100's one PK, against 101.
    let history = store.history(UserId(100), 1, 20).await?;
    assert_eq!(history.len(), 1, "{history:?}");
    let (record, result) = (&history[0], &settled[&pks[0]]);
    assert_eq!((record.pk_id, record.status, record.competitor), (pks[0].0, 2, 101));
    assert_eq!((record.gifts, record.competitor_gifts), (result.source.beans, result.target.beans));
    assert_eq!(record.winner, result.winner.0);
    engine.stop(sinks).await;
    Ok(())
}

// ---- MySQL behind a proxy ------------------------------------------------------------

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
    let sinks = Sinks::start(&engine.node, config);
    let store = eventually_store(&sinks).await?;

    let first = engine.start_pks(200, 2).await?;
    engine.gifts(&first, 4).await?;
    engine.wait_settled(&first, Duration::from_secs(10)).await;
    eventually(Duration::from_secs(10), "the first results are stored", || engine.pending_results() == 0).await;

    // Cut the link while PKs run; they settle meanwhile and wait in the outbox.
    let second = engine.start_pks(300, 3).await?;
    engine.gifts(&second, 3).await?;
    proxy.cut();
    engine.gifts(&second, 3).await?;
    engine.wait_settled(&second, Duration::from_secs(10)).await;
    // Two failed rounds after the PKs settled: at least one tried to store them.
    let errors = sinks.metrics().snapshot().results_errors;
    eventually(Duration::from_secs(20), "the results duty fails while the link is cut", || {
        sinks.metrics().snapshot().results_errors >= errors + 2
    })
    .await;
    assert_eq!(engine.pending_results(), 3, "the outbox keeps what could not be stored");

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
    engine.stop(sinks).await;
    Ok(())
}

// ---- three nodes: the arena leader stops while results are written ----------------------

/// Three nodes on loopback, each with the engine's duties and its own sinks over the same
/// database.
struct ClusterWithSinks {
    nodes: Vec<Option<(Node, Duties, Sinks)>>,
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
        for started in start_loopback_cluster(configs, "sinks", b"sinks secret", |_| {}).await? {
            let node = started.node;
            let duties = Duties::start(&node);
            let config = SinksConfig {
                results_url: Some(results_url.to_owned()),
                results: quick_results(),
                ..SinksConfig::default()
            };
            let sinks = Sinks::start(&node, config);
            nodes.push(Some((node, duties, sinks)));
        }
        Ok(ClusterWithSinks { nodes, _dirs: dirs })
    }

    fn node(&self, id: u64) -> anyhow::Result<&Node> {
        self.nodes
            .get(id as usize - 1)
            .and_then(Option::as_ref)
            .map(|(node, _, _)| node)
            .ok_or_else(|| anyhow::anyhow!("node {id} is not running"))
    }

    fn sinks(&self, id: u64) -> Option<&Sinks> {
        self.nodes.get(id as usize - 1).and_then(Option::as_ref).map(|(_, _, sinks)| sinks)
    }

    fn running(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().flatten().map(|(node, _, _)| node)
    }

    async fn stop(&mut self, id: u64) {
        if let Some((node, duties, sinks)) = self.nodes[id as usize - 1].take() {
            sinks.shutdown().await;
            duties.stop().await;
            node.shutdown().await;
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
    set_timing(&first, 8_000).await?;
    let settled = record_settled(&first);

    let mut pks = Vec::new();
    for pair in 0..12u64 {
        let (a, b) = (700 + 2 * pair, 701 + 2 * pair);
        anyhow::ensure!(first.propose_lobby(start_match(a)).await? == Response::Waiting);
        match first.propose_lobby(start_match(b)).await? {
            Response::Matched { pk, .. } => pks.push((pk, [UserId(a), UserId(b)])),
            other => anyhow::bail!("expected a match, got {other:?}"),
        }
    }
    eventually(Duration::from_secs(5), "the PKs reach their arenas and their battles begin", || {
        let now = wall_clock();
        pks.iter().all(|(pk, _)| first.arena_for(*pk).read(|arena| arena.battle_start(*pk)).is_some_and(|at| at <= now))
    })
    .await;
    let mut gift_id = 1;
    let gifting = std::time::Instant::now();
    for round in 0..3u64 {
        for (pk, anchors) in &pks {
            for (side, anchor) in (0u64..).zip(anchors) {
                let gift = Gift {
                    id: GiftId(gift_id),
                    pk: *pk,
                    receiver: *anchor,
                    sender: UserId(9_100 + round + 10 * side),
                    beans: 5 + round as i64,
                    profile: None,
                };
                gift_id += 1;
                // A gift may be retried: its id makes it count once.
                let mut attempts = 0;
                let response = loop {
                    match first.propose_arena(first.arena_of(*pk), ArenaAction::Gift(gift.clone())).await {
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

    // Stop an arena leader as soon as its duty has written results.
    let mut victim = None;
    eventually(Duration::from_secs(15), "an arena leader writes results", || {
        victim = [2u64, 3]
            .into_iter()
            .find(|id| cluster.sinks(*id).is_some_and(|sinks| sinks.metrics().snapshot().results_written > 0));
        victim.is_some()
    })
    .await;
    let victim = victim.ok_or_else(|| anyhow::anyhow!("no victim"))?;
    cluster.stop(victim).await;

    let all: Vec<PkId> = pks.iter().map(|(pk, _)| *pk).collect();
    eventually(Duration::from_secs(20), "every PK settles and every outbox drains", || {
        let settled = settled.lock().map(|s| s.clone()).unwrap_or_default();
        all.iter().all(|pk| settled.contains_key(pk)) && cluster.running().all(|node| pending_results(node) == 0)
    })
    .await;
    let direct = ResultsStore::connect(&url).await?;
    let settled = settled.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(settled.len(), 12);
    assert_exactly(&direct, &settled).await?;
    direct.close().await;
    cluster.shutdown().await;
    Ok(())
}

// ---- Redis -------------------------------------------------------------------------------

/// Takes Redis database 9 for the test and empties it.
async fn database_9() -> anyhow::Result<(tokio::sync::MutexGuard<'static, ()>, MultiplexedConnection)> {
    let turn = crate::common::REDIS_DATABASE.lock().await;
    let mut raw = redis::Client::open(redis_url())?.get_multiplexed_async_connection().await?;
    let _: () = redis::cmd("FLUSHDB").query_async(&mut raw).await?;
    Ok((turn, raw))
}

/// The cache duty as configured, but with no periodic rewrite: whatever the cache shows
/// came from changes or from a repair.
fn cache_without_refresh() -> CacheConfig {
    CacheConfig { refresh_every: Duration::from_secs(3_600), ..CacheConfig::default() }
}

async fn hash(raw: &mut MultiplexedConnection, key: &str) -> anyhow::Result<BTreeMap<String, String>> {
    Ok(redis::cmd("HGETALL").arg(key).query_async(raw).await?)
}

async fn gifters(raw: &mut MultiplexedConnection, key: &str) -> anyhow::Result<BTreeMap<u64, i64>> {
    let pairs: Vec<(u64, i64)> =
        redis::cmd("ZRANGE").arg(key).arg(0).arg(-1).arg("WITHSCORES").query_async(raw).await?;
    Ok(pairs.into_iter().collect())
}

async fn ttl(raw: &mut MultiplexedConnection, key: &str) -> anyhow::Result<i64> {
    Ok(redis::cmd("TTL").arg(key).query_async(raw).await?)
}

/// Each side's senders (source, target) with their totals in beans.
type Gifters = [BTreeMap<u64, i64>; 2];

/// What the cache shows of a PK: its `pk_` hash and each side's gifters (`pkg_`).
#[derive(Debug, PartialEq)]
struct CachedPk {
    fields: BTreeMap<String, String>,
    gifters: Gifters,
}

impl CachedPk {
    async fn read(raw: &mut MultiplexedConnection, pk: PkId, anchors: [UserId; 2]) -> anyhow::Result<CachedPk> {
        Ok(CachedPk {
            fields: hash(raw, &pk_key(pk)).await?,
            gifters: [
                gifters(raw, &gifters_key(pk, anchors[0])).await?,
                gifters(raw, &gifters_key(pk, anchors[1])).await?,
            ],
        })
    }

    fn field(&self, name: &str) -> &str {
        self.fields.get(name).map_or("", String::as_str)
    }

    /// Whether it shows push status `status`, the side totals `totals` and the gifters
    /// `gifters`.
    fn shows(&self, status: &str, totals: [i64; 2], gifters: &Gifters) -> bool {
        self.field("status") == status
            && self.field("sourceGifts") == totals[0].to_string()
            && self.field("targetGifts") == totals[1].to_string()
            && &self.gifters == gifters
    }
}

/// What the cache shows of the directory (`pkr`, `pkm`'s anchors) and of one PK.
#[derive(Debug)]
struct CachedState {
    rooms: BTreeMap<String, String>,
    matching: Vec<String>,
    pk: CachedPk,
}

impl CachedState {
    async fn read(raw: &mut MultiplexedConnection, pk: PkId, anchors: [UserId; 2]) -> anyhow::Result<CachedState> {
        Ok(CachedState {
            rooms: hash(raw, "pkr").await?,
            matching: hash(raw, "pkm").await?.into_keys().collect(),
            pk: CachedPk::read(raw, pk, anchors).await?,
        })
    }
}

/// A running PK's side totals and gifters in `engine`'s replica.
fn replica_pk(engine: &Engine, pk: PkId) -> Option<([i64; 2], Gifters)> {
    engine.node.arena_for(pk).read(|arena| {
        let view = arena.view(pk)?;
        let side =
            |anchor: UserId| arena.gifters(pk, anchor).into_iter().map(|(sender, beans)| (sender.0, beans)).collect();
        Some(([view.source.beans, view.target.beans], [side(view.source.anchor), side(view.target.anchor)]))
    })
}

/// Reads the cache until `good` holds of what `read` returns; fails after `limit`.
/// Returns how long it took.
async fn until_cached<T: std::fmt::Debug>(
    limit: Duration,
    what: &str,
    mut read: impl AsyncFnMut() -> anyhow::Result<T>,
    mut good: impl FnMut(&T) -> bool,
) -> anyhow::Result<Duration> {
    let began = Instant::now();
    loop {
        let seen = read().await?;
        if good(&seen) {
            return Ok(began.elapsed());
        }
        anyhow::ensure!(began.elapsed() < limit, "the cache did not show {what} within {limit:?}; it shows {seen:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pk_keys_follow_gifts_within_the_coalescing_window() -> TestResult {
    let (_turn, mut raw) = database_9().await?;
    let mut engine = Engine::start(60_000).await?;
    let cache = cache_without_refresh();
    let window = cache.coalesce + Duration::from_secs(2);
    let sinks =
        Sinks::start(&engine.node, SinksConfig { redis_url: Some(redis_url()), cache, ..SinksConfig::default() });
    let groups = engine.node.topology().group_count() as u64;
    eventually(Duration::from_secs(10), "each group writes its keys once", || {
        sinks.metrics().snapshot().cache_rebuilds >= groups
    })
    .await;
    let rebuilds = sinks.metrics().snapshot().cache_rebuilds;

    let pks = engine.start_pks(400, 2).await?;
    let pk = pks[0];
    let anchors = engine.anchors(pk).ok_or_else(|| anyhow::anyhow!("{pk} is not running"))?;
    // The opening's end reaches the cache with no command to mark it: battle, no gift yet.
    let none = [BTreeMap::new(), BTreeMap::new()];
    let read = async || CachedPk::read(&mut raw, pk, anchors).await;
    until_cached(Duration::from_secs(5), "the battle", read, |cached| cached.shows("1", [0, 0], &none)).await?;

    engine.wait_for_battle(&pks).await;
    let other = engine.anchors(pks[1]).ok_or_else(|| anyhow::anyhow!("{} is not running", pks[1]))?;
    let mut totals = [0i64; 2];
    let mut senders: Gifters = Default::default();
    for burst in 0..3u64 {
        for gift in 0..4u64 {
            let side = usize::from(gift % 4 == 3);
            let sender = 9_000 + (burst + gift) % 3 + 10 * side as u64;
            let beans = 10 + (burst * 4 + gift) as i64;
            engine.gift(pk, anchors[side], UserId(sender), beans).await?;
            // Another PK's gifts go to its own keys.
            engine.gift(pks[1], other[side], UserId(sender), 1).await?;
            totals[side] += beans;
            *senders[side].entry(sender).or_default() += beans;
        }
        // Every gift acknowledged so far shows within the coalescing window and a margin.
        let read = async || CachedPk::read(&mut raw, pk, anchors).await;
        let took =
            until_cached(window, "the acknowledged gifts", read, |cached| cached.shows("1", totals, &senders)).await?;
        println!("burst {burst}: pk_{pk} showed {totals:?} {took:?} after the last acknowledged gift");
    }
    assert_eq!(replica_pk(&engine, pk), Some((totals, senders.clone())), "the cache shows the replica's totals");
    let cached = CachedPk::read(&mut raw, pk, anchors).await?;
    assert_eq!(cached.field("sourceUser"), anchors[0].0.to_string());
    assert_eq!(cached.field("targetUser"), anchors[1].0.to_string());
    assert!(!cached.fields.contains_key("winner"), "undecided: no winner field");
    let version: u64 = cached.field("version").parse()?;
    let marker: u64 = redis::cmd("GET").arg(marker_key(engine.node.arena_of(pk).0)).query_async(&mut raw).await?;
    assert!(version > 0 && version <= marker, "version {version}, marker {marker}");
    for key in [pk_key(pk), gifters_key(pk, anchors[0]), gifters_key(pk, anchors[1])] {
        let left = ttl(&mut raw, &key).await?;
        assert!(left > 0 && left <= LIVE_TTL_SECONDS, "TTL {key} = {left}");
    }
    // Nothing was rewritten: the gifts came as changes.
    let counters = sinks.metrics().snapshot();
    assert_eq!(counters.cache_rebuilds, rebuilds, "{counters:?}");
    assert_eq!(counters.cache_errors, 0, "{counters:?}");
    assert!(counters.cache_batches > 0, "{counters:?}");
    engine.stop(sinks).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_pk_keeps_its_final_state_and_leaves_the_directory() -> TestResult {
    let (_turn, mut raw) = database_9().await?;
    let mut engine = Engine::start(1_500).await?;
    let config = SinksConfig { redis_url: Some(redis_url()), cache: cache_without_refresh(), ..SinksConfig::default() };
    let sinks = Sinks::start(&engine.node, config);
    let pks = engine.start_pks(600, 2).await?;
    let (won, aborted) = (pks[0], pks[1]);
    let anchors = engine.anchors(won).ok_or_else(|| anyhow::anyhow!("{won} is not running"))?;
    let aborted_anchors = engine.anchors(aborted).ok_or_else(|| anyhow::anyhow!("{aborted} is not running"))?;
    let rooms: Vec<String> = (600..604).map(|anchor| (anchor + 1000).to_string()).collect();
    until_cached(
        Duration::from_secs(5),
        "the rooms in pkr",
        async || hash(&mut raw, "pkr").await,
        |pkr| rooms.iter().all(|room| pkr.contains_key(room)),
    )
    .await?;

    engine.wait_for_battle(&pks).await;
    engine.gift(won, anchors[0], UserId(9_001), 30).await?;
    engine.gift(won, anchors[1], UserId(9_002), 10).await?;
    let response =
        engine.node.propose_arena(engine.node.arena_of(aborted), ArenaAction::AbortPk { pk: aborted }).await?;
    assert_eq!(response, Response::Done);
    engine.wait_settled(&pks, Duration::from_secs(10)).await;

    // The winner's PK: status 2, the winner, the final totals and gifters.
    let gifts = [BTreeMap::from([(9_001, 30)]), BTreeMap::from([(9_002, 10)])];
    let read = async || CachedPk::read(&mut raw, won, anchors).await;
    until_cached(Duration::from_secs(5), "the final state", read, |cached| {
        cached.shows("2", [30, 10], &gifts) && cached.field("winner") == anchors[0].0.to_string()
    })
    .await?;
    // The aborted PK: status 3, no winner (0).
    let read = async || CachedPk::read(&mut raw, aborted, aborted_anchors).await;
    let none = [BTreeMap::new(), BTreeMap::new()];
    until_cached(Duration::from_secs(5), "the abnormal end", read, |cached| {
        cached.shows("3", [0, 0], &none) && cached.field("winner") == "0"
    })
    .await?;
    // The final state outlives the live keys' expiry; the rooms leave pkr at once.
    for key in [pk_key(won), gifters_key(won, anchors[0]), gifters_key(won, anchors[1]), pk_key(aborted)] {
        let left = ttl(&mut raw, &key).await?;
        assert!(left > LIVE_TTL_SECONDS && left <= ENDED_TTL_SECONDS, "TTL {key} = {left}");
    }
    until_cached(
        Duration::from_secs(5),
        "the rooms released from pkr",
        async || hash(&mut raw, "pkr").await,
        |pkr| rooms.iter().all(|room| !pkr.contains_key(room)),
    )
    .await?;
    assert_eq!(sinks.metrics().snapshot().cache_errors, 0);
    engine.stop(sinks).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_cache_comes_back_within_seconds() -> TestResult {
    let (_turn, mut raw) = database_9().await?;
    let mut engine = Engine::start(60_000).await?;
    let config = SinksConfig { redis_url: Some(redis_url()), cache: cache_without_refresh(), ..SinksConfig::default() };
    let sinks = Sinks::start(&engine.node, config);
    let pks = engine.start_pks(800, 2).await?;
    // One anchor matching alone, for pkm.
    assert_eq!(engine.node.propose_lobby(start_match(900)).await?, Response::Waiting);
    engine.gifts(&pks, 3).await?;
    let pk = pks[0];
    let anchors = engine.anchors(pk).ok_or_else(|| anyhow::anyhow!("{pk} is not running"))?;
    let (totals, senders) = replica_pk(&engine, pk).ok_or_else(|| anyhow::anyhow!("{pk} is not running"))?;
    let rooms: BTreeMap<String, String> = engine.node.lobby().read(|lobby| {
        lobby.held_pks().flat_map(|(pk, seats)| seats.map(|seat| (seat.room.0.to_string(), pk.0.to_string()))).collect()
    });
    assert_eq!(rooms.len(), 4);

    // pkr, pkm, pk_ and pkg_ as the replicas hold them.
    let complete = |cached: &CachedState| {
        cached.rooms == rooms && cached.matching == ["900"] && cached.pk.shows("1", totals, &senders)
    };
    let read = async || CachedState::read(&mut raw, pk, anchors).await;
    until_cached(Duration::from_secs(5), "the running PKs", read, complete).await?;
    let rebuilds = sinks.metrics().snapshot().cache_rebuilds;

    let _: () = redis::cmd("FLUSHDB").query_async(&mut raw).await?;
    let read = async || CachedState::read(&mut raw, pk, anchors).await;
    let took = until_cached(Duration::from_secs(5), "the keys back after FLUSHDB", read, complete).await?;
    println!("pkr, pkm, pk_ and pkg_ came back {took:?} after FLUSHDB");
    for group in engine.node.topology().groups() {
        let marker: Option<u64> = redis::cmd("GET").arg(marker_key(group.0)).query_async(&mut raw).await?;
        assert!(marker.is_some(), "group {group}'s marker is back");
    }
    assert!(sinks.metrics().snapshot().cache_rebuilds > rebuilds);

    // Gifts after the repair flow in as changes again.
    engine.gift(pk, anchors[1], UserId(9_999), 7).await?;
    let (mut totals, mut senders) = (totals, senders);
    totals[1] += 7;
    senders[1].insert(9_999, 7);
    let read = async || CachedPk::read(&mut raw, pk, anchors).await;
    until_cached(Duration::from_secs(5), "a gift after the repair", read, |cached| cached.shows("1", totals, &senders))
        .await?;
    assert_eq!(sinks.metrics().snapshot().cache_errors, 0);
    engine.stop(sinks).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_stops_nothing() -> TestResult {
    let mut engine = Engine::start(1_000).await?;
    let config = SinksConfig {
        redis_url: Some("redis://127.0.0.1:1/9".to_owned()),
        cache: CacheConfig { max_backoff: Duration::from_millis(200), ..CacheConfig::default() },
        ..SinksConfig::default()
    };
    let sinks = Sinks::start(&engine.node, config);
    let pks = engine.start_pks(500, 2).await?;
    assert_eq!(engine.node.propose_lobby(start_match(510)).await?, Response::Waiting);
    engine.gifts(&pks, 5).await?;
    engine.wait_settled(&pks, Duration::from_secs(10)).await;
    let settled = engine.settled();
    assert!(settled.values().all(|result| result.source.beans > 0 && result.target.beans > 0));
    eventually(Duration::from_secs(5), "errors are counted", || sinks.metrics().snapshot().cache_errors >= 2).await;
    engine.stop(sinks).await;
    Ok(())
}
