//! Pushes for this node's own clients, rendered from this node's own replicas.
//!
//! - Transition pushes (PK start and end, invitations, matching started, match
//!   failed) are effects of committed commands: rendered and sent as they come.
//! - After a change (`PkChanged`: a gift, a presence change), a PK's state is pushed
//!   at most once per `push_cooldown`, so a gift storm is not a push storm.
//! - Every running PK with clients on this node gets its state every `push_period`.
//! - Presence: this node's share (its clients: anchors online, viewers) is compared
//!   with the share the engine holds for it every `presence_interval`, and
//!   differences proposed in one batch per arena (a bounded rate, not one entry per
//!   connection event). The arena combines every node's fresh share.

use super::hub::Outbound;
use super::protocol;
use super::{Gateway, now_ms};
use pkd_raft::effect::{Audience, Effect, PushMessage};
use pkd_raft::{Action, PkId, PkView, Presence};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Instant;
use tokio::sync::broadcast::error::RecvError;

pub(super) async fn run(gateway: Weak<Gateway>) {
    let Some(strong) = gateway.upgrade() else { return };
    let mut effects = strong.node.subscribe_effects();
    let config = strong.config.clone();
    drop(strong);
    let mut dirty: HashSet<PkId> = HashSet::new();
    let mut last_push: HashMap<PkId, Instant> = HashMap::new();
    // Checks for due change pushes 20 times per cool-down, so a change waits at most the
    // cool-down plus 5 % of it.
    let mut coalesce = tokio::time::interval((config.push_cooldown / 20).max(std::time::Duration::from_millis(5)));
    coalesce.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut periodic = tokio::time::interval(config.push_period);
    let mut presence = tokio::time::interval(config.presence_interval);
    loop {
        tokio::select! {
            tagged = effects.recv() => {
                let Some(gateway) = gateway.upgrade() else { return };
                match tagged {
                    Ok(tagged) => match &tagged.effect {
                        Effect::Pushed(push) => {
                            let frame: Outbound = Arc::from(protocol::render_push(push, now_ms()));
                            match push.to {
                                Audience::Room(room) => gateway.hub.send_to_room(room, &frame),
                                Audience::User { user, .. } => gateway.hub.send_to_user(user, &frame),
                            };
                            if let PushMessage::PkState(view) = &push.message {
                                last_push.insert(view.pk, Instant::now());
                                dirty.remove(&view.pk);
                            }
                        }
                        Effect::PkChanged { pk } => {
                            dirty.insert(*pk);
                        }
                        Effect::PkSettled(result) => {
                            last_push.remove(&result.pk);
                            dirty.remove(&result.pk);
                        }
                        _ => {}
                    },
                    // Pushes are states: the next one heals what was missed.
                    Err(RecvError::Lagged(missed)) => tracing::warn!(missed, "pusher fell behind the effects"),
                    Err(RecvError::Closed) => return,
                }
            }
            _ = coalesce.tick() => {
                let Some(gateway) = gateway.upgrade() else { return };
                let due: Vec<PkId> = dirty
                    .iter()
                    .copied()
                    .filter(|pk| last_push.get(pk).is_none_or(|at| at.elapsed() >= config.push_cooldown))
                    .collect();
                for pk in due {
                    dirty.remove(&pk);
                    if let Some(view) = gateway.pk_view(pk) {
                        push_state(&gateway, &view);
                        last_push.insert(pk, Instant::now());
                    }
                }
            }
            _ = periodic.tick() => {
                let Some(gateway) = gateway.upgrade() else { return };
                for view in running_views(&gateway) {
                    if push_state(&gateway, &view) > 0 {
                        last_push.insert(view.pk, Instant::now());
                    }
                }
            }
            _ = presence.tick() => {
                let Some(gateway) = gateway.upgrade() else { return };
                report_presence(&gateway).await;
            }
        }
    }
}

/// Pushes a PK's state to both its rooms on this node; returns the sessions reached.
fn push_state(gateway: &Gateway, view: &PkView) -> usize {
    let now = now_ms();
    [view.source.room, view.target.room]
        .into_iter()
        .filter(|room| gateway.hub.has_room(*room))
        .map(|room| gateway.hub.send_to_room(room, &Arc::from(protocol::render_pk_state(room, view, now))))
        .sum()
}

/// Every running PK on this node's replicas.
fn running_views(gateway: &Gateway) -> Vec<PkView> {
    let node = &gateway.node;
    (1..=u64::from(node.arena_count()))
        .filter_map(|group| node.replica(crate::consensus::GroupId(group)))
        .flat_map(|replica| {
            replica.read(|machine| {
                machine
                    .as_arena()
                    .map(|arena| arena.running().filter_map(|pk| arena.view(pk)).collect::<Vec<_>>())
                    .unwrap_or_default()
            })
        })
        .collect()
}

/// A node repeats an unchanged presence report this often, well within
/// `pkd_raft::arena::PRESENCE_FRESH_MS`, so its share keeps counting.
const PRESENCE_HEARTBEAT_MS: i64 = 10_000;

/// Proposes this node's share of each running PK's presence where it differs from what
/// the engine holds for this node (or is due for its heartbeat). Every node reports its
/// own clients; the arena combines the shares, so an anchor connected to any node is
/// online and audiences are summed over the cluster.
async fn report_presence(gateway: &Gateway) {
    let me = gateway.node.id();
    let now = now_ms();
    let mut reports: HashMap<crate::consensus::GroupId, Vec<Presence>> = HashMap::new();
    for view in running_views(gateway) {
        let group = gateway.node.arena_of(view.pk);
        let Some(replica) = gateway.node.replica(group) else { continue };
        for side in [&view.source, &view.target] {
            let seen = gateway.hub.presence(side.room, side.anchor);
            let held = replica.read(|machine| machine.as_arena().and_then(|a| a.report_of(view.pk, side.anchor, me)));
            // Every node reports every side, zeros included: "away" is only known when
            // every node with a fresh share says so.
            let due = match held {
                None => true,
                Some(held) => {
                    held.online != seen.anchor_online
                        || held.audience != seen.viewers
                        || now - held.at.0 >= PRESENCE_HEARTBEAT_MS
                }
            };
            if due {
                reports.entry(group).or_default().push(Presence {
                    pk: view.pk,
                    anchor: side.anchor,
                    node: me,
                    online: seen.anchor_online,
                    audience: seen.viewers,
                });
            }
        }
    }
    for (group, batch) in reports {
        if let Err(error) = gateway.node.propose(group, Action::ReportPresence(batch)).await {
            tracing::warn!(%error, %group, "presence report not applied");
        }
    }
}
