//! `GET /admin/events`: the console's live feed, as Server-Sent Events.
//!
//! Every second the feed sends `pks` ([`PkList`](pkd_cluster::api::PkList)) and `lobby`
//! ([`LobbyView`](pkd_cluster::api::LobbyView)); every two seconds `cluster`
//! ([`ClusterStatus`](pkd_cluster::api::ClusterStatus), which asks every peer); and `audit`
//! ([`AuditList`](pkd_cluster::api::AuditList)) with the entries recorded since the last
//! one it sent (all of them first). It ends when the node stops serving. Browsers read it
//! with `fetch()`, which can present the admin token in a header (`EventSource` cannot).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::Serialize;

use super::{cluster, views};
use crate::http::admin::AdminState;

/// How often the feed sends the PKs and the lobby.
const PERIOD: Duration = Duration::from_secs(1);

/// The cluster's status goes out every this many periods.
const CLUSTER_EVERY: u64 = 2;

struct Feed {
    state: AdminState,
    ticks: tokio::time::Interval,
    count: u64,
    /// The last audit entry sent.
    audit_seq: u64,
    pending: VecDeque<Event>,
}

pub async fn events(State(state): State<AdminState>) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut ticks = tokio::time::interval(PERIOD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let feed = Feed { state, ticks, count: 0, audit_seq: 0, pending: VecDeque::new() };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        while feed.pending.is_empty() {
            let closing = feed.state.closing.clone();
            tokio::select! {
                _ = feed.ticks.tick() => {}
                () = closing.cancelled() => return None,
            }
            feed.fill().await;
        }
        let event = feed.pending.pop_front()?;
        Some((Ok(event), feed))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

impl Feed {
    async fn fill(&mut self) {
        let node = self.state.node.clone();
        let node = &node;
        if self.count % CLUSTER_EVERY == 0 {
            let status = cluster::gather(&self.state.gateway, &self.state.sinks).await;
            self.push("cluster", &status);
        }
        self.count += 1;
        self.push("pks", &views::pks(node));
        self.push("lobby", &views::lobby(node));
        let audit = views::audit(node, self.audit_seq);
        if let Some(last) = audit.entries.last() {
            self.audit_seq = last.seq;
            self.push("audit", &audit);
        }
    }

    fn push(&mut self, name: &str, data: &impl Serialize) {
        match Event::default().event(name).json_data(data) {
            Ok(event) => self.pending.push_back(event),
            Err(error) => tracing::warn!(%error, name, "a console event did not encode"),
        }
    }
}
