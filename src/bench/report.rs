//! The end of a run: the summary (text in the manner of etcd's `benchmark` and
//! redis-benchmark, or JSON), and the files `--out` writes. `docs/bench.md` documents
//! every JSON field.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;

use super::human::{human_bytes, human_duration, human_number};
use super::recorder::SecondRow;
use super::schedule::LoadMode;
use super::slo::{MetricValue, SloOutcome};

/// The summary of a run (`--json` prints it; `--out` writes it as summary.json).
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub scenario: String,
    /// When the measured part began, in ms since the Unix epoch.
    pub started_at_ms: i64,
    pub target: TargetSummary,
    pub load: LoadSummary,
    pub warmup_seconds: f64,
    /// The measured part: from the end of the warm-up to the last measured answer.
    pub duration_seconds: f64,
    /// Operations in the measured part, and how they ended.
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    /// Successful operations per second.
    pub throughput: f64,
    /// The units of work operations carry (gifts), where they differ from operations.
    pub items: Option<ItemsSummary>,
    /// The latency that `throughput` belongs to (`ack`, `reply`, ...): a key of `latency`.
    pub primary_latency: String,
    pub latency: BTreeMap<String, LatencySummary>,
    /// Failed operations (and failures found afterwards) by reply code or failure kind.
    pub errors_by_code: BTreeMap<String, u64>,
    pub nodes: Vec<NodeSummary>,
    /// The bench process itself: on shared cores, what it takes from the nodes.
    pub load_generator: LoadGeneratorSummary,
    pub raft: RaftSummary,
    /// What this scenario measures beyond the above (see docs/bench.md).
    pub details: serde_json::Value,
    pub slo: Vec<SloOutcome>,
    /// True when every SLO passed (and true when none was given).
    pub passed: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct TargetSummary {
    /// `local` (nodes the bench started) or `remote`.
    pub kind: String,
    /// The nodes' client addresses at the start.
    pub nodes: Vec<String>,
    /// Arena groups, where known.
    pub arenas: Option<u32>,
    /// How the bench authenticated its WebSocket clients: `dev` or `signed`.
    pub auth: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct LoadSummary {
    /// `open` or `closed`.
    pub mode: String,
    /// "open loop, 1000 ops/s over 64 connections" or "closed loop, 256 clients".
    pub label: String,
    /// Operations per second asked for (open loop).
    pub rate: Option<f64>,
    /// Connections the open loop spreads its operations over.
    pub connections: Option<usize>,
    /// Clients of the closed loop.
    pub clients: Option<usize>,
    /// Gifts per gift request.
    pub batch: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ItemsSummary {
    /// What an item is (`gifts`).
    pub name: String,
    pub ok: u64,
    pub failed: u64,
    pub per_second: f64,
}

/// One latency distribution, in microseconds.
#[derive(Clone, Debug, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_us: u64,
    pub mean_us: f64,
    pub stdev_us: f64,
    pub p50_us: u64,
    pub p75_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p99_9_us: u64,
    pub p99_99_us: u64,
    pub max_us: u64,
}

impl LatencySummary {
    pub fn of(histogram: &Histogram<u64>) -> LatencySummary {
        let empty = histogram.is_empty();
        let at = |q: f64| if empty { 0 } else { histogram.value_at_quantile(q) };
        LatencySummary {
            count: histogram.len(),
            min_us: if empty { 0 } else { histogram.min() },
            mean_us: if empty { 0.0 } else { histogram.mean() },
            stdev_us: if empty { 0.0 } else { histogram.stdev() },
            p50_us: at(0.5),
            p75_us: at(0.75),
            p90_us: at(0.9),
            p99_us: at(0.99),
            p99_9_us: at(0.999),
            p99_99_us: at(0.9999),
            max_us: if empty { 0 } else { histogram.max() },
        }
    }

    /// The statistic `name` (`p50`, `p99.9`, `max`, `mean`, `min`), if there are samples.
    pub fn statistic(&self, name: &str) -> Option<Duration> {
        if self.count == 0 {
            return None;
        }
        let micros = match name {
            "p50" => self.p50_us,
            "p75" => self.p75_us,
            "p90" => self.p90_us,
            "p99" => self.p99_us,
            "p99.9" | "p999" => self.p99_9_us,
            "p99.99" | "p9999" => self.p99_99_us,
            "max" => self.max_us,
            "min" => self.min_us,
            "mean" => self.mean_us.round() as u64,
            _ => return None,
        };
        Some(Duration::from_micros(micros))
    }
}

/// One node, as far as the bench can see it.
#[derive(Clone, Debug, Serialize)]
pub struct NodeSummary {
    pub id: u64,
    pub address: String,
    /// The process id at the end (local nodes).
    pub pid: Option<u32>,
    /// CPU seconds the node's processes used during the measured part (local nodes).
    pub cpu_seconds: Option<f64>,
    /// `cpu_seconds` divided by the measured duration: cores kept busy.
    pub cpu_cores: Option<f64>,
    pub resident_bytes: Option<u64>,
    /// The largest resident size sampled during the run.
    pub max_resident_bytes: Option<u64>,
    pub data_dir_bytes: Option<u64>,
    /// Times the bench killed or restarted the node (failover).
    pub restarts: u32,
    /// Samples over time (soak; other scenarios keep none).
    pub samples: Vec<NodeSample>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LoadGeneratorSummary {
    pub cpu_seconds: Option<f64>,
    pub cpu_cores: Option<f64>,
    pub resident_bytes: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct NodeSample {
    /// Seconds since the load started.
    pub second: f64,
    pub up: bool,
    pub resident_bytes: Option<u64>,
    pub data_dir_bytes: Option<u64>,
    pub cpu_seconds: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RaftSummary {
    /// Gifts acknowledged per entry appended to the arena groups' logs while measuring.
    pub gifts_per_entry: Option<f64>,
    /// Entries appended to the arena groups' logs while measuring (every kind of entry).
    pub arena_entries: Option<u64>,
    /// How the figure was obtained, or why it is not available.
    pub note: String,
}

impl Summary {
    /// The value of metric `name` for an SLO: `<latency>.<statistic>` (e.g. `ack.p99`),
    /// `throughput`, `requests`, `ok`, `errors`, `error_rate`, `items`, `items_per_second`,
    /// or a number in `details` (e.g. `violations`, `unmatched`, `recovery_seconds`
    /// as `recovery`).
    pub fn metric(&self, name: &str) -> Option<MetricValue> {
        if let Some((latency, statistic)) = name.split_once('.')
            && let Some(summary) = self.latency.get(latency)
        {
            return summary.statistic(statistic).map(MetricValue::Duration);
        }
        let number = |value: f64| Some(MetricValue::Number(value));
        match name {
            "throughput" => number(self.throughput),
            "requests" => number(self.requests as f64),
            "ok" => number(self.ok as f64),
            "errors" => number(self.errors as f64),
            "error_rate" => number(if self.requests == 0 { 0.0 } else { self.errors as f64 / self.requests as f64 }),
            "items" => self.items.as_ref().and_then(|items| number(items.ok as f64)),
            "items_per_second" => self.items.as_ref().and_then(|items| number(items.per_second)),
            _ => {
                if let Some(seconds) = self.details.get(format!("{name}_seconds")).and_then(|value| value.as_f64()) {
                    return Some(MetricValue::Duration(Duration::from_secs_f64(seconds.max(0.0))));
                }
                self.details.get(name).and_then(|value| value.as_f64()).map(MetricValue::Number)
            }
        }
    }

    /// The summary as text for a terminal.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Summary ({}):", self.scenario);
        let target = match self.target.kind.as_str() {
            "local" => format!(
                "local cluster of {} nodes ({} arenas), started by the bench",
                self.target.nodes.len(),
                self.target.arenas.map_or_else(|| "?".to_owned(), |arenas| arenas.to_string())
            ),
            _ => format!("running cluster at {}", self.target.nodes.join(", ")),
        };
        let _ = writeln!(out, "  Target:\t{target}");
        let mut load = self.load.label.clone();
        if let Some(batch) = self.load.batch {
            let _ = write!(load, ", {batch} gift{} per request", if batch == 1 { "" } else { "s" });
        }
        let _ = writeln!(out, "  Load:\t\t{load}");
        let _ = writeln!(
            out,
            "  Total:\t{:.4} secs (after {:.1} s of warm-up).",
            self.duration_seconds, self.warmup_seconds
        );
        let _ = writeln!(out, "  Requests:\t{} ({} ok, {} errors)", self.requests, self.ok, self.errors);
        if let Some(primary) = self.latency.get(&self.primary_latency)
            && primary.count > 0
        {
            let micros = |value: u64| human_duration(Duration::from_micros(value));
            let _ = writeln!(out, "  Slowest:\t{}", micros(primary.max_us));
            let _ = writeln!(out, "  Fastest:\t{}", micros(primary.min_us));
            let _ = writeln!(out, "  Average:\t{}", micros(primary.mean_us.round() as u64));
            let _ = writeln!(out, "  Stddev:\t{}", micros(primary.stdev_us.round() as u64));
        }
        let _ = writeln!(out, "  Requests/sec:\t{}", human_number(self.throughput));
        if let Some(items) = &self.items {
            let _ = writeln!(
                out,
                "  {}/sec:\t{} ({} ok, {} failed)",
                capitalized(&items.name),
                human_number(items.per_second),
                items.ok,
                items.failed
            );
        }
        let mut names: Vec<&String> = self.latency.keys().collect();
        names.sort_by_key(|name| (*name != &self.primary_latency, name.as_str()));
        for name in names {
            let latency = &self.latency[name];
            let _ = writeln!(out, "\nLatency distribution ({name}, {} samples):", latency.count);
            if latency.count == 0 {
                let _ = writeln!(out, "  no samples");
                continue;
            }
            for (label, micros) in [
                ("50%", latency.p50_us),
                ("75%", latency.p75_us),
                ("90%", latency.p90_us),
                ("99%", latency.p99_us),
                ("99.9%", latency.p99_9_us),
                ("99.99%", latency.p99_99_us),
                ("max", latency.max_us),
            ] {
                let _ = writeln!(out, "  {label:>6} in {}", human_duration(Duration::from_micros(micros)));
            }
        }
        let _ = writeln!(out, "\nErrors by code:");
        if self.errors_by_code.is_empty() {
            let _ = writeln!(out, "  none");
        }
        for (code, count) in &self.errors_by_code {
            let _ = writeln!(out, "  {code:<24} {count}");
        }
        let _ = writeln!(out, "\nNodes:");
        let _ = writeln!(
            out,
            "  {:<5} {:<22} {:>8} {:>9} {:>6} {:>11} {:>11} {:>11} {:>8}",
            "node", "address", "pid", "cpu s", "cores", "resident", "max res.", "data dir", "restarts"
        );
        for node in &self.nodes {
            let bytes = |value: Option<u64>| value.map_or_else(|| "n/a".to_owned(), human_bytes);
            let _ = writeln!(
                out,
                "  {:<5} {:<22} {:>8} {:>9} {:>6} {:>11} {:>11} {:>11} {:>8}",
                node.id,
                node.address,
                node.pid.map_or_else(|| "n/a".to_owned(), |pid| pid.to_string()),
                node.cpu_seconds.map_or_else(|| "n/a".to_owned(), |cpu| format!("{cpu:.2}")),
                node.cpu_cores.map_or_else(|| "n/a".to_owned(), |cores| format!("{cores:.2}")),
                bytes(node.resident_bytes),
                bytes(node.max_resident_bytes),
                bytes(node.data_dir_bytes),
                node.restarts
            );
        }
        if self.nodes.iter().all(|node| node.pid.is_none()) {
            let _ = writeln!(out, "  (CPU and memory are known only for nodes the bench started with --local)");
        }
        let generator = &self.load_generator;
        let _ = writeln!(
            out,
            "  {:<5} {:<22} {:>8} {:>9} {:>6} {:>11}",
            "bench",
            "(this process)",
            std::process::id(),
            generator.cpu_seconds.map_or_else(|| "n/a".to_owned(), |cpu| format!("{cpu:.2}")),
            generator.cpu_cores.map_or_else(|| "n/a".to_owned(), |cores| format!("{cores:.2}")),
            generator.resident_bytes.map_or_else(|| "n/a".to_owned(), human_bytes),
        );
        let _ = writeln!(out, "\nRaft:");
        match self.raft.gifts_per_entry {
            Some(per_entry) => {
                let _ = writeln!(out, "  gifts per arena entry: {per_entry:.1} ({})", self.raft.note);
            }
            None => {
                let _ = writeln!(out, "  gifts per arena entry: n/a ({})", self.raft.note);
            }
        }
        if let Some(details) = self.details.as_object()
            && !details.is_empty()
        {
            let _ = writeln!(out, "\nDetails:");
            for (key, value) in details {
                let _ = writeln!(out, "  {key:<28} {}", compact(value));
            }
        }
        if !self.slo.is_empty() {
            let _ = writeln!(out, "\nSLO:");
            for outcome in &self.slo {
                let verdict = if outcome.passed { "PASS" } else { "FAIL" };
                let measured = outcome.measured.as_deref().unwrap_or("n/a");
                let problem = outcome.problem.as_deref().map(|why| format!(" ({why})")).unwrap_or_default();
                let _ = writeln!(out, "  {verdict}  {:<28} measured {measured}{problem}", outcome.slo);
            }
        }
        out
    }
}

/// Writes summary.json, seconds.csv, every latency's percentile distribution, and
/// nodes.csv.
pub fn write_out(
    dir: &Path,
    summary: &Summary,
    rows: &[SecondRow],
    histograms: &BTreeMap<String, Histogram<u64>>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))
    };
    write("summary.json", serde_json::to_string_pretty(summary)?.as_bytes())?;
    let mut csv = String::from("second,phase,ok,errors,p50_ms,p99_ms,in_flight,backlog\n");
    for row in rows {
        let ms = |micros: Option<u64>| micros.map_or_else(String::new, |micros| format!("{:.3}", micros as f64 / 1e3));
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{},{}",
            row.second,
            row.phase,
            row.ok,
            row.errors,
            ms(row.p50_us),
            ms(row.p99_us),
            row.in_flight,
            row.backlog
        );
    }
    write("seconds.csv", csv.as_bytes())?;
    for (name, histogram) in histograms {
        write(&format!("latency-{name}.txt"), percentile_distribution(histogram).as_bytes())?;
    }
    let mut nodes = String::from("second,node,up,resident_bytes,data_dir_bytes,cpu_seconds\n");
    for node in &summary.nodes {
        for sample in &node.samples {
            let optional = |value: Option<u64>| value.map_or_else(String::new, |value| value.to_string());
            let _ = writeln!(
                nodes,
                "{:.1},{},{},{},{},{}",
                sample.second,
                node.id,
                sample.up,
                optional(sample.resident_bytes),
                optional(sample.data_dir_bytes),
                sample.cpu_seconds.map_or_else(String::new, |cpu| format!("{cpu:.2}"))
            );
        }
    }
    write("nodes.csv", nodes.as_bytes())?;
    Ok(())
}

