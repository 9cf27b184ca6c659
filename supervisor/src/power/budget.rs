//! Energy budgets over fixed windows (pure): `energy: {budget_mwh, window_s, action}` trips
//! when the window's attributed energy exceeds the budget and releases when the window rolls
//! over. The window starts at the agent's first sample and rolls every `window_s` after.

use serde::Serialize;

use crate::config::policy::Energy;

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Window {
    pub start_ms: u64,
    pub used_mwh: f64,
    pub tripped: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The budget is used up: apply the action.
    Tripped,
    /// The window rolled over: lift the action.
    Released,
}

impl Window {
    /// Adds `mwh` used by `now_ms`; returns what changed, in order.
    pub fn add(&mut self, now_ms: u64, mwh: f64, budget: &Energy) -> Vec<Change> {
        let mut out = Vec::new();
        let len = u64::from(budget.window_s) * 1000;
        if self.start_ms == 0 {
            self.start_ms = now_ms;
        } else if now_ms >= self.start_ms.saturating_add(len) {
            // Skip whole windows that passed (a suspended device), keep the phase.
            let passed = (now_ms - self.start_ms) / len.max(1);
            self.start_ms += passed * len;
            self.used_mwh = 0.0;
            if std::mem::take(&mut self.tripped) {
                out.push(Change::Released);
            }
        }
        self.used_mwh += mwh.max(0.0);
        if !self.tripped && self.used_mwh > budget.budget_mwh as f64 {
            self.tripped = true;
            out.push(Change::Tripped);
        }
        out
    }

    /// When the current window ends.
    pub fn ends_ms(&self, budget: &Energy) -> u64 {
        self.start_ms + u64::from(budget.window_s) * 1000
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::policy::BatteryAction;

    #[test]
    fn trips_once_and_releases_at_rollover() {
        let b = Energy {
            budget_mwh: 10,
            window_s: 60,
            action: BatteryAction::Throttle,
        };
        let mut w = Window::default();
        assert!(w.add(1_000, 4.0, &b).is_empty());
        assert!(w.add(2_000, 4.0, &b).is_empty());
        assert_eq!(w.add(3_000, 4.0, &b), [Change::Tripped]);
        assert!(w.add(4_000, 40.0, &b).is_empty(), "trips once per window");
        assert_eq!(w.ends_ms(&b), 61_000);
        // Rollover: released, and the new window counts afresh.
        assert_eq!(w.add(61_000, 1.0, &b), [Change::Released]);
        assert!((w.used_mwh - 1.0).abs() < 1e-12);
        // A huge sample right after a rollover releases and trips again.
        assert_eq!(w.add(200_000, 11.0, &b), [Change::Tripped]);
        assert_eq!(w.start_ms, 181_000, "the window keeps its phase");
        assert_eq!(w.add(241_000, 0.0, &b), [Change::Released]);
    }
}
