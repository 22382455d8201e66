//! The nemesis: a schedule of faults drawn from the seed ([`plan`], pure), then carried
//! out against the local cluster ([`carry_out`]), each fault logged with its times.
//! Process faults signal the nodes; network faults ([`Nemesis::is_network`]) set rules on
//! the links of the launcher's proxy ([`link_fault`], pure) and heal them all at the end;
//! service faults ([`Nemesis::SERVICES`]) cut every node's link to the results database
//! or to Redis, then restore it;
//! membership faults ([`Nemesis::is_membership`]) add and remove voters through the admin
//! API ([`membership_steps`], pure).
//!
//! The schedule alternates healthy and faulty phases: a healthy start while the first PKs
//! form, then a fault and a healthy gap in turn, and a final healthy phase (at least
//! [`FINAL_HEALTHY`], or a quarter of the run) in which progress is required. The same
//! seed gives the same schedule; which node is "the leader of group g" is looked up when
//! the fault comes.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;
use pkd_cluster::Rule;
use pkd_cluster::api::FaultSettings;
use pkd_cluster::app::wall_clock_ms;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::time::Instant;

use super::history::{FaultEvent, History};
use super::services::Services;
use crate::bench::target::Target;

/// The healthy start, while the first PKs form.
pub const WARM_UP: Duration = Duration::from_secs(5);
/// The shortest final healthy phase.
pub const FINAL_HEALTHY: Duration = Duration::from_secs(12);

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Nemesis {
    /// SIGKILL a random node, restart it after 1-3 s.
    Kill,
    /// SIGKILL the leader of a random group (the lobby or an arena), restart it after 1-3 s.
    KillLeader,
    /// SIGSTOP a random node for 1-4 s, then SIGCONT.
    Pause,
    /// SIGSTOP the leader of a random group for 1-4 s, then SIGCONT.
    PauseLeader,
    /// Move a random group's leadership to another node (admin API).
    Transfer,
    /// SIGKILL every node, then start them all again.
    RestartAll,
    /// Set a random node's clock 0.5-2 s ahead or behind for 3-6 s (fault-injection builds).
    Skew,
    /// Add 20-300 ms to every flush of a random group leader's disk for 2-5 s
    /// (fault-injection builds).
    SlowDisk,
    /// Make every flush of a random node fail, as a full disk does, for 1-2 s; the node
    /// stops (or is killed), then is restarted as its supervisor would (fault-injection
    /// builds).
    DiskFull,
    /// Cut the leader of a random group off from every other node, both ways, for 2-6 s.
    PartitionLeader,
    /// Cut a random minority (half the nodes, rounded down) off from the majority, for 2-6 s.
    PartitionHalf,
    /// Split the nodes but one into two halves that cannot reach each other; the one left
    /// reaches both. For 2-6 s.
    Bridge,
    /// Cut what a random node sends another (the other way still passes), for 2-6 s.
    DropOneWay,
    /// Delay both ways of the link between two random nodes by 50-400 ms, for 2-6 s.
    Delay,
    /// Cut the link between two random nodes, both ways, for 2-6 s.
    Blackhole,
    /// Cut every node's link to the results database (--mysql-url), for 2-6 s.
    MysqlCut,
    /// Cut every node's link to the Redis cache (--redis-url), for 2-6 s.
    RedisCut,
    /// A node joins: started with `--join` (the smallest free id, on an empty data
    /// directory), added to every group as a learner, caught up, promoted (admin API). In
    /// a cluster one node larger than it started, a voter leaves first.
    AddNode,
    /// A voter (the leader of a random group, if known) is removed from every group (admin
    /// API), runs on for 1-3 s, then is stopped and its data deleted. In a cluster of its
    /// starting size, a node joins first.
    RemoveNode,
}

impl Nemesis {
    pub const ALL: [Nemesis; 6] = [
        Nemesis::Kill,
        Nemesis::KillLeader,
        Nemesis::Pause,
        Nemesis::PauseLeader,
        Nemesis::Transfer,
        Nemesis::RestartAll,
    ];

    /// The nemeses that need the fault-injection hooks of the nodes.
    pub const HOOKED: [Nemesis; 3] = [Nemesis::Skew, Nemesis::SlowDisk, Nemesis::DiskFull];

    /// The default choice: every nemesis this build can carry out (the process and
    /// network faults, and those of the fault-injection hooks in a build that has them).
    pub fn defaults() -> Vec<Nemesis> {
        let mut kinds = Nemesis::ALL.to_vec();
        kinds.extend(Nemesis::NETWORK);
        kinds.extend(Nemesis::MEMBERSHIP);
        if cfg!(feature = "fault-injection") {
            kinds.extend(Nemesis::HOOKED);
        }
        kinds
    }

