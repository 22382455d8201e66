//! Results store benchmark: how fast settled PKs reach MySQL (written, read back, repaired
//! if need be, confirmed through raft) and how far the results duty trails the engine.
//!
//! Each measurement runs one node with its duties and sinks (as `pkd serve` runs them)
//! over a database of its own (`pkd_sinks_bench_<pid>_<n>`, made and dropped), and ends by
//! checking every `t_pk` row against the engine's results.
//!
//! - **throughput**: `SINKS_PKS` PKs (default 600), each with a few gifts, settle within
//!   about a second of each other: settled PKs per second from the first settlement to
//!   the drained outbox, and the largest lag between a settlement and its row.
//! - **lag under gifts**: waves of `SINKS_WAVE` PKs (default 100) start every second for
//!   `SINKS_WAVES` s (default 8), each battling 4 s, while `SINKS_PROPOSERS` tasks
//!   (default 128) send gifts to the PKs in battle: the results duty's lag while the
//!   engine is busy.
//!
//! `PKD_TEST_MYSQL_URL=mysql://user:password@127.0.0.1:3306 cargo bench --bench sinks`
//! (by default `mysql://root@127.0.0.1:3306`); `SINKS_ONLY=throughput` or `lag` runs one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pkd::duties::Duties;
use pkd::duties::sinks::{Sinks, SinksConfig};
use pkd::{Node, NodeConfig};
use pkd_raft::{
    Action, AnchorProfile, ArenaAction, Effect, Gift, GiftId, LobbyAction, PkId, Response, RoomId, SettledPk, UserId,
};
use tempfile::TempDir;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn profile(anchor: u64) -> AnchorProfile {
    AnchorProfile { room: RoomId(anchor), country: "IN".into(), platform: "android".into(), version_code: 300 }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    let only = std::env::var("SINKS_ONLY").unwrap_or_default();
    runtime.block_on(async {
        if only.is_empty() || only == "throughput" {
            throughput().await;
        }
        if only.is_empty() || only == "lag" {
            lag_under_gifts().await;
        }
    });
}

/// A node with its duties and its results sink on a fresh MySQL database, and every
/// result it settled.
struct Engine {
    node: Node,
    duties: Duties,
    sinks: Sinks,
    settled: Arc<Mutex<BTreeMap<PkId, SettledPk>>>,
    server: String,
    database: String,
    next_anchor: u64,
    _dir: TempDir,
}

