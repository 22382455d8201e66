//! `gifts`: gift requests through the gift API, one gift or `--batch N` per request, to
//! `--pks` running PKs (64 by default), and their acknowledgement latency (`ack`). At
//! the end the PKs' scores are read back over WebSocket (command 42) and compared with
//! the gifts the API acknowledged: none may be missing.

use std::sync::Arc;
use std::time::Duration;

use pkd_cluster::app::{self, wall_clock_ms};
use serde_json::json;

use super::super::gifting::{GiftPlan, drive_gifts};
use super::super::pks::{AnchorBehaviour, AnchorPool, Roster};
use super::super::{Bench, ScenarioOutput};
use super::{outlasting_battle, set_pk_phases};

pub async fn run(bench: &Bench) -> anyhow::Result<ScenarioOutput> {
    let pks = bench.args.pks.unwrap_or(64);
    bench.target.require_gift_token()?;
    let opening = set_pk_phases(bench, outlasting_battle(bench)).await?;
    let roster = Arc::new(Roster::new(opening));
    let anchors = AnchorPool::spawn(
        bench.target.clone(),
        roster.clone(),
        bench.user_base,
        2 * pks as u64,
        AnchorBehaviour::default(),
    );
    anchors.wait_for_battles(&roster, pks, 1_000, Duration::from_secs(60)).await?;
    eprintln!("{pks} PKs in their battle; sending gifts");
    let plan = Arc::new(GiftPlan::new(bench.target.clone(), roster.clone(), bench.batch, bench.user_base + 10_000_000));
    let senders = plan.senders(bench.workers())?;
    let mut measurement = bench.begin(false, Duration::from_secs(1));
    drive_gifts(senders, measurement.tickets.clone(), measurement.recorder.clone()).await;
    measurement.load_ended(&bench.target).await;
    let finished = bench.end(measurement).await;

    // Read the scores back: every acknowledged gift (1 bean each) must be in them, as
    // long as no PK ended during the run (an ended PK's score is no longer readable).
    let acknowledged = plan.acknowledged.load(std::sync::atomic::Ordering::Relaxed);
    let report = roster.report(wall_clock_ms());
    let counted = if report.pks_ended == 0 { settled_scores(bench, &roster, acknowledged).await } else { None };
    anchors.stop().await;
    let details = json!({
        "pks": pks,
        "gifts_acknowledged": acknowledged,
        "beans_counted": counted,
        "gifts_missing": counted.map(|counted| acknowledged.saturating_sub(counted)),
        "pks_created": report.pks_created,
        "pks_ended": report.pks_ended,
    });
    Ok(ScenarioOutput { finished, primary: "ack", items: Some("gifts"), details, extra_latency: Default::default() })
}

/// The scores once they hold every acknowledged gift, or as they stand after 5 s. A
/// node answers command 42 from its own replica, which trails the leader by up to a
/// heartbeat, so a read right after the load may miss the last gifts for a moment.
async fn settled_scores(bench: &Bench, roster: &Roster, acknowledged: u64) -> Option<u64> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    // Each read as another user: the nodes limit commands per user.
    for reader in bench.user_base + 9_000_000.. {
        let counted = read_scores(bench, roster, reader).await;
        if counted.is_none_or(|counted| counted >= acknowledged) || tokio::time::Instant::now() >= deadline {
            return counted;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

/// The sum of both sides' beans over every running PK, read with command 42 from the
/// source anchor's room.
async fn read_scores(bench: &Bench, roster: &Roster, reader: u64) -> Option<u64> {
    let mut client = bench.target.connect(0, reader).await.ok()?;
    let mut total = 0u64;
    for (index, pk) in roster.running().into_iter().enumerate() {
        let reply = client.room_state(pk.source).await.ok()?;
        if app::reply_code(&reply) != app::SUCCESS || reply["result"]["pkId"] != pk.id {
            return None;
        }
        let side = |name: &str| reply["result"][name].as_u64().unwrap_or(0);
        total += side("sourceGifts") + side("targetGifts");
        // Stay within the connection's rate limit: bursts of 40, then 20 commands/s.
        if index >= 30 {
            tokio::time::sleep(Duration::from_millis(55)).await;
        }
    }
    client.close().await;
    Some(total)
}
