//! Property tests: random command sequences, with the core's promises checked after
//! every step.

mod support;

use pkd_raft::effect::PkStatus;
use pkd_raft::*;
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use support::{Group, World};

#[derive(Clone, Debug)]
enum Op {
    Live(u8, u8),
    OffAir(u8),
    /// Anchor, country, retry key (0: none).
    Start(u8, u8, u8),
    Stop(u8),
    Accept(u8, u8),
    Refuse(u8, u8),
    Gift {
        pk: u8,
        to: u8,
        from: u8,
        beans: i64,
        id: u8,
    },
    Presence {
        pk: u8,
        anchor: u8,
        online: bool,
        audience: u16,
    },
    Abort(u8),
    /// Answer the k-th open invitation (so that answers often hit a real one).
    AcceptOpen(u8),
    RefuseOpen(u8),
    /// A gift to a side of the k-th running PK.
    GiftRunning {
        k: u8,
        side: bool,
        from: u8,
        beans: i64,
        id: u8,
    },
    Persisted(u8),
    Enable(bool),
    /// Time passes and the leaders fire what is due.
    Wait(u16),
    /// The next command is stamped by a leader whose clock lags.
    Lag(u16),
}

const COUNTRIES: [&str; 3] = ["IN", "PK", "US"];

fn op() -> impl Strategy<Value = Op> {
    let anchor = 1u8..=8;
    prop_oneof![
        1 => (anchor.clone(), 0u8..3).prop_map(|(a, c)| Op::Live(a, c)),
        1 => anchor.clone().prop_map(Op::OffAir),
        1 => (anchor.clone(), 0u8..3, 0u8..3).prop_map(|(a, c, r)| Op::Start(a, c, r)),
        1 => anchor.clone().prop_map(Op::Stop),
        1 => (anchor.clone(), anchor.clone()).prop_map(|(a, b)| Op::Accept(a, b)),
        1 => (anchor.clone(), anchor.clone()).prop_map(|(a, b)| Op::Refuse(a, b)),
        4 => (1u8..=6, anchor.clone(), 1u8..=5, -5i64..500, 1u8..=40)
            .prop_map(|(pk, to, from, beans, id)| Op::Gift { pk, to, from, beans, id }),
        1 => (1u8..=6, anchor.clone(), any::<bool>(), 0u16..100)
            .prop_map(|(pk, anchor, online, audience)| Op::Presence { pk, anchor, online, audience }),
        1 => (1u8..=6).prop_map(Op::Abort),
        2 => any::<u8>().prop_map(Op::AcceptOpen),
        1 => any::<u8>().prop_map(Op::RefuseOpen),
        6 => (any::<u8>(), any::<bool>(), 1u8..=5, 1i64..500, 1u8..=30)
            .prop_map(|(k, side, from, beans, id)| Op::GiftRunning { k, side, from, beans, id }),
        1 => (1u8..=6).prop_map(Op::Persisted),
        1 => any::<bool>().prop_map(Op::Enable),
        3 => (0u16..4000).prop_map(Op::Wait),
        1 => (0u16..3000).prop_map(Op::Lag),
    ]
}

/// Tracks what the promises are checked against.
#[derive(Default)]
struct Model {
    /// Counted gifts: (pk, id) -> (receiver, beans).
    counted: BTreeMap<(u64, u64), (u64, i64)>,
    /// Inviters whose invitation was accepted since they last started matching.
    accepted_since_start: BTreeSet<u64>,
    /// The run began from a state whose gifts the model did not see: gift counts are not
    /// checked.
    blind: bool,
}

fn run(ops: &[Op]) -> Result<World, TestCaseError> {
    let mut world = World::new();
    world.run(
        "config pk_duration 500,5000,1000,60000
         config pk_config {'interveningTime':700,'endTime':4000,'inviteNum':2,'inviteColdDown':1500}
         config pk_limits {'anchorGraceMs':800}",
    );
    run_from(world, ops, Model::default())
}

