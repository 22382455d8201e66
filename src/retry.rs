//! Trying again: doubling waits after failures ([`Backoff`]), and an operation tried until
//! it succeeds, fails for good, or runs out of patience ([`patiently`]).

use std::fmt::Display;
use std::time::Duration;

/// Doubling waits after failures, from a first wait up to a cap.
#[derive(Clone, Debug)]
pub struct Backoff {
    next: Duration,
    first: Duration,
    cap: Duration,
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Backoff {
        Backoff { next: first, first, cap }
    }

    /// After a success: the next failure waits the first wait again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// How long to wait after this failure; the one after waits twice as long (capped).
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next.min(self.cap);
        self.next = (self.next * 2).min(self.cap);
        wait
    }
}

/// How one attempt of [`patiently`] failed.
#[derive(Debug)]
pub enum Attempt<E> {
    /// Worth trying again (the leader moving, unknown or out of reach).
    Again(E),
    /// Trying again would fail the same way.
    ForGood(E),
}

/// Calls `attempt` until it succeeds or fails for good. A failure worth trying again is
/// tried again after `pause`, until `patience` has passed; then its error is returned.
pub async fn patiently<T, E: Display, F: Future<Output = Result<T, Attempt<E>>>>(
    patience: Duration,
    pause: Duration,
    mut attempt: impl FnMut() -> F,
) -> Result<T, E> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match attempt().await {
            Ok(done) => return Ok(done),
            Err(Attempt::Again(error)) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(%error, "not done yet; trying again");
                tokio::time::sleep(pause).await;
            }
            Err(Attempt::Again(error) | Attempt::ForGood(error)) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_and_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_millis(100));
        let waits: Vec<u128> = (0..5).map(|_| backoff.next_wait().as_millis()).collect();
        assert_eq!(waits, [20, 40, 80, 100, 100]);
        backoff.reset();
        assert_eq!(backoff.next_wait(), Duration::from_millis(20));
    }

    #[tokio::test(start_paused = true)]
    async fn patience_retries_transient_failures_until_it_runs_out() {
        let mut tries = 0;
        let outcome: Result<(), String> = patiently(Duration::from_secs(1), Duration::from_millis(300), || {
            tries += 1;
            async { Err(Attempt::Again("moving".to_owned())) }
        })
        .await;
        assert_eq!(outcome, Err("moving".to_owned()));
        assert_eq!(tries, 5, "at 0, 300, 600, 900 and 1200 ms");
        let mut tries = 0;
        let outcome: Result<(), String> = patiently(Duration::from_secs(1), Duration::from_millis(300), || {
            tries += 1;
            async { Err(Attempt::ForGood("refused".to_owned())) }
        })
        .await;
        assert_eq!((outcome, tries), (Err("refused".to_owned()), 1));
    }
}
