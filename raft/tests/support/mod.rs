//! A small world for scenario scripts: one lobby and two arenas, fed by a text script,
//! printing every response and effect. Hand-overs between the groups are delivered at
//! once unless the script says `hold`.
//!
//! Script lines (times in ms; `at=` defaults to the previous line's time):
//!   live a1 [country=IN platform=android vc=300 node=1]   the anchor goes live (on a node)
//!   offair a1 [node=1]                            the anchor left that node
//!   start a1 [country=.. platform=.. vc=.. req=..] command 28 type 1 (req: the retry key)
//!   stop a1 / accept a1 a2 / refuse a1 a2         types 4, 2, 3 (inviter, invitee)
//!   gift pk=1 to=a1 from=v1 beans=100 id=7        a gift from the gift service
//!   presence pk=1 a1 online=false audience=10
//!   abort pk=1 / persisted pk=1
//!   stored pk=1 node=2 [voters=1,2,3]             node 2's own results store holds pk1
//!   config KEY VALUE                              SetConfig on every group
//!   fire lobby|arena TIMER ...                    one timer command, e.g.
//!                                                 `fire lobby intervene a1`, `fire arena end-battle pk=1`
//!                                                 (`fire lobby end-battle pk=1` misroutes it)
//!   to lobby|arenaN LINE                          LINE's command, sent to that group
//!                                                 whatever its kind (a misrouted message)
//!   tick                                          the leaders fire every due timer
//!   hold / deliver                                hold hand-overs / deliver them (and stop holding)
//!   state                                         print a summary of every group

use pkd_raft::effect::{Audience, CacheChange, PushMessage, SideView};
use pkd_raft::*;
use std::collections::BTreeMap;
use std::fmt::Write;

pub const ARENAS: u32 = 2;

pub struct World {
    pub lobby: Machine,
    pub arenas: Vec<Machine>,
    pub at: i64,
    pub holding: bool,
    pub held: Vec<(Group, Command)>,
    /// Every command each group applied, in order: its log.
    pub log: Vec<(Group, Command)>,
    /// Every hand-over delivered so far, for `replay`.
    pub delivered: Vec<(Group, Command)>,
    profiles: BTreeMap<UserId, AnchorProfile>,
    pub out: String,
    pub effects_seen: Vec<Effect>,
    pub responses_seen: Vec<Response>,
    /// The group the line being run names with `to`, instead of its command's own.
    send_to: Option<Group>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    Lobby,
    Arena(u32),
}

pub fn name(user: UserId) -> String {
    match user.0 {
        0 => "none".to_string(),
        n if n < 1000 => format!("a{n}"),
        n => format!("v{}", n - 1000),
    }
}

pub fn user(token: &str) -> UserId {
    let (prefix, number) = token.split_at(1);
    let n: u64 = number.parse().unwrap_or_else(|_| panic!("bad user '{token}'"));
    match prefix {
        "a" => UserId(n),
        "v" => UserId(1000 + n),
        _ => panic!("users are aN (anchors) or vN (viewers), not '{token}'"),
    }
}

impl Default for World {
    fn default() -> Self {
        World::new()
    }
}

impl World {
    pub fn new() -> World {
        World {
            lobby: Machine::lobby(Config::default()),
            arenas: (0..ARENAS).map(|_| Machine::arena(Config::default())).collect(),
            at: 0,
            holding: false,
            held: Vec::new(),
            delivered: Vec::new(),
            log: Vec::new(),
            profiles: BTreeMap::new(),
            out: String::new(),
            effects_seen: Vec::new(),
            responses_seen: Vec::new(),
            send_to: None,
        }
    }

