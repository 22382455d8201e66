//! `gifts`: gift requests through the gift API, one gift or `--batch N` per request, to
//! `--pks` running PKs (64 by default), and their acknowledgement latency (`ack`). At
//! the end the PKs' scores are read back over WebSocket (command 42) and compared with
//! the gifts the API acknowledged: none may be missing.
//!
//! With `--redis`, the Redis read cache is watched too: every running PK's `pk_` key is
//! read every [`CACHE_READ_EVERY`], and each acknowledged gift is timed from its due time
//! to the first read that shows it (`cache`); the cache's script calls per acknowledged
//! gift come from Redis's own command counters.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use pkd_cluster::app::{self, wall_clock_ms};
use serde_json::json;

use std::collections::BTreeMap;

use redis::aio::MultiplexedConnection;
use tokio::sync::watch;

use super::super::cadence::CadenceRules;
use super::super::gifting::{DeliveryTracker, GiftPlan, drive_gifts};
use super::super::pks::Roster;
use super::super::{Bench, ScenarioOutput};
use super::{battling_pks, outlasting_battle};

pub async fn run(bench: &Bench) -> anyhow::Result<ScenarioOutput> {
    let pks = bench.args.pks.unwrap_or(64);
    bench.target.require_gift_token()?;
    let (roster, anchors) = battling_pks(bench, outlasting_battle(bench), pks, 1_000).await?;
    eprintln!("{pks} PKs in their battle; sending gifts");
    let mut plan = GiftPlan::new(bench.target.clone(), roster.clone(), bench.batch, bench.user_base + 10_000_000);
    let cache = match &bench.args.redis {
        Some(url) => Some(CacheWatch::start(url, roster.clone()).await?),
        None => None,
    };
    plan.tracker = cache.as_ref().map(|cache| cache.tracker.clone());
    let plan = Arc::new(plan);
    let senders = plan.senders(bench.workers())?;
    let mut measurement = bench.begin(false, Duration::from_secs(1));
    let script_calls_before = match &cache {
        Some(cache) => {
            cache.tracker.measure_from(measurement.load_start() + bench.warmup);
            Some(cache.script_calls().await?)
        }
        None => None,
    };
    drive_gifts(senders, measurement.tickets.clone(), measurement.recorder.clone()).await;
    measurement.load_ended(&bench.target).await;
    let finished = bench.end(measurement).await;
    let mut extra_latency = BTreeMap::new();
    let mut cache_details = serde_json::Value::Null;
    if let (Some(cache), Some(before)) = (cache, script_calls_before) {
        // The last gifts reach the cache within a few reads.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let calls = cache.script_calls().await?.saturating_sub(before);
        let acknowledged = plan.acknowledged.load(std::sync::atomic::Ordering::Relaxed).max(1);
        let (tracker, report) = cache.stop().await;
        extra_latency.insert("cache".to_owned(), tracker.delivery());
        cache_details = json!({
            "cache_script_calls": calls,
            "cache_script_calls_per_gift": calls as f64 / acknowledged as f64,
            "cache_reads": report.tracked_pushes,
            "cache_gifts_unseen": report.undelivered,
        });
    }

    // Read the scores back: every acknowledged gift (1 bean each) must be in them, as
    // long as no PK ended during the run (an ended PK's score is no longer readable).
    let acknowledged = plan.acknowledged.load(std::sync::atomic::Ordering::Relaxed);
    let report = roster.report(wall_clock_ms());
    let counted = if report.pks_ended == 0 { settled_scores(bench, &roster, acknowledged).await } else { None };
    anchors.stop().await;
    let mut details = json!({
        "pks": pks,
        "gifts_acknowledged": acknowledged,
        "beans_counted": counted,
        "gifts_missing": counted.map(|counted| acknowledged.saturating_sub(counted)),
        "pks_created": report.pks_created,
        "pks_ended": report.pks_ended,
    });
    if let (Some(details), Some(cache)) = (details.as_object_mut(), cache_details.as_object()) {
        details.extend(cache.clone());
    }
    Ok(ScenarioOutput { finished, primary: "ack", items: Some("gifts"), details, extra_latency })
}

