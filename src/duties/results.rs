//! Carrying one arena's settled results into the SQL results store.
//!
//! Two ways, by store ([`Placement`]): the app's MySQL database is shared by every node,
//! so the arena's leader alone writes it, once; each node's embedded SQLite file is its
//! own, so every node writes every result into it from its own replica, and the history
//! any node answers is the same, complete and current.
//!
//! The duty works from the arena's outbox ([`pkd_raft::Arena::pending_results`]) rather
//! than the effect stream (effects covered by an installed snapshot are never published,
//! and a slow subscriber loses effects): it writes the pending results, reads them back
//! (repairing any difference), and only then proposes `ConfirmResultPersisted`. A new
//! leader simply resumes from the outbox; the writes are idempotent upserts, so a result
//! written twice leaves the same rows. While a PK runs, the duty also writes its `t_pk`
//! row once and its gifters' totals at a bounded rate.
//!
//! A database outage only delays these writes: the duty counts the error, backs off and
//! tries again. The engine never waits for it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use pkd_raft::effect::SettledPk;
use pkd_raft::{Arena, ArenaAction, PkId, PkView, StateMachine};
use tokio::time::Instant;

use super::{Duty, MIN_BACKOFF, Step};
use crate::clock::wall_clock;
use crate::replication::consensus::{self, GroupId};
use crate::replication::error::ProposeError;
use crate::replication::node::Node;
use crate::replication::replica::ReplicaHandle;
use crate::retry::Backoff;
use crate::sinks::{CacheError, Dialect, ResultsStore, SinkMetrics, StoreError};

/// Why one step of a sink duty failed. The duty logs it, counts it and tries again.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("confirming a stored result failed: {0}")]
    Propose(#[from] ProposeError),
    #[error("{0} did not answer within {1:?}")]
    Timeout(&'static str, Duration),
}

/// How the results duty paces itself.
#[derive(Clone, Debug)]
pub struct ResultsConfig {
    /// At most this many settled PKs per transaction.
    pub batch: usize,
    /// At most this many running PKs' rows (started rows, gifter totals) between two
    /// looks at the outbox, so that settled results never wait behind a long pass.
    pub step: usize,
    /// How often an idle driver looks at its arena again.
    pub poll: Duration,
    /// How often the gifter totals of running PKs are written (only PKs whose totals
    /// changed).
    pub gifts_every: Duration,
    /// The cap of the retry backoff while the database is down.
    pub max_backoff: Duration,
    /// How long one database operation may take before it counts as failed.
    pub operation_timeout: Duration,
}

impl Default for ResultsConfig {
    fn default() -> Self {
        ResultsConfig {
            batch: 200,
            step: 16,
            poll: Duration::from_millis(50),
            gifts_every: Duration::from_secs(2),
            max_backoff: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(30),
        }
    }
}

/// Whether a round left work behind.
enum Round {
    /// More settled PKs wait: go again at once.
    More,
    Idle,
}

/// Who writes a results store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// One store for the whole cluster (MySQL): the arena's leader writes it, and confirms
    /// each result once (`ConfirmResultPersisted`).
    Shared,
    /// A store on every node (SQLite): every node writes it from its own replica, and
    /// confirms each result for itself (`ConfirmResultStored`); a result leaves the outbox
    /// once every voter's store holds it.
    PerNode,
}

/// Carries one arena's settled results (and running PKs' rows) into the results store:
/// on the arena's leader for a shared store, on every node for a store of its own.
pub struct Results {
    placement: Placement,
    node: Node,
    group: GroupId,
    replica: ReplicaHandle<Arena>,
    store: ResultsStore,
    config: ResultsConfig,
    metrics: Arc<SinkMetrics>,
    /// Running PKs whose `t_pk` row was written under the current leadership.
    started: BTreeSet<PkId>,
    /// Running PKs' side totals when their gifters were last written.
    gifts_written: BTreeMap<PkId, [i64; 2]>,
    /// Running PKs whose gifter totals the current pass has still to look at.
    gifts_due: VecDeque<PkId>,
    next_gifts: Instant,
}

