//! Restart decisions: pure logic, time and randomness passed in, so it is unit-tested without
//! processes.
//!
//! A failed service is restarted at once the first time (a clean OOM restart is what field
//! engineers expect to be fast), then with exponential backoff (100 ms doubling, capped at
//! 30 s) with ±20 % jitter so a fleet of devices does not retry in lockstep. An agent that runs
//! for a minute is considered healthy again and its backoff resets. Starting more than
//! `max_per_hour` times within an hour is a crash loop: the agent is marked failed and stays
//! down until an operator starts it.

use std::collections::VecDeque;

const HOUR_MS: u64 = 3_600_000;
const STABLE_MS: u64 = 60_000;
const BACKOFF_BASE_MS: u64 = 100;
const BACKOFF_CAP_MS: u64 = 30_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Always,
    OnFailure,
    Never,
}

/// How an agent's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    OomKilled,
    /// A re-adopted agent: the kernel gives its status only to the parent that died.
    Unknown,
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }

    /// From the init's exit status (128 + n means the agent died of signal n).
    pub fn from_init_code(code: i32) -> Self {
        if code > 128 && code < 128 + 65 {
            Exit::Signal(code - 128)
        } else {
            Exit::Code(code)
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => write!(f, "killed by signal {s}"),
            Exit::OomKilled => write!(f, "killed by the kernel OOM killer"),
            Exit::Unknown => write!(f, "exit status unknown (re-adopted agent)"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Restart {
        delay_ms: u64,
        attempt: u32,
    },
    /// Stays down: `failed` for a crash loop or a failure that is not restarted.
    Exited,
    Failed {
        crash_loop: bool,
    },
}

#[derive(Debug, Clone)]
pub struct Tracker {
    starts: VecDeque<u64>,
    attempt: u32,
    max_per_hour: u32,
}

impl Tracker {
    pub fn new(max_per_hour: u32) -> Self {
        let max_per_hour = max_per_hour.max(1);
        Self {
            starts: VecDeque::with_capacity(max_per_hour as usize + 1),
            attempt: 0,
            max_per_hour,
        }
    }

    pub fn record_start(&mut self, now_ms: u64) {
        self.starts.push_back(now_ms);
        // Only the last `max_per_hour` starts matter: bounded memory.
        while self.starts.len() > self.max_per_hour as usize {
            self.starts.pop_front();
        }
    }

    /// The remembered start times (for persistence).
    pub fn starts(&self) -> Vec<u64> {
        self.starts.iter().copied().collect()
    }

    /// Restores start times saved by [`Tracker::starts`] (bounded like `record_start`).
    pub fn restore(&mut self, starts: &[u64]) {
        for &t in starts {
            self.record_start(t);
        }
    }

    /// Starts within the last hour.
    pub fn starts_last_hour(&self, now_ms: u64) -> usize {
        self.starts
            .iter()
            .filter(|&&t| now_ms.saturating_sub(t) < HOUR_MS)
            .count()
    }

    /// An operator's explicit start clears the crash-loop history.
    pub fn reset(&mut self) {
        self.starts.clear();
        self.attempt = 0;
    }

    /// `random` is any uniformly random u64 (jitter).
    pub fn decide(&mut self, now_ms: u64, policy: Policy, exit: Exit, random: u64) -> Decision {
        let restart = match policy {
            Policy::Never => false,
            Policy::OnFailure => !exit.success(),
            Policy::Always => true,
        };
        if !restart {
            return if exit.success() || exit == Exit::Unknown {
                Decision::Exited
            } else {
                Decision::Failed { crash_loop: false }
            };
        }
        if self.starts_last_hour(now_ms) >= self.max_per_hour as usize {
            return Decision::Failed { crash_loop: true };
        }
        if let Some(&last) = self.starts.back()
            && now_ms.saturating_sub(last) >= STABLE_MS
        {
            self.attempt = 0;
        }
        let attempt = self.attempt;
        self.attempt = self.attempt.saturating_add(1);
        let delay_ms = if attempt == 0 {
            0
        } else {
            let base = BACKOFF_BASE_MS
                .saturating_mul(1u64 << (attempt - 1).min(20))
                .min(BACKOFF_CAP_MS);
            base * (80 + random % 41) / 100
        };
        Decision::Restart { delay_ms, attempt }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_restart_is_immediate_then_backs_off() {
        let mut t = Tracker::new(100);
        let mut now = 1_000_000;
        let mut delays = vec![];
        for _ in 0..6 {
            t.record_start(now);
            now += 10;
            match t.decide(now, Policy::OnFailure, Exit::Code(1), 20) {
                Decision::Restart { delay_ms, .. } => delays.push(delay_ms),
                d => panic!("{d:?}"),
            }
        }
        assert_eq!(delays, vec![0, 100, 200, 400, 800, 1600]);
    }

    #[test]
    fn jitter_stays_within_twenty_percent_and_cap_holds() {
        let mut t = Tracker::new(1000);
        for r in [0u64, 40, 1 << 60] {
            t.reset();
            for i in 0..30 {
                t.record_start(i);
                if let Decision::Restart { delay_ms, attempt } =
                    t.decide(i, Policy::Always, Exit::Code(1), r)
                    && attempt > 0
                {
                    assert!(delay_ms <= BACKOFF_CAP_MS * 120 / 100);
                    assert!(delay_ms >= 80 * 100 / 100);
                }
            }
        }
    }

    #[test]
    fn crash_loop_marks_failed() {
        let mut t = Tracker::new(3);
        for i in 0..3 {
            t.record_start(i * 1000);
        }
        assert_eq!(
            t.decide(3500, Policy::Always, Exit::Code(1), 0),
            Decision::Failed { crash_loop: true }
        );
        // An hour later the window has moved on.
        assert!(matches!(
            t.decide(2000 + HOUR_MS + 1, Policy::Always, Exit::Code(1), 0),
            Decision::Restart { .. }
        ));
    }

    #[test]
    fn stable_run_resets_backoff() {
        let mut t = Tracker::new(100);
        t.record_start(0);
        t.decide(10, Policy::OnFailure, Exit::Code(1), 0);
        t.record_start(10);
        t.decide(20, Policy::OnFailure, Exit::Code(1), 0);
        t.record_start(20);
        let d = t.decide(20 + STABLE_MS, Policy::OnFailure, Exit::Code(1), 0);
        assert_eq!(
            d,
            Decision::Restart {
                delay_ms: 0,
                attempt: 0
            }
        );
    }

    #[test]
    fn policies() {
        let mut t = Tracker::new(10);
        assert_eq!(
            t.decide(0, Policy::OnFailure, Exit::Code(0), 0),
            Decision::Exited
        );
        assert_eq!(
            t.decide(0, Policy::Never, Exit::OomKilled, 0),
            Decision::Failed { crash_loop: false }
        );
        assert!(matches!(
            t.decide(0, Policy::OnFailure, Exit::OomKilled, 0),
            Decision::Restart { .. }
        ));
        assert!(matches!(
            t.decide(0, Policy::Always, Exit::Code(0), 0),
            Decision::Restart { .. }
        ));
    }

    #[test]
    fn init_codes_map_to_signals() {
        assert_eq!(Exit::from_init_code(137), Exit::Signal(9));
        assert_eq!(Exit::from_init_code(3), Exit::Code(3));
        assert_eq!(Exit::from_init_code(128), Exit::Code(128));
    }
}
