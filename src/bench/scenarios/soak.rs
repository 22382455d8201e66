//! `soak`: a steady flow for hours (`--duration 2h`; one hour by default): gifts at
//! `--rate` requests of `--batch` gifts to `--pks` PKs (16 by default) whose battles
//! (`--battle`, 30 s by default) end and give way to new ones, so settled PKs leave the
//! state as in production. Every `--sample-every` (10 s) the bench samples each local
//! node's resident memory, data directory and CPU; the summary gives their first, last
//! and largest values, and `--out` writes every sample to nodes.csv.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pkd_cluster::app::wall_clock_ms;
use serde_json::json;

use super::super::gifting::{GiftPlan, drive_gifts};
use super::super::{Bench, ScenarioOutput};
use super::{battling_pks, lateness};

pub async fn run(bench: &Bench) -> anyhow::Result<ScenarioOutput> {
    let pks = bench.args.pks.unwrap_or(16);
    bench.target.require_gift_token()?;
    if !bench.target.is_local() {
        eprintln!("a running cluster: memory and disk are known only for nodes the bench starts (--local)");
    }
    let (roster, anchors) = battling_pks(bench, Duration::from_secs(30), pks, 500).await?;
    let mut plan = GiftPlan::new(bench.target.clone(), roster.clone(), bench.batch, bench.user_base + 10_000_000);
    plan.retry_for = Some(Duration::from_secs(10));
    let plan = Arc::new(plan);
    let senders = plan.senders(bench.workers())?;
    let mut measurement = bench.begin(true, bench.args.sample_every);
    roster.measure_ends_from(wall_clock_ms() + bench.warmup.as_millis() as i64);
    drive_gifts(senders, measurement.tickets.clone(), measurement.recorder.clone()).await;
    measurement.load_ended(&bench.target).await;
    let report = roster.report(wall_clock_ms());
    let extra_latency = lateness(&roster);
    let finished = bench.end(measurement).await;
    anchors.stop().await;
    let growth: Vec<serde_json::Value> = finished
        .nodes
        .iter()
        .map(|node| {
            let measured = node.samples.iter().filter(|sample| sample.second >= bench.warmup.as_secs_f64());
            let first = measured.clone().next();
            let last = measured.clone().next_back();
            json!({
                "node": node.id,
                "samples": node.samples.len(),
                "resident_bytes_first": first.and_then(|sample| sample.resident_bytes),
                "resident_bytes_last": last.and_then(|sample| sample.resident_bytes),
                "resident_bytes_max": node.max_resident_bytes,
                "data_dir_bytes_first": first.and_then(|sample| sample.data_dir_bytes),
                "data_dir_bytes_last": last.and_then(|sample| sample.data_dir_bytes),
                "data_dir_bytes_max": node.samples.iter().filter_map(|sample| sample.data_dir_bytes).max(),
            })
        })
        .collect();
    let details = json!({
        "sample_every_seconds": bench.args.sample_every.as_secs_f64(),
        "growth": growth,
        "gifts_acknowledged": plan.acknowledged.load(Ordering::Relaxed),
        "pks_created": report.pks_created,
        "pks_ended": report.pks_ended,
        "pks_ended_abnormally": report.pks_ended_abnormally,
        "ends_missed": report.ends_missed,
    });
    Ok(ScenarioOutput { finished, primary: "ack", items: Some("gifts"), details, extra_latency })
}
