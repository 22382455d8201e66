//! Read-only routes over the results store and the room directory (described in
//! `docs/openapi.yaml`):
//!
//! - `GET /api/anchors/{id}/pks?page=1&size=20`: an anchor's PK history (the source's
//!   "in-app PK records"), newest first, from the results store.
//! - `GET /api/rooms-in-pk`: every room in a PK, from this node's lobby replica (the
//!   home page's PK tag, without Redis).

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use pkd_raft::UserId;
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

#[derive(Debug, Deserialize)]
pub struct Paging {
    pub page: Option<u32>,
    pub size: Option<u32>,
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
