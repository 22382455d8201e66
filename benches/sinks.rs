//! Results store benchmark: how fast settled PKs reach MySQL (written, read back, repaired
//! if need be, confirmed through raft) and how far the results duty trails the engine.
//!
//! One node with its duties and sinks (as `pkd serve` runs them) settles `SINKS_PKS` PKs
//! (default 600), each with a few gifts, within about a second of each other; the bench
//! reports settled PKs per second from the first settlement to the drained outbox, and the
//! largest lag between a settlement and its row. Then it checks every row against the
//! engine's results.
//!
//! `PKD_TEST_MYSQL_URL=mysql://user:password@127.0.0.1:3306 cargo bench --bench sinks`
//! (`scripts/test`'s MariaDB: `PKD_TEST_KEEP_SERVICES=1 scripts/test --test it sinks_sql`
//! leaves it running; its URL is in `target/test-services/mariadb`). A database
//! `pkd_sinks_bench_<pid>` is made and dropped.

use std::collections::BTreeMap;
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
    runtime.block_on(run());
}

async fn run() {
    let server = std::env::var("PKD_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned());
    let count = env("SINKS_PKS", 600);
    let database = format!("pkd_sinks_bench_{}", std::process::id());
    let admin = sqlx::MySqlPool::connect(&server).await.expect("MySQL at PKD_TEST_MYSQL_URL");
    sqlx::query(&format!("CREATE DATABASE {database}")).execute(&admin).await.expect("CREATE DATABASE");

    let dir = TempDir::new().expect("a temporary directory");
    let node = Node::start(NodeConfig { arena_count: 4, ..NodeConfig::single(dir.path()) }).await.expect("a node");
    let duties = Duties::start(&node);
    for group in node.topology().groups() {
        let action = Action::SetConfig { key: "pk_duration".into(), value: "200,8000,0,600000".into() };
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
    let sinks = Sinks::start(&node, SinksConfig { results_url: Some(url.clone()), ..SinksConfig::default() });
    let store_ready = sinks.results();
    until(Duration::from_secs(30), "the results store connects", || store_ready.get().is_some()).await;

    // The PKs, all made within a few seconds: they settle within about a second.
    let mut pks = Vec::new();
    for pair in 0..count {
        let (a, b) = (10_000 + 2 * pair, 10_001 + 2 * pair);
        let start =
            |anchor: u64| LobbyAction::StartMatch { anchor: UserId(anchor), profile: profile(anchor), request: 0 };
        assert_eq!(node.propose_lobby(start(a)).await.expect("start"), Response::Waiting);
        match node.propose_lobby(start(b)).await.expect("start") {
            Response::Matched { pk, .. } => pks.push((pk, [UserId(a), UserId(b)])),
            other => panic!("no match: {other:?}"),
        }
    }
    for (pk, _) in &pks {
        until(Duration::from_secs(10), "the PK reaches its arena", || {
            node.arena_for(*pk).read(|arena| arena.view(*pk).is_some())
        })
        .await;
    }
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
            let response = node.propose_arena(node.arena_of(*pk), ArenaAction::Gift(gift)).await.expect("gift");
            assert!(matches!(response, Response::GiftCounted { .. }), "{response:?}");
        }
    }

    until(Duration::from_secs(60), "a first PK settles", || settled.lock().is_ok_and(|settled| !settled.is_empty()))
        .await;
    let first = Instant::now();
    until(Duration::from_secs(60), "every PK settles", || {
        settled.lock().is_ok_and(|settled| settled.len() == pks.len())
    })
    .await;
    let all_settled = first.elapsed();
    let pending =
        || node.arenas().iter().map(|arena| arena.read(|arena| arena.pending_results().count())).sum::<usize>();
    until(Duration::from_secs(300), "the outbox drains", || pending() == 0).await;
    let drained = first.elapsed();
    let counters = sinks.metrics().snapshot();
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

    // Every row is the engine's: one t_pk row per settled PK, with its scores.
    let pool = sqlx::MySqlPool::connect(&url).await.expect("the bench database");
    let rows: Vec<(i64, i64, i64)> =
        sqlx::query_as("SELECT id, source_gifts, target_gifts FROM t_pk").fetch_all(&pool).await.expect("t_pk");
    let settled = settled.lock().map(|settled| settled.clone()).unwrap_or_default();
    assert_eq!(rows.len(), settled.len(), "one row per settled PK");
    for (pk, source, target) in rows {
        let result = settled.get(&PkId(pk as u64)).expect("a settled PK");
        assert_eq!((source, target), (result.source.beans, result.target.beans), "PK {pk}");
    }
    sinks.shutdown().await;
    duties.stop().await;
    node.shutdown().await;
    sqlx::query(&format!("DROP DATABASE {database}")).execute(&admin).await.expect("DROP DATABASE");
}
