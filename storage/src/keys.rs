//! Where things live inside the sled database.
//!
//! One sled database per node holds every raft group. Each group owns two trees:
//!
//! - `pkd/raft/<group>/log`: the raft log and the raft metadata of the group. Log entries are
//!   stored under `b'e'` followed by the log index as 8 big-endian bytes, so sled's byte order is
//!   the log order and a range scan returns entries by increasing index. The metadata keys start
//!   with `b'm'` and therefore sort after every entry: `m:vote`, `m:committed` and `m:purged`
//!   (the last purged log id). Keeping both in one tree lets a purge drop entries and move the
//!   purge mark in a single atomic sled batch.
//! - `pkd/raft/<group>/snapshot`: the group's latest snapshot under the single key `current`.
//!
//! Values are postcard encodings of openraft's own types.

use crate::GroupId;

/// First byte of every log-entry key.
const ENTRY_TAG: u8 = b'e';

/// Length of a log-entry key: the tag plus a big-endian `u64` index.
pub(crate) const ENTRY_KEY_LEN: usize = 9;

/// Key of the last vote saved by the group.
pub(crate) const VOTE: &[u8] = b"m:vote";

/// Key of the last committed log id saved by the group.
pub(crate) const COMMITTED: &[u8] = b"m:committed";

/// Key of the id of the last log entry removed by a purge.
pub(crate) const PURGED: &[u8] = b"m:purged";

/// Key of the current snapshot in the snapshot tree.
pub(crate) const CURRENT_SNAPSHOT: &[u8] = b"current";

const TREE_PREFIX: &str = "pkd/raft/";
const LOG_TREE_SUFFIX: &str = "/log";
const SNAPSHOT_TREE_SUFFIX: &str = "/snapshot";

/// The key of the log entry at `index`.
pub(crate) fn entry(index: u64) -> [u8; ENTRY_KEY_LEN] {
    let mut key = [0u8; ENTRY_KEY_LEN];
    key[0] = ENTRY_TAG;
    key[1..].copy_from_slice(&index.to_be_bytes());
    key
}

/// The log index encoded in an entry key, or `None` if the key is not an entry key.
pub(crate) fn entry_index(key: &[u8]) -> Option<u64> {
    if key.len() != ENTRY_KEY_LEN || key[0] != ENTRY_TAG {
        return None;
    }
    let mut index = [0u8; 8];
    index.copy_from_slice(&key[1..]);
    Some(u64::from_be_bytes(index))
}

/// Name of the sled tree holding a group's log and raft metadata.
pub fn log_tree_name(group: GroupId) -> String {
    format!("{TREE_PREFIX}{}{LOG_TREE_SUFFIX}", group.0)
}

/// Name of the sled tree holding a group's snapshot.
pub fn snapshot_tree_name(group: GroupId) -> String {
    format!("{TREE_PREFIX}{}{SNAPSHOT_TREE_SUFFIX}", group.0)
}

/// The group whose log tree has this name, if it is one of ours.
pub(crate) fn group_of_log_tree(name: &[u8]) -> Option<GroupId> {
    let name = std::str::from_utf8(name).ok()?;
    let id = name.strip_prefix(TREE_PREFIX)?.strip_suffix(LOG_TREE_SUFFIX)?;
    id.parse().ok().map(GroupId)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_keys_sort_like_their_indexes() {
        let indexes = [0, 1, 255, 256, 65_535, 65_536, 1 << 32, u64::MAX - 1, u64::MAX];
        for pair in indexes.windows(2) {
            assert!(entry(pair[0]) < entry(pair[1]), "{} vs {}", pair[0], pair[1]);
        }
    }

    #[test]
    fn entry_keys_sort_before_metadata() {
        for meta in [VOTE, COMMITTED, PURGED] {
            assert!(entry(u64::MAX).as_slice() < meta);
        }
    }

    #[test]
    fn entry_index_round_trips_and_rejects_other_keys() {
        assert_eq!(entry_index(&entry(0)), Some(0));
        assert_eq!(entry_index(&entry(1 << 40)), Some(1 << 40));
        assert_eq!(entry_index(VOTE), None);
        assert_eq!(entry_index(&[ENTRY_TAG, 1, 2]), None);
    }

    #[test]
    fn log_tree_names_parse_back_to_their_group() {
        assert_eq!(group_of_log_tree(log_tree_name(GroupId(7)).as_bytes()), Some(GroupId(7)));
        assert_eq!(group_of_log_tree(snapshot_tree_name(GroupId(7)).as_bytes()), None);
        assert_eq!(group_of_log_tree(b"__sled__default"), None);
    }
}
