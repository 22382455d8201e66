//! The in-process tier of pkd's fault tests (feature `fault-injection`): several nodes in
//! this process, on loopback ([`start_loopback_cluster`]), each with the engine's duties and
//! a SQLite results store of its own, as `pkd serve` runs them. A workload goes through the
//! [`Node`] API (anchors matching over and over, gifts with unique ids, sent again with the
//! same id until an answer settles them); a nemesis drawn from the seed drops, cuts one
//! way, delays or partitions the links between nodes (per pair or per group, through
//! [`LinkFaults`]), restarts nodes, and slows or fails their disks (per data directory,
//! `pkd_storage::faults`). Then the run is judged by the same checkers as `pkd faults`
//! ([`checkers::check_all`]) from the same kind of history: the gifts and their answers,
//! the PK states read from the replicas, the faults, every node's settled history and gift
//! ledgers from its own results store, and state digests.
//!
//! A run takes seconds, so [`run_seeds`] runs many, several at once. `pkd faults-in-process
//! --seeds 1..200` is its command; `docs/faults.md` the user's guide.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::ValueEnum;
use pkd_cluster::app::wall_clock_ms;
use pkd_raft::{
    Action, AnchorProfile, ArenaAction, Gift, GiftId, LobbyAction, PkId, PkStatus, Response, RoomId, UserId,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

use super::checkers::{self, Bounds, Facts, Verdict};
use super::history::{
    Answer, Attempt, DigestRound, FaultEvent, GiftOp, History, LedgerRecord, Ledgers, NodeHistory, SettledRecord,
    StateSeen, outcome_of,
};
use super::{Seeds, parse_seeds};
use crate::bench::pks::StateSource;
use crate::duties::Duties;
use crate::duties::sinks::{Sinks, SinksConfig};
use crate::replication::consensus::GroupId;
use crate::replication::network::NetworkConfig;
use crate::replication::network::faults::LinkFaults;
use crate::replication::node::{Node, NodeConfig, start_loopback_cluster};

/// The first anchor's user id (anchors are consecutive from it).
const FIRST_ANCHOR: u64 = 3_000_001;
/// The opening of every PK, in ms.
const OPENING_MS: i64 = 200;
/// How long one attempt of a proposal may take before it counts as unanswered.
const ATTEMPT_LIMIT: Duration = Duration::from_millis(1_000);
/// How long a gift is sent again before it is given up (its outcome then unknown).
const GIFT_RETRIES_FOR: Duration = Duration::from_secs(4);
/// How often the PK states on the replicas, and the state digests, are read.
const WATCH_EVERY: Duration = Duration::from_millis(40);
const DIGEST_EVERY: Duration = Duration::from_millis(150);

/// One fault of the in-process nemesis.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// Cut both ways between two random nodes, every group.
    Blackhole,
    /// Cut what one random node sends another (requests and replies), every group.
    DropOneWay,
    /// Add 20-150 ms to each direction between two random nodes.
    Delay,
    /// Cut a random node off from the others in one random group only.
    GroupPartition,
    /// Cut the leader of a random group off from every other node, every group.
    PartitionLeader,
    /// Stop a random node, start it again on its data.
    Restart,
    /// Stop the leader of a random group, start it again on its data.
    RestartLeader,
    /// Add 20-150 ms to every flush of a random node's disk.
    SlowDisk,
    /// Make every flush of a random node's disk fail; the node is stopped and started again.
    DiskFull,
}

impl Fault {
    pub const ALL: [Fault; 9] = [
        Fault::Blackhole,
        Fault::DropOneWay,
        Fault::Delay,
        Fault::GroupPartition,
        Fault::PartitionLeader,
        Fault::Restart,
        Fault::RestartLeader,
        Fault::SlowDisk,
        Fault::DiskFull,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Blackhole => "blackhole",
            Fault::DropOneWay => "drop-one-way",
            Fault::Delay => "delay",
            Fault::GroupPartition => "group-partition",
            Fault::PartitionLeader => "partition-leader",
            Fault::Restart => "restart",
            Fault::RestartLeader => "restart-leader",
            Fault::SlowDisk => "slow-disk",
            Fault::DiskFull => "disk-full",
        }
    }
}

/// A promise the driver breaks on purpose, so that the checkers can be seen to catch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Break {
    /// Every fifth gift is recorded as acknowledged without being proposed: a gift API that
    /// answers before the gift is committed. `gifts_counted_once` finds it lost.
    AckUnproposed,
    /// Every acknowledged gift is delivered once more under a fresh id: a node that lost
    /// de-duplication counts a retried gift twice. `gifts_counted_once` and
    /// `ledgers_match_senders` find it.
    LoseDedup,
}

impl Break {
    pub fn name(self) -> &'static str {
        match self {
            Break::AckUnproposed => "ack-unproposed",
            Break::LoseDedup => "lose-dedup",
        }
    }
}

/// What one run does.
#[derive(Clone, Debug)]
pub struct Options {
    pub seed: u64,
    pub nodes: u64,
    pub arenas: u32,
    pub anchors: u64,
    pub senders: usize,
    /// The battle phase of every PK.
    pub battle: Duration,
    /// The healthy start, while the first PKs form.
    pub warm_up: Duration,
    /// How long faults and healthy gaps alternate.
    pub faulty: Duration,
    /// The final healthy phase, in which progress is required.
    pub healthy_end: Duration,
    /// A PK must end at most this long after its endTime.
    pub end_bound: Duration,
    /// The faults to draw from.
    pub faults: Vec<Fault>,
    pub broken: Option<Break>,
}

