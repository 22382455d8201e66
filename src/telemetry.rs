//! The node's metrics: every name in this one file, recorded through the `metrics` facade
//! and rendered by its Prometheus exporter on the admin listener's `GET /metrics`.
//!
//! Names follow `pkd_<subsystem>_<what>_<unit>`, in base units (`_seconds`, `_bytes`,
//! `_total` for counters). Labels take a few known values only (a command id, a reply
//! code, a group id, a push type): never a user or a PK id.
//!
//! Events are counted where they happen (commands, gifts, pushes); states are sampled when
//! Prometheus scrapes (raft groups, PKs, the queue, the sinks' counters, the process).

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::gateway::Gateway;
use crate::procfs;
use crate::sinks::SinkCounters;

// ---- events --------------------------------------------------------------------------

/// WebSocket commands answered, by `command` (its id) and reply `code`.
pub const COMMANDS: &str = "pkd_commands_total";
/// Time from a command frame's arrival to its reply, by `command`.
pub const COMMAND_SECONDS: &str = "pkd_command_duration_seconds";
/// Gifts from the gift API, by `outcome` (`counted`, `duplicate`, `refused`, `unavailable`)
/// and reply `code`.
pub const GIFTS: &str = "pkd_gifts_total";
/// Time from a gift request's arrival to its answer.
pub const GIFT_REQUEST_SECONDS: &str = "pkd_gift_request_duration_seconds";
/// Push frames handed to sessions, by push `type`.
pub const PUSHES: &str = "pkd_pushes_total";
/// Sessions dropped for taking their pushes too slowly.
pub const SLOW_DROPS: &str = "pkd_sessions_dropped_slow_total";
/// Time from a PK's change (a gift applied here) to the push 10 that shows it.
pub const CHANGE_TO_PUSH_SECONDS: &str = "pkd_change_to_push_seconds";
/// Connections refused: over a user's cap, or while draining.
pub const CONNECTIONS_REFUSED: &str = "pkd_connections_refused_total";

// ---- states, sampled at each scrape --------------------------------------------------

pub const CONNECTIONS: &str = "pkd_connections";
pub const PKS_RUNNING: &str = "pkd_pks_running";
pub const MATCHING: &str = "pkd_matching_anchors";
pub const RAFT_IS_LEADER: &str = "pkd_raft_is_leader";
pub const RAFT_LEADER: &str = "pkd_raft_leader_node";
pub const RAFT_TERM: &str = "pkd_raft_term";
pub const RAFT_LAST_LOG: &str = "pkd_raft_last_log_index";
pub const RAFT_COMMITTED: &str = "pkd_raft_committed_index";
pub const RAFT_APPLIED: &str = "pkd_raft_applied_index";
pub const RAFT_ELECTIONS: &str = "pkd_raft_term_changes_total";
pub const RAFT_QUEUE: &str = "pkd_raft_proposal_queue_depth";
pub const STORAGE_FLUSHES: &str = "pkd_storage_flushes_total";
pub const STORAGE_FLUSH_SECONDS: &str = "pkd_storage_flush_seconds_total";
pub const PROCESS_CPU: &str = "pkd_process_cpu_seconds_total";
pub const PROCESS_MEMORY: &str = "pkd_process_resident_memory_bytes";
pub const PROCESS_FDS: &str = "pkd_process_open_fds";
pub const PROCESS_MAX_FDS: &str = "pkd_process_max_fds";

/// Bucket bounds of the latency histograms, in seconds.
const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.5, 5.0];

/// The process's exporter, installed once (every node started in this process shares it).
pub fn exporter() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &LATENCY_BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("another metrics recorder is installed: pkd's metrics will read empty");
        }
        describe();
        handle
    })
}

