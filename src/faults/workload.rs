//! The gift service's side of a fault run: single gifts and batches with unique ids, to
//! PKs the anchors saw in their battle, each request to a random node. A gift whose
//! answer does not settle it (a timeout, a dropped connection, `900008`) is sent again
//! with the same id to another random node until it does, or for [`RETRY_FOR`]. Every
//! gift is recorded with each attempt's answer and its outcome. Like a gift service that
//! delivers at least once, a share of requests ([`DUPLICATE_SHARE`]) is sent once more
//! after it was answered, with the same ids: each of those gifts must still count once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pkd_cluster::app::{SUCCESS, UNAVAILABLE, wall_clock_ms};
use pkd_cluster::gifts::{Gift, GiftClient, GiftError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::time::Instant;

use super::history::{Answer, Attempt, GiftOp, History, outcome_of};
use crate::bench::pks::Roster;
use crate::bench::target::{Target, TargetNode};

/// How long a gift is retried with its id.
pub const RETRY_FOR: Duration = Duration::from_secs(8);
/// How long one attempt waits for its answer.
const ATTEMPT_WAIT: Duration = Duration::from_secs(2);
/// The share of requests sent a second time, with the same ids, after their answer.
pub const DUPLICATE_SHARE: f64 = 0.125;
/// Gifts go to PKs with at least this much battle left.
const BATTLE_MARGIN_MS: i64 = 600;

/// What the gift senders share.
pub struct Gifting {
    pub target: Arc<Target>,
    pub roster: Arc<Roster>,
    pub history: Arc<History>,
    pub token: String,
    next_id: AtomicU64,
    next_request: AtomicU64,
}

impl Gifting {
    /// Gift ids start at `first_id`.
    pub fn new(
        target: Arc<Target>,
        roster: Arc<Roster>,
        history: Arc<History>,
        first_id: u64,
    ) -> anyhow::Result<Gifting> {
        let token = target.require_gift_token()?;
        Ok(Gifting {
            target,
            roster,
            history,
            token,
            next_id: AtomicU64::new(first_id),
            next_request: AtomicU64::new(1),
        })
    }

    /// Starts `count` senders, each with its own generator drawn from `seed`; they stop
    /// (after their gifts in flight) once `stop` turns true.
    pub fn spawn(
        self: &Arc<Self>,
        count: usize,
        seed: u64,
        stop: watch::Receiver<bool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        (0..count)
            .map(|index| {
                let gifting = self.clone();
                let rng = StdRng::seed_from_u64(seed ^ (0x6766_7473 + index as u64));
                tokio::spawn(gifting.send_until(rng, stop.clone()))
            })
            .collect()
    }

    async fn send_until(self: Arc<Self>, mut rng: StdRng, stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            let count = if rng.random_bool(0.5) { 1 } else { rng.random_range(2..=5) };
            let mut gifts = Vec::with_capacity(count);
            while gifts.len() < count {
                let Some(pk) = self.roster.pick(&mut rng, wall_clock_ms(), BATTLE_MARGIN_MS) else { break };
                gifts.push(Gift {
                    id: self.next_id.fetch_add(1, Ordering::Relaxed),
                    pk_id: Some(pk.id),
                    receiver: if rng.random_bool(0.5) { pk.source } else { pk.target },
                    sender: 5_000_000 + rng.random_range(0..50),
                    beans: rng.random_range(1..=9),
                    sender_profile: None,
                });
            }
            if gifts.is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            self.deliver(&mut rng, gifts).await;
            tokio::time::sleep(Duration::from_millis(rng.random_range(30..120))).await;
        }
    }

    /// A random member of the cluster (the membership nemeses change them).
    fn random_member(&self, rng: &mut StdRng) -> &TargetNode {
        let members = self.target.members();
        match members.len() {
            0 => &self.target.nodes[rng.random_range(0..self.target.nodes.len())],
            count => members[rng.random_range(0..count)],
        }
    }

    /// Sends `gifts` (one request) until each is settled or out of patience, and records
    /// them.
    async fn deliver(&self, rng: &mut StdRng, gifts: Vec<Gift>) {
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let invoked_ms = wall_clock_ms();
        let started = Instant::now();
        let mut attempts: Vec<Vec<Attempt>> = vec![Vec::new(); gifts.len()];
        loop {
            let pending: Vec<usize> = (0..gifts.len()).filter(|&index| needs_retry(&attempts[index])).collect();
            if pending.is_empty() || started.elapsed() >= RETRY_FOR {
                break;
            }
            if !attempts[pending[0]].is_empty() {
                tokio::time::sleep(Duration::from_millis(rng.random_range(100..300))).await;
            }
            let node = self.random_member(rng);
            let mut client = GiftClient::new(node.client_address(), self.token.clone()).with_timeout(ATTEMPT_WAIT);
            let sent_ms = wall_clock_ms();
            let batch: Vec<Gift> = pending.iter().map(|&index| gifts[index].clone()).collect();
            let answers = send(&mut client, &batch).await;
            for (&index, answer) in pending.iter().zip(answers) {
                attempts[index].push(Attempt { node: node.id, sent_ms, answer });
            }
        }
        if rng.random_bool(DUPLICATE_SHARE) && !attempts.iter().any(|attempts| needs_retry(attempts)) {
            let node = self.random_member(rng);
            let mut client = GiftClient::new(node.client_address(), self.token.clone()).with_timeout(ATTEMPT_WAIT);
            let sent_ms = wall_clock_ms();
            for (attempts, answer) in attempts.iter_mut().zip(send(&mut client, &gifts).await) {
                attempts.push(Attempt { node: node.id, sent_ms, answer });
            }
        }
        let completed_ms = wall_clock_ms();
        for (gift, attempts) in gifts.iter().zip(attempts) {
            self.history.gift(GiftOp {
                request,
                batch: gifts.len(),
                id: gift.id,
                pk: gift.pk_id.unwrap_or(0),
                receiver: gift.receiver,
                sender: gift.sender,
                beans: gift.beans,
                invoked_ms,
                completed_ms,
                outcome: outcome_of(&attempts.iter().map(|attempt| attempt.answer.clone()).collect::<Vec<_>>()),
                attempts,
            });
        }
    }
}

