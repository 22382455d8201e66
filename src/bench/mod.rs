//! `pkd bench <scenario>`: load against a pkd cluster through the interfaces an app uses
//! (WebSocket clients speaking the protocol, the gift service's HTTP API), and a
//! summary of what it measured. `docs/bench.md` is the user's guide.
//!
//! - [`target`]: the cluster (`--local N` starts one, `--nodes` names a running one).
//! - [`schedule`]: open loop (`--rate`) and closed loop (`--clients`).
//! - [`recorder`]: HDR histograms, counts, one row per second.
//! - [`pks`]: anchors that match into PKs, and the roster of what runs.
//! - [`gifting`]: gift requests, delivery to viewers, gaps between acknowledgements.
//! - [`cadence`]: the push cadence rules. [`slo`]: `--slo` checks.
//! - [`report`]: the summary, `--json` and `--out`.
//! - `scenarios`: gifts, fanout, match, failover, soak, mixed.

pub mod cadence;
pub mod gifting;
pub mod human;
pub mod pks;
pub mod recorder;
pub mod report;
mod scenarios;
pub mod schedule;
pub mod slo;
pub mod target;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::ValueEnum;
use hdrhistogram::Histogram;
use tokio::sync::watch;
use tokio::time::Instant;

use self::recorder::{Recorder, SecondRow, Totals};
use self::report::{LatencySummary, LoadSummary, RaftSummary, Summary, TargetSummary};
use self::schedule::{LoadMode, Tickets};
use self::target::{NodeSampler, Target, TargetSpec};

/// What a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Gift requests through the gift API (`--batch N` gifts each): acknowledgement latency.
    Gifts,
    /// Viewers in the rooms of many PKs while gifts flow: gift-to-viewer delivery, push cadence.
    Fanout,
    /// A storm of anchors starting to match, then invitations accepted and refused.
    Match,
    /// Gifts and PKs while a group leader is killed (--local) or moved, every --every.
    Failover,
    /// A long run: memory and data directory of every node over time.
    Soak,
    /// A day compressed: anchors matching and going off air, viewers coming and going, gifts.
    Mixed,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Gifts => "gifts",
            Scenario::Fanout => "fanout",
            Scenario::Match => "match",
            Scenario::Failover => "failover",
            Scenario::Soak => "soak",
            Scenario::Mixed => "mixed",
        }
    }
}

/// How failover moves leadership.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Fault {
    /// SIGKILL the leader's node, restart it after --down (only with --local).
    Kill,
    /// Hand the leadership to another node through the admin API.
    Transfer,
}

