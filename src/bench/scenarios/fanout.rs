//! `fanout`: `--viewers` viewers (20 by default) in the source room of each of `--pks`
//! PKs (50 by default), spread over the nodes, while gifts flow at `--rate` requests per
//! second of `--batch` gifts. One viewer per PK is tracked: the delay from each gift's
//! due time to the first push that viewer received with the gift in its score
//! (`delivery`), and the cadence of its pushes (at most one per second after changes, at
//! least one per 5 s). The other viewers only read.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pkd_cluster::AppClient;
use pkd_cluster::app::{self, wall_clock_ms};
use serde_json::json;
use tokio::sync::watch;

use super::super::cadence::CadenceRules;
use super::super::gifting::{DeliveryTracker, GiftPlan, drive_gifts};
use super::super::{Bench, ScenarioOutput};
use super::{ViewerStats, battling_pks, connect_all, enter_as_viewer, grace, outlasting_battle};

pub async fn run(bench: &Bench) -> anyhow::Result<ScenarioOutput> {
    let pks = bench.args.pks.unwrap_or(50);
    let viewers_per_pk = bench.args.viewers.unwrap_or(20).max(1);
    bench.target.require_gift_token()?;
    let (roster, anchors) = battling_pks(bench, outlasting_battle(bench), pks, 1_000).await?;
    let rooms: Vec<(u64, u64)> = roster.running().iter().map(|pk| (pk.id, pk.source)).take(pks).collect();

    let tracker = Arc::new(DeliveryTracker::new(CadenceRules::default()));
    eprintln!("connecting {} viewers over {} PKs...", rooms.len() * viewers_per_pk, rooms.len());
    let first_viewer = bench.user_base + 1_000_000;
    let users: Vec<u64> = (0..(rooms.len() * viewers_per_pk) as u64).map(|index| first_viewer + index).collect();
    let room_of = |user: u64| rooms[((user - first_viewer) as usize) % rooms.len()].1;
    let viewers = connect_all(bench, users, |client| {
        let room = room_of(client.user());
        enter_as_viewer(client, room)
    })
    .await?;
    let stats = ViewerStats::shared();
    let (stop, stopped) = watch::channel(false);
    let tasks: Vec<_> = viewers
        .into_iter()
        .enumerate()
        .map(|(index, client)| {
            // The first viewer of each room is tracked.
            let tracked = index < rooms.len();
            tokio::spawn(watch_room(client, tracked.then(|| tracker.clone()), stats.clone(), stopped.clone()))
        })
        .collect();
    eprintln!("viewers in their rooms; gifts flow");

    let mut measurement = bench.begin(false, Duration::from_secs(1));
    let recorder = measurement.recorder.clone();
    tracker.measure_from(recorder.measure_from());
    let mut plan = GiftPlan::new(bench.target.clone(), roster.clone(), bench.batch, bench.user_base + 10_000_000);
    plan.tracker = Some(tracker.clone());
    let plan = Arc::new(plan);
    let senders = plan.senders(bench.workers())?;
    drive_gifts(senders, measurement.tickets.clone(), recorder.clone()).await;
    measurement.load_ended(&bench.target).await;
    // A change is pushed within the cool-down (1 s) plus its commit and the send.
    grace(Duration::from_secs(3)).await;
    let delivery = tracker.finish(wall_clock_ms());
    let mut extra_latency = std::collections::BTreeMap::new();
    extra_latency.insert("delivery".to_owned(), tracker.delivery());
    for _ in 0..delivery.undelivered {
        recorder.count_error("undelivered");
    }
    let _ = stop.send(true);
    for task in tasks {
        let _ = task.await;
    }
    let finished = bench.end(measurement).await;
    anchors.stop().await;
    let details = json!({
        "pks": rooms.len(),
        "viewers": rooms.len() * viewers_per_pk,
        "tracked_viewers": rooms.len(),
        "frames_received": stats.frames.load(Ordering::Relaxed),
        "viewer_disconnects": stats.disconnects.load(Ordering::Relaxed),
        "gifts_acknowledged": plan.acknowledged.load(Ordering::Relaxed),
        "undelivered": delivery.undelivered,
        "tracked_pushes": delivery.tracked_pushes,
        "cadence_too_frequent": delivery.cadence_too_frequent,
        "cadence_too_sparse": delivery.cadence_too_sparse,
        "violations": delivery.violations,
        "shortest_push_spacing_ms": delivery.shortest_spacing_ms,
        "longest_push_gap_ms": delivery.longest_gap_ms,
    });
    Ok(ScenarioOutput { finished, primary: "ack", items: Some("gifts"), details, extra_latency })
}

/// One viewer: reads every frame; a tracked one hands its state pushes to the tracker.
async fn watch_room(
    mut client: AppClient,
    tracker: Option<Arc<DeliveryTracker>>,
    stats: Arc<ViewerStats>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let frame = tokio::select! {
            frame = client.next_frame(Duration::from_secs(3600)) => frame,
            _ = stopped.changed() => break,
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(app::AppError::Timeout { .. }) => continue,
            Err(_) => {
                stats.disconnects.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        stats.frames.fetch_add(1, Ordering::Relaxed);
        let Some(tracker) = &tracker else { continue };
        let Ok(message) = serde_json::from_str::<serde_json::Value>(&frame.text) else { continue };
        if app::is_push(&message, 10)
            && let Some(version) = message["version"].as_i64()
        {
            tracker.pushed(&message["content"], version, frame.at.into());
        }
    }
    client.close().await;
}
