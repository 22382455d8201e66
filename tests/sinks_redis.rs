//! The Redis read cache against a real Redis.
//!
//! These tests own Redis database 9 (`PKD_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379/9`): the key names are fixed by the source's contract, so
//! they cannot be prefixed; each test flushes the database first, and the tests of
//! this binary take turns.

use pkd::sinks::redis_cache::{DIRECTORY_TTL_SECONDS, PK_TTL_SECONDS};
use pkd::sinks::{CacheSnapshot, RebuildReport, RedisCache, RunningPk};
use pkd_raft::effect::{CacheChange, GifterTotal, PkStatus, SideView, TopGifter};
use pkd_raft::{GifterProfile, PkId, PkView, RoomId, TimestampMs, UserId};
use redis::aio::MultiplexedConnection;
use std::collections::BTreeMap;
use tokio::sync::{Mutex, MutexGuard};

static DATABASE_9: Mutex<()> = Mutex::const_new(());

const A1: UserId = UserId(2_099_955);
const A2: UserId = UserId(2_099_934);
const FAN: UserId = UserId(2_100_216);
const T: i64 = 1_625_811_819_212;

fn url() -> String {
    std::env::var("PKD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/9".to_owned())
}

/// Takes database 9 for the test and empties it.
async fn fresh() -> (MutexGuard<'static, ()>, RedisCache, MultiplexedConnection) {
    let guard = DATABASE_9.lock().await;
    let client = redis::Client::open(url()).expect("a Redis URL");
    let mut raw =
        client.get_multiplexed_async_connection().await.expect("Redis on 127.0.0.1:6379 (PKD_TEST_REDIS_URL)");
    let _: () = redis::cmd("FLUSHDB").query_async(&mut raw).await.expect("FLUSHDB");
    let cache = RedisCache::connect(&url()).await.expect("connect the cache");
    (guard, cache, raw)
}

async fn key_type(raw: &mut MultiplexedConnection, key: &str) -> String {
    redis::cmd("TYPE").arg(key).query_async(raw).await.expect("TYPE")
}

async fn ttl(raw: &mut MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("TTL").arg(key).query_async(raw).await.expect("TTL")
}

async fn hash(raw: &mut MultiplexedConnection, key: &str) -> BTreeMap<String, String> {
    redis::cmd("HGETALL").arg(key).query_async(raw).await.expect("HGETALL")
}

async fn zset(raw: &mut MultiplexedConnection, key: &str) -> Vec<(String, f64)> {
    redis::cmd("ZRANGE").arg(key).arg(0).arg(-1).arg("WITHSCORES").query_async(raw).await.expect("ZRANGE")
}

async fn keys(raw: &mut MultiplexedConnection) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(raw).await.expect("KEYS");
    keys.sort();
    keys
}

fn view(pk: u64, winner: Option<UserId>) -> PkView {
    PkView {
        pk: PkId(pk),
        status: PkStatus::Battle,
        interfered: true,
        start_time: TimestampMs(T),
        end_time: TimestampMs(T + 301_500),
        source: SideView {
            anchor: A1,
            room: RoomId(A1.0),
            beans: 250,
            online: true,
            audience: 12,
            top_gifters: vec![TopGifter {
                sender: FAN,
                beans: 250,
                profile: Some(GifterProfile {
                    nickname: "hello world".to_owned(),
                    headimg: "1607997789588.jpg".to_owned(),
                    level: 14,
                    roomlevel: 1,
                    vip: 0,
                    sex: 2,
                }),
            }],
        },
        target: SideView {
            anchor: A2,
            room: RoomId(3_099_934),
            beans: 0,
            online: false,
            audience: 0,
            top_gifters: vec![],
        },
        winner,
    }
}