/// True until an attempt settled the gift (counted or refused).
fn needs_retry(attempts: &[Attempt]) -> bool {
    attempts.last().is_none_or(|attempt| matches!(attempt.answer, Answer::Indeterminate(_)))
}

/// What a node's code says of a gift.
fn answer_of(code: &str) -> Answer {
    match code {
        SUCCESS => Answer::Counted,
        UNAVAILABLE => Answer::Indeterminate(code.to_owned()),
        other => Answer::Refused(other.to_owned()),
    }
}

fn failure(error: &GiftError) -> Answer {
    Answer::Indeterminate(
        match error {
            GiftError::Timeout { .. } => "timeout",
            GiftError::Io { .. } => "connection",
            GiftError::Malformed { .. } | GiftError::Unexpected { .. } => "bad answer",
        }
        .to_owned(),
    )
}

/// One attempt: one answer per gift, in order.
async fn send(client: &mut GiftClient, gifts: &[Gift]) -> Vec<Answer> {
    if let [gift] = gifts {
        return vec![match client.send(gift).await {
            Ok(reply) => answer_of(&reply.code),
            Err(error) => failure(&error),
        }];
    }
    match client.send_batch(gifts).await {
        Ok(reply) if reply.entries.len() == gifts.len() => {
            reply.entries.iter().map(|entry| answer_of(&entry.code)).collect()
        }
        // The whole request refused (or an answer that does not match it).
        Ok(reply) => {
            let answer = match answer_of(&reply.code) {
                Answer::Counted => {
                    Answer::Indeterminate(format!("{} entries for {} gifts", reply.entries.len(), gifts.len()))
                }
                other => other,
            };
            vec![answer; gifts.len()]
        }
        Err(error) => vec![failure(&error); gifts.len()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_settle_a_gift_except_unavailable() {
        assert_eq!(answer_of("000000"), Answer::Counted);
        assert_eq!(answer_of("905047"), Answer::Refused("905047".into()));
        assert!(matches!(answer_of("900008"), Answer::Indeterminate(_)));
        let attempt = |answer| Attempt { node: 1, sent_ms: 0, answer };
        assert!(needs_retry(&[]));
        assert!(needs_retry(&[attempt(Answer::Indeterminate("timeout".into()))]));
        assert!(!needs_retry(&[attempt(Answer::Indeterminate("timeout".into())), attempt(Answer::Counted)]));
        assert!(!needs_retry(&[attempt(Answer::Refused("905047".into()))]));
    }
}
