//! `pkd faults`: a seeded fault test against real `pkd serve` processes. It starts a
//! local cluster, runs a workload through the public interfaces only (anchors over
//! WebSocket, the gift API), lets a nemesis drawn from the seed kill, pause, restart and
//! move leaders, cut, cut one way or slow the links between nodes, add and remove nodes,
//! then checks the recorded history and the settled results, and writes a report folder. `docs/faults.md` is the user's guide.
//!
//! - [`nemesis`]: the schedule (pure, from the seed) and the faults.
//! - [`workload`]: the gift senders, retrying with the same ids. [`viewers`]: users
//!   watching the anchors' rooms.
//! - [`history`]: what a run records. [`checkers`]: the verdicts. [`report`]: the folder.
//!
//! The anchors, the roster of running PKs and the cluster are `pkd bench`'s
//! ([`crate::bench::pks`], [`crate::bench::target`]).

pub mod checkers;
pub mod history;
#[cfg(feature = "fault-injection")]
pub mod inproc;
pub mod nemesis;
pub mod report;
pub mod services;
pub mod sink_checkers;
pub mod verdict;
pub mod viewers;
pub mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use pkd_cluster::AdminClient;
use pkd_cluster::app::wall_clock_ms;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;

use self::checkers::{Bounds, Facts, Verdict};
use self::history::{DigestRound, FaultEvent, History, Ledgers, NodeHistory, SettledRecord, StateSeen};
use self::nemesis::{Nemesis, Planned};
use self::services::{CacheSnapshot, Services, SqlSnapshot};
use self::workload::Gifting;
use crate::bench::parse_duration;
use crate::bench::pks::{AnchorBehaviour, AnchorPool, InvitationAnswers, Roster};
use crate::bench::target::Target;

/// The first anchor's user id (anchors are consecutive from it).
const FIRST_ANCHOR: u64 = 3_000_001;
/// The opening of every PK, in ms.
const OPENING_MS: i64 = 300;

/// The lobby's matching config for a run: an anchor left waiting alone for 0.5 s invites
/// up to 3 idle anchors (a new batch every 0.5 s), who may be invited again 1.5 s later.
const INVITING_CONFIG: &str =
    "{'name':'faults','interveningTime':500,'endTime':600000,'inviteNum':3,'inviteColdDown':1500}";

/// The other anchors' pause before each start: the two of a PK that ended start apart,
/// so that one often waits alone long enough to invite.
const THINK: (Duration, Duration) = (Duration::ZERO, Duration::from_millis(1_500));

/// The chance that an idle anchor accepts an invitation (it refuses otherwise).
const ACCEPT_CHANCE: f64 = 0.6;

/// Every other anchor pauses this long before each start, so that the anchors left
/// waiting alone find it idle and invite it.
const LINGER: (Duration, Duration) = (Duration::from_secs(2), Duration::from_secs(6));

