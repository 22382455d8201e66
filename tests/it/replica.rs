//! A single node on a real sled database: matching, the hand-over of PKs between the lobby
//! and the arenas, gifts, timers fired by the leader, and recovery after a restart.

use crate::engine::{Running, eventually, lobby_holds, pk_running, start_match};
use std::time::Duration;

use pkd::{GroupId, LOBBY, Node, NodeConfig};
use pkd_raft::effect::Effect;
use pkd_raft::{Action, ArenaAction, Gift, GiftId, PkId, PkStatus, Response, StateMachine, UserId};
use tempfile::TempDir;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Opening 300 ms, battle `battle_ms`, after-stage 200 ms.
fn timing(battle_ms: u64) -> String {
    format!("300,{battle_ms},200,60000")
}

const MATCHING: &str = "{'name':'test','interveningTime':5000,'endTime':8000,'inviteNum':2,'inviteColdDown':3000}";

fn config(dir: &TempDir) -> NodeConfig {
    NodeConfig {
        arena_count: 2,
        // Small, so that the tests also take, store and restore snapshots.
        snapshot_every: 8,
        ..NodeConfig::single(dir.path())
    }
}

async fn set_config(node: &Node, battle_ms: u64) -> TestResult {
    for group in node.topology().groups() {
        for (key, value) in [("pk_duration", timing(battle_ms)), ("pk_config", MATCHING.into())] {
            let response = node.propose(group, Action::SetConfig { key: key.into(), value }).await?;
            assert_eq!(response, Response::Done, "{key} on group {group:?}");
        }
    }
    Ok(())
}

fn gift(id: u64, pk: PkId, receiver: u64, beans: i64) -> ArenaAction {
    ArenaAction::Gift(Gift { id: GiftId(id), pk, receiver: UserId(receiver), sender: UserId(77), beans, profile: None })
}

/// Matches anchors `a` and `b` and returns the PK.
async fn match_pair(node: &Node, a: u64, b: u64) -> Result<PkId, Box<dyn std::error::Error>> {
    assert_eq!(node.propose_lobby(start_match(a)).await?, Response::Waiting);
    match node.propose_lobby(start_match(b)).await? {
        Response::Matched { pk, source, target } => {
            assert_eq!((source, target), (UserId(a), UserId(b)));
            Ok(pk)
        }
        other => Err(format!("expected a match, got {other:?}").into()),
    }
}

fn lobby_outbox_empty(node: &Node) -> bool {
    node.lobby().read(|lobby| lobby.pending_orders().next().is_none())
}

