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
    let bytes = lobby.snapshot();
    assert_eq!(bytes[0], SNAPSHOT_FORMAT);
    expect![[r#"
        0200f02e01b817c0cf2400809f4909e58cb9e9858de8b59b80d30e809f490a80
        dddb010202494e0102504b02504b0102494e0107616e64726f6964cf018084af
        5fe0d403c0843d030101030302494e07616e64726f6964ac02d00f0201d00f03
        00000100000201010201020101020101010101020201010101020200f02eb817
        c0cf2400809f4901e8cfdc030401010401e8cfdc03000000"#]]
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
        0201c0bb0101b817c0cf2400809f4909e58cb9e9858de8b59b80d30e809f490a
        80dddb010202494e0102504b02504b0102494e0107616e64726f6964cf018084
        af5fe0d403c0843d030107070101020201a09c01b817c0cf2400809f49000101
        00010000000202900801000001e907900801010103616e6e000e000000016300
        000198832600070100079883260000"#]]
    .assert_eq(&hex(&bytes));
    assert_eq!(Machine::restore(&bytes).unwrap(), arena);
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
    assert_eq!(error.to_string(), "snapshot format 1 is not known to this version (it reads format 2 only)");
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