    /// The membership nemeses: the voters stay between the starting count and one more.
    pub const MEMBERSHIP: [Nemesis; 2] = [Nemesis::AddNode, Nemesis::RemoveNode];

    /// The network nemeses: they need the node-to-node links to go through the proxy.
    pub const NETWORK: [Nemesis; 6] = [
        Nemesis::PartitionLeader,
        Nemesis::PartitionHalf,
        Nemesis::Bridge,
        Nemesis::DropOneWay,
        Nemesis::Delay,
        Nemesis::Blackhole,
    ];

    /// The nemeses that cut the nodes' links to a service: each needs that service's URL
    /// (`--mysql-url`, `--redis-url`), and is a default only with it.
    pub const SERVICES: [Nemesis; 2] = [Nemesis::MysqlCut, Nemesis::RedisCut];

    /// The flag a service nemesis needs.
    pub fn service_flag(self) -> Option<&'static str> {
        match self {
            Nemesis::MysqlCut => Some("--mysql-url"),
            Nemesis::RedisCut => Some("--redis-url"),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Nemesis::Kill => "kill",
            Nemesis::KillLeader => "kill-leader",
            Nemesis::Pause => "pause",
            Nemesis::PauseLeader => "pause-leader",
            Nemesis::Transfer => "transfer",
            Nemesis::RestartAll => "restart-all",
            Nemesis::Skew => "skew",
            Nemesis::SlowDisk => "slow-disk",
            Nemesis::DiskFull => "disk-full",
            Nemesis::PartitionLeader => "partition-leader",
            Nemesis::PartitionHalf => "partition-half",
            Nemesis::Bridge => "bridge",
            Nemesis::DropOneWay => "drop-one-way",
            Nemesis::Delay => "delay",
            Nemesis::Blackhole => "blackhole",
            Nemesis::MysqlCut => "mysql-cut",
            Nemesis::RedisCut => "redis-cut",
            Nemesis::AddNode => "add-node",
            Nemesis::RemoveNode => "remove-node",
        }
    }

    pub fn is_network(self) -> bool {
        Nemesis::NETWORK.contains(&self)
    }

    pub fn is_membership(self) -> bool {
        Nemesis::MEMBERSHIP.contains(&self)
    }

    /// Time the schedule leaves after the hold, before the healthy gap: a restart takes a
    /// few seconds, a membership change more (a process to start, a learner to catch up).
    fn aftermath(self) -> Duration {
        match self {
            Nemesis::Transfer => Duration::ZERO,
            Nemesis::AddNode | Nemesis::RemoveNode => Duration::from_secs(6),
            _ => Duration::from_secs(2),
        }
    }

    /// How long the fault lasts (a killed node stays down, a paused one stopped).
    fn hold(self, rng: &mut StdRng) -> Duration {
        match self {
            Nemesis::Kill | Nemesis::KillLeader => Duration::from_millis(rng.random_range(1_000..3_000)),
            Nemesis::Pause | Nemesis::PauseLeader => Duration::from_millis(rng.random_range(1_000..4_000)),
            Nemesis::Transfer | Nemesis::RestartAll | Nemesis::AddNode => Duration::ZERO,
            Nemesis::RemoveNode => Duration::from_millis(rng.random_range(1_000..3_000)),
            Nemesis::Skew => Duration::from_millis(rng.random_range(3_000..6_000)),
            Nemesis::SlowDisk => Duration::from_millis(rng.random_range(2_000..5_000)),
            Nemesis::DiskFull => Duration::from_millis(rng.random_range(1_000..2_000)),
            Nemesis::PartitionLeader
            | Nemesis::PartitionHalf
            | Nemesis::Bridge
            | Nemesis::DropOneWay
            | Nemesis::Delay
            | Nemesis::Blackhole
            | Nemesis::MysqlCut
            | Nemesis::RedisCut => Duration::from_millis(rng.random_range(2_000..6_000)),
        }
    }

    /// The latency a delay adds to each direction (nothing for the others). Drawn only
    /// for a delay, so the schedules of the other nemeses stay what they were.
    fn delay(self, rng: &mut StdRng) -> Duration {
        match self {
            Nemesis::Delay => Duration::from_millis(rng.random_range(50..400)),
            _ => Duration::ZERO,
        }
    }
}

