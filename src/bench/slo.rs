//! Service-level objectives checked at the end of a run: `--slo 'ack.p99<5ms'`.
//!
//! An objective is `<metric><comparison><threshold>`. The comparisons are `<`, `<=`, `>`
//! and `>=`. A threshold with a time unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`) is a
//! duration and only fits a duration metric (a latency's percentile, `recovery`); a
//! plain number fits a count or a rate (`throughput`, `errors`), and `%` divides it by
//! 100 (`error_rate<0.1%`). Several objectives can share one flag, separated by commas.

use std::time::Duration;

/// How a metric compares with its threshold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparison {
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

impl Comparison {
    fn holds(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparison::Less => value < threshold,
            Comparison::LessOrEqual => value <= threshold,
            Comparison::Greater => value > threshold,
            Comparison::GreaterOrEqual => value >= threshold,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Comparison::Less => "<",
            Comparison::LessOrEqual => "<=",
            Comparison::Greater => ">",
            Comparison::GreaterOrEqual => ">=",
        }
    }
}

/// A threshold: a duration, or a plain number.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Threshold {
    Duration(Duration),
    Number(f64),
}

/// What a run measured for one metric.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum MetricValue {
    Duration(Duration),
    Number(f64),
}

impl std::fmt::Display for MetricValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricValue::Duration(duration) => write!(f, "{}", super::human::human_duration(*duration)),
            MetricValue::Number(number) if number.fract() == 0.0 && number.abs() < 1e15 => write!(f, "{number:.0}"),
            MetricValue::Number(number) => write!(f, "{number:.4}"),
        }
    }
}

/// One objective, as given.
#[derive(Clone, Debug, PartialEq)]
pub struct Slo {
    /// The text it was parsed from.
    pub text: String,
    pub metric: String,
    pub comparison: Comparison,
    pub threshold: Threshold,
}

/// Why an objective could not be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SloError {
    #[error("{0:?}: expected <metric><comparison><threshold>, e.g. ack.p99<5ms")]
    NoComparison(String),
    #[error("{0:?}: no metric before the comparison")]
    NoMetric(String),
    #[error("{text:?}: {threshold:?} is not a number with an optional unit (ns, us, ms, s, m, h, %)")]
    BadThreshold { text: String, threshold: String },
}

/// The outcome of one objective.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SloOutcome {
    pub slo: String,
    /// The measured value, as text with its unit; absent if the run has no such metric.
    pub measured: Option<String>,
    /// The measured value in the threshold's unit: seconds for a duration.
    pub value: Option<f64>,
    pub passed: bool,
    /// Why it failed without a comparison (an unknown metric, a unit mismatch).
    pub problem: Option<String>,
}

/// Reads every objective of every `--slo` flag (each may hold several, comma separated).
pub fn parse_all(flags: &[String]) -> Result<Vec<Slo>, SloError> {
    flags.iter().flat_map(|flag| flag.split(',')).map(str::trim).filter(|text| !text.is_empty()).map(parse).collect()
}

/// Reads one objective.
pub fn parse(text: &str) -> Result<Slo, SloError> {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let position = compact.find(['<', '>']).ok_or_else(|| SloError::NoComparison(text.to_owned()))?;
    let metric = compact[..position].to_owned();
    if metric.is_empty() {
        return Err(SloError::NoMetric(text.to_owned()));
    }
    let rest = &compact[position..];
    let (comparison, threshold) = if let Some(rest) = rest.strip_prefix("<=") {
        (Comparison::LessOrEqual, rest)
    } else if let Some(rest) = rest.strip_prefix(">=") {
        (Comparison::GreaterOrEqual, rest)
    } else if let Some(rest) = rest.strip_prefix('<') {
        (Comparison::Less, rest)
    } else if let Some(rest) = rest.strip_prefix('>') {
        (Comparison::Greater, rest)
    } else {
        return Err(SloError::NoComparison(text.to_owned()));
    };
    let threshold = parse_threshold(threshold)
        .ok_or_else(|| SloError::BadThreshold { text: text.to_owned(), threshold: threshold.to_owned() })?;
    Ok(Slo { text: text.trim().to_owned(), metric, comparison, threshold })
}

fn parse_threshold(text: &str) -> Option<Threshold> {
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+' || c == 'e'));
    let (number, unit) = match split {
        Some(index) => text.split_at(index),
        None => (text, ""),
    };
    let number: f64 = number.parse().ok().filter(|n: &f64| n.is_finite())?;
    let seconds = |scale: f64| {
        let seconds = number * scale;
        (seconds >= 0.0).then(|| Threshold::Duration(Duration::from_secs_f64(seconds)))
    };
    match unit {
        "" => Some(Threshold::Number(number)),
        "%" => Some(Threshold::Number(number / 100.0)),
        "ns" => seconds(1e-9),
        "us" | "µs" => seconds(1e-6),
        "ms" => seconds(1e-3),
        "s" => seconds(1.0),
        "m" | "min" => seconds(60.0),
        "h" => seconds(3600.0),
        _ => None,
    }
}

