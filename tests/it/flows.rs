//! The client flows of docs/protocol.md §7 end to end: three real `pkd serve` processes,
//! real WebSocket clients with signed login tokens, each flow's clients spread over
//! different nodes, so every push a client gets was rendered by its own node from its
//! own replica.
//!
//! The matchmaking flows run at the same time on one cluster. The lobby is shared, so
//! each flow's anchors come from a country of their own that `pk_filter_country` keeps
//! apart from every other: no flow can match or invite another flow's anchors. Flows
//! that change config for everyone (`pk_enable`, `version_control`) run after them, and
//! the killed leader has a cluster of its own.

use std::time::{Duration, Instant};

use crate::common::{
    Client, FAILOVER_BOUND, Profile, WAIT, agreed_leader, arena_of, converged, ends_once, gift, now_ms, post_gift,
    set_config, settled_leader, short_pks, start_cluster,
};
use anyhow::{Context, ensure};
use pkd_cluster::LocalCluster;
use serde_json::{Value, json};

/// `pk_config` for the matchmaking flows: invitations after 2 s, a batch lapses after 2 s,
/// give up after 14 s, four invitations per batch, and an invitee may be invited again
/// after 1.5 s (so every batch of a long wait reaches the same invitee).
const MATCHING: &str = "{'interveningTime':2000,'endTime':14000,'inviteNum':4,'inviteColdDown':1500}";
const INTERVENING_MS: i64 = 2_000;
const GIVE_UP_MS: i64 = 14_000;
/// The PKs of the matchmaking run: a 1.5 s opening, then a 22 s battle.
const OPENING_MS: i64 = 1_500;
const BATTLE_MS: i64 = 22_000;

/// One country per flow; with "IN", "PK" and "US" for the country filter's own flow.
const ISLANDS: [&str; 10] = ["XA", "XB", "XC", "XD", "XE", "XF", "XG", "XH", "XI", "XJ"];

/// Every island refuses every other country; "IN" refuses "PK" (listed one way only:
/// the filter applies both ways), and both may meet "US".
fn country_filter() -> String {
    let mut rows = Vec::new();
    for (index, island) in ISLANDS.iter().enumerate() {
        let others: Vec<String> =
            ISLANDS[index + 1..].iter().chain(&["IN", "PK", "US"]).map(|country| format!("'{country}'")).collect();
        rows.push(format!("'{island}':[{}]", others.join(",")));
    }
    rows.push("'IN':['PK']".to_owned());
    format!("{{{}}}", rows.join(","))
}

/// An anchor of `country` on a current Android client.
const fn anchor_of(country: &'static str) -> Profile {
    Profile::new(country, "android", 300)
}

/// Node 1, 2, 3, 1, ... for the `index`-th client of a flow.
fn node_for(index: usize) -> u64 {
    (index % 3) as u64 + 1
}

/// Connects `user` to `node` and enters its own room as its anchor (it is live).
async fn live_anchor(cluster: &LocalCluster, node: u64, user: u64, profile: Profile) -> anyhow::Result<Client> {
    let mut client = Client::connect_as(cluster, node, user, profile).await?;
    let entered = client.enter(user, true).await?;
    ensure!(entered["code"] == "000000" && entered["result"].is_null(), "{entered}");
    Ok(client)
}

/// Checks a push's envelope: from the system, of `push_type`, about `room`, to one user
/// (`mode` "u") or to the room ("m").
fn envelope(push: &Value, push_type: i64, room: u64, mode: &str) -> anyhow::Result<()> {
    ensure!(
        push["msgType"] == "pub"
            && push["type"] == push_type
            && push["roomId"] == room
            && push["mode"] == mode
            && push["fromUser"] == -1
            && push["toUser"] == -1
            && push["destination"].is_null()
            && push["costTime"] == json!([])
            && push["version"].is_i64(),
        "expected a push {push_type} to room {room} in mode {mode}: {push}"
    );
    Ok(())
}

fn version_of(push: &Value) -> anyhow::Result<i64> {
    push["version"].as_i64().with_context(|| format!("no version in {push}"))
}

/// Push 13 to `anchor`: it is matching.
async fn matching_started(client: &mut Client) -> anyhow::Result<Value> {
    let anchor = client.user;
    let (_, push) = client.push(13).await?;
    envelope(&push, 13, anchor, "u")?;
    ensure!(push["content"] == json!({"msg": anchor}), "{push}");
    Ok(push)
}

/// Push 12 to `client` from `inviter` (earlier invitations from others are skipped).
async fn invitation(client: &mut Client, inviter: u64, limit: Duration) -> anyhow::Result<Value> {
    let (_, push) = client
        .wait_for(limit, |push| push["type"] == 12 && push["content"]["source"] == inviter)
        .await
        .with_context(|| format!("user {} got no invitation from {inviter}", client.user))?;
    envelope(&push, 12, client.user, "u")?;
    ensure!(push["content"] == json!({"source": inviter}), "{push}");
    Ok(push)
}