/// Runs `ops` on `world`, checking the promises after every step.
fn run_from(mut world: World, ops: &[Op], mut model: Model) -> Result<World, TestCaseError> {
    let mut lag = 0i64;
    for op in ops {
        let seen = world.responses_seen.len();
        let effects_seen = world.effects_seen.len();
        let at = world.at;
        world.at = at - lag;
        lag = 0;
        let line = match op {
            Op::Live(a, c) => format!("live a{a} country={}", COUNTRIES[*c as usize]),
            Op::OffAir(a) => format!("offair a{a}"),
            Op::Start(a, c, r) => format!("start a{a} country={} req={r}", COUNTRIES[*c as usize]),
            Op::Stop(a) => format!("stop a{a}"),
            Op::Accept(a, b) => format!("accept a{a} a{b}"),
            Op::Refuse(a, b) => format!("refuse a{a} a{b}"),
            Op::Gift { pk, to, from, beans, id } => format!("gift pk={pk} to=a{to} from=v{from} beans={beans} id={id}"),
            Op::Presence { pk, anchor, online, audience } => {
                format!("presence pk={pk} a{anchor} online={online} audience={audience}")
            }
            Op::Abort(pk) => format!("abort pk={pk}"),
            Op::AcceptOpen(k) | Op::RefuseOpen(k) => {
                let open = world.lobby.as_lobby().unwrap().summary().open_invitations;
                let Some((inviter, invitee)) = open.get(*k as usize % open.len().max(1)) else {
                    continue;
                };
                let verb = if matches!(op, Op::AcceptOpen(_)) { "accept" } else { "refuse" };
                format!("{verb} {} {}", support::name(*inviter), support::name(*invitee))
            }
            Op::GiftRunning { k, side, from, beans, id } => {
                let running: Vec<PkView> = world
                    .arenas
                    .iter()
                    .flat_map(|m| {
                        let arena = m.as_arena().unwrap();
                        arena.running().map(|pk| arena.view(pk).unwrap()).collect::<Vec<_>>()
                    })
                    .collect();
                let Some(view) = running.get(*k as usize % running.len().max(1)) else {
                    continue;
                };
                let to = if *side { view.source.anchor } else { view.target.anchor };
                format!("gift pk={} to={} from=v{from} beans={beans} id={id}", view.pk, support::name(to))
            }
            Op::Persisted(pk) => format!("persisted pk={pk}"),
            Op::Enable(on) => format!("config pk_enable {on}"),
            Op::Wait(ms) => {
                world.at = at + i64::from(*ms);
                "tick".to_string()
            }
            Op::Lag(ms) => {
                lag = i64::from(*ms);
                continue;
            }
        };
        world.step(&line);
        if !matches!(op, Op::Wait(_)) {
            world.at = world.at.max(at);
        }
        let first = world.responses_seen.get(seen).cloned().unwrap_or(Response::Ignored);
        // At most one accept per invitation batch (indeed per waiting period).
        match (op, &first) {
            (Op::Start(a, ..), Response::Waiting) => {
                model.accepted_since_start.remove(&u64::from(*a));
            }
            (Op::Accept(..) | Op::AcceptOpen(_), Response::Matched { source: inviter, .. }) => {
                prop_assert!(
                    model.accepted_since_start.insert(inviter.0),
                    "{inviter}'s invitations were accepted twice"
                );
            }
            (Op::Gift { .. } | Op::GiftRunning { .. }, Response::GiftCounted { duplicate, .. }) if !model.blind => {
                let Some(Command { action: Action::Arena(ArenaAction::Gift(gift)), .. }) = world
                    .log
                    .iter()
                    .rev()
                    .map(|(_, c)| c)
                    .find(|c| matches!(c.action, Action::Arena(ArenaAction::Gift(_))))
                else {
                    unreachable!("a gift response without a gift")
                };
                let key = (gift.pk.0, gift.id.0);
                if *duplicate {
                    prop_assert!(model.counted.contains_key(&key), "duplicate of a gift never counted");
                } else {
                    prop_assert!(
                        model.counted.insert(key, (gift.receiver.0, gift.beans)).is_none(),
                        "gift counted twice"
                    );
                }
            }
            _ => {}
        }
        // Each side's total is the sum of its distinct counted gifts.
        for arena in world.arenas.iter().filter(|_| !model.blind) {
            let arena = arena.as_arena().unwrap();
            for pk in arena.running() {
                let view = arena.view(pk).unwrap();
                for side in [&view.source, &view.target] {
                    let expected: i64 = model
                        .counted
                        .iter()
                        .filter(|((p, _), (to, _))| *p == pk.0 && *to == side.anchor.0)
                        .map(|(_, (_, beans))| beans)
                        .sum();
                    prop_assert_eq!(side.beans, expected, "pk{} side {}", pk, side.anchor);
                }
            }
        }
        // No PK ends normally before start + opening + battle.
        for effect in &world.effects_seen[effects_seen..] {
            if let Effect::PkSettled(result) = effect
                && result.status == PkStatus::Done
            {
                prop_assert!(result.end_time >= result.battle_end, "pk{} ended early", result.pk);
                prop_assert_eq!(result.battle_end.0, result.start_time.0 + 500 + 5000);
            }
        }
        // An anchor is in at most one of {waiting, a PK}, and in at most one PK.
        let lobby = world.lobby.as_lobby().unwrap();
        for a in 1..=8u64 {
            prop_assert!(!(lobby.is_waiting(UserId(a)) && lobby.pk_of(UserId(a)).is_some()));
        }
        let mut seated = BTreeSet::new();
        for (_, seats) in lobby.held_pks() {
            for seat in seats {
                prop_assert!(seated.insert(seat.anchor), "{} holds two PKs", seat.anchor);
            }
        }
        groups_agree(&world)?;
    }
    Ok(world)
}

