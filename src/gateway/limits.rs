//! Rate limits: a token bucket, pure (time is an argument), used per connection and per
//! user (over every connection the user has on this node).

use std::time::Instant;

/// `burst` commands at once, refilled at `rate` per second.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn new(rate: u32, burst: u32, now: Instant) -> TokenBucket {
        TokenBucket { tokens: f64::from(burst), rate: f64::from(rate), burst: f64::from(burst), last: now }
    }

    /// Takes one token at `now`, if there is one.
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = self.last.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(20, 40, t0);
        assert_eq!((0..50).filter(|_| bucket.allow(t0)).count(), 40, "the burst");
        assert!(!bucket.allow(t0 + Duration::from_millis(49)), "less than one token refilled");
        assert!(bucket.allow(t0 + Duration::from_millis(50)), "one token per 50 ms at 20/s");
        // A long pause refills to the burst, no more.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..100).filter(|_| bucket.allow(later)).count(), 40);
        // A clock going back neither refills nor breaks the bucket.
        assert!(!bucket.allow(t0));
    }
}