/// `pkd faults`'s flags. Durations take a unit (`500ms`, `30s`, `5m`) or are seconds.
#[derive(Clone, Debug, clap::Args)]
pub struct FaultsArgs {
    /// The seed of the schedule and of the workload's choices (random if not given).
    #[arg(long, conflicts_with = "seeds")]
    pub seed: Option<u64>,
    /// A campaign: one run per seed, in turn (`1-100`, `1-10,42`), each with its own
    /// report folder under --out, and a table of them all (`campaign.md`) kept up to date.
    #[arg(long, value_parser = parse_seeds)]
    pub seeds: Option<Seeds>,
    /// Ends a campaign after the run going on at this time (e.g. `8h` with
    /// `--seeds 1-100000` for a night).
    #[arg(long, value_parser = parse_duration, requires = "seeds")]
    pub stop_after: Option<Duration>,
    /// How long the workload runs, faults included (the checks come after).
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub duration: Duration,
    /// Nodes of the local cluster.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Arena groups of the local cluster.
    #[arg(long, default_value_t = 2)]
    pub arenas: u32,
    /// The faults to draw from (default: every one this build can carry out; `skew`,
    /// `slow-disk` and `disk-full` need a build with `--features fault-injection`).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub nemesis: Vec<Nemesis>,
    /// Anchors matching over and over (an even number makes every one busy).
    #[arg(long, default_value_t = 8)]
    pub anchors: u64,
    /// Gift senders, each one request at a time.
    #[arg(long, default_value_t = 2)]
    pub senders: usize,
    /// Viewers, each watching one anchor's room at a time on a random node, moving to
    /// another room or node every few seconds.
    #[arg(long, default_value_t = 6)]
    pub viewers: u64,
    /// The battle phase of every PK.
    #[arg(long, value_parser = parse_duration, default_value = "4s")]
    pub battle: Duration,
    /// A PK must end at most this long after its endTime.
    #[arg(long, value_parser = parse_duration, default_value = "6s")]
    pub end_bound: Duration,
    /// How long the wind-down waits for every node to answer the same settled history,
    /// with every PK seen settled.
    #[arg(long, value_parser = parse_duration, default_value = "40s")]
    pub settle_wait: Duration,
    /// The report folder (default: target/faults/<seed>-<unix time>, or for a campaign
    /// target/faults/campaign-<unix time>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// A MySQL server for the settled results (`mysql://user:password@host:port`): the run
    /// creates a database of its own there, gives it to every node through a link it can
    /// cut (`mysql-cut`), checks it (`sql_matches_engine`), and drops it unless the run
    /// fails.
    #[arg(long, env = "PKD_FAULTS_MYSQL_URL", hide_env_values = true)]
    pub mysql_url: Option<String>,
    /// A Redis database for the read cache (`redis://host:port/9`): the run empties it,
    /// gives it to every node through a link it can cut (`redis-cut`), and checks it
    /// (`redis_converges`).
    #[arg(long, env = "PKD_FAULTS_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
}

impl FaultsArgs {
    /// The URL a service nemesis needs, if given.
    fn service_url(&self, nemesis: Nemesis) -> Option<&str> {
        match nemesis {
            Nemesis::MysqlCut => self.mysql_url.as_deref(),
            Nemesis::RedisCut => self.redis_url.as_deref(),
            _ => None,
        }
    }
}

/// The seeds of a campaign, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seeds(pub Vec<u64>);

/// `1-100`, `7`, `1-10,42`: seeds and inclusive ranges of them.
pub fn parse_seeds(text: &str) -> Result<Seeds, String> {
    let mut seeds = Vec::new();
    for part in text.split(',').map(str::trim).filter(|part| !part.is_empty()) {
        let number = |text: &str| text.trim().parse::<u64>().map_err(|_| format!("{text:?} is not a seed"));
        match part.split_once('-') {
            Some((first, last)) => {
                let (first, last) = (number(first)?, number(last)?);
                if last < first {
                    return Err(format!("{part}: the range ends before it starts"));
                }
                if last - first >= 10_000_000 {
                    return Err(format!("{part}: more than ten million seeds"));
                }
                seeds.extend(first..=last);
            }
            None => seeds.push(number(part)?),
        }
    }
    if seeds.is_empty() {
        return Err("no seed given".to_owned());
    }
    Ok(Seeds(seeds))
}

/// A finished run: what the report shows.
pub struct Run {
    pub seed: u64,
    pub args: FaultsArgs,
    pub planned: Vec<Planned>,
    pub history: Arc<History>,
    pub settled: BTreeMap<u64, NodeHistory>,
    pub verdicts: Vec<Verdict>,
    pub started_ms: i64,
    pub workload_from_ms: i64,
    pub liveness_from_ms: i64,
    pub ended_ms: i64,
    /// Each node's log, read before the cluster's directory went away.
    pub logs: BTreeMap<u64, Vec<u8>>,
    /// The run's MySQL database (`--mysql-url`), and whether it was kept (a failed run).
    pub mysql_database: Option<(String, bool)>,
    /// The Redis database the run emptied and used (`--redis-url`).
    pub redis_database: Option<u32>,
}