    pub fn run(&mut self, script: &str) -> String {
        for line in script.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            writeln!(self.out, "> {line}").unwrap();
            self.step(line);
        }
        std::mem::take(&mut self.out)
    }

    fn profile_for(&mut self, anchor: UserId, args: &Args) -> AnchorProfile {
        let known = self.profiles.get(&anchor).cloned().unwrap_or(AnchorProfile {
            room: RoomId(anchor.0),
            country: "IN".to_string(),
            platform: "android".to_string(),
            version_code: 300,
        });
        let profile = AnchorProfile {
            room: known.room,
            country: args.get("country").map(str::to_string).unwrap_or(known.country),
            platform: args.get("platform").map(str::to_string).unwrap_or(known.platform),
            version_code: args.get("vc").map(|v| v.parse().unwrap()).unwrap_or(known.version_code),
        };
        self.profiles.insert(anchor, profile.clone());
        profile
    }

    pub fn step(&mut self, line: &str) {
        if let Some(rest) = line.strip_prefix("to ") {
            let (group, line) = rest.split_once(' ').expect("to GROUP LINE");
            self.send_to = Some(match group {
                "lobby" => Group::Lobby,
                arena => Group::Arena(
                    arena.strip_prefix("arena").and_then(|i| i.parse().ok()).expect("to lobby|arenaN LINE"),
                ),
            });
            self.step(line);
            self.send_to = None;
            return;
        }
        let args = Args::parse(line);
        if let Some(at) = args.get("at") {
            self.at = at.parse().expect("at= takes milliseconds");
        }
        let words = &args.words;
        let action: Action = match words[0].as_str() {
            "live" => {
                let anchor = user(&words[1]);
                let profile = self.profile_for(anchor, &args);
                let node = args.get("node").map_or(1, |node| node.parse().expect("node= takes a node id"));
                LobbyAction::GoLive { anchor, profile, node }.into()
            }
            "offair" => {
                let node = args.get("node").map_or(1, |node| node.parse().expect("node= takes a node id"));
                LobbyAction::GoOffAir { anchor: user(&words[1]), node }.into()
            }
            "start" => {
                let anchor = user(&words[1]);
                let profile = self.profile_for(anchor, &args);
                let request = args.get("req").map_or(0, |request| request.parse().expect("req= takes a number"));
                LobbyAction::StartMatch { anchor, profile, request }.into()
            }
            "stop" => LobbyAction::StopMatch { anchor: user(&words[1]) }.into(),
            "accept" => LobbyAction::Accept { inviter: user(&words[1]), invitee: user(&words[2]) }.into(),
            "refuse" => LobbyAction::Refuse { inviter: user(&words[1]), invitee: user(&words[2]) }.into(),
            "gift" => ArenaAction::Gift(Gift {
                id: GiftId(args.num("id")),
                pk: PkId(args.num("pk")),
                receiver: user(args.get("to").unwrap()),
                sender: user(args.get("from").unwrap()),
                beans: args.get("beans").unwrap().parse().unwrap(),
                profile: args.get("nick").map(|nick| {
                    Box::new(GifterProfile { nickname: nick.to_string(), level: 1, ..GifterProfile::default() })
                }),
            })
            .into(),
            "presence" => ArenaAction::ReportPresence(vec![Presence {
                pk: PkId(args.num("pk")),
                anchor: user(&words[1]),
                node: args.get("node").map_or(1, |n| n.parse().unwrap()),
                online: args.get("online") != Some("false"),
                audience: args.num("audience") as u32,
            }])
            .into(),
            "abort" => ArenaAction::AbortPk { pk: PkId(args.num("pk")) }.into(),
            "persisted" => ArenaAction::ConfirmResultPersisted { pk: PkId(args.num("pk")) }.into(),
            "stored" => {
                let voters = args.get("voters").unwrap_or("1,2,3").split(',').map(|v| v.parse().unwrap()).collect();
                ArenaAction::ConfirmResultStored { pk: PkId(args.num("pk")), node: args.num("node"), voters }.into()
            }
            "config" => {
                let rest = line.splitn(3, ' ').nth(2).unwrap();
                let value = rest.rsplit_once(" at=").map_or(rest, |(v, _)| v);
                let action = Action::SetConfig { key: words[1].clone(), value: value.to_string() };
                self.apply(Group::Lobby, action.clone());
                for arena in 0..ARENAS {
                    self.apply(Group::Arena(arena), action.clone());
                }
                return;
            }
            "fire" => {
                let group = if words[1] == "lobby" { Group::Lobby } else { self.arena_of(PkId(args.num("pk"))) };
                let timer: Timer = match words[2].as_str() {
                    "intervene" => LobbyTimer::Intervene { anchor: user(&words[3]) }.into(),
                    "give-up" => LobbyTimer::GiveUp { anchor: user(&words[3]) }.into(),
                    "end-battle" => ArenaTimer::EndBattle { pk: PkId(args.num("pk")) }.into(),
                    "end-pk" => ArenaTimer::EndPk { pk: PkId(args.num("pk")) }.into(),
                    other => panic!("unknown timer {other}"),
                };
                self.apply(group, Action::Fire(timer));
                return;
            }
            "tick" => {
                self.tick();
                return;
            }
            "hold" => {
                self.holding = true;
                return;
            }
            "deliver" => {
                // `deliver twice`: every held hand-over arrives a second time, as after a
                // retry whose first answer was lost.
                let times = if words.get(1).map(String::as_str) == Some("twice") { 2 } else { 1 };
                self.holding = false;
                for (group, mut command) in std::mem::take(&mut self.held) {
                    // The receiving leader stamps the hand-over when it proposes it.
                    command.at = TimestampMs(self.at);
                    self.delivered.push((group, command.clone()));
                    for _ in 0..times {
                        self.apply_at(group, command.clone());
                    }
                }
                return;
            }
            "replay" => {
                // Every hand-over ever delivered arrives once more, late.
                for (group, mut command) in self.delivered.clone() {
                    command.at = TimestampMs(self.at);
                    self.apply_at(group, command);
                }
                return;
            }
            "state" => {
                self.print_state();
                return;
            }
            other => panic!("unknown script word '{other}'"),
        };
        let group = match (self.send_to, &action) {
            (Some(group), _) => group,
            (None, Action::Arena(ArenaAction::Gift(g))) => self.arena_of(g.pk),
            (None, Action::Arena(ArenaAction::ReportPresence(p))) => self.arena_of(p[0].pk),
            (
                None,
                Action::Arena(
                    ArenaAction::AbortPk { pk }
                    | ArenaAction::ConfirmResultPersisted { pk }
                    | ArenaAction::ConfirmResultStored { pk, .. },
                ),
            ) => self.arena_of(*pk),
            (None, _) => Group::Lobby,
        };
        self.apply(group, action);
    }

    pub fn arena_of(&self, pk: PkId) -> Group {
        Group::Arena(arena_for(pk, ARENAS))
    }

    pub fn machine(&mut self, group: Group) -> &mut Machine {
        match group {
            Group::Lobby => &mut self.lobby,
            Group::Arena(i) => &mut self.arenas[i as usize],
        }
    }

    /// What every group's leader does when its ticker wakes: fire each due timer.
    pub fn tick(&mut self) {
        let now = TimestampMs(self.at);
        let mut groups = vec![Group::Lobby];
        groups.extend((0..ARENAS).map(Group::Arena));
        for group in groups {
            for timer in self.machine(group).due_timers(now) {
                self.apply(group, Action::Fire(timer));
            }
        }
    }

    pub fn apply(&mut self, group: Group, action: Action) {
        self.apply_at(group, Command { at: TimestampMs(self.at), action });
    }

    pub fn apply_at(&mut self, group: Group, command: Command) {
        self.log.push((group, command.clone()));
        let mut effects = Vec::new();
        let response = self.machine(group).apply(&command, &mut effects);
        if let Err(broken) = self.machine(group).check_invariants() {
            panic!("invariant broken after {command:?}: {broken}");
        }
        let label = match group {
            Group::Lobby => "lobby".to_string(),
            Group::Arena(i) => format!("arena{i}"),
        };
        if !matches!(command.action, Action::Fire(_)) || response != Response::Ignored {
            let what = match &command.action {
                Action::Fire(timer) => format!(" {}", show_timer(timer)),
                Action::Arena(ArenaAction::CreatePk(order)) => format!(" create pk{}", order.pk),
                Action::Lobby(LobbyAction::ReleaseRooms { pk }) => format!(" release pk{pk}"),
                Action::Lobby(LobbyAction::ConfirmPkCreated { pk }) => format!(" confirm-created pk{pk}"),
                Action::Arena(ArenaAction::ConfirmRoomsReleased { pk }) => format!(" confirm-released pk{pk}"),
                _ => String::new(),
            };
            writeln!(self.out, "  [{label}]{what} {}", show_response(&response)).unwrap();
        } else {
            writeln!(
                self.out,
                "  [{label}] {} ignored",
                show_timer(match &command.action {
                    Action::Fire(t) => t,
                    _ => unreachable!(),
                })
            )
            .unwrap();
        }
        self.responses_seen.push(response);
        for effect in &effects {
            writeln!(self.out, "    {}", show_effect(effect)).unwrap();
        }
        self.effects_seen.extend(effects.iter().cloned());
        let at = command.at;
        for effect in effects {
            let handover = match effect {
                Effect::PkOrdered(order) => {
                    let arena = self.arena_of(order.pk);
                    let pk = order.pk;
                    vec![
                        (arena, ArenaAction::CreatePk(order).into()),
                        (Group::Lobby, LobbyAction::ConfirmPkCreated { pk }.into()),
                    ]
                }
                Effect::PkSettled(result) => vec![
                    (Group::Lobby, LobbyAction::ReleaseRooms { pk: result.pk }.into()),
                    (group, ArenaAction::ConfirmRoomsReleased { pk: result.pk }.into()),
                ],
                _ => continue,
            };
            for (to, action) in handover {
                let command = Command { at, action };
                if self.holding {
                    self.held.push((to, command));
                } else {
                    self.delivered.push((to, command.clone()));
                    self.apply_at(to, command);
                }
            }
        }
    }

    fn print_state(&mut self) {
        let lobby = self.lobby.as_lobby().unwrap().summary();
        let names = |users: &[UserId]| users.iter().map(|u| name(*u)).collect::<Vec<_>>().join(",");
        writeln!(
            self.out,
            "  lobby: now={} waiting=[{}] in_pk=[{}] live={} open_invitations=[{}] cooldowns={} outbox={:?} next={:?}",
            self.lobby.now(),
            names(&lobby.waiting),
            lobby.in_pk.iter().map(|(a, p)| format!("{}:pk{p}", name(*a))).collect::<Vec<_>>().join(","),
            lobby.live,
            lobby
                .open_invitations
                .iter()
                .map(|(r, e)| format!("{}->{}", name(*r), name(*e)))
                .collect::<Vec<_>>()
                .join(","),
            lobby.cooldowns,
            lobby.outbox.iter().map(|p| p.0).collect::<Vec<_>>(),
            self.lobby.next_deadline().map(|t| t.0),
        )
        .unwrap();
        for i in 0..ARENAS as usize {
            let arena = self.arenas[i].as_arena().unwrap();
            let summary = arena.summary();
            if summary.running.is_empty() && summary.outbox.is_empty() && summary.remembered == 0 {
                continue;
            }
            writeln!(
                self.out,
                "  arena{i}: running={:?} outbox={:?} remembered={} next={:?}",
                summary.running.iter().map(|p| p.0).collect::<Vec<_>>(),
                summary.outbox.iter().map(|p| p.0).collect::<Vec<_>>(),
                summary.remembered,
                self.arenas[i].next_deadline().map(|t| t.0),
            )
            .unwrap();
            for pk in summary.running {
                writeln!(self.out, "    {}", show_view(&arena.view(pk).unwrap())).unwrap();
            }
        }
    }
}

