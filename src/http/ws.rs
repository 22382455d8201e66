//! `GET /ws`: the login token is checked before the upgrade (HTTP 401 without a valid
//! one), then the connection is the gateway's (`crate::gateway::session`).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::gateway::protocol::code;
use crate::gateway::session::{self, READ_BUFFER_BYTES};
use crate::gateway::{Gateway, protocol};

/// Lets a request through only with a valid login token (a bearer header, or `?token=`):
/// the read API is for the app's users. 401 with `900005` otherwise.
pub async fn require_login(
    State(gateway): State<Arc<Gateway>>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
    next: Next,
) -> Response {
    let token = super::bearer::bearer(request.headers()).or(query.get("token").map(String::as_str));
    match token.map(|token| session::authenticate(&gateway, token)) {
        Some(Ok(_)) => next.run(request).await,
        Some(Err(why)) => super::refuse(StatusCode::UNAUTHORIZED, code::NOT_AUTHENTICATED, why.to_string()),
        None => super::refuse(StatusCode::UNAUTHORIZED, code::NOT_AUTHENTICATED, "a login token is required"),
    }
}

/// Checks the token (a bearer header, or `?token=`), then upgrades.
pub async fn upgrade(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Some(token) = super::bearer::bearer(&headers).or(query.get("token").map(String::as_str)) else {
        return super::refuse(StatusCode::UNAUTHORIZED, code::NOT_AUTHENTICATED, "a login token is required");
    };
    let identity = match session::authenticate(&gateway, token) {
        Ok(identity) => identity,
        Err(why) => {
            tracing::debug!(%why, "login token refused");
            return super::refuse(StatusCode::UNAUTHORIZED, code::NOT_AUTHENTICATED, why.to_string());
        }
    };
    if gateway.is_draining() {
        let why = "this node is draining: connect to another node";
        return super::refuse(StatusCode::SERVICE_UNAVAILABLE, code::UNAVAILABLE, why);
    }
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            let why = format!("not a WebSocket upgrade: {}", rejection.body_text());
            return super::refuse(StatusCode::BAD_REQUEST, code::MALFORMED_JSON, why);
        }
    };
    let limit = gateway.config().connections_per_user;
    if gateway.hub().connections_of(identity.user()) >= limit {
        let why = format!("at most {limit} connections per user on a node");
        return super::refuse(StatusCode::TOO_MANY_REQUESTS, code::RATE_LIMITED, why);
    }
    upgrade
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(protocol::MAX_READ_BYTES)
        .max_frame_size(protocol::MAX_READ_BYTES)
        .on_upgrade(move |socket| {
            let tasks = gateway.tasks().clone();
            let span = tracing::info_span!(
                "conn",
                node = gateway.node().id(),
                user = %identity.user(),
                session = tracing::field::Empty
            );
            tasks.track_future(session::run(gateway, identity, socket).instrument(span))
        })
        .into_response()
}