/// `pkd bench`'s flags. Durations take a unit (`500ms`, `10s`, `5m`, `2h`) or are seconds.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub scenario: Scenario,

    /// Start a cluster of N local `pkd serve` processes (this binary) and run against it.
    #[arg(long, value_name = "N", conflicts_with = "nodes", help_heading = "Target")]
    pub local: Option<u64>,
    /// Arena groups of the --local cluster.
    #[arg(long, default_value_t = 4, help_heading = "Target")]
    pub arenas: u32,
    /// The client addresses (WebSocket and gift API) of a running cluster's nodes.
    #[arg(long, env = "PKD_BENCH_NODES", value_delimiter = ',', value_name = "HOST:PORT,...", help_heading = "Target")]
    pub nodes: Vec<String>,
    /// The gift service's token of the running cluster.
    #[arg(long, env = "PKD_GIFT_TOKEN", hide_env_values = true, help_heading = "Target")]
    pub gift_token: Option<String>,
    /// The login secret of the running cluster: the bench signs its clients' tokens with it.
    #[arg(long, env = "PKD_LOGIN_SECRET", hide_env_values = true, help_heading = "Target")]
    pub login_secret: Option<String>,
    /// Use `dev:<user>` tokens (nodes started with --dev-auth).
    #[arg(long, help_heading = "Target")]
    pub dev_auth: bool,
    /// Admin API address(es) of the running cluster: one, or one per node in --nodes order.
    /// With it the bench sets `t_config` rows (pk_duration, and pk_config for match),
    /// reads raft figures, and can move leaders (failover).
    #[arg(long, env = "PKD_BENCH_ADMIN", value_delimiter = ',', value_name = "HOST:PORT,...", help_heading = "Target")]
    pub admin: Vec<String>,
    /// The admin API's token.
    #[arg(long, env = "PKD_ADMIN_TOKEN", hide_env_values = true, help_heading = "Target")]
    pub admin_token: Option<String>,
    /// The CA (PEM) that signs the running cluster's certificates (nodes started with
    /// --tls-cert): clients then speak `wss://` and HTTPS to --nodes and --admin.
    #[arg(long, env = "PKD_BENCH_TLS_CA", value_name = "FILE", conflicts_with = "local", help_heading = "Target")]
    pub tls_ca: Option<std::path::PathBuf>,

    /// Open loop: operations per second, each timed from when it was due.
    #[arg(long, conflicts_with = "clients", help_heading = "Load")]
    pub rate: Option<f64>,
    /// Closed loop: this many clients, each sending when its last answer came.
    #[arg(long, help_heading = "Load")]
    pub clients: Option<usize>,
    /// Open loop: connections the operations are spread over (default: rate / 100, 8 to 512).
    #[arg(long, requires = "rate", help_heading = "Load")]
    pub connections: Option<usize>,
    /// How long to measure, in seconds.
    #[arg(long, conflicts_with = "duration", help_heading = "Load")]
    pub seconds: Option<f64>,
    /// How long to measure (e.g. 90s, 10m, 2h).
    #[arg(long, value_parser = parse_duration, help_heading = "Load")]
    pub duration: Option<Duration>,
    /// Load before measuring, left out of the summary.
    #[arg(long, value_parser = parse_duration, default_value = "1s", help_heading = "Load")]
    pub warmup: Duration,

    /// Gifts per gift request (1 to 1000): 1 sends the single-gift body, more the batch body.
    #[arg(long, help_heading = "Scenario")]
    pub batch: Option<usize>,
    /// PKs to keep running.
    #[arg(long, help_heading = "Scenario")]
    pub pks: Option<usize>,
    /// Viewers: per PK for fanout, in all for mixed.
    #[arg(long, help_heading = "Scenario")]
    pub viewers: Option<usize>,
    /// Anchors: those that start in the match storm (closed loop), in all for mixed.
    #[arg(long, help_heading = "Scenario")]
    pub anchors: Option<usize>,
    /// match: invitation rounds after the storm (each: one inviter, invitees accepting or refusing).
    #[arg(long, help_heading = "Scenario")]
    pub rounds: Option<usize>,
    /// failover: move or kill a leader this often.
    #[arg(long, value_parser = parse_duration, help_heading = "Scenario")]
    pub every: Option<Duration>,
    /// failover: kill (--local only) or transfer.
    #[arg(long, value_enum, help_heading = "Scenario")]
    pub fault: Option<Fault>,
    /// failover with kill: how long the killed node stays down.
    #[arg(long, value_parser = parse_duration, default_value = "1s", help_heading = "Scenario")]
    pub down: Duration,
    /// The battle phase of the PKs, where the bench sets pk_duration (--local, or --admin).
    #[arg(long, value_parser = parse_duration, help_heading = "Scenario")]
    pub battle: Option<Duration>,
    /// soak: sample the nodes this often.
    #[arg(long, value_parser = parse_duration, default_value = "10s", help_heading = "Scenario")]
    pub sample_every: Duration,
    /// A Redis to watch (`redis://host:port/db`): the --local nodes write their read cache
    /// to it, and `gifts` times each gift until its PK's `pk_` key shows it (`cache`) and
    /// counts the cache's writes per gift.
    #[arg(long, env = "PKD_BENCH_REDIS", value_name = "URL", help_heading = "Scenario")]
    pub redis: Option<String>,
    /// The first user id the bench uses (anchors, then viewers); random by default, so
    /// that runs do not meet each other's PKs.
    #[arg(long, help_heading = "Scenario")]
    pub user_base: Option<u64>,

    /// Print the summary as JSON (docs/bench.md lists the fields).
    #[arg(long, help_heading = "Output")]
    pub json: bool,
    /// Write summary.json, seconds.csv, latency-*.txt and nodes.csv into this directory.
    #[arg(long, value_name = "DIR", help_heading = "Output")]
    pub out: Option<PathBuf>,
    /// An objective checked at the end, e.g. 'ack.p99<5ms' (repeatable, or comma separated);
    /// any failure makes the exit code non-zero.
    #[arg(long, value_name = "METRIC<VALUE", help_heading = "Output")]
    pub slo: Vec<String>,
    /// No progress lines on stderr.
    #[arg(long, help_heading = "Output")]
    pub quiet: bool,
}

