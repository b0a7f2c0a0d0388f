//! The producer rate limit: a token bucket per producer connection. A producer over its rate
//! is made to wait before its next message is read (TCP then pushes back on the agent), so it
//! is slowed, never dropped. One second of the rate may be spent in a burst.

use std::time::Duration;

use tokio::time::Instant;

/// Bytes per second a producer may send on average; `None` means unlimited.
#[derive(Debug)]
pub struct Throttle {
    rate: Option<f64>,
    /// Bytes that may be sent right now (negative: debt to wait off).
    allowance: f64,
    last: Instant,
}

impl Throttle {
    pub fn new(bytes_per_sec: u64, now: Instant) -> Self {
        let rate = (bytes_per_sec > 0).then_some(bytes_per_sec as f64);
        Throttle { rate, allowance: rate.unwrap_or(0.0), last: now }
    }

    /// Charges `bytes` sent at `now`; returns how long to wait before reading more.
    pub fn charge(&mut self, bytes: usize, now: Instant) -> Duration {
        let Some(rate) = self.rate else { return Duration::ZERO };
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * rate;
        self.last = now;
        self.allowance = (self.allowance + refill).min(rate) - bytes as f64;
        if self.allowance >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-self.allowance / rate) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_one_second_is_free_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut t = Throttle::new(1000, t0);
        assert_eq!(t.charge(1000, t0), Duration::ZERO, "one second's worth at once");
        assert_eq!(t.charge(500, t0), Duration::from_millis(500), "then half a second of debt");
        // After waiting it off, the next 100 bytes cost 100 ms.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(t.charge(100, t1), Duration::from_millis(100));
        // Idle time refills, but never beyond one second's worth.
        let t2 = t1 + Duration::from_secs(10);
        assert_eq!(t.charge(1000, t2), Duration::ZERO);
        assert!(t.charge(1, t2) > Duration::ZERO);
    }

    #[test]
    fn zero_means_unlimited() {
        let t0 = Instant::now();
        let mut t = Throttle::new(0, t0);
        assert_eq!(t.charge(usize::MAX / 2, t0), Duration::ZERO);
    }
}
