//! `on_violation` rules and the trust score: pure bookkeeping, time passed in.
//!
//! Every event an agent causes (a denied connect, an anomaly, a bad socket message…) goes
//! through [`Tracker::record`], which remembers it in a bounded window, lowers the trust
//! score and returns the rules that fire now. A count rule fires when `count` events of its
//! kind fall inside its window *after its previous firing*, so one burst fires it once and a
//! stricter rule on the same kind still fires later. A `trust_below` rule fires when the
//! score crosses below its threshold, and re-arms once the score has recovered.
//!
//! Trust score (0–100): `100 − Σ penalty(event) · 2^(−age / 1 h)`, rounded down, floored at 0.
//! Penalties: denied_exec, denied_operation 10; crash_loop 20; anomaly, oom_kill, bad_message
//! 5; denied_connect 2. The sum is kept as one decaying number, so the state is two words.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::config::policy::{Event, MAX_WINDOW_S, Trigger, ViolationRule};

/// Half-life of a penalty.
pub const HALF_LIFE_MS: u64 = 3_600_000;
/// Most events remembered per agent (bounds memory and the cost of counting).
pub const EVENTS_MAX: usize = 1024;

pub fn penalty(e: Event) -> f64 {
    match e {
        Event::DeniedExec | Event::DeniedOperation => 10.0,
        Event::CrashLoop => 20.0,
        Event::Anomaly | Event::OomKill | Event::BadMessage => 5.0,
        Event::DeniedConnect => 2.0,
    }
}

/// The decaying penalty sum, persisted with the agent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trust {
    pub penalty: f64,
    pub at_ms: u64,
}

impl Trust {
    fn decayed(&self, now_ms: u64) -> f64 {
        let age = now_ms.saturating_sub(self.at_ms) as f64;
        self.penalty * (-age / HALF_LIFE_MS as f64).exp2()
    }

    pub fn add(&mut self, now_ms: u64, e: Event) {
        self.penalty = self.decayed(now_ms) + penalty(e);
        self.at_ms = now_ms.max(self.at_ms);
    }

    pub fn score(&self, now_ms: u64) -> u8 {
        (100.0 - self.decayed(now_ms)).clamp(0.0, 100.0).floor() as u8
    }
}

/// Per-agent rule state.
#[derive(Debug, Default)]
pub struct Tracker {
    events: VecDeque<(u64, Event)>,
    pub trust: Trust,
    /// Per rule index: when it last fired (count rules) or whether it is tripped (trust).
    fired_at: Vec<Option<u64>>,
}

impl Tracker {
    /// Records `event` at `now_ms` and returns the indices of `rules` that fire now.
    pub fn record(&mut self, now_ms: u64, event: Event, rules: &[ViolationRule]) -> Vec<usize> {
        self.events.push_back((now_ms, event));
        let horizon = now_ms.saturating_sub(u64::from(MAX_WINDOW_S) * 1000);
        while self.events.len() > EVENTS_MAX || self.events.front().is_some_and(|e| e.0 < horizon) {
            self.events.pop_front();
        }
        self.trust.add(now_ms, event);
        self.evaluate(now_ms, Some(event), rules)
    }

    /// Re-checks `trust_below` rules (the score also changes on its own, upwards).
    pub fn evaluate(
        &mut self,
        now_ms: u64,
        event: Option<Event>,
        rules: &[ViolationRule],
    ) -> Vec<usize> {
        self.fired_at.resize(rules.len(), None);
        let score = self.trust.score(now_ms);
        let mut out = Vec::new();
        for (i, r) in rules.iter().enumerate() {
            match r.trigger() {
                Ok(Trigger::Count {
                    event: kind,
                    count,
                    within_s,
                }) if event == Some(kind) => {
                    let since = now_ms.saturating_sub(u64::from(within_s) * 1000);
                    let after = self.fired_at[i];
                    let n = self
                        .events
                        .iter()
                        .filter(|(t, e)| *e == kind && *t >= since && after.is_none_or(|f| *t > f))
                        .count();
                    if n >= count as usize {
                        self.fired_at[i] = Some(now_ms);
                        out.push(i);
                    }
                }
                Ok(Trigger::TrustBelow(t)) => {
                    if score < t && self.fired_at[i].is_none() {
                        self.fired_at[i] = Some(now_ms);
                        out.push(i);
                    } else if score >= t {
                        self.fired_at[i] = None;
                    }
                }
                _ => {}
            }
        }
        out
    }

