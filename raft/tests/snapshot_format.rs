//! The snapshot encoding is a stored format: replicas and restarts read what older
//! versions wrote. These golden bytes must only change together with
//! `SNAPSHOT_FORMAT` (and a reader for the old format, or a refusal that names it).

use expect_test::expect;
use pkd_raft::*;

fn hex(bytes: &[u8]) -> String {
    bytes
        .chunks(32)
        .map(|chunk| chunk.iter().map(|b| format!("{b:02x}")).collect::<String>())
        .collect::<Vec<_>>()
        .join("\n")
}

fn profile(room: u64) -> AnchorProfile {
    AnchorProfile { room: RoomId(room), country: "IN".into(), platform: "android".into(), version_code: 300 }
}

#[test]
fn lobby_snapshot_bytes_are_stable() {
    let mut lobby = Machine::lobby(Config::default());
    let mut effects = Vec::new();
    lobby.apply(
        &Command::new(1_000, LobbyAction::GoLive { anchor: UserId(3), profile: profile(3), node: 2 }),
        &mut effects,
    );
    lobby.apply(
        &Command::new(2_000, LobbyAction::StartMatch { anchor: UserId(1), profile: profile(1), request: 0 }),
        &mut effects,
    );
    lobby.apply(
        &Command::new(3_000, LobbyAction::StartMatch { anchor: UserId(2), profile: profile(2), request: 0 }),
        &mut effects,
    );
    let record =
        AuditRecord { id: 42, who: "ops".into(), what: "set pk_enable to false".into(), outcome: "done".into() };
    lobby.apply(&Command::new(4_000, LobbyAction::RecordAudit(record)), &mut effects);
    let bytes = lobby.snapshot();
    assert_eq!(bytes[0], SNAPSHOT_FORMAT);
    expect![[r#"
        0400c03e01b817c0cf2400809f4909e58cb9e9858de8b59b80d30e809f490a80
        dddb010202494e0102504b02504b0102494e0107616e64726f6964cf018084af
        5fe0d403c0843d030101030302494e07616e64726f6964ac02d00f0201d00f03
        00000100000201010201020101020101010101020201010101020200f02eb817
        c0cf2400809f4901e8cfdc030401010401e8cfdc030000000101012ac03e036f
        70731673657420706b5f656e61626c6520746f2066616c736504646f6e65"#]]
    .assert_eq(&hex(&bytes));
    assert_eq!(Machine::restore(&bytes).unwrap(), lobby);
}

#[test]
fn arena_snapshot_bytes_are_stable() {
    let mut arena = Machine::arena(Config::default());
    let mut effects = Vec::new();
    let order = PkOrder {
        pk: PkId(7),
        source: Seat { anchor: UserId(1), room: RoomId(1) },
        target: Seat { anchor: UserId(2), room: RoomId(2) },
        interfered: true,
        created_at: TimestampMs(10_000),
        timing: Config::default().timing,
    };
    arena.apply(&Command::new(10_000, ArenaAction::CreatePk(order)), &mut effects);
    let gift = Gift {
        id: GiftId(99),
        pk: PkId(7),
        receiver: UserId(2),
        sender: UserId(1001),
        beans: 520,
        profile: Some(Box::new(GifterProfile { nickname: "ann".into(), level: 14, ..GifterProfile::default() })),
    };
    arena.apply(&Command::new(12_000, ArenaAction::Gift(gift)), &mut effects);
    let bytes = arena.snapshot();
    expect![[r#"
        0401c0bb0101b817c0cf2400809f4909e58cb9e9858de8b59b80d30e809f490a
        80dddb010202494e0102504b02504b0102494e0107616e64726f6964cf018084
        af5fe0d403c0843d030107070101020201a09c01b817c0cf2400809f49000101
        0001000000000202900801000001e907900801010103616e6e000e0000000163
        e9079008c0bb010163000001988326000701000798832600000000"#]]
    .assert_eq(&hex(&bytes));
    assert_eq!(Machine::restore(&bytes).unwrap(), arena);
}

/// Format 3 had no gift ledger. This is the state of `arena_snapshot_bytes_are_stable`
/// as format 3 wrote it: one PK running, one gift counted.
const FORMAT_3_ARENA: &str = "\
    0301c0bb0101b817c0cf2400809f4909e58cb9e9858de8b59b80d30e809f490a\
    80dddb010202494e0102504b02504b0102494e0107616e64726f6964cf018084\
    af5fe0d403c0843d030107070101020201a09c01b817c0cf2400809f49000101\
    00010000000202900801000001e907900801010103616e6e000e000000016300\
    0001988326000701000798832600000000";

#[test]
fn format_3_arenas_restore_with_empty_ledgers_and_their_totals() {
    let bytes = unhex(FORMAT_3_ARENA);
    let Machine::Arena(mut arena) = Machine::restore(&bytes).unwrap() else { panic!("not an arena") };
    assert_eq!(Arena::restore(&bytes).unwrap(), arena);
    let view = arena.view(PkId(7)).unwrap();
    assert_eq!((view.source.beans, view.target.beans), (0, 520));
    arena.check_invariants().unwrap();
    // The gift counted before the upgrade is still a duplicate; one counted after it is
    // in the ledger, the earlier one is not.
    let mut effects = Vec::new();
    let gift = |id: u64| Gift {
        id: GiftId(id),
        pk: PkId(7),
        receiver: UserId(2),
        sender: UserId(5),
        beans: 10,
        profile: None,
    };
    let again = arena.apply(&Command::new(13_000, ArenaAction::Gift(gift(99))), &mut effects);
    assert_eq!(again, Response::GiftCounted { duplicate: true, side_beans: 520 });
    arena.apply(&Command::new(13_000, ArenaAction::Gift(gift(100))), &mut effects);
    arena.check_invariants().unwrap();
    arena.apply(
        &Command::new(10_000_000, Action::Fire(Timer::Arena(ArenaTimer::EndBattle { pk: PkId(7) }))),
        &mut effects,
    );
    let settled = arena.pending_results().next().expect("settled");
    assert_eq!(settled.target.beans, 530);
    let ledger: Vec<u64> = settled.target.gifts.iter().map(|gift| gift.id.0).collect();
    assert_eq!(ledger, [100]);
    // Written again, it is the current format and reads back the same.
    let again = arena.snapshot();
    assert_eq!(again[0], SNAPSHOT_FORMAT);
    assert_eq!(Arena::restore(&again).unwrap(), arena);
}

/// Format 2 had no audit log. This is the state of `lobby_snapshot_bytes_are_stable`,
/// before its audit entry, as format 2 wrote it.
const FORMAT_2_LOBBY: &str = "\
    0200f02e01b817c0cf2400809f4909e58cb9e9858de8b59b80d30e809f490a80\
    dddb010202494e0102504b02504b0102494e0107616e64726f6964cf018084af\
    5fe0d403c0843d030101030302494e07616e64726f6964ac02d00f0201d00f03\
    00000100000201010201020101020101010101020201010101020200f02eb817\
    c0cf2400809f4901e8cfdc030401010401e8cfdc03000000";

#[test]
fn format_2_snapshots_restore_with_an_empty_audit_log() {
    let bytes = unhex(FORMAT_2_LOBBY);
    let Machine::Lobby(lobby) = Machine::restore(&bytes).unwrap() else { panic!("not a lobby") };
    assert!(lobby.audit().is_empty());
    assert_eq!(lobby.summary().in_pk.len(), 2);
    assert_eq!(Lobby::restore(&bytes).unwrap(), lobby);
    // Written again, it is format 3 and reads back the same.
    let again = lobby.snapshot();
    assert_eq!(again[0], SNAPSHOT_FORMAT);
    assert_eq!(Lobby::restore(&again).unwrap(), lobby);
}

#[test]
fn the_audit_log_survives_a_snapshot_and_an_arena_holds_none() {
    let mut lobby = Lobby::fresh(Config::default());
    let mut effects = Vec::new();
    for i in 0..3 {
        let record =
            AuditRecord { id: i as u64, who: "ops".into(), what: format!("action {i}"), outcome: "done".into() };
        lobby.apply(&Command::new(i * 10, LobbyAction::RecordAudit(record)), &mut effects);
    }
    let restored = Lobby::restore(&lobby.snapshot()).unwrap();
    let entries: Vec<(u64, i64, &str)> =
        restored.audit().entries().map(|entry| (entry.seq, entry.at.0, entry.what.as_str())).collect();
    assert_eq!(entries, [(1, 0, "action 0"), (2, 10, "action 1"), (3, 20, "action 2")]);
    // A lobby's audit section glued to an arena is refused, and so are bytes past it.
    let arena = Arena::fresh(Config::default()).snapshot();
    let lobby_bytes = lobby.snapshot();
    let empty_lobby = Lobby::fresh(Config::default()).snapshot();
    let audit_section = &lobby_bytes[empty_lobby.len() - 1..];
    let mut glued = arena[..arena.len() - 1].to_vec();
    glued.extend_from_slice(audit_section);
    assert!(matches!(Machine::restore(&glued), Err(SnapshotError::Malformed(_))));
    let mut long = lobby_bytes.clone();
    long.push(0);
    assert!(matches!(Machine::restore(&long), Err(SnapshotError::Malformed(_))));
}

#[test]
fn unknown_formats_and_garbage_are_refused() {
    assert!(matches!(Machine::restore(&[]), Err(SnapshotError::Empty)));
    assert!(matches!(Machine::restore(&[SNAPSHOT_FORMAT + 1, 0]), Err(SnapshotError::UnknownFormat(_))));
    assert!(matches!(Machine::restore(&[SNAPSHOT_FORMAT, 9, 9, 9]), Err(SnapshotError::Decode(_))));
    let good = Machine::lobby(Config::default()).snapshot();
    assert!(Machine::restore(&good[..good.len() - 1]).is_err());
}

/// Format 1 held one timer type for both kinds of machine. This is the state of
/// `lobby_snapshot_bytes_are_stable` as format 1 wrote it.
const FORMAT_1_LOBBY: &str = "\
    0100f02e01b817c0cf2400809f4909e58cb9e9858de8b59b80d30e809f490a80\
    dddb010202494e0102504b02504b0102494e0107616e64726f6964cf018084af\
    5fe0d403c0843d030101030302494e07616e64726f6964ac02d00f0201d00f03\
    00000100000201010201020101020101010101020201010101020200f02eb817\
    c0cf2400809f4901e8cfdc030401010401e8cfdc03";

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

#[test]
fn format_1_snapshots_are_refused_with_the_format_this_version_reads() {
    let bytes = unhex(FORMAT_1_LOBBY);
    let error = Machine::restore(&bytes).unwrap_err();
    assert!(matches!(error, SnapshotError::UnknownFormat(1)));
    assert_eq!(error.to_string(), "snapshot format 1 is not known to this version (it reads formats 4, 3 and 2)");
    assert!(matches!(Lobby::restore(&bytes), Err(SnapshotError::UnknownFormat(1))));
}

#[test]
fn a_lobby_or_an_arena_snapshots_to_the_bytes_of_its_machine() {
    let mut lobby = Lobby::fresh(Config::default());
    let mut arena = Arena::fresh(Config::default());
    let mut effects = Vec::new();
    lobby.apply(
        &Command::new(2_000, LobbyAction::StartMatch { anchor: UserId(1), profile: profile(1), request: 0 }),
        &mut effects,
    );
    lobby.apply(
        &Command::new(3_000, LobbyAction::StartMatch { anchor: UserId(2), profile: profile(2), request: 0 }),
        &mut effects,
    );
    let order = lobby.pending_orders().next().unwrap().clone();
    arena.apply(&Command::new(3_000, ArenaAction::CreatePk(order)), &mut effects);

    let bytes = lobby.snapshot();
    assert_eq!(bytes, Machine::Lobby(lobby.clone()).snapshot());
    assert_eq!(Lobby::restore(&bytes).unwrap(), lobby);
    assert_eq!(Machine::restore(&bytes).unwrap(), Machine::Lobby(lobby));

    let bytes = arena.snapshot();
    assert_eq!(bytes, Machine::Arena(arena.clone()).snapshot());
    assert_eq!(Arena::restore(&bytes).unwrap(), arena);
    assert_eq!(Machine::restore(&bytes).unwrap(), Machine::Arena(arena));
}

#[test]
fn a_snapshot_of_the_other_kind_is_refused() {
    let lobby = Lobby::fresh(Config::default()).snapshot();
    let arena = Arena::fresh(Config::default()).snapshot();
    let error = Arena::restore(&lobby).unwrap_err();
    assert!(matches!(error, SnapshotError::WrongKind { expected: MachineKind::Arena, found: MachineKind::Lobby }));
    assert_eq!(error.to_string(), "snapshot is of kind lobby, expected kind arena");
    assert!(matches!(
        Lobby::restore(&arena),
        Err(SnapshotError::WrongKind { expected: MachineKind::Lobby, found: MachineKind::Arena })
    ));
}