impl Results {
    /// The results duty of the arena `replica` belongs to.
    pub fn new(
        node: &Node,
        replica: &ReplicaHandle<Arena>,
        store: ResultsStore,
        config: ResultsConfig,
        metrics: Arc<SinkMetrics>,
    ) -> Results {
        let placement = match store.dialect() {
            Dialect::MySql => Placement::Shared,
            Dialect::Sqlite => Placement::PerNode,
        };
        Results {
            placement,
            node: node.clone(),
            group: replica.group(),
            replica: replica.clone(),
            store,
            config,
            metrics,
            started: BTreeSet::new(),
            gifts_written: BTreeMap::new(),
            gifts_due: VecDeque::new(),
            next_gifts: Instant::now(),
        }
    }

    fn read<T>(&self, read: impl FnOnce(&Arena) -> T) -> T {
        self.replica.read(read)
    }

    async fn round(&mut self) -> Result<Round, SinkError> {
        let batch = self.config.batch;
        let me = self.node.id();
        let pending: Vec<SettledPk> = match self.placement {
            Placement::Shared => self.read(|arena| arena.pending_results().take(batch).cloned().collect()),
            Placement::PerNode => self.read(|arena| arena.unstored_results(me).take(batch).cloned().collect()),
        };
        if !pending.is_empty() {
            self.store_results(&pending).await?;
            if pending.len() == batch {
                return Ok(Round::More);
            }
        }
        let more_started = self.store_started().await?;
        if self.gifts_due.is_empty() && Instant::now() >= self.next_gifts {
            self.plan_gifts();
            self.next_gifts = Instant::now() + self.config.gifts_every;
        }
        let more_gifts = self.store_gifts().await?;
        Ok(if more_started || more_gifts { Round::More } else { Round::Idle })
    }

    /// Writes settled PKs, reads them back (rewriting any that differ), then confirms
    /// them to the arena, which drops them from its outbox.
    async fn store_results(&mut self, pending: &[SettledPk]) -> Result<(), SinkError> {
        let limit = self.config.operation_timeout;
        // A deliberately broken build skips some results, yet confirms them (fault tests).
        #[cfg(feature = "fault-injection")]
        let kept: Vec<SettledPk> =
            pending.iter().filter(|settled| !crate::fault_hooks::drops_result(settled.pk.0)).cloned().collect();
        #[cfg(feature = "fault-injection")]
        let written: &[SettledPk] = &kept;
        #[cfg(not(feature = "fault-injection"))]
        let written = pending;
        timed("writing settled PKs", limit, self.store.record_settled_batch(written)).await?;
        SinkMetrics::add(&self.metrics.results_written, pending.len() as u64);
        let now = wall_clock();
        for settled in pending {
            let lag = u64::try_from(now.since(settled.end_time)).unwrap_or(0);
            self.metrics.record_lag(lag);
        }
        for settled in written {
            let mismatches = timed("verifying a settled PK", limit, self.store.verify_settled(settled)).await?;
            if !mismatches.is_empty() {
                tracing::warn!(pk = %settled.pk, ?mismatches, "stored result differs from the engine's; rewriting");
                timed("repairing a settled PK", limit, self.store.record_settled(settled)).await?;
                SinkMetrics::add(&self.metrics.results_repaired, 1);
            }
        }
        let voters = match self.placement {
            Placement::Shared => Vec::new(),
            Placement::PerNode => self.node.group(self.group)?.metrics().read(consensus::voters),
        };
        let confirmations = pending.iter().map(|settled| {
            let node = &self.node;
            let group = self.group;
            let pk = settled.pk;
            let confirm = match self.placement {
                Placement::Shared => ArenaAction::ConfirmResultPersisted { pk },
                Placement::PerNode => ArenaAction::ConfirmResultStored { pk, node: node.id(), voters: voters.clone() },
            };
            async move { node.propose_arena(group, confirm).await }
        });
        let outcomes = futures_util::future::join_all(confirmations).await;
        for settled in pending {
            self.started.remove(&settled.pk);
            self.gifts_written.remove(&settled.pk);
        }
        let mut failure = None;
        for outcome in outcomes {
            match outcome {
                Ok(_) => SinkMetrics::add(&self.metrics.results_confirmed, 1),
                Err(error) => failure = Some(error),
            }
        }
        // Unconfirmed PKs stay in the outbox and are written (identically) again.
        match failure {
            Some(error) => Err(error.into()),
            None => Ok(()),
        }
    }