fn describe() {
    describe_counter!(COMMANDS, "WebSocket commands answered, by command id and reply code");
    describe_histogram!(COMMAND_SECONDS, metrics::Unit::Seconds, "command frame to reply");
    describe_counter!(GIFTS, "gifts from the gift API, by outcome and reply code");
    describe_histogram!(GIFT_REQUEST_SECONDS, metrics::Unit::Seconds, "gift request to answer");
    describe_counter!(PUSHES, "push frames handed to sessions, by push type");
    describe_counter!(SLOW_DROPS, "sessions dropped for taking their pushes too slowly");
    describe_histogram!(CHANGE_TO_PUSH_SECONDS, metrics::Unit::Seconds, "a PK's change to the push 10 showing it");
    describe_counter!(CONNECTIONS_REFUSED, "WebSocket upgrades refused (a user's cap, draining)");
    describe_gauge!(CONNECTIONS, "WebSocket sessions on this node");
    describe_gauge!(PKS_RUNNING, "PKs running, in this node's replicas");
    describe_gauge!(MATCHING, "anchors matching, in this node's lobby replica");
    describe_gauge!(RAFT_IS_LEADER, "1 if this node leads the group");
    describe_gauge!(RAFT_LEADER, "the group's leader as this node knows it (0: none)");
    describe_gauge!(RAFT_TERM, "the group's term");
    describe_gauge!(RAFT_LAST_LOG, "the last log index this node holds");
    describe_gauge!(RAFT_COMMITTED, "the last index this node knows committed");
    describe_gauge!(RAFT_APPLIED, "the last index this node applied");
    describe_counter!(RAFT_ELECTIONS, "term changes this node saw (elections)");
    describe_gauge!(RAFT_QUEUE, "proposal runs waiting in the group's queue on this node");
    describe_counter!(STORAGE_FLUSHES, "disk flushes (fsyncs) of the node's database");
    describe_gauge!(STORAGE_FLUSH_SECONDS, metrics::Unit::Seconds, "time spent in those flushes");
    describe_gauge!(PROCESS_CPU, metrics::Unit::Seconds, "CPU time of the process, user and system");
    describe_gauge!(PROCESS_MEMORY, metrics::Unit::Bytes, "resident memory of the process");
    describe_gauge!(PROCESS_FDS, "open file descriptors");
    describe_gauge!(PROCESS_MAX_FDS, "the open-file limit");
    for (name, help, _) in SinkCounters::default().named_with_help() {
        describe_counter!(name, help);
    }
    describe_gauge!("pkd_results_lag_seconds", metrics::Unit::Seconds, "settlement to stored, last PK");
    describe_gauge!("pkd_results_lag_max_seconds", metrics::Unit::Seconds, "settlement to stored, worst PK");
}

/// A command answered: its id, its reply code, how long it took. Ids pkd does not know
/// count as `other`, so that clients cannot make up label values.
pub fn command_answered(command: Option<i64>, code: &str, took: Duration) {
    let command = match command {
        Some(id @ (27 | 28 | 40..=44)) => id.to_string(),
        _ => "other".to_owned(),
    };
    counter!(COMMANDS, "command" => command.clone(), "code" => code.to_owned()).increment(1);
    histogram!(COMMAND_SECONDS, "command" => command).record(took.as_secs_f64());
}

/// A gift answered.
pub fn gift_answered(outcome: &'static str, code: &str) {
    counter!(GIFTS, "outcome" => outcome, "code" => code.to_owned()).increment(1);
}

/// A request to the gift API answered (one gift or a batch), from its body read to its
/// answer.
pub fn gift_request_answered(took: Duration) {
    histogram!(GIFT_REQUEST_SECONDS).record(took.as_secs_f64());
}

/// The event counters of this process, summed over their labels: what the admin
/// console's per-node figures show, read from the same exporter `/metrics` renders.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventTotals {
    /// [`PUSHES`], every push type.
    pub pushes: u64,
    /// [`SLOW_DROPS`].
    pub slow_drops: u64,
    /// [`GIFTS`] with outcome `counted`.
    pub gifts_counted: u64,
    /// [`COMMANDS`], every command and code.
    pub commands: u64,
    /// [`CONNECTIONS_REFUSED`].
    pub connections_refused: u64,
}

/// Reads the event counters from the exporter's text.
pub fn event_totals() -> EventTotals {
    totals_in(&exporter().render())
}

fn totals_in(text: &str) -> EventTotals {
    let mut totals = EventTotals::default();
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let labels = line.get(name_end..).and_then(|rest| rest.strip_prefix('{')).and_then(|rest| rest.split_once('}'));
        let labels = labels.map_or("", |(labels, _)| labels);
        let Some(value) = line.rsplit(' ').next().and_then(|value| value.parse::<f64>().ok()) else { continue };
        let value = value as u64;
        match name {
            PUSHES => totals.pushes += value,
            SLOW_DROPS => totals.slow_drops += value,
            GIFTS if labels.split(',').any(|label| label == "outcome=\"counted\"") => totals.gifts_counted += value,
            COMMANDS => totals.commands += value,
            CONNECTIONS_REFUSED => totals.connections_refused += value,
            _ => {}
        }
    }
    totals
}

