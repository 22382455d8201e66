//! `mixed`: a day compressed into minutes. `--anchors` anchors (60 by default) match,
//! battle for `--battle` (8 s by default), pause, sometimes go off air for a few seconds,
//! and start again; `--viewers` viewers (200 by default) enter the room of a running PK,
//! watch it for a few seconds, leave and pick another; gifts flow to the running PKs at
//! `--rate`. Measured: gift acknowledgements (`ack`), every command's reply (`command`:
//! starts, room entries and exits, heartbeats), and how late PK ends reached the anchors
//! (`lateness`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pkd_cluster::AppClient;
use pkd_cluster::app::{self, AppError, wall_clock_ms};
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::Instant;

use super::super::gifting::{GiftPlan, drive_gifts};
use super::super::pks::{AnchorBehaviour, AnchorPool, Roster};
use super::super::recorder::Recorder;
use super::super::target::Target;
use super::super::{Bench, ScenarioOutput};
use super::{lateness, set_pk_phases};

#[derive(Default)]
struct ViewerCounts {
    joins: AtomicU64,
    leaves: AtomicU64,
    heartbeats: AtomicU64,
    reconnects: AtomicU64,
}

pub async fn run(bench: &Bench) -> anyhow::Result<ScenarioOutput> {
    let anchors_count = bench.args.anchors.unwrap_or(60).max(2) as u64;
    let viewers = bench.args.viewers.unwrap_or(200) as u64;
    bench.target.require_gift_token()?;
    let opening = set_pk_phases(bench, Duration::from_secs(8)).await?;
    let roster = Arc::new(Roster::new(opening));
    let mut plan = GiftPlan::new(bench.target.clone(), roster.clone(), bench.batch, bench.user_base + 10_000_000);
    plan.retry_for = Some(Duration::from_secs(5));
    let plan = Arc::new(plan);
    let senders = plan.senders(bench.workers())?;
    let behaviour = AnchorBehaviour {
        think: Some((Duration::from_millis(500), Duration::from_secs(3))),
        off_air_chance: 0.2,
        ..AnchorBehaviour::default()
    };
    let anchors =
        AnchorPool::spawn(bench.target.clone(), roster.clone(), bench.user_base, anchors_count, behaviour.clone());
    anchors.wait_for_battles(&roster, 1, 500, Duration::from_secs(60)).await?;
    let mut measurement = bench.begin(false, Duration::from_secs(1));
    let recorder = measurement.recorder.clone();
    recorder.declare_other("command");
    let _ = behaviour.recorder.set(recorder.clone());
    roster.measure_ends_from(wall_clock_ms() + bench.warmup.as_millis() as i64);
    let counts = Arc::new(ViewerCounts::default());
    let (stop, stopped) = watch::channel(false);
    let viewer_tasks: Vec<_> = (0..viewers)
        .map(|index| {
            let viewer = Viewer {
                target: bench.target.clone(),
                roster: roster.clone(),
                recorder: recorder.clone(),
                counts: counts.clone(),
                user: bench.user_base + 1_000_000 + index,
                node: index as usize,
                rng: rand::rngs::SmallRng::seed_from_u64(bench.user_base + index),
            };
            tokio::spawn(viewer.live(stopped.clone()))
        })
        .collect();
    drive_gifts(senders, measurement.tickets.clone(), recorder.clone()).await;
    measurement.load_ended(&bench.target).await;
    let _ = stop.send(true);
    for task in viewer_tasks {
        let _ = task.await;
    }
    let report = roster.report(wall_clock_ms());
    let extra_latency = lateness(&roster);
    let finished = bench.end(measurement).await;
    let stats = anchors.stats.clone();
    anchors.stop().await;
    let details = json!({
        "anchors": anchors_count,
        "viewers": viewers,
        "starts": stats.starts.load(Ordering::Relaxed),
        "start_codes": stats.codes(),
        "anchors_off_air": stats.off_air.load(Ordering::Relaxed),
        "anchor_reconnects": stats.reconnects.load(Ordering::Relaxed),
        "viewer_joins": counts.joins.load(Ordering::Relaxed),
        "viewer_leaves": counts.leaves.load(Ordering::Relaxed),
        "heartbeats": counts.heartbeats.load(Ordering::Relaxed),
        "viewer_reconnects": counts.reconnects.load(Ordering::Relaxed),
        "gifts_acknowledged": plan.acknowledged.load(Ordering::Relaxed),
        "pks_created": report.pks_created,
        "pks_ended": report.pks_ended,
        "pks_ended_abnormally": report.pks_ended_abnormally,
        "ends_missed": report.ends_missed,
    });
    Ok(ScenarioOutput { finished, primary: "ack", items: Some("gifts"), details, extra_latency })
}

