//! Three nodes on localhost: every group replicated on all three, proposals forwarded to
//! the leaders, leaders spread over the nodes, PKs handed over between groups led by
//! different nodes, failover, and catching up by snapshot.

use crate::engine::{Running, eventually, lobby_holds, pk_running, start_match};
use std::time::Duration;

use pkd::replication::network::NetworkConfig;
use pkd::replication::node::start_loopback_cluster;
use pkd::{GroupId, LOBBY, Node, NodeConfig};
use pkd_raft::{Action, Arena, ArenaAction, Gift, GiftId, PkId, Response, StateMachine, UserId};
use tempfile::TempDir;
use tokio::net::TcpListener;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const MATCHING: &str = "{'name':'test','interveningTime':5000,'endTime':8000,'inviteNum':2,'inviteColdDown':3000}";

/// Three nodes, and what it takes to start each of them again.
struct Cluster {
    nodes: Vec<Option<Running>>,
    configs: Vec<(NodeConfig, NetworkConfig)>,
    _dirs: Vec<TempDir>,
}

impl Cluster {
    async fn start(secret: &[u8]) -> Result<Cluster, Box<dyn std::error::Error>> {
        let dirs: Vec<TempDir> = (0..3).map(|_| TempDir::new()).collect::<Result<_, _>>()?;
        let configs = dirs
            .iter()
            .map(|dir| NodeConfig { arena_count: 2, snapshot_every: 16, ..NodeConfig::single(dir.path()) })
            .collect();
        // Small pieces: the snapshots these tests send travel in many of them.
        let started = start_loopback_cluster(configs, "test", secret, |network| network.snapshot_chunk = 256).await?;
        let (nodes, configs) = started
            .into_iter()
            .map(|started| (Some(Running::new(started.node)), (started.config, started.network)))
            .unzip();
        Ok(Cluster { nodes, configs, _dirs: dirs })
    }

    fn node(&self, id: u64) -> Result<&Node, Box<dyn std::error::Error>> {
        self.nodes
            .get(id as usize - 1)
            .and_then(Option::as_ref)
            .map(|running| &running.node)
            .ok_or_else(|| format!("node {id} is not running").into())
    }

    fn running(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().flatten().map(|running| &running.node)
    }

    async fn stop(&mut self, id: u64) {
        if let Some(node) = self.nodes[id as usize - 1].take() {
            node.shutdown().await;
        }
    }

    async fn restart(&mut self, id: u64) -> TestResult {
        let (config, network) = self.configs[id as usize - 1].clone();
        let address = network.peers[&id].clone();
        let listener = TcpListener::bind(&address).await?;
        self.nodes[id as usize - 1] = Some(Running::new(Node::start_clustered(config, network, listener).await?));
        Ok(())
    }

    async fn shutdown(self) {
        for node in self.nodes.into_iter().flatten() {
            node.shutdown().await;
        }
    }
}

async fn set_config(node: &Node, battle_ms: u64) -> TestResult {
    for group in node.topology().groups() {
        for (key, value) in [("pk_duration", format!("300,{battle_ms},200,60000")), ("pk_config", MATCHING.to_owned())]
        {
            let response = node.propose(group, Action::SetConfig { key: key.into(), value }).await?;
            assert_eq!(response, Response::Done);
        }
    }
    Ok(())
}

/// Waits until every group has one leader, known to all, and the balancers have spread
/// them: the lobby on node 1, arena 1 on node 2, arena 2 on node 3.
async fn wait_for_spread_leaders(cluster: &Cluster) {
    for (group, wanted) in [(0, 1), (1, 2), (2, 3)] {
        let group = GroupId(group);
        eventually(Duration::from_secs(8), "leaders spread over the nodes", || {
            cluster.running().all(|node| node.leader(group) == Some(wanted))
                && cluster.node(wanted).is_ok_and(|node| node.is_leader(group))
        })
        .await;
    }
}

/// Anchor 1 starts matching through node `waiting`, anchor 2 through node `matching`;
/// returns their PK and its arena once the PK runs on every node.
async fn match_two(
    cluster: &Cluster,
    waiting: u64,
    matching: u64,
) -> Result<(PkId, GroupId), Box<dyn std::error::Error>> {
    assert_eq!(cluster.node(waiting)?.propose_lobby(start_match(1)).await?, Response::Waiting);
    let pk = match cluster.node(matching)?.propose_lobby(start_match(2)).await? {
        Response::Matched { pk, .. } => pk,
        other => return Err(format!("expected a match, got {other:?}").into()),
    };
    eventually(Duration::from_secs(5), "the PK reaches every node", || {
        cluster.running().all(|node| pk_running(node, pk))
    })
    .await;
    Ok((pk, cluster.node(waiting)?.arena_of(pk)))
}

/// The machine of `group` on every running node, as snapshot bytes.
fn machines(cluster: &Cluster, group: GroupId) -> Vec<Vec<u8>> {
    cluster
        .running()
        .map(|node| {
            if group == LOBBY {
                node.lobby().read(|lobby| lobby.snapshot())
            } else {
                node.arena(group).map(|replica| replica.read(|arena| arena.snapshot())).unwrap_or_default()
            }
        })
        .collect()
}