/// The first state push (status 0) of a new PK between `source` and `target`, as it
/// reaches `client`, in `room`. Returns the content.
async fn first_state(client: &mut Client, room: u64, source: u64, target: u64) -> anyhow::Result<Value> {
    let (_, push) = client
        .wait_for(WAIT, |push| {
            push["type"] == 10 && push["content"]["sourceUser"] == source && push["content"]["targetUser"] == target
        })
        .await
        .with_context(|| format!("user {} got no PK of {source} and {target}", client.user))?;
    envelope(&push, 10, room, "m")?;
    let content = &push["content"];
    ensure!(content["status"] == 0 && content["type"] == 1 && content["sequelType"] == 0, "{push}");
    ensure!(content["sourceRoom"] == source && content["targetRoom"] == target, "{push}");
    ensure!(content["sourceGifts"] == 0 && content["targetGifts"] == 0, "{push}");
    ensure!(content.get("winner").is_none(), "no winner while it runs: {push}");
    Ok(content.clone())
}

// ---- the matchmaking flows -------------------------------------------------------------

/// §7 "Start, with nobody suitable waiting" and "Start, matched at once": A on node 1
/// waits (reply 000000, push 13); B on node 2 matches at once (902004, no 13); both rooms
/// and a viewer on node 3 get push 10 with status 0, A the source.
async fn queued_then_matched_at_once(cluster: &LocalCluster) -> anyhow::Result<()> {
    let (a, b, viewer) = (10_001, 10_002, 10_101);
    let mut source = live_anchor(cluster, 1, a, anchor_of("XA")).await?;
    let mut target = live_anchor(cluster, 2, b, anchor_of("XA")).await?;
    let mut watcher = Client::connect_as(cluster, 3, viewer, anchor_of("XA")).await?;
    ensure!(watcher.enter(a, false).await?["result"].is_null(), "room {a} is in no PK yet");
    let queued = source.matching(a, a).await?;
    ensure!(queued["code"] == "000000" && queued["desc"] == "Success!" && queued["result"].is_null(), "{queued}");
    ensure!(queued["fromUser"] == a && queued["toUser"] == a && queued["roomId"] == a, "{queued}");
    matching_started(&mut source).await?;
    ensure!(source.start().await? == "902005", "already matching");
    let matched = target.matching(b, b).await?;
    ensure!(matched["code"] == "902004" && matched["result"].is_null(), "{matched}");
    // B's pushes up to its PK's first state hold no push 13.
    let seen = target.pushes_until(WAIT, |push| push["type"] == 10).await?;
    ensure!(seen.iter().all(|push| push["type"] != 13), "a matched anchor gets no 13: {seen:?}");
    let state = seen.last().context("a state push")?;
    envelope(state, 10, b, "m")?;
    let content = first_state(&mut source, a, a, b).await?;
    ensure!(state["content"]["pkId"] == content["pkId"], "{state} vs {content}");
    let seen_by_viewer = first_state(&mut watcher, a, a, b).await?;
    ensure!(seen_by_viewer["pkId"] == content["pkId"], "{seen_by_viewer}");
    let start = content["startTime"].as_i64().context("startTime")?;
    ensure!(content["endTime"] == start + OPENING_MS + BATTLE_MS, "{content}");
    Ok(())
}

/// §7 "Intervention": after `interveningTime` the waiting A (node 1) invites the live
/// anchors (push 12 on nodes 2 and 3), stays in the queue and is then matched passively
/// by C (node 3); the open invitations are taken (902003).
async fn intervention_after_the_intervening_time(cluster: &LocalCluster) -> anyhow::Result<()> {
    let (a, b1, b2, c) = (20_001, 20_002, 20_003, 20_004);
    let mut invitees =
        vec![live_anchor(cluster, 2, b1, anchor_of("XB")).await?, live_anchor(cluster, 3, b2, anchor_of("XB")).await?];
    let mut inviter = live_anchor(cluster, 1, a, anchor_of("XB")).await?;
    let started = now_ms();
    ensure!(inviter.start().await? == "000000");
    matching_started(&mut inviter).await?;
    for invitee in &mut invitees {
        let push = invitation(invitee, a, WAIT).await?;
        let at = version_of(&push)?;
        ensure!(at >= started + INTERVENING_MS, "invited {} ms after the start", at - started);
    }
    // A is still waiting: C, going live only now, meets it at once.
    let mut late = live_anchor(cluster, 3, c, anchor_of("XB")).await?;
    ensure!(late.start().await? == "902004");
    first_state(&mut inviter, a, a, c).await?;
    first_state(&mut late, c, a, c).await?;
    ensure!(invitees[0].answer(2, a).await? == "902003", "A met C");
    ensure!(invitees[1].answer(3, a).await? == "902003", "A met C");
    ensure!(invitees[0].answer(2, c).await? == "902007", "C never invited anyone");
    Ok(())
}