fn arena_outbox_empty(node: &Node, pk: PkId) -> bool {
    node.arena_for(pk).read(|arena| arena.pending_releases().next().is_none())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_pk_on_one_node() -> TestResult {
    let dir = TempDir::new()?;
    let node = Running::new(Node::start(config(&dir)).await?);
    let mut effects = node.subscribe_effects();
    set_config(&node, 1_500).await?;

    let pk = match_pair(&node, 1, 2).await?;
    let arena = node.arena_of(pk);
    assert!((1..=2).contains(&arena.0));

    // The lobby's pump creates the PK on its arena and confirms it.
    eventually(Duration::from_secs(3), "the PK is created on its arena", || {
        pk_running(&node, pk) && lobby_outbox_empty(&node)
    })
    .await;
    let other = GroupId(3 - arena.0);
    let other_is_empty = node.arena(other).is_some_and(|replica| replica.read(|a| a.running().next().is_none()));
    assert!(other_is_empty, "only the PK's own arena holds it");

    // Gifts count once the opening is over.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let counted = node.propose_arena(arena, gift(1, pk, 2, 50)).await?;
    assert_eq!(counted, Response::GiftCounted { duplicate: false, side_beans: 50 });
    let again = node.propose_arena(arena, gift(1, pk, 2, 50)).await?;
    assert_eq!(again, Response::GiftCounted { duplicate: true, side_beans: 50 });
    assert_eq!(
        node.propose_arena(arena, gift(2, pk, 1, 20)).await?,
        Response::GiftCounted { duplicate: false, side_beans: 20 }
    );
    let view = node.arena_for(pk).read(|a| a.view(pk)).ok_or("no view of the PK")?;
    assert_eq!(view.status, PkStatus::Battle);
    assert_eq!((view.source.beans, view.target.beans), (20, 50));

    // While the PK runs, both anchors are busy.
    assert!(lobby_holds(&node, 1) && lobby_holds(&node, 2));
    assert!(matches!(node.propose_lobby(start_match(1)).await?, Response::Rejected(_)));

    // The leader's ticker ends the battle and settles; the pump releases the rooms.
    eventually(Duration::from_secs(5), "the PK settles and its rooms are released", || {
        !pk_running(&node, pk) && !lobby_holds(&node, 1) && !lobby_holds(&node, 2) && arena_outbox_empty(&node, pk)
    })
    .await;
    let pk_again = match_pair(&node, 1, 2).await?;
    assert_ne!(pk_again, pk, "the anchors can meet again, in a new PK");

    // Effects were published, tagged with their group and log index.
    let mut ordered = false;
    let mut settled = None;
    while let Ok(tagged) = effects.try_recv() {
        match &tagged.effect {
            Effect::PkOrdered(order) if order.pk == pk => {
                assert_eq!(tagged.group, LOBBY);
                ordered = true;
            }
            Effect::PkSettled(result) if result.pk == pk => {
                assert_eq!(tagged.group, arena);
                settled = Some(result.winner);
            }
            _ => {}
        }
        assert!(tagged.index > 0);
    }
    assert!(ordered, "the lobby published the order");
    assert_eq!(settled, Some(UserId(2)), "the arena published the result");

    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_proposals_share_entries() -> TestResult {
    let dir = TempDir::new()?;
    let node = Running::new(Node::start(config(&dir)).await?);
    let before = node.lobby().last_applied_index().ok_or("nothing applied")?;
    let proposals = 200u64;
    let mut tasks = Vec::new();
    for anchor in 1..=proposals {
        let node = node.node.clone();
        tasks.push(tokio::spawn(async move { node.propose_lobby(start_match(anchor * 10)).await }));
    }
    let mut matched = 0;
    for task in tasks {
        match task.await?? {
            Response::Matched { .. } => matched += 1,
            Response::Waiting => {}
            other => return Err(format!("unexpected {other:?}").into()),
        }
    }
    assert_eq!(matched, proposals / 2, "every second start makes a match");
    let after = node.lobby().last_applied_index().ok_or("nothing applied")?;
    assert!(after - before < proposals, "{proposals} commands took {} entries", after - before);
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_recovers_and_finishes_its_pks() -> TestResult {
    let dir = TempDir::new()?;
    let node = Running::new(Node::start(config(&dir)).await?);
    set_config(&node, 4_000).await?;
    // One PK that ends before the restart, one that runs across it.
    let pk = match_pair(&node, 1, 2).await?;
    let arena = node.arena_of(pk);
    eventually(Duration::from_secs(3), "the PK is created", || pk_running(&node, pk) && lobby_outbox_empty(&node))
        .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    for id in 1..=12 {
        node.propose_arena(arena, gift(id, pk, 1 + id % 2, 10)).await?;
    }
    assert_eq!(node.propose_lobby(start_match(5)).await?, Response::Waiting);

    let summaries = |node: &Node| {
        let lobby = node.lobby().read(|lobby| lobby.summary());
        let arenas: Vec<_> = node.arenas().iter().map(|replica| replica.read(|arena| arena.summary())).collect();
        let view = node.arena_for(pk).read(|arena| arena.view(pk));
        format!("{lobby:?}\n{arenas:?}\n{view:?}")
    };
    let before = summaries(&node);
    let snapshot_before = node.arena_for(pk).read(|machine| machine.snapshot());
    node.shutdown().await;

    let node = Running::new(Node::start(config(&dir)).await?);
    assert_eq!(summaries(&node), before, "the state is recovered");
    let snapshot_after = node.arena_for(pk).read(|machine| machine.snapshot());
    // The blank entry a new leader writes changes nothing in the machine.
    assert_eq!(snapshot_after, snapshot_before, "the arena is byte for byte the same");
    assert!(pk_running(&node, pk), "the PK still runs after the restart");
    assert!(lobby_holds(&node, 1) && lobby_holds(&node, 2));

    // The restarted leader's ticker ends it, and the pump releases the rooms.
    eventually(Duration::from_secs(6), "the PK ends after the restart", || {
        !pk_running(&node, pk) && !lobby_holds(&node, 1) && arena_outbox_empty(&node, pk)
    })
    .await;
    // Anchor 5 is still waiting from before the restart: a new start matches it.
    match node.propose_lobby(start_match(1)).await? {
        Response::Matched { source, target, .. } => {
            assert_eq!((source, target), (UserId(5), UserId(1)));
        }
        other => return Err(format!("expected a match with anchor 5, got {other:?}").into()),
    }
    node.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_arena_count_cannot_change() -> TestResult {
    let dir = TempDir::new()?;
    Node::start(config(&dir)).await?.shutdown().await;
    let more_arenas = NodeConfig { arena_count: 3, ..config(&dir) };
    let restarted = Node::start(more_arenas).await;
    assert!(matches!(restarted, Err(pkd::NodeError::Config(_))));
    Ok(())
}
