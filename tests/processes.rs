//! Real `pkd serve` processes on loopback (through `pkd_cluster::LocalCluster`): a PK
//! replicated on three nodes, and the same PK surviving SIGKILL, SIGSTOP, a restart of
//! every node, and a membership change. Clients are real WebSocket clients with `dev:`
//! tokens; the cluster is driven and observed through the admin API.

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures_util::{SinkExt, StreamExt};
use pkd_cluster::api::NodeStatus;
use pkd_cluster::{AdminClient, LocalCluster, LocalOptions};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Message, http};

/// How long after a PK's end time its end must reach a client, even across a failover.
const FAILOVER_BOUND: Duration = Duration::from_secs(6);
/// How long a client waits for one message.
const WAIT: Duration = Duration::from_secs(15);

fn now_ms() -> i64 {
    pkd::node::wall_clock().0
}

/// Starts three nodes (blocking the test's worker while the processes come up).
fn start_cluster() -> anyhow::Result<LocalCluster> {
    let options = LocalOptions { arenas: 2, ..LocalOptions::new(env!("CARGO_BIN_EXE_pkd")) };
    Ok(tokio::task::block_in_place(|| LocalCluster::start(options))?)
}

/// Sets the PK's phases (opening 300 ms, then `battle_ms`) in every group.
async fn short_pks(admin: &AdminClient, battle_ms: u64) -> anyhow::Result<()> {
    let groups = admin.set_config("pk_duration", &format!("300,{battle_ms},0,600000")).await?;
    ensure!(groups.groups == vec![0, 1, 2], "config set in {:?}", groups.groups);
    Ok(())
}

async fn statuses(cluster: &LocalCluster, ids: &[u64]) -> anyhow::Result<Vec<NodeStatus>> {
    let mut all = Vec::new();
    for &id in ids {
        all.push(cluster.admin(id)?.with_timeout(Duration::from_secs(3)).status().await?);
    }
    Ok(all)
}

