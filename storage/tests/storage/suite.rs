//! openraft's own storage conformance suite, run against the sled log store.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use openraft::ErrorSubject;
use openraft::ErrorVerb;
use openraft::StorageError;
use openraft::testing::log::StoreBuilder;
use openraft::testing::log::Suite;
use pkd_storage::LogStore;
use pkd_storage::Store;
use tempfile::TempDir;

use crate::kv::KvConfig;
use crate::kv::KvStateMachine;

fn to_storage_error(error: impl std::fmt::Display) -> StorageError<KvConfig> {
    let io_error = std::io::Error::other(error.to_string());
    StorageError::from_io_error(ErrorSubject::Store, ErrorVerb::Write, io_error)
}

/// Every build gets a fresh database in its own temporary directory.
struct FreshDatabase;

impl StoreBuilder<KvConfig, LogStore<KvConfig>, KvStateMachine, TempDir> for FreshDatabase {
    async fn build(&self) -> Result<(TempDir, LogStore<KvConfig>, KvStateMachine), StorageError<KvConfig>> {
        let dir = TempDir::new().map_err(to_storage_error)?;
        let store = Store::open(dir.path()).map_err(to_storage_error)?;
        let log = store.log_store(1).map_err(to_storage_error)?;
        let snapshots = store.snapshot_store(1).map_err(to_storage_error)?;
        let state_machine = KvStateMachine::open(snapshots).map_err(to_storage_error)?;
        Ok((dir, log, state_machine))
    }
}

/// Every build gets a new raft group in one database shared by all builds, like the groups of
/// one pkd node. Any leak between groups would break the suite's expectations of a fresh store.
struct SharedDatabase {
    store: Store,
    next_group: AtomicU64,
    _dir: TempDir,
}

impl StoreBuilder<KvConfig, LogStore<KvConfig>, KvStateMachine> for SharedDatabase {
    async fn build(&self) -> Result<((), LogStore<KvConfig>, KvStateMachine), StorageError<KvConfig>> {
        let group = self.next_group.fetch_add(1, Ordering::Relaxed);
        let log = self.store.log_store(group).map_err(to_storage_error)?;
        let snapshots = self.store.snapshot_store(group).map_err(to_storage_error)?;
        let state_machine = KvStateMachine::open(snapshots).map_err(to_storage_error)?;
        Ok(((), log, state_machine))
    }
}

#[tokio::test]
async fn openraft_suite_on_a_fresh_database_per_test() -> Result<(), StorageError<KvConfig>> {
    Suite::test_all(FreshDatabase).await
}

#[tokio::test]
async fn openraft_suite_on_many_groups_of_one_database() -> Result<(), StorageError<KvConfig>> {
    let dir = TempDir::new().map_err(to_storage_error)?;
    let store = Store::open(dir.path()).map_err(to_storage_error)?;
    let builder = SharedDatabase { store: store.clone(), next_group: AtomicU64::new(0), _dir: dir };
    Suite::test_all(builder).await?;
    let groups = store.groups();
    assert!(groups.len() > 40, "the suite should have used one group per case, got {groups:?}");
    Ok(())
}