/// Reads `1500ms`, `10s`, `2.5s`, `5m`, `2h`, `1h30m`, or a plain number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0)
            .then(|| Duration::from_secs_f64(seconds))
            .ok_or_else(|| format!("{text:?} is not a duration"));
    }
    let mut total = 0.0;
    let mut rest = text;
    while !rest.is_empty() {
        let split = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, after) = rest.split_at(split);
        let number: f64 = number.parse().map_err(|_| format!("{text:?} is not a duration (e.g. 500ms, 10s, 2h)"))?;
        let unit_end = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let scale = match unit {
            "ms" => 1e-3,
            "s" => 1.0,
            "m" | "min" => 60.0,
            "h" => 3600.0,
            _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m, h)")),
        };
        total += number * scale;
        rest = after;
    }
    Ok(Duration::from_secs_f64(total))
}

/// Everything a scenario needs to run.
pub struct Bench {
    pub args: BenchArgs,
    pub target: Arc<Target>,
    pub mode: LoadMode,
    pub batch: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// The first user id of this run.
    pub user_base: u64,
}

/// A scenario's result, besides the recorder's totals.
pub struct ScenarioOutput {
    pub finished: Finished,
    /// The recorder's main latency: `ack` or `reply`.
    pub primary: &'static str,
    /// What an item is, when operations carry several (`gifts`).
    pub items: Option<&'static str>,
    pub details: serde_json::Value,
    /// Distributions measured outside the recorder (PK end lateness).
    pub extra_latency: BTreeMap<String, Histogram<u64>>,
}

/// The measured part of a run, while it runs.
pub struct Measurement {
    pub tickets: Arc<Tickets>,
    pub recorder: Arc<Recorder>,
    sampler: Arc<NodeSampler>,
    stop_reporter: watch::Sender<bool>,
    reporter: tokio::task::JoinHandle<()>,
    raft_at_start: Arc<std::sync::Mutex<Option<u64>>>,
    load_end: Option<(Instant, Option<u64>)>,
}

impl Measurement {
    /// When the first operation is due.
    pub fn load_start(&self) -> Instant {
        self.tickets.start()
    }

    /// The load is over: samples the nodes and the raft indexes now, before any grace
    /// period a scenario waits for late pushes.
    pub async fn load_ended(&mut self, target: &Target) {
        let now = Instant::now();
        self.tickets.stop();
        let _ = self.stop_reporter.send(true);
        self.sampler.mark_measure_end(target);
        let raft = target.arena_log_total().await;
        self.load_end = Some((now, raft));
    }
}

/// What the measured part of a run produced.
pub struct Finished {
    pub totals: Totals,
    pub rows: Vec<SecondRow>,
    pub duration: Duration,
    pub nodes: Vec<report::NodeSummary>,
    pub load_generator: report::LoadGeneratorSummary,
    pub arena_entries: Option<u64>,
}