/// How often the cache watcher reads every running PK's `pk_` key.
const CACHE_READ_EVERY: Duration = Duration::from_millis(10);

/// Reads the running PKs' `pk_` keys over and over, as the app's readers would, and feeds
/// what they show to a delivery tracker.
struct CacheWatch {
    tracker: Arc<DeliveryTracker>,
    connection: MultiplexedConnection,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl CacheWatch {
    async fn start(url: &str, roster: Arc<Roster>) -> anyhow::Result<CacheWatch> {
        let client = redis::Client::open(url).context("the --redis URL")?;
        let connection = client.get_multiplexed_async_connection().await.context("connecting to --redis")?;
        let tracker = Arc::new(DeliveryTracker::new(CadenceRules::default()));
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn({
            let (tracker, mut connection) = (tracker.clone(), connection.clone());
            async move {
                let mut every = tokio::time::interval(CACHE_READ_EVERY);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = every.tick() => {}
                        _ = stopped.changed() => return,
                    }
                    let pks: Vec<u64> = roster.running().iter().map(|pk| pk.id).collect();
                    let mut pipe = redis::pipe();
                    for pk in &pks {
                        pipe.cmd("HGETALL").arg(format!("pk_{pk}"));
                    }
                    let Ok(hashes): redis::RedisResult<Vec<BTreeMap<String, String>>> =
                        pipe.query_async(&mut connection).await
                    else {
                        continue;
                    };
                    let at = tokio::time::Instant::now();
                    for fields in hashes {
                        let number = |name: &str| fields.get(name).and_then(|value| value.parse::<i64>().ok());
                        let content = json!({
                            "pkId": number("pkId"),
                            "status": number("status"),
                            "sourceUser": number("sourceUser"),
                            "sourceGifts": number("sourceGifts"),
                            "targetGifts": number("targetGifts"),
                        });
                        tracker.pushed(&content, number("version").unwrap_or(0), at);
                    }
                }
            }
        });
        Ok(CacheWatch { tracker, connection, stop, task })
    }

    /// The cache's script calls so far (Redis's `INFO commandstats`: EVAL and EVALSHA).
    async fn script_calls(&self) -> anyhow::Result<u64> {
        let mut connection = self.connection.clone();
        let info: String = redis::cmd("INFO").arg("commandstats").query_async(&mut connection).await?;
        Ok(info
            .lines()
            .filter(|line| line.starts_with("cmdstat_evalsha:") || line.starts_with("cmdstat_eval:"))
            .filter_map(|line| line.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok())
            .sum())
    }

    async fn stop(self) -> (Arc<DeliveryTracker>, super::super::gifting::DeliveryReport) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let report = self.tracker.finish(wall_clock_ms());
        (self.tracker, report)
    }
}

/// The scores once they hold every acknowledged gift, or as they stand after 5 s. A
/// node answers command 42 from its own replica, which trails the leader by up to a
/// heartbeat, so a read right after the load may miss the last gifts for a moment.
async fn settled_scores(bench: &Bench, roster: &Roster, acknowledged: u64) -> Option<u64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    // Each read as another user: the nodes limit commands per user.
    for reader in bench.user_base + 9_000_000.. {
        let counted = read_scores(bench, roster, reader).await;
        if counted.is_none_or(|counted| counted >= acknowledged) || tokio::time::Instant::now() >= deadline {
            return counted;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// The sum of both sides' beans over every running PK, read with command 42 from the
/// source anchor's room.
async fn read_scores(bench: &Bench, roster: &Roster, reader: u64) -> Option<u64> {
    let mut client = bench.target.connect(0, reader).await.ok()?;
    let mut total = 0u64;
    for (index, pk) in roster.running().into_iter().enumerate() {
        let reply = client.room_state(pk.source).await.ok()?;
        if app::reply_code(&reply) != app::SUCCESS || reply["result"]["pkId"] != pk.id {
            return None;
        }
        let side = |name: &str| reply["result"][name].as_u64().unwrap_or(0);
        total += side("sourceGifts") + side("targetGifts");
        // Stay within the connection's rate limit: bursts of 40, then 20 commands/s.
        if index >= 30 {
            tokio::time::sleep(Duration::from_millis(55)).await;
        }
    }
    client.close().await;
    Some(total)
}
