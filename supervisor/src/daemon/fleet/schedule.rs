//! When the next check-in happens: the server's interval with ±10 % jitter after a good
//! session, exponential backoff with full jitter (5 s doubling, capped at the interval) after
//! failures. Pure, so it is unit-tested without a clock.

use std::time::Duration;

const BACKOFF_BASE_MS: u64 = 5_000;

pub struct Schedule {
    default_poll_s: u32,
    poll_s: u32,
    failures: u32,
    rng: u64,
    pub last_attempt_ms: u64,
}

impl Schedule {
    pub fn new(default_poll_s: u32, seed: u64) -> Schedule {
        Schedule {
            default_poll_s,
            poll_s: default_poll_s,
            failures: 0,
            rng: seed | 1,
            last_attempt_ms: 0,
        }
    }

    fn next_rand(&mut self) -> u64 {
        // xorshift64: jitter only, no secrecy needed.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// After a good session; `server_poll_s` 0 keeps device.json's interval.
    pub fn ok(&mut self, server_poll_s: u32) -> Duration {
        self.failures = 0;
        self.poll_s = if server_poll_s == 0 {
            self.default_poll_s
        } else {
            server_poll_s.clamp(5, 7 * 86_400)
        };
        let base = u64::from(self.poll_s) * 1000;
        let spread = base / 5; // ±10 %
        let jitter = self.next_rand() % (spread + 1);
        Duration::from_millis(base - base / 10 + jitter)
    }

    /// After a failed attempt.
    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let cap = u64::from(self.poll_s) * 1000;
        let exp = BACKOFF_BASE_MS.saturating_mul(1 << self.failures.min(20).saturating_sub(1));
        let base = exp.min(cap).max(1000);
        // Full jitter over the upper half: spread out, never hammering.
        Duration::from_millis(base / 2 + self.next_rand() % (base / 2 + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_jitter_and_backoff() {
        let mut s = Schedule::new(300, 42);
        for _ in 0..100 {
            let d = s.ok(60).as_millis() as u64;
            assert!((54_000..=66_000).contains(&d), "{d}");
        }
        let d = s.ok(0).as_millis() as u64;
        assert!(
            (270_000..=330_000).contains(&d),
            "device.json's interval: {d}"
        );
        // Backoff doubles from 5 s and stops at the poll interval.
        let mut s = Schedule::new(300, 7);
        let waits: Vec<u64> = (0..12).map(|_| s.failed().as_millis() as u64).collect();
        assert!((2_500..=5_000).contains(&waits[0]), "{waits:?}");
        assert!((5_000..=10_000).contains(&waits[1]), "{waits:?}");
        assert!((20_000..=40_000).contains(&waits[3]), "{waits:?}");
        assert!(waits.iter().all(|w| *w <= 300_000), "{waits:?}");
        assert!(waits[11] >= 150_000, "capped at the interval: {waits:?}");
        // A good session resets the backoff.
        s.ok(300);
        assert!(s.failed().as_millis() <= 5_000);
        // Different seeds spread a fleet out.
        let a = Schedule::new(300, 1).ok(300);
        let b = Schedule::new(300, 2).ok(300);
        assert_ne!(a, b);
    }
}