/// Waits until every node in `ids` reports the same applied index in every group.
async fn converged(cluster: &LocalCluster, ids: &[u64], limit: Duration) -> anyhow::Result<Vec<NodeStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        let all = statuses(cluster, ids).await?;
        let same = all[0].groups.iter().all(|group| {
            group.applied.is_some()
                && all.iter().all(|status| status.group(group.id).is_some_and(|other| other.applied == group.applied))
        });
        if same {
            return Ok(all);
        }
        if Instant::now() > deadline {
            bail!("applied indexes did not converge: {all:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The leader of `group` as the nodes in `ids` agree on it.
async fn agreed_leader(cluster: &LocalCluster, ids: &[u64], group: u64, limit: Duration) -> anyhow::Result<u64> {
    let deadline = Instant::now() + limit;
    loop {
        let all = statuses(cluster, ids).await?;
        let leaders: Vec<Option<u64>> =
            all.iter().map(|status| status.group(group).and_then(|group| group.leader)).collect();
        if let Some(Some(leader)) = leaders.first()
            && leaders.iter().all(|other| other == &Some(*leader))
            && ids.contains(leader)
        {
            return Ok(*leader);
        }
        if Instant::now() > deadline {
            bail!("no agreed leader of group {group}: {leaders:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `group`'s leadership has settled on its preferred node (the balancer's
/// choice among voters 1, 2, 3: the lobby on node 1, arena 1 on node 2, arena 2 on node 3),
/// so that it does not move on its own during the test.
async fn settled_leader(cluster: &LocalCluster, group: u64) -> anyhow::Result<u64> {
    let preferred = [1, 2, 3][(group % 3) as usize];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leader = agreed_leader(cluster, &[1, 2, 3], group, Duration::from_secs(5)).await?;
        if leader == preferred {
            return Ok(leader);
        }
        ensure!(Instant::now() < deadline, "group {group} stays led by {leader}, not {preferred}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct Client {
    socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    sequence: i64,
    pushes: Vec<(i64, Value)>,
}

impl Client {
    async fn connect(cluster: &LocalCluster, node: u64, user: u64) -> anyhow::Result<Client> {
        let address = cluster.node(node)?.client_addr;
        let mut request = format!("ws://{address}/ws").into_client_request()?;
        request.headers_mut().insert(http::header::AUTHORIZATION, format!("Bearer dev:{user}").parse()?);
        let (socket, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(Client { socket, sequence: 0, pushes: Vec::new() })
    }

    /// The next JSON message, with the wall clock when it arrived.
    async fn next_json(&mut self, limit: Duration) -> anyhow::Result<(i64, Value)> {
        loop {
            let message = tokio::time::timeout(limit, self.socket.next()).await.context("no message in time")?;
            match message.context("connection closed")?? {
                Message::Text(text) => return Ok((now_ms(), serde_json::from_str(&text)?)),
                Message::Close(frame) => bail!("closed: {frame:?}"),
                _ => continue,
            }
        }
    }

    async fn command(&mut self, command_id: i64, room: u64, fields: Value) -> anyhow::Result<Value> {
        self.sequence += 1;
        let mut frame = json!({"commandId": command_id, "msgType": "command", "roomId": room,
                               "sequence": self.sequence, "initTime": 1626146346120i64, "logId": "t"});
        if let (Some(frame), Some(fields)) = (frame.as_object_mut(), fields.as_object()) {
            frame.extend(fields.clone());
        }
        self.socket.send(Message::Text(frame.to_string().into())).await?;
        loop {
            let (at, message) = self.next_json(WAIT).await?;
            if message["msgType"] == "command" && message["sequence"] == self.sequence {
                return Ok(message);
            }
            self.pushes.push((at, message));
        }
    }

    async fn enter(&mut self, room: u64, anchor: bool) -> anyhow::Result<Value> {
        self.command(40, room, json!({"type": if anchor { 2 } else { 1 }})).await
    }

    async fn matching(&mut self, room: u64, anchor: u64) -> anyhow::Result<Value> {
        self.command(28, room, json!({"type": 1, "source": anchor, "target": 0})).await
    }

    /// The next state push (type 10) of `pk` with `status`, and when it arrived.
    async fn state(&mut self, pk: u64, status: u64, limit: Duration) -> anyhow::Result<(i64, Value)> {
        let wanted = |push: &Value| {
            push["msgType"] == "pub"
                && push["type"] == 10
                && push["content"]["pkId"] == pk
                && push["content"]["status"] == status
        };
        if let Some(index) = self.pushes.iter().position(|(_, push)| wanted(push)) {
            return Ok(self.pushes.remove(index));
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (at, push) =
                self.next_json(left).await.with_context(|| format!("no push of pk {pk} status {status}"))?;
            if wanted(&push) {
                return Ok((at, push));
            }
        }
    }

    /// Every state push of `pk` that arrives within `window` (and those already kept).
    async fn states_within(&mut self, pk: u64, window: Duration) -> Vec<Value> {
        let mut seen: Vec<Value> = self.pushes.drain(..).map(|(_, push)| push).collect();
        let deadline = Instant::now() + window;
        while let Ok((_, push)) = self.next_json(deadline.saturating_duration_since(Instant::now())).await {
            seen.push(push);
        }
        seen.retain(|push| push["type"] == 10 && push["content"]["pkId"] == pk);
        seen
    }
}

/// A running PK between anchors `first` and `first + 1`, whose clients are on `node`.
struct Pk {
    id: u64,
    end_time: i64,
    source: Client,
    target: Client,
}

/// Matches two anchors over WebSocket on `node` and returns their PK.
async fn start_pk(cluster: &LocalCluster, node: u64, first: u64) -> anyhow::Result<Pk> {
    let (a, b) = (first, first + 1);
    let mut source = Client::connect(cluster, node, a).await?;
    let mut target = Client::connect(cluster, node, b).await?;
    source.enter(a, true).await?;
    target.enter(b, true).await?;
    let queued = source.matching(a, a).await?;
    ensure!(queued["code"] == "000000", "{queued}");
    let matched = target.matching(b, b).await?;
    ensure!(matched["code"] == "902004", "{matched}");
    let (_, first_state) = target.state_any(10).await?;
    let id = first_state["content"]["pkId"].as_u64().context("pkId")?;
    let end_time = first_state["content"]["endTime"].as_i64().context("endTime")?;
    Ok(Pk { id, end_time, source, target })
}

impl Client {
    async fn state_any(&mut self, push_type: i64) -> anyhow::Result<(i64, Value)> {
        if let Some(index) = self.pushes.iter().position(|(_, push)| push["type"] == push_type) {
            return Ok(self.pushes.remove(index));
        }
        loop {
            let (at, push) = self.next_json(WAIT).await?;
            if push["msgType"] == "pub" && push["type"] == push_type {
                return Ok((at, push));
            }
        }
    }
}

/// Sends one gift through node `node`'s gift API and returns the engine's reply code.
async fn gift(
    cluster: &LocalCluster,
    node: u64,
    id: u64,
    receiver: u64,
    sender: u64,
    beans: i64,
) -> anyhow::Result<Value> {
    let api = AdminClient::new(cluster.node(node)?.client_addr.to_string(), cluster.options().gift_token.clone());
    let body = json!({"id": id, "receiver": receiver, "sender": sender, "beans": beans});
    Ok(api.call::<Value>("POST", "/internal/gifts", Some(&body)).await?)
}

/// The arena group that hosts `pk` with two arenas.
fn arena_of(pk: u64) -> u64 {
    u64::from(pkd_raft::arena_for(pkd_raft::PkId(pk), 2)) + 1
}

/// Checks that `pk` ended exactly once, no earlier than its end time and within the
/// failover bound: the first end push, then a quiet look at what follows.
async fn ends_once(client: &mut Client, pk: u64, end_time: i64) -> anyhow::Result<Value> {
    let limit = Duration::from_millis(u64::try_from(end_time - now_ms()).unwrap_or(0)) + FAILOVER_BOUND;
    let (arrived, end) = client.state(pk, 2, limit).await?;
    ensure!(arrived >= end_time, "the end arrived at {arrived}, before the end time {end_time}");
    ensure!(
        arrived <= end_time + FAILOVER_BOUND.as_millis() as i64,
        "the end arrived {} ms after the end time",
        arrived - end_time
    );
    eprintln!("pk {pk} ended; its end reached the client {} ms after its end time", arrived - end_time);
    // Any later push of this PK repeats the same final state: one end, one result.
    for later in client.states_within(pk, Duration::from_millis(1_500)).await {
        ensure!(later["content"]["status"] == 2, "a state after the end: {later}");
        for field in ["winner", "sourceGifts", "targetGifts", "endTime"] {
            ensure!(later["content"][field] == end["content"][field], "a second, different end: {later} vs {end}");
        }
    }
    Ok(end)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_a_pk_to_the_same_applied_index() -> anyhow::Result<()> {
    let cluster = start_cluster()?;
    // The admin API wants its token.
    let stranger = AdminClient::new(cluster.node(1)?.admin_addr.to_string(), "not-the-admin-token-at-all");
    match stranger.status().await {
        Err(pkd_cluster::ClientError::Refused { status: 401, .. }) => {}
        other => bail!("expected 401, got {other:?}"),
    }
    match stranger.set_config("pk_enable", "false").await {
        Err(pkd_cluster::ClientError::Refused { status: 401, .. }) => {}
        other => bail!("expected 401, got {other:?}"),
    }
    match cluster.admin(1)?.set_config("pk_duration", "1500,300000").await {
        Err(pkd_cluster::ClientError::Refused { status: 400, message }) if message.contains("expected 3 or 4") => {}
        other => bail!("expected 400, got {other:?}"),
    }
    short_pks(&cluster.admin(2)?, 2_000).await?;
    // `pkd cluster status` prints one line per group.
    let admin = cluster.node(1)?.admin_addr.to_string();
    let token = cluster.options().admin_token.clone();
    let output = tokio::task::block_in_place(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_pkd"))
            .args(["cluster", "status", "--admin", &admin, "--token", &token])
            .output()
    })?;
    let table = String::from_utf8_lossy(&output.stdout);
    ensure!(output.status.success(), "{table} {}", String::from_utf8_lossy(&output.stderr));
    ensure!(table.lines().filter(|line| line.contains(" lobby ") || line.contains(" arena ")).count() == 3, "{table}");
    ensure!(table.contains("1,2,3"), "{table}");
    // Leadership moves on request (the balancer may later move it back).
    let moved = cluster.admin(3)?.transfer_leader(0, 2).await?;
    ensure!(moved.leader == Some(2), "{moved:?}");
    let mut pk = start_pk(&cluster, 3, 101).await?;
    ensure!(pk.end_time > now_ms(), "the PK is running");
    let all = converged(&cluster, &[1, 2, 3], Duration::from_secs(10)).await?;
    for status in &all {
        ensure!(status.groups.len() == 3, "a lobby and two arenas: {status:?}");
        for group in &status.groups {
            ensure!(group.voters == vec![1, 2, 3], "{group:?}");
        }
    }
    let end = ends_once(&mut pk.source, pk.id, pk.end_time).await?;
    ensure!(end["content"]["winner"] == 0 || end["content"]["winner"] == 101 || end["content"]["winner"] == 102);
    pk.target.state(pk.id, 2, WAIT).await?;
    converged(&cluster, &[1, 2, 3], Duration::from_secs(10)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pk_ends_once_after_its_arena_leader_is_killed() -> anyhow::Result<()> {
    let mut cluster = start_cluster()?;
    short_pks(&cluster.admin(1)?, 4_000).await?;
    // The clients are on node 1, which never leads an arena once leadership settles.
    let mut pk = start_pk(&cluster, 1, 201).await?;
    let arena = arena_of(pk.id);
    let leader = settled_leader(&cluster, arena).await?;
    // Gifts in the battle, one of them sent twice, through a node that does not lead.
    tokio::time::sleep(Duration::from_millis(400)).await;
    for (id, receiver, beans) in [(1, 201, 300), (1, 201, 300), (2, 202, 100)] {
        let reply = gift(&cluster, 1, id, receiver, 7_000 + id, beans).await?;
        ensure!(reply["code"] == "000000", "{reply}");
    }
    // Kill the leader shortly before the end: the timer must fire on its successor.
    let until_kill = pk.end_time - 300 - now_ms();
    ensure!(until_kill > 0, "the PK must still run when its leader dies");
    tokio::time::sleep(Duration::from_millis(until_kill as u64)).await;
    tokio::task::block_in_place(|| cluster.kill(leader))?;
    let killed_at = now_ms();
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != leader).collect();
    let successor = agreed_leader(&cluster, &survivors, arena, Duration::from_secs(5)).await?;
    ensure!(successor != leader);
    eprintln!("node {successor} leads arena {arena} {} ms after node {leader} was killed", now_ms() - killed_at);
    let end = ends_once(&mut pk.source, pk.id, pk.end_time).await?;
    let result = (&end["content"]["sourceGifts"], &end["content"]["targetGifts"], &end["content"]["winner"]);
    ensure!(result == (&json!(300), &json!(100), &json!(201)), "a retried gift counts once: {end}");
    // The rooms are released: the anchor can match again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = pk.source.matching(201, 201).await?;
        if reply["code"] == "000000" {
            break;
        }
        // 905033 until the lobby applies the release; 900008 asks the client to retry.
        let pending = reply["code"] == "905033" || reply["code"] == "900008";
        ensure!(pending && Instant::now() < deadline, "{reply}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_does_not_lead_in_its_old_term() -> anyhow::Result<()> {
    let mut cluster = start_cluster()?;
    short_pks(&cluster.admin(1)?, 5_000).await?;
    // The clients are on node 1, which never leads an arena once leadership settles.
    let mut pk = start_pk(&cluster, 1, 301).await?;
    let arena = arena_of(pk.id);
    let leader = settled_leader(&cluster, arena).await?;
    let before = cluster.admin(leader)?.status().await?;
    let old_term = before.group(arena).context("arena")?.term;
    tokio::task::block_in_place(|| cluster.pause(leader))?;
    // Well beyond the election timeout (150–300 ms).
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|&id| id != leader).collect();
    let successor = agreed_leader(&cluster, &others, arena, Duration::from_secs(5)).await?;
    ensure!(successor != leader, "another node leads while {leader} is frozen");
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::block_in_place(|| cluster.resume(leader))?;
    // Once it runs again, the old leader learns the new term within a bound; until then it
    // commits nothing (it cannot reach a quorum in its old term); no two nodes ever claim
    // the same term.
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut old_term_commit = None;
    loop {
        let all = statuses(&cluster, &[1, 2, 3]).await?;
        let mut leaders = Vec::new();
        for status in &all {
            let group = status.group(arena).context("arena")?;
            if group.state == "leader" {
                leaders.push((status.node, group.term));
            }
        }
        for (index, (node, term)) in leaders.iter().enumerate() {
            ensure!(
                leaders[index + 1..].iter().all(|(other, other_term)| other_term != term || other == node),
                "two leaders in one term: {leaders:?}"
            );
        }
        let stale =
            all.iter().find(|status| status.node == leader).and_then(|status| status.group(arena)).context("arena")?;
        if stale.term > old_term {
            break;
        }
        let committed = *old_term_commit.get_or_insert(stale.committed);
        ensure!(stale.committed == committed, "node {leader} committed in its old term {old_term}: {stale:?}");
        ensure!(Instant::now() < deadline, "node {leader} still in its old term {old_term} after 2 s: {stale:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let now_leads = agreed_leader(&cluster, &[1, 2, 3], arena, Duration::from_secs(5)).await?;
    let status = cluster.admin(now_leads)?.status().await?;
    ensure!(status.group(arena).context("arena")?.term > old_term, "{status:?}");
    ends_once(&mut pk.source, pk.id, pk.end_time).await?;
    converged(&cluster, &[1, 2, 3], Duration::from_secs(10)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_pk_survives_a_restart_of_every_node() -> anyhow::Result<()> {
    let mut cluster = start_cluster()?;
    short_pks(&cluster.admin(1)?, 12_000).await?;
    let Pk { id, end_time, source, target } = start_pk(&cluster, 1, 401).await?;
    drop((source, target));
    converged(&cluster, &[1, 2, 3], Duration::from_secs(10)).await?;
    tokio::task::block_in_place(|| cluster.restart_all())?;
    ensure!(now_ms() < end_time, "the restart took longer than the PK; make the battle longer");
    // A viewer entering a PK room on any node gets the recovered PK.
    // (Once the node has applied the log again: a follower learns the commit index from the
    // leader after the restart.)
    converged(&cluster, &[1, 2, 3], Duration::from_secs(10)).await?;
    let mut viewer = Client::connect(&cluster, 3, 9_401).await?;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let entered = viewer.enter(401, false).await?;
        if entered["result"]["pkId"] == id {
            break;
        }
        ensure!(Instant::now() < deadline, "the PK is not in room 401 after the restart: {entered}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let end = ends_once(&mut viewer, id, end_time).await?;
    ensure!(end["content"]["endTime"] == end_time, "{end}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_joins_and_an_old_one_leaves_while_a_pk_runs() -> anyhow::Result<()> {
    let mut cluster = start_cluster()?;
    short_pks(&cluster.admin(1)?, 8_000).await?;
    let mut pk = start_pk(&cluster, 2, 501).await?;
    let four = tokio::task::block_in_place(|| cluster.add_node(4).map(|node| node.cluster_addr))?;
    let admin = cluster.admin(2)?;
    admin.add_learner(4, four.to_string()).await?;
    // Node 4 sees itself as a learner of every group once it has caught up.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = cluster.admin(4)?.status().await?;
        if status.groups.iter().all(|group| group.learners == vec![4] && group.voters == vec![1, 2, 3]) {
            break;
        }
        ensure!(Instant::now() < deadline, "node 4 is not a learner everywhere: {status:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    admin.promote(4).await?;
    admin.remove(1).await?;
    let remaining = [2, 3, 4];
    let all = converged(&cluster, &remaining, Duration::from_secs(10)).await?;
    for status in &all {
        for group in &status.groups {
            ensure!(group.voters == vec![2, 3, 4] && group.learners.is_empty(), "{group:?}");
        }
    }
    tokio::task::block_in_place(|| cluster.kill(1))?;
    ends_once(&mut pk.source, pk.id, pk.end_time).await?;
    converged(&cluster, &remaining, Duration::from_secs(10)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_started_to_join_form_a_cluster_through_admin_init() -> anyhow::Result<()> {
    let options = LocalOptions { join: true, ..LocalOptions::new(env!("CARGO_BIN_EXE_pkd")) };
    let cluster = tokio::task::block_in_place(|| LocalCluster::start(options))?;
    let before = cluster.admin(2)?.status().await?;
    ensure!(before.groups.iter().all(|group| group.voters.is_empty() && group.leader.is_none()), "{before:?}");
    let members = cluster.members();
    let initialized = cluster.admin(2)?.init(&pkd_cluster::api::InitRequest { members }).await?;
    ensure!(initialized.groups == vec![0, 1, 2], "{initialized:?}");
    for group in 0..=2 {
        agreed_leader(&cluster, &[1, 2, 3], group, Duration::from_secs(10)).await?;
    }
    short_pks(&cluster.admin(3)?, 1_000).await?;
    let mut pk = start_pk(&cluster, 1, 601).await?;
    ends_once(&mut pk.source, pk.id, pk.end_time).await?;
    let all = converged(&cluster, &[1, 2, 3], Duration::from_secs(10)).await?;
    ensure!(all.iter().all(|status| status.groups.iter().all(|group| group.voters == vec![1, 2, 3])), "{all:?}");
    Ok(())
}

/// One flow spread over the three nodes: the anchors on nodes 1 and 2, a viewer on node
/// 3, gifts through node 2's gift API, a second viewer entering on node 1 mid-PK. Every
/// client gets every push of its room from its own node, and the anchors' presence on
/// nodes other than the arena leader's keeps the PK alive (it ends normally, status 2,
/// though the grace period is shorter than the battle).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_spread_over_three_nodes_reaches_every_client() -> anyhow::Result<()> {
    let cluster = start_cluster()?;
    short_pks(&cluster.admin(1)?, 5_000).await?;
    cluster.admin(1)?.set_config("pk_limits", "{'anchorGraceMs':1500}").await?;
    let (a, b) = (801, 802);
    let mut source = Client::connect(&cluster, 1, a).await?;
    let mut target = Client::connect(&cluster, 2, b).await?;
    let mut viewer = Client::connect(&cluster, 3, 9_801).await?;
    source.enter(a, true).await?;
    target.enter(b, true).await?;
    viewer.enter(a, false).await?;
    let queued = source.matching(a, a).await?;
    ensure!(queued["code"] == "000000", "{queued}");
    let (_, started) = source.state_any(13).await?;
    ensure!(started["content"]["msg"] == a, "{started}");
    let matched = target.matching(b, b).await?;
    ensure!(matched["code"] == "902004", "{matched}");
    // The first state reaches the viewer on node 3 and the anchors on nodes 1 and 2.
    let (_, first) = viewer.state_any(10).await?;
    let pk = first["content"]["pkId"].as_u64().context("pkId")?;
    let end_time = first["content"]["endTime"].as_i64().context("endTime")?;
    ensure!(first["content"]["sourceUser"] == a && first["content"]["targetUser"] == b, "{first}");
    source.state_any(10).await?;
    target.state_any(10).await?;
    // A gift through node 2 shows on node 3.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let counted = gift(&cluster, 2, 88_001, a, 9_901, 700).await?;
    ensure!(counted["code"] == "000000", "{counted}");
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, push) = viewer.state_any(10).await?;
        if push["content"]["sourceGifts"] == 700 {
            break;
        }
        ensure!(Instant::now() < deadline, "the gift never reached node 3's viewer");
    }
    // A viewer entering on node 1 gets the current state in the reply.
    let mut late = Client::connect(&cluster, 1, 9_802).await?;
    let entered = late.enter(a, false).await?;
    ensure!(entered["result"]["pkId"] == pk && entered["result"]["sourceGifts"] == 700, "{entered}");
    // Both anchors stay connected to nodes that may not lead the arena: the PK ends
    // normally, with a winner, at its end time.
    let end = ends_once(&mut viewer, pk, end_time).await?;
    ensure!(end["content"]["winner"] == a, "{end}");
    ensure!(end["content"]["sourceOnline"] == true && end["content"]["targetOnline"] == true, "{end}");
    late.state(pk, 2, WAIT).await?;
    Ok(())
}