/// The promises across groups: every PK running in an arena holds its anchors' rooms in
/// the lobby, no anchor battles in two PKs at once, and the lobby holds no rooms for a PK
/// its arena is done with.
fn groups_agree(world: &World) -> Result<(), TestCaseError> {
    let lobby = world.lobby.as_lobby().unwrap();
    let held: BTreeMap<PkId, [Seat; 2]> = lobby.held_pks().collect();
    let mut battling = BTreeSet::new();
    for arena in &world.arenas {
        let arena = arena.as_arena().unwrap();
        for pk in arena.running() {
            let view = arena.view(pk).unwrap();
            let anchors = [view.source.anchor, view.target.anchor];
            let seats = held.get(&pk);
            prop_assert!(seats.is_some(), "pk{} runs in its arena but the lobby does not hold its rooms", pk);
            prop_assert_eq!(seats.unwrap().map(|seat| seat.anchor), anchors, "pk{} seats", pk);
            for anchor in anchors {
                prop_assert!(battling.insert(anchor), "{} battles in two PKs", anchor);
            }
        }
    }
    // And the other way: the rooms of a PK its arena created stay held only while the PK
    // runs or its release is on the way.
    let ordered: BTreeSet<PkId> = lobby.pending_orders().map(|order| order.pk).collect();
    for pk in held.keys().filter(|pk| !ordered.contains(pk)) {
        let Group::Arena(arena) = world.arena_of(*pk) else { unreachable!() };
        let arena = world.arenas[arena as usize].as_arena().unwrap();
        let live = arena.running().any(|running| running == *pk) || arena.pending_releases().any(|p| p == *pk);
        prop_assert!(live, "the lobby holds the rooms of pk{}, over in its arena", pk);
    }
    Ok(())
}

fn fresh(group: Group) -> Machine {
    match group {
        Group::Lobby => Machine::lobby(Config::default()),
        Group::Arena(_) => Machine::arena(Config::default()),
    }
}

