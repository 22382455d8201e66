//! The Redis read cache: the source's keys, for the app's home page and search.
//!
//! | key | type | content | written by |
//! |-----|------|---------|------------|
//! | `pkm` | hash | anchor id → `{"anchor":id,"since":ms}` for each anchor matching | the lobby's leader |
//! | `pkr` | hash | room id → PK id for each room in a PK | the lobby's leader |
//! | `room_pk_invited` | sorted set | anchor id, score = invitation time (ms): the cool-down | the lobby's leader |
//! | `pk_${pkId}` | hash | the PK's state, with the field names of push type 10, and `version` | its arena's leader |
//! | `pkg_${pkId}_${anchorId}` | sorted set | sender id, score = beans given to that anchor | its arena's leader |
//! | `pkd:cache:${group}` | string | the log index of the group's last write: the marker | that group's leader |
//!
//! Every write of a group is one [`Writes`]: operations as of the group's replica at log
//! index `index`, run by one Lua script that refuses them if the cache already holds a
//! later write of that group (the marker holds a higher index). A leader that lost the
//! lead, or a replica that lags, can never move a value backwards. A change refused
//! because the marker is missing means the cache lost the group's keys (a flush, an
//! eviction, a new Redis): the group's keys are then rewritten as a whole.
//!
//! Keys expire unless renewed: [`LIVE_TTL_SECONDS`] for what describes the present (the
//! directory, running PKs, the markers), which the live leaders renew every
//! [`RENEW_EVERY`]: a stopped cluster stops tagging rooms within a minute. An ended PK's
//! keys keep its final state for [`ENDED_TTL_SECONDS`].
//!
//! The scripts assume a standalone Redis (or one that keeps all of pkd's keys on one
//! node): they touch keys not passed as `KEYS`.

use pkd_raft::effect::{GifterTotal, SideView};
use pkd_raft::{PkId, PkView, RoomId, TimestampMs, UserId};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde_json::json;
use std::time::Duration;

/// Expiry of what describes the present: `pkm`, `pkr`, `room_pk_invited`, running PKs'
/// `pk_`/`pkg_` keys and the markers. The live leaders renew them every [`RENEW_EVERY`].
pub const LIVE_TTL_SECONDS: i64 = 60;
/// How often the live leaders renew their keys' expiry.
pub const RENEW_EVERY: Duration = Duration::from_secs(20);
/// How long an ended PK's keys keep its final state.
pub const ENDED_TTL_SECONDS: i64 = 300;

pub const MATCHING_KEY: &str = "pkm";
pub const ROOMS_KEY: &str = "pkr";
pub const INVITED_KEY: &str = "room_pk_invited";

/// Values per operation at most (Lua unpacks them onto its stack).
const MAX_ARGS_PER_OP: usize = 1_000;

/// Why a cache write failed. The caller counts these; the cache is rewritten later.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
}

type Result<T> = std::result::Result<T, CacheError>;

/// One Redis operation of a [`Writes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Del {
        key: String,
    },
    /// `HSET key field value ...`
    HashSet {
        key: String,
        pairs: Vec<(String, String)>,
    },
    HashDel {
        key: String,
        fields: Vec<String>,
    },
    /// `ZADD key score member ...`; `greater`: only raise existing scores (`GT`).
    ZAdd {
        key: String,
        pairs: Vec<(i64, String)>,
        greater: bool,
    },
    ZRem {
        key: String,
        members: Vec<String>,
    },
    /// `required`: counted as missing if the key does not exist.
    Expire {
        key: String,
        seconds: i64,
        required: bool,
    },
}

