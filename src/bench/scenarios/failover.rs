//! `failover`: gifts flow to `--pks` PKs (16 by default) whose battles are short
//! (`--battle`, 5 s by default, so PKs end and new ones start all along), while every
//! `--every` (5 s by default) the leader of one arena group, in turn, is killed and
//! restarted after `--down` (`--fault kill`, the default with `--local`) or handed to
//! another node (`--fault transfer`, through the admin API). Gift requests that find no
//! node or no leader go to the next node with the same gift ids, as the gift service
//! does; anchors whose connection drops reconnect to another node.
//!
//! Measured: the acknowledgement latency (`ack`, from the due time, retries included);
//! time to recover (the longest time any one PK went without an acknowledged gift, in
//! all and around each fault); how late each PK's end reached its anchors after its
//! `endTime` (`lateness`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pkd_cluster::app::wall_clock_ms;
use serde_json::json;
use tokio::time::Instant;

use super::super::gifting::{AckGaps, GiftPlan, drive_gifts};
use super::super::schedule::Tickets;
use super::super::target::Target;
use super::super::{Bench, Fault, ScenarioOutput};
use super::{battling_pks, grace, lateness};

/// One fault the bench caused.
#[derive(Clone, Debug, serde::Serialize)]
struct FaultEvent {
    /// Seconds since the load started.
    second: f64,
    /// `kill` or `transfer`.
    action: &'static str,
    group: u64,
    /// The node that led the group.
    node: u64,
    /// For a transfer: the node asked to lead.
    to: Option<u64>,
    /// Why it could not be done, if it could not.
    error: Option<String>,
    /// The longest time a PK went without an acknowledged gift, around this fault.
    recovery_seconds: f64,
    #[serde(skip)]
    at: Instant,
}

pub async fn run(bench: &Bench) -> anyhow::Result<ScenarioOutput> {
    let pks = bench.args.pks.unwrap_or(16);
    bench.target.require_gift_token()?;
    let fault = match bench.args.fault {
        Some(fault) => fault,
        None if bench.target.is_local() => Fault::Kill,
        None => Fault::Transfer,
    };
    if fault == Fault::Kill && !bench.target.is_local() {
        anyhow::bail!("--fault kill works on nodes the bench started (--local); use --fault transfer with --admin");
    }
    if !bench.target.has_admin() {
        anyhow::bail!("failover finds and moves leaders through the admin API: --local, or --admin and --admin-token");
    }
    let every = bench.args.every.unwrap_or(Duration::from_secs(5)).max(Duration::from_millis(200));
    let (roster, anchors) = battling_pks(bench, Duration::from_secs(5), pks, 500).await?;
    let gaps = Arc::new(AckGaps::new(Duration::from_millis(100)));
    let mut plan = GiftPlan::new(bench.target.clone(), roster.clone(), bench.batch, bench.user_base + 10_000_000);
    plan.retry_for = Some(Duration::from_secs(20));
    plan.gaps = Some(gaps.clone());
    let plan = Arc::new(plan);
    let senders = plan.senders(bench.workers())?;
    let mut measurement = bench.begin(false, Duration::from_secs(1));
    roster.measure_ends_from(wall_clock_ms() + bench.warmup.as_millis() as i64);
    let faults = tokio::spawn(cause_faults(
        bench.target.clone(),
        measurement.tickets.clone(),
        fault,
        every,
        bench.args.down,
        measurement.recorder.measure_from(),
    ));
    drive_gifts(senders, measurement.tickets.clone(), measurement.recorder.clone()).await;
    let mut events = faults.await.unwrap_or_default();
    measurement.load_ended(&bench.target).await;
    // Ends due just before the load stopped still reach the anchors.
    grace(Duration::from_secs(3)).await;
    let load_start = measurement.load_start();
    for event in &mut events {
        event.recovery_seconds = gaps.longest_within(event.at, event.at + every).as_secs_f64();
        event.second = event.at.saturating_duration_since(load_start).as_secs_f64();
    }
    let (longest_pk_gap, longest_global_gap) = gaps.longest();
    let report = roster.report(wall_clock_ms());
    let extra_latency = lateness(&roster);
    let finished = bench.end(measurement).await;
    let stats = anchors.stats.clone();
    anchors.stop().await;
    let details = json!({
        "fault": match fault { Fault::Kill => "kill", Fault::Transfer => "transfer" },
        "every_seconds": every.as_secs_f64(),
        "faults": events,
        "recovery_seconds": longest_pk_gap.max(longest_global_gap).as_secs_f64(),
        "cluster_gap_seconds": longest_global_gap.as_secs_f64(),
        "gifts_acknowledged": plan.acknowledged.load(Ordering::Relaxed),
        "pks_created": report.pks_created,
        "pks_ended": report.pks_ended,
        "pks_ended_abnormally": report.pks_ended_abnormally,
        "ends_missed": report.ends_missed,
        "anchor_reconnects": stats.reconnects.load(Ordering::Relaxed),
    });
    Ok(ScenarioOutput { finished, primary: "ack", items: Some("gifts"), details, extra_latency })
}

/// Every `every` from the end of the warm-up: the next arena group's leader is killed
/// (and restarted after `down`) or asked to hand its leadership over. Stops with the load.
async fn cause_faults(
    target: Arc<Target>,
    tickets: Arc<Tickets>,
    fault: Fault,
    every: Duration,
    down: Duration,
    measure_from: Instant,
) -> Vec<FaultEvent> {
    let mut events = Vec::new();
    let mut next = measure_from + every;
    let mut turn = 0usize;
    loop {
        tokio::time::sleep_until(next.min(tickets.end())).await;
        if tickets.is_stopped() || Instant::now() >= tickets.end() {
            return events;
        }
        next += every;
        let groups = target.arena_groups().await;
        if groups.is_empty() {
            continue;
        }
        let group = groups[turn % groups.len()];
        turn += 1;
        let Some(leader) = target.leader_of(group).await else { continue };
        let at = Instant::now();
        let mut event = FaultEvent {
            second: 0.0,
            action: match fault {
                Fault::Kill => "kill",
                Fault::Transfer => "transfer",
            },
            group,
            node: leader,
            to: None,
            error: None,
            recovery_seconds: 0.0,
            at,
        };
        match fault {
            Fault::Kill => {
                eprintln!("killing node {leader} (leader of arena group {group})");
                if let Err(error) = target.kill(leader).await {
                    event.error = Some(format!("{error:#}"));
                } else {
                    tokio::time::sleep(down).await;
                    eprintln!("restarting node {leader}");
                    if let Err(error) = target.restart(leader).await {
                        event.error = Some(format!("restart: {error:#}"));
                    }
                }
            }
            Fault::Transfer => {
                let ids: Vec<u64> = target.nodes.iter().map(|node| node.id).collect();
                let position = ids.iter().position(|&id| id == leader).unwrap_or(0);
                let to = ids[(position + 1) % ids.len()];
                event.to = Some(to);
                eprintln!("moving the leadership of arena group {group} from node {leader} to node {to}");
                if let Err(error) = target.transfer_leader(group, to).await {
                    event.error = Some(format!("{error:#}"));
                }
            }
        }
        events.push(event);
        // A kill and restart can outlast the period: the next fault waits for its turn.
        next = next.max(Instant::now());
    }
}
