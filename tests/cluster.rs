//! Three nodes on localhost: every group replicated on all three, proposals forwarded to
//! the leaders, PKs handed over between groups led by different nodes.

use std::collections::BTreeMap;
use std::time::Duration;

use pkd::consensus::GroupId;
use pkd::network::NetworkConfig;
use pkd::{LOBBY, Node, NodeConfig};
use pkd_raft::{Action, AnchorProfile, Gift, GiftId, PkId, Response, RoomId, UserId};
use tempfile::TempDir;
use tokio::net::TcpListener;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const MATCHING: &str =
    "{'name':'test','interveningTime':5000,'endTime':8000,'inviteNum':2,'inviteColdDown':3000}";

fn start(anchor: u64) -> Action {
    Action::StartMatch {
        anchor: UserId(anchor),
        profile: AnchorProfile {
            room: RoomId(anchor + 1000),
            country: "IN".into(),
            platform: "android".into(),
            version_code: 300,
        },
    }
}

async fn eventually(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct Cluster {
    nodes: Vec<Node>,
    _dirs: Vec<TempDir>,
}

async fn start_cluster(secret: &[u8]) -> Result<Cluster, Box<dyn std::error::Error>> {
    let mut listeners = Vec::new();
    let mut peers = BTreeMap::new();
    for id in 1..=3u64 {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        peers.insert(id, listener.local_addr()?.to_string());
        listeners.push(listener);
    }
    let mut dirs = Vec::new();
    let mut starting = Vec::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        let id = index as u64 + 1;
        let dir = TempDir::new()?;
        let config = NodeConfig {
            node_id: id,
            arena_count: 2,
            snapshot_every: 16,
            ..NodeConfig::single(dir.path())
        };
        let network = NetworkConfig {
            node_id: id,
            cluster: "test".into(),
            secret: secret.to_vec(),
            peers: peers.clone(),
        };
        dirs.push(dir);
        starting.push(tokio::spawn(Node::start_clustered(
            config, network, listener,
        )));
    }
    let mut nodes = Vec::new();
    for task in starting {
        nodes.push(task.await??);
    }
    Ok(Cluster { nodes, _dirs: dirs })
}

fn pk_running(node: &Node, pk: PkId) -> bool {
    node.replica(node.arena_of(pk)).is_some_and(|replica| {
        replica.read(|machine| {
            machine
                .as_arena()
                .is_some_and(|arena| arena.running().any(|id| id == pk))
        })
    })
}

fn lobby_holds(node: &Node, anchor: u64) -> bool {
    node.replica(LOBBY).is_some_and(|replica| {
        replica.read(|machine| {
            machine
                .as_lobby()
                .is_some_and(|lobby| lobby.pk_of(UserId(anchor)).is_some())
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_run_a_pk_together() -> TestResult {
    let cluster = start_cluster(b"cluster secret").await?;
    let [first, second, third] = &cluster.nodes[..] else {
        return Err("three nodes".into());
    };
    // Every group elects one leader, known to all; then the arenas move to nodes 2 and 3,
    // so that hand-overs cross nodes.
    for (group, wanted) in [(0, None), (1, Some(2)), (2, Some(3))] {
        let group = GroupId(group);
        eventually(Duration::from_secs(5), "one leader per group", || {
            let leaders: Vec<_> = cluster
                .nodes
                .iter()
                .map(|node| node.leader(group))
                .collect();
            leaders[0].is_some() && leaders.windows(2).all(|pair| pair[0] == pair[1])
        })
        .await;
        let Some(wanted) = wanted else { continue };
        let leader = first.leader(group).ok_or("no leader")?;
        let leader_node = &cluster.nodes[leader as usize - 1];
        if leader != wanted {
            leader_node.transfer_leadership(group, wanted).await?;
        }
        eventually(Duration::from_secs(5), "leadership moves", || {
            cluster
                .nodes
                .iter()
                .all(|node| node.leader(group) == Some(wanted))
                && cluster.nodes[wanted as usize - 1].is_leader(group)
        })
        .await;
    }

    // Configuration through one node, matching through another: forwarded to the leaders.
    for group in 0..=2 {
        for (key, value) in [
            ("pk_duration", "300,1500,200,60000".to_owned()),
            ("pk_config", MATCHING.to_owned()),
        ] {
            let response = third
                .propose(
                    GroupId(group),
                    Action::SetConfig {
                        key: key.into(),
                        value,
                    },
                )
                .await?;
            assert_eq!(response, Response::Done);
        }
    }
    assert_eq!(second.propose(LOBBY, start(1)).await?, Response::Waiting);
    let pk = match third.propose(LOBBY, start(2)).await? {
        Response::Matched { pk, .. } => pk,
        other => return Err(format!("expected a match, got {other:?}").into()),
    };
    eventually(
        Duration::from_secs(5),
        "the PK reaches every node's arena",
        || cluster.nodes.iter().all(|node| pk_running(node, pk)),
    )
    .await;

    tokio::time::sleep(Duration::from_millis(400)).await;
    let arena = first.arena_of(pk);
    let gift = Action::Gift(Gift {
        id: GiftId(1),
        pk,
        receiver: UserId(1),
        sender: UserId(9),
        beans: 30,
        profile: None,
    });
    assert_eq!(
        second.propose(arena, gift).await?,
        Response::GiftCounted {
            duplicate: false,
            side_beans: 30
        }
    );

    // The arena's leader ends it; the rooms are released on every node's lobby.
    eventually(Duration::from_secs(8), "the PK ends everywhere", || {
        cluster
            .nodes
            .iter()
            .all(|node| !pk_running(node, pk) && !lobby_holds(node, 1) && !lobby_holds(node, 2))
    })
    .await;
    eventually(Duration::from_secs(2), "the lobbies agree", || {
        let snapshots: Vec<Vec<u8>> = cluster
            .nodes
            .iter()
            .filter_map(|node| node.replica(LOBBY))
            .map(|replica| replica.read(|machine| machine.snapshot()))
            .collect();
        snapshots.windows(2).all(|pair| pair[0] == pair[1])
    })
    .await;

    for node in cluster.nodes {
        node.shutdown().await;
    }
    Ok(())
}
