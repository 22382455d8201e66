//! `pkd faults`: short seeded runs against a three-node local cluster it starts itself,
//! through the built binary, as a user runs it: process faults, and network faults
//! through the launcher's link proxy. Each must find no violation and exit zero; the
//! first checks every report file. The checkers' power to find violations is tested
//! twice: on made-up histories in `src/faults/checkers.rs`, and here, with the
//! `fault-injection` feature, against nodes deliberately broken (`PKD_FAULT_BREAK`): each
//! break must be found by the checker that claims to catch it.
//!
//! The runs with a results database and a cache take them from `PKD_TEST_MYSQL_URL` (a
//! server: each run creates a database of its own and drops it) and `PKD_TEST_REDIS_URL`
//! (the tests' Redis database, 9 unless the URL names one, emptied by each run: those runs
//! take their turn with the other cache tests).

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Runs `pkd faults` with `args`, its nodes started with `env`; its output, the report's
/// verdicts and schedule.
// Only the fault-injection tests use it.
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
fn run_faults(args: &[&str], env: &[(&str, &str)]) -> (std::process::Output, Value, Value) {
    let out = tempfile::TempDir::new().unwrap();
    let dir = out.path().join("report");
    let output = Command::new(env!("CARGO_BIN_EXE_pkd"))
        .arg("faults")
        .args(args)
        .arg("--out")
        .arg(&dir)
        .envs(env.iter().copied())
        .output()
        .expect("run pkd faults");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(dir.join("verdicts.json").is_file(), "no report; stderr:\n{stderr}");
    (output, json(&dir.join("verdicts.json")), json(&dir.join("schedule.json")))
}

fn mysql_url() -> String {
    std::env::var("PKD_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned())
}

/// The tests' Redis database: the one `PKD_TEST_REDIS_URL` names, or 9.
fn redis_url() -> String {
    let url = std::env::var("PKD_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/9".to_owned());
    let (_, rest) = url.split_once("://").unwrap_or(("", &url));
    match rest.split_once('/') {
        Some((_, database)) if !database.trim_matches('/').is_empty() => url,
        _ => format!("{}/9", url.trim_end_matches('/')),
    }
}

/// Drops the database a failed run kept (its name is on the run's output).
fn drop_kept_database(stdout: &str) {
    let Some(name) = stdout.lines().find_map(|line| line.strip_prefix("results database kept: ")) else { return };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        sqlx::any::install_default_drivers();
        let admin = sqlx::AnyPool::connect(&mysql_url()).await.expect("the MySQL server of PKD_TEST_MYSQL_URL");
        sqlx::query(&format!("DROP DATABASE {name}")).execute(&admin).await.expect("drop the kept database");
        admin.close().await;
    });
}

/// The verdicts of the checkers that ran.
fn ran(verdicts: &Value) -> impl Iterator<Item = &Value> {
    verdicts.as_array().unwrap().iter().filter(|verdict| verdict["not_run"].is_null())
}

/// The verdict of checker `name`.
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
fn verdict<'a>(verdicts: &'a Value, name: &str) -> &'a Value {
    verdicts.as_array().unwrap().iter().find(|verdict| verdict["name"] == name).unwrap()
}

fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

