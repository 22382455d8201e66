//! The Redis read cache: the source's keys, for the app's home page and search.
//!
//! | key | type | content |
//! |-----|------|---------|
//! | `pkm` | hash | anchor id → `{"anchor":id,"since":ms}` for each anchor matching |
//! | `pkr` | hash | room id → PK id for each room in a PK |
//! | `room_pk_invited` | sorted set | anchor id, score = invitation time (ms): the cool-down |
//! | `pk_${pkId}` | hash | the PK's state, with the field names of push type 10 |
//! | `pkg_${pkId}_${anchorId}` | sorted set | sender id, score = beans given to that anchor |
//!
//! Every write carries absolute values, so replaying a change is harmless. Every key
//! is given an expiry on each write ([`PK_TTL_SECONDS`], [`DIRECTORY_TTL_SECONDS`]),
//! so that a stopped cluster leaves no everlasting PK tags behind. Redis is only a
//! cache: [`RedisCache::rebuild`] rewrites it from the replicated state.

use pkd_raft::effect::{CacheChange, GifterTotal, SideView};
use pkd_raft::{PkId, PkView, RoomId, TimestampMs, UserId};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Pipeline};
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

/// Expiry of `pk_*` and `pkg_*` keys, refreshed on each write.
pub const PK_TTL_SECONDS: i64 = 2 * 3600;
/// Expiry of `pkm`, `pkr` and `room_pk_invited`, refreshed on each write.
pub const DIRECTORY_TTL_SECONDS: i64 = 3600;

const MATCHING_KEY: &str = "pkm";
const ROOMS_KEY: &str = "pkr";
const INVITED_KEY: &str = "room_pk_invited";

/// Why a cache write failed. The caller counts these; the cache is rebuilt later.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
}

type Result<T> = std::result::Result<T, CacheError>;

/// The whole cache content, from the replicated state, for [`RedisCache::rebuild`].
#[derive(Clone, Debug, Default)]
pub struct CacheSnapshot {
    /// Anchors matching, and since when.
    pub matching: Vec<(UserId, TimestampMs)>,
    /// Rooms in a PK.
    pub rooms_in_pk: Vec<(RoomId, PkId)>,
    /// Anchors in their invitation cool-down, and when they were invited.
    pub invited: Vec<(UserId, TimestampMs)>,
    /// The running PKs.
    pub pks: Vec<RunningPk>,
}

/// A running PK: its state and every gifter's total on each side.
#[derive(Clone, Debug)]
pub struct RunningPk {
    pub view: PkView,
    pub source_gifters: Vec<GifterTotal>,
    pub target_gifters: Vec<GifterTotal>,
}

/// What [`RedisCache::rebuild`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RebuildReport {
    /// `pk_*` / `pkg_*` keys of PKs no longer running, deleted.
    pub stale_keys_removed: usize,
    /// Keys written.
    pub keys_written: usize,
}