impl Options {
    /// The defaults for `seed`: 3 nodes, 2 arenas, 8 anchors, 2 senders, a 1 s battle,
    /// 0.6 s healthy, 3 s of faults, at least 1.5 s healthy (until progress is seen, up to
    /// [`PROGRESS_PATIENCE`] more), every fault.
    pub fn new(seed: u64) -> Options {
        Options {
            seed,
            nodes: 3,
            arenas: 2,
            anchors: 8,
            senders: 2,
            battle: Duration::from_millis(1_000),
            warm_up: Duration::from_millis(600),
            faulty: Duration::from_secs(3),
            healthy_end: Duration::from_millis(1_500),
            end_bound: Duration::from_secs(4),
            faults: Fault::ALL.to_vec(),
            broken: None,
        }
    }
}

/// One planned fault: when (from the workload's start), what, for how long, and the
/// choices drawn for it (two distinct nodes, a group, an amount).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Planned {
    pub at: Duration,
    pub fault: Fault,
    pub hold: Duration,
    pub nodes: (u64, u64),
    pub group: u64,
    pub amount_ms: u64,
}

/// The schedule of a run, a pure function of its options: after the warm-up, a fault and
/// a healthy gap in turn, until the faulty phase is over.
pub fn plan(options: &Options) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(options.seed);
    let mut planned = Vec::new();
    if options.faults.is_empty() || options.nodes < 2 {
        return planned;
    }
    let end = options.warm_up + options.faulty;
    let mut at = options.warm_up;
    loop {
        let fault = options.faults[rng.random_range(0..options.faults.len())];
        let hold = Duration::from_millis(rng.random_range(300..1_200));
        let first = rng.random_range(1..=options.nodes);
        let second = (first + rng.random_range(1..options.nodes) - 1) % options.nodes + 1;
        let group = rng.random_range(0..=u64::from(options.arenas));
        let amount_ms = rng.random_range(20..150);
        if at + hold > end {
            break;
        }
        planned.push(Planned { at, fault, hold, nodes: (first, second), group, amount_ms });
        at += hold + Duration::from_millis(rng.random_range(200..600));
    }
    planned
}

/// A finished run.
pub struct Outcome {
    pub options: Options,
    pub planned: Vec<Planned>,
    pub history: Arc<History>,
    pub settled: BTreeMap<u64, NodeHistory>,
    pub verdicts: Vec<Verdict>,
    pub elapsed: Duration,
    /// Requests and replies the link faults dropped and delayed.
    pub links: (u64, u64),
}

impl Outcome {
    /// The checkers that found violations.
    pub fn failures(&self) -> Vec<&Verdict> {
        self.verdicts.iter().filter(|verdict| verdict.failed()).collect()
    }

    /// The command that runs this seed again.
    pub fn replay_command(&self) -> String {
        replay_command(&self.options)
    }

    /// One line: the seed, the verdict and the figures.
    pub fn line(&self) -> String {
        let gifts = self.history.gifts();
        let acknowledged = gifts.iter().filter(|gift| gift.outcome == super::history::Outcome::Ok).count();
        let unknown = gifts.iter().filter(|gift| gift.outcome == super::history::Outcome::Unknown).count();
        let pks: BTreeSet<u64> = self.history.states().iter().map(|state| state.pk).collect();
        let faults: Vec<String> = self
            .history
            .faults()
            .iter()
            .map(|fault| match &fault.error {
                Some(error) => format!("{}(failed: {error})", fault.kind),
                None => fault.kind.clone(),
            })
            .collect();
        let failed: Vec<&str> = self.failures().iter().map(|verdict| verdict.name).collect();
        format!(
            "seed {}: {} in {:.1} s; {} gifts ({acknowledged} ok, {unknown} unknown), {} PKs, {} links dropped, \
             faults: {}",
            self.options.seed,
            if failed.is_empty() { "ok".to_owned() } else { format!("FAILED {}", failed.join(", ")) },
            self.elapsed.as_secs_f64(),
            gifts.len(),
            pks.len(),
            self.links.0,
            if faults.is_empty() { "none".to_owned() } else { faults.join(" ") },
        )
    }

    /// Every violation with its evidence, and the replay command.
    pub fn report(&self) -> String {
        let mut text = String::new();
        for verdict in self.failures() {
            text.push_str(&format!("  {} ({} violations): {}\n", verdict.name, verdict.violations, verdict.claim));
            for evidence in verdict.evidence.iter().take(10) {
                text.push_str(&format!("    - {evidence}\n"));
            }
        }
        text.push_str(&format!("  replay: {}\n", self.replay_command()));
        text
    }
}

/// The command that runs `options`' seed again.
pub fn replay_command(options: &Options) -> String {
    let faults: Vec<&str> = options.faults.iter().map(|fault| fault.name()).collect();
    let mut command = format!("pkd faults-in-process --seeds {} --faults {}", options.seed, faults.join(","));
    if let Some(broken) = options.broken {
        command.push_str(&format!(" --break {}", broken.name()));
    }
    command
}

