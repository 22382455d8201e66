//! Scenario scripts for every rule of the core. Each prints every response and effect;
//! the expected text is the specification. Update with `UPDATE_EXPECT=1 cargo test`
//! and read the diff.

mod support;

use expect_test::{Expect, expect};
use pkd_raft::{PkId, PkStatus, TimestampMs};
use support::World;

/// Short timings for readable scripts: opening 1 s, battle 10 s, no after-stage;
/// intervene after 1 s, give up after 5 s, 2 invitations per batch, 3 s cool-down.
const FAST: &str = "
config pk_duration 1000,10000,0,60000
config pk_config {'name':'test','interveningTime':1000,'endTime':5000,'inviteNum':2,'inviteColdDown':3000}
";

fn check(script: &str, expected: Expect) {
    let mut world = World::new();
    world.run(FAST);
    let out = world.run(script);
    expected.assert_eq(&out);
}

#[test]
fn immediate_match_and_a_whole_pk() {
    check(
        "
        start a1 at=0
        start a2 at=100
        state
        tick at=1100
        gift pk=1 to=a2 from=v1 beans=50 id=1
        tick at=11099
        tick at=11100
        state
        ",
        expect![[r#"
            > start a1 at=0
              [lobby] waiting
                cache pkm a1 0
                push a1@room1 type13 matching a1
            > start a2 at=100
              [lobby] matched pk1 source=a1 target=a2 (902004)
                cache pkm a1 -
                cache pkr room1 1
                cache pkr room2 1
                ordered pk1 a1 vs a2 at=100 -> arena1
              [arena1] create pk1 done
                push room1 type10 pk1 Opening/0 100..11100 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                push room2 type10 pk1 Opening/0 100..11100 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                cache pk_1
              [lobby] confirm-created pk1 done
            > state
              lobby: now=100 waiting=[] in_pk=[a1:pk1,a2:pk1] live=0 open_invitations=[] cooldowns=0 outbox=[] next=Some(3611100)
              arena1: running=[1] outbox=[] remembered=0 next=Some(11100)
                pk1 Opening/0 100..11100 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
            > tick at=1100
            > gift pk=1 to=a2 from=v1 beans=50 id=1
              [arena1] counted side=50
                cache pkg_1_2 v1=50
                changed pk1
            > tick at=11099
            > tick at=11100
              [arena1] end-battle pk1 done
                push room1 type10 pk1 Done/2 100..11100 | a1[room1] 0 aud=0 top=[] | a2[room2] 50 aud=0 top=[v1:50] | winner=a2
                push room2 type10 pk1 Done/2 100..11100 | a1[room1] 0 aud=0 top=[] | a2[room2] 50 aud=0 top=[v1:50] | winner=a2
                push room1 type15 pk1 closed Done
                push room2 type15 pk1 closed Done
                cache ended pk_1 Done pkg_1_1 pkg_1_2
                settled pk1 Done(t_pk 2) 100..11100 dur=11000 | a1 0 aud=0 [] ledger=[] | a2 50 aud=0 [#1 v1:50x1] ledger=[1:v1:50@1100] | winner=a2
              [lobby] release pk1 done
                cache pkr room1 -
                cache pkr room2 -
              [arena1] confirm-released pk1 done
            > state
              lobby: now=11100 waiting=[] in_pk=[] live=0 open_invitations=[] cooldowns=0 outbox=[] next=None
              arena1: running=[] outbox=[1] remembered=1 next=Some(3611100)
        "#]],
    );
}

#[test]
fn queue_then_match_and_stop_while_waiting() {
    check(
        "
        start a1 at=0
        stop a1 at=10
        stop a1 at=20
        start a2 at=30
        start a3 at=40
        start a3 at=50
        tick at=1030
        ",
        expect![[r#"
            > start a1 at=0
              [lobby] waiting
                cache pkm a1 0
                push a1@room1 type13 matching a1
            > stop a1 at=10
              [lobby] done
                cache pkm a1 -
            > stop a1 at=20
              [lobby] rejected 902006 NotMatching
            > start a2 at=30
              [lobby] waiting
                cache pkm a2 30
                push a2@room2 type13 matching a2
            > start a3 at=40
              [lobby] matched pk1 source=a2 target=a3 (902004)
                cache pkm a2 -
                cache pkr room2 1
                cache pkr room3 1
                ordered pk1 a2 vs a3 at=40 -> arena1
              [arena1] create pk1 done
                push room2 type10 pk1 Opening/0 40..11040 | a2[room2] 0 aud=0 top=[] | a3[room3] 0 aud=0 top=[]
                push room3 type10 pk1 Opening/0 40..11040 | a2[room2] 0 aud=0 top=[] | a3[room3] 0 aud=0 top=[]
                cache pk_1
              [lobby] confirm-created pk1 done
            > start a3 at=50
              [lobby] rejected 905033 AnchorBusy
            > tick at=1030
        "#]],
    );
}

#[test]
fn two_anchors_start_at_the_same_log_position_against_one_waiting_anchor() {
    // Both starts carry the same leader time; the log still orders them, and the
    // waiting anchor leaves the queue in the first one's step.
    check(
        "
        start a1 at=0
        start a2 at=500
        start a3 at=500
        state
        ",
        expect![[r#"
            > start a1 at=0
              [lobby] waiting
                cache pkm a1 0
                push a1@room1 type13 matching a1
            > start a2 at=500
              [lobby] matched pk1 source=a1 target=a2 (902004)
                cache pkm a1 -
                cache pkr room1 1
                cache pkr room2 1
                ordered pk1 a1 vs a2 at=500 -> arena1
              [arena1] create pk1 done
                push room1 type10 pk1 Opening/0 500..11500 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                push room2 type10 pk1 Opening/0 500..11500 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                cache pk_1
              [lobby] confirm-created pk1 done
            > start a3 at=500
              [lobby] waiting
                cache pkm a3 500
                push a3@room3 type13 matching a3
            > state
              lobby: now=500 waiting=[a3] in_pk=[a1:pk1,a2:pk1] live=0 open_invitations=[] cooldowns=0 outbox=[] next=Some(1500)
              arena1: running=[1] outbox=[] remembered=0 next=Some(11500)
                pk1 Opening/0 500..11500 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
        "#]],
    );
}

#[test]
fn fifo_among_compatible_waiting_anchors() {
    check(
        "
        start a1 country=PK at=0
        start a2 country=IN at=10
        start a3 country=US at=20
        start a4 country=IN at=30
        state
        ",
        expect![[r#"
            > start a1 country=PK at=0
              [lobby] waiting
                cache pkm a1 0
                push a1@room1 type13 matching a1
            > start a2 country=IN at=10
              [lobby] waiting
                cache pkm a2 10
                push a2@room2 type13 matching a2
            > start a3 country=US at=20
              [lobby] matched pk1 source=a1 target=a3 (902004)
                cache pkm a1 -
                cache pkr room1 1
                cache pkr room3 1
                ordered pk1 a1 vs a3 at=20 -> arena1
              [arena1] create pk1 done
                push room1 type10 pk1 Opening/0 20..11020 | a1[room1] 0 aud=0 top=[] | a3[room3] 0 aud=0 top=[]
                push room3 type10 pk1 Opening/0 20..11020 | a1[room1] 0 aud=0 top=[] | a3[room3] 0 aud=0 top=[]
                cache pk_1
              [lobby] confirm-created pk1 done
            > start a4 country=IN at=30
              [lobby] matched pk2 source=a2 target=a4 (902004)
                cache pkm a2 -
                cache pkr room2 2
                cache pkr room4 2
                ordered pk2 a2 vs a4 at=30 -> arena0
              [arena0] create pk2 done
                push room2 type10 pk2 Opening/0 30..11030 | a2[room2] 0 aud=0 top=[] | a4[room4] 0 aud=0 top=[]
                push room4 type10 pk2 Opening/0 30..11030 | a2[room2] 0 aud=0 top=[] | a4[room4] 0 aud=0 top=[]
                cache pk_2
              [lobby] confirm-created pk2 done
            > state
              lobby: now=30 waiting=[] in_pk=[a1:pk1,a2:pk2,a3:pk1,a4:pk2] live=0 open_invitations=[] cooldowns=0 outbox=[] next=Some(3611020)
              arena0: running=[2] outbox=[] remembered=0 next=Some(11030)
                pk2 Opening/0 30..11030 | a2[room2] 0 aud=0 top=[] | a4[room4] 0 aud=0 top=[]
              arena1: running=[1] outbox=[] remembered=0 next=Some(11020)
                pk1 Opening/0 20..11020 | a1[room1] 0 aud=0 top=[] | a3[room3] 0 aud=0 top=[]
        "#]],
    );
}

#[test]
fn country_filter_applies_in_both_directions() {
    check(
        "
        start a1 country=IN at=0
        start a2 country=PK at=10
        start a3 country=PK at=20
        start a4 country=IN at=30
        state
        ",
        expect![[r#"
            > start a1 country=IN at=0
              [lobby] waiting
                cache pkm a1 0
                push a1@room1 type13 matching a1
            > start a2 country=PK at=10
              [lobby] waiting
                cache pkm a2 10
                push a2@room2 type13 matching a2
            > start a3 country=PK at=20
              [lobby] matched pk1 source=a2 target=a3 (902004)
                cache pkm a2 -
                cache pkr room2 1
                cache pkr room3 1
                ordered pk1 a2 vs a3 at=20 -> arena1
              [arena1] create pk1 done
                push room2 type10 pk1 Opening/0 20..11020 | a2[room2] 0 aud=0 top=[] | a3[room3] 0 aud=0 top=[]
                push room3 type10 pk1 Opening/0 20..11020 | a2[room2] 0 aud=0 top=[] | a3[room3] 0 aud=0 top=[]
                cache pk_1
              [lobby] confirm-created pk1 done
            > start a4 country=IN at=30
              [lobby] matched pk2 source=a1 target=a4 (902004)
                cache pkm a1 -
                cache pkr room1 2
                cache pkr room4 2
                ordered pk2 a1 vs a4 at=30 -> arena0
              [arena0] create pk2 done
                push room1 type10 pk2 Opening/0 30..11030 | a1[room1] 0 aud=0 top=[] | a4[room4] 0 aud=0 top=[]
                push room4 type10 pk2 Opening/0 30..11030 | a1[room1] 0 aud=0 top=[] | a4[room4] 0 aud=0 top=[]
                cache pk_2
              [lobby] confirm-created pk2 done
            > state
              lobby: now=30 waiting=[] in_pk=[a1:pk2,a2:pk1,a3:pk1,a4:pk2] live=0 open_invitations=[] cooldowns=0 outbox=[] next=Some(3611020)
              arena0: running=[2] outbox=[] remembered=0 next=Some(11030)
                pk2 Opening/0 30..11030 | a1[room1] 0 aud=0 top=[] | a4[room4] 0 aud=0 top=[]
              arena1: running=[1] outbox=[] remembered=0 next=Some(11020)
                pk1 Opening/0 20..11020 | a2[room2] 0 aud=0 top=[] | a3[room3] 0 aud=0 top=[]
        "#]],
    );
}

#[test]
fn old_client_versions_cannot_match() {
    check(
        "
        start a1 platform=android vc=206 at=0
        start a2 platform=android vc=207 at=10
        start a3 platform=ios vc=1 at=20
        start a4 platform=ios vc=1 at=25
        # Raising the bar drops a waiting client that no longer qualifies; android is
        # no longer gated.
        config version_control {pk:[{'vc':300,'p':'ios'}]} at=30
        start a1 platform=android vc=206 at=40
        state
        ",
        expect![[r#"
            > start a1 platform=android vc=206 at=0
              [lobby] rejected 902002 VersionTooOld
            > start a2 platform=android vc=207 at=10
              [lobby] waiting
                cache pkm a2 10
                push a2@room2 type13 matching a2
            > start a3 platform=ios vc=1 at=20
              [lobby] matched pk1 source=a2 target=a3 (902004)
                cache pkm a2 -
                cache pkr room2 1
                cache pkr room3 1
                ordered pk1 a2 vs a3 at=20 -> arena1
              [arena1] create pk1 done
                push room2 type10 pk1 Opening/0 20..11020 | a2[room2] 0 aud=0 top=[] | a3[room3] 0 aud=0 top=[]
                push room3 type10 pk1 Opening/0 20..11020 | a2[room2] 0 aud=0 top=[] | a3[room3] 0 aud=0 top=[]
                cache pk_1
              [lobby] confirm-created pk1 done
            > start a4 platform=ios vc=1 at=25
              [lobby] waiting
                cache pkm a4 25
                push a4@room4 type13 matching a4
            > config version_control {pk:[{'vc':300,'p':'ios'}]} at=30
              [lobby] done
                cache pkm a4 -
                push a4@room4 type14 match failed a4 VersionTooOld
              [arena0] done
              [arena1] done
            > start a1 platform=android vc=206 at=40
              [lobby] waiting
                cache pkm a1 40
                push a1@room1 type13 matching a1
            > state
              lobby: now=40 waiting=[a1] in_pk=[a2:pk1,a3:pk1] live=0 open_invitations=[] cooldowns=0 outbox=[] next=Some(1040)
              arena1: running=[1] outbox=[] remembered=0 next=Some(11020)
                pk1 Opening/0 20..11020 | a2[room2] 0 aud=0 top=[] | a3[room3] 0 aud=0 top=[]
        "#]],
    );
}

#[test]
fn busy_anchor_gets_905033() {
    check(
        "
        start a1 at=0
        start a2 at=0
        start a1 at=10
        start a2 at=10
        ",
        expect![[r#"
            > start a1 at=0
              [lobby] waiting
                cache pkm a1 0
                push a1@room1 type13 matching a1
            > start a2 at=0
              [lobby] matched pk1 source=a1 target=a2 (902004)
                cache pkm a1 -
                cache pkr room1 1
                cache pkr room2 1
                ordered pk1 a1 vs a2 at=0 -> arena1
              [arena1] create pk1 done
                push room1 type10 pk1 Opening/0 0..11000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                push room2 type10 pk1 Opening/0 0..11000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                cache pk_1
              [lobby] confirm-created pk1 done
            > start a1 at=10
              [lobby] rejected 905033 AnchorBusy
            > start a2 at=10
              [lobby] rejected 905033 AnchorBusy
        "#]],
    );
}

#[test]
fn intervention_invites_a_batch_honouring_cooldown_filters_and_versions() {
    // a1 waits. Live anchors in order of going live: a2 (PK: filtered), a3 (old
    // android), a4, a5, a6, a7. a8 is matching itself, so it is not invited either.
    check(
        "
        live a2 country=PK at=0
        live a3 vc=100 at=1
        live a4 at=2
        live a5 at=3
        live a6 at=4
        live a7 at=5
        start a1 at=100
        fire lobby intervene a1 at=1099
        tick at=1100
        state
        # The batch lapses after interveningTime: the next goes to a6 and a7 (a4 and a5
        # are cooling down).
        tick at=2100
        # a4 and a5 are out of their cool-down at 4100; a6, a7 at 5100, but a1 gives up
        # at 5100 first.
        tick at=3100
        tick at=4100
        tick at=5100
        state
        ",
        expect![[r#"
            > live a2 country=PK at=0
              [lobby] done
            > live a3 vc=100 at=1
              [lobby] done
            > live a4 at=2
              [lobby] done
            > live a5 at=3
              [lobby] done
            > live a6 at=4
              [lobby] done
            > live a7 at=5
              [lobby] done
            > start a1 at=100
              [lobby] waiting
                cache pkm a1 100
                push a1@room1 type13 matching a1
            > fire lobby intervene a1 at=1099
              [lobby] intervene a1 ignored
            > tick at=1100
              [lobby] intervene a1 done
                cache room_pk_invited a4 1100
                push a4@room4 type12 invitation from a1
                cache room_pk_invited a5 1100
                push a5@room5 type12 invitation from a1
            > state
              lobby: now=1100 waiting=[a1] in_pk=[] live=6 open_invitations=[a1->a4,a1->a5] cooldowns=2 outbox=[] next=Some(2100)
            > tick at=2100
              [lobby] intervene a1 done
                cache room_pk_invited a6 2100
                push a6@room6 type12 invitation from a1
                cache room_pk_invited a7 2100
                push a7@room7 type12 invitation from a1
            > tick at=3100
              [lobby] intervene a1 done
            > tick at=4100
              [lobby] intervene a1 done
              [lobby] end-cooldown a4 done
                cache room_pk_invited a4 -
              [lobby] end-cooldown a5 done
                cache room_pk_invited a5 -
            > tick at=5100
              [lobby] give-up a1 done
                cache pkm a1 -
                push a1@room1 type14 match failed a1 TimedOut
              [lobby] end-cooldown a6 done
                cache room_pk_invited a6 -
              [lobby] end-cooldown a7 done
                cache room_pk_invited a7 -
            > state
              lobby: now=5100 waiting=[] in_pk=[] live=6 open_invitations=[] cooldowns=0 outbox=[] next=Some(62100)
        "#]],
    );
}

#[test]
fn accept_race_has_one_winner_and_the_rest_are_taken() {
    check(
        "
        config pk_config {'interveningTime':1000,'endTime':5000,'inviteNum':4,'inviteColdDown':3000}
        live a2 at=0
        live a3 at=0
        live a4 at=0
        live a5 at=0
        start a1 at=10
        tick at=1010
        accept a1 a3 at=1200
        accept a1 a2 at=1200
        accept a1 a4 at=1201
        refuse a1 a5 at=1202
        accept a1 a3 at=1203
        state
        ",
        expect![[r#"
            > config pk_config {'interveningTime':1000,'endTime':5000,'inviteNum':4,'inviteColdDown':3000}
              [lobby] done
              [arena0] done
              [arena1] done
            > live a2 at=0
              [lobby] done
            > live a3 at=0
              [lobby] done
            > live a4 at=0
              [lobby] done
            > live a5 at=0
              [lobby] done
            > start a1 at=10
              [lobby] waiting
                cache pkm a1 10
                push a1@room1 type13 matching a1
            > tick at=1010
              [lobby] intervene a1 done
                cache room_pk_invited a2 1010
                push a2@room2 type12 invitation from a1
                cache room_pk_invited a3 1010
                push a3@room3 type12 invitation from a1
                cache room_pk_invited a4 1010
                push a4@room4 type12 invitation from a1
                cache room_pk_invited a5 1010
                push a5@room5 type12 invitation from a1
            > accept a1 a3 at=1200
              [lobby] matched pk1 source=a1 target=a3 (902004)
                cache pkm a1 -
                cache pkr room1 1
                cache pkr room3 1
                ordered pk1 a1 vs a3 (interfered) at=1200 -> arena1
              [arena1] create pk1 done
                push room1 type10 pk1 Opening/0 1200..12200 interfered | a1[room1] 0 aud=0 top=[] | a3[room3] 0 aud=0 top=[]
                push room3 type10 pk1 Opening/0 1200..12200 interfered | a1[room1] 0 aud=0 top=[] | a3[room3] 0 aud=0 top=[]
                cache pk_1
              [lobby] confirm-created pk1 done
            > accept a1 a2 at=1200
              [lobby] rejected 902003 InvitationTaken
            > accept a1 a4 at=1201
              [lobby] rejected 902003 InvitationTaken
            > refuse a1 a5 at=1202
              [lobby] rejected 902003 InvitationTaken
            > accept a1 a3 at=1203
              [lobby] rejected 905033 AnchorBusy
            > state
              lobby: now=1203 waiting=[] in_pk=[a1:pk1,a3:pk1] live=4 open_invitations=[] cooldowns=4 outbox=[] next=Some(4010)
              arena1: running=[1] outbox=[] remembered=0 next=Some(12200)
                pk1 Opening/0 1200..12200 interfered | a1[room1] 0 aud=0 top=[] | a3[room3] 0 aud=0 top=[]
        "#]],
    );
}

#[test]
fn all_refusals_bring_a_new_batch() {
    check(
        "
        live a2 at=0
        live a3 at=1
        live a4 at=2
        live a5 at=3
        start a1 at=10
        tick at=1010
        refuse a1 a2 at=1100
        refuse a1 a2 at=1110
        refuse a1 a3 at=1200
        accept a1 a4 at=1300
        ",
        expect![[r#"
            > live a2 at=0
              [lobby] done
            > live a3 at=1
              [lobby] done
            > live a4 at=2
              [lobby] done
            > live a5 at=3
              [lobby] done
            > start a1 at=10
              [lobby] waiting
                cache pkm a1 10
                push a1@room1 type13 matching a1
            > tick at=1010
              [lobby] intervene a1 done
                cache room_pk_invited a2 1010
                push a2@room2 type12 invitation from a1
                cache room_pk_invited a3 1010
                push a3@room3 type12 invitation from a1
            > refuse a1 a2 at=1100
              [lobby] done
            > refuse a1 a2 at=1110
              [lobby] rejected 902011 AlreadyAnswered
            > refuse a1 a3 at=1200
              [lobby] done
                cache room_pk_invited a4 1200
                push a4@room4 type12 invitation from a1
                cache room_pk_invited a5 1200
                push a5@room5 type12 invitation from a1
            > accept a1 a4 at=1300
              [lobby] matched pk1 source=a1 target=a4 (902004)
                cache pkm a1 -
                cache pkr room1 1
                cache pkr room4 1
                ordered pk1 a1 vs a4 (interfered) at=1300 -> arena1
              [arena1] create pk1 done
                push room1 type10 pk1 Opening/0 1300..12300 interfered | a1[room1] 0 aud=0 top=[] | a4[room4] 0 aud=0 top=[]
                push room4 type10 pk1 Opening/0 1300..12300 interfered | a1[room1] 0 aud=0 top=[] | a4[room4] 0 aud=0 top=[]
                cache pk_1
              [lobby] confirm-created pk1 done
        "#]],
    );
}

#[test]
fn answers_to_invitations_that_are_gone() {
    check(
        "
        live a2 at=0
        live a3 at=0
        start a1 at=10
        tick at=1010
        accept a9 a2 at=1020
        stop a1 at=1030
        accept a1 a2 at=1040
        start a1 at=1050
        tick at=2050
        # a2 and a3 are cooling down until 4010: nobody to invite in this batch.
        state
        tick at=4010
        # Cool-downs over: the next batch reaches them again, and the answer counts.
        tick at=5010
        accept a1 a2 at=5051
        ",
        expect![[r#"
            > live a2 at=0
              [lobby] done
            > live a3 at=0
              [lobby] done
            > start a1 at=10
              [lobby] waiting
                cache pkm a1 10
                push a1@room1 type13 matching a1
            > tick at=1010
              [lobby] intervene a1 done
                cache room_pk_invited a2 1010
                push a2@room2 type12 invitation from a1
                cache room_pk_invited a3 1010
                push a3@room3 type12 invitation from a1
            > accept a9 a2 at=1020
              [lobby] rejected 902007 NoSuchInvitation
            > stop a1 at=1030
              [lobby] done
                cache pkm a1 -
            > accept a1 a2 at=1040
              [lobby] rejected 902008 InvitationWithdrawn
            > start a1 at=1050
              [lobby] waiting
                cache pkm a1 1050
                push a1@room1 type13 matching a1
            > tick at=2050
              [lobby] intervene a1 done
            > state
              lobby: now=2050 waiting=[a1] in_pk=[] live=2 open_invitations=[] cooldowns=2 outbox=[] next=Some(3050)
            > tick at=4010
              [lobby] intervene a1 done
              [lobby] end-cooldown a2 done
                cache room_pk_invited a2 -
              [lobby] end-cooldown a3 done
                cache room_pk_invited a3 -
            > tick at=5010
              [lobby] intervene a1 done
                cache room_pk_invited a2 5010
                push a2@room2 type12 invitation from a1
                cache room_pk_invited a3 5010
                push a3@room3 type12 invitation from a1
            > accept a1 a2 at=5051
              [lobby] matched pk1 source=a1 target=a2 (902004)
                cache pkm a1 -
                cache pkr room1 1
                cache pkr room2 1
                ordered pk1 a1 vs a2 (interfered) at=5051 -> arena1
              [arena1] create pk1 done
                push room1 type10 pk1 Opening/0 5051..16051 interfered | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                push room2 type10 pk1 Opening/0 5051..16051 interfered | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                cache pk_1
              [lobby] confirm-created pk1 done
        "#]],
    );
}

#[test]
fn an_anchor_moving_to_another_node_stays_live_and_matching() {
    check(
        "
        live a1 node=1 at=0
        start a1 at=10
        live a1 node=2 at=500
        offair a1 node=1 at=600
        state
        offair a1 node=2 at=700
        state
        ",
        expect![[r#"
            > live a1 node=1 at=0
              [lobby] done
            > start a1 at=10
              [lobby] waiting
                cache pkm a1 10
                push a1@room1 type13 matching a1
            > live a1 node=2 at=500
              [lobby] done
            > offair a1 node=1 at=600
              [lobby] ignored
            > state
              lobby: now=600 waiting=[a1] in_pk=[] live=1 open_invitations=[] cooldowns=0 outbox=[] next=Some(1010)
            > offair a1 node=2 at=700
              [lobby] done
                cache pkm a1 -
            > state
              lobby: now=700 waiting=[] in_pk=[] live=0 open_invitations=[] cooldowns=0 outbox=[] next=None
        "#]],
    );
}

#[test]
fn invitee_going_off_air_counts_as_a_refusal_and_a_leaving_matcher_is_dropped() {
    check(
        "
        live a2 at=0
        live a3 at=0
        live a4 at=0
        start a1 at=10
        tick at=1010
        offair a2 at=1100
        offair a3 at=1200
        live a5 at=1300
        start a5 at=1300
        offair a5 at=1500
        start a6 at=1600
        offair a6 at=1700
        offair a6 at=1800
        state
        ",
        expect![[r#"
            > live a2 at=0
              [lobby] done
            > live a3 at=0
              [lobby] done
            > live a4 at=0
              [lobby] done
            > start a1 at=10
              [lobby] waiting
                cache pkm a1 10
                push a1@room1 type13 matching a1
            > tick at=1010
              [lobby] intervene a1 done
                cache room_pk_invited a2 1010
                push a2@room2 type12 invitation from a1
                cache room_pk_invited a3 1010
                push a3@room3 type12 invitation from a1
            > offair a2 at=1100
              [lobby] done
            > offair a3 at=1200
              [lobby] done
                cache room_pk_invited a4 1200
                push a4@room4 type12 invitation from a1
            > live a5 at=1300
              [lobby] done
            > start a5 at=1300
              [lobby] matched pk1 source=a1 target=a5 (902004)
                cache pkm a1 -
                cache pkr room1 1
                cache pkr room5 1
                ordered pk1 a1 vs a5 at=1300 -> arena1
              [arena1] create pk1 done
                push room1 type10 pk1 Opening/0 1300..12300 | a1[room1] 0 aud=0 top=[] | a5[room5] 0 aud=0 top=[]
                push room5 type10 pk1 Opening/0 1300..12300 | a1[room1] 0 aud=0 top=[] | a5[room5] 0 aud=0 top=[]
                cache pk_1
              [lobby] confirm-created pk1 done
            > offair a5 at=1500
              [lobby] done
            > start a6 at=1600
              [lobby] waiting
                cache pkm a6 1600
                push a6@room6 type13 matching a6
            > offair a6 at=1700
              [lobby] done
                cache pkm a6 -
            > offair a6 at=1800
              [lobby] ignored
            > state
              lobby: now=1800 waiting=[] in_pk=[a1:pk1,a5:pk1] live=1 open_invitations=[] cooldowns=3 outbox=[] next=Some(4010)
              arena1: running=[1] outbox=[] remembered=0 next=Some(12300)
                pk1 Opening/0 1300..12300 | a1[room1] 0 aud=0 top=[] | a5[room5] 0 aud=0 top=[]
        "#]],
    );
}

#[test]
fn give_up_after_end_time() {
    check(
        "
        start a1 at=0
        tick at=4999
        tick at=5000
        stop a1 at=5001
        state
        ",
        expect![[r#"
            > start a1 at=0
              [lobby] waiting
                cache pkm a1 0
                push a1@room1 type13 matching a1
            > tick at=4999
              [lobby] intervene a1 done
            > tick at=5000
              [lobby] give-up a1 done
                cache pkm a1 -
                push a1@room1 type14 match failed a1 TimedOut
            > stop a1 at=5001
              [lobby] rejected 902006 NotMatching
            > state
              lobby: now=5001 waiting=[] in_pk=[] live=0 open_invitations=[] cooldowns=0 outbox=[] next=None
        "#]],
    );
}

#[test]
fn pk_enable_off_mid_matching_and_mid_pk() {
    check(
        "
        start a1 at=0
        start a2 at=0
        start a3 at=10
        config pk_enable false at=20
        start a4 at=30
        state
        gift pk=1 to=a1 from=v1 beans=10 id=1 at=2000
        tick at=11000
        config pk_enable true at=12000
        start a4 at=12000
        ",
        expect![[r#"
            > start a1 at=0
              [lobby] waiting
                cache pkm a1 0
                push a1@room1 type13 matching a1
            > start a2 at=0
              [lobby] matched pk1 source=a1 target=a2 (902004)
                cache pkm a1 -
                cache pkr room1 1
                cache pkr room2 1
                ordered pk1 a1 vs a2 at=0 -> arena1
              [arena1] create pk1 done
                push room1 type10 pk1 Opening/0 0..11000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                push room2 type10 pk1 Opening/0 0..11000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                cache pk_1
              [lobby] confirm-created pk1 done
            > start a3 at=10
              [lobby] waiting
                cache pkm a3 10
                push a3@room3 type13 matching a3
            > config pk_enable false at=20
              [lobby] done
                cache pkm a3 -
                push a3@room3 type14 match failed a3 Disabled
              [arena0] done
              [arena1] done
            > start a4 at=30
              [lobby] rejected 902001 PkDisabled
            > state
              lobby: now=30 waiting=[] in_pk=[a1:pk1,a2:pk1] live=0 open_invitations=[] cooldowns=0 outbox=[] next=Some(3611000)
              arena1: running=[1] outbox=[] remembered=0 next=Some(11000)
                pk1 Opening/0 0..11000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
            > gift pk=1 to=a1 from=v1 beans=10 id=1 at=2000
              [arena1] counted side=10
                cache pkg_1_1 v1=10
                changed pk1
            > tick at=11000
              [arena1] end-battle pk1 done
                push room1 type10 pk1 Done/2 0..11000 | a1[room1] 10 aud=0 top=[v1:10] | a2[room2] 0 aud=0 top=[] | winner=a1
                push room2 type10 pk1 Done/2 0..11000 | a1[room1] 10 aud=0 top=[v1:10] | a2[room2] 0 aud=0 top=[] | winner=a1
                push room1 type15 pk1 closed Done
                push room2 type15 pk1 closed Done
                cache ended pk_1 Done pkg_1_1 pkg_1_2
                settled pk1 Done(t_pk 2) 0..11000 dur=11000 | a1 10 aud=0 [#1 v1:10x1] ledger=[1:v1:10@2000] | a2 0 aud=0 [] ledger=[] | winner=a1
              [lobby] release pk1 done
                cache pkr room1 -
                cache pkr room2 -
              [arena1] confirm-released pk1 done
            > config pk_enable true at=12000
              [lobby] done
              [arena0] done
              [arena1] done
            > start a4 at=12000
              [lobby] waiting
                cache pkm a4 12000
                push a4@room4 type13 matching a4
        "#]],
    );
}

#[test]
fn gifts_before_during_and_after_the_battle() {
    check(
        "
        start a1 at=0
        start a2 at=0
        gift pk=1 to=a1 from=v1 beans=10 id=1 at=999
        gift pk=1 to=a1 from=v1 beans=10 id=2 at=1000
        gift pk=1 to=a9 from=v1 beans=10 id=3
        gift pk=2 to=a1 from=v1 beans=10 id=4
        gift pk=1 to=a1 from=v1 beans=0 id=5
        gift pk=1 to=a1 from=v1 beans=-3 id=6
        gift pk=1 to=a1 from=v1 beans=100000001 id=7
        gift pk=1 to=a1 from=v1 beans=10 id=8 at=10999
        gift pk=1 to=a1 from=v1 beans=10 id=9 at=11000
        tick
        gift pk=1 to=a1 from=v1 beans=10 id=10
        ",
        expect![[r#"
            > start a1 at=0
              [lobby] waiting
                cache pkm a1 0
                push a1@room1 type13 matching a1
            > start a2 at=0
              [lobby] matched pk1 source=a1 target=a2 (902004)
                cache pkm a1 -
                cache pkr room1 1
                cache pkr room2 1
                ordered pk1 a1 vs a2 at=0 -> arena1
              [arena1] create pk1 done
                push room1 type10 pk1 Opening/0 0..11000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                push room2 type10 pk1 Opening/0 0..11000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                cache pk_1
              [lobby] confirm-created pk1 done
            > gift pk=1 to=a1 from=v1 beans=10 id=1 at=999
              [arena1] rejected 905041 NotInBattle
            > gift pk=1 to=a1 from=v1 beans=10 id=2 at=1000
              [arena1] counted side=10
                cache pkg_1_1 v1=10
                changed pk1
            > gift pk=1 to=a9 from=v1 beans=10 id=3
              [arena1] rejected 905042 NotASide
            > gift pk=2 to=a1 from=v1 beans=10 id=4
              [arena0] rejected 905040 NoSuchPk
            > gift pk=1 to=a1 from=v1 beans=0 id=5
              [arena1] rejected 905043 BeansNotPositive
            > gift pk=1 to=a1 from=v1 beans=-3 id=6
              [arena1] rejected 905043 BeansNotPositive
            > gift pk=1 to=a1 from=v1 beans=100000001 id=7
              [arena1] rejected 905044 BeansTooLarge
            > gift pk=1 to=a1 from=v1 beans=10 id=8 at=10999
              [arena1] counted side=20
                cache pkg_1_1 v1=20
                changed pk1
            > gift pk=1 to=a1 from=v1 beans=10 id=9 at=11000
              [arena1] rejected 905041 NotInBattle
            > tick
              [arena1] end-battle pk1 done
                push room1 type10 pk1 Done/2 0..11000 | a1[room1] 20 aud=0 top=[v1:20] | a2[room2] 0 aud=0 top=[] | winner=a1
                push room2 type10 pk1 Done/2 0..11000 | a1[room1] 20 aud=0 top=[v1:20] | a2[room2] 0 aud=0 top=[] | winner=a1
                push room1 type15 pk1 closed Done
                push room2 type15 pk1 closed Done
                cache ended pk_1 Done pkg_1_1 pkg_1_2
                settled pk1 Done(t_pk 2) 0..11000 dur=11000 | a1 20 aud=0 [#1 v1:20x2] ledger=[2:v1:10@1000 8:v1:10@10999] | a2 0 aud=0 [] ledger=[] | winner=a1
              [lobby] release pk1 done
                cache pkr room1 -
                cache pkr room2 -
              [arena1] confirm-released pk1 done
            > gift pk=1 to=a1 from=v1 beans=10 id=10
              [arena1] rejected 905040 NoSuchPk
        "#]],
    );
}

#[test]
fn duplicate_gift_ids_count_once() {
    check(
        "
        start a1 at=0
        start a2 at=0
        gift pk=1 to=a1 from=v1 beans=10 id=7 at=1000
        gift pk=1 to=a1 from=v1 beans=10 id=7 at=1001
        gift pk=1 to=a1 from=v1 beans=99 id=7 at=1002
        gift pk=1 to=a2 from=v1 beans=10 id=8 at=1003
        state
        ",
        expect![[r#"
            > start a1 at=0
              [lobby] waiting
                cache pkm a1 0
                push a1@room1 type13 matching a1
            > start a2 at=0
              [lobby] matched pk1 source=a1 target=a2 (902004)
                cache pkm a1 -
                cache pkr room1 1
                cache pkr room2 1
                ordered pk1 a1 vs a2 at=0 -> arena1
              [arena1] create pk1 done
                push room1 type10 pk1 Opening/0 0..11000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                push room2 type10 pk1 Opening/0 0..11000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                cache pk_1
              [lobby] confirm-created pk1 done
            > gift pk=1 to=a1 from=v1 beans=10 id=7 at=1000
              [arena1] counted side=10
                cache pkg_1_1 v1=10
                changed pk1
            > gift pk=1 to=a1 from=v1 beans=10 id=7 at=1001
              [arena1] counted (duplicate) side=10
            > gift pk=1 to=a1 from=v1 beans=99 id=7 at=1002
              [arena1] counted (duplicate) side=10
            > gift pk=1 to=a2 from=v1 beans=10 id=8 at=1003
              [arena1] counted side=10
                cache pkg_1_2 v1=10
                changed pk1
            > state
              lobby: now=0 waiting=[] in_pk=[a1:pk1,a2:pk1] live=0 open_invitations=[] cooldowns=0 outbox=[] next=Some(3611000)
              arena1: running=[1] outbox=[] remembered=0 next=Some(11000)
                pk1 Battle/1 0..11000 | a1[room1] 10 aud=0 top=[v1:10] | a2[room2] 10 aud=0 top=[v1:10]
        "#]],
    );
}

#[test]
fn the_ledger_holds_each_counted_gift_once() {
    // Counted gifts on both sides go out with the result, in the order counted; a
    // retried id, a refused gift and a gift too early or too late are not in it.
    check(
        "
        start a1 at=0
        start a2 at=0
        gift pk=1 to=a1 from=v1 beans=10 id=1 at=999
        gift pk=1 to=a1 from=v1 beans=10 id=2 at=1000
        gift pk=1 to=a2 from=v2 beans=7 id=3 at=1001
        gift pk=1 to=a1 from=v1 beans=99 id=2 at=1002
        gift pk=1 to=a2 from=v2 beans=7 id=3 at=1003
        gift pk=1 to=a1 from=v3 beans=0 id=4 at=1004
        gift pk=1 to=a9 from=v3 beans=5 id=5 at=1005
        gift pk=1 to=a1 from=v3 beans=5 id=6 at=1006
        gift pk=1 to=a1 from=v1 beans=5 id=7 at=11000
        tick
        ",
        expect![[r#"
            > start a1 at=0
              [lobby] waiting
                cache pkm a1 0
                push a1@room1 type13 matching a1
            > start a2 at=0
              [lobby] matched pk1 source=a1 target=a2 (902004)
                cache pkm a1 -
                cache pkr room1 1
                cache pkr room2 1
                ordered pk1 a1 vs a2 at=0 -> arena1
              [arena1] create pk1 done
                push room1 type10 pk1 Opening/0 0..11000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                push room2 type10 pk1 Opening/0 0..11000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                cache pk_1
              [lobby] confirm-created pk1 done
            > gift pk=1 to=a1 from=v1 beans=10 id=1 at=999
              [arena1] rejected 905041 NotInBattle
            > gift pk=1 to=a1 from=v1 beans=10 id=2 at=1000
              [arena1] counted side=10
                cache pkg_1_1 v1=10
                changed pk1
            > gift pk=1 to=a2 from=v2 beans=7 id=3 at=1001
              [arena1] counted side=7
                cache pkg_1_2 v2=7
                changed pk1
            > gift pk=1 to=a1 from=v1 beans=99 id=2 at=1002
              [arena1] counted (duplicate) side=10
            > gift pk=1 to=a2 from=v2 beans=7 id=3 at=1003
              [arena1] counted (duplicate) side=7
            > gift pk=1 to=a1 from=v3 beans=0 id=4 at=1004
              [arena1] rejected 905043 BeansNotPositive
            > gift pk=1 to=a9 from=v3 beans=5 id=5 at=1005
              [arena1] rejected 905042 NotASide
            > gift pk=1 to=a1 from=v3 beans=5 id=6 at=1006
              [arena1] counted side=15
                cache pkg_1_1 v3=5
                changed pk1
            > gift pk=1 to=a1 from=v1 beans=5 id=7 at=11000
              [arena1] rejected 905041 NotInBattle
            > tick
              [arena1] end-battle pk1 done
                push room1 type10 pk1 Done/2 0..11000 | a1[room1] 15 aud=0 top=[v1:10,v3:5] | a2[room2] 7 aud=0 top=[v2:7] | winner=a1
                push room2 type10 pk1 Done/2 0..11000 | a1[room1] 15 aud=0 top=[v1:10,v3:5] | a2[room2] 7 aud=0 top=[v2:7] | winner=a1
                push room1 type15 pk1 closed Done
                push room2 type15 pk1 closed Done
                cache ended pk_1 Done pkg_1_1 pkg_1_2
                settled pk1 Done(t_pk 2) 0..11000 dur=11000 | a1 15 aud=0 [#1 v1:10x1 #2 v3:5x1] ledger=[2:v1:10@1000 6:v3:5@1006] | a2 7 aud=0 [#1 v2:7x1] ledger=[3:v2:7@1001] | winner=a1
              [lobby] release pk1 done
                cache pkr room1 -
                cache pkr room2 -
              [arena1] confirm-released pk1 done
        "#]],
    );
}

#[test]
fn top_gifters_and_ranks_with_ties_to_the_earliest() {
    check(
        "
        start a1 at=0
        start a2 at=0
        gift pk=1 to=a1 from=v1 beans=100 id=1 nick=ann at=1000
        gift pk=1 to=a1 from=v2 beans=300 id=2 nick=bob
        gift pk=1 to=a1 from=v3 beans=200 id=3
        gift pk=1 to=a1 from=v4 beans=300 id=4
        gift pk=1 to=a1 from=v1 beans=200 id=5
        gift pk=1 to=a2 from=v5 beans=1000 id=6
        state
        tick at=11000
        ",
        expect![[r#"
            > start a1 at=0
              [lobby] waiting
                cache pkm a1 0
                push a1@room1 type13 matching a1
            > start a2 at=0
              [lobby] matched pk1 source=a1 target=a2 (902004)
                cache pkm a1 -
                cache pkr room1 1
                cache pkr room2 1
                ordered pk1 a1 vs a2 at=0 -> arena1
              [arena1] create pk1 done
                push room1 type10 pk1 Opening/0 0..11000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                push room2 type10 pk1 Opening/0 0..11000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                cache pk_1
              [lobby] confirm-created pk1 done
            > gift pk=1 to=a1 from=v1 beans=100 id=1 nick=ann at=1000
              [arena1] counted side=100
                cache pkg_1_1 v1=100
                changed pk1
            > gift pk=1 to=a1 from=v2 beans=300 id=2 nick=bob
              [arena1] counted side=400
                cache pkg_1_1 v2=300
                changed pk1
            > gift pk=1 to=a1 from=v3 beans=200 id=3
              [arena1] counted side=600
                cache pkg_1_1 v3=200
                changed pk1
            > gift pk=1 to=a1 from=v4 beans=300 id=4
              [arena1] counted side=900
                cache pkg_1_1 v4=300
                changed pk1
            > gift pk=1 to=a1 from=v1 beans=200 id=5
              [arena1] counted side=1100
                cache pkg_1_1 v1=300
                changed pk1
            > gift pk=1 to=a2 from=v5 beans=1000 id=6
              [arena1] counted side=1000
                cache pkg_1_2 v5=1000
                changed pk1
            > state
              lobby: now=0 waiting=[] in_pk=[a1:pk1,a2:pk1] live=0 open_invitations=[] cooldowns=0 outbox=[] next=Some(3611000)
              arena1: running=[1] outbox=[] remembered=0 next=Some(11000)
                pk1 Battle/1 0..11000 | a1[room1] 1100 aud=0 top=[v2(bob):300,v4:300,v1(ann):300] | a2[room2] 1000 aud=0 top=[v5:1000]
            > tick at=11000
              [arena1] end-battle pk1 done
                push room1 type10 pk1 Done/2 0..11000 | a1[room1] 1100 aud=0 top=[v2(bob):300,v4:300,v1(ann):300] | a2[room2] 1000 aud=0 top=[v5:1000] | winner=a1
                push room2 type10 pk1 Done/2 0..11000 | a1[room1] 1100 aud=0 top=[v2(bob):300,v4:300,v1(ann):300] | a2[room2] 1000 aud=0 top=[v5:1000] | winner=a1
                push room1 type15 pk1 closed Done
                push room2 type15 pk1 closed Done
                cache ended pk_1 Done pkg_1_1 pkg_1_2
                settled pk1 Done(t_pk 2) 0..11000 dur=11000 | a1 1100 aud=0 [#1 v2:300x1 #2 v4:300x1 #3 v1:300x2 #4 v3:200x1] ledger=[1:v1:100@1000 2:v2:300@1000 3:v3:200@1000 4:v4:300@1000 5:v1:200@1000] | a2 1000 aud=0 [#1 v5:1000x1] ledger=[6:v5:1000@1000] | winner=a1
              [lobby] release pk1 done
                cache pkr room1 -
                cache pkr room2 -
              [arena1] confirm-released pk1 done
        "#]],
    );
}

#[test]
fn equal_beans_is_a_draw() {
    check(
        "
        start a1 at=0
        start a2 at=0
        gift pk=1 to=a1 from=v1 beans=70 id=1 at=5000
        gift pk=1 to=a2 from=v2 beans=70 id=2 at=5000
        tick at=11000
        ",
        expect![[r#"
            > start a1 at=0
              [lobby] waiting
                cache pkm a1 0
                push a1@room1 type13 matching a1
            > start a2 at=0
              [lobby] matched pk1 source=a1 target=a2 (902004)
                cache pkm a1 -
                cache pkr room1 1
                cache pkr room2 1
                ordered pk1 a1 vs a2 at=0 -> arena1
              [arena1] create pk1 done
                push room1 type10 pk1 Opening/0 0..11000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                push room2 type10 pk1 Opening/0 0..11000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                cache pk_1
              [lobby] confirm-created pk1 done
            > gift pk=1 to=a1 from=v1 beans=70 id=1 at=5000
              [arena1] counted side=70
                cache pkg_1_1 v1=70
                changed pk1
            > gift pk=1 to=a2 from=v2 beans=70 id=2 at=5000
              [arena1] counted side=70
                cache pkg_1_2 v2=70
                changed pk1
            > tick at=11000
              [arena1] end-battle pk1 done
                push room1 type10 pk1 Done/2 0..11000 | a1[room1] 70 aud=0 top=[v1:70] | a2[room2] 70 aud=0 top=[v2:70] | winner=none
                push room2 type10 pk1 Done/2 0..11000 | a1[room1] 70 aud=0 top=[v1:70] | a2[room2] 70 aud=0 top=[v2:70] | winner=none
                push room1 type15 pk1 closed Done
                push room2 type15 pk1 closed Done
                cache ended pk_1 Done pkg_1_1 pkg_1_2
                settled pk1 Done(t_pk 2) 0..11000 dur=11000 | a1 70 aud=0 [#1 v1:70x1] ledger=[1:v1:70@5000] | a2 70 aud=0 [#1 v2:70x1] ledger=[2:v2:70@5000] | winner=none
              [lobby] release pk1 done
                cache pkr room1 -
                cache pkr room2 -
              [arena1] confirm-released pk1 done
        "#]],
    );
}

#[test]
fn admin_abort_ends_abnormally_without_a_winner() {
    check(
        "
        start a1 at=0
        start a2 at=0
        gift pk=1 to=a1 from=v1 beans=70 id=1 at=5000
        abort pk=1 at=6000
        abort pk=1 at=6001
        tick at=11000
        start a1 at=11000
        ",
        expect![[r#"
            > start a1 at=0
              [lobby] waiting
                cache pkm a1 0
                push a1@room1 type13 matching a1
            > start a2 at=0
              [lobby] matched pk1 source=a1 target=a2 (902004)
                cache pkm a1 -
                cache pkr room1 1
                cache pkr room2 1
                ordered pk1 a1 vs a2 at=0 -> arena1
              [arena1] create pk1 done
                push room1 type10 pk1 Opening/0 0..11000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                push room2 type10 pk1 Opening/0 0..11000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                cache pk_1
              [lobby] confirm-created pk1 done
            > gift pk=1 to=a1 from=v1 beans=70 id=1 at=5000
              [arena1] counted side=70
                cache pkg_1_1 v1=70
                changed pk1
            > abort pk=1 at=6000
              [arena1] done
                push room1 type10 pk1 Error/3 0..11000 | a1[room1] 70 aud=0 top=[v1:70] | a2[room2] 0 aud=0 top=[] | winner=none
                push room2 type10 pk1 Error/3 0..11000 | a1[room1] 70 aud=0 top=[v1:70] | a2[room2] 0 aud=0 top=[] | winner=none
                push room1 type15 pk1 closed Error
                push room2 type15 pk1 closed Error
                cache ended pk_1 Error pkg_1_1 pkg_1_2
                settled pk1 Error(t_pk 3) Aborted 0..6000 dur=6000 | a1 70 aud=0 [#1 v1:70x1] ledger=[1:v1:70@5000] | a2 0 aud=0 [] ledger=[] | winner=none
              [lobby] release pk1 done
                cache pkr room1 -
                cache pkr room2 -
              [arena1] confirm-released pk1 done
            > abort pk=1 at=6001
              [arena1] rejected 905040 NoSuchPk
            > tick at=11000
            > start a1 at=11000
              [lobby] waiting
                cache pkm a1 11000
                push a1@room1 type13 matching a1
        "#]],
    );
}

#[test]
fn an_anchor_away_past_the_grace_period_ends_the_pk_abnormally() {
    check(
        "
        config pk_limits {'anchorGraceMs':2000}
        start a1 at=0
        start a2 at=0
        presence pk=1 a1 online=true audience=40 at=1000
        presence pk=1 a2 online=false audience=5 at=2000
        presence pk=1 a2 online=true audience=6 at=3500
        tick at=4000
        presence pk=1 a2 online=false audience=6 at=5000
        presence pk=1 a1 online=true audience=12 at=6000
        tick at=6999
        tick at=7000
        ",
        expect![[r#"
            > config pk_limits {'anchorGraceMs':2000}
              [lobby] done
              [arena0] done
              [arena1] done
            > start a1 at=0
              [lobby] waiting
                cache pkm a1 0
                push a1@room1 type13 matching a1
            > start a2 at=0
              [lobby] matched pk1 source=a1 target=a2 (902004)
                cache pkm a1 -
                cache pkr room1 1
                cache pkr room2 1
                ordered pk1 a1 vs a2 at=0 -> arena1
              [arena1] create pk1 done
                push room1 type10 pk1 Opening/0 0..11000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                push room2 type10 pk1 Opening/0 0..11000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                cache pk_1
              [lobby] confirm-created pk1 done
            > presence pk=1 a1 online=true audience=40 at=1000
              [arena1] done
                changed pk1
            > presence pk=1 a2 online=false audience=5 at=2000
              [arena1] done
                changed pk1
            > presence pk=1 a2 online=true audience=6 at=3500
              [arena1] done
                changed pk1
            > tick at=4000
            > presence pk=1 a2 online=false audience=6 at=5000
              [arena1] done
                changed pk1
            > presence pk=1 a1 online=true audience=12 at=6000
              [arena1] done
                changed pk1
            > tick at=6999
            > tick at=7000
              [arena1] anchor-away pk1 a2 done
                push room1 type10 pk1 Error/3 0..11000 | a1[room1] 0 aud=12 top=[] | a2[room2] 0 away aud=6 top=[] | winner=none
                push room2 type10 pk1 Error/3 0..11000 | a1[room1] 0 aud=12 top=[] | a2[room2] 0 away aud=6 top=[] | winner=none
                push room1 type15 pk1 closed Error
                push room2 type15 pk1 closed Error
                cache ended pk_1 Error pkg_1_1 pkg_1_2
                settled pk1 Error(t_pk 3) AnchorLeft { anchor: UserId(2) } 0..7000 dur=7000 | a1 0 aud=40 [] ledger=[] | a2 0 aud=6 [] ledger=[] | winner=none
              [lobby] release pk1 done
                cache pkr room1 -
                cache pkr room2 -
              [arena1] confirm-released pk1 done
        "#]],
    );
}

#[test]
fn timer_commands_early_late_and_twice_are_no_ops() {
    check(
        "
        start a1 at=0
        start a2 at=0
        fire arena end-battle pk=1 at=10999
        fire arena end-battle pk=1 at=11000
        fire arena end-battle pk=1 at=11001
        fire arena end-battle pk=1 at=99999
        fire lobby give-up a1
        fire lobby intervene a1
        ",
        expect![[r#"
            > start a1 at=0
              [lobby] waiting
                cache pkm a1 0
                push a1@room1 type13 matching a1
            > start a2 at=0
              [lobby] matched pk1 source=a1 target=a2 (902004)
                cache pkm a1 -
                cache pkr room1 1
                cache pkr room2 1
                ordered pk1 a1 vs a2 at=0 -> arena1
              [arena1] create pk1 done
                push room1 type10 pk1 Opening/0 0..11000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                push room2 type10 pk1 Opening/0 0..11000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                cache pk_1
              [lobby] confirm-created pk1 done
            > fire arena end-battle pk=1 at=10999
              [arena1] end-battle pk1 ignored
            > fire arena end-battle pk=1 at=11000
              [arena1] end-battle pk1 done
                push room1 type10 pk1 Done/2 0..11000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[] | winner=none
                push room2 type10 pk1 Done/2 0..11000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[] | winner=none
                push room1 type15 pk1 closed Done
                push room2 type15 pk1 closed Done
                cache ended pk_1 Done pkg_1_1 pkg_1_2
                settled pk1 Done(t_pk 2) 0..11000 dur=11000 | a1 0 aud=0 [] ledger=[] | a2 0 aud=0 [] ledger=[] | winner=none
              [lobby] release pk1 done
                cache pkr room1 -
                cache pkr room2 -
              [arena1] confirm-released pk1 done
            > fire arena end-battle pk=1 at=11001
              [arena1] end-battle pk1 ignored
            > fire arena end-battle pk=1 at=99999
              [arena1] end-battle pk1 ignored
            > fire lobby give-up a1
              [lobby] give-up a1 ignored
            > fire lobby intervene a1
              [lobby] intervene a1 ignored
        "#]],
    );
}

#[test]
fn a_late_timer_still_fires_and_time_never_goes_back() {
    // The leader that should have ended the battle at 11000 died; the next one fires
    // at 15000 with the time it sees. A command stamped earlier by a lagging clock does
    // not move time back: the gift at "9000" arrives after the end.
    check(
        "
        start a1 at=0
        start a2 at=0
        tick at=15000
        gift pk=1 to=a1 from=v1 beans=1 id=1 at=9000
        ",
        expect![[r#"
            > start a1 at=0
              [lobby] waiting
                cache pkm a1 0
                push a1@room1 type13 matching a1
            > start a2 at=0
              [lobby] matched pk1 source=a1 target=a2 (902004)
                cache pkm a1 -
                cache pkr room1 1
                cache pkr room2 1
                ordered pk1 a1 vs a2 at=0 -> arena1
              [arena1] create pk1 done
                push room1 type10 pk1 Opening/0 0..11000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                push room2 type10 pk1 Opening/0 0..11000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                cache pk_1
              [lobby] confirm-created pk1 done
            > tick at=15000
              [arena1] end-battle pk1 done
                push room1 type10 pk1 Done/2 0..11000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[] | winner=none
                push room2 type10 pk1 Done/2 0..11000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[] | winner=none
                push room1 type15 pk1 closed Done
                push room2 type15 pk1 closed Done
                cache ended pk_1 Done pkg_1_1 pkg_1_2
                settled pk1 Done(t_pk 2) 0..15000 dur=15000 | a1 0 aud=0 [] ledger=[] | a2 0 aud=0 [] ledger=[] | winner=none
              [lobby] release pk1 done
                cache pkr room1 -
                cache pkr room2 -
              [arena1] confirm-released pk1 done
            > gift pk=1 to=a1 from=v1 beans=1 id=1 at=9000
              [arena1] rejected 905040 NoSuchPk
        "#]],
    );
}

#[test]
fn an_after_battle_stage_keeps_the_rooms_until_it_ends() {
    check(
        "
        config pk_duration 1000,10000,3000
        start a1 at=0
        start a2 at=0
        gift pk=1 to=a1 from=v1 beans=5 id=1 at=1000
        tick at=11000
        gift pk=1 to=a1 from=v1 beans=5 id=2 at=12000
        start a1 at=12000
        tick at=14000
        start a1 at=14000
        ",
        expect![[r#"
            > config pk_duration 1000,10000,3000
              [lobby] done
              [arena0] done
              [arena1] done
            > start a1 at=0
              [lobby] waiting
                cache pkm a1 0
                push a1@room1 type13 matching a1
            > start a2 at=0
              [lobby] matched pk1 source=a1 target=a2 (902004)
                cache pkm a1 -
                cache pkr room1 1
                cache pkr room2 1
                ordered pk1 a1 vs a2 at=0 -> arena1
              [arena1] create pk1 done
                push room1 type10 pk1 Opening/0 0..11000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                push room2 type10 pk1 Opening/0 0..11000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                cache pk_1
              [lobby] confirm-created pk1 done
            > gift pk=1 to=a1 from=v1 beans=5 id=1 at=1000
              [arena1] counted side=5
                cache pkg_1_1 v1=5
                changed pk1
            > tick at=11000
              [arena1] end-battle pk1 done
                push room1 type10 pk1 Ending/2 0..11000 | a1[room1] 5 aud=0 top=[v1:5] | a2[room2] 0 aud=0 top=[] | winner=a1
                push room2 type10 pk1 Ending/2 0..11000 | a1[room1] 5 aud=0 top=[v1:5] | a2[room2] 0 aud=0 top=[] | winner=a1
                cache pk_1
            > gift pk=1 to=a1 from=v1 beans=5 id=2 at=12000
              [arena1] rejected 905041 NotInBattle
            > start a1 at=12000
              [lobby] rejected 905033 AnchorBusy
            > tick at=14000
              [arena1] end-pk pk1 done
                push room1 type15 pk1 closed Done
                push room2 type15 pk1 closed Done
                cache ended pk_1 Done pkg_1_1 pkg_1_2
                settled pk1 Done(t_pk 2) 0..14000 dur=14000 | a1 5 aud=0 [#1 v1:5x1] ledger=[1:v1:5@1000] | a2 0 aud=0 [] ledger=[] | winner=a1
              [lobby] release pk1 done
                cache pkr room1 -
                cache pkr room2 -
              [arena1] confirm-released pk1 done
            > start a1 at=14000
              [lobby] waiting
                cache pkm a1 14000
                push a1@room1 type13 matching a1
        "#]],
    );
}

#[test]
fn config_changes_apply_at_their_log_position() {
    check(
        "
        start a1 at=0
        config pk_config {'interveningTime':300,'endTime':600,'inviteNum':1,'inviteColdDown':100} at=10
        start a2 country=PK at=20
        state
        tick at=620
        tick at=5000
        config pk_duration 1500,300000 at=5000
        config pk_enable maybe at=5000
        config pk_colour red at=5000
        state
        ",
        expect![[r#"
            > start a1 at=0
              [lobby] waiting
                cache pkm a1 0
                push a1@room1 type13 matching a1
            > config pk_config {'interveningTime':300,'endTime':600,'inviteNum':1,'inviteColdDown':100} at=10
              [lobby] done
              [arena0] done
              [arena1] done
            > start a2 country=PK at=20
              [lobby] waiting
                cache pkm a2 20
                push a2@room2 type13 matching a2
            > state
              lobby: now=20 waiting=[a1,a2] in_pk=[] live=0 open_invitations=[] cooldowns=0 outbox=[] next=Some(320)
            > tick at=620
              [lobby] intervene a2 done
              [lobby] give-up a2 done
                cache pkm a2 -
                push a2@room2 type14 match failed a2 TimedOut
            > tick at=5000
              [lobby] intervene a1 done
              [lobby] give-up a1 done
                cache pkm a1 -
                push a1@room1 type14 match failed a1 TimedOut
            > config pk_duration 1500,300000 at=5000
              [lobby] rejected 900010 InvalidConfig("pk_duration: expected 3 or 4 comma-separated milliseconds (opening,battle,ending[,rtmTokenValidity]), found 2")
              [arena0] rejected 900010 InvalidConfig("pk_duration: expected 3 or 4 comma-separated milliseconds (opening,battle,ending[,rtmTokenValidity]), found 2")
              [arena1] rejected 900010 InvalidConfig("pk_duration: expected 3 or 4 comma-separated milliseconds (opening,battle,ending[,rtmTokenValidity]), found 2")
            > config pk_enable maybe at=5000
              [lobby] rejected 900010 InvalidConfig("pk_enable: expected true or false, found 'maybe'")
              [arena0] rejected 900010 InvalidConfig("pk_enable: expected true or false, found 'maybe'")
              [arena1] rejected 900010 InvalidConfig("pk_enable: expected true or false, found 'maybe'")
            > config pk_colour red at=5000
              [lobby] rejected 900010 InvalidConfig("pk_colour: unknown config key")
              [arena0] rejected 900010 InvalidConfig("pk_colour: unknown config key")
              [arena1] rejected 900010 InvalidConfig("pk_colour: unknown config key")
            > state
              lobby: now=5000 waiting=[] in_pk=[] live=0 open_invitations=[] cooldowns=0 outbox=[] next=None
        "#]],
    );
}

#[test]
fn hand_overs_are_idempotent_and_safe_late() {
    // The lobby's order reaches the arena twice; the arena's release reaches the
    // lobby twice and late; confirmations repeat. Nothing happens twice.
    check(
        "
        hold
        start a1 at=0
        start a2 at=0
        state
        deliver twice
        hold
        tick at=11000
        deliver twice
        state
        # Long after, every hand-over arrives once more: still nothing happens.
        replay at=20000
        state
        ",
        expect![[r#"
            > hold
            > start a1 at=0
              [lobby] waiting
                cache pkm a1 0
                push a1@room1 type13 matching a1
            > start a2 at=0
              [lobby] matched pk1 source=a1 target=a2 (902004)
                cache pkm a1 -
                cache pkr room1 1
                cache pkr room2 1
                ordered pk1 a1 vs a2 at=0 -> arena1
            > state
              lobby: now=0 waiting=[] in_pk=[a1:pk1,a2:pk1] live=0 open_invitations=[] cooldowns=0 outbox=[1] next=Some(3611000)
            > deliver twice
              [arena1] create pk1 done
                push room1 type10 pk1 Opening/0 0..11000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                push room2 type10 pk1 Opening/0 0..11000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                cache pk_1
              [arena1] create pk1 ignored
              [lobby] confirm-created pk1 done
              [lobby] confirm-created pk1 ignored
            > hold
            > tick at=11000
              [arena1] end-battle pk1 done
                push room1 type10 pk1 Done/2 0..11000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[] | winner=none
                push room2 type10 pk1 Done/2 0..11000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[] | winner=none
                push room1 type15 pk1 closed Done
                push room2 type15 pk1 closed Done
                cache ended pk_1 Done pkg_1_1 pkg_1_2
                settled pk1 Done(t_pk 2) 0..11000 dur=11000 | a1 0 aud=0 [] ledger=[] | a2 0 aud=0 [] ledger=[] | winner=none
            > deliver twice
              [lobby] release pk1 done
                cache pkr room1 -
                cache pkr room2 -
              [lobby] release pk1 ignored
              [arena1] confirm-released pk1 done
              [arena1] confirm-released pk1 ignored
            > state
              lobby: now=11000 waiting=[] in_pk=[] live=0 open_invitations=[] cooldowns=0 outbox=[] next=None
              arena1: running=[] outbox=[1] remembered=1 next=Some(3611000)
            > replay at=20000
              [arena1] create pk1 ignored
              [lobby] confirm-created pk1 ignored
              [lobby] release pk1 ignored
              [arena1] confirm-released pk1 ignored
            > state
              lobby: now=20000 waiting=[] in_pk=[] live=0 open_invitations=[] cooldowns=0 outbox=[] next=None
              arena1: running=[] outbox=[1] remembered=1 next=Some(3611000)
        "#]],
    );
}

#[test]
fn rooms_of_an_order_no_arena_took_are_released_after_the_horizon() {
    // The arena never gets the order (say the cluster was down for an hour). The lobby
    // frees the rooms one hour past the PK's scheduled end; an order that finally
    // arrives after that is refused by the arena.
    check(
        "
        hold
        start a1 at=0
        start a2 at=0
        tick at=3610999
        tick at=3611000
        start a1 at=3611000
        deliver
        state
        ",
        expect![[r#"
            > hold
            > start a1 at=0
              [lobby] waiting
                cache pkm a1 0
                push a1@room1 type13 matching a1
            > start a2 at=0
              [lobby] matched pk1 source=a1 target=a2 (902004)
                cache pkm a1 -
                cache pkr room1 1
                cache pkr room2 1
                ordered pk1 a1 vs a2 at=0 -> arena1
            > tick at=3610999
            > tick at=3611000
              [lobby] abandon pk1 done
                cache pkr room1 -
                cache pkr room2 -
            > start a1 at=3611000
              [lobby] waiting
                cache pkm a1 3611000
                push a1@room1 type13 matching a1
            > deliver
              [arena1] create pk1 ignored
              [lobby] confirm-created pk1 ignored
            > state
              lobby: now=3611000 waiting=[a1] in_pk=[] live=0 open_invitations=[] cooldowns=0 outbox=[] next=Some(3612000)
        "#]],
    );
}

#[test]
fn presence_combines_every_nodes_fresh_report() {
    // Viewers of a1's room are on nodes 1 and 2; a1 itself is connected to node 2.
    // Node 1 does not see a1, yet a1 is online: one fresh "online" is enough.
    // When node 2 dies and its report goes stale (30 s), node 1's next report finds
    // a1 away, and the grace period starts.
    check(
        "
        config pk_duration 1000,100000,0,600000
        config pk_limits {'anchorGraceMs':5000}
        start a1 at=0
        start a2 at=0
        presence pk=1 a1 node=1 online=false audience=10 at=1000
        presence pk=1 a1 node=2 online=true audience=5 at=1000
        state
        presence pk=1 a1 node=1 online=false audience=12 at=20000
        state
        presence pk=1 a1 node=1 online=false audience=12 at=31001
        state
        tick at=36000
        tick at=36001
        ",
        expect![[r#"
            > config pk_duration 1000,100000,0,600000
              [lobby] done
              [arena0] done
              [arena1] done
            > config pk_limits {'anchorGraceMs':5000}
              [lobby] done
              [arena0] done
              [arena1] done
            > start a1 at=0
              [lobby] waiting
                cache pkm a1 0
                push a1@room1 type13 matching a1
            > start a2 at=0
              [lobby] matched pk1 source=a1 target=a2 (902004)
                cache pkm a1 -
                cache pkr room1 1
                cache pkr room2 1
                ordered pk1 a1 vs a2 at=0 -> arena1
              [arena1] create pk1 done
                push room1 type10 pk1 Opening/0 0..101000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                push room2 type10 pk1 Opening/0 0..101000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                cache pk_1
              [lobby] confirm-created pk1 done
            > presence pk=1 a1 node=1 online=false audience=10 at=1000
              [arena1] done
                changed pk1
            > presence pk=1 a1 node=2 online=true audience=5 at=1000
              [arena1] done
                changed pk1
            > state
              lobby: now=0 waiting=[] in_pk=[a1:pk1,a2:pk1] live=0 open_invitations=[] cooldowns=0 outbox=[] next=Some(3701000)
              arena1: running=[1] outbox=[] remembered=0 next=Some(101000)
                pk1 Battle/1 0..101000 | a1[room1] 0 aud=15 top=[] | a2[room2] 0 aud=0 top=[]
            > presence pk=1 a1 node=1 online=false audience=12 at=20000
              [arena1] done
                changed pk1
            > state
              lobby: now=0 waiting=[] in_pk=[a1:pk1,a2:pk1] live=0 open_invitations=[] cooldowns=0 outbox=[] next=Some(3701000)
              arena1: running=[1] outbox=[] remembered=0 next=Some(101000)
                pk1 Battle/1 0..101000 | a1[room1] 0 aud=17 top=[] | a2[room2] 0 aud=0 top=[]
            > presence pk=1 a1 node=1 online=false audience=12 at=31001
              [arena1] done
                changed pk1
            > state
              lobby: now=0 waiting=[] in_pk=[a1:pk1,a2:pk1] live=0 open_invitations=[] cooldowns=0 outbox=[] next=Some(3701000)
              arena1: running=[1] outbox=[] remembered=0 next=Some(36001)
                pk1 Battle/1 0..101000 | a1[room1] 0 away aud=12 top=[] | a2[room2] 0 aud=0 top=[]
            > tick at=36000
            > tick at=36001
              [arena1] anchor-away pk1 a1 done
                push room1 type10 pk1 Error/3 0..101000 | a1[room1] 0 away aud=12 top=[] | a2[room2] 0 aud=0 top=[] | winner=none
                push room2 type10 pk1 Error/3 0..101000 | a1[room1] 0 away aud=12 top=[] | a2[room2] 0 aud=0 top=[] | winner=none
                push room1 type15 pk1 closed Error
                push room2 type15 pk1 closed Error
                cache ended pk_1 Error pkg_1_1 pkg_1_2
                settled pk1 Error(t_pk 3) AnchorLeft { anchor: UserId(1) } 0..36001 dur=36001 | a1 0 aud=17 [] ledger=[] | a2 0 aud=0 [] ledger=[] | winner=none
              [lobby] release pk1 done
                cache pkr room1 -
                cache pkr room2 -
              [arena1] confirm-released pk1 done
        "#]],
    );
}

/// The action and timer types keep a caller from sending a command to the wrong kind of
/// group. One that arrives there all the same (a corrupted or misrouted message) is
/// refused with 900011 and changes nothing.
#[test]
fn commands_for_the_other_kind_of_group_are_refused_and_change_nothing() {
    check(
        "
        live a3 at=0
        start a1
        start a2 at=100
        start a4
        state
        to lobby gift pk=1 to=a2 from=v1 beans=50 id=1
        to lobby abort pk=1
        fire lobby end-battle pk=1
        to arena1 stop a4
        to arena1 accept a4 a3
        fire arena give-up a4 pk=1
        state
        ",
        expect![[r#"
            > live a3 at=0
              [lobby] done
            > start a1
              [lobby] waiting
                cache pkm a1 0
                push a1@room1 type13 matching a1
            > start a2 at=100
              [lobby] matched pk1 source=a1 target=a2 (902004)
                cache pkm a1 -
                cache pkr room1 1
                cache pkr room2 1
                ordered pk1 a1 vs a2 at=100 -> arena1
              [arena1] create pk1 done
                push room1 type10 pk1 Opening/0 100..11100 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                push room2 type10 pk1 Opening/0 100..11100 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                cache pk_1
              [lobby] confirm-created pk1 done
            > start a4
              [lobby] waiting
                cache pkm a4 100
                push a4@room4 type13 matching a4
            > state
              lobby: now=100 waiting=[a4] in_pk=[a1:pk1,a2:pk1] live=1 open_invitations=[] cooldowns=0 outbox=[] next=Some(1100)
              arena1: running=[1] outbox=[] remembered=0 next=Some(11100)
                pk1 Opening/0 100..11100 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
            > to lobby gift pk=1 to=a2 from=v1 beans=50 id=1
              [lobby] rejected 900011 WrongGroup
            > to lobby abort pk=1
              [lobby] rejected 900011 WrongGroup
            > fire lobby end-battle pk=1
              [lobby] end-battle pk1 rejected 900011 WrongGroup
            > to arena1 stop a4
              [arena1] rejected 900011 WrongGroup
            > to arena1 accept a4 a3
              [arena1] rejected 900011 WrongGroup
            > fire arena give-up a4 pk=1
              [arena1] give-up a4 rejected 900011 WrongGroup
            > state
              lobby: now=100 waiting=[a4] in_pk=[a1:pk1,a2:pk1] live=1 open_invitations=[] cooldowns=0 outbox=[] next=Some(1100)
              arena1: running=[1] outbox=[] remembered=0 next=Some(11100)
                pk1 Opening/0 100..11100 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
        "#]],
    );
}

#[test]
fn an_abort_in_the_after_battle_stage_keeps_the_announced_result() {
    check(
        "
        config pk_duration 1000,10000,3000
        start a1 at=0
        start a2 at=0
        gift pk=1 to=a1 from=v1 beans=5 id=1 at=1000
        tick at=11000
        abort pk=1 at=12000
        ",
        expect![[r#"
            > config pk_duration 1000,10000,3000
              [lobby] done
              [arena0] done
              [arena1] done
            > start a1 at=0
              [lobby] waiting
                cache pkm a1 0
                push a1@room1 type13 matching a1
            > start a2 at=0
              [lobby] matched pk1 source=a1 target=a2 (902004)
                cache pkm a1 -
                cache pkr room1 1
                cache pkr room2 1
                ordered pk1 a1 vs a2 at=0 -> arena1
              [arena1] create pk1 done
                push room1 type10 pk1 Opening/0 0..11000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                push room2 type10 pk1 Opening/0 0..11000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                cache pk_1
              [lobby] confirm-created pk1 done
            > gift pk=1 to=a1 from=v1 beans=5 id=1 at=1000
              [arena1] counted side=5
                cache pkg_1_1 v1=5
                changed pk1
            > tick at=11000
              [arena1] end-battle pk1 done
                push room1 type10 pk1 Ending/2 0..11000 | a1[room1] 5 aud=0 top=[v1:5] | a2[room2] 0 aud=0 top=[] | winner=a1
                push room2 type10 pk1 Ending/2 0..11000 | a1[room1] 5 aud=0 top=[v1:5] | a2[room2] 0 aud=0 top=[] | winner=a1
                cache pk_1
            > abort pk=1 at=12000
              [arena1] done
                push room1 type15 pk1 closed Done
                push room2 type15 pk1 closed Done
                cache ended pk_1 Done pkg_1_1 pkg_1_2
                settled pk1 Done(t_pk 2) 0..12000 dur=12000 | a1 5 aud=0 [#1 v1:5x1] ledger=[1:v1:5@1000] | a2 0 aud=0 [] ledger=[] | winner=a1
              [lobby] release pk1 done
                cache pkr room1 -
                cache pkr room2 -
              [arena1] confirm-released pk1 done
        "#]],
    );
}

/// A view rendered at a clock's time is right at that time, although no command marked
/// the end of the opening: the phase follows the renderer's clock, never the log's past.
#[test]
fn a_view_at_a_later_time_shows_the_phase_of_that_time() {
    let mut world = World::new();
    world.run("config pk_duration 1000,10000,3000\nstart a1 at=0\nstart a2 at=0");
    let arena = world.arenas.iter().find_map(|arena| arena.as_arena().filter(|arena| arena.running().count() == 1));
    let arena = arena.expect("the PK runs on one arena");
    let pk = PkId(1);
    assert_eq!(arena.view(pk).map(|view| view.status), Some(PkStatus::Opening), "as of the log's last command");
    let status_at = |ms| arena.view_at(pk, TimestampMs(ms)).map(|view| view.status);
    assert_eq!(status_at(999), Some(PkStatus::Opening));
    assert_eq!(status_at(1_000), Some(PkStatus::Battle), "the opening ends at its time");
    assert_eq!(status_at(10_999), Some(PkStatus::Battle));
    assert_eq!(status_at(-5), Some(PkStatus::Opening), "a clock behind the log counts as the log's time");
}

/// The operator's placement of a group's leader is replicated state of every kind of
/// group: set, replaced, cleared, kept in snapshots.
#[test]
fn a_leader_placement_is_kept_by_both_kinds_of_group() {
    use pkd_raft::{Action, Command, Config, Lobby, Machine, SingleKind, StateMachine};
    for mut machine in [Machine::Lobby(Lobby::fresh(Config::default())), Machine::arena(Config::default())] {
        let mut effects = Vec::new();
        assert_eq!(machine.placement().placed, None);
        let placed = machine.apply(&Command::new(1, Action::PlaceLeader { node: Some(3) }), &mut effects);
        assert_eq!((placed, machine.placement().placed), (pkd_raft::Response::Done, Some(3)));
        machine.apply(&Command::new(2, Action::Drain { node: 1, draining: true }), &mut effects);
        machine.apply(&Command::new(2, Action::Drain { node: 2, draining: true }), &mut effects);
        machine.apply(&Command::new(2, Action::Drain { node: 2, draining: false }), &mut effects);
        let restored = Machine::restore(&machine.snapshot()).expect("restores");
        assert_eq!(restored.placement().placed, Some(3));
        assert_eq!(restored.placement().draining.iter().copied().collect::<Vec<_>>(), [1]);
        machine.apply(&Command::new(3, Action::PlaceLeader { node: None }), &mut effects);
        assert_eq!(machine.placement().placed, None);
        assert!(effects.is_empty(), "a placement has no effect on the PKs");
    }
}

/// While `version_control` has any rule, a client that does not say its platform or its
/// version is refused (902002): it might be one the gate keeps out. Without rules, anyone
/// may match.
#[test]
fn an_unknown_client_version_is_refused_while_the_gate_has_rules() {
    check(
        "
        start a1 platform= vc=0 at=0
        start a2 platform=android vc=0 at=1
        start a3 platform=web vc=5 at=2
        config version_control {pk:[]}
        start a1 platform= vc=0 at=10
        ",
        expect![[r#"
            > start a1 platform= vc=0 at=0
              [lobby] rejected 902002 VersionTooOld
            > start a2 platform=android vc=0 at=1
              [lobby] rejected 902002 VersionTooOld
            > start a3 platform=web vc=5 at=2
              [lobby] waiting
                cache pkm a3 2
                push a3@room3 type13 matching a3
            > config version_control {pk:[]}
              [lobby] done
              [arena0] done
              [arena1] done
            > start a1 platform= vc=0 at=10
              [lobby] matched pk1 source=a3 target=a1 (902004)
                cache pkm a3 -
                cache pkr room3 1
                cache pkr room1 1
                ordered pk1 a3 vs a1 at=10 -> arena1
              [arena1] create pk1 done
                push room3 type10 pk1 Opening/0 10..11010 | a3[room3] 0 aud=0 top=[] | a1[room1] 0 aud=0 top=[]
                push room1 type10 pk1 Opening/0 10..11010 | a3[room3] 0 aud=0 top=[] | a1[room1] 0 aud=0 top=[]
                cache pk_1
              [lobby] confirm-created pk1 done
        "#]],
    );
}

/// A start sent again with the same retry key (its answer was lost) gets the first
/// answer again while that outcome stands: queued, or matched into the PK it led to. A
/// start with another key is a new one: "already matching", "busy".
#[test]
fn a_retried_start_gets_its_first_answer_again() {
    check(
        "
        start a1 req=7 at=0
        start a1 req=7 at=1
        start a1 req=8 at=2
        start a2 req=9 at=3
        start a1 req=7 at=4
        start a2 req=9 at=5
        start a2 req=10 at=6
        abort pk=1 at=7
        start a1 req=7 at=8
        ",
        expect![[r#"
            > start a1 req=7 at=0
              [lobby] waiting
                cache pkm a1 0
                push a1@room1 type13 matching a1
            > start a1 req=7 at=1
              [lobby] waiting
            > start a1 req=8 at=2
              [lobby] rejected 902005 AlreadyMatching
            > start a2 req=9 at=3
              [lobby] matched pk1 source=a1 target=a2 (902004)
                cache pkm a1 -
                cache pkr room1 1
                cache pkr room2 1
                ordered pk1 a1 vs a2 at=3 -> arena1
              [arena1] create pk1 done
                push room1 type10 pk1 Opening/0 3..11003 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                push room2 type10 pk1 Opening/0 3..11003 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                cache pk_1
              [lobby] confirm-created pk1 done
            > start a1 req=7 at=4
              [lobby] matched pk1 source=a1 target=a2 (902004)
            > start a2 req=9 at=5
              [lobby] matched pk1 source=a1 target=a2 (902004)
            > start a2 req=10 at=6
              [lobby] rejected 905033 AnchorBusy
            > abort pk=1 at=7
              [arena1] done
                push room1 type10 pk1 Error/3 3..11003 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[] | winner=none
                push room2 type10 pk1 Error/3 3..11003 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[] | winner=none
                push room1 type15 pk1 closed Error
                push room2 type15 pk1 closed Error
                cache ended pk_1 Error pkg_1_1 pkg_1_2
                settled pk1 Error(t_pk 3) Aborted 3..7 dur=4 | a1 0 aud=0 [] ledger=[] | a2 0 aud=0 [] ledger=[] | winner=none
              [lobby] release pk1 done
                cache pkr room1 -
                cache pkr room2 -
              [arena1] confirm-released pk1 done
            > start a1 req=7 at=8
              [lobby] waiting
                cache pkm a1 8
                push a1@room1 type13 matching a1
        "#]],
    );
}

/// With each node's own results store, a settled PK leaves the outbox once every voter
/// confirmed storing it; a confirmation repeated, or for an unknown PK, changes nothing.
#[test]
fn every_voters_store_confirms_a_result_before_it_leaves_the_outbox() {
    check(
        "
        config pk_duration 0,1000,0
        start a1 at=0
        start a2 at=0
        tick at=1000
        stored pk=1 node=1
        stored pk=1 node=1
        stored pk=1 node=2
        state
        stored pk=1 node=3
        state
        stored pk=1 node=3
        stored pk=9 node=1
        ",
        expect![[r#"
            > config pk_duration 0,1000,0
              [lobby] done
              [arena0] done
              [arena1] done
            > start a1 at=0
              [lobby] waiting
                cache pkm a1 0
                push a1@room1 type13 matching a1
            > start a2 at=0
              [lobby] matched pk1 source=a1 target=a2 (902004)
                cache pkm a1 -
                cache pkr room1 1
                cache pkr room2 1
                ordered pk1 a1 vs a2 at=0 -> arena1
              [arena1] create pk1 done
                push room1 type10 pk1 Battle/1 0..1000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                push room2 type10 pk1 Battle/1 0..1000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[]
                cache pk_1
              [lobby] confirm-created pk1 done
            > tick at=1000
              [arena1] end-battle pk1 done
                push room1 type10 pk1 Done/2 0..1000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[] | winner=none
                push room2 type10 pk1 Done/2 0..1000 | a1[room1] 0 aud=0 top=[] | a2[room2] 0 aud=0 top=[] | winner=none
                push room1 type15 pk1 closed Done
                push room2 type15 pk1 closed Done
                cache ended pk_1 Done pkg_1_1 pkg_1_2
                settled pk1 Done(t_pk 2) 0..1000 dur=1000 | a1 0 aud=0 [] ledger=[] | a2 0 aud=0 [] ledger=[] | winner=none
              [lobby] release pk1 done
                cache pkr room1 -
                cache pkr room2 -
              [arena1] confirm-released pk1 done
            > stored pk=1 node=1
              [arena1] done
            > stored pk=1 node=1
              [arena1] ignored
            > stored pk=1 node=2
              [arena1] done
            > state
              lobby: now=1000 waiting=[] in_pk=[] live=0 open_invitations=[] cooldowns=0 outbox=[] next=None
              arena1: running=[] outbox=[1] remembered=1 next=Some(3601000)
            > stored pk=1 node=3
              [arena1] done
            > state
              lobby: now=1000 waiting=[] in_pk=[] live=0 open_invitations=[] cooldowns=0 outbox=[] next=None
              arena1: running=[] outbox=[] remembered=1 next=Some(3601000)
            > stored pk=1 node=3
              [arena1] ignored
            > stored pk=9 node=1
              [arena0] ignored
        "#]],
    );
}
