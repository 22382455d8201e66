//! Every HTTP route pkd serves, declared here, one router per listener, each route with
//! the credential it needs.
//!
//! The client listener (public):
//!
//! | route | who | handler |
//! |---|---|---|
//! | `GET /ws` | app clients, with a login token | [`ws::upgrade`] |
//! | `POST /internal/gifts` | the gift service, with its service token | [`gifts::post`] |
//! | `GET /api/anchors/{id}/pks` | app users, with a login token | [`api::history`] |
//! | `GET /api/pks/{id}/gifts` | app users, with a login token | [`api::ledger`] |
//! | `GET /api/rooms-in-pk` | app users, with a login token | [`api::rooms_in_pk`] |
//! | `GET /livez`, `GET /healthz` | anyone (load balancers) | [`health::live`] |
//! | `GET /readyz` | anyone (load balancers) | [`health::ready`] |
//! | `GET /watch`, `GET /watch/{file}` | anyone: the watch page, which holds no data; it speaks `/ws` with a login token | [`console::pages`] |
//! | `GET /openapi.yaml` | anyone | [`openapi`] |
//!
//! The admin listener:
//!
//! | route | who | handler |
//! |---|---|---|
//! | `GET /admin/status`, `GET /admin/cluster` | admin token | [`admin::status`], [`admin::cluster_status`] |
//! | `POST /admin/groups/{id}/transfer-leader`, `POST /admin/balance`, `POST /admin/drain` | admin token | [`admin`] |
//! | `POST /admin/init`, `/admin/learners`, `/admin/promote`, `/admin/remove` | admin token | [`admin`] |
//! | `GET /admin/config`, `POST /admin/config`, `POST /admin/config/check` | admin token | [`admin`] |
//! | `GET /admin/backup` | admin token | [`admin::backup`] |
//! | `GET /admin/pks`, `GET /admin/pks/{id}`, `POST /admin/pks/{id}/abort` | admin token | [`admin`] |
//! | `GET /admin/lobby`, `GET /admin/audit` | admin token | [`admin`] |
//! | `GET /admin/events` (Server-Sent Events) | admin token | [`console::events`] |
//! | `GET /metrics` | admin token | [`metrics::render`] |
//! | `GET /console`, `GET /console/{file}` | anyone: the console's page, which holds no data; it asks the routes above with the token its operator types in | [`console::pages`] |
//! | `GET /openapi.yaml` | anyone | [`openapi`] |
//!
//! `docs/openapi.yaml` documents every route; a test holds it to this file.

pub mod admin;
pub mod api;
pub mod bearer;
pub mod console;
pub mod gifts;
pub mod health;
pub mod metrics;
pub mod server;
pub mod ws;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRef};
use axum::middleware;
use axum::routing::{get, post};

use crate::gateway::Gateway;
use crate::replication::node::Node;
use crate::sinks::{ResultsSlot, SinkMetrics};
use tokio_util::sync::CancellationToken;

/// The OpenAPI document of every route, compiled in.
pub const OPENAPI: &str = include_str!("../../docs/openapi.yaml");

/// `GET /openapi.yaml`.
pub async fn openapi() -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/yaml")], OPENAPI)
}

/// A refusal in the envelope app clients and the gift service read everywhere:
/// `{"code": "9xxxxx", "desc": "...", "result": null}` with the HTTP status.
pub(crate) fn refuse(status: axum::http::StatusCode, code: &str, desc: impl Into<String>) -> axum::response::Response {
    use axum::response::IntoResponse;
    let body = serde_json::json!({ "code": code, "desc": desc.into(), "result": null });
    (status, axum::Json(body)).into_response()
}

/// What the client listener's handlers read.
#[derive(Clone)]
pub struct ClientState {
    pub gateway: Arc<Gateway>,
    pub api: api::ApiState,
}

impl ClientState {
    pub fn new(gateway: Arc<Gateway>, results: ResultsSlot) -> ClientState {
        let node: Node = gateway.node().clone();
        ClientState { gateway, api: api::ApiState { node, results } }
    }
}