fn groups() -> Vec<Group> {
    let mut groups = vec![Group::Lobby];
    groups.extend((0..support::ARENAS).map(Group::Arena));
    groups
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn promises_hold_after_every_step(ops in prop::collection::vec(op(), 1..160)) {
        run(&ops)?;
    }

    #[test]
    fn replicas_fed_the_same_log_agree_to_the_byte(ops in prop::collection::vec(op(), 1..160), cut in 0.0f64..1.0) {
        let world = run(&ops)?;
        for group in groups() {
            let log: Vec<&Command> = world.log.iter().filter(|(g, _)| *g == group).map(|(_, c)| c).collect();
            let original = match group {
                Group::Lobby => &world.lobby,
                Group::Arena(i) => &world.arenas[i as usize],
            };
            // A second replica applies the same log from scratch.
            let mut replica = fresh(group);
            let mut effects = Vec::new();
            for command in &log {
                replica.apply(command, &mut effects);
            }
            prop_assert_eq!(replica.snapshot(), original.snapshot());
            // A third takes a snapshot part-way, restores it, and applies the rest.
            let split = ((log.len() as f64) * cut) as usize;
            let mut early = fresh(group);
            for command in &log[..split] {
                early.apply(command, &mut effects);
            }
            let mut restored = Machine::restore(&early.snapshot()).unwrap();
            prop_assert_eq!(&restored, &early);
            for command in &log[split..] {
                restored.apply(command, &mut effects);
            }
            prop_assert_eq!(restored.snapshot(), original.snapshot());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// A backup reads the lobby, then the arenas some steps later; made consistent, the
    /// cut keeps every promise, and so does the cluster restored from it.
    #[test]
    fn a_backup_cut_is_made_consistent(
        ops in prop::collection::vec(op(), 1..160),
        lobby_at in 0.0f64..1.0,
        arenas_after in 0.0f64..1.0,
        later in prop::collection::vec(op(), 1..100),
    ) {
        let first = (ops.len() as f64 * lobby_at) as usize;
        let second = first + ((ops.len() - first) as f64 * arenas_after) as usize;
        let early = run(&ops[..first])?;
        let late = run(&ops[..second])?;
        let mut lobby = early.lobby.as_lobby().unwrap().clone();
        let mut arenas: Vec<Arena> = late.arenas.iter().map(|m| m.as_arena().unwrap().clone()).collect();
        let repairs = cut::make_consistent(&mut lobby, &mut arenas, |pk| arena_for(pk, support::ARENAS) as usize);
        let mut world = World::new();
        world.at = late.at;
        world.lobby = Machine::Lobby(lobby);
        world.arenas = arenas.into_iter().map(Machine::Arena).collect();
        for machine in std::iter::once(&world.lobby).chain(&world.arenas) {
            prop_assert_eq!(machine.check_invariants(), Ok(()), "after {:?}", repairs);
        }
        groups_agree(&world)?;
        run_from(world, &later, Model { blind: true, ..Model::default() })?;
    }
}

/// Guards the generator: random runs do reach the interesting paths (accepted
/// invitations, counted and duplicate gifts, normal and abnormal ends), so the
/// properties above are not vacuous.
#[test]
fn random_runs_reach_the_interesting_paths() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config as RunnerConfig, RngAlgorithm, TestRng, TestRunner};
    let mut runner =
        TestRunner::new_with_rng(RunnerConfig::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]));
    let strategy = prop::collection::vec(op(), 100..160);
    let (mut accepted, mut counted, mut duplicates, mut done, mut errors) = (0, 0, 0, 0, 0);
    for _ in 0..100 {
        let ops = strategy.new_tree(&mut runner).unwrap().current();
        let world = run(&ops).unwrap();
        for response in &world.responses_seen {
            match response {
                Response::GiftCounted { duplicate: false, .. } => counted += 1,
                Response::GiftCounted { duplicate: true, .. } => duplicates += 1,
                _ => {}
            }
        }
        for effect in &world.effects_seen {
            match effect {
                Effect::PkOrdered(order) if order.interfered => accepted += 1,
                Effect::PkSettled(result) if result.status == PkStatus::Done => done += 1,
                Effect::PkSettled(_) => errors += 1,
                _ => {}
            }
        }
    }
    println!("accepted={accepted} counted={counted} duplicates={duplicates} done={done} errors={errors}");
    for (what, n) in
        [("accepted", accepted), ("counted", counted), ("duplicates", duplicates), ("done", done), ("errors", errors)]
    {
        assert!(n >= 5, "random runs reached '{what}' only {n} times");
    }
}
