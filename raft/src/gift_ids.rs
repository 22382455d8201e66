//! The set of gift ids a PK has counted.

use crate::ids::GiftId;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

/// A hash set with a fixed hash function (no per-process random seed, so the core stays
/// deterministic) that serializes in sorted order (so snapshots are byte-identical on
/// every replica).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GiftIdSet(HashSet<GiftId, BuildHasherDefault<IdHasher>>);

impl GiftIdSet {
    pub fn contains(&self, id: GiftId) -> bool {
        self.0.contains(&id)
    }

    pub fn insert(&mut self, id: GiftId) -> bool {
        self.0.insert(id)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// Hashes one u64 by multiplication with a large odd constant and a fold of the high
/// half: gift ids are not chosen by attackers (they come from the trusted gift service),
/// so speed wins over flood resistance here.
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01B3);
        }
    }

    fn write_u64(&mut self, value: u64) {
        let product = u128::from(value ^ self.0).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835);
        self.0 = (product as u64) ^ ((product >> 64) as u64);
    }
}

impl Serialize for GiftIdSet {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut ids: Vec<u64> = self.0.iter().map(|id| id.0).collect();
        ids.sort_unstable();
        ids.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for GiftIdSet {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let ids = Vec::<u64>::deserialize(deserializer)?;
        let mut set = GiftIdSet::default();
        set.0.reserve(ids.len());
        for id in ids {
            set.insert(GiftId(id));
        }
        Ok(set)
    }
}
