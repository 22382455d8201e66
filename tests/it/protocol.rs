//! The WebSocket wire format: bad input of every kind gets the right error reply,
//! our rendering of the source design's §4 examples matches them field by field,
//! every valid command survives a round trip, and no input makes the parser panic.

use pkd::gateway::protocol::{
    self, ClientCommand, ClientMessage, Echo, MAX_FRAME_BYTES, MatchAction, ProtocolErrorKind, Reply, ReplyResult,
    RoomRole, code, command_id, parse_frame, parse_text, render_pk_state, render_push,
};
use pkd_raft::effect::{Audience, MatchFailure, PkStatus, PkView, Push, PushMessage, SideView, TopGifter};
use pkd_raft::{GifterProfile, PkId, Reason, Response, RoomId, TimestampMs, UserId};
use proptest::prelude::*;
use serde_json::{Value, json};

// ---- the source's examples, verbatim ---------------------------------------------

const SOURCE_REQUEST_28: &str = r#"{
  "commandId": 28,
  "costTime": [],
  "initTime": 1626146346120,
  "logId": "socket_2__28",
  "msgType": "command",
  "roomId": 2,
  "secondInitTime": 1626146346120,
  "sequence": 0,
  "source": 2,
  "target": 1,
  "type": 1
}"#;

const SOURCE_REQUEST_27: &str = r#"{"sequence":3,"commandId":27,"msgType":"command","roomId":2100216,"fromUser":2100216,"toUser":2100216,"mode":"u","destination":"/room/2100216"}"#;

const SOURCE_REPLY_27: &str = r#"{"roomId":2100216,"destination":"/room/2100216","costTime":[3],"msgType":"command","fromUser":2100216,"toUser":2100216,"mode":"u","sequence":3,"commandId":-27,"code":"000000","desc":"Success!","result":"005AQAoADdEOEI5MkZBM0Y1OTJCNDVDNUNCQTkzRDU4RUNBQzRDNjBDQjI5MkMQAEcB/G2Rkk4nkb6anPCN/wytF+xglLKWKAAAAAAAAA=="}"#;

const SOURCE_PUSH_10: &str = r#"{
  "roomId": 2099934,
  "destination": null,
  "costTime": [],
  "msgType": "pub",
  "fromUser": -1,
  "toUser": -1,
  "mode": "m",
  "type": 10,
  "content": {
    "pkId": 19,
    "type": 1,
    "status": 1,
    "startTime": 1625811819212,
    "endTime": 1625811879212,
    "remainingTime": 4311,
    "sequelType": 0,
    "sourceUser": 2099955,
    "sourceRoom": 2099955,
    "sourceGifts": 1000,
    "sourceOnline": false,
    "sourceTopGifts": [
      {
        "consume": 1000,
        "user": {
          "id": 2100216,
          "agency": null,
          "crest": null,
          "nickname": "hello world",
          "headimg": "1607997789588.jpg",
          "level": 14,
          "roomlevel": 1,
          "vip": 0,
          "area": null,
          "sex": 2,
          "tags": null
        }
      }
    ],
    "targetUser": 2099934,
    "targetRoom": 2099934,
    "targetGifts": 0,
    "targetOnline": false,
    "targetTopGifts": []
  },
  "version": 1625811875201
}"#;

const SOURCE_PUSH_12: &str = r#"{
  "roomId": 2099934,
  "destination": null,
  "costTime": [],
  "msgType": "pub",
  "fromUser": -1,
  "toUser": -1,
  "mode": "u",
  "type": 12,
  "content": {
    "source": 2100216
  },
  "version": 1625811875201
}"#;

const SOURCE_PUSH_13: &str = r#"{
  "roomId": 2099934,
  "destination": null,
  "costTime": [],
  "msgType": "pub",
  "fromUser": -1,
  "toUser": -1,
  "mode": "u",
  "type": 13,
  "content": {
    "msg": 2100216
  },
  "version": 1625811875201
}"#;

/// The `version` (server clock) of the source's push examples.
const SOURCE_NOW: i64 = 1625811875201;

fn json(text: &str) -> Value {
    serde_json::from_str(text).expect("test JSON parses")
}

