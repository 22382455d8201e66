//! `POST /internal/gifts`: gifts from the app's gift service (docs/protocol.md §8).
//!
//! The service has already charged the sender; pkd only counts. Every gift carries the
//! service's id, so a retried gift counts once. A batch's gifts are proposed together
//! and so share raft entries (group commit).

use super::refuse;
use crate::gateway::Gateway;
use crate::gateway::protocol::{self, code};
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response as HttpResponse};
use pkd_raft::{ArenaAction, Gift, GiftId, GifterProfile, PkId, Response, UserId};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;
use tracing::Instrument;

/// Bodies larger than this are refused with HTTP 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Gifts in one batch, at most.
pub const MAX_BATCH: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GiftIn {
    id: u64,
    #[serde(default)]
    pk_id: Option<u64>,
    receiver: u64,
    sender: u64,
    beans: i64,
    #[serde(default)]
    sender_profile: Option<ProfileIn>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct ProfileIn {
    nickname: String,
    headimg: String,
    level: u32,
    roomlevel: u32,
    vip: u32,
    sex: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchIn {
    gifts: Vec<GiftIn>,
}

fn check_id(name: &str, value: u64) -> Result<(), String> {
    if value == 0 || value > i64::MAX as u64 {
        return Err(format!("{name} must be between 1 and {}", i64::MAX));
    }
    Ok(())
}

impl GiftIn {
    fn check(&self) -> Result<(), String> {
        check_id("id", self.id)?;
        check_id("receiver", self.receiver)?;
        check_id("sender", self.sender)?;
        if let Some(pk) = self.pk_id {
            check_id("pkId", pk)?;
        }
        Ok(())
    }
}

/// `POST /internal/gifts`.
pub async fn post(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> HttpResponse {
    let Some(expected) = &gateway.config().gift_token else {
        return refuse(StatusCode::UNAUTHORIZED, code::NOT_AUTHENTICATED, "the gift API is not enabled on this node");
    };
    if !super::bearer::presents(&headers, expected) {
        return refuse(StatusCode::UNAUTHORIZED, code::NOT_AUTHENTICATED, "missing or wrong service token");
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let why = format!("the body is over {MAX_BODY_BYTES} bytes");
            return refuse(StatusCode::PAYLOAD_TOO_LARGE, code::FRAME_TOO_LARGE, why);
        }
        Err(rejection) => return refuse(rejection.status(), code::MALFORMED_JSON, rejection.body_text()),
    };
    let value: Value = match serde_json::from_slice(&body) {
        Ok(value) => value,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, code::MALFORMED_JSON, format!("malformed JSON: {e}")),
    };
    let batch = value.get("gifts").is_some();
    let gifts: Vec<GiftIn> = if batch {
        match serde_json::from_value::<BatchIn>(value) {
            Ok(batch) => batch.gifts,
            Err(e) => return refuse(StatusCode::BAD_REQUEST, code::BAD_FIELD, e.to_string()),
        }
    } else {
        match serde_json::from_value::<GiftIn>(value) {
            Ok(gift) => vec![gift],
            Err(e) => return refuse(StatusCode::BAD_REQUEST, code::BAD_FIELD, e.to_string()),
        }
    };
    if gifts.len() > MAX_BATCH {
        return refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            code::FRAME_TOO_LARGE,
            format!("at most {MAX_BATCH} gifts a batch"),
        );
    }
    for gift in &gifts {
        if let Err(why) = gift.check() {
            return refuse(StatusCode::BAD_REQUEST, code::BAD_FIELD, why);
        }
    }
    let began = std::time::Instant::now();
    let outcomes = futures_util::future::join_all(gifts.iter().map(|gift| apply(&gateway, gift))).await;
    crate::telemetry::gift_request_answered(began.elapsed());
    for outcome in &outcomes {
        let kind = match outcome.code.as_str() {
            code::SUCCESS if outcome.duplicate => "duplicate",
            code::SUCCESS => "counted",
            code::UNAVAILABLE => "unavailable",
            _ => "refused",
        };
        crate::telemetry::gift_answered(kind, &outcome.code);
    }
    if !batch {
        let outcome = &outcomes[0];
        if outcome.code == code::UNAVAILABLE {
            return refuse(StatusCode::SERVICE_UNAVAILABLE, code::UNAVAILABLE, outcome.desc.clone());
        }
        let result = if outcome.code == code::SUCCESS { outcome.result() } else { Value::Null };
        return Json(json!({ "code": outcome.code, "desc": outcome.desc, "result": result })).into_response();
    }
    let results: Vec<Value> = outcomes.iter().map(Outcome::entry).collect();
    Json(json!({ "code": code::SUCCESS, "desc": protocol::SUCCESS_DESC, "result": results })).into_response()
}