fn all_equal(items: &[Vec<u8>]) -> bool {
    items.windows(2).all(|pair| pair[0] == pair[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_run_a_pk_together() -> TestResult {
    let cluster = Cluster::start(b"cluster secret").await?;
    let (second, third) = (cluster.node(2)?, cluster.node(3)?);
    // Hand-overs between the lobby and the arenas cross nodes.
    wait_for_spread_leaders(&cluster).await;

    // Configuration through one node, matching through another: forwarded to the leaders.
    set_config(third, 1_500).await?;
    let (pk, arena) = match_two(&cluster, 2, 3).await?;

    tokio::time::sleep(Duration::from_millis(400)).await;
    let gift =
        ArenaAction::Gift(Gift { id: GiftId(1), pk, receiver: UserId(1), sender: UserId(9), beans: 30, profile: None });
    assert_eq!(second.propose_arena(arena, gift).await?, Response::GiftCounted { duplicate: false, side_beans: 30 });

    // The arena's leader ends it; the rooms are released on every node's lobby.
    eventually(Duration::from_secs(8), "the PK ends everywhere", || {
        cluster.running().all(|node| !pk_running(node, pk) && !lobby_holds(node, 1) && !lobby_holds(node, 2))
    })
    .await;
    eventually(Duration::from_secs(2), "the lobbies agree", || all_equal(&machines(&cluster, LOBBY))).await;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pk_survives_its_arena_leader_which_catches_up_by_snapshot() -> TestResult {
    survive_a_stopped_leader(Stop::ArenaLeader).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pk_survives_the_lobby_leader_which_catches_up_by_snapshot() -> TestResult {
    survive_a_stopped_leader(Stop::LobbyLeader).await
}

/// Which node the failover tests stop while a PK runs.
#[derive(Clone, Copy, Debug)]
enum Stop {
    /// The leader of the PK's arena: the survivors must end the PK.
    ArenaLeader,
    /// The leader of the lobby: the rooms must be released in the survivors' lobby.
    LobbyLeader,
}

async fn survive_a_stopped_leader(stop: Stop) -> TestResult {
    let mut cluster = Cluster::start(b"cluster secret").await?;
    wait_for_spread_leaders(&cluster).await;
    set_config(cluster.node(2)?, 2_000).await?;
    let (pk, arena) = match_two(&cluster, 2, 3).await?;

    // Node 1 leads the lobby; nodes 2 and 3 lead the arenas.
    let stopped_group = match stop {
        Stop::ArenaLeader => arena,
        Stop::LobbyLeader => LOBBY,
    };
    let leader = cluster.node(1)?.leader(stopped_group).ok_or("no leader")?;
    cluster.stop(leader).await;
    let survivor = if leader == 1 { 2 } else { 1 };

    // The survivors elect new leaders; the new arena leader's ticker ends the PK and its
    // pump releases the rooms.
    eventually(Duration::from_secs(8), "the PK ends without its first leader", || {
        cluster.running().all(|node| !pk_running(node, pk) && !lobby_holds(node, 1) && !lobby_holds(node, 2))
    })
    .await;

    // Enough new entries for the survivors to snapshot and purge what the stopped node
    // misses.
    for anchor in 100..150 {
        cluster.node(survivor)?.propose_lobby(start_match(anchor)).await?;
    }

    cluster.restart(leader).await?;
    for group in [LOBBY, arena] {
        eventually(Duration::from_secs(8), "the restarted node catches up", || {
            let machines = machines(&cluster, group);
            machines.len() == 3 && all_equal(&machines)
        })
        .await;
    }
    // The restarted node gets back the leadership of the group it is preferred for.
    eventually(Duration::from_secs(8), "leadership returns to the preferred node", || {
        cluster.running().all(|node| node.leader(stopped_group) == Some(leader))
    })
    .await;
    cluster.shutdown().await;
    Ok(())
}

/// The beans of `pk`'s source side in `machine`, if `pk` is running there.
fn source_beans(arena: &Arena, pk: PkId) -> Option<i64> {
    arena.view(pk).map(|view| view.source.beans)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_reads_see_every_acknowledged_write_and_fail_without_a_quorum() -> TestResult {
    let mut cluster = Cluster::start(b"cluster secret").await?;
    wait_for_spread_leaders(&cluster).await;
    set_config(cluster.node(1)?, 600_000).await?;
    let (pk, arena) = match_two(&cluster, 1, 1).await?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let leader = cluster.node(1)?.leader(arena).ok_or("the arena has no leader")?;

    // Each gift is acknowledged by the arena's leader; at once, every node (the two
    // followers included, one of them through a forwarded read index) reads it back.
    for id in 1..=20 {
        let gift = ArenaAction::Gift(Gift {
            id: GiftId(id),
            pk,
            receiver: UserId(1),
            sender: UserId(9),
            beans: 1,
            profile: None,
        });
        assert!(matches!(cluster.node(leader)?.propose_arena(arena, gift).await?, Response::GiftCounted { .. }));
        for node in cluster.running() {
            let beans = node
                .read_arena(arena, pkd::Consistency::Linearizable, |machine: &Arena| source_beans(machine, pk))
                .await?;
            assert_eq!(beans, Some(id as i64), "node {} read a state older than gift {id}", node.id());
        }
    }

    // Without a quorum no read is linearizable: the last node refuses rather than answer
    // from a replica it cannot prove current. A local read still answers.
    let alone = if leader == 3 { 2 } else { 3 };
    for id in [1, 2, 3].into_iter().filter(|&id| id != alone) {
        cluster.stop(id).await;
    }
    let node = cluster.node(alone)?;
    let refused =
        node.read_arena(arena, pkd::Consistency::Linearizable, |machine: &Arena| source_beans(machine, pk)).await;
    assert!(refused.is_err(), "a linearizable read without a quorum answered {refused:?}");
    assert_eq!(
        node.read_arena(arena, pkd::Consistency::Local, |machine: &Arena| source_beans(machine, pk)).await?,
        Some(20)
    );
    cluster.shutdown().await;
    Ok(())
}
