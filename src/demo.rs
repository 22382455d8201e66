//! `pkd serve --demo`: a node that shows PKs on its own, for a first look.
//!
//! The node runs alone with development tokens and short PKs (an opening of 1.5 s, a
//! minute of battle, 5 s after it). A few simulated anchors connect over WebSocket like
//! the app does, enter their rooms and match; when a PK ends they match again. A
//! simulated gift service sends gifts to the PKs in battle through the gift API. Nothing
//! reaches the engine but through the node's public interfaces. The watch page
//! (`/watch`) shows any of the PKs live.

use std::time::Duration;

use pkd_cluster::app::{AppClient, Auth};
use pkd_cluster::gifts::{Gift, GiftClient, SenderProfile};
use tokio_util::sync::CancellationToken;

/// The demo's PK phases: `pk_duration`.
pub const DEMO_DURATION: &str = "1500,60000,5000,600000";
/// The demo anchors' user ids (an anchor's room is its user id).
pub const DEMO_ANCHORS: [u64; 4] = [1001, 1002, 1003, 1004];
/// The token the simulated gift service presents.
pub const DEMO_GIFT_TOKEN: &str = "demo-gift-service-token";

const VIEWERS: u64 = 24;
const NICKNAMES: [&str; 8] = ["Mira", "Tao", "Iris", "Kian", "Lena", "Omar", "Sora", "Yuki"];

/// Runs the simulated anchors and gift service against the node at `address` until
/// `stop`.
pub async fn run(address: String, stop: CancellationToken) {
    let mut tasks = tokio::task::JoinSet::new();
    for anchor in DEMO_ANCHORS {
        tasks.spawn(anchor_life(address.clone(), anchor, stop.clone()));
    }
    tasks.spawn(gift_service(address, stop.clone()));
    stop.cancelled().await;
    tasks.shutdown().await;
}

/// One anchor: connects, enters its room, matches; when its PK closes, a short pause and
/// it matches again. Reconnects after any error.
async fn anchor_life(address: String, anchor: u64, stop: CancellationToken) {
    while !stop.is_cancelled() {
        if let Err(error) = anchor_session(&address, anchor).await {
            tracing::debug!(anchor, %error, "demo anchor reconnecting");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn anchor_session(address: &str, anchor: u64) -> Result<(), pkd_cluster::app::AppError> {
    let mut client = AppClient::connect(address, anchor, Auth::dev(anchor)).await?;
    client.enter(anchor, true).await?;
    loop {
        let reply = client.start().await?;
        let code = reply["code"].as_str().unwrap_or_default().to_owned();
        if code != "000000" && code != "902004" && code != "902005" && code != "905033" {
            tokio::time::sleep(Duration::from_secs(2)).await;
            continue;
        }
        // Waits for its PK to close (push 15), keeping the connection's pushes read.
        client.wait_for(Duration::from_secs(600), |push| push["type"] == 15).await?;
        tokio::time::sleep(Duration::from_millis(1500 + rand::random::<u64>() % 2500)).await;
    }
}

/// The simulated gift service: a gift every few hundred milliseconds to a random anchor;
/// the node refuses the ones not in a battle.
async fn gift_service(address: String, stop: CancellationToken) {
    let mut client = GiftClient::new(address, DEMO_GIFT_TOKEN);
    let mut id = rand::random::<u32>() as u64 * 1_000_000;
    while !stop.is_cancelled() {
        tokio::time::sleep(Duration::from_millis(150 + rand::random::<u64>() % 450)).await;
        id += 1;
        let viewer = 2001 + rand::random::<u64>() % VIEWERS;
        let gift = Gift {
            id,
            pk_id: None,
            receiver: DEMO_ANCHORS[rand::random::<u64>() as usize % DEMO_ANCHORS.len()],
            sender: viewer,
            beans: [10, 20, 50, 99, 188, 520][rand::random::<u64>() as usize % 6],
            sender_profile: Some(SenderProfile {
                nickname: NICKNAMES[(viewer % NICKNAMES.len() as u64) as usize].to_owned(),
                level: (viewer % 40) as u32 + 1,
                ..SenderProfile::default()
            }),
        };
        if let Err(error) = client.send(&gift).await {
            tracing::debug!(%error, "demo gift not sent");
        }
    }
}
