//! `pkd faults`: a short seeded run against a three-node local cluster it starts itself,
//! through the built binary, as a user runs it. It must find no violation, exit zero and
//! write every report file. The checkers' power to find violations is tested on made-up
//! histories in `src/faults/checkers.rs`.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

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

    let verdicts = json(&dir.join("verdicts.json"));
    let names: Vec<&str> =
        verdicts.as_array().unwrap().iter().map(|verdict| verdict["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "gifts_counted_once",
            "ledgers_match_senders",
            "one_pk_at_a_time",
            "pks_end_once_in_time",
            "replicas_agree",
            "progress_after_faults"
        ]
    );
    for verdict in verdicts.as_array().unwrap() {
        assert_eq!(verdict["passed"], true, "{verdict:#}");
        assert!(verdict["checked"].as_u64().unwrap() > 0, "{verdict:#}");
    }

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
}