impl Bench {
    /// Starts the clock: tickets from a moment from now until warm-up plus duration, the
    /// progress reporter, the node sampler (every `sample_every`, keeping samples if
    /// `keep_samples`).
    pub fn begin(&self, keep_samples: bool, sample_every: Duration) -> Measurement {
        let start = Instant::now() + Duration::from_millis(20);
        let measure_from = start + self.warmup;
        let tickets = Arc::new(Tickets::new(self.mode, start, measure_from + self.duration));
        let recorder = Arc::new(Recorder::new(measure_from));
        let sampler = Arc::new(NodeSampler::new(start, keep_samples));
        let (stop_reporter, mut stopped) = watch::channel(false);
        let raft_at_start = Arc::new(std::sync::Mutex::new(None));
        let reporter = {
            let (tickets, recorder, sampler, target) =
                (tickets.clone(), recorder.clone(), sampler.clone(), self.target.clone());
            let raft_at_start = raft_at_start.clone();
            let quiet = self.args.quiet;
            tokio::spawn(async move {
                let mut second = 0u64;
                let mut marked = false;
                let mut next_sample = start;
                loop {
                    let next_tick = start + Duration::from_secs(second + 1);
                    let wake = if marked { next_tick } else { next_tick.min(measure_from) };
                    tokio::select! {
                        _ = tokio::time::sleep_until(wake) => {}
                        _ = stopped.changed() => return,
                    }
                    let now = Instant::now();
                    if !marked && now >= measure_from {
                        marked = true;
                        sampler.mark_measure_start(&target);
                        let total = target.arena_log_total().await;
                        *raft_at_start.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = total;
                    }
                    if now >= next_tick {
                        second += 1;
                        let row = recorder.tick(second, now, &tickets);
                        if !quiet {
                            eprintln!("{}", report::progress_line(&row));
                        }
                        if now >= next_sample {
                            sampler.sample(&target);
                            next_sample = now + sample_every;
                        }
                    }
                }
            })
        };
        let on_interrupt = tickets.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted: finishing the operations in flight, then the summary");
                on_interrupt.stop();
            }
        });
        Measurement { tickets, recorder, sampler, stop_reporter, reporter, raft_at_start, load_end: None }
    }

    /// Stops the clock and collects what was measured.
    pub async fn end(&self, mut measurement: Measurement) -> Finished {
        if measurement.load_end.is_none() {
            measurement.load_ended(&self.target).await;
        }
        let _ = measurement.stop_reporter.send(true);
        let _ = (&mut measurement.reporter).await;
        let (load_end, raft_at_end) = measurement.load_end.unwrap_or((Instant::now(), None));
        let measure_from = measurement.recorder.measure_from();
        let duration = load_end.min(measurement.tickets.end()).saturating_duration_since(measure_from);
        let raft_at_start = *measurement.raft_at_start.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let arena_entries = match (raft_at_start, raft_at_end) {
            (Some(from), Some(to)) => Some(to.saturating_sub(from)),
            _ => None,
        };
        Finished {
            totals: measurement.recorder.totals(),
            rows: measurement.recorder.rows(),
            duration,
            nodes: measurement.sampler.summaries(&self.target, duration.as_secs_f64()),
            load_generator: measurement.sampler.load_generator(duration.as_secs_f64()),
            arena_entries,
        }
    }

    /// How many workers (connections) the load runs on.
    pub fn workers(&self) -> usize {
        self.mode.workers()
    }
}

/// `pkd bench`: runs the scenario, prints the summary, and fails if an SLO did.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let slos = slo::parse_all(&args.slo)?;
    check_args(&args)?;
    crate::procfs::raise_open_files_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (summary, finished_rows, histograms) = runtime.block_on(run_scenario(args.clone(), &slos))?;
    runtime.shutdown_timeout(Duration::from_secs(2));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print!("{}", summary.render());
    }
    if let Some(dir) = &args.out {
        report::write_out(dir, &summary, &finished_rows, &histograms)?;
        eprintln!("wrote summary.json, seconds.csv, latency-*.txt and nodes.csv to {}", dir.display());
    }
    let failed = summary.slo.iter().filter(|outcome| !outcome.passed).count();
    if failed > 0 {
        bail!("{failed} of {} SLO checks failed", summary.slo.len());
    }
    Ok(())
}

