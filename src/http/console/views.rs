//! What the console reads: the running PKs, the lobby, the config rows and the audit log,
//! each from this node's own replicas (`Consistency::Local`: on a follower it trails the
//! leader by a heartbeat at most while the cluster is healthy).

use pkd_cluster::api::{
    AuditList, ConfigCheck, ConfigRequest, ConfigRows, CooldownEntry, InvitationEntry, LobbyView, MatchingEntry,
    PkEntry, PkList,
};
use pkd_raft::{ConfigKey, PkId, PkView, StateMachine, TimestampMs};

use crate::gateway::protocol::PkStateContent;
use crate::replication::node::Node;

/// A PK as the console shows it: its state as push 10 carries it, and its viewers.
pub fn pk_entry(arena: u64, view: &PkView, now: TimestampMs) -> PkEntry {
    let state = serde_json::to_value(PkStateContent::from_view(view, now.0)).unwrap_or_default();
    PkEntry { arena, viewers: [view.source.audience, view.target.audience], state }
}

/// Every running PK in this node's arena replicas, by PK id.
pub fn pks(node: &Node) -> PkList {
    let now = crate::clock::wall_clock();
    let mut pks = Vec::new();
    for (index, arena) in node.arenas().iter().enumerate() {
        let group = index as u64 + 1;
        arena.read(|arena| {
            for pk in arena.running() {
                if let Some(view) = arena.view_at(pk, now) {
                    pks.push(pk_entry(group, &view, now));
                }
            }
        });
    }
    pks.sort_by_key(|entry| entry.state["pkId"].as_u64());
    PkList { at_ms: now.0, pks }
}

/// One running PK, if this node's replica holds it.
pub fn pk(node: &Node, pk: PkId) -> Option<PkEntry> {
    let now = crate::clock::wall_clock();
    let arena = node.arena_of(pk);
    let view = node.arena_for(pk).read(|replica| replica.view_at(pk, now))?;
    Some(pk_entry(arena.0, &view, now))
}

/// Matchmaking as this node's lobby replica holds it.
pub fn lobby(node: &Node) -> LobbyView {
    node.lobby().read(|lobby| {
        let cooldown = lobby.config().matching.invite_cooldown_ms;
        LobbyView {
            at_ms: crate::clock::now_ms(),
            live: lobby.summary().live as u64,
            matching: lobby
                .matching()
                .into_iter()
                .map(|m| MatchingEntry {
                    anchor: m.anchor.0,
                    room: m.room.0,
                    country: m.country,
                    since_ms: m.since.0,
                    batch: m.batch,
                    invitees: m.invitees.iter().map(|(invitee, _)| invitee.0).collect(),
                    refused: m.invitees.iter().filter(|(_, refused)| *refused).map(|(invitee, _)| invitee.0).collect(),
                })
                .collect(),
            invitations: lobby
                .open_invitations()
                .map(|(inviter, invitee, batch)| InvitationEntry { inviter: inviter.0, invitee: invitee.0, batch })
                .collect(),
            cooldowns: lobby
                .cooldowns()
                .map(|(anchor, at)| CooldownEntry { anchor: anchor.0, invited_ms: at.0, until_ms: at.0 + cooldown })
                .collect(),
            held: lobby.held_pks().map(|(pk, [source, target])| [pk.0, source.anchor.0, target.anchor.0]).collect(),
        }
    })
}

/// The `t_config` rows in force in this node's lobby replica (every group applies the
/// same rows, at the same log positions).
pub fn config_rows(node: &Node) -> ConfigRows {
    let config = node.lobby().read(|lobby| lobby.config().clone());
    let rows = ConfigKey::ALL
        .into_iter()
        .map(|key| ConfigRequest { key: key.name().to_owned(), value: config.row(key) })
        .collect();
    ConfigRows { rows }
}

/// Checks a row's value as `pkd config check` and `POST /admin/config` do; sets nothing.
pub fn check_config(request: &ConfigRequest) -> ConfigCheck {
    match pkd_raft::config::check_row(&request.key, &request.value) {
        Ok(config) => {
            ConfigCheck { valid: true, message: format!("{} is valid; the engine reads: {config}", request.key) }
        }
        Err(message) => ConfigCheck { valid: false, message },
    }
}

/// The audit entries after `after`, oldest first.
pub fn audit(node: &Node, after: u64) -> AuditList {
    let entries = node.lobby().read(|lobby| lobby.audit().after(after).map(super::audit::item).collect());
    AuditList { entries }
}
