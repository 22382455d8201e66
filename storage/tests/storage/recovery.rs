//! Our own checks: what a reopened database recovers, isolation of groups that share a database,
//! snapshots, damaged bytes, and flushing before acknowledging.

use std::collections::BTreeSet;
use std::io;

use openraft::RaftLogReader;
use openraft::Vote;
use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use openraft::storage::RaftLogStorageExt;
use openraft::storage::RaftSnapshotBuilder;
use openraft::storage::RaftStateMachine;
use openraft::testing::log_id;
use openraft::type_config::TypeConfigExt;
use openraft::type_config::alias::EntryOf;
use openraft::type_config::alias::LogIdOf;
use openraft::type_config::alias::SnapshotMetaOf;
use openraft::type_config::alias::StoredMembershipOf;
use openraft::type_config::alias::VoteOf;
use pkd_storage::GroupId;
use pkd_storage::LogStore;
use pkd_storage::Store;
use pkd_storage::keys;
use tempfile::TempDir;

use crate::kv::KvConfig;
use crate::kv::KvStateMachine;
use crate::kv::Put;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn id(term: u64, index: u64) -> LogIdOf<KvConfig> {
    log_id::<KvConfig>(term, 0, index)
}

/// A normal entry whose payload names its group and index, so a mix-up shows.
fn put(group: u64, term: u64, index: u64) -> EntryOf<KvConfig> {
    EntryOf::<KvConfig>::new_normal(id(term, index), Put { key: format!("g{group}"), value: format!("i{index}") })
}

fn membership(term: u64, index: u64, voters: &[u64]) -> EntryOf<KvConfig> {
    let voters: BTreeSet<u64> = voters.iter().copied().collect();
    openraft::testing::membership_ent::<KvConfig>(term, 0, index, vec![voters])
}

fn log_of(store: &Store, group: u64) -> Result<LogStore<KvConfig>, pkd_storage::Error> {
    store.log_store::<KvConfig>(group)
}

#[tokio::test]
async fn reopening_recovers_vote_log_committed_and_purged() -> TestResult {
    let dir = TempDir::new()?;
    let vote: VoteOf<KvConfig> = Vote::new_committed(3, 2);
    let written: Vec<EntryOf<KvConfig>> = (1..=10)
        .map(|index| if index == 1 { membership(1, 1, &[1, 2, 3]) } else { put(7, 1 + index / 5, index) })
        .collect();
    {
        let store = Store::open(dir.path())?;
        let mut log = log_of(&store, 7)?;
        log.blocking_append(written.clone()).await?;
        log.save_vote(&vote).await?;
        log.save_committed(Some(id(2, 8))).await?;
        log.purge(id(1, 3)).await?;
        log.truncate_after(Some(id(2, 9))).await?;
    }

    let store = Store::open(dir.path())?;
    let mut log = log_of(&store, 7)?;
    let state = log.get_log_state().await?;
    assert_eq!(state.last_purged_log_id, Some(id(1, 3)));
    assert_eq!(state.last_log_id, Some(id(2, 9)));
    assert_eq!(log.read_vote().await?, Some(vote));
    assert_eq!(log.read_committed().await?, Some(id(2, 8)));
    let entries = log.try_get_log_entries(..).await?;
    assert_eq!(entries, written[3..9].to_vec(), "entries 4..=9 survive, in order");
    assert_eq!(store.groups(), vec![GroupId(7)]);
    Ok(())
}

