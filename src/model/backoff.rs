//! Exponential backoff: the one retry schedule of huddle (the daemon's
//! snapshot retries, the alert sinks, git sync, the file log's lock).

use std::time::Duration;

/// Pauses of `initial`, doubling after each failure in a row, at most `max`;
/// a success starts over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            failures: 0,
        }
    }

    /// Counts one more failure; returns the pause before the next attempt.
    pub fn fail(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        self.pause()
    }

    /// The pause the failures so far call for (none before the first).
    pub fn pause(&self) -> Duration {
        if self.failures == 0 {
            return Duration::ZERO;
        }
        // Past 2^20 the cap has long been reached; the shift must not overflow.
        self.initial
            .saturating_mul(1 << (self.failures - 1).min(20))
            .min(self.max)
    }

    /// Failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A success: the next failure waits `initial` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_up_to_the_cap_and_starts_over_after_a_success() {
        let mut backoff = Backoff::new(ms(1000), ms(5000));
        assert_eq!(backoff.pause(), Duration::ZERO);
        let pauses: Vec<Duration> = (0..5).map(|_| backoff.fail()).collect();
        assert_eq!(pauses, [ms(1000), ms(2000), ms(4000), ms(5000), ms(5000)]);
        assert_eq!(backoff.failures(), 5);
        backoff.reset();
        assert_eq!(backoff.fail(), ms(1000));
    }

    #[test]
    fn many_failures_neither_overflow_nor_pass_the_cap() {
        let mut backoff = Backoff::new(ms(1000), ms(8000));
        for _ in 0..200 {
            backoff.fail();
        }
        assert_eq!(backoff.pause(), ms(8000));
        let mut huge = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(huge.fail(), Duration::MAX);
        assert_eq!(huge.fail(), Duration::MAX);
    }
}