/// A viewer hopping from PK to PK.
struct Viewer {
    target: Arc<Target>,
    roster: Arc<Roster>,
    recorder: Arc<Recorder>,
    counts: Arc<ViewerCounts>,
    user: u64,
    node: usize,
    rng: rand::rngs::SmallRng,
}

impl Viewer {
    async fn live(mut self, mut stopped: watch::Receiver<bool>) {
        let mut client: Option<AppClient> = None;
        while !*stopped.borrow() {
            let result = tokio::select! {
                result = self.visit(&mut client) => result,
                _ = stopped.changed() => break,
            };
            if let Err(error) = result
                && error.is_disconnect()
            {
                client = None;
                self.node += 1;
                self.counts.reconnects.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        if let Some(client) = client {
            client.close().await;
        }
    }

    /// One command, its reply timed into `command`.
    async fn command(&self, client: &mut AppClient, id: i64, room: Option<u64>) -> Result<(), AppError> {
        let sent = Instant::now();
        let reply = client.command(id, room, json!({"type": 1})).await?;
        match app::reply_code(&reply) {
            app::SUCCESS => self.recorder.record_other("command", sent, sent.elapsed()),
            code => self.recorder.count_error(&format!("command {id} {code}")),
        }
        Ok(())
    }

    /// Enters a running PK's room, watches it for a while, leaves, pauses.
    async fn visit(&mut self, client: &mut Option<AppClient>) -> Result<(), AppError> {
        if client.is_none() {
            match self.target.connect(self.node, self.user).await {
                Ok(connected) => *client = Some(connected),
                Err(_) => {
                    self.node += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    return Ok(());
                }
            }
        }
        let Some(connected) = client.as_mut() else { return Ok(()) };
        let running = self.roster.running();
        if running.is_empty() {
            self.watch(connected, Duration::from_millis(500)).await?;
            return Ok(());
        }
        let pk = &running[self.rng.random_range(0..running.len())];
        let room = if self.rng.random_bool(0.5) { pk.source } else { pk.target };
        self.command(connected, 40, Some(room)).await?;
        self.counts.joins.fetch_add(1, Ordering::Relaxed);
        let stay = Duration::from_millis(self.rng.random_range(1_000..6_000));
        self.watch(connected, stay).await?;
        if self.rng.random_bool(0.3) {
            self.command(connected, 44, None).await?;
            self.counts.heartbeats.fetch_add(1, Ordering::Relaxed);
        }
        self.command(connected, 41, Some(room)).await?;
        self.counts.leaves.fetch_add(1, Ordering::Relaxed);
        let pause = Duration::from_millis(self.rng.random_range(500..2_000));
        self.watch(connected, pause).await
    }

    /// Reads whatever comes for `period`.
    async fn watch(&self, client: &mut AppClient, period: Duration) -> Result<(), AppError> {
        let _ = client.take_kept();
        let until = Instant::now() + period;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            match client.next_frame(left).await {
                Ok(_) | Err(AppError::Timeout { .. }) => {}
                Err(error) => return Err(error),
            }
        }
    }
}