/// Runs every seed of `seeds` with the options `template` gives it, `parallel` at once;
/// `report` is called with each result as it comes. The outcomes come back in seed order.
pub async fn run_seeds(
    seeds: &[u64],
    parallel: usize,
    template: impl Fn(u64) -> Options,
    report: impl Fn(u64, &anyhow::Result<Outcome>),
) -> Vec<(u64, anyhow::Result<Outcome>)> {
    let permits = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut runs = tokio::task::JoinSet::new();
    for &seed in seeds {
        let options = template(seed);
        let permits = permits.clone();
        runs.spawn(async move {
            let _permit = permits.acquire_owned().await;
            (seed, run(options).await)
        });
    }
    let mut outcomes = Vec::new();
    while let Some(joined) = runs.join_next().await {
        let (seed, outcome) = match joined {
            Ok(done) => done,
            Err(error) => (0, Err(anyhow::anyhow!("a run's task failed: {error}"))),
        };
        report(seed, &outcome);
        outcomes.push((seed, outcome));
    }
    outcomes.sort_by_key(|(seed, _)| *seed);
    outcomes
}

/// One run: the cluster, the workload and the nemesis, the wind-down, the checkers.
pub async fn run(options: Options) -> anyhow::Result<Outcome> {
    if options.nodes < 1 || options.anchors < 2 {
        bail!("a run takes at least one node and two anchors");
    }
    let started = Instant::now();
    let planned = plan(&options);
    let root = data_root()?;
    let links = LinkFaults::new();
    let mut cluster = Cluster::start(&options, root.path(), links.clone()).await?;
    let outcome = drive(&options, planned.clone(), &mut cluster).await;
    cluster.shutdown().await;
    let (history, settled, ledgers, liveness_from_ms) = outcome?;
    let faults = history.faults();
    let (gifts, states, digests) = (history.gifts(), history.states(), history.digests());
    // No fault here changes the membership: every node is a member from start to end.
    let members: BTreeSet<u64> = (1..=options.nodes).collect();
    let facts = Facts {
        gifts: &gifts,
        states: &states,
        invitations: &[],
        faults: &faults,
        settled: &settled,
        ledgers: &ledgers,
        digests: &digests,
        members: &members,
        bounds: Bounds { end_late_ms: options.end_bound.as_millis() as i64, skew_ms: 0 },
        liveness_from_ms,
        // Each node's results go to its own SQLite store, read as its settled history;
        // no cache is written.
        sql: None,
        cache: None,
    };
    let verdicts = checkers::check_all(&facts);
    Ok(Outcome { options, planned, history, settled, verdicts, elapsed: started.elapsed(), links: links.counts() })
}

/// Where the nodes' data goes: memory-backed `/dev/shm` when there is one (fsyncs there
/// cost nothing, and a run is about the protocol, not the disk), else the temporary
/// directory.
fn data_root() -> anyhow::Result<tempfile::TempDir> {
    let shm = Path::new("/dev/shm");
    let root = if shm.is_dir() {
        tempfile::Builder::new().prefix("pkd-inproc-").tempdir_in(shm)
    } else {
        Err(std::io::Error::other("no /dev/shm"))
    };
    root.or_else(|_| tempfile::Builder::new().prefix("pkd-inproc-").tempdir()).context("a data directory")
}

/// A node running as `pkd serve` runs it, without the gateway: its duties and sinks.
struct Running {
    node: Node,
    duties: Duties,
    sinks: Sinks,
}

impl Running {
    fn start(node: Node, dir: &Path) -> Running {
        let duties = Duties::start(&node);
        let config = SinksConfig {
            results_url: Some(format!("sqlite://{}?mode=rwc", dir.join("results.sqlite").display())),
            ..SinksConfig::default()
        };
        let sinks = Sinks::start(&node, config);
        Running { node, duties, sinks }
    }

    async fn stop(self) {
        self.sinks.shutdown().await;
        if let Some(store) = self.sinks.results().get() {
            store.close().await;
        }
        self.duties.stop().await;
        self.node.shutdown().await;
    }
}

/// One node of the cluster and what it takes to start it again.
struct Member {
    id: u64,
    dir: PathBuf,
    config: NodeConfig,
    network: NetworkConfig,
    running: Option<Running>,
    /// How many times it was started.
    starts: u64,
}

/// The nodes of a run. The workload reaches the running ones through [`Live`]; the
/// nemesis stops and starts them.
struct Cluster {
    members: Vec<Member>,
    live: Arc<Live>,
    links: LinkFaults,
}

/// The nodes running now, for the workload, each with its incarnation (1 for its first
/// start, one more for each start again): a replica read is like a connection to its node,
/// and a restarted node's replica is a new one.
#[derive(Default)]
struct Live {
    nodes: Mutex<BTreeMap<u64, (Node, u64)>>,
}