impl Engine {
    async fn start(battle_ms: u64) -> Engine {
        static DATABASES: AtomicU64 = AtomicU64::new(0);
        let server = std::env::var("PKD_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned());
        let database = format!("pkd_sinks_bench_{}_{}", std::process::id(), DATABASES.fetch_add(1, Ordering::Relaxed));
        let admin = sqlx::MySqlPool::connect(&server).await.expect("MySQL at PKD_TEST_MYSQL_URL");
        sqlx::query(&format!("CREATE DATABASE {database}")).execute(&admin).await.expect("CREATE DATABASE");
        let dir = TempDir::new().expect("a temporary directory");
        let node = Node::start(NodeConfig { arena_count: 4, ..NodeConfig::single(dir.path()) }).await.expect("a node");
        let duties = Duties::start(&node);
        for group in node.topology().groups() {
            let action = Action::SetConfig { key: "pk_duration".into(), value: format!("200,{battle_ms},0,600000") };
            assert_eq!(node.propose(group, action).await.expect("config"), Response::Done);
        }
        let settled: Arc<Mutex<BTreeMap<PkId, SettledPk>>> = Arc::default();
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
        let url = format!("{server}/{database}");
        let sinks = Sinks::start(&node, SinksConfig { results_url: Some(url), ..SinksConfig::default() });
        let store_ready = sinks.results();
        until(Duration::from_secs(30), "the results store connects", || store_ready.get().is_some()).await;
        Engine { node, duties, sinks, settled, server, database, next_anchor: 10_000, _dir: dir }
    }

    /// `count` new PKs, each running on its arena; with their anchors.
    async fn start_pks(&mut self, count: u64) -> Vec<(PkId, [UserId; 2])> {
        let mut pks = Vec::new();
        for _ in 0..count {
            let (a, b) = (self.next_anchor, self.next_anchor + 1);
            self.next_anchor += 2;
            let start =
                |anchor: u64| LobbyAction::StartMatch { anchor: UserId(anchor), profile: profile(anchor), request: 0 };
            assert_eq!(self.node.propose_lobby(start(a)).await.expect("start"), Response::Waiting);
            match self.node.propose_lobby(start(b)).await.expect("start") {
                Response::Matched { pk, .. } => pks.push((pk, [UserId(a), UserId(b)])),
                other => panic!("no match: {other:?}"),
            }
        }
        for (pk, _) in &pks {
            let node = &self.node;
            until(Duration::from_secs(10), "the PK reaches its arena", || {
                node.arena_for(*pk).read(|arena| arena.view(*pk).is_some())
            })
            .await;
        }
        pks
    }

    fn settled_count(&self) -> usize {
        self.settled.lock().map(|settled| settled.len()).unwrap_or(0)
    }

    fn pending(&self) -> usize {
        self.node.arenas().iter().map(|arena| arena.read(|arena| arena.pending_results().count())).sum()
    }

    /// Checks every row against the engine's results, then stops and drops the database.
    async fn finish(self) {
        let url = format!("{}/{}", self.server, self.database);
        let pool = sqlx::MySqlPool::connect(&url).await.expect("the bench database");
        let rows: Vec<(i64, i64, i64)> =
            sqlx::query_as("SELECT id, source_gifts, target_gifts FROM t_pk").fetch_all(&pool).await.expect("t_pk");
        let settled = self.settled.lock().map(|settled| settled.clone()).unwrap_or_default();
        assert_eq!(rows.len(), settled.len(), "one row per settled PK");
        for (pk, source, target) in rows {
            let result = settled.get(&PkId(pk as u64)).expect("a settled PK");
            assert_eq!((source, target), (result.source.beans, result.target.beans), "PK {pk}");
        }
        pool.close().await;
        self.sinks.shutdown().await;
        self.duties.stop().await;
        self.node.shutdown().await;
        let admin = sqlx::MySqlPool::connect(&self.server).await.expect("MySQL");
        sqlx::query(&format!("DROP DATABASE {}", self.database)).execute(&admin).await.expect("DROP DATABASE");
    }
}

async fn throughput() {
    let count = env("SINKS_PKS", 600);
    let mut engine = Engine::start(8_000).await;
    let pks = engine.start_pks(count).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let mut id = 0;
    for (pk, anchors) in &pks {
        for (side, anchor) in anchors.iter().enumerate() {
            id += 1;
            let gift = Gift {
                id: GiftId(id),
                pk: *pk,
                receiver: *anchor,
                sender: UserId(90_000 + side as u64),
                beans: 10 + id as i64 % 50,
                profile: None,
            };
            let response = engine.node.propose_arena(engine.node.arena_of(*pk), ArenaAction::Gift(gift)).await;
            assert!(matches!(response, Ok(Response::GiftCounted { .. })), "{response:?}");
        }
    }
    until(Duration::from_secs(60), "a first PK settles", || engine.settled_count() > 0).await;
    let first = Instant::now();
    until(Duration::from_secs(60), "every PK settles", || engine.settled_count() == pks.len()).await;
    let all_settled = first.elapsed();
    until(Duration::from_secs(300), "the outbox drains", || engine.pending() == 0).await;
    let drained = first.elapsed();
    let counters = engine.sinks.metrics().snapshot();
    println!(
        "results into MySQL: {count} PKs settled over {:.2} s; stored, read back and confirmed {:.2} s after the first \
         settled: {:.0} settled PKs/s; lag behind the engine max {} ms; {} written, {} repaired",
        all_settled.as_secs_f64(),
        drained.as_secs_f64(),
        count as f64 / drained.as_secs_f64().max(0.001),
        counters.result_lag_max_ms,
        counters.results_written,
        counters.results_repaired,
    );
    engine.finish().await;
}

/// A PK and its two anchors.
type Pair = (PkId, [UserId; 2]);

async fn lag_under_gifts() {
    let per_wave = env("SINKS_WAVE", 100);
    let waves = env("SINKS_WAVES", 8);
    let proposers = env("SINKS_PROPOSERS", 128);
    let battle = Duration::from_millis(4_000);
    let mut engine = Engine::start(battle.as_millis() as u64).await;

    // Proposers send gifts to the PKs in battle, as a gift service would.
    let active: Arc<Mutex<Vec<Pair>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let counted = Arc::new(AtomicU64::new(0));
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
                if let Ok(Response::GiftCounted { .. }) =
                    node.propose_arena(node.arena_of(pk), ArenaAction::Gift(gift)).await
                {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let began = Instant::now();
    let mut started = 0usize;
    let mut running: std::collections::VecDeque<(Instant, Vec<Pair>)> = Default::default();
    for _ in 0..waves {
        let wave_start = Instant::now();
        let pks = engine.start_pks(per_wave).await;
        started += pks.len();
        tokio::time::sleep(Duration::from_millis(250)).await;
        running.push_back((Instant::now(), pks));
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
    let during = engine.sinks.metrics().snapshot();
    until(Duration::from_secs(60), "every PK settles", || engine.settled_count() == started).await;
    until(Duration::from_secs(300), "the outbox drains", || engine.pending() == 0).await;
    let counters = engine.sinks.metrics().snapshot();
    println!(
        "results lag under gifts: {started} PKs in {waves} waves, {gifts} gifts counted in {seconds:.1} s ({:.0} gifts/s); \
         while gifting {} results stored, lag max {} ms; overall lag max {} ms; gift-total writes {}",
        gifts as f64 / seconds,
        during.results_written,
        during.result_lag_max_ms,
        counters.result_lag_max_ms,
        counters.gift_totals_written,
    );
    engine.finish().await;
}