impl Run {
    pub fn violations(&self) -> usize {
        self.verdicts.iter().filter(|verdict| verdict.failed()).count()
    }

    /// The command that runs this seed again.
    pub fn replay_command(&self) -> String {
        let kinds: Vec<&str> = self.args.nemesis.iter().map(|kind| kind.name()).collect();
        // Nodes broken on purpose (fault-injection builds) are part of what to replay.
        let broken = std::env::var("PKD_FAULT_BREAK").ok().filter(|names| !names.is_empty());
        format!(
            "{}pkd faults --seed {} --duration {}s --nodes {} --arenas {} --nemesis {} --anchors {} --senders {} --viewers {} --battle {}ms --end-bound {}ms --settle-wait {}ms",
            broken.map(|names| format!("PKD_FAULT_BREAK={names} ")).unwrap_or_default(),
            self.seed,
            self.args.duration.as_secs_f64(),
            self.args.nodes,
            self.args.arenas,
            kinds.join(","),
            self.args.anchors,
            self.args.senders,
            self.args.viewers,
            self.args.battle.as_millis(),
            self.args.end_bound.as_millis(),
            self.args.settle_wait.as_millis(),
        ) + &self.service_flags()
    }

    /// The service flags of the replay command, passwords masked.
    fn service_flags(&self) -> String {
        let mut flags = String::new();
        for (flag, url) in [("--mysql-url", &self.args.mysql_url), ("--redis-url", &self.args.redis_url)] {
            if let Some(url) = url {
                flags.push_str(&format!(" {flag} {}", masked(url)));
            }
        }
        flags
    }
}

/// `url` with the password of its user info, if any, replaced by `***`.
fn masked(url: &str) -> String {
    match services::ServiceUrl::parse(url, 0) {
        Ok(parts) => match parts.userinfo.as_deref().and_then(|userinfo| userinfo.split_once(':')) {
            Some((user, _)) => url.replacen(parts.userinfo.as_deref().unwrap_or_default(), &format!("{user}:***"), 1),
            None => url.to_owned(),
        },
        Err(_) => url.to_owned(),
    }
}

pub fn run(args: FaultsArgs) -> anyhow::Result<()> {
    if !(1..=9).contains(&args.nodes) {
        bail!("--nodes takes 1 to 9 nodes");
    }
    if args.anchors < 2 {
        bail!("--anchors must be at least 2 (a PK takes two)");
    }
    let mut args = args;
    if args.nemesis.is_empty() {
        args.nemesis = Nemesis::defaults();
        // The service cuts are defaults only with their services.
        let given: Vec<Nemesis> =
            Nemesis::SERVICES.into_iter().filter(|&kind| args.service_url(kind).is_some()).collect();
        args.nemesis.extend(given);
        // The membership nemeses keep at least three voters: they need three nodes.
        args.nemesis.retain(|kind| args.nodes >= 3 || !kind.is_membership());
    }
    let unserved: Vec<String> = args
        .nemesis
        .iter()
        .filter_map(|&kind| match (kind.service_flag(), args.service_url(kind)) {
            (Some(flag), None) => Some(format!("{} needs {flag}", kind.name())),
            _ => None,
        })
        .collect();
    if !unserved.is_empty() {
        bail!("{}: the run has no such service to cut", unserved.join(", "));
    }
    let membership: Vec<&str> =
        args.nemesis.iter().filter(|kind| kind.is_membership()).map(|kind| kind.name()).collect();
    if !membership.is_empty() && args.nodes < 3 {
        bail!("{} keep at least three voters: they need --nodes 3 or more", membership.join(", "));
    }
    let hooked: Vec<&str> =
        args.nemesis.iter().filter(|kind| Nemesis::HOOKED.contains(kind)).map(|kind| kind.name()).collect();
    if !hooked.is_empty() && !cfg!(feature = "fault-injection") {
        bail!(
            "{} need the nodes' fault-injection hooks: build pkd with `--features fault-injection`",
            hooked.join(", ")
        );
    }
    crate::procfs::raise_open_files_limit();
    if let Some(seeds) = args.seeds.clone() {
        return campaign(args, &seeds.0);
    }
    let seed = args.seed.unwrap_or_else(|| rand::random::<u64>() % 1_000_000);
    eprintln!("pkd faults: seed {seed}");
    let (run, dir) = run_seed(&args, seed, args.out.clone())?;
    print!("{}", report::verdict_lines(&run));
    println!("report: {}", dir.display());
    if let Some((name, true)) = &run.mysql_database {
        println!("results database kept: {name}");
    }
    let failed = run.violations();
    if failed > 0 {
        eprintln!("replay this run with: {}", run.replay_command());
        bail!("{failed} of {} checkers found violations (seed {seed})", run.verdicts.len());
    }
    Ok(())
}