impl FromRef<ClientState> for Arc<Gateway> {
    fn from_ref(state: &ClientState) -> Arc<Gateway> {
        state.gateway.clone()
    }
}

impl FromRef<ClientState> for Node {
    fn from_ref(state: &ClientState) -> Node {
        state.api.node.clone()
    }
}

impl FromRef<ClientState> for api::ApiState {
    fn from_ref(state: &ClientState) -> api::ApiState {
        state.api.clone()
    }
}

/// The client listener's routes.
pub fn client_router(state: ClientState) -> Router {
    let read_api = Router::new()
        .route("/api/anchors/{id}/pks", get(api::history))
        .route("/api/pks/{id}/gifts", get(api::ledger))
        .route("/api/rooms-in-pk", get(api::rooms_in_pk))
        .route_layer(middleware::from_fn_with_state(state.gateway.clone(), ws::require_login));
    Router::new()
        .route("/ws", get(ws::upgrade))
        .route("/internal/gifts", post(gifts::post).layer(DefaultBodyLimit::max(gifts::MAX_BODY_BYTES)))
        .merge(read_api)
        .route("/livez", get(health::live))
        .route("/healthz", get(health::live))
        .route("/readyz", get(health::ready))
        .route("/openapi.yaml", get(openapi))
        .route("/watch", get(console::pages::watch))
        .route("/watch/{file}", get(console::pages::watch_file))
        .with_state(state)
}

/// What the admin listener serves with.
pub struct AdminSetup {
    pub gateway: Arc<Gateway>,
    /// The admin token.
    pub token: String,
    pub sinks: Arc<SinkMetrics>,
    /// Cancelled by `POST /admin/drain`.
    pub drain: CancellationToken,
    /// Cancelled when the node stops serving.
    pub closing: CancellationToken,
}

/// The admin listener's routes: every one behind the admin token, but the console's page
/// and its files.
pub fn admin_router(setup: AdminSetup) -> Router {
    let AdminSetup { gateway, token, sinks, drain, closing } = setup;
    let state = admin::AdminState {
        node: gateway.node().clone(),
        token: Arc::from(token),
        drain,
        gateway: gateway.clone(),
        sinks: sinks.clone(),
        closing,
    };
    let metrics = Router::new()
        .route("/metrics", get(metrics::render))
        .with_state(metrics::MetricsState { gateway, sinks })
        .route_layer(middleware::from_fn_with_state(state.clone(), admin::authorize));
    let pages = Router::new()
        .route("/console", get(console::pages::console))
        .route("/console/{file}", get(console::pages::console_file));
    let routes = Router::new()
        .route("/admin/status", get(admin::status))
        .route("/admin/cluster", get(admin::cluster_status))
        .route("/admin/digest", get(admin::digest))
        .route("/admin/groups/{id}/transfer-leader", post(admin::transfer_leader))
        .route("/admin/balance", post(admin::balance))
        .route("/admin/drain", post(admin::drain))
        .route("/admin/init", post(admin::init))
        .route("/admin/learners", post(admin::add_learner))
        .route("/admin/promote", post(admin::promote))
        .route("/admin/remove", post(admin::remove))
        .route("/admin/config", post(admin::set_config).get(admin::config_rows))
        .route("/admin/config/check", post(admin::check_config))
        .route("/admin/backup", get(admin::backup))
        .route("/admin/pks", get(admin::pks))
        .route("/admin/pks/{id}", get(admin::pk))
        .route("/admin/pks/{id}/abort", post(admin::abort_pk))
        .route("/admin/lobby", get(admin::lobby))
        .route("/admin/audit", get(admin::audit_log))
        .route("/admin/events", get(console::events::events));
    // Fault injection, for fault tests only (docs/faults.md).
    #[cfg(feature = "fault-injection")]
    let routes = routes.route("/admin/faults", get(admin::faults).post(admin::set_faults));
    routes
        .route_layer(middleware::from_fn_with_state(state.clone(), admin::authorize))
        .with_state(state)
        .merge(metrics)
        .merge(pages)
        .route("/openapi.yaml", get(openapi))
}
