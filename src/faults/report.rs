//! A fault run's report folder:
//!
//! - `summary.md`: the seed, the command that replays it, the figures, each checker's
//!   verdict with its evidence, and the timeline of faults;
//! - `run.json`: the seed, the flags and the figures; `verdicts.json`;
//! - `schedule.json`: the planned faults and the faults carried out, with their times;
//! - `history.jsonl`: every gift, PK state read and fault, one JSON object a line;
//! - `settled.json`: each node's settled history at the end;
//! - `logs/node-<id>.log`: every node's log.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde_json::json;

use super::Run;
use super::history::Outcome;

/// Writes the folder `dir` (created if missing).
pub fn write(dir: &Path, run: &Run) -> anyhow::Result<()> {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let file = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
    };
    file("run.json", &serde_json::to_vec_pretty(&run_json(run))?)?;
    file("verdicts.json", &serde_json::to_vec_pretty(&run.verdicts)?)?;
    let schedule = json!({ "planned": run.planned, "carried_out": run.history.faults() });
    file("schedule.json", &serde_json::to_vec_pretty(&schedule)?)?;
    let mut lines = Vec::new();
    for line in run.history.lines() {
        serde_json::to_writer(&mut lines, &line)?;
        lines.push(b'\n');
    }
    file("history.jsonl", &lines)?;
    file("settled.json", &serde_json::to_vec_pretty(&run.settled)?)?;
    for (node, log) in &run.logs {
        file(&format!("logs/node-{node}.log"), log)?;
    }
    file("summary.md", summary(run).as_bytes())
}

/// The figures of a run.
fn run_json(run: &Run) -> serde_json::Value {
    let gifts = run.history.gifts();
    let count = |outcome: Outcome| gifts.iter().filter(|gift| gift.outcome == outcome).count();
    let pks: std::collections::BTreeSet<u64> = run.history.states().iter().map(|state| state.pk).collect();
    let faults = run.history.faults();
    json!({
        "seed": run.seed,
        "replay": run.replay_command(),
        "duration_seconds": run.args.duration.as_secs_f64(),
        "nodes": run.args.nodes,
        "arenas": run.args.arenas,
        "nemesis": run.args.nemesis,
        "anchors": run.args.anchors,
        "senders": run.args.senders,
        "battle_ms": run.args.battle.as_millis() as u64,
        "end_bound_ms": run.args.end_bound.as_millis() as u64,
        "started_ms": run.started_ms,
        "workload_from_ms": run.workload_from_ms,
        "liveness_from_ms": run.liveness_from_ms,
        "ended_ms": run.ended_ms,
        "faults": faults.len(),
        "faults_failed": faults.iter().filter(|fault| fault.error.is_some()).count(),
        "gift_requests": gifts.iter().map(|gift| gift.request).collect::<std::collections::BTreeSet<_>>().len(),
        "gifts": gifts.len(),
        "gifts_ok": count(Outcome::Ok),
        "gifts_refused": count(Outcome::Refused),
        "gifts_unknown": count(Outcome::Unknown),
        "gift_attempts": gifts.iter().map(|gift| gift.attempts.len()).sum::<usize>(),
        "pks_seen": pks.len(),
        "violations": run.violations(),
        "checkers_passed": run.verdicts.iter().filter(|verdict| verdict.passed).count(),
        "checkers_not_run": run.verdicts.iter().filter(|verdict| verdict.not_run.is_some()).count(),
        "mysql_database": run.mysql_database.as_ref().map(|(name, _)| name),
        "mysql_database_kept": run.mysql_database.as_ref().map(|(_, kept)| kept),
        "redis_database": run.redis_database,
    })
}