#[test]
fn a_short_seeded_run_with_faults_finds_no_violation_and_writes_its_report() {
    let out = tempfile::TempDir::new().unwrap();
    let dir = out.path().join("report");
    let output = Command::new(env!("CARGO_BIN_EXE_pkd"))
        .args(["faults", "--seed", "11", "--duration", "30s", "--nemesis", "kill-leader,pause,transfer"])
        .arg("--out")
        .arg(&dir)
        .output()
        .expect("run pkd faults");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", output.status);
    assert!(stderr.contains("pkd faults: seed 11"), "{stderr}");
    for name in ["summary.md", "run.json", "verdicts.json", "schedule.json", "history.jsonl", "settled.json"] {
        assert!(dir.join(name).is_file(), "no {name} in {}", dir.display());
    }
    for node in 1..=3 {
        assert!(dir.join(format!("logs/node-{node}.log")).is_file(), "no log of node {node}");
    }

    let run = json(&dir.join("run.json"));
    assert_eq!(run["seed"], 11);
    assert_eq!(run["violations"], 0);
    assert!(run["replay"].as_str().unwrap().starts_with("pkd faults --seed 11 --duration 30s"), "{run:#}");
    assert!(run["faults"].as_u64().unwrap() >= 1, "the schedule of seed 11 has faults: {run:#}");
    assert_eq!(run["faults_failed"], 0, "{run:#}");
    assert!(run["gifts_ok"].as_u64().unwrap() > 100, "{run:#}");
    assert!(run["pks_seen"].as_u64().unwrap() >= 4, "{run:#}");
    // The viewers watched rooms too, and what they read was checked with the anchors'.
    assert_eq!(run["viewers"], 6, "{run:#}");
    let by_viewers = run["states_read_by_viewers"].as_u64().unwrap();
    assert!(by_viewers > 0 && by_viewers < run["states_read"].as_u64().unwrap(), "{run:#}");

    let verdicts = json(&dir.join("verdicts.json"));
    let names: Vec<&str> =
        verdicts.as_array().unwrap().iter().map(|verdict| verdict["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "gifts_counted_once",
            "ledgers_match_senders",
            "one_pk_at_a_time",
            "one_accept_per_invitation",
            "pks_end_once_in_time",
            "replicas_agree",
            "replicas_identical",
            "pushes_never_go_back",
            "progress_after_faults",
            "sql_matches_engine",
            "redis_converges"
        ]
    );
    for verdict in ran(&verdicts) {
        assert_eq!(verdict["passed"], true, "{verdict:#}");
        assert!(verdict["checked"].as_u64().unwrap() > 0, "{verdict:#}");
    }
    // Without --mysql-url and --redis-url their checkers do not run, and say so.
    for (name, flag) in [("sql_matches_engine", "--mysql-url"), ("redis_converges", "--redis-url")] {
        let skipped = verdict(&verdicts, name);
        assert_eq!(skipped["not_run"], format!("no {flag}"), "{skipped:#}");
        assert_eq!((&skipped["passed"], &skipped["violations"]), (&Value::Bool(false), &Value::from(0)));
        assert!(stdout.contains(&format!("--   {name} (not run: no {flag})")), "{stdout}");
    }
    assert_eq!(run["checkers_not_run"], 2, "{run:#}");

    let schedule = json(&dir.join("schedule.json"));
    let planned = schedule["planned"].as_array().unwrap();
    let carried_out = schedule["carried_out"].as_array().unwrap();
    assert_eq!(planned.len(), carried_out.len(), "{schedule:#}");
    for fault in carried_out {
        assert!(["kill-leader", "pause", "transfer"].contains(&fault["kind"].as_str().unwrap()), "{fault:#}");
        assert!(fault["healed_ms"].as_i64() >= fault["started_ms"].as_i64(), "{fault:#}");
    }

    let history = std::fs::read_to_string(dir.join("history.jsonl")).unwrap();
    let lines: Vec<Value> = history.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    for kind in ["gift", "state", "fault"] {
        assert!(lines.iter().any(|line| line["type"] == kind), "no {kind} line in the history");
    }
    let gift = lines.iter().find(|line| line["type"] == "gift").unwrap();
    for field in ["id", "pk", "receiver", "beans", "invoked_ms", "completed_ms", "attempts", "outcome"] {
        assert!(!gift[field].is_null(), "a gift line without {field}: {gift}");
    }

    let summary = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(summary.contains("# pkd faults: seed 11 (no violation)"), "{summary}");
    assert!(summary.contains("## Timeline"), "{summary}");
    assert!(stdout.contains("ok   gifts_counted_once"), "{stdout}");
}

