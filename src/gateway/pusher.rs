//! Pushes for this node's own clients, rendered from this node's own replicas.
//!
//! - Transition pushes (PK start and end, invitations, matching started, match
//!   failed) are effects of committed commands: rendered and sent as they come.
//! - After a change (`PkChanged`: a gift, a presence change), a PK's state is pushed
//!   at most once per `push_cooldown`, so a gift storm is not a push storm.
//! - Every running PK with clients on this node gets its state every `push_period`.
//! - Presence: the anchors and audiences this node sees are compared with the
//!   engine's every `presence_interval`, and differences proposed in one batch per
//!   arena (a bounded rate, not one entry per connection event).

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
    let mut coalesce = tokio::time::interval(config.push_cooldown / 5);
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

/// Proposes the presence this node sees where it differs from the engine's.
///
/// Only the arena's leader reports, so that two nodes never overwrite each other's
/// counts. Clients connected to other nodes are not counted yet: cross-node
/// aggregation comes with multi-node clusters.
async fn report_presence(gateway: &Gateway) {
    let mut reports: HashMap<crate::consensus::GroupId, Vec<Presence>> = HashMap::new();
    for view in running_views(gateway) {
        let group = gateway.node.arena_of(view.pk);
        if !gateway.node.is_leader(group) {
            continue;
        }
        for side in [&view.source, &view.target] {
            let seen = gateway.hub.presence(side.room, side.anchor);
            if seen.anchor_online != side.online || seen.viewers != side.audience {
                reports.entry(group).or_default().push(Presence {
                    pk: view.pk,
                    anchor: side.anchor,
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