/// Asserts that `ours` has exactly the keys of `theirs`, recursively, each with a
/// value of the same JSON type (`null` only where they have `null`). Arrays are
/// compared element by element where both have elements.
fn assert_same_shape(ours: &Value, theirs: &Value, path: &str) {
    fn kind(value: &Value) -> &'static str {
        match value {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Number(number) if number.is_f64() => "float",
            Value::Number(_) => "integer",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }
    assert_eq!(kind(ours), kind(theirs), "type of {path}");
    match (ours, theirs) {
        (Value::Object(ours), Value::Object(theirs)) => {
            let our_keys: Vec<_> = ours.keys().collect();
            let their_keys: Vec<_> = theirs.keys().collect();
            assert_eq!(our_keys, their_keys, "keys of {path}");
            for (key, their_value) in theirs {
                assert_same_shape(&ours[key], their_value, &format!("{path}.{key}"));
            }
        }
        (Value::Array(ours), Value::Array(theirs)) => {
            for (index, (our_item, their_item)) in ours.iter().zip(theirs).enumerate() {
                assert_same_shape(our_item, their_item, &format!("{path}[{index}]"));
            }
        }
        _ => {}
    }
}

/// The source's type-10 example as a `PkView`.
fn source_example_view() -> PkView {
    PkView {
        pk: PkId(19),
        status: PkStatus::Battle,
        interfered: false,
        start_time: TimestampMs(1625811819212),
        end_time: TimestampMs(1625811879212),
        source: SideView {
            anchor: UserId(2099955),
            room: RoomId(2099955),
            beans: 1000,
            online: false,
            audience: 0,
            top_gifters: vec![TopGifter {
                sender: UserId(2100216),
                beans: 1000,
                profile: Some(GifterProfile {
                    nickname: "hello world".into(),
                    headimg: "1607997789588.jpg".into(),
                    level: 14,
                    roomlevel: 1,
                    vip: 0,
                    sex: 2,
                }),
            }],
        },
        target: SideView {
            anchor: UserId(2099934),
            room: RoomId(2099934),
            beans: 0,
            online: false,
            audience: 0,
            top_gifters: Vec::new(),
        },
        winner: None,
    }
}

// ---- golden: our rendering of the source's examples ------------------------------

#[test]
fn reply_to_27_is_the_source_example() {
    let request = parse_text(SOURCE_REQUEST_27).expect("the source's request parses");
    assert_eq!(request.command, ClientCommand::RtmToken { room: RoomId(2100216) });
    let token = json(SOURCE_REPLY_27)["result"].as_str().expect("token").to_owned();
    let reply = Reply::success(request.echo(), ReplyResult::Token(token)).to_user(UserId(2100216)).cost_ms(3);
    let ours = json(&reply.render());
    assert_same_shape(&ours, &json(SOURCE_REPLY_27), "reply27");
    assert_eq!(ours, json(SOURCE_REPLY_27));
    // Same key order as the source, too.
    assert_eq!(reply.render(), SOURCE_REPLY_27);
}

#[test]
fn reply_to_28_has_the_source_reply_shape() {
    let request = parse_text(SOURCE_REQUEST_28).expect("the source's request parses");
    assert_eq!(
        request.command,
        ClientCommand::Match { room: RoomId(2), action: MatchAction::Start { anchor: UserId(2) } }
    );
    assert_eq!(request.log_id.as_deref(), Some("socket_2__28"));
    assert_eq!(request.init_time, Some(1626146346120));

    // The source gives no reply to 28, only its codes; the shape is the one of the
    // reply to 27, with `destination` null because the request had none.
    let expected = json(
        r#"{"roomId":2,"destination":null,"costTime":[1],"msgType":"command","fromUser":2,"toUser":2,"mode":"u","sequence":0,"commandId":-28,"code":"000000","desc":"Success!","result":null}"#,
    );
    let queued = Reply::for_response(request.echo(), &Response::Waiting).to_user(UserId(2)).cost_ms(1);
    assert_eq!(queued.to_value(), expected);
    let mut shape_27 = json(SOURCE_REPLY_27);
    shape_27["destination"] = Value::Null;
    shape_27["result"] = Value::Null;
    assert_same_shape(&queued.to_value(), &shape_27, "reply28");

    // The source's three codes.
    let matched = Response::Matched { pk: PkId(19), source: UserId(1), target: UserId(2) };
    let cases = [
        (matched, "902004"),
        (Response::Rejected(Reason::InvitationTaken), "902003"),
        (Response::Rejected(Reason::AnchorBusy), "905033"),
        (Response::Rejected(Reason::NotMatching), "902006"),
    ];
    for (response, code) in cases {
        let reply = Reply::for_response(request.echo(), &response).to_value();
        assert_eq!(reply["code"], code);
        assert_eq!(reply["commandId"], -28);
        assert_eq!(reply["sequence"], 0);
        assert_eq!(reply["roomId"], 2);
        assert_eq!(reply["result"], Value::Null);
        assert!(reply["desc"].as_str().is_some_and(|desc| !desc.is_empty()));
    }
}