/// The network nemeses, through the launcher's link proxy. Seed 24 draws a one-way cut, a
/// partition of a leader and a bridge in 40 s.
#[test]
fn a_seeded_run_with_network_faults_carries_them_out_and_finds_no_violation() {
    let out = tempfile::TempDir::new().unwrap();
    let dir = out.path().join("report");
    let nemeses = "partition-leader,partition-half,bridge,drop-one-way,delay,blackhole";
    let output = Command::new(env!("CARGO_BIN_EXE_pkd"))
        .args(["faults", "--seed", "24", "--duration", "40s", "--nemesis", nemeses])
        .arg("--out")
        .arg(&dir)
        .output()
        .expect("run pkd faults");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", output.status);

    let run = json(&dir.join("run.json"));
    assert_eq!(run["violations"], 0, "{run:#}");
    assert!(run["replay"].as_str().unwrap().contains(&format!("--nemesis {nemeses}")), "{run:#}");
    for verdict in ran(&json(&dir.join("verdicts.json"))) {
        assert_eq!(verdict["passed"], true, "{verdict:#}");
        assert!(verdict["checked"].as_u64().unwrap() > 0, "{verdict:#}");
    }

    let schedule = json(&dir.join("schedule.json"));
    let carried_out = schedule["carried_out"].as_array().unwrap();
    let kinds: Vec<&str> = carried_out.iter().map(|fault| fault["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["drop-one-way", "partition-leader", "bridge"], "{schedule:#}");
    for fault in carried_out {
        assert!(fault["error"].is_null(), "{fault:#}");
        let links = fault["links"].as_str().unwrap_or_else(|| panic!("no links: {fault:#}"));
        let healed = fault["healed_ms"].as_i64().unwrap() - fault["started_ms"].as_i64().unwrap();
        assert!(healed >= 2_000, "held at least 2 s: {fault:#}");
        match fault["kind"].as_str().unwrap() {
            "drop-one-way" => assert!(links.contains(" -> "), "{fault:#}"),
            "partition-leader" => {
                let node = fault["node"].as_u64().unwrap();
                assert!(links.starts_with(&format!("{{{node}}} | {{")), "the leader alone on one side: {fault:#}");
            }
            _ => assert!(links.contains(" | ") && links.contains("(bridge "), "{fault:#}"),
        }
        assert!(stderr.contains(&format!("nemesis: {} {links}", fault["kind"].as_str().unwrap())), "{stderr}");
    }
    let summary = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(summary.contains("| links | error |"), "{summary}");
    assert!(summary.contains(" \\| {"), "a partition's sides, escaped in the timeline: {summary}");
}

/// A campaign runs its seeds in turn, each into its own folder, and tables them.
#[test]
fn a_campaign_runs_each_seed_and_tables_them() {
    let dir = tempfile::TempDir::new().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_pkd"))
        .args(["faults", "--seeds", "5-6", "--duration", "15s", "--nemesis", "transfer", "--settle-wait", "10s"])
        .arg("--out")
        .arg(dir.path())
        .output()
        .expect("run pkd faults");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    for seed in [5, 6] {
        assert!(stderr.contains(&format!("seed {seed}: 0 faults, ")), "{stderr}");
        let run = json(&dir.path().join(format!("seed-{seed}/run.json")));
        assert_eq!(run["seed"], seed);
        assert_eq!(run["violations"], 0);
    }
    let table = std::fs::read_to_string(dir.path().join("campaign.md")).unwrap();
    assert!(table.starts_with("# pkd faults: a campaign of 2 runs"), "{table}");
    assert!(table.contains("runs with violations or errors: 0."), "{table}");
    let rows: Vec<&str> = table.lines().filter(|line| line.starts_with("| 5 |") || line.starts_with("| 6 |")).collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(rows.iter().all(|row| row.ends_with("| none |")), "{table}");
    let jsonl = std::fs::read_to_string(dir.path().join("campaign.jsonl")).unwrap();
    assert_eq!(jsonl.lines().count(), 2);
    let output =
        Command::new(env!("CARGO_BIN_EXE_pkd")).args(["faults", "--seeds", "9-3"]).output().expect("run pkd faults");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("ends before it starts"));
}

#[test]
fn bad_flags_are_refused_with_a_reason() {
    let output = Command::new(env!("CARGO_BIN_EXE_pkd"))
        .args(["faults", "--seed", "1", "--nemesis", "flood"])
        .output()
        .expect("run pkd faults");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("flood"));
    let output =
        Command::new(env!("CARGO_BIN_EXE_pkd")).args(["faults", "--anchors", "1"]).output().expect("run pkd faults");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("at least 2"));
    // The membership nemeses keep three voters: two nodes are too few.
    let output = Command::new(env!("CARGO_BIN_EXE_pkd"))
        .args(["faults", "--nodes", "2", "--nemesis", "kill,add-node"])
        .output()
        .expect("run pkd faults");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("add-node keep at least three voters"));
    // A service cut needs its service.
    let output = Command::new(env!("CARGO_BIN_EXE_pkd"))
        .args(["faults", "--seed", "1", "--nemesis", "kill,mysql-cut,redis-cut"])
        .env_remove("PKD_FAULTS_MYSQL_URL")
        .env_remove("PKD_FAULTS_REDIS_URL")
        .output()
        .expect("run pkd faults");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("mysql-cut needs --mysql-url, redis-cut needs --redis-url"), "{stderr}");
    // The run empties the Redis database it is given: it must be named.
    let output = Command::new(env!("CARGO_BIN_EXE_pkd"))
        .args(["faults", "--seed", "1", "--redis-url", "redis://127.0.0.1:6379"])
        .output()
        .expect("run pkd faults");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--redis-url must name a database the run may empty"), "{stderr}");
}

