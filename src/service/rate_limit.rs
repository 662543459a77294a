//! Bounded in-memory limiter for repeated failures (wrong passwords).
//!
//! After `max_failures` failures for one key within `window`, further attempts for that key
//! are refused until the window ends. The map holds at most `capacity` keys: when full,
//! expired entries are dropped, and if none are, the oldest one is.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

pub struct FailureLimiter {
    max_failures: u32,
    window: Duration,
    capacity: usize,
    entries: Mutex<HashMap<String, Entry>>,
}

#[derive(Clone, Copy)]
struct Entry {
    failures: u32,
    window_start: Instant,
}

impl FailureLimiter {
    pub fn new(max_failures: u32, window: Duration, capacity: usize) -> Self {
        Self {
            max_failures,
            window,
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(retry_after)` when `key` has used up its failures in the current window.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let entries = self.entries.lock().expect("limiter lock");
        match entries.get(key) {
            Some(entry) if entry.failures >= self.max_failures => {
                let ends = entry.window_start + self.window;
                if ends > now { Err(ends - now) } else { Ok(()) }
            }
            _ => Ok(()),
        }
    }

    pub fn record_failure(&self, key: &str) {
        let now = Instant::now();
        let mut entries = self.entries.lock().expect("limiter lock");
        if !entries.contains_key(key) && entries.len() >= self.capacity {
            entries.retain(|_, entry| entry.window_start + self.window > now);
            if entries.len() >= self.capacity
                && let Some(oldest) = entries
                    .iter()
                    // Never free a blocked key by flooding the map with new ones.
                    .min_by_key(|(_, entry)| {
                        (entry.failures >= self.max_failures, entry.window_start)
                    })
                    .map(|(k, _)| k.clone())
            {
                entries.remove(&oldest);
            }
        }
        let entry = entries.entry(key.to_owned()).or_insert(Entry {
            failures: 0,
            window_start: now,
        });
        if entry.window_start + self.window <= now {
            *entry = Entry {
                failures: 0,
                window_start: now,
            };
        }
        entry.failures += 1;
    }

    /// Forgets `key`'s failures (after a success).
    pub fn reset(&self, key: &str) {
        self.entries.lock().expect("limiter lock").remove(key);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_max_failures_and_reports_wait() {
        let limiter = FailureLimiter::new(3, Duration::from_secs(60), 10);
        for _ in 0..3 {
            assert!(limiter.check("alice").is_ok());
            limiter.record_failure("alice");
        }
        let wait = limiter.check("alice").unwrap_err();
        assert!(wait > Duration::from_secs(50) && wait <= Duration::from_secs(60));
        assert!(limiter.check("bob").is_ok(), "other keys are unaffected");
    }

    #[test]
    fn reset_clears() {
        let limiter = FailureLimiter::new(1, Duration::from_secs(60), 10);
        limiter.record_failure("alice");
        assert!(limiter.check("alice").is_err());
        limiter.reset("alice");
        assert!(limiter.check("alice").is_ok());
    }

    #[test]
    fn window_expiry_unblocks() {
        let limiter = FailureLimiter::new(1, Duration::from_millis(20), 10);
        limiter.record_failure("alice");
        assert!(limiter.check("alice").is_err());
        std::thread::sleep(Duration::from_millis(30));
        assert!(limiter.check("alice").is_ok());
    }

    #[test]
    fn flooding_does_not_unblock_a_blocked_key() {
        let limiter = FailureLimiter::new(2, Duration::from_secs(60), 3);
        limiter.record_failure("victim");
        limiter.record_failure("victim");
        for n in 0..10 {
            limiter.record_failure(&format!("spray{n}"));
        }
        assert!(limiter.check("victim").is_err());
    }

    #[test]
    fn stays_within_capacity() {
        let limiter = FailureLimiter::new(5, Duration::from_secs(60), 3);
        for n in 0..10 {
            limiter.record_failure(&format!("user{n}"));
        }
        assert_eq!(limiter.len(), 3);
        assert!(limiter.check("user9").is_ok());
    }
}