/// Renders the metrics, after sampling the states.
pub fn render(gateway: &Gateway, sinks: &SinkCounters) -> String {
    let handle = exporter();
    sample(gateway, sinks);
    handle.render()
}

fn sample(gateway: &Gateway, sinks: &SinkCounters) {
    let node = gateway.node();
    gauge!(CONNECTIONS).set(gateway.hub().session_count() as f64);
    let running: usize = node.arenas().iter().map(|arena| arena.read(|arena| arena.running().count())).sum();
    gauge!(PKS_RUNNING).set(running as f64);
    gauge!(MATCHING).set(node.lobby().read(|lobby| lobby.waiting_anchors().count()) as f64);
    let status = node.status();
    static TERMS: Mutex<BTreeMap<u64, u64>> = Mutex::new(BTreeMap::new());
    let mut terms = TERMS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    for group in &status.groups {
        let id = group.id.to_string();
        gauge!(RAFT_IS_LEADER, "group" => id.clone()).set(f64::from(u8::from(group.leader == Some(status.node))));
        gauge!(RAFT_LEADER, "group" => id.clone()).set(group.leader.unwrap_or(0) as f64);
        gauge!(RAFT_TERM, "group" => id.clone()).set(group.term as f64);
        gauge!(RAFT_LAST_LOG, "group" => id.clone()).set(group.last_log_index.unwrap_or(0) as f64);
        gauge!(RAFT_COMMITTED, "group" => id.clone()).set(group.committed.unwrap_or(0) as f64);
        gauge!(RAFT_APPLIED, "group" => id.clone()).set(group.applied.unwrap_or(0) as f64);
        let seen = terms.insert(group.id, group.term).unwrap_or(group.term);
        counter!(RAFT_ELECTIONS, "group" => id.clone()).increment(group.term.saturating_sub(seen));
        if let Ok(local) = node.group(pkd_storage::GroupId(group.id)) {
            gauge!(RAFT_QUEUE, "group" => id).set(local.queue_depth() as f64);
        }
    }
    drop(terms);
    let flushes = node.flush_totals();
    counter!(STORAGE_FLUSHES).absolute(flushes.count);
    gauge!(STORAGE_FLUSH_SECONDS).set(flushes.busy.as_secs_f64());
    for (name, value) in sinks.named() {
        counter!(name).absolute(value);
    }
    gauge!("pkd_results_lag_seconds").set(sinks.result_lag_last_ms as f64 / 1000.0);
    gauge!("pkd_results_lag_max_seconds").set(sinks.result_lag_max_ms as f64 / 1000.0);
    let me = std::process::id();
    gauge!(PROCESS_CPU).set(procfs::cpu_seconds(me).unwrap_or(0.0));
    gauge!(PROCESS_MEMORY).set(procfs::resident_bytes(me).map_or(0, |(resident, _)| resident) as f64);
    let (open, max) = procfs::file_descriptors(me).unwrap_or((0, 0));
    gauge!(PROCESS_FDS).set(open as f64);
    gauge!(PROCESS_MAX_FDS).set(max as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_totals_sum_over_labels() {
        let text = "# TYPE pkd_pushes_total counter\n\
            pkd_pushes_total{type=\"10\"} 7\n\
            pkd_pushes_total{type=\"13\"} 2\n\
            pkd_gifts_total{outcome=\"counted\",code=\"000000\"} 5\n\
            pkd_gifts_total{outcome=\"refused\",code=\"905041\"} 9\n\
            pkd_sessions_dropped_slow_total 3\n\
            pkd_commands_total{command=\"40\",code=\"000000\"} 4\n\
            pkd_pushes_total_other 100\n";
        let totals = totals_in(text);
        assert_eq!(
            totals,
            EventTotals { pushes: 9, slow_drops: 3, gifts_counted: 5, commands: 4, connections_refused: 0 }
        );
    }
}
