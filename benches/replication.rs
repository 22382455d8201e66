//! Replication benchmark: acknowledged gifts per second and ack latency through the
//! engine's own client path (`Node::propose`, forwarded to the group leaders) on three
//! nodes over loopback TCP, each with its own sled database; an ack means the entry is
//! committed on a majority (fsynced on two of three disks) and applied.
//!
//! `cargo bench --bench replication` prints one line per concurrency (1, 64, 256
//! clients). `REPLICATION_SECONDS` sets each run's length (default 10);
//! `REPLICATION_CLIENTS=64,512` picks other concurrencies, `REPLICATION_IN_FLIGHT=4`
//! another number of entries in flight per group (`NodeConfig::in_flight`). Clients send
//! every gift to the first node, which forwards what it does not lead;
//! `REPLICATION_VIA=leader` sends each to its arena's leader instead. `REPLICATION_NODES=1`
//! runs the same load on one node alone (no replication: the floor of the other figures).
//!
//! `REPLICATION_SOAK=5000000 cargo bench --bench replication` instead runs the sled soak
//! on one node: gifts from `REPLICATION_SOAK_CLIENTS` clients (default 16) until the log
//! has taken that many raft entries, with snapshots and log purges on the way, then
//! reports the data directory's size on disk and the process's resident memory.

use pkd::duties::Duties;
use pkd::{Node, NodeConfig};
use pkd_raft::{Action, AnchorProfile, ArenaAction, Gift, GiftId, LobbyAction, PkId, Response, RoomId, UserId};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tempfile::TempDir;

const PKS: u64 = 64;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn profile(anchor: u64) -> AnchorProfile {
    AnchorProfile { room: RoomId(anchor), country: "IN".into(), platform: "android".into(), version_code: 300 }
}

