//! Open-loop pacing for `--mode rate`: connection *i* is due at `start + i / rate`, whatever happened to the
//! connections before it. The schedule is absolute, so a late timer wake-up is caught up (several due
//! connections start at once) instead of silently lowering the rate, and each connection's latencies are
//! measured from its intended start time, so time spent waiting behind a stalled client or target counts against
//! the target (no coordinated omission).
use std::time::{Duration, Instant};

/// Errors of this area: a rate that cannot be scheduled.
#[derive(Debug, thiserror::Error)]
pub enum RateError {
    /// Zero, negative, or not a number.
    #[error("the rate must be a positive number of connections per second, got {0}")]
    Invalid(f64),
}

/// Intended start times at a fixed rate, bounded by a deadline and an optional count.
#[derive(Debug, Clone)]
pub struct Pacer {
    start: Instant,
    rate: f64,
    next: u64,
    deadline: Instant,
    limit: Option<u64>,
}

impl Pacer {
    /// A schedule of `rate` per second from `start`, with no start at or after `deadline` and at most `limit`
    /// starts.
    pub fn new(
        start: Instant,
        rate: f64,
        deadline: Instant,
        limit: Option<u64>,
    ) -> Result<Pacer, RateError> {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(RateError::Invalid(rate));
        }
        Ok(Pacer {
            start,
            rate,
            next: 0,
            deadline,
            limit,
        })
    }

    /// The intended start of the `i`-th connection.
    pub fn due(&self, i: u64) -> Instant {
        self.start + Duration::from_secs_f64(i as f64 / self.rate)
    }

    /// The next intended start time, or `None` once the schedule is exhausted (deadline or count).
    pub fn next_due(&mut self) -> Option<Instant> {
        if self.limit.is_some_and(|l| self.next >= l) {
            return None;
        }
        let due = self.due(self.next);
        if due >= self.deadline {
            return None;
        }
        self.next += 1;
        Some(due)
    }

    /// Starts handed out so far.
    pub fn issued(&self) -> u64 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_absolute_and_bounded() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0, 500.0, t0 + Duration::from_secs(2), None).unwrap();
        let mut n = 0u64;
        let mut last = t0;
        while let Some(due) = p.next_due() {
            assert_eq!(due, t0 + Duration::from_secs_f64(n as f64 / 500.0));
            assert!(due >= last);
            last = due;
            n += 1;
        }
        assert_eq!(n, 1000, "500/s for 2 s");
        assert_eq!(p.issued(), 1000);
        // No drift after many steps: the 1000th start is exactly 2 s in (float rounding aside).
        let d = p.due(1000) - t0;
        assert!((d.as_secs_f64() - 2.0).abs() < 1e-6);
    }

    #[test]
    fn schedule_stops_at_the_count() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0, 1000.0, t0 + Duration::from_secs(60), Some(7)).unwrap();
        assert_eq!(std::iter::from_fn(|| p.next_due()).count(), 7);
    }

    #[test]
    fn rejects_bad_rates() {
        let t0 = Instant::now();
        for r in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(Pacer::new(t0, r, t0, None).is_err());
        }
    }
}
