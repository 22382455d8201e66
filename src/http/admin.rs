//! The admin HTTP API: cluster status, membership, leadership, `t_config` rows, and what
//! the web console reads (PKs, the lobby, the audit log, the live feed: `super::console`).
//! Every route needs `Authorization: Bearer <admin token>`; the request and response types
//! live in `pkd_cluster::api`, shared with the typed client and `pkd cluster`.
//!
//! Every action that changes the cluster is written to the audit log with who asked (the
//! `X-Pkd-Operator` header) and how it went, whether it succeeded or not. A request that
//! is refused before it is understood (a bad token, a malformed body, a bad path) changes
//! nothing and is not recorded.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use pkd_cluster::api::{
    AbortReply, AddLearnerRequest, AuditList, ClusterStatus, ConfigCheck, ConfigReply, ConfigRequest, ConfigRows,
    ErrorReply, InitRequest, LeaderReply, LobbyView, MembershipReply, NodeRequest, NodeStatus, PkEntry, PkList,
    StateDigests, TransferLeaderRequest,
};
use pkd_raft::{ArenaAction, PkId, Response as EngineResponse};
use serde::Deserialize;

use super::console::{audit, cluster, views};
use crate::gateway::Gateway;
use crate::replication::ProposeError;
use crate::replication::consensus::GroupId;
use crate::replication::node::{AdminError, Node};
use crate::sinks::SinkMetrics;

/// How long a leadership transfer may take before the API answers with the leader it sees.
const TRANSFER_WAIT: Duration = Duration::from_secs(5);