pub fn show_timer(timer: &Timer) -> String {
    match timer {
        Timer::Lobby(LobbyTimer::Intervene { anchor }) => format!("intervene {}", name(*anchor)),
        Timer::Lobby(LobbyTimer::GiveUp { anchor }) => format!("give-up {}", name(*anchor)),
        Timer::Lobby(LobbyTimer::ExpireInvitation { inviter, invitee }) => {
            format!("expire-invitation {}->{}", name(*inviter), name(*invitee))
        }
        Timer::Lobby(LobbyTimer::EndCooldown { anchor }) => format!("end-cooldown {}", name(*anchor)),
        Timer::Lobby(LobbyTimer::AbandonPk { pk }) => format!("abandon pk{pk}"),
        Timer::Arena(ArenaTimer::EndBattle { pk }) => format!("end-battle pk{pk}"),
        Timer::Arena(ArenaTimer::EndPk { pk }) => format!("end-pk pk{pk}"),
        Timer::Arena(ArenaTimer::AnchorAway { pk, anchor }) => format!("anchor-away pk{pk} {}", name(*anchor)),
        Timer::Arena(ArenaTimer::ForgetPk { pk }) => format!("forget pk{pk}"),
    }
}

pub fn show_response(response: &Response) -> String {
    match response {
        Response::Done => "done".to_string(),
        Response::Ignored => "ignored".to_string(),
        Response::Waiting => "waiting".to_string(),
        Response::Matched { pk, source, target } => {
            format!("matched pk{pk} source={} target={} ({})", name(*source), name(*target), response.code())
        }
        Response::GiftCounted { duplicate, side_beans } => {
            format!("counted{} side={side_beans}", if *duplicate { " (duplicate)" } else { "" })
        }
        Response::Rejected(reason) => format!("rejected {} {:?}", reason.code(), reason),
    }
}