impl Op {
    /// The script's arguments for this operation: its name, its key, then its values.
    fn arguments(&self) -> (&'static str, &str, Vec<String>) {
        match self {
            Op::Del { key } => ("del", key, Vec::new()),
            Op::HashSet { key, pairs } => {
                ("hset", key, pairs.iter().flat_map(|(field, value)| [field.clone(), value.clone()]).collect())
            }
            Op::HashDel { key, fields } => ("hdel", key, fields.clone()),
            Op::ZAdd { key, pairs, greater } => (
                if *greater { "zaddgt" } else { "zadd" },
                key,
                pairs.iter().flat_map(|(score, member)| [score.to_string(), member.clone()]).collect(),
            ),
            Op::ZRem { key, members } => ("zrem", key, members.clone()),
            Op::Expire { key, seconds, required } => {
                (if *required { "expire" } else { "touch" }, key, vec![seconds.to_string()])
            }
        }
    }
}

/// A group's writes, as of its replica's log index `index`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Writes {
    pub group: u64,
    pub index: u64,
    /// A rewrite of the group's keys: applied even if the marker is missing.
    pub rewrite: bool,
    pub ops: Vec<Op>,
}

/// What became of a [`Writes`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// Applied; `missing` of its `Expire`s found no key.
    Applied { missing: u64 },
    /// The cache holds a later write of the group: nothing was applied.
    Stale,
    /// The group's marker is gone (its keys with it): nothing was applied; rewrite them.
    MarkerLost,
}

/// Applies a group's writes unless the cache holds a later one (see the module's docs).
/// KEYS[1]: the marker. ARGV: index, rewrite (1/0), the marker's expiry, then for each
/// operation its name, its key, its value count and its values.
const WRITE_SCRIPT: &str = r#"
local held = redis.call('GET', KEYS[1])
local index = tonumber(ARGV[1])
if held then
  if tonumber(held) > index then return {0, 0} end
elseif ARGV[2] ~= '1' then
  return {-1, 0}
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[3])
local missing = 0
local i = 4
while i <= #ARGV do
  local op, key, n = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local args = {}
  for j = 1, n do args[j] = ARGV[i + 2 + j] end
  if op == 'del' then redis.call('DEL', key)
  elseif op == 'hset' then redis.call('HSET', key, unpack(args))
  elseif op == 'hdel' then redis.call('HDEL', key, unpack(args))
  elseif op == 'zadd' then redis.call('ZADD', key, unpack(args))
  elseif op == 'zaddgt' then redis.call('ZADD', key, 'GT', unpack(args))
  elseif op == 'zrem' then redis.call('ZREM', key, unpack(args))
  elseif op == 'expire' then
    if redis.call('EXPIRE', key, args[1]) == 0 then missing = missing + 1 end
  elseif op == 'touch' then redis.call('EXPIRE', key, args[1])
  end
  i = i + 3 + n
end
return {1, missing}
"#;

/// The Redis read cache, over a reconnecting connection.
#[derive(Clone)]
pub struct RedisCache {
    connection: ConnectionManager,
    script: redis::Script,
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache").finish_non_exhaustive()
    }
}

impl RedisCache {
    /// Connects to `redis://host:port/db`. A Redis that is down fails fast (one retry,
    /// 2 s per attempt, 3 s per command): the caller counts the error and tries later.
    pub async fn connect(url: &str) -> Result<RedisCache> {
        RedisCache::connect_with_ca(url, None).await
    }

