//! `pkd backup` from a running 3-node cluster of real processes, and `pkd restore` into a
//! new 3-node cluster: the running PK, its score and its gift ids, the anchor waiting to
//! match, all come back; a damaged file and a used data directory are refused.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use pkd_cluster::app::{AppClient, Auth, is_push};
use pkd_cluster::gifts::{Gift, GiftClient};
use pkd_cluster::{LocalCluster, LocalOptions};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

fn pkd(args: &[&str]) -> anyhow::Result<std::process::Output> {
    let output = Command::new(env!("CARGO_BIN_EXE_pkd")).args(args).output()?;
    Ok(output)
}

fn text(output: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

async fn connect(cluster: &LocalCluster, node: u64, user: u64) -> anyhow::Result<AppClient> {
    let address = cluster.node(node)?.client_addr.to_string();
    Ok(AppClient::connect(&address, user, Auth::dev(user)).await?)
}

/// The PK state of `room` through node `node` (command 42), once it shows a PK.
async fn room_state(cluster: &LocalCluster, node: u64, room: u64) -> anyhow::Result<Value> {
    let mut viewer = connect(cluster, node, 9_000 + node).await?;
    let deadline = Instant::now() + WAIT;
    loop {
        let reply = viewer.room_state(room).await?;
        if reply["code"] == "000000" && !reply["result"].is_null() {
            return Ok(reply["result"].clone());
        }
        if Instant::now() > deadline {
            bail!("room {room} shows no PK through node {node}: {reply}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends a gift, retrying while the cluster elects a leader (503) or the PK's opening
/// lasts (905041).
async fn gift(
    gifts: &mut GiftClient,
    id: u64,
    receiver: u64,
    beans: i64,
) -> anyhow::Result<pkd_cluster::gifts::GiftReply> {
    let deadline = Instant::now() + WAIT;
    loop {
        let reply = gifts.send(&Gift { id, pk_id: None, receiver, sender: 7_001, beans, sender_profile: None }).await?;
        if (reply.http_status != 503 && reply.code != "905041") || Instant::now() > deadline {
            return Ok(reply);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn members(cluster: &LocalCluster) -> String {
    cluster.members().iter().map(|(id, address)| format!("{id}={address}")).collect::<Vec<_>>().join(",")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_into_a_new_cluster() -> anyhow::Result<()> {
    let options = LocalOptions::new(env!("CARGO_BIN_EXE_pkd"));
    let old = LocalCluster::start(options.clone())?;
    old.admin(1)?.set_config("pk_duration", "300,120000,0,600000").await?;
    // A PK between anchors 101 and 102, with 20 gifts of 10 beans to 101.
    let mut source = connect(&old, 1, 101).await?;
    let mut target = connect(&old, 2, 102).await?;
    source.enter(101, true).await?;
    target.enter(102, true).await?;
    let queued = source.start().await?;
    ensure!(queued["code"] == "000000", "{queued}");
    let matched = target.start().await?;
    ensure!(matched["code"] == "902004", "{matched}");
    let state = target.wait_for(WAIT, |push| is_push(push, 10)).await?;
    let pk = state.message["content"]["pkId"].as_u64().context("pkId")?;
    let mut gifts = GiftClient::new(old.node(3)?.client_addr.to_string(), options.gift_token.clone());
    for id in 1..=20 {
        let reply = gift(&mut gifts, id, 101, 10).await?;
        ensure!(reply.code == "000000", "gift {id}: {reply:?}");
    }
    // Anchor 201 waits to be matched.
    let mut waiting = connect(&old, 3, 201).await?;
    waiting.enter(201, true).await?;
    let queued = waiting.start().await?;
    ensure!(queued["code"] == "000000", "{queued}");

    // The backup, through node 2.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("cluster.backup");
    let file_arg = file.to_str().context("path")?;
    let admin = old.node(2)?.admin_addr.to_string();
    let output = pkd(&["backup", "--admin", &admin, "--token", &options.admin_token, "--out", file_arg])?;
    ensure!(output.status.success(), "{}", text(&output));
    let described = text(&output);
    ensure!(described.contains("lobby: 1 PKs held, 1 anchors matching"), "{described}");
    // Without the admin token, nothing.
    let output = pkd(&["backup", "--admin", &admin, "--token", "wrong-token-0123456789", "--out", file_arg])?;
    ensure!(!output.status.success() && text(&output).contains("401"), "{}", text(&output));
    drop(old);

    // A damaged file is refused, whole or cut short.
    let bytes = std::fs::read(&file)?;
    let mut damaged = bytes.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x40;
    let damaged_file = dir.path().join("damaged.backup");
    std::fs::write(&damaged_file, &damaged)?;
    let output = pkd(&["restore", "--from", damaged_file.to_str().context("path")?, "--describe"])?;
    ensure!(!output.status.success() && text(&output).contains("damaged"), "{}", text(&output));
    std::fs::write(&damaged_file, &bytes[..bytes.len() - 10])?;
    let output = pkd(&["restore", "--from", damaged_file.to_str().context("path")?, "--describe"])?;
    ensure!(!output.status.success(), "{}", text(&output));

    // A new cluster, seeded from the file.
    let mut new = LocalCluster::prepare(options.clone())?;
    let members = members(&new);
    for id in new.ids() {
        let data_dir = new.node(id)?.data_dir.clone();
        let output = pkd(&[
            "restore",
            "--from",
            file_arg,
            "--data-dir",
            data_dir.to_str().context("path")?,
            "--node-id",
            &id.to_string(),
            "--members",
            &members,
        ])?;
        ensure!(output.status.success(), "node {id}: {}", text(&output));
        // A second restore into the same directory is refused.
        if id == 1 {
            let again = pkd(&[
                "restore",
                "--from",
                file_arg,
                "--data-dir",
                data_dir.to_str().context("path")?,
                "--node-id",
                "1",
                "--members",
                &members,
            ])?;
            ensure!(!again.status.success() && text(&again).contains("not empty"), "{}", text(&again));
        }
    }
    new.launch()?;

    // The PK runs on, with its score, seen through every node.
    for node in new.ids() {
        let state = room_state(&new, node, 101).await?;
        ensure!(state["pkId"].as_u64() == Some(pk), "{state}");
        ensure!(state["sourceGifts"].as_i64() == Some(200) || state["targetGifts"].as_i64() == Some(200), "{state}");
    }
    // Its gift ids too: a retry of gift 5 counts once; a new gift counts.
    let mut gifts = GiftClient::new(new.node(1)?.client_addr.to_string(), options.gift_token.clone());
    let retry = gift(&mut gifts, 5, 101, 10).await?;
    let result = retry.result.clone().context("a counted gift has a result")?;
    ensure!(result.duplicate && result.side_beans == Some(200), "{retry:?}");
    let fresh = gift(&mut gifts, 21, 101, 10).await?;
    ensure!(fresh.result.as_ref().and_then(|r| r.side_beans) == Some(210), "{fresh:?}");
    // The anchors of the PK are still in it: a start is refused as busy.
    let mut again = connect(&new, 2, 101).await?;
    again.enter(101, true).await?;
    let busy = again.start().await?;
    ensure!(busy["code"] == "905033", "{busy}");
    // The waiting anchor is matched with a newcomer, in a PK whose id skipped ahead.
    let mut waiting = connect(&new, 3, 201).await?;
    waiting.enter(201, true).await?;
    let mut newcomer = connect(&new, 1, 202).await?;
    newcomer.enter(202, true).await?;
    let matched = newcomer.start().await?;
    ensure!(matched["code"] == "902004", "the restored queue held 201: {matched}");
    let state = newcomer.wait_for(WAIT, |push| is_push(push, 10)).await?;
    let new_pk = state.message["content"]["pkId"].as_u64().context("pkId")?;
    ensure!(new_pk > pk + 1_000_000, "PK ids skip ahead after a restore: {new_pk}");
    Ok(())
}
