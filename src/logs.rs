//! The node's logs: on stderr (stdout carries only the launcher lines), as text or JSON
//! lines, coloured only on a terminal, openraft's chatter at `warn` unless asked for, and a
//! warning repeated from one place limited to a few per interval, so that a node that is
//! down does not flood its peers' logs.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::callsite::Identifier;
use tracing::{Level, Metadata};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::{Context, Filter, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line (timestamp, level, target, fields, spans).
    Json,
}

/// Warnings and errors from one place: this many at once, then one per [`REPEAT_EVERY`].
const REPEAT_BURST: u32 = 5;
const REPEAT_EVERY: Duration = Duration::from_secs(10);

/// The filter in force: `filter` as given, with openraft at `warn` unless it names
/// openraft itself.
pub fn effective_filter(filter: &str) -> String {
    if filter.contains("openraft") { filter.to_owned() } else { format!("{filter},openraft=warn") }
}

/// Installs the node's logger. Fails on a filter that does not parse.
pub fn init(filter: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(effective_filter(filter))?;
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let text = (format == LogFormat::Text)
        .then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(colour));
    let json = (format == LogFormat::Json).then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(std::io::stderr)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(text.with_filter(RepeatLimit::default()))
        .with(json.with_filter(RepeatLimit::default()))
        .try_init()?;
    Ok(())
}

/// Lets through at most [`REPEAT_BURST`] warnings or errors from one callsite, then one per
/// [`REPEAT_EVERY`]; everything else passes.
#[derive(Default)]
pub struct RepeatLimit {
    seen: Mutex<HashMap<Identifier, Budget>>,
}

#[derive(Clone, Copy, Debug)]
struct Budget {
    left: u32,
    refill_at: Instant,
}

impl RepeatLimit {
    /// Whether one more event from `callsite` may be written at `now`.
    fn allow(&self, callsite: Identifier, now: Instant) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let budget = seen.entry(callsite).or_insert(Budget { left: REPEAT_BURST, refill_at: now + REPEAT_EVERY });
        if now >= budget.refill_at {
            budget.left = budget.left.max(1);
            budget.refill_at = now + REPEAT_EVERY;
        }
        if budget.left == 0 {
            return false;
        }
        budget.left -= 1;
        true
    }
}

impl<S> Filter<S> for RepeatLimit {
    fn enabled(&self, _metadata: &Metadata<'_>, _context: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &tracing::Event<'_>, _context: &Context<'_, S>) -> bool {
        let metadata = event.metadata();
        *metadata.level() > Level::WARN || self.allow(metadata.callsite(), Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openraft_is_at_warn_unless_asked_for() {
        assert_eq!(effective_filter("info"), "info,openraft=warn");
        assert_eq!(effective_filter("info,openraft=debug"), "info,openraft=debug");
    }

    #[test]
    fn a_repeated_warning_gets_a_burst_then_one_per_interval() {
        struct Site;
        static SITE: Site = Site;
        impl tracing::callsite::Callsite for Site {
            fn set_interest(&self, _: tracing::subscriber::Interest) {}
            fn metadata(&self) -> &Metadata<'_> {
                unimplemented!("not read by the limit")
            }
        }
        let limit = RepeatLimit::default();
        let site = || Identifier(&SITE);
        let t0 = Instant::now();
        let passed = (0..20).filter(|_| limit.allow(site(), t0)).count();
        assert_eq!(passed, REPEAT_BURST as usize);
        assert!(!limit.allow(site(), t0 + REPEAT_EVERY / 2));
        assert!(limit.allow(site(), t0 + REPEAT_EVERY), "one more once the interval is over");
        assert!(!limit.allow(site(), t0 + REPEAT_EVERY));
    }
}
