//! When to try a webhook again: exponential backoff with full jitter (the `backon` crate's
//! schedule), starting at `initial_delay`, doubling up to `max_delay`, for at most `max_age`
//! after the event happened; then the event is given up.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

use super::AttemptOutcome;

/// The retry bounds of webhook delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The first retry waits about this long.
    pub initial_delay: Duration,
    /// No wait between attempts is longer than this.
    pub max_delay: Duration,
    /// No attempt starts later than this after the event happened.
    pub max_age: Duration,
    /// One attempt (connect, send, answer) takes at most this long.
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(600),
            max_age: Duration::from_secs(24 * 3600),
            attempt_timeout: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The wait after the `failures`-th failed attempt (1 for the first).
    pub fn delay_after(&self, failures: u32) -> Duration {
        let builder = ExponentialBuilder::default()
            .with_min_delay(self.initial_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        let skip = usize::try_from(failures.saturating_sub(1)).unwrap_or(usize::MAX);
        builder.build().nth(skip).unwrap_or(self.max_delay)
    }

    /// What happens to an event created at `created_ms` after its `failures`-th failed attempt
    /// ended at `now_ms` (epoch milliseconds): a retry time, or giving up.
    pub fn after_failure(&self, created_ms: i64, now_ms: i64, failures: u32) -> AttemptOutcome {
        let delay = i64::try_from(self.delay_after(failures).as_millis()).unwrap_or(i64::MAX);
        let deadline =
            created_ms.saturating_add(i64::try_from(self.max_age.as_millis()).unwrap_or(i64::MAX));
        let at = now_ms.saturating_add(delay);
        if at > deadline {
            AttemptOutcome::GaveUp
        } else {
            AttemptOutcome::RetryAt(at)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_with_jitter_up_to_the_cap() {
        let policy = RetryPolicy::default();
        for failures in 1..=20 {
            let nominal = policy
                .initial_delay
                .saturating_mul(1 << (failures - 1).min(20))
                .min(policy.max_delay);
            let d = policy.delay_after(failures);
            assert!(d >= nominal, "{failures}: {d:?} < {nominal:?}");
            assert!(
                d <= nominal * 2 + Duration::from_millis(1),
                "{failures}: {d:?}"
            );
        }
    }

    #[test]
    fn retries_stop_after_the_maximum_age_on_a_virtual_clock() {
        let policy = RetryPolicy {
            max_age: Duration::from_secs(60),
            ..RetryPolicy::default()
        };
        let created = 1_000_000;
        let mut now = created;
        let mut failures = 0;
        loop {
            failures += 1;
            match policy.after_failure(created, now, failures) {
                AttemptOutcome::RetryAt(at) => {
                    assert!(at > now && at <= created + 60_000);
                    now = at;
                }
                AttemptOutcome::GaveUp => break,
                AttemptOutcome::Delivered => unreachable!(),
            }
        }
        // 1+2+4+8+16 s (with jitter up to double) fit in a minute; a dozen never do.
        assert!((3..12).contains(&failures), "{failures}");
    }
}
