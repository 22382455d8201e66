//! The Redis read cache as the app's readers see it, written by three real `pkd serve`
//! processes: scores and versions never go backwards while every group's leadership moves
//! under gift load, and a stopped cluster leaves nothing that outlives the live expiry.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use pkd_cluster::LocalCluster;
use redis::aio::MultiplexedConnection;

use crate::common::{REDIS_DATABASE, cluster_options, gift, settled_leader, short_pks, start_cluster_with, start_pk};

fn redis_url() -> String {
    std::env::var("PKD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/9".to_owned())
}

async fn redis() -> anyhow::Result<MultiplexedConnection> {
    Ok(redis::Client::open(redis_url())?.get_multiplexed_async_connection().await?)
}

/// Three nodes writing the cache into the tests' Redis database (emptied first).
async fn cluster_with_cache() -> anyhow::Result<(LocalCluster, MultiplexedConnection)> {
    let mut raw = redis().await?;
    let _: () = redis::cmd("FLUSHDB").query_async(&mut raw).await?;
    let mut options = cluster_options();
    options.extra_args.extend(["--redis-url".to_owned(), redis_url()]);
    let cluster = start_cluster_with(options)?;
    for group in 0..=2 {
        settled_leader(&cluster, group).await?;
    }
    Ok((cluster, raw))
}

async fn keys(raw: &mut MultiplexedConnection, pattern: &str) -> anyhow::Result<Vec<String>> {
    Ok(redis::cmd("KEYS").arg(pattern).query_async(raw).await?)
}

/// What the readers saw of each key: the highest `pk_` version and `pkg_` score per
/// sender so far; a read below them is a write that went backwards.
#[derive(Default)]
struct Highest {
    versions: BTreeMap<String, i64>,
    scores: BTreeMap<(String, String), f64>,
    reads: u64,
}

