//! The rolling upgrade of the README, rehearsed with real processes: a 3-node cluster with
//! PKs running, their anchors watching and gifts flowing; each node in turn gets SIGTERM
//! (it drains: hands its groups off, closes its clients with 1012), exits, and starts
//! again on its data directory. Clients reconnect to another node on their own, as apps do.
//!
//! Checked: every acknowledged gift is in its PK's final score, and nothing else; every PK
//! ends with its result, no earlier than its end time and within the failover bound after
//! it; every client is back within seconds. The figures (gifts acknowledged during the
//! upgrade, the longest gap between a client's pushes, PK end lateness, drain times) are
//! printed for the README.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use pkd_cluster::app::{AppClient, Auth, is_push, wall_clock_ms};
use pkd_cluster::gifts::{Gift, GiftClient};
use pkd_cluster::{LocalCluster, LocalOptions};
use serde_json::Value;
use tokio::sync::watch;

/// PKs in the run, each between two anchors.
const PKS: u64 = 4;
const FIRST_ANCHOR: u64 = 601;
/// The battle lasts long enough for the whole upgrade.
const BATTLE_MS: i64 = 25_000;
/// The latest a PK may end after its end time: a leader change and a timer.
const FAILOVER_BOUND_MS: i64 = 5_000;
/// The longest a client may be away.
const BACK_WITHIN: Duration = Duration::from_secs(10);

/// The client addresses of the nodes, kept current across restarts (a restarted node
/// listens on a new port here; in production its address stays).
type Addresses = Arc<Mutex<BTreeMap<u64, String>>>;

fn address_of(addresses: &Addresses, node: u64) -> String {
    addresses.lock().unwrap()[&node].clone()
}

/// What one anchor's client saw.
#[derive(Debug, Default)]
struct Seen {
    /// Every push 10 of its PK: when it arrived, and its content.
    states: Vec<(i64, Value)>,
    /// How long each reconnection took, from the drop to the room entered again.
    reconnects: Vec<Duration>,
    /// The close reasons the client was given.
    closes: Vec<String>,
}

