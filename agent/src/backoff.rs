//! Reconnect delays: exponential backoff with full jitter.
//!
//! Attempt `n` (from 0) waits a uniformly random time in `[0, min(cap, base · 2^n)]`. The
//! randomness matters more than the growth: after a broker outage a whole fleet loses its
//! connection at the same instant, and without jitter every gateway would retry in lockstep.

use std::time::Duration;

use rand::Rng;

/// How long a connection must last before the next reconnect starts from the base delay.
pub const STABLE: Duration = Duration::from_secs(30);

/// Backoff state for one reconnect loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Reconnect backoff of the uplink: base 500 ms, cap 30 s.
    pub fn uplink() -> Backoff {
        Backoff::new(Duration::from_millis(500), Duration::from_secs(30))
    }

    /// Backoff growing from `base` and never exceeding `cap`.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The upper bound of the next delay.
    pub fn ceiling(&self) -> Duration {
        // 2^20 · base is far past any sensible cap; stop doubling there to avoid overflow.
        let factor = 1u32 << self.attempt.min(20);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The delay before the next attempt, drawn from `rng`; counts the attempt.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(rng.random::<f64>())
    }

    /// Starts over from `base`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// A connection that was accepted ended after `lasted`: start over only if it was stable
    /// for [`STABLE`], so that a broker dropping every connection right after accepting it
    /// (duplicate client id, policy refusal) still sees growing delays.
    pub fn connection_ended(&mut self, lasted: Duration) {
        if lasted >= STABLE {
            self.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn ceiling_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::uplink();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let ceilings: Vec<u64> = (0..9)
            .map(|_| {
                let c = b.ceiling();
                b.next_delay(&mut rng);
                c.as_millis() as u64
            })
            .collect();
        assert_eq!(
            ceilings,
            [500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000]
        );
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(500));
    }

    #[test]
    fn delays_are_jittered_within_the_ceiling() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let delays: Vec<Duration> = (0..200)
            .map(|_| {
                let mut b = Backoff::uplink();
                b.next_delay(&mut rng)
            })
            .collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(500)));
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 150, "full jitter spreads the fleet");
    }

    #[test]
    fn only_a_stable_connection_resets_the_backoff() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut b = Backoff::uplink();
        for _ in 0..4 {
            b.next_delay(&mut rng);
            // Accepted, then dropped within a second: a duplicate client id.
            b.connection_ended(Duration::from_secs(1));
        }
        assert_eq!(b.ceiling(), Duration::from_secs(8));
        b.connection_ended(STABLE);
        assert_eq!(b.ceiling(), Duration::from_millis(500));
    }

    #[test]
    fn many_attempts_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1000), Duration::from_secs(30));
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..100 {
            assert!(b.next_delay(&mut rng) <= Duration::from_secs(30));
        }
    }
}