struct Outcome {
    id: u64,
    pk: Option<u64>,
    code: String,
    desc: String,
    duplicate: bool,
    side_beans: Option<i64>,
}

impl Outcome {
    fn result(&self) -> Value {
        json!({ "id": self.id, "pkId": self.pk, "duplicate": self.duplicate, "sideBeans": self.side_beans })
    }

    fn entry(&self) -> Value {
        json!({ "id": self.id, "code": self.code, "desc": self.desc, "pkId": self.pk,
                "duplicate": self.duplicate, "sideBeans": self.side_beans })
    }
}

async fn apply(gateway: &Gateway, gift: &GiftIn) -> Outcome {
    let mut outcome = Outcome {
        id: gift.id,
        pk: gift.pk_id,
        code: code::SUCCESS.to_owned(),
        desc: protocol::SUCCESS_DESC.to_owned(),
        duplicate: false,
        side_beans: None,
    };
    let receiver = UserId(gift.receiver);
    let pk = match gift.pk_id {
        Some(pk) => PkId(pk),
        None => match gateway.lobby(|lobby| lobby.pk_of(receiver)) {
            Some(pk) => pk,
            None => {
                let reason = pkd_raft::Reason::NoSuchPk;
                outcome.code = reason.code().to_owned();
                outcome.desc = "the receiver is in no PK".to_owned();
                return outcome;
            }
        },
    };
    outcome.pk = Some(pk.0);
    let profile = gift.sender_profile.as_ref().map(|p| {
        Box::new(GifterProfile {
            nickname: p.nickname.clone(),
            headimg: p.headimg.clone(),
            level: p.level,
            roomlevel: p.roomlevel,
            vip: p.vip,
            sex: p.sex,
        })
    });
    let action = ArenaAction::Gift(Gift {
        #[cfg(not(feature = "fault-injection"))]
        id: GiftId(gift.id),
        #[cfg(feature = "fault-injection")]
        id: GiftId(crate::fault_hooks::gift_id(gift.id)),
        pk,
        receiver,
        sender: UserId(gift.sender),
        beans: gift.beans,
        profile,
    });
    #[cfg(feature = "fault-injection")]
    if crate::fault_hooks::refuses_clients() {
        outcome.code = code::UNAVAILABLE.to_owned();
        outcome.desc = "temporarily unavailable (unavailable-after-restart); retry with the same id".to_owned();
        return outcome;
    }
    let span = tracing::info_span!("pk", pk = pk.0, gift = gift.id);
    async {
        match gateway.node().propose_arena(gateway.node().arena_of(pk), action).await {
            Ok(Response::GiftCounted { duplicate, side_beans }) => {
                tracing::debug!(duplicate, side_beans, "gift counted");
                outcome.duplicate = duplicate;
                outcome.side_beans = Some(side_beans);
            }
            Ok(Response::Rejected(reason)) => {
                tracing::debug!(?reason, "gift refused");
                outcome.code = reason.code().to_owned();
                outcome.desc = reason.describe();
            }
            Ok(other) => {
                tracing::error!(?other, "unexpected answer to a gift");
                outcome.code = code::UNAVAILABLE.to_owned();
                outcome.desc = "unexpected answer; retry with the same id".to_owned();
            }
            Err(error) => {
                tracing::warn!(%error, "gift not applied");
                outcome.code = code::UNAVAILABLE.to_owned();
                outcome.desc = "temporarily unavailable; retry with the same id".to_owned();
            }
        }
    }
    .instrument(span)
    .await;
    outcome
}