/// The Redis read cache, over a reconnecting connection.
#[derive(Clone)]
pub struct RedisCache {
    connection: ConnectionManager,
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
        Ok(RedisCache { connection })
    }

    /// Applies a batch of changes in one pipelined round trip (a MULTI/EXEC block, so
    /// readers never see half a batch). `render` gives the current state of a PK for
    /// [`CacheChange::Pk`] (the change only says "render it from the replica"); a PK
    /// it returns `None` for is skipped.
    pub async fn apply<F>(&self, changes: &[CacheChange], mut render: F) -> Result<()>
    where
        F: FnMut(PkId) -> Option<PkView>,
    {
        if changes.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut directory_keys = BTreeSet::new();
        for change in changes {
            match change {
                CacheChange::Matching { anchor, since } => {
                    match since {
                        Some(since) => pipe.hset(MATCHING_KEY, anchor.0, matching_json(*anchor, *since)),
                        None => pipe.hdel(MATCHING_KEY, anchor.0),
                    }
                    .ignore();
                    directory_keys.insert(MATCHING_KEY);
                }
                CacheChange::RoomInPk { room, pk } => {
                    match pk {
                        Some(pk) => pipe.hset(ROOMS_KEY, room.0, pk.0),
                        None => pipe.hdel(ROOMS_KEY, room.0),
                    }
                    .ignore();
                    directory_keys.insert(ROOMS_KEY);
                }
                CacheChange::Invited { anchor, at } => {
                    match at {
                        Some(at) => pipe.zadd(INVITED_KEY, anchor.0, at.0),
                        None => pipe.zrem(INVITED_KEY, anchor.0),
                    }
                    .ignore();
                    directory_keys.insert(INVITED_KEY);
                }
                CacheChange::Pk { pk } => {
                    if let Some(view) = render(*pk) {
                        push_pk(&mut pipe, &view);
                    }
                }
                CacheChange::GifterTotal { pk, anchor, sender, beans } => {
                    let key = gifters_key(*pk, *anchor);
                    pipe.zadd(&key, sender.0, *beans).ignore();
                    pipe.expire(&key, PK_TTL_SECONDS).ignore();
                }
                CacheChange::PkEnded { pk, anchors } => {
                    pipe.del(&[pk_key(*pk), gifters_key(*pk, anchors[0]), gifters_key(*pk, anchors[1])]).ignore();
                }
            }
        }
        for key in directory_keys {
            pipe.expire(key, DIRECTORY_TTL_SECONDS).ignore();
        }
        self.run(&pipe).await
    }

    /// Writes `pk_${pkId}` from a PK's state, in one round trip.
    pub async fn write_pk(&self, view: &PkView) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        push_pk(&mut pipe, view);
        self.run(&pipe).await
    }

    /// Rewrites the whole cache from the replicated state: the directory keys
    /// ([`RedisCache::rebuild_directory`]) and the keys of every PK
    /// ([`RedisCache::rebuild_pks`]).
    pub async fn rebuild(&self, snapshot: &CacheSnapshot) -> Result<RebuildReport> {
        let directory = self.rebuild_directory(snapshot).await?;
        let pks = self.rebuild_pks(&snapshot.pks, |_| true).await?;
        Ok(RebuildReport {
            stale_keys_removed: pks.stale_keys_removed,
            keys_written: directory.keys_written + pks.keys_written,
        })
    }

    /// Rewrites `pkm`, `pkr` and `room_pk_invited` from the lobby's state (the PKs in
    /// `snapshot` are not looked at), in one MULTI/EXEC block.
    pub async fn rebuild_directory(&self, snapshot: &CacheSnapshot) -> Result<RebuildReport> {
        let mut report = RebuildReport::default();
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.del(&[MATCHING_KEY, ROOMS_KEY, INVITED_KEY]).ignore();
        let matching: Vec<(u64, String)> =
            snapshot.matching.iter().map(|(anchor, since)| (anchor.0, matching_json(*anchor, *since))).collect();
        if !matching.is_empty() {
            pipe.hset_multiple(MATCHING_KEY, &matching).ignore();
            pipe.expire(MATCHING_KEY, DIRECTORY_TTL_SECONDS).ignore();
            report.keys_written += 1;
        }
        let rooms: Vec<(u64, u64)> = snapshot.rooms_in_pk.iter().map(|(room, pk)| (room.0, pk.0)).collect();
        if !rooms.is_empty() {
            pipe.hset_multiple(ROOMS_KEY, &rooms).ignore();
            pipe.expire(ROOMS_KEY, DIRECTORY_TTL_SECONDS).ignore();
            report.keys_written += 1;
        }
        let invited: Vec<(i64, u64)> = snapshot.invited.iter().map(|(anchor, at)| (at.0, anchor.0)).collect();
        if !invited.is_empty() {
            pipe.zadd_multiple(INVITED_KEY, &invited).ignore();
            pipe.expire(INVITED_KEY, DIRECTORY_TTL_SECONDS).ignore();
            report.keys_written += 1;
        }
        self.run(&pipe).await?;
        Ok(report)
    }

    /// Rewrites the `pk_` and `pkg_` keys of the running PKs `running`, in one MULTI/EXEC
    /// block, and deletes the `pk_<id>` and `pkg_<id>_<anchor>` keys of every other PK that
    /// `owned` accepts (found by SCAN; keys that merely start with `pk_` but do not have
    /// that exact shape, such as other services' keys, are left alone).
    pub async fn rebuild_pks(&self, running: &[RunningPk], owned: impl Fn(PkId) -> bool) -> Result<RebuildReport> {
        let mut keep = BTreeSet::new();
        for running in running {
            let view = &running.view;
            keep.insert(pk_key(view.pk));
            keep.insert(gifters_key(view.pk, view.source.anchor));
            keep.insert(gifters_key(view.pk, view.target.anchor));
        }
        let mut stale = BTreeSet::new();
        for pattern in ["pk_*", "pkg_*"] {
            let mut connection = self.connection.clone();
            let mut keys = connection.scan_match::<_, String>(pattern).await?;
            while let Some(key) = keys.next_item().await {
                if pk_of_key(&key).is_some_and(&owned) && !keep.contains(&key) {
                    stale.insert(key);
                }
            }
        }
        let mut report = RebuildReport { stale_keys_removed: stale.len(), keys_written: 0 };
        let mut pipe = redis::pipe();
        pipe.atomic();
        let deleted: Vec<String> = stale.into_iter().chain(keep).collect();
        if !deleted.is_empty() {
            pipe.del(deleted).ignore();
        }
        for running in running {
            let view = &running.view;
            push_pk(&mut pipe, view);
            report.keys_written += 1;
            for (anchor, gifters) in
                [(view.source.anchor, &running.source_gifters), (view.target.anchor, &running.target_gifters)]
            {
                let members: Vec<(i64, u64)> = gifters.iter().map(|g| (g.beans, g.sender.0)).collect();
                if !members.is_empty() {
                    let key = gifters_key(view.pk, anchor);
                    pipe.zadd_multiple(&key, &members).ignore();
                    pipe.expire(&key, PK_TTL_SECONDS).ignore();
                    report.keys_written += 1;
                }
            }
        }
        self.run(&pipe).await?;
        Ok(report)
    }

    async fn run(&self, pipe: &Pipeline) -> Result<()> {
        let mut connection = self.connection.clone();
        pipe.query_async::<()>(&mut connection).await?;
        Ok(())
    }
}