/// One planned fault.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Planned {
    /// From the start of the workload.
    #[serde(serialize_with = "seconds")]
    pub at: Duration,
    pub nemesis: Nemesis,
    #[serde(serialize_with = "seconds")]
    pub hold: Duration,
    /// Picks the node (`pick % nodes`) or, for a transfer, the new leader among the others.
    pub node_pick: u64,
    /// Picks the group (`pick % groups`) for the leader nemeses and transfers.
    pub group_pick: u64,
    /// The latency a delay adds to each direction of its link.
    #[serde(serialize_with = "seconds")]
    pub delay: Duration,
}

fn seconds<S: serde::Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(duration.as_secs_f64())
}

/// The faults of a run of `duration`, drawn from `seed` among `kinds`.
pub fn plan(seed: u64, duration: Duration, kinds: &[Nemesis]) -> Vec<Planned> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut planned = Vec::new();
    if kinds.is_empty() {
        return planned;
    }
    let final_healthy = FINAL_HEALTHY.max(duration / 4);
    let Some(last) = duration.checked_sub(final_healthy) else { return planned };
    let mut at = WARM_UP;
    loop {
        let nemesis = kinds[rng.random_range(0..kinds.len())];
        let hold = nemesis.hold(&mut rng);
        let delay = nemesis.delay(&mut rng);
        let takes = hold + nemesis.aftermath();
        if at + takes > last {
            return planned;
        }
        planned.push(Planned { at, nemesis, hold, node_pick: rng.random(), group_pick: rng.random(), delay });
        at += takes + Duration::from_millis(rng.random_range(3_000..6_000));
    }
}

/// Carries out `planned` from `start` on, logging each fault in `history`; the service
/// nemeses cut the links of `services`.
pub async fn carry_out(
    planned: Vec<Planned>,
    target: Arc<Target>,
    services: Arc<Services>,
    history: Arc<History>,
    start: Instant,
) {
    let original = target.member_ids().len();
    let groups = 1 + u64::from(target.arenas.unwrap_or(1));
    for step in planned {
        tokio::time::sleep_until(start + step.at).await;
        // The members as they are now: the membership nemeses change them.
        let ids = target.member_ids();
        let group = step.group_pick % groups;
        let random_node = ids[(step.node_pick % ids.len() as u64) as usize];
        let leader = match step.nemesis {
            Nemesis::KillLeader
            | Nemesis::PauseLeader
            | Nemesis::Transfer
            | Nemesis::SlowDisk
            | Nemesis::PartitionLeader
            | Nemesis::AddNode
            | Nemesis::RemoveNode => target.leader_of(group).await,
            _ => None,
        };
        let mut event = FaultEvent::begun(step.nemesis.name(), wall_clock_ms());
        let result = match step.nemesis {
            Nemesis::Kill | Nemesis::KillLeader => {
                let node = leader.unwrap_or(random_node);
                event.node = Some(node);
                event.group = leader.map(|_| group);
                eprintln!("nemesis: kill -9 node {node}");
                kill_and_restart(&target, node, step.hold).await
            }
            Nemesis::Pause | Nemesis::PauseLeader => {
                let node = leader.unwrap_or(random_node);
                event.node = Some(node);
                event.group = leader.map(|_| group);
                eprintln!("nemesis: SIGSTOP node {node} for {:?}", step.hold);
                pause_and_resume(&target, node, step.hold).await
            }
            Nemesis::Transfer => match leader {
                Some(from) => {
                    let others: Vec<u64> = ids.iter().copied().filter(|&id| id != from).collect();
                    let to = others[(step.node_pick % others.len().max(1) as u64) as usize];
                    (event.node, event.group, event.to) = (Some(from), Some(group), Some(to));
                    eprintln!("nemesis: move group {group}'s leadership from node {from} to node {to}");
                    target.transfer_leader(group, to).await.map(|_| ())
                }
                None => Err(anyhow::anyhow!("group {group} has no known leader")),
            },
            Nemesis::RestartAll => {
                eprintln!("nemesis: kill -9 every node and start them again");
                target.restart_all().await
            }
            Nemesis::Skew => {
                let offset = skew_ms(step.group_pick);
                (event.node, event.amount_ms) = (Some(random_node), Some(offset));
                eprintln!("nemesis: node {random_node}'s clock {offset:+} ms for {:?}", step.hold);
                skew_clock(&target, random_node, offset, step.hold).await
            }
            Nemesis::SlowDisk => {
                let node = leader.unwrap_or(random_node);
                let delay = 20 + (step.node_pick >> 8) % 281;
                (event.node, event.group, event.amount_ms) = (Some(node), leader.map(|_| group), Some(delay as i64));
                eprintln!("nemesis: node {node}'s flushes {delay} ms slower for {:?}", step.hold);
                slow_disk(&target, node, delay, step.hold).await
            }
            Nemesis::DiskFull => {
                event.node = Some(random_node);
                eprintln!("nemesis: node {random_node}'s disk full for {:?}, then restart it", step.hold);
                fill_disk(&target, random_node, step.hold).await
            }
            Nemesis::PartitionLeader
            | Nemesis::PartitionHalf
            | Nemesis::Bridge
            | Nemesis::DropOneWay
            | Nemesis::Delay
            | Nemesis::Blackhole => match link_fault(step.nemesis, &ids, step.node_pick, leader, step.delay) {
                Some(fault) => {
                    if step.nemesis == Nemesis::PartitionLeader {
                        event.node = fault.isolated;
                        event.group = leader.map(|_| group);
                    }
                    event.links = Some(fault.shown.clone());
                    eprintln!("nemesis: {} {} for {:?}", step.nemesis.name(), fault.shown, step.hold);
                    disturb_links(&target, &fault, step.hold).await
                }
                None => Err(anyhow::anyhow!("{} needs at least two nodes", step.nemesis.name())),
            },
            Nemesis::MysqlCut | Nemesis::RedisCut => {
                eprintln!("nemesis: {} for {:?}", step.nemesis.name(), step.hold);
                cut_service(&services, step.nemesis, step.hold).await
            }
            Nemesis::AddNode | Nemesis::RemoveNode => {
                let victim = leader.filter(|leader| ids.contains(leader)).unwrap_or(random_node);
                let steps = membership_steps(step.nemesis, &ids, original, victim);
                let shown = show_membership(&steps, &ids);
                event.node = steps.iter().find_map(|&member_step| match (step.nemesis, member_step) {
                    (Nemesis::AddNode, MemberStep::Add(id)) | (Nemesis::RemoveNode, MemberStep::Remove(id)) => Some(id),
                    _ => None,
                });
                let removes_leader = steps.contains(&MemberStep::Remove(victim)) && leader == Some(victim);
                event.group = removes_leader.then_some(group);
                event.members = Some(shown.clone());
                event.joined = steps.iter().find_map(|&member_step| match member_step {
                    MemberStep::Add(id) => Some(id),
                    MemberStep::Remove(_) => None,
                });
                eprintln!("nemesis: {} {shown}", step.nemesis.name());
                change_members(&target, &steps, step.hold).await
            }
        };
        event.healed_ms = wall_clock_ms();
        event.error = result.err().map(|error| format!("{error:#}"));
        history.fault(event);
    }
}

