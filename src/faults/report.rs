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

use super::history::{FIRST_VIEWER, Outcome};
use super::{FaultsArgs, Run};

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
    let states = run.history.states();
    let pks: std::collections::BTreeSet<u64> = states.iter().map(|state| state.pk).collect();
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
        "viewers": run.args.viewers,
        "states_read": states.len(),
        "states_read_by_viewers": states.iter().filter(|state| state.user >= FIRST_VIEWER).count(),
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
        "states_read",
        "states_read_by_viewers",
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
        "| from | to | fault | node | group | to node | members | links | error |\n|---|---|---|---|---|---|---|---|---|"
    );
    let show = |value: Option<u64>| value.map_or_else(String::new, |value| value.to_string());
    for fault in run.history.faults() {
        let _ = writeln!(
            text,
            "| {:.1} | {:.1} | {} | {} | {} | {} | {} | {} | {} |",
            second(fault.started_ms),
            second(fault.healed_ms),
            fault.kind,
            show(fault.node),
            show(fault.group),
            show(fault.to),
            fault.members.unwrap_or_default(),
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

/// One run of a campaign, as its table shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CampaignRow {
    pub seed: u64,
    /// The faults carried out, by kind, in order.
    pub faults: Vec<String>,
    pub faults_failed: usize,
    pub gifts_ok: usize,
    pub gifts_unknown: usize,
    pub gifts_refused: usize,
    pub pks: usize,
    /// The checkers that found violations.
    pub failed_checkers: Vec<String>,
    /// Why the run could not be carried out, if it could not.
    pub error: Option<String>,
    pub seconds: f64,
    pub replay: Option<String>,
}

impl CampaignRow {
    pub fn of(run: &Run, took: std::time::Duration) -> CampaignRow {
        let figures = run_json(run);
        let count = |key: &str| figures[key].as_u64().unwrap_or(0) as usize;
        let faults = run.history.faults();
        CampaignRow {
            seed: run.seed,
            faults: faults.iter().map(|fault| fault.kind.clone()).collect(),
            faults_failed: count("faults_failed"),
            gifts_ok: count("gifts_ok"),
            gifts_unknown: count("gifts_unknown"),
            gifts_refused: count("gifts_refused"),
            pks: count("pks_seen"),
            failed_checkers: run
                .verdicts
                .iter()
                .filter(|verdict| verdict.failed())
                .map(|v| v.name.to_owned())
                .collect(),
            error: None,
            seconds: took.as_secs_f64(),
            replay: (run.violations() > 0).then(|| run.replay_command()),
        }
    }

    pub fn failed(seed: u64, error: String, took: std::time::Duration) -> CampaignRow {
        CampaignRow {
            seed,
            faults: Vec::new(),
            faults_failed: 0,
            gifts_ok: 0,
            gifts_unknown: 0,
            gifts_refused: 0,
            pks: 0,
            failed_checkers: Vec::new(),
            error: Some(error),
            seconds: took.as_secs_f64(),
            replay: None,
        }
    }

    pub fn passed(&self) -> bool {
        self.error.is_none() && self.failed_checkers.is_empty()
    }

    fn verdict(&self) -> String {
        match &self.error {
            Some(error) => format!("could not run: {error}"),
            None if self.failed_checkers.is_empty() => "none".to_owned(),
            None => self.failed_checkers.join(", "),
        }
    }

    /// The line printed when the run is over.
    pub fn line(&self) -> String {
        format!(
            "seed {}: {} faults, {} gifts acknowledged ({} unknown), {} PKs, {:.0} s; violations: {}",
            self.seed,
            self.faults.len(),
            self.gifts_ok,
            self.gifts_unknown,
            self.pks,
            self.seconds,
            self.verdict()
        )
    }
}

/// `campaign.md` (a table of the runs, with totals) and `campaign.jsonl` (a row a line).
pub fn write_campaign(dir: &Path, args: &FaultsArgs, rows: &[CampaignRow]) -> anyhow::Result<()> {
    let mut lines = Vec::new();
    for row in rows {
        serde_json::to_writer(&mut lines, row)?;
        lines.push(b'\n');
    }
    std::fs::write(dir.join("campaign.jsonl"), lines)?;
    let kinds: Vec<&str> = args.nemesis.iter().map(|kind| kind.name()).collect();
    let mut text = String::new();
    let _ = writeln!(text, "# pkd faults: a campaign of {} runs\n", rows.len());
    let _ = writeln!(
        text,
        "{} nodes, {} arenas, {} anchors, {} senders, {} viewers, {} s each, nemeses: {}.\n",
        args.nodes,
        args.arenas,
        args.anchors,
        args.senders,
        args.viewers,
        args.duration.as_secs_f64(),
        kinds.join(", ")
    );
    let mut by_kind: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for fault in rows.iter().flat_map(|row| &row.faults) {
        *by_kind.entry(fault.as_str()).or_default() += 1;
    }
    let failed = rows.iter().filter(|row| !row.passed()).count();
    let _ = writeln!(
        text,
        "Totals: {} faults carried out ({} with an error), {} gifts acknowledged, {} unknown, {} refused, {} PKs; runs with violations or errors: {failed}.\n",
        by_kind.values().sum::<usize>(),
        rows.iter().map(|row| row.faults_failed).sum::<usize>(),
        rows.iter().map(|row| row.gifts_ok).sum::<usize>(),
        rows.iter().map(|row| row.gifts_unknown).sum::<usize>(),
        rows.iter().map(|row| row.gifts_refused).sum::<usize>(),
        rows.iter().map(|row| row.pks).sum::<usize>(),
    );
    let kinds: Vec<String> = by_kind.iter().map(|(kind, count)| format!("{kind} {count}")).collect();
    let _ = writeln!(text, "Faults by kind: {}.\n", kinds.join(", "));
    let _ = writeln!(
        text,
        "| seed | faults | gifts (ok / unknown / refused) | PKs | seconds | violations |\n|---|---|---|---|---|---|"
    );
    for row in rows {
        let _ = writeln!(
            text,
            "| {} | {} | {} / {} / {} | {} | {:.0} | {} |",
            row.seed,
            if row.faults.is_empty() { "none".to_owned() } else { row.faults.join(", ") },
            row.gifts_ok,
            row.gifts_unknown,
            row.gifts_refused,
            row.pks,
            row.seconds,
            row.verdict().replace('|', "\\|")
        );
    }
    std::fs::write(dir.join("campaign.md"), text)?;
    Ok(())
}