/// §7 "Accept, and the accept race": four invitees on nodes 2 and 3 accept A's
/// invitation at the same time: exactly one gets 902004, the others 902003, and the PK
/// is A against the winner.
async fn accept_race_among_many_invitees(cluster: &LocalCluster) -> anyhow::Result<()> {
    let a = 30_001;
    let mut invitees = Vec::new();
    for (index, user) in (30_002..=30_005).enumerate() {
        invitees.push(live_anchor(cluster, 2 + index as u64 % 2, user, anchor_of("XC")).await?);
    }
    let mut inviter = live_anchor(cluster, 1, a, anchor_of("XC")).await?;
    ensure!(inviter.start().await? == "000000");
    for invitee in &mut invitees {
        invitation(invitee, a, WAIT).await?;
    }
    let answers = futures_util::future::join_all(invitees.iter_mut().map(|invitee| invitee.answer(2, a))).await;
    let codes = answers.into_iter().collect::<anyhow::Result<Vec<String>>>()?;
    let winners: Vec<usize> = (0..codes.len()).filter(|&index| codes[index] == "902004").collect();
    ensure!(winners.len() == 1, "exactly one accept wins: {codes:?}");
    ensure!(codes.iter().filter(|code| *code == "902003").count() == 3, "the others are taken: {codes:?}");
    let winner = &mut invitees[winners[0]];
    let w = winner.user;
    let content = first_state(winner, w, a, w).await?;
    ensure!(first_state(&mut inviter, a, a, w).await?["pkId"] == content["pkId"]);
    for (index, loser) in invitees.iter_mut().enumerate() {
        if index != winners[0] {
            ensure!(loser.answer(2, a).await? == "902003", "still taken");
        }
    }
    Ok(())
}

/// §7 "Refuse": the whole first batch (four of six live anchors) refuses; the next batch
/// goes to the other two at once, not when the first would have lapsed.
async fn refusals_bring_the_next_batch_at_once(cluster: &LocalCluster) -> anyhow::Result<()> {
    let a = 40_001;
    let mut invitees = Vec::new();
    // Live in this order: the longest live are invited first.
    for (index, user) in (40_002..=40_007).enumerate() {
        invitees.push(live_anchor(cluster, [1, 3][index % 2], user, anchor_of("XD")).await?);
    }
    let mut inviter = live_anchor(cluster, 2, a, anchor_of("XD")).await?;
    ensure!(inviter.start().await? == "000000");
    let mut first_batch = Vec::new();
    for invitee in &mut invitees[..4] {
        first_batch.push(version_of(&invitation(invitee, a, WAIT).await?)?);
    }
    let first_at = first_batch.into_iter().max().context("a batch")?;
    let mut refused_at = 0;
    for invitee in &mut invitees[..4] {
        refused_at = now_ms();
        ensure!(invitee.answer(3, a).await? == "000000", "a refusal");
    }
    for invitee in &mut invitees[4..] {
        let at = version_of(&invitation(invitee, a, WAIT).await?)?;
        ensure!(at >= refused_at, "invited at {at}, before the last refusal at {refused_at}");
        ensure!(at < first_at + INTERVENING_MS, "the second batch came when the first lapsed, not at once");
    }
    ensure!(invitees[4].answer(2, a).await? == "902004");
    let target = invitees[4].user;
    first_state(&mut inviter, a, a, target).await?;
    ensure!(invitees[5].answer(3, a).await? == "902003", "A met someone");
    ensure!(invitees[0].answer(3, a).await? == "902011", "answered already");
    Ok(())
}

/// §7 "Give up": A (node 3) waits `endTime`; every batch re-invites G (node 1) once its
/// cool-down is over; then A gets push 14 "timeout", and G's open invitation is
/// withdrawn (902008).
async fn giving_up_withdraws_the_invitations(cluster: &LocalCluster) -> anyhow::Result<()> {
    let (a, g) = (50_001, 50_002);
    let mut invitee = live_anchor(cluster, 1, g, anchor_of("XE")).await?;
    let mut inviter = live_anchor(cluster, 3, a, anchor_of("XE")).await?;
    let started = now_ms();
    ensure!(inviter.start().await? == "000000");
    matching_started(&mut inviter).await?;
    let (_, failed) = inviter
        .wait_for(Duration::from_millis(GIVE_UP_MS as u64) + WAIT, |push| push["type"] == 14)
        .await
        .context("no push 14")?;
    envelope(&failed, 14, a, "u")?;
    ensure!(failed["content"] == json!({"source": a, "reason": "timeout"}), "{failed}");
    ensure!(version_of(&failed)? >= started + GIVE_UP_MS, "gave up too early: {failed}");
    // A batch every interveningTime before endTime: at 2, 4, ..., 12 s.
    let invitations = invitee.pushes_within(Duration::from_millis(300)).await;
    let invitations: Vec<&Value> = invitations.iter().filter(|push| push["type"] == 12).collect();
    let batches = (GIVE_UP_MS - 1) / INTERVENING_MS;
    ensure!(invitations.len() as i64 == batches, "{} invitations, not {batches}: {invitations:?}", invitations.len());
    ensure!(invitations.iter().all(|push| push["content"]["source"] == a), "{invitations:?}");
    ensure!(invitee.answer(2, a).await? == "902008", "A gave up");
    ensure!(inviter.stop().await? == "902006", "A is not matching");
    Ok(())
}