fn check_args(args: &BenchArgs) -> anyhow::Result<()> {
    if args.local.is_none() && args.nodes.is_empty() {
        bail!("say which cluster: --local N to start one here, or --nodes host:port,... for a running one");
    }
    if let Some(rate) = args.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        bail!("--rate must be more than 0 operations per second");
    }
    if args.clients == Some(0) || args.connections == Some(0) {
        bail!("--clients and --connections must be at least 1");
    }
    if let Some(batch) = args.batch
        && !(1..=1000).contains(&batch)
    {
        bail!("--batch must be between 1 and 1000 (the gift API's limit)");
    }
    if let Some(seconds) = args.seconds
        && !(seconds.is_finite() && seconds > 0.0)
    {
        bail!("--seconds must be more than 0");
    }
    if args.duration == Some(Duration::ZERO) {
        bail!("--duration must be more than 0");
    }
    if args.pks == Some(0) {
        bail!("--pks must be at least 1");
    }
    if args.sample_every.is_zero() {
        bail!("--sample-every must be more than 0");
    }
    Ok(())
}

/// Scenario defaults: (load mode, gifts per request, measured duration).
fn defaults(scenario: Scenario) -> (LoadMode, usize, Duration) {
    let open = |rate: f64| LoadMode::Open { rate, connections: default_connections(rate) };
    match scenario {
        Scenario::Gifts => (LoadMode::Closed { clients: 64 }, 1, Duration::from_secs(10)),
        Scenario::Fanout => (open(20.0), 10, Duration::from_secs(10)),
        Scenario::Match => (open(200.0), 1, Duration::from_secs(10)),
        Scenario::Failover => (LoadMode::Closed { clients: 16 }, 1, Duration::from_secs(20)),
        Scenario::Soak => (open(50.0), 10, Duration::from_secs(3600)),
        Scenario::Mixed => (open(100.0), 1, Duration::from_secs(30)),
    }
}

fn default_connections(rate: f64) -> usize {
    ((rate / 100.0).ceil() as usize).clamp(8, 512)
}

type Histograms = BTreeMap<String, Histogram<u64>>;

async fn run_scenario(args: BenchArgs, slos: &[slo::Slo]) -> anyhow::Result<(Summary, Vec<SecondRow>, Histograms)> {
    let (default_mode, default_batch, default_duration) = defaults(args.scenario);
    let mode = match (args.rate, args.clients) {
        (Some(rate), _) => {
            LoadMode::Open { rate, connections: args.connections.unwrap_or_else(|| default_connections(rate)) }
        }
        (None, Some(clients)) => LoadMode::Closed { clients },
        (None, None) => default_mode,
    };
    let duration = match (args.seconds, args.duration) {
        (Some(seconds), _) => Duration::from_secs_f64(seconds),
        (None, Some(duration)) => duration,
        (None, None) => default_duration,
    };
    let spec = TargetSpec {
        local: args.local,
        arenas: args.arenas,
        nodes: args.nodes.clone(),
        gift_token: args.gift_token.clone(),
        login_secret: args.login_secret.clone(),
        dev_auth: args.dev_auth,
        admin: args.admin.clone(),
        admin_token: args.admin_token.clone(),
        redis: args.redis.clone(),
        tls_ca: args.tls_ca.clone(),
    };
    let target = Arc::new(Target::open(spec).await?);
    let user_base = args.user_base.unwrap_or_else(|| {
        // Ids far from real users', different at every run.
        1_000_000_000_000_000 + rand::random_range(0..1_000_000u64) * 1_000_000_000
    });
    let bench = Bench {
        batch: args.batch.unwrap_or(default_batch),
        warmup: args.warmup,
        args,
        target: target.clone(),
        mode,
        duration,
        user_base,
    };
    if !bench.target.settle(Duration::from_secs(20)).await {
        eprintln!("(leadership may move during the run)");
    }
    let result = scenarios::run(&bench).await;
    target.shutdown().await;
    let output = result.with_context(|| format!("the {} scenario", bench.args.scenario.name()))?;
    Ok(summarize(&bench, output, slos))
}