fn expected_pk_hash(pk: u64) -> BTreeMap<String, String> {
    [
        ("pkId", pk.to_string()),
        ("type", "1".to_owned()),
        ("status", "1".to_owned()),
        ("startTime", T.to_string()),
        ("endTime", (T + 301_500).to_string()),
        ("sequelType", "0".to_owned()),
        ("interfered", "1".to_owned()),
        ("sourceUser", "2099955".to_owned()),
        ("sourceRoom", "2099955".to_owned()),
        ("sourceGifts", "250".to_owned()),
        ("sourceOnline", "true".to_owned()),
        ("sourceAudience", "12".to_owned()),
        (
            "sourceTopGifts",
            r#"[{"consume":250,"user":{"headimg":"1607997789588.jpg","id":2100216,"level":14,"nickname":"hello world","roomlevel":1,"sex":2,"vip":0}}]"#.to_owned(),
        ),
        ("targetUser", "2099934".to_owned()),
        ("targetRoom", "3099934".to_owned()),
        ("targetGifts", "0".to_owned()),
        ("targetOnline", "false".to_owned()),
        ("targetAudience", "0".to_owned()),
        ("targetTopGifts", "[]".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// A PK starting and running: matching, rooms, invitations, state, gifts.
fn changes() -> Vec<CacheChange> {
    vec![
        CacheChange::Matching { anchor: A1, since: Some(TimestampMs(T - 5_000)) },
        CacheChange::Matching { anchor: A2, since: Some(TimestampMs(T - 1_000)) },
        CacheChange::Invited { anchor: UserId(7), at: Some(TimestampMs(T - 9_000)) },
        CacheChange::Invited { anchor: A2, at: Some(TimestampMs(T - 3_000)) },
        CacheChange::Invited { anchor: A2, at: None },
        CacheChange::Matching { anchor: A2, since: None },
        CacheChange::RoomInPk { room: RoomId(A1.0), pk: Some(PkId(5)) },
        CacheChange::RoomInPk { room: RoomId(3_099_934), pk: Some(PkId(5)) },
        CacheChange::RoomInPk { room: RoomId(1), pk: Some(PkId(4)) },
        CacheChange::RoomInPk { room: RoomId(1), pk: None },
        CacheChange::Pk { pk: PkId(5) },
        // No state for PK 6 in the replica: nothing is written.
        CacheChange::Pk { pk: PkId(6) },
        CacheChange::GifterTotal { pk: PkId(5), anchor: A1, sender: FAN, beans: 100 },
        CacheChange::GifterTotal { pk: PkId(5), anchor: A1, sender: FAN, beans: 250 },
        CacheChange::GifterTotal { pk: PkId(5), anchor: A2, sender: UserId(9), beans: 30 },
    ]
}

fn render(pk: PkId) -> Option<PkView> {
    (pk == PkId(5)).then(|| view(5, None))
}

async fn check_running_pk_5(raw: &mut MultiplexedConnection) {
    assert_eq!(keys(raw).await, ["pk_5", "pkg_5_2099934", "pkg_5_2099955", "pkm", "pkr", "room_pk_invited"]);
    for (key, kind) in [
        ("pkm", "hash"),
        ("pkr", "hash"),
        ("room_pk_invited", "zset"),
        ("pk_5", "hash"),
        ("pkg_5_2099955", "zset"),
        ("pkg_5_2099934", "zset"),
    ] {
        assert_eq!(key_type(raw, key).await, kind, "TYPE {key}");
        let limit =
            if key.starts_with("pk_") || key.starts_with("pkg_") { PK_TTL_SECONDS } else { DIRECTORY_TTL_SECONDS };
        let left = ttl(raw, key).await;
        assert!(left > 0 && left <= limit, "TTL {key} = {left}");
    }
    let matching = hash(raw, "pkm").await;
    assert_eq!(matching.len(), 1);
    let entry: serde_json::Value = serde_json::from_str(&matching["2099955"]).expect("JSON");
    assert_eq!(entry, serde_json::json!({ "anchor": 2_099_955, "since": T - 5_000 }));
    assert_eq!(
        hash(raw, "pkr").await,
        BTreeMap::from([("2099955".to_owned(), "5".to_owned()), ("3099934".to_owned(), "5".to_owned()),])
    );
    assert_eq!(zset(raw, "room_pk_invited").await, vec![("7".to_owned(), (T - 9_000) as f64)]);
    assert_eq!(hash(raw, "pk_5").await, expected_pk_hash(5));
    assert_eq!(zset(raw, "pkg_5_2099955").await, vec![("2100216".to_owned(), 250.0)]);
    assert_eq!(zset(raw, "pkg_5_2099934").await, vec![("9".to_owned(), 30.0)]);
}

#[tokio::test]
async fn a_batch_writes_the_source_keys_with_expiries() {
    let (_guard, cache, mut raw) = fresh().await;
    cache.apply(&changes(), render).await.expect("apply");
    check_running_pk_5(&mut raw).await;

    // Replayed (a restart replays the log): the same content.
    cache.apply(&changes(), render).await.expect("apply again");
    check_running_pk_5(&mut raw).await;

    // An empty batch is no round trip and no change.
    cache.apply(&[], render).await.expect("empty batch");
    check_running_pk_5(&mut raw).await;
}

#[tokio::test]
async fn pk_ended_removes_its_keys() {
    let (_guard, cache, mut raw) = fresh().await;
    cache.apply(&changes(), render).await.expect("apply");
    let end = [
        CacheChange::RoomInPk { room: RoomId(A1.0), pk: None },
        CacheChange::RoomInPk { room: RoomId(3_099_934), pk: None },
        CacheChange::PkEnded { pk: PkId(5), anchors: [A1, A2] },
    ];
    cache.apply(&end, render).await.expect("apply the end");
    // pkr is empty, so Redis dropped it; pkm and the cool-down stay.
    assert_eq!(keys(&mut raw).await, ["pkm", "room_pk_invited"]);
}

#[tokio::test]
async fn write_pk_replaces_the_whole_hash() {
    let (_guard, cache, mut raw) = fresh().await;
    cache.write_pk(&view(5, Some(A1))).await.expect("write");
    let mut expected = expected_pk_hash(5);
    expected.insert("winner".to_owned(), "2099955".to_owned());
    assert_eq!(hash(&mut raw, "pk_5").await, expected);
    let left = ttl(&mut raw, "pk_5").await;
    assert!(left > 0 && left <= PK_TTL_SECONDS);

    // A draw is winner 0; an undecided PK has no winner field.
    cache.write_pk(&view(5, Some(UserId(0)))).await.expect("write");
    assert_eq!(hash(&mut raw, "pk_5").await["winner"], "0");
    cache.write_pk(&view(5, None)).await.expect("write");
    assert_eq!(hash(&mut raw, "pk_5").await, expected_pk_hash(5));
}

#[tokio::test]
async fn rebuild_rewrites_everything_and_drops_stale_pks() {
    let (_guard, cache, mut raw) = fresh().await;
    // Left over by a cluster that lost track: an ended PK, stale directory entries,
    // and a key of another service that merely starts with `pk_`.
    cache.apply(&changes(), render).await.expect("apply");
    let stale = [
        CacheChange::Matching { anchor: UserId(42), since: Some(TimestampMs(1)) },
        CacheChange::RoomInPk { room: RoomId(77), pk: Some(PkId(77)) },
        CacheChange::GifterTotal { pk: PkId(77), anchor: UserId(1), sender: UserId(2), beans: 3 },
        CacheChange::GifterTotal { pk: PkId(5), anchor: A1, sender: UserId(99), beans: 1 },
    ];
    cache.apply(&stale, render).await.expect("apply");
    cache.write_pk(&view(77, None)).await.expect("write");
    let _: () = redis::cmd("SET").arg("pk_config").arg("not ours").query_async(&mut raw).await.expect("SET");

    let snapshot = CacheSnapshot {
        matching: vec![(A1, TimestampMs(T - 5_000))],
        rooms_in_pk: vec![(RoomId(A1.0), PkId(5)), (RoomId(3_099_934), PkId(5))],
        invited: vec![(UserId(7), TimestampMs(T - 9_000))],
        pks: vec![RunningPk {
            view: view(5, None),
            source_gifters: vec![GifterTotal { sender: FAN, beans: 250, times: 2, rank: 1 }],
            target_gifters: vec![GifterTotal { sender: UserId(9), beans: 30, times: 1, rank: 1 }],
        }],
    };
    let report = cache.rebuild(&snapshot).await.expect("rebuild");
    assert_eq!(report, RebuildReport { stale_keys_removed: 2, keys_written: 6 });
    let removed: i64 = redis::cmd("DEL").arg("pk_config").query_async(&mut raw).await.expect("DEL");
    assert_eq!(removed, 1, "rebuild left the other service's key alone");
    // Exactly the state of a cache kept up to date: the stray gifter 99 is gone too.
    check_running_pk_5(&mut raw).await;
}

#[tokio::test]
async fn rebuild_of_an_idle_cluster_empties_the_cache() {
    let (_guard, cache, mut raw) = fresh().await;
    cache.apply(&changes(), render).await.expect("apply");
    let report = cache.rebuild(&CacheSnapshot::default()).await.expect("rebuild");
    assert_eq!(report.stale_keys_removed, 3);
    assert_eq!(keys(&mut raw).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_failed_write_is_an_error_not_a_panic() {
    let (_guard, cache, mut raw) = fresh().await;
    let _: () = redis::cmd("SET").arg("pkr").arg("not a hash").query_async(&mut raw).await.expect("SET");
    let change = CacheChange::RoomInPk { room: RoomId(1), pk: Some(PkId(5)) };
    let result = cache.apply(&[change], render).await;
    assert!(result.is_err(), "{result:?}");
}
