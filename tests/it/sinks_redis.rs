//! The Redis read cache against a real Redis: the source's keys with their types and
//! fields, writes versioned by log index through one script (never backwards), a lost
//! cache refused until its group is rewritten, and the keys' expiries.
//!
//! These tests own Redis database 9 (`PKD_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379/9`): the key names are fixed by the source's contract, so
//! they cannot be prefixed; each test flushes the database first, and the tests of
//! this binary take turns.

use std::collections::BTreeMap;

use pkd::sinks::redis_cache::{
    self, ENDED_TTL_SECONDS, LIVE_TTL_SECONDS, Op, directory_ops, ended_pk_ops, gifter_ops, gifters_key, marker_key,
    pk_key, pk_ops, running_pk_expiries, running_pk_ops,
};
use pkd::sinks::{Directory, RedisCache, RunningPk, Writes, Written};
use pkd_raft::effect::{GifterTotal, SideView, TopGifter};
use pkd_raft::{GifterProfile, PkId, PkStatus, PkView, RoomId, TimestampMs, UserId};
use redis::aio::MultiplexedConnection;
use tokio::sync::MutexGuard;

type TestResult = anyhow::Result<()>;

/// The lobby's group (the directory keys) and an arena's (its PKs' keys).
const LOBBY: u64 = 0;
const ARENA: u64 = 1;

const PK: PkId = PkId(5);
const A1: UserId = UserId(2_099_955);
const A2: UserId = UserId(2_099_934);
const A2_ROOM: RoomId = RoomId(3_099_934);
const FAN: UserId = UserId(2_100_216);
const T: i64 = 1_625_811_819_212;

fn url() -> String {
    std::env::var("PKD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/9".to_owned())
}

/// Takes database 9 for the test and empties it.
async fn fresh() -> (MutexGuard<'static, ()>, RedisCache, MultiplexedConnection) {
    let guard = crate::common::REDIS_DATABASE.lock().await;
    let client = redis::Client::open(url()).expect("a Redis URL");
    let mut raw =
        client.get_multiplexed_async_connection().await.expect("Redis on 127.0.0.1:6379 (PKD_TEST_REDIS_URL)");
    flush(&mut raw).await;
    let cache = RedisCache::connect(&url()).await.expect("connect the cache");
    (guard, cache, raw)
}

async fn flush(raw: &mut MultiplexedConnection) {
    let _: () = redis::cmd("FLUSHDB").query_async(raw).await.expect("FLUSHDB");
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

async fn marker(raw: &mut MultiplexedConnection, group: u64) -> Option<u64> {
    redis::cmd("GET").arg(marker_key(group)).query_async(raw).await.expect("GET")
}

async fn keys(raw: &mut MultiplexedConnection) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(raw).await.expect("KEYS");
    keys.sort();
    keys
}

/// Every key with its type and content: what a write that "changes nothing" leaves alone.
async fn everything(raw: &mut MultiplexedConnection) -> BTreeMap<String, String> {
    let mut all = BTreeMap::new();
    for key in keys(raw).await {
        let content = match key_type(raw, &key).await.as_str() {
            "hash" => format!("hash {:?}", hash(raw, &key).await),
            "zset" => format!("zset {:?}", zset(raw, &key).await),
            _ => {
                let value: Option<String> = redis::cmd("GET").arg(&key).query_async(raw).await.expect("GET");
                format!("string {value:?}")
            }
        };
        all.insert(key, content);
    }
    all
}

/// A write of `group` at log `index`: a rewrite of its keys, or changes.
fn rewrite(group: u64, index: u64, ops: Vec<Op>) -> Writes {
    Writes { group, index, rewrite: true, ops }
}

fn changes(group: u64, index: u64, ops: Vec<Op>) -> Writes {
    Writes { group, index, rewrite: false, ops }
}

fn applied() -> Written {
    Written::Applied { missing: 0 }
}

/// The lobby's directory: A1 matching, both rooms in PK 5, anchor 7 in its cool-down.
fn directory() -> Directory {
    Directory {
        matching: vec![(A1, TimestampMs(T - 5_000))],
        rooms_in_pk: vec![(RoomId(A1.0), PK), (A2_ROOM, PK)],
        invited: vec![(UserId(7), TimestampMs(T - 9_000))],
    }
}

/// PK 5 with 250 beans from FAN to A1 (a profile with it) and `target_beans` to A2.
fn view(status: PkStatus, target_beans: i64, winner: Option<UserId>) -> PkView {
    PkView {
        pk: PK,
        status,
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
            room: A2_ROOM,
            beans: target_beans,
            online: false,
            audience: 0,
            top_gifters: vec![],
        },
        winner,
    }
}