/// One step of a membership nemesis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberStep {
    /// Node `id` joins afresh: started with `--join` on an empty data directory, added as
    /// a learner, caught up, promoted.
    Add(u64),
    /// Node `id` leaves every group; it runs on for the fault's hold, then is stopped and
    /// its data deleted.
    Remove(u64),
}

/// The steps of membership nemesis `nemesis` in a cluster whose voters are `voters`, which
/// started with `original` nodes. The voters stay between `original` and `original + 1`:
/// `add-node` adds a node, or in a cluster one larger first removes `victim`; `remove-node`
/// removes `victim`, or in a cluster of its starting size first adds a node. A node added
/// takes the smallest id no voter has, so a node removed earlier comes back under its id
/// with an empty data directory, and no id is ever above `original + 1`. Nothing for
/// another nemesis, or a `victim` that is no voter.
pub fn membership_steps(nemesis: Nemesis, voters: &[u64], original: usize, victim: u64) -> Vec<MemberStep> {
    let free = |taken: &[u64]| (1..).find(|id| !taken.contains(id)).unwrap_or(u64::MAX);
    if !voters.contains(&victim) {
        return Vec::new();
    }
    let staying: Vec<u64> = voters.iter().copied().filter(|&id| id != victim).collect();
    match nemesis {
        Nemesis::AddNode if voters.len() <= original => vec![MemberStep::Add(free(voters))],
        Nemesis::AddNode => vec![MemberStep::Remove(victim), MemberStep::Add(free(&staying))],
        Nemesis::RemoveNode if voters.len() > original => vec![MemberStep::Remove(victim)],
        Nemesis::RemoveNode => vec![MemberStep::Add(free(voters)), MemberStep::Remove(victim)],
        _ => Vec::new(),
    }
}