    /// Connects to `url`; for `rediss://`, trusting the CA certificate in the PEM file
    /// `ca` (the public roots otherwise).
    pub async fn connect_with_ca(url: &str, ca: Option<&std::path::Path>) -> Result<RedisCache> {
        let client = match ca {
            None => redis::Client::open(url)?,
            Some(ca) => {
                let root_cert = std::fs::read(ca).map_err(|error| {
                    redis::RedisError::from((redis::ErrorKind::IoError, "reading the Redis CA", error.to_string()))
                })?;
                let certificates = redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) };
                redis::Client::build_with_tls(url, certificates)?
            }
        };
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_max_delay(500)
            .set_connection_timeout(Duration::from_secs(2))
            .set_response_timeout(Duration::from_secs(3));
        let connection = ConnectionManager::new_with_config(client, config).await?;
        Ok(RedisCache { connection, script: redis::Script::new(WRITE_SCRIPT) })
    }

    /// Applies `writes` in one round trip, atomically, unless the cache holds a later
    /// write of the group.
    pub async fn write(&self, writes: &Writes) -> Result<Written> {
        let mut invocation = self.script.key(marker_key(writes.group));
        invocation.arg(writes.index).arg(if writes.rewrite { "1" } else { "0" }).arg(LIVE_TTL_SECONDS);
        for op in &writes.ops {
            let (name, key, values) = op.arguments();
            invocation.arg(name).arg(key).arg(values.len()).arg(values);
        }
        let mut connection = self.connection.clone();
        let (status, missing): (i64, u64) = invocation.invoke_async(&mut connection).await?;
        Ok(match status {
            1 => Written::Applied { missing },
            0 => Written::Stale,
            _ => Written::MarkerLost,
        })
    }

    /// Whether group `group`'s marker is in the cache (a cheap check that the cache still
    /// holds its keys).
    pub async fn has_marker(&self, group: u64) -> Result<bool> {
        let mut connection = self.connection.clone();
        Ok(redis::cmd("EXISTS").arg(marker_key(group)).query_async::<u64>(&mut connection).await? == 1)
    }
}

/// `pkd:cache:${group}`: the log index of the group's last write.
pub fn marker_key(group: u64) -> String {
    format!("pkd:cache:{group}")
}

/// `pk_${pkId}`.
pub fn pk_key(pk: PkId) -> String {
    format!("pk_{pk}")
}

/// `pkg_${pkId}_${anchorId}`.
pub fn gifters_key(pk: PkId, anchor: UserId) -> String {
    format!("pkg_{pk}_{anchor}")
}

fn matching_json(anchor: UserId, since: TimestampMs) -> String {
    json!({ "anchor": anchor.0, "since": since.0 }).to_string()
}

/// The whole directory, from the lobby's state, for a rewrite.
#[derive(Clone, Debug, Default)]
pub struct Directory {
    /// Anchors matching, and since when.
    pub matching: Vec<(UserId, TimestampMs)>,
    /// Rooms in a PK.
    pub rooms_in_pk: Vec<(RoomId, PkId)>,
    /// Anchors in their invitation cool-down, and when they were invited.
    pub invited: Vec<(UserId, TimestampMs)>,
}

/// A running PK: its state and every gifter's total on each side.
#[derive(Clone, Debug)]
pub struct RunningPk {
    pub view: PkView,
    pub source_gifters: Vec<GifterTotal>,
    pub target_gifters: Vec<GifterTotal>,
}

/// Splits values into operations of at most [`MAX_ARGS_PER_OP`] values each.
fn chunked<T: Clone>(values: &[T], per_value: usize, op: impl Fn(Vec<T>) -> Op) -> Vec<Op> {
    values.chunks((MAX_ARGS_PER_OP / per_value).max(1)).map(|chunk| op(chunk.to_vec())).collect()
}

/// Rewrites `pkm`, `pkr` and `room_pk_invited` as a whole.
pub fn directory_ops(directory: &Directory) -> Vec<Op> {
    let mut ops: Vec<Op> =
        [MATCHING_KEY, ROOMS_KEY, INVITED_KEY].into_iter().map(|key| Op::Del { key: key.to_owned() }).collect();
    let matching: Vec<(String, String)> = directory
        .matching
        .iter()
        .map(|(anchor, since)| (anchor.0.to_string(), matching_json(*anchor, *since)))
        .collect();
    ops.extend(chunked(&matching, 2, |pairs| Op::HashSet { key: MATCHING_KEY.to_owned(), pairs }));
    let rooms: Vec<(String, String)> =
        directory.rooms_in_pk.iter().map(|(room, pk)| (room.0.to_string(), pk.0.to_string())).collect();
    ops.extend(chunked(&rooms, 2, |pairs| Op::HashSet { key: ROOMS_KEY.to_owned(), pairs }));
    let invited: Vec<(i64, String)> =
        directory.invited.iter().map(|(anchor, at)| (at.0, anchor.0.to_string())).collect();
    ops.extend(chunked(&invited, 2, |pairs| Op::ZAdd { key: INVITED_KEY.to_owned(), pairs, greater: false }));
    ops.extend(directory_expiries());
    ops
}