/// The summary of a finished scenario, with its SLOs checked.
fn summarize(bench: &Bench, output: ScenarioOutput, slos: &[slo::Slo]) -> (Summary, Vec<SecondRow>, Histograms) {
    let ScenarioOutput { finished, primary, items, details, extra_latency } = output;
    let seconds = finished.duration.as_secs_f64().max(f64::MIN_POSITIVE);
    let totals = &finished.totals;
    let mut histograms: Histograms = BTreeMap::new();
    histograms.insert(primary.to_owned(), totals.primary.clone());
    for (name, histogram) in totals.others.iter().chain(extra_latency.iter()) {
        histograms.insert(name.clone(), histogram.clone());
    }
    let latency = histograms.iter().map(|(name, histogram)| (name.clone(), LatencySummary::of(histogram))).collect();
    let gifts_per_entry = finished
        .arena_entries
        .filter(|&entries| entries > 0 && items == Some("gifts"))
        .map(|entries| totals.items_ok as f64 / entries as f64);
    let raft = RaftSummary {
        gifts_per_entry,
        arena_entries: finished.arena_entries,
        note: match (finished.arena_entries, items) {
            (Some(_), Some("gifts")) => "acknowledged gifts / entries appended to the arena logs while measuring, \
                                          every kind of entry counted, from the admin API's last log indexes"
                .to_owned(),
            (Some(_), _) => "this scenario sends no gifts".to_owned(),
            (None, _) => "needs the admin API (--local, or --admin and --admin-token)".to_owned(),
        },
    };
    let (mode, rate, connections, clients) = match bench.mode {
        LoadMode::Open { rate, connections } => ("open", Some(rate), Some(connections), None),
        LoadMode::Closed { clients } => ("closed", None, None, Some(clients)),
    };
    let mut summary = Summary {
        scenario: bench.args.scenario.name().to_owned(),
        started_at_ms: pkd_cluster::app::wall_clock_ms() - (finished.duration.as_millis() as i64),
        target: TargetSummary {
            kind: if bench.target.is_local() { "local" } else { "remote" }.to_owned(),
            nodes: bench.target.nodes.iter().map(|node| node.client_address()).collect(),
            arenas: bench.target.arenas,
            auth: bench.target.tokens.name().to_owned(),
        },
        load: LoadSummary {
            mode: mode.to_owned(),
            label: report::load_label(&bench.mode),
            rate,
            connections,
            clients,
            batch: items.map(|_| bench.batch as u64),
        },
        warmup_seconds: bench.warmup.as_secs_f64(),
        duration_seconds: finished.duration.as_secs_f64(),
        requests: totals.ok + totals.errors,
        ok: totals.ok,
        errors: totals.errors,
        throughput: totals.ok as f64 / seconds,
        items: items.map(|name| report::ItemsSummary {
            name: name.to_owned(),
            ok: totals.items_ok,
            failed: totals.items_failed,
            per_second: totals.items_ok as f64 / seconds,
        }),
        primary_latency: primary.to_owned(),
        latency,
        errors_by_code: totals.errors_by_code.clone(),
        nodes: finished.nodes,
        load_generator: finished.load_generator,
        raft,
        details,
        slo: Vec::new(),
        passed: true,
    };
    summary.slo = slos.iter().map(|slo| slo.check(|metric| summary.metric(metric))).collect();
    summary.passed = summary.slo.iter().all(|outcome| outcome.passed);
    (summary, finished.rows, histograms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_or_plain_seconds() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("ten seconds").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn open_loops_get_enough_connections_for_their_rate() {
        assert_eq!(default_connections(20.0), 8);
        assert_eq!(default_connections(10_000.0), 100);
        assert_eq!(default_connections(1e9), 512);
    }
}