/// How the report shows membership steps taken from `voters`: `+4 -2 → {1,3,4}`.
pub fn show_membership(steps: &[MemberStep], voters: &[u64]) -> String {
    let mut after = voters.to_vec();
    let mut shown = Vec::new();
    for step in steps {
        match *step {
            MemberStep::Add(id) => {
                after.push(id);
                shown.push(format!("+{id}"));
            }
            MemberStep::Remove(id) => {
                after.retain(|&voter| voter != id);
                shown.push(format!("-{id}"));
            }
        }
    }
    after.sort_unstable();
    let after: Vec<String> = after.iter().map(u64::to_string).collect();
    format!("{} → {{{}}}", shown.join(" "), after.join(","))
}

/// Takes `steps` through the admin API; a removed node runs on for `hold` before it is
/// stopped (the others must cope with a removed node that still talks).
async fn change_members(target: &Target, steps: &[MemberStep], hold: Duration) -> anyhow::Result<()> {
    for &step in steps {
        match step {
            MemberStep::Add(id) => target.add_node(id).await?,
            MemberStep::Remove(id) => {
                target.remove_node(id).await?;
                tokio::time::sleep(hold).await;
                target.retire_node(id).await?;
            }
        }
    }
    Ok(())
}

async fn kill_and_restart(target: &Target, node: u64, down: Duration) -> anyhow::Result<()> {
    target.kill(node).await?;
    tokio::time::sleep(down).await;
    target.restart(node).await
}

/// A clock offset of 0.5-2 s, ahead or behind, from a pick.
fn skew_ms(pick: u64) -> i64 {
    let size = 500 + (pick >> 1) % 1_501;
    if pick % 2 == 0 { size as i64 } else { -(size as i64) }
}

async fn skew_clock(target: &Target, node: u64, offset: i64, hold: Duration) -> anyhow::Result<()> {
    target.set_faults(node, &FaultSettings { clock_offset_ms: Some(offset), ..FaultSettings::default() }).await?;
    tokio::time::sleep(hold).await;
    target.set_faults(node, &FaultSettings { clock_offset_ms: Some(0), ..FaultSettings::default() }).await.map(|_| ())
}

async fn slow_disk(target: &Target, node: u64, delay_ms: u64, hold: Duration) -> anyhow::Result<()> {
    target.set_faults(node, &FaultSettings { flush_delay_ms: Some(delay_ms), ..FaultSettings::default() }).await?;
    tokio::time::sleep(hold).await;
    target.set_faults(node, &FaultSettings { flush_delay_ms: Some(0), ..FaultSettings::default() }).await.map(|_| ())
}

/// Fails every flush of `node` for `hold`; a node whose groups stopped on it exits by
/// itself (fail-stop), and one that did not is killed; then it is started again.
async fn fill_disk(target: &Target, node: u64, hold: Duration) -> anyhow::Result<()> {
    target.set_faults(node, &FaultSettings { flush_fails: Some(true), ..FaultSettings::default() }).await?;
    tokio::time::sleep(hold).await;
    target.kill(node).await?;
    target.restart(node).await
}

/// What a network nemesis does to the links: one rule on some directions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkFault {
    pub rule: Rule,
    /// The directions `(from, to)` the rule applies to; every other passes.
    pub directions: Vec<(u64, u64)>,
    /// The node cut off from every other, if one is.
    pub isolated: Option<u64>,
    /// How the report shows it: `{1} | {2,3}`, `1 -> 2`, `1 <-> 2 +120ms`.
    pub shown: String,
}

/// The links `nemesis` disturbs among the nodes `ids`: its victims are drawn from `pick`
/// (a partition of the leader cuts `leader` off, or a drawn node if none is known).
/// `None` for a nemesis that does not disturb links, or with fewer than two nodes.
pub fn link_fault(nemesis: Nemesis, ids: &[u64], pick: u64, leader: Option<u64>, delay: Duration) -> Option<LinkFault> {
    let mut shuffled = ids.to_vec();
    shuffled.sort_unstable();
    shuffled.dedup();
    if shuffled.len() < 2 {
        return None;
    }
    rand::seq::SliceRandom::shuffle(shuffled.as_mut_slice(), &mut StdRng::seed_from_u64(pick));
    let (a, b) = (shuffled[0], shuffled[1]);
    let both = |a: u64, b: u64| vec![(a, b), (b, a)];
    let fault = match nemesis {
        Nemesis::Blackhole => {
            LinkFault { rule: Rule::Drop, directions: both(a, b), isolated: None, shown: format!("{a} <-> {b}") }
        }
        Nemesis::DropOneWay => {
            LinkFault { rule: Rule::Drop, directions: vec![(a, b)], isolated: None, shown: format!("{a} -> {b}") }
        }
        Nemesis::Delay => LinkFault {
            rule: Rule::Delay(delay),
            directions: both(a, b),
            isolated: None,
            shown: format!("{a} <-> {b} +{}ms", delay.as_millis()),
        },
        Nemesis::PartitionLeader => {
            let cut_off = leader.filter(|leader| shuffled.contains(leader)).unwrap_or(a);
            let rest: Vec<u64> = shuffled.iter().copied().filter(|&id| id != cut_off).collect();
            split(Some(cut_off), &[cut_off], &rest, String::new())
        }
        Nemesis::PartitionHalf => {
            let (minority, majority) = shuffled.split_at(shuffled.len() / 2);
            let isolated = (minority.len() == 1).then(|| minority[0]);
            split(isolated, minority, majority, String::new())
        }
        Nemesis::Bridge => {
            let (bridge, rest) = (shuffled[0], &shuffled[1..]);
            let (one, other) = rest.split_at(rest.len() / 2);
            if one.is_empty() {
                return None;
            }
            split(None, one, other, format!(" (bridge {bridge})"))
        }
        _ => return None,
    };
    Some(fault)
}