/// §7 "Stop": A (node 1) stops after inviting S (node 2): 000000, S's accept gets 902008,
/// a second stop 902006, and no push 14.
async fn stopping_withdraws_the_invitations(cluster: &LocalCluster) -> anyhow::Result<()> {
    let (a, s) = (60_001, 60_002);
    let mut invitee = live_anchor(cluster, 2, s, anchor_of("XF")).await?;
    let mut inviter = live_anchor(cluster, 1, a, anchor_of("XF")).await?;
    ensure!(inviter.start().await? == "000000");
    invitation(&mut invitee, a, WAIT).await?;
    ensure!(inviter.stop().await? == "000000");
    ensure!(invitee.answer(2, a).await? == "902008", "A stopped");
    ensure!(inviter.stop().await? == "902006", "A is not matching");
    let later = inviter.pushes_within(Duration::from_millis(500)).await;
    ensure!(later.iter().all(|push| push["type"] != 14), "a stop sends no push: {later:?}");
    Ok(())
}

/// §7 "Start, matched at once" with `pk_filter_country`: an IN and a PK anchor never meet,
/// whichever waits (the row lists IN -> PK only), both meet US anchors, and a waiting IN
/// anchor invites live US anchors but never live PK ones.
async fn the_country_filter_applies_both_ways(cluster: &LocalCluster) -> anyhow::Result<()> {
    let (in1, pk1, us1, in2, us2, us_live, pk_live) = (70_001, 70_002, 70_003, 70_004, 70_005, 70_006, 70_007);
    let mut india = live_anchor(cluster, 1, in1, anchor_of("IN")).await?;
    let mut pakistan = live_anchor(cluster, 2, pk1, anchor_of("PK")).await?;
    let mut america = live_anchor(cluster, 3, us1, anchor_of("US")).await?;
    ensure!(india.start().await? == "000000");
    ensure!(pakistan.start().await? == "000000", "PK does not meet the waiting IN");
    ensure!(america.start().await? == "902004", "US meets the longest waiter it may meet");
    first_state(&mut america, us1, in1, us1).await?;
    // The other way round: PK waits, IN comes.
    let mut india_late = live_anchor(cluster, 3, in2, anchor_of("IN")).await?;
    let mut listener = live_anchor(cluster, 1, us_live, anchor_of("US")).await?;
    let mut stranger = live_anchor(cluster, 2, pk_live, anchor_of("PK")).await?;
    ensure!(india_late.start().await? == "000000", "IN does not meet the waiting PK");
    let mut america_late = live_anchor(cluster, 1, us2, anchor_of("US")).await?;
    ensure!(america_late.start().await? == "902004");
    first_state(&mut pakistan, pk1, pk1, us2).await?;
    // The waiting IN anchor invites the live US anchor, not the live PK one.
    invitation(&mut listener, in2, WAIT).await?;
    ensure!(listener.answer(2, in2).await? == "902004");
    first_state(&mut india_late, in2, in2, us_live).await?;
    let seen = stranger.pushes_within(Duration::from_millis(500)).await;
    ensure!(seen.iter().all(|push| push["type"] != 12 || push["content"]["source"] != in2), "{seen:?}");
    Ok(())
}

/// §7 "Start" refused for an old client: Android below `version_control`'s 207 gets
/// 902002; 207 itself may match, and iOS is not gated.
async fn old_client_versions_cannot_match(cluster: &LocalCluster) -> anyhow::Result<()> {
    let (old, current, apple) = (75_001, 75_002, 75_003);
    let mut too_old = live_anchor(cluster, 2, old, Profile::new("XG", "android", 206)).await?;
    let mut just_new = live_anchor(cluster, 3, current, Profile::new("XG", "android", 207)).await?;
    let mut ios = live_anchor(cluster, 1, apple, Profile::new("XG", "ios", 1)).await?;
    let refused = too_old.matching(old, old).await?;
    ensure!(refused["code"] == "902002" && refused["desc"] != "Success!", "{refused}");
    ensure!(just_new.start().await? == "000000");
    ensure!(ios.start().await? == "902004", "the old client is not waiting; iOS is not gated");
    first_state(&mut ios, apple, current, apple).await?;
    Ok(())
}

/// §7 "Reconnecting, maybe to another node" for a matching anchor: A starts on node 1,
/// reconnects to node 2 and re-enters its room: push 13 again, and its matching goes on
/// (with `past_off_air_grace`, also once node 1's off-air grace of 10 s has passed); B
/// (node 3) then meets it.
async fn a_matching_anchor_reconnects_on_another_node(
    cluster: &LocalCluster,
    past_off_air_grace: bool,
) -> anyhow::Result<()> {
    let (a, b) = (85_001, 85_002);
    let mut first = live_anchor(cluster, 1, a, anchor_of("XI")).await?;
    ensure!(first.start().await? == "000000");
    matching_started(&mut first).await?;
    drop(first);
    let left = Instant::now();
    let mut again = live_anchor(cluster, 2, a, anchor_of("XI")).await?;
    matching_started(&mut again).await.context("re-entering a matching room gives push 13")?;
    if past_off_air_grace {
        tokio::time::sleep(Duration::from_secs(11).saturating_sub(left.elapsed())).await;
    }
    let mut other = live_anchor(cluster, 3, b, anchor_of("XI")).await?;
    ensure!(other.start().await? == "902004", "A is still matching after it moved to node 2");
    first_state(&mut again, a, a, b).await?;
    Ok(())
}