/// The histogram as a percentile distribution in milliseconds, in the columns
/// HdrHistogram's plotting tools read (value, percentile, count, 1/(1-percentile)).
pub fn percentile_distribution(histogram: &Histogram<u64>) -> String {
    let mut out =
        format!("{:>12} {:>14} {:>10} {:>14}\n\n", "Value(ms)", "Percentile", "TotalCount", "1/(1-Percentile)");
    if histogram.is_empty() {
        return out;
    }
    let mut count = 0u64;
    for step in histogram.iter_quantiles(5) {
        count += step.count_since_last_iteration();
        let quantile = step.quantile_iterated_to();
        let inverse = if quantile < 1.0 { format!("{:>14.2}", 1.0 / (1.0 - quantile)) } else { format!("{:>14}", "") };
        let _ = writeln!(
            out,
            "{:>12.3} {:>14.12} {:>10} {inverse}",
            step.value_iterated_to() as f64 / 1e3,
            quantile,
            count
        );
    }
    let _ = writeln!(
        out,
        "#[Mean = {:.3}, StdDeviation = {:.3}]\n#[Max = {:.3}, Total count = {}]",
        histogram.mean() / 1e3,
        histogram.stdev() / 1e3,
        histogram.max() as f64 / 1e3,
        histogram.len()
    );
    out
}

