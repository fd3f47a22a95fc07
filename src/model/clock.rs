//! Monotonic time as the daemon sees it: the system's, or one a test moves
//! by hand so that timing is checked without sleeping and without races.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// A monotonic clock and a way to wait on it.
pub trait Clock: Send + Sync {
    fn now(&self) -> Instant;
    /// Returns once `pause` has passed on this clock.
    fn sleep(&self, pause: Duration);
}

/// The system's monotonic clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep(&self, pause: Duration) {
        std::thread::sleep(pause);
    }
}

/// A clock that stands still until [`ManualClock::advance`] moves it.
/// Sleepers wake when it passes their deadline.
#[derive(Debug)]
pub struct ManualClock {
    state: Mutex<ManualState>,
    changed: Condvar,
}

#[derive(Debug)]
struct ManualState {
    now: Instant,
    /// The deadlines of the threads inside `sleep`.
    sleeping: Vec<Instant>,
}

impl ManualClock {
    pub fn new() -> Arc<ManualClock> {
        Arc::new(ManualClock {
            state: Mutex::new(ManualState {
                now: Instant::now(),
                sleeping: Vec::new(),
            }),
            changed: Condvar::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, ManualState> {
        // The state is two plain numbers: a panicking holder leaves it whole.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves the clock on and wakes the sleepers whose time has come.
    pub fn advance(&self, by: Duration) {
        let mut state = self.state();
        state.now += by;
        self.changed.notify_all();
    }

    /// Waits, at most `limit` of real time, until `count` threads sleep on
    /// this clock with a deadline still ahead, that is until they have done
    /// what is due at its time. False if they did not get there in time.
    pub fn wait_for_sleepers(&self, count: usize, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut state = self.state();
        loop {
            let now = state.now;
            if state.sleeping.iter().filter(|until| **until > now).count() >= count {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.state().now
    }

    fn sleep(&self, pause: Duration) {
        let mut state = self.state();
        let until = state.now + pause;
        if pause.is_zero() {
            return;
        }
        state.sleeping.push(until);
        self.changed.notify_all();
        while state.now < until {
            state = self
                .changed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if let Some(mine) = state.sleeping.iter().position(|d| *d == until) {
            state.sleeping.swap_remove(mine);
        }
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sleeper_wakes_only_when_the_manual_clock_passes_its_deadline() {
        let clock = ManualClock::new();
        let start = clock.now();
        let sleeper = {
            let clock = clock.clone();
            std::thread::spawn(move || {
                clock.sleep(Duration::from_secs(10));
                clock.now()
            })
        };
        assert!(clock.wait_for_sleepers(1, Duration::from_secs(10)));
        clock.advance(Duration::from_secs(9));
        // Still asleep: it went back to sleep at 9 s.
        assert!(clock.wait_for_sleepers(1, Duration::from_secs(10)));
        assert!(!sleeper.is_finished());
        clock.advance(Duration::from_secs(1));
        let woke_at = sleeper.join().unwrap();
        assert_eq!(woke_at - start, Duration::from_secs(10));
        assert_eq!(clock.now() - start, Duration::from_secs(10));
    }
}
