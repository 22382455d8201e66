//! `pkd bench`: a short run of every scenario against a three-node local cluster it
//! starts itself, through the built binary, as a user runs it. The tests check the
//! report's shape and counts, and the exit code the SLOs give; never a speed.
//!
//! The runs take turns (one cluster at a time): on a two-core machine, parallel
//! clusters would only slow each other down.

use std::process::{Command, Output};
use std::sync::Mutex;

use serde_json::Value;

/// One run at a time.
static CLUSTER: Mutex<()> = Mutex::new(());

/// Runs `pkd bench <scenario> --local 3 --seconds 3 --json` with `extra` flags (which may
/// give other seconds); returns the process's output and the parsed summary.
fn bench(scenario: &str, extra: &[&str]) -> (Output, Value) {
    let _turn = CLUSTER.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let seconds: &[&str] = if extra.contains(&"--seconds") { &[] } else { &["--seconds", "3"] };
    let output = Command::new(env!("CARGO_BIN_EXE_pkd"))
        .args(["bench", scenario, "--local", "3", "--arenas", "2", "--warmup", "0.5"])
        .args(seconds)
        .args(["--json", "--quiet"])
        .args(extra)
        .output()
        .expect("run pkd bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let summary: Value = serde_json::from_str(&stdout).unwrap_or_else(|error| {
        panic!(
            "{scenario}: no JSON summary ({error}); exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (output, summary)
}

fn number(summary: &Value, pointer: &str) -> f64 {
    summary.pointer(pointer).and_then(Value::as_f64).unwrap_or_else(|| panic!("no number at {pointer}: {summary:#}"))
}

/// What every summary must hold, whatever the scenario.
fn check_shape(summary: &Value, scenario: &str, primary: &str) {
    assert_eq!(summary["scenario"], scenario);
    assert_eq!(summary["target"]["kind"], "local");
    assert_eq!(summary["target"]["nodes"].as_array().map(Vec::len), Some(3));
    assert_eq!(summary["primary_latency"], primary);
    let requests = number(summary, "/requests");
    let ok = number(summary, "/ok");
    let errors = number(summary, "/errors");
    assert!(requests > 0.0, "{scenario}: no requests: {summary:#}");
    assert_eq!(requests, ok + errors, "{scenario}: every request is ok or an error");
    let by_code: f64 = summary["errors_by_code"].as_object().unwrap().values().filter_map(Value::as_f64).sum();
    assert!(by_code >= errors, "{scenario}: every error has a code: {summary:#}");
    assert!(number(summary, "/duration_seconds") > 0.0);
    assert!(number(summary, "/throughput") >= 0.0);
    let latencies = summary["latency"].as_object().unwrap();
    assert!(latencies.contains_key(primary), "{scenario}: no {primary} latency");
    assert_eq!(latencies[primary]["count"].as_f64(), Some(ok), "{scenario}: one {primary} sample per ok request");
    for (name, latency) in latencies {
        if latency["count"] == 0 {
            continue;
        }
        let order: Vec<f64> = ["min_us", "p50_us", "p75_us", "p90_us", "p99_us", "p99_9_us", "p99_99_us", "max_us"]
            .iter()
            .map(|key| latency[*key].as_f64().unwrap())
            .collect();
        assert!(
            order.windows(2).all(|pair| pair[0] <= pair[1]),
            "{scenario}: {name} percentiles out of order: {order:?}"
        );
    }
    let nodes = summary["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    for node in nodes {
        for field in ["pid", "cpu_seconds", "cpu_cores", "resident_bytes", "data_dir_bytes"] {
            assert!(node[field].is_number(), "{scenario}: node {} has no {field}: {node:#}", node["id"]);
        }
        assert!(node["resident_bytes"].as_f64().unwrap() > 0.0);
    }
    assert!(summary["load_generator"]["cpu_seconds"].is_number());
    assert!(
        summary["raft"]["arena_entries"].is_number(),
        "{scenario}: the local cluster's admin API gives raft figures"
    );
}

#[test]
fn gifts_are_acknowledged_and_all_counted_and_a_met_slo_exits_zero() {
    let (output, summary) =
        bench("gifts", &["--clients", "8", "--pks", "8", "--slo", "throughput>0,errors<1000000000"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    check_shape(&summary, "gifts", "ack");
    assert_eq!(summary["load"]["mode"], "closed");
    assert!(summary["load"]["label"].as_str().unwrap().contains("closed loop"));
    assert_eq!(number(&summary, "/items/ok"), number(&summary, "/ok"), "one gift per request");
    assert!(summary["raft"]["gifts_per_entry"].as_f64().is_some_and(|per_entry| per_entry > 0.0));
    assert_eq!(summary["details"]["gifts_missing"], 0, "every acknowledged gift is in the scores: {summary:#}");
    let slo = summary["slo"].as_array().unwrap();
    assert_eq!(slo.len(), 2);
    assert!(slo.iter().all(|outcome| outcome["passed"] == true));
    assert_eq!(summary["passed"], true);
}

#[test]
fn the_cache_is_watched_and_every_gift_shows_in_its_pk_key() {
    let _redis = crate::common::REDIS_DATABASE.blocking_lock();
    let url = std::env::var("PKD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/9".to_owned());
    let (output, summary) = bench("gifts", &["--clients", "8", "--pks", "8", "--redis", &url]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    check_shape(&summary, "gifts", "ack");
    let cache = &summary["latency"]["cache"];
    assert!(number(&summary, "/latency/cache/count") > 0.0, "no gift timed into the cache: {summary:#}");
    assert!(cache["p50_us"].as_f64() >= summary["latency"]["ack"]["min_us"].as_f64(), "{summary:#}");
    assert_eq!(summary["details"]["cache_gifts_unseen"], 0, "every acknowledged gift reached pk_: {summary:#}");
    let per_gift = number(&summary, "/details/cache_script_calls_per_gift");
    assert!(per_gift > 0.0 && per_gift <= 2.0, "{per_gift} cache writes per gift");
}

#[test]
fn batches_in_an_open_loop_are_timed_from_their_due_time() {
    let (output, summary) = bench("gifts", &["--rate", "100", "--batch", "20", "--pks", "8"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    check_shape(&summary, "gifts", "ack");
    assert_eq!(summary["load"]["mode"], "open");
    assert_eq!(summary["load"]["batch"], 20);
    // 3 s at 100 requests/s: about 300 requests, each of 20 gifts.
    let requests = number(&summary, "/requests");
    assert!((250.0..=310.0).contains(&requests), "{requests} requests");
    let gifts = number(&summary, "/items/ok") + number(&summary, "/items/failed");
    assert_eq!(gifts, 20.0 * requests);
}

#[test]
fn fanout_delivers_every_gift_to_the_tracked_viewers() {
    let (output, summary) = bench("fanout", &["--pks", "6", "--viewers", "4", "--rate", "10", "--batch", "6"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    check_shape(&summary, "fanout", "ack");
    let details = &summary["details"];
    assert_eq!(details["viewers"], 24);
    assert_eq!(details["tracked_viewers"], 6);
    assert!(number(&summary, "/details/tracked_pushes") > 0.0);
    assert!(number(&summary, "/latency/delivery/count") > 0.0, "{summary:#}");
    for field in ["undelivered", "violations", "cadence_too_frequent", "cadence_too_sparse"] {
        assert!(details[field].is_number(), "no {field}");
    }
}

#[test]
fn a_match_storm_pairs_every_anchor_and_an_impossible_slo_exits_non_zero() {
    let (output, summary) = bench("match", &["--rate", "50", "--rounds", "2", "--slo", "reply.p50<1ns"]);
    assert!(!output.status.success(), "an SLO no run can meet must fail the run");
    check_shape(&summary, "match", "reply");
    let details = &summary["details"];
    let started = number(&summary, "/details/started");
    assert!(started > 0.0);
    assert_eq!(number(&summary, "/details/anchors_matched") + number(&summary, "/details/unmatched"), started);
    assert!(details["all_pairs_matched"].is_boolean());
    assert!(summary["latency"]["created"]["count"].as_f64().is_some_and(|count| count > 0.0));
    assert_eq!(details["invitations"]["rounds"], 2);
    assert!(details["invitations"]["race_violations"].is_number());
    assert_eq!(summary["passed"], false);
    assert_eq!(summary["slo"][0]["passed"], false);
    assert!(String::from_utf8_lossy(&output.stderr).contains("SLO"));
}

#[test]
fn failover_kills_leaders_and_measures_recovery_and_late_ends() {
    let (output, summary) =
        bench("failover", &["--seconds", "4", "--every", "1.5", "--down", "0.5", "--battle", "1s", "--pks", "4"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    check_shape(&summary, "failover", "ack");
    let faults = summary["details"]["faults"].as_array().unwrap();
    assert!(!faults.is_empty(), "{summary:#}");
    assert!(faults.iter().all(|fault| fault["action"] == "kill"));
    let restarts: f64 =
        summary["nodes"].as_array().unwrap().iter().map(|node| node["restarts"].as_f64().unwrap()).sum();
    assert_eq!(restarts, faults.len() as f64);
    assert!(number(&summary, "/details/recovery_seconds") >= 0.0);
    assert!(summary["latency"]["lateness"].is_object());
}

#[test]
fn a_soak_samples_every_node_over_time() {
    let (output, summary) = bench("soak", &["--sample-every", "1s", "--rate", "20", "--batch", "5", "--pks", "4"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    check_shape(&summary, "soak", "ack");
    for node in summary["nodes"].as_array().unwrap() {
        let samples = node["samples"].as_array().unwrap();
        assert!(samples.len() >= 2, "{node:#}");
        assert!(
            samples.iter().all(|sample| sample["resident_bytes"].is_number() && sample["data_dir_bytes"].is_number())
        );
    }
    assert_eq!(summary["details"]["growth"].as_array().map(Vec::len), Some(3));
}

#[test]
fn a_mixed_day_matches_ends_and_moves_viewers_around() {
    let (output, summary) = bench("mixed", &["--battle", "1s", "--anchors", "16", "--viewers", "20", "--rate", "20"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    check_shape(&summary, "mixed", "ack");
    let details = &summary["details"];
    assert!(number(&summary, "/details/pks_created") > 0.0);
    assert!(number(&summary, "/details/starts") > 0.0);
    assert!(number(&summary, "/details/viewer_joins") > 0.0, "{details:#}");
    assert!(number(&summary, "/latency/command/count") > 0.0);
}

#[test]
fn bad_flags_are_refused_with_a_reason() {
    for (flags, reason) in [
        (vec!["bench", "gifts"], "--local"),
        (vec!["bench", "gifts", "--local", "3", "--slo", "ack.p99"], "comparison"),
        (vec!["bench", "gifts", "--local", "3", "--batch", "5000"], "--batch"),
        (vec!["bench", "gifts", "--nodes", "127.0.0.1:1"], "--login-secret"),
        (vec!["bench", "gifts", "--local", "3", "--rate", "0"], "--rate"),
        (vec!["bench", "gifts", "--local", "3", "--duration", "soon"], "duration"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_pkd")).args(&flags).output().expect("run pkd");
        assert!(!output.status.success(), "{flags:?} must be refused");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(reason), "{flags:?}: expected {reason:?} in {stderr}");
    }
}