/// One line per checker, for the terminal.
pub fn verdict_lines(run: &Run) -> String {
    let mut text = String::new();
    for verdict in &run.verdicts {
        if let Some(why) = &verdict.not_run {
            let _ = writeln!(text, "--   {} (not run: {why})", verdict.name);
            continue;
        }
        let mark = if verdict.passed { "ok  " } else { "FAIL" };
        let _ =
            writeln!(text, "{mark} {} ({} checked, {} violations)", verdict.name, verdict.checked, verdict.violations);
        for evidence in verdict.evidence.iter().take(5) {
            let _ = writeln!(text, "       {evidence}");
        }
    }
    text
}

/// `summary.md`.
fn summary(run: &Run) -> String {
    let figures = run_json(run);
    let mut text = String::new();
    let verdict = if run.violations() == 0 { "no violation" } else { "VIOLATIONS FOUND" };
    let _ = writeln!(text, "# pkd faults: seed {} ({verdict})\n", run.seed);
    let _ = writeln!(text, "Replay: `{}`\n", run.replay_command());
    let _ = writeln!(text, "| figure | value |\n|---|---|");
    for key in [
        "duration_seconds",
        "nodes",
        "arenas",
        "faults",
        "faults_failed",
        "gift_requests",
        "gifts",
        "gifts_ok",
        "gifts_refused",
        "gifts_unknown",
        "gift_attempts",
        "pks_seen",
    ] {
        let _ = writeln!(text, "| {key} | {} |", figures[key]);
    }
    if let Some((name, kept)) = &run.mysql_database {
        let fate = if *kept { "kept for a look at its rows (drop it when done)" } else { "dropped at the end" };
        let _ = writeln!(text, "\nResults database: `{name}`, {fate}.");
    }
    if let Some(index) = run.redis_database {
        let _ = writeln!(text, "\nRedis database: {index} (emptied at the start).");
    }
    let _ = writeln!(text, "\n## Checkers\n");
    let _ = writeln!(text, "| checker | verdict | checked | violations | claim |\n|---|---|---|---|---|");
    for verdict in &run.verdicts {
        let mark = match (&verdict.not_run, verdict.passed) {
            (Some(why), _) => format!("not run ({why})"),
            (None, true) => "pass".to_owned(),
            (None, false) => "**FAIL**".to_owned(),
        };
        let _ = writeln!(
            text,
            "| {} | {mark} | {} | {} | {} |",
            verdict.name, verdict.checked, verdict.violations, verdict.claim
        );
    }
    for verdict in &run.verdicts {
        if verdict.evidence.is_empty() && verdict.notes.is_empty() {
            continue;
        }
        let _ = writeln!(text, "\n### {}\n", verdict.name);
        for note in &verdict.notes {
            let _ = writeln!(text, "- {note}");
        }
        for evidence in &verdict.evidence {
            let _ = writeln!(text, "- violation: {evidence}");
        }
    }
    let _ = writeln!(text, "\n## Timeline\n");
    let _ = writeln!(text, "Seconds from the start of the workload.\n");
    let second = |ms: i64| (ms - run.workload_from_ms) as f64 / 1000.0;
    let _ = writeln!(
        text,
        "| from | to | fault | node | group | to node | links | error |\n|---|---|---|---|---|---|---|---|"
    );
    let show = |value: Option<u64>| value.map_or_else(String::new, |value| value.to_string());
    for fault in run.history.faults() {
        let _ = writeln!(
            text,
            "| {:.1} | {:.1} | {} | {} | {} | {} | {} | {} |",
            second(fault.started_ms),
            second(fault.healed_ms),
            fault.kind,
            show(fault.node),
            show(fault.group),
            show(fault.to),
            // A partition's sides are separated by `|`, which would end the cell.
            fault.links.unwrap_or_default().replace('|', "\\|"),
            fault.error.unwrap_or_default()
        );
    }
    let _ = writeln!(
        text,
        "\nProgress is required from {:.1} s (the last fault's end) to {:.1} s (the end of the workload).",
        second(run.liveness_from_ms),
        run.args.duration.as_secs_f64()
    );
    text
}