#[test]
fn push_10_is_the_source_example() {
    let push =
        Push { to: Audience::Room(RoomId(2099934)), message: PushMessage::PkState(Box::new(source_example_view())) };
    let ours = json(&render_push(&push, SOURCE_NOW));
    let theirs = json(SOURCE_PUSH_10);
    assert_same_shape(&ours, &theirs, "push10");
    // The example's remainingTime (4311) is not endTime - version (4011): the old
    // server computed it a moment before stamping the version. Ours is exact.
    assert_eq!(ours["content"]["remainingTime"], 1625811879212_i64 - SOURCE_NOW);
    let mut theirs = theirs;
    theirs["content"]["remainingTime"] = json!(1625811879212_i64 - SOURCE_NOW);
    assert_eq!(ours, theirs);
    // The periodic push, rendered from a replica's view, is the same message.
    assert_eq!(json(&render_pk_state(RoomId(2099934), &source_example_view(), SOURCE_NOW)), ours);
}

#[test]
fn push_12_is_the_source_example() {
    let push = Push {
        to: Audience::User { user: UserId(2099934), room: RoomId(2099934) },
        message: PushMessage::Invitation { inviter: UserId(2100216) },
    };
    let ours = json(&render_push(&push, SOURCE_NOW));
    assert_same_shape(&ours, &json(SOURCE_PUSH_12), "push12");
    assert_eq!(ours, json(SOURCE_PUSH_12));
}

#[test]
fn push_13_is_the_source_example() {
    let push = Push {
        to: Audience::User { user: UserId(2100216), room: RoomId(2099934) },
        message: PushMessage::MatchingStarted { anchor: UserId(2100216) },
    };
    let ours = json(&render_push(&push, SOURCE_NOW));
    assert_same_shape(&ours, &json(SOURCE_PUSH_13), "push13");
    assert_eq!(ours, json(SOURCE_PUSH_13));
}

#[test]
fn push_14_has_the_envelope_of_12() {
    for (why, reason) in [
        (MatchFailure::TimedOut, "timeout"),
        (MatchFailure::Disabled, "disabled"),
        (MatchFailure::VersionTooOld, "version"),
    ] {
        let push = Push {
            to: Audience::User { user: UserId(7), room: RoomId(70) },
            message: PushMessage::MatchFailed { anchor: UserId(7), why },
        };
        let ours = json(&render_push(&push, SOURCE_NOW));
        let mut expected = json(SOURCE_PUSH_12);
        expected["roomId"] = json!(70);
        expected["type"] = json!(14);
        expected["content"] = json!({"source": 7, "reason": reason});
        assert_eq!(ours, expected);
    }
}

#[test]
fn end_state_adds_winner_and_never_a_negative_remaining_time() {
    let mut view = source_example_view();
    view.status = PkStatus::Done;
    view.winner = Some(UserId(2099955));
    let after_end = 1625811879212 + 60_000;
    let ours = json(&render_pk_state(RoomId(2099955), &view, after_end));
    assert_eq!(ours["content"]["status"], 2);
    assert_eq!(ours["content"]["winner"], 2099955);
    assert_eq!(ours["content"]["remainingTime"], 0);
    assert_eq!(ours["mode"], "m");
    // Every field of the source's example is still there, with its type.
    let mut without_winner = ours.clone();
    without_winner["content"].as_object_mut().expect("content").remove("winner");
    assert_same_shape(&without_winner, &json(SOURCE_PUSH_10), "push10-end");

    // An abnormal end without a decided winner shows winner 0.
    view.status = PkStatus::Error;
    view.winner = None;
    let ours = json(&render_pk_state(RoomId(2099955), &view, after_end));
    assert_eq!(ours["content"]["status"], 3);
    assert_eq!(ours["content"]["winner"], 0);

    // The opening phase has no winner field at all.
    view.status = PkStatus::Opening;
    let ours = json(&render_pk_state(RoomId(2099955), &view, 0));
    assert_eq!(ours["content"]["status"], 0);
    assert!(ours["content"].get("winner").is_none());
}