/// One seed's run, and its report written to `out` (or the default folder).
fn run_seed(args: &FaultsArgs, seed: u64, out: Option<PathBuf>) -> anyhow::Result<(Run, PathBuf)> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let run = runtime.block_on(execute(args.clone(), seed));
    runtime.shutdown_timeout(Duration::from_secs(2));
    let run = run?;
    let dir =
        out.unwrap_or_else(|| PathBuf::from("target").join("faults").join(format!("{seed}-{}", run.started_ms / 1000)));
    report::write(&dir, &run)?;
    Ok((run, dir))
}

/// Runs every seed in turn (until `--stop-after`), each into `<out>/seed-<n>`, keeping
/// `<out>/campaign.md` and `<out>/campaign.jsonl` up to date; fails if any run found a
/// violation or could not be carried out.
fn campaign(args: FaultsArgs, seeds: &[u64]) -> anyhow::Result<()> {
    let began = std::time::Instant::now();
    let dir = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("target").join("faults").join(format!("campaign-{}", wall_clock_ms() / 1000)));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    eprintln!("pkd faults: a campaign of {} seeds into {}", seeds.len(), dir.display());
    let mut rows = Vec::new();
    for &seed in seeds {
        if args.stop_after.is_some_and(|limit| began.elapsed() >= limit) {
            eprintln!("--stop-after reached: {} of {} seeds run", rows.len(), seeds.len());
            break;
        }
        let started = std::time::Instant::now();
        let row = match run_seed(&args, seed, Some(dir.join(format!("seed-{seed}")))) {
            Ok((run, _)) => report::CampaignRow::of(&run, started.elapsed()),
            Err(error) => report::CampaignRow::failed(seed, format!("{error:#}"), started.elapsed()),
        };
        eprintln!("{}", row.line());
        rows.push(row);
        report::write_campaign(&dir, &args, &rows)?;
    }
    let failed: Vec<u64> = rows.iter().filter(|row| !row.passed()).map(|row| row.seed).collect();
    println!(
        "campaign: {} runs, {} with violations or errors; table: {}",
        rows.len(),
        failed.len(),
        dir.join("campaign.md").display()
    );
    if !failed.is_empty() {
        bail!("seeds {failed:?} failed; each report folder's summary.md has its replay command");
    }
    Ok(())
}