/// The nodes of `one` and those of `other` cannot reach each other.
fn split(isolated: Option<u64>, one: &[u64], other: &[u64], note: String) -> LinkFault {
    let directions = one.iter().flat_map(|&a| other.iter().flat_map(move |&b| [(a, b), (b, a)])).collect();
    let set = |ids: &[u64]| {
        let mut ids = ids.to_vec();
        ids.sort_unstable();
        let ids: Vec<String> = ids.iter().map(u64::to_string).collect();
        format!("{{{}}}", ids.join(","))
    };
    LinkFault { rule: Rule::Drop, directions, isolated, shown: format!("{} | {}{note}", set(one), set(other)) }
}

/// Sets `fault`'s rule on its links, waits `hold`, and heals every link.
async fn disturb_links(target: &Target, fault: &LinkFault, hold: Duration) -> anyhow::Result<()> {
    let links = target.links()?;
    for &(from, to) in &fault.directions {
        links.set(from, to, fault.rule);
    }
    tokio::time::sleep(hold).await;
    links.heal();
    Ok(())
}

/// Cuts every node's link to the service of `nemesis` for `hold`, then restores it.
async fn cut_service(services: &Services, nemesis: Nemesis, hold: Duration) -> anyhow::Result<()> {
    let link = match nemesis {
        Nemesis::MysqlCut => services.mysql_link(),
        Nemesis::RedisCut => services.redis_link(),
        _ => None,
    };
    let link = link.with_context(|| format!("{} has no service link", nemesis.name()))?;
    link.cut();
    tokio::time::sleep(hold).await;
    link.restore();
    Ok(())
}