/// Renews the directory keys' expiry.
pub fn directory_expiries() -> Vec<Op> {
    [MATCHING_KEY, ROOMS_KEY, INVITED_KEY]
        .into_iter()
        .map(|key| Op::Expire { key: key.to_owned(), seconds: LIVE_TTL_SECONDS, required: false })
        .collect()
}

/// One change of the directory (`pkm`, `pkr`, `room_pk_invited`).
pub fn matching_op(anchor: UserId, since: Option<TimestampMs>) -> Op {
    match since {
        Some(since) => Op::HashSet {
            key: MATCHING_KEY.to_owned(),
            pairs: vec![(anchor.0.to_string(), matching_json(anchor, since))],
        },
        None => Op::HashDel { key: MATCHING_KEY.to_owned(), fields: vec![anchor.0.to_string()] },
    }
}

pub fn room_op(room: RoomId, pk: Option<PkId>) -> Op {
    match pk {
        Some(pk) => Op::HashSet { key: ROOMS_KEY.to_owned(), pairs: vec![(room.0.to_string(), pk.0.to_string())] },
        None => Op::HashDel { key: ROOMS_KEY.to_owned(), fields: vec![room.0.to_string()] },
    }
}

pub fn invited_op(anchor: UserId, at: Option<TimestampMs>) -> Op {
    match at {
        Some(at) => Op::ZAdd { key: INVITED_KEY.to_owned(), pairs: vec![(at.0, anchor.0.to_string())], greater: false },
        None => Op::ZRem { key: INVITED_KEY.to_owned(), members: vec![anchor.0.to_string()] },
    }
}

/// Replaces `pk_${pkId}` as a whole with `view` at log `index` (so that a field that no
/// longer applies disappears), expiring in `ttl` seconds.
pub fn pk_ops(view: &PkView, index: u64, ttl: i64) -> Vec<Op> {
    let key = pk_key(view.pk);
    let mut fields: Vec<(String, String)> = vec![
        ("pkId".to_owned(), view.pk.0.to_string()),
        ("type".to_owned(), "1".to_owned()),
        ("status".to_owned(), view.status.push_code().to_string()),
        ("startTime".to_owned(), view.start_time.0.to_string()),
        ("endTime".to_owned(), view.end_time.0.to_string()),
        ("sequelType".to_owned(), "0".to_owned()),
        ("interfered".to_owned(), u8::from(view.interfered).to_string()),
        ("version".to_owned(), index.to_string()),
    ];
    for (prefix, side) in [("source", &view.source), ("target", &view.target)] {
        side_fields(&mut fields, prefix, side);
    }
    if let Some(winner) = view.winner {
        fields.push(("winner".to_owned(), winner.0.to_string()));
    }
    vec![
        Op::Del { key: key.clone() },
        Op::HashSet { key: key.clone(), pairs: fields },
        Op::Expire { key, seconds: ttl, required: false },
    ]
}

/// Raises the totals of `anchor`'s gifters in `pkg_${pkId}_${anchor}` (a total never goes
/// down), expiring in `ttl` seconds.
pub fn gifter_ops(pk: PkId, anchor: UserId, totals: &[(UserId, i64)], ttl: i64) -> Vec<Op> {
    if totals.is_empty() {
        return Vec::new();
    }
    let key = gifters_key(pk, anchor);
    let pairs: Vec<(i64, String)> = totals.iter().map(|(sender, beans)| (*beans, sender.0.to_string())).collect();
    let mut ops = chunked(&pairs, 2, |pairs| Op::ZAdd { key: key.clone(), pairs, greater: true });
    ops.push(Op::Expire { key, seconds: ttl, required: false });
    ops
}