/// PK 5 in its battle: FAN gave A1 250 beans, user 9 gave A2 30.
fn running_pk() -> RunningPk {
    RunningPk {
        view: view(PkStatus::Battle, 30, None),
        source_gifters: vec![GifterTotal { sender: FAN, beans: 250, times: 2, rank: 1 }],
        target_gifters: vec![GifterTotal { sender: UserId(9), beans: 30, times: 1, rank: 1 }],
    }
}

/// `pk_5` as the source's readers expect it: the field names of push type 10, plus
/// pkd's `version` (the log index of the write).
fn expected_pk_hash(status: &str, target_beans: i64, version: u64) -> BTreeMap<String, String> {
    let top = r#"[{"consume":250,"user":{"headimg":"1607997789588.jpg","id":2100216,"level":14,"nickname":"hello world","roomlevel":1,"sex":2,"vip":0}}]"#;
    [
        ("pkId", "5"),
        ("type", "1"),
        ("status", status),
        ("startTime", &T.to_string()),
        ("endTime", &(T + 301_500).to_string()),
        ("sequelType", "0"),
        ("interfered", "1"),
        ("version", &version.to_string()),
        ("sourceUser", "2099955"),
        ("sourceRoom", "2099955"),
        ("sourceGifts", "250"),
        ("sourceOnline", "true"),
        ("sourceAudience", "12"),
        ("sourceTopGifts", top),
        ("targetUser", "2099934"),
        ("targetRoom", "3099934"),
        ("targetGifts", &target_beans.to_string()),
        ("targetOnline", "false"),
        ("targetAudience", "0"),
        ("targetTopGifts", "[]"),
    ]
    .into_iter()
    .map(|(field, value)| (field.to_owned(), value.to_owned()))
    .collect()
}

/// The directory of [`directory`] and PK 5 of [`running_pk`], each rewritten by its group.
async fn write_directory_and_pk(cache: &RedisCache) -> TestResult {
    assert_eq!(cache.write(&rewrite(LOBBY, 10, directory_ops(&directory()))).await?, applied());
    assert_eq!(cache.write(&rewrite(ARENA, 20, running_pk_ops(&running_pk(), 20))).await?, applied());
    Ok(())
}

#[tokio::test]
async fn the_source_keys_with_their_types_and_fields() -> TestResult {
    let (_guard, cache, mut raw) = fresh().await;
    write_directory_and_pk(&cache).await?;

    assert_eq!(
        (pk_key(PK), gifters_key(PK, A1), marker_key(ARENA)),
        ("pk_5".into(), "pkg_5_2099955".into(), "pkd:cache:1".into())
    );
    assert_eq!(
        keys(&mut raw).await,
        ["pk_5", "pkd:cache:0", "pkd:cache:1", "pkg_5_2099934", "pkg_5_2099955", "pkm", "pkr", "room_pk_invited"]
    );
    for (key, kind) in [
        ("pkm", "hash"),
        ("pkr", "hash"),
        ("room_pk_invited", "zset"),
        ("pk_5", "hash"),
        ("pkg_5_2099955", "zset"),
        ("pkg_5_2099934", "zset"),
        ("pkd:cache:0", "string"),
        ("pkd:cache:1", "string"),
    ] {
        assert_eq!(key_type(&mut raw, key).await, kind, "TYPE {key}");
    }
    let matching = hash(&mut raw, "pkm").await;
    assert_eq!(matching.len(), 1, "{matching:?}");
    let entry: serde_json::Value = serde_json::from_str(&matching["2099955"])?;
    assert_eq!(entry, serde_json::json!({ "anchor": 2_099_955, "since": T - 5_000 }));
    assert_eq!(
        hash(&mut raw, "pkr").await,
        BTreeMap::from([("2099955".to_owned(), "5".to_owned()), ("3099934".to_owned(), "5".to_owned())])
    );
    assert_eq!(zset(&mut raw, "room_pk_invited").await, [("7".to_owned(), (T - 9_000) as f64)]);
    assert_eq!(hash(&mut raw, "pk_5").await, expected_pk_hash("1", 30, 20));
    assert_eq!(zset(&mut raw, "pkg_5_2099955").await, [("2100216".to_owned(), 250.0)]);
    assert_eq!(zset(&mut raw, "pkg_5_2099934").await, [("9".to_owned(), 30.0)]);

    // Changes of the directory, one field at a time, in order.
    let ops = vec![
        redis_cache::matching_op(A2, Some(TimestampMs(T))),
        redis_cache::matching_op(A1, None),
        redis_cache::room_op(RoomId(1), Some(PkId(4))),
        redis_cache::room_op(A2_ROOM, None),
        redis_cache::invited_op(UserId(7), None),
        redis_cache::invited_op(A2, Some(TimestampMs(T + 1))),
    ];
    assert_eq!(cache.write(&changes(LOBBY, 11, ops)).await?, applied());
    assert_eq!(hash(&mut raw, "pkm").await.keys().collect::<Vec<_>>(), ["2099934"]);
    assert_eq!(
        hash(&mut raw, "pkr").await,
        BTreeMap::from([("1".to_owned(), "4".to_owned()), ("2099955".to_owned(), "5".to_owned())])
    );
    assert_eq!(zset(&mut raw, "room_pk_invited").await, [("2099934".to_owned(), (T + 1) as f64)]);

    // A PK's hash is replaced as a whole: a field that no longer applies goes.
    let decided = view(PkStatus::Ending, 30, Some(A1));
    assert_eq!(cache.write(&changes(ARENA, 21, pk_ops(&decided, 21, LIVE_TTL_SECONDS))).await?, applied());
    let mut expected = expected_pk_hash("2", 30, 21);
    expected.insert("winner".to_owned(), "2099955".to_owned());
    assert_eq!(hash(&mut raw, "pk_5").await, expected);
    let undecided = view(PkStatus::Battle, 30, None);
    assert_eq!(cache.write(&changes(ARENA, 22, pk_ops(&undecided, 22, LIVE_TTL_SECONDS))).await?, applied());
    assert_eq!(hash(&mut raw, "pk_5").await, expected_pk_hash("1", 30, 22));
    Ok(())
}