impl Slo {
    /// Checks the objective against what `lookup` says the run measured.
    pub fn check(&self, lookup: impl Fn(&str) -> Option<MetricValue>) -> SloOutcome {
        let Some(measured) = lookup(&self.metric) else {
            return SloOutcome {
                slo: self.text.clone(),
                measured: None,
                value: None,
                passed: false,
                problem: Some(format!("this run has no metric {:?}", self.metric)),
            };
        };
        let (value, threshold) = match (measured, self.threshold) {
            (MetricValue::Duration(value), Threshold::Duration(threshold)) => {
                (value.as_secs_f64(), threshold.as_secs_f64())
            }
            (MetricValue::Number(value), Threshold::Number(threshold)) => (value, threshold),
            (MetricValue::Duration(_), Threshold::Number(_)) => {
                return self.mismatch(measured, "a duration: give the threshold a unit, e.g. 5ms");
            }
            (MetricValue::Number(_), Threshold::Duration(_)) => {
                return self.mismatch(measured, "a number: give the threshold without a unit");
            }
        };
        SloOutcome {
            slo: self.text.clone(),
            measured: Some(measured.to_string()),
            value: Some(value),
            passed: self.comparison.holds(value, threshold),
            problem: None,
        }
    }

    fn mismatch(&self, measured: MetricValue, why: &str) -> SloOutcome {
        SloOutcome {
            slo: self.text.clone(),
            measured: Some(measured.to_string()),
            value: None,
            passed: false,
            problem: Some(format!("{} is {why}", self.metric)),
        }
    }

    /// The objective written back in a normal form, e.g. `ack.p99 < 5ms`.
    pub fn describe(&self) -> String {
        let threshold = match self.threshold {
            Threshold::Duration(duration) => super::human::human_duration(duration),
            Threshold::Number(number) => number.to_string(),
        };
        format!("{} {} {threshold}", self.metric, self.comparison.symbol())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objectives_are_read_with_their_units() {
        let slo = parse("ack.p99<5ms").unwrap();
        assert_eq!(slo.metric, "ack.p99");
        assert_eq!(slo.comparison, Comparison::Less);
        assert_eq!(slo.threshold, Threshold::Duration(Duration::from_millis(5)));
        assert_eq!(parse("delivery.p99 < 1.1s").unwrap().threshold, Threshold::Duration(Duration::from_millis(1100)));
        assert_eq!(parse("ack.p50<=500us").unwrap().comparison, Comparison::LessOrEqual);
        assert_eq!(parse("ack.p50<=500µs").unwrap().threshold, Threshold::Duration(Duration::from_micros(500)));
        assert_eq!(parse("throughput>1000").unwrap().threshold, Threshold::Number(1000.0));
        assert_eq!(parse("throughput>=1e3").unwrap().comparison, Comparison::GreaterOrEqual);
        assert_eq!(parse("error_rate<0.5%").unwrap().threshold, Threshold::Number(0.005));
        assert_eq!(parse("recovery<2m").unwrap().threshold, Threshold::Duration(Duration::from_secs(120)));
    }

    #[test]
    fn several_objectives_share_a_flag_and_bad_ones_are_refused() {
        let flags = vec!["ack.p99<5ms, errors<1".to_owned(), "throughput>10".to_owned()];
        let all = parse_all(&flags).unwrap();
        assert_eq!(all.iter().map(|slo| slo.metric.as_str()).collect::<Vec<_>>(), ["ack.p99", "errors", "throughput"]);
        assert!(matches!(parse("ack.p99"), Err(SloError::NoComparison(_))));
        assert!(matches!(parse("<5ms"), Err(SloError::NoMetric(_))));
        assert!(matches!(parse("ack.p99<5parsecs"), Err(SloError::BadThreshold { .. })));
        assert!(matches!(parse("ack.p99<fast"), Err(SloError::BadThreshold { .. })));
        assert!(matches!(parse("ack.p99<-5ms"), Err(SloError::BadThreshold { .. })));
    }

    #[test]
    fn objectives_pass_or_fail_against_the_measured_values() {
        let lookup = |metric: &str| match metric {
            "ack.p99" => Some(MetricValue::Duration(Duration::from_micros(4_300))),
            "throughput" => Some(MetricValue::Number(1500.0)),
            "errors" => Some(MetricValue::Number(0.0)),
            _ => None,
        };
        assert!(parse("ack.p99<5ms").unwrap().check(lookup).passed);
        assert!(!parse("ack.p99<4ms").unwrap().check(lookup).passed);
        assert!(parse("throughput>1000").unwrap().check(lookup).passed);
        assert!(!parse("throughput>2000").unwrap().check(lookup).passed);
        assert!(parse("errors<1").unwrap().check(lookup).passed);
        assert!(parse("errors<=0").unwrap().check(lookup).passed);
        let unknown = parse("delivery.p99<1s").unwrap().check(lookup);
        assert!(!unknown.passed && unknown.problem.is_some());
        let unitless = parse("ack.p99<5").unwrap().check(lookup);
        assert!(!unitless.passed && unitless.problem.as_deref().is_some_and(|why| why.contains("unit")));
        let outcome = parse("ack.p99<5ms").unwrap().check(lookup);
        assert_eq!(outcome.value, Some(0.0043));
        assert_eq!(outcome.measured.as_deref(), Some("4.30 ms"));
    }
}