/// A running PK's keys as a whole.
pub fn running_pk_ops(running: &RunningPk, index: u64) -> Vec<Op> {
    let view = &running.view;
    let mut ops = pk_ops(view, index, LIVE_TTL_SECONDS);
    for (anchor, gifters) in
        [(view.source.anchor, &running.source_gifters), (view.target.anchor, &running.target_gifters)]
    {
        let totals: Vec<(UserId, i64)> = gifters.iter().map(|gifter| (gifter.sender, gifter.beans)).collect();
        ops.extend(gifter_ops(view.pk, anchor, &totals, LIVE_TTL_SECONDS));
    }
    ops
}

/// A PK's final state, kept for [`ENDED_TTL_SECONDS`], with its gifters' totals.
pub fn ended_pk_ops(final_view: &PkView, anchors: [UserId; 2], index: u64) -> Vec<Op> {
    let mut ops = pk_ops(final_view, index, ENDED_TTL_SECONDS);
    ops.extend(anchors.into_iter().map(|anchor| Op::Expire {
        key: gifters_key(final_view.pk, anchor),
        seconds: ENDED_TTL_SECONDS,
        required: false,
    }));
    ops
}

/// Renews a running PK's keys' expiry; its `pk_` key counts as missing if it is gone.
pub fn running_pk_expiries(pk: PkId, anchors: [UserId; 2]) -> Vec<Op> {
    let mut ops = vec![Op::Expire { key: pk_key(pk), seconds: LIVE_TTL_SECONDS, required: true }];
    // A side without gifts has no pkg_ key: it is not missing.
    ops.extend(anchors.into_iter().map(|anchor| Op::Expire {
        key: gifters_key(pk, anchor),
        seconds: LIVE_TTL_SECONDS,
        required: false,
    }));
    ops
}

fn side_fields(fields: &mut Vec<(String, String)>, prefix: &str, side: &SideView) {
    let top: Vec<serde_json::Value> = side
        .top_gifters
        .iter()
        .map(|gifter| {
            let mut user = json!({ "id": gifter.sender.0 });
            if let Some(profile) = &gifter.profile {
                user["nickname"] = json!(profile.nickname);
                user["headimg"] = json!(profile.headimg);
                user["level"] = json!(profile.level);
                user["roomlevel"] = json!(profile.roomlevel);
                user["vip"] = json!(profile.vip);
                user["sex"] = json!(profile.sex);
            }
            json!({ "consume": gifter.beans, "user": user })
        })
        .collect();
    let field = |name: &str| format!("{prefix}{name}");
    fields.push((field("User"), side.anchor.0.to_string()));
    fields.push((field("Room"), side.room.0.to_string()));
    fields.push((field("Gifts"), side.beans.to_string()));
    fields.push((field("Online"), side.online.to_string()));
    fields.push((field("Audience"), side.audience.to_string()));
    fields.push((field("TopGifts"), serde_json::Value::Array(top).to_string()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_rewrites_are_cut_into_operations_lua_can_unpack() {
        let directory = Directory {
            matching: (1..=1_500).map(|anchor| (UserId(anchor), TimestampMs(7))).collect(),
            ..Directory::default()
        };
        let ops = directory_ops(&directory);
        let sets: Vec<usize> = ops
            .iter()
            .filter_map(|op| match op {
                Op::HashSet { pairs, .. } => Some(pairs.len()),
                _ => None,
            })
            .collect();
        assert_eq!(sets, [500, 500, 500]);
        assert!(ops.iter().all(|op| op.arguments().2.len() <= MAX_ARGS_PER_OP));
    }
}