/// A load mode as the summary names it: "open loop, 1,000 ops/s over 64 connections" or
/// "closed loop, 256 clients".
pub fn load_label(mode: &LoadMode) -> String {
    match *mode {
        LoadMode::Open { rate, connections } => {
            format!("open loop, {} ops/s over {connections} connections", human_number(rate))
        }
        LoadMode::Closed { clients } => format!("closed loop, {clients} clients"),
    }
}

/// The progress line of one second, for stderr.
pub fn progress_line(row: &SecondRow) -> String {
    let latency = |micros: Option<u64>| {
        micros.map_or_else(|| "-".to_owned(), |micros| human_duration(Duration::from_micros(micros)))
    };
    format!(
        "[{:>5}s {:<7}] ok/s {:>8}  errors/s {:>6}  p50 {:>9}  p99 {:>9}  in flight {:>6}  backlog {:>7}",
        row.second,
        row.phase,
        row.ok,
        row.errors,
        latency(row.p50_us),
        latency(row.p99_us),
        row.in_flight,
        row.backlog
    )
}

fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

/// A JSON value on one line, strings without quotes.
fn compact(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => text.clone(),
        serde_json::Value::Number(number) => match number.as_f64() {
            Some(float) if number.is_f64() => format!("{float:.3}"),
            _ => number.to_string(),
        },
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_modes_are_labelled_with_their_loop() {
        assert_eq!(load_label(&LoadMode::Closed { clients: 4 }), "closed loop, 4 clients");
        assert!(load_label(&LoadMode::Open { rate: 1000.0, connections: 64 }).starts_with("open loop, 1,000 ops/s"));
    }

    #[test]
    fn numbers_durations_and_sizes_read_well() {
        assert_eq!(human_duration(Duration::from_micros(357)), "357 µs");
        assert_eq!(human_duration(Duration::from_micros(4_300)), "4.30 ms");
        assert_eq!(human_duration(Duration::from_millis(1_250)), "1.25 s");
        assert_eq!(human_number(138_423.4), "138,423");
        assert_eq!(human_number(12.5), "12.5");
        assert_eq!(human_number(-1234.0), "-1,234");
        assert_eq!(human_bytes(2048), "2.0 KiB");
        assert_eq!(human_bytes(310 * 1024 * 1024), "310.0 MiB");
    }

    #[test]
    fn latency_statistics_are_ordered_and_named() {
        let mut histogram = super::super::recorder::new_histogram();
        for micros in 1..=10_000u64 {
            histogram.record(micros).unwrap();
        }
        let summary = LatencySummary::of(&histogram);
        let ordered = [
            summary.min_us,
            summary.p50_us,
            summary.p75_us,
            summary.p90_us,
            summary.p99_us,
            summary.p99_9_us,
            summary.p99_99_us,
            summary.max_us,
        ];
        assert!(ordered.windows(2).all(|pair| pair[0] <= pair[1]), "{ordered:?}");
        assert_eq!(summary.statistic("p99.9"), Some(Duration::from_micros(summary.p99_9_us)));
        assert_eq!(summary.statistic("p42"), None);
        assert!(LatencySummary::of(&super::super::recorder::new_histogram()).statistic("p50").is_none());
        let text = percentile_distribution(&histogram);
        assert!(text.contains("Total count = 10000"), "{text}");
    }
}