/// The results database and the cache behind links the nemesis cuts, with a process fault
/// between the cuts: seed 58 draws a MySQL cut, a kill and a Redis cut in 40 s. Every
/// checker runs, the two of the services included, and none finds a violation; the run's
/// database is dropped.
#[test]
fn results_database_and_cache_cut_and_restored_break_no_promise() {
    let _redis = crate::common::REDIS_DATABASE.blocking_lock();
    let (mysql, redis) = (mysql_url(), redis_url());
    let args = [
        "--seed",
        "58",
        "--duration",
        "40s",
        "--nemesis",
        "mysql-cut,redis-cut,kill",
        "--mysql-url",
        &mysql,
        "--redis-url",
        &redis,
    ];
    let (output, verdicts, schedule) = run_faults(&args, &[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    drop_kept_database(&stdout);
    for verdict in verdicts.as_array().unwrap() {
        assert_eq!(verdict["passed"], true, "{verdict:#}\n{stdout}\n{stderr}");
        assert!(verdict["checked"].as_u64().unwrap() > 0, "{verdict:#}");
    }
    assert!(output.status.success(), "{stderr}");
    assert!(!stdout.contains("kept"), "a passing run drops its database: {stdout}");
    let carried_out = schedule["carried_out"].as_array().unwrap();
    let kinds: Vec<&str> = carried_out.iter().map(|fault| fault["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["mysql-cut", "kill", "redis-cut"], "{schedule:#}");
    for fault in carried_out {
        assert!(fault["error"].is_null(), "{fault:#}");
        let held = fault["healed_ms"].as_i64().unwrap() - fault["started_ms"].as_i64().unwrap();
        assert!(held >= 1_000, "{fault:#}");
    }
    for kind in ["mysql-cut", "redis-cut"] {
        assert!(stderr.contains(&format!("nemesis: {kind} for ")), "{stderr}");
    }
}

/// A short healthy run (no fault: the schedule of 15 s has none) against nodes broken on
/// purpose must fail, in the checker that claims the broken promise, and print the replay
/// command; answers that checker's evidence.
#[cfg(feature = "fault-injection")]
fn broken_run_is_caught(broken: &str, checker: &str) -> Vec<String> {
    broken_run_with_services_is_caught(broken, checker, &[])
}

/// [`broken_run_is_caught`] with more flags (the services).
#[cfg(feature = "fault-injection")]
fn broken_run_with_services_is_caught(broken: &str, checker: &str, services: &[&str]) -> Vec<String> {
    broken_run_of_is_caught(broken, checker, "15s", services)
}

/// [`broken_run_with_services_is_caught`] with a workload of `duration`.
#[cfg(feature = "fault-injection")]
fn broken_run_of_is_caught(broken: &str, checker: &str, duration: &str, services: &[&str]) -> Vec<String> {
    broken_run_under_is_caught(broken, checker, duration, "transfer", services)
}

/// [`broken_run_of_is_caught`] under faults drawn from `nemesis`.
#[cfg(feature = "fault-injection")]
fn broken_run_under_is_caught(
    broken: &str,
    checker: &str,
    duration: &str,
    nemesis: &str,
    services: &[&str],
) -> Vec<String> {
    let mut args = vec!["--seed", "5", "--duration", duration, "--nemesis", nemesis, "--settle-wait", "8s"];
    args.extend(services);
    let (output, verdicts, _) = run_faults(&args, &[("PKD_FAULT_BREAK", broken)]);
    drop_kept_database(&String::from_utf8_lossy(&output.stdout));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{broken}: the run passed\n{stderr}");
    let replay = format!("replay this run with: PKD_FAULT_BREAK={broken} pkd faults --seed 5");
    assert!(stderr.contains(&replay), "{stderr}");
    let found = verdict(&verdicts, checker);
    assert_eq!(found["passed"], false, "{broken}: {found:#}");
    found["evidence"].as_array().unwrap().iter().map(|line| line.as_str().unwrap().to_owned()).collect()
}

/// Some evidence, each line naming a PK whose id is a multiple of 3 (the PKs the
/// `drop-results` and `stale-cache` breaks leave out).
#[cfg(feature = "fault-injection")]
fn assert_every_third_pk(evidence: &[String]) {
    assert!(!evidence.is_empty());
    for line in evidence {
        assert_eq!(pk_named(line) % 3, 0, "{evidence:#?}");
    }
}

/// The PK a line of evidence names first ("PK 12: ...").
#[cfg(feature = "fault-injection")]
fn pk_named(line: &str) -> u64 {
    let rest = line.split_once("PK ").unwrap_or_else(|| panic!("no PK in {line:?}")).1;
    rest.chars().take_while(char::is_ascii_digit).collect::<String>().parse().unwrap()
}

#[cfg(feature = "fault-injection")]
#[test]
fn gifts_counted_again_are_caught() {
    // Every gift gets a fresh id, so the run's duplicate deliveries count twice.
    let evidence = broken_run_is_caught("gift-dedup", "gifts_counted_once");
    assert!(evidence.iter().any(|line| line.contains("counted twice")), "{evidence:#?}");
}

#[cfg(feature = "fault-injection")]
#[test]
fn an_accept_told_it_won_when_it_lost_is_caught() {
    // An accept that lost its invitation to someone else (902003) is told it won: no PK
    // follows it, or its round has two winners. Such a loss needs two invitees of one
    // batch to accept: a healthy 15 s run of seed 5 has one, so this run lasts 40 s.
    let evidence = broken_run_of_is_caught("double-accept", "one_accept_per_invitation", "40s", &[]);
    assert!(
        evidence.iter().any(|line| line.contains("no PK of the two followed") || line.contains("accepts won its")),
        "{evidence:#?}"
    );
}

#[cfg(feature = "fault-injection")]
#[test]
fn results_left_out_of_the_store_are_caught() {
    // Every third PK (by id) is confirmed stored but never written as settled: those PKs,
    // and only those, are found without a settled record.
    let evidence = broken_run_is_caught("drop-results", "pks_end_once_in_time");
    assert_every_third_pk(&evidence);
}

#[cfg(feature = "fault-injection")]
#[test]
fn results_left_out_of_the_mysql_database_are_caught() {
    // The same break with the results in MySQL: the rows of every third PK stay as they
    // were while it ran, and the results tables are found unlike the engine's ends.
    let mysql = mysql_url();
    let evidence = broken_run_with_services_is_caught("drop-results", "sql_matches_engine", &["--mysql-url", &mysql]);
    assert_every_third_pk(&evidence);
    assert!(evidence.iter().any(|line| line.contains("t_pk holds status 1 after the wind-down")), "{evidence:#?}");
}

#[cfg(feature = "fault-injection")]
#[test]
fn pk_ends_left_out_of_the_cache_are_caught() {
    // The cache duty never writes the end of every third PK: the cache keeps showing
    // those PKs in their battle.
    let _redis = crate::common::REDIS_DATABASE.blocking_lock();
    let redis = redis_url();
    let evidence = broken_run_with_services_is_caught("stale-cache", "redis_converges", &["--redis-url", &redis]);
    assert_every_third_pk(&evidence);
    assert!(evidence.iter().any(|line| line.contains("the cache shows status 1")), "{evidence:#?}");
}

#[cfg(feature = "fault-injection")]
#[test]
fn timers_firing_early_are_caught() {
    // Every node's clock runs 2.5 s ahead: each battle ends that early for its clients.
    let evidence = broken_run_is_caught("fast-clock", "pks_end_once_in_time");
    assert!(evidence.iter().any(|line| line.contains("before its endTime")), "{evidence:#?}");
}

#[cfg(feature = "fault-injection")]
#[test]
fn scores_falling_on_a_connection_are_caught() {
    // In every third second the nodes show the source side with half its beans.
    let evidence = broken_run_is_caught("stale-push", "pushes_never_go_back");
    assert!(evidence.iter().any(|line| line.contains(": scores ") && line.contains(" to node ")), "{evidence:#?}");
}

#[cfg(feature = "fault-injection")]
#[test]
fn anchors_in_two_pks_at_once_are_caught() {
    // Every third PK ordered is created twice, the copy 10^9 ids further: both its anchors
    // are in the two at once, and each such pair is named.
    let evidence = broken_run_is_caught("double-pk", "one_pk_at_a_time");
    assert!(!evidence.is_empty());
    for line in &evidence {
        let (first, second) = pks_of_overlap(line);
        assert_eq!(second, first + 1_000_000_000, "{line}");
        assert_eq!(first % 3, 0, "{line}");
    }
}

/// The two PKs of a line of `one_pk_at_a_time`'s evidence ("anchor A: PK x ran ... and
/// PK y started at ..."), smaller first.
#[cfg(feature = "fault-injection")]
fn pks_of_overlap(line: &str) -> (u64, u64) {
    let first = pk_named(line);
    let rest = line.split_once(" and ").unwrap_or_else(|| panic!("no second PK in {line:?}")).1;
    let second = pk_named(rest);
    (first.min(second), first.max(second))
}

#[cfg(feature = "fault-injection")]
#[test]
fn replicas_that_part_are_caught() {
    // Node 2 counts one bean more for every gift it applies: its arenas' digests differ
    // from nodes 1 and 3 at the same index, and its results store answers other scores.
    let (output, verdicts, _) = run_faults(
        &["--seed", "5", "--duration", "15s", "--nemesis", "transfer", "--settle-wait", "8s"],
        &[("PKD_FAULT_BREAK", "diverge")],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    let identical = verdict(&verdicts, "replicas_identical");
    assert_eq!(identical["passed"], false, "{identical:#}");
    let evidence = identical["evidence"].as_array().unwrap();
    assert!(!evidence.is_empty(), "{identical:#}");
    for line in evidence {
        let line = line.as_str().unwrap();
        // Only arenas (groups 1 and 2) part; node 2 stands alone against 1 and 3.
        assert!(line.starts_with("group 1 at index ") || line.starts_with("group 2 at index "), "{line}");
        assert!(line.contains("nodes {2}: ") && line.matches("nodes {").count() == 2, "{line}");
    }
    let agree = verdict(&verdicts, "replicas_agree");
    assert_eq!(agree["passed"], false, "{agree:#}");
    for line in agree["evidence"].as_array().unwrap() {
        assert!(line.as_str().unwrap().contains(", node 2 answers ["), "{agree:#}");
    }
}

#[cfg(feature = "fault-injection")]
#[test]
fn a_cluster_that_serves_nothing_after_a_restart_is_caught() {
    // Nodes restarted on their data directories answer every gift and start 900008: once
    // the whole cluster has restarted, no gift is acknowledged and no PK forms. Safety
    // holds (nothing is acknowledged wrongly); liveness does not.
    let evidence =
        broken_run_under_is_caught("unavailable-after-restart", "progress_after_faults", "25s", "restart-all", &[]);
    assert_eq!(evidence.len(), 2, "{evidence:#?}");
    assert!(evidence[0].contains("no gift sent after") && evidence[0].contains("was acknowledged"), "{evidence:#?}");
    assert!(evidence[1].contains("no PK started after"), "{evidence:#?}");
}

/// The nemeses that use the nodes' hooks: clock skew, a slow disk, a full one. Each is
/// carried out, and nothing is violated.
#[cfg(feature = "fault-injection")]
#[test]
fn clock_skew_and_disk_faults_break_no_promise() {
    // Seed 23's schedule holds one of each.
    let args = ["--seed", "23", "--duration", "40s", "--nemesis", "skew,slow-disk,disk-full"];
    let (output, verdicts, schedule) = run_faults(&args, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    for verdict in ran(&verdicts) {
        assert_eq!(verdict["passed"], true, "{verdict:#}\n{stderr}");
    }
    assert!(output.status.success(), "{stderr}");
    let carried_out = schedule["carried_out"].as_array().unwrap();
    let kinds: Vec<&str> = carried_out.iter().map(|fault| fault["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["skew", "slow-disk", "disk-full"], "{schedule:#}");
    for fault in carried_out {
        assert!(fault["error"].is_null(), "{fault:#}");
    }
}

/// The membership nemeses, through the admin API as an operator does. Seed 17's schedule
/// in 45 s: `remove-node` (a node joins as node 4, then a voter leaves: the leader of a
/// group if one is known), `kill-leader`, then `add-node` (the node removed comes back
/// under its id, on an empty data directory). Nothing is violated, and the voters end one
/// more than they started.
#[test]
fn nodes_joining_and_leaving_break_no_promise() {
    let args = ["--seed", "17", "--duration", "45s", "--nemesis", "add-node,remove-node,kill-leader"];
    let (output, verdicts, schedule) = run_faults(&args, &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    for verdict in ran(&verdicts) {
        assert_eq!(verdict["passed"], true, "{verdict:#}\n{stderr}");
        assert!(verdict["checked"].as_u64().unwrap() > 0, "{verdict:#}");
    }
    assert!(output.status.success(), "{stderr}");
    let carried_out = schedule["carried_out"].as_array().unwrap();
    let kinds: Vec<&str> = carried_out.iter().map(|fault| fault["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["remove-node", "kill-leader", "add-node"], "{schedule:#}");
    for fault in carried_out {
        assert!(fault["error"].is_null(), "{fault:#}");
    }
    // remove-node: node 4 joins, a voter of the three leaves; add-node: that one is back.
    let removed = carried_out[0]["node"].as_u64().unwrap();
    assert!((1..=3).contains(&removed), "{schedule:#}");
    assert_eq!(carried_out[0]["joined"], 4, "{schedule:#}");
    assert!(carried_out[0]["members"].as_str().unwrap().starts_with(&format!("+4 -{removed} → ")), "{schedule:#}");
    assert_eq!(carried_out[2]["node"].as_u64(), Some(removed), "{schedule:#}");
    assert_eq!(carried_out[2]["joined"].as_u64(), Some(removed), "{schedule:#}");
    assert_eq!(carried_out[2]["members"], format!("+{removed} → {{1,2,3,4}}"), "{schedule:#}");
    assert!(stderr.contains("nemesis: remove-node +4 -"), "{stderr}");
    // The digests were compared on the four members at the end.
    let identical = verdict(&verdicts, "replicas_identical");
    assert!(identical["evidence"].as_array().unwrap().is_empty(), "{identical:#}");
}
