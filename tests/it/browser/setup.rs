//! Three real `pkd serve` processes (`LocalCluster`), and the app's clients that make a PK
//! on them: anchors over WebSocket, gifts through the gift API.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use pkd_cluster::app::{AppClient, Auth};
use pkd_cluster::gifts::{Gift, GiftClient, SenderProfile};
use pkd_cluster::{AdminClient, LocalCluster, LocalOptions};

pub const WAIT: Duration = Duration::from_secs(20);

/// Starts three nodes (two arenas, dev tokens) and waits until every group has a leader
/// every node agrees on.
pub async fn start_cluster() -> anyhow::Result<LocalCluster> {
    let options = LocalOptions::new(env!("CARGO_BIN_EXE_pkd"));
    let cluster = tokio::task::block_in_place(|| LocalCluster::start(options))?;
    for group in 0..=2 {
        agreed_leader(&cluster, group).await?;
    }
    Ok(cluster)
}

/// The leader of `group` once every node names the same one (each node's own
/// `/admin/status`).
pub async fn agreed_leader(cluster: &LocalCluster, group: u64) -> anyhow::Result<u64> {
    let deadline = Instant::now() + WAIT;
    loop {
        let mut leaders = Vec::new();
        for id in [1, 2, 3] {
            let status = cluster.admin(id)?.with_timeout(Duration::from_secs(3)).status().await?;
            leaders.push(status.group(group).and_then(|group| group.leader));
        }
        if let Some(Some(leader)) = leaders.first()
            && leaders.iter().all(|other| other == &Some(*leader))
        {
            return Ok(*leader);
        }
        ensure!(Instant::now() < deadline, "no agreed leader of group {group}: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every group's leader, as the nodes agree on it.
pub async fn leaders(cluster: &LocalCluster) -> anyhow::Result<Vec<(u64, u64)>> {
    let mut all = Vec::new();
    for group in 0..=2 {
        all.push((group, agreed_leader(cluster, group).await?));
    }
    Ok(all)
}

pub fn admin(cluster: &LocalCluster, node: u64) -> anyhow::Result<AdminClient> {
    Ok(cluster.admin(node)?)
}

/// A running PK and its two anchors' connections.
pub struct Pk {
    pub id: u64,
    pub source: u64,
    pub target: u64,
    /// The anchors' connections, open while the PK is held.
    pub _clients: Vec<AppClient>,
}

/// Anchors `first` and `first + 1` go live (on nodes 2 and 3) and match.
pub async fn start_pk(cluster: &LocalCluster, first: u64) -> anyhow::Result<Pk> {
    let (a, b) = (first, first + 1);
    let mut source = anchor(cluster, 2, a).await?;
    let mut target = anchor(cluster, 3, b).await?;
    let queued = source.start().await?;
    ensure!(queued["code"] == "000000", "{queued}");
    let matched = target.start().await?;
    ensure!(matched["code"] == "902004", "{matched}");
    let state = target.push(10, WAIT).await?.message;
    let id = state["content"]["pkId"].as_u64().context("pkId")?;
    Ok(Pk { id, source: a, target: b, _clients: vec![source, target] })
}

/// Anchor `user` connected to node `node` and live in its own room.
pub async fn anchor(cluster: &LocalCluster, node: u64, user: u64) -> anyhow::Result<AppClient> {
    let address = cluster.node(node)?.client_addr.to_string();
    let mut client = AppClient::connect(&address, user, Auth::dev(user)).await?;
    let entered = client.enter(user, true).await?;
    ensure!(entered["code"] == "000000", "{entered}");
    Ok(client)
}

/// The gift API of node `node`.
pub fn gifts(cluster: &LocalCluster, node: u64) -> anyhow::Result<GiftClient> {
    Ok(GiftClient::new(cluster.node(node)?.client_addr.to_string(), cluster.options().gift_token.clone()))
}

/// Sends gift `id` of `beans` from `sender` to `receiver`, again while the PK is still in
/// its opening (905041); returns the receiving side's total.
pub async fn gift(client: &mut GiftClient, id: u64, receiver: u64, sender: u64, beans: i64) -> anyhow::Result<i64> {
    let deadline = Instant::now() + WAIT;
    loop {
        let gift = Gift {
            id,
            pk_id: None,
            receiver,
            sender,
            beans,
            sender_profile: Some(SenderProfile {
                nickname: format!("fan{sender}"),
                level: 7,
                ..SenderProfile::default()
            }),
        };
        let reply = client.send(&gift).await?;
        match reply.code.as_str() {
            "000000" => return reply.result.and_then(|result| result.side_beans).context("sideBeans"),
            "905041" | "900008" if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            _ => bail!("gift {id} refused: {reply:?}"),
        }
    }
}

/// One HTTP/1.1 request with the `Authorization` header given (or none), read to its
/// end: the status and the body. Stops reading after `limit` (the live feed never ends).
pub async fn http(
    address: &str,
    method: &str,
    path: &str,
    authorization: Option<&str>,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await?;
    let auth = authorization.map(|value| format!("Authorization: {value}\r\n")).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut response)).await;
    if read.is_err() && response.is_empty() {
        bail!("{method} {path}: no answer");
    }
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split(' ').nth(1).and_then(|code| code.parse().ok()).context("status line")?;
    let body = text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    Ok((status, body))
}