    /// A new policy: rule indices change, so forget which fired (counts stay).
    pub fn rules_changed(&mut self) {
        self.fired_at.clear();
    }

    /// Counts of each event kind within the last `window_ms` (for `status`).
    pub fn recent(&self, now_ms: u64, window_ms: u64) -> Vec<(Event, usize)> {
        let since = now_ms.saturating_sub(window_ms);
        Event::ALL
            .iter()
            .map(|k| {
                (
                    *k,
                    self.events
                        .iter()
                        .filter(|(t, e)| e == k && *t >= since)
                        .count(),
                )
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Operator cleared the agent: trust back to 100, nothing tripped.
    pub fn reset(&mut self) {
        *self = Tracker::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::policy::ViolationAction;

    fn rule(json: &str) -> ViolationRule {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn count_rule_fires_once_per_burst() {
        let rules = [rule(
            r#"{"denied_connects": 3, "within_s": 10, "action": "revoke_network"}"#,
        )];
        let mut t = Tracker::default();
        assert!(t.record(1_000, Event::DeniedConnect, &rules).is_empty());
        assert!(t.record(2_000, Event::DeniedConnect, &rules).is_empty());
        assert!(t.record(2_500, Event::Anomaly, &rules).is_empty());
        assert_eq!(t.record(3_000, Event::DeniedConnect, &rules), [0]);
        // The same burst continuing does not fire again until 3 more arrive.
        assert!(t.record(3_100, Event::DeniedConnect, &rules).is_empty());
        assert!(t.record(3_200, Event::DeniedConnect, &rules).is_empty());
        assert_eq!(t.record(3_300, Event::DeniedConnect, &rules), [0]);
        // Outside the window the old events no longer count.
        assert!(t.record(30_000, Event::DeniedConnect, &rules).is_empty());
        assert!(t.record(45_000, Event::DeniedConnect, &rules).is_empty());
    }

    #[test]
    fn stricter_rule_on_same_kind_still_fires() {
        let rules = [
            rule(r#"{"denied_connects": 2, "within_s": 60, "action": "alert"}"#),
            rule(r#"{"denied_connects": 4, "within_s": 60, "action": "stop"}"#),
        ];
        let mut t = Tracker::default();
        let fired: Vec<Vec<usize>> = (0..4)
            .map(|i| t.record(1000 + i, Event::DeniedConnect, &rules))
            .collect();
        assert_eq!(fired, [vec![], vec![0], vec![], vec![0, 1]]);
        assert_eq!(rules[1].action, ViolationAction::Stop);
    }

    #[test]
    fn trust_decays_and_rearms() {
        let rules = [rule(r#"{"trust_below": 75, "action": "quarantine"}"#)];
        let mut t = Tracker::default();
        assert_eq!(t.trust.score(0), 100);
        for i in 0..2 {
            assert!(t.record(i, Event::DeniedExec, &rules).is_empty());
        }
        assert_eq!(t.trust.score(2), 80);
        assert_eq!(t.record(3, Event::DeniedExec, &rules), [0]);
        assert_eq!(t.trust.score(3), 70);
        // Tripped: another event does not fire it again.
        assert!(t.record(4, Event::DeniedConnect, &rules).is_empty());
        // One half-life later 32 points of penalty are 16: score 84, re-armed.
        assert_eq!(t.trust.score(4 + HALF_LIFE_MS), 84);
        assert!(t.evaluate(4 + HALF_LIFE_MS, None, &rules).is_empty());
        assert!(
            t.record(5 + HALF_LIFE_MS, Event::DeniedConnect, &rules)
                .is_empty()
        );
        assert_eq!(t.trust.score(5 + HALF_LIFE_MS), 82);
        assert_eq!(t.record(9 + HALF_LIFE_MS, Event::DeniedExec, &rules), [0]);
        t.reset();
        assert_eq!(t.trust.score(10 + HALF_LIFE_MS), 100);
    }

    #[test]
    fn score_floors_at_zero_and_memory_is_bounded() {
        let mut t = Tracker::default();
        for i in 0..5000 {
            t.record(i, Event::CrashLoop, &[]);
        }
        assert_eq!(t.trust.score(5000), 0);
        assert!(t.events.len() <= EVENTS_MAX);
        assert_eq!(t.recent(5000, 10_000), [(Event::CrashLoop, EVENTS_MAX)]);
    }
}