/// What the admin routes share: the node, and the token every request must present.
#[derive(Clone)]
pub struct AdminState {
    pub node: Node,
    pub token: Arc<str>,
    /// Cancelled to ask the node to drain and stop.
    pub drain: CancellationToken,
    /// The gateway and the sinks, for the node's report.
    pub gateway: Arc<Gateway>,
    pub sinks: Arc<SinkMetrics>,
    /// Cancelled when the node stops serving: long answers (the live feed) end.
    pub closing: CancellationToken,
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

/// `GET /admin/digest`: a digest of each group's replicated state on this node.
pub async fn digest(State(state): State<AdminState>) -> Result<Json<StateDigests>, Response> {
    state
        .node
        .digests()
        .map(Json)
        .map_err(|error| failure(StatusCode::INTERNAL_SERVER_ERROR, format!("encoding the state failed: {error}")))
}

/// `GET /admin/faults`: the faults injected on this node (fault-injection builds only).
#[cfg(feature = "fault-injection")]
pub async fn faults() -> Json<pkd_cluster::api::FaultSettings> {
    Json(crate::fault_hooks::current())
}

/// `POST /admin/faults`: injects faults on this node (fault-injection builds only).
#[cfg(feature = "fault-injection")]
pub async fn set_faults(Body(request): Body<pkd_cluster::api::FaultSettings>) -> Json<pkd_cluster::api::FaultSettings> {
    Json(crate::fault_hooks::apply(&request))
}

/// `GET /admin/cluster`: every node's report, asking each peer (unreachable ones are
/// marked so).
pub async fn cluster_status(State(state): State<AdminState>) -> Json<ClusterStatus> {
    Json(cluster::gather(&state.gateway, &state.sinks).await)
}

pub async fn transfer_leader(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(id): Path<u64>,
    Body(request): Body<TransferLeaderRequest>,
) -> Result<Json<LeaderReply>, Failed> {
    let group = GroupId(id);
    let result = async {
        state.node.transfer_leader(group, request.to).await?;
        let deadline = tokio::time::Instant::now() + TRANSFER_WAIT;
        while state.node.leader(group) != Some(request.to) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(LeaderReply { group: id, leader: state.node.leader(group) })
    }
    .await;
    let what = format!("place the leadership of group {id} on node {}", request.to);
    state.audit_attempt(&headers, what, &result).await;
    result.map(Json).map_err(Failed)
}

/// Drains node `{"node": N}`, then stops it: the same as SIGTERM there. This node drains
/// itself; another node is asked over the cluster's network. Answers at once; the node is
/// gone once its `/readyz` no longer answers.
pub async fn drain(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Body(request): Body<NodeRequest>,
) -> Result<Json<NodeRequest>, Failed> {
    let what = format!("drain node {} and stop it", request.node);
    if request.node == state.node.id() {
        // Recorded first: this node is about to stop.
        state.audit(&headers, what, &Ok::<(), AdminError>(())).await;
        tracing::info!("drain asked through the admin API");
        state.drain.cancel();
        return Ok(Json(request));
    }
    let result = if state
        .node
        .status()
        .groups
        .iter()
        .any(|group| group.voters.contains(&request.node) || group.learners.contains(&request.node))
    {
        cluster::drain_peer(&state.gateway, request.node).await.map_err(|message| AdminError::Failed {
            group: GroupId(0),
            message: format!("node {} was not asked: {message}", request.node),
        })
    } else {
        Err(AdminError::Invalid(format!("node {} is not a member of the cluster", request.node)))
    };
    state.audit_attempt(&headers, what, &result).await;
    result.map(|()| Json(request)).map_err(Failed)
}

/// Clears every group's leader placement: the balancer spreads leaders again.
pub async fn balance(State(state): State<AdminState>, headers: HeaderMap) -> Result<Json<MembershipReply>, Failed> {
    let result = state.node.clear_placements().await;
    state.audit_attempt(&headers, "clear every leader placement (balance)".to_owned(), &result).await;
    let groups = result.map_err(Failed)?;
    tracing::info!("leader placements cleared");
    Ok(Json(MembershipReply { groups }))
}

pub async fn init(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Body(request): Body<InitRequest>,
) -> Result<Json<MembershipReply>, Failed> {
    let result = state.node.initialize_cluster(&request.members).await;
    let members: Vec<String> = request.members.iter().map(|(id, addr)| format!("{id}={addr}")).collect();
    if result.is_ok() {
        // Before the cluster exists there is no log to write to.
        state.audit(&headers, format!("initialize the cluster with {}", members.join(",")), &result).await;
    }
    let groups = result.map_err(Failed)?;
    tracing::info!(members = ?request.members, "cluster initialized through the admin API");
    Ok(Json(MembershipReply { groups }))
}

pub async fn add_learner(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Body(request): Body<AddLearnerRequest>,
) -> Result<Json<MembershipReply>, Failed> {
    let result = state.node.add_learner(request.node, &request.addr).await;
    let what = format!("add node {} at {} as a learner", request.node, request.addr);
    state.audit_attempt(&headers, what, &result).await;
    let groups = result.map_err(Failed)?;
    tracing::info!(node = request.node, addr = %request.addr, "learner added to every group");
    Ok(Json(MembershipReply { groups }))
}

pub async fn promote(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Body(request): Body<NodeRequest>,
) -> Result<Json<MembershipReply>, Failed> {
    let result = state.node.promote(request.node).await;
    state.audit_attempt(&headers, format!("promote node {} to voter", request.node), &result).await;
    let groups = result.map_err(Failed)?;
    tracing::info!(node = request.node, "node promoted to voter in every group");
    Ok(Json(MembershipReply { groups }))
}

pub async fn remove(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Body(request): Body<NodeRequest>,
) -> Result<Json<MembershipReply>, Failed> {
    let result = state.node.remove(request.node).await;
    state.audit_attempt(&headers, format!("remove node {}", request.node), &result).await;
    let groups = result.map_err(Failed)?;
    tracing::info!(node = request.node, "node removed from every group");
    Ok(Json(MembershipReply { groups }))
}

pub async fn set_config(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Body(request): Body<ConfigRequest>,
) -> Result<Json<ConfigReply>, Failed> {
    // Refused before anything is proposed, with the same words as `pkd config check`.
    pkd_raft::config::check_row(&request.key, &request.value).map_err(|error| Failed(AdminError::Invalid(error)))?;
    let result = state.node.set_config(&request.key, &request.value).await;
    state.audit_attempt(&headers, format!("set {} to {}", request.key, request.value), &result).await;
    let groups = result.map_err(Failed)?;
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

/// `GET /admin/config`: the rows in force.
pub async fn config_rows(State(state): State<AdminState>) -> Json<ConfigRows> {
    Json(views::config_rows(&state.node))
}

/// `POST /admin/config/check`: checks a value; sets nothing, records nothing.
pub async fn check_config(Body(request): Body<ConfigRequest>) -> Json<ConfigCheck> {
    Json(views::check_config(&request))
}

/// `GET /admin/pks`.
pub async fn pks(State(state): State<AdminState>) -> Json<PkList> {
    Json(views::pks(&state.node))
}

/// `GET /admin/pks/{id}`: 404 unless the PK runs.
pub async fn pk(
    State(state): State<AdminState>,
    id: Result<Path<u64>, PathRejection>,
) -> Result<Json<PkEntry>, Response> {
    let Path(id) = id.map_err(|rejection| failure(StatusCode::BAD_REQUEST, rejection.body_text()))?;
    let pk = pk_id(id).map_err(|message| failure(StatusCode::BAD_REQUEST, message))?;
    views::pk(&state.node, pk)
        .map(Json)
        .ok_or_else(|| failure(StatusCode::NOT_FOUND, format!("no running PK {id} on this node")))
}

/// How long an abort keeps trying while the arena's leadership moves.
const ABORT_PATIENCE: Duration = Duration::from_secs(5);

/// `POST /admin/pks/{id}/abort`: ends the PK abnormally (status 3, no winner). 404 unless
/// it runs.
pub async fn abort_pk(
    State(state): State<AdminState>,
    headers: HeaderMap,
    id: Result<Path<u64>, PathRejection>,
) -> Result<Json<AbortReply>, Response> {
    let Path(id) = id.map_err(|rejection| failure(StatusCode::BAD_REQUEST, rejection.body_text()))?;
    let pk = pk_id(id).map_err(|message| failure(StatusCode::BAD_REQUEST, message))?;
    let arena = state.node.arena_of(pk);
    // Refused by a node that no longer leads the arena, it was not applied: try the new
    // leader, for a few seconds.
    let node = &state.node;
    let proposed = crate::retry::patiently(ABORT_PATIENCE, Duration::from_millis(100), || async move {
        match node.propose_arena(arena, ArenaAction::AbortPk { pk }).await {
            Err(error @ ProposeError::NotLeader { .. }) => Err(crate::retry::Attempt::Again(error)),
            Err(error) => Err(crate::retry::Attempt::ForGood(error)),
            Ok(response) => Ok(response),
        }
    });
    let result = match proposed.await {
        Ok(EngineResponse::Rejected(pkd_raft::Reason::NoSuchPk)) => {
            return Err(failure(StatusCode::NOT_FOUND, format!("no running PK {id}")));
        }
        Ok(EngineResponse::Rejected(reason)) => Err(format!("refused: {reason:?}")),
        Ok(_) => Ok(AbortReply { pk: id, arena: arena.0 }),
        Err(error) => Err(error.to_string()),
    };
    state.audit(&headers, format!("end PK {id} abnormally"), &result).await;
    result.map(Json).map_err(|message| failure(StatusCode::SERVICE_UNAVAILABLE, message))
}

/// `GET /admin/lobby`.
pub async fn lobby(State(state): State<AdminState>) -> Json<LobbyView> {
    Json(views::lobby(&state.node))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    #[serde(default)]
    after: u64,
}

/// `GET /admin/audit?after=SEQ`.
pub async fn audit_log(
    State(state): State<AdminState>,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditList>, Response> {
    let Query(query) = query.map_err(|rejection| failure(StatusCode::BAD_REQUEST, rejection.body_text()))?;
    Ok(Json(views::audit(&state.node, query.after)))
}

/// A PK id from a path: 1 to 2^63-1, as everywhere else.
fn pk_id(id: u64) -> Result<PkId, String> {
    match id {
        1..=0x7fff_ffff_ffff_ffff => Ok(PkId(id)),
        _ => Err(format!("a PK id is 1 to {}, not {id}", i64::MAX)),
    }
}

impl AdminState {
    /// Writes an action and its outcome to the audit log, unless it was refused for its
    /// input (a bad value, an unknown group or node: answered 400 or 404, nothing
    /// changed).
    async fn audit_attempt<T>(&self, headers: &HeaderMap, what: String, outcome: &Result<T, AdminError>) {
        if !matches!(outcome, Err(AdminError::Invalid(_) | AdminError::UnknownGroup(_))) {
            self.audit(headers, what, outcome).await;
        }
    }

    /// Writes an action and its outcome to the audit log.
    async fn audit<T, E: std::fmt::Display>(&self, headers: &HeaderMap, what: String, outcome: &Result<T, E>) {
        audit::record(&self.node, audit::operator(headers), what, outcome).await;
    }
}