/// An anchor's app: in its room, reading pushes; when the connection drops it reconnects
/// to the next node and enters its room again.
async fn anchor_app(
    addresses: Addresses,
    mut client: AppClient,
    anchor: u64,
    mut node: u64,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Seen> {
    let mut seen = Seen::default();
    loop {
        let message = tokio::select! {
            message = client.next_message(Duration::from_secs(1)) => message,
            _ = stop.changed() => return Ok(seen),
        };
        match message {
            Ok(received) if is_push(&received.message, 10) => {
                seen.states.push((received.at_ms, received.message["content"].clone()));
            }
            Ok(_) => {}
            Err(error) if error.is_disconnect() => {
                seen.closes.push(error.to_string());
                let dropped = Instant::now();
                loop {
                    ensure!(dropped.elapsed() < Duration::from_secs(60), "anchor {anchor} never got back");
                    node = node % 3 + 1;
                    let address = address_of(&addresses, node);
                    let attempt = async {
                        let mut client = AppClient::connect(&address, anchor, Auth::dev(anchor)).await?;
                        let entered = client.enter(anchor, true).await?;
                        anyhow::ensure!(entered["code"] == "000000", "{entered}");
                        anyhow::Ok(client)
                    };
                    match attempt.await {
                        Ok(again) => {
                            client = again;
                            break;
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
                seen.reconnects.push(dropped.elapsed());
            }
            Err(_) => {}
        }
    }
}

/// The gift service: a gift every 20 ms to the anchors in turn, each retried with its id
/// on another node until it has an answer, until a gift is refused because the battles are
/// over. Returns the acknowledged gifts: (receiver, beans, when acknowledged).
async fn gift_service(
    addresses: Addresses,
    token: String,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Vec<(u64, i64, i64)>> {
    let mut acknowledged = Vec::new();
    let mut node = 1;
    let mut id = 0u64;
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => return Ok(acknowledged),
        }
        id += 1;
        let receiver = FIRST_ANCHOR + id % (2 * PKS);
        let beans = 1 + (id % 7) as i64;
        let gift = Gift { id, pk_id: None, receiver, sender: 70_000 + id % 50, beans, sender_profile: None };
        let first = Instant::now();
        loop {
            ensure!(first.elapsed() < Duration::from_secs(30), "gift {id} never answered");
            let mut gifts =
                GiftClient::new(address_of(&addresses, node), token.clone()).with_timeout(Duration::from_secs(5));
            match gifts.send(&gift).await {
                Ok(reply) if reply.code == "000000" => {
                    acknowledged.push((receiver, beans, wall_clock_ms()));
                    break;
                }
                Ok(reply) if reply.http_status == 503 || reply.code == "900008" => {}
                // The battles are over: the service is done.
                Ok(reply) if reply.code == "905041" || reply.code == "905040" => return Ok(acknowledged),
                Ok(reply) => bail!("gift {id} refused: {reply:?}"),
                Err(_) => {}
            }
            node = node % 3 + 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn ready(address: &str) -> bool {
    let Ok(mut stream) = tokio::net::TcpStream::connect(address).await else { return false };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = format!("GET /readyz HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    response.starts_with(b"HTTP/1.1 200")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_loses_no_gift_and_keeps_pks_on_time() -> anyhow::Result<()> {
    let options = LocalOptions::new(env!("CARGO_BIN_EXE_pkd"));
    let mut cluster = LocalCluster::start(options.clone())?;
    cluster.admin(1)?.set_config("pk_duration", &format!("300,{BATTLE_MS},0,600000")).await?;
    let addresses: Addresses = Arc::new(Mutex::new(
        cluster.ids().into_iter().map(|id| (id, cluster.node(id).unwrap().client_addr.to_string())).collect(),
    ));
    let (stop, stopped) = watch::channel(false);

    // The PKs, their anchors on every node.
    let mut apps = Vec::new();
    for pair in 0..PKS {
        let (a, b) = (FIRST_ANCHOR + 2 * pair, FIRST_ANCHOR + 2 * pair + 1);
        let (node_a, node_b) = (a % 3 + 1, b % 3 + 1);
        let mut source = AppClient::connect(&address_of(&addresses, node_a), a, Auth::dev(a)).await?;
        let mut target = AppClient::connect(&address_of(&addresses, node_b), b, Auth::dev(b)).await?;
        source.enter(a, true).await?;
        target.enter(b, true).await?;
        let queued = source.start().await?;
        ensure!(queued["code"] == "000000", "{queued}");
        let matched = target.start().await?;
        ensure!(matched["code"] == "902004", "{matched}");
        apps.push(tokio::spawn(anchor_app(addresses.clone(), source, a, node_a, stopped.clone())));
        apps.push(tokio::spawn(anchor_app(addresses.clone(), target, b, node_b, stopped.clone())));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let gifts = tokio::spawn(gift_service(addresses.clone(), options.gift_token.clone(), stopped.clone()));
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The upgrade: one node at a time.
    let upgrade_started = wall_clock_ms();
    let mut drains = Vec::new();
    for node in cluster.ids() {
        let drained = tokio::task::block_in_place(|| cluster.terminate(node, Duration::from_secs(30)))?;
        drains.push(drained);
        tokio::task::block_in_place(|| cluster.restart(node))?;
        let address = cluster.node(node)?.client_addr.to_string();
        addresses.lock().unwrap().insert(node, address.clone());
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready(&address).await {
            ensure!(Instant::now() < deadline, "node {node} not ready after its restart");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let upgrade_ended = wall_clock_ms();

    // The gift service stops once the battles are over; then the watchers stop.
    let acknowledged = tokio::time::timeout(Duration::from_millis(BATTLE_MS as u64 + 30_000), gifts)
        .await
        .context("the battles never ended")???;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop.send(true);
    let mut seen = BTreeMap::new();
    for (index, app) in apps.into_iter().enumerate() {
        seen.insert(FIRST_ANCHOR + index as u64, app.await??);
    }

    // Every acknowledged gift counted, and only those.
    let mut expected: BTreeMap<u64, i64> = BTreeMap::new();
    for (receiver, beans, _) in &acknowledged {
        *expected.entry(*receiver).or_default() += beans;
    }
    let mut lateness = Vec::new();
    for pair in 0..PKS {
        let (a, b) = (FIRST_ANCHOR + 2 * pair, FIRST_ANCHOR + 2 * pair + 1);
        let results: Vec<&(i64, Value)> =
            [a, b].iter().flat_map(|anchor| &seen[anchor].states).filter(|(_, state)| state["status"] == 2).collect();
        let (at, result) = results.iter().min_by_key(|(at, _)| *at).context(format!("no result for {a}/{b}"))?;
        let (source, target) = (result["sourceUser"].as_u64(), result["targetUser"].as_u64());
        ensure!(source == Some(a) && target == Some(b), "{result}");
        ensure!(result["sourceGifts"].as_i64() == Some(expected[&a]), "{a}: {result} vs {}", expected[&a]);
        ensure!(result["targetGifts"].as_i64() == Some(expected[&b]), "{b}: {result} vs {}", expected[&b]);
        let end = result["endTime"].as_i64().context("endTime")?;
        let late = at - end;
        ensure!(late >= 0, "pk of {a} ended {late} ms early");
        ensure!(late <= FAILOVER_BOUND_MS, "pk of {a} ended {late} ms late");
        lateness.push(late);
    }
    // Every client came back, quickly, told to reconnect.
    let mut reconnects = Vec::new();
    let mut max_gap = 0;
    for (anchor, seen) in &seen {
        for back in &seen.reconnects {
            ensure!(*back < BACK_WITHIN, "anchor {anchor} was away {back:?}");
        }
        reconnects.extend(seen.reconnects.iter().copied());
        let running: Vec<i64> = seen.states.iter().filter(|(_, s)| s["status"] == 1).map(|(at, _)| *at).collect();
        for pair in running.windows(2) {
            max_gap = max_gap.max(pair[1] - pair[0]);
        }
    }
    ensure!(!reconnects.is_empty(), "no client was ever moved: did the nodes drain?");
    let during = acknowledged.iter().filter(|(_, _, at)| (upgrade_started..=upgrade_ended).contains(at)).count();
    eprintln!(
        "rolling upgrade of 3 nodes: {} ms; {} gifts acknowledged ({} during the upgrade), all counted; \
         {} reconnections, longest {:?}; longest gap between a client's pushes {} ms; \
         PK end lateness {:?} ms; drains {:?}",
        upgrade_ended - upgrade_started,
        acknowledged.len(),
        during,
        reconnects.len(),
        reconnects.iter().max().copied().unwrap_or_default(),
        max_gap,
        lateness,
        drains,
    );
    Ok(())
}
