//! Real `pkd serve` processes on loopback (through `pkd_cluster::LocalCluster`): a PK
//! replicated on three nodes, and the same PK surviving SIGKILL, SIGSTOP, a restart of
//! every node, and a membership change; a leader cut off by the launcher's link proxy.
//! Clients are real WebSocket clients with `dev:` tokens; the cluster is driven and
//! observed through the admin API.

use std::time::{Duration, Instant};

use crate::common::{
    Client, Pk, WAIT, agreed_leader, arena_of, cluster_options, converged, ends_once, gift, now_ms, settled_leader,
    short_pks, start_cluster, start_cluster_with, start_pk, statuses,
};
use anyhow::{Context, bail, ensure};
use pkd_cluster::{AdminClient, LocalOptions, Rule};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_a_pk_to_the_same_applied_index() -> anyhow::Result<()> {
    let cluster = start_cluster().await?;
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
    ensure!(table.starts_with("node 1 (connected to: 2,3)"), "{table}");
    // Leadership moves on request and stays where the operator placed it: the balancer
    // keeps it there (watched over several of its rounds) ...
    let moved = cluster.admin(3)?.transfer_leader(0, 2).await?;
    ensure!(moved.leader == Some(2), "{moved:?}");
    let watched_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watched_until {
        let leader = agreed_leader(&cluster, &[1, 2, 3], 0, Duration::from_secs(5)).await?;
        ensure!(leader == 2, "the placed leadership moved to node {leader}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // ... until `balance` clears the placement and the balancer hands it back to node 1
    // (before the PK, whose commands would meet the hand-over with 900008).
    cluster.admin(1)?.balance().await?;
    settled_leader(&cluster, 0).await?;
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
    let mut cluster = start_cluster().await?;
    // A battle long enough for the set-up below to finish before the kill, even on a
    // loaded machine.
    short_pks(&cluster.admin(1)?, 7_000).await?;
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
async fn a_leader_cut_off_by_the_link_proxy_is_replaced_and_catches_up_once_healed() -> anyhow::Result<()> {
    let cluster = start_cluster_with(LocalOptions { proxy: true, ..cluster_options() })?;
    for group in 0..=2 {
        settled_leader(&cluster, group).await?;
    }
    let links = cluster.links().context("the cluster runs with the proxy")?;
    ensure!(cluster.node(1)?.cluster_addr != cluster.node(1)?.cluster_listen, "node 1 is reached through the proxy");
    let term_before = cluster.admin(1)?.status().await?.group(0).context("lobby")?.term;
    // Node 1 leads the lobby; both its links cut, both ways, while every process runs.
    for other in [2, 3] {
        links.set_both(1, other, Rule::Drop);
    }
    let successor = agreed_leader(&cluster, &[2, 3], 0, Duration::from_secs(10)).await?;
    ensure!(successor != 1, "the lobby is led by {successor}");
    // The majority still commits: a config row in every group, through node 2.
    short_pks(&cluster.admin(2)?, 4_000).await?;
    let [cut_off, majority] = [1, 2].map(|id| cluster.admin(id));
    let (cut_off, majority) = (cut_off?.status().await?, majority?.status().await?);
    let applied = |status: &pkd_cluster::api::NodeStatus| status.group(0).and_then(|group| group.applied);
    ensure!(applied(&cut_off) < applied(&majority), "node 1 applied nothing new: {cut_off:?} {majority:?}");
    links.heal();
    ensure!(links.faulty().is_empty());
    let all = converged(&cluster, &[1, 2, 3], Duration::from_secs(20)).await?;
    ensure!(all[0].group(0).context("lobby")?.term > term_before, "{all:#?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_does_not_lead_in_its_old_term() -> anyhow::Result<()> {
    let mut cluster = start_cluster().await?;
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
    let mut cluster = start_cluster().await?;
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
    let mut cluster = start_cluster().await?;
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
    // Node 1 still runs, but the others close its connections and refuse it: a removed
    // node is not dialled or heard any more.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = statuses(&cluster, &remaining).await?;
        if all.iter().all(|status| !status.connected.contains(&1)) {
            ensure!(all.iter().all(|status| status.connected.len() == 2), "{all:?}");
            break;
        }
        ensure!(Instant::now() < deadline, "node 1 is still connected: {all:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::task::block_in_place(|| cluster.kill(1))?;
    ends_once(&mut pk.source, pk.id, pk.end_time).await?;
    converged(&cluster, &remaining, Duration::from_secs(10)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_started_to_join_form_a_cluster_through_admin_init() -> anyhow::Result<()> {
    let cluster = start_cluster_with(LocalOptions { join: true, ..cluster_options() })?;
    let before = cluster.admin(2)?.status().await?;
    ensure!(before.groups.iter().all(|group| group.voters.is_empty() && group.leader.is_none()), "{before:?}");
    let members = cluster.members();
    let initialized = cluster.admin(2)?.init(&pkd_cluster::api::InitRequest { members }).await?;
    ensure!(initialized.groups == vec![0, 1, 2], "{initialized:?}");
    // Leadership spreads over the nodes as in a cluster started with its peers: the lobby
    // on node 1, arena 1 on node 2, arena 2 on node 3.
    for group in 0..=2 {
        agreed_leader(&cluster, &[1, 2, 3], group, Duration::from_secs(10)).await?;
        settled_leader(&cluster, group).await?;
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
    let cluster = start_cluster().await?;
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
    let (_, started) = source.push(13).await?;
    ensure!(started["content"]["msg"] == a, "{started}");
    let matched = target.matching(b, b).await?;
    ensure!(matched["code"] == "902004", "{matched}");
    // The first state reaches the viewer on node 3 and the anchors on nodes 1 and 2.
    let (_, first) = viewer.push(10).await?;
    let pk = first["content"]["pkId"].as_u64().context("pkId")?;
    let end_time = first["content"]["endTime"].as_i64().context("endTime")?;
    ensure!(first["content"]["sourceUser"] == a && first["content"]["targetUser"] == b, "{first}");
    source.push(10).await?;
    target.push(10).await?;
    // A gift through node 2 shows on node 3.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let counted = gift(&cluster, 2, 88_001, a, 9_901, 700).await?;
    ensure!(counted["code"] == "000000", "{counted}");
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, push) = viewer.push(10).await?;
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

/// Anchor `anchor`'s settled history as node `node` answers it (`GET /api/anchors/{id}/pks`
/// with a login token).
async fn history_on(cluster: &pkd_cluster::LocalCluster, node: u64, anchor: u64) -> anyhow::Result<serde_json::Value> {
    let reader = AdminClient::new(cluster.node(node)?.client_addr.to_string(), format!("dev:{}", 40_000 + node));
    Ok(reader.call::<serde_json::Value>("GET", &format!("/api/anchors/{anchor}/pks"), None::<&()>).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_answers_the_same_complete_history_on_the_embedded_store() -> anyhow::Result<()> {
    // The defaults: each node's own SQLite file, written from its own replica.
    let mut cluster = start_cluster().await?;
    short_pks(&cluster.admin(1)?, 2_500).await?;
    let mut pks = Vec::new();
    for (index, first) in [(0u64, 25_001u64), (1, 25_003), (2, 25_005), (3, 25_007)] {
        pks.push((start_pk(&cluster, 1 + index % 3, first).await?, first));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut id = 50_000;
    for (_, first) in &pks {
        for beans in [10, 20, 30] {
            id += 1;
            ensure!(gift(&cluster, 1 + id % 3, id, *first, 77, beans).await?["code"] == "000000");
        }
        id += 1;
        ensure!(gift(&cluster, 1 + id % 3, id, first + 1, 78, 5).await?["code"] == "000000");
    }
    // The leader of one arena dies while its PKs settle, and comes back later.
    let victim = agreed_leader(&cluster, &[1, 2, 3], arena_of(pks[0].0.id), WAIT).await?;
    cluster.kill(victim)?;
    let last_end = pks.iter().map(|(pk, _)| pk.end_time).max().context("PKs")?;
    tokio::time::sleep(Duration::from_millis(u64::try_from(last_end - now_ms()).unwrap_or(0) + 1_000)).await;
    tokio::task::block_in_place(|| cluster.restart(victim))?;

    // Every node answers every anchor's history, the same and complete.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut answers = Vec::new();
        for node in [1, 2, 3] {
            let mut per_node = Vec::new();
            for (_, first) in &pks {
                per_node.push(history_on(&cluster, node, *first).await.ok());
            }
            answers.push(per_node);
        }
        // Each anchor: one PK, settled (status 2), won with 60 beans against 5.
        let settled = |per_node: &Vec<Option<serde_json::Value>>| {
            per_node.iter().zip(&pks).all(|(answer, (pk, first))| {
                let Some(records) = answer.as_ref().and_then(|answer| answer["records"].as_array()) else {
                    return false;
                };
                records.len() == 1
                    && records[0]["pkId"] == pk.id
                    && records[0]["status"] == 2
                    && records[0]["gifts"] == 60
                    && records[0]["competitorGifts"] == 5
                    && records[0]["winner"] == *first
            })
        };
        if answers.iter().all(settled) && answers.windows(2).all(|pair| pair[0] == pair[1]) {
            break;
        }
        ensure!(Instant::now() < deadline, "the nodes answer differently or incompletely: {answers:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let anchors: Vec<u64> = pks.iter().map(|(_, first)| *first).collect();
    let reference = histories(&cluster, 1, &anchors).await;

    // A fourth node joins on an empty data directory, long after those PKs settled: it
    // copies them from a member's store and answers the same history.
    let four = tokio::task::block_in_place(|| cluster.add_node(4).map(|node| node.cluster_addr))?;
    let admin = cluster.admin(1)?;
    admin.add_learner(4, four.to_string()).await?;
    admin.promote(4).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while histories(&cluster, 4, &anchors).await != reference {
        ensure!(
            Instant::now() < deadline,
            "node 4 answers {:?}, not {reference:?}",
            histories(&cluster, 4, &anchors).await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The mark follows the last page copied.
    let mark = loop {
        if let Some(mark) = store_mark(&cluster, 4).await? {
            break mark;
        }
        ensure!(Instant::now() < deadline, "node 4's store is not marked complete");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ensure!(mark.starts_with("copied from node "), "{mark}");
    for node in [1, 2, 3] {
        ensure!(store_mark(&cluster, node).await?.as_deref() == Some("a founding member"));
    }

    // Stores from before the mark (an upgraded cluster): no member is complete, so each
    // node copies the union of the others' and marks its own; the history stands.
    // The marks go while the nodes run (a node reads its mark once, at start), and each
    // node restarts at once after its kill: a cluster port left free for long may be
    // taken by another process's listener.
    for node in [1, 2, 3, 4] {
        let store = node_store(&cluster, node).await?;
        sqlx::query("DELETE FROM pkd_store_marks").execute(store.pool()).await?;
        store.close().await;
    }
    for node in [1, 2, 3, 4] {
        tokio::task::block_in_place(|| cluster.restart(node))?;
    }
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut marks = Vec::new();
    loop {
        marks.clear();
        for node in [1, 2, 3, 4] {
            marks.push(store_mark(&cluster, node).await?);
        }
        if marks.iter().all(Option::is_some) {
            break;
        }
        ensure!(Instant::now() < deadline, "not every store marked complete again: {marks:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ensure!(marks.iter().flatten().any(|mark| mark.ends_with("none complete")), "{marks:?}");
    for node in [1, 2, 3, 4] {
        ensure!(histories(&cluster, node, &anchors).await == reference, "node {node} after the restart");
    }
    Ok(())
}

/// Node `node`'s answers to the history of each of `anchors` (`None`: no answer).
async fn histories(cluster: &pkd_cluster::LocalCluster, node: u64, anchors: &[u64]) -> Vec<Option<serde_json::Value>> {
    let mut answers = Vec::new();
    for &anchor in anchors {
        answers.push(history_on(cluster, node, anchor).await.ok().map(|answer| answer["records"].clone()));
    }
    answers
}

/// Node `node`'s own results store (SQLite), opened beside it.
async fn node_store(cluster: &pkd_cluster::LocalCluster, node: u64) -> anyhow::Result<pkd::sinks::ResultsStore> {
    let path = cluster.node(node)?.data_dir.join("results.sqlite");
    Ok(pkd::sinks::ResultsStore::connect(&format!("sqlite://{}?mode=rw", path.display())).await?)
}

/// The `complete` mark of node `node`'s own results store.
async fn store_mark(cluster: &pkd_cluster::LocalCluster, node: u64) -> anyhow::Result<Option<String>> {
    let store = node_store(cluster, node).await?;
    let mark = store.mark("complete").await?;
    store.close().await;
    Ok(mark)
}

/// Node `node`'s `/readyz`: the status and the body.
async fn readiness(cluster: &pkd_cluster::LocalCluster, node: u64) -> anyhow::Result<(u16, String)> {
    crate::common::http(cluster.node(node)?.client_addr, "GET", "/readyz", None, "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_ready_only_while_it_reaches_every_group_leader() -> anyhow::Result<()> {
    let mut cluster = start_cluster().await?;
    for node in [1, 2, 3] {
        let (status, body) = readiness(&cluster, node).await?;
        ensure!(status == 200, "node {node}: {status} {body}");
    }
    // Alone, node 1 can reach no majority: not ready, and it says why; alive all the same.
    cluster.kill(2)?;
    cluster.kill(3)?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, body) = readiness(&cluster, 1).await?;
        if status == 503 {
            ensure!(body.contains("leader"), "no reason given: {body}");
            break;
        }
        ensure!(Instant::now() < deadline, "node 1 stays ready without a quorum: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Back with its peers, it is ready again.
    tokio::task::block_in_place(|| -> anyhow::Result<()> {
        cluster.restart(2)?;
        cluster.restart(3)?;
        Ok(())
    })?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while readiness(&cluster, 1).await?.0 != 200 {
        ensure!(Instant::now() < deadline, "node 1 never ready again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
