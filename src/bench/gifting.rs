//! Gifts as the app's gift service sends them: `POST /internal/gifts` to any node, one
//! gift or a batch per request, each gift to a side of a PK in its battle. Also what the
//! answers feed: when each viewer saw each gift ([`DeliveryTracker`]) and how long a PK
//! went without an acknowledged gift ([`AckGaps`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use pkd_cluster::app::wall_clock_ms;
use pkd_cluster::gifts::{Gift, GiftClient, GiftError};
use rand::Rng;
use rand::rngs::SmallRng;
use tokio::time::Instant;

use super::cadence::{CadenceChecker, CadenceRules};
use super::pks::Roster;
use super::recorder::{Outcome, Recorder, new_histogram, record_latency};
use super::schedule::{Ticket, Tickets};
use super::target::Target;

/// Gifts are sent to PKs with at least this much battle left, so they count.
const BATTLE_MARGIN_MS: i64 = 500;

/// What every gift sender of a run shares.
pub struct GiftPlan {
    pub target: Arc<Target>,
    pub roster: Arc<Roster>,
    /// Gifts per request (1: the single-gift body; more: the batch body).
    pub batch: usize,
    /// The next gift id (unique across the run).
    pub next_id: Arc<AtomicU64>,
    /// Sender ids are drawn from `sender_base..sender_base + 10_000`.
    pub sender_base: u64,
    /// Retry a request that found no node or no leader, on the next node with the same
    /// gift ids, for this long (the gift service's behaviour during a failover).
    pub retry_for: Option<Duration>,
    pub tracker: Option<Arc<DeliveryTracker>>,
    pub gaps: Option<Arc<AckGaps>>,
    /// Gifts acknowledged as counted over the whole run, warm-up included.
    pub acknowledged: AtomicU64,
}

impl GiftPlan {
    /// A plan for `batch` gifts per request to the roster's PKs, with fresh ids.
    pub fn new(target: Arc<Target>, roster: Arc<Roster>, batch: usize, sender_base: u64) -> GiftPlan {
        GiftPlan {
            target,
            roster,
            batch,
            next_id: Arc::new(AtomicU64::new(1)),
            sender_base,
            retry_for: None,
            tracker: None,
            gaps: None,
            acknowledged: AtomicU64::new(0),
        }
    }

    /// `workers` senders, spread over the nodes.
    pub fn senders(self: &Arc<Self>, workers: usize) -> anyhow::Result<Vec<GiftSender>> {
        (0..workers)
            .map(|index| {
                GiftSender::new(self.clone(), index, rand::SeedableRng::seed_from_u64(self.sender_base ^ index as u64))
            })
            .collect()
    }
}

/// One connection's worth of gift requests.
pub struct GiftSender {
    plan: Arc<GiftPlan>,
    client: GiftClient,
    node: usize,
    rng: SmallRng,
}

impl GiftSender {
    pub fn new(plan: Arc<GiftPlan>, node: usize, rng: SmallRng) -> anyhow::Result<GiftSender> {
        let client = plan.target.gift_client(node)?;
        Ok(GiftSender { plan, client, node, rng })
    }