// ---- a whole PK ----------------------------------------------------------------------

/// One gift of the storm.
struct Gift {
    id: u64,
    receiver: u64,
    sender: u64,
    beans: i64,
}

/// Sends a gift with a profile through `node`'s gift API; returns the engine's reply, and
/// whether it took a retry.
async fn send_gift(cluster: &LocalCluster, node: u64, gift: &Gift) -> anyhow::Result<(Value, bool)> {
    let body = json!({"id": gift.id, "receiver": gift.receiver, "sender": gift.sender, "beans": gift.beans,
                      "senderProfile": {"nickname": format!("fan{}", gift.sender), "level": 7}});
    post_gift(cluster, node, &body).await
}

/// The top gifter of a side: (sender, beans), highest first (ties: who got there first).
fn top_gifter(gifts: &[Gift], receiver: u64) -> (u64, i64) {
    let mut totals: Vec<(u64, i64, usize)> = Vec::new();
    for (index, gift) in gifts.iter().enumerate().filter(|(_, gift)| gift.receiver == receiver) {
        match totals.iter_mut().find(|(sender, _, _)| *sender == gift.sender) {
            Some(total) => {
                total.1 += gift.beans;
                total.2 = index;
            }
            None => totals.push((gift.sender, gift.beans, index)),
        }
    }
    totals.sort_by_key(|(sender, beans, reached)| (-beans, *reached, *sender));
    (totals[0].0, totals[0].1)
}