#[tokio::test]
async fn a_write_applies_and_moves_its_group_marker() -> TestResult {
    let (_guard, cache, mut raw) = fresh().await;
    write_directory_and_pk(&cache).await?;
    assert_eq!((marker(&mut raw, LOBBY).await, marker(&mut raw, ARENA).await), (Some(10), Some(20)));
    assert!(cache.has_marker(LOBBY).await? && cache.has_marker(ARENA).await?);
    assert!(!cache.has_marker(2).await?, "a group that never wrote has no marker");

    let more = gifter_ops(PK, A1, &[(FAN, 300), (UserId(8), 5)], LIVE_TTL_SECONDS);
    assert_eq!(cache.write(&changes(ARENA, 23, more.clone())).await?, applied());
    assert_eq!(marker(&mut raw, ARENA).await, Some(23));
    assert_eq!(marker(&mut raw, LOBBY).await, Some(10), "each group has its own marker");
    assert_eq!(zset(&mut raw, "pkg_5_2099955").await, [("8".to_owned(), 5.0), ("2100216".to_owned(), 300.0)]);

    // The same write again (a restart replays the log): applied, the same content.
    let before = everything(&mut raw).await;
    assert_eq!(cache.write(&changes(ARENA, 23, more)).await?, applied());
    assert_eq!(everything(&mut raw).await, before);
    Ok(())
}

#[tokio::test]
async fn a_write_older_than_the_marker_is_stale_and_changes_nothing() -> TestResult {
    let (_guard, cache, mut raw) = fresh().await;
    write_directory_and_pk(&cache).await?;
    let before = everything(&mut raw).await;

    // A leader that lost the lead, or a lagging replica, writes what index 19 held.
    let mut older = pk_ops(&view(PkStatus::Opening, 0, None), 19, LIVE_TTL_SECONDS);
    older.extend(gifter_ops(PK, A2, &[(UserId(9), 500)], LIVE_TTL_SECONDS));
    older.push(Op::Del { key: "pkr".to_owned() });
    assert_eq!(cache.write(&changes(ARENA, 19, older.clone())).await?, Written::Stale);
    assert_eq!(everything(&mut raw).await, before, "a stale write changes nothing");
    // A rewrite is no exception: it may only replace a missing marker.
    assert_eq!(cache.write(&rewrite(ARENA, 19, older)).await?, Written::Stale);
    assert_eq!(everything(&mut raw).await, before);
    assert_eq!(marker(&mut raw, ARENA).await, Some(20));

    // A later write applies; a gifter's total in it never goes down (ZADD GT).
    let mut later = pk_ops(&view(PkStatus::Battle, 40, None), 24, LIVE_TTL_SECONDS);
    later.extend(gifter_ops(PK, A2, &[(UserId(9), 25)], LIVE_TTL_SECONDS));
    assert_eq!(cache.write(&changes(ARENA, 24, later)).await?, applied());
    assert_eq!(hash(&mut raw, "pk_5").await, expected_pk_hash("1", 40, 24));
    assert_eq!(zset(&mut raw, "pkg_5_2099934").await, [("9".to_owned(), 30.0)]);
    Ok(())
}

