//! The scenarios, and what several of them share: PK phases set where the bench may,
//! and viewers.

mod failover;
mod fanout;
mod gifts;
mod matching;
mod mixed;
mod soak;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use pkd_cluster::AppClient;
use pkd_cluster::app;

use super::pks::{AnchorBehaviour, AnchorPool, Roster};
use super::{Bench, Scenario, ScenarioOutput};

/// The opening phase the bench sets where it sets `pk_duration`.
pub const OPENING_MS: i64 = 300;

pub async fn run(bench: &Bench) -> anyhow::Result<ScenarioOutput> {
    match bench.args.scenario {
        Scenario::Gifts => gifts::run(bench).await,
        Scenario::Fanout => fanout::run(bench).await,
        Scenario::Match => matching::run(bench).await,
        Scenario::Failover => failover::run(bench).await,
        Scenario::Soak => soak::run(bench).await,
        Scenario::Mixed => mixed::run(bench).await,
    }
}

/// Sets `pk_duration` to an opening of [`OPENING_MS`] and a battle of `--battle` (or
/// `default_battle`), where the bench can (an admin API). Returns the opening in ms if it
/// set it; otherwise the cluster keeps its own phases and the bench learns them from
/// the pushes.
pub async fn set_pk_phases(bench: &Bench, default_battle: Duration) -> anyhow::Result<Option<i64>> {
    if !bench.target.has_admin() {
        eprintln!("no admin API: the PKs keep the cluster's own pk_duration");
        return Ok(None);
    }
    let battle = bench.args.battle.unwrap_or(default_battle).as_millis().max(1_000);
    bench.target.set_config("pk_duration", &format!("{OPENING_MS},{battle},0,600000")).await?;
    Ok(Some(OPENING_MS))
}

/// `pks` PKs of the bench's anchors in their battle, with at least `margin_ms` of it left:
/// PK phases set (a battle of `default_battle` unless `--battle`), the anchors that keep
/// matching, and the roster that follows their PKs.
pub async fn battling_pks(
    bench: &Bench,
    default_battle: Duration,
    pks: usize,
    margin_ms: i64,
) -> anyhow::Result<(Arc<Roster>, AnchorPool)> {
    let opening = set_pk_phases(bench, default_battle).await?;
    let roster = Arc::new(Roster::new(opening));
    let anchors = AnchorPool::spawn(
        bench.target.clone(),
        roster.clone(),
        bench.user_base,
        2 * pks as u64,
        AnchorBehaviour::default(),
    );
    anchors.wait_for_battles(&roster, pks, margin_ms, Duration::from_secs(60)).await?;
    Ok((roster, anchors))
}

/// The PKs' end lateness as an extra latency of the summary (`lateness`).
pub fn lateness(roster: &Roster) -> std::collections::BTreeMap<String, Histogram<u64>> {
    let histogram = roster.lateness().unwrap_or_else(super::recorder::new_histogram);
    std::collections::BTreeMap::from([("lateness".to_owned(), histogram)])
}

/// A battle long enough to outlast the warm-up and the measurement, with a margin.
pub fn outlasting_battle(bench: &Bench) -> Duration {
    bench.warmup + bench.duration + Duration::from_secs(60)
}

/// Connects `users` (each to node `index % nodes`), 64 at a time, and runs `then` on each
/// connected client (entering a room, typically). Fails on the first failure.
pub async fn connect_all<F, Fut>(bench: &Bench, users: Vec<u64>, then: F) -> anyhow::Result<Vec<AppClient>>
where
    F: Fn(AppClient) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<AppClient>>,
{
    let target = bench.target.clone();
    let then = &then;
    let connected: Vec<anyhow::Result<AppClient>> = futures_util::stream::iter(users.into_iter().enumerate())
        .map(|(index, user)| {
            let target = target.clone();
            async move {
                let client = target.connect(index, user).await?;
                then(client).await
            }
        })
        .buffered(64)
        .collect()
        .await;
    connected.into_iter().collect()
}

/// Enters `room` as a viewer; fails unless the reply is success.
pub async fn enter_as_viewer(mut client: AppClient, room: u64) -> anyhow::Result<AppClient> {
    let reply =
        client.command_retrying(40, Some(room), serde_json::json!({"type": 1}), Duration::from_secs(10)).await?;
    anyhow::ensure!(app::reply_code(&reply) == app::SUCCESS, "user {} entering room {room}: {reply}", client.user());
    Ok(client)
}

/// Waits `grace` so that pushes and acknowledgements still on their way arrive.
pub async fn grace(period: Duration) {
    tokio::time::sleep(period).await;
}

/// Counters shared by viewer tasks.
#[derive(Default)]
pub struct ViewerStats {
    pub frames: std::sync::atomic::AtomicU64,
    pub disconnects: std::sync::atomic::AtomicU64,
}

impl ViewerStats {
    pub fn shared() -> Arc<ViewerStats> {
        Arc::new(ViewerStats::default())
    }
}