    /// Sends one request meant to go out at `intended`.
    pub async fn send(&mut self, intended: Instant) -> Outcome {
        let batch = self.plan.batch.max(1);
        let mut gifts = Vec::with_capacity(batch);
        let mut waited = false;
        while gifts.len() < batch {
            let Some(pk) = self.plan.roster.pick(&mut self.rng, wall_clock_ms(), BATTLE_MARGIN_MS) else {
                // Between PKs (one ended, the next not yet in its battle): wait a little.
                if waited && intended.elapsed() > Duration::from_secs(2) {
                    return Outcome::Failed { code: "no PK in battle".to_owned(), items: batch as u64, items_ok: 0 };
                }
                waited = true;
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let receiver = if self.rng.random_bool(0.5) { pk.source } else { pk.target };
            gifts.push(Gift {
                id: self.plan.next_id.fetch_add(1, Ordering::Relaxed),
                pk_id: Some(pk.id),
                receiver,
                sender: self.plan.sender_base + self.rng.random_range(0..10_000),
                beans: 1,
                sender_profile: None,
            });
        }
        loop {
            let (outcome, retry) = self.try_once(&gifts, intended).await;
            let patience_left = self.plan.retry_for.is_some_and(|patience| intended.elapsed() < patience);
            if !(retry && patience_left) {
                return outcome;
            }
            // Another node, the same gift ids: each gift still counts once.
            self.node += 1;
            match self.plan.target.gift_client(self.node) {
                Ok(client) => self.client = client,
                Err(_) => return outcome,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One attempt; the outcome, and whether a retry on another node could help.
    async fn try_once(&mut self, gifts: &[Gift], intended: Instant) -> (Outcome, bool) {
        let items = gifts.len() as u64;
        let failure = |error: GiftError| {
            let code = match error {
                GiftError::Timeout { .. } => "timeout",
                GiftError::Io { .. } => "connection",
                GiftError::Malformed { .. } | GiftError::Unexpected { .. } => "bad answer",
            };
            (Outcome::Failed { code: code.to_owned(), items, items_ok: 0 }, true)
        };
        // (pk, receiver, side total) of every counted gift.
        let mut counted = Vec::new();
        let mut first_failure: Option<String> = None;
        if gifts.len() == 1 {
            let gift = &gifts[0];
            let reply = match self.client.send(gift).await {
                Ok(reply) => reply,
                Err(error) => return failure(error),
            };
            match reply.result {
                Some(result) if reply.code == pkd_cluster::app::SUCCESS => {
                    counted.push((gift.pk_id.unwrap_or(0), gift.receiver, result.side_beans));
                }
                _ => first_failure = Some(reply.code),
            }
        } else {
            let reply = match self.client.send_batch(gifts).await {
                Ok(reply) => reply,
                Err(error) => return failure(error),
            };
            if reply.code != pkd_cluster::app::SUCCESS {
                first_failure = Some(reply.code);
            }
            for (gift, entry) in gifts.iter().zip(&reply.entries) {
                if entry.code == pkd_cluster::app::SUCCESS {
                    counted.push((gift.pk_id.unwrap_or(0), gift.receiver, entry.side_beans));
                } else if first_failure.is_none() {
                    first_failure = Some(entry.code.clone());
                }
            }
        }
        let now = Instant::now();
        self.plan.acknowledged.fetch_add(counted.len() as u64, Ordering::Relaxed);
        for &(pk, receiver, side_beans) in &counted {
            if let Some(gaps) = &self.plan.gaps {
                gaps.acknowledged(pk, now);
            }
            if let (Some(tracker), Some(side_beans)) = (&self.plan.tracker, side_beans) {
                tracker.acknowledged(pk, receiver, side_beans, intended);
            }
        }
        match first_failure {
            None => (Outcome::Ok { items }, false),
            Some(code) => {
                let retry = code == pkd_cluster::app::UNAVAILABLE;
                (Outcome::Failed { code, items, items_ok: counted.len() as u64 }, retry)
            }
        }
    }
}

/// Runs gift requests from `tickets` on `senders` (one task each), recording into
/// `recorder`, until the tickets run out.
pub async fn drive_gifts(senders: Vec<GiftSender>, tickets: Arc<Tickets>, recorder: Arc<Recorder>) {
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|mut sender| {
            let (tickets, recorder) = (tickets.clone(), recorder.clone());
            tokio::spawn(async move {
                while let Some(Ticket { intended, .. }) = tickets.next().await {
                    recorder.begin();
                    let outcome = sender.send(intended).await;
                    recorder.finish(intended, outcome);
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
}

/// One PK's gifts waiting to be seen, and the state pushes seen, by one tracked viewer.
struct PkDeliveries {
    source: Option<u64>,
    /// (arrival, source total, target total), in arrival order; totals never decrease.
    pushes: Vec<(Instant, i64, i64)>,
    /// (meant to go out, receiver, the side's total once it counted).
    waiting: Vec<(Instant, u64, i64)>,
    cadence: CadenceChecker,
}

/// Gift to viewer delivery: for each acknowledged gift, the first state push its PK's
/// tracked viewer received whose side total includes it (the acknowledgement gives the
/// side's total after the gift; totals only grow). Either may come first. Also checks
/// each tracked viewer's push cadence.
pub struct DeliveryTracker {
    pks: Mutex<HashMap<u64, PkDeliveries>>,
    /// Delivery latencies of gifts due from `measure_from` on.
    delivery: Mutex<Histogram<u64>>,
    measure_from: Mutex<Option<Instant>>,
    rules: CadenceRules,
    pub pushes: AtomicU64,
}

/// What the tracker found at the end.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeliveryReport {
    pub tracked_pks: u64,
    pub tracked_pushes: u64,
    /// Acknowledged gifts no tracked viewer saw by the end (after a grace period).
    pub undelivered: u64,
    pub cadence_pushes: u64,
    pub cadence_too_frequent: u64,
    pub cadence_too_sparse: u64,
    pub violations: u64,
    pub shortest_spacing_ms: Option<i64>,
    pub longest_gap_ms: Option<i64>,
}

impl DeliveryTracker {
    pub fn new(rules: CadenceRules) -> DeliveryTracker {
        DeliveryTracker {
            pks: Mutex::new(HashMap::new()),
            delivery: Mutex::new(new_histogram()),
            measure_from: Mutex::new(None),
            rules,
            pushes: AtomicU64::new(0),
        }
    }

    /// Deliveries of gifts due from `from` on are measured.
    pub fn measure_from(&self, from: Instant) {
        *self.measure_from.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(from);
    }

    fn delivered(&self, intended: Instant, at: Instant) {
        let measured = self
            .measure_from
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_some_and(|from| intended >= from);
        if measured {
            let mut histogram = self.delivery.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            record_latency(&mut histogram, at.saturating_duration_since(intended));
        }
    }

    /// The delivery latencies measured so far.
    pub fn delivery(&self) -> Histogram<u64> {
        self.delivery.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    fn pks(&self) -> std::sync::MutexGuard<'_, HashMap<u64, PkDeliveries>> {
        self.pks.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn entry<'a>(&self, pks: &'a mut HashMap<u64, PkDeliveries>, pk: u64) -> &'a mut PkDeliveries {
        pks.entry(pk).or_insert_with(|| PkDeliveries {
            source: None,
            pushes: Vec::new(),
            waiting: Vec::new(),
            cadence: CadenceChecker::new(self.rules),
        })
    }

    /// A tracked viewer received a state push (its `content`, rendered at `version_ms`).
    pub fn pushed(&self, content: &serde_json::Value, version_ms: i64, at: Instant) {
        let (Some(pk), Some(status)) = (content["pkId"].as_u64(), content["status"].as_u64()) else { return };
        let source_total = content["sourceGifts"].as_i64().unwrap_or(0);
        let target_total = content["targetGifts"].as_i64().unwrap_or(0);
        self.pushes.fetch_add(1, Ordering::Relaxed);
        let mut pks = self.pks();
        let deliveries = self.entry(&mut pks, pk);
        deliveries.source = deliveries.source.or(content["sourceUser"].as_u64());
        deliveries.cadence.observe(version_ms, status);
        deliveries.pushes.push((at, source_total, target_total));
        // Keep a minute of pushes: enough for any acknowledgement still on its way.
        if deliveries.pushes.len() > 512 {
            deliveries.pushes.drain(..256);
        }
        let source = deliveries.source;
        let mut delivered = Vec::new();
        deliveries.waiting.retain(|&(intended, receiver, total)| {
            let seen = if Some(receiver) == source { source_total } else { target_total };
            if seen >= total {
                delivered.push(intended);
            }
            seen < total
        });
        drop(pks);
        for intended in delivered {
            self.delivered(intended, at);
        }
    }

    /// A gift to `receiver` in `pk`, meant to go out at `intended`, counted with the side
    /// then at `side_total`.
    pub fn acknowledged(&self, pk: u64, receiver: u64, side_total: i64, intended: Instant) {
        let mut pks = self.pks();
        let deliveries = self.entry(&mut pks, pk);
        let seen = deliveries.source.and_then(|source| {
            deliveries.pushes.iter().find(|&&(_, source_total, target_total)| {
                (if receiver == source { source_total } else { target_total }) >= side_total
            })
        });
        match seen.map(|&(at, _, _)| at) {
            Some(at) => {
                drop(pks);
                self.delivered(intended, at);
            }
            None => deliveries.waiting.push((intended, receiver, side_total)),
        }
    }

    /// Ends the run at `now_ms`: gifts still unseen are undelivered, and running PKs owe
    /// their last periodic push.
    pub fn finish(&self, now_ms: i64) -> DeliveryReport {
        let mut pks = self.pks();
        let mut report = DeliveryReport {
            tracked_pks: pks.len() as u64,
            tracked_pushes: self.pushes.load(Ordering::Relaxed),
            undelivered: 0,
            cadence_pushes: 0,
            cadence_too_frequent: 0,
            cadence_too_sparse: 0,
            violations: 0,
            shortest_spacing_ms: None,
            longest_gap_ms: None,
        };
        for deliveries in pks.values_mut() {
            report.undelivered += deliveries.waiting.len() as u64;
            deliveries.cadence.finish(now_ms);
            let cadence = &deliveries.cadence;
            report.cadence_pushes += cadence.pushes;
            report.cadence_too_frequent += cadence.too_frequent;
            report.cadence_too_sparse += cadence.too_sparse;
            report.shortest_spacing_ms = min_option(report.shortest_spacing_ms, cadence.shortest_spacing_ms);
            report.longest_gap_ms = report.longest_gap_ms.max(cadence.longest_gap_ms);
        }
        report.violations = report.cadence_too_frequent + report.cadence_too_sparse;
        report
    }
}

fn min_option(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// How long PKs went without an acknowledged gift: per PK, and over the whole cluster.
pub struct AckGaps {
    inner: Mutex<GapsInner>,
    /// Gaps shorter than this are not kept one by one.
    keep_over: Duration,
}

#[derive(Default)]
struct GapsInner {
    last_by_pk: HashMap<u64, Instant>,
    last_any: Option<Instant>,
    /// (from, to) of every gap longer than `keep_over`, of one PK or of the cluster.
    gaps: Vec<(Instant, Instant)>,
    longest_pk_gap: Duration,
    longest_global_gap: Duration,
}

impl AckGaps {
    pub fn new(keep_over: Duration) -> AckGaps {
        AckGaps { inner: Mutex::new(GapsInner::default()), keep_over }
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, GapsInner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A gift to `pk` was acknowledged at `now`.
    pub fn acknowledged(&self, pk: u64, now: Instant) {
        let mut inner = self.inner();
        if let Some(last) = inner.last_any {
            let gap = now.saturating_duration_since(last);
            inner.longest_global_gap = inner.longest_global_gap.max(gap);
            if gap > self.keep_over {
                inner.gaps.push((last, now));
            }
        }
        inner.last_any = Some(inner.last_any.map_or(now, |last| last.max(now)));
        if let Some(last) = inner.last_by_pk.insert(pk, now) {
            let gap = now.saturating_duration_since(last);
            inner.longest_pk_gap = inner.longest_pk_gap.max(gap);
            if gap > self.keep_over {
                inner.gaps.push((last, now));
            }
        }
    }

    /// The longest gap (of one PK or of the cluster) overlapping `[from, to)`.
    pub fn longest_within(&self, from: Instant, to: Instant) -> Duration {
        self.inner()
            .gaps
            .iter()
            .filter(|&&(start, end)| start < to && end > from)
            .map(|&(start, end)| end.saturating_duration_since(start))
            .max()
            .unwrap_or_default()
    }

    /// (longest gap of any one PK, longest gap of the whole cluster).
    pub fn longest(&self) -> (Duration, Duration) {
        let inner = self.inner();
        (inner.longest_pk_gap, inner.longest_global_gap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test(start_paused = true)]
    async fn a_gift_is_delivered_by_the_first_push_whose_total_includes_it_whichever_comes_first() {
        let start = Instant::now();
        let tracker = DeliveryTracker::new(CadenceRules::default());
        tracker.measure_from(start);
        let push = |source: i64, target: i64, version: i64| {
            json!({"pkId": 7, "status": 1, "sourceUser": 1, "targetUser": 2,
                   "sourceGifts": source, "targetGifts": target, "version": version})
        };
        tracker.pushed(&push(0, 0, 0), 0, Instant::now());
        // Acknowledged first, seen 300 ms later.
        tracker.acknowledged(7, 1, 5, start);
        tokio::time::sleep(Duration::from_millis(300)).await;
        tracker.pushed(&push(4, 0, 1_000), 1_000, Instant::now());
        tokio::time::sleep(Duration::from_millis(700)).await;
        tracker.pushed(&push(5, 0, 2_000), 2_000, Instant::now());
        // Seen before its acknowledgement arrived: delivered at that push.
        let sent = Instant::now();
        tokio::time::sleep(Duration::from_millis(100)).await;
        tracker.pushed(&push(5, 3, 3_000), 3_000, Instant::now());
        tokio::time::sleep(Duration::from_millis(50)).await;
        tracker.acknowledged(7, 2, 3, sent);
        // Never seen.
        tracker.acknowledged(7, 2, 9, sent);
        let delivery = tracker.delivery();
        assert_eq!(delivery.len(), 2);
        assert_eq!(delivery.max(), delivery.highest_equivalent(1_000_000));
        assert_eq!(delivery.min(), delivery.lowest_equivalent(100_000));
        let report = tracker.finish(3_500);
        assert_eq!(report.undelivered, 1);
        assert_eq!(report.violations, 0);
        assert_eq!(report.tracked_pushes, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn gaps_without_acknowledgements_are_measured_per_pk_and_overall() {
        let gaps = AckGaps::new(Duration::from_millis(100));
        let start = Instant::now();
        gaps.acknowledged(1, start);
        gaps.acknowledged(2, start + Duration::from_millis(10));
        gaps.acknowledged(2, start + Duration::from_millis(60));
        gaps.acknowledged(1, start + Duration::from_millis(1_500));
        let (pk, global) = gaps.longest();
        assert_eq!(pk, Duration::from_millis(1_500));
        assert_eq!(global, Duration::from_millis(1_440));
        assert_eq!(gaps.longest_within(start + Duration::from_secs(1), start + Duration::from_secs(2)), pk);
        assert_eq!(gaps.longest_within(start + Duration::from_secs(2), start + Duration::from_secs(3)), Duration::ZERO);
    }
}