#[tokio::test]
async fn a_flushed_cache_refuses_changes_until_the_group_is_rewritten() -> TestResult {
    let (_guard, cache, mut raw) = fresh().await;
    // An empty Redis holds no marker: a group's first write must be a rewrite.
    let first = changes(ARENA, 20, running_pk_ops(&running_pk(), 20));
    assert_eq!(cache.write(&first).await?, Written::MarkerLost);
    assert_eq!(keys(&mut raw).await, Vec::<String>::new());
    write_directory_and_pk(&cache).await?;

    flush(&mut raw).await;
    assert!(!cache.has_marker(ARENA).await?);
    // Changes on top of keys that are gone would leave a partial PK: refused.
    let gift = gifter_ops(PK, A1, &[(FAN, 260)], LIVE_TTL_SECONDS);
    assert_eq!(cache.write(&changes(ARENA, 21, gift)).await?, Written::MarkerLost);
    let renew = running_pk_expiries(PK, [A1, A2]);
    assert_eq!(cache.write(&changes(ARENA, 21, renew)).await?, Written::MarkerLost);
    let rooms = vec![redis_cache::room_op(RoomId(1), Some(PkId(4)))];
    assert_eq!(cache.write(&changes(LOBBY, 11, rooms)).await?, Written::MarkerLost);
    assert_eq!(keys(&mut raw).await, Vec::<String>::new(), "nothing applied, no marker set");

    // The rewrite from the replica applies, at any index.
    assert_eq!(cache.write(&rewrite(ARENA, 21, running_pk_ops(&running_pk(), 21))).await?, applied());
    assert_eq!(cache.write(&rewrite(LOBBY, 11, directory_ops(&directory()))).await?, applied());
    assert_eq!((marker(&mut raw, LOBBY).await, marker(&mut raw, ARENA).await), (Some(11), Some(21)));
    assert_eq!(hash(&mut raw, "pk_5").await, expected_pk_hash("1", 30, 21));
    assert_eq!(hash(&mut raw, "pkr").await.len(), 2);
    assert_eq!(zset(&mut raw, "pkg_5_2099955").await, [("2100216".to_owned(), 250.0)]);
    Ok(())
}

#[tokio::test]
async fn live_keys_expire_unless_renewed_and_an_ended_pk_keeps_its_final_state() -> TestResult {
    let (_guard, cache, mut raw) = fresh().await;
    write_directory_and_pk(&cache).await?;
    for key in keys(&mut raw).await {
        let left = ttl(&mut raw, &key).await;
        assert!(left > 0 && left <= LIVE_TTL_SECONDS, "TTL {key} = {left}");
    }

    // The live leaders renew their keys' expiry.
    for key in ["pkm", "pkr", "room_pk_invited", "pk_5", "pkg_5_2099955", "pkg_5_2099934"] {
        let _: () = redis::cmd("EXPIRE").arg(key).arg(5).query_async(&mut raw).await?;
    }
    let renew_directory = changes(LOBBY, 12, redis_cache::directory_expiries());
    assert_eq!(cache.write(&renew_directory).await?, applied());
    assert_eq!(cache.write(&changes(ARENA, 22, running_pk_expiries(PK, [A1, A2]))).await?, applied());
    for key in ["pkm", "pkr", "room_pk_invited", "pk_5", "pkg_5_2099955", "pkg_5_2099934"] {
        let left = ttl(&mut raw, key).await;
        assert!(left > 5 && left <= LIVE_TTL_SECONDS, "renewed TTL {key} = {left}");
    }

    // The PK ends: its final state (status 2, the winner) and its gifters stay longer.
    let final_view = view(PkStatus::Done, 30, Some(A1));
    assert_eq!(cache.write(&changes(ARENA, 23, ended_pk_ops(&final_view, [A1, A2], 23))).await?, applied());
    let mut expected = expected_pk_hash("2", 30, 23);
    expected.insert("winner".to_owned(), "2099955".to_owned());
    assert_eq!(hash(&mut raw, "pk_5").await, expected);
    assert_eq!(zset(&mut raw, "pkg_5_2099955").await, [("2100216".to_owned(), 250.0)]);
    assert_eq!(zset(&mut raw, "pkg_5_2099934").await, [("9".to_owned(), 30.0)]);
    for key in ["pk_5", "pkg_5_2099955", "pkg_5_2099934"] {
        let left = ttl(&mut raw, key).await;
        assert!(left > LIVE_TTL_SECONDS && left <= ENDED_TTL_SECONDS, "ended TTL {key} = {left}");
    }

    // An abnormal end: status 3, no winner (0).
    let aborted = view(PkStatus::Error, 30, Some(UserId(0)));
    assert_eq!(cache.write(&changes(ARENA, 24, ended_pk_ops(&aborted, [A1, A2], 24))).await?, applied());
    let pk = hash(&mut raw, "pk_5").await;
    assert_eq!((pk["status"].as_str(), pk["winner"].as_str()), ("3", "0"));
    let left = ttl(&mut raw, "pk_5").await;
    assert!(left > LIVE_TTL_SECONDS && left <= ENDED_TTL_SECONDS, "ended TTL pk_5 = {left}");
    Ok(())
}