#[test]
fn room_state_replies_carry_the_push_content() {
    let request = parse_text(r#"{"commandId":42,"msgType":"command","sequence":9,"roomId":2099934}"#).expect("parses");
    let content = protocol::PkStateContent::from_view(&source_example_view(), SOURCE_NOW);
    let reply = Reply::success(request.echo(), ReplyResult::PkState(Some(Box::new(content)))).to_value();
    assert_eq!(reply["commandId"], -42);
    let mut expected = json(SOURCE_PUSH_10)["content"].clone();
    expected["remainingTime"] = json!(1625811879212_i64 - SOURCE_NOW);
    assert_eq!(reply["result"], expected);
    let idle = Reply::success(request.echo(), ReplyResult::PkState(None)).to_value();
    assert_eq!(idle["result"], Value::Null);
}

// ---- bad input -------------------------------------------------------------------

#[test]
fn bad_input_gets_the_right_error_reply() {
    let oversized = format!(r#"{{"commandId":28,"sequence":1,"roomId":2,"pad":"{}"}}"#, "x".repeat(MAX_FRAME_BYTES));
    // (what, frame, code, echoed commandId, sequence, roomId)
    let cases: Vec<(&str, String, &str, Value, Value, Value)> = vec![
        ("empty frame", String::new(), code::MALFORMED_JSON, Value::Null, Value::Null, Value::Null),
        ("whitespace", "  \n ".into(), code::MALFORMED_JSON, Value::Null, Value::Null, Value::Null),
        ("not JSON", "hello".into(), code::MALFORMED_JSON, Value::Null, Value::Null, Value::Null),
        (
            "truncated JSON",
            r#"{"commandId":28,"sequence":1"#.into(),
            code::MALFORMED_JSON,
            Value::Null,
            Value::Null,
            Value::Null,
        ),
        ("array", r#"[{"commandId":28}]"#.into(), code::MALFORMED_JSON, Value::Null, Value::Null, Value::Null),
        ("number", "28".into(), code::MALFORMED_JSON, Value::Null, Value::Null, Value::Null),
        ("string", r#""command""#.into(), code::MALFORMED_JSON, Value::Null, Value::Null, Value::Null),
        ("null", "null".into(), code::MALFORMED_JSON, Value::Null, Value::Null, Value::Null),
        (
            "too deep",
            format!("{}{}", "[".repeat(200), "]".repeat(200)),
            code::MALFORMED_JSON,
            Value::Null,
            Value::Null,
            Value::Null,
        ),
        ("oversized", oversized, code::FRAME_TOO_LARGE, Value::Null, Value::Null, Value::Null),
        ("no commandId", r#"{"sequence":5,"roomId":2}"#.into(), code::BAD_FIELD, Value::Null, json!(5), json!(2)),
        (
            "commandId as a string",
            r#"{"commandId":"28","sequence":5,"roomId":2}"#.into(),
            code::BAD_FIELD,
            Value::Null,
            json!(5),
            json!(2),
        ),
        (
            "commandId as a fraction",
            r#"{"commandId":28.5,"sequence":5,"roomId":2}"#.into(),
            code::BAD_FIELD,
            Value::Null,
            json!(5),
            json!(2),
        ),
        (
            "unknown commandId",
            r#"{"commandId":99,"msgType":"command","sequence":5,"roomId":2}"#.into(),
            code::UNKNOWN_COMMAND,
            json!(-99),
            json!(5),
            json!(2),
        ),
        (
            "negative unknown commandId",
            r#"{"commandId":-28,"sequence":5,"roomId":2}"#.into(),
            code::UNKNOWN_COMMAND,
            json!(28),
            json!(5),
            json!(2),
        ),
        (
            "unknown commandId without a sequence",
            r#"{"commandId":45,"roomId":"x"}"#.into(),
            code::UNKNOWN_COMMAND,
            json!(-45),
            Value::Null,
            Value::Null,
        ),
        (
            "msgType pub",
            r#"{"commandId":28,"msgType":"pub","sequence":5,"roomId":2,"type":4,"source":2}"#.into(),
            code::BAD_FIELD,
            json!(-28),
            json!(5),
            json!(2),
        ),
        (
            "no sequence",
            r#"{"commandId":28,"roomId":2,"type":4,"source":2}"#.into(),
            code::BAD_FIELD,
            json!(-28),
            Value::Null,
            json!(2),
        ),
        (
            "negative sequence",
            r#"{"commandId":28,"sequence":-1,"roomId":2,"type":4,"source":2}"#.into(),
            code::BAD_FIELD,
            json!(-28),
            json!(-1),
            json!(2),
        ),
        (
            "sequence as a string",
            r#"{"commandId":28,"sequence":"5","roomId":2,"type":4,"source":2}"#.into(),
            code::BAD_FIELD,
            json!(-28),
            Value::Null,
            json!(2),
        ),
        (
            "no roomId",
            r#"{"commandId":28,"sequence":5,"type":4,"source":2}"#.into(),
            code::BAD_FIELD,
            json!(-28),
            json!(5),
            Value::Null,
        ),
        (
            "roomId as a string",
            r#"{"commandId":27,"sequence":5,"roomId":"2"}"#.into(),
            code::BAD_FIELD,
            json!(-27),
            json!(5),
            Value::Null,
        ),
        (
            "negative roomId",
            r#"{"commandId":42,"sequence":5,"roomId":-2}"#.into(),
            code::BAD_FIELD,
            json!(-42),
            json!(5),
            json!(-2),
        ),
        (
            "zero roomId",
            r#"{"commandId":40,"sequence":5,"roomId":0}"#.into(),
            code::BAD_FIELD,
            json!(-40),
            json!(5),
            json!(0),
        ),
        (
            "roomId above i64",
            r#"{"commandId":41,"sequence":5,"roomId":9223372036854775808}"#.into(),
            code::BAD_FIELD,
            json!(-41),
            json!(5),
            Value::Null,
        ),
        (
            "roomId above u64",
            r#"{"commandId":43,"sequence":5,"roomId":123456789012345678901234567890}"#.into(),
            code::BAD_FIELD,
            json!(-43),
            json!(5),
            Value::Null,
        ),
        (
            "huge sequence",
            r#"{"commandId":28,"sequence":1e300,"roomId":2,"type":4,"source":2}"#.into(),
            code::BAD_FIELD,
            json!(-28),
            Value::Null,
            json!(2),
        ),
        (
            "match without type",
            r#"{"commandId":28,"sequence":5,"roomId":2,"source":2}"#.into(),
            code::BAD_FIELD,
            json!(-28),
            json!(5),
            json!(2),
        ),
        (
            "match type 5",
            r#"{"commandId":28,"sequence":5,"roomId":2,"type":5,"source":2}"#.into(),
            code::BAD_FIELD,
            json!(-28),
            json!(5),
            json!(2),
        ),
        (
            "match type as a string",
            r#"{"commandId":28,"sequence":5,"roomId":2,"type":"1","source":2}"#.into(),
            code::BAD_FIELD,
            json!(-28),
            json!(5),
            json!(2),
        ),
        (
            "start without source",
            r#"{"commandId":28,"sequence":5,"roomId":2,"type":1}"#.into(),
            code::BAD_FIELD,
            json!(-28),
            json!(5),
            json!(2),
        ),
        (
            "accept without target",
            r#"{"commandId":28,"sequence":5,"roomId":2,"type":2,"source":1}"#.into(),
            code::BAD_FIELD,
            json!(-28),
            json!(5),
            json!(2),
        ),
        (
            "refuse with a negative target",
            r#"{"commandId":28,"sequence":5,"roomId":2,"type":3,"source":1,"target":-2}"#.into(),
            code::BAD_FIELD,
            json!(-28),
            json!(5),
            json!(2),
        ),
        (
            "source as a boolean",
            r#"{"commandId":28,"sequence":5,"roomId":2,"type":4,"source":true}"#.into(),
            code::BAD_FIELD,
            json!(-28),
            json!(5),
            json!(2),
        ),
        (
            "source as a float",
            r#"{"commandId":28,"sequence":5,"roomId":2,"type":4,"source":2.0}"#.into(),
            code::BAD_FIELD,
            json!(-28),
            json!(5),
            json!(2),
        ),
        (
            "enter with role 3",
            r#"{"commandId":40,"sequence":5,"roomId":2,"type":3}"#.into(),
            code::BAD_FIELD,
            json!(-40),
            json!(5),
            json!(2),
        ),
        (
            "logId as a number",
            r#"{"commandId":27,"sequence":5,"roomId":2,"logId":7}"#.into(),
            code::BAD_FIELD,
            json!(-27),
            json!(5),
            json!(2),
        ),
        (
            "initTime as a string",
            r#"{"commandId":27,"sequence":5,"roomId":2,"initTime":"now"}"#.into(),
            code::BAD_FIELD,
            json!(-27),
            json!(5),
            json!(2),
        ),
        (
            "heartbeat with a bad room",
            r#"{"commandId":44,"sequence":5,"roomId":-1}"#.into(),
            code::BAD_FIELD,
            json!(-44),
            json!(5),
            json!(-1),
        ),
    ];
    for (what, frame, expected_code, command_id, sequence, room_id) in cases {
        let error = parse_frame(frame.as_bytes()).expect_err(&format!("{what}: should be refused"));
        assert_eq!(error.code(), expected_code, "{what}: {error}");
        let reply = Reply::for_error(&error).to_value();
        assert_eq!(reply["code"], expected_code, "{what}");
        assert_eq!(reply["commandId"], command_id, "{what}: commandId");
        assert_eq!(reply["sequence"], sequence, "{what}: sequence");
        assert_eq!(reply["roomId"], room_id, "{what}: roomId");
        assert_eq!(reply["msgType"], "command", "{what}");
        assert_eq!(reply["mode"], "u", "{what}");
        assert_eq!(reply["result"], Value::Null, "{what}");
        assert!(reply["desc"].as_str().is_some_and(|desc| !desc.is_empty()), "{what}: desc");
        assert_same_shape_of_error(&reply);
    }
}

/// An error reply has every key of the source's reply to 27.
fn assert_same_shape_of_error(reply: &Value) {
    let mut ours: Vec<_> = reply.as_object().expect("object").keys().cloned().collect();
    let mut theirs: Vec<_> = json(SOURCE_REPLY_27).as_object().expect("object").keys().cloned().collect();
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs);
}

#[test]
fn bad_field_errors_name_the_field() {
    let error = parse_text(r#"{"commandId":28,"sequence":1,"roomId":2,"type":2,"source":"1","target":2}"#)
        .expect_err("source as a string");
    assert_eq!(error.kind.to_string(), "source: expected an integer, found a string");
    assert!(matches!(error.kind, ProtocolErrorKind::BadField { field: "source", .. }));
}

#[test]
fn a_frame_at_the_limit_is_parsed() {
    let head = r#"{"commandId":44,"sequence":1,"pad":""#;
    let tail = r#""}"#;
    let frame = format!("{head}{}{tail}", "x".repeat(MAX_FRAME_BYTES - head.len() - tail.len()));
    assert_eq!(frame.len(), MAX_FRAME_BYTES);
    assert!(parse_text(&frame).is_ok());
}

#[test]
fn unknown_fields_of_old_clients_are_ignored() {
    let frame = r#"{"commandId":28,"costTime":[1,2],"secondInitTime":"x","fromUser":{},"toUser":null,"mode":5,"destination":["a"],"msgType":"command","roomId":2,"sequence":0,"source":2,"type":4,"target":"ignored for stop"}"#;
    let message = parse_text(frame).expect("parses");
    assert_eq!(
        message.command,
        ClientCommand::Match { room: RoomId(2), action: MatchAction::Stop { anchor: UserId(2) } }
    );
    assert_eq!(message.destination, None);
}

#[test]
fn a_connection_acts_only_for_its_own_user() {
    let start = parse_text(SOURCE_REQUEST_28).expect("parses");
    assert!(start.authorize(UserId(2)).is_ok());
    let error = start.authorize(UserId(3)).expect_err("user 3 starting for 2");
    assert_eq!(error.code(), code::IMPERSONATION);
    let reply = Reply::for_error(&error).to_user(UserId(3)).to_value();
    assert_eq!(reply["commandId"], -28);
    assert_eq!(reply["sequence"], 0);
    assert_eq!(reply["toUser"], 3);

    // Accept and refuse act for the invitee (`target`), not the inviter.
    let accept =
        parse_text(r#"{"commandId":28,"sequence":1,"roomId":9,"type":2,"source":1,"target":9}"#).expect("parses");
    assert!(accept.authorize(UserId(9)).is_ok());
    assert_eq!(accept.authorize(UserId(1)).map_err(|error| error.code()), Err(code::IMPERSONATION));
    // Only the room's own anchor may enter it as its anchor.
    let host = parse_text(r#"{"commandId":40,"sequence":1,"roomId":9,"type":2}"#).expect("parses");
    assert!(host.authorize(UserId(9)).is_ok());
    assert_eq!(host.authorize(UserId(1)).map_err(|error| error.code()), Err(code::IMPERSONATION));
    let viewer = parse_text(r#"{"commandId":40,"sequence":1,"roomId":9,"type":1}"#).expect("parses");
    assert!(viewer.authorize(UserId(1)).is_ok());
    // Other commands name no actor.
    let state = parse_text(r#"{"commandId":42,"sequence":1,"roomId":9}"#).expect("parses");
    assert!(state.authorize(UserId(1)).is_ok());
}

#[test]
fn session_level_errors_echo_the_request() {
    let message = parse_text(SOURCE_REQUEST_27).expect("parses");
    for (error, expected) in [
        (protocol::ProtocolError::not_authenticated(message.echo()), code::NOT_AUTHENTICATED),
        (protocol::ProtocolError::rate_limited(message.echo()), code::RATE_LIMITED),
    ] {
        let reply = Reply::for_error(&error).to_value();
        assert_eq!(reply["code"], expected);
        assert_eq!(reply["commandId"], -27);
        assert_eq!(reply["sequence"], 3);
        assert_eq!(reply["roomId"], 2100216);
        assert_eq!(reply["destination"], "/room/2100216");
    }
}

#[test]
fn protocol_codes_do_not_collide_with_the_engine_codes() {
    let ours = [
        code::MALFORMED_JSON,
        code::UNKNOWN_COMMAND,
        code::BAD_FIELD,
        code::FRAME_TOO_LARGE,
        code::NOT_AUTHENTICATED,
        code::IMPERSONATION,
        code::RATE_LIMITED,
        code::UNAVAILABLE,
    ];
    let engine = [
        Reason::InvitationTaken,
        Reason::AnchorBusy,
        Reason::PkDisabled,
        Reason::VersionTooOld,
        Reason::AlreadyMatching,
        Reason::NotMatching,
        Reason::NoSuchInvitation,
        Reason::InvitationWithdrawn,
        Reason::InvitationExpired,
        Reason::CountryFiltered,
        Reason::AlreadyAnswered,
        Reason::NotLive,
        Reason::NoSuchPk,
        Reason::NotInBattle,
        Reason::NotASide,
        Reason::BeansNotPositive,
        Reason::BeansTooLarge,
        Reason::TooManyGifts,
        Reason::BeansOverflow,
        Reason::InvalidConfig(String::new()),
        Reason::WrongGroup,
    ];
    for reason in &engine {
        assert!(!ours.contains(&reason.code()), "{}", reason.code());
    }
    assert!(!ours.contains(&"902004") && !ours.contains(&code::SUCCESS));
    let mut sorted = ours.to_vec();
    sorted.dedup();
    assert_eq!(sorted.len(), ours.len());
}

// ---- round trips -----------------------------------------------------------------

fn every_valid_command() -> Vec<ClientMessage> {
    let room = RoomId(2099934);
    let commands = vec![
        ClientCommand::RtmToken { room },
        ClientCommand::Match { room, action: MatchAction::Start { anchor: UserId(2099934) } },
        ClientCommand::Match {
            room,
            action: MatchAction::Accept { inviter: UserId(2100216), invitee: UserId(2099934) },
        },
        ClientCommand::Match {
            room,
            action: MatchAction::Refuse { inviter: UserId(2100216), invitee: UserId(2099934) },
        },
        ClientCommand::Match { room, action: MatchAction::Stop { anchor: UserId(i64::MAX as u64) } },
        ClientCommand::EnterRoom { room, role: RoomRole::Viewer },
        ClientCommand::EnterRoom { room, role: RoomRole::Anchor },
        ClientCommand::LeaveRoom { room },
        ClientCommand::RoomPkState { room },
        ClientCommand::GoOnMic { room },
        ClientCommand::Heartbeat { room: Some(room) },
        ClientCommand::Heartbeat { room: None },
    ];
    let mut messages = Vec::new();
    for (index, command) in commands.into_iter().enumerate() {
        let index = index as i64;
        messages.push(ClientMessage {
            sequence: index,
            destination: None,
            log_id: None,
            init_time: None,
            command: command.clone(),
        });
        messages.push(ClientMessage {
            sequence: i64::MAX - index,
            destination: Some(format!("/room/{}", room.0)),
            log_id: Some(format!("socket_{index}")),
            init_time: Some(1626146346120 + index),
            command,
        });
    }
    messages
}

#[test]
fn every_valid_command_round_trips() {
    let messages = every_valid_command();
    let ids: std::collections::BTreeSet<i64> = messages.iter().map(|message| message.command.command_id()).collect();
    assert_eq!(
        ids.into_iter().collect::<Vec<_>>(),
        vec![
            command_id::RTM_TOKEN,
            command_id::MATCH,
            command_id::ENTER_ROOM,
            command_id::LEAVE_ROOM,
            command_id::ROOM_PK_STATE,
            command_id::GO_ON_MIC,
            command_id::HEARTBEAT,
        ]
    );
    for message in messages {
        let frame = message.encode();
        let parsed = parse_text(&frame).unwrap_or_else(|error| panic!("{frame}: {error}"));
        assert_eq!(parsed, message, "{frame}");
        // The reply echoes what the request carried.
        let reply = Reply::success(parsed.echo(), ReplyResult::Null).to_value();
        assert_eq!(reply["commandId"], -message.command.command_id());
        assert_eq!(reply["sequence"], message.sequence);
        match message.command.room() {
            Some(room) => assert_eq!(reply["roomId"], room.0),
            None => assert_eq!(reply["roomId"], Value::Null),
        }
    }
}

#[test]
fn entering_defaults_to_a_viewer() {
    let message = parse_text(r#"{"commandId":40,"msgType":"command","sequence":1,"roomId":5}"#).expect("parses");
    assert_eq!(message.command, ClientCommand::EnterRoom { room: RoomId(5), role: RoomRole::Viewer });
}

#[test]
fn heartbeat_reply_carries_the_server_time() {
    let message = parse_text(r#"{"commandId":44,"sequence":8}"#).expect("parses");
    let reply = Reply::success(message.echo(), ReplyResult::ServerTime(SOURCE_NOW)).to_value();
    assert_eq!(reply["commandId"], -44);
    assert_eq!(reply["result"], SOURCE_NOW);
    assert_eq!(reply["roomId"], Value::Null);
}

// ---- no panics -------------------------------------------------------------------

/// Parses `frame`; a refusal must render as a JSON reply with a protocol code.
fn parse_and_answer(frame: &[u8]) {
    match parse_frame(frame) {
        Ok(message) => {
            let reparsed = parse_text(&message.encode()).expect("encoded messages parse");
            assert_eq!(reparsed, message);
        }
        Err(error) => {
            let reply: Value = serde_json::from_str(&Reply::for_error(&error).render()).expect("replies are JSON");
            let code = reply["code"].as_str().expect("code");
            assert!(code.starts_with("90000"), "{code}");
        }
    }
}

/// A JSON value of any shape, small.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|n| json!(n)),
        "[a-z0-9/]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A command-like object: known keys with values of any shape.
fn command_like() -> impl Strategy<Value = Value> {
    let command_id = prop_oneof![Just(json!(27)), Just(json!(28)), (40i64..=44).prop_map(|n| json!(n)), any_json(),];
    let small_or_any = || prop_oneof![(-2i64..5).prop_map(|n| json!(n)), any_json()];
    (command_id, small_or_any(), small_or_any(), small_or_any(), small_or_any(), small_or_any(), any_json()).prop_map(
        |(command_id, sequence, room, kind, source, target, extra)| {
            json!({
                "commandId": command_id,
                "msgType": "command",
                "sequence": sequence,
                "roomId": room,
                "type": kind,
                "source": source,
                "target": target,
                "destination": extra,
            })
        },
    )
}

proptest! {
    #[test]
    fn arbitrary_strings_never_panic(frame in ".{0,256}") {
        parse_and_answer(frame.as_bytes());
    }

    #[test]
    fn arbitrary_bytes_never_panic(frame in prop::collection::vec(any::<u8>(), 0..512)) {
        parse_and_answer(&frame);
    }

    #[test]
    fn arbitrary_json_never_panics(value in any_json()) {
        parse_and_answer(value.to_string().as_bytes());
    }

    #[test]
    fn command_like_objects_never_panic(value in command_like()) {
        parse_and_answer(value.to_string().as_bytes());
    }

    #[test]
    fn remaining_time_is_never_negative(now in any::<i64>(), end in any::<i64>()) {
        let mut view = source_example_view();
        view.end_time = TimestampMs(end);
        let content = protocol::PkStateContent::from_view(&view, now);
        prop_assert!(content.remaining_time >= 0);
    }
}

#[test]
fn echo_of_a_valid_message_is_complete() {
    let message = parse_text(SOURCE_REQUEST_27).expect("parses");
    assert_eq!(
        message.echo(),
        Echo {
            command_id: Some(27),
            sequence: Some(3),
            room_id: Some(2100216),
            destination: Some("/room/2100216".into()),
        }
    );
}