#[tokio::test]
async fn purging_everything_keeps_the_purge_mark_as_last_log_id_across_reopen() -> TestResult {
    let dir = TempDir::new()?;
    {
        let store = Store::open(dir.path())?;
        let mut log = log_of(&store, 1)?;
        log.blocking_append((1..=5).map(|index| put(1, 1, index))).await?;
        log.purge(id(1, 5)).await?;
        // An older purge must not move the mark back.
        log.purge(id(1, 2)).await?;
        store.flush().await?;
    }
    let store = Store::open(dir.path())?;
    let mut log = log_of(&store, 1)?;
    let state = log.get_log_state().await?;
    assert_eq!(state.last_purged_log_id, Some(id(1, 5)));
    assert_eq!(state.last_log_id, Some(id(1, 5)));
    assert!(log.try_get_log_entries(..).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn log_order_holds_past_byte_boundaries() -> TestResult {
    let dir = TempDir::new()?;
    let store = Store::open(dir.path())?;
    let mut log = log_of(&store, 1)?;
    let first = 250;
    let last = 70_000;
    log.blocking_append((first..=last).map(|index| put(1, 1, index))).await?;
    let entries = log.try_get_log_entries(254..=257).await?;
    let indexes: Vec<u64> = entries.iter().map(|entry| entry.index()).collect();
    assert_eq!(indexes, vec![254, 255, 256, 257]);
    let state = log.get_log_state().await?;
    assert_eq!(state.last_log_id, Some(id(1, last)));
    let tail = log.try_get_log_entries(65_534..).await?;
    assert_eq!(tail.len() as u64, last - 65_534 + 1);
    assert!(tail.windows(2).all(|pair| pair[0].index() + 1 == pair[1].index()));
    Ok(())
}

#[tokio::test]
async fn groups_sharing_a_database_do_not_see_each_other() -> TestResult {
    let dir = TempDir::new()?;
    {
        let store = Store::open(dir.path())?;
        let mut lobby = log_of(&store, 0)?;
        let mut arena = log_of(&store, 1)?;
        lobby.blocking_append((1..=6).map(|index| put(0, 1, index))).await?;
        arena.blocking_append((1..=4).map(|index| put(1, 2, index))).await?;
        lobby.save_vote(&Vote::new_committed(1, 1)).await?;
        arena.save_vote(&Vote::new(2, 3)).await?;
        lobby.save_committed(Some(id(1, 6))).await?;
        lobby.purge(id(1, 2)).await?;
        arena.truncate_after(Some(id(2, 3))).await?;

        // Another handle on the same group sees the same data.
        let mut lobby_again = log_of(&store, 0)?;
        assert_eq!(lobby_again.get_log_state().await?.last_log_id, Some(id(1, 6)));
    }

    let store = Store::open(dir.path())?;
    assert_eq!(store.groups(), vec![GroupId(0), GroupId(1)]);
    let mut lobby = log_of(&store, 0)?;
    let mut arena = log_of(&store, 1)?;

    assert_eq!(lobby.try_get_log_entries(..).await?, (3..=6).map(|index| put(0, 1, index)).collect::<Vec<_>>());
    assert_eq!(arena.try_get_log_entries(..).await?, (1..=3).map(|index| put(1, 2, index)).collect::<Vec<_>>());
    assert_eq!(lobby.read_vote().await?, Some(Vote::new_committed(1, 1)));
    assert_eq!(arena.read_vote().await?, Some(Vote::new(2, 3)));
    assert_eq!(lobby.read_committed().await?, Some(id(1, 6)));
    assert_eq!(arena.read_committed().await?, None);
    assert_eq!(arena.get_log_state().await?.last_purged_log_id, None);

    let mut unused = log_of(&store, 2)?;
    let state = unused.get_log_state().await?;
    assert_eq!((state.last_purged_log_id, state.last_log_id), (None, None));
    assert_eq!(unused.read_vote().await?, None);
    Ok(())
}

#[tokio::test]
async fn a_saved_snapshot_reads_back_intact_after_reopen() -> TestResult {
    let dir = TempDir::new()?;
    let membership = StoredMembershipOf::<KvConfig>::new(
        Some(id(1, 1)),
        openraft::Membership::new_with_defaults(vec![BTreeSet::from([1, 2, 3])], []),
    );
    let meta = SnapshotMetaOf::<KvConfig> { last_log_id: Some(id(4, 1_000)), last_membership: membership.clone() };
    // Every byte value, and enough of them to span many sled pages.
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    {
        let store = Store::open(dir.path())?;
        let snapshots = store.snapshot_store::<KvConfig>(5)?;
        let older = SnapshotMetaOf::<KvConfig> { last_log_id: Some(id(4, 10)), last_membership: membership.clone() };
        snapshots.save(&older, b"older").await?;
        assert_eq!(store.flush_totals().blobs_synced, 0, "a small snapshot stays in sled's log");
        snapshots.save(&meta, &data).await?;
        // Too large for sled's log: it went to a blob file, which sled itself never syncs.
        let blobs = std::fs::read_dir(dir.path().join("blobs"))?.count();
        assert!(blobs >= 1, "no blob file for a 3 MB value");
        assert!(store.flush_totals().blobs_synced >= 1, "the save returned before its blob file was synced");
    }

    let store = Store::open(dir.path())?;
    let snapshots = store.snapshot_store::<KvConfig>(5)?;
    let loaded = snapshots.load()?.ok_or("the snapshot is gone")?;
    assert_eq!(loaded.meta, meta);
    assert!(loaded.snapshot == data, "snapshot data differs after reopen");
    assert_eq!(snapshots.load_meta()?, Some(meta));
    assert!(store.snapshot_store::<KvConfig>(6)?.load()?.is_none(), "other groups have no snapshot");
    Ok(())
}

#[tokio::test]
async fn a_state_machine_comes_back_from_its_snapshot() -> TestResult {
    let dir = TempDir::new()?;
    let built = {
        let store = Store::open(dir.path())?;
        let mut machine = KvStateMachine::open(store.snapshot_store(3)?)?;
        let entries = vec![membership(1, 1, &[1]), put(3, 1, 2), put(3, 1, 3)];
        let stream = futures_util::stream::iter(entries.into_iter().map(|entry| Ok((entry, None))));
        machine.apply(stream).await?;
        let mut builder = machine.get_snapshot_builder().await;
        builder.build_snapshot().await?
    };

    let store = Store::open(dir.path())?;
    let mut machine = KvStateMachine::open(store.snapshot_store(3)?)?;
    let (applied, membership) = machine.applied_state().await?;
    assert_eq!(applied, Some(id(1, 3)));
    assert_eq!(membership, built.meta.last_membership);
    assert_eq!(machine.state.data.get("g3").map(String::as_str), Some("i3"));
    let current = machine.get_current_snapshot().await?.ok_or("no current snapshot")?;
    assert_eq!(current.meta, built.meta);
    assert_eq!(current.snapshot, built.snapshot);
    Ok(())
}

#[tokio::test]
async fn damaged_bytes_are_reported_as_invalid_data() -> TestResult {
    let dir = TempDir::new()?;
    let store = Store::open(dir.path())?;
    let mut log = log_of(&store, 9)?;
    log.blocking_append([put(9, 1, 1), put(9, 1, 2)]).await?;

    let log_tree = store.db().open_tree(keys::log_tree_name(GroupId(9)))?;
    log_tree.insert(b"m:vote", &[0xff, 0xff, 0xff][..])?;
    let error = log.read_vote().await.expect_err("garbage must not decode as a vote");
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);

    // A valid entry stored under the wrong index is damage too.
    let misplaced = postcard::to_allocvec(&put(9, 1, 7))?;
    let mut key = vec![b'e'];
    key.extend_from_slice(&2u64.to_be_bytes());
    log_tree.insert(key, misplaced)?;
    let error = log.try_get_log_entries(1..=2).await.expect_err("misplaced entry");
    assert_eq!(error.kind(), io::ErrorKind::InvalidData);

    let snapshot_tree = store.db().open_tree(keys::snapshot_tree_name(GroupId(9)))?;
    for garbage in [&b""[..], &[1, 0, 0, 0, 200, 1, 2][..], &[9, 0, 0, 0, 0][..], &[1, 0][..]] {
        snapshot_tree.insert(b"current", garbage)?;
        let error = store.snapshot_store::<KvConfig>(9)?.load().expect_err("garbage snapshot");
        assert!(matches!(error, pkd_storage::Error::Corrupt { .. }), "{error}");
        assert_eq!(io::Error::from(error).kind(), io::ErrorKind::InvalidData);
    }
    Ok(())
}

#[tokio::test]
async fn an_append_is_acknowledged_only_after_a_flush() -> TestResult {
    let dir = TempDir::new()?;
    let store = Store::open(dir.path())?;
    let mut log = log_of(&store, 1)?;
    for index in 1..=3 {
        let before = store.flush_count();
        log.blocking_append([put(1, 1, index)]).await?;
        assert!(store.flush_count() > before, "append {index} acknowledged without a flush");
    }
    let before = store.flush_count();
    log.save_vote(&Vote::new(1, 1)).await?;
    assert!(store.flush_count() > before, "vote saved without a flush");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_of_many_groups_share_flushes() -> TestResult {
    let dir = TempDir::new()?;
    let store = Store::open(dir.path())?;
    let groups = 64u64;
    let mut logs = (0..groups).map(|group| log_of(&store, group)).collect::<Result<Vec<_>, _>>()?;
    let before = store.flush_count();

    let mut acknowledgements = Vec::new();
    for (group, log) in (0..groups).zip(logs.iter_mut()) {
        let (sender, receiver) = KvConfig::oneshot();
        log.append([put(group, 1, 1)], IOFlushed::signal(sender)).await?;
        acknowledgements.push(receiver);
    }
    for acknowledgement in acknowledgements {
        acknowledgement.await??;
    }

    let flushes = store.flush_count() - before;
    assert!(flushes >= 1);
    assert!(flushes < groups, "{groups} appends took {flushes} flushes: no group commit");
    for (group, log) in (0..groups).zip(logs.iter_mut()) {
        assert_eq!(log.try_get_log_entries(..).await?, vec![put(group, 1, 1)]);
    }
    Ok(())
}

/// Appends `index` to `log` and returns a receiver that fires when the append is on disk.
async fn append_one(
    log: &mut LogStore<KvConfig>,
    group: u64,
    index: u64,
) -> Result<tokio::sync::oneshot::Receiver<Result<(), io::Error>>, io::Error> {
    let (done, flushed) = KvConfig::oneshot();
    let callback = IOFlushed::<KvConfig>::signal(done);
    log.append([put(group, 1, index)], callback).await?;
    Ok(flushed)
}

#[tokio::test]
async fn a_deferred_append_is_still_acknowledged_only_after_a_flush() -> TestResult {
    let dir = TempDir::new()?;
    let store = Store::open(dir.path())?;
    let mut log = log_of(&store, 1)?;
    log.set_urgent(false);
    for index in 1..=3 {
        let before = store.flush_count();
        let asked = std::time::Instant::now();
        let flushed = append_one(&mut log, 1, index).await?;
        // Nothing else writes: the flush comes once the deferral runs out, not before.
        tokio::time::timeout(std::time::Duration::from_secs(10), flushed).await??.map_err(|e| e.to_string())?;
        assert!(asked.elapsed() >= pkd_storage::DEFERRED_FLUSH_WAIT, "append {index} was not deferred");
        assert!(store.flush_count() > before, "append {index} acknowledged without a flush");
    }
    Ok(())
}

#[tokio::test]
async fn deferred_appends_ride_on_the_next_urgent_flush() -> TestResult {
    let dir = TempDir::new()?;
    let store = Store::open(dir.path())?;
    let mut deferring = log_of(&store, 1)?;
    deferring.set_urgent(false);
    let mut urgent = log_of(&store, 2)?;
    assert!(urgent.is_urgent(), "appends are urgent unless told otherwise");
    let mut shared = 0;
    for index in 1..=20 {
        let before = store.flush_count();
        let mut flushed = append_one(&mut deferring, 1, index).await?;
        urgent.save_vote(&Vote::new(index, 2)).await?;
        // The vote's flush answered the deferred append that was queued before it (unless
        // the deferral ran out first and a flush of its own did).
        assert!(matches!(flushed.try_recv(), Ok(Ok(()))), "round {index}: the deferred append is still waiting");
        if store.flush_count() - before == 1 {
            shared += 1;
        }
    }
    assert!(shared > 0, "a deferred append never shared the urgent flush that followed it");
    Ok(())
}