/// `pk_${pkId}`.
pub fn pk_key(pk: PkId) -> String {
    format!("pk_{pk}")
}

/// `pkg_${pkId}_${anchorId}`.
pub fn gifters_key(pk: PkId, anchor: UserId) -> String {
    format!("pkg_{pk}_{anchor}")
}

/// The PK of a key that is exactly `pk_<digits>` or `pkg_<digits>_<digits>`.
fn pk_of_key(key: &str) -> Option<PkId> {
    let number = |s: &str| (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten();
    if let Some(rest) = key.strip_prefix("pkg_") {
        let (pk, anchor) = rest.split_once('_')?;
        number(anchor)?;
        number(pk).map(PkId)
    } else {
        key.strip_prefix("pk_").and_then(number).map(PkId)
    }
}

fn matching_json(anchor: UserId, since: TimestampMs) -> String {
    json!({ "anchor": anchor.0, "since": since.0 }).to_string()
}

/// Queues the rewrite of `pk_${pkId}`: the key is replaced as a whole (so a field
/// that no longer applies disappears) and its expiry refreshed.
fn push_pk(pipe: &mut Pipeline, view: &PkView) {
    let key = pk_key(view.pk);
    let mut fields: Vec<(&str, String)> = vec![
        ("pkId", view.pk.0.to_string()),
        ("type", "1".to_owned()),
        ("status", view.status.push_code().to_string()),
        ("startTime", view.start_time.0.to_string()),
        ("endTime", view.end_time.0.to_string()),
        ("sequelType", "0".to_owned()),
        ("interfered", u8::from(view.interfered).to_string()),
    ];
    for (prefix, side) in [("source", &view.source), ("target", &view.target)] {
        side_fields(&mut fields, prefix, side);
    }
    if let Some(winner) = view.winner {
        fields.push(("winner", winner.0.to_string()));
    }
    pipe.del(&key).ignore();
    pipe.hset_multiple(&key, &fields).ignore();
    pipe.expire(&key, PK_TTL_SECONDS).ignore();
}

fn side_fields(fields: &mut Vec<(&'static str, String)>, prefix: &str, side: &SideView) {
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
    let names: [&'static str; 6] = if prefix == "source" {
        ["sourceUser", "sourceRoom", "sourceGifts", "sourceOnline", "sourceAudience", "sourceTopGifts"]
    } else {
        ["targetUser", "targetRoom", "targetGifts", "targetOnline", "targetAudience", "targetTopGifts"]
    };
    fields.push((names[0], side.anchor.0.to_string()));
    fields.push((names[1], side.room.0.to_string()));
    fields.push((names[2], side.beans.to_string()));
    fields.push((names[3], side.online.to_string()));
    fields.push((names[4], side.audience.to_string()));
    fields.push((names[5], serde_json::Value::Array(top).to_string()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exact_pk_key_shapes_are_ours() {
        assert_eq!(pk_of_key("pk_12"), Some(PkId(12)));
        assert_eq!(pk_of_key("pkg_12_2099955"), Some(PkId(12)));
        assert_eq!(pk_of_key("pk_config"), None);
        assert_eq!(pk_of_key("pk_"), None);
        assert_eq!(pk_of_key("pkg_12"), None);
        assert_eq!(pk_of_key("pkg_12_x"), None);
        assert_eq!(pk_of_key("pkr"), None);
    }
}