async fn pause_and_resume(target: &Target, node: u64, stopped: Duration) -> anyhow::Result<()> {
    target.pause(node).await?;
    tokio::time::sleep(stopped).await;
    target.resume(node).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_one_schedule_with_healthy_phases_around_each_fault() {
        let duration = Duration::from_secs(60);
        let first = plan(7, duration, &Nemesis::ALL);
        assert_eq!(first, plan(7, duration, &Nemesis::ALL), "the same seed, the same schedule");
        assert_ne!(first, plan(8, duration, &Nemesis::ALL));
        assert!(first.len() >= 3, "{first:#?}");
        assert!(first[0].at >= WARM_UP);
        for pair in first.windows(2) {
            let healthy_from = pair[0].at + pair[0].hold + Duration::from_secs(2);
            assert!(pair[1].at >= healthy_from + Duration::from_secs(3), "a healthy gap between faults: {pair:#?}");
        }
        let last = first.last().unwrap();
        assert!(last.at + last.hold + Duration::from_secs(2) <= duration - Duration::from_secs(15));
    }

    #[test]
    fn only_the_chosen_nemeses_are_drawn_and_a_short_run_has_none() {
        let planned = plan(3, Duration::from_secs(120), &[Nemesis::Transfer]);
        assert!(planned.iter().all(|step| step.nemesis == Nemesis::Transfer));
        assert!(plan(3, Duration::from_secs(15), &Nemesis::ALL).is_empty());
        assert!(plan(3, Duration::from_secs(60), &[]).is_empty());
    }

    #[test]
    fn the_process_nemeses_keep_the_schedules_they_had() {
        // Seed 1's schedule over the six process faults, as recorded in docs/faults.md's
        // runs (then the default list).
        let kinds: Vec<Nemesis> =
            plan(1, Duration::from_secs(60), &Nemesis::ALL).iter().map(|step| step.nemesis).collect();
        use Nemesis::*;
        assert_eq!(kinds, [Transfer, KillLeader, Kill, RestartAll, KillLeader, PauseLeader]);
    }

    #[test]
    fn network_nemeses_are_drawn_with_their_holds_and_delays() {
        let planned = plan(5, Duration::from_secs(120), &Nemesis::NETWORK);
        assert!(planned.len() >= 5, "{planned:#?}");
        for step in &planned {
            assert!(step.nemesis.is_network());
            assert!((Duration::from_secs(2)..Duration::from_secs(6)).contains(&step.hold), "{step:?}");
            let delayed = step.nemesis == Nemesis::Delay;
            assert_eq!(delayed, (Duration::from_millis(50)..Duration::from_millis(400)).contains(&step.delay));
        }
    }

    #[test]
    fn service_cuts_are_drawn_with_their_holds_and_leave_other_schedules_alone() {
        let planned = plan(9, Duration::from_secs(120), &Nemesis::SERVICES);
        assert!(planned.len() >= 5, "{planned:#?}");
        for step in &planned {
            assert!(step.nemesis.service_flag().is_some(), "{step:?}");
            assert!((Duration::from_secs(2)..Duration::from_secs(6)).contains(&step.hold), "{step:?}");
        }
        assert!(planned.iter().any(|step| step.nemesis == Nemesis::MysqlCut));
        assert!(planned.iter().any(|step| step.nemesis == Nemesis::RedisCut));
        assert!(!Nemesis::defaults().iter().any(|kind| kind.service_flag().is_some()), "defaults only with a URL");
    }

    #[test]
    fn membership_nemeses_are_drawn_with_time_to_change_the_members() {
        let planned = plan(17, Duration::from_secs(45), &[Nemesis::AddNode, Nemesis::RemoveNode, Nemesis::KillLeader]);
        let kinds: Vec<Nemesis> = planned.iter().map(|step| step.nemesis).collect();
        assert_eq!(kinds, [Nemesis::RemoveNode, Nemesis::KillLeader, Nemesis::AddNode], "tests/it/faults.rs runs this");
        for pair in planned.windows(2) {
            let aftermath = if pair[0].nemesis.is_membership() { 6 } else { 2 };
            let healthy_from = pair[0].at + pair[0].hold + Duration::from_secs(aftermath);
            assert!(pair[1].at >= healthy_from + Duration::from_secs(3), "{pair:#?}");
        }
        for step in plan(9, Duration::from_secs(300), &Nemesis::MEMBERSHIP) {
            match step.nemesis {
                Nemesis::AddNode => assert_eq!(step.hold, Duration::ZERO),
                _ => assert!((Duration::from_secs(1)..Duration::from_secs(3)).contains(&step.hold), "{step:?}"),
            }
        }
        assert!(Nemesis::defaults().contains(&Nemesis::AddNode) && Nemesis::defaults().contains(&Nemesis::RemoveNode));
    }

    #[test]
    fn membership_steps_keep_the_voters_between_the_starting_count_and_one_more() {
        use MemberStep::{Add, Remove};
        let add = |voters: &[u64], victim| membership_steps(Nemesis::AddNode, voters, 3, victim);
        let remove = |voters: &[u64], victim| membership_steps(Nemesis::RemoveNode, voters, 3, victim);
        // Three voters: a node joins; or one joins before the victim leaves.
        assert_eq!(add(&[1, 2, 3], 2), [Add(4)]);
        assert_eq!(remove(&[1, 2, 3], 2), [Add(4), Remove(2)]);
        // Four: the victim leaves; or it leaves and comes back on an empty data directory.
        assert_eq!(remove(&[1, 2, 3, 4], 4), [Remove(4)]);
        assert_eq!(add(&[1, 2, 3, 4], 1), [Remove(1), Add(1)]);
        // A node removed earlier is the next to join, under its id.
        assert_eq!(add(&[1, 3, 4], 3), [Add(2)]);
        assert_eq!(remove(&[1, 3, 4], 4), [Add(2), Remove(4)]);
        // Only voters are removed; other nemeses have no steps.
        assert!(remove(&[1, 2, 3], 7).is_empty());
        assert!(membership_steps(Nemesis::Kill, &[1, 2, 3], 3, 1).is_empty());
        assert_eq!(show_membership(&[Add(4), Remove(2)], &[1, 2, 3]), "+4 -2 → {1,3,4}");
        assert_eq!(show_membership(&[Remove(1), Add(1)], &[1, 2, 3, 4]), "-1 +1 → {1,2,3,4}");

        // Any sequence of them, with any victims, from 3 or 5 nodes.
        let mut rng = StdRng::seed_from_u64(3);
        for original in [3_usize, 5] {
            let mut voters: Vec<u64> = (1..=original as u64).collect();
            for _ in 0..200 {
                let nemesis = Nemesis::MEMBERSHIP[rng.random_range(0..2)];
                let victim = voters[rng.random_range(0..voters.len())];
                for step in membership_steps(nemesis, &voters, original, victim) {
                    match step {
                        Add(id) => {
                            assert!(!voters.contains(&id) && id <= original as u64 + 1, "{step:?} to {voters:?}");
                            voters.push(id);
                        }
                        Remove(id) => {
                            assert_eq!(id, victim);
                            voters.retain(|&voter| voter != id);
                        }
                    }
                    // After every step, not only after the fault.
                    assert!((original..=original + 1).contains(&voters.len()), "{voters:?}");
                    assert!(voters.len() >= 3, "{voters:?}");
                }
            }
        }
    }

    fn directions(fault: &LinkFault) -> Vec<(u64, u64)> {
        let mut directions = fault.directions.clone();
        directions.sort_unstable();
        directions
    }

    #[test]
    fn pair_faults_disturb_one_link() {
        let ids = [1, 2, 3];
        let none = Duration::ZERO;
        let blackhole = link_fault(Nemesis::Blackhole, &ids, 4, None, none).unwrap();
        let [a, b] = [blackhole.directions[0].0, blackhole.directions[0].1];
        assert_ne!(a, b);
        assert_eq!(
            directions(&blackhole),
            directions(&LinkFault { directions: vec![(a, b), (b, a)], ..blackhole.clone() })
        );
        assert_eq!(blackhole.rule, Rule::Drop);
        assert_eq!(blackhole.shown, format!("{a} <-> {b}"));

        let one_way = link_fault(Nemesis::DropOneWay, &ids, 4, None, none).unwrap();
        assert_eq!(one_way.directions, [(a, b)], "the same pick, the same pair");
        assert_eq!(one_way.shown, format!("{a} -> {b}"));

        let delay = link_fault(Nemesis::Delay, &ids, 4, None, Duration::from_millis(120)).unwrap();
        assert_eq!(delay.rule, Rule::Delay(Duration::from_millis(120)));
        assert_eq!(delay.directions.len(), 2);
        assert!(delay.shown.ends_with("+120ms"), "{}", delay.shown);

        assert_eq!(link_fault(Nemesis::Blackhole, &[1], 4, None, none), None);
        assert_eq!(link_fault(Nemesis::Kill, &ids, 4, None, none), None);
    }

    #[test]
    fn partitions_cut_every_link_between_their_sides_and_no_other() {
        let ids = [1, 2, 3, 4, 5];
        let none = Duration::ZERO;
        let leader = link_fault(Nemesis::PartitionLeader, &ids, 9, Some(4), none).unwrap();
        assert_eq!(leader.isolated, Some(4));
        assert_eq!(leader.shown, "{4} | {1,2,3,5}");
        assert_eq!(directions(&leader), [(1, 4), (2, 4), (3, 4), (4, 1), (4, 2), (4, 3), (4, 5), (5, 4)]);
        let unknown = link_fault(Nemesis::PartitionLeader, &ids, 9, None, none).unwrap();
        assert_eq!(unknown.directions.len(), 8, "a drawn node is cut off instead");

        for pick in 0..20 {
            let half = link_fault(Nemesis::PartitionHalf, &ids, pick, None, none).unwrap();
            let minority: std::collections::BTreeSet<u64> = half
                .directions
                .iter()
                .map(|&(from, _)| from)
                .filter(|from| half.directions.iter().filter(|&&(a, _)| a == *from).count() == 3)
                .collect();
            assert_eq!(minority.len(), 2, "two nodes against three: {half:?}");
            assert_eq!(half.directions.len(), 2 * 2 * 3);

            let bridge = link_fault(Nemesis::Bridge, &ids, pick, None, none).unwrap();
            let bridge_node: u64 =
                bridge.shown.rsplit_once("bridge ").unwrap().1.trim_end_matches(')').parse().unwrap();
            assert!(bridge.directions.iter().all(|&(from, to)| from != bridge_node && to != bridge_node));
            assert_eq!(bridge.directions.len(), 2 * 2 * 2, "two against two: {bridge:?}");
        }
        let three = link_fault(Nemesis::Bridge, &[1, 2, 3], 0, None, none).unwrap();
        assert_eq!(three.directions.len(), 2, "with three nodes a bridge cuts the one link it does not hold");
    }
}