/// "A PK's life" and "Room entry" and "Reconnecting": anchors on nodes 1 and 2, viewers on
/// nodes 3 and 2; gifts through every node's gift API. Checks the first state, busy
/// anchors (905033), gifts only in the battle (905041), the coalesced pushes of a gift
/// storm (at most one per second, besides the periodic one), the 5 s cadence of a quiet
/// PK on two nodes, a viewer and an anchor reconnecting on other nodes mid-PK, and the
/// end: status 2, the winner, the totals and top gifters, rooms released.
async fn a_whole_pk_with_gifts_pushes_and_reconnects(cluster: &LocalCluster) -> anyhow::Result<()> {
    let (a, b, va, vb) = (80_001, 80_002, 80_101, 80_102);
    let profile = anchor_of("XH");
    let mut source = live_anchor(cluster, 1, a, profile).await?;
    let mut target = live_anchor(cluster, 2, b, profile).await?;
    let mut viewer_a = Client::connect_as(cluster, 3, va, profile).await?;
    let mut viewer_b = Client::connect_as(cluster, 2, vb, profile).await?;
    viewer_a.enter(a, false).await?;
    viewer_b.enter(b, false).await?;
    ensure!(source.start().await? == "000000");
    ensure!(target.start().await? == "902004");
    let first = first_state(&mut viewer_a, a, a, b).await?;
    let pk = first["pkId"].as_u64().context("pkId")?;
    for (client, room) in [(&mut source, a), (&mut target, b), (&mut viewer_b, b)] {
        ensure!(first_state(client, room, a, b).await?["pkId"] == pk);
    }
    let start_time = first["startTime"].as_i64().context("startTime")?;
    let end_time = first["endTime"].as_i64().context("endTime")?;
    ensure!(end_time == start_time + OPENING_MS + BATTLE_MS, "{first}");

    // Busy anchors; gifts during the opening do not count.
    ensure!(source.start().await? == "905033" && target.start().await? == "905033", "in a PK");
    let (early, _) = send_gift(cluster, 3, &Gift { id: 1, receiver: a, sender: 600_001, beans: 50 }).await?;
    ensure!(early["code"] == "905041" && early["result"].is_null(), "{early}");

    // A gift storm in the battle: 30 gifts, 100 ms apart, through nodes 1, 2 and 3.
    let battle = start_time + OPENING_MS + 200;
    tokio::time::sleep(Duration::from_millis(u64::try_from(battle - now_ms()).unwrap_or(0))).await;
    let gifts: Vec<Gift> = (0..30)
        .map(|i| Gift {
            id: 1_000 + i,
            receiver: if i % 3 == 2 { b } else { a },
            sender: 600_100 + i % 4,
            beans: 10 + i as i64,
        })
        .collect();
    let total = |receiver: u64| gifts.iter().filter(|gift| gift.receiver == receiver).map(|gift| gift.beans).sum();
    let (total_a, total_b): (i64, i64) = (total(a), total(b));
    let storm_start = now_ms();
    let mut pace = tokio::time::interval(Duration::from_millis(100));
    for (index, gift) in gifts.iter().enumerate() {
        pace.tick().await;
        let (reply, retried) = send_gift(cluster, node_for(index), gift).await?;
        ensure!(reply["code"] == "000000" && (reply["result"]["duplicate"] == false || retried), "{reply}");
        ensure!(reply["result"]["pkId"] == pk, "{reply}");
    }
    let storm_end = now_ms();
    let (again, _) = send_gift(cluster, 2, &gifts[0]).await?;
    ensure!(again["result"]["duplicate"] == true && again["result"]["sideBeans"] == total_a, "counted once: {again}");

    // Coalescing: after a change at most one push per second, and the periodic push
    // every 5 s besides; the last one holds every gift.
    let settle = Duration::from_millis(u64::try_from(storm_end + 1_500 - now_ms()).unwrap_or(0));
    let mut storm = viewer_a.states_within(pk, settle).await;
    storm.retain(|state| state["version"].as_i64().is_some_and(|at| at >= storm_start));
    let window_ms = now_ms() - storm_start;
    let periodic = window_ms / 5_000 + 1;
    let times = storm.iter().map(version_of).collect::<anyhow::Result<Vec<i64>>>()?;
    let close = times.windows(2).filter(|pair| pair[1] - pair[0] < 900).count() as i64;
    eprintln!("gift storm: {} pushes in {window_ms} ms, at {times:?}", storm.len());
    ensure!(storm.len() >= 3, "changes are pushed as they come, coalesced: {} pushes", storm.len());
    ensure!(close <= periodic, "more than one push a second: {times:?}");
    ensure!(storm.len() as i64 <= window_ms / 1_000 + 1 + periodic, "too many pushes: {times:?}");
    let mut previous = 0;
    for state in &storm {
        let sum = state["content"]["sourceGifts"].as_i64().context("sourceGifts")?;
        ensure!(sum >= previous && state["content"]["status"] == 1, "{state}");
        previous = sum;
    }
    let last = &storm.last().context("a push")?["content"];
    ensure!(last["sourceGifts"] == total_a && last["targetGifts"] == total_b, "{last}");
    let (top, top_beans) = top_gifter(&gifts, a);
    let entry = &last["sourceTopGifts"][0];
    ensure!(entry["consume"] == top_beans && entry["user"]["id"] == top, "{last}");
    ensure!(entry["user"]["nickname"] == format!("fan{top}") && entry["user"]["level"] == 7, "{last}");
    ensure!(last["sourceTopGifts"].as_array().map(Vec::len) == Some(3), "three top gifters: {last}");

    // A quiet PK: every 5 s, from node 3's and node 2's own replicas.
    let (quiet, quiet_start) = (Duration::from_millis(11_000), now_ms());
    let (mut quiet_a, mut quiet_b) = tokio::join!(viewer_a.states_within(pk, quiet), viewer_b.states_within(pk, quiet));
    for (node, states) in [(3, &mut quiet_a), (2, &mut quiet_b)] {
        // (Node 2's viewer has not read the storm's pushes yet.)
        states.retain(|state| state["version"].as_i64().is_some_and(|at| at >= quiet_start));
        let times = states.iter().map(version_of).collect::<anyhow::Result<Vec<i64>>>()?;
        eprintln!("quiet PK on node {node}: pushes at {times:?}");
        ensure!(times.len() >= 2, "node {node}: {times:?}");
        for pair in times.windows(2) {
            let gap = pair[1] - pair[0];
            ensure!((4_000..=6_500).contains(&gap), "node {node}: a {gap} ms gap, not 5 s: {times:?}");
        }
        for state in states.iter() {
            let content = &state["content"];
            ensure!(content["status"] == 1 && content["sourceGifts"] == total_a, "{state}");
            ensure!(content["remainingTime"] == end_time - version_of(state)?, "{state}");
        }
    }

    // A viewer moves from node 2 to node 3 and gets the current state on entering;
    // the target anchor moves from node 2 to node 1 and stays online.
    drop(viewer_b);
    let mut viewer_b = Client::connect_as(cluster, 3, vb, profile).await?;
    let asked = now_ms();
    let entered = viewer_b.enter(b, false).await?;
    let state = &entered["result"];
    ensure!(state["pkId"] == pk && state["status"] == 1 && state["targetUser"] == b, "{entered}");
    ensure!(state["sourceGifts"] == total_a && state["targetGifts"] == total_b, "{entered}");
    let remaining = state["remainingTime"].as_i64().context("remainingTime")?;
    ensure!(remaining > 0 && remaining <= end_time - asked, "{entered}");
    drop(target);
    // Away longer than a presence report's interval (1 s), within the grace (5 s): a
    // node that reported the anchor's drop at once would show it offline.
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    let mut target = Client::connect_as(cluster, 1, b, profile).await?;
    let entered = target.enter(b, true).await?;
    ensure!(entered["result"]["pkId"] == pk && entered["result"]["status"] == 1, "{entered}");
    let (_, pushed) = viewer_b.wait_for(WAIT, |push| push["type"] == 10 && push["content"]["pkId"] == pk).await?;
    envelope(&pushed, 10, b, "m")?;
    // Presence rides out the reconnect: no push shows the target offline meanwhile, nor
    // in the two seconds after (a change would be pushed within the 1 s cool-down).
    let after = viewer_b.watch_within(Duration::from_secs(2)).await;
    for push in after.iter().chain([&pushed]).filter(|push| push["type"] == 10 && push["content"]["pkId"] == pk) {
        ensure!(push["content"]["targetOnline"] == true, "the target shown offline while it reconnected: {push}");
    }

    // The end: status 2, the winner, everyone still online.
    let end = ends_once(&mut viewer_a, pk, end_time).await?;
    let limit = Duration::from_millis(u64::try_from(end_time - now_ms()).unwrap_or(0)) + FAILOVER_BOUND;
    let mut ends = vec![end];
    for client in [&mut viewer_b, &mut source, &mut target] {
        ends.push(client.state(pk, 2, limit).await?.1);
    }
    for (end, room) in ends.iter().zip([a, b, a, b]) {
        envelope(end, 10, room, "m")?;
        let content = &end["content"];
        ensure!(content["winner"] == a && content["remainingTime"] == 0, "{end}");
        ensure!(content["sourceGifts"] == total_a && content["targetGifts"] == total_b, "{end}");
        ensure!(content["sourceOnline"] == true && content["targetOnline"] == true, "{end}");
        ensure!(content["sourceTopGifts"][0]["user"]["id"] == top, "{end}");
    }
    let (late, _) = send_gift(cluster, 1, &Gift { id: 2_000, receiver: a, sender: 600_001, beans: 5 }).await?;
    ensure!(late["code"] == "905040" || late["code"] == "905041", "{late}");
    // The rooms are released: no state on entry, and the anchors can match again.
    let deadline = Instant::now() + WAIT;
    loop {
        let state = viewer_b.command(42, b, json!({})).await?;
        if state["result"].is_null() {
            break;
        }
        ensure!(Instant::now() < deadline, "room {b} is still in a PK: {state}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        let code = source.start().await?;
        if code == "000000" {
            break;
        }
        ensure!(code == "905033" && Instant::now() < deadline, "{code}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(source.stop().await? == "000000");
    Ok(())
}

/// `pk_enable` and `version_control` apply to every waiting anchor: raising the iOS
/// minimum drops a waiting iOS 5 client (push 14 "version"); switching PK off drops the
/// waiting (push 14 "disabled") and refuses new starts (902001) until it is on again.
async fn switches_drop_waiting_anchors(cluster: &LocalCluster) -> anyhow::Result<()> {
    let admin = cluster.admin(3)?;
    let (old_ios, waiting, late) = (95_001, 95_002, 95_003);
    let mut ios = live_anchor(cluster, 2, old_ios, Profile::new("XJ", "ios", 5)).await?;
    ensure!(ios.start().await? == "000000");
    set_config(&admin, "version_control", "{pk:[{'vc':207,'p':'android'},{'vc':10,'p':'ios'}]}").await?;
    let (_, failed) = ios.push(14).await?;
    envelope(&failed, 14, old_ios, "u")?;
    ensure!(failed["content"] == json!({"source": old_ios, "reason": "version"}), "{failed}");
    ensure!(ios.start().await? == "902002");
    set_config(&admin, "version_control", "{pk:[{'vc':207,'p':'android'}]}").await?;

    let mut first = live_anchor(cluster, 3, waiting, anchor_of("XJ")).await?;
    let mut second = live_anchor(cluster, 1, late, anchor_of("XJ")).await?;
    ensure!(first.start().await? == "000000");
    set_config(&admin, "pk_enable", "false").await?;
    let (_, failed) = first.push(14).await?;
    envelope(&failed, 14, waiting, "u")?;
    ensure!(failed["content"] == json!({"source": waiting, "reason": "disabled"}), "{failed}");
    let refused = second.matching(late, late).await?;
    ensure!(refused["code"] == "902001", "{refused}");
    set_config(&admin, "pk_enable", "true").await?;
    ensure!(second.start().await? == "000000");
    matching_started(&mut second).await?;
    ensure!(second.stop().await? == "000000");
    Ok(())
}

/// Every flow of the lobby and a whole PK at once on one cluster, then the switches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matchmaking_and_pk_flows_with_clients_on_three_nodes() -> anyhow::Result<()> {
    let cluster = start_cluster().await?;
    let admin = cluster.admin(2)?;
    set_config(&admin, "pk_duration", &format!("{OPENING_MS},{BATTLE_MS},0,600000")).await?;
    set_config(&admin, "pk_config", MATCHING).await?;
    set_config(&admin, "pk_filter_country", &country_filter()).await?;
    set_config(&admin, "pk_limits", "{'anchorGraceMs':3000}").await?;
    let started = Instant::now();
    tokio::try_join!(
        async { queued_then_matched_at_once(&cluster).await.context("queued, then matched at once") },
        async { intervention_after_the_intervening_time(&cluster).await.context("intervention") },
        async { accept_race_among_many_invitees(&cluster).await.context("accept race") },
        async { refusals_bring_the_next_batch_at_once(&cluster).await.context("refusals") },
        async { giving_up_withdraws_the_invitations(&cluster).await.context("give-up") },
        async { stopping_withdraws_the_invitations(&cluster).await.context("stop") },
        async { the_country_filter_applies_both_ways(&cluster).await.context("country filter") },
        async { old_client_versions_cannot_match(&cluster).await.context("old client versions") },
        async {
            a_matching_anchor_reconnects_on_another_node(&cluster, false).await.context("matching anchor reconnects")
        },
        async { a_whole_pk_with_gifts_pushes_and_reconnects(&cluster).await.context("a whole PK") },
    )?;
    eprintln!("the concurrent flows took {:?}", started.elapsed());
    switches_drop_waiting_anchors(&cluster).await.context("pk_enable and version_control")?;
    Ok(())
}

// ---- a killed leader -----------------------------------------------------------------

/// Sends a gift that must count (the gift API is retried while the arena has no leader).
async fn gift_counted(cluster: &LocalCluster, node: u64, id: u64, receiver: u64, beans: i64) -> anyhow::Result<()> {
    let reply = gift(cluster, node, id, receiver, 700_001, beans).await?;
    ensure!(reply["code"] == "000000", "gift {id} not counted: {reply}");
    Ok(())
}

/// §7 "A PK's life" across a failover: the anchors on nodes 1 and 2 and viewers of both
/// rooms on every node; the PK's arena leader is killed mid-battle. Clients of the killed
/// node reconnect elsewhere and get the current state on entering; every client then
/// gets the pushes of a gift sent after the kill, and the end (status 2, the winner).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_three_nodes_keep_their_pushes_when_the_arena_leader_is_killed() -> anyhow::Result<()> {
    let mut cluster = start_cluster().await?;
    short_pks(&cluster.admin(1)?, 8_000).await?;
    let (a, b) = (90_001, 90_002);
    let profile = anchor_of("IN");
    // (user, node, room, anchor)
    let seats = [
        (a, 1, a, true),
        (b, 2, b, true),
        (90_101, 2, a, false),
        (90_102, 3, a, false),
        (90_103, 1, b, false),
        (90_104, 3, b, false),
    ];
    let mut clients = Vec::new();
    for (user, node, room, anchor) in seats {
        let mut client = Client::connect_as(&cluster, node, user, profile).await?;
        client.enter(room, anchor).await?;
        clients.push(client);
    }
    ensure!(clients[0].start().await? == "000000");
    ensure!(clients[1].start().await? == "902004");
    let first = first_state(&mut clients[2], a, a, b).await?;
    let pk = first["pkId"].as_u64().context("pkId")?;
    let end_time = first["endTime"].as_i64().context("endTime")?;
    let battle = first["startTime"].as_i64().context("startTime")? + 300;
    let arena = arena_of(pk);
    let leader = settled_leader(&cluster, arena).await?;
    ensure!(leader != 1, "arenas settle on nodes 2 and 3");
    tokio::time::sleep(Duration::from_millis(u64::try_from(battle + 200 - now_ms()).unwrap_or(0))).await;
    gift_counted(&cluster, 1, 1, a, 300).await?;
    // Every replica holds the gift before the kill.
    converged(&cluster, &[1, 2, 3], Duration::from_secs(10)).await?;

    tokio::task::block_in_place(|| cluster.kill(leader))?;
    let killed_at = now_ms();
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|&node| node != leader).collect();
    for (index, (user, node, room, anchor)) in seats.into_iter().enumerate() {
        if node == leader {
            let mut client = Client::connect_as(&cluster, 1, user, profile).await?;
            let entered = client.enter(room, anchor).await?;
            ensure!(entered["result"]["pkId"] == pk && entered["result"]["sourceGifts"] == 300, "{entered}");
            clients[index] = client;
        }
    }
    let successor = agreed_leader(&cluster, &survivors, arena, Duration::from_secs(5)).await?;
    eprintln!("node {successor} leads arena {arena} {} ms after node {leader} was killed", now_ms() - killed_at);
    gift_counted(&cluster, survivors[1], 2, b, 500).await?;
    for (client, (_, _, room, _)) in clients.iter_mut().zip(seats) {
        let (_, pushed) = client
            .wait_for(WAIT, |push| push["type"] == 10 && push["content"]["targetGifts"] == 500)
            .await
            .with_context(|| format!("user {} got no push after the kill", client.user))?;
        envelope(&pushed, 10, room, "m")?;
        ensure!(version_of(&pushed)? > killed_at && pushed["content"]["status"] == 1, "{pushed}");
    }
    let limit = Duration::from_millis(u64::try_from(end_time - now_ms()).unwrap_or(0)) + FAILOVER_BOUND;
    for (index, client) in clients.iter_mut().enumerate() {
        let end = if index == 0 { ends_once(client, pk, end_time).await? } else { client.state(pk, 2, limit).await?.1 };
        let content = &end["content"];
        ensure!(content["winner"] == b && content["sourceGifts"] == 300 && content["targetGifts"] == 500, "{end}");
        ensure!(content["sourceOnline"] == true && content["targetOnline"] == true, "{end}");
    }
    Ok(())
}

/// A matching anchor that moved to another node stays in the queue after the node it left
/// takes "its" connection off air (`GatewayConfig::off_air_grace`, 10 s): the lobby knows
/// the anchor went live again on another node since, and ignores the late report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matching_anchor_stays_in_the_queue_after_moving_to_another_node() -> anyhow::Result<()> {
    let cluster = start_cluster().await?;
    set_config(&cluster.admin(1)?, "pk_config", MATCHING).await?;
    a_matching_anchor_reconnects_on_another_node(&cluster, true).await
}