async fn execute(args: FaultsArgs, seed: u64) -> anyhow::Result<Run> {
    let started_ms = wall_clock_ms();
    let planned = nemesis::plan(seed, args.duration, &args.nemesis);
    // The links go through the proxy only when a network nemesis may need it.
    let proxy = args.nemesis.iter().any(|kind| kind.is_network());
    let services =
        Arc::new(Services::open(args.mysql_url.as_deref(), args.redis_url.as_deref(), seed, started_ms / 1000).await?);
    let started = Target::start_local_with_args(args.nodes, args.arenas, "info", services.node_args(), proxy).await;
    let mut target = match started {
        Ok(target) => target,
        Err(error) => {
            let _ = services.drop_database().await;
            return Err(error);
        }
    };
    // A membership nemesis may add a node: one more slot, for the next id.
    if args.nemesis.iter().any(|kind| kind.is_membership()) {
        target = target.with_spare_slot();
    }
    let target = Arc::new(target);
    let outcome = drive(&args, seed, planned.clone(), target.clone(), services.clone()).await;
    let logs = read_logs(&target);
    let members: BTreeSet<u64> = target.member_ids().into_iter().collect();
    target.shutdown().await;
    let (history, settled, ledgers, workload_from_ms, stores) = match outcome {
        Ok(outcome) => outcome,
        Err(error) => {
            if let Some(mysql) = &services.mysql {
                eprintln!("the run stopped: its database {} is kept", mysql.database);
            }
            return Err(error);
        }
    };
    let faults = history.faults();
    let liveness_from_ms = faults.iter().map(|fault| fault.healed_ms).max().unwrap_or(workload_from_ms);
    let (gifts, states, digests) = (history.gifts(), history.states(), history.digests());
    let invitations = history.invitations();
    let facts = Facts {
        gifts: &gifts,
        states: &states,
        invitations: &invitations,
        faults: &faults,
        settled: &settled,
        ledgers: &ledgers,
        digests: &digests,
        members: &members,
        bounds: Bounds { end_late_ms: args.end_bound.as_millis() as i64, skew_ms: largest_skew(&faults) },
        liveness_from_ms,
        sql: stores.sql.as_ref(),
        cache: stores.cache.as_ref(),
    };
    let verdicts = checkers::check_all(&facts);
    // A failed run keeps its database, for a look at the rows.
    let keep = verdicts.iter().any(Verdict::failed);
    let mysql_database = services.mysql.as_ref().map(|mysql| (mysql.database.clone(), keep));
    if !keep && let Err(error) = services.drop_database().await {
        eprintln!("warning: {error:#}");
    }
    Ok(Run {
        mysql_database,
        redis_database: services.redis.as_ref().map(|redis| redis.database),
        seed,
        args,
        planned,
        history,
        settled,
        verdicts,
        started_ms,
        workload_from_ms,
        liveness_from_ms,
        ended_ms: wall_clock_ms(),
        logs,
    })
}

/// The workload and the nemesis, then the wind-down and the settled history of every
/// node.
async fn drive(
    args: &FaultsArgs,
    seed: u64,
    planned: Vec<Planned>,
    target: Arc<Target>,
    services: Arc<Services>,
) -> anyhow::Result<(Arc<History>, BTreeMap<u64, NodeHistory>, Ledgers, i64, Stores)> {
    target.settle(Duration::from_secs(30)).await;
    let battle_ms = args.battle.as_millis().max(1_000);
    target.set_config("pk_duration", &format!("{OPENING_MS},{battle_ms},0,600000")).await?;
    target.set_config("pk_config", INVITING_CONFIG).await?;
    let history = Arc::new(History::default());
    let roster = Arc::new(Roster::new(Some(OPENING_MS)));
    let answered = history.clone();
    let behaviour = AnchorBehaviour {
        observer: Some(recorder_of_states(&history)),
        invitations: Some(InvitationAnswers {
            observer: Arc::new(move |answer| answered.invitation(answer.clone())),
            accept_chance: ACCEPT_CHANCE,
            linger_every: 2,
            linger: LINGER,
        }),
        think: Some(THINK),
        ..AnchorBehaviour::default()
    };
    let hold_starts = behaviour.hold_starts.clone();
    let anchors = AnchorPool::spawn(target.clone(), roster.clone(), FIRST_ANCHOR, args.anchors, behaviour);
    let audience = viewers::Audience {
        target: target.clone(),
        rooms: (FIRST_ANCHOR..FIRST_ANCHOR + args.anchors).collect(),
        observer: recorder_of_states(&history),
    };
    let (stop_viewers, viewers_stopped) = watch::channel(false);
    let viewers = viewers::spawn(&audience, history::FIRST_VIEWER, args.viewers, seed, &viewers_stopped);
    anchors.wait_for_battles(&roster, 1, 500, Duration::from_secs(60)).await?;
    let start = Instant::now();
    let workload_from_ms = wall_clock_ms();
    eprintln!("workload running for {:?}; {} faults planned", args.duration, planned.len());
    let gifting = Arc::new(Gifting::new(target.clone(), roster.clone(), history.clone(), 1)?);
    let (stop, stopped) = watch::channel(false);
    let senders = gifting.spawn(args.senders, seed, stopped);
    let nemesis = tokio::spawn(nemesis::carry_out(planned, target.clone(), services.clone(), history.clone(), start));
    let (stop_sampling, sampling) = watch::channel(false);
    let sampler = tokio::spawn(sample_digests(target.clone(), history.clone(), sampling));
    tokio::time::sleep_until(start + args.duration).await;
    nemesis.await.context("the nemesis task")?;
    services.restore_all();
    let _ = stop.send(true);
    for sender in senders {
        let _ = sender.await;
    }
    eprintln!("workload over; waiting for the running PKs to end");
    hold_starts.store(true, std::sync::atomic::Ordering::Relaxed);
    wind_down(&roster, args.battle + Duration::from_millis(OPENING_MS as u64) + args.end_bound).await;
    let _ = stop_viewers.send(true);
    for viewer in viewers {
        let _ = viewer.await;
    }
    anchors.stop().await;
    let seen: BTreeSet<u64> = history.states().iter().map(|state| state.pk).collect();
    let anchor_ids: Vec<u64> = (FIRST_ANCHOR..FIRST_ANCHOR + args.anchors).collect();
    let settled = settled_history(&target, &anchor_ids, &seen, args.settle_wait).await;
    let reference = (checkers::reference_records(&settled), checkers::reference_node(&settled));
    let ledgers = settled_ledgers(&target, &reference.0, reference.1).await;
    let _ = stop_sampling.send(true);
    let _ = sampler.await;
    final_digests(&target, &history, args.arenas as usize + 1, Duration::from_secs(20)).await;
    let stores = read_stores(&target, &services, &history.states(), &settled, args.settle_wait).await;
    Ok((history, settled, ledgers, workload_from_ms, stores))
}

