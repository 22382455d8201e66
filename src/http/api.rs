//! Read-only routes over the results store and the room directory (described in
//! `docs/openapi.yaml`):
//!
//! - `GET /api/anchors/{id}/pks?page=1&size=20`: an anchor's PK history (the source's
//!   "in-app PK records"), newest first, from the results store.
//! - `GET /api/pks/{id}/gifts?after=0&limit=100`: a settled PK's gift ledger, every
//!   counted gift once, by gift id, a page at a time; the first page with its totals per
//!   receiver.
//!   Any logged-in user may read it, as any may read an anchor's history: the gifts
//!   were shown in both rooms while the PK ran.
//! - `GET /api/rooms-in-pk`: every room in a PK, from this node's lobby replica (the
//!   home page's PK tag, without Redis).

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pkd_raft::{PkId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::gateway::protocol::code;
use crate::replication::node::Node;
use crate::sinks::ResultsSlot;

/// The page size when none is given.
pub const DEFAULT_PAGE_SIZE: u32 = 20;
/// The largest page size served; larger requests are cut to it.
pub const MAX_PAGE_SIZE: u32 = 100;

/// What the routes read: `node`'s replicas, and the results store in `results`
/// (answering 503 until it is connected).
#[derive(Clone)]
pub struct ApiState {
    pub node: Node,
    pub results: ResultsSlot,
}

/// The gifts in a ledger page when no limit is given.
pub const DEFAULT_LEDGER_LIMIT: u32 = 100;
/// The most gifts in a ledger page; larger limits are cut to it.
pub const MAX_LEDGER_LIMIT: u32 = 1000;

#[derive(Debug, Deserialize)]
pub struct Paging {
    pub page: Option<u32>,
    pub size: Option<u32>,
}

/// A ledger page: the gifts whose id is above `after`, at most `limit`.
#[derive(Debug, Deserialize)]
pub struct LedgerPaging {
    pub after: Option<u64>,
    pub limit: Option<u32>,
}

fn unavailable(message: String) -> Response {
    super::refuse(StatusCode::SERVICE_UNAVAILABLE, code::UNAVAILABLE, message)
}

/// `GET /api/anchors/{id}/pks?page=1&size=20`.
pub async fn history(
    State(state): State<ApiState>,
    anchor: Result<Path<u64>, PathRejection>,
    paging: Result<Query<Paging>, QueryRejection>,
) -> Response {
    let (Path(anchor), Query(paging)) = match (anchor, paging) {
        (Ok(anchor), Ok(paging)) => (anchor, paging),
        (Err(rejection), _) => return super::refuse(StatusCode::BAD_REQUEST, code::BAD_FIELD, rejection.body_text()),
        (_, Err(rejection)) => return super::refuse(StatusCode::BAD_REQUEST, code::BAD_FIELD, rejection.body_text()),
    };
    let page = paging.page.unwrap_or(1).max(1);
    let size = paging.size.unwrap_or(DEFAULT_PAGE_SIZE).clamp(1, MAX_PAGE_SIZE);
    let Some(store) = state.results.get() else {
        return unavailable("the results store is not connected yet".to_owned());
    };
    match store.history(UserId(anchor), page, size).await {
        Ok(records) => {
            Json(json!({ "anchor": anchor, "page": page, "size": size, "records": records })).into_response()
        }
        Err(error) => {
            tracing::warn!(%error, anchor, "history query failed");
            unavailable(format!("the results store failed: {error}"))
        }
    }
}

/// `GET /api/pks/{id}/gifts?after=0&limit=100`.
pub async fn ledger(
    State(state): State<ApiState>,
    pk: Result<Path<u64>, PathRejection>,
    paging: Result<Query<LedgerPaging>, QueryRejection>,
) -> Response {
    let (Path(pk), Query(paging)) = match (pk, paging) {
        (Ok(pk), Ok(paging)) => (pk, paging),
        (Err(rejection), _) => return super::refuse(StatusCode::BAD_REQUEST, code::BAD_FIELD, rejection.body_text()),
        (_, Err(rejection)) => return super::refuse(StatusCode::BAD_REQUEST, code::BAD_FIELD, rejection.body_text()),
    };
    if i64::try_from(pk).is_err() {
        return super::refuse(StatusCode::BAD_REQUEST, code::BAD_FIELD, format!("no PK has the id {pk}"));
    }
    let after = paging.after.unwrap_or(0);
    let limit = paging.limit.unwrap_or(DEFAULT_LEDGER_LIMIT).clamp(1, MAX_LEDGER_LIMIT);
    let Some(store) = state.results.get() else {
        return unavailable("the results store is not connected yet".to_owned());
    };
    // The totals read the whole ledger: on the first page only, not on every one.
    let read = async {
        let gifts = store.ledger(PkId(pk), after, limit).await?;
        let totals = if after == 0 { Some(store.ledger_totals(PkId(pk)).await?) } else { None };
        Ok::<_, crate::sinks::StoreError>((gifts, totals))
    };
    match read.await {
        Ok((gifts, totals)) => {
            // A full page may have a next one; it starts after the last id shown.
            let next = (gifts.len() == limit as usize).then(|| gifts.last().map(|gift| gift.gift_id)).flatten();
            Json(json!({ "pkId": pk, "after": after, "limit": limit, "gifts": gifts, "next": next, "totals": totals }))
                .into_response()
        }
        Err(error) => {
            tracing::warn!(%error, pk, "ledger query failed");
            unavailable(format!("the results store failed: {error}"))
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct RoomInPk {
    room_id: u64,
    pk_id: u64,
    anchor: u64,
}

/// `GET /api/rooms-in-pk`.
pub async fn rooms_in_pk(State(state): State<ApiState>) -> Response {
    let rooms: Vec<RoomInPk> = state.node.lobby().read(|lobby| {
        lobby
            .held_pks()
            .flat_map(|(pk, seats)| {
                seats.into_iter().map(move |seat| RoomInPk { room_id: seat.room.0, pk_id: pk.0, anchor: seat.anchor.0 })
            })
            .collect()
    });
    Json(json!({ "rooms": rooms })).into_response()
}