fn show_side(side: &SideView) -> String {
    let top: Vec<String> = side
        .top_gifters
        .iter()
        .map(|t| match &t.profile {
            Some(p) => format!("{}({}):{}", name(t.sender), p.nickname, t.beans),
            None => format!("{}:{}", name(t.sender), t.beans),
        })
        .collect();
    format!(
        "{}[room{}] {}{} aud={} top=[{}]",
        name(side.anchor),
        side.room,
        side.beans,
        if side.online { "" } else { " away" },
        side.audience,
        top.join(",")
    )
}

pub fn show_view(view: &PkView) -> String {
    format!(
        "pk{} {:?}/{} {}..{}{} | {} | {}{}",
        view.pk,
        view.status,
        view.status.push_code(),
        view.start_time,
        view.end_time,
        if view.interfered { " interfered" } else { "" },
        show_side(&view.source),
        show_side(&view.target),
        view.winner.map(|w| format!(" | winner={}", name(w))).unwrap_or_default()
    )
}

pub fn show_effect(effect: &Effect) -> String {
    match effect {
        Effect::Pushed(push) => {
            let to = match push.to {
                Audience::Room(room) => format!("room{room}"),
                Audience::User { user, room } => format!("{}@room{room}", name(user)),
            };
            let message = match &push.message {
                PushMessage::PkState(view) => format!("type10 {}", show_view(view)),
                PushMessage::Invitation { inviter } => {
                    format!("type12 invitation from {}", name(*inviter))
                }
                PushMessage::MatchingStarted { anchor } => {
                    format!("type13 matching {}", name(*anchor))
                }
                PushMessage::MatchFailed { anchor, why } => {
                    format!("type14 match failed {} {why:?}", name(*anchor))
                }
                PushMessage::PkClosed { pk, status } => format!("type15 pk{pk} closed {status:?}"),
            };
            format!("push {to} {message}")
        }
        Effect::PkChanged { pk } => format!("changed pk{pk}"),
        Effect::CacheChanged(change) => match change {
            CacheChange::Matching { anchor, since } => {
                format!("cache pkm {} {}", name(*anchor), opt(since))
            }
            CacheChange::RoomInPk { room, pk } => format!("cache pkr room{room} {}", opt(pk)),
            CacheChange::Invited { anchor, at } => {
                format!("cache room_pk_invited {} {}", name(*anchor), opt(at))
            }
            CacheChange::Pk { pk } => format!("cache pk_{pk}"),
            CacheChange::GifterTotal { pk, anchor, sender, beans } => {
                format!("cache pkg_{pk}_{} {}={beans}", anchor, name(*sender))
            }
            CacheChange::PkEnded { pk, anchors, final_view } => {
                format!("cache ended pk_{pk} {:?} pkg_{pk}_{} pkg_{pk}_{}", final_view.status, anchors[0], anchors[1])
            }
        },
        Effect::PkOrdered(order) => format!(
            "ordered pk{} {} vs {}{} at={} -> arena{}",
            order.pk,
            name(order.source.anchor),
            name(order.target.anchor),
            if order.interfered { " (interfered)" } else { "" },
            order.created_at,
            arena_for(order.pk, ARENAS)
        ),
        Effect::PkSettled(result) => {
            let side = |s: &pkd_raft::effect::SettledSide| {
                let gifters: Vec<String> = s
                    .gifters
                    .iter()
                    .map(|g| format!("#{} {}:{}x{}", g.rank, name(g.sender), g.beans, g.times))
                    .collect();
                let ledger: Vec<String> =
                    s.gifts.iter().map(|g| format!("{}:{}:{}@{}", g.id.0, name(g.sender), g.beans, g.at)).collect();
                format!(
                    "{} {} aud={} [{}] ledger=[{}]",
                    name(s.anchor),
                    s.beans,
                    s.audience,
                    gifters.join(" "),
                    ledger.join(" ")
                )
            };
            format!(
                "settled pk{} {:?}(t_pk {}){} {}..{} dur={} | {} | {} | winner={}",
                result.pk,
                result.status,
                result.status.table_code(),
                result.abnormal.map(|a| format!(" {a:?}")).unwrap_or_default(),
                result.start_time,
                result.end_time,
                result.duration_ms,
                side(&result.source),
                side(&result.target),
                name(result.winner)
            )
        }
    }
}

fn opt<T: std::fmt::Display>(value: &Option<T>) -> String {
    value.as_ref().map_or("-".to_string(), |v| v.to_string())
}

pub struct Args {
    pub words: Vec<String>,
    pub named: BTreeMap<String, String>,
}

impl Args {
    fn parse(line: &str) -> Args {
        let mut words = Vec::new();
        let mut named = BTreeMap::new();
        for token in line.split_whitespace() {
            match token.split_once('=') {
                Some((k, v)) if !token.starts_with('{') && !k.contains('\'') => {
                    named.insert(k.to_string(), v.to_string());
                }
                _ => words.push(token.to_string()),
            }
        }
        Args { words, named }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.named.get(key).map(String::as_str)
    }

    fn num(&self, key: &str) -> u64 {
        self.get(key).unwrap_or_else(|| panic!("missing {key}=")).parse().unwrap()
    }
}