    /// Writes the `t_pk` row of running PKs not written yet under this leadership, at
    /// most [`ResultsConfig::step`] of them; `true` if more wait.
    async fn store_started(&mut self) -> Result<bool, SinkError> {
        let started = &self.started;
        let step = self.config.step;
        let fresh: Vec<PkView> = self.read(|arena| {
            arena.running().filter(|pk| !started.contains(pk)).take(step + 1).filter_map(|pk| arena.view(pk)).collect()
        });
        let more = fresh.len() > step;
        for view in fresh.into_iter().take(step) {
            timed("writing a started PK", self.config.operation_timeout, self.store.record_started(&view)).await?;
            SinkMetrics::add(&self.metrics.started_written, 1);
            self.started.insert(view.pk);
        }
        Ok(more)
    }

    /// Starts a pass over the running PKs' gifter totals, and forgets PKs no longer
    /// running.
    fn plan_gifts(&mut self) {
        let running: Vec<PkId> = self.read(|arena| arena.running().collect());
        let alive: BTreeSet<PkId> = running.iter().copied().collect();
        self.gifts_written.retain(|pk, _| alive.contains(pk));
        self.started.retain(|pk| alive.contains(pk));
        self.gifts_due = running.into();
    }

    /// Writes the gifter totals of the next [`ResultsConfig::step`] PKs of the
    /// pass whose side totals changed since their last write; `true` if more wait.
    async fn store_gifts(&mut self) -> Result<bool, SinkError> {
        let take = self.config.step.min(self.gifts_due.len());
        let due: Vec<PkId> = self.gifts_due.drain(..take).collect();
        let written = &self.gifts_written;
        let (at, changed) = self.replica.read(|arena| {
            let changed: Vec<_> = due
                .iter()
                .filter_map(|pk| {
                    let view = arena.view(*pk)?;
                    let totals = [view.source.beans, view.target.beans];
                    if totals == written.get(pk).copied().unwrap_or([0, 0]) {
                        return None;
                    }
                    Some((*pk, totals, arena.gifter_totals(*pk)?))
                })
                .collect();
            (arena.now(), changed)
        });
        for (pk, totals, [source, target]) in changed {
            let write = self.store.record_gifts(pk, at, &source, &target);
            timed("writing gifter totals", self.config.operation_timeout, write).await?;
            SinkMetrics::add(&self.metrics.gift_totals_written, 1);
            self.gifts_written.insert(pk, totals);
        }
        Ok(!self.gifts_due.is_empty())
    }
}

impl Results {
    /// Who writes this duty's store.
    pub fn placement(&self) -> Placement {
        self.placement
    }
}

impl Duty for Results {
    fn name(&self) -> &'static str {
        "results"
    }

    fn lead(&mut self) {
        self.started.clear();
        self.gifts_written.clear();
        self.gifts_due.clear();
    }

    async fn step(&mut self) -> Step {
        match self.round().await {
            Ok(Round::More) => Step::Worked,
            Ok(Round::Idle) => Step::Sleep(self.config.poll),
            Err(error) => {
                SinkMetrics::add(&self.metrics.results_errors, 1);
                tracing::warn!(group = %self.group, %error, "results sink: retrying");
                Step::Failed
            }
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(MIN_BACKOFF, self.config.max_backoff)
    }
}

/// Runs `operation`, failing it after `limit`.
pub(crate) async fn timed<T, E>(
    what: &'static str,
    limit: Duration,
    operation: impl Future<Output = Result<T, E>>,
) -> Result<T, SinkError>
where
    SinkError: From<E>,
{
    match tokio::time::timeout(limit, operation).await {
        Ok(result) => result.map_err(SinkError::from),
        Err(_) => Err(SinkError::Timeout(what, limit)),
    }
}