/// Records in `history` every PK state an anchor or a viewer reads.
fn recorder_of_states(history: &Arc<History>) -> crate::bench::pks::StateObserver {
    let history = history.clone();
    Arc::new(move |reader, content: &Value| {
        if let Some(state) = StateSeen::read(reader, content) {
            history.state(state);
        }
    })
}

/// The results database and the cache as the run read them at the end.
#[derive(Default)]
struct Stores {
    sql: Option<SqlSnapshot>,
    cache: Option<CacheSnapshot>,
}

/// Reads the services the run has, directly: each until its checker is satisfied (the
/// sinks catch up once the last fault has healed) or for `limit`.
async fn read_stores(
    target: &Target,
    services: &Services,
    states: &[StateSeen],
    settled: &BTreeMap<u64, NodeHistory>,
    limit: Duration,
) -> Stores {
    let mut stores = Stores::default();
    if let Some(mysql) = &services.mysql {
        let deadline = Instant::now() + limit;
        loop {
            match SqlSnapshot::read(&mysql.direct_url).await {
                Ok(snapshot) => {
                    let done = sink_checkers::sql_matches_engine(states, settled, &snapshot).passed;
                    stores.sql = Some(snapshot);
                    if done {
                        break;
                    }
                }
                Err(error) => eprintln!("warning: reading the results database: {error:#}"),
            }
            if Instant::now() >= deadline {
                eprintln!("warning: the results database had not caught up after {limit:?}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    if let Some(redis) = &services.redis {
        let records = checkers::reference_records(settled);
        let deadline = Instant::now() + CACHE_WAIT;
        loop {
            match CacheSnapshot::read_cache(&redis.direct_url).await {
                Ok(mut snapshot) => {
                    snapshot.engine_rooms = rooms_in_pk(target).await;
                    let done = sink_checkers::redis_converges(&records, &snapshot).passed;
                    stores.cache = Some(snapshot);
                    if done {
                        break;
                    }
                }
                Err(error) => eprintln!("warning: reading the Redis cache: {error:#}"),
            }
            if Instant::now() >= deadline {
                eprintln!("warning: the Redis cache had not converged after {CACHE_WAIT:?}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    stores
}

/// How long the run waits for the cache to converge once the wind-down is over (a cache
/// duty retries within 5 s, and checks its keys every second).
const CACHE_WAIT: Duration = Duration::from_secs(20);

/// Each node's rooms in a PK (room → PK), from its lobby replica through
/// `GET /api/rooms-in-pk`; a node that does not answer is left out.
async fn rooms_in_pk(target: &Target) -> BTreeMap<u64, BTreeMap<u64, u64>> {
    let mut all = BTreeMap::new();
    for node in &target.nodes {
        let client = AdminClient::new(node.client_address(), "dev:9001").with_timeout(Duration::from_secs(3));
        let Ok(answer) = client.call::<Value>("GET", "/api/rooms-in-pk", None::<&()>).await else { continue };
        let Some(rooms) = answer["rooms"].as_array() else { continue };
        let rooms = rooms.iter().filter_map(|room| Some((room["roomId"].as_u64()?, room["pkId"].as_u64()?))).collect();
        all.insert(node.id, rooms);
    }
    all
}

/// Waits until no PK has run for 3 s (anchors already matching still get their PK), at
/// most four PK lengths. A PK whose end no anchor read (lost in a failover) counts as
/// running until `pk_length` after its end time.
async fn wind_down(roster: &Roster, pk_length: Duration) {
    let deadline = Instant::now() + pk_length * 4;
    let mut quiet_since: Option<Instant> = None;
    let overdue_ms = pk_length.as_millis() as i64;
    while Instant::now() < deadline {
        let now_ms = wall_clock_ms();
        if roster.running().iter().all(|pk| pk.end_ms + overdue_ms < now_ms) {
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_secs(3) {
                return;
            }
        } else {
            quiet_since = None;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("warning: PKs still running after {:?}: {:?}", pk_length * 4, roster.running());
}

/// How often the run samples every node's state digests while it runs.
const DIGEST_EVERY: Duration = Duration::from_millis(400);

/// Samples every node's state digests until `stop`: two nodes caught at the same index
/// of a group are compared (the `replicas_identical` checker).
async fn sample_digests(target: Arc<Target>, history: Arc<History>, mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        record_digests(&target, &history).await;
        let _ = tokio::time::timeout(DIGEST_EVERY, stop.changed()).await;
    }
}

/// Asks every node for its digests once and records them.
async fn record_digests(target: &Target, history: &History) -> DigestRound {
    let at_ms = wall_clock_ms();
    history.digest_round(target.digests().await, at_ms)
}

/// Once the workload is over, samples until every group was caught at one applied index
/// on every node (the duties may still write a few entries), or for `limit`.
async fn final_digests(target: &Target, history: &History, groups: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    let mut caught: BTreeSet<u64> = BTreeSet::new();
    loop {
        caught.extend(record_digests(target, history).await.caught_on(target.members().len()));
        if caught.len() >= groups || Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The largest clock offset the run injected, in ms (0 without `skew`).
fn largest_skew(faults: &[FaultEvent]) -> i64 {
    faults
        .iter()
        .filter(|fault| fault.kind == Nemesis::Skew.name())
        .filter_map(|fault| fault.amount_ms)
        .map(i64::abs)
        .max()
        .unwrap_or(0)
}

/// Every member's settled history of `anchors`, asked until every member answers the
/// same, with every PK in `seen` settled (status 2 or 3), or until `limit`.
async fn settled_history(
    target: &Target,
    anchors: &[u64],
    seen: &BTreeSet<u64>,
    limit: Duration,
) -> BTreeMap<u64, NodeHistory> {
    let deadline = Instant::now() + limit;
    loop {
        let mut all = BTreeMap::new();
        let members = target.members();
        for node in &members {
            if let Some(history) = node_history(&node.client_address(), anchors).await {
                all.insert(node.id, history);
            }
        }
        let is_settled = |record: &SettledRecord| record.status == 2 || record.status == 3;
        let reference = checkers::reference_node(&all).and_then(|node| all.get(&node));
        let complete = all.len() == members.len()
            && all.values().all(|history| history.values().flatten().all(is_settled))
            && reference.map_or(seen.is_empty(), |history| {
                let settled: BTreeSet<u64> = history.values().flatten().map(|record| record.pk_id).collect();
                seen.is_subset(&settled)
            })
            && checkers::replicas_agree(&all).passed;
        if complete || Instant::now() >= deadline {
            if !complete {
                eprintln!("warning: the nodes' settled histories had not converged after {limit:?}");
            }
            return all;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One node's history of every anchor, through `GET /api/anchors/{id}/pks`; `None` if
/// any request failed.
async fn node_history(address: &str, anchors: &[u64]) -> Option<NodeHistory> {
    // The read API takes any user's login token; the nodes run with --dev-auth.
    let client = AdminClient::new(address, "dev:9001").with_timeout(Duration::from_secs(3));
    let mut history = NodeHistory::new();
    for &anchor in anchors {
        let mut records: Vec<SettledRecord> = Vec::new();
        for page in 1.. {
            let answer: Value = client
                .call("GET", &format!("/api/anchors/{anchor}/pks?page={page}&size=100"), None::<&()>)
                .await
                .ok()?;
            let batch: Vec<SettledRecord> = serde_json::from_value(answer["records"].clone()).ok()?;
            let full = batch.len() == 100;
            records.extend(batch);
            if !full {
                break;
            }
        }
        history.insert(anchor, records);
    }
    Some(history)
}

/// The gift ledgers of the settled PKs in `records`, from the first member that answers
/// them all through `GET /api/pks/{id}/gifts`, `first` first (the node `records` come
/// from: a node that joined during the run may lack the oldest); none if no node does.
async fn settled_ledgers(target: &Target, records: &[SettledRecord], first: Option<u64>) -> Ledgers {
    let pks: BTreeSet<u64> = records.iter().filter(|record| record.status >= 2).map(|record| record.pk_id).collect();
    let mut members = target.members();
    members.sort_by_key(|node| Some(node.id) != first);
    for node in members {
        let client = AdminClient::new(node.client_address(), "dev:9001").with_timeout(Duration::from_secs(3));
        let mut ledgers = Ledgers::new();
        for &pk in &pks {
            let mut ledger = Vec::new();
            let mut after = 0;
            loop {
                let path = format!("/api/pks/{pk}/gifts?after={after}&limit=1000");
                let Ok(page) = client.call::<Value>("GET", &path, None::<&()>).await else { break };
                let Ok(gifts) = serde_json::from_value::<Vec<history::LedgerRecord>>(page["gifts"].clone()) else {
                    break;
                };
                ledger.extend(gifts);
                match page["next"].as_u64() {
                    Some(next) => after = next,
                    None => {
                        ledgers.insert(pk, std::mem::take(&mut ledger));
                        break;
                    }
                }
            }
        }
        if ledgers.len() == pks.len() {
            return ledgers;
        }
    }
    eprintln!("warning: no node answered every settled PK's gift ledger");
    Ledgers::new()
}

/// Every node's log file, as it stands.
fn read_logs(target: &Target) -> BTreeMap<u64, Vec<u8>> {
    let Some(root) = target.local_root() else { return BTreeMap::new() };
    target
        .nodes
        .iter()
        .filter_map(|node| std::fs::read(root.join(format!("node-{}.log", node.id))).ok().map(|log| (node.id, log)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_are_listed_and_ranged() {
        assert_eq!(parse_seeds("1-3,42,7"), Ok(Seeds(vec![1, 2, 3, 42, 7])));
        assert_eq!(parse_seeds(" 5 "), Ok(Seeds(vec![5])));
        assert!(parse_seeds("3-1").unwrap_err().contains("ends before it starts"));
        assert!(parse_seeds("1-x").unwrap_err().contains("\"x\" is not a seed"));
        assert!(parse_seeds(",").is_err());
        assert!(parse_seeds("0-99999999").is_err());
    }
}