async fn set_config(node: &Node, key: &str, value: &str) {
    for group in node.topology().groups() {
        let action = Action::SetConfig { key: key.into(), value: value.into() };
        loop {
            match node.propose(group, action.clone()).await {
                Ok(response) => break assert_eq!(response, Response::Done),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

/// Makes `PKS` PKs in their battle phase; returns their ids and source anchors.
async fn make_pks(node: &Node) -> Vec<(PkId, UserId)> {
    set_config(node, "pk_duration", "0,3600000,0,600000").await;
    set_config(node, "pk_limits", "{'maxGiftsPerPk':100000000}").await;
    let mut pks = Vec::new();
    for i in 0..PKS {
        let (a, b) = (2 * i + 1, 2 * i + 2);
        assert_eq!(
            node.propose_lobby(LobbyAction::StartMatch { anchor: UserId(a), profile: profile(a), request: 0 })
                .await
                .unwrap(),
            Response::Waiting
        );
        match node
            .propose_lobby(LobbyAction::StartMatch { anchor: UserId(b), profile: profile(b), request: 0 })
            .await
            .unwrap()
        {
            Response::Matched { pk, .. } => pks.push((pk, UserId(a))),
            other => panic!("no match: {other:?}"),
        }
    }
    // Wait until every arena has its PKs (the hand-over is asynchronous).
    for (pk, _) in &pks {
        while node.arena_for(*pk).read(|arena| arena.view(*pk).is_none()) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    pks
}

/// `clients` tasks propose gifts back to back for `seconds`; returns (acks, latencies).
/// Where the clients send their gifts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    /// Every gift to the first node, which forwards what it does not lead (as a gateway
    /// or gift API on any node does).
    FirstNode,
    /// Every gift to the node that leads its arena (no forwarding hop).
    Leader,
}

async fn load(
    nodes: &[Arc<Node>],
    via: Via,
    pks: Arc<Vec<(PkId, UserId)>>,
    clients: u64,
    seconds: u64,
) -> (u64, Vec<Duration>) {
    static NEXT_GIFT: AtomicU64 = AtomicU64::new(1);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for client in 0..clients {
        let nodes = nodes.to_vec();
        let pks = pks.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = client;
            while Instant::now() < deadline {
                let (pk, receiver) = pks[(i % pks.len() as u64) as usize];
                i += clients;
                let id = NEXT_GIFT.fetch_add(1, Ordering::Relaxed);
                let gift = Gift {
                    id: GiftId(id),
                    pk,
                    receiver,
                    sender: UserId(1_000_000 + id % 5000),
                    beans: 1,
                    profile: None,
                };
                let arena = nodes[0].arena_of(pk);
                let node = match via {
                    Via::Leader => nodes.iter().find(|node| node.is_leader(arena)).unwrap_or(&nodes[0]),
                    Via::FirstNode => &nodes[0],
                };
                let started = Instant::now();
                // A client retries what did not go through (a leader moving, a connection
                // being dialled); the gift id makes the retry safe.
                loop {
                    match node.propose_arena(node.arena_of(pk), ArenaAction::Gift(gift.clone())).await {
                        Ok(Response::GiftCounted { .. }) => break latencies.push(started.elapsed()),
                        Ok(other) => panic!("gift not counted: {other:?}"),
                        Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    (all.len() as u64, all)
}

/// The sum of every group's last log index on `node` (entries written so far).
fn log_entries(node: &Node) -> u64 {
    node.status().groups.iter().map(|group| group.last_log_index.unwrap_or(0)).sum()
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1e6
}

/// Three nodes on loopback, each with its leader duties (kept running until the end).
async fn three_nodes(dirs: &[TempDir]) -> Vec<Arc<Node>> {
    let in_flight = env("REPLICATION_IN_FLIGHT", pkd::replication::group::DEFAULT_IN_FLIGHT as u64) as usize;
    let configs =
        dirs.iter().map(|dir| NodeConfig { arena_count: 4, in_flight, ..NodeConfig::single(dir.path()) }).collect();
    let started = pkd::replication::node::start_loopback_cluster(configs, "bench", b"bench-secret-0123456789", |_| {})
        .await
        .unwrap();
    started.into_iter().map(|started| with_duties(started.node)).collect()
}

/// `node`, with its timers, hand-overs and balancing running for the rest of the run
/// (dropping `Duties` leaves them running).
fn with_duties(node: Node) -> Arc<Node> {
    drop(Duties::start(&node));
    Arc::new(node)
}

fn disk_bytes(path: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(path).into_iter().flatten().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() { disk_bytes(&entry.path()) } else { meta.len() };
    }
    total
}

/// The CPU time (user and system) this process has used so far, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks: f64 = fields.get(11..13).map(|t| t.iter().filter_map(|v| v.parse::<f64>().ok()).sum()).unwrap_or(0.0);
    // The kernel reports these in clock ticks of 1/100 s on Linux.
    ticks / 100.0
}

fn resident_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

async fn soak(entries: u64) {
    let clients = env("REPLICATION_SOAK_CLIENTS", 16);
    let dir = TempDir::new().unwrap();
    let node = with_duties(Node::start(NodeConfig { arena_count: 4, ..NodeConfig::single(dir.path()) }).await.unwrap());
    let pks = Arc::new(make_pks(&node).await);
    let started = Instant::now();
    let first = log_entries(&node);
    let mut gifts = 0;
    loop {
        let written = log_entries(&node) - first;
        eprintln!(
            "{written} raft entries, {gifts} gifts, {:.0} s: disk {:.1} MiB, resident {:.0} MiB",
            started.elapsed().as_secs_f64(),
            disk_bytes(dir.path()) as f64 / 1048576.0,
            resident_mib()
        );
        if written >= entries {
            break;
        }
        gifts += load(std::slice::from_ref(&node), Via::FirstNode, pks.clone(), clients, 10).await.0;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "sled soak: {} raft entries holding {gifts} gifts in {seconds:.0} s ({:.0} entries/s, {clients} clients), \
         snapshots every {} entries: data dir {:.1} MiB, resident {:.0} MiB",
        log_entries(&node) - first,
        (log_entries(&node) - first) as f64 / seconds,
        NodeConfig::single(dir.path()).snapshot_every,
        disk_bytes(dir.path()) as f64 / 1048576.0,
        resident_mib()
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let soak_entries = env("REPLICATION_SOAK", 0);
        if soak_entries > 0 {
            return soak(soak_entries).await;
        }
        let seconds = env("REPLICATION_SECONDS", 10);
        let via =
            if std::env::var("REPLICATION_VIA").as_deref() == Ok("leader") { Via::Leader } else { Via::FirstNode };
        let concurrency: Vec<u64> = std::env::var("REPLICATION_CLIENTS")
            .ok()
            .map(|list| list.split(',').filter_map(|n| n.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![1, 64, 256]);
        let dirs: Vec<TempDir> = (0..3).map(|_| TempDir::new().unwrap()).collect();
        let nodes = if env("REPLICATION_NODES", 3) == 1 {
            let config = NodeConfig { arena_count: 4, ..NodeConfig::single(dirs[0].path()) };
            vec![with_duties(Node::start(config).await.unwrap())]
        } else {
            three_nodes(&dirs).await
        };
        let pks = Arc::new(make_pks(&nodes[0]).await);
        // Warm up: connections dialled, leaders settled on their preferred nodes.
        load(&nodes, Via::FirstNode, pks.clone(), 16, 3).await;
        for clients in concurrency {
            let before: Vec<_> = nodes.iter().map(|node| node.flush_totals()).collect();
            let entries_before = log_entries(&nodes[0]);
            let cpu_before = cpu_seconds();
            let (acks, mut latencies) = load(&nodes, via, pks.clone(), clients, seconds).await;
            latencies.sort();
            let flushes: Vec<String> = nodes
                .iter()
                .zip(&before)
                .map(|(node, before)| {
                    let after = node.flush_totals();
                    let count = after.count - before.count;
                    let mean = (after.busy - before.busy).as_secs_f64() * 1e6 / count.max(1) as f64;
                    format!("{:.0}/s of {mean:.0} µs", count as f64 / seconds as f64)
                })
                .collect();
            let entries = log_entries(&nodes[0]) - entries_before;
            let cpu = cpu_seconds() - cpu_before;
            println!(
                "{} node(s), {clients:>3} clients{}: {:>8.0} acked gifts/s, ack p50 {:>7.0} µs, p99 {:>7.0} µs; \
                 {:.1} gifts per raft entry; CPU {:.2} cores, {:.1} µs per gift; flushes per node: {}",
                nodes.len(),
                if via == Via::Leader { " on the leaders" } else { "" },
                acks as f64 / seconds as f64,
                percentile(&latencies, 0.5),
                percentile(&latencies, 0.99),
                acks as f64 / entries.max(1) as f64,
                cpu / seconds as f64,
                cpu * 1e6 / acks.max(1) as f64,
                flushes.join(", ")
            );
        }
    });
}