#[tokio::test]
async fn a_required_expiry_of_a_missing_key_counts_as_missing() -> TestResult {
    let (_guard, cache, mut raw) = fresh().await;
    // Nobody gave to A2 yet: PK 5 has no pkg_ key for that side.
    let running = RunningPk { target_gifters: vec![], ..running_pk() };
    assert_eq!(cache.write(&rewrite(ARENA, 20, running_pk_ops(&running, 20))).await?, applied());
    assert_eq!(keys(&mut raw).await, ["pk_5", "pkd:cache:1", "pkg_5_2099955"]);

    // Renewing: only the pk_ key is required; a side without gifts is not missing.
    assert_eq!(cache.write(&changes(ARENA, 21, running_pk_expiries(PK, [A1, A2]))).await?, applied());
    let _: () = redis::cmd("DEL").arg("pk_5").query_async(&mut raw).await?;
    let renewed = cache.write(&changes(ARENA, 22, running_pk_expiries(PK, [A1, A2]))).await?;
    assert_eq!(renewed, Written::Applied { missing: 1 });
    assert_eq!(keys(&mut raw).await, ["pkd:cache:1", "pkg_5_2099955"], "an expiry creates no key");

    let required = |key: &str| Op::Expire { key: key.to_owned(), seconds: LIVE_TTL_SECONDS, required: true };
    let optional = Op::Expire { key: "pk_6".to_owned(), seconds: LIVE_TTL_SECONDS, required: false };
    let ops = vec![required("pk_5"), required("pkg_5_2099955"), required("pk_7"), optional];
    assert_eq!(cache.write(&changes(ARENA, 23, ops)).await?, Written::Applied { missing: 2 });
    Ok(())
}

#[tokio::test]
async fn a_large_rewrite_fits_the_script() -> TestResult {
    let (_guard, cache, mut raw) = fresh().await;
    let crowd = Directory {
        matching: (1..=5_000).map(|anchor| (UserId(anchor), TimestampMs(T))).collect(),
        rooms_in_pk: (1..=3_000).map(|room| (RoomId(room), PkId(room))).collect(),
        invited: (1..=2_500).map(|anchor| (UserId(anchor), TimestampMs(T))).collect(),
    };
    assert_eq!(cache.write(&rewrite(LOBBY, 10, directory_ops(&crowd))).await?, applied());
    let matching: u64 = redis::cmd("HLEN").arg("pkm").query_async(&mut raw).await?;
    let rooms: u64 = redis::cmd("HLEN").arg("pkr").query_async(&mut raw).await?;
    let invited: u64 = redis::cmd("ZCARD").arg("room_pk_invited").query_async(&mut raw).await?;
    assert_eq!((matching, rooms, invited), (5_000, 3_000, 2_500));
    Ok(())
}

#[tokio::test]
async fn a_failed_write_is_an_error_not_a_panic() -> TestResult {
    let (_guard, cache, mut raw) = fresh().await;
    let _: () = redis::cmd("SET").arg("pkr").arg("not a hash").query_async(&mut raw).await?;
    let rooms = vec![redis_cache::room_op(RoomId(1), Some(PK))];
    let result = cache.write(&rewrite(LOBBY, 10, rooms)).await;
    assert!(result.is_err(), "{result:?}");
    // The duty rewrites its group after a failure: the directory's rewrite replaces the
    // key.
    assert_eq!(cache.write(&rewrite(LOBBY, 11, directory_ops(&directory()))).await?, applied());
    assert_eq!(key_type(&mut raw, "pkr").await, "hash");
    Ok(())
}