impl Live {
    fn locked(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, (Node, u64)>> {
        self.nodes.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Makes `node` running, one incarnation on from its last.
    fn insert(&self, node: Node, incarnation: u64) {
        self.locked().insert(node.id(), (node, incarnation));
    }

    fn all(&self) -> Vec<Node> {
        self.locked().values().map(|(node, _)| node.clone()).collect()
    }

    /// Every running node with its incarnation.
    fn incarnations(&self) -> Vec<(Node, u64)> {
        self.locked().values().cloned().collect()
    }

    fn any(&self, rng: &mut StdRng) -> Option<Node> {
        let nodes = self.all();
        (!nodes.is_empty()).then(|| nodes[rng.random_range(0..nodes.len())].clone())
    }

    /// The leader of `group` as a running node knows it, waiting up to 2 s for one (a
    /// fault may just have ended an election).
    async fn leader(&self, group: GroupId) -> Option<u64> {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let leader = self.all().iter().find_map(|node| node.leader(group));
            if leader.is_some() || Instant::now() >= deadline {
                return leader;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Cluster {
    async fn start(options: &Options, root: &Path, links: LinkFaults) -> anyhow::Result<Cluster> {
        let dirs: Vec<PathBuf> = (1..=options.nodes).map(|id| root.join(format!("node-{id}"))).collect();
        let configs = dirs
            .iter()
            .map(|dir| NodeConfig { arena_count: options.arenas, snapshot_every: 64, ..NodeConfig::single(dir) })
            .collect();
        let faults = links.clone();
        let started = start_loopback_cluster(configs, "pkd-inproc", b"in-process fault tests", move |network| {
            network.link_faults = Some(faults.clone());
        })
        .await?;
        let live = Arc::new(Live::default());
        let mut members = Vec::new();
        for (started, dir) in started.into_iter().zip(dirs) {
            let id = started.node.id();
            live.insert(started.node.clone(), 1);
            let running = Running::start(started.node, &dir);
            members.push(Member {
                id,
                dir,
                config: started.config,
                network: started.network,
                running: Some(running),
                starts: 1,
            });
        }
        Ok(Cluster { members, live, links })
    }

    fn member(&mut self, id: u64) -> Option<&mut Member> {
        self.members.iter_mut().find(|member| member.id == id)
    }

    fn ids(&self) -> Vec<u64> {
        self.members.iter().map(|member| member.id).collect()
    }

    async fn stop(&mut self, id: u64) {
        self.live.locked().remove(&id);
        if let Some(running) = self.member(id).and_then(|member| member.running.take()) {
            running.stop().await;
        }
    }

    async fn start_again(&mut self, id: u64) -> anyhow::Result<()> {
        let live = self.live.clone();
        let member = self.member(id).context("no such node")?;
        let address = member.network.peers.get(&id).context("the node's address")?.clone();
        let mut bound = TcpListener::bind(&address).await;
        for _ in 0..40 {
            if bound.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            bound = TcpListener::bind(&address).await;
        }
        let listener = bound.with_context(|| format!("binding {address} again"))?;
        let node = Node::start_clustered(member.config.clone(), member.network.clone(), listener).await?;
        member.starts += 1;
        live.insert(node.clone(), member.starts);
        member.running = Some(Running::start(node, &member.dir));
        Ok(())
    }

    async fn shutdown(&mut self) {
        self.links.heal();
        for member in &self.members {
            pkd_storage::faults::set_directory_faults(&member.dir, Duration::ZERO, false);
        }
        for id in self.ids() {
            self.stop(id).await;
        }
    }
}

/// A PK as the replicas show it, for the senders.
#[derive(Clone, Copy, Debug)]
struct RosterEntry {
    arena: GroupId,
    source: u64,
    target: u64,
    battle_from_ms: i64,
    end_ms: i64,
}

type Roster = Mutex<BTreeMap<u64, RosterEntry>>;

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The workload and the nemesis, the wind-down, then what the checkers read besides the
/// history: every node's settled history, the ledgers, and when progress is required from.
async fn drive(
    options: &Options,
    planned: Vec<Planned>,
    cluster: &mut Cluster,
) -> anyhow::Result<(Arc<History>, BTreeMap<u64, NodeHistory>, Ledgers, i64)> {
    let history = Arc::new(History::default());
    configure(&cluster.live, options).await?;
    let roster: Arc<Roster> = Arc::default();
    let (stop_watching, watching) = watch::channel(false);
    let watcher = tokio::spawn(watch_states(cluster.live.clone(), history.clone(), roster.clone(), watching.clone()));
    let digests = tokio::spawn(sample_digests(cluster.live.clone(), history.clone(), watching));
    let hold_matching = Arc::new(AtomicBool::new(false));
    let (stop_anchors, anchors_stopped) = watch::channel(false);
    let anchors: Vec<_> = (0..options.anchors)
        .map(|index| {
            let rng = StdRng::seed_from_u64(options.seed ^ (0x616e_6368 + index));
            let task = match_again(cluster.live.clone(), FIRST_ANCHOR + index, rng, hold_matching.clone());
            let mut stopped = anchors_stopped.clone();
            tokio::spawn(async move {
                tokio::select! {
                    () = task => {}
                    _ = stopped.wait_for(|stop| *stop) => {}
                }
            })
        })
        .collect();
    let start = Instant::now();
    let (stop_gifts, gifts_stopped) = watch::channel(false);
    let ids = Arc::new(AtomicU64::new(1));
    let senders: Vec<_> = (0..options.senders)
        .map(|index| {
            let sender = Sender {
                live: cluster.live.clone(),
                roster: roster.clone(),
                history: history.clone(),
                ids: ids.clone(),
                user: 9_000_001 + index as u64,
                broken: options.broken,
                rng: StdRng::seed_from_u64(options.seed ^ (0x6766_7473 + index as u64)),
            };
            tokio::spawn(sender.send_until(gifts_stopped.clone()))
        })
        .collect();
    for fault in &planned {
        tokio::time::sleep_until(start + fault.at).await;
        carry_out(cluster, fault, &history).await;
    }
    // Progress is required after the last fault healed (after the start without faults).
    let liveness_from_ms = history.faults().iter().map(|fault| fault.healed_ms).max().unwrap_or_else(wall_clock_ms);
    tokio::time::sleep_until((Instant::now() + options.healthy_end).max(start + options.warm_up + options.faulty))
        .await;
    // On a loaded machine progress may take longer: wait for it a while (the checker
    // still judges what happened).
    let patience = Instant::now() + PROGRESS_PATIENCE;
    while Instant::now() < patience && !progressed(&history, liveness_from_ms) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_gifts.send(true);
    for sender in senders {
        let _ = sender.await;
    }
    hold_matching.store(true, Ordering::Relaxed);
    let pk_length = options.battle + Duration::from_millis(OPENING_MS as u64);
    wind_down(&cluster.live, pk_length * 2 + options.end_bound).await;
    let _ = stop_anchors.send(true);
    for anchor in anchors {
        let _ = anchor.await;
    }
    let _ = stop_watching.send(true);
    let _ = watcher.await;
    let _ = digests.await;
    let seen: BTreeSet<u64> = history.states().iter().map(|state| state.pk).collect();
    let anchor_ids: Vec<u64> = (FIRST_ANCHOR..FIRST_ANCHOR + options.anchors).collect();
    let settled = settled_history(cluster, &anchor_ids, &seen, Duration::from_secs(10)).await;
    let ledgers = settled_ledgers(cluster, &checkers::reference_records(&settled)).await;
    final_digests(&cluster.live, &history, options.nodes as usize, options.arenas as usize + 1).await;
    Ok((history, settled, ledgers, liveness_from_ms))
}

/// How much longer than its final healthy phase a run waits for progress after the faults.
const PROGRESS_PATIENCE: Duration = Duration::from_secs(8);

/// Whether a gift sent after `from_ms` was acknowledged and a PK started after it.
fn progressed(history: &History, from_ms: i64) -> bool {
    history.gifts().iter().any(|gift| gift.outcome == super::history::Outcome::Ok && gift.invoked_ms >= from_ms)
        && history.states().iter().any(|state| state.start_ms >= from_ms)
}

/// Short PKs and matching without invitations, on every group.
async fn configure(live: &Live, options: &Options) -> anyhow::Result<()> {
    let battle_ms = options.battle.as_millis().max(200);
    let settings = [
        ("pk_duration", format!("{OPENING_MS},{battle_ms},0,600000")),
        (
            "pk_config",
            "{'name':'inproc','interveningTime':600000,'endTime':600000,'inviteNum':1,'inviteColdDown':1000}"
                .to_owned(),
        ),
    ];
    let node = live.all().into_iter().next().context("no node runs")?;
    for group in node.topology().groups() {
        for (key, value) in &settings {
            let action = Action::SetConfig { key: (*key).to_owned(), value: value.clone() };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match tokio::time::timeout(ATTEMPT_LIMIT, node.propose(group, action.clone())).await {
                    Ok(Ok(Response::Done)) => break,
                    Ok(Ok(other)) => bail!("setting {key} in group {group}: {other:?}"),
                    _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
                    Ok(Err(error)) => bail!("setting {key} in group {group}: {error}"),
                    Err(_) => bail!("setting {key} in group {group}: no answer"),
                }
            }
        }
    }
    Ok(())
}

/// An anchor's start of matching (command 28 type 1), as the gateway proposes it.
fn start_match(anchor: u64) -> LobbyAction {
    LobbyAction::StartMatch {
        anchor: UserId(anchor),
        profile: AnchorProfile {
            room: RoomId(anchor + 1_000_000),
            country: "IN".into(),
            platform: "android".into(),
            version_code: 300,
        },
        request: 0,
    }
}

/// One anchor: whenever a node's lobby shows it neither waiting nor in a PK, it starts
/// matching again, through a random node.
async fn match_again(live: Arc<Live>, anchor: u64, mut rng: StdRng, hold: Arc<AtomicBool>) {
    loop {
        tokio::time::sleep(Duration::from_millis(rng.random_range(40..120))).await;
        if hold.load(Ordering::Relaxed) {
            continue;
        }
        let Some(node) = live.any(&mut rng) else { continue };
        let free =
            node.lobby().read(|lobby| !lobby.is_waiting(UserId(anchor)) && lobby.pk_of(UserId(anchor)).is_none());
        if free {
            let _ = tokio::time::timeout(ATTEMPT_LIMIT, node.propose_lobby(start_match(anchor))).await;
        }
    }
}

/// The push status of a PK state.
fn status_code(status: PkStatus) -> u64 {
    match status {
        PkStatus::Opening => 0,
        PkStatus::Battle => 1,
        PkStatus::Ending | PkStatus::Done => 2,
        PkStatus::Error => 3,
    }
}

/// Reads every running PK's state on every running node's replicas until `stop`: each
/// change on a replica is recorded as a state the PK's source anchor read over a
/// connection to that node (one per incarnation of the node), and the roster the senders
/// pick from is kept.
async fn watch_states(live: Arc<Live>, history: Arc<History>, roster: Arc<Roster>, mut stop: watch::Receiver<bool>) {
    // (connection, pk) → what it showed last
    let mut last: BTreeMap<(u64, u64), (u64, i64, i64)> = BTreeMap::new();
    while !*stop.borrow() {
        let at_ms = wall_clock_ms();
        for (node, incarnation) in live.incarnations() {
            let connection = node.id() * 1_000 + incarnation;
            for replica in node.arenas() {
                let group = replica.group();
                let views = replica.read(|arena| arena.running().filter_map(|pk| arena.view(pk)).collect::<Vec<_>>());
                for view in views {
                    let status = status_code(view.status);
                    let seen = (status, view.source.beans, view.target.beans);
                    locked(&roster).entry(view.pk.0).or_insert(RosterEntry {
                        arena: group,
                        source: view.source.anchor.0,
                        target: view.target.anchor.0,
                        battle_from_ms: view.start_time.0 + OPENING_MS,
                        end_ms: view.end_time.0,
                    });
                    if last.insert((connection, view.pk.0), seen) == Some(seen) {
                        continue;
                    }
                    history.state(StateSeen {
                        user: view.source.anchor.0,
                        connection,
                        node: node.id(),
                        source: StateSource::Push,
                        at_ms,
                        pk: view.pk.0,
                        status,
                        start_ms: view.start_time.0,
                        end_ms: view.end_time.0,
                        source_user: view.source.anchor.0,
                        target_user: view.target.anchor.0,
                        source_gifts: view.source.beans,
                        target_gifts: view.target.beans,
                        winner: view.winner.map(|winner| winner.0),
                    });
                }
            }
        }
        let _ = tokio::time::timeout(WATCH_EVERY, stop.changed()).await;
    }
}

/// A gift sender: one gift at a time to a PK in its battle, sent again with the same id
/// until an answer settles it.
struct Sender {
    live: Arc<Live>,
    roster: Arc<Roster>,
    history: Arc<History>,
    ids: Arc<AtomicU64>,
    user: u64,
    broken: Option<Break>,
    rng: StdRng,
}

impl Sender {
    async fn send_until(mut self, stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            let now = wall_clock_ms();
            let in_battle: Vec<(u64, RosterEntry)> = locked(&self.roster)
                .iter()
                .filter(|(_, pk)| pk.battle_from_ms + 30 <= now && now + 150 < pk.end_ms)
                .map(|(&pk, &entry)| (pk, entry))
                .collect();
            if in_battle.is_empty() {
                tokio::time::sleep(Duration::from_millis(30)).await;
                continue;
            }
            let (pk, entry) = in_battle[self.rng.random_range(0..in_battle.len())];
            let receiver = if self.rng.random_bool(0.5) { entry.source } else { entry.target };
            let id = self.ids.fetch_add(1, Ordering::Relaxed);
            let gift = Gift {
                id: GiftId(id),
                pk: PkId(pk),
                receiver: UserId(receiver),
                sender: UserId(self.user),
                beans: self.rng.random_range(1..10),
                profile: None,
            };
            self.send(entry.arena, gift).await;
            tokio::time::sleep(Duration::from_millis(self.rng.random_range(5..25))).await;
        }
    }

    async fn send(&mut self, arena: GroupId, gift: Gift) {
        let invoked_ms = wall_clock_ms();
        let mut attempts = Vec::new();
        if self.broken == Some(Break::AckUnproposed) && gift.id.0 % 5 == 0 {
            // Broken on purpose: acknowledged, never proposed.
            attempts.push(Attempt { node: 0, sent_ms: invoked_ms, answer: Answer::Counted });
        } else {
            let deadline = Instant::now() + GIFT_RETRIES_FOR;
            while Instant::now() < deadline {
                let answer = self.attempt(arena, &gift, &mut attempts).await;
                if !matches!(answer, Answer::Indeterminate(_)) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        }
        let outcome = outcome_of(&attempts.iter().map(|attempt| attempt.answer.clone()).collect::<Vec<_>>());
        if outcome == super::history::Outcome::Ok {
            if self.broken == Some(Break::LoseDedup) {
                // Broken on purpose: delivered again under a fresh id, never recorded.
                let again = Gift { id: GiftId(gift.id.0 | 1 << 40), ..gift.clone() };
                self.attempt(arena, &again, &mut Vec::new()).await;
            } else if self.rng.random_range(0..8) == 0 {
                // A gift service that delivers at least once sends it again: it must count once.
                self.attempt(arena, &gift, &mut attempts).await;
            }
        }
        self.history.gift(GiftOp {
            request: gift.id.0,
            batch: 1,
            id: gift.id.0,
            pk: gift.pk.0,
            receiver: gift.receiver.0,
            sender: gift.sender.0,
            beans: gift.beans,
            invoked_ms,
            completed_ms: wall_clock_ms(),
            outcome,
            attempts,
        });
    }

    /// One attempt through a random running node; its answer is recorded in `attempts`.
    async fn attempt(&mut self, arena: GroupId, gift: &Gift, attempts: &mut Vec<Attempt>) -> Answer {
        let Some(node) = self.live.any(&mut self.rng) else {
            return Answer::Indeterminate("no node runs".to_owned());
        };
        let sent_ms = wall_clock_ms();
        let proposed = tokio::time::timeout(ATTEMPT_LIMIT, node.propose_arena(arena, ArenaAction::Gift(gift.clone())));
        let answer = match proposed.await {
            Ok(Ok(Response::GiftCounted { .. })) => Answer::Counted,
            Ok(Ok(Response::Rejected(reason))) => Answer::Refused(format!("{reason:?}")),
            Ok(Ok(other)) => Answer::Indeterminate(format!("{other:?}")),
            Ok(Err(error)) => Answer::Indeterminate(error.to_string()),
            Err(_) => Answer::Indeterminate(format!("no answer within {ATTEMPT_LIMIT:?}")),
        };
        attempts.push(Attempt { node: node.id(), sent_ms, answer: answer.clone() });
        answer
    }
}

/// Carries out one planned fault and records it.
async fn carry_out(cluster: &mut Cluster, planned: &Planned, history: &History) {
    let started_ms = wall_clock_ms();
    let nodes = cluster.ids();
    let (first, second) = planned.nodes;
    let group = GroupId(planned.group);
    let mut event = FaultEvent::begun(planned.fault.name(), started_ms);
    let links = cluster.links.clone();
    let result: anyhow::Result<()> = async {
        match planned.fault {
            Fault::Blackhole => {
                links.cut(first, second, None);
                event.links = Some(format!("{first} <-> {second}"));
                hold_then_heal(&links, planned.hold).await;
            }
            Fault::DropOneWay => {
                links.cut_one_way(first, second, None);
                event.links = Some(format!("{first} -> {second}"));
                hold_then_heal(&links, planned.hold).await;
            }
            Fault::Delay => {
                let delay = Duration::from_millis(planned.amount_ms);
                links.delay(first, second, None, delay);
                event.links = Some(format!("{first} <-> {second} +{}ms", planned.amount_ms));
                event.amount_ms = Some(planned.amount_ms as i64);
                hold_then_heal(&links, planned.hold).await;
            }
            Fault::GroupPartition => {
                links.isolate(first, &nodes, Some(group));
                event.node = Some(first);
                event.group = Some(group.0);
                event.links = Some(format!("{{{first}}} | the others, group {group}"));
                hold_then_heal(&links, planned.hold).await;
            }
            Fault::PartitionLeader => {
                let leader = cluster.live.leader(group).await.context("the group has no leader")?;
                links.isolate(leader, &nodes, None);
                event.node = Some(leader);
                event.group = Some(group.0);
                event.links = Some(format!("{{{leader}}} | the others"));
                hold_then_heal(&links, planned.hold).await;
            }
            Fault::Restart | Fault::RestartLeader => {
                let victim = match planned.fault {
                    Fault::Restart => first,
                    _ => cluster.live.leader(group).await.context("the group has no leader")?,
                };
                event.node = Some(victim);
                if planned.fault == Fault::RestartLeader {
                    event.group = Some(group.0);
                }
                cluster.stop(victim).await;
                tokio::time::sleep(planned.hold).await;
                cluster.start_again(victim).await?;
            }
            Fault::SlowDisk => {
                let dir = cluster.member(first).context("no such node")?.dir.clone();
                event.node = Some(first);
                event.amount_ms = Some(planned.amount_ms as i64);
                pkd_storage::faults::set_directory_faults(&dir, Duration::from_millis(planned.amount_ms), false);
                tokio::time::sleep(planned.hold).await;
                pkd_storage::faults::set_directory_faults(&dir, Duration::ZERO, false);
            }
            Fault::DiskFull => {
                let dir = cluster.member(first).context("no such node")?.dir.clone();
                event.node = Some(first);
                pkd_storage::faults::set_directory_faults(&dir, Duration::ZERO, true);
                tokio::time::sleep(planned.hold).await;
                // A group that met a failed flush has stopped on this node: the node is
                // stopped, its disk mended, and it is started again (as its supervisor
                // restarts a `pkd serve` that exited).
                cluster.stop(first).await;
                pkd_storage::faults::set_directory_faults(&dir, Duration::ZERO, false);
                cluster.start_again(first).await?;
            }
        }
        Ok(())
    }
    .await;
    if let Err(error) = result {
        event.error = Some(format!("{error:#}"));
    }
    event.healed_ms = wall_clock_ms();
    history.fault(event);
}

async fn hold_then_heal(links: &LinkFaults, hold: Duration) {
    tokio::time::sleep(hold).await;
    links.heal();
}

/// Waits until no node's replicas run a PK and no lobby holds an anchor in one (for
/// 300 ms), at most `limit`.
async fn wind_down(live: &Live, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut quiet_since: Option<Instant> = None;
    while Instant::now() < deadline {
        let busy = live.all().iter().any(|node| {
            node.arenas().iter().any(|arena| arena.read(|arena| arena.running().next().is_some()))
                || node.lobby().read(|lobby| lobby.held_pks().next().is_some())
        });
        if busy {
            quiet_since = None;
        } else if quiet_since.get_or_insert_with(Instant::now).elapsed() >= Duration::from_millis(300) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Samples every running node's state digests until `stop`.
async fn sample_digests(live: Arc<Live>, history: Arc<History>, mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        record_digests(&live, &history);
        let _ = tokio::time::timeout(DIGEST_EVERY, stop.changed()).await;
    }
}

/// Takes every running node's digests once and records them.
fn record_digests(live: &Live, history: &History) -> DigestRound {
    history.digest_round(live.all().into_iter().filter_map(|node| node.digests().ok()), wall_clock_ms())
}

/// Once the workload is over, samples until every group was caught at one applied index
/// on every node, or for 5 s.
async fn final_digests(live: &Live, history: &History, nodes: usize, groups: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut caught: BTreeSet<u64> = BTreeSet::new();
    loop {
        caught.extend(record_digests(live, history).caught_on(nodes));
        if caught.len() >= groups || Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every node's settled history of `anchors` from its own results store, read until
/// every node answers the same with every PK in `seen` settled, or until `limit`.
async fn settled_history(
    cluster: &Cluster,
    anchors: &[u64],
    seen: &BTreeSet<u64>,
    limit: Duration,
) -> BTreeMap<u64, NodeHistory> {
    let deadline = Instant::now() + limit;
    loop {
        let mut all = BTreeMap::new();
        for member in &cluster.members {
            let Some(store) = member.running.as_ref().and_then(|running| running.sinks.results().get().cloned()) else {
                continue;
            };
            if let Some(history) = node_history(&store, anchors).await {
                all.insert(member.id, history);
            }
        }
        let settled = |history: &NodeHistory| {
            let done: BTreeSet<u64> = history
                .values()
                .flatten()
                .filter(|record| record.status == 2 || record.status == 3)
                .map(|record| record.pk_id)
                .collect();
            seen.is_subset(&done) && history.values().flatten().all(|record| record.status == 2 || record.status == 3)
        };
        let complete = all.len() == cluster.members.len()
            && all.values().all(settled)
            && all.values().all(|history| Some(history) == all.values().next());
        if complete || Instant::now() >= deadline {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One node's history of every anchor, as `GET /api/anchors/{id}/pks` answers it.
async fn node_history(store: &crate::sinks::ResultsStore, anchors: &[u64]) -> Option<NodeHistory> {
    let mut history = NodeHistory::new();
    for &anchor in anchors {
        let mut records: Vec<SettledRecord> = Vec::new();
        for page in 1.. {
            let batch = store.history(UserId(anchor), page, 100).await.ok()?;
            let full = batch.len() == 100;
            for record in batch {
                records.push(serde_json::from_value(serde_json::to_value(record).ok()?).ok()?);
            }
            if !full {
                break;
            }
        }
        history.insert(anchor, records);
    }
    Some(history)
}

/// The gift ledgers of the settled PKs in `records`, from the first node whose store
/// answers them all.
async fn settled_ledgers(cluster: &Cluster, records: &[SettledRecord]) -> Ledgers {
    let pks: BTreeSet<u64> = records.iter().filter(|record| record.status >= 2).map(|record| record.pk_id).collect();
    'nodes: for member in &cluster.members {
        let Some(store) = member.running.as_ref().and_then(|running| running.sinks.results().get().cloned()) else {
            continue;
        };
        let mut ledgers = Ledgers::new();
        for &pk in &pks {
            let mut ledger: Vec<LedgerRecord> = Vec::new();
            let mut after = 0;
            loop {
                let Ok(page) = store.ledger(PkId(pk), after, 1_000).await else { continue 'nodes };
                let full = page.len() == 1_000;
                after = page.last().map_or(after, |gift| gift.gift_id);
                for gift in page {
                    let Some(record) =
                        serde_json::to_value(gift).ok().and_then(|value| serde_json::from_value(value).ok())
                    else {
                        continue 'nodes;
                    };
                    ledger.push(record);
                }
                if !full {
                    break;
                }
            }
            ledgers.insert(pk, ledger);
        }
        return ledgers;
    }
    Ledgers::new()
}

/// `pkd faults-in-process`'s flags.
#[derive(Clone, Debug, clap::Args)]
pub struct InProcessArgs {
    /// The seeds to run, as `pkd faults --seeds` takes them: `7`, `1-200`, `1-10,42`.
    #[arg(long, value_parser = parse_seeds, default_value = "1-20")]
    pub seeds: Seeds,
    /// Runs at once (three keep two cores busy without starving the nodes of a debug build).
    #[arg(long, default_value_t = 3)]
    pub parallel: usize,
    /// The faults to draw from (default: every one).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub faults: Vec<Fault>,
    /// Break a promise on purpose, to see the checkers catch it.
    #[arg(long = "break", value_enum)]
    pub broken: Option<Break>,
    /// How long faults and healthy gaps alternate in each run.
    #[arg(long, value_parser = crate::bench::parse_duration, default_value = "3s")]
    pub faulty: Duration,
}

/// `pkd faults-in-process`: runs the seeds, prints a line for each, the evidence and the
/// replay command of each failure, and the figures; fails if any seed failed.
pub fn command(args: InProcessArgs) -> anyhow::Result<()> {
    crate::procfs::raise_open_files_limit();
    // The nodes' logs, to stderr, only when asked for (`RUST_LOG=info`): every node of every
    // run writes to the same stream.
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let started = std::time::Instant::now();
    let faults = if args.faults.is_empty() { Fault::ALL.to_vec() } else { args.faults.clone() };
    let template =
        |seed| Options { faults: faults.clone(), broken: args.broken, faulty: args.faulty, ..Options::new(seed) };
    let outcomes = runtime.block_on(run_seeds(&args.seeds.0, args.parallel, template, |seed, outcome| match outcome {
        Ok(outcome) => {
            println!("{}", outcome.line());
            if !outcome.failures().is_empty() {
                print!("{}", outcome.report());
            }
        }
        Err(error) => println!("seed {seed}: the run failed: {error:#}"),
    }));
    runtime.shutdown_timeout(Duration::from_secs(2));
    let elapsed = started.elapsed().as_secs_f64();
    let failed: Vec<u64> = outcomes
        .iter()
        .filter(|(_, outcome)| outcome.as_ref().map_or(true, |outcome| !outcome.failures().is_empty()))
        .map(|(seed, _)| *seed)
        .collect();
    println!(
        "{} seeds in {elapsed:.1} s ({:.2} seeds/s, {} at once); {} failed",
        outcomes.len(),
        outcomes.len() as f64 / elapsed,
        args.parallel,
        failed.len()
    );
    if !failed.is_empty() {
        bail!("seeds {failed:?} failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_is_a_function_of_the_seed_within_the_faulty_phase() {
        let options = Options::new(7);
        assert_eq!(plan(&options), plan(&options));
        assert_ne!(plan(&options), plan(&Options::new(8)));
        let end = options.warm_up + options.faulty;
        for planned in plan(&options) {
            assert!(planned.at >= options.warm_up && planned.at + planned.hold <= end, "{planned:?}");
            assert_ne!(planned.nodes.0, planned.nodes.1);
            assert!((1..=3).contains(&planned.nodes.0) && (1..=3).contains(&planned.nodes.1));
            assert!(planned.group <= 2);
        }
        assert!(plan(&Options { faults: Vec::new(), ..options }).is_empty());
    }
}
