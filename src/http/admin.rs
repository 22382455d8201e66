//! The admin HTTP API: cluster status, membership, leadership and `t_config` rows. Every
//! route needs `Authorization: Bearer <admin token>`; the request and response types live
//! in `pkd_cluster::api`, shared with the typed client and `pkd cluster`.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use pkd_cluster::api::{
    AddLearnerRequest, ConfigReply, ConfigRequest, ErrorReply, InitRequest, LeaderReply, MembershipReply, NodeRequest,
    NodeStatus, TransferLeaderRequest,
};

use crate::replication::consensus::GroupId;
use crate::replication::node::{AdminError, Node};

/// How long a leadership transfer may take before the API answers with the leader it sees.
const TRANSFER_WAIT: Duration = Duration::from_secs(5);

/// What the admin routes share: the node, and the token every request must present.
#[derive(Clone)]
pub struct AdminState {
    pub node: Node,
    pub token: Arc<str>,
    /// Cancelled to ask the node to drain and stop.
    pub drain: CancellationToken,
}

/// Refuses a request without the admin token with 401.
pub async fn authorize(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    if super::bearer::presents(request.headers(), &state.token) {
        next.run(request).await
    } else {
        failure(StatusCode::UNAUTHORIZED, "missing or wrong admin token".to_owned())
    }
}

/// A JSON body of type `T`; a body that does not read as one is refused with its reason
/// as an [`ErrorReply`] (400 malformed JSON, 415 not JSON, 422 a missing or mistyped
/// field), like every other admin refusal.
pub struct Body<T>(pub T);

impl<S, T> axum::extract::FromRequest<S> for Body<T>
where
    Json<T>: axum::extract::FromRequest<S, Rejection = axum::extract::rejection::JsonRejection>,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Body<T>, Response> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(body)) => Ok(Body(body)),
            Err(rejection) => Err(failure(rejection.status(), rejection.body_text())),
        }
    }
}

fn failure(status: StatusCode, error: String) -> Response {
    (status, Json(ErrorReply { error })).into_response()
}

/// An [`AdminError`] as an HTTP answer.
pub struct Failed(AdminError);

impl IntoResponse for Failed {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            AdminError::NotClustered => StatusCode::CONFLICT,
            AdminError::Invalid(_) => StatusCode::BAD_REQUEST,
            AdminError::UnknownGroup(_) => StatusCode::NOT_FOUND,
            AdminError::Failed { .. } => StatusCode::SERVICE_UNAVAILABLE,
        };
        tracing::warn!(error = %self.0, "admin request failed");
        failure(status, self.0.to_string())
    }
}

pub async fn status(State(state): State<AdminState>) -> Json<NodeStatus> {
    Json(state.node.status())
}

pub async fn transfer_leader(
    State(state): State<AdminState>,
    Path(id): Path<u64>,
    Body(request): Body<TransferLeaderRequest>,
) -> Result<Json<LeaderReply>, Failed> {
    let group = GroupId(id);
    state.node.transfer_leader(group, request.to).await.map_err(Failed)?;
    let deadline = tokio::time::Instant::now() + TRANSFER_WAIT;
    while state.node.leader(group) != Some(request.to) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Json(LeaderReply { group: id, leader: state.node.leader(group) }))
}

/// Drains this node, then stops it: the same as SIGTERM. Answers at once; the node is gone
/// once its `/readyz` no longer answers. `{"node": N}` must name this node.
pub async fn drain(
    State(state): State<AdminState>,
    Body(request): Body<NodeRequest>,
) -> Result<Json<NodeRequest>, Failed> {
    if request.node != state.node.id() {
        let message = format!(
            "this is node {}, not node {}: ask node {}'s admin API",
            state.node.id(),
            request.node,
            request.node
        );
        return Err(Failed(AdminError::Invalid(message)));
    }
    tracing::info!("drain asked through the admin API");
    state.drain.cancel();
    Ok(Json(request))
}

/// Clears every group's leader placement: the balancer spreads leaders again.
pub async fn balance(State(state): State<AdminState>) -> Result<Json<MembershipReply>, Failed> {
    let groups = state.node.clear_placements().await.map_err(Failed)?;
    tracing::info!("leader placements cleared");
    Ok(Json(MembershipReply { groups }))
}

pub async fn init(
    State(state): State<AdminState>,
    Body(request): Body<InitRequest>,
) -> Result<Json<MembershipReply>, Failed> {
    let groups = state.node.initialize_cluster(&request.members).await.map_err(Failed)?;
    tracing::info!(members = ?request.members, "cluster initialized through the admin API");
    Ok(Json(MembershipReply { groups }))
}

pub async fn add_learner(
    State(state): State<AdminState>,
    Body(request): Body<AddLearnerRequest>,
) -> Result<Json<MembershipReply>, Failed> {
    let groups = state.node.add_learner(request.node, &request.addr).await.map_err(Failed)?;
    tracing::info!(node = request.node, addr = %request.addr, "learner added to every group");
    Ok(Json(MembershipReply { groups }))
}

pub async fn promote(
    State(state): State<AdminState>,
    Body(request): Body<NodeRequest>,
) -> Result<Json<MembershipReply>, Failed> {
    let groups = state.node.promote(request.node).await.map_err(Failed)?;
    tracing::info!(node = request.node, "node promoted to voter in every group");
    Ok(Json(MembershipReply { groups }))
}

pub async fn remove(
    State(state): State<AdminState>,
    Body(request): Body<NodeRequest>,
) -> Result<Json<MembershipReply>, Failed> {
    let groups = state.node.remove(request.node).await.map_err(Failed)?;
    tracing::info!(node = request.node, "node removed from every group");
    Ok(Json(MembershipReply { groups }))
}

pub async fn set_config(
    State(state): State<AdminState>,
    Body(request): Body<ConfigRequest>,
) -> Result<Json<ConfigReply>, Failed> {
    let groups = state.node.set_config(&request.key, &request.value).await.map_err(Failed)?;
    tracing::info!(key = %request.key, value = %request.value, "config row set in every group");
    Ok(Json(ConfigReply { groups }))
}

/// `GET /admin/backup`: a backup file of every group (`pkd backup`), read through this
/// node with linearizable reads.
pub async fn backup(State(state): State<AdminState>) -> Response {
    let now_ms = crate::clock::now_ms();
    match crate::backup::Backup::take(&state.node, now_ms).await {
        Ok(backup) => {
            let bytes = backup.encode();
            tracing::info!(bytes = bytes.len(), groups = backup.groups.len(), "backup taken");
            let headers = [
                (axum::http::header::CONTENT_TYPE, "application/octet-stream"),
                (axum::http::header::CONTENT_DISPOSITION, "attachment; filename=\"pkd.backup\""),
            ];
            (headers, bytes).into_response()
        }
        Err(error) => {
            tracing::warn!(%error, "backup failed");
            failure(StatusCode::SERVICE_UNAVAILABLE, error.to_string())
        }
    }
}
