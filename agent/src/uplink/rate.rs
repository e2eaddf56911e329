//! The publish-rate cap: a token bucket.
//!
//! Tokens accrue at `rate` per second up to a burst of a tenth of a second's worth (at least
//! one); each journal publish takes one. AWS IoT Core allows 100 publishes per second per
//! connection and throttles or disconnects beyond it, so the default cap is 100/s. Over any
//! interval `T` at most `burst + rate · T` messages leave.

use std::num::NonZeroU32;
use std::time::Duration;

use tokio::time::Instant;

/// A token bucket measured in whole messages.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    /// Seconds per token.
    period: Duration,
    burst: u32,
    tokens: u32,
    /// When the next token accrues (meaningful while `tokens < burst`).
    next_at: Instant,
}

impl TokenBucket {
    /// A full bucket for `rate` messages per second.
    pub(crate) fn new(rate: NonZeroU32, now: Instant) -> TokenBucket {
        let burst = (rate.get() / 10).max(1);
        TokenBucket {
            period: Duration::from_secs(1) / rate.get(),
            burst,
            tokens: burst,
            next_at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        if self.tokens >= self.burst {
            self.next_at = now;
            return;
        }
        while self.tokens < self.burst && self.next_at <= now {
            self.tokens += 1;
            self.next_at += self.period;
        }
        if self.tokens >= self.burst {
            self.next_at = now;
        }
    }

    /// Tokens available at `now`.
    pub(crate) fn available(&mut self, now: Instant) -> u32 {
        self.refill(now);
        self.tokens
    }

    /// Takes one token (the caller checked [`TokenBucket::available`]).
    pub(crate) fn take(&mut self, now: Instant) {
        self.refill(now);
        if self.tokens == self.burst {
            // Accrual restarts from the moment the bucket stops being full.
            self.next_at = now + self.period;
        }
        self.tokens = self.tokens.saturating_sub(1);
    }

    /// When the next token accrues.
    pub(crate) fn next_token_at(&self) -> Instant {
        self.next_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain_for(bucket: &mut TokenBucket, start: Instant, span: Duration) -> u32 {
        // Take every token as soon as it is there, stepping time token by token.
        let mut now = start;
        let mut taken = 0;
        while now <= start + span {
            if bucket.available(now) > 0 {
                bucket.take(now);
                taken += 1;
            } else {
                now = bucket.next_token_at();
            }
        }
        taken
    }

    #[test]
    fn caps_the_rate_with_a_small_burst() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(NonZeroU32::new(100).unwrap(), start);
        assert_eq!(bucket.available(start), 10, "a tenth of a second of burst");
        let taken = drain_for(&mut bucket, start, Duration::from_secs(10));
        // 10 of burst + 100/s for 10 s (the token due exactly at the end included).
        assert!((1000..=1011).contains(&taken), "{taken}");
    }

    #[test]
    fn refills_after_idle_but_never_past_the_burst() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(NonZeroU32::new(5).unwrap(), start);
        assert_eq!(bucket.available(start), 1);
        bucket.take(start);
        assert_eq!(bucket.available(start), 0);
        assert_eq!(bucket.next_token_at(), start + Duration::from_millis(200));
        assert_eq!(bucket.available(start + Duration::from_secs(60)), 1);
    }
}