impl Highest {
    async fn read(&mut self, raw: &mut MultiplexedConnection) -> anyhow::Result<()> {
        for key in keys(raw, "pk_*").await? {
            let version: Option<i64> = redis::cmd("HGET").arg(&key).arg("version").query_async(raw).await?;
            if let Some(version) = version {
                let seen = self.versions.entry(key.clone()).or_insert(version);
                ensure!(version >= *seen, "{key} went back from version {seen} to {version}");
                *seen = version;
            }
        }
        for key in keys(raw, "pkg_*").await? {
            let scores: Vec<(String, f64)> =
                redis::cmd("ZRANGE").arg(&key).arg(0).arg(-1).arg("WITHSCORES").query_async(raw).await?;
            for (sender, score) in scores {
                let seen = self.scores.entry((key.clone(), sender.clone())).or_insert(score);
                ensure!(score >= *seen, "{key} {sender} went back from {seen} to {score}");
                *seen = score;
            }
        }
        self.reads += 1;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reader_sees_a_value_go_backwards_while_leaders_move_under_gifts() -> anyhow::Result<()> {
    let _turn = REDIS_DATABASE.lock().await;
    let (cluster, mut raw) = cluster_with_cache().await?;
    short_pks(&cluster.admin(1)?, 60_000).await?;
    let mut pks = Vec::new();
    for pair in 0..4u64 {
        let room = 20_001 + 2 * pair;
        pks.push((start_pk(&cluster, 1 + pair % 3, room).await?, room));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;

    // Gifts flow from one task; leaderships move from another; this one reads.
    let anchors: Vec<u64> = (0..4u64).flat_map(|pair| [20_001 + 2 * pair, 20_002 + 2 * pair]).collect();
    let gifts = {
        let cluster_nodes = cluster.ids();
        let options = cluster.options().clone();
        let addresses: Vec<_> = cluster_nodes.iter().map(|id| cluster.node(*id).map(|node| node.client_addr)).collect();
        let addresses: Vec<std::net::SocketAddr> = addresses.into_iter().collect::<Result<_, _>>()?;
        let anchors = anchors.clone();
        tokio::spawn(async move {
            let mut acknowledged = 0u64;
            for id in 1..=600u64 {
                let node = addresses[(id % 3) as usize];
                let api = pkd_cluster::AdminClient::new(node.to_string(), options.gift_token.clone());
                let body = serde_json::json!({"id": 900_000 + id, "receiver": anchors[(id % 8) as usize],
                                              "sender": 30_000 + id % 5, "beans": 1 + id % 7});
                if api.call::<serde_json::Value>("POST", "/internal/gifts", Some(&body)).await.is_ok() {
                    acknowledged += 1;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            acknowledged
        })
    };
    let admin = cluster.admin(1)?;
    let mut moves = 0;
    let mut highest = Highest::default();
    let began = Instant::now();
    while !gifts.is_finished() {
        if began.elapsed() > Duration::from_millis(500) * (moves + 1) && moves < 12 {
            let group = u64::from(moves % 3);
            let to = 1 + u64::from(moves + 1) % 3;
            if admin.transfer_leader(group, to).await.is_ok() {
                moves += 1;
            }
        }
        highest.read(&mut raw).await?;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let acknowledged = gifts.await?;
    admin.balance().await?;
    ensure!(moves >= 6, "only {moves} leadership moves");
    ensure!(acknowledged > 300, "only {acknowledged} gifts acknowledged");
    // Once quiet, the cache holds exactly the engine's totals.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        highest.read(&mut raw).await?;
        let mut cached = 0i64;
        for (pk, _) in &pks {
            let key = format!("pk_{}", pk.id);
            let fields: BTreeMap<String, String> = redis::cmd("HGETALL").arg(&key).query_async(&mut raw).await?;
            let side = |name: &str| fields.get(name).and_then(|value| value.parse::<i64>().ok()).unwrap_or(0);
            cached += side("sourceGifts") + side("targetGifts");
        }
        let mut engine = 0i64;
        for (pk, room) in &mut pks {
            let state = pk.source.command(42, *room, serde_json::json!({})).await?;
            let result = &state["result"];
            engine += result["sourceGifts"].as_i64().context("sourceGifts")?
                + result["targetGifts"].as_i64().context("targetGifts")?;
        }
        if cached == engine {
            println!(
                "{acknowledged} gifts, {moves} leadership moves, {} reads of every pk_ and pkg_ key: nothing went backwards",
                highest.reads
            );
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "the cache holds {cached} beans, the engine {engine}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_cluster_leaves_only_keys_that_expire_within_a_minute() -> anyhow::Result<()> {
    let _turn = REDIS_DATABASE.lock().await;
    let (mut cluster, mut raw) = cluster_with_cache().await?;
    short_pks(&cluster.admin(1)?, 60_000).await?;
    let pk = start_pk(&cluster, 1, 21_001).await?;
    // A waiting anchor too, so that `pkm` has an entry.
    let mut waiting = crate::common::Client::connect(&cluster, 2, 21_101).await?;
    waiting.enter(21_101, true).await?;
    ensure!(waiting.start().await? == "000000");
    tokio::time::sleep(Duration::from_millis(400)).await;
    ensure!(gift(&cluster, 1, 1, 21_001, 31_000, 5).await?["code"] == "000000");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let present = keys(&mut raw, "*").await?;
        let expected = [format!("pk_{}", pk.id), "pkr".to_owned(), "pkm".to_owned()];
        if expected.iter().all(|key| present.contains(key)) {
            break;
        }
        ensure!(Instant::now() < deadline, "the cache never showed the PK: {present:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for id in cluster.ids() {
        cluster.kill(id)?;
    }
    // Nobody renews them now: every key goes within the live expiry (60 s).
    let present = keys(&mut raw, "*").await?;
    ensure!(!present.is_empty());
    for key in &present {
        let ttl: i64 = redis::cmd("TTL").arg(key).query_async(&mut raw).await?;
        ensure!(
            (1..=pkd::sinks::redis_cache::LIVE_TTL_SECONDS).contains(&ttl),
            "{key} would stay {ttl} s after the cluster stopped"
        );
    }
    println!("after the cluster stopped: {} keys, each expiring within 60 s", present.len());
    Ok(())
}
